// Exact k-nearest-neighbour scan of a batch of queries over a list of vectors,
// with an 8-bit first pass: queries and vectors are quantised (symmetric, one
// scale per vector: 7-bit for AVX2's int16 products, 8-bit with AVX-512 VNNI),
// scored by integer panel kernels, and every vector whose distance could still
// be among the k nearest (a worst-case bound on the quantisation error,
// Cauchy-Schwarz) is scored again in float32. The answers are those of a
// float32 scan: the bound never drops a true neighbour, and every returned
// distance is exact.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "evidex/distance.h"
#include "evidex/exact_scan.h"  // kNoRow

namespace evidex {

// Whether the 8-bit pass pays for itself: enough queries per pass to share each
// quantised block of vectors, vectors wide enough for the products to dominate,
// and enough of them for the bound to settle (measured: bench/RESULTS.md,
// "Exact scan with an 8-bit first pass"; with VNNI, "8-bit scans with VNNI").
bool quantized_scan_pays(const DistanceKernels& k, std::size_t nq, std::size_t dim,
                         std::size_t n);

// For each of nq queries (`stride` floats apart; cosine queries already
// normalised), the kk nearest of rows[0..n): out_rows[i * kk + r] indexes rows
// (kNoRow where fewer than kk exist) with out_dist ascending, ties in row order.
// Distances are squared L2 when l2, else 1 - dot. Vectors too large for the
// bound's arithmetic (norm above 1e15) are always scored in float32.
// Returns false, writing nothing, when a query is too large for it: the caller
// scans in float32 instead.
bool quantized_knn(const DistanceKernels& k, bool l2, const float* queries, std::size_t stride,
                   std::size_t nq, std::size_t dim, const float* const* rows, std::size_t n,
                   std::size_t kk, std::uint32_t* out_rows, float* out_dist);

// The kk nearest of the n rows row(0..n) (dim floats each) for each of nq raw
// queries (cosine ones are normalised here), as scan_knn answers them: through
// the 8-bit pass when `bits` is 8, or 0 and it pays; in float32 otherwise (and
// when a query is too large for the pass).
template <class Row>
void exact_scan_rows(const DistanceKernels& k, bool l2, bool cosine, std::size_t dim,
                     const float* queries, std::size_t nq, std::size_t n, Row&& row,
                     std::size_t kk, std::size_t bits, std::uint32_t* out_rows,
                     float* out_dist) {
    if (bits == 8 || (bits == 0 && quantized_scan_pays(k, nq, dim, n))) {
        thread_local std::vector<float> normalized;
        thread_local std::vector<const float*> rows;
        const float* prepared = queries;
        if (cosine) {
            normalized.resize(nq * dim);
            for (std::size_t i = 0; i < nq; ++i)
                normalize_into(queries + i * dim, dim, normalized.data() + i * dim);
            prepared = normalized.data();
        }
        rows.resize(n);
        for (std::size_t j = 0; j < n; ++j) rows[j] = row(j);
        if (quantized_knn(k, l2, prepared, dim, nq, dim, rows.data(), n, kk, out_rows, out_dist))
            return;
    }
    scan_knn(k, l2, cosine, dim, queries, nq, n, row, kk, out_rows, out_dist);
}

}  // namespace evidex
