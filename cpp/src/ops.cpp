#include "evidex/ops.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "evidex/distance.h"
#include "evidex/ops_math.h"
#include "evidex/parallel.h"

namespace evidex {
namespace ops {
namespace {

// Rows per task so that small problems run inline and large ones spread out.
std::size_t threads_for(std::size_t work, std::size_t num_threads) {
    return work < (1u << 16) ? 1 : num_threads;
}

// Softmax of logits[n] into out[n], max-subtracted, accumulated in double.
template <class T>
void softmax_row(const double* logits, std::size_t n, double* out) {
    double mx = -INFINITY;
    for (std::size_t i = 0; i < n; ++i) mx = std::max(mx, logits[i]);
    double sum = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
        out[i] = std::exp(logits[i] - mx);
        sum += out[i];
    }
    const double inv = 1.0 / sum;
    for (std::size_t i = 0; i < n; ++i) out[i] *= inv;
}

}  // namespace

template <class T>
void topk_rows(const T* scores, std::size_t rows, std::size_t n, std::size_t k,
               std::int64_t* indices, T* mask, std::size_t num_threads) {
    parallel_for(rows, threads_for(rows * n, num_threads), [&](std::size_t r) {
        const T* s = scores + r * n;
        thread_local std::vector<std::int64_t> order;
        order.resize(n);
        std::iota(order.begin(), order.end(), 0);
        auto better = [s](std::int64_t a, std::int64_t b) {
            return s[a] > s[b] || (s[a] == s[b] && a < b);
        };
        std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k),
                          order.end(), better);
        T* m = mask + r * n;
        std::fill(m, m + n, T(0));
        for (std::size_t j = 0; j < k; ++j) {
            indices[r * k + j] = order[j];
            m[order[j]] = T(1);
        }
    });
}

template <class T>
void st_topk_backward(const T* scores, const std::int64_t* indices, const T* grad,
                      std::size_t rows, std::size_t n, std::size_t k, double tau, int mode,
                      bool per_slot, T* grad_scores, std::size_t num_threads) {
    const std::size_t slots = mode == 0 ? 1 : k;
    parallel_for(rows, threads_for(rows * n * slots, num_threads), [&](std::size_t r) {
        const T* s = scores + r * n;
        thread_local std::vector<double> logits, soft, acc;
        logits.resize(n);
        soft.resize(n);
        acc.assign(n, 0.0);
        // log(1 - taken + 1e-8): log1p(1e-8) while free, log(1e-8) once picked.
        const double log_free = std::log1p(1e-8), log_taken = std::log(1e-8);
        for (std::size_t i = 0; i < n; ++i)
            logits[i] = static_cast<double>(s[i]) / tau + (mode == 1 ? log_free : 0.0);
        thread_local std::vector<double> g;
        g.resize(n);
        for (std::size_t j = 0; j < slots; ++j) {
            softmax_row<T>(logits.data(), n, soft.data());
            // The upstream gradient of this slot: the mask's, slot j's, or (softmax
            // mode, one Jacobian for all slots) the sum over slots.
            if (!per_slot) {
                for (std::size_t i = 0; i < n; ++i) g[i] = grad[r * n + i];
            } else if (mode == 1) {
                for (std::size_t i = 0; i < n; ++i) g[i] = grad[(r * k + j) * n + i];
            } else {
                std::fill(g.begin(), g.end(), 0.0);
                for (std::size_t jj = 0; jj < k; ++jj)
                    for (std::size_t i = 0; i < n; ++i) g[i] += grad[(r * k + jj) * n + i];
            }
            double dot = 0.0;
            for (std::size_t i = 0; i < n; ++i) dot += g[i] * soft[i];
            for (std::size_t i = 0; i < n; ++i) acc[i] += soft[i] * (g[i] - dot) / tau;
            if (mode == 1) {
                const std::int64_t picked = indices[r * k + j];
                logits[static_cast<std::size_t>(picked)] =
                    static_cast<double>(s[picked]) / tau + log_taken;
            }
        }
        for (std::size_t i = 0; i < n; ++i) grad_scores[r * n + i] = static_cast<T>(acc[i]);
    });
}

template <class T>
void box_iou_matrix(const T* a, std::size_t na, const T* b, std::size_t nb, bool generalized,
                    T* out, std::size_t num_threads) {
    parallel_for(na, threads_for(na * nb, num_threads), [&](std::size_t i) {
        const T* ai = a + 4 * i;
        T* o = out + i * nb;
        if (generalized) {
            for (std::size_t j = 0; j < nb; ++j) o[j] = generalized_box_iou(ai, b + 4 * j);
        } else {
            for (std::size_t j = 0; j < nb; ++j) o[j] = box_iou(ai, b + 4 * j);
        }
    });
}

template <class T>
void box_iou_pairs(const T* a, const T* b, std::size_t n, bool generalized, T* out) {
    for (std::size_t i = 0; i < n; ++i)
        out[i] = generalized ? generalized_box_iou(a + 4 * i, b + 4 * i) : box_iou(a + 4 * i, b + 4 * i);
}

template <class T>
void giou_pairs_backward(const T* a, const T* b, const T* g, std::size_t n, T* ga, T* gb) {
    std::fill(ga, ga + 4 * n, T(0));
    std::fill(gb, gb + 4 * n, T(0));
    for (std::size_t i = 0; i < n; ++i)
        generalized_box_iou_backward(a + 4 * i, b + 4 * i, g[i], ga + 4 * i, gb + 4 * i);
}

template <class T>
void temporal_iou_matrix(const T* a, std::size_t na, const T* b, std::size_t nb, T* out) {
    for (std::size_t i = 0; i < na; ++i)
        for (std::size_t j = 0; j < nb; ++j) out[i * nb + j] = temporal_iou(a + 2 * i, b + 2 * j);
}

namespace {
// float32 uses the SIMD dot kernel of the index; float64 a plain loop.
inline double dot_of(const float* a, const float* b, std::size_t d) {
    return active_kernels().dot(a, b, d);
}
inline double dot_of(const double* a, const double* b, std::size_t d) {
    double s = 0.0;
    for (std::size_t i = 0; i < d; ++i) s += a[i] * b[i];
    return s;
}
}  // namespace

template <class T>
void frame_scores(const T* frames, std::size_t nt, const T* queries, std::size_t nq,
                  std::size_t d, T* out, std::size_t num_threads) {
    std::vector<double> fnorm(nt);
    for (std::size_t t = 0; t < nt; ++t)
        fnorm[t] = std::max(std::sqrt(dot_of(frames + t * d, frames + t * d, d)), 1e-12);
    parallel_for(nq, threads_for(nq * nt * d, num_threads), [&](std::size_t q) {
        const T* qv = queries + q * d;
        const double qn = std::max(std::sqrt(dot_of(qv, qv, d)), 1e-12);
        for (std::size_t t = 0; t < nt; ++t)
            out[q * nt + t] = static_cast<T>(dot_of(qv, frames + t * d, d) / (qn * fnorm[t]));
    });
}

template <class T>
std::size_t select_keyframes(const T* scores, std::size_t n, std::size_t k, std::size_t min_gap,
                             std::int64_t* out) {
    std::vector<std::int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [scores](std::int64_t a, std::int64_t b) { return scores[a] > scores[b]; });
    // A frame is blocked once a kept frame lies within min_gap - 1 of it.
    std::vector<char> blocked(n, 0);
    std::size_t kept = 0;
    for (std::size_t r = 0; r < n && kept < k; ++r) {
        const std::int64_t f = order[r];
        if (blocked[static_cast<std::size_t>(f)]) continue;
        out[kept++] = f;
        const std::int64_t lo = std::max<std::int64_t>(0, f - static_cast<std::int64_t>(min_gap) + 1);
        const std::int64_t hi = std::min<std::int64_t>(static_cast<std::int64_t>(n) - 1,
                                                       f + static_cast<std::int64_t>(min_gap) - 1);
        for (std::int64_t t = lo; t <= hi; ++t) blocked[static_cast<std::size_t>(t)] = 1;
    }
    std::sort(out, out + kept);
    return kept;
}

#define EVIDEX_INSTANTIATE(T)                                                                  \
    template void topk_rows<T>(const T*, std::size_t, std::size_t, std::size_t, std::int64_t*, \
                               T*, std::size_t);                                               \
    template void st_topk_backward<T>(const T*, const std::int64_t*, const T*, std::size_t,    \
                                      std::size_t, std::size_t, double, int, bool, T*,         \
                                      std::size_t);                                            \
    template void box_iou_matrix<T>(const T*, std::size_t, const T*, std::size_t, bool, T*,    \
                                    std::size_t);                                              \
    template void box_iou_pairs<T>(const T*, const T*, std::size_t, bool, T*);                 \
    template void giou_pairs_backward<T>(const T*, const T*, const T*, std::size_t, T*, T*);   \
    template void temporal_iou_matrix<T>(const T*, std::size_t, const T*, std::size_t, T*);    \
    template void frame_scores<T>(const T*, std::size_t, const T*, std::size_t, std::size_t,  \
                                  T*, std::size_t);                                            \
    template std::size_t select_keyframes<T>(const T*, std::size_t, std::size_t, std::size_t,  \
                                             std::int64_t*);

EVIDEX_INSTANTIATE(float)
EVIDEX_INSTANTIATE(double)

}  // namespace ops
}  // namespace evidex
