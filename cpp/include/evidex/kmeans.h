// Lloyd's k-means, the one used by every quantiser of the package (PQ4's
// subspaces, IVF's lists).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace evidex {

// k centroids (k * d floats) of n points of d floats: started from distinct
// random points (repeats only when n < k), `iterations` rounds, an empty
// cluster restarted at a random point; assignments on num_threads (0: all).
std::vector<float> kmeans(const float* x, std::size_t n, std::size_t d, std::size_t k,
                          int iterations, std::uint64_t seed, std::size_t num_threads);

}  // namespace evidex
