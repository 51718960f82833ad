#include "evidex/rabitq.h"

#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "evidex/distance.h"

namespace evidex {

namespace {

std::uint64_t splitmix64(std::uint64_t& state) {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// In-place normalised Walsh-Hadamard transform of n (a power of two, >= 16)
// floats. Each output is the same sums and differences at any SIMD width, so the
// two bodies agree bit for bit.
void butterflies(float* v, std::size_t n, std::size_t h) {
    for (std::size_t i = 0; i < n; i += 2 * h)
        for (std::size_t j = i; j < i + h; ++j) {
            const float a = v[j], b = v[j + h];
            v[j] = a + b;
            v[j + h] = a - b;
        }
}

void hadamard_scalar(float* v, std::size_t n) {
    for (std::size_t h = 1; h < n; h *= 2) butterflies(v, n, h);
    const float norm = 1.f / std::sqrt(static_cast<float>(n));
    for (std::size_t i = 0; i < n; ++i) v[i] *= norm;
}

#if defined(__x86_64__) || defined(_M_X64)
// The first three stages (pairs 1, 2 and 4 apart) stay inside one register:
// out = a * sign + partner, where a * (+-1) is exact, so each output is the
// same single rounding of a + b or a - b as the scalar butterfly's.
__attribute__((target("avx2"))) void hadamard_avx2(float* v, std::size_t n) {
    const __m256 s1 = _mm256_setr_ps(1, -1, 1, -1, 1, -1, 1, -1);
    const __m256 s2 = _mm256_setr_ps(1, 1, -1, -1, 1, 1, -1, -1);
    const __m256 s4 = _mm256_setr_ps(1, 1, 1, 1, -1, -1, -1, -1);
    for (std::size_t i = 0; i < n; i += 8) {
        __m256 a = _mm256_loadu_ps(v + i);
        a = _mm256_add_ps(_mm256_mul_ps(a, s1), _mm256_permute_ps(a, 0xb1));
        a = _mm256_add_ps(_mm256_mul_ps(a, s2), _mm256_permute_ps(a, 0x4e));
        a = _mm256_add_ps(_mm256_mul_ps(a, s4), _mm256_permute2f128_ps(a, a, 1));
        _mm256_storeu_ps(v + i, a);
    }
    for (std::size_t h = 8; h < n; h *= 2)
        for (std::size_t i = 0; i < n; i += 2 * h)
            for (std::size_t j = i; j < i + h; j += 8) {
                const __m256 a = _mm256_loadu_ps(v + j), b = _mm256_loadu_ps(v + j + h);
                _mm256_storeu_ps(v + j, _mm256_add_ps(a, b));
                _mm256_storeu_ps(v + j + h, _mm256_sub_ps(a, b));
            }
    const __m256 norm = _mm256_set1_ps(1.f / std::sqrt(static_cast<float>(n)));
    for (std::size_t i = 0; i < n; i += 8)
        _mm256_storeu_ps(v + i, _mm256_mul_ps(_mm256_loadu_ps(v + i), norm));
}
#endif

void hadamard(float* v, std::size_t n) {
#if defined(__x86_64__) || defined(_M_X64)
    if (active_kernels().level != SimdLevel::Scalar) return hadamard_avx2(v, n);
#endif
    hadamard_scalar(v, n);
}

std::size_t checked_dim(std::size_t dim) {
    if (dim == 0 || dim > EdgeCoder::kMaxDim)
        throw std::invalid_argument("quantization 'rabitq' takes 1 to " +
                                    std::to_string(EdgeCoder::kMaxDim) + " dimensions, got " +
                                    std::to_string(dim));
    return dim;
}

}  // namespace

EdgeRotation::EdgeRotation(std::size_t dim, std::uint64_t seed) : dim_(dim) {
    if (dim == 0) throw std::invalid_argument("dim must be at least 1");
    padded_ = EdgeCoder::padded(dim);
    window_ = 1;
    while (window_ * 2 <= padded_) window_ *= 2;
    signs_.resize(kRounds * padded_);
    std::uint64_t state = seed ^ 0x5241426974510000ull;  // "RaBitQ": apart from other streams
    for (float& s : signs_) s = (splitmix64(state) >> 63) ? -1.f : 1.f;
}

void EdgeRotation::apply(const float* x, float* out) const {
    for (std::size_t i = 0; i < dim_; ++i) out[i] = x[i];
    for (std::size_t i = dim_; i < padded_; ++i) out[i] = 0.f;
    for (std::size_t r = 0; r < kRounds; ++r) {
        const float* s = signs_.data() + r * padded_;
        for (std::size_t i = 0; i < padded_; ++i) out[i] *= s[i];
        hadamard(out + (r % 2 == 0 ? 0 : padded_ - window_), window_);
    }
}

EdgeCoder::EdgeCoder(std::size_t dim, std::uint64_t seed, bool l2)
    : rotation_(checked_dim(dim), seed), layout_(rotation_.padded(), 4), l2_(l2) {
    // Subspace s, centroid c: the bits of c over the subspace's 4 dimensions.
    std::vector<float> patterns(layout_.subspaces() * PQ4::kCentroids * 4);
    for (std::size_t s = 0; s < layout_.subspaces(); ++s)
        for (std::size_t c = 0; c < PQ4::kCentroids; ++c)
            for (std::size_t t = 0; t < 4; ++t)
                patterns[(s * PQ4::kCentroids + c) * 4 + t] = static_cast<float>((c >> t) & 1);
    layout_.set_centroids(std::move(patterns));
}

EdgeFactors EdgeCoder::encode(const float* xr, const float* y, std::uint8_t* code) const {
    const std::size_t padded = rotation_.padded();
    // P(y - x) = Py - Px: one rotation per edge, the node's made once by the caller.
    thread_local std::vector<float> yr;
    yr.resize(padded);
    rotation_.apply(y, yr.data());
    // Eight dimensions a step in two 4-lane vectors (GCC/Clang vector types: SSE2
    // in the baseline x86-64 build, so every x86-64 machine codes an edge alike).
    // A scalar chain of sums and a branch per sign bit, half of them mispredicted,
    // took ~1/6 of a RaBitQ add.
    using f4 = float __attribute__((vector_size(16)));
    using i4 = std::int32_t __attribute__((vector_size(16)));
    const i4 magnitude = {0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
    f4 norm2_v[2] = {}, abs_v[2] = {}, sx_v[2] = {}, dot_v[2] = {};
    for (std::size_t i = 0; i < padded; i += 8) {
        unsigned byte = 0;
        for (std::size_t h = 0; h < 2; ++h) {
            f4 py, px;  // Py and Px, four dimensions
            std::memcpy(&py, yr.data() + i + 4 * h, sizeof py);
            std::memcpy(&px, xr + i + 4 * h, sizeof px);
            const f4 r = py - px;
            const i4 positive = r > 0.f;  // lanes all ones where r > 0
            norm2_v[h] += r * r;
            abs_v[h] += reinterpret_cast<f4>(reinterpret_cast<i4>(r) & magnitude);
            // +Px where r > 0, else -Px: its sign bit flipped where r <= 0.
            const i4 flip = ~positive & ~magnitude;
            sx_v[h] += reinterpret_cast<f4>(reinterpret_cast<i4>(px) ^ flip);
            dot_v[h] += px * r;
            // Byte i / 8 holds the signs of dimensions i..i+7, bit j that of i + j:
            // the fast-scan layout's subspace pairs (4 bits each, the even one low).
            for (unsigned j = 0; j < 4; ++j)
                byte |= static_cast<unsigned>(positive[j] & 1) << (4 * h + j);
        }
        code[i / 8] = static_cast<std::uint8_t>(byte);
    }
    float norm2 = 0.f, abs_sum = 0.f, sx = 0.f, xr_dot = 0.f;
    for (std::size_t h = 0; h < 2; ++h)
        for (unsigned j = 0; j < 4; ++j) {
            norm2 += norm2_v[h][j];
            abs_sum += abs_v[h][j];
            sx += sx_v[h][j];
            xr_dot += dot_v[h][j];
        }
    // <q - x, r> ~ alpha (<s, q'> - <s, x'>); a zero residual estimates 0, exactly.
    const float alpha = abs_sum > 0.f ? norm2 / abs_sum : 0.f;
    const float w = l2_ ? 2.f : 1.f;  // L2: -2<q - x, r> + |r|^2; else -<q - x, r> - <x, r>
    const float c = l2_ ? norm2 : -xr_dot;
    return {w * alpha, c + w * alpha * sx};
}

void EdgeCoder::prepare(const float* q, Query& out) const {
    thread_local std::vector<float> qr;
    qr.resize(rotation_.padded());
    rotation_.apply(q, qr.data());
    double sum = 0.0;
    for (float v : qr) sum += v;
    out.sum = static_cast<float>(sum);
    layout_.tables(qr.data(), /*l2=*/false, out.tables);
}

}  // namespace evidex
