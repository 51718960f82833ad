// Neighbour selection by robust pruning over the kernel ABI's graph view: the
// built-in construction kernel (alpha = 1, hnswlib's heuristic, Algorithm 4 of
// the HNSW paper) and CRINN's construction templates (Vamana's alpha rule, with
// or without refilling) run this one body. Installed with kernel_abi.h.
#pragma once

#include <cstddef>
#include <cstdint>

#include "evidex/kernel_abi.h"

namespace evidex {

// Keeps candidate i (sorted nearest first, dists[i] its distance to the base)
// unless a kept neighbour r has alpha * d(i, r) < dists[i]; all are kept when
// n <= m. `distance(a, b)` measures two stored vectors. Marks pruned[i] = 1 for
// the dropped when `pruned` is given. Returns how many were kept (at most m).
template <class Distance>
std::size_t prune_neighbors(const evx_graph_view* g, const std::uint32_t* ids, const float* dists,
                            std::size_t n, std::size_t m, float alpha, Distance&& distance,
                            std::uint32_t* out_ids, float* out_dists, std::uint8_t* pruned) {
    auto vec = [g](std::uint32_t id) {
        return reinterpret_cast<const float*>(g->nodes + static_cast<std::size_t>(id) * g->node_bytes +
                                              g->vector_offset);
    };
    std::size_t kept = 0;
    for (std::size_t i = 0; i < n && kept < m; ++i) {
        bool good = true;
        if (n > m) {
            for (std::size_t r = 0; r < kept && good; ++r)
                good = !(alpha * distance(vec(ids[i]), vec(out_ids[r])) < dists[i]);
        }
        if (good) {
            out_ids[kept] = ids[i];
            out_dists[kept] = dists[i];
            ++kept;
        } else if (pruned) {
            pruned[i] = 1;
        }
    }
    return kept;
}

}  // namespace evidex
