// The HNSW graph (Malkov & Yashunin), in one class in the spirit of hnswlib's
// hnswalg.h: level-0 links, vector and label contiguous per node; upper levels
// apart; visited sets from a pool; parallel insert with per-node locks.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "evidex/attributes.h"
#include "evidex/distance.h"
#include "evidex/fastscan.h"
#include "evidex/rabitq.h"
#include "evidex/kernel_abi.h"
#include "evidex/kernels.h"
#include "evidex/parallel.h"
#include "evidex/rwlock.h"
#include "evidex/visited.h"

namespace evidex {

class BeamPool;

enum class Space : std::uint32_t { L2 = 0, IP = 1, Cosine = 2 };

// How search traverses the graph: float32 distances throughout; distances on
// 8-bit scalar-quantised codes (one range per dimension) with the final beam
// re-ranked in float32; or PQ4: each node stores its neighbours' 4-bit product
// codes, scored by fast scan, and every expanded node is measured in float32.
// Returned distances are always exact.
enum class Quantization : std::uint32_t { None = 0, SQ8 = 1, PQ4 = 2, RaBitQ = 3 };
Space parse_space(const std::string& name);  // throws std::invalid_argument
std::string space_name(Space space);

using label_t = std::uint64_t;
using node_id = std::uint32_t;  // internal slot number

// Labels returned where fewer than k results exist (a restrictive filter).
constexpr label_t kNoLabel = ~label_t{0};
// Labels are below 2^63, so that they read as non-negative int64 everywhere.
constexpr label_t kLabelLimit = label_t{1} << 63;
// The largest beam width (ef, ef_construction) accepted; searches clamp it to the
// number of elements anyway.
constexpr std::size_t kMaxEf = 0x7fffffff;

// Decides whether a node may appear in the results. Implementations must be
// safe to call from several threads unless the caller searches with one.
class SearchFilter {
public:
    virtual ~SearchFilter() = default;
    virtual bool allowed(node_id id, label_t label) const = 0;
};

// Allow-set over internal ids (see SlotSet). Slots past its end (added after it
// was built) are not allowed.
class SlotFilter final : public SearchFilter {
public:
    explicit SlotFilter(const SlotSet& set) : set_(set) {}
    bool allowed(node_id id, label_t) const override { return set_.test(id); }

private:
    const SlotSet& set_;
};

// What a filtered search may return: the elements whose labels are listed,
// and/or those whose attributes pass a program (both: the intersection).
struct AllowSpec {
    const label_t* labels = nullptr;  // with n_labels, when listed
    std::size_t n_labels = 0;
    bool has_labels = false;
    const FilterProgram* program = nullptr;
};

// How a search with an allow-set runs. Auto lets the planner choose per batch
// from its calibrated cost model; the others force one method.
enum class FilterStrategy : std::uint32_t {
    Auto = 0,
    Scan = 1,      // exact distances to every allowed element
    Filtered = 2,  // beam search through every node, returning allowed ones (hnswlib)
    TwoHop = 3,    // beam over allowed nodes, reached through up to one filtered-out
                   // node (ACORN-1); falls back to Filtered when it finds too few
    CodedScan = 4, // the allowed elements ranked by their 4-bit scan codes
                   // (build_scan_codes), the best max(ef, k) re-ranked exactly
};
constexpr std::size_t kStrategies = 5;  // Auto and the methods, by value
const char* strategy_name(FilterStrategy s);

// One learnt figure of the planner's cost model: a running mean over batches.
struct CostFigure {
    double value = 0;
    std::uint64_t batches = 0;
};

// The last filtered search's plan (for stats and benchmarks).
struct PlanInfo {
    FilterStrategy strategy = FilterStrategy::Auto;
    std::size_t allowed = 0;  // live elements the filter allows
    double predicted_ns[kStrategies] = {};  // per query, by strategy (index 1..4)
};

// Range search results in FAISS's layout: query i's results are
// labels[lims[i]:lims[i+1]], nearest first.
struct RangeResult {
    std::vector<std::int64_t> lims;
    std::vector<label_t> labels;
    std::vector<float> distances;
};

struct IndexStats {
    std::size_t count = 0;     // live elements
    std::size_t deleted = 0;   // marked deleted
    std::size_t capacity = 0;  // max_elements
    int max_level = -1;
    std::vector<std::size_t> level_counts;  // nodes whose top level is i
    std::size_t memory_bytes = 0;
    std::uint64_t last_search_distance_computations = 0;
    // Nodes expanded by the last unfiltered k-NN search (built-in kernels; a
    // loaded kernel library's search does not count them).
    std::uint64_t last_search_hops = 0;
    std::uint64_t last_search_queries = 0;
    // Layout, for limit analyses: bytes of a level-0 node (links, vector,
    // label), of an SQ8 code row, of a PQ4 block, of a scan code (0 when absent).
    std::size_t node_bytes = 0, code_bytes = 0, pq4_block_bytes = 0, scan_code_bytes = 0;
    std::size_t edge_group_codes = 0;  // codes per group in a fast-scan block (16 or 32)
};

// Thread safety. Every public method may be called from any thread, concurrently
// with every other. Locks, always taken in this order (outer first), never the
// other way round:
//   1. write_mutex_     shared by every change of contents (add, delete, undelete,
//                       train, resize); exclusive for a snapshot (save, serialize),
//                       which therefore never sees half a change. Searches skip it.
//   2. storage_mutex_   shared by everything that reads or writes per-slot storage;
//                       exclusive where storage moves (resize, growth, train).
//   3. label_op_locks_  one stripe, serialising work on one label
//   4. label_mutex_     label map, deleted slots, deletion flags, slot allocation
//   5. global_mutex_    entry point and top level
//   6. link_locks_[i]   one node's link lists, one node at a time
//   leaves: rng_mutex_, kernel_sets_mutex_, the visited pool's mutex, the
//   attribute store's lock (and its cache mutex below it), planner_mutex_.
// A filter callback runs while its search holds storage_mutex_ shared: calling
// any locking method of the same index from it raises ReentrantCall instead of
// deadlocking.
class HNSW {
public:
    HNSW(std::size_t dim, Space space, std::size_t M, std::size_t ef_construction,
         std::size_t max_elements, std::uint64_t seed,
         Quantization quantization = Quantization::None, std::size_t pq_dims = 0);
    ~HNSW();
    HNSW(const HNSW&) = delete;
    HNSW& operator=(const HNSW&) = delete;

    // Insert or update `n` vectors (row-major, dim floats each). An existing label
    // is updated in place. With replace_deleted, new labels reuse deleted slots.
    // forbid_update_deleted mirrors hnswlib's rule when replacement is enabled.
    // With grow, capacity doubles as needed (and an untrained SQ8 index trains on
    // this batch); without, a full index throws hnswlib's "exceeds the specified
    // limit". Labels must be below kLabelLimit (checked before anything changes).
    // `attributes` (optional) are the batch's attribute values, checked before
    // anything changes and recorded with the vectors.
    void add(const float* data, std::size_t n, const label_t* labels, std::size_t num_threads,
             bool replace_deleted, bool forbid_update_deleted = false, bool grow = false,
             const std::vector<AttrColumn>* attributes = nullptr);
    // add() with labels next_label(), next_label() + 1, ...: reserved atomically, so
    // concurrent calls never hand out one label twice. Returns the first.
    label_t add_auto(const float* data, std::size_t n, std::size_t num_threads,
                     bool replace_deleted, bool grow,
                     const std::vector<AttrColumn>* attributes = nullptr);

    // k nearest neighbours of each of `nq` queries; rows padded with kNoLabel / +inf
    // when fewer than k elements pass the filter.
    // ef is clamped to [k, number of elements]: a larger beam finds nothing more.
    void search(const float* queries, std::size_t nq, std::size_t k, std::size_t ef,
                const SearchFilter* filter, std::size_t num_threads, label_t* out_labels,
                float* out_distances) const;
    // search() in two steps, for a caller that must not hold something else while it
    // waits for the lock (Python's GIL, when the filter is a Python callable): take
    // a read session (blocking), then search in it (never blocking on the index).
    class ReadSession;
    std::unique_ptr<ReadSession> read_session() const;
    void search_in(const ReadSession& session, const float* queries, std::size_t nq,
                   std::size_t k, std::size_t ef, const SearchFilter* filter,
                   std::size_t num_threads, label_t* out_labels, float* out_distances) const;
    // search() over the elements whose labels are listed (the allow-list is resolved
    // under the same lock as the search, so slots added meanwhile cannot leak in).
    void search_allowed(const float* queries, std::size_t nq, std::size_t k, std::size_t ef,
                        const label_t* allowed, std::size_t n_allowed, std::size_t num_threads,
                        label_t* out_labels, float* out_distances) const;

    // search() over an allow-set (listed labels and/or an attribute program),
    // resolved under the search's lock; the planner picks the method per batch.
    void search_set(const float* queries, std::size_t nq, std::size_t k, std::size_t ef,
                    const AllowSpec& allow, FilterStrategy strategy, std::size_t num_threads,
                    label_t* out_labels, float* out_distances) const;
    // Every element within `radius` (distance < radius, in the index's distance)
    // of each query, at most max_results per query (the nearest). Over the graph
    // (the beam widens while every element in it is within the radius) or, for a
    // small allow-set, exactly. allow may be null.
    RangeResult search_range(const float* queries, std::size_t nq, float radius,
                             std::size_t max_results, std::size_t ef, const AllowSpec* allow,
                             FilterStrategy strategy, std::size_t num_threads) const;
    PlanInfo last_plan() const;
    // Stored attributes: the fields, and the values of `n` labels (LabelNotFound
    // for an unknown label).
    std::vector<AttributeStore::FieldInfo> attribute_fields() const { return attrs_.fields(); }
    AttrType attribute_values(const std::string& field, const label_t* labels, std::size_t n,
                              void* out, std::uint8_t* is_set) const;

    // SQ8: learn each dimension's range from `n` sample vectors (normalised first
    // for cosine). Must precede the first add; values outside the range clamp.
    void train(const float* data, std::size_t n);
    bool trained() const {
        return quant_ == Quantization::None || quant_ == Quantization::RaBitQ || trained_;
    }
    Quantization quantization() const { return quant_; }
    // Dimensions per PQ4 subspace (0 for the other quantisations).
    std::size_t pq_dims() const { return quant_ == Quantization::PQ4 ? pq_.sub_dim() : 0; }

    // Delete (or undelete) `n` labels, all or none: an unknown label throws
    // LabelNotFound, one already deleted (not deleted) or listed twice throws
    // std::invalid_argument, and then nothing has changed.
    void mark_deleted(const label_t* labels, std::size_t n);
    void unmark_deleted(const label_t* labels, std::size_t n);
    void mark_deleted(label_t label) { mark_deleted(&label, 1); }
    void unmark_deleted(label_t label) { unmark_deleted(&label, 1); }
    bool is_deleted(label_t label) const;
    bool contains(label_t label) const;
    void resize(std::size_t new_max_elements);

    // Copy the stored vectors (normalised for cosine) of `n` labels into out[n, dim].
    void get_vectors(const label_t* labels, std::size_t n, float* out) const;
    std::vector<label_t> labels(bool include_deleted) const;
    std::vector<label_t> labels_in(const ReadSession& session, bool include_deleted) const;

    std::size_t dim() const { return dim_; }
    Space space() const { return space_; }
    std::size_t M() const { return M_; }
    std::size_t ef_construction() const { return ef_construction_; }
    // Re-selects every node's level-0 links from a search of the whole graph
    // (see hnsw.cpp); ef 0: min(ef_construction, kDefaultRefineEf), three times
    // that when `steered` (a RaBitQ graph's search steered by its edge codes,
    // which measures only the nodes it expands; std::invalid_argument for
    // other graphs).
    static constexpr std::size_t kDefaultRefineEf = 100;
    static constexpr std::size_t kSteeredRefineFactor = 3;
    void refine_graph(std::size_t ef, std::size_t num_threads, bool steered = false);
    // max_elements: the limit hnswlib users know (an add past it fails unless the
    // add may grow). Storage is allocated up to it as needed: a loaded file
    // restores its limit without allocating it.
    std::size_t capacity() const { return max_elements_.load(); }
    std::size_t allocated() const { return capacity_; }
    std::size_t element_count() const { return count_.load(); }  // including deleted
    std::size_t deleted_count() const { return num_deleted_.load(); }
    std::size_t live_count() const { return element_count() - deleted_count(); }
    label_t next_label() const { return next_label_.load(); }
    std::uint64_t seed() const { return seed_; }
    // Default beam width of search, stored in saved files.
    std::size_t ef() const { return ef_.load(); }
    void set_ef(std::size_t ef);  // in [1, kMaxEf]
    bool is_mapped() const { return mapping_ != nullptr; }
    // Search tuning (not saved: it belongs to the machine): how many neighbours'
    // data to prefetch ahead (PQ4: how many beam entries), and how many cache
    // lines of each; 0 picks by size.
    void set_prefetch(std::size_t ahead, std::size_t lines) {
        tune_ahead_.store(ahead);
        tune_lines_.store(lines);
    }
    // Queries of a batch searched together on one thread, their hops interleaved
    // (SQ8 and fast-scan graphs, no filter): 0 picks, 1 turns it off, at most
    // kMaxInterleave.
    void set_interleave(std::size_t group);
    static constexpr std::size_t kMaxInterleave = 16;  // run_interleaved takes 64
    // The exact k-NN scan's first pass: 8 (quantised, quantized_scan.h), 32
    // (float32 only) or 0 (8 where it pays). Answers are the same either way.
    void set_scan_bits(std::size_t bits);
    // Scan codes for FilterStrategy::CodedScan: a 4-bit product code of every
    // stored vector (16 centroids per subspace of sub_dim dimensions, 0: 2 up to
    // 64 dimensions, 4 above; k-means on up to 65,536 live vectors), kept up to
    // date from then on by adds and updates, and saved. Replaces earlier codes.
    // Changes wait meanwhile; searches go on until the codes are installed.
    // Throws std::invalid_argument for an index without live elements or a bad
    // sub_dim.
    void build_scan_codes(std::size_t sub_dim, std::size_t num_threads);
    void drop_scan_codes();
    std::size_t scan_code_dims() const;  // sub_dim of the scan codes, 0 without
    IndexStats stats() const;

    // The replaceable kernels (kernel_abi.h): searches and inserts that start
    // after set_kernels use the new set; running ones finish with the old.
    void set_kernels(std::shared_ptr<const KernelSet> kernels);
    const KernelSet& kernels() const { return *kernels_.load(std::memory_order_acquire); }
    std::shared_ptr<const KernelSet> kernel_set() const;  // the active set, shareable
    // Level 0 as the kernel ABI sees it, for this index's metric and SIMD level.
    evx_graph_view graph_view(const DistanceKernels& k) const;

    // Persistence: a versioned, checksummed snapshot written to a fresh temporary
    // file, read back and validated as load() would, then renamed into place: a
    // failed or unloadable write never replaces the previous file. Searches go on
    // meanwhile; changes wait. serialize() validates the image it returns alike.
    void save(const std::string& path) const;
    std::string serialize() const;
    // `space`, when given, overrides the saved one (see Serializer::read).
    static std::unique_ptr<HNSW> load(const std::string& path, bool mmap,
                                      std::size_t max_elements = 0,
                                      std::optional<Space> space = std::nullopt);
    static std::unique_ptr<HNSW> deserialize(const char* data, std::size_t size,
                                             std::size_t max_elements = 0);
    // hnswlib 0.8's file format (hnswalg.h's saveIndex), so users can switch both
    // ways. Such a file names neither its space nor a checksum: the caller gives
    // the space and dimension, and every field is bounded and the graph checked
    // as strictly as in evidex's own files. Capacity follows hnswlib's loadIndex:
    // max_elements when at least the element count, else the file's. Writing
    // keeps graph, vectors, labels and deletion marks; stored attributes have no
    // place in the format (refused), quantised codes are simply not written.
    static std::unique_ptr<HNSW> load_hnswlib(const std::string& path, Space space,
                                              std::size_t dim, std::size_t max_elements = 0);
    void save_hnswlib(const std::string& path) const;

private:
    struct Candidate {
        float dist;
        node_id id;
        bool operator<(const Candidate& o) const { return dist < o.dist; }
    };
    using MaxHeap = std::vector<Candidate>;  // used with std::push_heap / pop_heap
    struct FastScanScratch;
    static FastScanScratch& fast_scan_scratch(std::size_t slot);

    class Serializer;
    friend class Serializer;

    static constexpr std::size_t kMaxLinks = 2 * 2048;  // M0 for the largest M
    // node layout in level0_: [u16 count | u8 flags | u8 pad | M0 x u32 links | dim x f32 | u64 label]
    // (node_bytes_), node_stride_ apart. A fast-scan graph in memory of its own
    // keeps each node's block of neighbour codes in the same row, after the node
    // padded to a cache line, so a hop reads one contiguous span (SymphonyQG's
    // row): 1.15-1.27x queries per second on MiniLM-100k RaBitQ over two arrays.
    // A file mapping holds nodes alone; its blocks are then an array of their own.
    static constexpr std::uint8_t kDeletedFlag = 1;
    char* node(node_id id) const { return level0_ + static_cast<std::size_t>(id) * node_stride_; }
    std::uint32_t* links0(node_id id) const { return reinterpret_cast<std::uint32_t*>(node(id)); }
    std::uint32_t* links_at(node_id id, int level) const {
        return level == 0 ? links0(id)
                          : upper_[id].get() + static_cast<std::size_t>(level - 1) * (M_ + 1);
    }
    static std::uint16_t link_count(const std::uint32_t* links) {
        return *reinterpret_cast<const std::uint16_t*>(links);
    }
    static void set_link_count(std::uint32_t* links, std::size_t n) {
        *reinterpret_cast<std::uint16_t*>(links) = static_cast<std::uint16_t>(n);
    }
    std::uint8_t& flags(node_id id) const { return reinterpret_cast<std::uint8_t*>(node(id))[2]; }
    bool deleted_at(node_id id) const { return flags(id) & kDeletedFlag; }
    const float* vec(node_id id) const { return reinterpret_cast<const float*>(node(id) + vec_offset_); }
    float* vec(node_id id) { return reinterpret_cast<float*>(node(id) + vec_offset_); }
    label_t label_at(node_id id) const;
    void set_label(node_id id, label_t label);

    float distance(const DistanceKernels& k, const float* a, const float* b) const {
        return space_ == Space::L2 ? k.l2sq(a, b, dim_) : 1.0f - k.dot(a, b, dim_);
    }

    int random_level();
    // Thrown by add_one when a new slot is needed and growth is allowed: nothing
    // was changed, the caller grows the storage and retries.
    struct NeedCapacity {};
    // Returns the slot written.
    node_id add_one(const float* vector, label_t label, bool replace_deleted,
                    bool forbid_update_deleted, bool grow, std::vector<float>& scratch);
    void train_locked(const float* data, std::size_t n);
    void add_locked(const float* data, std::size_t n, const label_t* labels,
                    std::size_t num_threads, bool replace_deleted, bool forbid_update_deleted,
                    bool grow);
    void bump_next_label(label_t next);
    void search_locked(const float* queries, std::size_t nq, std::size_t k, std::size_t ef,
                       const SearchFilter* filter, std::size_t num_threads, label_t* out_labels,
                       float* out_distances) const;
    // The beam width of an insert: ef_construction, but never wider than the graph.
    std::size_t construction_ef() const {
        return std::max<std::size_t>(1, std::min(ef_construction_, count_.load()));
    }
    void set_deleted(const label_t* labels, std::size_t n, bool deleted);
    // The slot of a label; LabelNotFound if there is none. The caller holds label_mutex_.
    node_id slot_of(label_t label) const;
    // The live allowed slots of a spec; the caller holds storage_mutex_ shared.
    // reuses (optional) receives the slot-reuse count at the moment of resolution.
    SlotSet resolve(const AllowSpec& allow, std::uint64_t* reuses = nullptr) const;
    template <class Redo, class Rows, class Drop>
    void recheck(const AllowSpec& allow, std::uint64_t reuses, Redo&& redo, std::size_t nq,
                 Rows&& rows, Drop&& drop) const;
    void record_attributes(const std::vector<AttrColumn>* attributes, const label_t* labels,
                           std::size_t n);
    // Planner: the cheapest method for `allowed` of `live` elements at beam ef,
    // by the calibrated model; then the model learns from what the batch cost.
    FilterStrategy plan(std::size_t allowed, std::size_t live, std::size_t ef, std::size_t nq,
                        FilterStrategy forced, PlanInfo* info) const;
    // The same for a range search whose graph beam is `beam` (from the expected
    // result count).
    FilterStrategy plan_range(std::size_t allowed, std::size_t live, std::size_t beam,
                              std::size_t nq, FilterStrategy forced, PlanInfo* info) const;
    void calibrate_range(FilterStrategy s, std::size_t allowed, std::size_t live,
                         std::size_t beam, std::size_t nq, std::size_t threads, double seconds,
                         double predicted_ns) const;
    void calibrate(FilterStrategy s, std::size_t allowed, std::size_t live, std::size_t ef,
                   std::size_t nq, std::size_t threads, double seconds, std::uint64_t computed,
                   double predicted_ns) const;
    // Exact distances of nq queries (raw, not yet normalised) to `members`, handed
    // to visit(query, distances, members, m) sixteen members at a time; scan_batch
    // keeps the kk nearest of each into out[nq, kk], padded; scan_chunk is the
    // queries per pass over the members.
    template <class Visit>
    void scan_rows(const DistanceKernels& k, const float* queries, std::size_t nq,
                   const std::vector<node_id>& members, Visit&& visit) const;
    void scan_batch(const DistanceKernels& k, const float* queries, std::size_t nq,
                    const std::vector<node_id>& members, std::size_t kk, label_t* out_labels,
                    float* out_distances) const;
    std::size_t scan_chunk(std::size_t nq, std::size_t num_threads) const;
    // The labels of n scan results (indexes into members; kNoRow: none).
    void labels_of(const std::vector<node_id>& members, const std::uint32_t* rows,
                   std::size_t n, label_t* out) const;
    // CodedScan over `members` for nq queries (raw): out[nq, kk], padded. The
    // thread time spent on codes (packing and fast scan) and on re-ranking is
    // added to the two counters, in nanoseconds.
    void coded_scan_batch(const DistanceKernels& k, const float* queries, std::size_t nq,
                          const std::vector<node_id>& members, std::size_t kk, std::size_t depth,
                          std::size_t num_threads, label_t* out_labels, float* out_distances,
                          std::atomic<std::uint64_t>& code_ns,
                          std::atomic<std::uint64_t>& rerank_ns) const;
    void calibrate_coded(std::size_t allowed, std::size_t depth, std::size_t nq, double code_ns,
                         double rerank_ns, double predicted_ns) const;
    template <class Accept>
    MaxHeap search_two_hop(const DistanceKernels& k, node_id ep, const float* q, std::size_t ef,
                           Accept&& accept, std::uint64_t* dist_count) const;
    const float* prepare_query(const float* q, std::vector<float>& scratch) const;
    void search_set_one(const DistanceKernels& k, FilterStrategy s, const SlotSet& set,
                        std::size_t allowed, const float* q, std::size_t kk,
                        std::size_t ef, label_t* out_labels, float* out_distances,
                        std::uint64_t* dist_count) const;
    // Nodes nearest q (nearest first) with an acceptance test, the beam widening
    // from ef while all of it lies within radius (range search).
    std::vector<Candidate> range_one(const DistanceKernels& k, FilterStrategy s,
                                     const SlotSet* set, const float* q, float radius,
                                     std::size_t max_results, std::size_t ef,
                                     std::uint64_t* dist_count) const;
    void insert_new(node_id id, int level, const float* v);
    void relink_existing(node_id id, const float* v);
    node_id greedy_descend(const DistanceKernels& k, const float* q, node_id ep, int from_level,
                        int to_level, std::uint64_t* dist_count) const;
    MaxHeap search_layer(const DistanceKernels& k, node_id ep, const float* q, int level,
                         std::size_t ef, node_id exclude) const;
    template <class Dist, class Prefetch>
    void search_beam(Dist&& dist, Prefetch&& prefetch, std::size_t ahead, node_id ep, int level,
                     std::size_t ef, BeamPool& beam, std::uint64_t* dist_count) const;
    void search_beam_fp32(const DistanceKernels& k, node_id ep, const float* q, int level,
                          std::size_t ef, BeamPool& beam, std::uint64_t* dist_count) const;
    // A code-steered search's answer row completed: float32 if the codes left it short.
    void finish_steered(const DistanceKernels& k, node_id ep, const float* q, std::size_t found,
                        std::size_t kk, std::size_t ef, label_t* labels, float* distances) const;
    // SQ8 traversal of level 0, then float32 re-ranking of the beam into out,
    // for queries qs[0..nq) (prepared) whose hops are interleaved; out rows are
    // kk apart and padded.
    void search_sq8(const DistanceKernels& k, node_id entry, int top_level,
                    const float* const* qs, std::size_t nq, std::size_t kk, std::size_t ef,
                    label_t* out_labels, float* out_distances, std::uint64_t* dist_count) const;
    // Queries per interleaved group of a batch of nq on `threads` threads (1: none).
    std::size_t interleave_group(std::size_t nq, std::size_t threads) const;
    std::size_t rerank(const DistanceKernels& k, const float* q, const BeamPool& beam,
                       std::size_t kk, label_t* out_labels, float* out_distances) const;
    template <class Dist, class Prefetch>
    node_id descend(Dist&& dist, Prefetch&& prefetch, std::size_t ahead, node_id ep,
                    int from_level, int to_level, std::uint64_t* dist_count) const;
    void encode(const float* v, std::uint8_t* out) const;
    const std::uint8_t* code(node_id id) const {
        return codes_ + static_cast<std::size_t>(id) * code_stride_;
    }
    template <class Accept, class Expand>
    MaxHeap beam_accepting(const DistanceKernels& k, node_id ep, const float* q, std::size_t ef,
                           Accept&& accept, Expand&& expand, std::uint64_t* dist_count) const;
    template <class Accept>
    MaxHeap search_filtered(const DistanceKernels& k, node_id ep, const float* q, int level,
                            std::size_t ef, Accept&& accept, std::uint64_t* dist_count) const;
    void select_neighbors(const DistanceKernels& k, MaxHeap& candidates, std::size_t m,
                          node_id node, int level) const;
    // Choose at most m out-links for a node on one level from `candidates`
    // (pruned in place, nearest first); returns the nearest, the next level's
    // entry. A fast-scan block is coded afresh, or, with `same_vector` (the
    // node has not moved since its block was coded), keeps the codes of kept edges.
    node_id link_out(const DistanceKernels& k, node_id id, MaxHeap& candidates, int level,
                     std::size_t m, bool same_vector = false);
    // Add the reverse links from each neighbour (unless already there), pruning
    // full lists.
    void link_back(const DistanceKernels& k, node_id id, const MaxHeap& neighbors, int level);
    // Sorts a beam and writes its min(kk, size) nearest; returns how many.
    std::size_t write_nearest(MaxHeap& top, std::size_t kk, label_t* out_labels,
                              float* out_distances) const;
    void search_one(const DistanceKernels& k, const KernelSet& ks, const float* q, std::size_t kk,
                    std::size_t ef, const SearchFilter* filter, label_t* out_labels,
                    float* out_distances, std::uint64_t* dist_count) const;
    // Plain level-0 search through the kernel set's search and refine slots.
    // The filtered search of a kernel library (evidex_search_filtered) over `set`,
    // its results checked (allowed, in range, once) before they are used.
    std::size_t search_filtered_kernel(const DistanceKernels& k, const KernelSet& ks,
                                       node_id start, const float* q, std::size_t kk,
                                       std::size_t ef, const SlotSet& set, label_t* out_labels,
                                       float* out_distances, std::uint64_t* dist_count) const;
    std::size_t search_kernels(const DistanceKernels& k, const KernelSet& ks, node_id start,
                               const float* q, std::size_t kk, std::size_t ef,
                               label_t* out_labels, float* out_distances,
                               std::uint64_t* dist_count) const;
    void allocate(std::size_t capacity);
    void allocate_slots(std::size_t capacity);
    void release_storage();
    void rebuild_label_map();
    // Marks, for its scope, that this thread holds locks of the index: a second
    // Busy of the same index on the same thread (a filter callback calling back
    // into it) throws ReentrantCall instead of deadlocking.
    class Busy {
    public:
        explicit Busy(const HNSW* index);
        ~Busy();
        Busy(const Busy&) = delete;
        Busy& operator=(const Busy&) = delete;
    };

    // parameters
    std::size_t dim_;
    Space space_;
    std::size_t M_, M0_, ef_construction_;
    std::uint64_t seed_;
    double level_mult_;
    std::size_t node_bytes_, vec_offset_, label_offset_;
    std::size_t node_stride_ = 0;

    // scalar quantisation (SQ8)
    Quantization quant_ = Quantization::None;
    bool trained_ = false;
    std::size_t padded_dim_ = 0;   // dim rounded up to 16: kernel length
    std::size_t code_stride_ = 0;  // bytes per code row, a multiple of 64
    std::vector<float> qmin_, qscale_, qweight_;  // per dimension; weight = scale^2
    std::uint8_t* codes_ = nullptr;

    // PQ4 fast scan (fastscan.h): a block per node with the codes of its level-0
    // edges' residuals in link order, in groups of 32 (fast-scan layout), then
    // for squared L2 one float per edge, |x_nb|^2 - |x_node|^2. Blocks follow
    // the links: written under the node's link lock whenever its level-0 list
    // changes, an edge kept by a re-selection keeping its code. An edge whose
    // end moved (an update) keeps a stale code until its list changes: that
    // costs accuracy of the estimate, never exactness of a result.
    // RaBitQ (rabitq.h) uses the same blocks: pq_ is its bit-pattern layout, and
    // each edge has two floats, its scale (M0 of them) then its offset (M0).
    PQ4 pq_;
    EdgeCoder coder_;
    bool fast_scan_graph() const {
        return quant_ == Quantization::PQ4 || quant_ == Quantization::RaBitQ;
    }
    std::size_t extras_per_edge() const {
        return quant_ == Quantization::RaBitQ ? 2 : space_ == Space::L2 ? 1 : 0;
    }
    // A block's codes come in groups of fs_group_: 32, or 16 (a half group) when
    // M0 <= 16, where a full group would be half padding (files before format
    // version 6 keep full groups: the loader lays their blocks out so).
    std::size_t fs_group_ = PQ4::kGroup, fs_block_bytes_ = 0, fs_extra_offset_ = 0;
    void lay_out_blocks(std::size_t group);  // before any node is stored
    // fs_blocks_ points into level0_'s rows when blocks_in_rows_, else owns an array.
    std::uint8_t* fs_blocks_ = nullptr;
    std::size_t fs_stride_ = 0;
    bool blocks_in_rows_ = false;
    std::uint8_t* fs_block(node_id id) const {
        return fs_blocks_ + static_cast<std::size_t>(id) * fs_stride_;
    }
    // Sets the strides for rows with (a fast-scan graph's) blocks or without.
    void set_row_layout(bool blocks_in_rows);
    std::size_t padded_node_bytes() const { return (node_bytes_ + 63) / 64 * 64; }
    std::size_t row_node_bytes() const {
        return blocks_in_rows_ ? padded_node_bytes() : node_bytes_;
    }
    float* fs_extra(node_id id) const {
        return reinterpret_cast<float*>(fs_block(id) + fs_extra_offset_);
    }
    // The caller holds link_locks_[id] (or owns the index). place_in_block codes
    // edge j (id -> neighbor); refresh_block codes every edge, reusing the codes
    // of edges that were in `old` (the list before the change: count word, ids)
    // with block `old_block`. `rotated`: the node's vector as the RaBitQ coder
    // rotates it (EdgeCoder::rotate), when the caller codes several of its edges;
    // null: rotated here.
    void place_in_block(node_id id, std::size_t j, node_id neighbor,
                        const float* rotated = nullptr);
    // The node's vector rotated for RaBitQ edge coding, into buf; returns buf's data.
    const float* rotated_node(node_id id, std::vector<float>& buf) const {
        buf.resize(coder_.padded());
        coder_.rotate(vec(id), buf.data());
        return buf.data();
    }
    void refresh_block(node_id id, const std::uint32_t* old = nullptr,
                       const std::uint8_t* old_block = nullptr);
    // Level-0 completion of the RaBitQ layout: fills the link lists of
    // `changed` and their neighbours up to M0 (see hnsw.cpp). The caller holds
    // storage_mutex_ shared and write_mutex_ shared.
    void complete_links(std::vector<node_id> changed, std::size_t num_threads);
    void complete_node(const DistanceKernels& k, node_id id);
    std::vector<node_id> breadth_first_order(std::size_t n) const;
    void refine_node(const DistanceKernels& k, node_id id, std::size_t ef, bool steered);
    // How a fast-scan walk treats a node met again before it is expanded: a
    // second beam entry (queries), its one entry moved to the better estimate,
    // or its first estimate kept.
    enum class Revisit { Copy, Improve, Keep };
    void fast_scan_candidates(const DistanceKernels& k, node_id ep, const float* q, std::size_t ef,
                              MaxHeap& pool, Revisit revisit = Revisit::Improve) const;
    // nq (<= kMaxInterleave) queries, interleaved; writes kk answers per query.
    void search_pq4(const DistanceKernels& k, node_id entry, int top_level,
                    const float* const* qs, std::size_t nq, std::size_t kk, std::size_t ef,
                    label_t* out_labels, float* out_distances,
                    std::uint64_t* dist_count) const;
    class FastScanWalk;
    int fast_scan_entry_level(int top_level) const;

    // Scan codes (build_scan_codes): one PQ4 code per slot of every stored
    // vector (not residuals), and for squared L2 its |x|^2; written with the
    // vector, under the storage lock shared. Untrained scan_pq_: none.
    PQ4 scan_pq_;
    std::vector<std::uint8_t> scan_codes_;
    std::vector<float> scan_norms_;
    bool has_scan_codes() const { return scan_pq_.trained(); }
    void encode_scan(node_id id, const float* v);

    // storage
    std::size_t capacity_ = 0;  // slots allocated
    std::atomic<std::size_t> max_elements_{0};
    char* level0_ = nullptr;
    void* mapping_ = nullptr;  // when level0_ points into a private file mapping
    std::size_t mapping_bytes_ = 0;
    std::vector<std::unique_ptr<std::uint32_t[]>> upper_;
    std::vector<std::uint8_t> levels_;
    std::unique_ptr<std::mutex[]> link_locks_;

    std::atomic<std::size_t> ef_{64};
    // The active kernel set: a plain pointer so the hot paths read it without a
    // lock; every set ever made active stays alive in kernel_sets_ (a handful).
    std::atomic<const KernelSet*> kernels_{&builtin_kernels()};
    // evx_graph_view::version: a fresh process-wide number per change of contents.
    std::atomic<std::uint64_t> version_{next_graph_version()};
    static std::uint64_t next_graph_version();
    std::vector<std::shared_ptr<const KernelSet>> kernel_sets_;
    mutable std::mutex kernel_sets_mutex_;
    std::atomic<std::size_t> tune_ahead_{0}, tune_lines_{0}, interleave_{0}, scan_bits_{0};
    std::size_t ahead_for(std::size_t bytes) const;
    std::size_t prefetch_bytes(std::size_t bytes) const {
        const std::size_t lines = tune_lines_.load();
        return lines ? std::min(bytes, lines * 64) : bytes;
    }
    std::atomic<std::size_t> count_{0};
    std::atomic<std::size_t> num_deleted_{0};
    std::atomic<label_t> next_label_{0};
    // Entry point and top level in one word, so a search never pairs a new top
    // level with an old entry point (that would read past its link lists).
    struct Entry {
        std::int64_t node;  // -1 when the graph is empty
        int level;
    };
    static constexpr std::uint64_t kNoEntry = ~std::uint64_t{0};
    std::atomic<std::uint64_t> entry_{kNoEntry};
    Entry entry() const {
        const std::uint64_t e = entry_.load(std::memory_order_acquire);
        if (e == kNoEntry) return {-1, -1};
        return {static_cast<std::int64_t>(e & 0xffffffffu), static_cast<int>(e >> 32)};
    }
    void set_entry(std::int64_t node, int level) {
        entry_.store(node < 0 ? kNoEntry
                              : (static_cast<std::uint64_t>(level) << 32) |
                                    static_cast<std::uint64_t>(node),
                     std::memory_order_release);
    }

    std::unordered_map<label_t, node_id> label_map_;
    // True while every slot's label is its slot number (label_mutex_ for writes):
    // allow-lists then resolve without the map.
    std::atomic<bool> labels_are_slots_{true};
    // Slots of deleted elements reused for new ones so far (label_mutex_ for
    // writes): filtered searches recheck their results when it moved.
    std::atomic<std::uint64_t> slot_reuses_{0};
    std::vector<node_id> deleted_slots_;  // candidates for replace_deleted
    mutable std::mutex label_mutex_;   // label_map_, deleted_slots_, count_ growth
    static constexpr std::size_t kLabelLockStripes = 1024;
    std::unique_ptr<std::mutex[]> label_op_locks_;  // serialise work on one label
    std::mutex global_mutex_;                       // entry point and max level
    std::mutex rng_mutex_;
    std::mt19937_64 level_rng_;
    std::mt19937_64 update_rng_;

    // See the lock order above the class.
    mutable RwLock write_mutex_;
    mutable RwLock storage_mutex_;
    AttributeStore attrs_;  // its own leaf lock
    // The planner's cost model (planner_mutex_, a leaf), learnt from the batches
    // it plans: nanoseconds per scanned row, by batch size class (queries share
    // each pass over the allowed vectors) and allowed count; and, for each graph method, by class
    // of allowed fraction, nanoseconds per distance computation and distance
    // computations per query in units of the method's shape (see plan()).
    struct CostModel {
        static constexpr std::size_t kClasses = 8;  // count_class() has 8 too
        CostFigure scan_row_ns[kClasses][kClasses];  // by batch size, allowed count
        // The coded scan: per allowed row (packing and fast scan), by batch size
        // and allowed count; per re-ranked vector, by allowed count.
        CostFigure coded_row_ns[kClasses][kClasses];
        CostFigure rerank_ns[kClasses];
        CostFigure step_ns[kStrategies][kClasses];
        CostFigure distances_per_unit[kStrategies][kClasses];
        // Range search over the graph, per query per unit of planned beam: its
        // beam is wide and doubles while all of it lies inside the radius, so it
        // is learnt apart from the k-NN figures (see plan_range()).
        CostFigure range_beam_ns[kStrategies][kClasses];
        double range_log_error[kStrategies] = {};
        // How far off each method's calibrated predictions have been (mean
        // |ln(actual / predicted)|): a method is charged its typical miss, so an
        // erratic graph estimate must beat the steady scan by that much.
        double log_error[kStrategies] = {};
        PlanInfo last;
    };
    mutable CostModel cost_;
    mutable std::mutex planner_mutex_;
    mutable VisitedPool visited_pool_;
    mutable std::atomic<std::uint64_t> last_distance_computations_{0};
    mutable std::atomic<std::uint64_t> last_queries_{0};
    mutable std::atomic<std::uint64_t> last_hops_{0};
};

// The index's read lock, held by one thread (see HNSW::read_session).
class HNSW::ReadSession {
public:
    explicit ReadSession(const HNSW& index) : busy_(&index), lock_(index.storage_mutex_), index_(&index) {}
    const HNSW* index() const { return index_; }

private:
    Busy busy_;
    std::shared_lock<RwLock> lock_;
    const HNSW* index_;
};

// Exact k nearest neighbours by brute force over `n` rows (for BFIndex and ground
// truth). `allow` (optional, n bytes) excludes rows where it is zero. Rows of
// `out_rows` are padded with -1 / +inf when fewer than k rows are allowed.
void brute_force_knn(const float* data, std::size_t n, std::size_t dim, Space space,
                     const float* queries, std::size_t nq, std::size_t k,
                     const std::uint8_t* allow, std::size_t num_threads, std::int64_t* out_rows,
                     float* out_distances);

}  // namespace evidex
