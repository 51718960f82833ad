// Selection of the smallest distances without data-dependent branches. A heap
// or a quickselect compares distances in branches the predictor misses about
// half the time (~15 cycles each); here a cut is found by bisection over the
// values' order-preserving integer images, each step one counting pass that
// compilers vectorise, and the kept entries are compacted in one more pass.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace evidex {

// A signed integer ordered as the float is: bisection over these always halves
// an integer range (at most 32 steps), whatever the floats are, infinities included.
inline std::int32_t order_key(float f) {
    std::int32_t i;
    std::memcpy(&i, &f, sizeof i);
    return i ^ ((i >> 31) & 0x7fffffff);
}

// Moves the smallest of dist[0..n) (ids alongside) to the front, in the order
// they were in, and returns how many: between min(n, keep) and keep + slack,
// every one of them no farther than any left behind. With slack 0, exactly
// min(n, keep), the earlier ones kept among equal distances at the cut.
inline std::size_t keep_smallest(float* dist, std::uint32_t* ids, std::size_t n, std::size_t keep,
                                 std::size_t slack = 0) {
    if (n <= keep) return n;
    if (keep == 0) return 0;
    std::int32_t lo = order_key(dist[0]), hi = lo;
    for (std::size_t i = 1; i < n; ++i) {
        const std::int32_t k = order_key(dist[i]);
        lo = k < lo ? k : lo;
        hi = k > hi ? k : hi;
    }
    auto at_most = [&](std::int32_t t) {
        std::size_t c = 0;
        for (std::size_t i = 0; i < n; ++i) c += order_key(dist[i]) <= t;
        return c;
    };
    // The cut: at least `keep` at or below it, fewer than `keep` below it (or at
    // most keep + slack at or below it).
    std::int32_t cut = lo;
    if (at_most(lo) < keep) {
        // Invariant: at_most(lo) < keep <= at_most(hi).
        while (static_cast<std::int64_t>(hi) - lo > 1) {
            const std::int32_t mid =
                static_cast<std::int32_t>((static_cast<std::int64_t>(lo) + hi) / 2);
            const std::size_t c = at_most(mid);
            if (c < keep) {
                lo = mid;
            } else {
                hi = mid;
                if (c <= keep + slack) break;
            }
        }
        cut = hi;
    }
    // Everything below the cut, and the first ones at the cut up to keep + slack.
    std::size_t below = 0;
    for (std::size_t i = 0; i < n; ++i) below += order_key(dist[i]) < cut;
    std::size_t ties = keep + slack - below, out = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const std::int32_t k = order_key(dist[i]);
        const bool tie = k == cut && ties > 0;
        const bool take = k < cut || tie;
        ties -= tie;
        dist[out] = dist[i];
        ids[out] = ids[i];
        out += take;
    }
    return out;
}

}  // namespace evidex
