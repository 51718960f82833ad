// Lloyd's k-means, the one used by every quantiser of the package (PQ4's
// subspaces, IVF's lists).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "evidex/distance.h"

namespace evidex {

// k centroids (k * d floats) of n points of d floats: started from distinct
// random points (repeats only when n < k), at most `iterations` rounds (fewer
// once a round moves at most a `settled` fraction of the points), an empty
// cluster restarted at a random point; assignments on num_threads (0: all).
std::vector<float> kmeans(const float* x, std::size_t n, std::size_t d, std::size_t k,
                          int iterations, std::uint64_t seed, std::size_t num_threads,
                          double settled = 0.0);

// k centers (k * d floats) in panels of kPanelWidth, dimension-major (distance.h),
// the last one padded with zeros: the layout the panel kernels score.
std::vector<float> pack_panels(const float* centers, std::size_t k, std::size_t d);

// The nearest of k centers (as pack_panels laid them out; norms[j] = |c_j|^2) to
// each of n points, by |c|^2 - 2 <x, c> from the panel kernels (a matrix product:
// a point against every center costs a few ns, not a distance call each); ties
// go to the lower index. On num_threads (0: all cores).
void nearest_centers(const DistanceKernels& kern, const float* x, std::size_t n, std::size_t d,
                     const float* panels, const float* norms, std::size_t k, std::uint32_t* out,
                     std::size_t num_threads);

}  // namespace evidex
