// Distance kernels: one scalar body and SIMD variants compiled with target
// attributes, chosen once at run time (never -march=native).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace evidex {

enum class SimdLevel : int { Scalar = 0, AVX2 = 1, AVX512 = 2 };

// dot(a, b) and squared L2 over `dim` float32 values. No alignment required.
using DistanceKernel = float (*)(const float* a, const float* b, std::size_t dim);

// Distances between a prepared float query and 8-bit codes (scalar quantisation,
// see hnsw.cpp). `n` is a multiple of 16 and the padding contributes zero, so the
// kernels need no tail loops.
//   sq8_l2:  sum w[i] * (a[i] - code[i])^2      (a: query in code units, w: scale^2)
//   sq8_dot: sum a[i] * code[i]                 (a: query times scale; w unused)
using Sq8Kernel = float (*)(const float* a, const float* w, const std::uint8_t* code,
                            std::size_t n);

// One vector against four queries at once (exact scans of a batch): the vector's
// loads are shared, four accumulations run side by side. q holds the four queries
// `stride` floats apart, zero-padded from dim to stride (a multiple of 16); v is
// read only up to dim. out[j] = dot(q_j, v) or squared L2.
using Distance4Kernel = void (*)(const float* q, std::size_t stride, const float* v,
                                 std::size_t dim, float* out);

// Many queries against a panel of kPanelWidth vectors stored dimension-major
// (panel[d * kPanelWidth + lane]; unused lanes hold anything finite), as a
// matrix product's packed operand: each query value is broadcast against the
// whole panel row, so no horizontal sums and no reloads of the vectors. q holds
// nq queries `stride` floats apart. out[r * kPanelWidth + lane] = dot(q_r, v_lane)
// or squared L2.
constexpr std::size_t kPanelWidth = 16;
using PanelKernel = void (*)(const float* q, std::size_t stride, std::size_t nq,
                             const float* panel, std::size_t dim, float* out);

// One query against npanels consecutive panels (each dim * kPanelWidth floats, as
// above): out[p * kPanelWidth + lane] = dot(q, v_lane of panel p). Several panels
// are summed side by side (one panel alone is a chain of dependent multiply-adds),
// each lane in the panel kernels' order, so a query gets the same values from both.
using PanelsKernel = void (*)(const float* q, const float* panels, std::size_t npanels,
                              std::size_t dim, float* out);

// The 8-bit panel kernel (the first pass of an exact scan, quantized_scan.h):
// small integers, so products and sums are exact. The panel holds kPanelWidth
// vectors' codes, biased by +64 into [1, 127], four dimensions of one vector
// side by side: panel[(d / 4) * 64 + lane * 4 + d % 4]. q holds nq queries `stride`
// bytes apart, values in [-63, 63]. dim is a multiple of 8 (padding: code 0,
// query 0). out[r * kPanelWidth + lane] = sum_d q_r[d] * (code_lane[d] + 64); the
// bounds keep every pair sum and every sum of two pairs inside int16.
using Int8PanelKernel = void (*)(const std::int8_t* q, std::size_t stride, std::size_t nq,
                                 const std::uint8_t* panel, std::size_t dim, std::int32_t* out);

// Fast scan (4-bit product quantisation scored by SIMD table look-ups, as in
// FAISS's and ScaNN's "fast scan"): estimates for the 32 codes of one block.
// The block holds, per subspace s, 16 bytes at s * 16: byte j carries code j in
// its low nibble and code j + 16 in its high nibble. lut holds 16 uint8 entries
// per subspace at s * 16. out[j] = sum over s of lut[s][code_j[s]], exact in
// uint16 when nsub * max(lut) < 65536. nsub is a multiple of 4.
using FastScanKernel = void (*)(const std::uint8_t* block, const std::uint8_t* lut,
                                std::size_t nsub, std::uint16_t* out);
// The same for the 16 codes of a half group (nsub * 8 bytes), for blocks of at
// most 16 edges: 32 bytes per 4 subspaces s..s+3 at s * 8, byte j (< 16)
// carrying code j of s in its low nibble and of s + 2 in its high one, byte
// 16 + j those of s + 1 and s + 3. So each 128-bit lane of a 256-bit register
// meets the table of its own subspace (the tables of s, s + 1 are adjacent in
// lut, as are s + 2, s + 3), and no register holds padding.

// Squared norms above this could overflow float32 distances: |a - b|^2 <=
// 2|a|^2 + 2|b|^2 and |<a, b>| <= |a||b| stay finite below FLT_MAX / 4. Vectors
// past it are refused where they enter (add, and the loaders of saved files).
constexpr float kMaxSquaredNorm = 8.5e37f;

// What is wrong with a vector read from a file, or nullptr: not finite, a
// squared norm past kMaxSquaredNorm, or (unit: cosine indexes store them so) a
// nonzero length other than 1.
const char* stored_vector_problem(const float* v, std::size_t dim, bool unit);

struct DistanceKernels {
    DistanceKernel l2sq;
    DistanceKernel dot;
    Sq8Kernel sq8_l2;
    Sq8Kernel sq8_dot;
    Distance4Kernel l2sq4;
    Distance4Kernel dot4;
    PanelKernel l2sq_panel;
    PanelKernel dot_panel;
    PanelsKernel dot_panels;
    Int8PanelKernel int8_panel;
    FastScanKernel fastscan32;
    FastScanKernel fastscan16;
    SimdLevel level;
    // int8_panel runs at about four times the float32 panel's rate (AVX-512
    // VNNI), not about the same (AVX2's widening multiplies): the 8-bit scan pays
    // from far fewer vectors (quantized_scan_pays).
    bool int8_fast = false;
};

// Kernels for an explicit level (falls back to the best supported level below it).
const DistanceKernels& kernels_for(SimdLevel level);

// The active kernels: the best level the CPU supports, or the one forced through
// the EVIDEX_SIMD environment variable (scalar|avx2|avx512) or set_simd_level().
const DistanceKernels& active_kernels();

// Best level this CPU can run.
SimdLevel cpu_simd_level();

// Force a level for the whole process; throws std::invalid_argument if the CPU
// cannot run it.
void set_simd_level(SimdLevel level);

std::string simd_level_name(SimdLevel level);
SimdLevel parse_simd_level(const std::string& name);  // throws std::invalid_argument

// out = v / |v| (a zero vector stays zero): how cosine spaces store vectors.
void normalize_into(const float* v, std::size_t dim, float* out);

}  // namespace evidex
