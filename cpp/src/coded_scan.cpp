#include "evidex/coded_scan.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace evidex {

// e[j] = base + scale * est[j] (+ extra[j]) for a group of 32 codes, and the
// bit mask of those below `bound` (SSE2, the x86-64 baseline: this runs for
// every code a query scans, so it must not be a scalar loop).
std::uint32_t estimates_below(const std::uint16_t* est, const float* extra, float base,
                              float scale, float bound, float* e) {
#if defined(__SSE2__)
    const __m128 b = _mm_set1_ps(base), sc = _mm_set1_ps(scale), lim = _mm_set1_ps(bound);
    const __m128i zero = _mm_setzero_si128();
    std::uint32_t mask = 0;
    for (std::size_t j = 0; j < 32; j += 8) {
        const __m128i w = _mm_loadu_si128(reinterpret_cast<const __m128i*>(est + j));
        __m128 lo = _mm_add_ps(b, _mm_mul_ps(sc, _mm_cvtepi32_ps(_mm_unpacklo_epi16(w, zero))));
        __m128 hi = _mm_add_ps(b, _mm_mul_ps(sc, _mm_cvtepi32_ps(_mm_unpackhi_epi16(w, zero))));
        if (extra != nullptr) {
            lo = _mm_add_ps(lo, _mm_loadu_ps(extra + j));
            hi = _mm_add_ps(hi, _mm_loadu_ps(extra + j + 4));
        }
        _mm_store_ps(e + j, lo);
        _mm_store_ps(e + j + 4, hi);
        mask |= static_cast<std::uint32_t>(_mm_movemask_ps(_mm_cmplt_ps(lo, lim))) << j;
        mask |= static_cast<std::uint32_t>(_mm_movemask_ps(_mm_cmplt_ps(hi, lim))) << (j + 4);
    }
    return mask;
#else
    std::uint32_t mask = 0;
    for (std::size_t j = 0; j < 32; ++j) {
        e[j] = base + scale * static_cast<float>(est[j]) + (extra ? extra[j] : 0.f);
        mask |= static_cast<std::uint32_t>(e[j] < bound) << j;
    }
    return mask;
#endif
}

std::uint32_t sums_below(const std::uint16_t* est, std::uint32_t limit) {
    if (limit == 0) return 0;
    if (limit > 0xffff) return ~std::uint32_t{0};
#if defined(__SSE2__)
    // est <= limit - 1: the unsigned saturating difference is zero.
    const __m128i top = _mm_set1_epi16(static_cast<short>(limit - 1)), zero = _mm_setzero_si128();
    std::uint32_t mask = 0;
    for (std::size_t j = 0; j < 32; j += 16) {
        const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(est + j));
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(est + j + 8));
        const __m128i ya = _mm_cmpeq_epi16(_mm_subs_epu16(a, top), zero);
        const __m128i yb = _mm_cmpeq_epi16(_mm_subs_epu16(b, top), zero);
        mask |= static_cast<std::uint32_t>(_mm_movemask_epi8(_mm_packs_epi16(ya, yb))) << j;
    }
    return mask;
#else
    std::uint32_t mask = 0;
    for (std::size_t j = 0; j < 32; ++j) mask |= static_cast<std::uint32_t>(est[j] < limit) << j;
    return mask;
#endif
}

}  // namespace evidex
