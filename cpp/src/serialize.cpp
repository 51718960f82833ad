// The index file format (version 1), little-endian:
//   Header (fixed 256 bytes: magic, version, parameters, section offsets, the
//           payload checksum and a checksum of the header itself)
//   level-0 block   count * node_bytes, at a 64-byte aligned offset so that a
//                   private memory mapping can serve it directly
//   upper section   one level byte per node (padded to 8), then each node's upper
//                   link lists, level * (M + 1) u32
// Loading validates every field, both checksums and the graph's structure, so a
// truncated, corrupted or hostile file raises instead of crashing a search later.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>

#include "evidex/errors.h"
#include "evidex/hnsw.h"

namespace evidex {
namespace {

constexpr char kMagic[8] = {'E', 'V', 'D', 'X', 'H', 'N', 'S', 'W'};
constexpr std::uint32_t kFormatVersion = 1;
constexpr std::uint32_t kEndianTag = 0x01020304;
constexpr std::size_t kHeaderBytes = 256;

struct Header {
    char magic[8];
    std::uint32_t version;
    std::uint32_t endian_tag;
    std::uint64_t header_bytes;
    std::uint64_t dim, space, M, M0, ef_construction, seed;
    std::uint64_t capacity, count, num_deleted, next_label;
    std::int64_t entry_point, max_level;
    std::uint64_t node_bytes, level0_offset, level0_bytes, upper_offset, upper_bytes, file_bytes;
    std::uint64_t payload_checksum;
    std::uint64_t ef;
    std::uint64_t quantization, trained, quant_offset, quant_bytes;
    std::uint64_t reserved[4];
    std::uint64_t header_checksum;  // over every byte before this field
};
static_assert(sizeof(Header) == kHeaderBytes, "header layout");
static_assert(std::is_trivially_copyable<Header>::value, "header layout");

// 64-bit FNV-1a over 8-byte words: fast, and any single-word change (a flipped
// bit, a torn write) changes the result since each step is a bijection.
class Checksum {
public:
    void update(const void* data, std::size_t n) {
        const auto* p = static_cast<const unsigned char*>(data);
        while (n > 0 && fill_ > 0) {
            buf_[fill_++] = *p++;
            --n;
            if (fill_ == 8) flush_word();
        }
        while (n >= 8) {
            std::uint64_t w;
            std::memcpy(&w, p, 8);
            mix(w);
            p += 8;
            n -= 8;
        }
        // Here fill_ == 0 or n == 0, and n < 8.
        std::memcpy(buf_ + fill_, p, n);
        fill_ += n;
    }
    std::uint64_t digest() const {
        Checksum copy = *this;
        if (copy.fill_ > 0) {
            while (copy.fill_ < 8) copy.buf_[copy.fill_++] = 0;
            copy.flush_word();
        }
        copy.mix(0x9e3779b97f4a7c15ULL);
        return copy.h_;
    }

private:
    void mix(std::uint64_t w) { h_ = (h_ ^ w) * 0x100000001b3ULL; }
    void flush_word() {
        std::uint64_t w;
        std::memcpy(&w, buf_, 8);
        mix(w);
        fill_ = 0;
    }
    std::uint64_t h_ = 0xcbf29ce484222325ULL;
    unsigned char buf_[8] = {};
    std::size_t fill_ = 0;
};

std::uint64_t header_checksum(const Header& h) {
    Checksum c;
    c.update(&h, offsetof(Header, header_checksum));
    return c.digest();
}

std::size_t round_up(std::size_t x, std::size_t a) { return (x + a - 1) / a * a; }

[[noreturn]] void corrupt(const std::string& what) {
    throw CorruptIndexError("invalid evidex index file: " + what);
}

}  // namespace

// Friend of HNSW: the one place that knows the byte layout of a saved index.
class HNSW::Serializer {
public:
    // Write the whole file through `sink(const void*, size_t)`; the caller holds
    // the storage lock exclusively.
    template <class Sink>
    static void write(const HNSW& index, Sink&& sink) {
        const std::size_t n = index.count_.load();
        Header h{};
        std::memcpy(h.magic, kMagic, 8);
        h.version = kFormatVersion;
        h.endian_tag = kEndianTag;
        h.header_bytes = kHeaderBytes;
        h.dim = index.dim_;
        h.space = static_cast<std::uint64_t>(index.space_);
        h.M = index.M_;
        h.M0 = index.M0_;
        h.ef_construction = index.ef_construction_;
        h.seed = index.seed_;
        h.ef = index.ef_.load();
        h.capacity = index.capacity_;
        h.count = n;
        h.num_deleted = index.num_deleted_.load();
        h.next_label = index.next_label_.load();
        h.entry_point = index.entry().node;
        h.max_level = index.entry().level;
        h.node_bytes = index.node_bytes_;
        h.level0_offset = round_up(kHeaderBytes, 64);
        h.level0_bytes = n * index.node_bytes_;
        h.upper_offset = h.level0_offset + h.level0_bytes;
        std::size_t upper = round_up(n, 8);
        for (node_id id = 0; id < n; ++id) upper += upper_block_bytes(index, id);
        h.upper_bytes = round_up(upper, 8);
        h.quantization = static_cast<std::uint64_t>(index.quant_);
        h.trained = index.trained_;
        h.quant_offset = h.upper_offset + h.upper_bytes;
        h.quant_bytes = quant_section_bytes(index, n);
        h.file_bytes = h.quant_offset + h.quant_bytes;

        Checksum payload;
        for_each_payload_chunk(index, h, [&](const void* p, std::size_t len) {
            payload.update(p, len);
        });
        h.payload_checksum = payload.digest();
        h.header_checksum = header_checksum(h);

        sink(&h, sizeof(h));
        static const char zeros[64] = {};
        sink(zeros, h.level0_offset - kHeaderBytes);
        for_each_payload_chunk(index, h, sink);
    }

    // Build an index from a complete file image. With `mapping` set, the level-0
    // block is used in place (the index then owns and unmaps the mapping).
    static std::unique_ptr<HNSW> read(const char* data, std::size_t size, std::size_t max_elements,
                                      void* mapping, std::size_t mapping_bytes) {
        if (size < kHeaderBytes)
            corrupt("truncated: " + std::to_string(size) + " bytes, smaller than the header");
        Header h;
        std::memcpy(&h, data, sizeof(h));
        if (std::memcmp(h.magic, kMagic, 8) != 0) corrupt("bad magic, not an evidex index");
        if (h.version > kFormatVersion)
            corrupt("format version " + std::to_string(h.version) +
                    " is newer than this evidex supports (" + std::to_string(kFormatVersion) +
                    "); upgrade evidex");
        if (h.version == 0) corrupt("format version 0 is not valid");
        if (h.endian_tag != kEndianTag) corrupt("written on a machine of other byte order");
        if (h.header_checksum != header_checksum(h)) corrupt("header checksum mismatch");
        if (h.file_bytes != size)
            corrupt((size < h.file_bytes ? "truncated: expected " : "trailing data: expected ") +
                    std::to_string(h.file_bytes) + " bytes, found " + std::to_string(size));
        if (h.space > 2 || h.dim == 0 || h.dim > (1u << 24) || h.M < 2 || h.M > 2048 ||
            h.M0 != 2 * h.M || h.count > h.capacity || h.capacity >= 0xffffffffULL ||
            h.num_deleted > h.count || h.max_level < -1 || h.max_level > 255 ||
            h.entry_point < -1 || h.entry_point >= static_cast<std::int64_t>(h.count) ||
            (h.count == 0) != (h.entry_point == -1))
            corrupt("inconsistent parameters in the header");

        if (h.quantization > 1 || h.trained > 1 || (h.quantization == 1 && h.count > 0 && !h.trained))
            corrupt("inconsistent quantisation fields in the header");
        std::unique_ptr<HNSW> index(new HNSW(h.dim, static_cast<Space>(h.space), h.M,
                                             h.ef_construction, 0, h.seed,
                                             static_cast<Quantization>(h.quantization)));
        if (index->node_bytes_ != h.node_bytes || h.level0_offset < kHeaderBytes ||
            h.level0_offset % 64 != 0 || h.level0_bytes != h.count * h.node_bytes ||
            h.upper_offset != h.level0_offset + h.level0_bytes || h.upper_bytes < h.count ||
            h.quant_offset != h.upper_offset + h.upper_bytes ||
            h.quant_bytes != quant_section_bytes(*index, h.count) ||
            h.quant_offset + h.quant_bytes != h.file_bytes)
            corrupt("inconsistent section sizes in the header");

        Checksum payload;
        payload.update(data + h.level0_offset, h.file_bytes - h.level0_offset);
        if (payload.digest() != h.payload_checksum)
            corrupt("data checksum mismatch: the file is corrupted");

        const std::size_t n = h.count;
        const std::size_t capacity = std::max<std::size_t>(n, max_elements);
        index->ef_.store(h.ef);
        index->trained_ = h.trained != 0;
        index->count_.store(n);
        index->num_deleted_.store(h.num_deleted);
        index->next_label_.store(h.next_label);
        index->set_entry(h.entry_point, static_cast<int>(h.max_level));
        const char* level0 = data + h.level0_offset;
        if (mapping != nullptr && capacity == n) {
            index->release_storage();
            index->level0_ = const_cast<char*>(level0);
            index->mapping_ = mapping;
            index->mapping_bytes_ = mapping_bytes;
            index->count_.store(0);  // nothing to carry over into the new slots
            index->allocate_slots(n);
            index->count_.store(n);
        } else {
            index->count_.store(0);
            index->allocate(capacity);
            index->count_.store(n);
            std::memcpy(index->level0_, level0, h.level0_bytes);
        }

        try {
            read_upper_and_validate(*index, h, data);
        } catch (...) {
            // The mapping is the caller's again until read() returns.
            if (index->mapping_ != nullptr) {
                index->mapping_ = nullptr;
                index->level0_ = nullptr;
            }
            throw;
        }
        return index;
    }

private:
    static void read_upper_and_validate(HNSW& target, const Header& h, const char* data) {
        HNSW* index = &target;
        const std::size_t n = h.count;
        const char* up = data + h.upper_offset;
        const char* up_end = up + h.upper_bytes;
        std::memcpy(index->levels_.data(), up, n);
        const char* cursor = up + round_up(n, 8);
        for (node_id id = 0; id < n; ++id) {
            const std::size_t bytes = upper_block_bytes(*index, id);
            if (bytes == 0) continue;
            if (cursor + bytes > up_end) corrupt("upper levels run past the end of the file");
            index->upper_[id].reset(new std::uint32_t[bytes / sizeof(std::uint32_t)]);
            std::memcpy(index->upper_[id].get(), cursor, bytes);
            cursor += bytes;
        }
        if (index->quant_ == Quantization::SQ8) {
            const char* qp = data + h.quant_offset;
            const std::size_t dbytes = index->dim_ * sizeof(float);
            std::memcpy(index->qmin_.data(), qp, dbytes);
            std::memcpy(index->qscale_.data(), qp + dbytes, dbytes);
            for (std::size_t d = 0; d < index->dim_; ++d) {
                if (!std::isfinite(index->qmin_[d]) || !(index->qscale_[d] > 0.f) ||
                    !std::isfinite(index->qscale_[d]))
                    if (index->trained_) corrupt("invalid quantiser ranges");
                index->qweight_[d] = index->qscale_[d] * index->qscale_[d];
            }
            std::memcpy(index->codes_, qp + 2 * dbytes, n * index->code_stride_);
        }
        index->rebuild_label_map_and_validate();
    }

    static std::size_t quant_section_bytes(const HNSW& index, std::size_t n) {
        if (index.quant_ != Quantization::SQ8) return 0;
        return round_up(2 * index.dim_ * sizeof(float) + n * index.code_stride_, 8);
    }

    static std::size_t upper_block_bytes(const HNSW& index, node_id id) {
        return static_cast<std::size_t>(index.levels_[id]) * (index.M_ + 1) * sizeof(std::uint32_t);
    }

    template <class Sink>
    static void for_each_payload_chunk(const HNSW& index, const Header& h, Sink&& sink) {
        const std::size_t n = h.count;
        if (h.level0_bytes) sink(index.level0_, h.level0_bytes);
        static const char zeros[8] = {};
        if (n) sink(index.levels_.data(), n);
        sink(zeros, round_up(n, 8) - n);
        std::size_t written = round_up(n, 8);
        for (node_id id = 0; id < n; ++id) {
            const std::size_t bytes = upper_block_bytes(index, id);
            if (bytes == 0) continue;
            sink(index.upper_[id].get(), bytes);
            written += bytes;
        }
        sink(zeros, h.upper_bytes - written);
        if (h.quant_bytes > 0) {
            const std::size_t dbytes = index.dim_ * sizeof(float);
            sink(index.qmin_.data(), dbytes);
            sink(index.qscale_.data(), dbytes);
            if (n) sink(index.codes_, n * index.code_stride_);
            sink(zeros, h.quant_bytes - 2 * dbytes - n * index.code_stride_);
        }
    }
};

// Structural checks after load: every link in range and at a level its target
// has, link counts within M, unique labels, consistent deletion count.
void HNSW::rebuild_label_map_and_validate() {
    const std::size_t n = count_.load();
    const int max_level = entry().level;
    std::size_t deleted = 0;
    label_map_.clear();
    label_map_.reserve(n);
    deleted_slots_.clear();
    int highest = -1;
    for (node_id id = 0; id < n; ++id) {
        const int level = levels_[id];
        if (level > max_level) corrupt("a node's level exceeds the maximum level");
        highest = std::max(highest, level);
        for (int lc = 0; lc <= level; ++lc) {
            const std::uint32_t* links = links_at(id, lc);
            const std::size_t c = link_count(links);
            if (c > (lc == 0 ? M0_ : M_)) corrupt("a link list is longer than M allows");
            for (std::size_t j = 1; j <= c; ++j)
                if (links[j] >= n || levels_[links[j]] < lc) corrupt("a link points outside the graph");
        }
        if (flags(id) & ~kDeletedFlag) corrupt("unknown node flags");
        if (deleted_at(id)) {
            ++deleted;
            deleted_slots_.push_back(id);
        }
        if (!label_map_.emplace(label_at(id), id).second) corrupt("duplicate labels");
    }
    if (deleted != num_deleted_.load()) corrupt("deleted count does not match the nodes");
    if (highest != max_level) corrupt("maximum level does not match the nodes");
    if (n > 0 && levels_[entry().node] != max_level)
        corrupt("entry point is not on the top level");
}

std::string HNSW::serialize() const {
    std::unique_lock<std::shared_mutex> lock(storage_mutex_);
    std::string out;
    Serializer::write(*this, [&](const void* p, std::size_t n) {
        out.append(static_cast<const char*>(p), n);
    });
    return out;
}

void HNSW::save(const std::string& path) const {
    std::unique_lock<std::shared_mutex> lock(storage_mutex_);
    const std::string tmp = path + ".tmp" + std::to_string(::getpid());
    FILE* f = std::fopen(tmp.c_str(), "wb");
    if (f == nullptr) {
        const int err = errno;
        throw FileError("cannot create " + tmp + ": " + std::strerror(err), err, tmp);
    }
    int err = 0;
    Serializer::write(*this, [&](const void* p, std::size_t n) {
        if (err == 0 && n > 0 && std::fwrite(p, 1, n, f) != n) err = errno ? errno : EIO;
    });
    if (err == 0 && std::fflush(f) != 0) err = errno;
    if (err == 0 && ::fsync(fileno(f)) != 0) err = errno;
    if (std::fclose(f) != 0 && err == 0) err = errno;
    if (err == 0 && std::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
    if (err != 0) {
        std::remove(tmp.c_str());  // the previous file at `path` is untouched
        throw FileError("cannot write " + path + ": " + std::strerror(err), err, path);
    }
}

std::unique_ptr<HNSW> HNSW::deserialize(const char* data, std::size_t size,
                                        std::size_t max_elements) {
    return Serializer::read(data, size, max_elements, nullptr, 0);
}

std::unique_ptr<HNSW> HNSW::load(const std::string& path, bool mmap, std::size_t max_elements) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        const int err = errno;
        throw FileError("cannot open " + path + ": " + std::strerror(err), err, path);
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        const int err = errno ? errno : EINVAL;
        ::close(fd);
        throw FileError("not a regular file: " + path, err, path);
    }
    const std::size_t size = static_cast<std::size_t>(st.st_size);
    if (size < kHeaderBytes) {
        ::close(fd);
        corrupt("truncated: " + std::to_string(size) + " bytes, smaller than the header (" + path + ")");
    }
    // MAP_PRIVATE: pages stay shared with the page cache until written, and a
    // write (an add after load) never reaches the file.
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    const int map_err = errno;
    ::close(fd);
    if (base == MAP_FAILED)
        throw FileError("cannot map " + path + ": " + std::strerror(map_err), map_err, path);
    try {
        auto index = Serializer::read(static_cast<const char*>(base), size, max_elements,
                                      mmap ? base : nullptr, size);
        if (!index->is_mapped()) ::munmap(base, size);
        return index;
    } catch (...) {
        ::munmap(base, size);
        throw;
    }
}

}  // namespace evidex
