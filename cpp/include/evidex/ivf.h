// A partitioned index scored by fast scan (ScaNN's recipe; FAISS's
// IndexIVFPQFastScan): every vector belongs to the nearest of `nlist` k-means
// centroids, and within its list it is stored as its residual to the centroid,
// 4-bit product-quantised in the fast-scan layout (fastscan.h). A query scores
// the lists of its `nprobe` nearest centroids by table look-ups (one table per
// query: the residual identities of fastscan.h, with the centroid as the node),
// keeps the `reorder` best estimates and re-ranks them with exact float32
// distances, so returned distances are exact.
//
// Lists are scanned front to back, so a query costs bandwidth, not a chain of
// memory latencies as a graph walk does: this is what wins at high recall on
// small-dimensional data.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "evidex/fastscan.h"
#include "evidex/hnsw.h"
#include "evidex/memory.h"

namespace evidex {

class IVFFastScan {
public:
    static constexpr std::size_t kMaxSearchDefault = (std::size_t{1} << 31) - 1;

    // nlist 0: chosen at training, about 2 sqrt(n) (ScaNN's advice) for n vectors.
    // anisotropic_threshold: ScaNN's T for the codes' anisotropic loss
    // (PQ4::fit_anisotropic) in inner-product spaces, in [0, 1); 0 (and L2 space,
    // or a weight that would not exceed 1) codes residuals by nearest centroid.
    IVFFastScan(std::size_t dim, Space space, std::size_t nlist, std::size_t pq_dims,
                std::uint64_t seed, double anisotropic_threshold = 0.2);

    // Learn the centroids (k-means on a sample) and the residuals' quantiser.
    // Throws std::runtime_error once vectors were added.
    void train(const float* data, std::size_t n, std::size_t num_threads);
    bool trained() const { return trained_; }

    // Append n vectors under new, distinct labels (checked before anything
    // changes: std::invalid_argument naming a repeated or existing label). An
    // untrained index trains on this batch first.
    void add(const float* data, std::size_t n, const label_t* labels, std::size_t num_threads);
    // The same under ids next_id(), next_id() + 1, ... (chosen under the lock, so
    // concurrent adds never collide); returns the first.
    label_t add_auto(const float* data, std::size_t n, std::size_t num_threads);
    // One past the largest id ever added (saved with the index).
    label_t next_id() const {
        std::shared_lock<std::shared_mutex> lock(mutex_);
        return next_label_;
    }

    // k nearest of each query among the lists of its nprobe nearest centroids;
    // rows padded with kNoLabel / +inf when fewer than k are found. With an
    // allow-list (allowed != nullptr; labels not in the index are ignored) only
    // those vectors are answers, and when they are few next to what the lists
    // hold (their vectors no more than about twice the bytes of the codes nprobe
    // lists hold on average) they are scored exactly instead, so a restrictive
    // filter gets its exact answer, not a starved scan (FAISS's IVF with an
    // IDSelector starves there).
    void search(const float* queries, std::size_t nq, std::size_t k, std::size_t nprobe,
                std::size_t reorder, std::size_t num_threads, label_t* out_labels,
                float* out_distances, const label_t* allowed = nullptr,
                std::size_t n_allowed = 0) const;

    // Delete: all or nothing (LabelNotFound for an id not in the index,
    // std::invalid_argument for one listed twice). A deleted vector stays in its
    // list, skipped, and its id may be added again (an update); the first add
    // after deleted vectors come to equal the live ones drops them all (it
    // rebuilds the lists anyway).
    void remove(const label_t* labels, std::size_t n);
    // Live ids in insertion order; stored vectors (unit length for cosine).
    std::vector<label_t> live_labels() const;
    void get_vectors(const label_t* labels, std::size_t n, float* out) const;

    std::size_t size() const;  // live vectors
    std::size_t deleted_count() const;
    std::size_t dim() const { return dim_; }
    Space space() const { return space_; }
    std::size_t nlist() const;
    std::size_t pq_dims() const { return pq_.sub_dim(); }
    std::size_t memory_bytes() const;
    double anisotropic_threshold() const { return threshold_; }
    // The search defaults of IVFIndex (saved with the index; checked there).
    std::size_t default_nprobe() const { return nprobe_.load(); }
    std::size_t default_reorder() const { return reorder_.load(); }
    void set_default_nprobe(std::size_t nprobe);
    void set_default_reorder(std::size_t reorder);

    // The file image (serialize.cpp, "IVF file format"): versioned, checksummed.
    // save() writes it through a temporary file that is read back and checked
    // before it replaces `path`; deserialize() and load() bound and check every
    // field before use (CorruptIndexError), as for HNSW files.
    std::string serialize() const;
    void save(const std::string& path) const;
    static std::unique_ptr<IVFFastScan> deserialize(const char* data, std::size_t size);
    static std::unique_ptr<IVFFastScan> load(const std::string& path);

private:
    void train_locked(const float* data, std::size_t n, std::size_t num_threads);
    void add_locked(const float* data, std::size_t n, const label_t* labels,
                    std::size_t num_threads);
    // The centroids' norms and panels, from centroids_ (training, loading).
    void index_centroids();
    // Files rows [first, first + n) (vectors_ already holding them) into their
    // lists: list_of[i] and the code at codes + i * code_bytes for row first + i.
    void append_rows(std::size_t first, std::size_t n, const std::uint32_t* list_of,
                     const std::uint8_t* codes);
    // The list of each of n vectors (as stored): its nearest centroid.
    void nearest_centroids(const float* x, std::size_t n, std::uint32_t* out,
                           std::size_t num_threads) const;
    // keep: per row, nonzero where it may be an answer (nullptr: every row).
    // One query (as given): its centroid products, then search_lists.
    void search_one(const float* q, std::size_t k, std::size_t nprobe, std::size_t reorder,
                    const std::uint8_t* keep, label_t* out_labels, float* out_distances) const;
    // The rest of a search, for a prepared query q and its products with every
    // centroid (dots: npanels_ * kPanelWidth floats, overwritten).
    void search_lists(const float* q, float* dots, std::size_t k, std::size_t nprobe,
                      std::size_t reorder, const std::uint8_t* keep, label_t* out_labels,
                      float* out_distances) const;
    // Each row's list and code, read back from the arena (by row).
    void rows_in_lists(std::vector<std::uint32_t>& lists, std::vector<std::uint8_t>& codes) const;
    // Drop deleted rows (the next add does, once they are as many as the live).
    void compact_locked();
    // The query as scored: normalised into `buffer` for cosine.
    const float* prepare_query(const float* query, std::vector<float>& buffer) const;
    // Whether nq queries are answered sooner by an exact scan of `allowed`
    // vectors than by their lists (nprobe lists, `reorder` re-ranked).
    bool exact_path_pays(std::size_t nq, std::size_t allowed, std::size_t nprobe,
                         std::size_t reorder) const;
    // The exact k nearest among `rows` for each of nq queries (raw), into
    // out[nq, k], padded; batches share each pass over the rows (exact_scan.h).
    void scan_rows(const float* queries, std::size_t nq, std::size_t k,
                   const std::vector<std::uint32_t>& rows, std::size_t num_threads,
                   label_t* out_labels, float* out_distances) const;

    std::size_t dim_;
    Space space_;
    std::size_t nlist_;
    std::uint64_t seed_;
    double threshold_;  // anisotropic_threshold, as given (saved with the index)
    float eta_;  // the anisotropic weight (PQ4::fit_anisotropic); 1: plain codes
    PQ4 pq_;     // after eta_: its default subspaces depend on it
    bool trained_ = false;
    std::vector<float> centroids_;       // nlist x dim
    std::vector<float> centroid_norms_;  // |c|^2
    // The centroids in panels of kPanelWidth, dimension-major (distance.h): a query
    // scores them with no horizontal sums, a batch as a matrix product.
    std::vector<float> panels_;
    std::size_t npanels_ = 0;
    // Every list in one arena, list after list (CSR), so a query's lists are a
    // few long reads rather than scattered allocations. The arena is a run of
    // groups of 32 slots, each [32 codes (fast-scan layout) | 32 rows (u32) |
    // for squared L2 32 floats |x|^2 - |centroid|^2], so what a scan needs next
    // is always the next bytes. List j holds count_[j] slots from group
    // start_[j] on. An add rebuilds the arena (append-only, batch-oriented).
    std::size_t group_stride() const {
        return pq_.group_bytes() + PQ4::kGroup * (space_ == Space::L2 ? 8 : 4);
    }
    std::vector<std::uint8_t, RandomAccessAllocator<std::uint8_t>> arena_;
    std::vector<std::size_t> start_, count_;
    std::vector<float, RandomAccessAllocator<float>> vectors_;  // as stored, by row
    std::vector<label_t> labels_;  // by row, deleted rows included
    std::vector<std::uint8_t> live_;  // by row: 1 live, 0 deleted
    std::size_t deleted_ = 0;
    label_t next_label_ = 0;
    std::unordered_map<label_t, std::uint32_t> rows_of_;  // live ids only
    std::atomic<std::size_t> nprobe_{32}, reorder_{100};
    mutable std::shared_mutex mutex_;  // adds exclusive, searches shared
};

}  // namespace evidex
