#include "evidex/ivf.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_set>

#include "evidex/beam.h"
#include "evidex/coded_scan.h"
#include "evidex/distance.h"
#include "evidex/errors.h"
#include "evidex/exact_scan.h"
#include "evidex/kmeans.h"
#include "evidex/parallel.h"
#include "evidex/quantized_scan.h"
#include "evidex/select.h"

namespace evidex {

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Whether residuals get anisotropic codes: inner-product spaces whose weight
// for the threshold exceeds 1.
float ivf_eta(std::size_t dim, Space space, double threshold) {
    // (in float32 too: the weight is computed in float)
    if (!(threshold >= 0.0 && threshold < 1.0 && static_cast<float>(threshold) < 1.f)) {
        char shown[32];
        std::snprintf(shown, sizeof(shown), "%.17g", threshold);
        throw std::invalid_argument(
            std::string("anisotropic_threshold must be in [0, 1) (below 1 in float32), got ") +
            shown);
    }
    return space == Space::L2
               ? 1.f
               : std::max(1.0f, PQ4::anisotropic_eta(dim, static_cast<float>(threshold)));
}

// Subspaces: 2 dimensions up to 256, 4 above; plain (nearest-centroid) codes of
// at most 64 dimensions rank the re-rank list well enough only at 1 dimension
// (bench/RESULTS.md, "IVFIndex subspaces" and "Anisotropic codes").
std::size_t ivf_sub_dim(std::size_t dim, std::size_t pq_dims, float eta) {
    if (pq_dims != 0) return pq_dims;
    if (dim <= 64 && eta <= 1.f) return 1;
    return dim <= 256 ? 2 : 4;
}

}  // namespace

IVFFastScan::IVFFastScan(std::size_t dim, Space space, std::size_t nlist, std::size_t pq_dims,
                         std::uint64_t seed, double anisotropic_threshold)
    : dim_(dim),
      space_(space),
      nlist_(nlist),
      seed_(seed),
      threshold_(anisotropic_threshold),
      eta_(ivf_eta(dim, space, anisotropic_threshold)),
      pq_(dim, ivf_sub_dim(dim, pq_dims, eta_)) {
    if (nlist > (std::size_t{1} << 20)) throw std::invalid_argument("nlist must be at most 2**20");
}

namespace {
std::size_t check_search_default(std::size_t v, const char* name) {
    if (v < 1 || v > IVFFastScan::kMaxSearchDefault)
        throw std::invalid_argument(std::string(name) + " must be in [1, 2**31), got " +
                                    std::to_string(v));
    return v;
}
}  // namespace

void IVFFastScan::set_default_nprobe(std::size_t nprobe) {
    nprobe_.store(check_search_default(nprobe, "nprobe"));
}

void IVFFastScan::set_default_reorder(std::size_t reorder) {
    reorder_.store(check_search_default(reorder, "reorder"));
}

std::size_t IVFFastScan::size() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return labels_.size() - deleted_;
}

std::size_t IVFFastScan::deleted_count() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return deleted_;
}

void IVFFastScan::remove(const label_t* labels, std::size_t n) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    std::unordered_set<label_t> seen;
    seen.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        if (!rows_of_.count(labels[i]))
            throw LabelNotFound("id " + std::to_string(labels[i]) + " is not in the index");
        if (!seen.insert(labels[i]).second)
            throw std::invalid_argument("id " + std::to_string(labels[i]) +
                                        " is listed twice; nothing was deleted");
    }
    for (std::size_t i = 0; i < n; ++i) {
        const auto it = rows_of_.find(labels[i]);
        live_[it->second] = 0;
        rows_of_.erase(it);
    }
    deleted_ += n;
}

std::vector<label_t> IVFFastScan::live_labels() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    std::vector<label_t> out;
    out.reserve(labels_.size() - deleted_);
    for (std::size_t r = 0; r < labels_.size(); ++r)
        if (live_[r]) out.push_back(labels_[r]);
    return out;
}

void IVFFastScan::get_vectors(const label_t* labels, std::size_t n, float* out) const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    for (std::size_t i = 0; i < n; ++i)
        if (!rows_of_.count(labels[i]))
            throw LabelNotFound("id " + std::to_string(labels[i]) + " is not in the index");
    for (std::size_t i = 0; i < n; ++i)
        std::copy_n(vectors_.data() + std::size_t{rows_of_.at(labels[i])} * dim_, dim_,
                    out + i * dim_);
}

std::size_t IVFFastScan::nlist() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    return nlist_;
}

std::size_t IVFFastScan::memory_bytes() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    std::size_t bytes = (centroids_.capacity() + centroid_norms_.capacity() + vectors_.capacity()) *
                            sizeof(float) +
                        labels_.capacity() * sizeof(label_t) + live_.capacity() +
                        rows_of_.size() * (sizeof(label_t) + sizeof(std::uint32_t) + 16);
    bytes += arena_.capacity() + (start_.capacity() + count_.capacity()) * sizeof(std::size_t);
    return bytes;
}

void IVFFastScan::train(const float* data, std::size_t n, std::size_t num_threads) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    if (!labels_.empty()) throw std::runtime_error("train() must precede the first add");
    train_locked(data, n, num_threads);
}

// k-means on an evenly spaced sample (at most 256 points per centroid),
// then the residual quantiser on the sample's residuals to their centroids.
void IVFFastScan::train_locked(const float* data, std::size_t n, std::size_t num_threads) {
    if (n == 0) throw std::invalid_argument("training needs at least one vector");
    std::size_t nlist = nlist_ ? nlist_ : std::max<std::size_t>(1, static_cast<std::size_t>(
                                                                        2 * std::sqrt(double(n))));
    nlist = std::min(nlist, n);
    const std::size_t m = std::min(n, std::max<std::size_t>(256 * nlist, 1));
    std::vector<float> x(m * dim_);
    for (std::size_t i = 0; i < m; ++i) {
        const float* row = data + (i * n / m) * dim_;
        if (space_ == Space::Cosine)
            normalize_into(row, dim_, x.data() + i * dim_);
        else
            std::copy_n(row, dim_, x.data() + i * dim_);
    }
    // Up to 25 rounds on up to 256 points a centroid, until a round moves under 1%
    // of them: on GloVe-200k (~1% still moving at round 25) the lists' own recall
    // (every candidate re-ranked) at 64 lists rose 0.954 -> 0.958 against 10 rounds
    // on 64 points, and what 100 re-ranked keep 0.945 -> 0.951 (ScaNN's tree
    // 0.956 / 0.951); MiniLM-100k (settled by round 15) gained nothing.
    std::vector<float> c = kmeans(x.data(), m, dim_, nlist, 25, seed_, num_threads, 1e-2);
    centroids_ = std::move(c);
    nlist_ = nlist;
    index_centroids();
    // Residuals of the sample to their (final) nearest centroids, and (for the
    // anisotropic loss) the unit directions of the vectors they belong to.
    std::vector<float> directions(eta_ > 1.f ? m * dim_ : 0);
    std::vector<std::uint32_t> nearest(m);
    nearest_centroids(x.data(), m, nearest.data(), num_threads);
    for (std::size_t i = 0; i < m; ++i) {
        float* r = x.data() + i * dim_;
        if (!directions.empty()) normalize_into(r, dim_, directions.data() + i * dim_);
        const std::size_t j = nearest[i];
        for (std::size_t t = 0; t < dim_; ++t) r[t] -= centroids_[j * dim_ + t];
    }
    if (eta_ > 1.f)
        pq_.fit_anisotropic(x.data(), directions.data(), m, eta_, seed_, num_threads);
    else
        pq_.fit(x.data(), m, seed_, num_threads);
    start_.assign(nlist + 1, 0);
    count_.assign(nlist, 0);
    trained_ = true;
}

void IVFFastScan::index_centroids() {
    const DistanceKernels& k = active_kernels();
    centroid_norms_.resize(nlist_);
    for (std::size_t j = 0; j < nlist_; ++j)
        centroid_norms_[j] = k.dot(centroids_.data() + j * dim_, centroids_.data() + j * dim_, dim_);
    npanels_ = (nlist_ + kPanelWidth - 1) / kPanelWidth;
    panels_ = pack_panels(centroids_.data(), nlist_, dim_);
}

void IVFFastScan::nearest_centroids(const float* x, std::size_t n, std::uint32_t* out,
                                    std::size_t num_threads) const {
    nearest_centers(active_kernels(), x, n, dim_, panels_.data(), centroid_norms_.data(), nlist_,
                    out, num_threads);
}

label_t IVFFastScan::add_auto(const float* data, std::size_t n, std::size_t num_threads) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    const label_t first = next_label_;
    if (n > kLabelLimit - first) throw std::invalid_argument("ids would pass 2**63");
    std::vector<label_t> labels(n);
    for (std::size_t i = 0; i < n; ++i) labels[i] = first + i;
    add_locked(data, n, labels.data(), num_threads);
    return first;
}

void IVFFastScan::add(const float* data, std::size_t n, const label_t* labels,
                      std::size_t num_threads) {
    std::unique_lock<std::shared_mutex> lock(mutex_);
    add_locked(data, n, labels, num_threads);
}

void IVFFastScan::add_locked(const float* data, std::size_t n, const label_t* labels,
                             std::size_t num_threads) {
    {
        std::unordered_map<label_t, std::size_t> batch;
        batch.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
            if (labels[i] >= kLabelLimit)
                throw std::invalid_argument("ids must be below 2**63, got " + std::to_string(labels[i]));
            if (rows_of_.count(labels[i]) || !batch.emplace(labels[i], i).second)
                throw std::invalid_argument("id " + std::to_string(labels[i]) +
                                            (rows_of_.count(labels[i]) ? " is already in the index"
                                                                       : " appears twice in the batch") +
                                            " (an IVF index does not update in place: "
                                            "delete the id, then add it)");
        }
    }
    // The arena is rebuilt anyway: drop deleted rows once they are as many as the
    // live ones, so updates do not grow the index (or every add's copy) for ever.
    const bool compact = deleted_ != 0 && deleted_ >= labels_.size() - deleted_;
    if ((compact ? labels_.size() - deleted_ : labels_.size()) + n >= (std::size_t{1} << 32) - 1)
        throw std::invalid_argument("an IVF index holds fewer than 2**32 - 1 vectors");
    if (n == 0) return;
    if (!trained_) train_locked(data, n, num_threads);
    if (compact) compact_locked();
    const std::size_t first = labels_.size();
    vectors_.resize((first + n) * dim_);
    std::vector<std::uint32_t> list_of(n);
    parallel_for(n, num_threads, [&](std::size_t i) {
        float* v = vectors_.data() + (first + i) * dim_;
        if (space_ == Space::Cosine)
            normalize_into(data + i * dim_, dim_, v);
        else
            std::copy_n(data + i * dim_, dim_, v);
    });
    nearest_centroids(vectors_.data() + first * dim_, n, list_of.data(), num_threads);
    // Codes of the new rows.
    const std::size_t cb = pq_.code_bytes();
    std::vector<std::uint8_t> codes(n * cb);
    parallel_for(n, num_threads, [&](std::size_t i) {
        thread_local std::vector<float> residual, direction;
        residual.resize(dim_);
        const float* v = vectors_.data() + (first + i) * dim_;
        const float* c = centroids_.data() + std::size_t{list_of[i]} * dim_;
        for (std::size_t t = 0; t < dim_; ++t) residual[t] = v[t] - c[t];
        if (eta_ > 1.f) {
            direction.resize(dim_);
            normalize_into(v, dim_, direction.data());
            pq_.encode_anisotropic(residual.data(), direction.data(), eta_, codes.data() + i * cb);
        } else {
            pq_.encode(residual.data(), codes.data() + i * cb);
        }
    });
    append_rows(first, n, list_of.data(), codes.data());
    labels_.insert(labels_.end(), labels, labels + n);
    live_.insert(live_.end(), n, 1);
    for (std::size_t i = 0; i < n; ++i) {
        rows_of_.emplace(labels[i], static_cast<std::uint32_t>(first + i));
        next_label_ = std::max(next_label_, labels[i] + 1);
    }
}

void IVFFastScan::rows_in_lists(std::vector<std::uint32_t>& lists,
                                std::vector<std::uint8_t>& codes) const {
    const std::size_t n = labels_.size();
    const std::size_t cb = pq_.code_bytes(), group = pq_.group_bytes(), stride = group_stride();
    lists.assign(n, 0);
    codes.assign(n * cb, 0);
    for (std::size_t j = 0; j < count_.size(); ++j)
        for (std::size_t slot = 0; slot < count_[j]; ++slot) {
            const std::uint8_t* g = arena_.data() + (start_[j] + slot / PQ4::kGroup) * stride;
            std::uint32_t row;
            std::memcpy(&row, g + group + (slot % PQ4::kGroup) * 4, 4);
            lists[row] = static_cast<std::uint32_t>(j);
            pq_.take(g, slot % PQ4::kGroup, codes.data() + std::size_t{row} * cb);
        }
}

// Drops the deleted rows: the live ones renumbered in order, their codes kept,
// the lists refiled (append_rows), so the arena and the memory shrink.
void IVFFastScan::compact_locked() {
    std::vector<std::uint32_t> lists;
    std::vector<std::uint8_t> codes;
    rows_in_lists(lists, codes);
    const std::size_t cb = pq_.code_bytes();
    std::size_t w = 0;
    for (std::size_t r = 0; r < labels_.size(); ++r) {
        if (!live_[r]) continue;
        if (w != r) {
            std::copy_n(vectors_.data() + r * dim_, dim_, vectors_.data() + w * dim_);
            std::copy_n(codes.data() + r * cb, cb, codes.data() + w * cb);
            labels_[w] = labels_[r];
            lists[w] = lists[r];
        }
        rows_of_[labels_[w]] = static_cast<std::uint32_t>(w);
        ++w;
    }
    vectors_.resize(w * dim_);
    vectors_.shrink_to_fit();
    labels_.resize(w);
    live_.assign(w, 1);
    deleted_ = 0;
    arena_.clear();
    start_.assign(nlist_ + 1, 0);
    count_.assign(nlist_, 0);
    append_rows(0, w, lists.data(), codes.data());
}

// By list in row order (deterministic: a loaded index rebuilds the same arena).
void IVFFastScan::append_rows(std::size_t first, std::size_t n, const std::uint32_t* list_of,
                              const std::uint8_t* codes) {
    const DistanceKernels& k = active_kernels();
    const std::size_t cb = pq_.code_bytes(), group = pq_.group_bytes();
    std::vector<std::vector<std::uint32_t>> added(nlist_);
    for (std::size_t i = 0; i < n; ++i) added[list_of[i]].push_back(static_cast<std::uint32_t>(i));
    // The new arena: each list's old groups copied whole, its new slots filled after.
    auto groups = [](std::size_t c) { return (c + PQ4::kGroup - 1) / PQ4::kGroup; };
    const std::size_t stride = group_stride();
    std::vector<std::size_t> start(nlist_ + 1, 0), count(nlist_);
    for (std::size_t j = 0; j < nlist_; ++j) {
        count[j] = count_[j] + added[j].size();
        start[j + 1] = start[j] + groups(count[j]);
    }
    decltype(arena_) arena(start[nlist_] * stride, 0);
    for (std::size_t j = 0; j < nlist_; ++j) {
        const std::size_t old = count_[j];
        std::copy_n(arena_.data() + start_[j] * stride, groups(old) * stride,
                    arena.data() + start[j] * stride);
        for (std::size_t t = 0; t < added[j].size(); ++t) {
            const std::size_t i = added[j][t], slot = old + t;
            std::uint8_t* g = arena.data() + (start[j] + slot / PQ4::kGroup) * stride;
            const std::size_t at = slot % PQ4::kGroup;
            pq_.place(g, at, codes + i * cb);
            const auto row = static_cast<std::uint32_t>(first + i);
            std::memcpy(g + group + at * 4, &row, 4);
            if (space_ == Space::L2) {
                const float* v = vectors_.data() + (first + i) * dim_;
                const float extra = k.dot(v, v, dim_) - centroid_norms_[j];
                std::memcpy(g + group + PQ4::kGroup * 4 + at * 4, &extra, 4);
            }
        }
    }
    arena_ = std::move(arena);
    start_ = std::move(start);
    count_ = std::move(count);
}

void IVFFastScan::search(const float* queries, std::size_t nq, std::size_t k, std::size_t nprobe,
                         std::size_t reorder, std::size_t num_threads, label_t* out_labels,
                         float* out_distances, const label_t* allowed,
                         std::size_t n_allowed) const {
    if (k == 0) throw std::invalid_argument("k must be at least 1");
    if (nprobe == 0) throw std::invalid_argument("nprobe must be at least 1");
    std::shared_lock<std::shared_mutex> lock(mutex_);
    // At least k re-ranked; more than the index holds would only size buffers.
    reorder = std::max(k, std::min(reorder, labels_.size()));
    // Which rows may answer: the live ones, narrowed to an allow-list.
    std::vector<std::uint8_t> allowed_rows;
    std::vector<std::uint32_t> members;
    const std::uint8_t* keep = deleted_ != 0 ? live_.data() : nullptr;
    if (allowed != nullptr) {
        allowed_rows.assign(labels_.size(), 0);
        for (std::size_t i = 0; i < n_allowed; ++i) {
            const auto it = rows_of_.find(allowed[i]);  // live ids only
            if (it != rows_of_.end() && !allowed_rows[it->second]) {
                allowed_rows[it->second] = 1;
                members.push_back(it->second);
            }
        }
        keep = allowed_rows.data();
        if (exact_path_pays(nq, members.size(), nprobe, reorder)) {
            std::sort(members.begin(), members.end());  // memory order, ties by row
            scan_rows(queries, nq, k, members, num_threads, out_labels, out_distances);
            return;
        }
    }
    // Batches: a chunk's queries against each panel of centroids as a matrix
    // product (the panel kernels; the same values as one query's), then each
    // query's lists. Chunks of fewer than 4 gain nothing over one at a time.
    const std::size_t threads = query_threads(num_threads, nq);
    const std::size_t chunk = std::min<std::size_t>(32, (nq + threads - 1) / threads);
    if (chunk < 4 || labels_.empty()) {  // (search_one answers an empty index)
        parallel_for(nq, threads, [&](std::size_t i) {
            search_one(queries + i * dim_, k, nprobe, reorder, keep, out_labels + i * k,
                       out_distances + i * k);
        });
        return;
    }
    const std::size_t chunks = (nq + chunk - 1) / chunk;
    const std::size_t width = npanels_ * kPanelWidth;
    parallel_for(chunks, threads, [&](std::size_t c) {
        const DistanceKernels& kern = active_kernels();
        const std::size_t i0 = c * chunk, m = std::min(chunk, nq - i0);
        std::vector<float> prepared(space_ == Space::Cosine ? m * dim_ : 0), dots(m * width),
            out(m * kPanelWidth);
        const float* qs = queries + i0 * dim_;
        if (space_ == Space::Cosine) {
            for (std::size_t i = 0; i < m; ++i)
                normalize_into(qs + i * dim_, dim_, prepared.data() + i * dim_);
            qs = prepared.data();
        }
        for (std::size_t p = 0; p < npanels_; ++p) {
            kern.dot_panel(qs, dim_, m, panels_.data() + p * dim_ * kPanelWidth, dim_, out.data());
            for (std::size_t i = 0; i < m; ++i)
                std::copy_n(out.data() + i * kPanelWidth, kPanelWidth,
                            dots.data() + i * width + p * kPanelWidth);
        }
        for (std::size_t i = 0; i < m; ++i)
            search_lists(qs + i * dim_, dots.data() + i * width, k, nprobe, reorder, keep,
                         out_labels + (i0 + i) * k, out_distances + (i0 + i) * k);
    });
}

// Whether scanning the allowed vectors exactly costs less time than the lists:
// the estimated nanoseconds per query of each, fitted on the filtered searches of
// MiniLM-384 100k and GloVe-50 200k (machine A, bench/RESULTS.md, "IVFIndex's
// exact path"). The exact scan: a product per dimension and row (fewer with the
// 8-bit pass), each row read once per chunk of queries. The lists: the
// centroids, the codes of nprobe lists (those allowed go to the shortlist),
// `reorder` rows fetched and measured; a call of few queries pays more per query
// on both. Comparing bytes read instead chose the lists from ~350 allowed MiniLM
// vectors, where in batches they took 43-67 us a query and the exact scan 4-47 us
// up to 10,000.
bool IVFFastScan::exact_path_pays(std::size_t nq, std::size_t allowed, std::size_t nprobe,
                                  std::size_t reorder) const {
    const DistanceKernels& k = active_kernels();
    const double dim = static_cast<double>(dim_), total = static_cast<double>(labels_.size());
    const double rows = static_cast<double>(allowed);
    const double chunk = static_cast<double>(scan_chunk_size(nq, dim_, 1));  // queries a pass
    const double per_product =
        quantized_scan_pays(k, nq, dim_, allowed) ? (k.int8_fast ? 0.008 : 0.014) : 0.020;
    const double exact =
        rows * (dim * per_product + 1.0 + (dim * sizeof(float) * 0.1 + 20.0) / chunk);
    const double scanned = static_cast<double>(std::min(nprobe, nlist_)) * total /
                           static_cast<double>(std::max<std::size_t>(nlist_, 1));
    const double lists = static_cast<double>(nlist_) * dim * 0.025 +
                         scanned * (static_cast<double>(pq_.subspaces()) * 0.03 + 2.0 +
                                    25.0 * rows / std::max(total, 1.0)) +
                         static_cast<double>(reorder) * (dim * 0.025 + 60.0) + 20000.0 / chunk;
    return exact <= lists;
}

void IVFFastScan::scan_rows(const float* queries, std::size_t nq, std::size_t kk,
                            const std::vector<std::uint32_t>& rows, std::size_t num_threads,
                            label_t* out_labels, float* out_distances) const {
    const std::size_t threads = query_threads(num_threads, nq);
    const std::size_t chunk = scan_chunk_size(nq, dim_, threads);
    std::vector<std::uint32_t> found(nq * kk);
    parallel_for((nq + chunk - 1) / chunk, threads, [&](std::size_t c) {
        const std::size_t i0 = c * chunk, m = std::min(chunk, nq - i0);
        const auto row = [&](std::size_t j) {
            return vectors_.data() + std::size_t{rows[j]} * dim_;
        };
        exact_scan_rows(active_kernels(), space_ == Space::L2, space_ == Space::Cosine, dim_,
                        queries + i0 * dim_, m, rows.size(), row, kk, /*bits=*/0,
                        found.data() + i0 * kk, out_distances + i0 * kk);
    });
    for (std::size_t i = 0; i < nq * kk; ++i)
        out_labels[i] = found[i] == kNoRow ? kNoLabel : labels_[rows[found[i]]];
}

const float* IVFFastScan::prepare_query(const float* query, std::vector<float>& buffer) const {
    if (space_ != Space::Cosine) return query;
    buffer.resize(dim_);
    normalize_into(query, dim_, buffer.data());
    return buffer.data();
}

void IVFFastScan::search_one(const float* query, std::size_t kk, std::size_t nprobe,
                             std::size_t reorder, const std::uint8_t* keep,
                             label_t* out_labels, float* out_distances) const {
    if (labels_.empty()) {
        std::fill(out_labels, out_labels + kk, kNoLabel);
        std::fill(out_distances, out_distances + kk, kInf);
        return;
    }
    // Per-query buffers are plain locals: thread_local ones are looked up again
    // after every call in a shared library, and that sat in the scan loop.
    std::vector<float> qbuf, dots(npanels_ * kPanelWidth);
    const float* q = prepare_query(query, qbuf);
    active_kernels().dot_panels(q, panels_.data(), npanels_, dim_, dots.data());
    search_lists(q, dots.data(), kk, nprobe, reorder, keep, out_labels, out_distances);
}

void IVFFastScan::search_lists(const float* q, float* cdist, std::size_t kk, std::size_t nprobe,
                               std::size_t reorder, const std::uint8_t* keep,
                               label_t* out_labels, float* out_distances) const {
    const DistanceKernels& k = active_kernels();
    const bool l2 = space_ == Space::L2;
    PQ4::Tables tables;
    // The nprobe nearest centroids in the index's distance, nearest first (the
    // bound of the scan then tightens early).
    nprobe = std::min(nprobe, nlist_);
    std::vector<std::uint32_t> lists(nlist_);
    const float qq = l2 ? k.dot(q, q, dim_) : 0.f;
    for (std::size_t j = 0; j < nlist_; ++j) {
        cdist[j] = l2 ? qq - 2.f * cdist[j] + centroid_norms_[j] : 1.f - cdist[j];
        lists[j] = static_cast<std::uint32_t>(j);
    }
    // A loose cut (cheaper), then the exact nprobe by sorting the few kept.
    const std::size_t kept = keep_smallest(cdist, lists.data(), nlist_, nprobe, nprobe / 4);
    // Sorted by one integer key each, distance then position (the kept are in list
    // order): comparing (distance, list) pairs took ~5% of a search.
    std::vector<std::uint64_t> order(kept);
    for (std::size_t p = 0; p < kept; ++p)
        order[p] = std::uint64_t{static_cast<std::uint32_t>(order_key(cdist[p])) ^ 0x80000000u}
                       << 32 | p;
    std::sort(order.begin(), order.end());
    std::vector<std::pair<float, std::uint32_t>> near(nprobe);
    for (std::size_t p = 0; p < nprobe; ++p) {
        const auto at = static_cast<std::uint32_t>(order[p]);
        near[p] = {cdist[at], lists[at]};
    }

    pq_.tables(q, l2, tables);
    const std::uint8_t* lut = tables.lut.data();
    const float scale = tables.scale;
    const std::size_t nsub = pq_.subspaces(), group = pq_.group_bytes();
    Shortlist best(reorder);
    alignas(64) std::uint16_t est[PQ4::kGroup];
    // The next list's start, fetched while this one is scanned.
    const std::size_t stride = group_stride();
    auto prefetch_list = [&](std::size_t j) {
        const std::size_t lead = std::min<std::size_t>(2, start_[j + 1] - start_[j]);
        prefetch_vector(reinterpret_cast<const char*>(arena_.data() + start_[j] * stride),
                        lead * stride);
    };
    constexpr std::size_t kListsAhead = 2;
    for (std::size_t p = 0; p < std::min(kListsAhead, nprobe); ++p) prefetch_list(near[p].second);
    for (std::size_t p = 0; p < nprobe; ++p) {
        const std::size_t list = near[p].second;
        if (p + kListsAhead < nprobe) prefetch_list(near[p + kListsAhead].second);
        const float base = near[p].first + tables.bias;
        const std::size_t count = count_[list];
        const std::uint8_t* first_group = arena_.data() + start_[list] * stride;
        for (std::size_t g = 0; g * PQ4::kGroup < count; ++g) {
            const std::uint8_t* at_group = first_group + g * stride;
            if ((g + 2) * PQ4::kGroup < count)
                prefetch_vector(reinterpret_cast<const char*>(at_group + 2 * stride), stride);
            k.fastscan32(at_group, lut, nsub, est);
            const auto* rows = reinterpret_cast<const std::uint32_t*>(at_group + group);
            const float* extra =
                l2 ? reinterpret_cast<const float*>(at_group + group + PQ4::kGroup * 4) : nullptr;
            best.offer(est, extra, base, scale, std::min(PQ4::kGroup, count - g * PQ4::kGroup),
                       [&](unsigned j) { return rows[j]; },
                       // deleted or filtered out
                       [&](std::uint32_t row) { return keep == nullptr || keep[row] != 0; });
        }
    }
    best.finish();
    std::vector<std::uint32_t> found(kk);
    rerank_rows(k, l2, q, dim_, best.rows(), best.size(), kk,
                [&](std::uint32_t row) { return vectors_.data() + std::size_t{row} * dim_; },
                found.data(), out_distances);
    for (std::size_t i = 0; i < kk; ++i)
        out_labels[i] = found[i] == kNoRow ? kNoLabel : labels_[found[i]];
}

}  // namespace evidex
