#include "evidex/quantized_scan.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#define EVIDEX_X86 1
#include <immintrin.h>
#endif

#include "evidex/beam.h"  // prefetch_vector

namespace evidex {
namespace {

// Codes and query values lie in [-levels, levels]; vectors' codes are stored
// biased by levels + 1 (the kernels' unsigned operand). AVX2's multiplies add
// pairs of products in int16, which 7-bit codes keep from saturating; VNNI adds
// four products straight into int32, so 8-bit codes halve the error there, up
// to 65,536 dimensions: the biased sums (4 * 255 * 127 per 4 dimensions) stay
// within int32.
constexpr int kLevels7 = 63, kLevels8 = 127;
constexpr std::size_t kMaxDim8 = 65536;
constexpr double kHuge = 1e15;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr std::size_t W = kPanelWidth;
constexpr std::size_t kLowerBytes = 512 * 1024;  // the deferred rows' lower bounds

// What the error bound needs to know about one quantised vector v ~ scale * c.
struct Quantized {
    float scale = 0.f;
    float code_norm = 0.f;  // |scale * c|
    float err_norm = 0.f;   // |v - scale * c|, rounded up
    float norm_sq = 0.f;    // |v|^2
};

// Where codes go: a query's own row (plain int8), or one lane of a panel
// (biased). one() stores code c of dimension d; eight() (AVX2) the codes of
// d..d+8 held as int32.
struct RowStore {
    std::int8_t* out;
    void one(std::size_t d, int c) const { out[d] = static_cast<std::int8_t>(c); }
#ifdef EVIDEX_X86
    __attribute__((target("avx2,fma"))) void eight(std::size_t d, __m256i c,
                                                   std::int32_t* scratch) const {
        _mm256_store_si256(reinterpret_cast<__m256i*>(scratch), c);
        for (int j = 0; j < 8; ++j) out[d + j] = static_cast<std::int8_t>(scratch[j]);
    }
#endif
};
struct PanelStore {
    std::uint8_t* panel;
    std::size_t lane;
    int bias;
    void one(std::size_t d, int c) const {
        panel[(d / 4) * (4 * W) + lane * 4 + d % 4] = static_cast<std::uint8_t>(c + bias);
    }
#ifdef EVIDEX_X86
    // The low byte of each biased code, four per 128-bit half: dimensions d..d+4
    // and d+4..d+8 go to two consecutive groups of the panel.
    __attribute__((target("avx2,fma"))) void eight(std::size_t d, __m256i c,
                                                   std::int32_t*) const {
        const __m256i low = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                             -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1,
                                             -1, -1, -1, -1);
        const __m256i b = _mm256_shuffle_epi8(_mm256_add_epi32(c, _mm256_set1_epi32(bias)), low);
        const std::int32_t first = _mm256_extract_epi32(b, 0), second = _mm256_extract_epi32(b, 4);
        std::uint8_t* at = panel + (d / 4) * (4 * W) + lane * 4;
        std::memcpy(at, &first, 4);
        std::memcpy(at + 4 * W, &second, 4);
    }
#endif
};

// levels / peak, or 0 (every code 0) where that is not finite: zero and
// subnormal peaks. The bound holds for any codes; these only make it loose.
inline float safe_inverse(float peak, int levels) {
    const float inv = peak > 0.f ? static_cast<float>(levels) / peak : 0.f;
    return std::isfinite(inv) ? inv : 0.f;
}

// The float sums are rounded up by this factor: they round in float32.
inline Quantized finish(float peak, float code2, float err2, float norm2, std::size_t dim,
                        int levels) {
    const float scale = peak / static_cast<float>(levels);
    const float up = 1.0f + 4e-7f * static_cast<float>(dim + 16);
    return {scale, scale * std::sqrt(code2) * up, std::sqrt(err2) * up, norm2};
}

template <class Store>
Quantized quantize_scalar(const float* v, std::size_t dim, std::size_t padded, int levels,
                          const Store& store) {
    float peak = 0.f;
    for (std::size_t d = 0; d < dim; ++d) peak = std::max(peak, std::fabs(v[d]));
    const float scale = peak / static_cast<float>(levels);
    const float inv = safe_inverse(peak, levels);
    float code2 = 0.f, err2 = 0.f, norm2 = 0.f;
    for (std::size_t d = 0; d < dim; ++d) {
        const int c = std::clamp(static_cast<int>(std::nearbyint(v[d] * inv)), -levels, levels);
        store.one(d, c);
        const float e = v[d] - scale * static_cast<float>(c);
        code2 += static_cast<float>(c * c);
        err2 += e * e;
        norm2 += v[d] * v[d];
    }
    for (std::size_t d = dim; d < padded; ++d) store.one(d, 0);
    return finish(peak, code2, err2, norm2, dim, levels);
}

#ifdef EVIDEX_X86
__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

__attribute__((target("avx2,fma"))) inline float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

// v[d..d+8), the lanes past dim loaded as zeros (code 0).
__attribute__((target("avx2,fma"))) inline __m256 load8(const float* v, std::size_t d,
                                                        std::size_t dim) {
    if (d + 8 <= dim) return _mm256_loadu_ps(v + d);
    const __m256i ramp = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(dim - d)), ramp);
    return _mm256_maskload_ps(v + d, live);
}

// Eight dimensions at a time.
template <class Store>
__attribute__((target("avx2,fma"))) Quantized quantize_avx2(const float* v, std::size_t dim,
                                                            std::size_t padded, int levels,
                                                            const Store& store) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 peak8 = _mm256_setzero_ps();
    for (std::size_t d = 0; d < dim; d += 8) peak8 = _mm256_max_ps(peak8, _mm256_andnot_ps(sign, load8(v, d, dim)));
    const float peak = hmax(peak8);
    const __m256 scale = _mm256_set1_ps(peak / static_cast<float>(levels));
    const __m256 inv = _mm256_set1_ps(safe_inverse(peak, levels));
    const __m256i hi = _mm256_set1_epi32(levels), lo = _mm256_set1_epi32(-levels);
    __m256 code2 = _mm256_setzero_ps(), err2 = code2, norm2 = code2;
    alignas(32) std::int32_t c8[8];  // scratch for stores without a vector form
    for (std::size_t d = 0; d < padded; d += 8) {
        const __m256 x = d < dim ? load8(v, d, dim) : _mm256_setzero_ps();
        const __m256i c = _mm256_max_epi32(
            lo, _mm256_min_epi32(hi, _mm256_cvtps_epi32(_mm256_mul_ps(x, inv))));
        const __m256 cf = _mm256_cvtepi32_ps(c);
        const __m256 e = _mm256_fnmadd_ps(scale, cf, x);
        code2 = _mm256_fmadd_ps(cf, cf, code2);
        err2 = _mm256_fmadd_ps(e, e, err2);
        norm2 = _mm256_fmadd_ps(x, x, norm2);
        store.eight(d, c, c8);
    }
    return finish(peak, hsum(code2), hsum(err2), hsum(norm2), dim, levels);
}
#endif

template <class Store>
Quantized quantize(const DistanceKernels& k, const float* v, std::size_t dim, std::size_t padded,
                   int levels, const Store& store) {
#ifdef EVIDEX_X86
    if (k.level != SimdLevel::Scalar) return quantize_avx2(v, dim, padded, levels, store);
#endif
    return quantize_scalar(v, dim, padded, levels, store);
}

// Per query: its codes' sum and the coefficients of its bounds (bounds_scalar,
// bounds_avx2, bounds_avx512).
struct QueryTerms {
    std::int32_t bias;  // code bias * sum of its codes: the kernel's sums carry it
    float base;         // the lower bound's constant: 1 (dot products) or |q|^2 (L2), less rounding
    float norm_sq_coef; // times a vector's |x|^2 (L2 only)
    float approx_coef;  // times s * (integer dot): the approximate dot product's part
    float code_coef;    // times |s c|: the query's quantisation error
    float err_coef;     // times |x - s c|: the vector's, seen by |q|
    float norm_coef;    // times |x|: the float32 rounding allowance
    float base_up;      // the upper bound's constant: rounding added, not taken
    float norm_sq_coef_up;
};

// What the bound needs about the panel's vectors, lane by lane.
struct Lanes {
    alignas(32) float scale[W], code_norm[W], err_norm[W], norm[W], norm_sq[W], always[W];
};

// For one query, each lane's lower and upper bound on its distance. The
// distance is 1 - q.x (or |q|^2 + |x|^2 - 2 q.x) and
// q.x = t s (q'.c) + (q - t q').(s c) + q.(x - s c), so by Cauchy-Schwarz it lies
// within |q - t q'| |s c| + |q| |x - s c| (twice that for L2) of the approximate
// distance, widened by a float32 rounding allowance; `always` (infinity) marks
// vectors scored in float32 regardless (lower bound -inf, upper +inf).
// With Keep, each lane's lower bound into lower[] and its upper bound into
// upper[] (+inf past m); returns the bits of lanes l < m whose upper bound is
// below `cut` (low 16 bits; none without Keep) and of those whose lower bound
// is below `lower_cut` (high 16).
template <bool Keep>
std::uint32_t bounds_scalar(const QueryTerms& t, const std::int32_t* dot, const Lanes& v,
                            std::size_t m, float cut, float lower_cut, float* lower, float* upper) {
    std::uint32_t mask = 0;
    for (std::size_t l = 0; l < W; ++l) {
        const float approx = t.approx_coef * (v.scale[l] * static_cast<float>(dot[l] - t.bias));
        const float slack = t.code_coef * v.code_norm[l] + t.err_coef * v.err_norm[l] +
                            t.norm_coef * v.norm[l];
        const float low = l < m ? t.base + t.norm_sq_coef * v.norm_sq[l] - approx - slack - v.always[l]
                                : kInf;
        if constexpr (Keep) lower[l] = low;
        mask |= static_cast<std::uint32_t>(low < lower_cut) << (l + W);
        if constexpr (Keep) {
            upper[l] = l < m ? t.base_up + t.norm_sq_coef_up * v.norm_sq[l] - approx + slack +
                                   v.always[l]
                             : kInf;
            mask |= static_cast<std::uint32_t>(upper[l] < cut) << l;
        }
    }
    return mask;
}

#ifdef EVIDEX_X86
template <bool Keep>
__attribute__((target("avx2,fma"))) std::uint32_t bounds_avx2(const QueryTerms& t,
                                                              const std::int32_t* dot,
                                                              const Lanes& v, std::size_t m,
                                                              float cut, float lower_cut,
                                                              float* lower, float* upper) {
    std::uint32_t mask = 0;
    for (std::size_t h = 0; h < W; h += 8) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(dot + h));
        const __m256 j = _mm256_cvtepi32_ps(_mm256_sub_epi32(raw, _mm256_set1_epi32(t.bias)));
        const __m256 approx = _mm256_mul_ps(_mm256_set1_ps(t.approx_coef),
                                            _mm256_mul_ps(_mm256_load_ps(v.scale + h), j));
        __m256 slack = _mm256_mul_ps(_mm256_set1_ps(t.code_coef), _mm256_load_ps(v.code_norm + h));
        slack = _mm256_fmadd_ps(_mm256_set1_ps(t.err_coef), _mm256_load_ps(v.err_norm + h), slack);
        slack = _mm256_fmadd_ps(_mm256_set1_ps(t.norm_coef), _mm256_load_ps(v.norm + h), slack);
        const __m256 norm_sq = _mm256_load_ps(v.norm_sq + h), always = _mm256_load_ps(v.always + h);
        const __m256 low =
            _mm256_fmadd_ps(_mm256_set1_ps(t.norm_sq_coef), norm_sq, _mm256_set1_ps(t.base));
        const __m256 lower8 = _mm256_sub_ps(_mm256_sub_ps(_mm256_sub_ps(low, approx), slack), always);
        if constexpr (Keep) _mm256_storeu_ps(lower + h, lower8);
        mask |= static_cast<std::uint32_t>(_mm256_movemask_ps(
                    _mm256_cmp_ps(lower8, _mm256_set1_ps(lower_cut), _CMP_LT_OQ)))
                << (h + W);
        if constexpr (Keep) {
            const __m256 up = _mm256_fmadd_ps(_mm256_set1_ps(t.norm_sq_coef_up), norm_sq,
                                              _mm256_set1_ps(t.base_up));
            const __m256 upper8 =
                _mm256_add_ps(_mm256_add_ps(_mm256_sub_ps(up, approx), slack), always);
            _mm256_storeu_ps(upper + h, upper8);
            mask |= static_cast<std::uint32_t>(_mm256_movemask_ps(
                        _mm256_cmp_ps(upper8, _mm256_set1_ps(cut), _CMP_LT_OQ)))
                    << h;
        }
    }
    if (m < W) {
        if constexpr (Keep)
            for (std::size_t l = m; l < W; ++l) lower[l] = upper[l] = kInf;
        mask &= ((1u << m) - 1u) * 0x10001u;
    }
    return mask;
}

// Sixteen lanes a register: half the instructions of the AVX2 form.
template <bool Keep>
__attribute__((target("avx512f"))) std::uint32_t bounds_avx512(const QueryTerms& t,
                                                               const std::int32_t* dot,
                                                               const Lanes& v, std::size_t m,
                                                               float cut, float lower_cut,
                                                               float* lower, float* upper) {
    static_assert(W == 16, "one register of lanes");
    const __mmask16 live = static_cast<__mmask16>((1u << m) - 1u);
    const __m512i raw = _mm512_loadu_si512(dot);
    const __m512 j = _mm512_cvtepi32_ps(_mm512_sub_epi32(raw, _mm512_set1_epi32(t.bias)));
    const __m512 approx =
        _mm512_mul_ps(_mm512_set1_ps(t.approx_coef), _mm512_mul_ps(_mm512_loadu_ps(v.scale), j));
    __m512 slack = _mm512_mul_ps(_mm512_set1_ps(t.code_coef), _mm512_loadu_ps(v.code_norm));
    slack = _mm512_fmadd_ps(_mm512_set1_ps(t.err_coef), _mm512_loadu_ps(v.err_norm), slack);
    slack = _mm512_fmadd_ps(_mm512_set1_ps(t.norm_coef), _mm512_loadu_ps(v.norm), slack);
    const __m512 norm_sq = _mm512_loadu_ps(v.norm_sq), always = _mm512_loadu_ps(v.always);
    const __m512 inf = _mm512_set1_ps(kInf);
    const __m512 low =
        _mm512_fmadd_ps(_mm512_set1_ps(t.norm_sq_coef), norm_sq, _mm512_set1_ps(t.base));
    const __m512 lower16 = _mm512_mask_blend_ps(
        live, inf, _mm512_sub_ps(_mm512_sub_ps(_mm512_sub_ps(low, approx), slack), always));
    if constexpr (Keep) _mm512_storeu_ps(lower, lower16);
    std::uint32_t mask =
        static_cast<std::uint32_t>(_mm512_cmp_ps_mask(lower16, _mm512_set1_ps(lower_cut), _CMP_LT_OQ))
        << W;
    if constexpr (Keep) {
        const __m512 up =
            _mm512_fmadd_ps(_mm512_set1_ps(t.norm_sq_coef_up), norm_sq, _mm512_set1_ps(t.base_up));
        const __m512 upper16 = _mm512_mask_blend_ps(
            live, inf, _mm512_add_ps(_mm512_add_ps(_mm512_sub_ps(up, approx), slack), always));
        _mm512_storeu_ps(upper, upper16);
        mask |= _mm512_cmp_ps_mask(upper16, _mm512_set1_ps(cut), _CMP_LT_OQ);
    }
    return mask;
}
#endif

// The least float above v (v itself at +inf or NaN): "at most v" as "below
// next_up(v)". std::nextafter is a libm call.
inline float next_up(float v) {
    if (!(v < kInf)) return v;
    if (v == 0.0f) return std::numeric_limits<float>::denorm_min();
    std::uint32_t bits;
    std::memcpy(&bits, &v, 4);
    bits += v > 0.0f ? 1 : -1;
    std::memcpy(&v, &bits, 4);
    return v;
}

// The kk-th smallest of the values offered so far (infinity while fewer than kk
// came). Up to kSortedKth values are kept sorted, a value inserted in place (an
// exact bound at every step: fewest offers); more are appended below the bound
// and cut to the kk smallest when the buffer fills, as NearestInOrder does.
class KthSmallest {
public:
    static constexpr std::size_t kSortedKth = 64;
    explicit KthSmallest(std::size_t kk) : kk_(kk) {
        if (kk_ > kSortedKth) buffer_.reserve(2 * kk_);
    }
    float threshold() const { return bound_; }
    // NearestInLanes's form (the row unused): either keeps the upper bounds.
    void offer(float v, std::uint32_t /*row*/) {
        if (!(v < bound_)) return;
        if (kk_ <= kSortedKth) {  // insert in place; sorted_[kk - 1] is the bound once full
            std::size_t i = held_ < kk_ ? held_++ : kk_ - 1;
            for (; i > 0 && sorted_[i - 1] > v; --i) sorted_[i] = sorted_[i - 1];
            sorted_[i] = v;
            if (held_ == kk_) bound_ = sorted_[kk_ - 1];
            return;
        }
        buffer_.push_back(v);
        if (buffer_.size() >= 2 * kk_) cut();
    }
    // The exact kk-th smallest so far.
    float settle() {
        if (kk_ > kSortedKth) cut();
        return bound_;
    }

private:
    void cut() {
        if (buffer_.size() < kk_) return;
        std::nth_element(buffer_.begin(), buffer_.begin() + static_cast<std::ptrdiff_t>(kk_ - 1),
                         buffer_.end());
        bound_ = buffer_[kk_ - 1];
        buffer_.resize(kk_);
    }
    std::size_t kk_, held_ = 0;
    float bound_ = kInf;
    float sorted_[kSortedKth] = {};
    std::vector<float> buffer_;
};

}  // namespace

bool quantized_scan_pays(const DistanceKernels& k, std::size_t nq, std::size_t dim,
                         std::size_t n) {
    // VNNI's 8-bit products (int8_fast) pay from a fourth as many vectors
    // (bench/RESULTS.md, "Deferred rescoring in the 8-bit scan").
    return nq >= 16 && dim >= 96 && n >= (k.int8_fast ? 320u : 1024u);
}

bool quantized_knn(const DistanceKernels& k, bool l2, const float* queries, std::size_t stride,
                   std::size_t nq, std::size_t dim, const float* const* rows, std::size_t n,
                   std::size_t kk, std::uint32_t* out_rows, float* out_dist) {
    const std::size_t padded = (dim + 7) / 8 * 8;
    const int levels = k.int8_fast && padded <= kMaxDim8 ? kLevels8 : kLevels7;
    const int code_bias = levels + 1;
    // The allowance for float32 rounding (relative, of |q| |x| terms), in the
    // approximate distance and in the float32 scan it stands in for.
    const float rel = 3e-7f * static_cast<float>(dim + 64);

    thread_local std::vector<std::int8_t> qcodes;
    thread_local std::vector<QueryTerms> terms;
    qcodes.assign(nq * padded, 0);
    terms.resize(nq);
    for (std::size_t i = 0; i < nq; ++i) {
        const float* q = queries + i * stride;
        const Quantized z =
            quantize(k, q, dim, padded, levels, RowStore{qcodes.data() + i * padded});
        const double qn = std::sqrt(static_cast<double>(z.norm_sq));
        if (!(qn < kHuge)) return false;
        std::int32_t sum = 0;
        for (std::size_t d = 0; d < dim; ++d) sum += qcodes[i * padded + d];
        const float twice = l2 ? 2.0f : 1.0f;  // L2 carries -2 q.x
        const float q_norm = static_cast<float>(qn);
        terms[i] = {code_bias * sum,
                    l2 ? z.norm_sq * (1.0f - rel) : 1.0f,
                    l2 ? 1.0f - rel : 0.0f,
                    twice * z.scale,
                    twice * (z.err_norm + rel * z.code_norm),
                    twice * q_norm * (1.0f + rel),
                    twice * rel * q_norm,
                    l2 ? z.norm_sq * (1.0f + rel) : 1.0f,
                    l2 ? 1.0f + rel : 0.0f};
    }

    // The first rows' rescoring is deferred until all of them are bounded: by
    // then, per query, the kk-th smallest upper bound so far (U) excludes every
    // row whose lower bound is above it, leaving ~15-20 rows per query for
    // k = 10 at 400-1,000 MiniLM vectors, where rescoring as rows came (the
    // threshold settling meanwhile) took 65-80. U settled, later rows are
    // rescored as they come, against U as it stood and the exact kk-th
    // distance so far (a heap's, soon the lower): keeping their bounds, or
    // lowering U further, would cost more than it saves. The deferred rows'
    // lower bounds (kLowerBytes at most) stay in L2.
    const std::size_t deferred_rows =
        std::min(n, std::max<std::size_t>(W, kLowerBytes / (nq * sizeof(float)) / W * W));
    const std::size_t stride_low = (deferred_rows + W - 1) / W * W;
    thread_local std::vector<std::uint8_t> panel;
    thread_local std::vector<std::int32_t> dots;
    thread_local std::vector<float> lower;
    panel.assign(padded * W, 0);
    dots.resize(nq * W);
    lower.resize(nq * stride_low);
    // The deferred rows' nearest are kept without a heap (U bounds them); the
    // rows after them go to a heap started from those.
    std::vector<NearestInOrder> first(nq, NearestInOrder(kk));
    std::vector<Nearest> rest;
    // Per query, the kk smallest upper bounds so far (U is the kk-th): in
    // registers where they fit (NearestInLanes), else KthSmallest.
    auto scan = [&](auto upper_keeper) {
        std::vector<decltype(upper_keeper)> uppers(nq, upper_keeper);
        // Both bounds kept while deferring (for U), lower bounds alone after it.
#ifdef EVIDEX_X86
        const auto both = k.level == SimdLevel::AVX512 ? bounds_avx512<true>
                          : k.level == SimdLevel::AVX2 ? bounds_avx2<true>
                                                       : bounds_scalar<true>;
        const auto lower_only = k.level == SimdLevel::AVX512 ? bounds_avx512<false>
                                : k.level == SimdLevel::AVX2 ? bounds_avx2<false>
                                                             : bounds_scalar<false>;
#else
        const auto both = bounds_scalar<true>;
        const auto lower_only = bounds_scalar<false>;
#endif
        auto distance = [&](std::size_t i, std::size_t r) {
            const float* q = queries + i * stride;
            return l2 ? k.l2sq(q, rows[r], dim) : 1.0f - k.dot(q, rows[r], dim);
        };
        // Rescored: rows whose lower bound is at most U (below cap = next_up(U))
        // and below the kk-th distance scored so far (ties keep the earlier row).
        std::vector<float> cap(nq);
        std::vector<std::uint32_t> kept_rows(kk);
        std::vector<float> kept_dist(kk);
        alignas(32) float upper[W];
        static_assert(2 * W <= 32, "both masks in one word");
        Lanes lanes;
        const std::size_t row_bytes = dim * sizeof(float);
        for (std::size_t j = 0; j < std::min(n, W); ++j)
            prefetch_vector(reinterpret_cast<const char*>(rows[j]), row_bytes);
        for (std::size_t b = 0; b < n; b += W) {
            const std::size_t m = std::min(W, n - b);
            for (std::size_t l = 0; l < W; ++l) {
                if (b + W + l < n)
                    prefetch_vector(reinterpret_cast<const char*>(rows[b + W + l]), row_bytes);
                Quantized z;
                if (l < m)
                    z = quantize(k, rows[b + l], dim, padded, levels,
                                 PanelStore{panel.data(), l, code_bias});
                const double xn = std::sqrt(static_cast<double>(z.norm_sq));
                const bool huge = !(xn < kHuge);
                lanes.scale[l] = huge ? 0.f : z.scale;
                lanes.code_norm[l] = huge ? 0.f : z.code_norm;
                lanes.err_norm[l] = huge ? 0.f : z.err_norm;
                lanes.norm[l] = huge ? 0.f : static_cast<float>(xn);
                lanes.norm_sq[l] = huge ? 0.f : z.norm_sq;
                lanes.always[l] = huge ? kInf : 0.f;
            }
            // Lanes past m keep the previous block's codes: finite, and their
            // bounds are +inf (never rescored, never U).
            k.int8_panel(qcodes.data(), padded, nq, panel.data(), padded, dots.data());
            const bool deferred = b < deferred_rows;
            if (deferred) {
                for (std::size_t i = 0; i < nq; ++i) {
                    auto& u = uppers[i];
                    for (std::uint32_t below =
                             both(terms[i], dots.data() + i * W, lanes, m, u.threshold(), -kInf,
                                  lower.data() + i * stride_low + b, upper);
                         below != 0; below &= below - 1) {
                        const int l = __builtin_ctz(below);
                        u.offer(upper[l], static_cast<std::uint32_t>(b) + static_cast<std::uint32_t>(l));
                    }
                }
            } else {
                for (std::size_t i = 0; i < nq; ++i) {
                    Nearest& best = rest[i];
                    for (std::uint32_t below =
                             lower_only(terms[i], dots.data() + i * W, lanes, m, -kInf,
                                        std::min(cap[i], best.threshold()), nullptr, nullptr) >>
                             W;
                         below != 0; below &= below - 1) {
                        const std::size_t r = b + static_cast<std::size_t>(__builtin_ctz(below));
                        best.offer(distance(i, r), static_cast<std::uint32_t>(r));
                    }
                }
            }
            if (deferred && b + W >= deferred_rows) {
                for (std::size_t i = 0; i < nq; ++i) {
                    cap[i] = next_up(uppers[i].settle());
                    const float* low = lower.data() + i * stride_low;
                    for (std::size_t r0 = 0; r0 < deferred_rows; r0 += W)
                        for (std::uint32_t below =
                                 lanes_below(low + r0, W, std::min(cap[i], first[i].threshold()));
                             below != 0; below &= below - 1) {
                            const std::size_t r =
                                r0 + static_cast<std::size_t>(__builtin_ctz(below));
                            first[i].offer(distance(i, r), static_cast<std::uint32_t>(r));
                        }
                    if (n == deferred_rows) continue;
                    rest.emplace_back(kk);
                    first[i].write(kept_rows.data(), kept_dist.data());
                    for (std::size_t r = 0; r < kk && kept_rows[r] != kNoRow; ++r)
                        rest[i].offer(kept_dist[r], kept_rows[r]);
                }
            }
        }
        for (std::size_t i = 0; i < nq; ++i) {
            if (rest.empty())
                first[i].write(out_rows + i * kk, out_dist + i * kk);
            else
                rest[i].write(out_rows + i * kk, out_dist + i * kk);
        }
    };
    with_keeper<KthSmallest>(k, kk, scan);
    return true;
}

}  // namespace evidex
