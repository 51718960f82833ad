#include "evidex/distance.h"

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#if defined(__x86_64__) || defined(_M_X64)
#define EVIDEX_X86 1
#include <immintrin.h>
#endif

namespace evidex {
namespace {

// ---------------------------------------------------------------- scalar
// Four independent accumulators so the compiler can vectorise at the base ISA
// and the summation order stays close to the SIMD variants.
float dot_scalar(const float* a, const float* b, std::size_t dim) {
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    std::size_t i = 0;
    for (; i + 4 <= dim; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < dim; ++i) s0 += a[i] * b[i];
    return (s0 + s1) + (s2 + s3);
}

float l2sq_scalar(const float* a, const float* b, std::size_t dim) {
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    std::size_t i = 0;
    for (; i + 4 <= dim; i += 4) {
        const float d0 = a[i] - b[i], d1 = a[i + 1] - b[i + 1];
        const float d2 = a[i + 2] - b[i + 2], d3 = a[i + 3] - b[i + 3];
        s0 += d0 * d0;
        s1 += d1 * d1;
        s2 += d2 * d2;
        s3 += d3 * d3;
    }
    for (; i < dim; ++i) {
        const float d = a[i] - b[i];
        s0 += d * d;
    }
    return (s0 + s1) + (s2 + s3);
}

float sq8_l2_scalar(const float* a, const float* w, const std::uint8_t* code, std::size_t n) {
    float s = 0.f;
    for (std::size_t i = 0; i < n; ++i) {
        const float d = a[i] - static_cast<float>(code[i]);
        s += w[i] * d * d;
    }
    return s;
}

float sq8_dot_scalar(const float* a, const float*, const std::uint8_t* code, std::size_t n) {
    float s = 0.f;
    for (std::size_t i = 0; i < n; ++i) s += a[i] * static_cast<float>(code[i]);
    return s;
}

void l2sq4_scalar(const float* q, std::size_t stride, const float* v, std::size_t dim,
                  float* out) {
    for (std::size_t j = 0; j < 4; ++j) out[j] = l2sq_scalar(q + j * stride, v, dim);
}

void dot4_scalar(const float* q, std::size_t stride, const float* v, std::size_t dim,
                 float* out) {
    for (std::size_t j = 0; j < 4; ++j) out[j] = dot_scalar(q + j * stride, v, dim);
}

// Panel kernels (distance.h; L2: squared L2, else dot products): the lane loop
// vectorises at the base ISA.
template <bool L2>
void panel_scalar(const float* q, std::size_t stride, std::size_t nq, const float* panel,
                  std::size_t dim, float* out) {
    for (std::size_t r = 0; r < nq; ++r) {
        float acc[kPanelWidth] = {};
        const float* qr = q + r * stride;
        for (std::size_t d = 0; d < dim; ++d) {
            const float a = qr[d];
            const float* row = panel + d * kPanelWidth;
            for (std::size_t l = 0; l < kPanelWidth; ++l) {
                if constexpr (L2) {
                    const float t = a - row[l];
                    acc[l] += t * t;
                } else {
                    acc[l] += a * row[l];
                }
            }
        }
        std::memcpy(out + r * kPanelWidth, acc, sizeof(acc));
    }
}

// One query against npanels panels: four at a time, then one by one, through a
// SIMD level's kernel for P panels side by side (AVX2's and AVX-512's walk).
using PanelsKernelP = void (*)(const float* q, const float* panels, std::size_t dim, float* out);
template <PanelsKernelP Four, PanelsKernelP One>
void dot_panels_in_fours(const float* q, const float* panels, std::size_t npanels,
                         std::size_t dim, float* out) {
    const std::size_t step = dim * kPanelWidth;
    std::size_t p = 0;
    for (; p + 4 <= npanels; p += 4) Four(q, panels + p * step, dim, out + p * kPanelWidth);
    for (; p < npanels; ++p) One(q, panels + p * step, dim, out + p * kPanelWidth);
}

void dot_panels_scalar(const float* q, const float* panels, std::size_t npanels,
                       std::size_t dim, float* out) {
    for (std::size_t p = 0; p < npanels; ++p)
        panel_scalar<false>(q, 0, 1, panels + p * dim * kPanelWidth, dim, out + p * kPanelWidth);
}

void int8_panel_scalar(const std::int8_t* q, std::size_t stride, std::size_t nq,
                       const std::uint8_t* panel, std::size_t dim, std::int32_t* out) {
    for (std::size_t r = 0; r < nq; ++r) {
        std::int32_t acc[kPanelWidth] = {};
        const std::int8_t* qr = q + r * stride;
        for (std::size_t d = 0; d < dim; d += 4) {
            const std::uint8_t* group = panel + d * kPanelWidth;
            for (std::size_t l = 0; l < kPanelWidth; ++l)
                for (std::size_t j = 0; j < 4; ++j) acc[l] += qr[d + j] * group[l * 4 + j];
        }
        std::memcpy(out + r * kPanelWidth, acc, sizeof(acc));
    }
}

void fastscan32_scalar(const std::uint8_t* block, const std::uint8_t* lut, std::size_t nsub,
                       std::uint16_t* out) {
    std::uint32_t acc[32] = {};
    for (std::size_t s = 0; s < nsub; ++s) {
        const std::uint8_t* b = block + s * 16;
        const std::uint8_t* t = lut + s * 16;
        for (std::size_t j = 0; j < 16; ++j) {
            acc[j] += t[b[j] & 15];
            acc[j + 16] += t[b[j] >> 4];
        }
    }
    for (std::size_t j = 0; j < 32; ++j) out[j] = static_cast<std::uint16_t>(acc[j]);
}

void fastscan16_scalar(const std::uint8_t* block, const std::uint8_t* lut, std::size_t nsub,
                       std::uint16_t* out) {
    std::uint32_t acc[16] = {};
    for (std::size_t s = 0; s < nsub; s += 4) {
        const std::uint8_t* b = block + s * 8;
        const std::uint8_t* t = lut + s * 16;
        for (std::size_t j = 0; j < 16; ++j)
            acc[j] += t[b[j] & 15] + t[32 + (b[j] >> 4)] + t[16 + (b[16 + j] & 15)] +
                      t[48 + (b[16 + j] >> 4)];
    }
    for (std::size_t j = 0; j < 16; ++j) out[j] = static_cast<std::uint16_t>(acc[j]);
}

#ifdef EVIDEX_X86
// ---------------------------------------------------------------- AVX2 + FMA
__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v);
    __m128 hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    __m128 sh = _mm_movehdup_ps(lo);
    lo = _mm_add_ps(lo, sh);
    sh = _mm_movehl_ps(sh, lo);
    return _mm_cvtss_f32(_mm_add_ss(lo, sh));
}

// Four accumulators: with two, a 384-d product waits on the FMA latency
// (4 cycles) at every step; four keep both FMA units busy on long vectors.
__attribute__((target("avx2,fma"))) float dot_avx2(const float* a, const float* b,
                                                   std::size_t dim) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    std::size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
    }
    acc0 = _mm256_add_ps(acc0, acc2);
    acc1 = _mm256_add_ps(acc1, acc3);
    for (; i + 16 <= dim; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    for (; i + 8 <= dim; i += 8)
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    float s = hsum256(_mm256_add_ps(acc0, acc1));
    for (; i < dim; ++i) s += a[i] * b[i];
    return s;
}

__attribute__((target("avx2,fma"))) float l2sq_avx2(const float* a, const float* b,
                                                    std::size_t dim) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
    std::size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
        const __m256 d2 =
            _mm256_sub_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16));
        const __m256 d3 =
            _mm256_sub_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24));
        acc0 = _mm256_fmadd_ps(d0, d0, acc0);
        acc1 = _mm256_fmadd_ps(d1, d1, acc1);
        acc2 = _mm256_fmadd_ps(d2, d2, acc2);
        acc3 = _mm256_fmadd_ps(d3, d3, acc3);
    }
    acc0 = _mm256_add_ps(acc0, acc2);
    acc1 = _mm256_add_ps(acc1, acc3);
    for (; i + 16 <= dim; i += 16) {
        const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
        acc0 = _mm256_fmadd_ps(d0, d0, acc0);
        acc1 = _mm256_fmadd_ps(d1, d1, acc1);
    }
    for (; i + 8 <= dim; i += 8) {
        const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
        acc0 = _mm256_fmadd_ps(d, d, acc0);
    }
    float s = hsum256(_mm256_add_ps(acc0, acc1));
    for (; i < dim; ++i) {
        const float d = a[i] - b[i];
        s += d * d;
    }
    return s;
}

__attribute__((target("avx2,fma"))) inline __m256 load_codes8(const std::uint8_t* p) {
    return _mm256_cvtepi32_ps(
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

__attribute__((target("avx2,fma"))) float sq8_l2_avx2(const float* a, const float* w,
                                                      const std::uint8_t* code, std::size_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (std::size_t i = 0; i < n; i += 16) {
        const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), load_codes8(code + i));
        const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), load_codes8(code + i + 8));
        acc0 = _mm256_fmadd_ps(_mm256_mul_ps(d0, d0), _mm256_loadu_ps(w + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_mul_ps(d1, d1), _mm256_loadu_ps(w + i + 8), acc1);
    }
    return hsum256(_mm256_add_ps(acc0, acc1));
}

__attribute__((target("avx2,fma"))) float sq8_dot_avx2(const float* a, const float*,
                                                       const std::uint8_t* code, std::size_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (std::size_t i = 0; i < n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load_codes8(code + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load_codes8(code + i + 8), acc1);
    }
    return hsum256(_mm256_add_ps(acc0, acc1));
}

// Four horizontal sums at once: out[j] = sum of the lanes of a_j.
__attribute__((target("avx2,fma"))) inline void hsum4_256(__m256 a0, __m256 a1, __m256 a2,
                                                         __m256 a3, float* out) {
    const __m256 s01 = _mm256_hadd_ps(a0, a1);  // a0 pairs, a1 pairs (per 128-bit half)
    const __m256 s23 = _mm256_hadd_ps(a2, a3);
    const __m256 s = _mm256_hadd_ps(s01, s23);  // [a0 a1 a2 a3] per half
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
}

// The last dim % 8 floats of v, zeros after them (never read past v + dim).
__attribute__((target("avx2,fma"))) inline __m256 load_tail8(const float* v, std::size_t n) {
    alignas(32) static const std::int32_t ramp[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                      0,  0,  0,  0,  0,  0,  0,  0};
    const __m256i mask = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ramp + 8 - n));
    return _mm256_maskload_ps(v, mask);
}

__attribute__((target("avx2,fma"))) void dot4_avx2(const float* q, std::size_t stride,
                                                   const float* v, std::size_t dim,
                                                   float* out) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    std::size_t i = 0;
    for (; i < dim; i += 8) {
        const __m256 x = i + 8 <= dim ? _mm256_loadu_ps(v + i) : load_tail8(v + i, dim - i);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), x, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + stride + i), x, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 2 * stride + i), x, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 3 * stride + i), x, a3);
    }
    hsum4_256(a0, a1, a2, a3, out);
}

__attribute__((target("avx2,fma"))) void l2sq4_avx2(const float* q, std::size_t stride,
                                                    const float* v, std::size_t dim,
                                                    float* out) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (std::size_t i = 0; i < dim; i += 8) {
        // Past dim both the padded queries and the masked load are zero.
        const __m256 x = i + 8 <= dim ? _mm256_loadu_ps(v + i) : load_tail8(v + i, dim - i);
        const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(q + i), x);
        const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(q + stride + i), x);
        const __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(q + 2 * stride + i), x);
        const __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(q + 3 * stride + i), x);
        a0 = _mm256_fmadd_ps(d0, d0, a0);
        a1 = _mm256_fmadd_ps(d1, d1, a1);
        a2 = _mm256_fmadd_ps(d2, d2, a2);
        a3 = _mm256_fmadd_ps(d3, d3, a3);
    }
    hsum4_256(a0, a1, a2, a3, out);
}

// R queries against a panel: 2R accumulators (eight or more cover the FMA
// latency on two pipes), two panel loads and R broadcasts per dimension.
template <int R, bool L2>
__attribute__((target("avx2,fma"))) inline void panel_rows_avx2(const float* q,
                                                               std::size_t stride,
                                                               const float* panel,
                                                               std::size_t dim, float* out) {
    __m256 lo[R], hi[R];
    for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
    for (std::size_t d = 0; d < dim; ++d) {
        const __m256 p0 = _mm256_loadu_ps(panel + d * kPanelWidth);
        const __m256 p1 = _mm256_loadu_ps(panel + d * kPanelWidth + 8);
        for (int r = 0; r < R; ++r) {
            const __m256 b = _mm256_broadcast_ss(q + r * stride + d);
            if constexpr (L2) {
                const __m256 t0 = _mm256_sub_ps(b, p0), t1 = _mm256_sub_ps(b, p1);
                lo[r] = _mm256_fmadd_ps(t0, t0, lo[r]);
                hi[r] = _mm256_fmadd_ps(t1, t1, hi[r]);
            } else {
                lo[r] = _mm256_fmadd_ps(b, p0, lo[r]);
                hi[r] = _mm256_fmadd_ps(b, p1, hi[r]);
            }
        }
    }
    for (int r = 0; r < R; ++r) {
        _mm256_storeu_ps(out + r * kPanelWidth, lo[r]);
        _mm256_storeu_ps(out + r * kPanelWidth + 8, hi[r]);
    }
}

// Rows four at a time (six, for dot products, spilled registers with GCC 12
// and ran at less than half the speed).
template <bool L2>
__attribute__((target("avx2,fma"))) void panel_avx2(const float* q, std::size_t stride,
                                                    std::size_t nq, const float* panel,
                                                    std::size_t dim, float* out) {
    std::size_t r = 0;
    for (; r + 4 <= nq; r += 4)
        panel_rows_avx2<4, L2>(q + r * stride, stride, panel, dim, out + r * kPanelWidth);
    q += r * stride;
    out += r * kPanelWidth;
    switch (nq - r) {
        case 3: panel_rows_avx2<3, L2>(q, stride, panel, dim, out); break;
        case 2: panel_rows_avx2<2, L2>(q, stride, panel, dim, out); break;
        case 1: panel_rows_avx2<1, L2>(q, stride, panel, dim, out); break;
        default: break;
    }
}

// P panels at a time for one query (distance.h): 2P accumulators in flight.
template <int P>
__attribute__((target("avx2,fma"))) inline void panels_rows_avx2(const float* q, const float* pan,
                                                                 std::size_t dim, float* out) {
    __m256 lo[P], hi[P];
    for (int p = 0; p < P; ++p) lo[p] = hi[p] = _mm256_setzero_ps();
    for (std::size_t d = 0; d < dim; ++d) {
        const __m256 b = _mm256_broadcast_ss(q + d);
        for (int p = 0; p < P; ++p) {
            const float* row = pan + p * dim * kPanelWidth + d * kPanelWidth;
            lo[p] = _mm256_fmadd_ps(b, _mm256_loadu_ps(row), lo[p]);
            hi[p] = _mm256_fmadd_ps(b, _mm256_loadu_ps(row + 8), hi[p]);
        }
    }
    for (int p = 0; p < P; ++p) {
        _mm256_storeu_ps(out + p * kPanelWidth, lo[p]);
        _mm256_storeu_ps(out + p * kPanelWidth + 8, hi[p]);
    }
}

// R queries against an 8-bit panel, eight dimensions per step: vpmaddubsw
// multiplies (unsigned codes by signed query bytes) and adds pairs into int16,
// the two four-dimension halves are added in int16 (each at most 2 * 127 * 63,
// so their sum fits), and vpmaddwd widens into int32 accumulators.
template <int R>
__attribute__((target("avx2,fma"))) inline void int8_panel_rows_avx2(const std::int8_t* q,
                                                                    std::size_t stride,
                                                                    const std::uint8_t* panel,
                                                                    std::size_t dim,
                                                                    std::int32_t* out) {
    __m256i lo[R], hi[R];
    for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_si256();
    const __m256i ones = _mm256_set1_epi16(1);
    for (std::size_t d = 0; d < dim; d += 8) {
        const std::uint8_t* p = panel + d * kPanelWidth;
        const __m256i a0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        const __m256i a1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
        const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 64));
        const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 96));
        for (int r = 0; r < R; ++r) {
            std::int32_t first, second;
            std::memcpy(&first, q + r * stride + d, 4);
            std::memcpy(&second, q + r * stride + d + 4, 4);
            const __m256i x = _mm256_set1_epi32(first), y = _mm256_set1_epi32(second);
            lo[r] = _mm256_add_epi32(
                lo[r], _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(a0, x),
                                                          _mm256_maddubs_epi16(b0, y)),
                                         ones));
            hi[r] = _mm256_add_epi32(
                hi[r], _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(a1, x),
                                                          _mm256_maddubs_epi16(b1, y)),
                                         ones));
        }
    }
    for (int r = 0; r < R; ++r) {
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * kPanelWidth), lo[r]);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * kPanelWidth + 8), hi[r]);
    }
}

__attribute__((target("avx2,fma"))) void int8_panel_avx2(const std::int8_t* q,
                                                         std::size_t stride, std::size_t nq,
                                                         const std::uint8_t* panel,
                                                         std::size_t dim, std::int32_t* out) {
    std::size_t r = 0;
    for (; r + 4 <= nq; r += 4)
        int8_panel_rows_avx2<4>(q + r * stride, stride, panel, dim, out + r * kPanelWidth);
    q += r * stride;
    out += r * kPanelWidth;
    switch (nq - r) {
        case 3: int8_panel_rows_avx2<3>(q, stride, panel, dim, out); break;
        case 2: int8_panel_rows_avx2<2>(q, stride, panel, dim, out); break;
        case 1: int8_panel_rows_avx2<1>(q, stride, panel, dim, out); break;
        default: break;
    }
}

// Add the two lanes (even and odd subspaces).
__attribute__((target("avx2,fma"))) inline __m128i fold_lanes(__m256i v) {
    return _mm_add_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

// Interleave the sums of even and odd codes: out[0..31] in code order.
__attribute__((target("avx2,fma"))) inline void store_fastscan(__m128i lo_even, __m128i lo_odd,
                                                                __m128i hi_even, __m128i hi_odd,
                                                                std::uint16_t* out) {
    auto* o = reinterpret_cast<__m128i*>(out);
    _mm_storeu_si128(o, _mm_unpacklo_epi16(lo_even, lo_odd));
    _mm_storeu_si128(o + 1, _mm_unpackhi_epi16(lo_even, lo_odd));
    _mm_storeu_si128(o + 2, _mm_unpacklo_epi16(hi_even, hi_odd));
    _mm_storeu_si128(o + 3, _mm_unpackhi_epi16(hi_even, hi_odd));
}

// Two subspaces per 256-bit register (vpshufb looks up within 128-bit lanes).
// Byte results are added as 16-bit words (even code + 256 * odd code, modulo
// 2^16) and, shifted, as odd codes alone; the even sums are the difference.
// Both true sums stay below 2^16 (PQ4::tables sizes the entries so), so the
// modular arithmetic is exact, one mask per look-up cheaper than splitting.
__attribute__((target("avx2,fma"))) void fastscan32_avx2(const std::uint8_t* block,
                                                          const std::uint8_t* lut,
                                                          std::size_t nsub, std::uint16_t* out) {
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m256i lo_words = _mm256_setzero_si256(), lo_odd = lo_words;
    __m256i hi_words = lo_words, hi_odd = lo_words;
    for (std::size_t s = 0; s < nsub; s += 2) {
        const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + s * 16));
        const __m256i t = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lut + s * 16));
        const __m256i rl = _mm256_shuffle_epi8(t, _mm256_and_si256(c, low4));
        const __m256i rh = _mm256_shuffle_epi8(t, _mm256_and_si256(_mm256_srli_epi16(c, 4), low4));
        lo_words = _mm256_add_epi16(lo_words, rl);
        lo_odd = _mm256_add_epi16(lo_odd, _mm256_srli_epi16(rl, 8));
        hi_words = _mm256_add_epi16(hi_words, rh);
        hi_odd = _mm256_add_epi16(hi_odd, _mm256_srli_epi16(rh, 8));
    }
    const __m128i lo_o = fold_lanes(lo_odd), hi_o = fold_lanes(hi_odd);
    store_fastscan(_mm_sub_epi16(fold_lanes(lo_words), _mm_slli_epi16(lo_o, 8)), lo_o,
                   _mm_sub_epi16(fold_lanes(hi_words), _mm_slli_epi16(hi_o, 8)), hi_o, out);
}

// Four subspaces per 256-bit register, the AVX2 scheme above: every look-up
// serves the same 16 codes, so both lanes and both nibbles add into one sum.
__attribute__((target("avx2,fma"))) void fastscan16_avx2(const std::uint8_t* block,
                                                          const std::uint8_t* lut,
                                                          std::size_t nsub, std::uint16_t* out) {
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m256i words = _mm256_setzero_si256(), odd = words;
    for (std::size_t s = 0; s < nsub; s += 4) {
        const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + s * 8));
        const __m256i t01 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lut + s * 16));
        const __m256i t23 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lut + s * 16 + 32));
        const __m256i rl = _mm256_shuffle_epi8(t01, _mm256_and_si256(c, low4));
        const __m256i rh = _mm256_shuffle_epi8(t23, _mm256_and_si256(_mm256_srli_epi16(c, 4), low4));
        words = _mm256_add_epi16(words, _mm256_add_epi16(rl, rh));
        odd = _mm256_add_epi16(odd, _mm256_add_epi16(_mm256_srli_epi16(rl, 8), _mm256_srli_epi16(rh, 8)));
    }
    const __m128i o = fold_lanes(odd);
    const __m128i e = _mm_sub_epi16(fold_lanes(words), _mm_slli_epi16(o, 8));
    auto* dst = reinterpret_cast<__m128i*>(out);
    _mm_storeu_si128(dst, _mm_unpacklo_epi16(e, o));
    _mm_storeu_si128(dst + 1, _mm_unpackhi_epi16(e, o));
}

// ---------------------------------------------------------------- AVX-512
// The tail is a masked load, so odd dimensions need no scalar loop.
__attribute__((target("avx512f"))) float dot_avx512(const float* a, const float* b,
                                                    std::size_t dim) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    std::size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
    }
    for (; i + 16 <= dim; i += 16)
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    if (i < dim) {
        const __mmask16 m = static_cast<__mmask16>((1u << (dim - i)) - 1u);
        acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i),
                               acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

__attribute__((target("avx512f"))) float l2sq_avx512(const float* a, const float* b,
                                                     std::size_t dim) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    std::size_t i = 0;
    for (; i + 32 <= dim; i += 32) {
        const __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        const __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
        acc0 = _mm512_fmadd_ps(d0, d0, acc0);
        acc1 = _mm512_fmadd_ps(d1, d1, acc1);
    }
    for (; i + 16 <= dim; i += 16) {
        const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
        acc0 = _mm512_fmadd_ps(d, d, acc0);
    }
    if (i < dim) {
        const __mmask16 m = static_cast<__mmask16>((1u << (dim - i)) - 1u);
        const __m512 d =
            _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
        acc1 = _mm512_fmadd_ps(d, d, acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}
__attribute__((target("avx512f"))) inline __m512 load_codes16(const std::uint8_t* p) {
    return _mm512_cvtepi32_ps(
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

__attribute__((target("avx512f"))) float sq8_l2_avx512(const float* a, const float* w,
                                                       const std::uint8_t* code, std::size_t n) {
    __m512 acc = _mm512_setzero_ps();
    for (std::size_t i = 0; i < n; i += 16) {
        const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(a + i), load_codes16(code + i));
        acc = _mm512_fmadd_ps(_mm512_mul_ps(d, d), _mm512_loadu_ps(w + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

__attribute__((target("avx512f"))) float sq8_dot_avx512(const float* a, const float*,
                                                        const std::uint8_t* code, std::size_t n) {
    __m512 acc = _mm512_setzero_ps();
    for (std::size_t i = 0; i < n; i += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), load_codes16(code + i), acc);
    return _mm512_reduce_add_ps(acc);
}

__attribute__((target("avx512f"))) inline __m512 load_row16(const float* v, std::size_t i,
                                                           std::size_t dim) {
    if (i + 16 <= dim) return _mm512_loadu_ps(v + i);
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << (dim - i)) - 1u), v + i);
}

__attribute__((target("avx512f"))) void dot4_avx512(const float* q, std::size_t stride,
                                                    const float* v, std::size_t dim,
                                                    float* out) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (std::size_t i = 0; i < dim; i += 16) {
        const __m512 x = load_row16(v, i, dim);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), x, a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + stride + i), x, a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q + 2 * stride + i), x, a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q + 3 * stride + i), x, a3);
    }
    out[0] = _mm512_reduce_add_ps(a0);
    out[1] = _mm512_reduce_add_ps(a1);
    out[2] = _mm512_reduce_add_ps(a2);
    out[3] = _mm512_reduce_add_ps(a3);
}

__attribute__((target("avx512f"))) void l2sq4_avx512(const float* q, std::size_t stride,
                                                     const float* v, std::size_t dim,
                                                     float* out) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (std::size_t i = 0; i < dim; i += 16) {
        const __m512 x = load_row16(v, i, dim);
        const __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(q + i), x);
        const __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(q + stride + i), x);
        const __m512 d2 = _mm512_sub_ps(_mm512_loadu_ps(q + 2 * stride + i), x);
        const __m512 d3 = _mm512_sub_ps(_mm512_loadu_ps(q + 3 * stride + i), x);
        a0 = _mm512_fmadd_ps(d0, d0, a0);
        a1 = _mm512_fmadd_ps(d1, d1, a1);
        a2 = _mm512_fmadd_ps(d2, d2, a2);
        a3 = _mm512_fmadd_ps(d3, d3, a3);
    }
    out[0] = _mm512_reduce_add_ps(a0);
    out[1] = _mm512_reduce_add_ps(a1);
    out[2] = _mm512_reduce_add_ps(a2);
    out[3] = _mm512_reduce_add_ps(a3);
}
// One register per panel row; R = 8 accumulators cover the FMA latency.
template <int R, bool L2>
__attribute__((target("avx512f"))) inline void panel_rows_avx512(const float* q,
                                                                std::size_t stride,
                                                                const float* panel,
                                                                std::size_t dim, float* out) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (std::size_t d = 0; d < dim; ++d) {
        const __m512 p = _mm512_loadu_ps(panel + d * kPanelWidth);
        for (int r = 0; r < R; ++r) {
            const __m512 b = _mm512_set1_ps(q[r * stride + d]);
            if constexpr (L2) {
                const __m512 t = _mm512_sub_ps(b, p);
                acc[r] = _mm512_fmadd_ps(t, t, acc[r]);
            } else {
                acc[r] = _mm512_fmadd_ps(b, p, acc[r]);
            }
        }
    }
    for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + r * kPanelWidth, acc[r]);
}

template <bool L2>
__attribute__((target("avx512f"))) void panel_avx512(const float* q, std::size_t stride,
                                                     std::size_t nq, const float* panel,
                                                     std::size_t dim, float* out) {
    std::size_t r = 0;
    for (; r + 8 <= nq; r += 8)
        panel_rows_avx512<8, L2>(q + r * stride, stride, panel, dim, out + r * kPanelWidth);
    for (; r + 4 <= nq; r += 4)
        panel_rows_avx512<4, L2>(q + r * stride, stride, panel, dim, out + r * kPanelWidth);
    for (; r < nq; ++r)
        panel_rows_avx512<1, L2>(q + r * stride, stride, panel, dim, out + r * kPanelWidth);
}

template <int P>
__attribute__((target("avx512f"))) inline void panels_rows_avx512(const float* q,
                                                                 const float* pan,
                                                                 std::size_t dim, float* out) {
    __m512 acc[P];
    for (int p = 0; p < P; ++p) acc[p] = _mm512_setzero_ps();
    for (std::size_t d = 0; d < dim; ++d) {
        const __m512 b = _mm512_set1_ps(q[d]);
        for (int p = 0; p < P; ++p)
            acc[p] = _mm512_fmadd_ps(
                b, _mm512_loadu_ps(pan + p * dim * kPanelWidth + d * kPanelWidth), acc[p]);
    }
    for (int p = 0; p < P; ++p) _mm512_storeu_ps(out + p * kPanelWidth, acc[p]);
}

// R queries against an 8-bit panel with AVX-512 VNNI: one vpdpbusd multiplies a
// group's 64 unsigned codes (16 lanes x 4 dimensions) by the query's 4 signed
// bytes and adds each lane's four products into its int32 accumulator: a fourth
// of the instructions of the float32 panel for the same products.
template <int R>
__attribute__((target("avx512f,avx512vnni"))) inline void int8_panel_rows_vnni(
    const std::int8_t* q, std::size_t stride, const std::uint8_t* panel, std::size_t dim,
    std::int32_t* out) {
    __m512i acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_si512();
    for (std::size_t d = 0; d < dim; d += 4) {
        const __m512i p = _mm512_loadu_si512(panel + d * kPanelWidth);
        for (int r = 0; r < R; ++r) {
            std::int32_t four;
            std::memcpy(&four, q + r * stride + d, 4);
            acc[r] = _mm512_dpbusd_epi32(acc[r], p, _mm512_set1_epi32(four));
        }
    }
    for (int r = 0; r < R; ++r) _mm512_storeu_si512(out + r * kPanelWidth, acc[r]);
}

__attribute__((target("avx512f,avx512vnni"))) void int8_panel_vnni(const std::int8_t* q,
                                                                   std::size_t stride,
                                                                   std::size_t nq,
                                                                   const std::uint8_t* panel,
                                                                   std::size_t dim,
                                                                   std::int32_t* out) {
    std::size_t r = 0;
    for (; r + 8 <= nq; r += 8)
        int8_panel_rows_vnni<8>(q + r * stride, stride, panel, dim, out + r * kPanelWidth);
    for (; r + 4 <= nq; r += 4)
        int8_panel_rows_vnni<4>(q + r * stride, stride, panel, dim, out + r * kPanelWidth);
    for (; r < nq; ++r)
        int8_panel_rows_vnni<1>(q + r * stride, stride, panel, dim, out + r * kPanelWidth);
}

#endif  // EVIDEX_X86

const DistanceKernels kScalar{l2sq_scalar,       dot_scalar,       sq8_l2_scalar,
                             sq8_dot_scalar,    l2sq4_scalar,     dot4_scalar,
                             panel_scalar<true>, panel_scalar<false>, dot_panels_scalar, int8_panel_scalar, fastscan32_scalar,
                             fastscan16_scalar, SimdLevel::Scalar};
#ifdef EVIDEX_X86
const DistanceKernels kAVX2{l2sq_avx2,       dot_avx2,       sq8_l2_avx2,
                           sq8_dot_avx2,    l2sq4_avx2,     dot4_avx2,
                           panel_avx2<true>, panel_avx2<false>,
                           dot_panels_in_fours<panels_rows_avx2<4>, panels_rows_avx2<1>>, int8_panel_avx2, fastscan32_avx2,
                           fastscan16_avx2, SimdLevel::AVX2};
const DistanceKernels kAVX512{l2sq_avx512,       dot_avx512,       sq8_l2_avx512,
                             sq8_dot_avx512,    l2sq4_avx512,     dot4_avx512,
                             panel_avx512<true>, panel_avx512<false>,
                             dot_panels_in_fours<panels_rows_avx512<4>, panels_rows_avx512<1>>,
                             int8_panel_avx2,  // every AVX-512 CPU runs AVX2
                             // The AVX2 kernel: a 512-bit one (four subspaces a register)
                             // ran faster alone but made RaBitQ searches 0.87-0.98x on
                             // Zen 4, which splits 512-bit work (bench/RESULTS.md).
                             fastscan32_avx2,
                             fastscan16_avx2,  // a half group fills one 256-bit register
                             SimdLevel::AVX512};
// The same with VNNI's 8-bit products, for the CPUs that have them.
const DistanceKernels kAVX512VNNI = [] {
    DistanceKernels k = kAVX512;
    k.int8_panel = int8_panel_vnni;
    k.int8_fast = true;
    return k;
}();
#endif

SimdLevel detect() {
#ifdef EVIDEX_X86
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    // The AVX-512 table runs some AVX2 kernels too.
    if (avx2 && __builtin_cpu_supports("avx512f")) return SimdLevel::AVX512;
    if (avx2) return SimdLevel::AVX2;
#endif
    return SimdLevel::Scalar;
}

SimdLevel initial_level() {
    const SimdLevel best = detect();
    const char* env = std::getenv("EVIDEX_SIMD");
    if (env == nullptr || *env == '\0') return best;
    // An unknown or unsupported request is an error at import, raised from here.
    const SimdLevel wanted = parse_simd_level(env);
    if (static_cast<int>(wanted) > static_cast<int>(best))
        throw std::invalid_argument("EVIDEX_SIMD=" + std::string(env) +
                                    " is not supported by this CPU (best: " +
                                    simd_level_name(best) + ")");
    return wanted;
}

std::atomic<const DistanceKernels*>& active_slot() {
    static std::atomic<const DistanceKernels*> slot{&kernels_for(initial_level())};
    return slot;
}

}  // namespace

SimdLevel cpu_simd_level() {
    static const SimdLevel best = detect();
    return best;
}

const char* stored_vector_problem(const float* v, std::size_t dim, bool unit) {
    double sq = 0.0;
    for (std::size_t d = 0; d < dim; ++d) {
        if (!std::isfinite(v[d])) return "a stored vector holds NaN or infinity";
        sq += static_cast<double>(v[d]) * v[d];
    }
    if (sq > static_cast<double>(kMaxSquaredNorm))
        return "a stored vector is too large for float32 distances";
    if (unit && sq != 0.0 && std::fabs(sq - 1.0) > 1e-3)
        return "a stored cosine vector is not of unit length";
    return nullptr;
}

const DistanceKernels& kernels_for(SimdLevel level) {
#ifdef EVIDEX_X86
    const SimdLevel best = cpu_simd_level();
    if (level == SimdLevel::AVX512 && best == SimdLevel::AVX512) {
        static const bool vnni = __builtin_cpu_supports("avx512vnni");
        return vnni ? kAVX512VNNI : kAVX512;
    }
    if (level != SimdLevel::Scalar && best != SimdLevel::Scalar) return kAVX2;
#else
    (void)level;
#endif
    return kScalar;
}

const DistanceKernels& active_kernels() { return *active_slot().load(std::memory_order_acquire); }

void set_simd_level(SimdLevel level) {
    if (static_cast<int>(level) > static_cast<int>(cpu_simd_level()))
        throw std::invalid_argument("SIMD level " + simd_level_name(level) +
                                    " is not supported by this CPU (best: " +
                                    simd_level_name(cpu_simd_level()) + ")");
    active_slot().store(&kernels_for(level), std::memory_order_release);
}

std::string simd_level_name(SimdLevel level) {
    switch (level) {
        case SimdLevel::AVX512: return "avx512";
        case SimdLevel::AVX2: return "avx2";
        default: return "scalar";
    }
}

SimdLevel parse_simd_level(const std::string& name) {
    if (name == "scalar") return SimdLevel::Scalar;
    if (name == "avx2") return SimdLevel::AVX2;
    if (name == "avx512") return SimdLevel::AVX512;
    throw std::invalid_argument("unknown SIMD level '" + name +
                                "' (expected scalar, avx2 or avx512)");
}

void normalize_into(const float* v, std::size_t dim, float* out) {
    // Four partial sums: one chain of dependent double additions cost 4 cycles a
    // dimension (0.5 us for a 384-d query); rounding stays far below float's.
    double part[4] = {0.0, 0.0, 0.0, 0.0};
    std::size_t i = 0;
    for (; i + 4 <= dim; i += 4)
        for (std::size_t j = 0; j < 4; ++j) part[j] += static_cast<double>(v[i + j]) * v[i + j];
    for (; i < dim; ++i) part[0] += static_cast<double>(v[i]) * v[i];
    const double norm = (part[0] + part[1]) + (part[2] + part[3]);
    // Zero vectors stay zero (distance 1 to everything), as in hnswlib. Others
    // come out of unit length however small: hnswlib's 1 / (|v| + 1e-30) left a
    // vector of norm 1e-30 at length 0.5, which the file check then refused; and
    // the scale stays in double, since 1 / |v| may exceed float's range.
    const double inv = norm > 0.0 ? 1.0 / std::sqrt(norm) : 0.0;
    for (i = 0; i < dim; ++i) out[i] = static_cast<float>(v[i] * inv);
}

}  // namespace evidex
