// Exact scans of a batch of queries over a list of rows (HNSWIndex's filtered
// scans, IVFIndex's scans of small allowed sets): with four queries or more the
// rows' vectors are packed sixteen at a time dimension-major into a panel (a
// matrix product's packed operand), read once per batch and scored against every
// query with broadcasts and no horizontal sums; with fewer, packing would cost
// more than it saves and each vector is scored against the (padded) queries four
// at a time.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "evidex/beam.h"  // prefetch_vector
#include "evidex/distance.h"
#include "evidex/select.h"

namespace evidex {

constexpr std::uint32_t kNoRow = 0xffffffffu;

// Bit l set where d[l] < bound, for l < m; d holds kPanelWidth readable floats.
inline std::uint32_t lanes_below(const float* d, std::size_t m, float bound) {
    static_assert(kPanelWidth == 16, "four SSE compares cover a panel");
    std::uint32_t mask = 0;
#if defined(__SSE2__)
    const __m128 b = _mm_set1_ps(bound);
    for (int j = 0; j < 4; ++j)
        mask |= static_cast<std::uint32_t>(_mm_movemask_ps(_mm_cmplt_ps(_mm_loadu_ps(d + 4 * j), b)))
                << (4 * j);
#else
    for (std::size_t l = 0; l < kPanelWidth; ++l) mask |= static_cast<std::uint32_t>(d[l] < bound) << l;
#endif
    return mask & ((1u << m) - 1u);
}

using RowDistance = std::pair<float, std::uint32_t>;

// kept[0..n) sorted ascending (ties by row) into kk answers, padded with kNoRow at
// infinity: how Nearest and NearestInOrder hand out what they kept.
inline void write_sorted(RowDistance* kept, std::size_t n, std::size_t kk, std::uint32_t* rows,
                         float* dist) {
    std::sort(kept, kept + n);
    for (std::size_t r = 0; r < kk; ++r) {
        rows[r] = r < n ? kept[r].second : kNoRow;
        dist[r] = r < n ? kept[r].first : std::numeric_limits<float>::infinity();
    }
}

// The kk nearest scored so far (a max-heap on distance, then row: ties keep the
// earlier row, as a scan in row order does); the k-th distance bounds the rest.
class Nearest {
public:
    explicit Nearest(std::size_t kk) : kk_(kk) { heap_.reserve(kk + 1); }
    float threshold() const {
        return heap_.size() < kk_ ? std::numeric_limits<float>::infinity() : heap_.front().first;
    }
    // Only below the threshold (infinity while not full): an infinite distance
    // (overflow) is never an answer.
    void offer(float d, std::uint32_t row) {
        if (!(d < threshold())) return;
        if (heap_.size() < kk_) {
            heap_.emplace_back(d, row);
            std::push_heap(heap_.begin(), heap_.end());
        } else {
            std::pop_heap(heap_.begin(), heap_.end());
            heap_.back() = {d, row};
            std::push_heap(heap_.begin(), heap_.end());
        }
    }
    // The kk nearest, ascending, padded with kNoRow at infinity.
    void write(std::uint32_t* rows, float* dist) {
        write_sorted(heap_.data(), heap_.size(), kk_, rows, dist);
    }

private:
    std::size_t kk_;
    std::vector<RowDistance> heap_;
};

// The kk nearest of rows offered in ascending order, as Nearest keeps them, for
// scans: a row under the bound is appended (no heap: a heap's sift costs
// mispredicted branches, ~0.8 us of a 6 us scan of 360 rows per query), and
// when the buffer fills, the kk best are kept (select.h) and the bound drops
// to the worst of them. Among equal distances the earlier rows are kept.
class NearestInOrder {
public:
    explicit NearestInOrder(std::size_t kk)
        : kk_(kk),
          cap_(std::max<std::size_t>(2 * kk, 64)),
          dist_(std::min<std::size_t>(cap_, 64)),
          rows_(dist_.size()) {}
    float threshold() const { return bound_; }
    // Only below the bound (infinity while fewer than kk are kept): an infinite
    // or NaN distance is never an answer.
    void offer(float d, std::uint32_t row) {
        if (!(d < bound_)) return;
        dist_[held_] = d;
        rows_[held_++] = row;
        if (held_ < dist_.size()) return;
        if (held_ < cap_) {  // a large kk: the buffer grows as rows come
            dist_.resize(std::min(cap_, 2 * held_));
            rows_.resize(dist_.size());
        } else {
            cut();
        }
    }
    // The kk nearest, ascending (ties by row), padded with kNoRow at infinity.
    void write(std::uint32_t* rows, float* dist) {
        cut();
        RowDistance small[64];
        std::vector<RowDistance> large(held_ > 64 ? held_ : 0);
        RowDistance* kept = held_ > 64 ? large.data() : small;
        for (std::size_t i = 0; i < held_; ++i) kept[i] = {dist_[i], rows_[i]};
        write_sorted(kept, held_, kk_, rows, dist);
    }

private:
    void cut() {
        held_ = keep_smallest(dist_.data(), rows_.data(), held_, kk_);
        if (held_ == kk_ && kk_ > 0) bound_ = *std::max_element(dist_.data(), dist_.data() + held_);
    }

    std::size_t kk_, cap_, held_ = 0;
    float bound_ = std::numeric_limits<float>::infinity();
    std::vector<float> dist_;
    std::vector<std::uint32_t> rows_;
};

#if defined(__x86_64__) || defined(_M_X64)
// NearestInOrder for up to kLanes answers on AVX-512 CPUs: they are kept sorted
// in two registers (distances, rows; lanes past kk sort last), so the bound is
// exact at every row and scans offer the fewest rows (the buffer offers ~3x as
// many: on 50-d scans, where a row's products cost little, the offers took
// longer than the products). An offer moves the lanes above it up one: no
// branch on where it goes (an insertion loop's exit, mispredicted, cost ~40
// cycles an offer, more than the buffer's appends past ~10 answers).
class NearestInLanes {
public:
    static constexpr std::size_t kLanes = 16;
    static bool fits(const DistanceKernels& k, std::size_t kk) {
        return k.level == SimdLevel::AVX512 && kk > 0 && kk <= kLanes;
    }
    explicit NearestInLanes(std::size_t kk) : kk_(kk) {
        std::fill(dist_, dist_ + kLanes, std::numeric_limits<float>::infinity());
        std::fill(rows_, rows_ + kLanes, kNoRow);
    }
    float threshold() const { return bound_; }
    float settle() const { return bound_; }
    // As NearestInOrder::offer; equal distances stay before (ties by row).
    __attribute__((target("avx512f"))) void offer(float d, std::uint32_t row) {
        if (!(d < bound_)) return;
        const __m512 was = _mm512_load_ps(dist_);
        const __m512i was_rows = _mm512_load_si512(rows_);
        const __m512 value = _mm512_set1_ps(d);
        const __mmask16 above = _mm512_cmp_ps_mask(was, value, _CMP_GT_OQ);  // a suffix
        const __mmask16 first = static_cast<__mmask16>(above & ~(above << 1));
        const __m512i lane_before =
            _mm512_set_epi32(14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0);
        __m512 now = _mm512_mask_blend_ps(above, was, _mm512_permutexvar_ps(lane_before, was));
        __m512i now_rows = _mm512_mask_blend_epi32(
            above, was_rows, _mm512_permutexvar_epi32(lane_before, was_rows));
        now = _mm512_mask_blend_ps(first, now, value);
        now_rows = _mm512_mask_blend_epi32(first, now_rows,
                                           _mm512_set1_epi32(static_cast<int>(row)));
        _mm512_store_ps(dist_, now);
        _mm512_store_si512(rows_, now_rows);
        bound_ = _mm512_cvtss_f32(
            _mm512_permutexvar_ps(_mm512_set1_epi32(static_cast<int>(kk_ - 1)), now));
    }
    // The kk nearest, ascending (ties by row); unfilled lanes hold kNoRow at infinity.
    void write(std::uint32_t* rows, float* dist) const {
        std::copy(rows_, rows_ + kk_, rows);
        std::copy(dist_, dist_ + kk_, dist);
    }

private:
    alignas(64) float dist_[kLanes];
    alignas(64) std::uint32_t rows_[kLanes];
    std::size_t kk_;
    float bound_ = std::numeric_limits<float>::infinity();
};
#endif

// f(keeper) with a NearestInLanes of kk where the CPU and kk allow it, else an
// Otherwise (NearestInOrder, or a keeper of the same interface): f builds its
// keepers from the argument's type.
template <class Otherwise = NearestInOrder, class F>
void with_keeper(const DistanceKernels& k, std::size_t kk, F&& f) {
#if defined(__x86_64__) || defined(_M_X64)
    if (NearestInLanes::fits(k, kk)) return f(NearestInLanes(kk));
#endif
    f(Otherwise(kk));
}

// Queries per pass of a scan: one pass reads every row once (packing each), so
// passes are as large as the threads allow while their queries stay in L2.
inline std::size_t scan_chunk_size(std::size_t nq, std::size_t dim, std::size_t threads) {
    const std::size_t cap = std::max<std::size_t>(32, (std::size_t{512} << 10) / (dim * 4));
    threads = std::max<std::size_t>(1, threads);
    return std::max<std::size_t>(1, std::min(cap, (nq + threads - 1) / threads));
}

// Rows rows[0..m) (m <= kPanelWidth) into a panel, dimension-major: pan[t * W + l]
// = rows[l][t]; lanes m and up are left as they are. Four rows and four
// dimensions at a time by an SSE transpose: one float at a time, packing took a
// fifth of a 200-query scan of 360 384-d rows beside its kernel.
inline void pack_panel(const float* const* rows, std::size_t m, std::size_t dim, float* pan) {
    constexpr std::size_t W = kPanelWidth;
    std::size_t rows4 = 0, dim4 = 0;  // the transpose's share: rows4 rows, dim4 dimensions
#if defined(__SSE2__)
    rows4 = m / 4 * 4;
    dim4 = dim / 4 * 4;
    for (std::size_t l = 0; l < rows4; l += 4) {
        const float *r0 = rows[l], *r1 = rows[l + 1], *r2 = rows[l + 2], *r3 = rows[l + 3];
        for (std::size_t t = 0; t < dim4; t += 4) {
            __m128 a = _mm_loadu_ps(r0 + t), b = _mm_loadu_ps(r1 + t), c = _mm_loadu_ps(r2 + t),
                   d = _mm_loadu_ps(r3 + t);
            _MM_TRANSPOSE4_PS(a, b, c, d);
            _mm_storeu_ps(pan + t * W + l, a);
            _mm_storeu_ps(pan + (t + 1) * W + l, b);
            _mm_storeu_ps(pan + (t + 2) * W + l, c);
            _mm_storeu_ps(pan + (t + 3) * W + l, d);
        }
    }
#endif
    // The rest one float at a time: the transposed rows' last dim % 4 dimensions,
    // every dimension of the other rows.
    for (std::size_t l = 0; l < m; ++l)
        for (std::size_t t = l < rows4 ? dim4 : 0; t < dim; ++t) pan[t * W + l] = rows[l][t];
}

// Distances (squared L2 when l2, else 1 - dot) of nq queries (dim floats each;
// cosine queries, `normalize`, are normalised here) to the n vectors row(0..n),
// handed to visit(query, distances, first, m): those of query `query` to rows
// first..first+m, sixteen at a time.
template <class Row, class Visit>
void scan_panels(const DistanceKernels& k, bool l2, bool normalize, std::size_t dim,
                 const float* queries, std::size_t nq, std::size_t n, Row&& row, Visit&& visit) {
    constexpr std::size_t W = kPanelWidth;
    constexpr std::size_t kPanelMin = 4;
    const std::size_t bytes = dim * sizeof(float);
    // Queries four by four, zero-padded to a multiple of 16 floats (and of 4
    // queries), as the four-query kernels read them; the panel kernels read the
    // same rows up to dim.
    const std::size_t stride = (dim + 15) / 16 * 16;
    const std::size_t groups = (nq + 3) / 4;
    thread_local std::vector<float> padded, panel, out;
    padded.assign(groups * 4 * stride, 0.f);
    for (std::size_t i = 0; i < nq; ++i) {
        float* q = padded.data() + i * stride;
        if (normalize)
            normalize_into(queries + i * dim, dim, q);
        else
            std::memcpy(q, queries + i * dim, bytes);
    }
    const bool packed = nq >= kPanelMin;
    const Distance4Kernel four = l2 ? k.l2sq4 : k.dot4;
    const PanelKernel panel_kernel = l2 ? k.l2sq_panel : k.dot_panel;
    if (packed) panel.assign(dim * W, 0.f);
    out.resize(std::max<std::size_t>(groups * 4, 1) * W);
    float* const pan = panel.data();
    float* const dist = out.data();
    const float* const qs = padded.data();
    for (std::size_t j = 0; j < std::min(n, W); ++j)
        prefetch_vector(reinterpret_cast<const char*>(row(j)), bytes);
    float d[4];
    for (std::size_t b = 0; b < n; b += W) {
        const std::size_t m = std::min(W, n - b);
        const float* rows[W];
        for (std::size_t l = 0; l < m; ++l) {
            if (b + W + l < n) prefetch_vector(reinterpret_cast<const char*>(row(b + W + l)), bytes);
            const float* v = rows[l] = row(b + l);
            if (packed) continue;
            for (std::size_t g = 0; g < groups; ++g) {
                four(qs + g * 4 * stride, stride, v, dim, d);
                for (std::size_t t = 0; t < 4; ++t) dist[(g * 4 + t) * W + l] = d[t];
            }
        }
        // Lanes past m keep the previous block's values: finite, and never visited.
        if (packed) {
            pack_panel(rows, m, dim, pan);
            panel_kernel(qs, stride, nq, pan, dim, dist);
        }
        for (std::size_t i = 0; i < nq; ++i) {
            float* r = dist + i * W;
            if (!l2)
                for (std::size_t l = 0; l < m; ++l) r[l] = 1.0f - r[l];
            visit(i, static_cast<const float*>(r), b, m);
        }
    }
}

// The kk nearest of the n rows for each query: out_rows[i * kk + r] indexes the
// rows (kNoRow where fewer than kk exist), out_dist ascending, ties in row order.
template <class Row>
void scan_knn(const DistanceKernels& k, bool l2, bool normalize, std::size_t dim,
              const float* queries, std::size_t nq, std::size_t n, Row&& row, std::size_t kk,
              std::uint32_t* out_rows, float* out_dist) {
    with_keeper(k, kk, [&](auto keeper) {
        std::vector<decltype(keeper)> nearest(nq, keeper);
        // The k-th distance so far per query: most rows fail this one comparison.
        std::vector<float> worst(nq, std::numeric_limits<float>::infinity());
        scan_panels(k, l2, normalize, dim, queries, nq, n, row,
                    [&](std::size_t i, const float* dist, std::size_t first, std::size_t m) {
                        std::uint32_t mask = lanes_below(dist, m, worst[i]);
                        if (mask == 0) return;
                        auto& best = nearest[i];
                        for (; mask != 0; mask &= mask - 1) {
                            const int l = __builtin_ctz(mask);
                            best.offer(dist[l], static_cast<std::uint32_t>(first + l));
                        }
                        worst[i] = best.threshold();
                    });
        for (std::size_t i = 0; i < nq; ++i)
            nearest[i].write(out_rows + i * kk, out_dist + i * kk);
    });
}

}  // namespace evidex
