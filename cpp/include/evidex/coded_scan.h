// Ranking vectors by their 4-bit product codes (fast scan, fastscan.h) and
// re-ranking the best few with exact float32 distances (ScaNN's "reorder",
// FAISS's refine): IVFIndex's lists, and HNSWIndex's coded scan of a filter's
// allowed set. A code's estimate is
//   base + scale * (sum of the query's table entries) (+ extra),
// with base and extra as the caller's identity needs (fastscan.h), so returned
// distances are exact and only the choice of the re-ranked few is approximate.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "evidex/beam.h"  // prefetch_vector
#include "evidex/distance.h"
#include "evidex/exact_scan.h"  // kNoRow
#include "evidex/fastscan.h"
#include "evidex/select.h"

namespace evidex {

// e[j] = base + scale * est[j] (+ extra[j]) for a group of 32 codes, and the
// bit mask of those below `bound`.
std::uint32_t estimates_below(const std::uint16_t* est, const float* extra, float base,
                              float scale, float bound, float* e);

// The bit mask of the group's 32 kernel sums below `limit` (at most 65536).
std::uint32_t sums_below(const std::uint16_t* est, std::uint32_t limit);

// The `depth` lowest estimates of a stream of fast-scan groups. Candidates under
// the bound are appended; when the buffer fills, the best are kept (a few more
// mid-stream: a cheaper cut) and the bound drops to the worst of them.
class Shortlist {
public:
    explicit Shortlist(std::size_t depth)
        : depth_(std::max<std::size_t>(depth, 1)),
          cap_(4 * depth_ + PQ4::kGroup),
          est_(cap_),
          rows_(cap_) {}

    // One group's kernel sums `est` (the first m codes count), per-code terms
    // `extra` (or null); code j is row row_of(j), offered when keep(row).
    template <class RowOf, class Keep>
    void offer(const std::uint16_t* est, const float* extra, float base, float scale,
               std::size_t m, RowOf&& row_of, Keep&& keep) {
        alignas(64) float e[PQ4::kGroup];
        std::uint32_t mask = extra != nullptr ? estimates_below(est, extra, base, scale, bound_, e)
                                              : sums_below_bound(est, base, scale, e);
        if (m < PQ4::kGroup) mask &= (std::uint32_t{1} << m) - 1;
        for (; mask != 0; mask &= mask - 1) {  // most codes are not below the bound
            const unsigned j = static_cast<unsigned>(__builtin_ctz(mask));
            const std::uint32_t row = row_of(j);
            if (!keep(row)) continue;
            est_[held_] = e[j];
            rows_[held_++] = row;
        }
        if (held_ + PQ4::kGroup > cap_) cut(depth_ / 4);  // room for the next group
    }
    // Keeps exactly the depth best (all, when fewer were offered); their count.
    std::size_t finish() {
        cut(0);
        return held_;
    }
    const std::uint32_t* rows() const { return rows_.data(); }
    std::size_t size() const { return held_; }

private:
    // Without per-code terms an estimate rises with its kernel sum, so it is below
    // the bound exactly when the sum is below a limit found once per (base, bound):
    // a 16-bit compare a code, and floats only for the few under it (converting
    // every sum to compare it took a sixth of an IVF search on GloVe-50).
    std::uint32_t sums_below_bound(const std::uint16_t* est, float base, float scale, float* e) {
        if (base != limit_base_ || scale != limit_scale_ || bound_ != limit_bound_)
            set_limit(base, scale);
        std::uint32_t mask = sums_below(est, limit_);
        for (std::uint32_t left = mask; left != 0; left &= left - 1) {
            const unsigned j = static_cast<unsigned>(__builtin_ctz(left));
            e[j] = estimate(base, scale, est[j]);
            if (!(e[j] < bound_)) mask &= ~(std::uint32_t{1} << j);  // the compare defines it
        }
        return mask;
    }
    static float estimate(float base, float scale, std::uint32_t sum) {
        return base + scale * static_cast<float>(sum);
    }
    // limit_: the least sum whose estimate is not below the bound (65536: none).
    // The estimate never falls as the sum rises (scale > 0, rounding monotone),
    // so bisection finds it; the quotient's guess brackets it in two steps.
    void set_limit(float base, float scale) {
        limit_base_ = base;
        limit_scale_ = scale;
        limit_bound_ = bound_;
        auto below = [&](std::uint32_t sum) { return estimate(base, scale, sum) < bound_; };
        std::uint32_t lo = 0, hi = 65536;  // below(s) for s < lo; not for s >= hi
        const float t = (bound_ - base) / scale;
        if (std::isfinite(t)) {
            const std::uint32_t g =
                t <= 0.f ? 0 : t >= 65536.f ? 65536 : static_cast<std::uint32_t>(std::ceil(t));
            if (g < 65536) {
                if (below(g)) lo = g + 1; else hi = g;
            }
            if (g > lo && g - 1 < hi) {
                if (below(g - 1)) lo = g; else hi = g - 1;
            }
        }
        while (lo < hi) {
            const std::uint32_t mid = (lo + hi) / 2;
            if (below(mid)) lo = mid + 1; else hi = mid;
        }
        limit_ = lo;
    }
    void cut(std::size_t slack) {
        held_ = keep_smallest(est_.data(), rows_.data(), held_, depth_, slack);
        if (held_ >= depth_) bound_ = *std::max_element(est_.begin(), est_.begin() + held_);
    }
    std::size_t depth_, cap_, held_ = 0;
    float bound_ = std::numeric_limits<float>::infinity();
    float limit_base_ = std::numeric_limits<float>::quiet_NaN(), limit_scale_ = 0.f,
          limit_bound_ = 0.f;  // what limit_ was found for (NaN: nothing yet)
    std::uint32_t limit_ = 0;
    std::vector<float> est_;
    std::vector<std::uint32_t> rows_;
};

// The exact kk nearest of n rows (vector_of(row): dim floats) to q (prepared:
// normalised for cosine), distances squared L2 when l2, else 1 - dot; vectors are
// fetched far enough ahead to cover a memory latency (a distance costs a few ns
// here, a miss 100 or more). out_rows ascending by distance, ties by row, padded
// with kNoRow at infinity; returns how many were found.
template <class VectorOf>
std::size_t rerank_rows(const DistanceKernels& k, bool l2, const float* q, std::size_t dim,
                        const std::uint32_t* rows, std::size_t n, std::size_t kk,
                        VectorOf&& vector_of, std::uint32_t* out_rows, float* out_dist) {
    const std::size_t bytes = dim * sizeof(float);
    const std::size_t ahead = std::max<std::size_t>(4, 64 / ((bytes + 63) / 64));
    for (std::size_t i = 0; i < std::min(ahead, n); ++i)
        prefetch_vector(reinterpret_cast<const char*>(vector_of(rows[i])), bytes);
    Nearest best(kk);
    for (std::size_t i = 0; i < n; ++i) {
        if (i + ahead < n)
            prefetch_vector(reinterpret_cast<const char*>(vector_of(rows[i + ahead])), bytes);
        const float* v = vector_of(rows[i]);
        best.offer(l2 ? k.l2sq(q, v, dim) : 1.f - k.dot(q, v, dim), rows[i]);
    }
    best.write(out_rows, out_dist);
    return std::min(kk, n);
}

// A set of codes in fast-scan groups of 32, packed once for a batch of queries:
// group g holds members 32g..32g+31 (padding codes zero), and for squared L2
// their |x|^2 (padding zero) so that an estimate is
//   |q|^2 + |x|^2 - 2 <q, x>.
struct PackedCodes {
    std::size_t count = 0;
    std::vector<std::uint8_t> groups;
    std::vector<float> norms;  // L2 only: 32 per group

    // code_of(j): member j's code (pq.code_bytes()); norm_of(j): its |x|^2 (L2).
    // Each group is transposed whole (byte t of a code holds subspaces 2t and
    // 2t + 1; byte i of a subspace's 16 holds codes i and i + 16), some 20x
    // faster than placing codes one at a time.
    template <class CodeOf, class NormOf>
    void pack(const PQ4& pq, bool l2, std::size_t n, CodeOf&& code_of, NormOf&& norm_of) {
        constexpr std::size_t G = PQ4::kGroup;
        count = n;
        const std::size_t ngroups = (n + G - 1) / G, cb = pq.code_bytes();
        groups.assign(ngroups * pq.group_bytes(), 0);
        norms.assign(l2 ? ngroups * G : 0, 0.f);
        std::vector<std::uint8_t> rows(G * cb);
        for (std::size_t g = 0; g < ngroups; ++g) {
            const std::size_t first = g * G, m = std::min(G, n - first);
            std::fill(rows.begin() + static_cast<std::ptrdiff_t>(m * cb), rows.end(), 0);
            for (std::size_t j = 0; j < m; ++j) {
                std::memcpy(rows.data() + j * cb, code_of(first + j), cb);
                if (l2) norms[first + j] = norm_of(first + j);
            }
            std::uint8_t* out = groups.data() + g * pq.group_bytes();
            for (std::size_t t = 0; t < cb; ++t, out += 32) {
                for (std::size_t i = 0; i < 16; ++i) {
                    const std::uint8_t a = rows[i * cb + t], b = rows[(i + 16) * cb + t];
                    out[i] = static_cast<std::uint8_t>((a & 15) | (b << 4));
                    out[16 + i] = static_cast<std::uint8_t>((a >> 4) | (b & 0xf0));
                }
            }
        }
    }
};

// The `depth` members of `set` with the lowest estimated distance to q
// (prepared: normalised for cosine) into `list`: a fast scan of every code.
inline void shortlist_codes(const DistanceKernels& k, const PQ4& pq, bool l2, const float* q,
                            std::size_t dim, const PackedCodes& set, Shortlist& list) {
    PQ4::Tables tables;
    pq.tables(q, l2, tables);
    const float base = (l2 ? k.dot(q, q, dim) : 1.f) + tables.bias;
    const std::size_t group = pq.group_bytes(), nsub = pq.subspaces();
    alignas(64) std::uint16_t est[PQ4::kGroup];
    for (std::size_t g = 0; g * PQ4::kGroup < set.count; ++g) {
        const std::size_t first = g * PQ4::kGroup;
        k.fastscan32(set.groups.data() + g * group, tables.lut.data(), nsub, est);
        list.offer(est, l2 ? set.norms.data() + first : nullptr, base, tables.scale,
                   std::min(PQ4::kGroup, set.count - first),
                   [&](unsigned j) { return static_cast<std::uint32_t>(first + j); },
                   [](std::uint32_t) { return true; });
    }
    list.finish();
}

}  // namespace evidex
