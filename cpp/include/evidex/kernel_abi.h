/* The replaceable kernels of the HNSW index (CRINN's modules), as a plain C ABI.
 *
 * A kernel library is a shared object that exports
 *
 *     uint32_t evidex_kernel_abi_version(void);   returns EVIDEX_KERNEL_ABI_VERSION
 *
 * declares the CPU features its code needs (GCC's -m names; "" for the x86-64
 * baseline) in a section the loader reads before running any of its code:
 *
 *     EVIDEX_KERNEL_CPU_FEATURES("avx2 fma bmi2")
 *
 * and exports any of the slots below under these names:
 *
 *     evidex_search             level-0 beam search           (evx_search_fn)
 *     evidex_search_filtered    the same, returning only nodes a filter allows
 *                               (evx_search_filtered_fn; optional: filtered
 *                               searches use the built-in one without it)
 *     evidex_select_neighbors   neighbour selection on insert (evx_select_fn)
 *     evidex_refine             re-ranking of the final beam  (evx_refine_fn)
 *
 * The index passes everything a kernel may read in an evx_graph_view; kernels own
 * no state, allocate nothing the caller must free, and must be safe to call from
 * several threads at once (each call gets its own visited set and buffers).
 * The built-in kernels (cpp/src/kernels.cpp) implement this same ABI.
 *
 * A kernel may keep caches derived from the graph (quantised codes, say) if it
 * keys them on the view's `nodes` and `version` and frees them when unloaded.
 *
 * Bump EVIDEX_KERNEL_ABI_VERSION on any change to these structs or signatures
 * (4: the CPU feature declaration became required; 5: the filtered search slot).
 */
#ifndef EVIDEX_KERNEL_ABI_H
#define EVIDEX_KERNEL_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EVIDEX_KERNEL_ABI_VERSION 5u

/* A library needing features the CPU lacks is refused with their names, never
 * loaded to die on an illegal instruction. Declarations add up (a library may
 * hold several); evidex.crinn builds add one for the flags they compile with. */
#define EVIDEX_KERNEL_CPU_FEATURES(list)                                       \
    __attribute__((used, section(".evidex_cpu"))) static const char          \
        evidex_kernel_cpu_features_[] = list

/* Distance between two stored-layout vectors of `dim` floats: squared L2, or
 * 1 - dot for inner product and cosine (vectors stored normalised). */
typedef float (*evx_distance_fn)(const float* a, const float* b, size_t dim);

/* Read-only view of the graph's level 0.
 *
 * Node i lives at `nodes + i * node_bytes`. Its first 32-bit word holds the link
 * count in its low 16 bits (read it as *(const uint16_t*)node); the links follow
 * as uint32_t node ids at word 1 .. count (at most max_links). Its vector is
 * `dim` floats at byte `vector_offset`. Ids are below num_nodes. */
typedef struct evx_graph_view {
    uint32_t abi_version;
    uint32_t metric; /* 0: squared L2, 1: 1 - dot */
    const char* nodes;
    size_t node_bytes;
    size_t vector_offset;
    size_t max_links;
    size_t num_nodes;
    size_t dim;
    evx_distance_fn distance; /* the index's SIMD kernel for this metric */
    size_t prefetch_ahead;    /* the index's tuning hints; kernels may ignore them */
    size_t prefetch_bytes;
    /* Unique in the process to this graph's current contents: it changes whenever a
     * vector or a link list may have changed (and during an insert). */
    uint64_t version;
} evx_graph_view;

/* A visited set: tags[id] == epoch means visited. The caller has already bumped
 * the epoch (tags hold num_nodes entries); the kernel sets tags[id] = epoch. */
typedef struct evx_visited {
    uint16_t* tags;
    uint16_t epoch;
} evx_visited;

/* Beam search on level 0 from `entry` with beam width `ef` (>= 1). Writes up to
 * ef results, nearest first, to out_ids / out_dists (room for ef each), with
 * their exact distances; returns how many. Adds the number of distance
 * computations to *dist_count. Negative return: an error. */
typedef int64_t (*evx_search_fn)(const evx_graph_view* graph, const float* query, uint32_t entry,
                                 size_t ef, evx_visited* visited, uint32_t* out_ids,
                                 float* out_dists, uint64_t* dist_count);

/* The nodes a filtered search may return: node i is allowed when bit i % 64 of
 * bits[i / 64] is set; ids at or past num_bits are not. Deleted nodes and nodes
 * the user's filter rejects are never allowed. */
typedef struct evx_filter {
    const uint64_t* bits;
    size_t num_bits;
} evx_filter;

static inline int evx_allowed(const evx_filter* f, uint32_t id) {
    return id < f->num_bits && ((f->bits[id >> 6] >> (id & 63)) & 1u);
}

/* Beam search on level 0 that returns only allowed nodes: filtered-out nodes are
 * still walked through (they lead to their neighbours), but only allowed ones
 * enter the results. Writes up to ef allowed results, nearest first, with exact
 * distances; returns how many (fewer than ef only when fewer are reachable).
 * Otherwise as evx_search_fn. The index rejects a result that is not allowed,
 * repeated or out of range. */
typedef int64_t (*evx_search_filtered_fn)(const evx_graph_view* graph, const float* query,
                                          uint32_t entry, size_t ef, const evx_filter* filter,
                                          evx_visited* visited, uint32_t* out_ids,
                                          float* out_dists, uint64_t* dist_count);

/* Choose at most `m` out-links for `node` on HNSW level `level` from `n` candidates
 * sorted nearest first (cand_dists: their distances to the node, whose vector is
 * already stored in the view). Writes the kept ids and their exact distances to
 * the node, nearest first, to out_ids / out_dists (room for m); returns how many.
 * The links in the view are level 0's: on level 0 a kernel may add nodes reached
 * through them (the candidates' neighbours, say) to what it keeps; on higher
 * levels it must keep candidates only. Kept ids must be distinct, below
 * num_nodes and not `node`; the index rejects a kernel that breaks this. Other
 * threads may be inserting meanwhile: a link list read here may be mid-update,
 * but every id in it is a node whose vector is stored. */
typedef int64_t (*evx_select_fn)(const evx_graph_view* graph, uint32_t node, uint32_t level,
                                 const uint32_t* cand_ids, const float* cand_dists, size_t n,
                                 size_t m, uint32_t* out_ids, float* out_dists);
/* Turn the final beam (n candidates, nearest first) into the k results, nearest
 * first, written to out_ids / out_dists (room for k); returns how many. `visited`
 * still holds the search's marks, so a kernel may measure nodes it did not see
 * (counting them in *dist_count). */
typedef int64_t (*evx_refine_fn)(const evx_graph_view* graph, const float* query,
                                 const uint32_t* ids, const float* dists, size_t n, size_t k,
                                 evx_visited* visited, uint32_t* out_ids, float* out_dists,
                                 uint64_t* dist_count);

/* The exact distance of the view's metric between a query and a stored vector. */
static inline float evx_distance(const evx_graph_view* graph, const float* a, const float* b) {
    const float d = graph->distance(a, b, graph->dim);
    return graph->metric == 0 ? d : 1.0f - d;
}

#ifdef __cplusplus
}
#endif

#endif /* EVIDEX_KERNEL_ABI_H */
