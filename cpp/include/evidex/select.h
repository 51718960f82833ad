// Selection of the smallest distances without data-dependent branches. A heap
// or a quickselect compares distances in branches the predictor misses about
// half the time (~15 cycles each); here a cut is found by bisection over the
// values, each step one counting pass that compilers vectorise, and the kept
// entries are compacted in one more pass.
#pragma once

#include <cstddef>
#include <cstdint>

namespace evidex {

// Moves the smallest of dist[0..n) (ids alongside) to the front, in the order
// they were in, and returns how many: between min(n, keep) and keep + slack,
// every one of them no farther than any left behind. With slack 0, exactly
// min(n, keep), the earlier ones kept among equal distances at the cut.
// Distances must not be NaN.
inline std::size_t keep_smallest(float* dist, std::uint32_t* ids, std::size_t n, std::size_t keep,
                                 std::size_t slack = 0) {
    if (n <= keep) return n;
    if (keep == 0) return 0;
    float lo = dist[0], hi = dist[0];
    for (std::size_t i = 1; i < n; ++i) {
        lo = dist[i] < lo ? dist[i] : lo;
        hi = dist[i] > hi ? dist[i] : hi;
    }
    auto at_most = [&](float t) {
        std::size_t c = 0;
        for (std::size_t i = 0; i < n; ++i) c += dist[i] <= t;
        return c;
    };
    // Invariant: at_most(hi) >= keep, and at_most(lo) < keep unless lo is the least.
    float cut = hi;
    if (at_most(lo) >= keep) {
        cut = lo;
    } else {
        for (;;) {
            const float mid = lo + (hi - lo) * 0.5f;
            if (!(mid > lo && mid < hi)) break;  // adjacent: hi is the keep-th value
            const std::size_t c = at_most(mid);
            if (c < keep) {
                lo = mid;
            } else if (c > keep + slack) {
                hi = mid;
            } else {
                hi = mid;
                break;
            }
        }
        cut = hi;
    }
    // Everything below the cut, and the first ones at the cut up to keep + slack.
    std::size_t below = 0;
    for (std::size_t i = 0; i < n; ++i) below += dist[i] < cut;
    std::size_t ties = keep + slack - below, out = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const bool tie = dist[i] == cut && ties > 0;
        const bool take = dist[i] < cut || tie;
        ties -= tie;
        dist[out] = dist[i];
        ids[out] = ids[i];
        out += take;
    }
    return out;
}

}  // namespace evidex
