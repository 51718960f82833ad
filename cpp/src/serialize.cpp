// The index file formats: HNSW (below), hnswlib 0.8's (import and export) and
// IVFIndex's (at the end of this file).
//
// The HNSW file format (version 6; an index writes the oldest version that
// holds it: 1 without attributes, 2 with them, 3 with PQ4 quantisation, 4 with
// scan codes, 5 with RaBitQ edge codes, 6 with blocks of half groups: a PQ4 or
// RaBitQ graph of M0 <= 16, whose codes come 16 to a group from version 6 on
// and 32 before), little-endian:
//   Header (fixed 256 bytes: magic, version, parameters, section offsets, the
//           payload checksum and a checksum of the header itself)
//   level-0 block   count * node_bytes, at a 64-byte aligned offset so that a
//                   private memory mapping can serve it directly
//   upper section   one level byte per node (padded to 8), then each node's upper
//                   link lists, level * (M + 1) u32
//   quant section   SQ8: per-dimension minimum and scale, then the codes;
//                   PQ4 (version 3): the centroids (subspaces * 16 * pq_dims
//                   floats), then each node's block of edge codes (hnsw.h);
//                   RaBitQ (version 5): the blocks only (its rotation follows
//                   from the header's seed and dimension)
//   scan section    (version 4, when the header's scan_code_dims is set) the scan
//                   codes' centroids (subspaces * 16 * scan_code_dims floats),
//                   then each node's code (code_bytes), padded to 8
//   attr section    (version 2; optional from 3 on) the stored attributes
//                   (AttributeStore::serialize)
//
// A file is input from a stranger. The checksums catch accidents; the bounds
// catch attackers, who can recompute any checksum: every header field is bounded
// and every size computed with overflow checks, against the real file size,
// before anything is allocated, so no file makes the loader allocate more than a
// small multiple of its own size. The data is validated where it will be used
// (in our own copy, or the private mapping), so what was checked is what runs.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <type_traits>

#include "evidex/beam.h"
#include "evidex/errors.h"
#include "evidex/hnsw.h"
#include "evidex/ivf.h"

namespace evidex {
namespace {

constexpr char kMagic[8] = {'E', 'V', 'D', 'X', 'H', 'N', 'S', 'W'};
constexpr std::uint32_t kFormatVersion = 6;
constexpr std::uint32_t kEndianTag = 0x01020304;
constexpr std::size_t kHeaderBytes = 256;
constexpr std::size_t kChunkBytes = std::size_t{4} << 20;  // streaming reads

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
    std::uint64_t attr_offset, attr_bytes;  // zero in version 1
    std::uint64_t pq_dims;  // PQ4 only (version 3)
    std::uint64_t scan_code_dims;  // version 4; zero before (and without scan codes)
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

[[noreturn]] void corrupt(const std::string& what) {
    throw CorruptIndexError("invalid evidex index file: " + what);
}

// Overflow-checked arithmetic: a sum or product that wraps is a corrupt file.
std::uint64_t add(std::uint64_t a, std::uint64_t b) {
    std::uint64_t r;
    if (__builtin_add_overflow(a, b, &r)) corrupt("a section size overflows");
    return r;
}
std::uint64_t mul(std::uint64_t a, std::uint64_t b) {
    std::uint64_t r;
    if (__builtin_mul_overflow(a, b, &r)) corrupt("a section size overflows");
    return r;
}
std::uint64_t round_up(std::uint64_t x, std::uint64_t a) { return mul((add(x, a - 1)) / a, a); }

template <class T>
T load_as(const char* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}

// Every size of a file, derived from its bounded parameters the way the index
// lays itself out, and checked against the header and the real file size.
struct Layout {
    std::size_t n = 0, dim = 0, M = 0, M0 = 0;
    std::size_t node_bytes = 0, vec_offset = 0, label_offset = 0, code_stride = 0;
    std::uint64_t level0_offset = 0, level0_bytes = 0, upper_offset = 0, upper_bytes = 0;
    std::uint64_t quant_offset = 0, quant_bytes = 0, attr_offset = 0, attr_bytes = 0;
    std::uint64_t file_bytes = 0;
    bool sq8 = false, pq4 = false;
    std::size_t pq_dims = 0, pq_subspaces = 0, pq_block_bytes = 0, pq_centroid_bytes = 0;
    std::size_t pq_extra_offset = 0;  // the block's per-edge floats
    std::size_t pq_group = PQ4::kGroup;  // codes per group: 16 from version 6 when M0 <= 16
    std::size_t pq_extras = 0;        // how many (M0 for PQ4's squared L2, 2 * M0 for RaBitQ)
    std::size_t scan_dims = 0, scan_code_bytes = 0, scan_centroid_bytes = 0;
    std::uint64_t scan_offset = 0, scan_bytes = 0;
    int max_level = -1;
    std::int64_t entry = -1;
};

// What every evidex file header is checked for first: magic, version, byte
// order, its own checksum, the file's size and its own. `format` names the
// format in messages ("" for the HNSW format, "IVF ").
template <class H>
void check_preamble(const H& h, const char (&magic)[8], std::uint32_t latest,
                    const std::string& format, std::uint64_t checksum, std::uint64_t size,
                    std::uint64_t header_bytes) {
    if (std::memcmp(h.magic, magic, 8) != 0) corrupt("bad magic, not an evidex " + format + "index");
    if (h.version > latest)
        corrupt(format + "format version " + std::to_string(h.version) +
                " is newer than this evidex supports (" + std::to_string(latest) +
                "); upgrade evidex");
    if (h.version == 0) corrupt("format version 0 is not valid");
    if (h.endian_tag != kEndianTag) corrupt("written on a machine of other byte order");
    if (h.header_checksum != checksum) corrupt("header checksum mismatch");
    if (h.file_bytes != size)
        corrupt((size < h.file_bytes ? "truncated: expected " : "trailing data: expected ") +
                std::to_string(h.file_bytes) + " bytes, found " + std::to_string(size));
    if (h.header_bytes != header_bytes) corrupt("unknown header size");
}

Layout check_header(const Header& h, std::uint64_t size) {
    check_preamble(h, kMagic, kFormatVersion, "", header_checksum(h), size, kHeaderBytes);
    if (h.space > 2 || h.dim == 0 || h.dim > (std::uint64_t{1} << 24) || h.M < 2 || h.M > 2048 ||
        h.M0 != 2 * h.M || h.ef_construction < 1 || h.ef_construction > kMaxEf || h.ef < 1 ||
        h.ef > kMaxEf || h.count > h.capacity || h.capacity >= BeamPool::kMaxId ||
        h.num_deleted > h.count || h.next_label > kLabelLimit || h.max_level < -1 ||
        h.max_level > 255 || h.entry_point < -1 ||
        h.entry_point >= static_cast<std::int64_t>(h.count) ||
        (h.count == 0) != (h.entry_point == -1) || (h.count == 0) != (h.max_level == -1))
        corrupt("inconsistent parameters in the header");
    if ((h.version < 4 && h.scan_code_dims != 0) || h.scan_code_dims > h.dim ||
        (h.scan_code_dims != 0 && (h.dim + h.scan_code_dims - 1) / h.scan_code_dims > 4096))
        corrupt("inconsistent scan code fields in the header");
    if (h.quantization > (h.version >= 5 ? 3u : h.version >= 3 ? 2u : 1u) || h.trained > 1 ||
        (h.quantization == 0 && h.trained) || (h.quantization != 0 && h.count > 0 && !h.trained) ||
        (h.quantization == 3 && (!h.trained || h.dim > EdgeCoder::kMaxDim)) ||
        (h.quantization == 2) != (h.pq_dims != 0) || h.pq_dims > h.dim ||
        (h.pq_dims != 0 && (h.dim + h.pq_dims - 1) / h.pq_dims > 4096))
        corrupt("inconsistent quantisation fields in the header");

    Layout L;
    L.n = h.count;
    L.dim = h.dim;
    L.M = h.M;
    L.M0 = h.M0;
    L.sq8 = h.quantization == 1;
    L.pq4 = h.quantization == 2 || h.quantization == 3;
    if (h.quantization == 2) {
        const PQ4 pq(h.dim, h.pq_dims);  // bounded above
        L.pq_dims = pq.sub_dim();
        L.pq_subspaces = pq.subspaces();
        L.pq_extras = h.space == 0 ? h.M0 : 0;
        L.pq_centroid_bytes = mul(mul(L.pq_subspaces * PQ4::kCentroids, L.pq_dims), sizeof(float));
    } else if (h.quantization == 3) {
        L.pq_dims = 4;
        L.pq_subspaces = EdgeCoder::subspaces(h.dim);  // dim bounded above
        L.pq_extras = mul(2, h.M0);
    }
    if (L.pq4) {
        // As the HNSW constructor lays out a block.
        L.pq_group = h.version >= 6 && h.M0 <= PQ4::kHalfGroup ? PQ4::kHalfGroup : PQ4::kGroup;
        L.pq_extra_offset = mul((h.M0 + L.pq_group - 1) / L.pq_group, L.pq_subspaces * L.pq_group / 2);
        L.pq_block_bytes = round_up(add(L.pq_extra_offset, mul(L.pq_extras, sizeof(float))), 64);
    }
    L.max_level = static_cast<int>(h.max_level);
    L.entry = h.entry_point;
    // As the HNSW constructor lays out a node.
    L.vec_offset = mul(sizeof(std::uint32_t), L.M0 + 1);
    L.label_offset = add(L.vec_offset, mul(sizeof(float), L.dim));
    L.node_bytes = round_up(add(L.label_offset, sizeof(label_t)), 8);
    L.code_stride = L.sq8 ? round_up(L.dim, 64) : 0;
    L.file_bytes = size;
    L.level0_offset = h.level0_offset;
    L.level0_bytes = mul(L.n, L.node_bytes);
    L.upper_offset = add(L.level0_offset, L.level0_bytes);
    L.upper_bytes = h.upper_bytes;
    L.quant_offset = add(L.upper_offset, L.upper_bytes);
    L.quant_bytes = L.sq8 ? round_up(add(mul(2 * sizeof(float), L.dim), mul(L.n, L.code_stride)), 8)
                    : L.pq4 ? round_up(add(L.pq_centroid_bytes, mul(L.n, L.pq_block_bytes)), 8)
                            : 0;
    if (h.node_bytes != L.node_bytes || h.level0_offset < kHeaderBytes ||
        h.level0_offset % 64 != 0 || h.level0_bytes != L.level0_bytes ||
        h.upper_offset != L.upper_offset || L.upper_bytes < round_up(L.n, 8) ||
        L.upper_bytes % 8 != 0 || h.quant_offset != L.quant_offset ||
        h.quant_bytes != L.quant_bytes)
        corrupt("inconsistent section sizes in the header");
    L.scan_offset = add(L.quant_offset, L.quant_bytes);
    if (h.scan_code_dims != 0) {
        const PQ4 pq(h.dim, h.scan_code_dims);  // bounded above
        L.scan_dims = pq.sub_dim();
        L.scan_code_bytes = pq.code_bytes();
        L.scan_centroid_bytes = mul(mul(pq.subspaces() * PQ4::kCentroids, L.scan_dims), sizeof(float));
        L.scan_bytes = round_up(add(L.scan_centroid_bytes, mul(L.n, L.scan_code_bytes)), 8);
    }
    L.attr_offset = add(L.scan_offset, L.scan_bytes);
    L.attr_bytes = h.attr_bytes;
    // Attributes: never in version 1, always in 2, optional from 3 on.
    const bool attrs_absent = h.attr_offset == 0 && h.attr_bytes == 0;
    const bool attrs_valid =
        h.attr_offset == L.attr_offset && h.attr_bytes >= 16 && h.attr_bytes % 8 == 0;
    if (!(h.version == 1 ? attrs_absent : h.version == 2 ? attrs_valid
                                                         : attrs_absent || attrs_valid) ||
        add(L.attr_offset, L.attr_bytes) != size)
        corrupt("inconsistent section sizes in the header");
    return L;
}

// Checks the sections of an image fed in file order (level-0 nodes in chunks,
// the upper section, the quantiser's ranges, then its codes): structure and
// checksum together. The first structural problem is kept and reported after
// the checksum, so an accidental corruption reads as a checksum mismatch.
class ImageChecker {
public:
    ImageChecker(const Header& h, const Layout& L) : h_(h), L_(L) { labels_.reserve(L.n); }

    void nodes(const char* p, std::size_t count) {
        sum_.update(p, count * L_.node_bytes);
        for (std::size_t i = 0; i < count; ++i, p += L_.node_bytes) {
            const std::size_t links = load_as<std::uint16_t>(p);
            const std::uint8_t flags = static_cast<std::uint8_t>(p[2]);
            if (links > L_.M0) fail("a link list is longer than M allows");
            for (std::size_t j = 1; j <= std::min(links, L_.M0); ++j)
                if (load_as<std::uint32_t>(p + 4 * j) >= L_.n) fail("a link points outside the graph");
            if (flags & ~1u) fail("unknown node flags");
            deleted_ += flags & 1u;
            // (A copy: the node's vector need not be aligned in a mapped file.)
            vector_.resize(L_.dim);
            std::memcpy(vector_.data(), p + L_.vec_offset, L_.dim * sizeof(float));
            if (const char* problem = stored_vector_problem(
                    vector_.data(), L_.dim, h_.space == static_cast<std::uint64_t>(Space::Cosine)))
                fail(problem);
            const label_t label = load_as<label_t>(p + L_.label_offset);
            if (label >= kLabelLimit) fail("a stored id is 2**63 or more");
            labels_.push_back(label);
        }
        seen_ += count;
    }

    // The whole upper section (L.upper_bytes at p).
    void upper(const char* p) {
        sum_.update(p, L_.upper_bytes);
        const std::size_t n = L_.n;
        const auto* levels = reinterpret_cast<const std::uint8_t*>(p);
        const std::size_t list_bytes = (L_.M + 1) * sizeof(std::uint32_t);
        std::uint64_t offset = round_up(n, 8);
        int highest = -1;
        for (std::size_t id = 0; id < n; ++id) {
            const int level = levels[id];
            if (level > L_.max_level) return fail("a node's level exceeds the maximum level");
            highest = std::max(highest, level);
            const std::uint64_t bytes = static_cast<std::uint64_t>(level) * list_bytes;
            if (offset + bytes > L_.upper_bytes)
                return fail("upper levels run past the end of their section");
            for (int lc = 1; lc <= level; ++lc) {
                const char* list = p + offset + static_cast<std::size_t>(lc - 1) * list_bytes;
                const std::size_t links = load_as<std::uint16_t>(list);
                if (links > L_.M) return fail("a link list is longer than M allows");
                for (std::size_t j = 1; j <= links; ++j) {
                    const std::uint32_t to = load_as<std::uint32_t>(list + 4 * j);
                    if (to >= n || levels[to] < lc) return fail("a link points outside the graph");
                }
            }
            offset += bytes;
        }
        if (round_up(offset, 8) != L_.upper_bytes)
            return fail("the upper section's size does not match the nodes' levels");
        if (highest != L_.max_level) return fail("maximum level does not match the nodes");
        if (n > 0 && levels[L_.entry] != L_.max_level)
            return fail("entry point is not on the top level");
    }

    // The quantiser's per-dimension minimum and scale (2 * dim floats).
    void ranges(const char* p) {
        sum_.update(p, 2 * L_.dim * sizeof(float));
        if (!h_.trained) return;
        for (std::size_t d = 0; d < L_.dim; ++d) {
            const float lo = load_as<float>(p + 4 * d);
            const float scale = load_as<float>(p + 4 * (L_.dim + d));
            if (!std::isfinite(lo) || !(scale > 0.f) || !std::isfinite(scale))
                return fail("invalid quantiser ranges");
        }
    }

    // The product quantiser's centroids (L.pq_centroid_bytes at p).
    void centroids(const char* p) {
        sum_.update(p, L_.pq_centroid_bytes);
        if (h_.trained) finite(p, L_.pq_centroid_bytes, "a product quantiser centroid is NaN or infinite");
    }
    // The scan codes' centroids (L.scan_centroid_bytes at p).
    void scan_centroids(const char* p) {
        sum_.update(p, L_.scan_centroid_bytes);
        finite(p, L_.scan_centroid_bytes, "a scan code centroid is NaN or infinite");
    }

    void bytes(const char* p, std::size_t n) { sum_.update(p, n); }

    // Fast-scan blocks (count of them at p): every code is valid; the per-edge
    // terms (PQ4's for squared L2, RaBitQ's scales and offsets) must be finite.
    void blocks(const char* p, std::size_t count) {
        sum_.update(p, count * L_.pq_block_bytes);
        for (std::size_t i = 0; i < count; ++i, p += L_.pq_block_bytes)
            for (std::size_t j = 0; j < L_.pq_extras; ++j)
                if (!std::isfinite(load_as<float>(p + L_.pq_extra_offset + 4 * j)))
                    return fail("a fast-scan block holds NaN or infinity");
    }

    // Throws CorruptIndexError naming the first problem, if any.
    void finish() {
        if (sum_.digest() != h_.payload_checksum)
            corrupt("data checksum mismatch: the file is corrupted");
        if (!error_.empty()) corrupt(error_);
        if (seen_ != L_.n) corrupt("the level-0 block is incomplete");
        if (deleted_ != h_.num_deleted) corrupt("deleted count does not match the nodes");
        std::sort(labels_.begin(), labels_.end());
        if (std::adjacent_find(labels_.begin(), labels_.end()) != labels_.end())
            corrupt("duplicate labels");
        if (!labels_.empty() && h_.next_label <= labels_.back())
            corrupt("the next automatic id is not past the stored ids");
    }

private:
    void fail(const char* what) {
        if (error_.empty()) error_ = what;
    }
    void finite(const char* p, std::size_t bytes, const char* what) {
        for (std::size_t i = 0; i < bytes / sizeof(float); ++i)
            if (!std::isfinite(load_as<float>(p + 4 * i))) return fail(what);
    }
    const Header& h_;
    const Layout& L_;
    Checksum sum_;
    std::string error_;
    std::size_t seen_ = 0, deleted_ = 0;
    std::vector<label_t> labels_;
    std::vector<float> vector_;  // the node being checked
};

// Where an image is read from: memory (bytes, a mapping) or a file descriptor.
class Source {
public:
    virtual ~Source() = default;
    virtual void read(std::uint64_t offset, std::size_t len, char* dst) const = 0;
    // The bytes in place, for sources that are memory; nullptr otherwise.
    virtual const char* view(std::uint64_t offset) const = 0;
};

class MemorySource final : public Source {
public:
    explicit MemorySource(const char* data) : data_(data) {}
    void read(std::uint64_t offset, std::size_t len, char* dst) const override {
        std::memcpy(dst, data_ + offset, len);
    }
    const char* view(std::uint64_t offset) const override { return data_ + offset; }

private:
    const char* data_;
};

// pread, not mmap: a file truncated by someone else while we read it gives a
// short read (an error), never a SIGBUS.
class FileSource final : public Source {
public:
    FileSource(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
    void read(std::uint64_t offset, std::size_t len, char* dst) const override {
        while (len > 0) {
            const ssize_t got = ::pread(fd_, dst, len, static_cast<off_t>(offset));
            if (got < 0 && errno == EINTR) continue;
            if (got < 0) {
                const int err = errno;
                throw FileError("cannot read " + path_ + ": " + std::strerror(err), err, path_);
            }
            if (got == 0) corrupt("truncated while being read (" + path_ + ")");
            dst += got;
            offset += static_cast<std::uint64_t>(got);
            len -= static_cast<std::size_t>(got);
        }
    }
    const char* view(std::uint64_t) const override { return nullptr; }

private:
    int fd_;
    std::string path_;
};

Header read_header(const Source& src, std::uint64_t size) {
    if (size < kHeaderBytes)
        corrupt("truncated: " + std::to_string(size) + " bytes, smaller than the header");
    Header h;
    src.read(0, sizeof(h), reinterpret_cast<char*>(&h));
    return h;
}

// Feeds `bytes` bytes at `offset` to `fn(ptr, len)` in chunks, through `buffer`
// when the source is not memory.
template <class Fn>
void stream(const Source& src, std::uint64_t offset, std::uint64_t bytes, std::size_t unit,
            std::vector<char>& buffer, Fn&& fn) {
    const std::size_t step = std::max<std::size_t>(unit, kChunkBytes / unit * unit);
    while (bytes > 0) {
        const std::size_t len = static_cast<std::size_t>(std::min<std::uint64_t>(bytes, step));
        const char* p = src.view(offset);
        if (p == nullptr) {
            buffer.resize(std::max(buffer.size(), len));
            src.read(offset, len, buffer.data());
            p = buffer.data();
        }
        fn(p, len);
        offset += len;
        bytes -= len;
    }
}

// `count` rows of `row_bytes` at `offset`, a chunk at a time: check(p, rows)
// sees each chunk in file order, then row i is copied to dest(i).
template <class Check, class Dest>
void read_rows(const Source& src, std::uint64_t offset, std::size_t count, std::size_t row_bytes,
               std::vector<char>& buffer, Check&& check, Dest&& dest) {
    node_id id = 0;
    stream(src, offset, static_cast<std::uint64_t>(count) * row_bytes, row_bytes, buffer,
           [&](const char* p, std::size_t len) {
               const std::size_t rows = len / row_bytes;
               check(p, rows);
               for (std::size_t i = 0; i < rows; ++i, ++id)
                   std::memcpy(dest(id), p + i * row_bytes, row_bytes);
           });
}

// Validates a whole image without building an index (used on what save and
// serialize wrote); memory: one chunk, the upper section and the ids.
void verify_image(const Source& src, std::uint64_t size) {
    const Header h = read_header(src, size);
    const Layout L = check_header(h, size);
    ImageChecker check(h, L);
    std::vector<char> buffer;
    stream(src, L.level0_offset, L.level0_bytes, L.node_bytes, buffer,
           [&](const char* p, std::size_t len) { check.nodes(p, len / L.node_bytes); });
    std::vector<char> upper(L.upper_bytes);
    src.read(L.upper_offset, upper.size(), upper.data());
    check.upper(upper.data());
    if (L.sq8) {
        std::vector<char> ranges(2 * L.dim * sizeof(float));
        src.read(L.quant_offset, ranges.size(), ranges.data());
        check.ranges(ranges.data());
        stream(src, L.quant_offset + ranges.size(), L.quant_bytes - ranges.size(), 1, buffer,
               [&](const char* p, std::size_t len) { check.bytes(p, len); });
    }
    if (L.pq4) {
        std::vector<char> centroids(L.pq_centroid_bytes);
        src.read(L.quant_offset, centroids.size(), centroids.data());
        check.centroids(centroids.data());
        const std::uint64_t blocks = L.n * L.pq_block_bytes;
        stream(src, L.quant_offset + centroids.size(), blocks, L.pq_block_bytes, buffer,
               [&](const char* p, std::size_t len) { check.blocks(p, len / L.pq_block_bytes); });
        std::vector<char> pad(L.quant_bytes - centroids.size() - blocks);
        src.read(L.quant_offset + centroids.size() + blocks, pad.size(), pad.data());
        check.bytes(pad.data(), pad.size());
    }
    if (L.scan_bytes > 0) {
        std::vector<char> centroids(L.scan_centroid_bytes);
        src.read(L.scan_offset, centroids.size(), centroids.data());
        check.scan_centroids(centroids.data());
        stream(src, L.scan_offset + centroids.size(), L.scan_bytes - centroids.size(), 1, buffer,
               [&](const char* p, std::size_t len) { check.bytes(p, len); });
    }
    std::vector<char> attrs(L.attr_bytes);
    src.read(L.attr_offset, attrs.size(), attrs.data());
    check.bytes(attrs.data(), attrs.size());
    check.finish();
    if (!attrs.empty()) {
        AttributeStore store;
        const std::vector<label_t> owners(L.n, 0);
        store.deserialize(attrs.data(), attrs.size(), L.n, owners.data());
    }
}

// A regular file opened for reading, closed on scope exit.
struct InputFile {
    int fd = -1;
    std::uint64_t size = 0;
    explicit InputFile(const std::string& path) {
        fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
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
        size = static_cast<std::uint64_t>(st.st_size);
    }
    ~InputFile() { ::close(fd); }
    InputFile(const InputFile&) = delete;
    InputFile& operator=(const InputFile&) = delete;
};

std::atomic<std::uint64_t> g_temp_counter{0};

// A new file beside `path` that no other writer uses (O_EXCL), mode 0666 less
// the umask, like any file the user creates.
int create_temp(const std::string& path, std::string& tmp) {
    std::random_device rd;
    for (int attempt = 0; attempt < 100; ++attempt) {
        char suffix[64];
        std::snprintf(suffix, sizeof(suffix), ".tmp-%d-%llu-%08x", static_cast<int>(::getpid()),
                      static_cast<unsigned long long>(g_temp_counter.fetch_add(1)),
                      static_cast<unsigned>(rd()));
        tmp = path + suffix;
        const int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0) return fd;
        if (errno != EEXIST) {
            const int err = errno;
            throw FileError("cannot create " + tmp + ": " + std::strerror(err), err, tmp);
        }
    }
    throw FileError("cannot create a temporary file beside " + path, EEXIST, path);
}

void write_all(int fd, const void* data, std::size_t n, int& err) {
    const char* p = static_cast<const char*>(data);
    while (err == 0 && n > 0) {
        const ssize_t put = ::write(fd, p, n);
        if (put < 0 && errno == EINTR) continue;
        if (put <= 0) {
            err = put < 0 ? errno : EIO;
            return;
        }
        p += put;
        n -= static_cast<std::size_t>(put);
    }
}

// Writes through a buffer, so that many small pieces cost few system calls.
class BufferedFile {
public:
    explicit BufferedFile(int fd) : fd_(fd) { buffer_.reserve(kChunkBytes); }
    void put(const void* data, std::size_t n) {
        if (buffer_.size() + n > kChunkBytes) flush();
        if (n >= kChunkBytes) {
            write_all(fd_, data, n, err_);
        } else {
            const char* p = static_cast<const char*>(data);
            buffer_.insert(buffer_.end(), p, p + n);
        }
        size_ += n;
    }
    void flush() {
        write_all(fd_, buffer_.data(), buffer_.size(), err_);
        buffer_.clear();
    }
    int error() const { return err_; }
    std::uint64_t size() const { return size_; }

private:
    int fd_;
    int err_ = 0;
    std::uint64_t size_ = 0;
    std::vector<char> buffer_;
};

// Replaces `path` with what `write(put)` produces, only once `verify(source,
// size)` (reading back what reached the disk) accepts it: a failed or invalid
// write leaves the previous file untouched. `write` takes whatever locks it needs.
template <class Write, class Verify>
void write_atomically(const std::string& path, Write&& write, Verify&& verify) {
    std::string tmp;
    const int fd = create_temp(path, tmp);
    BufferedFile out(fd);
    int err = 0;
    std::string invalid;
    try {
        write([&](const void* p, std::size_t n) { out.put(p, n); });
        out.flush();
        err = out.error();
    } catch (...) {
        ::close(fd);
        ::unlink(tmp.c_str());
        throw;
    }
    if (err == 0 && ::fsync(fd) != 0) err = errno;
    if (err == 0) {
        try {
            verify(FileSource(fd, tmp), out.size());
        } catch (const CorruptIndexError& e) {
            invalid = e.what();
        } catch (const FileError& e) {
            err = e.error_number ? e.error_number : EIO;
        }
    }
    if (::close(fd) != 0 && err == 0) err = errno;
    if (err == 0 && invalid.empty() && std::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
    if (err != 0 || !invalid.empty()) {
        ::unlink(tmp.c_str());  // the previous file at `path` is untouched
        if (!invalid.empty())
            throw std::runtime_error("not saved: the written file failed its check (" + invalid +
                                     "); " + path + " is unchanged");
        throw FileError("cannot write " + path + ": " + std::strerror(err), err, path);
    }
    // Make the rename itself durable.
    const std::size_t slash = path.find_last_of('/');
    const std::string dir =
        slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
    const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
}

// ---------------------------------------------------------------------------
// hnswlib 0.8's format (HierarchicalNSW::saveIndex): a 96-byte header of packed
// fields, cur_element_count nodes of size_data_per_element bytes laid out as
// evidex's level-0 nodes are ([u32 count and flags | maxM0 links | vector | u64
// label], without the padding to 8), then per node a u32 byte count and its
// upper link lists of (maxM + 1) u32 each. No magic, version, space or checksum.
constexpr std::size_t kHnswlibHeaderBytes = 96;

struct HnswlibHeader {
    std::uint64_t offset_level0 = 0, max_elements = 0, count = 0, size_data = 0;
    std::uint64_t label_offset = 0, offset_data = 0;
    std::int32_t max_level = -1;
    std::uint32_t entry = ~std::uint32_t{0};
    std::uint64_t maxM = 0, maxM0 = 0, M = 0;
    double mult = 0;
    std::uint64_t ef_construction = 0;
};

// Field offsets, in saveIndex's order.
constexpr std::size_t kHnswlibFieldOffsets[13] = {0, 8, 16, 24, 32, 40, 48, 52, 56, 64, 72, 80, 88};

template <class Fn>
void for_each_hnswlib_field(HnswlibHeader& h, Fn&& fn) {
    std::size_t i = 0;
    for (std::uint64_t* f : {&h.offset_level0, &h.max_elements, &h.count, &h.size_data,
                             &h.label_offset, &h.offset_data})
        fn(kHnswlibFieldOffsets[i++], f, sizeof(*f));
    fn(kHnswlibFieldOffsets[i++], &h.max_level, sizeof(h.max_level));
    fn(kHnswlibFieldOffsets[i++], &h.entry, sizeof(h.entry));
    for (std::uint64_t* f : {&h.maxM, &h.maxM0, &h.M}) fn(kHnswlibFieldOffsets[i++], f, sizeof(*f));
    fn(kHnswlibFieldOffsets[i++], &h.mult, sizeof(h.mult));
    fn(kHnswlibFieldOffsets[i++], &h.ef_construction, sizeof(h.ef_construction));
}

[[noreturn]] void hnswlib_corrupt(const std::string& what) {
    throw CorruptIndexError("invalid hnswlib index file: " + what);
}

// An hnswlib file as the evidex image that holds the same index, every field
// bounded first: what it allocates is at most about twice the file's size.
// The image is then validated and built by the one evidex reader.
std::string image_from_hnswlib(const Source& src, std::uint64_t size, Space space,
                               std::size_t dim, std::size_t max_elements) {
    if (size < kHnswlibHeaderBytes)
        hnswlib_corrupt("truncated: " + std::to_string(size) +
                        " bytes, smaller than hnswlib's header");
    char raw[kHnswlibHeaderBytes];
    src.read(0, sizeof(raw), raw);
    if (std::memcmp(raw, kMagic, 8) == 0)
        hnswlib_corrupt("this is an evidex index file; load it as one");
    HnswlibHeader h;
    for_each_hnswlib_field(h, [&](std::size_t at, void* field, std::size_t n) {
        std::memcpy(field, raw + at, n);
    });
    if (h.offset_level0 != 0) hnswlib_corrupt("offsetLevel0 is not 0: not an hnswlib index");
    if (h.M < 2 || h.M > 2048)
        hnswlib_corrupt("M = " + std::to_string(h.M) + " is outside the 2..2048 evidex supports");
    if (h.maxM != h.M || h.maxM0 != 2 * h.M)
        hnswlib_corrupt("maxM and maxM0 are not M and 2 * M");
    const std::uint64_t links_bytes = (h.maxM0 + 1) * sizeof(std::uint32_t);
    if (h.offset_data != links_bytes || h.label_offset < h.offset_data ||
        (h.label_offset - h.offset_data) % sizeof(float) != 0 ||
        h.size_data != h.label_offset + sizeof(label_t))
        hnswlib_corrupt("inconsistent node layout");
    const std::uint64_t file_dim = (h.label_offset - h.offset_data) / sizeof(float);
    if (file_dim != dim)
        throw std::invalid_argument("the hnswlib file holds vectors of dimension " +
                                    std::to_string(file_dim) + ", not " + std::to_string(dim));
    if (h.count > h.max_elements) hnswlib_corrupt("more elements than max_elements");
    if (h.max_level < -1 || h.max_level > 255 || (h.count == 0) != (h.max_level == -1) ||
        (h.count == 0 ? h.entry != ~std::uint32_t{0} : h.entry >= h.count))
        hnswlib_corrupt("inconsistent entry point or maximum level");
    if (!std::isfinite(h.mult) || !(h.mult > 0) || h.ef_construction < 1 ||
        h.ef_construction > kMaxEf)
        hnswlib_corrupt("inconsistent parameters in the header");
    const std::size_t n = h.count;
    const std::uint64_t upper_start = add(kHnswlibHeaderBytes, mul(n, h.size_data));
    if (add(upper_start, mul(n, sizeof(std::uint32_t))) > size)
        hnswlib_corrupt("truncated: " + std::to_string(size) + " bytes for " +
                        std::to_string(n) + " elements");
    // As hnswlib's loadIndex: max_elements below the element count means the
    // file's; so does 0 (hnswlib would give an empty index no room at all).
    const std::uint64_t capacity =
        max_elements >= n && max_elements > 0 ? max_elements : h.max_elements;
    if (capacity >= BeamPool::kMaxId)
        throw std::invalid_argument("max_elements " + std::to_string(capacity) +
                                    " is not below 2^31 - 1");

    // evidex's node: hnswlib's, padded to 8 bytes.
    const std::size_t label_offset = h.label_offset;
    const std::size_t node_bytes = round_up(add(label_offset, sizeof(label_t)), 8);
    const std::size_t level0_offset = round_up(kHeaderBytes, 64);
    std::string image(add(level0_offset, mul(n, node_bytes)), '\0');
    std::size_t deleted = 0;
    label_t max_label = 0;
    std::vector<char> buffer;
    std::size_t id = 0;
    stream(src, kHnswlibHeaderBytes, n * h.size_data, h.size_data, buffer,
           [&](const char* p, std::size_t len) {
               for (const char* end = p + len; p < end; p += h.size_data, ++id) {
                   char* node = &image[level0_offset + id * node_bytes];
                   std::memcpy(node, p, h.size_data);
                   deleted += node[2] & 1;
                   const label_t label = load_as<label_t>(node + label_offset);
                   if (label >= kLabelLimit)
                       hnswlib_corrupt("label " + std::to_string(label) +
                                       " is 2**63 or more; evidex ids are below 2**63");
                   max_label = std::max(max_label, label);
                   if (space == Space::Cosine) {
                       // hnswlib stores cosine vectors normalised, as evidex does; a
                       // file of another space loaded as cosine is normalised here.
                       float* v = reinterpret_cast<float*>(node + h.offset_data);
                       double norm2 = 0;
                       for (std::size_t d = 0; d < dim; ++d) norm2 += double(v[d]) * v[d];
                       if (norm2 > 0 && std::fabs(norm2 - 1.0) > 1e-5) normalize_into(v, dim, v);
                   }
               }
           });

    // Upper levels: levels as evidex keeps them (one byte per node), then the lists.
    std::vector<char> tail(size - upper_start);
    src.read(upper_start, tail.size(), tail.data());
    const std::size_t list_bytes = (h.M + 1) * sizeof(std::uint32_t);
    std::string levels(round_up(n, 8), '\0');
    std::size_t pos = 0, lists_bytes = 0;
    for (std::size_t i = 0; i < n; ++i) {
        if (tail.size() - pos < sizeof(std::uint32_t))
            hnswlib_corrupt("truncated in the upper link lists");
        const std::uint32_t bytes = load_as<std::uint32_t>(tail.data() + pos);
        pos += sizeof(std::uint32_t);
        if (bytes % list_bytes != 0 || bytes / list_bytes > 255)
            hnswlib_corrupt("an upper link list size does not match maxM");
        if (tail.size() - pos < bytes) hnswlib_corrupt("truncated in the upper link lists");
        levels[i] = static_cast<char>(bytes / list_bytes);
        // Compact the lists in place: the image takes them in the same order.
        std::memmove(tail.data() + lists_bytes, tail.data() + pos, bytes);
        lists_bytes += bytes;
        pos += bytes;
    }
    if (pos != tail.size())
        hnswlib_corrupt("trailing data: " + std::to_string(tail.size() - pos) +
                        " bytes after the last element");

    Header hd{};
    std::memcpy(hd.magic, kMagic, 8);
    hd.version = 1;
    hd.endian_tag = kEndianTag;
    hd.header_bytes = kHeaderBytes;
    hd.dim = dim;
    hd.space = static_cast<std::uint64_t>(space);
    hd.M = h.M;
    hd.M0 = h.maxM0;
    hd.ef_construction = h.ef_construction;
    hd.seed = 100;  // hnswlib's default random_seed; the file does not keep it
    hd.ef = 10;     // hnswlib's default ef
    hd.capacity = capacity;
    hd.count = n;
    hd.num_deleted = deleted;
    hd.next_label = n == 0 ? 0 : max_label + 1;
    hd.entry_point = n == 0 ? -1 : static_cast<std::int64_t>(h.entry);
    hd.max_level = h.max_level;
    hd.node_bytes = node_bytes;
    hd.level0_offset = level0_offset;
    hd.level0_bytes = n * node_bytes;
    hd.upper_offset = level0_offset + hd.level0_bytes;
    hd.upper_bytes = round_up(levels.size() + lists_bytes, 8);
    hd.quant_offset = hd.upper_offset + hd.upper_bytes;
    hd.file_bytes = hd.quant_offset;
    image.append(levels);
    image.append(tail.data(), lists_bytes);
    image.append(hd.upper_bytes - levels.size() - lists_bytes, '\0');
    Checksum payload;
    payload.update(image.data() + level0_offset, image.size() - level0_offset);
    hd.payload_checksum = payload.digest();
    hd.header_checksum = header_checksum(hd);
    std::memcpy(&image[0], &hd, sizeof(hd));
    return image;
}

// An evidex reader's complaint about a converted hnswlib file, in its terms.
[[noreturn]] void rethrow_as_hnswlib(const CorruptIndexError& e) {
    static const std::string prefix = "invalid evidex index file: ";
    std::string what = e.what();
    if (what.compare(0, prefix.size(), prefix) == 0) what.erase(0, prefix.size());
    hnswlib_corrupt(what);
}

}  // namespace

// Friend of HNSW: the one place that knows the byte layout of a saved index.
class HNSW::Serializer {
public:
    // Write the whole file through `sink(const void*, size_t)`; the caller holds
    // write_mutex_ exclusively (no change runs) and storage_mutex_ shared.
    template <class Sink>
    static void write(const HNSW& index, Sink&& sink) {
        const std::size_t n = index.count_.load();
        const std::string attrs = index.attrs_.empty() ? std::string() : index.attrs_.serialize(n);
        Header h{};
        std::memcpy(h.magic, kMagic, 8);
        // The oldest version that holds the index: readable by the most evidex.
        h.version = index.fast_scan_graph() && index.fs_group_ == PQ4::kHalfGroup ? 6
                    : index.quant_ == Quantization::RaBitQ ? 5
                    : index.has_scan_codes()                ? 4
                    : index.quant_ == Quantization::PQ4     ? 3
                    : attrs.empty()                         ? 1
                                                            : 2;
        h.endian_tag = kEndianTag;
        h.header_bytes = kHeaderBytes;
        h.dim = index.dim_;
        h.space = static_cast<std::uint64_t>(index.space_);
        h.M = index.M_;
        h.M0 = index.M0_;
        h.ef_construction = index.ef_construction_;
        h.seed = index.seed_;
        h.ef = index.ef_.load();
        h.capacity = index.max_elements_.load();
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
        h.trained = index.quant_ != Quantization::None && index.trained();
        h.pq_dims = index.pq_dims();
        h.quant_offset = h.upper_offset + h.upper_bytes;
        h.quant_bytes = quant_section_bytes(index, n);
        h.scan_code_dims = index.has_scan_codes() ? index.scan_pq_.sub_dim() : 0;
        const std::size_t scan_bytes = scan_section_bytes(index, n);
        h.attr_offset = attrs.empty() ? 0 : h.quant_offset + h.quant_bytes + scan_bytes;
        h.attr_bytes = attrs.size();
        h.file_bytes = h.quant_offset + h.quant_bytes + scan_bytes + h.attr_bytes;

        Checksum payload;
        auto sum = [&](const void* p, std::size_t len) { payload.update(p, len); };
        for_each_payload_chunk(index, h, sum);
        sum(attrs.data(), attrs.size());
        h.payload_checksum = payload.digest();
        h.header_checksum = header_checksum(h);

        sink(&h, sizeof(h));
        static const char zeros[64] = {};
        sink(zeros, h.level0_offset - kHeaderBytes);
        for_each_payload_chunk(index, h, sink);
        if (!attrs.empty()) sink(attrs.data(), attrs.size());
    }

    // Build an index from an image, validating it in the memory it will live in.
    // With `mapping` set (a private mapping of the image), the level-0 block is
    // used in place and the index then owns and unmaps the mapping.
    // With `space` set, the index is read into that space (hnswlib's "the space
    // can be changed: keeps the data, alters the distance function"); vectors
    // are normalised when it becomes cosine. Quantised codes depend on the space
    // they were made in, so a quantised index keeps its own.
    static std::unique_ptr<HNSW> read(const Source& src, std::uint64_t size,
                                      std::size_t max_elements, void* mapping,
                                      std::size_t mapping_bytes,
                                      std::optional<Space> space = std::nullopt) {
        const Header h = read_header(src, size);
        const Layout L = check_header(h, size);
        if (max_elements >= BeamPool::kMaxId)
            throw std::invalid_argument("max_elements must be below 2^31 - 1");
        const Space saved_space = static_cast<Space>(h.space);
        const bool respace = space.has_value() && *space != saved_space;
        if (respace && h.quantization != 0)
            throw std::invalid_argument("the file holds a quantised " + space_name(saved_space) +
                                        " index; it cannot be loaded as " +
                                        space_name(*space));
        std::unique_ptr<HNSW> index(new HNSW(h.dim, respace ? *space : saved_space, h.M,
                                             h.ef_construction, 0, h.seed,
                                             static_cast<Quantization>(h.quantization),
                                             h.pq_dims));
        if (L.pq4 && index->fs_group_ != L.pq_group) {  // a file before version 6
            index->lay_out_blocks(L.pq_group);
            index->set_row_layout(index->blocks_in_rows_);
        }
        if (index->node_bytes_ != L.node_bytes || index->code_stride_ != L.code_stride ||
            index->fs_block_bytes_ != L.pq_block_bytes)
            corrupt("inconsistent node layout");
        ImageChecker check(h, L);
        const std::size_t n = L.n;
        const std::size_t capacity = std::max<std::size_t>(n, max_elements);
        std::vector<char> buffer;
        // Level 0, checked where it will be searched.
        if (mapping != nullptr && capacity == n) {
            index->release_storage();
            index->level0_ = const_cast<char*>(src.view(L.level0_offset));
            index->mapping_ = mapping;
            index->mapping_bytes_ = mapping_bytes;
            index->set_row_layout(false);  // the file's nodes; blocks apart
            index->allocate_slots(n);
        } else {
            index->allocate(capacity);
        }
        std::vector<float> scan_centroids;
        std::vector<std::uint8_t> scan_codes;  // then the section's padding
        try {
            if (index->node_stride_ == L.node_bytes) {
                if (index->mapping_ == nullptr && n > 0)
                    src.read(L.level0_offset, L.level0_bytes, index->level0_);
                check.nodes(index->level0_, n);
            } else {
                // Rows hold a block after each node: nodes are checked as read, then placed.
                read_rows(src, L.level0_offset, n, L.node_bytes, buffer,
                          [&](const char* p, std::size_t count) { check.nodes(p, count); },
                          [&](node_id id) { return index->node(id); });
            }
            std::vector<char> upper(L.upper_bytes);
            src.read(L.upper_offset, upper.size(), upper.data());
            check.upper(upper.data());
            if (L.sq8) {
                const std::size_t rbytes = 2 * L.dim * sizeof(float);
                std::vector<char> ranges(rbytes);
                src.read(L.quant_offset, rbytes, ranges.data());
                check.ranges(ranges.data());
                const std::size_t cbytes = n * L.code_stride;
                if (cbytes > 0) {
                    src.read(L.quant_offset + rbytes, cbytes, reinterpret_cast<char*>(index->codes_));
                    check.bytes(reinterpret_cast<const char*>(index->codes_), cbytes);
                }
                std::vector<char> pad(L.quant_bytes - rbytes - cbytes);
                src.read(L.quant_offset + rbytes + cbytes, pad.size(), pad.data());
                check.bytes(pad.data(), pad.size());
                std::memcpy(index->qmin_.data(), ranges.data(), L.dim * sizeof(float));
                std::memcpy(index->qscale_.data(), ranges.data() + L.dim * sizeof(float),
                            L.dim * sizeof(float));
                for (std::size_t d = 0; d < L.dim; ++d)
                    index->qweight_[d] = index->qscale_[d] * index->qscale_[d];
            }
            std::vector<float> centroids;
            if (L.pq4) {
                centroids.resize(L.pq_centroid_bytes / sizeof(float));
                src.read(L.quant_offset, L.pq_centroid_bytes, reinterpret_cast<char*>(centroids.data()));
                check.centroids(reinterpret_cast<const char*>(centroids.data()));
                const std::size_t cbytes = n * L.pq_block_bytes;
                if (cbytes > 0 && index->fs_stride_ == L.pq_block_bytes) {
                    src.read(L.quant_offset + L.pq_centroid_bytes, cbytes,
                             reinterpret_cast<char*>(index->fs_blocks_));
                    check.blocks(reinterpret_cast<const char*>(index->fs_blocks_), n);
                } else if (cbytes > 0) {
                    read_rows(src, L.quant_offset + L.pq_centroid_bytes, n, L.pq_block_bytes,
                              buffer, [&](const char* p, std::size_t count) { check.blocks(p, count); },
                              [&](node_id id) { return reinterpret_cast<char*>(index->fs_block(id)); });
                }
                std::vector<char> pad(L.quant_bytes - L.pq_centroid_bytes - cbytes);
                src.read(L.quant_offset + L.pq_centroid_bytes + cbytes, pad.size(), pad.data());
                check.bytes(pad.data(), pad.size());
            }
            if (L.scan_bytes > 0) {
                scan_centroids.resize(L.scan_centroid_bytes / sizeof(float));
                src.read(L.scan_offset, L.scan_centroid_bytes,
                         reinterpret_cast<char*>(scan_centroids.data()));
                check.scan_centroids(reinterpret_cast<const char*>(scan_centroids.data()));
                // Every code is valid: any nibble names a centroid.
                scan_codes.resize(L.scan_bytes - L.scan_centroid_bytes);
                src.read(L.scan_offset + L.scan_centroid_bytes, scan_codes.size(),
                         reinterpret_cast<char*>(scan_codes.data()));
                check.bytes(reinterpret_cast<const char*>(scan_codes.data()), scan_codes.size());
            }
            std::vector<char> attrs(L.attr_bytes);
            src.read(L.attr_offset, attrs.size(), attrs.data());
            check.bytes(attrs.data(), attrs.size());
            check.finish();
            if (!attrs.empty()) {
                std::vector<label_t> owners(n);
                for (node_id id = 0; id < n; ++id) owners[id] = index->label_at(id);
                index->attrs_.deserialize(attrs.data(), attrs.size(), n, owners.data());
            }
            adopt_upper(*index, L, upper.data());
            if (h.quantization == 2 && h.trained) index->pq_.set_centroids(std::move(centroids));
        } catch (...) {
            // The mapping is the caller's again until read() returns.
            if (index->mapping_ != nullptr) {
                index->mapping_ = nullptr;
                index->level0_ = nullptr;
            }
            throw;
        }
        if (respace && *space == Space::Cosine)
            for (node_id id = 0; id < n; ++id) normalize_into(index->vec(id), L.dim, index->vec(id));
        // Scan codes (fitted to the vectors as saved: not kept when the space changes).
        if (L.scan_bytes > 0 && !respace) {
            index->scan_pq_ = PQ4(L.dim, L.scan_dims);
            index->scan_pq_.set_centroids(std::move(scan_centroids));
            scan_codes.resize(index->capacity_ * L.scan_code_bytes);  // drops the padding
            index->scan_codes_ = std::move(scan_codes);
            if (index->space_ == Space::L2) {
                index->scan_norms_.assign(index->capacity_, 0.f);
                const DistanceKernels& k = active_kernels();
                for (node_id id = 0; id < n; ++id)
                    index->scan_norms_[id] = k.dot(index->vec(id), index->vec(id), L.dim);
            }
        }
        index->ef_.store(h.ef);
        // The limit comes back; storage beyond the nodes is allocated when used.
        index->max_elements_.store(std::max<std::size_t>(h.capacity, capacity));
        index->trained_ = h.trained != 0;
        index->count_.store(n);
        index->num_deleted_.store(h.num_deleted);
        index->next_label_.store(h.next_label);
        index->set_entry(h.entry_point, static_cast<int>(h.max_level));
        index->rebuild_label_map();
        return index;
    }

private:
    // Levels and upper link lists from a validated upper section.
    static void adopt_upper(HNSW& index, const Layout& L, const char* up) {
        std::memcpy(index.levels_.data(), up, L.n);
        std::size_t offset = round_up(L.n, 8);
        for (node_id id = 0; id < L.n; ++id) {
            const std::size_t bytes = upper_block_bytes(index, id);
            if (bytes == 0) continue;
            index.upper_[id].reset(new std::uint32_t[bytes / sizeof(std::uint32_t)]);
            std::memcpy(index.upper_[id].get(), up + offset, bytes);
            offset += bytes;
        }
    }

public:
    // The index in hnswlib's format (the caller holds the locks as for write()).
    template <class Sink>
    static void write_hnswlib(const HNSW& index, Sink&& sink) {
        if (!index.attrs_.empty())
            throw std::invalid_argument(
                "hnswlib's format has no place for stored attributes; save in evidex's format");
        const std::size_t n = index.count_.load();
        HnswlibHeader h;
        h.max_elements = index.max_elements_.load();
        h.count = n;
        h.offset_data = index.vec_offset_;
        h.label_offset = index.label_offset_;
        h.size_data = index.label_offset_ + sizeof(label_t);
        h.max_level = n == 0 ? -1 : index.entry().level;
        h.entry = n == 0 ? ~std::uint32_t{0} : static_cast<std::uint32_t>(index.entry().node);
        h.maxM = index.M_;
        h.maxM0 = index.M0_;
        h.M = index.M_;
        h.mult = index.level_mult_;
        h.ef_construction = index.ef_construction_;
        char raw[kHnswlibHeaderBytes] = {};
        for_each_hnswlib_field(h, [&](std::size_t at, const void* field, std::size_t len) {
            std::memcpy(raw + at, field, len);
        });
        sink(raw, sizeof(raw));
        for (node_id id = 0; id < n; ++id) sink(index.node(id), h.size_data);
        for (node_id id = 0; id < n; ++id) {
            const std::uint32_t bytes = static_cast<std::uint32_t>(upper_block_bytes(index, id));
            sink(&bytes, sizeof(bytes));
            if (bytes > 0) sink(index.upper_[id].get(), bytes);
        }
    }

private:
    static std::size_t quant_section_bytes(const HNSW& index, std::size_t n) {
        if (index.quant_ == Quantization::SQ8)
            return round_up(2 * index.dim_ * sizeof(float) + n * index.code_stride_, 8);
        if (index.fast_scan_graph())
            return round_up(pq_centroid_bytes(index) + n * index.fs_block_bytes_, 8);
        return 0;
    }

    // PQ4's saved centroids; RaBitQ saves none (its bit patterns are fixed).
    static std::size_t pq_centroid_bytes(const HNSW& index) {
        if (index.quant_ != Quantization::PQ4) return 0;
        const PQ4& pq = index.pq_;
        return pq.subspaces() * PQ4::kCentroids * pq.sub_dim() * sizeof(float);
    }

    static std::size_t scan_section_bytes(const HNSW& index, std::size_t n) {
        if (!index.has_scan_codes()) return 0;
        const PQ4& pq = index.scan_pq_;
        return round_up(pq.centroids().size() * sizeof(float) + n * pq.code_bytes(), 8);
    }

    static std::size_t upper_block_bytes(const HNSW& index, node_id id) {
        return static_cast<std::size_t>(index.levels_[id]) * (index.M_ + 1) * sizeof(std::uint32_t);
    }

    template <class Sink>
    static void for_each_payload_chunk(const HNSW& index, const Header& h, Sink&& sink) {
        const std::size_t n = h.count;
        if (index.node_stride_ == index.node_bytes_) {
            if (h.level0_bytes) sink(index.level0_, h.level0_bytes);
        } else {
            for (node_id id = 0; id < n; ++id) sink(index.node(id), index.node_bytes_);
        }
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
            if (index.quant_ == Quantization::SQ8) {
                const std::size_t dbytes = index.dim_ * sizeof(float);
                sink(index.qmin_.data(), dbytes);
                sink(index.qscale_.data(), dbytes);
                if (n) sink(index.codes_, n * index.code_stride_);
                sink(zeros, h.quant_bytes - 2 * dbytes - n * index.code_stride_);
            } else {
                // Centroids (zeros while untrained; none for RaBitQ), then the codes.
                const PQ4& pq = index.pq_;
                const std::size_t cbytes = pq_centroid_bytes(index);
                if (cbytes > 0 && pq.trained()) {
                    sink(pq.centroids().data(), cbytes);
                } else {
                    for (std::size_t i = 0; i < cbytes; i += sizeof(zeros))
                        sink(zeros, std::min(sizeof(zeros), cbytes - i));
                }
                if (index.fs_stride_ == index.fs_block_bytes_) {
                    if (n) sink(index.fs_blocks_, n * index.fs_block_bytes_);
                } else {
                    for (node_id id = 0; id < n; ++id) sink(index.fs_block(id), index.fs_block_bytes_);
                }
                sink(zeros, h.quant_bytes - cbytes - n * index.fs_block_bytes_);
            }
        }
        if (index.has_scan_codes()) {
            const PQ4& pq = index.scan_pq_;
            const std::size_t cbytes = pq.centroids().size() * sizeof(float);
            sink(pq.centroids().data(), cbytes);
            if (n) sink(index.scan_codes_.data(), n * pq.code_bytes());
            sink(zeros, scan_section_bytes(index, n) - cbytes - n * pq.code_bytes());
        }
    }
};

// The label map and the list of deleted slots, from validated nodes.
void HNSW::rebuild_label_map() {
    const std::size_t n = count_.load();
    label_map_.clear();
    label_map_.reserve(n);
    deleted_slots_.clear();
    labels_are_slots_.store(true);
    for (node_id id = 0; id < n; ++id) {
        if (label_at(id) != id) labels_are_slots_.store(false);
        if (deleted_at(id)) deleted_slots_.push_back(id);
        if (!label_map_.emplace(label_at(id), id).second) corrupt("duplicate labels");
    }
}

std::string HNSW::serialize() const {
    Busy busy(this);
    std::string out;
    {
        std::unique_lock<RwLock> wlock(write_mutex_);
        std::shared_lock<RwLock> slock(storage_mutex_);
        Serializer::write(*this, [&](const void* p, std::size_t n) {
            out.append(static_cast<const char*>(p), n);
        });
    }
    try {
        verify_image(MemorySource(out.data()), out.size());
    } catch (const CorruptIndexError& e) {
        throw std::runtime_error(std::string("the index's snapshot failed its own check (") +
                                 e.what() + "); please report this");
    }
    return out;
}

void HNSW::save(const std::string& path) const {
    Busy busy(this);
    write_atomically(
        path,
        [&](auto&& sink) {
            // A snapshot: no change runs while it is written; searches go on.
            std::unique_lock<RwLock> wlock(write_mutex_);
            std::shared_lock<RwLock> slock(storage_mutex_);
            Serializer::write(*this, sink);
        },
        // Read back what reached the file, and check it as load() would.
        [](const Source& written, std::uint64_t size) { verify_image(written, size); });
}

void HNSW::save_hnswlib(const std::string& path) const {
    Busy busy(this);
    write_atomically(
        path,
        [&](auto&& sink) {
            std::unique_lock<RwLock> wlock(write_mutex_);
            std::shared_lock<RwLock> slock(storage_mutex_);
            Serializer::write_hnswlib(*this, sink);
        },
        [&](const Source& written, std::uint64_t size) {
            try {
                const std::string image = image_from_hnswlib(written, size, space_, dim_, 0);
                verify_image(MemorySource(image.data()), image.size());
            } catch (const std::invalid_argument& e) {
                throw CorruptIndexError(e.what());
            }
        });
}

std::unique_ptr<HNSW> HNSW::deserialize(const char* data, std::size_t size,
                                        std::size_t max_elements) {
    return Serializer::read(MemorySource(data), size, max_elements, nullptr, 0);
}

std::unique_ptr<HNSW> HNSW::load(const std::string& path, bool mmap, std::size_t max_elements,
                                 std::optional<Space> space) {
    const InputFile file(path);
    const int fd = file.fd;
    const std::uint64_t size = file.size;
    if (size < kHeaderBytes)
        corrupt("truncated: " + std::to_string(size) + " bytes, smaller than the header (" + path +
                ")");
    if (!mmap)
        return Serializer::read(FileSource(fd, path), size, max_elements, nullptr, 0, space);
    // MAP_PRIVATE: pages stay shared with the page cache until written, and a
    // write (a delete after load) never reaches the file. The file must not be
    // changed by others while mapped (evidex itself only ever renames over it).
    void* base = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (base == MAP_FAILED) {
        const int err = errno;
        throw FileError("cannot map " + path + ": " + std::strerror(err), err, path);
    }
    try {
        auto index = Serializer::read(MemorySource(static_cast<const char*>(base)), size,
                                      max_elements, base, size, space);
        if (!index->is_mapped()) ::munmap(base, size);
        return index;
    } catch (...) {
        ::munmap(base, size);
        throw;
    }
}

std::unique_ptr<HNSW> HNSW::load_hnswlib(const std::string& path, Space space, std::size_t dim,
                                         std::size_t max_elements) {
    const InputFile file(path);
    const int fd = file.fd;
    const std::string image = image_from_hnswlib(FileSource(fd, path),
                                                 file.size, space,
                                                 dim, max_elements);
    try {
        return Serializer::read(MemorySource(image.data()), image.size(), 0, nullptr, 0);
    } catch (const CorruptIndexError& e) {
        rethrow_as_hnswlib(e);
    }
}

// ---------------------------------------------------------------------------
// IVF file format (version 1), little-endian:
//   IvfHeader  (136 bytes: magic, version, parameters, the payload checksum and a
//              checksum of the header itself)
//   payload    centroids (nlist * dim f32), the quantiser's centroids
//              (subspaces * 16 * sub_dim f32), then per row: ids (u64), lists
//              (u32), live flags (u8: 1, or 0 when deleted), codes (code_bytes),
//              vectors (dim f32, as stored: unit length for cosine); each array
//              padded to 8 bytes. A deleted row's id may be a live row's too.
// The lists' arena is not saved: loading files the rows into their lists as add()
// does, so every row sits in exactly one list by construction. The rules of the
// HNSW format hold: every field bounded, every size overflow-checked and equal
// to the real file size before anything is allocated, every value checked.
namespace {

constexpr char kIvfMagic[8] = {'E', 'V', 'D', 'X', 'I', 'V', 'F', 'S'};
constexpr std::uint32_t kIvfVersion = 1;
constexpr std::size_t kIvfHeaderBytes = 136;

struct IvfHeader {
    char magic[8];
    std::uint32_t version;
    std::uint32_t endian_tag;
    std::uint64_t header_bytes;
    std::uint64_t dim, space, nlist, sub_dim, seed;
    std::uint64_t threshold_bits;  // a double
    std::uint64_t trained, count, file_bytes, payload_checksum;
    std::uint64_t nprobe, reorder;  // IVFIndex's search defaults
    std::uint64_t next_label;       // one past the largest id ever added
    std::uint64_t header_checksum;  // over every byte before this field
};
static_assert(sizeof(IvfHeader) == kIvfHeaderBytes, "header layout");
static_assert(std::is_trivially_copyable<IvfHeader>::value, "header layout");

std::uint64_t ivf_header_checksum(const IvfHeader& h) {
    Checksum c;
    c.update(&h, offsetof(IvfHeader, header_checksum));
    return c.digest();
}

// The payload's arrays, at offsets from the start of the file.
struct IvfLayout {
    std::uint64_t centroids = 0, pq = 0, labels = 0, lists = 0, live = 0, codes = 0, vectors = 0;
    std::uint64_t end = 0;
    std::size_t code_bytes = 0, pq_floats = 0;
};

// Bounded parameters first (so the products below stay far from overflowing),
// then every size, which must add up to the file's.
IvfLayout check_ivf_header(const IvfHeader& h, std::uint64_t size) {
    if (size < kIvfHeaderBytes)
        corrupt("truncated: " + std::to_string(size) + " bytes, smaller than the header");
    check_preamble(h, kIvfMagic, kIvfVersion, "IVF ", ivf_header_checksum(h), size,
                   kIvfHeaderBytes);
    double threshold;
    std::memcpy(&threshold, &h.threshold_bits, 8);
    if (h.space > 2 || h.dim == 0 || h.dim > (std::uint64_t{1} << 24) ||
        h.nlist > (std::uint64_t{1} << 20) || h.sub_dim == 0 || h.sub_dim > h.dim ||
        (h.dim + h.sub_dim - 1) / h.sub_dim > 4096 || h.trained > 1 ||
        !(threshold >= 0.0 && threshold < 1.0) || h.count >= (std::uint64_t{1} << 32) - 1 ||
        (h.trained && h.nlist == 0) || (!h.trained && h.count != 0) || h.nprobe < 1 ||
        h.nprobe > IVFFastScan::kMaxSearchDefault || h.reorder < 1 ||
        h.reorder > IVFFastScan::kMaxSearchDefault || h.next_label > kLabelLimit)
        corrupt("inconsistent parameters in the header");
    const PQ4 pq(h.dim, h.sub_dim);  // bounded above
    IvfLayout L;
    L.code_bytes = pq.code_bytes();
    L.pq_floats = h.trained ? pq.subspaces() * PQ4::kCentroids * pq.sub_dim() : 0;
    const std::uint64_t nlist = h.trained ? h.nlist : 0;
    L.centroids = kIvfHeaderBytes;
    L.pq = add(L.centroids, round_up(mul(mul(nlist, h.dim), 4), 8));
    L.labels = add(L.pq, round_up(mul(L.pq_floats, 4), 8));
    L.lists = add(L.labels, mul(h.count, 8));
    L.live = add(L.lists, round_up(mul(h.count, 4), 8));
    L.codes = add(L.live, round_up(h.count, 8));
    L.vectors = add(L.codes, round_up(mul(h.count, L.code_bytes), 8));
    L.end = add(L.vectors, mul(mul(h.count, h.dim), 4));
    if (L.end != size) corrupt("section sizes do not add up to the file size");
    return L;
}

std::uint64_t ivf_payload_checksum(const char* data, std::uint64_t size) {
    Checksum c;
    c.update(data + kIvfHeaderBytes, size - kIvfHeaderBytes);
    return c.digest();
}

// Header and payload checksum of an image (what save() reads back).
void verify_ivf_image(const Source& src, std::uint64_t size) {
    if (size < kIvfHeaderBytes)
        corrupt("truncated: " + std::to_string(size) + " bytes, smaller than the header");
    IvfHeader h;
    src.read(0, sizeof(h), reinterpret_cast<char*>(&h));
    check_ivf_header(h, size);
    Checksum c;
    std::vector<char> buffer;
    stream(src, kIvfHeaderBytes, size - kIvfHeaderBytes, 1, buffer,
           [&](const char* p, std::size_t len) { c.update(p, len); });
    if (c.digest() != h.payload_checksum) corrupt("payload checksum mismatch");
}

}  // namespace

std::string IVFFastScan::serialize() const {
    std::shared_lock<std::shared_mutex> lock(mutex_);
    const std::uint64_t n = labels_.size();
    IvfHeader h{};
    std::memcpy(h.magic, kIvfMagic, 8);
    h.version = kIvfVersion;
    h.endian_tag = kEndianTag;
    h.header_bytes = kIvfHeaderBytes;
    h.dim = dim_;
    h.space = static_cast<std::uint64_t>(space_);
    h.nlist = nlist_;
    h.sub_dim = pq_.sub_dim();
    h.seed = seed_;
    std::memcpy(&h.threshold_bits, &threshold_, 8);
    h.trained = trained_ ? 1 : 0;
    h.count = n;
    h.nprobe = nprobe_.load();
    h.reorder = reorder_.load();
    h.next_label = next_label_;
    std::vector<std::uint32_t> lists;
    std::vector<std::uint8_t> codes;
    rows_in_lists(lists, codes);
    std::string out(sizeof(h), '\0');
    const auto put = [&](const void* p, std::size_t bytes) {
        out.append(static_cast<const char*>(p), bytes);
        out.append((8 - bytes % 8) % 8, '\0');
    };
    if (trained_) {
        put(centroids_.data(), centroids_.size() * sizeof(float));
        put(pq_.centroids().data(), pq_.centroids().size() * sizeof(float));
    }
    static_assert(sizeof(label_t) == 8, "labels are 64-bit");
    put(labels_.data(), n * sizeof(label_t));
    put(lists.data(), n * 4);
    put(live_.data(), n);
    put(codes.data(), codes.size());
    put(vectors_.data(), n * dim_ * sizeof(float));
    h.file_bytes = out.size();
    h.payload_checksum = ivf_payload_checksum(out.data(), out.size());
    h.header_checksum = ivf_header_checksum(h);
    std::memcpy(out.data(), &h, sizeof(h));
    return out;
}

void IVFFastScan::save(const std::string& path) const {
    // The image is a snapshot taken under the read lock (adds wait, searches go on).
    const std::string image = serialize();
    write_atomically(
        path, [&](auto&& sink) { sink(image.data(), image.size()); },
        [](const Source& written, std::uint64_t size) { verify_ivf_image(written, size); });
}

std::unique_ptr<IVFFastScan> IVFFastScan::deserialize(const char* data, std::size_t size) {
    if (size < kIvfHeaderBytes)
        corrupt("truncated: " + std::to_string(size) + " bytes, smaller than the header");
    IvfHeader h;
    std::memcpy(&h, data, sizeof(h));
    const IvfLayout L = check_ivf_header(h, size);
    if (ivf_payload_checksum(data, size) != h.payload_checksum) corrupt("payload checksum mismatch");
    double threshold;
    std::memcpy(&threshold, &h.threshold_bits, 8);
    std::unique_ptr<IVFFastScan> index;
    try {
        index = std::make_unique<IVFFastScan>(h.dim, static_cast<Space>(h.space), h.nlist,
                                              h.sub_dim, h.seed, threshold);
    } catch (const std::invalid_argument& e) {
        corrupt(std::string("inconsistent parameters in the header (") + e.what() + ")");
    }
    IVFFastScan& x = *index;
    x.set_default_nprobe(h.nprobe);  // bounded by the header check
    x.set_default_reorder(h.reorder);
    x.next_label_ = h.next_label;
    if (!h.trained) return index;
    const std::size_t n = h.count, dim = h.dim, nlist = h.nlist;
    x.centroids_.resize(nlist * dim);
    std::memcpy(x.centroids_.data(), data + L.centroids, x.centroids_.size() * sizeof(float));
    // Means of such vectors: bounded as they are.
    for (std::size_t j = 0; j < nlist; ++j)
        if (stored_vector_problem(x.centroids_.data() + j * dim, dim, false))
            corrupt("a centroid is not finite or too large");
    std::vector<float> pq(L.pq_floats);
    std::memcpy(pq.data(), data + L.pq, pq.size() * sizeof(float));
    // Centroids of residuals x - c, each component at most |x| + |c|.
    const float residual_bound = 2.f * std::sqrt(kMaxSquaredNorm);
    for (float v : pq)
        if (!(std::fabs(v) <= residual_bound)) corrupt("the quantiser's centroids are too large");
    try {
        x.pq_.set_centroids(std::move(pq));
    } catch (const std::invalid_argument& e) {
        corrupt(std::string("the quantiser's centroids: ") + e.what());
    }
    x.index_centroids();
    x.start_.assign(nlist + 1, 0);
    x.count_.assign(nlist, 0);
    x.trained_ = true;
    x.labels_.resize(n);
    std::memcpy(x.labels_.data(), data + L.labels, n * sizeof(label_t));
    x.live_.assign(data + L.live, data + L.live + n);
    x.rows_of_.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
        if (x.labels_[i] >= h.next_label) corrupt("an id is out of range");
        if (x.live_[i] > 1) corrupt("a live flag is neither 0 nor 1");
        if (x.live_[i] == 0) {
            ++x.deleted_;
        } else if (!x.rows_of_.emplace(x.labels_[i], static_cast<std::uint32_t>(i)).second) {
            corrupt("duplicate ids");
        }
    }
    std::vector<std::uint32_t> lists(n);
    std::memcpy(lists.data(), data + L.lists, n * 4);
    for (std::uint32_t j : lists)
        if (j >= nlist) corrupt("a row's list is out of range");
    x.vectors_.resize(n * dim);
    std::memcpy(x.vectors_.data(), data + L.vectors, n * dim * sizeof(float));
    // As add() takes them (unit length, or zero, in cosine space): anything else
    // would give distances outside float32 or [0, 2] without a word.
    for (std::size_t i = 0; i < n; ++i)
        if (const char* problem = stored_vector_problem(x.vectors_.data() + i * dim, dim,
                                                        x.space_ == Space::Cosine))
            corrupt(problem);
    // Any 4-bit code is a valid one: filed as add() files them.
    x.append_rows(0, n, lists.data(), reinterpret_cast<const std::uint8_t*>(data + L.codes));
    return index;
}

std::unique_ptr<IVFFastScan> IVFFastScan::load(const std::string& path) {
    const InputFile file(path);
    if (file.size < kIvfHeaderBytes)
        corrupt("truncated: " + std::to_string(file.size) + " bytes, smaller than the header (" +
                path + ")");
    // Sized by the file itself; the header is checked before the rest is read.
    IvfHeader h;
    FileSource src(file.fd, path);
    src.read(0, sizeof(h), reinterpret_cast<char*>(&h));
    check_ivf_header(h, file.size);
    std::vector<char> image(static_cast<std::size_t>(file.size));
    src.read(0, image.size(), image.data());
    return deserialize(image.data(), image.size());
}

}  // namespace evidex
