// RaBitQ edge codes for the fast-scan graph (Gao & Long, SIGMOD 2024; the graph
// layout of SymphonyQG, SIGMOD 2025). An edge x -> y is coded by the signs of
// its residual r = y - x after a random rotation P (1 bit per dimension, 4 bits
// per fast-scan subspace) and two floats. With x' = Px, q' = Pq, s = sign(Pr):
//   <q - x, r>  ~  |r|^2 / sum|Pr|  *  (<s, q'> - <s, x'>)
// which is RaBitQ's unbiased estimator with the node x as the centroid: its error
// scales with |q - x| |r| / sqrt(dim), where a k-means code of r errs by <q, e>,
// its reconstruction error seen from the whole query (measured on MiniLM edges:
// ~0.03 against ~0.05-0.08 for 4-bit k-means codes; bench/RESULTS.md).
// <s, q'> = 2 <b, q'> - sum q' for the bits b, and <b, q'> is a fast-scan table
// sum over 4-dimension subspaces whose 16 "centroids" are the 16 bit patterns, so
// the PQ4 tables, layout and kernels serve it unchanged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "evidex/fastscan.h"

namespace evidex {

// A random orthogonal map of R^dim into R^padded (padded: dim rounded up to a
// multiple of 16, the zero-padded coordinates mixed in): rounds of random sign
// flips, each followed by a Walsh-Hadamard transform of the leading or trailing
// power-of-two window (which overlap and together cover every coordinate).
// O(padded log padded) per vector; fixed by (dim, seed), so files keep the seed only.
class EdgeRotation {
public:
    EdgeRotation() = default;
    EdgeRotation(std::size_t dim, std::uint64_t seed);

    std::size_t dim() const { return dim_; }
    std::size_t padded() const { return padded_; }
    // out: padded() floats.
    void apply(const float* x, float* out) const;

private:
    static constexpr std::size_t kRounds = 4;
    std::size_t dim_ = 0, padded_ = 0, window_ = 0;
    std::vector<float> signs_;  // kRounds * padded_, each +-1
};

// The edge code's factors: the estimate of the distance to y is
//   dist(q, x) + offset + scale * (sum q' - 2 <b, q'>)
// for L2 (squared) and for 1 - <q, y> (cosine, inner product).
struct EdgeFactors {
    float scale, offset;
};

class EdgeCoder {
public:
    // The widest vectors coded (4,096 subspaces, as PQ4 allows).
    static constexpr std::size_t kMaxDim = 16384;
    static std::size_t padded(std::size_t dim) { return (dim + 15) / 16 * 16; }
    static std::size_t subspaces(std::size_t dim) { return padded(dim) / 4; }

    EdgeCoder() = default;
    // Throws std::invalid_argument for dim 0 or above kMaxDim.
    EdgeCoder(std::size_t dim, std::uint64_t seed, bool l2);

    // The table layout: padded / 4 subspaces of 4 dimensions, bit-pattern centroids.
    const PQ4& layout() const { return layout_; }

    // The node's side of its edges' codes: x rotated (padded() floats), computed
    // once for all of a node's edges.
    std::size_t padded() const { return rotation_.padded(); }
    void rotate(const float* x, float* out) const { rotation_.apply(x, out); }

    // Code (layout().code_bytes()) and factors of the edge x -> y (dim floats),
    // given x rotated (rotate(x)).
    EdgeFactors encode(const float* x_rotated, const float* y, std::uint8_t* code) const;

    // A query's tables: -<b, q'> ~ bias + scale * t for table sums t; `sum` = sum q'.
    struct Query {
        PQ4::Tables tables;
        float sum = 0.f;
    };
    void prepare(const float* q, Query& out) const;

private:
    EdgeRotation rotation_;
    PQ4 layout_;
    bool l2_ = true;
};

}  // namespace evidex
