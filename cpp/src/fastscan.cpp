#include "evidex/fastscan.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "evidex/distance.h"
#include "evidex/kmeans.h"
#include "evidex/parallel.h"

namespace evidex {

PQ4::PQ4(std::size_t dim, std::size_t sub_dim) : dim_(dim) {
    if (dim == 0) throw std::invalid_argument("dim must be at least 1");
    sub_dim_ = sub_dim == 0 ? std::min(default_sub_dim(dim), dim) : sub_dim;
    if (sub_dim_ > dim_)
        throw std::invalid_argument("pq_dims must be at most dim (" + std::to_string(dim_) +
                                    "), got " + std::to_string(sub_dim_));
    used_ = (dim_ + sub_dim_ - 1) / sub_dim_;
    if (used_ > 4096)
        throw std::invalid_argument("pq_dims " + std::to_string(sub_dim_) + " gives " +
                                    std::to_string(used_) +
                                    " subspaces; at most 4096 (raise pq_dims)");
    nsub_ = (used_ + 3) / 4 * 4;
}


void PQ4::train(const float* data, std::size_t n, std::uint64_t seed, std::size_t num_threads) {
    if (n == 0) throw std::invalid_argument("training needs at least one vector");
    // Residuals like the graph's edges: each probe row minus its nearest few rows
    // among an evenly spaced pool (exact search, a second or so at most).
    constexpr std::size_t kPool = 4096, kProbes = 1024, kNear = 4;
    const std::size_t pool = std::min(n, kPool), probes = std::min(n, kProbes);
    auto row = [&](std::size_t i, std::size_t of) { return data + (i * n / of) * dim_; };
    std::vector<float> residuals(probes * kNear * dim_, 0.f);
    std::vector<std::size_t> found(probes, 0);
    parallel_for(probes, num_threads, [&](std::size_t p) {
        const float* x = data + ((p * n / probes + n / (2 * probes)) % n) * dim_;
        std::vector<std::pair<float, std::size_t>> best;
        for (std::size_t i = 0; i < pool; ++i) {
            const float* y = row(i, pool);
            float dist = 0.f;
            for (std::size_t t = 0; t < dim_; ++t) dist += (x[t] - y[t]) * (x[t] - y[t]);
            if (!(dist > 0.f)) continue;  // itself, or a duplicate
            if (best.size() < kNear || dist < best.back().first) {
                best.emplace_back(dist, i);
                std::sort(best.begin(), best.end());
                if (best.size() > kNear) best.pop_back();
            }
        }
        for (std::size_t j = 0; j < best.size(); ++j) {
            const float* y = row(best[j].second, pool);
            float* r = residuals.data() + (p * kNear + j) * dim_;
            for (std::size_t t = 0; t < dim_; ++t) r[t] = y[t] - x[t];
        }
        found[p] = best.size();
    });
    // Compact (rows without neighbours: a set of duplicates) into the sample.
    std::size_t m = 0;
    for (std::size_t p = 0; p < probes; ++p)
        for (std::size_t j = 0; j < found[p]; ++j, ++m)
            std::copy_n(residuals.data() + (p * kNear + j) * dim_, dim_,
                        residuals.data() + m * dim_);
    if (m == 0) m = 1;  // all rows equal: one zero residual
    fit(residuals.data(), m, seed, num_threads);
}

void PQ4::fit(const float* residuals_in, std::size_t m, std::uint64_t seed,
              std::size_t num_threads) {
    if (m == 0) throw std::invalid_argument("training needs at least one vector");
    constexpr std::size_t kMaxSample = 65536;
    const std::size_t n = m;
    m = std::min(m, kMaxSample);
    std::vector<float> residuals(m * dim_);
    for (std::size_t i = 0; i < m; ++i)  // evenly spaced rows
        std::copy_n(residuals_in + (i * n / m) * dim_, dim_, residuals.data() + i * dim_);
    std::vector<float> centroids(nsub_ * kCentroids * sub_dim_, 0.f);
    parallel_for(used_, num_threads, [&](std::size_t s) {
        const std::size_t d0 = s * sub_dim_, d = std::min(sub_dim_, dim_ - d0);
        std::vector<float> x(m * d);
        for (std::size_t i = 0; i < m; ++i) {
            const float* r = residuals.data() + i * dim_ + d0;
            std::copy(r, r + d, x.begin() + static_cast<std::ptrdiff_t>(i * d));
        }
        const std::vector<float> c =
            kmeans(x.data(), m, d, kCentroids, 16, seed * 1000003u + s, 1);
        for (std::size_t k = 0; k < kCentroids; ++k)
            std::copy(c.begin() + static_cast<std::ptrdiff_t>(k * d),
                      c.begin() + static_cast<std::ptrdiff_t>((k + 1) * d),
                      centroids.begin() + static_cast<std::ptrdiff_t>((s * kCentroids + k) * sub_dim_));
    });
    for (float v : centroids)
        if (!std::isfinite(v)) throw std::invalid_argument("training vectors must be finite");
    adopt(std::move(centroids));
}

float PQ4::anisotropic_eta(std::size_t dim, float threshold) {
    const double t2 = static_cast<double>(threshold) * threshold;
    return static_cast<float>(static_cast<double>(dim > 0 ? dim - 1 : 0) * t2 / (1.0 - t2));
}

namespace {

// The code of subspace s in a code_bytes() code.
inline std::size_t code_at(const std::uint8_t* code, std::size_t s) {
    return (code[s / 2] >> (4 * (s & 1))) & 15u;
}
inline void set_code(std::uint8_t* code, std::size_t s, std::size_t k) {
    code[s / 2] = static_cast<std::uint8_t>((code[s / 2] & ~(15u << (4 * (s & 1)))) |
                                            (k << (4 * (s & 1))));
}

// Solves a x = b in place (n <= 8, symmetric positive definite: Gaussian
// elimination without pivoting is stable); false when singular.
bool solve_small(double* a, double* b, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        if (!(std::fabs(a[i * n + i]) > 1e-12)) return false;
        for (std::size_t r = i + 1; r < n; ++r) {
            const double f = a[r * n + i] / a[i * n + i];
            for (std::size_t c = i; c < n; ++c) a[r * n + c] -= f * a[i * n + c];
            b[r] -= f * b[i];
        }
    }
    for (std::size_t i = n; i-- > 0;) {
        double v = b[i];
        for (std::size_t c = i + 1; c < n; ++c) v -= a[i * n + c] * b[c];
        b[i] = v / a[i * n + i];
    }
    return true;
}

}  // namespace

void PQ4::encode_anisotropic(const float* v, const float* u, float eta, std::uint8_t* code) const {
    encode(v, code);
    const double w = static_cast<double>(eta) - 1.0;
    if (w == 0.0) return;
    // parallel[s]: <e_s, u_s> of the current code; total: their sum.
    thread_local std::vector<double> parallel;
    parallel.assign(used_, 0.0);
    double total = 0.0, unorm = 0.0;
    for (std::size_t d = 0; d < dim_; ++d) unorm += static_cast<double>(u[d]) * u[d];
    if (!(unorm > 0.0)) return;
    for (std::size_t s = 0; s < used_; ++s) {
        const std::size_t d0 = s * sub_dim_, d1 = std::min(d0 + sub_dim_, dim_);
        const float* c = centroids_.data() + (s * kCentroids + code_at(code, s)) * sub_dim_;
        for (std::size_t d = d0; d < d1; ++d) parallel[s] += (v[d] - c[d - d0]) * u[d];
        total += parallel[s];
    }
    for (int round = 0; round < 3; ++round) {
        bool changed = false;
        for (std::size_t s = 0; s < used_; ++s) {
            const std::size_t d0 = s * sub_dim_, d1 = std::min(d0 + sub_dim_, dim_);
            const double rest = total - parallel[s];
            std::size_t arg = code_at(code, s);
            double best = std::numeric_limits<double>::infinity(), best_par = parallel[s];
            for (std::size_t k = 0; k < kCentroids; ++k) {
                const float* c = centroids_.data() + (s * kCentroids + k) * sub_dim_;
                double sq = 0.0, par = 0.0;
                for (std::size_t d = d0; d < d1; ++d) {
                    const double e = static_cast<double>(v[d]) - c[d - d0];
                    sq += e * e;
                    par += e * u[d];
                }
                const double along = rest + par;
                const double loss = sq + w * along * along;
                if (loss < best) {  // a NaN never wins
                    best = loss;
                    arg = k;
                    best_par = par;
                }
            }
            if (arg != code_at(code, s)) changed = true;
            set_code(code, s, arg);
            total = rest + best_par;
            parallel[s] = best_par;
        }
        if (!changed) break;
    }
}

void PQ4::fit_anisotropic(const float* residuals_in, const float* directions_in, std::size_t m,
                          float eta, std::uint64_t seed, std::size_t num_threads,
                          std::size_t rounds) {
    if (m == 0) throw std::invalid_argument("training needs at least one vector");
    constexpr std::size_t kMaxSample = 65536;
    const std::size_t n = m;
    m = std::min(m, kMaxSample);
    std::vector<float> residuals(m * dim_), directions(m * dim_);
    for (std::size_t i = 0; i < m; ++i) {  // evenly spaced rows, as fit() takes them
        std::copy_n(residuals_in + (i * n / m) * dim_, dim_, residuals.data() + i * dim_);
        std::copy_n(directions_in + (i * n / m) * dim_, dim_, directions.data() + i * dim_);
    }
    fit(residuals.data(), m, seed, num_threads);
    const double w = static_cast<double>(eta) - 1.0;
    if (w == 0.0) return;
    const std::size_t cb = code_bytes(), sd = sub_dim_;
    std::vector<std::uint8_t> codes(m * cb);
    for (std::size_t round = 0; round < rounds; ++round) {
        parallel_for(m, num_threads, [&](std::size_t i) {
            encode_anisotropic(residuals.data() + i * dim_, directions.data() + i * dim_, eta,
                               codes.data() + i * cb);
        });
        // Each vector's total parallel error, then per subspace the centroids'
        // normal equations: [n I + w sum u u^T] c = sum r + w sum (q_x + <r, u>) u,
        // q_x the parallel error of the other subspaces.
        std::vector<double> total(m, 0.0);
        parallel_for(m, num_threads, [&](std::size_t i) {
            const float* r = residuals.data() + i * dim_;
            const float* u = directions.data() + i * dim_;
            double t = 0.0;
            for (std::size_t s = 0; s < used_; ++s) {
                const float* c = centroids_.data() + (s * kCentroids + code_at(codes.data() + i * cb, s)) * sd;
                for (std::size_t d = s * sd; d < std::min((s + 1) * sd, dim_); ++d)
                    t += (static_cast<double>(r[d]) - c[d - s * sd]) * u[d];
            }
            total[i] = t;
        });
        std::vector<float> next = centroids_;
        parallel_for(used_, num_threads, [&](std::size_t s) {
            const std::size_t d0 = s * sd, d = std::min(sd, dim_ - d0);
            std::vector<double> a(kCentroids * d * d, 0.0), b(kCentroids * d, 0.0);
            std::vector<std::size_t> count(kCentroids, 0);
            for (std::size_t i = 0; i < m; ++i) {
                const std::size_t k = code_at(codes.data() + i * cb, s);
                const float* r = residuals.data() + i * dim_ + d0;
                const float* u = directions.data() + i * dim_ + d0;
                const float* c = centroids_.data() + (s * kCentroids + k) * sd;
                double own = 0.0, ru = 0.0;  // <e_s, u_s> and <r_s, u_s>
                for (std::size_t j = 0; j < d; ++j) {
                    own += (static_cast<double>(r[j]) - c[j]) * u[j];
                    ru += static_cast<double>(r[j]) * u[j];
                }
                const double coef = w * (total[i] - own + ru);
                double* ak = a.data() + k * d * d;
                double* bk = b.data() + k * d;
                for (std::size_t j = 0; j < d; ++j) {
                    bk[j] += r[j] + coef * u[j];
                    for (std::size_t l = 0; l < d; ++l) ak[j * d + l] += w * u[j] * u[l];
                }
                ++count[k];
            }
            for (std::size_t k = 0; k < kCentroids; ++k) {
                if (count[k] == 0) continue;  // an unused centroid stays
                double* ak = a.data() + k * d * d;
                double* bk = b.data() + k * d;
                for (std::size_t j = 0; j < d; ++j) ak[j * d + j] += static_cast<double>(count[k]);
                if (!solve_small(ak, bk, d)) continue;
                bool finite = true;
                for (std::size_t j = 0; j < d; ++j) finite = finite && std::isfinite(bk[j]);
                if (!finite) continue;
                for (std::size_t j = 0; j < d; ++j)
                    next[(s * kCentroids + k) * sd + j] = static_cast<float>(bk[j]);
            }
        });
        adopt(std::move(next));
    }
}

void PQ4::set_centroids(std::vector<float> centroids) {
    if (centroids.size() != nsub_ * kCentroids * sub_dim_)
        throw std::invalid_argument("product quantiser: expected " +
                                    std::to_string(nsub_ * kCentroids * sub_dim_) +
                                    " centroid values, got " + std::to_string(centroids.size()));
    for (float v : centroids)
        if (!std::isfinite(v)) throw std::invalid_argument("product quantiser: non-finite centroid");
    adopt(std::move(centroids));
}

void PQ4::adopt(std::vector<float> centroids) {
    centroids_ = std::move(centroids);
    by_dim_.assign(dim_ * kCentroids, 0.f);
    for (std::size_t d = 0; d < dim_; ++d)
        for (std::size_t k = 0; k < kCentroids; ++k)
            by_dim_[d * kCentroids + k] =
                centroids_[((d / sub_dim_) * kCentroids + k) * sub_dim_ + d % sub_dim_];
}

void PQ4::encode(const float* v, std::uint8_t* code) const {
    std::fill(code, code + code_bytes(), std::uint8_t{0});
    for (std::size_t s = 0; s < used_; ++s) {
        const std::size_t d0 = s * sub_dim_, d1 = std::min(d0 + sub_dim_, dim_);
        float dist[kCentroids] = {};
        for (std::size_t d = d0; d < d1; ++d) {  // 16 centroids side by side
            const float* c = by_dim_.data() + d * kCentroids;
            for (std::size_t k = 0; k < kCentroids; ++k) {
                const float e = v[d] - c[k];
                dist[k] += e * e;
            }
        }
        std::size_t arg = 0;
        for (std::size_t k = 1; k < kCentroids; ++k)
            if (dist[k] < dist[arg]) arg = k;  // a NaN never wins: code 0
        code[s / 2] |= static_cast<std::uint8_t>(arg << (4 * (s & 1)));
    }
}

namespace {

// One subspace's 16 table sums: sum over its dimensions d of a[d] * c[d][0..16)
// (c by dimension, 16 contiguous), less their minimum, into out[0..16); the
// minimum and the spread are returned. a[d] = w * q[d].
struct Sums {
    float min, spread;
};

Sums subspace_sums_scalar(const float* q, float w, const float* c, std::size_t dims,
                          float* out) {
    float acc[PQ4::kCentroids] = {};
    for (std::size_t d = 0; d < dims; ++d) {
        const float a = w * q[d];
        for (std::size_t k = 0; k < PQ4::kCentroids; ++k) acc[k] += a * c[d * PQ4::kCentroids + k];
    }
    float mn = acc[0], mx = acc[0];
    for (std::size_t k = 1; k < PQ4::kCentroids; ++k) {
        mn = acc[k] < mn ? acc[k] : mn;
        mx = acc[k] > mx ? acc[k] : mx;
    }
    for (std::size_t k = 0; k < PQ4::kCentroids; ++k) out[k] = acc[k] - mn;
    return {mn, mx - mn};
}

#if defined(__x86_64__) || defined(_M_X64)
// The same in two 8-wide registers. Multiply and add stay separate (no FMA), so
// the sums are those of the scalar body, bit for bit.
__attribute__((target("avx2"))) Sums subspace_sums_avx2(const float* q, float w, const float* c,
                                                        std::size_t dims, float* out) {
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    for (std::size_t d = 0; d < dims; ++d) {
        const __m256 a = _mm256_set1_ps(w * q[d]);
        lo = _mm256_add_ps(lo, _mm256_mul_ps(a, _mm256_loadu_ps(c + d * PQ4::kCentroids)));
        hi = _mm256_add_ps(hi, _mm256_mul_ps(a, _mm256_loadu_ps(c + d * PQ4::kCentroids + 8)));
    }
    __m256 mn8 = _mm256_min_ps(lo, hi), mx8 = _mm256_max_ps(lo, hi);
    __m128 mn = _mm_min_ps(_mm256_castps256_ps128(mn8), _mm256_extractf128_ps(mn8, 1));
    __m128 mx = _mm_max_ps(_mm256_castps256_ps128(mx8), _mm256_extractf128_ps(mx8, 1));
    mn = _mm_min_ps(mn, _mm_movehl_ps(mn, mn));
    mx = _mm_max_ps(mx, _mm_movehl_ps(mx, mx));
    mn = _mm_min_ss(mn, _mm_movehdup_ps(mn));
    mx = _mm_max_ss(mx, _mm_movehdup_ps(mx));
    const float low = _mm_cvtss_f32(mn), high = _mm_cvtss_f32(mx);
    const __m256 shift = _mm256_set1_ps(low);
    _mm256_storeu_ps(out, _mm256_sub_ps(lo, shift));
    _mm256_storeu_ps(out + 8, _mm256_sub_ps(hi, shift));
    return {low, high - low};
}

// lut[i] = min(raw[i] * inv + 0.5, qmax), truncated, for n a multiple of 16 (the
// scalar loop's operations, so the same bytes).
__attribute__((target("avx2"))) void quantize_lut_avx2(const float* raw, std::size_t n, float inv,
                                                       float qmax, std::uint8_t* lut) {
    const __m256 scale = _mm256_set1_ps(inv), half = _mm256_set1_ps(0.5f),
                 top = _mm256_set1_ps(qmax);
    for (std::size_t i = 0; i < n; i += 16) {
        const __m256 a = _mm256_min_ps(
            _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(raw + i), scale), half), top);
        const __m256 b = _mm256_min_ps(
            _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(raw + i + 8), scale), half), top);
        // Words in lane order a0-3 b0-3 | a4-7 b4-7, then a0-7 | b0-7.
        const __m256i words = _mm256_permute4x64_epi64(
            _mm256_packus_epi32(_mm256_cvttps_epi32(a), _mm256_cvttps_epi32(b)), 0xd8);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(lut + i),
                         _mm_packus_epi16(_mm256_castsi256_si128(words),
                                          _mm256_extracti128_si256(words, 1)));
    }
}
#endif

void quantize_lut_scalar(const float* raw, std::size_t n, float inv, float qmax,
                         std::uint8_t* lut) {
    for (std::size_t i = 0; i < n; ++i) {
        const float t = raw[i] * inv + 0.5f;  // >= 0: rounds
        lut[i] = static_cast<std::uint8_t>(static_cast<int>(t < qmax ? t : qmax));
    }
}

}  // namespace

void PQ4::tables(const float* q, bool l2, Tables& out) const {
    // Per dimension, 16 contiguous centroid values (by_dim_): the whole table
    // costs 16 * dim multiply-adds, two 8-wide registers per dimension. (Plain
    // loops over the thread's buffers ran scalar, the compiler assuming they
    // alias: 10 us per 384-d query, most of a filtered coded scan's time.)
    thread_local std::vector<float> shifted;  // each subspace's sums less their minimum
    shifted.resize(used_ * kCentroids);
    float* const raw = shifted.data();
    const float w = l2 ? -2.f : -1.f;
#if defined(__x86_64__) || defined(_M_X64)
    const bool avx2 = active_kernels().level != SimdLevel::Scalar;
    const auto sums = avx2 ? subspace_sums_avx2 : subspace_sums_scalar;
    const auto quantize = avx2 ? quantize_lut_avx2 : quantize_lut_scalar;
#else
    const auto sums = subspace_sums_scalar;
    const auto quantize = quantize_lut_scalar;
#endif
    float bias = 0.f, widest = 0.f;
    for (std::size_t s = 0; s < used_; ++s) {
        const std::size_t d0 = s * sub_dim_, dims = std::min(dim_, d0 + sub_dim_) - d0;
        const Sums r = sums(q + d0, w, by_dim_.data() + d0 * kCentroids, dims, raw + s * kCentroids);
        bias += r.min;
        widest = std::max(widest, r.spread);
    }
    // One scale for every subspace (sums stay comparable), each shifted to its
    // minimum; entries sized so that a sum over all subspaces fits in 16 bits.
    const float qmax =
        static_cast<float>(std::min<std::size_t>(255, 65535 / std::max<std::size_t>(used_, 1)));
    const float scale = widest > 0.f && std::isfinite(widest) ? widest / qmax : 1.f;
    const float inv = 1.f / scale;
    out.lut.assign(nsub_ * kCentroids, 0);
    quantize(raw, used_ * kCentroids, inv, qmax, out.lut.data());
    out.scale = scale;
    out.bias = bias;
}

namespace {

// Where code j's nibble of subspace s lies in a group of `codes` codes (the
// layouts of DistanceKernels::fastscan32 and fastscan16).
std::size_t nibble_at(std::size_t s, std::size_t j, std::size_t codes, unsigned& shift) {
    if (codes == PQ4::kGroup) {
        shift = j < 16 ? 0 : 4;
        return s * 16 + (j & 15);
    }
    shift = (s & 2) ? 4 : 0;
    return (s / 4) * 32 + (s & 1) * 16 + j;
}

}  // namespace

void PQ4::take(const std::uint8_t* group, std::size_t j, std::uint8_t* code,
               std::size_t codes) const {
    std::fill(code, code + code_bytes(), std::uint8_t{0});
    for (std::size_t s = 0; s < nsub_; ++s) {
        unsigned shift = 0;
        const std::uint8_t c = (group[nibble_at(s, j, codes, shift)] >> shift) & 15;
        code[s / 2] |= static_cast<std::uint8_t>(c << (4 * (s & 1)));
    }
}

void PQ4::place(std::uint8_t* group, std::size_t j, const std::uint8_t* code,
                std::size_t codes) const {
    for (std::size_t s = 0; s < nsub_; ++s) {
        unsigned shift = 0;
        const std::uint8_t c = (code[s / 2] >> (4 * (s & 1))) & 15;
        std::uint8_t& b = group[nibble_at(s, j, codes, shift)];
        b = static_cast<std::uint8_t>((b & (shift ? 0x0f : 0xf0)) | (c << shift));
    }
}

}  // namespace evidex
