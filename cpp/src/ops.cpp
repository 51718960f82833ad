#include "evidex/ops.h"

#include <algorithm>
#include <atomic>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "evidex/distance.h"
#include "evidex/ops_math.h"
#include "evidex/parallel.h"

namespace evidex {
namespace ops {
namespace {

// Threads only for large problems: below ~4M element-operations a second
// std::thread costs more (start-up, and contention with the caller's own thread
// pools, e.g. torch's OpenMP workers spinning after an op) than it saves.
std::size_t threads_for(std::size_t work, std::size_t num_threads) {
    return work < (std::size_t{1} << 22) ? 1 : num_threads;
}

// Reductions in 8 independent lanes: the compiler vectorises them without
// reassociating (no -ffast-math), and the lanes are summed in double.
constexpr std::size_t kLanes = 8;

#if defined(__SSE2__)
// maxps directly: the compiler will not vectorise a float max reduction itself
// without -ffast-math (NaN ordering), and NaN never reaches here (checked first).
inline float lanes_max(const float* x, std::size_t n) {
    __m128 m0 = _mm_set1_ps(-INFINITY), m1 = m0;
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        m0 = _mm_max_ps(m0, _mm_loadu_ps(x + i));
        m1 = _mm_max_ps(m1, _mm_loadu_ps(x + i + 4));
    }
    alignas(16) float lanes[4];
    _mm_store_ps(lanes, _mm_max_ps(m0, m1));
    float out = std::max(std::max(lanes[0], lanes[1]), std::max(lanes[2], lanes[3]));
    for (; i < n; ++i) out = std::max(out, x[i]);
    return out;
}
#endif

template <class T>
T lanes_max(const T* x, std::size_t n) {
    T m[kLanes];
    for (std::size_t l = 0; l < kLanes; ++l) m[l] = -std::numeric_limits<T>::infinity();
    std::size_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (std::size_t l = 0; l < kLanes; ++l) m[l] = x[i + l] > m[l] ? x[i + l] : m[l];
    for (; i < n; ++i) m[0] = x[i] > m[0] ? x[i] : m[0];
    T out = m[0];
    for (std::size_t l = 1; l < kLanes; ++l) out = m[l] > out ? m[l] : out;
    return out;
}

template <class T>
EVIDEX_HD double lanes_dot(const T* x, const T* y, std::size_t n) {
    T s[kLanes] = {};
    std::size_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (std::size_t l = 0; l < kLanes; ++l) s[l] += x[i + l] * y[i + l];
    double out = 0.0;
    for (; i < n; ++i) out += static_cast<double>(x[i]) * y[i];
    for (std::size_t l = 0; l < kLanes; ++l) out += s[l];
    return out;
}

EVIDEX_HD float exp_of(float x) { return exp_nonpositive(x); }
EVIDEX_HD double exp_of(double x) { return std::exp(x); }

// e[i] = exp(logits[i] - max); returns sum(e).
template <class T>
double softmax_numerators(const T* logits, std::size_t n, T* e, const T* ones) {
    const T mx = lanes_max(logits, n);
    for (std::size_t i = 0; i < n; ++i) e[i] = exp_of(logits[i] - mx);
    return lanes_dot(e, ones, n);
}

[[noreturn]] void not_finite(const char* what) {
    throw std::invalid_argument(std::string(what) + " contain NaN or infinity");
}

template <class T>
void check_finite(const T* x, std::size_t n, const char* what) {
    // Sum of x * 0 is 0 for finite values, NaN as soon as one is NaN or inf.
    T acc[kLanes] = {};
    std::size_t i = 0;
    for (; i + kLanes <= n; i += kLanes)
        for (std::size_t l = 0; l < kLanes; ++l) acc[l] += x[i + l] * T(0);
    T tail = 0;
    for (; i < n; ++i) tail += x[i] * T(0);
    for (std::size_t l = 0; l < kLanes; ++l) tail += acc[l];
    if (tail != T(0)) not_finite(what);
}

}  // namespace

// float rows: cloned per ISA and chosen at load time from the CPU's features
// (an ifunc), as the distance kernels are; the package is never built for one CPU.
// The row bodies are forced inline so each clone compiles them for its own ISA.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EVIDEX_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define EVIDEX_ISA_CLONES
#endif
#define EVIDEX_ROW_INLINE inline __attribute__((always_inline))

// The k best of one row into best[0..k), best first, ties to the lower index;
// returns false if the row holds a NaN or infinity. One vector comparison per
// block of 16 rejects most entries; the finiteness check rides along in the
// same pass (x * 0 is 0 only for finite x).
template <class T>
EVIDEX_ROW_INLINE bool topk_row(const T* s, std::size_t n, std::size_t k, std::pair<T, std::int64_t>* best) {
    constexpr std::size_t kBlock = 16;
    T zero[kBlock] = {};
    std::size_t count = 0;
    auto offer = [&](std::size_t i) {
        if (count == k && !(s[i] > best[k - 1].first)) return;
        std::size_t pos = count < k ? count++ : k - 1;
        while (pos > 0 && s[i] > best[pos - 1].first) {
            best[pos] = best[pos - 1];
            --pos;
        }
        best[pos] = {s[i], static_cast<std::int64_t>(i)};
    };
    std::size_t i = 0;
    for (; i < n && count < k; ++i) offer(i);
    T tail = 0;
    for (std::size_t j = 0; j < i; ++j) tail += s[j] * T(0);
    for (; i + kBlock <= n; i += kBlock) {
        const T bar = best[k - 1].first;
        int any = 0;
        for (std::size_t l = 0; l < kBlock; ++l) {
            any |= s[i + l] > bar;
            zero[l] += s[i + l] * T(0);
        }
        if (any)
            for (std::size_t l = 0; l < kBlock; ++l) offer(i + l);
    }
    for (; i < n; ++i) {
        tail += s[i] * T(0);
        offer(i);
    }
    for (std::size_t l = 0; l < kBlock; ++l) tail += zero[l];
    return tail == T(0);
}


EVIDEX_ISA_CLONES
bool topk_row_f32(const float* s, std::size_t n, std::size_t k,
                  std::pair<float, std::int64_t>* best) {
    return topk_row(s, n, k, best);
}

template <class T>
void topk_rows(const T* scores, std::size_t rows, std::size_t n, std::size_t k,
               std::int64_t* indices, T* mask, std::size_t num_threads) {
    std::atomic<bool> finite{true};
    parallel_for(rows, threads_for(rows * n, num_threads), [&](std::size_t r) {
        thread_local std::vector<std::pair<T, std::int64_t>> best;
        best.resize(k);
        const T* s = scores + r * n;
        bool ok;
        if constexpr (std::is_same_v<T, float>) {
            ok = topk_row_f32(s, n, k, best.data());
        } else {
            ok = topk_row(s, n, k, best.data());
        }
        if (!ok) finite.store(false, std::memory_order_relaxed);
        T* m = mask + r * n;
        std::fill(m, m + n, T(0));
        for (std::size_t j = 0; j < k; ++j) {
            indices[r * k + j] = best[j].second;
            m[best[j].second] = T(1);
        }
    });
    if (!finite.load()) not_finite("scores");
}

// out = J(softmax(s * inv_tau))^T g for one row, in three passes that the
// compiler vectorises: the max; the numerators with their sum and their dot
// with g in 16 lanes (summed in double); the product.
template <class T>
EVIDEX_ROW_INLINE void softmax_backward_row(const T* s, const T* g, std::size_t n, T inv_tau, T* e, T* out) {
    constexpr std::size_t kWide = 16;
    const T mx = lanes_max(s, n) * inv_tau;
    T sum_l[kWide] = {}, dot_l[kWide] = {};
    std::size_t i = 0;
    for (; i + kWide <= n; i += kWide)
        for (std::size_t l = 0; l < kWide; ++l) {
            const T v = exp_of(s[i + l] * inv_tau - mx);
            e[i + l] = v;
            sum_l[l] += v;
            dot_l[l] += v * g[i + l];
        }
    double total = 0.0, dot = 0.0;
    for (; i < n; ++i) {
        e[i] = exp_of(s[i] * inv_tau - mx);
        total += e[i];
        dot += static_cast<double>(e[i]) * g[i];
    }
    for (std::size_t l = 0; l < kWide; ++l) {
        total += sum_l[l];
        dot += dot_l[l];
    }
    const T mean = static_cast<T>(dot / total);
    const T scale = static_cast<T>(inv_tau / total);
    for (std::size_t j = 0; j < n; ++j) out[j] = e[j] * scale * (g[j] - mean);
}

EVIDEX_ISA_CLONES
void softmax_backward_row_f32(const float* s, const float* g, std::size_t n, float inv_tau,
                              float* e, float* out) {
    softmax_backward_row(s, g, n, inv_tau, e, out);
}

template <class T>
void st_topk_backward(const T* scores, const std::int64_t* indices, const T* grad,
                      std::size_t rows, std::size_t n, std::size_t k, double tau, int mode,
                      bool per_slot, T* grad_scores, std::size_t num_threads) {
    const std::size_t slots = mode == 0 ? 1 : k;
    if (mode == 0 && !per_slot) {
        // Softmax mode, one upstream gradient: three fused passes, no buffers
        // but the numerators.
        parallel_for(rows, threads_for(rows * n, num_threads), [&](std::size_t r) {
            thread_local std::vector<T> e;
            e.resize(n);
            const T inv_tau = static_cast<T>(1.0 / tau);
            if constexpr (std::is_same_v<T, float>) {
                softmax_backward_row_f32(scores + r * n, grad + r * n, n, inv_tau, e.data(),
                                         grad_scores + r * n);
            } else {
                softmax_backward_row(scores + r * n, grad + r * n, n, inv_tau, e.data(),
                                     grad_scores + r * n);
            }
        });
        return;
    }
    parallel_for(rows, threads_for(rows * n * slots, num_threads), [&](std::size_t r) {
        const T* s = scores + r * n;
        thread_local std::vector<T> logits, e, g, ones;
        thread_local std::vector<double> acc;
        logits.resize(n);
        e.resize(n);
        g.resize(n);
        ones.assign(n, T(1));
        acc.assign(n, 0.0);
        // log(1 - taken + 1e-8): log1p(1e-8) while free, log(1e-8) once picked.
        const T inv_tau = static_cast<T>(1.0 / tau);
        const T log_free = mode == 1 ? static_cast<T>(std::log1p(1e-8)) : T(0);
        const T log_taken = static_cast<T>(std::log(1e-8));
        for (std::size_t i = 0; i < n; ++i) logits[i] = s[i] * inv_tau + log_free;
        for (std::size_t j = 0; j < slots; ++j) {
            const double sum = softmax_numerators(logits.data(), n, e.data(), ones.data());
            // The upstream gradient of this slot: the mask's, slot j's, or (softmax
            // mode, one Jacobian for all slots) the sum over slots.
            if (!per_slot) {
                std::copy(grad + r * n, grad + (r + 1) * n, g.begin());
            } else if (mode == 1) {
                std::copy(grad + (r * k + j) * n, grad + (r * k + j + 1) * n, g.begin());
            } else {
                std::fill(g.begin(), g.end(), T(0));
                for (std::size_t jj = 0; jj < k; ++jj)
                    for (std::size_t i = 0; i < n; ++i) g[i] += grad[(r * k + jj) * n + i];
            }
            // grad += soft * (g - <g, soft>) / tau with soft = e / sum.
            const T dot = static_cast<T>(lanes_dot(g.data(), e.data(), n) / sum);
            const T scale = static_cast<T>(1.0 / (sum * tau));
            for (std::size_t i = 0; i < n; ++i) acc[i] += e[i] * scale * (g[i] - dot);
            if (mode == 1) {
                const std::size_t picked = static_cast<std::size_t>(indices[r * k + j]);
                logits[picked] = s[picked] * inv_tau + log_taken;
            }
        }
        for (std::size_t i = 0; i < n; ++i) grad_scores[r * n + i] = static_cast<T>(acc[i]);
    });
}

template <class T>
void box_iou_matrix(const T* a, std::size_t na, const T* b, std::size_t nb, bool generalized,
                    T* out, std::size_t num_threads) {
    check_finite(a, 4 * na, "boxes1");
    check_finite(b, 4 * nb, "boxes2");
    // boxes2 as columns, so the inner loop over them vectorises.
    std::vector<T> bx1(nb), by1(nb), bx2(nb), by2(nb), barea(nb);
    for (std::size_t j = 0; j < nb; ++j) {
        bx1[j] = b[4 * j];
        by1[j] = b[4 * j + 1];
        bx2[j] = b[4 * j + 2];
        by2[j] = b[4 * j + 3];
        barea[j] = box_area(b + 4 * j);
    }
    parallel_for(na, threads_for(na * nb, num_threads), [&](std::size_t i) {
        const T* ai = a + 4 * i;
        const T area = box_area(ai);
        const T ax1 = ai[0], ay1 = ai[1], ax2 = ai[2], ay2 = ai[3];
        T* o = out + i * nb;
        if (generalized) {
            for (std::size_t j = 0; j < nb; ++j)
                o[j] = iou_xyxy(ax1, ay1, ax2, ay2, area, bx1[j], by1[j], bx2[j], by2[j],
                                barea[j], true);
        } else {
            for (std::size_t j = 0; j < nb; ++j)
                o[j] = iou_xyxy(ax1, ay1, ax2, ay2, area, bx1[j], by1[j], bx2[j], by2[j],
                                barea[j], false);
        }
    });
}

template <class T>
void box_iou_pairs(const T* a, const T* b, std::size_t n, bool generalized, T* out) {
    check_finite(a, 4 * n, "boxes1");
    check_finite(b, 4 * n, "boxes2");
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
    check_finite(a, 2 * na, "intervals1");
    check_finite(b, 2 * nb, "intervals2");
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
    std::vector<double> qnorm(nq);
    for (std::size_t q = 0; q < nq; ++q) {
        const double sq = dot_of(queries + q * d, queries + q * d, d);
        if (!std::isfinite(sq)) not_finite("queries");  // a NaN or inf makes the norm so
        qnorm[q] = std::max(std::sqrt(sq), 1e-12);
    }
    // One pass over the frames (the large operand): each frame's norm and its dots
    // with every query while it is in cache.
    std::atomic<bool> finite{true};
    parallel_for(nt, threads_for(nq * nt * d, num_threads), [&](std::size_t t) {
        const T* f = frames + t * d;
        const double sq = dot_of(f, f, d);
        if (!std::isfinite(sq)) finite.store(false, std::memory_order_relaxed);
        const double fn = std::max(std::sqrt(sq), 1e-12);
        for (std::size_t q = 0; q < nq; ++q)
            out[q * nt + t] = static_cast<T>(dot_of(queries + q * d, f, d) / (qnorm[q] * fn));
    });
    if (!finite.load()) not_finite("frames");
}

template <class T>
std::size_t select_keyframes(const T* scores, std::size_t n, std::size_t k, std::size_t min_gap,
                             std::int64_t* out) {
    check_finite(scores, n, "scores");
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
