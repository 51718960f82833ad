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

struct DistanceKernels {
    DistanceKernel l2sq;
    DistanceKernel dot;
    Sq8Kernel sq8_l2;
    Sq8Kernel sq8_dot;
    Distance4Kernel l2sq4;
    Distance4Kernel dot4;
    SimdLevel level;
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

}  // namespace evidex
