#include "evidex/kmeans.h"

#include <algorithm>
#include <limits>
#include <random>
#include <stdexcept>

#include "evidex/distance.h"
#include "evidex/parallel.h"

namespace evidex {

std::vector<float> pack_panels(const float* centers, std::size_t k, std::size_t d) {
    const std::size_t panels = (k + kPanelWidth - 1) / kPanelWidth;
    std::vector<float> out(panels * kPanelWidth * d, 0.f);
    for (std::size_t j = 0; j < k; ++j)
        for (std::size_t t = 0; t < d; ++t)
            out[(j / kPanelWidth * d + t) * kPanelWidth + j % kPanelWidth] = centers[j * d + t];
    return out;
}

void nearest_centers(const DistanceKernels& kern, const float* x, std::size_t n, std::size_t d,
                     const float* panels, const float* norms, std::size_t k, std::uint32_t* out,
                     std::size_t num_threads) {
    constexpr std::size_t kChunk = 256;  // points a task
    constexpr std::size_t kRows = 64;    // points a pass: a panel is read once for them
    static_assert(kChunk % kRows == 0, "passes stay inside a task");
    parallel_for((n + kChunk - 1) / kChunk, num_threads, [&](std::size_t chunk) {
        float dots[kRows * kPanelWidth], best[kRows];
        for (std::size_t i0 = chunk * kChunk; i0 < std::min(n, (chunk + 1) * kChunk); i0 += kRows) {
            const std::size_t m = std::min(kRows, n - i0);
            std::fill(best, best + m, std::numeric_limits<float>::infinity());
            std::fill(out + i0, out + i0 + m, 0u);
            for (std::size_t j0 = 0; j0 < k; j0 += kPanelWidth) {
                kern.dot_panel(x + i0 * d, d, m, panels + j0 * d, d, dots);
                const std::size_t lanes = std::min(kPanelWidth, k - j0);
                for (std::size_t i = 0; i < m; ++i)
                    for (std::size_t l = 0; l < lanes; ++l) {
                        const float s = norms[j0 + l] - 2.f * dots[i * kPanelWidth + l];
                        if (s < best[i]) {
                            best[i] = s;
                            out[i0 + i] = static_cast<std::uint32_t>(j0 + l);
                        }
                    }
            }
        }
    });
}

std::vector<float> kmeans(const float* x, std::size_t n, std::size_t d, std::size_t k,
                          int iterations, std::uint64_t seed, std::size_t num_threads,
                          double settled) {
    if (n == 0 || k == 0 || d == 0) throw std::invalid_argument("k-means needs points and k >= 1");
    std::mt19937_64 rng(seed);
    std::vector<float> c(k * d);
    {
        std::vector<std::size_t> pick(n);
        for (std::size_t i = 0; i < n; ++i) pick[i] = i;
        std::shuffle(pick.begin(), pick.end(), rng);
        for (std::size_t j = 0; j < k; ++j) std::copy_n(x + pick[j % n] * d, d, c.data() + j * d);
    }
    // Short vectors (PQ subspaces) by an inline loop; long ones as a matrix
    // product against the centers' panels.
    const DistanceKernels& kern = active_kernels();
    auto distance = [&](const float* a, const float* b) {
        float s = 0.f;
        for (std::size_t t = 0; t < d; ++t) s += (a[t] - b[t]) * (a[t] - b[t]);
        return s;
    };
    std::vector<std::uint32_t> assign(n, 0);
    std::vector<double> sum(k * d);
    std::vector<std::size_t> count(k);
    std::vector<float> panels, norms(k);
    std::vector<std::uint32_t> before;
    constexpr std::size_t kChunk = 256;
    for (int it = 0; it < iterations; ++it) {
        if (settled > 0.0) before = assign;
        if (d > 8) {
            panels = pack_panels(c.data(), k, d);
            for (std::size_t j = 0; j < k; ++j) norms[j] = kern.dot(c.data() + j * d, c.data() + j * d, d);
            nearest_centers(kern, x, n, d, panels.data(), norms.data(), k, assign.data(), num_threads);
        } else parallel_for((n + kChunk - 1) / kChunk, num_threads, [&](std::size_t chunk) {
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
        if (settled > 0.0 && it > 0) {
            std::size_t moved = 0;
            for (std::size_t i = 0; i < n; ++i) moved += assign[i] != before[i];
            if (static_cast<double>(moved) <= settled * static_cast<double>(n)) break;
        }
    }
    return c;
}

}  // namespace evidex
