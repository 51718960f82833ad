// CRINN search-space template: one HNSW kernel library (evidex/kernel_abi.h)
// whose optimisations are switched by the EVX_* macros that TemplateProposer
// writes above this text. Every combination is a complete, valid kernel set.
//
// Search (level-0 beam search):
//   EVX_DISTANCE      0: the index's SIMD kernel through its pointer
//                     1: an inline loop with EVX_UNROLL accumulators, compiled
//                        for this machine (-march=native), inlined into the search
//                     2: plain scalar loop, vectorisation disabled (the reference)
//   EVX_UNROLL        accumulators of the inline distance loop (1, 2, 4, 8, 16)
//   EVX_FIXED_DIM     0, or the data's dimension compiled into the inline loop
//                     (fully unrolled; the kernel refuses other dimensions)
//   EVX_PREFETCH      0: none; 1: prefetch neighbours' vectors ahead of use
//   EVX_AHEAD         neighbours in flight (0: the index's hint)
//   EVX_LINES         cache lines prefetched per vector (0: the whole vector)
//   EVX_PREFETCH_LINKS 1: fetch the first line of the next node's link list while
//                     finishing one; 2: all of its lines; 3: all of its lines as
//                     soon as the current node is popped (and again for a
//                     neighbour that becomes the next), so the fetch overlaps this
//                     node's distances instead of following them
//   EVX_BATCH         1: all unvisited neighbours' distances first, then inserts
//   EVX_QUEUE         0: sorted array beam (linear pool); 1: two binary heaps
//   EVX_VISITED       0: the index's epoch tags; 1: a thread-local bitset
//   EVX_PATIENCE      0: off; else stop after this many expansions in a row that
//                     do not improve the best EVX_PATIENCE_K results (adaptive ef)
//   EVX_ENTRY         0: the given entry; 1: the best of the entry and its links
//   EVX_QUANT         0: float32 traversal; 1: traverse on 8-bit codes (one range
//                     per dimension, built once per graph version and cached),
//                     then re-rank the whole beam with exact float32 distances
//   EVX_QUANT_WIDEN   with EVX_QUANT, beam slots beyond ef (the approximate
//                     ranking's misses get a second chance at the re-rank)
// Construction (neighbour selection):
//   EVX_SELECT        0: hnswlib heuristic; 1: Vamana's alpha-RNG rule;
//                     2: heuristic, then fill with pruned candidates; 3: nearest m
//   EVX_ALPHA_X100    alpha of rule 1, times 100
//   EVX_EXTEND        on level 0, add the links of the EVX_EXTEND nearest
//                     candidates to the pool before selecting (0: candidates only)
// Build: EVX_NATIVE 1 compiles for this machine (-march=native), 0 portably.
// Refinement:
//   EVX_REFINE        0: the first k of the beam; 1: also measure the unvisited
//                     links of the best EVX_REFINE_TOP results, then take k
#include <evidex/beam.h>
#include <evidex/kernel_abi.h>
#include <evidex/prune.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <cmath>
#include <functional>
#include <memory>
#include <mutex>
#include <queue>
#include <utility>
#include <vector>

#ifndef EVX_DISTANCE
#define EVX_DISTANCE 0
#endif
#ifndef EVX_UNROLL
#define EVX_UNROLL 4
#endif
#ifndef EVX_FIXED_DIM
#define EVX_FIXED_DIM 0
#endif
#ifndef EVX_PREFETCH
#define EVX_PREFETCH 1
#endif
#ifndef EVX_AHEAD
#define EVX_AHEAD 0
#endif
#ifndef EVX_LINES
#define EVX_LINES 0
#endif
#ifndef EVX_PREFETCH_LINKS
#define EVX_PREFETCH_LINKS 1
#endif
#ifndef EVX_BATCH
#define EVX_BATCH 1
#endif
#ifndef EVX_QUEUE
#define EVX_QUEUE 0
#endif
#ifndef EVX_VISITED
#define EVX_VISITED 0
#endif
#ifndef EVX_PATIENCE
#define EVX_PATIENCE 0
#endif
#ifndef EVX_PATIENCE_K
#define EVX_PATIENCE_K 10
#endif
#ifndef EVX_ENTRY
#define EVX_ENTRY 0
#endif
#ifndef EVX_QUANT
#define EVX_QUANT 0
#endif
#ifndef EVX_QUANT_WIDEN
#define EVX_QUANT_WIDEN 0
#endif
#ifndef EVX_SELECT
#define EVX_SELECT 0
#endif
#ifndef EVX_ALPHA_X100
#define EVX_ALPHA_X100 120
#endif
#ifndef EVX_EXTEND
#define EVX_EXTEND 0
#endif
#ifndef EVX_REFINE
#define EVX_REFINE 0
#endif
#ifndef EVX_REFINE_TOP
#define EVX_REFINE_TOP 4
#endif

namespace {

inline const char* node_of(const evx_graph_view* g, uint32_t id) {
    return g->nodes + static_cast<size_t>(id) * g->node_bytes;
}
inline const float* vector_of(const evx_graph_view* g, uint32_t id) {
    return reinterpret_cast<const float*>(node_of(g, id) + g->vector_offset);
}
inline const uint32_t* links_of(const evx_graph_view* g, uint32_t id) {
    return reinterpret_cast<const uint32_t*>(node_of(g, id));
}
inline size_t link_count(const uint32_t* links) { return *reinterpret_cast<const uint16_t*>(links); }

#if EVX_DISTANCE == 2
__attribute__((optimize("no-tree-vectorize")))
#endif
inline float raw_distance(const evx_graph_view* g, const float* a, const float* b) {
#if EVX_DISTANCE == 0
    return g->distance(a, b, g->dim);
#else
#if EVX_FIXED_DIM
    constexpr size_t n = EVX_FIXED_DIM;
#else
    const size_t n = g->dim;
#endif
    float acc[EVX_UNROLL] = {};
    float s = 0.f;
    size_t i = 0;
    if (g->metric == 0) {
        for (; i + EVX_UNROLL <= n; i += EVX_UNROLL)
            for (int u = 0; u < EVX_UNROLL; ++u) {
                const float d = a[i + u] - b[i + u];
                acc[u] += d * d;
            }
        for (; i < n; ++i) s += (a[i] - b[i]) * (a[i] - b[i]);
    } else {
        for (; i + EVX_UNROLL <= n; i += EVX_UNROLL)
            for (int u = 0; u < EVX_UNROLL; ++u) acc[u] += a[i + u] * b[i + u];
        for (; i < n; ++i) s += a[i] * b[i];
    }
    for (int u = 0; u < EVX_UNROLL; ++u) s += acc[u];
    return s;
#endif
}

inline float distance(const evx_graph_view* g, const float* a, const float* b) {
    const float d = raw_distance(g, a, b);
    return g->metric == 0 ? d : 1.0f - d;
}

// Every cache line of a node's link list (count word and max_links ids).
inline void prefetch_links(const evx_graph_view* g, uint32_t id) {
    evidex::prefetch_vector(node_of(g, id), (g->max_links + 1) * sizeof(uint32_t));
}

inline void prefetch_node(const evx_graph_view* g, uint32_t id) {
#if EVX_PREFETCH
    const size_t bytes = EVX_LINES ? static_cast<size_t>(EVX_LINES) * 64 : g->prefetch_bytes;
    evidex::prefetch_vector(node_of(g, id) + g->vector_offset, bytes);
#else
    (void)g;
    (void)id;
#endif
}

// ------------------------------------------------------------ SQ8 codes
#if EVX_QUANT
// The graph's vectors as 8-bit codes, one range per dimension: a cache derived
// from the graph, keyed on its nodes pointer, version and size (kernel_abi.h).
struct Codes {
    const char* nodes = nullptr;
    uint64_t version = 0;
    size_t n = 0, dim = 0, stride = 0;
    std::vector<float> lo, scale;
    std::vector<uint8_t> bytes;
    const uint8_t* row(uint32_t id) const { return bytes.data() + static_cast<size_t>(id) * stride; }
};

std::shared_ptr<const Codes> build_codes(const evx_graph_view* g) {
    auto c = std::make_shared<Codes>();
    c->nodes = g->nodes;
    c->version = g->version;
    c->n = g->num_nodes;
    c->dim = g->dim;
    c->stride = (g->dim + 63) / 64 * 64;
    std::vector<float> hi(g->dim, -3.4e38f);
    c->lo.assign(g->dim, 3.4e38f);
    for (size_t i = 0; i < c->n; ++i) {
        const float* v = vector_of(g, static_cast<uint32_t>(i));
        for (size_t d = 0; d < g->dim; ++d) {
            c->lo[d] = std::min(c->lo[d], v[d]);
            hi[d] = std::max(hi[d], v[d]);
        }
    }
    c->scale.resize(g->dim);
    for (size_t d = 0; d < g->dim; ++d) c->scale[d] = hi[d] > c->lo[d] ? (hi[d] - c->lo[d]) / 255.f : 1.f;
    c->bytes.assign(c->n * c->stride, 0);
    for (size_t i = 0; i < c->n; ++i) {
        const float* v = vector_of(g, static_cast<uint32_t>(i));
        uint8_t* out = c->bytes.data() + i * c->stride;
        for (size_t d = 0; d < g->dim; ++d) {
            const float x = std::nearbyint((v[d] - c->lo[d]) / c->scale[d]);
            out[d] = static_cast<uint8_t>(std::min(255.f, std::max(0.f, x)));
        }
    }
    return c;
}

const Codes& codes_for(const evx_graph_view* g) {
    static std::mutex mutex;
    static std::shared_ptr<const Codes> shared;
    thread_local std::shared_ptr<const Codes> tls_mine;
    std::shared_ptr<const Codes>& mine = tls_mine;
    auto fresh = [g](const std::shared_ptr<const Codes>& c) {
        return c && c->nodes == g->nodes && c->version == g->version && c->n == g->num_nodes;
    };
    if (!fresh(mine)) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!fresh(shared)) shared = build_codes(g);
        mine = shared;
    }
    return *mine;
}

// The query in code units: distances on codes cost one multiply-add per dimension.
// Padded to 16 with zero weights, so the loop runs in whole 16-lane blocks with
// one accumulator per lane (vectorised without reassociating the sum).
struct CodeQuery {
    std::vector<float> a, w;
    float bias = 0.f;
    size_t padded = 0;
    void prepare(const evx_graph_view* g, const Codes& c, const float* q) {
        padded = (c.dim + 15) / 16 * 16;
        a.assign(padded, 0.f);
        w.assign(padded, 0.f);
        bias = 0.f;
        for (size_t d = 0; d < c.dim; ++d) {
            if (g->metric == 0) {
                a[d] = (q[d] - c.lo[d]) / c.scale[d];
                w[d] = c.scale[d] * c.scale[d];
            } else {
                a[d] = q[d] * c.scale[d];
                bias += q[d] * c.lo[d];
            }
        }
    }
    float distance(const evx_graph_view* g, const uint8_t* code) const {
        const float* pa = a.data();
        const float* pw = w.data();
        float acc[16] = {};
        if (g->metric == 0) {
            for (size_t d = 0; d < padded; d += 16)
                for (int l = 0; l < 16; ++l) {
                    const float t = pa[d + l] - static_cast<float>(code[d + l]);
                    acc[l] += pw[d + l] * t * t;
                }
        } else {
            for (size_t d = 0; d < padded; d += 16)
                for (int l = 0; l < 16; ++l) acc[l] += pa[d + l] * static_cast<float>(code[d + l]);
        }
        float s = 0.f;
        for (int l = 0; l < 16; ++l) s += acc[l];
        return g->metric == 0 ? s : 1.f - (bias + s);
    }
};
#endif

// --------------------------------------------------------------- visited sets
struct TagVisited {
    evx_visited* v;
    bool try_visit(uint32_t id) {
        if (v->tags[id] == v->epoch) return false;
        v->tags[id] = v->epoch;
        return true;
    }
};

struct BitsetVisited {
    uint64_t* bits;
    bool try_visit(uint32_t id) {
        uint64_t& w = bits[id >> 6];
        const uint64_t m = uint64_t{1} << (id & 63);
        if (w & m) return false;
        w |= m;
        return true;
    }
};

// ------------------------------------------------------------------ beams
// The built-in kernel's sorted-array beam (evidex/beam.h, shipped with the ABI).
struct ArrayBeam : evidex::BeamPool {
    float kth(size_t k) const { return size() >= k ? dist(k - 1) : 3.4e38f; }
    size_t write(uint32_t* ids, float* dists) const {
        for (size_t i = 0; i < size(); ++i) {
            ids[i] = id(i);
            dists[i] = dist(i);
        }
        return size();
    }
};

// hnswlib's pair of heaps: a min-heap frontier and a max-heap of the ef best.
struct HeapBeam {
    using Item = std::pair<float, uint32_t>;
    std::priority_queue<Item, std::vector<Item>, std::greater<Item>> frontier;
    std::priority_queue<Item> best;
    size_t cap = 0;
    void reset(size_t ef) {
        frontier = decltype(frontier)();  // (a fresh pair per query, as hnswlib)
        best = decltype(best)();
        cap = ef;
    }
    float bound() const { return best.size() < cap ? 3.4e38f : best.top().first; }
    bool insert(float d, uint32_t id) {
        if (best.size() == cap && !(d < best.top().first)) return false;
        frontier.push({d, id});
        best.push({d, id});
        if (best.size() > cap) best.pop();
        return true;
    }
    bool has_next() const { return !frontier.empty() && !(frontier.top().first > bound()); }
    uint32_t peek() const { return frontier.top().second; }
    uint32_t pop() {
        const uint32_t id = frontier.top().second;
        frontier.pop();
        return id;
    }
    size_t write(uint32_t* ids, float* dists) {
        const size_t n = best.size();
        for (size_t i = n; i-- > 0;) {
            ids[i] = best.top().second;
            dists[i] = best.top().first;
            best.pop();
        }
        return n;
    }
};

#if EVX_QUEUE == 0
using Beam = ArrayBeam;
#else
using Beam = HeapBeam;
#endif

template <class Visited>
int64_t beam_search(const evx_graph_view* g, const float* q, uint32_t entry, size_t ef,
                    Visited& visited, uint32_t* out_ids, float* out_dists, uint64_t* dist_count) {
    // Thread-locals of a dlopen'ed library cost a __tls_get_addr call per access:
    // resolve them once.
    thread_local Beam tls_beam;
    thread_local std::vector<uint32_t> tls_todo;
    thread_local std::vector<float> tls_todo_dist;
    tls_todo.resize(g->max_links);
    tls_todo_dist.resize(g->max_links);
    Beam& beam = tls_beam;
    uint32_t* const todo = tls_todo.data();
    float* const todo_dist = tls_todo_dist.data();
    const size_t ahead = EVX_AHEAD ? static_cast<size_t>(EVX_AHEAD) : g->prefetch_ahead;
#if EVX_QUANT
    const Codes& codes = codes_for(g);
    thread_local CodeQuery tls_cq;
    CodeQuery& cq = tls_cq;
    cq.prepare(g, codes, q);
    auto measure = [&](uint32_t id) { return cq.distance(g, codes.row(id)); };
    auto prefetch = [&](uint32_t id) { EVIDEX_PREFETCH(codes.row(id)); };
#else
    auto measure = [&](uint32_t id) { return distance(g, q, vector_of(g, id)); };
    auto prefetch = [&](uint32_t id) { prefetch_node(g, id); };
#endif
    // Into the beam if it beats the bound; a node that becomes the next to expand
    // has its link list fetched at once (EVX_PREFETCH_LINKS 3).
    auto offer = [&](float d, uint32_t id) {
#if EVX_PREFETCH_LINKS == 3 && EVX_QUEUE == 0
        if (d < beam.bound() && beam.insert(d, id) && beam.peek() == id) prefetch_links(g, id);
#else
        if (d < beam.bound()) beam.insert(d, id);
#endif
    };
    uint64_t computed = 1;
#if EVX_QUANT
    beam.reset(ef + EVX_QUANT_WIDEN);
#else
    beam.reset(ef);
#endif
    visited.try_visit(entry);
    float entry_dist = measure(entry);
#if EVX_ENTRY == 1
    // Start from the best of the entry and its links (a one-step greedy move).
    {
        const uint32_t* l = links_of(g, entry);
        const size_t n = link_count(l);
        for (size_t j = 1; j <= n; ++j) {
            if (!visited.try_visit(l[j])) continue;
            beam.insert(measure(l[j]), l[j]);
            ++computed;
        }
    }
#endif
    beam.insert(entry_dist, entry);
#if EVX_PATIENCE && EVX_QUEUE == 0
    float kth = 3.4e38f;
    int stale = 0;
#endif
    while (beam.has_next()) {
        const uint32_t* l = links_of(g, beam.pop());
#if EVX_PREFETCH_LINKS == 3
        // The likely next node, fetched while this one's distances are computed
        // (a neighbour that lands ahead of it is fetched when it does).
        if (beam.has_next()) prefetch_links(g, beam.peek());
#endif
        const size_t n = link_count(l);
        size_t m = 0;
        for (size_t j = 1; j <= n; ++j)
            if (visited.try_visit(l[j])) todo[m++] = l[j];
        for (size_t i = 0; i < std::min(m, ahead); ++i) prefetch(todo[i]);
#if EVX_BATCH
        for (size_t i = 0; i < m; ++i) {
            if (i + ahead < m) prefetch(todo[i + ahead]);
            todo_dist[i] = measure(todo[i]);
        }
        for (size_t i = 0; i < m; ++i) offer(todo_dist[i], todo[i]);
#else
        for (size_t i = 0; i < m; ++i) {
            if (i + ahead < m) prefetch(todo[i + ahead]);
            offer(measure(todo[i]), todo[i]);
        }
#endif
        computed += m;
#if EVX_PREFETCH_LINKS == 1
        if (beam.has_next()) EVIDEX_PREFETCH(node_of(g, beam.peek()));
#elif EVX_PREFETCH_LINKS == 2
        if (beam.has_next()) prefetch_links(g, beam.peek());
#endif
#if EVX_PATIENCE && EVX_QUEUE == 0
        // Adaptive ef: the beam's k-th best has not moved for a while.
        const float now = beam.kth(EVX_PATIENCE_K);
        if (now < kth) {
            kth = now;
            stale = 0;
        } else if (++stale >= EVX_PATIENCE) {
            break;
        }
#endif
    }
    *dist_count += computed;
#if EVX_QUANT
    // The ABI returns exact distances: re-rank the whole (widened) beam in
    // float32 and keep the ef best.
    thread_local std::vector<uint32_t> tls_ids;
    thread_local std::vector<float> tls_dists;
    tls_ids.resize(ef + EVX_QUANT_WIDEN);
    tls_dists.resize(ef + EVX_QUANT_WIDEN);
    const size_t measured = beam.write(tls_ids.data(), tls_dists.data());
    thread_local std::vector<std::pair<float, uint32_t>> tls_exact;
    std::vector<std::pair<float, uint32_t>>& exact = tls_exact;
    exact.resize(measured);
    for (size_t i = 0; i < measured; ++i)
        exact[i] = {distance(g, q, vector_of(g, tls_ids[i])), tls_ids[i]};
    std::sort(exact.begin(), exact.end());
    const size_t found = std::min(measured, ef);
    for (size_t i = 0; i < found; ++i) {
        out_dists[i] = exact[i].first;
        out_ids[i] = exact[i].second;
    }
    *dist_count += measured;
#else
    const size_t found = beam.write(out_ids, out_dists);
#endif
    return static_cast<int64_t>(found);
}

// hnswlib's filtered search: every node reached may lead on (the frontier), only
// allowed ones become results; the bound is the ef-th allowed result. Exact float32
// distances (the filtered slot returns them; codes would need a re-rank anyway).
template <class Visited>
int64_t filtered_beam_search(const evx_graph_view* g, const float* q, uint32_t entry, size_t ef,
                             const evx_filter* f, Visited& visited, uint32_t* out_ids,
                             float* out_dists, uint64_t* dist_count) {
    using Item = std::pair<float, uint32_t>;
    thread_local std::vector<Item> tls_frontier, tls_best;
    thread_local std::vector<uint32_t> tls_todo;
    std::vector<Item>& frontier = tls_frontier;  // min-heap (std::greater)
    std::vector<Item>& best = tls_best;          // max-heap of allowed results
    frontier.clear();
    best.clear();
    tls_todo.resize(g->max_links);
    uint32_t* const todo = tls_todo.data();
    const size_t ahead = EVX_AHEAD ? static_cast<size_t>(EVX_AHEAD) : g->prefetch_ahead;
    const auto nearer = std::greater<Item>();
    auto bound = [&] { return best.size() < ef ? 3.4e38f : best.front().first; };
    auto take = [&](float d, uint32_t id) {
        frontier.push_back({d, id});
        std::push_heap(frontier.begin(), frontier.end(), nearer);
        if (!evx_allowed(f, id)) return;
        best.push_back({d, id});
        std::push_heap(best.begin(), best.end());
        if (best.size() > ef) {
            std::pop_heap(best.begin(), best.end());
            best.pop_back();
        }
    };
    visited.try_visit(entry);
    take(distance(g, q, vector_of(g, entry)), entry);
    uint64_t computed = 1;
    while (!frontier.empty()) {
        std::pop_heap(frontier.begin(), frontier.end(), nearer);
        const Item c = frontier.back();
        frontier.pop_back();
        if (c.first > bound()) break;
        const uint32_t* l = links_of(g, c.second);
        const size_t n = link_count(l);
        size_t m = 0;
        for (size_t j = 1; j <= n; ++j)
            if (visited.try_visit(l[j])) todo[m++] = l[j];
        for (size_t i = 0; i < std::min(m, ahead); ++i) prefetch_node(g, todo[i]);
        for (size_t i = 0; i < m; ++i) {
            if (i + ahead < m) prefetch_node(g, todo[i + ahead]);
            const float d = distance(g, q, vector_of(g, todo[i]));
            if (d < bound()) take(d, todo[i]);
        }
        computed += m;
    }
    *dist_count += computed;
    std::sort(best.begin(), best.end());
    for (size_t i = 0; i < best.size(); ++i) {
        out_ids[i] = best[i].second;
        out_dists[i] = best[i].first;
    }
    return static_cast<int64_t>(best.size());
}

// Runs search(visited set) with the configured set: the index's epoch tags, or a
// thread-local bitset (EVX_VISITED 1); -1 for data of another dimension than a
// build fixed to one.
template <class Search>
int64_t with_visited(const evx_graph_view* g, evx_visited* visited, Search&& search) {
#if EVX_FIXED_DIM
    if (g->dim != EVX_FIXED_DIM) return -1;  // built for another dimension
#endif
#if EVX_VISITED == 0
    TagVisited v{visited};
    return search(v);
#else
    (void)visited;
    thread_local std::vector<uint64_t> tls_bits;
    std::vector<uint64_t>& bits = tls_bits;
    bits.assign((g->num_nodes + 63) / 64, 0);
    BitsetVisited v{bits.data()};
    return search(v);
#endif
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) uint32_t evidex_kernel_abi_version(void) {
    return EVIDEX_KERNEL_ABI_VERSION;
}

#ifdef EVX_SLOT_SEARCH
__attribute__((visibility("default"))) int64_t evidex_search(
    const evx_graph_view* g, const float* q, uint32_t entry, size_t ef, evx_visited* visited,
    uint32_t* out_ids, float* out_dists, uint64_t* dist_count) {
    return with_visited(g, visited, [&](auto& v) {
        return beam_search(g, q, entry, ef, v, out_ids, out_dists, dist_count);
    });
}

__attribute__((visibility("default"))) int64_t evidex_search_filtered(
    const evx_graph_view* g, const float* q, uint32_t entry, size_t ef, const evx_filter* f,
    evx_visited* visited, uint32_t* out_ids, float* out_dists, uint64_t* dist_count) {
    return with_visited(g, visited, [&](auto& v) {
        return filtered_beam_search(g, q, entry, ef, f, v, out_ids, out_dists, dist_count);
    });
}
#endif

#ifdef EVX_SLOT_CONSTRUCTION
__attribute__((visibility("default"))) int64_t evidex_select_neighbors(
    const evx_graph_view* g, uint32_t node, uint32_t level, const uint32_t* ids,
    const float* dists, size_t n, size_t m, uint32_t* out_ids, float* out_dists) {
    size_t kept = 0;
#if EVX_EXTEND
    // A wider pool than the insertion beam found: the level-0 neighbours of the
    // nearest candidates, measured against the node (what a larger
    // ef_construction would mostly have reached).
    thread_local std::vector<std::pair<float, uint32_t>> pool;
    thread_local std::vector<uint32_t> known, wide_ids;
    thread_local std::vector<float> wide_dists;
    if (level == 0 && node < g->num_nodes) {
        known.assign(ids, ids + n);
        known.push_back(node);
        std::sort(known.begin(), known.end());
        pool.clear();
        for (size_t i = 0; i < n; ++i) pool.push_back({dists[i], ids[i]});
        const float* base = vector_of(g, node);
        const size_t from = std::min<size_t>(EVX_EXTEND, n);
        for (size_t i = 0; i < from; ++i) {
            const uint32_t* l = links_of(g, ids[i]);
            const size_t c = std::min(link_count(l), g->max_links);
            for (size_t j = 1; j <= c; ++j) {
                const uint32_t id = l[j];
                if (id >= g->num_nodes) continue;  // a list mid-update
                auto at = std::lower_bound(known.begin(), known.end(), id);
                if (at != known.end() && *at == id) continue;
                known.insert(at, id);
                pool.push_back({distance(g, base, vector_of(g, id)), id});
            }
        }
        std::sort(pool.begin(), pool.end());
        wide_ids.resize(pool.size());
        wide_dists.resize(pool.size());
        for (size_t i = 0; i < pool.size(); ++i) {
            wide_dists[i] = pool[i].first;
            wide_ids[i] = pool[i].second;
        }
        ids = wide_ids.data();
        dists = wide_dists.data();
        n = pool.size();
    }
#else
    (void)node;
    (void)level;
#endif
#if EVX_SELECT == 3
    for (; kept < n && kept < m; ++kept) {
        out_ids[kept] = ids[kept];
        out_dists[kept] = dists[kept];
    }
#else
    const float alpha = EVX_SELECT == 1 ? EVX_ALPHA_X100 / 100.0f : 1.0f;
    thread_local std::vector<uint8_t> pruned;
    pruned.assign(n, 0);
    kept = evidex::prune_neighbors(
        g, ids, dists, n, m, alpha, [g](const float* a, const float* b) { return distance(g, a, b); },
        out_ids, out_dists, pruned.data());
#if EVX_SELECT == 2
    for (size_t i = 0; i < n && kept < m; ++i) {
        if (!pruned[i]) continue;
        // Keep order: insert by distance.
        size_t pos = kept;
        while (pos > 0 && out_dists[pos - 1] > dists[i]) {
            out_ids[pos] = out_ids[pos - 1];
            out_dists[pos] = out_dists[pos - 1];
            --pos;
        }
        out_ids[pos] = ids[i];
        out_dists[pos] = dists[i];
        ++kept;
    }
#endif
#endif
    return static_cast<int64_t>(kept);
}
#endif

#ifdef EVX_SLOT_REFINEMENT
__attribute__((visibility("default"))) int64_t evidex_refine(
    const evx_graph_view* g, const float* q, const uint32_t* ids, const float* dists, size_t n,
    size_t k, evx_visited* visited, uint32_t* out_ids, float* out_dists, uint64_t* dist_count) {
    thread_local std::vector<std::pair<float, uint32_t>> pool;
    pool.clear();
    for (size_t i = 0; i < n; ++i) pool.push_back({dists[i], ids[i]});
#if EVX_REFINE == 1
    // Measure the unvisited links of the best few results: a cheap last hop. The
    // results themselves are marked first: the search may have kept its own set.
    TagVisited v{visited};
    for (size_t i = 0; i < n; ++i) v.try_visit(ids[i]);
    const size_t top = std::min<size_t>(EVX_REFINE_TOP, n);
    for (size_t i = 0; i < top; ++i) {
        const uint32_t* l = links_of(g, ids[i]);
        const size_t c = link_count(l);
        for (size_t j = 1; j <= c; ++j) {
            if (!v.try_visit(l[j])) continue;
            pool.push_back({distance(g, q, vector_of(g, l[j])), l[j]});
            ++*dist_count;
        }
    }
    std::sort(pool.begin(), pool.end());
#else
    (void)g;
    (void)q;
    (void)visited;
    (void)dist_count;
#endif
    const size_t out = std::min(k, pool.size());
    for (size_t i = 0; i < out; ++i) {
        out_ids[i] = pool[i].second;
        out_dists[i] = pool[i].first;
    }
    return static_cast<int64_t>(out);
}
#endif

}  // extern "C"
