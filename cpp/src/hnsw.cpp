#include "evidex/hnsw.h"
#include "evidex/memory.h"

#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <queue>
#include <stdexcept>

#if defined(__SSE2__)
#include <emmintrin.h>  // baseline on x86-64: no dispatch needed
#endif

#include "evidex/beam.h"
#include "evidex/coded_scan.h"
#include "evidex/errors.h"
#include "evidex/exact_scan.h"
#include "evidex/quantized_scan.h"

namespace evidex {

Space parse_space(const std::string& name) {
    if (name == "l2") return Space::L2;
    if (name == "ip") return Space::IP;
    if (name == "cosine") return Space::Cosine;
    throw std::invalid_argument("unknown space '" + name + "' (expected 'l2', 'ip' or 'cosine')");
}

std::string space_name(Space space) {
    switch (space) {
        case Space::L2: return "l2";
        case Space::IP: return "ip";
        default: return "cosine";
    }
}

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// An answer row's places from `found` to kk: no element (id -1, distance inf).
void pad_answers(std::size_t found, std::size_t kk, label_t* labels, float* distances) {
    std::fill(labels + found, labels + kk, kNoLabel);
    std::fill(distances + found, distances + kk, kInf);
}

// Indexes whose locks this thread holds (see HNSW::Busy).
thread_local std::vector<const HNSW*> t_busy;

// Min-heap on distance for the candidate frontier.
struct Closer {
    template <class C>
    bool operator()(const C& a, const C& b) const {
        return a.dist > b.dist;
    }
};

}  // namespace


HNSW::Busy::Busy(const HNSW* index) {
    if (std::find(t_busy.begin(), t_busy.end(), index) != t_busy.end())
        throw ReentrantCall(
            "the index is in use by a search on this thread: a filter callable must not call "
            "methods of the index it filters");
    t_busy.push_back(index);
}

HNSW::Busy::~Busy() { t_busy.pop_back(); }

std::size_t HNSW::ahead_for(std::size_t bytes) const {
    const std::size_t ahead = tune_ahead_.load();
    return ahead ? ahead : prefetch_ahead(bytes);
}

HNSW::HNSW(std::size_t dim, Space space, std::size_t M, std::size_t ef_construction,
           std::size_t max_elements, std::uint64_t seed, Quantization quantization, std::size_t pq_dims)
    : dim_(dim),
      space_(space),
      M_(M),
      M0_(2 * M),
      ef_construction_(std::max(ef_construction, M)),
      seed_(seed),
      visited_pool_(0) {
    if (dim == 0) throw std::invalid_argument("dim must be at least 1");
    if (dim > (std::size_t{1} << 24)) throw std::invalid_argument("dim must be at most 2**24");
    if (M < 2 || M > 2048) throw std::invalid_argument("M must be in [2, 2048]");
    if (ef_construction < 1 || ef_construction > kMaxEf)
        throw std::invalid_argument("ef_construction must be in [1, " + std::to_string(kMaxEf) +
                                    "], got " + std::to_string(ef_construction));
    if (max_elements >= BeamPool::kMaxId)
        throw std::invalid_argument("max_elements must be below 2^31 - 1");
    level_mult_ = 1.0 / std::log(static_cast<double>(M_));
    vec_offset_ = sizeof(std::uint32_t) * (M0_ + 1);
    label_offset_ = vec_offset_ + sizeof(float) * dim_;
    node_bytes_ = (label_offset_ + sizeof(label_t) + 7) / 8 * 8;
    node_stride_ = node_bytes_;
    level_rng_.seed(seed);
    update_rng_.seed(seed + 1);
    label_op_locks_.reset(new std::mutex[kLabelLockStripes]);
    quant_ = quantization;
    if (quant_ == Quantization::SQ8) {
        padded_dim_ = (dim_ + 15) / 16 * 16;
        code_stride_ = (dim_ + 63) / 64 * 64;
        qmin_.assign(padded_dim_, 0.f);
        qscale_.assign(padded_dim_, 0.f);
        qweight_.assign(padded_dim_, 0.f);
    } else if (quant_ == Quantization::PQ4 || quant_ == Quantization::RaBitQ) {
        if (quant_ == Quantization::RaBitQ) {
            coder_ = EdgeCoder(dim_, seed_, space_ == Space::L2);
            pq_ = coder_.layout();
        } else {
            pq_ = PQ4(dim_, pq_dims);
        }
        lay_out_blocks(M0_ <= PQ4::kHalfGroup ? PQ4::kHalfGroup : PQ4::kGroup);
    } else if (quant_ != Quantization::None) {
        throw std::invalid_argument("unknown quantization");
    }
    if (pq_dims != 0 && quant_ != Quantization::PQ4)
        throw std::invalid_argument("pq_dims applies to quantization 'pq4' only");
    set_row_layout(false);
    allocate(max_elements);
    max_elements_.store(max_elements);
}

HNSW::~HNSW() {
    release_storage();
    std::free(codes_);
    std::free(fs_blocks_);
}

void HNSW::release_storage() {
    if (mapping_ != nullptr) {
        munmap(mapping_, mapping_bytes_);
        mapping_ = nullptr;
    } else {
        std::free(level0_);
    }
    level0_ = nullptr;
    if (blocks_in_rows_) fs_blocks_ = nullptr;  // they were in the rows
}

void HNSW::lay_out_blocks(std::size_t group) {
    fs_group_ = group;
    fs_extra_offset_ = (M0_ + group - 1) / group * pq_.group_bytes(group);
    const std::size_t extra = extras_per_edge() * M0_ * sizeof(float);
    fs_block_bytes_ = (fs_extra_offset_ + extra + 63) / 64 * 64;
}

void HNSW::set_row_layout(bool blocks_in_rows) {
    blocks_in_rows_ = blocks_in_rows && fast_scan_graph();
    node_stride_ = row_node_bytes() + (blocks_in_rows_ ? fs_block_bytes_ : 0);
    fs_stride_ = blocks_in_rows_ ? node_stride_ : fs_block_bytes_;
}

// (Re)allocate every per-slot structure for `capacity` slots, keeping the first
// count_ nodes. Callers hold the storage lock exclusively (or own the object).
// A fast-scan graph's blocks move into the rows (from a file mapping's separate
// array too); new rows' blocks start zeroed, as a separate array's do.
void HNSW::allocate(std::size_t capacity) {
    const std::size_t keep = count_.load();
    const bool rows = fast_scan_graph();
    const std::size_t own = rows ? padded_node_bytes() : node_bytes_;
    const std::size_t stride = own + (rows ? fs_block_bytes_ : 0);
    char* block = static_cast<char*>(alloc_random_access(capacity * stride));
    if (block == nullptr) throw std::bad_alloc();
    if (keep > 0 && rows == blocks_in_rows_) {  // the same layout: one copy
        std::memcpy(block, level0_, keep * stride);
    } else {
        for (std::size_t i = 0; i < keep; ++i) {
            std::memcpy(block + i * stride, node(static_cast<node_id>(i)), node_bytes_);
            if (rows)
                std::memcpy(block + i * stride + own, fs_block(static_cast<node_id>(i)),
                            fs_block_bytes_);
        }
    }
    for (std::size_t i = keep; rows && i < capacity; ++i)
        std::memset(block + i * stride + own, 0, fs_block_bytes_);
    std::uint8_t* separate = blocks_in_rows_ ? nullptr : fs_blocks_;
    release_storage();
    if (rows) {
        std::free(separate);
        level0_ = block;
        set_row_layout(true);
        fs_blocks_ = reinterpret_cast<std::uint8_t*>(block + own);
    } else {
        level0_ = block;
    }
    allocate_slots(capacity);
}

// Everything per slot except the level-0 block (which may be a file mapping).
void HNSW::allocate_slots(std::size_t capacity) {
    const std::size_t keep = count_.load();
    // Per-slot code rows (SQ8 codes, PQ4 blocks): the kept nodes' rows move with
    // them; the rest start zeroed.
    auto regrow = [&](std::uint8_t*& rows, std::size_t row_bytes) {
        const std::size_t bytes = std::max<std::size_t>(64, capacity * row_bytes);
        auto* fresh = static_cast<std::uint8_t*>(alloc_random_access(bytes));
        if (fresh == nullptr) throw std::bad_alloc();
        std::memset(fresh, 0, bytes);
        if (keep > 0 && rows != nullptr) std::memcpy(fresh, rows, keep * row_bytes);
        std::free(rows);
        rows = fresh;
    };
    if (quant_ == Quantization::SQ8) regrow(codes_, code_stride_);
    if (fast_scan_graph() && !blocks_in_rows_) regrow(fs_blocks_, fs_block_bytes_);
    if (has_scan_codes()) {
        scan_codes_.resize(capacity * scan_pq_.code_bytes());
        if (space_ == Space::L2) scan_norms_.resize(capacity);
    }
    upper_.resize(capacity);
    levels_.resize(capacity, 0);
    link_locks_.reset(new std::mutex[std::max<std::size_t>(1, capacity)]);
    visited_pool_.resize(capacity);
    capacity_ = capacity;
}

void HNSW::resize(std::size_t new_max_elements) {
    Busy busy(this);
    std::shared_lock<RwLock> wlock(write_mutex_);
    std::unique_lock<RwLock> lock(storage_mutex_);
    if (new_max_elements < count_.load())
        throw std::runtime_error(
            "Cannot resize, max element is less than the current number of elements");
    if (new_max_elements >= BeamPool::kMaxId)
        throw std::invalid_argument("max_elements must be below 2^31 - 1");
    allocate(new_max_elements);
    max_elements_.store(new_max_elements);
    version_.store(next_graph_version(), std::memory_order_release);
}

label_t HNSW::label_at(node_id id) const {
    label_t label;
    std::memcpy(&label, node(id) + label_offset_, sizeof(label));
    return label;
}

void HNSW::set_label(node_id id, label_t label) {
    if (label != id) labels_are_slots_.store(false, std::memory_order_relaxed);
    std::memcpy(node(id) + label_offset_, &label, sizeof(label));
}

void HNSW::set_ef(std::size_t ef) {
    if (ef < 1 || ef > kMaxEf)
        throw std::invalid_argument("ef must be in [1, " + std::to_string(kMaxEf) + "], got " +
                                    std::to_string(ef));
    ef_.store(ef);
}

void HNSW::train(const float* data, std::size_t n) {
    Busy busy(this);
    std::shared_lock<RwLock> wlock(write_mutex_);
    std::unique_lock<RwLock> lock(storage_mutex_);
    train_locked(data, n);
}

// The caller holds storage_mutex_ exclusively.
void HNSW::train_locked(const float* data, std::size_t n) {
    // RaBitQ codes need no training: the rotation is fixed by the seed.
    if (quant_ == Quantization::None || quant_ == Quantization::RaBitQ) return;
    if (count_.load() > 0) throw std::runtime_error("train() must precede the first add");
    if (n == 0) throw std::invalid_argument("train() needs at least one vector");
    if (quant_ == Quantization::PQ4) {
        // Train on vectors as stored (normalised for cosine).
        std::vector<float> rows;
        const float* x = data;
        if (space_ == Space::Cosine) {
            rows.resize(n * dim_);
            for (std::size_t i = 0; i < n; ++i)
                normalize_into(data + i * dim_, dim_, rows.data() + i * dim_);
            x = rows.data();
        }
        pq_.train(x, n, seed_, 0);
        trained_ = true;
        return;
    }
    std::vector<float> lo(dim_, std::numeric_limits<float>::infinity());
    std::vector<float> hi(dim_, -std::numeric_limits<float>::infinity());
    std::vector<float> row(dim_);
    for (std::size_t i = 0; i < n; ++i) {
        const float* v = data + i * dim_;
        if (space_ == Space::Cosine) {
            normalize_into(v, dim_, row.data());
            v = row.data();
        }
        for (std::size_t d = 0; d < dim_; ++d) {
            lo[d] = std::min(lo[d], v[d]);
            hi[d] = std::max(hi[d], v[d]);
        }
    }
    for (std::size_t d = 0; d < dim_; ++d) {
        // A small margin keeps later vectors slightly outside the sample in range.
        const float margin = 0.02f * (hi[d] - lo[d]) + 1e-6f;
        qmin_[d] = lo[d] - margin;
        qscale_[d] = (hi[d] - lo[d] + 2 * margin) / 255.0f;
        qweight_[d] = qscale_[d] * qscale_[d];
    }
    trained_ = true;
}

void HNSW::encode(const float* v, std::uint8_t* out) const {
    for (std::size_t d = 0; d < dim_; ++d) {
        const float c = std::nearbyint((v[d] - qmin_[d]) / qscale_[d]);
        out[d] = static_cast<std::uint8_t>(std::min(255.0f, std::max(0.0f, c)));
    }
}

// ------------------------------------------------------------------ scan codes

void HNSW::encode_scan(node_id id, const float* v) {
    scan_pq_.encode(v, scan_codes_.data() + static_cast<std::size_t>(id) * scan_pq_.code_bytes());
    if (space_ == Space::L2) scan_norms_[id] = active_kernels().dot(v, v, dim_);
}

void HNSW::build_scan_codes(std::size_t sub_dim, std::size_t num_threads) {
    Busy busy(this);
    // No change runs meanwhile (as for a snapshot): every slot is coded once.
    std::unique_lock<RwLock> wlock(write_mutex_);
    PQ4 pq(dim_, sub_dim);  // checks sub_dim
    std::vector<std::uint8_t> codes;
    std::vector<float> norms;
    {
        std::shared_lock<RwLock> lock(storage_mutex_);
        const std::size_t n = count_.load();
        std::vector<node_id> live;
        live.reserve(n);
        for (node_id id = 0; id < n; ++id)
            if (!deleted_at(id)) live.push_back(id);
        if (live.empty()) throw std::invalid_argument("scan codes need an index with live elements");
        // Vectors as stored (normalised for cosine), evenly spaced.
        const std::size_t m = std::min<std::size_t>(live.size(), 65536);
        std::vector<float> sample(m * dim_);
        for (std::size_t i = 0; i < m; ++i)
            std::memcpy(sample.data() + i * dim_, vec(live[i * live.size() / m]),
                        dim_ * sizeof(float));
        pq.fit(sample.data(), m, seed_, num_threads);
        // Every slot, deleted ones too: they may be undeleted.
        codes.assign(capacity_ * pq.code_bytes(), 0);
        norms.assign(space_ == Space::L2 ? capacity_ : 0, 0.f);
        const DistanceKernels& k = active_kernels();
        parallel_for(n, num_threads, [&](std::size_t id) {
            const float* v = vec(static_cast<node_id>(id));
            pq.encode(v, codes.data() + id * pq.code_bytes());
            if (!norms.empty()) norms[id] = k.dot(v, v, dim_);
        });
    }
    std::unique_lock<RwLock> lock(storage_mutex_);  // capacity_ cannot have moved: no change ran
    scan_pq_ = std::move(pq);
    scan_codes_ = std::move(codes);
    scan_norms_ = std::move(norms);
}

void HNSW::drop_scan_codes() {
    Busy busy(this);
    std::shared_lock<RwLock> wlock(write_mutex_);
    std::unique_lock<RwLock> lock(storage_mutex_);
    scan_pq_ = PQ4();
    std::vector<std::uint8_t>().swap(scan_codes_);
    std::vector<float>().swap(scan_norms_);
}

std::size_t HNSW::scan_code_dims() const {
    Busy busy(this);
    std::shared_lock<RwLock> lock(storage_mutex_);
    return has_scan_codes() ? scan_pq_.sub_dim() : 0;
}

int HNSW::random_level() {
    std::lock_guard<std::mutex> lock(rng_mutex_);
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    const double r = -std::log(std::max(uniform(level_rng_), 1e-300)) * level_mult_;
    return static_cast<int>(std::min(r, 200.0));
}

// ------------------------------------------------------------------ insert

void HNSW::add(const float* data, std::size_t n, const label_t* labels, std::size_t num_threads,
               bool replace_deleted, bool forbid_update_deleted, bool grow,
               const std::vector<AttrColumn>* attributes) {
    Busy busy(this);
    for (std::size_t i = 0; i < n; ++i)
        if (labels[i] >= kLabelLimit)
            throw std::invalid_argument("ids must be below 2**63, got " +
                                        std::to_string(labels[i]));
    if (attributes) attrs_.prepare(*attributes, n);
    if (n == 0) return;
    std::shared_lock<RwLock> wlock(write_mutex_);
    add_locked(data, n, labels, num_threads, replace_deleted, forbid_update_deleted, grow);
    record_attributes(attributes, labels, n);
}

// The caller holds write_mutex_ shared, so a snapshot sees a batch's vectors and
// attributes together or neither.
void HNSW::record_attributes(const std::vector<AttrColumn>* attributes, const label_t* labels,
                             std::size_t n) {
    const bool given = attributes != nullptr && !attributes->empty();
    if (!given && attrs_.empty()) return;  // nothing to record, no stale values to clear
    static const std::vector<AttrColumn> none;
    std::shared_lock<RwLock> slock(storage_mutex_);
    std::lock_guard<std::mutex> lk(label_mutex_);
    std::vector<node_id> slots;
    std::vector<label_t> owners;
    std::vector<std::size_t> rows;
    slots.reserve(n);
    owners.reserve(n);
    rows.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        auto it = label_map_.find(labels[i]);
        if (it == label_map_.end()) continue;  // deleted and replaced meanwhile by another add
        slots.push_back(it->second);
        owners.push_back(labels[i]);
        rows.push_back(i);
    }
    attrs_.assign(given ? *attributes : none, rows.data(), slots.data(), owners.data(),
                  slots.size());
}

label_t HNSW::add_auto(const float* data, std::size_t n, std::size_t num_threads,
                       bool replace_deleted, bool grow,
                       const std::vector<AttrColumn>* attributes) {
    Busy busy(this);
    if (attributes) attrs_.prepare(*attributes, n);
    std::shared_lock<RwLock> wlock(write_mutex_);
    label_t first = next_label_.load();
    do {
        if (n > kLabelLimit - first)
            throw std::overflow_error("automatic ids would pass 2**63 - 1 (the next one is " +
                                      std::to_string(first) + "); pass ids explicitly");
    } while (!next_label_.compare_exchange_weak(first, first + n));
    std::vector<label_t> labels(n);
    for (std::size_t i = 0; i < n; ++i) labels[i] = first + i;
    if (n > 0) {
        add_locked(data, n, labels.data(), num_threads, replace_deleted, false, grow);
        record_attributes(attributes, labels.data(), n);
    }
    return first;
}

void HNSW::bump_next_label(label_t next) {
    label_t cur = next_label_.load();
    while (cur < next && !next_label_.compare_exchange_weak(cur, next)) {
    }
}

// The caller holds write_mutex_ shared. Inserts under storage_mutex_ shared; when
// a new slot is needed and none is left, every thread stops, the storage grows
// under the exclusive lock, and the items not yet inserted are tried again.
void HNSW::add_locked(const float* data, std::size_t n, const label_t* labels,
                      std::size_t num_threads, bool replace_deleted, bool forbid_update_deleted,
                      bool grow) {
    std::vector<std::uint8_t> done(n, 0);
    std::vector<node_id> written(n);
    for (;;) {
        {
            std::shared_lock<RwLock> lock(storage_mutex_);
            if (trained() && !is_mapped()) {
                bool full = false;
                // New contents before and after: a kernel cache built during the
                // insert is dropped at its end.
                version_.store(next_graph_version(), std::memory_order_release);
                try {
                    parallel_for(n, num_threads, [&](std::size_t i) {
                        if (done[i]) return;
                        thread_local std::vector<float> scratch;
                        written[i] = add_one(data + i * dim_, labels[i], replace_deleted,
                                             forbid_update_deleted, grow, scratch);
                        done[i] = 1;
                    });
                } catch (const NeedCapacity&) {
                    full = true;
                }
                if (!full && quant_ == Quantization::RaBitQ)
                    complete_links(std::move(written), num_threads);
                version_.store(next_graph_version(), std::memory_order_release);
                if (!full) return;
            } else if (!grow) {
                if (!trained())
                    throw std::runtime_error("a quantised index must be trained before the first add");
                // A mapped index has no spare slots; resize() copies it into memory.
                throw std::runtime_error(
                    "index is memory-mapped without free slots; resize it first");
            }
        }
        std::unique_lock<RwLock> lock(storage_mutex_);
        if (!trained()) train_locked(data, n);
        std::size_t remaining = 0;
        for (std::size_t i = 0; i < n; ++i) remaining += done[i] == 0;
        const std::size_t needed = count_.load() + remaining;
        if (is_mapped() || needed > capacity_) {
            // Growing: up to any size; otherwise up to max_elements (add_one then
            // fails the items past it with hnswlib's message).
            const std::size_t hard = BeamPool::kMaxId - 1;
            const std::size_t limit = grow ? hard : max_elements_.load();
            if (grow && needed > hard)
                throw std::runtime_error("an index holds at most " + std::to_string(hard) +
                                         " elements");
            const std::size_t target =
                std::min(limit, std::max({needed, 2 * capacity_, std::size_t{1024}}));
            allocate(std::max(target, count_.load()));
            if (grow && capacity_ > max_elements_.load()) max_elements_.store(capacity_);
            version_.store(next_graph_version(), std::memory_order_release);
        }
    }
}

node_id HNSW::add_one(const float* vector, label_t label, bool replace_deleted,
                      bool forbid_update_deleted, bool grow, std::vector<float>& scratch) {
    const float* v = vector;
    if (space_ == Space::Cosine) {
        scratch.resize(dim_);
        normalize_into(vector, dim_, scratch.data());
        v = scratch.data();
    }
    // Serialise concurrent work on the same label (duplicates within a batch).
    std::lock_guard<std::mutex> op_lock(label_op_locks_[label % kLabelLockStripes]);

    node_id id = 0;
    enum { kNew, kExisting } kind = kNew;
    {
        std::lock_guard<std::mutex> lk(label_mutex_);
        auto it = label_map_.find(label);
        if (it != label_map_.end()) {
            id = it->second;
            kind = kExisting;
            if (deleted_at(id)) {
                if (forbid_update_deleted)
                    throw std::runtime_error(
                        "Can't use addPoint to update deleted elements if replacement of "
                        "deleted elements is enabled.");
                flags(id) &= ~kDeletedFlag;
                --num_deleted_;
            }
        } else {
            bool reused = false;
            while (replace_deleted && !deleted_slots_.empty()) {
                const node_id slot = deleted_slots_.back();
                deleted_slots_.pop_back();
                if (!deleted_at(slot)) continue;  // undeleted since it was queued
                label_map_.erase(label_at(slot));
                attrs_.reassign_slot(slot, label);  // no filter sees the old element's values
                set_label(slot, label);
                slot_reuses_.fetch_add(1);
                flags(slot) &= ~kDeletedFlag;
                --num_deleted_;
                label_map_.emplace(label, slot);
                id = slot;
                kind = kExisting;
                reused = true;
                break;
            }
            if (!reused) {
                const std::size_t c = count_.load();
                if (c >= capacity_) {
                    if (grow || c < max_elements_.load()) throw NeedCapacity{};
                    throw std::runtime_error("The number of elements exceeds the specified limit");
                }
                id = static_cast<node_id>(c);
                std::memset(node(id), 0, node_bytes_);
                set_label(id, label);
                label_map_.emplace(label, id);
                count_.store(c + 1);
            }
        }
    }
    bump_next_label(label + 1);

    if (quant_ == Quantization::SQ8) encode(v, codes_ + static_cast<std::size_t>(id) * code_stride_);
    if (has_scan_codes()) encode_scan(id, v);
    if (kind == kExisting) {
        std::memcpy(vec(id), v, dim_ * sizeof(float));
        relink_existing(id, v);
        return id;
    }
    std::memcpy(vec(id), v, dim_ * sizeof(float));
    const int level = random_level();
    levels_[id] = static_cast<std::uint8_t>(level);
    if (level > 0) {
        upper_[id].reset(new std::uint32_t[static_cast<std::size_t>(level) * (M_ + 1)]());
    }
    insert_new(id, level, v);
    return id;
}

void HNSW::insert_new(node_id id, int level, const float* v) {
    const DistanceKernels& k = active_kernels();
    std::unique_lock<std::mutex> glock(global_mutex_);
    const Entry e = entry();
    const int max_level = e.level;
    const std::int64_t ep = e.node;
    if (level <= max_level) glock.unlock();
    if (ep < 0) {
        set_entry(id, level);
        return;
    }
    node_id cur = static_cast<node_id>(ep);
    if (level < max_level) cur = greedy_descend(k, v, cur, max_level, level + 1, nullptr);
    const int top_level = std::min(level, max_level);
    const std::size_t ef = construction_ef();
    std::vector<MaxHeap> chosen(static_cast<std::size_t>(top_level) + 1);
    for (int lc = top_level; lc >= 0; --lc) {
        MaxHeap& top = chosen[static_cast<std::size_t>(lc)];
        if (num_deleted_.load() == 0) {
            // The new node is not linked yet, so it cannot appear in its own beam.
            if (lc == 0 && quant_ == Quantization::RaBitQ) {
                fast_scan_candidates(k, cur, v, ef, top);
            } else {
                thread_local BeamPool beam;
                search_beam_fp32(k, cur, v, lc, ef, beam, nullptr);
                top.resize(beam.size());
                for (std::size_t i = 0; i < beam.size(); ++i) top[i] = {beam.dist(i), beam.id(i)};
            }
        } else {
            top = search_layer(k, cur, v, lc, ef, id);
        }
        if (!top.empty()) cur = link_out(k, id, top, lc, M_);
    }
    // Only now make the node reachable, level 0 first: a concurrent search that
    // reaches it on any level then finds its level-0 links already in place.
    for (int lc = 0; lc <= top_level; ++lc)
        link_back(k, id, chosen[static_cast<std::size_t>(lc)], lc);
    if (level > max_level) set_entry(id, level);
}

// Re-connect a node whose vector changed (update of a label, or a reused slot).
// Its out-links are chosen afresh; stale in-links from elsewhere stay as extra
// edges, which costs a little search time but never correctness.
void HNSW::relink_existing(node_id id, const float* v) {
    const DistanceKernels& k = active_kernels();
    const int level = levels_[id];
    const Entry e = entry();
    const int max_level = e.level;
    const std::int64_t ep = e.node;
    if (ep < 0) return;
    node_id cur = static_cast<node_id>(ep);
    if (cur == id) {
        // Start from one of its own neighbours at the top level, if any.
        const std::uint32_t* links = links_at(id, level);
        if (link_count(links) == 0) return;
        cur = links[1];
    }
    if (level < max_level) cur = greedy_descend(k, v, cur, max_level, level + 1, nullptr);
    for (int lc = std::min(level, max_level); lc >= 0; --lc) {
        MaxHeap top = search_layer(k, cur, v, lc, construction_ef(), id);
        if (top.empty()) continue;
        cur = link_out(k, id, top, lc, M_);
        link_back(k, id, top, lc);
    }
}

// Greedy descent through the upper levels: move to the nearest neighbour until
// none is nearer, level by level. Each hop's neighbours are prefetched together,
// since their distances are all needed before the next hop is known.
template <class Dist, class Prefetch>
node_id HNSW::descend(Dist&& dist, Prefetch&& prefetch, std::size_t ahead, node_id ep,
                      int from_level, int to_level, std::uint64_t* dist_count) const {
    node_id cur = ep;
    float cur_dist = dist(cur);
    std::uint64_t computed = 1;
    for (int level = from_level; level >= to_level; --level) {
        bool changed = true;
        while (changed) {
            changed = false;
            ++search_expansions();
            const std::uint32_t* links = links_at(cur, level);
            const std::size_t n = link_count(links);
            for (std::size_t j = 1; j <= std::min(n, ahead); ++j) prefetch(links[j]);
            for (std::size_t j = 1; j <= n; ++j) {
                if (j + ahead <= n) prefetch(links[j + ahead]);
                const node_id cand = links[j];
                const float d = dist(cand);
                ++computed;
                if (d < cur_dist) {
                    cur_dist = d;
                    cur = cand;
                    changed = true;
                }
            }
        }
    }
    if (dist_count) *dist_count += computed;
    return cur;
}

node_id HNSW::greedy_descend(const DistanceKernels& k, const float* q, node_id ep, int from_level,
                             int to_level, std::uint64_t* dist_count) const {
    const std::size_t bytes = dim_ * sizeof(float);
    return descend([&](node_id id) { return distance(k, q, vec(id)); },
                   [&, pb = prefetch_bytes(bytes)](node_id id) {
                       prefetch_vector(node(id) + vec_offset_, pb);
                   },
                   ahead_for(bytes), ep, from_level, to_level, dist_count);
}


// Neighbour selection through the construction slot of the kernel set (built in:
// hnswlib's heuristic, kernels.cpp) for `node` on `level`. Leaves `candidates`
// sorted nearest first.
void HNSW::select_neighbors(const DistanceKernels& k, MaxHeap& candidates, std::size_t m,
                            node_id node, int level) const {
    std::sort(candidates.begin(), candidates.end());
    if (candidates.empty()) return;
    const std::size_t n = candidates.size();
    thread_local std::vector<node_id> ids, kept_ids;
    thread_local std::vector<float> dists, kept_dists;
    ids.resize(n);
    dists.resize(n);
    kept_ids.resize(m);
    kept_dists.resize(m);
    for (std::size_t i = 0; i < n; ++i) {
        ids[i] = candidates[i].id;
        dists[i] = candidates[i].dist;
    }
    const evx_graph_view g = graph_view(k);
    const evx_select_fn select = kernels().select;
    const std::int64_t kept = select(&g, node, static_cast<std::uint32_t>(level), ids.data(),
                                     dists.data(), n, m, kept_ids.data(), kept_dists.data());
    // A loaded kernel is checked like input: a bad answer would corrupt the graph.
    // (The checks cost up to n * m compares per call: only for loaded kernels.)
    const bool loaded = select != builtin_kernels().select;
    if (kept < 1 || static_cast<std::size_t>(kept) > m)
        throw std::runtime_error("construction kernel kept " + std::to_string(kept) +
                                 " neighbours, expected 1 to " + std::to_string(m));
    candidates.resize(static_cast<std::size_t>(kept));
    for (std::size_t i = 0; i < candidates.size(); ++i) {
        const node_id id = kept_ids[i];
        if (loaded) {
            const char* bad = nullptr;
            if (id >= g.num_nodes)
                bad = "out of range";
            else if (id == node)
                bad = "the node itself";
            else if (std::find(kept_ids.begin(), kept_ids.begin() + i, id) != kept_ids.begin() + i)
                bad = "repeated";
            if (bad)
                throw std::runtime_error("construction kernel returned an invalid neighbour (" +
                                         std::string(bad) + ": " + std::to_string(id) + " for node " +
                                         std::to_string(node) + ")");
            if (level > 0 && std::find(ids.begin(), ids.end(), id) == ids.end())
                throw std::runtime_error(
                    "construction kernel returned a node that was not a candidate above level 0");
        }
        candidates[i] = {kept_dists[i], id};
    }
}

node_id HNSW::link_out(const DistanceKernels& k, node_id id, MaxHeap& candidates, int level,
                       std::size_t m, bool same_vector) {
    select_neighbors(k, candidates, m, id, level);
    const bool coded = level == 0 && fs_blocks_ != nullptr;
    thread_local std::vector<std::uint32_t> old_links;
    thread_local std::vector<std::uint8_t> old_block;
    std::lock_guard<std::mutex> lock(link_locks_[id]);
    std::uint32_t* links = links_at(id, level);
    if (coded && same_vector) {
        old_links.assign(links, links + 1 + link_count(links));
        old_block.assign(fs_block(id), fs_block(id) + fs_block_bytes_);
    }
    std::size_t n = 0;
    for (const Candidate& c : candidates) links[1 + n++] = c.id;
    set_link_count(links, n);
    if (coded && same_vector)
        refresh_block(id, old_links.data(), old_block.data());
    else if (coded)
        refresh_block(id);
    return candidates.front().id;
}

void HNSW::link_back(const DistanceKernels& k, node_id id, const MaxHeap& neighbors, int level) {
    const std::size_t max_links = level == 0 ? M0_ : M_;
    for (const Candidate& c : neighbors) {
        const node_id other = c.id;
        std::lock_guard<std::mutex> lock(link_locks_[other]);
        std::uint32_t* links = links_at(other, level);
        const std::size_t n = link_count(links);
        // Already linked: an update re-links a known node, and a construction
        // kernel may have added the node to this list while it was being inserted
        // (one that widens its pool reaches nodes linked moments ago).
        if (std::find(links + 1, links + 1 + n, id) != links + 1 + n) continue;
        if (n < max_links) {
            links[1 + n] = id;
            if (level == 0 && fs_blocks_ != nullptr) place_in_block(other, n, id);
            set_link_count(links, n + 1);
            continue;
        }
        // Full: re-select among the old links plus the new node.
        thread_local std::vector<std::uint32_t> old_links;
        thread_local std::vector<std::uint8_t> old_block;
        if (level == 0 && fs_blocks_ != nullptr) {
            old_links.assign(links, links + 1 + n);
            old_block.assign(fs_block(other), fs_block(other) + fs_block_bytes_);
        }
        MaxHeap pool;
        pool.reserve(n + 1);
        pool.push_back({c.dist, id});
        for (std::size_t j = 1; j <= n; ++j)
            pool.push_back({distance(k, vec(other), vec(links[j])), links[j]});
        select_neighbors(k, pool, max_links, other, level);
        std::size_t m = 0;
        for (const Candidate& p : pool) links[1 + m++] = p.id;
        set_link_count(links, m);
        if (level == 0 && fs_blocks_ != nullptr)
            refresh_block(other, old_links.data(), old_block.data());
    }
}

void HNSW::place_in_block(node_id id, std::size_t j, node_id neighbor, const float* rotated) {
    thread_local std::vector<float> residual;
    thread_local std::vector<std::uint8_t> code;
    code.resize(pq_.code_bytes());
    const float* x = vec(id);
    const float* y = vec(neighbor);
    if (quant_ == Quantization::RaBitQ) {
        thread_local std::vector<float> node_rotated;
        if (rotated == nullptr) rotated = rotated_node(id, node_rotated);
        const EdgeFactors f = coder_.encode(rotated, y, code.data());
        fs_extra(id)[j] = f.scale;
        fs_extra(id)[M0_ + j] = f.offset;
    } else {
        residual.resize(dim_);
        for (std::size_t t = 0; t < dim_; ++t) residual[t] = y[t] - x[t];
        pq_.encode(residual.data(), code.data());
        if (space_ == Space::L2) {
            const DistanceKernels& k = active_kernels();
            fs_extra(id)[j] = k.dot(y, y, dim_) - k.dot(x, x, dim_);
        }
    }
    pq_.place(fs_block(id) + (j / fs_group_) * pq_.group_bytes(fs_group_), j % fs_group_,
              code.data(), fs_group_);
}

void HNSW::refresh_block(node_id id, const std::uint32_t* old, const std::uint8_t* old_block) {
    const std::uint32_t* links = links0(id);
    const std::size_t n = link_count(links), old_n = old ? link_count(old) : 0;
    thread_local std::vector<std::uint8_t> code;
    thread_local std::vector<float> buf;
    const float* rotated = nullptr;  // the node, rotated once for its new edges
    code.resize(pq_.code_bytes());
    const std::size_t G = fs_group_, group = pq_.group_bytes(G);
    for (std::size_t j = 0; j < n; ++j) {
        std::size_t i = old_n;
        if (old != nullptr)
            i = static_cast<std::size_t>(std::find(old + 1, old + 1 + old_n, links[1 + j]) - (old + 1));
        if (i == old_n) {
            if (quant_ == Quantization::RaBitQ && rotated == nullptr)
                rotated = rotated_node(id, buf);
            place_in_block(id, j, links[1 + j], rotated);
            continue;
        }
        // A kept edge: move its code and term from where it was.
        pq_.take(old_block + (i / G) * group, i % G, code.data(), G);
        pq_.place(fs_block(id) + (j / G) * group, j % G, code.data(), G);
        const float* old_extra = reinterpret_cast<const float*>(old_block + fs_extra_offset_);
        for (std::size_t e = 0; e < extras_per_edge(); ++e)
            fs_extra(id)[e * M0_ + j] = old_extra[e * M0_ + i];
    }
}

// Level-0 completion for the RaBitQ layout (SymphonyQG's graph refinement). A
// node's fast scan scores 32 neighbour codes in the time it scores 20, while
// HNSW's selection leaves ~20 links per node; the free slots are filled with
// the node's nearest two-hop neighbours whose direction from the node is not
// already served: a candidate c is occluded by a kept neighbour m nearer than it
// when the angle m-node-c has cos > t, and t is the smallest threshold (binary
// search over [0.5, 1]) that still fills the list. Run at the end of each add
// on the slots written and on their neighbours (whose lists the insertions
// re-selected); later insertions shrink a full list back by HNSW's selection,
// and the next add call completes it again. Measured on MiniLM-100k: the same
// recall at about 0.8x the hops with RaBitQ codes; with PQ4's coarser estimates
// within noise for a third more build time, so PQ4 graphs are left as built
// (bench/RESULTS.md, "RaBitQ edge codes").
void HNSW::complete_links(std::vector<node_id> changed, std::size_t num_threads) {
    const std::size_t n = changed.size();
    for (std::size_t i = 0; i < n; ++i) {
        // Another add may be changing the list: read it under its lock.
        std::lock_guard<std::mutex> lock(link_locks_[changed[i]]);
        const std::uint32_t* links = links0(changed[i]);
        changed.insert(changed.end(), links + 1, links + 1 + link_count(links));
    }
    std::sort(changed.begin(), changed.end());
    changed.erase(std::unique(changed.begin(), changed.end()), changed.end());
    const DistanceKernels& k = active_kernels();
    parallel_for(changed.size(), num_threads, [&](std::size_t i) { complete_node(k, changed[i]); });
}

// SymphonyQG builds its graph in rounds; this is one round over an HNSW graph's
// level 0 (refine_node), then the RaBitQ layout's completion. Concurrent adds
// and searches proceed as beside an add.
void HNSW::refine_graph(std::size_t ef, std::size_t num_threads, bool steered) {
    if (steered && quant_ != Quantization::RaBitQ)
        throw std::invalid_argument(
            "steered refinement needs quantization 'rabitq' (edge codes to steer by)");
    // A beam of 100 measures enough of a node's surroundings: 200 gave the same
    // recall on MiniLM-100k and video-SIFT-200k (0.002 more on GloVe-200k) for
    // ~1.4-1.6x the time (bench/RESULTS.md, "refine_graph's default beam").
    // A steered walk measures only what it expands: 300 there (on MiniLM-100k
    // 200 gave the exact beam's graph at 0.6x the time, 300 a better one at 0.7x;
    // bench/RESULTS.md, "Refinement steered by the edge codes").
    if (ef == 0) {
        ef = std::min<std::size_t>(ef_construction_, kDefaultRefineEf);
        if (steered) ef *= kSteeredRefineFactor;
    }
    std::shared_lock<RwLock> wlock(write_mutex_);
    std::shared_lock<RwLock> lock(storage_mutex_);
    if (is_mapped())
        throw std::runtime_error(
            "refine_graph needs the index in memory: it is memory-mapped (resize() copies it)");
    const std::size_t n = count_.load();
    if (n < 2) return;
    ef = std::min(ef, n);  // a wider beam holds no more (and would be allocated)
    version_.store(next_graph_version(), std::memory_order_release);
    const DistanceKernels& k = active_kernels();
    const std::vector<node_id> order = breadth_first_order(n);
    parallel_for(n, num_threads, [&](std::size_t i) { refine_node(k, order[i], ef, steered); });
    if (quant_ == Quantization::RaBitQ)
        parallel_for(n, num_threads, [&](std::size_t i) { complete_node(k, static_cast<node_id>(i)); });
    version_.store(next_graph_version(), std::memory_order_release);
}

// Level 0's nodes in breadth-first order from the entry point (then any it does
// not reach): nodes taken one after another share most of their surroundings, so
// a pass over the graph in this order finds much of what it reads in cache.
std::vector<node_id> HNSW::breadth_first_order(std::size_t n) const {
    std::vector<node_id> order;
    order.reserve(n);
    std::vector<std::uint8_t> seen(n, 0);
    const Entry e = entry();
    std::size_t next_root = 0;
    node_id root = e.node >= 0 ? static_cast<node_id>(e.node) : 0;
    while (order.size() < n) {
        if (!seen[root]) {
            seen[root] = 1;
            order.push_back(root);
        }
        for (std::size_t head = order.size() - 1; head < order.size(); ++head) {
            std::lock_guard<std::mutex> lock(link_locks_[order[head]]);
            const std::uint32_t* links = links0(order[head]);
            for (std::size_t j = 1, m = link_count(links); j <= m; ++j) {
                const node_id c = links[j];
                if (c < n && !seen[c]) {
                    seen[c] = 1;
                    order.push_back(c);
                }
            }
        }
        while (next_root < n && seen[next_root]) ++next_root;
        root = static_cast<node_id>(next_root);
    }
    return order;
}

void HNSW::complete_node(const DistanceKernels& k, node_id id) {
    // At most this many two-hop candidates, nearest first: completion takes
    // nearly all of its edges from the first few dozen.
    constexpr std::size_t kPool = 96;
    constexpr int kSteps = 5;
    const std::size_t cap = M0_;
    thread_local std::vector<std::uint32_t> own, pool_ids, other;
    thread_local std::vector<Candidate> kept, pool, chosen, best;
    thread_local std::vector<float> pair;  // lazily measured d(member, candidate)
    {
        std::lock_guard<std::mutex> lock(link_locks_[id]);
        const std::uint32_t* l = links0(id);
        own.assign(l, l + 1 + link_count(l));
    }
    const std::size_t n = own.size() - 1;
    if (n == 0 || n >= cap || deleted_at(id)) return;
    pool_ids.clear();
    for (std::size_t j = 1; j <= n; ++j) {
        {
            std::lock_guard<std::mutex> lock(link_locks_[own[j]]);
            const std::uint32_t* l = links0(own[j]);
            other.assign(l + 1, l + 1 + link_count(l));
        }
        pool_ids.insert(pool_ids.end(), other.begin(), other.end());
    }
    std::sort(pool_ids.begin(), pool_ids.end());
    pool_ids.erase(std::unique(pool_ids.begin(), pool_ids.end()), pool_ids.end());
    const float* x = vec(id);
    kept.clear();
    for (std::size_t j = 1; j <= n; ++j) kept.push_back({k.l2sq(x, vec(own[j]), dim_), own[j]});
    const bool any_deleted = num_deleted_.load() != 0;  // free slots go to live nodes
    pool.clear();
    const std::size_t vbytes = prefetch_bytes(dim_ * sizeof(float));
    constexpr std::size_t kAhead = 3;  // random reads: keep a few vectors in flight
    for (std::size_t i = 0; i < std::min(kAhead, pool_ids.size()); ++i)
        prefetch_vector(reinterpret_cast<const char*>(vec(pool_ids[i])), vbytes);
    for (std::size_t i = 0; i < pool_ids.size(); ++i) {
        if (i + kAhead < pool_ids.size())
            prefetch_vector(reinterpret_cast<const char*>(vec(pool_ids[i + kAhead])), vbytes);
        const std::uint32_t c = pool_ids[i];
        if (c != id && std::find(own.begin() + 1, own.end(), c) == own.end() &&
            !(any_deleted && deleted_at(c)))
            pool.push_back({k.l2sq(x, vec(c), dim_), c});
    }
    if (pool.empty()) return;
    const std::size_t np = std::min(pool.size(), kPool);
    std::partial_sort(pool.begin(), pool.begin() + static_cast<std::ptrdiff_t>(np), pool.end());
    pool.resize(np);
    std::sort(kept.begin(), kept.end());
    // Members are the kept links (0..n-1) then pool entries (n + p).
    pair.assign((n + np) * np, -1.f);
    auto between = [&](std::size_t member, std::size_t p) {
        float& d = pair[member * np + p];
        if (d < 0.f) {
            const node_id a = member < n ? kept[member].id : pool[member - n].id;
            d = k.l2sq(vec(a), vec(pool[p].id), dim_);
        }
        return d;
    };
    thread_local std::vector<std::size_t> members;
    auto fill = [&](float t, std::vector<Candidate>& out) {
        out.assign(kept.begin(), kept.end());
        members.resize(n);
        for (std::size_t j = 0; j < n; ++j) members[j] = j;
        for (std::size_t p = 0; p < np && out.size() < cap; ++p) {
            const float dc = pool[p].dist;
            bool occluded = false;
            for (std::size_t j = 0; j < out.size() && !occluded; ++j) {
                const float dm = out[j].dist;
                if (dm > dc) break;
                const float denom = 2.f * std::sqrt(dm * dc);
                // Coincident points occlude nothing (no direction to compare).
                if (denom > 0.f) occluded = (dc + dm - between(members[j], p)) / denom > t;
            }
            if (occluded) continue;
            const auto at = static_cast<std::size_t>(
                std::upper_bound(out.begin(), out.end(), pool[p]) - out.begin());
            out.insert(out.begin() + static_cast<std::ptrdiff_t>(at), pool[p]);
            members.insert(members.begin() + static_cast<std::ptrdiff_t>(at), n + p);
        }
    };
    float lo = 0.5f, hi = 1.0f;
    for (int step = 0; step < kSteps; ++step) {
        const float mid = 0.5f * (lo + hi);
        fill(mid, chosen);
        (chosen.size() < cap ? lo : hi) = mid;
    }
    fill(hi, best);
    if (best.size() <= n) return;
    std::lock_guard<std::mutex> lock(link_locks_[id]);
    std::uint32_t* l = links0(id);
    // Changed since the snapshot (a concurrent add): leave it to that add.
    if (link_count(l) != n || !std::equal(own.begin() + 1, own.end(), l + 1)) return;
    thread_local std::vector<float> buf;
    const float* rotated = rotated_node(id, buf);
    std::size_t m = n;
    for (const Candidate& c : best) {
        if (std::find(own.begin() + 1, own.end(), c.id) != own.end()) continue;
        l[1 + m] = c.id;
        place_in_block(id, m, c.id, rotated);
        ++m;
    }
    set_link_count(l, m);
}

// ------------------------------------------------------------------ search

// Beam search on one level, no filter (see beam_search in beam.h).
template <class Dist, class Prefetch>
void HNSW::search_beam(Dist&& dist, Prefetch&& prefetch, std::size_t ahead, node_id ep, int level,
                       std::size_t ef, BeamPool& beam, std::uint64_t* dist_count) const {
    auto visited = visited_pool_.acquire();
    node_id todo[kMaxLinks];
    const std::uint64_t computed =
        beam_search([&](node_id id) { return links_at(id, level); }, dist, prefetch, ahead,
                    ((level == 0 ? M0_ : M_) + 1) * sizeof(std::uint32_t), ep, ef, *visited, beam,
                    todo, &search_expansions());
    if (dist_count) *dist_count += computed;
}

void HNSW::search_beam_fp32(const DistanceKernels& k, node_id ep, const float* q, int level,
                            std::size_t ef, BeamPool& beam, std::uint64_t* dist_count) const {
    const std::size_t bytes = dim_ * sizeof(float);
    search_beam([&](node_id id) { return distance(k, q, vec(id)); },
                [&, pb = prefetch_bytes(bytes)](node_id id) {
                    prefetch_vector(node(id) + vec_offset_, pb);
                },
                ahead_for(bytes), ep, level, ef, beam, dist_count);
}

void HNSW::set_scan_bits(std::size_t bits) {
    if (bits != 0 && bits != 8 && bits != 32)
        throw std::invalid_argument("scan_bits must be 0, 8 or 32, got " + std::to_string(bits));
    scan_bits_.store(bits);
}

void HNSW::set_interleave(std::size_t group) {
    if (group > kMaxInterleave)
        throw std::invalid_argument("interleave must be at most " +
                                    std::to_string(kMaxInterleave));
    interleave_.store(group);
}

std::size_t HNSW::interleave_group(std::size_t nq, std::size_t threads) const {
    const std::size_t want = interleave_.load(std::memory_order_relaxed);
    // Measured (bench/RESULTS.md, "Interleaved batch search"): two queries gain
    // up to 1.2x where a code is one or two cache lines (GloVe-50, SIFT-128); a
    // 384-d code's distance is long enough to cover its own fetches (no gain).
    // Fast-scan graphs: groups of 2-4 gave 0.95-1.00x on MiniLM-100k, GloVe-200k
    // and video-SIFT-200k (RaBitQ, one and two threads): off unless asked for.
    const std::size_t group = want                ? want
                              : fast_scan_graph() ? 1
                              : code_stride_ <= 128 ? 2
                                                    : 1;
    // Every thread gets whole groups; a thread with one query has nothing to
    // interleave it with.
    return std::max<std::size_t>(1, std::min(group, nq / std::max<std::size_t>(threads, 1)));
}

void HNSW::search_sq8(const DistanceKernels& k, node_id entry, int top_level,
                      const float* const* qs, std::size_t nq, std::size_t kk, std::size_t ef,
                      label_t* out_labels, float* out_distances,
                      std::uint64_t* dist_count) const {
    // Each query in code units: distances on codes then cost one FMA per dimension.
    const std::size_t n = padded_dim_;
    thread_local std::vector<float> units;
    units.assign(nq * n, 0.f);
    float bias[kMaxInterleave] = {};
    for (std::size_t g = 0; g < nq; ++g) {
        const float* q = qs[g];
        float* a = units.data() + g * n;
        if (space_ == Space::L2) {
            for (std::size_t d = 0; d < dim_; ++d) a[d] = (q[d] - qmin_[d]) / qscale_[d];
        } else {
            for (std::size_t d = 0; d < dim_; ++d) {
                a[d] = q[d] * qscale_[d];
                bias[g] += q[d] * qmin_[d];
            }
        }
    }
    const float* w = qweight_.data();
    const std::size_t code_bytes = prefetch_bytes(code_stride_);
    auto prefetch = [&](node_id id) {
        prefetch_vector(reinterpret_cast<const char*>(code(id)), code_bytes);
    };
    auto links = [&](node_id id) { return links0(id); };
    thread_local std::vector<BeamPool> beams;
    thread_local std::vector<node_id> todo;
    if (beams.size() < nq) beams.resize(nq);
    todo.resize(nq * (M0_ + 1));
    const std::size_t ahead = ahead_for(code_stride_);
    const std::size_t link_bytes = (M0_ + 1) * sizeof(std::uint32_t);
    auto run = [&](auto&& measure) {
        using Dist = decltype(measure(std::size_t{0}));
        using Walk = BeamWalk<decltype(links), Dist, decltype(prefetch), VisitedList>;
        // In place (lambdas and references have no default state), no allocation.
        std::optional<Dist> dists[kMaxInterleave];
        std::optional<VisitedPool::Handle> visited[kMaxInterleave];
        std::optional<Walk> walks[kMaxInterleave];
        std::uint64_t* hops = &search_expansions();
        for (std::size_t g = 0; g < nq; ++g) {
            dists[g].emplace(measure(g));
            visited[g].emplace(visited_pool_.acquire());
            const node_id ep =
                descend(*dists[g], prefetch, ahead, entry, top_level, 1, dist_count);
            walks[g].emplace(Walk{links, *dists[g], prefetch, ahead, link_bytes, **visited[g],
                                  beams[g], todo.data() + g * (M0_ + 1), hops});
            walks[g]->start(ep, ef);
        }
        run_interleaved([&](std::size_t g) -> Walk& { return *walks[g]; }, nq);
        for (std::size_t g = 0; g < nq; ++g)
            if (dist_count) *dist_count += walks[g]->computed;
    };
    if (space_ == Space::L2) {
        run([&](std::size_t g) {
            return [&k, w, n, this, a = units.data() + g * n](node_id id) {
                return k.sq8_l2(a, w, code(id), n);
            };
        });
    } else {
        run([&](std::size_t g) {
            return [&k, w, n, this, a = units.data() + g * n, b = bias[g]](node_id id) {
                return 1.0f - (b + k.sq8_dot(a, w, code(id), n));
            };
        });
    }
    for (std::size_t g = 0; g < nq; ++g) {
        label_t* labels = out_labels + g * kk;
        float* distances = out_distances + g * kk;
        const std::size_t found = rerank(k, qs[g], beams[g], kk, labels, distances);
        if (dist_count) *dist_count += beams[g].size();
        finish_steered(k, entry, qs[g], found, kk, ef, labels, distances);
    }
}

// Where a search steered by codes (sq8, fast scan) ends with `found` answers.
// The codes only steer: should their estimates strand it short of min(kk, count)
// (a file's forged ranges or factors can make every one overflow), the float32
// search of level 0 from ep answers instead; what is still missing is padded.
void HNSW::finish_steered(const DistanceKernels& k, node_id ep, const float* q, std::size_t found,
                          std::size_t kk, std::size_t ef, label_t* labels,
                          float* distances) const {
    if (found < std::min(kk, count_.load())) {
        MaxHeap top = search_layer(k, ep, q, 0, std::max(ef, kk), std::numeric_limits<node_id>::max());
        found = write_nearest(top, kk, labels, distances);
    }
    pad_answers(found, kk, labels, distances);
}

// The kk nearest of a beam by exact float32 distance, into out (nearest first).
std::size_t HNSW::rerank(const DistanceKernels& k, const float* q, const BeamPool& beam,
                         std::size_t kk, label_t* out_labels, float* out_distances) const {
    const std::size_t m = beam.size();
    thread_local std::vector<Candidate> exact;
    exact.resize(m);
    const std::size_t bytes = dim_ * sizeof(float);
    for (std::size_t i = 0; i < std::min<std::size_t>(m, 8); ++i)
        prefetch_vector(node(beam.id(i)) + vec_offset_, bytes);
    for (std::size_t i = 0; i < m; ++i) {
        if (i + 8 < m) prefetch_vector(node(beam.id(i + 8)) + vec_offset_, bytes);
        exact[i] = {distance(k, q, vec(beam.id(i))), beam.id(i)};
    }
    const std::size_t found = std::min(kk, m);
    std::partial_sort(exact.begin(), exact.begin() + static_cast<std::ptrdiff_t>(found),
                      exact.end());
    for (std::size_t i = 0; i < found; ++i) {
        out_labels[i] = label_at(exact[i].id);
        out_distances[i] = exact[i].dist;
    }
    return found;
}

// A fast-scan search's per-thread scratch, reached through one call: a
// thread_local used in place costs a __tls_get_addr call at each use in a
// shared library (GCC repeats it inside loops), ~8% of a search's time. One set
// per query of an interleaved group.
struct HNSW::FastScanScratch {
    EdgeCoder::Query edge_query;
    PQ4::Tables pq_tables;
    BeamPool beam;
    MaxHeap top;
};

__attribute__((noinline)) HNSW::FastScanScratch& HNSW::fast_scan_scratch(std::size_t slot) {
    thread_local FastScanScratch scratch[kMaxInterleave];
    return scratch[slot];
}

// PQ4 fast scan: the beam is ordered by estimated distances, and expanding a
// node costs one contiguous read (its links and vector, and its block with its
// neighbours' codes): the node gets its exact distance (a result candidate),
// its neighbours are scored 32 at a time by table look-ups, and those the
// estimate puts inside the beam enter it. The answer is the k nearest expanded
// nodes by exact distance.
//
// As in SymphonyQG, an expanded node keeps its estimate in the beam, and a node
// counts as visited when it is expanded, not when it enters: a node met again
// from a nearer parent enters again with that parent's (better) estimate, and
// the copy is skipped when popped. Moving expanded nodes to their exact
// distance instead compared exact distances with estimates and took ~1.6x the
// hops for the same recall (MiniLM-100k, bench/RESULTS.md).
//
// Copies take beam slots, so the search may expand fewer than ef distinct
// nodes: 98% of searches for k = ef = 100 on MiniLM-100k found fewer than 100.
// With Revisit::Improve, a node met again moves its one entry to the better
// estimate instead, so at least min(ef, reachable) nodes are expanded;
// search_pq4 runs that when the first pass comes back short. (Always: 10% fewer
// queries per second at recall 0.95 on MiniLM-100k; the copies narrow the beam
// where it is cheapest to.) Revisit::Keep keeps a node's first estimate: no
// copies and no search of the beam for the entry (which costs a pass over the
// beam per meeting; the refinement's wide beams spent much of their time there).
//
// A walk is a search in steps (expand: take the next nodes and request their
// data; score: measure them and score their edges), so that several queries'
// walks can run round-robin on one thread (run_interleaved in beam.h) when
// set_interleave asks for it: the node a step puts on top of its beam is known
// only at the step's end, and another query's step would cover its fetch. On
// machine B it did not pay (0.95-1.00x; see interleave_group): a hop here is
// mostly computation once the node's first lines arrive.
class HNSW::FastScanWalk {
public:
    FastScanWalk(const HNSW& h, const DistanceKernels& k, FastScanScratch& s, const float* q,
                 std::size_t kk, Revisit revisit)
        : h_(h),
          k_(k),
          s_(s),
          visited_handle_(h.visited_pool_.acquire()),
          visited_(*visited_handle_),
          q_(q),
          kk_(kk),
          revisit_(revisit),
          l2_(h.space_ == Space::L2),
          rabitq_(h.quant_ == Quantization::RaBitQ) {
        if (rabitq_)
            h.coder_.prepare(q, s.edge_query);
        else
            h.pq_.tables(q, l2_, s.pq_tables);
        const PQ4::Tables& tables = rabitq_ ? s.edge_query.tables : s.pq_tables;
        lut_ = tables.lut.data();
        scale_ = tables.scale;
        bias_ = tables.bias;
        // RaBitQ: an edge's estimate is dist + offset + its scale * (kq + mq * t).
        kq_ = rabitq_ ? s.edge_query.sum + 2.f * bias_ : 0.f;
        mq_ = 2.f * scale_;
        nsub_ = h.pq_.subspaces();
        group_ = h.fs_group_;
        group_bytes_ = h.pq_.group_bytes(group_);
        fastscan_ = group_ == PQ4::kGroup ? k_.fastscan32 : k_.fastscan16;
        node_bytes_ = h.prefetch_bytes(h.vec_offset_ + h.dim_ * sizeof(float));
        // Whole blocks: reading the link count to size the fetch would wait on memory.
        block_bytes_ = h.prefetch_bytes(h.fs_block_bytes_);
        const std::size_t ahead = h.tune_ahead_.load(std::memory_order_relaxed);
        lookahead_ = ahead ? ahead : 3;
    }

    void start(node_id ep, std::size_t ef) {
        s_.beam.reset(ef);
        s_.top.clear();
        ep_ = ep;
        ep_dist_ = h_.distance(k_, q_, h_.vec(ep));
        s_.beam.insert(ep_dist_, ep);
        ++computed;
    }

    // Each node the walk expands is also appended to `pool`, once, with its
    // exact distance: an insert's candidate links.
    void measure_into(MaxHeap* pool) { measured_ = pool; }

    // Takes up to two nodes: the second's data arrives while the first is
    // scored, and a node the first one's neighbours put on top is fetched while
    // the second is scored. The next few beam entries are requested too: the
    // beam's order changes little per hop, so this overlaps several hops' misses.
    bool expand() {
        nb_ = 0;
        while (nb_ < 2 && s_.beam.has_next()) {
            const node_id c = s_.beam.pop();
            if (visited_.try_visit(c)) batch_[nb_++] = c;  // else a copy
        }
        if (nb_ == 0) return false;
        expansions += nb_;
        for (std::size_t b = 0; b < nb_; ++b) prefetch(batch_[b]);
        s_.beam.for_next(lookahead_, [this](node_id id) { prefetch(id); });
        return true;
    }

    void score() {
        BeamPool& beam = s_.beam;
        MaxHeap& top = s_.top;
        float dist[2];
        for (std::size_t b = 0; b < nb_; ++b) {
            const node_id c = batch_[b];
            if (c == ep_) {  // measured by start
                dist[b] = ep_dist_;
            } else {
                dist[b] = h_.distance(k_, q_, h_.vec(c));
                ++computed;
            }
            if (measured_) measured_->push_back({dist[b], c});
            if (top.size() < kk_ || dist[b] < top.front().dist) {
                top.push_back({dist[b], c});
                std::push_heap(top.begin(), top.end());
                if (top.size() > kk_) {
                    std::pop_heap(top.begin(), top.end());
                    top.pop_back();
                }
            }
        }
        alignas(64) std::uint16_t est[PQ4::kGroup];
        alignas(64) float guess[PQ4::kGroup] = {};  // lanes past m are read, masked
        const std::size_t m0 = h_.M0_;
        for (std::size_t b = 0; b < nb_; ++b) {
            const node_id c = batch_[b];
            const std::uint32_t* links = h_.links0(c);
            const std::size_t n = link_count(links);
            const std::uint8_t* block = h_.fs_block(c);
            const float* extra = l2_ || rabitq_ ? h_.fs_extra(c) : nullptr;
            const float base = dist[b] + bias_;  // edges' estimates start at the node's distance
            for (std::size_t g = 0; g * group_ < n; ++g) {
                fastscan_(block + g * group_bytes_, lut_, nsub_, est);
                const std::size_t first = g * group_;
                const std::size_t m = std::min(group_, n - first);
                // All estimates first, in one loop the compiler vectorises; then
                // only those inside the beam's bound touch the beam.
                if (rabitq_) {
                    const float* scales = extra + first;
                    const float* offsets = extra + m0 + first;
                    for (std::size_t j = 0; j < m; ++j)
                        guess[j] = dist[b] + offsets[j] +
                                   scales[j] * (kq_ + mq_ * static_cast<float>(est[j]));
                } else if (l2_) {
                    const float* norms = extra + first;
                    for (std::size_t j = 0; j < m; ++j)
                        guess[j] = base + scale_ * static_cast<float>(est[j]) + norms[j];
                } else {
                    for (std::size_t j = 0; j < m; ++j)
                        guess[j] = base + scale_ * static_cast<float>(est[j]);
                }
                const std::uint32_t* to = links + 1 + first;
                // Most edges miss the bound: a mask of those inside it (read while
                // the bound only falls) spares a mispredicted branch per edge.
                // Only those read their visited tags, so the tags are not
                // prefetched: requesting all of a node's (as the exact beam
                // does) cost 7-10% of video-SIFT-200k's queries per second, and
                // gained nothing on MiniLM-100k (bench/RESULTS.md).
                std::uint32_t inside = lanes_below(guess, std::min<std::size_t>(m, 16), beam.bound());
                if (m > 16) inside |= lanes_below(guess + 16, m - 16, beam.bound()) << 16;
                for (; inside != 0; inside &= inside - 1) {
                    const std::size_t j = static_cast<std::size_t>(__builtin_ctz(inside));
                    if (!(guess[j] < beam.bound()) || visited_.visited(to[j])) continue;
                    const bool queued = revisit_ != Revisit::Copy && visited_.queued(to[j]);
                    if (queued && revisit_ == Revisit::Keep) continue;
                    if (!(queued && beam.improve(guess[j], to[j]))) {
                        if (!beam.insert(guess[j], to[j])) continue;
                        if (revisit_ != Revisit::Copy) visited_.mark_queued(to[j]);
                    }
                    if (beam.peek() == to[j]) prefetch(to[j]);
                }
            }
        }
    }

    std::size_t finish(label_t* out_labels, float* out_distances) {
        return h_.write_nearest(s_.top, kk_, out_labels, out_distances);
    }

    std::uint64_t computed = 0, expansions = 0;

private:
    void prefetch(node_id id) const {
        prefetch_vector(h_.node(id), node_bytes_);
        prefetch_vector(reinterpret_cast<const char*>(h_.fs_block(id)), block_bytes_);
    }

    const HNSW& h_;
    const DistanceKernels& k_;
    FastScanScratch& s_;
    VisitedPool::Handle visited_handle_;
    VisitedList& visited_;
    const float* q_;
    std::size_t kk_;
    Revisit revisit_;
    bool l2_, rabitq_;
    const std::uint8_t* lut_ = nullptr;
    float scale_ = 0.f, bias_ = 0.f, kq_ = 0.f, mq_ = 0.f;
    std::size_t nsub_ = 0, group_ = PQ4::kGroup, group_bytes_ = 0, node_bytes_ = 0,
                block_bytes_ = 0, lookahead_ = 3;
    FastScanKernel fastscan_ = nullptr;  // fastscan32 or fastscan16, by the blocks' groups
    node_id batch_[2] = {0, 0};
    std::size_t nb_ = 0;
    node_id ep_ = 0;
    float ep_dist_ = 0.f;
    MaxHeap* measured_ = nullptr;
};

// The level where the descent of a fast-scan search leaves the upper levels:
// the lowest expected to hold at most ~256 nodes (count / M^level). Those stay
// in cache from query to query, while a greedy step below costs a cache miss per
// neighbour, and the level-0 beam gets from there in a few hops of one block read
// each. Descending to level 1 instead (MiniLM-100k, GloVe-200k, video-SIFT-200k,
// RaBitQ) was 14%, 3% and 7% slower at recall 0.95; not descending at all lost
// 16% on SIFT's clustered frames.
int HNSW::fast_scan_entry_level(int top_level) const {
    constexpr double kCachedLevelNodes = 256.0;
    int stop = 1;
    for (double nodes = static_cast<double>(count_.load(std::memory_order_relaxed)) / M_;
         nodes > kCachedLevelNodes && stop < top_level; nodes /= static_cast<double>(M_))
        ++stop;
    return stop;
}

// nq (at most kMaxInterleave) queries on this thread, their walks interleaved;
// each answer is what the query alone would get. A beam as wide as the index
// improves re-met nodes from the start (it then expands every reachable node:
// exact); a query whose first pass comes back short runs again that way.
void HNSW::search_pq4(const DistanceKernels& k, node_id entry, int top_level,
                      const float* const* qs, std::size_t nq, std::size_t kk, std::size_t ef,
                      label_t* out_labels, float* out_distances,
                      std::uint64_t* dist_count) const {
    const std::size_t count = count_.load();
    const bool wide = ef >= count;
    const int stop = fast_scan_entry_level(top_level);
    std::optional<FastScanWalk> walks[kMaxInterleave];
    node_id eps[kMaxInterleave];
    for (std::size_t g = 0; g < nq; ++g) {
        eps[g] = greedy_descend(k, qs[g], entry, top_level, stop, dist_count);
        walks[g].emplace(*this, k, fast_scan_scratch(g), qs[g], kk,
                         wide ? Revisit::Improve : Revisit::Copy);
        walks[g]->start(eps[g], ef);
    }
    run_interleaved([&](std::size_t g) -> FastScanWalk& { return *walks[g]; }, nq);
    std::uint64_t computed = 0, expansions = 0;
    for (std::size_t g = 0; g < nq; ++g) {
        label_t* labels = out_labels + g * kk;
        float* distances = out_distances + g * kk;
        std::size_t found = walks[g]->finish(labels, distances);
        computed += walks[g]->computed;
        expansions += walks[g]->expansions;
        if (found < std::min(kk, count) && !wide) {
            walks[g].reset();  // its visited list and scratch go back first
            FastScanWalk again(*this, k, fast_scan_scratch(g), qs[g], kk, Revisit::Improve);
            again.start(eps[g], ef);
            while (again.expand()) again.score();
            found = again.finish(labels, distances);
            computed += again.computed;
            expansions += again.expansions;
        }
        finish_steered(k, eps[g], qs[g], found, kk, ef, labels, distances);
    }
    search_expansions() += expansions;
    if (dist_count) *dist_count += computed;
}

// An insert's level-0 search over the RaBitQ layout (SymphonyQG's build
// search): the beam is steered by the edge codes, so only the nodes it expands
// are measured exactly, each one read of its row, and those are the
// candidates (appended to `pool`). At 384 dimensions it halves an add's time
// against measuring every node the beam scores, for graphs as good (MiniLM-100k;
// bench/RESULTS.md, "Inserts steered by the edge codes"). PQ4 graphs (coarser
// estimates; not measured this way) keep the exact search.
void HNSW::fast_scan_candidates(const DistanceKernels& k, node_id ep, const float* q,
                                std::size_t ef, MaxHeap& pool, Revisit revisit) const {
    FastScanWalk walk(*this, k, fast_scan_scratch(0), q, 1, revisit);
    walk.measure_into(&pool);
    walk.start(ep, ef);
    while (walk.expand()) walk.score();
}

// Beam search with an acceptance test, hnswlib's two-heap form: rejected nodes
// are traversed but never returned, and while fewer than ef nodes are accepted
// the search keeps going. expand(node, visited, out) writes the not yet visited
// nodes to score from a node (and marks them visited); returns how many.
template <class Accept, class Expand>
HNSW::MaxHeap HNSW::beam_accepting(const DistanceKernels& k, node_id ep, const float* q,
                                   std::size_t ef, Accept&& accept, Expand&& expand,
                                   std::uint64_t* dist_count) const {
    auto visited = visited_pool_.acquire();
    MaxHeap top;
    top.reserve(ef + 1);
    std::priority_queue<Candidate, std::vector<Candidate>, Closer> frontier;

    std::uint64_t computed = 1;
    const float d0 = distance(k, q, vec(ep));
    visited->mark(ep);
    frontier.push({d0, ep});
    if (accept(ep)) top.push_back({d0, ep});
    float lower = top.empty() ? kInf : top.front().dist;
    node_id next[kMaxLinks];
    constexpr std::size_t kAhead = 4;

    while (!frontier.empty()) {
        const Candidate c = frontier.top();
        if (c.dist > lower && top.size() >= ef) break;
        frontier.pop();
        const std::size_t m = expand(c.id, *visited, next);
        for (std::size_t i = 0; i < std::min(m, kAhead); ++i) EVIDEX_PREFETCH(vec(next[i]));
        for (std::size_t i = 0; i < m; ++i) {
            if (i + kAhead < m) EVIDEX_PREFETCH(vec(next[i + kAhead]));
            const node_id nb = next[i];
            const float d = distance(k, q, vec(nb));
            ++computed;
            if (top.size() < ef || d < lower) {
                frontier.push({d, nb});
                if (accept(nb)) {
                    top.push_back({d, nb});
                    std::push_heap(top.begin(), top.end());
                    if (top.size() > ef) {
                        std::pop_heap(top.begin(), top.end());
                        top.pop_back();
                    }
                }
                if (!top.empty()) lower = top.front().dist;
            }
        }
    }
    if (dist_count) *dist_count += computed;
    return top;
}

// Every neighbour is scored (filtered queries, and inserts once something is
// deleted).
template <class Accept>
HNSW::MaxHeap HNSW::search_filtered(const DistanceKernels& k, node_id ep, const float* q,
                                    int level, std::size_t ef, Accept&& accept,
                                    std::uint64_t* dist_count) const {
    return beam_accepting(
        k, ep, q, ef, accept,
        [&](node_id id, VisitedList& visited, node_id* out) {
            const std::uint32_t* links = links_at(id, level);
            const std::size_t n = link_count(links);
            std::size_t m = 0;
            for (std::size_t j = 1; j <= n; ++j)
                if (visited.try_visit(links[j])) out[m++] = links[j];
            return m;
        },
        dist_count);
}

HNSW::MaxHeap HNSW::search_layer(const DistanceKernels& k, node_id ep, const float* q, int level,
                                 std::size_t ef, node_id exclude) const {
    return search_filtered(
        k, ep, q, level, ef, [&](node_id id) { return id != exclude && !deleted_at(id); },
        nullptr);
}

// One node's level-0 links chosen again (SymphonyQG's build step): every node
// the beam scored, with the node's current links, is the pool; hnswlib's
// heuristic keeps up to M0 of it (not M, as an insert does), and the reverse
// links follow as after an insert.
void HNSW::refine_node(const DistanceKernels& k, node_id id, std::size_t ef, bool steered) {
    // SymphonyQG's pool: the far candidates matter (the nearest 100 or 250 of what
    // the search measured gave no better graph on MiniLM-100k).
    constexpr std::size_t kPool = 750;
    thread_local std::vector<std::uint32_t> old_links;
    {
        std::lock_guard<std::mutex> lock(link_locks_[id]);
        const std::uint32_t* l = links0(id);
        old_links.assign(l, l + 1 + link_count(l));
    }
    // No links yet: a concurrent add is inserting it (its vector may not be
    // written), or it is alone in the graph. A deleted node keeps its links (a
    // waypoint for nodes that still lead to it) and gains none.
    if (old_links.size() == 1 || deleted_at(id)) return;
    const float* v = vec(id);
    const Entry e = entry();
    if (e.node < 0) return;
    // The beam may start at (or pass through) the node itself; it never keeps it.
    node_id cur = static_cast<node_id>(e.node);
    thread_local MaxHeap pool;
    pool.clear();
    if (e.level > 0) cur = greedy_descend(k, v, cur, e.level, 1, nullptr);
    // A node's flags sit on a line of its row the distance does not read: looked up
    // for every scored node, they took a quarter of the refinement's time.
    const bool any_deleted = num_deleted_.load() != 0;
    if (steered) {
        // SymphonyQG's way: the walk steered by the edge codes, its expanded nodes
        // (measured exactly) the candidates, each node's first estimate kept.
        // Against the exact beam below (bench/RESULTS.md): on MiniLM-100k a better
        // graph in 0.7x the time, on video-SIFT-200k an equal one in about the
        // same time, on clustered Gaussian noise a worse one unless the beam is
        // wide: it depends on the data, so it is asked for, not the default.
        fast_scan_candidates(k, cur, v, ef, pool, Revisit::Keep);
        pool.erase(std::remove_if(pool.begin(), pool.end(),
                                  [&](const Candidate& c) {
                                      return c.id == id || (any_deleted && deleted_at(c.id));
                                  }),
                   pool.end());
    } else {
        // The insert's beam (deleted nodes and the node itself may take slots:
        // only what it measures is used), each distance kept as it is measured.
        thread_local BeamPool beam;
        const std::size_t bytes = dim_ * sizeof(float);
        search_beam(
            [&](node_id c) {
                const float d = distance(k, v, vec(c));
                if (c != id && !(any_deleted && deleted_at(c))) pool.push_back({d, c});
                return d;
            },
            [&, pb = prefetch_bytes(bytes)](node_id c) { prefetch_vector(node(c) + vec_offset_, pb); },
            ahead_for(bytes), cur, 0, ef, beam, nullptr);
    }
    // The current links the beam did not score join the pool. The beam scores
    // thousands of nodes and the list holds a few dozen: a 4096-bit filter of the
    // list answers nearly every lookup with one load, the rest search the list.
    thread_local std::array<std::uint64_t, 64> filter;
    thread_local std::vector<std::uint8_t> scored;
    filter.fill(0);
    scored.assign(old_links.size(), 0);
    auto bit = [](node_id c) { return static_cast<std::uint32_t>(c * 2654435761u) >> 20; };
    for (std::size_t j = 1; j < old_links.size(); ++j)
        filter[bit(old_links[j]) >> 6] |= std::uint64_t{1} << (bit(old_links[j]) & 63);
    for (const Candidate& p : pool) {
        const std::uint32_t b = bit(p.id);
        if (!(filter[b >> 6] >> (b & 63) & 1)) continue;
        for (std::size_t j = 1; j < old_links.size(); ++j) scored[j] |= old_links[j] == p.id;
    }
    for (std::size_t j = 1; j < old_links.size(); ++j) {
        const node_id c = old_links[j];
        if (!scored[j] && !(any_deleted && deleted_at(c)))
            pool.push_back({distance(k, v, vec(c)), c});
    }
    if (pool.empty()) return;
    // The nearest kPool in any order: select_neighbors sorts what it is given.
    if (pool.size() > kPool) {
        std::nth_element(pool.begin(), pool.begin() + static_cast<std::ptrdiff_t>(kPool), pool.end());
        pool.resize(kPool);
    }
    link_out(k, id, pool, 0, M0_, /*same_vector=*/true);
    link_back(k, id, pool, 0);
}

std::size_t HNSW::search_kernels(const DistanceKernels& k, const KernelSet& ks, node_id start,
                                 const float* q, std::size_t kk, std::size_t ef,
                                 label_t* out_labels, float* out_distances,
                                 std::uint64_t* dist_count) const {
    thread_local std::vector<node_id> ids, top_ids;
    thread_local std::vector<float> dists, top_dists;
    ids.resize(ef);
    dists.resize(ef);
    top_ids.resize(kk);
    top_dists.resize(kk);
    auto visited = visited_pool_.acquire();
    evx_visited v = visited->abi();
    const evx_graph_view g = graph_view(k);
    std::uint64_t computed = 0;
    const std::int64_t n = ks.search(&g, q, start, ef, &v, ids.data(), dists.data(), &computed);
    if (n < 0 || static_cast<std::size_t>(n) > ef)
        throw std::runtime_error("search kernel returned " + std::to_string(n) +
                                 " results for a beam of " + std::to_string(ef));
    const std::int64_t m = ks.refine(&g, q, ids.data(), dists.data(), static_cast<std::size_t>(n),
                                     kk, &v, top_ids.data(), top_dists.data(), &computed);
    if (m < 0 || static_cast<std::size_t>(m) > kk)
        throw std::runtime_error("refinement kernel returned " + std::to_string(m) +
                                 " results for k = " + std::to_string(kk));
    const std::size_t count = count_.load();
    for (std::size_t i = 0; i < static_cast<std::size_t>(m); ++i) {
        if (top_ids[i] >= count)
            throw std::runtime_error("search kernel returned node " + std::to_string(top_ids[i]) +
                                     ", past the " + std::to_string(count) + " in the index");
        out_labels[i] = label_at(top_ids[i]);
        out_distances[i] = top_dists[i];
    }
    if (dist_count) *dist_count += computed;
    return static_cast<std::size_t>(m);
}

std::size_t HNSW::search_filtered_kernel(const DistanceKernels& k, const KernelSet& ks,
                                         node_id start, const float* q, std::size_t kk,
                                         std::size_t ef, const SlotSet& set,
                                         label_t* out_labels, float* out_distances,
                                         std::uint64_t* dist_count) const {
    thread_local std::vector<node_id> ids;
    thread_local std::vector<float> dists;
    thread_local std::vector<std::pair<float, node_id>> order;
    ids.resize(ef);
    dists.resize(ef);
    auto visited = visited_pool_.acquire();
    evx_visited v = visited->abi();
    const evx_graph_view g = graph_view(k);
    const evx_filter f{set.words(), set.size()};
    std::uint64_t computed = 0;
    const std::int64_t n =
        ks.search_filtered(&g, q, start, ef, &f, &v, ids.data(), dists.data(), &computed);
    if (n < 0 || static_cast<std::size_t>(n) > ef)
        throw std::runtime_error("filtered search kernel returned " + std::to_string(n) +
                                 " results for a beam of " + std::to_string(ef));
    // A result the filter does not allow would leak data the caller excluded: every
    // one is checked, and a kernel that breaks the contract fails the search.
    const std::size_t count = count_.load();
    order.clear();
    for (std::size_t i = 0; i < static_cast<std::size_t>(n); ++i) {
        if (ids[i] >= count || !set.test(ids[i]))
            throw std::runtime_error("filtered search kernel returned node " +
                                     std::to_string(ids[i]) + ", which the filter does not allow");
        order.emplace_back(dists[i], ids[i]);
    }
    std::sort(ids.begin(), ids.begin() + n);
    const auto twice = std::adjacent_find(ids.begin(), ids.begin() + n);
    if (twice != ids.begin() + n)
        throw std::runtime_error("filtered search kernel returned node " + std::to_string(*twice) +
                                 " twice");
    std::sort(order.begin(), order.end());
    const std::size_t found = std::min(kk, order.size());
    for (std::size_t i = 0; i < found; ++i) {
        out_labels[i] = label_at(order[i].second);
        out_distances[i] = order[i].first;
    }
    if (dist_count) *dist_count += computed;
    return found;
}

evx_graph_view HNSW::graph_view(const DistanceKernels& k) const {
    evx_graph_view g{};
    g.abi_version = EVIDEX_KERNEL_ABI_VERSION;
    g.metric = space_ == Space::L2 ? 0u : 1u;
    g.nodes = level0_;
    g.node_bytes = node_stride_;
    g.vector_offset = vec_offset_;
    g.max_links = M0_;
    g.num_nodes = count_.load();
    g.dim = dim_;
    g.distance = space_ == Space::L2 ? k.l2sq : k.dot;
    const std::size_t bytes = dim_ * sizeof(float);
    g.prefetch_ahead = ahead_for(bytes);
    g.prefetch_bytes = prefetch_bytes(bytes);
    g.version = version_.load(std::memory_order_acquire);
    return g;
}

std::uint64_t HNSW::next_graph_version() {
    static std::atomic<std::uint64_t> counter{0};
    return ++counter;
}

std::shared_ptr<const KernelSet> HNSW::kernel_set() const {
    std::lock_guard<std::mutex> lock(kernel_sets_mutex_);
    const KernelSet* active = kernels_.load();
    for (const auto& set : kernel_sets_)
        if (set.get() == active) return set;
    return std::make_shared<const KernelSet>(builtin_kernels());
}

void HNSW::set_kernels(std::shared_ptr<const KernelSet> kernels) {
    if (!kernels || !kernels->search || !kernels->select || !kernels->refine)
        throw std::invalid_argument("a kernel set needs all three slots");
    std::lock_guard<std::mutex> lock(kernel_sets_mutex_);
    kernel_sets_.push_back(kernels);
    kernels_.store(kernels.get(), std::memory_order_release);
}

void HNSW::search_one(const DistanceKernels& k, const KernelSet& ks, const float* q,
                      std::size_t kk, std::size_t ef, const SearchFilter* filter,
                      label_t* out_labels, float* out_distances,
                      std::uint64_t* dist_count) const {
    std::size_t found = 0;
    const Entry e = entry();
    if (e.node >= 0) {
        const bool plain = filter == nullptr && num_deleted_.load() == 0;
        if (plain && quant_ == Quantization::SQ8) {
            search_sq8(k, static_cast<node_id>(e.node), e.level, &q, 1, kk, ef, out_labels,
                       out_distances, dist_count);
            return;
        }
        if (plain && fast_scan_graph()) {
            search_pq4(k, static_cast<node_id>(e.node), e.level, &q, 1, kk, ef, out_labels,
                       out_distances, dist_count);
            return;
        }
        const node_id start = greedy_descend(k, q, static_cast<node_id>(e.node), e.level, 1,
                                          dist_count);
        if (plain) {
            found = search_kernels(k, ks, start, q, kk, ef, out_labels, out_distances,
                                   dist_count);
        } else {
            auto allowed = [&](node_id id) {
                return !deleted_at(id) && (filter == nullptr || filter->allowed(id, label_at(id)));
            };
            MaxHeap top = search_filtered(k, start, q, 0, ef, allowed, dist_count);
            found = write_nearest(top, kk, out_labels, out_distances);
        }
    }
    pad_answers(found, kk, out_labels, out_distances);
}

std::size_t HNSW::write_nearest(MaxHeap& top, std::size_t kk, label_t* out_labels,
                                float* out_distances) const {
    std::sort(top.begin(), top.end());
    const std::size_t found = std::min(kk, top.size());
    for (std::size_t i = 0; i < found; ++i) {
        out_labels[i] = label_at(top[i].id);
        out_distances[i] = top[i].dist;
    }
    return found;
}

void HNSW::search(const float* queries, std::size_t nq, std::size_t k, std::size_t ef,
                  const SearchFilter* filter, std::size_t num_threads, label_t* out_labels,
                  float* out_distances) const {
    Busy busy(this);
    std::shared_lock<RwLock> lock(storage_mutex_);
    search_locked(queries, nq, k, ef, filter, num_threads, out_labels, out_distances);
}

std::unique_ptr<HNSW::ReadSession> HNSW::read_session() const {
    return std::make_unique<ReadSession>(*this);
}

void HNSW::search_in(const ReadSession& session, const float* queries, std::size_t nq,
                     std::size_t k, std::size_t ef, const SearchFilter* filter,
                     std::size_t num_threads, label_t* out_labels, float* out_distances) const {
    if (session.index() != this) throw std::invalid_argument("a read session of another index");
    search_locked(queries, nq, k, ef, filter, num_threads, out_labels, out_distances);
}

void HNSW::search_allowed(const float* queries, std::size_t nq, std::size_t k, std::size_t ef,
                          const label_t* allowed, std::size_t n_allowed, std::size_t num_threads,
                          label_t* out_labels, float* out_distances) const {
    AllowSpec spec;
    spec.labels = allowed;
    spec.n_labels = n_allowed;
    spec.has_labels = true;
    search_set(queries, nq, k, ef, spec, FilterStrategy::Auto, num_threads, out_labels,
               out_distances);
}

// The caller holds storage_mutex_ shared.
void HNSW::search_locked(const float* queries, std::size_t nq, std::size_t k, std::size_t ef,
                         const SearchFilter* filter, std::size_t num_threads,
                         label_t* out_labels, float* out_distances) const {
    // A beam wider than the graph finds nothing more: clamp, never allocate it.
    ef = std::min(std::max(ef, k), std::max(count_.load(), k));
    const DistanceKernels& kernels = active_kernels();
    const KernelSet& ks = this->kernels();
    std::atomic<std::uint64_t> total{0}, hops{0};
    const Entry e = entry();
    const std::size_t threads = query_threads(num_threads, nq);
    const bool graph_codes = quant_ == Quantization::SQ8 || fast_scan_graph();
    const std::size_t group = graph_codes && filter == nullptr && num_deleted_.load() == 0 &&
                                      e.node >= 0
                                  ? interleave_group(nq, threads)
                                  : 1;
    // Work units: groups of queries searched with their hops interleaved, or
    // single queries.
    parallel_for((nq + group - 1) / group, threads, [&](std::size_t c) {
        const std::size_t i0 = c * group, m = std::min(group, nq - i0);
        thread_local std::vector<float> scratch[kMaxInterleave];
        const float* qs[kMaxInterleave];
        for (std::size_t g = 0; g < m; ++g)
            qs[g] = prepare_query(queries + (i0 + g) * dim_, scratch[g]);
        std::uint64_t computed = 0;
        const std::uint64_t expanded = search_expansions();
        if (group > 1 && quant_ == Quantization::SQ8)
            search_sq8(kernels, static_cast<node_id>(e.node), e.level, qs, m, k, ef,
                       out_labels + i0 * k, out_distances + i0 * k, &computed);
        else if (group > 1)
            search_pq4(kernels, static_cast<node_id>(e.node), e.level, qs, m, k, ef,
                       out_labels + i0 * k, out_distances + i0 * k, &computed);
        else
            search_one(kernels, ks, qs[0], k, ef, filter, out_labels + i0 * k,
                       out_distances + i0 * k, &computed);
        total.fetch_add(computed, std::memory_order_relaxed);
        hops.fetch_add(search_expansions() - expanded, std::memory_order_relaxed);
    });
    last_distance_computations_.store(total.load());
    last_hops_.store(hops.load());
    last_queries_.store(nq);
}

// ------------------------------------------------------------------ filtered and range search

const float* HNSW::prepare_query(const float* q, std::vector<float>& scratch) const {
    if (space_ != Space::Cosine) return q;
    scratch.resize(dim_);
    normalize_into(q, dim_, scratch.data());
    return scratch.data();
}

const char* strategy_name(FilterStrategy s) {
    switch (s) {
        case FilterStrategy::Scan: return "scan";
        case FilterStrategy::Filtered: return "filtered";
        case FilterStrategy::TwoHop: return "two_hop";
        case FilterStrategy::CodedScan: return "coded_scan";
        default: return "auto";
    }
}

// The caller holds storage_mutex_ shared: the set is sized to the slots of now,
// so elements added meanwhile never leak into it.
SlotSet HNSW::resolve(const AllowSpec& allow, std::uint64_t* reuses) const {
    // Under label_mutex_ throughout: a slot reused meanwhile (relabelled, its
    // values cleared, both under this lock) is seen before or after, never half.
    std::lock_guard<std::mutex> lk(label_mutex_);
    if (reuses != nullptr) *reuses = slot_reuses_.load();
    const std::size_t n = count_.load();
    SlotSet set(n);
    if (allow.program != nullptr) set = attrs_.evaluate(*allow.program, n);
    if (allow.has_labels) {
        SlotSet listed(n);
        if (labels_are_slots_.load(std::memory_order_relaxed)) {
            // Every element's id is its slot (ids 0, 1, ... in insertion order, the
            // common case): no hash look-ups.
            for (std::size_t i = 0; i < allow.n_labels; ++i)
                if (allow.labels[i] < n) listed.set(allow.labels[i]);
        } else {
            for (std::size_t i = 0; i < allow.n_labels; ++i) {
                auto it = label_map_.find(allow.labels[i]);
                if (it != label_map_.end() && it->second < n) listed.set(it->second);
            }
        }
        if (allow.program != nullptr)
            set.intersect(listed);
        else
            set = std::move(listed);
    } else if (allow.program == nullptr) {
        set.complement();  // everything
    }
    for (const node_id id : deleted_slots_)
        if (id < n && deleted_at(id)) set.reset(id);
    return set;
}

// Per-query cost of each method, in nanoseconds, from the model (defaults until a
// method has run here: a scanned row costs about a distance, a graph step several
// cache misses more).
namespace {

using Figure = CostFigure;

// Classes of batches: by queries sharing a scan (1, 2-3, 4-7, ..., 32 and more),
// and by allowed fraction (half-decades: 1-0.32, 0.32-0.1, ..., below 1e-3).
std::size_t scan_class(std::size_t nq) {
    std::size_t c = 0;
    for (std::size_t q = std::min<std::size_t>(nq, 32); q > 1; q >>= 1) ++c;
    return c;
}

// Classes of allowed counts (decades: a scan's fixed cost per query weighs on
// its cost per row when the rows are few).
std::size_t count_class(std::size_t allowed) {
    std::size_t c = 0;
    for (std::size_t a = allowed; a >= 10 && c < 7; a /= 10) ++c;
    return c;
}

std::size_t selectivity_class(double sel) {
    const double c = -2.0 * std::log10(std::max(sel, 1e-9));
    return static_cast<std::size_t>(std::min(7.0, std::max(0.0, c)));
}

// The figure of a class, else of the nearest measured class, else a default.
double nearest(const Figure* figures, std::size_t count, std::size_t cls, double fallback) {
    for (std::size_t d = 0; d < count; ++d) {
        if (cls >= d && figures[cls - d].batches) return figures[cls - d].value;
        if (cls + d < count && figures[cls + d].batches) return figures[cls + d].value;
    }
    return fallback;
}

// The figure of cell (a, b), else of the nearest measured cell (by |da| + |db|).
template <std::size_t K>
double nearest2(const Figure (&figures)[K][K], std::size_t a, std::size_t b, double fallback) {
    for (std::size_t d = 0; d < 2 * K; ++d)
        for (std::size_t i = 0; i < K; ++i) {
            const std::size_t di = i > a ? i - a : a - i;
            if (di > d) continue;
            for (std::size_t j : {b + (d - di), b - (d - di)})
                if (j < K && figures[i][j].batches) return figures[i][j].value;
        }
    return fallback;
}

void learn(Figure& f, double x) {
    f.value += (f.batches == 0 ? 1.0 : 0.3) * (x - f.value);  // the first one replaces
    ++f.batches;
}

// The method of least cost once each is charged its learnt error (cost and
// log_error by FilterStrategy; infinite cost: not a candidate). Unless forced,
// a method not yet measured for this case (measured(s) false) whose charge is
// within 1.5x of the least gets the batch instead, so the model learns this
// machine, not its defaults.
template <class Measured>
FilterStrategy cheapest(const double (&cost)[kStrategies], const double (&log_error)[kStrategies],
                        Measured&& measured, FilterStrategy forced) {
    if (forced != FilterStrategy::Auto) return forced;
    const auto idx = [](FilterStrategy s) { return static_cast<std::size_t>(s); };
    constexpr FilterStrategy kMethods[] = {FilterStrategy::Scan, FilterStrategy::Filtered,
                                           FilterStrategy::TwoHop, FilterStrategy::CodedScan};
    double charged[kStrategies] = {};
    for (FilterStrategy s : kMethods) charged[idx(s)] = cost[idx(s)] * std::exp(log_error[idx(s)]);
    FilterStrategy best = FilterStrategy::Scan;
    for (FilterStrategy s : kMethods)
        if (charged[idx(s)] < charged[idx(best)]) best = s;
    for (FilterStrategy s : kMethods)
        if (s != best && !measured(s) && charged[idx(s)] < 1.5 * charged[idx(best)]) return s;
    return best;
}

}  // namespace

// Per-query cost of each method, in nanoseconds: a scan costs a figure per
// allowed row; a graph method costs a figure per distance computation times
// its computations, modelled as units x ef / sel for the filtered search (it
// walks ~1/sel nodes per allowed one) and units x ef / min(1, sel x M0) for two
// hops; the coded scan a figure per allowed row's code and one per re-ranked
// vector (ef of them). Defaults until a method has run here.
FilterStrategy HNSW::plan(std::size_t allowed, std::size_t live, std::size_t ef, std::size_t nq,
                          FilterStrategy forced, PlanInfo* info) const {
    std::lock_guard<std::mutex> lk(planner_mutex_);
    const double dim = static_cast<double>(dim_);
    const CostModel& m = cost_;
    constexpr std::size_t K = CostModel::kClasses;
    const auto idx = [](FilterStrategy s) { return static_cast<std::size_t>(s); };
    const double a = static_cast<double>(std::max<std::size_t>(allowed, 1));
    const double n = static_cast<double>(std::max<std::size_t>(live, 1));
    const double sel = std::min(1.0, a / n);
    const double e = static_cast<double>(ef);
    const std::size_t qc = scan_class(nq), sc = selectivity_class(sel);
    const auto step_ns = [&](FilterStrategy s) {
        return nearest(m.step_ns[idx(s)], K, sc, 60.0 + 0.2 * dim);
    };
    const auto per_unit = [&](FilterStrategy s) {
        return nearest(m.distances_per_unit[idx(s)], K, sc,
                       s == FilterStrategy::Filtered ? 10.0 : 4.0);
    };
    if (forced == FilterStrategy::CodedScan && !has_scan_codes())
        throw std::invalid_argument(
            "filter_strategy 'coded_scan' needs scan codes: build them first (build_scan_codes)");
    double cost[kStrategies] = {};
    const std::size_t ac = count_class(allowed);
    cost[1] = nearest2(m.scan_row_ns, qc, ac, 2.0 + 0.1 * dim) * a;
    // Re-ranking ef of fewer allowed elements is the exact scan's work and more.
    cost[4] = has_scan_codes() && ef < allowed
                  ? nearest2(m.coded_row_ns, qc, ac,
                             0.5 + 0.03 * static_cast<double>(scan_pq_.subspaces())) * a +
                        nearest(m.rerank_ns, K, ac, 20.0 + 0.25 * dim) * e
                  : std::numeric_limits<double>::infinity();
    cost[2] = step_ns(FilterStrategy::Filtered) *
              std::min(n, per_unit(FilterStrategy::Filtered) * e / sel);
    // Two hops are for filters that leave a node fewer than M allowed neighbours
    // (with more, the beam would only lose the rejected nodes as stepping stones,
    // and recall); they reach about M0^2 * sel allowed nodes from each expanded
    // one, and below one the beam starves. Outside that range: not a candidate.
    const double reach = sel * static_cast<double>(M0_);
    const bool two_hops_apply =
        reach < static_cast<double>(M_) && reach * static_cast<double>(M0_) >= 1.0;
    cost[3] = two_hops_apply
                  ? step_ns(FilterStrategy::TwoHop) *
                        std::min(n, per_unit(FilterStrategy::TwoHop) * e / std::min(1.0, reach))
                  : std::numeric_limits<double>::infinity();
    const FilterStrategy best = cheapest(cost, m.log_error, [&](FilterStrategy s) {
        switch (s) {
            case FilterStrategy::Scan: return m.scan_row_ns[qc][ac].batches != 0;
            case FilterStrategy::CodedScan: return m.coded_row_ns[qc][ac].batches != 0;
            default: return m.step_ns[idx(s)][sc].batches != 0;
        }
    }, forced);
    if (info != nullptr) {
        info->strategy = best;
        info->allowed = allowed;
        for (std::size_t i = 1; i < kStrategies; ++i) info->predicted_ns[i] = cost[i];
    }
    return best;
}

void HNSW::calibrate(FilterStrategy s, std::size_t allowed, std::size_t live, std::size_t ef,
                     std::size_t nq, std::size_t threads, double seconds, std::uint64_t computed,
                     double predicted_ns) const {
    if (nq == 0 || allowed == 0) return;
    const std::size_t i = static_cast<std::size_t>(s);
    // Wall time over queries that ran side by side on `threads` threads.
    const double ns = seconds * 1e9 * static_cast<double>(threads) / static_cast<double>(nq);
    const double per_query = static_cast<double>(computed) / static_cast<double>(nq);
    const double sel =
        std::min(1.0, static_cast<double>(allowed) / static_cast<double>(std::max<std::size_t>(1, live)));
    std::lock_guard<std::mutex> lk(planner_mutex_);
    CostModel& m = cost_;
    const std::size_t sc = selectivity_class(sel);
    CostFigure& scan_figure = m.scan_row_ns[scan_class(nq)][count_class(allowed)];
    const bool calibrated = s == FilterStrategy::Scan ? scan_figure.batches != 0
                                                      : m.step_ns[i][sc].batches != 0;
    if (calibrated && predicted_ns > 0 && ns > 0)
        m.log_error[i] += 0.3 * (std::fabs(std::log(ns / predicted_ns)) - m.log_error[i]);
    if (s == FilterStrategy::Scan) {
        learn(scan_figure, ns / static_cast<double>(allowed));
        return;
    }
    learn(m.step_ns[i][sc], ns / std::max(1.0, per_query));
    const double unit = static_cast<double>(ef) /
                        (s == FilterStrategy::TwoHop ? std::min(1.0, sel * M0_) : sel);
    // A search that visited (nearly) everything says little about the slope.
    if (per_query < 0.9 * static_cast<double>(live) || m.distances_per_unit[i][sc].batches == 0)
        learn(m.distances_per_unit[i][sc], per_query / unit);
}

// A range search's graph beam is as wide as the results expected and doubles
// while all of it lies inside the radius: its cost per unit of beam is learnt
// from the range searches that ran (until then the k-NN model's estimate), and
// charged its typical miss like the k-NN methods; the scan is the k-NN scan.
FilterStrategy HNSW::plan_range(std::size_t allowed, std::size_t live, std::size_t beam,
                                std::size_t nq, FilterStrategy forced,
                                PlanInfo* info_out) const {
    if (forced == FilterStrategy::CodedScan)
        throw std::invalid_argument("filter_strategy 'coded_scan' applies to k-NN search only");
    PlanInfo info;
    plan(allowed, live, beam, nq, forced, &info);  // the k-NN model's costs, the scan's
    std::lock_guard<std::mutex> lk(planner_mutex_);
    const CostModel& m = cost_;
    const auto idx = [](FilterStrategy s) { return static_cast<std::size_t>(s); };
    const double sel = std::min(
        1.0, static_cast<double>(allowed) / static_cast<double>(std::max<std::size_t>(live, 1)));
    const std::size_t sc = selectivity_class(sel);
    // (The coded scan is for k-NN: a range has no depth to re-rank.)
    double cost[kStrategies] = {0, info.predicted_ns[1], info.predicted_ns[2],
                                info.predicted_ns[3], std::numeric_limits<double>::infinity()};
    for (FilterStrategy s : {FilterStrategy::Filtered, FilterStrategy::TwoHop}) {
        const CostFigure& f = m.range_beam_ns[idx(s)][sc];
        if (std::isfinite(cost[idx(s)]) && f.batches != 0)
            cost[idx(s)] = f.value * static_cast<double>(beam);
    }
    // The scan is the k-NN scan (its figure and error); the graph methods have
    // their own, as a range beam is wide and run twice.
    const double log_error[kStrategies] = {0, m.log_error[1], m.range_log_error[2],
                                           m.range_log_error[3], 0};
    const FilterStrategy best = cheapest(cost, log_error, [&](FilterStrategy s) {
        return s == FilterStrategy::Scan
                   ? m.scan_row_ns[scan_class(nq)][count_class(allowed)].batches != 0
                   : m.range_beam_ns[idx(s)][sc].batches != 0;
    }, forced);
    if (info_out != nullptr) {
        *info_out = info;
        info_out->strategy = best;
        for (std::size_t i = 1; i < kStrategies; ++i) info_out->predicted_ns[i] = cost[i];
    }
    return best;
}

void HNSW::calibrate_range(FilterStrategy s, std::size_t allowed, std::size_t live,
                           std::size_t beam, std::size_t nq, std::size_t threads, double seconds,
                           double predicted_ns) const {
    if (nq == 0 || allowed == 0 || beam == 0) return;
    if (s == FilterStrategy::Scan) {
        calibrate(s, allowed, live, beam, nq, threads, seconds, nq * allowed, predicted_ns);
        return;
    }
    const std::size_t i = static_cast<std::size_t>(s);
    const double ns = seconds * 1e9 * static_cast<double>(threads) / static_cast<double>(nq);
    const double sel = std::min(
        1.0, static_cast<double>(allowed) / static_cast<double>(std::max<std::size_t>(1, live)));
    std::lock_guard<std::mutex> lk(planner_mutex_);
    CostModel& m = cost_;
    CostFigure& f = m.range_beam_ns[i][selectivity_class(sel)];
    if (f.batches != 0 && predicted_ns > 0 && ns > 0)
        m.range_log_error[i] += 0.3 * (std::fabs(std::log(ns / predicted_ns)) - m.range_log_error[i]);
    learn(f, ns / static_cast<double>(beam));
}

PlanInfo HNSW::last_plan() const {
    std::lock_guard<std::mutex> lk(planner_mutex_);
    return cost_.last;
}

// Scores every member against each of nq queries (raw, normalised here for
// cosine), sixteen members at a time: visit(query, distances, members, m) takes
// the distances of query `query` to members[0..m) (exact_scan.h).
template <class Visit>
void HNSW::scan_rows(const DistanceKernels& k, const float* queries, std::size_t nq,
                     const std::vector<node_id>& members, Visit&& visit) const {
    scan_panels(k, space_ == Space::L2, space_ == Space::Cosine, dim_, queries, nq,
                members.size(), [&](std::size_t j) { return vec(members[j]); },
                [&](std::size_t i, const float* dist, std::size_t first, std::size_t m) {
                    visit(i, dist, members.data() + first, m);
                });
}

// Queries per chunk of an exact scan: a chunk is one pass over the allowed
// vectors (each packed once per chunk), so chunks are as large as the threads
// allow while their queries stay in L2.
std::size_t HNSW::scan_chunk(std::size_t nq, std::size_t num_threads) const {
    return scan_chunk_size(nq, dim_, resolve_threads(num_threads, (nq + 31) / 32));
}

void HNSW::scan_batch(const DistanceKernels& k, const float* queries, std::size_t nq,
                      const std::vector<node_id>& members, std::size_t kk, label_t* out_labels,
                      float* out_distances) const {
    thread_local std::vector<std::uint32_t> found;
    found.resize(nq * kk);
    exact_scan_rows(k, space_ == Space::L2, space_ == Space::Cosine, dim_, queries, nq,
                    members.size(), [&](std::size_t j) { return vec(members[j]); }, kk,
                    scan_bits_.load(std::memory_order_relaxed), found.data(), out_distances);
    labels_of(members, found.data(), nq * kk, out_labels);
}

// The labels of n scan results (indexes into members; kNoRow: none).
void HNSW::labels_of(const std::vector<node_id>& members, const std::uint32_t* rows,
                     std::size_t n, label_t* out) const {
    for (std::size_t i = 0; i < n; ++i)
        out[i] = rows[i] == kNoRow ? kNoLabel : label_at(members[rows[i]]);
}

// The allowed set's codes are packed once for the batch; each query scores all
// of them by fast scan and re-ranks its `depth` best estimates exactly.
void HNSW::coded_scan_batch(const DistanceKernels& k, const float* queries, std::size_t nq,
                            const std::vector<node_id>& members, std::size_t kk,
                            std::size_t depth, std::size_t num_threads, label_t* out_labels,
                            float* out_distances, std::atomic<std::uint64_t>& code_ns,
                            std::atomic<std::uint64_t>& rerank_ns) const {
    using Clock = std::chrono::steady_clock;
    const auto ns = [](Clock::time_point a, Clock::time_point b) {
        return static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count());
    };
    const bool l2 = space_ == Space::L2;
    const std::size_t code_bytes = scan_pq_.code_bytes();
    // More than the allowed count is all of them (and a buffer sized for nothing).
    depth = std::max<std::size_t>(1, std::min(depth, members.size()));
    const auto t0 = Clock::now();
    PackedCodes set;
    set.pack(scan_pq_, l2, members.size(),
             [&](std::size_t j) { return scan_codes_.data() + members[j] * code_bytes; },
             [&](std::size_t j) { return scan_norms_[members[j]]; });
    code_ns.fetch_add(ns(t0, Clock::now()), std::memory_order_relaxed);
    parallel_for(nq, num_threads, [&](std::size_t i) {
        const auto start = Clock::now();
        thread_local std::vector<float> scratch;
        thread_local std::vector<std::uint32_t> found;
        const float* q = prepare_query(queries + i * dim_, scratch);
        Shortlist list(depth);
        shortlist_codes(k, scan_pq_, l2, q, dim_, set, list);
        const auto coded = Clock::now();
        found.resize(kk);
        rerank_rows(k, l2, q, dim_, list.rows(), list.size(), kk,
                    [&](std::uint32_t row) { return vec(members[row]); }, found.data(),
                    out_distances + i * kk);
        labels_of(members, found.data(), kk, out_labels + i * kk);
        code_ns.fetch_add(ns(start, coded), std::memory_order_relaxed);
        rerank_ns.fetch_add(ns(coded, Clock::now()), std::memory_order_relaxed);
    });
}

// Thread time per query, split between the codes (learnt per allowed row) and
// the re-ranking (per re-ranked vector).
void HNSW::calibrate_coded(std::size_t allowed, std::size_t depth, std::size_t nq,
                           double code_ns, double rerank_ns, double predicted_ns) const {
    if (nq == 0 || allowed == 0) return;
    const double queries = static_cast<double>(nq);
    const double per_query = (code_ns + rerank_ns) / queries;
    const double reranked = static_cast<double>(std::max<std::size_t>(1, std::min(depth, allowed)));
    std::lock_guard<std::mutex> lk(planner_mutex_);
    CostModel& m = cost_;
    const std::size_t ac = count_class(allowed);
    CostFigure& rows = m.coded_row_ns[scan_class(nq)][ac];
    if (rows.batches != 0 && predicted_ns > 0 && per_query > 0)
        m.log_error[4] += 0.3 * (std::fabs(std::log(per_query / predicted_ns)) - m.log_error[4]);
    learn(rows, code_ns / queries / static_cast<double>(allowed));
    learn(m.rerank_ns[ac], rerank_ns / queries / reranked);
}

// ACORN-1's search (Patel et al., SIGMOD 2024) on the unchanged HNSW graph: the
// beam holds allowed nodes only; when a node has fewer than M allowed
// neighbours, the rejected ones are not scored but their allowed neighbours are
// (two hops), so a restrictive filter leaves a connected subgraph while
// distances are computed for allowed nodes alone.
template <class Accept>
HNSW::MaxHeap HNSW::search_two_hop(const DistanceKernels& k, node_id ep, const float* q,
                                   std::size_t ef, Accept&& accept,
                                   std::uint64_t* dist_count) const {
    return beam_accepting(
        k, ep, q, ef, accept,
        [&](node_id id, VisitedList& visited, node_id* out) {
            std::size_t m = 0;
            const std::uint32_t* links = links0(id);
            const std::size_t n = link_count(links);
            // The allowed neighbours first; only when they are fewer than M, the
            // allowed neighbours of rejected ones, up to M0 in all.
            for (std::size_t j = 1; j <= n; ++j)
                if (accept(links[j]) && visited.try_visit(links[j])) out[m++] = links[j];
            for (std::size_t j = 1; j <= n && m < M_; ++j) {
                const node_id nb = links[j];
                if (accept(nb) || !visited.try_visit(nb)) continue;
                const std::uint32_t* hop = links0(nb);
                const std::size_t n2 = link_count(hop);
                for (std::size_t j2 = 1; j2 <= n2 && m < M0_; ++j2)
                    if (accept(hop[j2]) && visited.try_visit(hop[j2])) out[m++] = hop[j2];
            }
            return m;
        },
        dist_count);
}

void HNSW::search_set_one(const DistanceKernels& k, FilterStrategy s, const SlotSet& set,
                          std::size_t allowed, const float* q, std::size_t kk,
                          std::size_t ef, label_t* out_labels, float* out_distances,
                          std::uint64_t* dist_count) const {
    std::size_t found = 0;
    const Entry e = entry();
    if (e.node >= 0) {
        const node_id start =
            greedy_descend(k, q, static_cast<node_id>(e.node), e.level, 1, dist_count);
        auto accept = [&](node_id id) { return set.test(id); };
        MaxHeap top;
        if (s == FilterStrategy::TwoHop) top = search_two_hop(k, start, q, ef, accept, dist_count);
        // Too few found (the allowed nodes around the query are not connected
        // within two hops): the filtered search, which walks through everything,
        // a kernel library's when one is loaded.
        const KernelSet& ks = kernels();
        if (s != FilterStrategy::TwoHop || top.size() < std::min(ef, allowed)) {
            if (ks.search_filtered != nullptr) {
                found = search_filtered_kernel(k, ks, start, q, kk, ef, set, out_labels,
                                               out_distances, dist_count);
            } else {
                top = search_filtered(k, start, q, 0, ef, accept, dist_count);
                found = write_nearest(top, kk, out_labels, out_distances);
            }
        } else {
            found = write_nearest(top, kk, out_labels, out_distances);
        }
    }
    pad_answers(found, kk, out_labels, out_distances);
}

// Slots of deleted elements may be reused by other threads while a filtered batch
// runs, and a result then names the new element, which the filter may not
// allow. When a reuse happened since the allow-set was resolved, resolve it
// again and search again every query with a result outside it, until no reuse
// intervenes; after a few rounds under constant reuse, such results are dropped.
// rows(i) gives query i's labels, redo(now, i) searches it again, drop(i, keep)
// keeps the flagged results.
template <class Redo, class Rows, class Drop>
void HNSW::recheck(const AllowSpec& allow, std::uint64_t reuses, Redo&& redo, std::size_t nq,
                   Rows&& rows, Drop&& drop) const {
    constexpr int kRounds = 4;
    // Read under the lock: a result label read while a reuse relabelled its
    // slot was written inside that reuse's critical section, so the count
    // read after acquiring the lock includes that reuse.
    const auto reused_since = [&] {
        std::lock_guard<std::mutex> lk(label_mutex_);
        return slot_reuses_.load() != reuses;
    };
    for (int round = 0; reused_since(); ++round) {
        const SlotSet now = resolve(allow, &reuses);
        for (std::size_t i = 0; i < nq; ++i) {
            const std::vector<label_t> labels = rows(i);
            std::vector<bool> keep(labels.size(), true);
            bool stale = false;
            {
                std::lock_guard<std::mutex> lk(label_mutex_);
                for (std::size_t r = 0; r < labels.size(); ++r) {
                    if (labels[r] == kNoLabel) continue;
                    auto it = label_map_.find(labels[r]);
                    keep[r] = it != label_map_.end() && now.test(it->second);
                    stale |= !keep[r];
                }
            }
            if (!stale) continue;
            if (round < kRounds)
                redo(now, i);
            else
                drop(i, keep);
        }
        if (round >= kRounds) break;
    }
}

void HNSW::search_set(const float* queries, std::size_t nq, std::size_t k, std::size_t ef,
                      const AllowSpec& allow, FilterStrategy strategy, std::size_t num_threads,
                      label_t* out_labels, float* out_distances) const {
    Busy busy(this);
    std::shared_lock<RwLock> lock(storage_mutex_);
    std::uint64_t reuses = 0;
    const SlotSet set = resolve(allow, &reuses);
    const std::size_t allowed = set.count();
    ef = std::min(std::max(ef, k), std::max(count_.load(), k));
    PlanInfo info;
    const FilterStrategy s = plan(allowed, live_count(), ef, nq, strategy, &info);
    std::vector<node_id> members;
    const bool scans = s == FilterStrategy::Scan || s == FilterStrategy::CodedScan;
    if (scans) {
        members.reserve(allowed);
        set.for_each([&](node_id id) { members.push_back(id); });
    }
    const DistanceKernels& kernels = active_kernels();
    std::atomic<std::uint64_t> total{0}, code_ns{0}, rerank_ns{0};
    const auto t0 = std::chrono::steady_clock::now();
    // Work units: chunks of queries sharing each pass over the allowed vectors
    // (a scan), or single queries.
    const std::size_t chunk = s == FilterStrategy::Scan ? scan_chunk(nq, num_threads) : 1;
    const std::size_t units = (nq + chunk - 1) / chunk;
    if (s == FilterStrategy::Scan) {
        parallel_for(units, num_threads, [&](std::size_t c) {
            const std::size_t i0 = c * chunk, m = std::min(chunk, nq - i0);
            scan_batch(kernels, queries + i0 * dim_, m, members, k, out_labels + i0 * k,
                       out_distances + i0 * k);
        });
        total.store(static_cast<std::uint64_t>(nq) * members.size());
    } else if (s == FilterStrategy::CodedScan) {
        coded_scan_batch(kernels, queries, nq, members, k, ef, num_threads, out_labels,
                         out_distances, code_ns, rerank_ns);
        total.store(static_cast<std::uint64_t>(nq) * std::min(ef, members.size()));
    } else {
        parallel_for(nq, num_threads, [&](std::size_t i) {
            thread_local std::vector<float> scratch;
            const float* q = prepare_query(queries + i * dim_, scratch);
            std::uint64_t computed = 0;
            if (allowed == 0) {
                std::fill(out_labels + i * k, out_labels + (i + 1) * k, kNoLabel);
                std::fill(out_distances + i * k, out_distances + (i + 1) * k, kInf);
            } else {
                search_set_one(kernels, s, set, allowed, q, k, ef, out_labels + i * k,
                               out_distances + i * k, &computed);
            }
            total.fetch_add(computed, std::memory_order_relaxed);
        });
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    recheck(allow, reuses, [&](const SlotSet& now, std::size_t i) {
        // Search query i again over the allow-set of now (exactly, for a scan
        // of either kind).
        const std::vector<node_id> current = scans ? [&] {
            std::vector<node_id> m;
            now.for_each([&](node_id id) { m.push_back(id); });
            return m;
        }() : std::vector<node_id>{};
        if (scans) {
            scan_batch(kernels, queries + i * dim_, 1, current, k, out_labels + i * k,
                       out_distances + i * k);
        } else {
            std::vector<float> scratch;
            search_set_one(kernels, s, now, now.count(), prepare_query(queries + i * dim_, scratch),
                           k, ef, out_labels + i * k, out_distances + i * k, nullptr);
        }
    }, nq, [&](std::size_t i) {
        return std::vector<label_t>(out_labels + i * k, out_labels + (i + 1) * k);
    }, [&](std::size_t i, const std::vector<bool>& keep) {
        // Out of rounds: drop what is no longer allowed, pad the rest.
        std::size_t w = 0;
        for (std::size_t r = 0; r < k; ++r)
            if (keep[r]) {
                out_labels[i * k + w] = out_labels[i * k + r];
                out_distances[i * k + w++] = out_distances[i * k + r];
            }
        pad_answers(w, k, out_labels + i * k, out_distances + i * k);
    });
    if (s == FilterStrategy::CodedScan)
        calibrate_coded(allowed, ef, nq, static_cast<double>(code_ns.load()),
                        static_cast<double>(rerank_ns.load()), info.predicted_ns[4]);
    else
        calibrate(s, allowed, live_count(), ef, nq, resolve_threads(num_threads, units), seconds,
                  total.load(), info.predicted_ns[static_cast<std::size_t>(s)]);
    {
        std::lock_guard<std::mutex> lk(planner_mutex_);
        cost_.last = info;
    }
    last_distance_computations_.store(total.load());
    last_hops_.store(0);  // counted for unfiltered k-NN searches only
    last_queries_.store(nq);
}

std::vector<HNSW::Candidate> HNSW::range_one(const DistanceKernels& k, FilterStrategy s,
                                             const SlotSet* set, const float* q, float radius,
                                             std::size_t max_results, std::size_t ef,
                                             std::uint64_t* dist_count) const {
    std::vector<Candidate> out;
    {
        const Entry e = entry();
        if (e.node < 0) return out;
        const node_id start =
            greedy_descend(k, q, static_cast<node_id>(e.node), e.level, 1, dist_count);
        auto accept = [&](node_id id) {
            return set != nullptr ? set->test(id) : !deleted_at(id);
        };
        const std::size_t n = count_.load();
        // Widen the beam while all of it lies inside the radius: then more may.
        for (std::size_t width = std::max<std::size_t>(ef, 16);; width = std::min(2 * width, n)) {
            MaxHeap top = s == FilterStrategy::TwoHop
                              ? search_two_hop(k, start, q, width, accept, dist_count)
                              : search_filtered(k, start, q, 0, width, accept, dist_count);
            std::size_t inside = 0;
            for (const Candidate& c : top) inside += c.dist < radius;
            if (inside < top.size() || top.size() < width || width >= n ||
                inside >= max_results) {
                for (const Candidate& c : top)
                    if (c.dist < radius) out.push_back(c);
                break;
            }
        }
    }
    std::sort(out.begin(), out.end());
    if (out.size() > max_results) out.resize(max_results);
    return out;
}

RangeResult HNSW::search_range(const float* queries, std::size_t nq, float radius,
                               std::size_t max_results, std::size_t ef, const AllowSpec* allow,
                               FilterStrategy strategy, std::size_t num_threads) const {
    if (!(radius >= 0.f))
        throw std::invalid_argument("radius must be a non-negative number, got " +
                                    std::to_string(radius));
    if (max_results == 0) throw std::invalid_argument("max_results must be at least 1");
    Busy busy(this);
    std::shared_lock<RwLock> lock(storage_mutex_);
    const AllowSpec everything;
    const AllowSpec& spec = allow != nullptr ? *allow : everything;
    std::uint64_t reuses = 0;
    SlotSet set = resolve(spec, &reuses);
    const std::size_t allowed = set.count();
    ef = std::min(std::max<std::size_t>(ef, 1), std::max<std::size_t>(count_.load(), 1));
    const DistanceKernels& kernels = active_kernels();
    // The graph's beam must widen to about twice the results to find them all:
    // estimate the results from an evenly spaced sample of the allowed elements,
    // and plan with that beam.
    std::size_t beam = ef;
    if (strategy == FilterStrategy::Auto && allowed > 0 && nq > 0) {
        const std::size_t samples = std::min<std::size_t>(allowed, 256);
        const std::size_t probes = std::min<std::size_t>(nq, 8);
        std::vector<node_id> sample;
        sample.reserve(samples);
        std::size_t rank = 0;
        set.for_each([&](node_id id) {
            if (sample.size() < samples && rank++ == sample.size() * allowed / samples)
                sample.push_back(id);
        });
        std::size_t hits = 0;
        scan_rows(kernels, queries, probes, sample,
                  [&](std::size_t, const float* d, const node_id*, std::size_t m) {
                      for (std::size_t l = 0; l < m; ++l) hits += d[l] < radius;
                  });
        const double est = static_cast<double>(hits) / static_cast<double>(samples * probes) *
                           static_cast<double>(allowed);
        beam = std::max<std::size_t>(
            ef, static_cast<std::size_t>(std::min(2.0 * std::min(est, double(max_results)),
                                                  static_cast<double>(allowed))));
    }
    PlanInfo info;
    const FilterStrategy s = plan_range(allowed, live_count(), beam, nq, strategy, &info);
    std::vector<std::vector<Candidate>> found(nq);
    std::atomic<std::uint64_t> total{0};
    const auto t0 = std::chrono::steady_clock::now();
    std::size_t units = nq;
    if (s == FilterStrategy::Scan) {
        std::vector<node_id> members;
        members.reserve(allowed);
        set.for_each([&](node_id id) { members.push_back(id); });
        const std::size_t chunk = scan_chunk(nq, num_threads);
        units = (nq + chunk - 1) / chunk;
        parallel_for(units, num_threads, [&](std::size_t c) {
            const std::size_t i0 = c * chunk, m = std::min(chunk, nq - i0);
            scan_rows(kernels, queries + i0 * dim_, m, members,
                      [&](std::size_t i, const float* d, const node_id* ids, std::size_t n) {
                          for (std::size_t l = 0; l < n; ++l)
                              if (d[l] < radius) found[i0 + i].push_back({d[l], ids[l]});
                      });
            for (std::size_t i = i0; i < i0 + m; ++i) {
                auto& f = found[i];
                const std::size_t keep = std::min(max_results, f.size());
                std::partial_sort(f.begin(), f.begin() + static_cast<std::ptrdiff_t>(keep),
                                  f.end());
                f.resize(keep);
            }
        });
        total.store(static_cast<std::uint64_t>(nq) * allowed);
    } else {
        parallel_for(nq, num_threads, [&](std::size_t i) {
            thread_local std::vector<float> scratch;
            const float* q = prepare_query(queries + i * dim_, scratch);
            std::uint64_t computed = 0;
            if (allowed > 0)
                found[i] = range_one(kernels, s, allow != nullptr ? &set : nullptr, q, radius,
                                     max_results, beam, &computed);
            total.fetch_add(computed, std::memory_order_relaxed);
        });
    }
    calibrate_range(s, allowed, live_count(), beam, nq, resolve_threads(num_threads, units),
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                    info.predicted_ns[static_cast<std::size_t>(s)]);
    {
        std::lock_guard<std::mutex> lk(planner_mutex_);
        cost_.last = info;
    }
    // Labels are read now, once: a slot reused later must not rename a result
    // after its check.
    std::vector<std::vector<std::pair<float, label_t>>> hits(nq);
    const auto label_hits = [&](std::size_t i) {
        hits[i].clear();
        for (const Candidate& c : found[i]) hits[i].emplace_back(c.dist, label_at(c.id));
    };
    for (std::size_t i = 0; i < nq; ++i) label_hits(i);
    recheck(spec, reuses, [&](const SlotSet& now, std::size_t i) {
        std::vector<float> scratch;
        if (s == FilterStrategy::Scan) {
            std::vector<node_id> current;
            now.for_each([&](node_id id) { current.push_back(id); });
            found[i].clear();
            scan_rows(kernels, queries + i * dim_, 1, current,
                      [&](std::size_t, const float* d, const node_id* ids, std::size_t n) {
                          for (std::size_t l = 0; l < n; ++l)
                              if (d[l] < radius) found[i].push_back({d[l], ids[l]});
                      });
            std::sort(found[i].begin(), found[i].end());
            if (found[i].size() > max_results) found[i].resize(max_results);
        } else {
            found[i] = range_one(kernels, s, allow != nullptr ? &now : nullptr,
                                 prepare_query(queries + i * dim_, scratch), radius, max_results,
                                 beam, nullptr);
        }
        label_hits(i);
    }, nq, [&](std::size_t i) {
        std::vector<label_t> labels;
        for (const auto& h : hits[i]) labels.push_back(h.second);
        return labels;
    }, [&](std::size_t i, const std::vector<bool>& keep) {
        std::size_t w = 0;
        for (std::size_t r = 0; r < hits[i].size(); ++r)
            if (keep[r]) hits[i][w++] = hits[i][r];
        hits[i].resize(w);
    });
    RangeResult r;
    r.lims.resize(nq + 1, 0);
    for (std::size_t i = 0; i < nq; ++i)
        r.lims[i + 1] = r.lims[i] + static_cast<std::int64_t>(hits[i].size());
    r.labels.reserve(static_cast<std::size_t>(r.lims[nq]));
    r.distances.reserve(static_cast<std::size_t>(r.lims[nq]));
    for (const auto& h : hits)
        for (const auto& [dist, label] : h) {
            r.labels.push_back(label);
            r.distances.push_back(dist);
        }
    last_distance_computations_.store(total.load());
    last_hops_.store(0);  // counted for unfiltered k-NN searches only
    last_queries_.store(nq);
    return r;
}

AttrType HNSW::attribute_values(const std::string& field, const label_t* labels, std::size_t n,
                                void* out, std::uint8_t* is_set) const {
    Busy busy(this);
    std::shared_lock<RwLock> lock(storage_mutex_);
    std::vector<node_id> slots(n);
    {
        std::lock_guard<std::mutex> lk(label_mutex_);
        for (std::size_t i = 0; i < n; ++i) slots[i] = slot_of(labels[i]);
    }
    return attrs_.values(field, slots.data(), n, out, is_set);
}

// ------------------------------------------------------------------ labels

void HNSW::mark_deleted(const label_t* labels, std::size_t n) { set_deleted(labels, n, true); }

void HNSW::unmark_deleted(const label_t* labels, std::size_t n) { set_deleted(labels, n, false); }

// Every label is checked before any flag changes, under one label_mutex_ hold, so
// a batch is deleted (or undeleted) whole or not at all.
void HNSW::set_deleted(const label_t* labels, std::size_t n, bool deleted) {
    Busy busy(this);
    std::shared_lock<RwLock> wlock(write_mutex_);
    std::shared_lock<RwLock> slock(storage_mutex_);
    std::lock_guard<std::mutex> lk(label_mutex_);
    std::vector<node_id> ids(n);
    for (std::size_t i = 0; i < n; ++i) {
        ids[i] = slot_of(labels[i]);
        if (deleted_at(ids[i]) == deleted)
            throw std::invalid_argument("id " + std::to_string(labels[i]) +
                                        (deleted ? " is already deleted" : " is not deleted"));
    }
    if (n > 1) {
        std::vector<node_id> sorted(ids);
        std::sort(sorted.begin(), sorted.end());
        auto twice = std::adjacent_find(sorted.begin(), sorted.end());
        if (twice != sorted.end())
            throw std::invalid_argument("id " + std::to_string(label_at(*twice)) +
                                        " is listed twice");
    }
    for (const node_id id : ids) {
        if (deleted) {
            flags(id) |= kDeletedFlag;
            deleted_slots_.push_back(id);
        } else {
            flags(id) &= ~kDeletedFlag;
        }
    }
    if (deleted)
        num_deleted_ += n;
    else
        num_deleted_ -= n;
}

bool HNSW::is_deleted(label_t label) const {
    Busy busy(this);
    std::shared_lock<RwLock> lock(storage_mutex_);
    std::lock_guard<std::mutex> lk(label_mutex_);
    return deleted_at(slot_of(label));
}

node_id HNSW::slot_of(label_t label) const {
    auto it = label_map_.find(label);
    if (it == label_map_.end())
        throw LabelNotFound("id " + std::to_string(label) + " is not in the index");
    return it->second;
}

bool HNSW::contains(label_t label) const {
    Busy busy(this);
    std::lock_guard<std::mutex> lk(label_mutex_);
    return label_map_.count(label) != 0;
}

void HNSW::get_vectors(const label_t* labels, std::size_t n, float* out) const {
    Busy busy(this);
    std::shared_lock<RwLock> lock(storage_mutex_);
    std::lock_guard<std::mutex> lk(label_mutex_);
    for (std::size_t i = 0; i < n; ++i)
        std::memcpy(out + i * dim_, vec(slot_of(labels[i])), dim_ * sizeof(float));
}

std::vector<label_t> HNSW::labels(bool include_deleted) const {
    ReadSession session(*this);
    return labels_in(session, include_deleted);
}

std::vector<label_t> HNSW::labels_in(const ReadSession& session, bool include_deleted) const {
    if (session.index() != this) throw std::invalid_argument("a read session of another index");
    std::lock_guard<std::mutex> lk(label_mutex_);
    std::vector<label_t> out;
    const std::size_t n = count_.load();
    out.reserve(n);
    for (node_id id = 0; id < n; ++id)
        if (include_deleted || !deleted_at(id)) out.push_back(label_at(id));
    return out;
}

IndexStats HNSW::stats() const {
    Busy busy(this);
    std::shared_lock<RwLock> lock(storage_mutex_);
    IndexStats s;
    const std::size_t n = count_.load();
    s.deleted = num_deleted_.load();
    s.count = n - s.deleted;
    s.capacity = max_elements_.load();
    s.max_level = entry().level;
    s.level_counts.assign(static_cast<std::size_t>(std::max(0, s.max_level) + 1), 0);
    std::size_t upper_bytes = 0;
    for (node_id id = 0; id < n; ++id) {
        const std::size_t lvl = levels_[id];
        if (lvl < s.level_counts.size()) ++s.level_counts[lvl];
        upper_bytes += lvl * (M_ + 1) * sizeof(std::uint32_t);
    }
    std::size_t map_bytes;
    {
        std::lock_guard<std::mutex> lk(label_mutex_);
        // Buckets plus one heap node (next pointer, hash, key, value) per entry.
        map_bytes = label_map_.bucket_count() * sizeof(void*) +
                    label_map_.size() * (sizeof(void*) + sizeof(std::size_t) + 16);
    }
    s.memory_bytes = capacity_ * node_stride_ + upper_bytes +
                     capacity_ * (sizeof(std::unique_ptr<std::uint32_t[]>) + 1 +
                                  sizeof(std::mutex)) +
                     map_bytes + visited_pool_.memory_bytes() + capacity_ * code_stride_ +
                     (blocks_in_rows_ ? 0 : capacity_ * fs_block_bytes_) + attrs_.memory_bytes() +
                     scan_codes_.capacity() + scan_norms_.capacity() * sizeof(float);
    s.last_search_distance_computations = last_distance_computations_.load();
    s.last_search_hops = last_hops_.load();
    s.last_search_queries = last_queries_.load();
    s.node_bytes = node_bytes_;
    s.code_bytes = code_stride_;
    s.pq4_block_bytes = fs_block_bytes_;
    s.edge_group_codes = fs_block_bytes_ ? fs_group_ : 0;
    s.scan_code_bytes = has_scan_codes() ? scan_pq_.code_bytes() : 0;
    return s;
}

// ------------------------------------------------------------------ brute force

void brute_force_knn(const float* data, std::size_t n, std::size_t dim, Space space,
                     const float* queries, std::size_t nq, std::size_t k,
                     const std::uint8_t* allow, std::size_t num_threads, std::int64_t* out_rows,
                     float* out_distances) {
    const DistanceKernels& kern = active_kernels();
    parallel_for(nq, num_threads, [&](std::size_t qi) {
        const float* q = queries + qi * dim;
        thread_local std::vector<float> scratch;
        if (space == Space::Cosine) {
            scratch.resize(dim);
            normalize_into(q, dim, scratch.data());
            q = scratch.data();
        }
        // Max-heap of the k best so far: partial selection, never a full sort.
        std::vector<std::pair<float, std::int64_t>> heap;
        heap.reserve(k + 1);
        for (std::size_t i = 0; i < n; ++i) {
            if (allow != nullptr && allow[i] == 0) continue;
            const float* x = data + i * dim;
            const float d = space == Space::L2 ? kern.l2sq(q, x, dim) : 1.0f - kern.dot(q, x, dim);
            if (heap.size() < k) {
                heap.emplace_back(d, static_cast<std::int64_t>(i));
                std::push_heap(heap.begin(), heap.end());
            } else if (d < heap.front().first) {
                std::pop_heap(heap.begin(), heap.end());
                heap.back() = {d, static_cast<std::int64_t>(i)};
                std::push_heap(heap.begin(), heap.end());
            }
        }
        std::sort_heap(heap.begin(), heap.end());
        for (std::size_t j = 0; j < k; ++j) {
            out_rows[qi * k + j] = j < heap.size() ? heap[j].second : -1;
            out_distances[qi * k + j] = j < heap.size() ? heap[j].first : kInf;
        }
    });
}

}  // namespace evidex
