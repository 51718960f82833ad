#include "evidex/ops.h"

#include <algorithm>
#include <atomic>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "evidex/distance.h"
#include "evidex/ops_math.h"
#include "evidex/parallel.h"

// float rows: cloned per ISA and chosen at load time from the CPU's features
// (an ifunc), as the distance kernels are; the package is never built for one CPU.
// The row bodies are forced inline so each clone compiles them for its own ISA.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define EVIDEX_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define EVIDEX_ISA_CLONES
#endif
#define EVIDEX_ROW_INLINE inline __attribute__((always_inline))

namespace evidex {
namespace ops {
namespace {

// Threads only for large problems: below ~4M element-operations a second
// std::thread costs more (start-up, and contention with the caller's own thread
// pools, e.g. torch's OpenMP workers spinning after an op) than it saves.
std::size_t threads_for(std::size_t work, std::size_t num_threads) {
    return work < (std::size_t{1} << 22) ? 1 : num_threads;
}


// Accumulators as vector-extension values: they stay in registers (GCC keeps
// local arrays used as lane accumulators in memory, a store-to-load chain per
// step) and compile to the widest vectors of the ISA clone they are inlined into.
constexpr std::size_t kWide = 16;
template <class T>
struct WideOf {
    typedef T type __attribute__((vector_size(kWide * sizeof(T))));
};
template <class T>
using Wide = typename WideOf<T>::type;

template <class T>
EVIDEX_ROW_INLINE Wide<T> load_wide(const T* p) {
    Wide<T> v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
}

// In double, four partial sums: a chain of 16 dependent adds would cost more
// than the row it ends when rows are short (a 512-d frame).
template <class V>
EVIDEX_ROW_INLINE double sum_lanes(const V& v) {
    double part[4] = {};
    for (std::size_t l = 0; l < kWide; l += 4)
        for (std::size_t j = 0; j < 4; ++j) part[j] += v[l + j];
    return (part[0] + part[1]) + (part[2] + part[3]);
}

// NaN never reaches here (inputs are checked first), so a compare-select is a max.
template <class T>
EVIDEX_ROW_INLINE T lanes_max(const T* x, std::size_t n) {
    Wide<T> m = {};
    m -= std::numeric_limits<T>::infinity();
    std::size_t i = 0;
    for (; i + kWide <= n; i += kWide) {
        const Wide<T> v = load_wide(x + i);
        m = v > m ? v : m;
    }
    T out = -std::numeric_limits<T>::infinity();
    for (std::size_t l = 0; l < kWide; ++l) out = m[l] > out ? m[l] : out;
    for (; i < n; ++i) out = x[i] > out ? x[i] : out;
    return out;
}

// Two accumulators: an FMA's latency spans several issue slots.
template <class T>
EVIDEX_ROW_INLINE double lanes_dot(const T* x, const T* y, std::size_t n) {
    Wide<T> acc_v = {}, acc_w = {};
    std::size_t i = 0;
    for (; i + 2 * kWide <= n; i += 2 * kWide) {
        acc_v += load_wide(x + i) * load_wide(y + i);
        acc_w += load_wide(x + i + kWide) * load_wide(y + i + kWide);
    }
    for (; i + kWide <= n; i += kWide) acc_v += load_wide(x + i) * load_wide(y + i);
    double out = sum_lanes(acc_v + acc_w);
    for (; i < n; ++i) out += static_cast<double>(x[i]) * y[i];
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
    Wide<T> acc = {};
    std::size_t i = 0;
    for (; i + kWide <= n; i += kWide) acc += load_wide(x + i) * T(0);
    T tail = static_cast<T>(sum_lanes(acc));
    for (; i < n; ++i) tail += x[i] * T(0);
    if (tail != T(0)) not_finite(what);
}

}  // namespace


// Where a row may hold a new top-k candidate: the start of the first chunk of
// kChunk entries at or after i with an entry above `bar` (its bit set in *hits,
// entry j of the chunk at bit j), or the first position from which no whole
// chunk fits. `check` gains x * 0 of every entry read (0 for finite x, NaN as
// soon as one is NaN or infinite), so the finiteness check rides along in the
// same pass. Per ISA, chosen with the distance kernels' level.
constexpr std::size_t kChunk = 64;
template <class T>
using ScanAbove = std::size_t (*)(const T*, std::size_t, std::size_t, T, T*, std::uint64_t*);

template <class T>
std::size_t scan_above_generic(const T* s, std::size_t i, std::size_t n, T bar, T* check,
                               std::uint64_t* hits) {
    for (; i + kChunk <= n; i += kChunk) {
        Wide<T> zero = {};
        std::uint64_t bits = 0;
        for (std::size_t j = 0; j < kChunk; j += kWide) {
            zero += load_wide(s + i + j) * T(0);
            for (std::size_t l = 0; l < kWide; ++l)
                bits |= static_cast<std::uint64_t>(s[i + j + l] > bar) << (j + l);
        }
        *check += static_cast<T>(sum_lanes(zero));
        if (bits) {
            *hits = bits;
            break;
        }
    }
    return i;
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) std::size_t scan_above_avx2(const float* s, std::size_t i,
                                                                std::size_t n, float bar,
                                                                float* check,
                                                                std::uint64_t* hits) {
    const __m256 b = _mm256_set1_ps(bar), zero = _mm256_setzero_ps();
    // Two accumulators: one FMA chain would cost its latency per vector.
    __m256 acc0 = zero, acc1 = zero;
    for (; i + kChunk <= n; i += kChunk) {
        std::uint64_t bits = 0;
        for (std::size_t j = 0; j < kChunk; j += 16) {
            const __m256 v = _mm256_loadu_ps(s + i + j), w = _mm256_loadu_ps(s + i + j + 8);
            acc0 = _mm256_fmadd_ps(v, zero, acc0);
            acc1 = _mm256_fmadd_ps(w, zero, acc1);
            bits |= static_cast<std::uint64_t>(
                        static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, b, _CMP_GT_OQ))))
                        << j |
                    static_cast<std::uint64_t>(
                        static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(w, b, _CMP_GT_OQ))))
                        << (j + 8);
        }
        if (bits) {
            *hits = bits;
            break;
        }
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, _mm256_add_ps(acc0, acc1));
    for (float l : lanes) *check += l;
    return i;
}

__attribute__((target("avx512f"))) std::size_t scan_above_avx512(const float* s, std::size_t i,
                                                                 std::size_t n, float bar,
                                                                 float* check,
                                                                 std::uint64_t* hits) {
    const __m512 b = _mm512_set1_ps(bar), zero = _mm512_setzero_ps();
    // Four accumulators: one FMA chain would cost its latency per vector.
    __m512 acc0 = zero, acc1 = zero, acc2 = zero, acc3 = zero;
    for (; i + kChunk <= n; i += kChunk) {
        const __m512 v0 = _mm512_loadu_ps(s + i), v1 = _mm512_loadu_ps(s + i + 16);
        const __m512 v2 = _mm512_loadu_ps(s + i + 32), v3 = _mm512_loadu_ps(s + i + 48);
        acc0 = _mm512_fmadd_ps(v0, zero, acc0);
        acc1 = _mm512_fmadd_ps(v1, zero, acc1);
        acc2 = _mm512_fmadd_ps(v2, zero, acc2);
        acc3 = _mm512_fmadd_ps(v3, zero, acc3);
        const std::uint64_t bits =
            static_cast<std::uint64_t>(_mm512_cmp_ps_mask(v0, b, _CMP_GT_OQ)) |
            static_cast<std::uint64_t>(_mm512_cmp_ps_mask(v1, b, _CMP_GT_OQ)) << 16 |
            static_cast<std::uint64_t>(_mm512_cmp_ps_mask(v2, b, _CMP_GT_OQ)) << 32 |
            static_cast<std::uint64_t>(_mm512_cmp_ps_mask(v3, b, _CMP_GT_OQ)) << 48;
        if (bits) {
            *hits = bits;
            break;
        }
    }
    *check += _mm512_reduce_add_ps(
        _mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
    return i;
}
#endif

ScanAbove<float> scan_above_f32() {
#if defined(__x86_64__) && defined(__GNUC__)
    switch (active_kernels().level) {
        case SimdLevel::AVX512:
            return scan_above_avx512;
        case SimdLevel::AVX2:
            return scan_above_avx2;
        default:
            break;
    }
#endif
    return scan_above_generic<float>;
}

// The largest entry of each of the kChunk residue classes of a row (entries j,
// j + kChunk, j + 2 kChunk, ...): vertical maxima, so one vector max per load.
// These are kChunk maxima of disjoint sets, so the k-th largest of them (k <=
// kChunk) is a lower bound of the row's k-th best.
template <class T>
EVIDEX_ROW_INLINE void class_maxima(const T* s, std::size_t n, T* out) {
    static_assert(kChunk == 4 * kWide, "four vector accumulators span a chunk");
    Wide<T> m0 = load_wide(s), m1 = load_wide(s + kWide), m2 = load_wide(s + 2 * kWide),
            m3 = load_wide(s + 3 * kWide);
    std::size_t i = kChunk;
    for (; i + kChunk <= n; i += kChunk) {
        const Wide<T> v0 = load_wide(s + i), v1 = load_wide(s + i + kWide);
        const Wide<T> v2 = load_wide(s + i + 2 * kWide), v3 = load_wide(s + i + 3 * kWide);
        m0 = v0 > m0 ? v0 : m0;
        m1 = v1 > m1 ? v1 : m1;
        m2 = v2 > m2 ? v2 : m2;
        m3 = v3 > m3 ? v3 : m3;
    }
    __builtin_memcpy(out, &m0, sizeof m0);
    __builtin_memcpy(out + kWide, &m1, sizeof m1);
    __builtin_memcpy(out + 2 * kWide, &m2, sizeof m2);
    __builtin_memcpy(out + 3 * kWide, &m3, sizeof m3);
    for (std::size_t j = 0; i < n; ++i, ++j) out[j] = s[i] > out[j] ? s[i] : out[j];
}

EVIDEX_ISA_CLONES
void class_maxima_f32(const float* s, std::size_t n, float* out) { class_maxima(s, n, out); }

// A lower bound of the k-th best entry of a row (n >= kChunk, k <= kChunk):
// the k-th largest of its residue classes' maxima. -inf where it does not apply.
template <class T>
T kth_best_floor(const T* s, std::size_t n, std::size_t k) {
    if (n < kChunk || k > kChunk) return -std::numeric_limits<T>::infinity();
    T maxima[kChunk];
    if constexpr (std::is_same_v<T, float>) {
        class_maxima_f32(s, n, maxima);
    } else {
        class_maxima(s, n, maxima);
    }
    std::nth_element(maxima, maxima + (k - 1), maxima + kChunk, std::greater<T>());
    return maxima[k - 1];
}

// The k best of one row into best[0..k), best first, ties to the lower index;
// returns false if the row holds a NaN or infinity. Entries are offered in
// index order, and only those the scan finds above the bar: first just below
// `floor` (a lower bound of the k-th best, so every one of the k best is
// offered), then the k-th best so far. Nearly all of a long row is skipped.
template <class T>
bool topk_row(const T* s, std::size_t n, std::size_t k, T floor,
              std::pair<T, std::int64_t>* best, ScanAbove<T> scan) {
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
    // The scan keeps entries strictly above its bar; entries equal to the floor
    // may be among the k best.
    const T below_floor = std::nextafter(floor, -std::numeric_limits<T>::infinity());
    std::size_t i = 0;
    T check = 0;
    for (;;) {
        std::uint64_t hits = 0;
        i = scan(s, i, n, count < k ? below_floor : best[k - 1].first, &check, &hits);
        if (i + kChunk > n) break;
        for (; hits; hits &= hits - 1) offer(i + static_cast<std::size_t>(__builtin_ctzll(hits)));
        i += kChunk;
    }
    for (; i < n; ++i) {
        check += s[i] * T(0);
        offer(i);
    }
    return check == T(0);
}

template <class T>
void topk_rows(const T* scores, std::size_t rows, std::size_t n, std::size_t k,
               std::int64_t* indices, T* mask, std::size_t num_threads) {
    ScanAbove<T> scan;
    if constexpr (std::is_same_v<T, float>) {
        scan = scan_above_f32();
    } else {
        scan = scan_above_generic<T>;
    }
    std::atomic<bool> finite{true};
    parallel_for(rows, threads_for(rows * n, num_threads), [&](std::size_t r) {
        thread_local std::vector<std::pair<T, std::int64_t>> best;
        best.resize(k);
        const T* s = scores + r * n;
        if (!topk_row(s, n, k, kth_best_floor(s, n, k), best.data(), scan))
            finite.store(false, std::memory_order_relaxed);
        T* m = mask + r * n;
        std::fill(m, m + n, T(0));
        for (std::size_t j = 0; j < k; ++j) {
            indices[r * k + j] = best[j].second;
            m[best[j].second] = T(1);
        }
    });
    if (!finite.load()) not_finite("scores");
}

// out = J(softmax(s * inv_tau))^T g for one row, in passes the compiler
// vectorises: the max; the numerators; their sum and their dot with g (in
// vector-register lanes, summed in double); the product.
template <class T>
EVIDEX_ROW_INLINE void softmax_backward_row(const T* s, const T* g, std::size_t n, T inv_tau,
                                            T* e, T* out) {
    const T mx = lanes_max(s, n) * inv_tau;
    for (std::size_t i = 0; i < n; ++i) e[i] = exp_of(s[i] * inv_tau - mx);
    Wide<T> sum_v = {}, dot_v = {}, sum_w = {}, dot_w = {};
    std::size_t i = 0;
    for (; i + 2 * kWide <= n; i += 2 * kWide) {
        const Wide<T> v = load_wide(e + i), w = load_wide(e + i + kWide);
        sum_v += v;
        dot_v += v * load_wide(g + i);
        sum_w += w;
        dot_w += w * load_wide(g + i + kWide);
    }
    for (; i + kWide <= n; i += kWide) {
        const Wide<T> v = load_wide(e + i);
        sum_v += v;
        dot_v += v * load_wide(g + i);
    }
    sum_v += sum_w;
    dot_v += dot_w;
    double total = sum_lanes(sum_v), dot = sum_lanes(dot_v);
    for (; i < n; ++i) {
        total += e[i];
        dot += static_cast<double>(e[i]) * g[i];
    }
    const T mean = static_cast<T>(dot / total);
    const T scale = static_cast<T>(inv_tau / total);
    for (std::size_t j = 0; j < n; ++j) out[j] = e[j] * scale * (g[j] - mean);
}

// The same row when most of softmax(s * inv_tau) is exactly 0: at a small tau
// every entry more than 87 / inv_tau below the row's maximum has its numerator
// flushed to 0 (exp_nonpositive), so its gradient is exactly 0 too. Finds the
// others with the top-k scan (bar: the flush point, less a rounding margin),
// computes only those and zero-fills the rest; the result equals the dense
// row's up to summation order. Returns false, having written nothing, when more
// than 1/8 of the row (or of the part scanned so far) survives: there the dense
// passes are faster.
EVIDEX_ISA_CLONES
bool softmax_backward_row_sparse(const float* s, const float* g, std::size_t n, float inv_tau,
                                 std::size_t top, ScanAbove<float> scan, float* e,
                                 std::uint32_t* pos, float* out) {
    // The forward pass's best entry is the row's maximum (checked below: an
    // entry above it falls back to the dense row, which finds the maximum).
    const float mx = s[top] * inv_tau;
    // s <= bar implies s * inv_tau - mx < -87 in float arithmetic: the margin
    // covers the rounding of the products and differences, relative to |mx|.
    const float bar = (mx - 87.0f - (1.0f + std::fabs(mx) * 0x1p-20f)) / inv_tau;
    if (!std::isfinite(bar) || !std::isfinite(mx)) return false;
    const std::size_t cap = n / 8;
    std::size_t count = 0, i = 0;
    float check = 0;  // the forward pass has checked finiteness
    for (;;) {
        std::uint64_t hits = 0;
        i = scan(s, i, n, bar, &check, &hits);
        if (i + kChunk > n) break;
        for (; hits; hits &= hits - 1)
            pos[count++] = static_cast<std::uint32_t>(i + __builtin_ctzll(hits));
        i += kChunk;
        // Dense so far: give up early, before the wasted scan costs much.
        if (count > std::min(cap, i / 8 + 16)) return false;
    }
    for (; i < n; ++i)
        if (s[i] > bar) pos[count++] = static_cast<std::uint32_t>(i);
    if (count > cap) return false;
    float highest = -std::numeric_limits<float>::infinity();
    for (std::size_t c = 0; c < count; ++c) {
        e[c] = s[pos[c]] * inv_tau - mx;
        highest = e[c] > highest ? e[c] : highest;
    }
    // The top entry itself may land a rounding error above 0 (the product and
    // difference contract to an FMA); anything more means mx was not the maximum.
    if (highest > (1.0f + std::fabs(mx)) * 0x1p-20f) return false;
    for (std::size_t c = 0; c < count; ++c) e[c] = exp_nonpositive(e[c]);
    // Four partial sums each: one chain would cost an add's latency per entry.
    double total_part[4] = {}, dot_part[4] = {};
    std::size_t c = 0;
    for (; c + 4 <= count; c += 4)
        for (std::size_t j = 0; j < 4; ++j) {
            total_part[j] += e[c + j];
            dot_part[j] += static_cast<double>(e[c + j]) * g[pos[c + j]];
        }
    for (; c < count; ++c) {
        total_part[0] += e[c];
        dot_part[0] += static_cast<double>(e[c]) * g[pos[c]];
    }
    const double total = (total_part[0] + total_part[1]) + (total_part[2] + total_part[3]);
    const double dot = (dot_part[0] + dot_part[1]) + (dot_part[2] + dot_part[3]);
    const float mean = static_cast<float>(dot / total);
    const float scale = static_cast<float>(inv_tau / total);
    std::fill(out, out + n, 0.0f);
    for (std::size_t c = 0; c < count; ++c) out[pos[c]] = e[c] * scale * (g[pos[c]] - mean);
    return true;
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
        ScanAbove<float> scan = scan_above_f32();
        parallel_for(rows, threads_for(rows * n, num_threads), [&](std::size_t r) {
            thread_local std::vector<T> e;
            e.resize(n);
            const T inv_tau = static_cast<T>(1.0 / tau);
            if constexpr (std::is_same_v<T, float>) {
                thread_local std::vector<std::uint32_t> pos;
                pos.resize(n / 8 + kChunk + 1);
                if (!softmax_backward_row_sparse(scores + r * n, grad + r * n, n, inv_tau,
                                                 static_cast<std::size_t>(indices[r * k]), scan,
                                                 e.data(), pos.data(), grad_scores + r * n))
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
    // Boxes whose products would overflow take the scaled formula, pair by pair;
    // the vectorised loops below never see them.
    bool wide_b = false;
    for (std::size_t j = 0; j < nb; ++j)
        wide_b = wide_b || max_abs_coordinate(b + 4 * j) > overflow_limit<T>();
    parallel_for(na, threads_for(na * nb, num_threads), [&](std::size_t i) {
        const T* ai = a + 4 * i;
        const T area = box_area(ai);
        const T ax1 = ai[0], ay1 = ai[1], ax2 = ai[2], ay2 = ai[3];
        T* o = out + i * nb;
        if (wide_b || max_abs_coordinate(ai) > overflow_limit<T>()) {
            for (std::size_t j = 0; j < nb; ++j) o[j] = iou_pair(ai, b + 4 * j, generalized);
        } else if (generalized) {
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
void box_iou_matrix_backward(const T* a, std::size_t na, const T* b, std::size_t nb,
                             const T* g, bool generalized, T* ga, T* gb,
                             std::size_t num_threads) {
    // Two passes, rows then columns, each owning what it writes: no atomics and
    // the same sums in the same order on every run (as the CUDA kernels do).
    const std::size_t threads = threads_for(na * nb, num_threads);
    parallel_for(na, threads, [&](std::size_t i) {
        T acc[4] = {T(0), T(0), T(0), T(0)}, unused[4];
        for (std::size_t j = 0; j < nb; ++j)
            box_iou_backward(a + 4 * i, b + 4 * j, g[i * nb + j], generalized, T(0), acc, unused);
        for (int c = 0; c < 4; ++c) ga[4 * i + c] = acc[c];
    });
    parallel_for(nb, threads, [&](std::size_t j) {
        T acc[4] = {T(0), T(0), T(0), T(0)}, unused[4];
        for (std::size_t i = 0; i < na; ++i)
            box_iou_backward(a + 4 * i, b + 4 * j, g[i * nb + j], generalized, T(0), unused, acc);
        for (int c = 0; c < 4; ++c) gb[4 * j + c] = acc[c];
    });
}

template <class T>
void box_iou_pairs(const T* a, const T* b, std::size_t n, bool generalized, T eps, T* out) {
    check_finite(a, 4 * n, "boxes1");
    check_finite(b, 4 * n, "boxes2");
    for (std::size_t i = 0; i < n; ++i) out[i] = iou_pair(a + 4 * i, b + 4 * i, generalized, eps);
}

template <class T>
void box_iou_pairs_backward(const T* a, const T* b, const T* g, std::size_t n, bool generalized,
                            T eps, T* ga, T* gb) {
    std::fill(ga, ga + 4 * n, T(0));
    std::fill(gb, gb + 4 * n, T(0));
    for (std::size_t i = 0; i < n; ++i)
        box_iou_backward(a + 4 * i, b + 4 * i, g[i], generalized, eps, ga + 4 * i, gb + 4 * i);
}

template <class T>
void temporal_iou_matrix(const T* a, std::size_t na, const T* b, std::size_t nb, T* out) {
    check_finite(a, 2 * na, "intervals1");
    check_finite(b, 2 * nb, "intervals2");
    for (std::size_t i = 0; i < na; ++i)
        for (std::size_t j = 0; j < nb; ++j) out[i * nb + j] = temporal_iou(a + 2 * i, b + 2 * j);
}

// One frame against every query in a single read of the frame: its squared norm
// rides along with the first query's dot, in vector lanes (summed in double).
template <class T>
EVIDEX_ROW_INLINE double frame_row(const T* f, const T* queries, std::size_t nq, std::size_t d,
                                   double* dots) {
    // Two accumulators each, as in lanes_dot.
    Wide<T> norm_v = {}, dot_v = {}, norm_w = {}, dot_w = {};
    std::size_t i = 0;
    for (; i + 2 * kWide <= d; i += 2 * kWide) {
        const Wide<T> v = load_wide(f + i), w = load_wide(f + i + kWide);
        norm_v += v * v;
        dot_v += v * load_wide(queries + i);
        norm_w += w * w;
        dot_w += w * load_wide(queries + i + kWide);
    }
    for (; i + kWide <= d; i += kWide) {
        const Wide<T> v = load_wide(f + i);
        norm_v += v * v;
        dot_v += v * load_wide(queries + i);
    }
    norm_v += norm_w;
    dot_v += dot_w;
    double sq = sum_lanes(norm_v), dot = sum_lanes(dot_v);
    for (; i < d; ++i) {
        sq += static_cast<double>(f[i]) * f[i];
        dot += static_cast<double>(f[i]) * queries[i];
    }
    dots[0] = dot;
    for (std::size_t q = 1; q < nq; ++q) dots[q] = lanes_dot(f, queries + q * d, d);
    return sq;
}

// A block of frames: squared norms and dots with every query, per ISA for float.
template <class T>
EVIDEX_ROW_INLINE void frame_block(const T* frames, std::size_t count, const T* queries,
                                   std::size_t nq, std::size_t d, double* sq, double* dots) {
    for (std::size_t t = 0; t < count; ++t)
        sq[t] = frame_row(frames + t * d, queries, nq, d, dots + t * nq);
}

EVIDEX_ISA_CLONES
void frame_block_f32(const float* frames, std::size_t count, const float* queries,
                     std::size_t nq, std::size_t d, double* sq, double* dots) {
    frame_block(frames, count, queries, nq, d, sq, dots);
}

template <class T>
void frame_scores(const T* frames, std::size_t nt, const T* queries, std::size_t nq,
                  std::size_t d, T* out, std::size_t num_threads) {
    std::vector<double> qnorm(nq);
    for (std::size_t q = 0; q < nq; ++q) {
        const T* qv = queries + q * d;
        double self_dot;  // frame_row's dot output; the squared norm is its return value
        const double sq = frame_row(qv, qv, 1, d, &self_dot);
        if (!std::isfinite(sq)) not_finite("queries");  // a NaN or inf makes the norm so
        qnorm[q] = std::max(std::sqrt(sq), 1e-12);
    }
    // One pass over the frames (the large operand), in blocks: each frame's norm
    // and its dots with every query while it is in cache; then the block's
    // normalisation in loops the compiler vectorises (sqrt and division included).
    constexpr std::size_t kBlock = 128;
    std::atomic<bool> finite{true};
    const std::size_t blocks = (nt + kBlock - 1) / kBlock;
    parallel_for(blocks, threads_for(nq * nt * d, num_threads), [&](std::size_t b) {
        const std::size_t t0 = b * kBlock, count = std::min(kBlock, nt - t0);
        double sq[kBlock], inv[kBlock];
        std::vector<double> dots(count * nq);
        if constexpr (std::is_same_v<T, float>) {
            frame_block_f32(frames + t0 * d, count, queries, nq, d, sq, dots.data());
        } else {
            frame_block(frames + t0 * d, count, queries, nq, d, sq, dots.data());
        }
        double check = 0.0;
        for (std::size_t t = 0; t < count; ++t) {
            check += sq[t] * 0.0;
            inv[t] = 1.0 / std::max(std::sqrt(sq[t]), 1e-12);
        }
        if (check != 0.0) finite.store(false, std::memory_order_relaxed);
        for (std::size_t q = 0; q < nq; ++q) {
            T* row = out + q * nt + t0;
            const double qi = 1.0 / qnorm[q];
            for (std::size_t t = 0; t < count; ++t)
                row[t] = static_cast<T>(dots[t * nq + q] * inv[t] * qi);
        }
    });
    if (!finite.load()) not_finite("frames");
}

template <class T>
std::size_t select_keyframes(const T* scores, std::size_t n, std::size_t k, std::size_t min_gap,
                             std::int64_t* out) {
    check_finite(scores, n, "scores");
    // Greedy NMS visits frames best first, but usually stops after a few hundred of
    // them: a heap (O(n) to build, O(log n) a visit) instead of sorting all n.
    // Ties go to the lower index, as a stable sort would order them.
    std::vector<std::int64_t> heap(n);
    std::iota(heap.begin(), heap.end(), 0);
    const auto worse = [scores](std::int64_t a, std::int64_t b) {
        return scores[a] < scores[b] || (scores[a] == scores[b] && a > b);
    };
    std::make_heap(heap.begin(), heap.end(), worse);
    // A frame is blocked once a kept frame lies within min_gap - 1 of it.
    std::vector<char> blocked(n, 0);
    std::size_t kept = 0;
    for (auto end = heap.end(); end != heap.begin() && kept < k; --end) {
        std::pop_heap(heap.begin(), end, worse);
        const std::int64_t f = *(end - 1);
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
    template void box_iou_matrix_backward<T>(const T*, std::size_t, const T*, std::size_t,    \
                                             const T*, bool, T*, T*, std::size_t);           \
    template void box_iou_pairs<T>(const T*, const T*, std::size_t, bool, T, T*);              \
    template void box_iou_pairs_backward<T>(const T*, const T*, const T*, std::size_t, bool,   \
                                            T, T*, T*);                                      \
    template void temporal_iou_matrix<T>(const T*, std::size_t, const T*, std::size_t, T*);    \
    template void frame_scores<T>(const T*, std::size_t, const T*, std::size_t, std::size_t,  \
                                  T*, std::size_t);                                            \
    template std::size_t select_keyframes<T>(const T*, std::size_t, std::size_t, std::size_t,  \
                                             std::int64_t*);

EVIDEX_INSTANTIATE(float)
EVIDEX_INSTANTIATE(double)

}  // namespace ops
}  // namespace evidex
