#include "evidex/kmeans.h"

#include <algorithm>
#include <limits>
#include <random>
#include <stdexcept>

#include "evidex/distance.h"
#include "evidex/parallel.h"

namespace evidex {

std::vector<float> kmeans(const float* x, std::size_t n, std::size_t d, std::size_t k,
                          int iterations, std::uint64_t seed, std::size_t num_threads) {
    if (n == 0 || k == 0 || d == 0) throw std::invalid_argument("k-means needs points and k >= 1");
    std::mt19937_64 rng(seed);
    std::vector<float> c(k * d);
    {
        std::vector<std::size_t> pick(n);
        for (std::size_t i = 0; i < n; ++i) pick[i] = i;
        std::shuffle(pick.begin(), pick.end(), rng);
        for (std::size_t j = 0; j < k; ++j) std::copy_n(x + pick[j % n] * d, d, c.data() + j * d);
    }
    // Short vectors (PQ subspaces) by an inline loop; long ones by the SIMD kernel.
    const DistanceKernels& kern = active_kernels();
    auto distance = [&](const float* a, const float* b) {
        if (d > 8) return kern.l2sq(a, b, d);
        float s = 0.f;
        for (std::size_t t = 0; t < d; ++t) s += (a[t] - b[t]) * (a[t] - b[t]);
        return s;
    };
    std::vector<std::uint32_t> assign(n, 0);
    std::vector<double> sum(k * d);
    std::vector<std::size_t> count(k);
    constexpr std::size_t kChunk = 256;
    for (int it = 0; it < iterations; ++it) {
        parallel_for((n + kChunk - 1) / kChunk, num_threads, [&](std::size_t chunk) {
            for (std::size_t i = chunk * kChunk; i < std::min(n, (chunk + 1) * kChunk); ++i) {
                float best = std::numeric_limits<float>::infinity();
                std::uint32_t arg = 0;
                for (std::size_t j = 0; j < k; ++j) {
                    const float dist = distance(x + i * d, c.data() + j * d);
                    if (dist < best) {
                        best = dist;
                        arg = static_cast<std::uint32_t>(j);
                    }
                }
                assign[i] = arg;
            }
        });
        std::fill(sum.begin(), sum.end(), 0.0);
        std::fill(count.begin(), count.end(), 0);
        for (std::size_t i = 0; i < n; ++i) {
            ++count[assign[i]];
            double* s = sum.data() + assign[i] * d;
            for (std::size_t t = 0; t < d; ++t) s[t] += x[i * d + t];
        }
        for (std::size_t j = 0; j < k; ++j) {
            if (count[j] == 0) {
                std::copy_n(x + (rng() % n) * d, d, c.data() + j * d);
                continue;
            }
            for (std::size_t t = 0; t < d; ++t)
                c[j * d + t] = static_cast<float>(sum[j * d + t] / static_cast<double>(count[j]));
        }
    }
    return c;
}

}  // namespace evidex
