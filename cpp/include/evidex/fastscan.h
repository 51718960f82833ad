// 4-bit product quantisation for fast scan (André et al., "Cache locality is not
// enough", VLDB 2015; as in FAISS's IndexPQFastScan and ScaNN's AH): the space is
// cut into subspaces of sub_dim dimensions with 16 centroids each, a vector is
// one 4-bit code per subspace, and a query's distance to 32 codes at once is a
// sum of table look-ups done in SIMD registers (DistanceKernels::fastscan32).
//
// The graph stores, next to each node's level-0 links, its neighbours' codes in
// the fast-scan layout (a "block"), so expanding a node scores all of its
// neighbours from one contiguous read instead of one random read per neighbour.
// What is coded is each edge's residual, neighbour minus node (the node serves as
// the neighbour's centroid, as in SymphonyQG): residuals of graph edges are short,
// so 4 bits per subspace estimate them far better than whole vectors. The
// node's exact distance is known when it is expanded, and
//   1 - <q, x_nb>     = (1 - <q, x_node>) - <q, r>
//   |q - x_nb|^2      = |q - x_node|^2 - 2 <q, r> + (|x_nb|^2 - |x_node|^2)
// so one table per query (<q_s, centroid>) serves every node.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace evidex {

class PQ4 {
public:
    static constexpr std::size_t kCentroids = 16;
    static constexpr std::size_t kGroup = 32;      // codes per fast-scan group
    static constexpr std::size_t kHalfGroup = 16;  // codes per half group

    PQ4() = default;
    // sub_dim 0 picks one from dim: 2 up to 64 dimensions, 4 above.
    PQ4(std::size_t dim, std::size_t sub_dim);

    static std::size_t default_sub_dim(std::size_t dim) { return dim <= 64 ? 2 : 4; }

    std::size_t dim() const { return dim_; }
    std::size_t sub_dim() const { return sub_dim_; }
    // The kernel's count of subspaces: those holding dimensions, padded to a
    // multiple of 4 with subspaces whose tables are zero.
    std::size_t subspaces() const { return nsub_; }
    std::size_t code_bytes() const { return nsub_ / 2; }
    // One group of `codes` codes in the fast-scan layout: kGroup (32), or
    // kHalfGroup (16) for blocks of at most 16 edges, where a full group would
    // be half padding (DistanceKernels::fastscan32 and fastscan16 give the
    // layouts).
    std::size_t group_bytes(std::size_t codes = kGroup) const { return nsub_ * codes / 2; }
    bool trained() const { return !centroids_.empty(); }

    // k-means per subspace on residuals between near neighbours among n rows of
    // dim floats (a deterministic sample), seeded; subspaces train in parallel.
    void train(const float* data, std::size_t n, std::uint64_t seed, std::size_t num_threads);
    // k-means per subspace on m given residuals (at most 65,536 of them used,
    // evenly spaced), for an index that picks its own centroids.
    void fit(const float* residuals, std::size_t m, std::uint64_t seed, std::size_t num_threads);
    // Anisotropic quantisation (ScaNN's AH: Guo et al., ICML 2020): codes and
    // centroids that minimise |e|^2 + (eta - 1) <e, u>^2 for each residual, e its
    // quantisation error and u the unit direction of the vector it belongs to
    // (directions: m rows of dim floats). An error along u moves the inner
    // products with queries near that vector the most, so eta > 1 trades a little
    // of the total error for less of it there. Starts from fit(), then `rounds`
    // alternations of encode_anisotropic() and per-centroid least squares.
    void fit_anisotropic(const float* residuals, const float* directions, std::size_t m,
                         float eta, std::uint64_t seed, std::size_t num_threads,
                         std::size_t rounds = 4);
    // The code minimising that loss (coordinate descent over the subspaces from
    // the nearest centroids). A zero direction gives encode()'s code.
    void encode_anisotropic(const float* v, const float* direction, float eta,
                            std::uint8_t* code) const;
    // ScaNN's weight for a threshold T on <q, x> / |q| |x| (Theorem 3.4 of the
    // paper): eta = (dim - 1) T^2 / (1 - T^2).
    static float anisotropic_eta(std::size_t dim, float threshold);
    // Centroids as saved: subspaces() * 16 * sub_dim floats (padding zero).
    const std::vector<float>& centroids() const { return centroids_; }
    // Adopt saved centroids; throws std::invalid_argument on a wrong size or a
    // non-finite value.
    void set_centroids(std::vector<float> centroids);

    // The nearest centroid per subspace: code_bytes() bytes, subspace s in the
    // low (even s) or high (odd s) nibble of byte s / 2.
    void encode(const float* v, std::uint8_t* code) const;

    // A query's look-up tables, quantised to uint8 with one scale: for codes
    // whose entries sum to t, bias + scale * t estimates -w <q, r>, with w = 2
    // for squared L2 and 1 otherwise (see above).
    struct Tables {
        std::vector<std::uint8_t> lut;  // subspaces() * 16
        float scale = 1.f, bias = 0.f;
    };
    void tables(const float* q, bool l2, Tables& out) const;

    // Write `code` as code j (below `codes`) of a fast-scan group of `codes`
    // codes (group_bytes(codes) long), or read it back.
    void place(std::uint8_t* group, std::size_t j, const std::uint8_t* code,
               std::size_t codes = kGroup) const;
    void take(const std::uint8_t* group, std::size_t j, std::uint8_t* code,
              std::size_t codes = kGroup) const;

private:
    std::size_t dim_ = 0, sub_dim_ = 0, used_ = 0, nsub_ = 0;
    void adopt(std::vector<float> centroids);
    std::vector<float> centroids_;  // [nsub][16][sub_dim]
    std::vector<float> by_dim_;     // [dim][16]: the same, by dimension (tables())
};

}  // namespace evidex
