// The beam of a graph search as one sorted array (the "linear pool" of NSG and
// GLASS): nearest first, capped at ef, with a cursor at the nearest entry not yet
// expanded. For the beam widths HNSW uses, a binary search plus a short memmove
// beats a pair of binary heaps, and the results come out sorted.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define EVIDEX_PREFETCH(p) _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0)
#else
#define EVIDEX_PREFETCH(p) __builtin_prefetch(p)
#endif

namespace evidex {

// Prefetch every cache line of a node's vector: the distance that follows reads
// all of them, and the hardware prefetcher cannot guess the next random node.
inline void prefetch_vector(const char* p, std::size_t bytes) {
    for (std::size_t off = 0; off < bytes; off += 64) EVIDEX_PREFETCH(p + off);
}

// How many neighbours' data to have in flight: about 24 cache lines, measured
// best on GloVe-50 for both 64-byte codes (24 nodes) and 200-byte vectors (6).
inline std::size_t prefetch_ahead(std::size_t bytes) {
    const std::size_t lines = std::max<std::size_t>(1, (bytes + 63) / 64);
    return std::min<std::size_t>(32, std::max<std::size_t>(2, 24 / lines));
}

class BeamPool {
public:
    void reset(std::size_t capacity) {
        if (dist_.size() < capacity + 1) {
            dist_.resize(capacity + 1);
            id_.resize(capacity + 1);
        }
        capacity_ = capacity;
        size_ = 0;
        cursor_ = 0;
    }

    std::size_t size() const { return size_; }
    // Distance a candidate must beat to enter the beam.
    float bound() const {
        return size_ < capacity_ ? std::numeric_limits<float>::infinity() : dist_[size_ - 1];
    }

    // Insert keeping order (after equal distances); returns false if the beam is
    // full of closer entries.
    bool insert(float d, std::uint32_t id) {
        if (size_ == capacity_ && !(d < dist_[size_ - 1])) return false;
        const std::size_t pos = rank(d);
        const std::size_t moved = (size_ < capacity_ ? size_ : size_ - 1) - pos;
        std::memmove(&dist_[pos + 1], &dist_[pos], moved * sizeof(float));
        std::memmove(&id_[pos + 1], &id_[pos], moved * sizeof(std::uint32_t));
        dist_[pos] = d;
        id_[pos] = id;
        size_ += static_cast<std::size_t>(size_ < capacity_);
        cursor_ = pos < cursor_ ? pos : cursor_;
        return true;
    }

    // If `id` is in the beam unexpanded, moves it to distance d when d is nearer
    // and returns true (also when it stays); false if it is not in the beam.
    // For searches whose estimates of a node differ by the path that reached it:
    // the beam keeps the best, once, rather than one entry per path.
    bool improve(float d, std::uint32_t id) {
        std::size_t at = cursor_;
        while (at < size_ && id_[at] != id) ++at;  // expanded ids carry a flag: no match
        if (at == size_) return false;
        if (!(d < dist_[at])) return true;
        const std::size_t pos = rank(d);  // <= at: d is below dist_[at]
        std::memmove(&dist_[pos + 1], &dist_[pos], (at - pos) * sizeof(float));
        std::memmove(&id_[pos + 1], &id_[pos], (at - pos) * sizeof(std::uint32_t));
        dist_[pos] = d;
        id_[pos] = id;
        cursor_ = pos < cursor_ ? pos : cursor_;
        return true;
    }

    bool has_next() const { return cursor_ < size_; }

    // The nearest unexpanded entry, left in place.
    std::uint32_t peek() const { return id_[cursor_]; }

    // The nearest unexpanded entry, marked expanded.
    std::uint32_t pop() {
        const std::uint32_t id = id_[cursor_];
        id_[cursor_] |= kExpanded;
        while (cursor_ < size_ && (id_[cursor_] & kExpanded)) ++cursor_;
        return id;
    }

    // Calls fn(id) for up to n unexpanded entries, nearest first (to prefetch them).
    template <class Fn>
    void for_next(std::size_t n, Fn&& fn) const {
        for (std::size_t i = cursor_; i < size_ && n > 0; ++i)
            if (!(id_[i] & kExpanded)) {
                fn(id_[i]);
                --n;
            }
    }

    std::uint32_t id(std::size_t i) const { return id_[i] & ~kExpanded; }
    float dist(std::size_t i) const { return dist_[i]; }

    // Ids below this bound leave the top bit free for the expanded flag.
    static constexpr std::uint32_t kMaxId = 0x7fffffffu;

private:
    static constexpr std::uint32_t kExpanded = 0x80000000u;

    // How many entries are at most d. Up to kLinear entries: a count the
    // compiler vectorises, with no branch and no chain of dependent loads (a
    // binary search is a chain of load-compare steps, ~40% of a fast-scan
    // search's own time at ef 48); above, a branch-free binary search.
    static constexpr std::size_t kLinear = 128;
    std::size_t rank(float d) const {
        const float* x = dist_.data();
        if (size_ <= kLinear) {
            std::uint32_t count = 0;
            for (std::size_t i = 0; i < size_; ++i) count += static_cast<std::uint32_t>(x[i] <= d);
            return count;
        }
        std::size_t lo = 0;
        for (std::size_t len = size_; len > 1;) {
            const std::size_t half = len / 2;
            lo += static_cast<std::size_t>(x[lo + half - 1] <= d) * half;
            len -= half;
        }
        return lo + static_cast<std::size_t>(x[lo] <= d);
    }

    std::vector<float> dist_;
    std::vector<std::uint32_t> id_;
    std::size_t capacity_ = 0, size_ = 0, cursor_ = 0;
};

// Beam search on one level of a graph: the hot path of queries and of building.
// Unvisited neighbours are gathered first and their data prefetched `ahead`
// nodes before the distance computations. `links(id)` gives a node's link list
// ([count word, ids...], `link_bytes` long), `dist(id)` measures a node,
// `prefetch(id)` brings in what dist will read, `visited` has try_visit(id) and
// mark(id); `todo` has room for the longest link list; `expanded`, when given,
// counts the nodes expanded (hops). The HNSW class and the built-in search kernel
// of the kernel ABI both run this body.
//
// A search is a walk of hops, each in two steps: expand (pop the nearest
// unexpanded node, gather its unvisited neighbours, request their data) and
// score (measure them, insert them). beam_search runs the steps back to back;
// run_interleaved runs several queries' walks round-robin on one thread, so one
// query's requests are in flight while the others compute: a graph search waits
// on memory at every hop, and one query alone hides only part of that.
template <class Links, class Dist, class Prefetch, class Visited>
struct BeamWalk {
    Links& links;
    Dist& dist;
    Prefetch& prefetch;
    std::size_t ahead, link_bytes;
    Visited& visited;
    BeamPool& beam;
    std::uint32_t* todo;
    std::uint64_t* expanded;
    std::size_t m = 0;
    std::uint64_t computed = 0;

    // The link list of the node likely expanded next, fetched as soon as it is
    // known, so the fetch overlaps this node's distances rather than following
    // them (found by the CRINN loop: bench/RESULTS.md, "link prefetch").
    void prefetch_links(std::uint32_t id) {
        prefetch_vector(reinterpret_cast<const char*>(links(id)), link_bytes);
    }

    void start(std::uint32_t ep, std::size_t ef) {
        beam.reset(ef);
        beam.insert(dist(ep), ep);
        visited.mark(ep);
        computed = 1;
        if (beam.has_next()) prefetch_links(beam.peek());
    }

    // Returns false when every node in the beam has been expanded.
    bool expand() {
        if (!beam.has_next()) return false;
        const std::uint32_t* l = links(beam.pop());
        if (expanded != nullptr) ++*expanded;
        if (beam.has_next()) prefetch_links(beam.peek());
        const std::size_t n = *reinterpret_cast<const std::uint16_t*>(l);
        m = 0;
        for (std::size_t j = 1; j <= n; ++j) {
            const std::uint32_t nb = l[j];
            if (visited.try_visit(nb)) todo[m++] = nb;
        }
        for (std::size_t i = 0; i < std::min(m, ahead); ++i) prefetch(todo[i]);
        return true;
    }

    void score() {
        for (std::size_t i = 0; i < m; ++i) {
            if (i + ahead < m) prefetch(todo[i + ahead]);
            const float d = dist(todo[i]);
            // A neighbour that lands ahead of the next node becomes the next.
            if (d < beam.bound() && beam.insert(d, todo[i]) && beam.peek() == todo[i])
                prefetch_links(todo[i]);
        }
        computed += m;
    }
};

template <class Links, class Dist, class Prefetch, class Visited>
std::uint64_t beam_search(Links&& links, Dist&& dist, Prefetch&& prefetch, std::size_t ahead,
                          std::size_t link_bytes, std::uint32_t ep, std::size_t ef,
                          Visited& visited, BeamPool& beam, std::uint32_t* todo,
                          std::uint64_t* expanded = nullptr) {
    BeamWalk<std::remove_reference_t<Links>, std::remove_reference_t<Dist>,
             std::remove_reference_t<Prefetch>, Visited>
        walk{links, dist, prefetch, ahead, link_bytes, visited, beam, todo, expanded};
    walk.start(ep, ef);
    while (walk.expand()) walk.score();
    return walk.computed;
}

// Runs the started walks walk(0..n) to their ends round-robin: each query
// scores the neighbours it requested one round earlier, then requests its next
// hop's. Each walk does exactly what beam_search would, so the results are the
// same. n is at most 64.
template <class WalkAt>
void run_interleaved(WalkAt&& walk, std::size_t n) {
    std::uint64_t live = 0;
    for (std::size_t g = 0; g < n; ++g)
        if (walk(g).expand()) live |= std::uint64_t{1} << g;
    while (live != 0)
        for (std::uint64_t rest = live; rest != 0; rest &= rest - 1) {
            const int g = __builtin_ctzll(rest);
            walk(g).score();
            if (!walk(g).expand()) live &= ~(std::uint64_t{1} << g);
        }
}

}  // namespace evidex
