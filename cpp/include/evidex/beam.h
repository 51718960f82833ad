// The beam of a graph search as one sorted array (the "linear pool" of NSG and
// GLASS): nearest first, capped at ef, with a cursor at the nearest entry not yet
// expanded. For the beam widths HNSW uses, a binary search plus a short memmove
// beats a pair of binary heaps, and the results come out sorted.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace evidex {

class BeamPool {
public:
    void reset(std::size_t capacity) {
        if (dist_.size() < capacity + 1) {
            dist_.resize(capacity + 1);
            id_.resize(capacity + 1);
        }
        capacity_ = capacity;
        size_ = 0;
        cursor_ = 0;
    }

    std::size_t size() const { return size_; }
    // Distance a candidate must beat to enter the beam.
    float bound() const {
        return size_ < capacity_ ? std::numeric_limits<float>::infinity() : dist_[size_ - 1];
    }

    // Insert keeping order; returns false if the beam is full of closer entries.
    bool insert(float d, std::uint32_t id) {
        if (size_ == capacity_ && !(d < dist_[size_ - 1])) return false;
        const std::size_t pos =
            static_cast<std::size_t>(std::upper_bound(dist_.data(), dist_.data() + size_, d) -
                                     dist_.data());
        const std::size_t moved = (size_ < capacity_ ? size_ : size_ - 1) - pos;
        std::memmove(&dist_[pos + 1], &dist_[pos], moved * sizeof(float));
        std::memmove(&id_[pos + 1], &id_[pos], moved * sizeof(std::uint32_t));
        dist_[pos] = d;
        id_[pos] = id;
        if (size_ < capacity_) ++size_;
        if (pos < cursor_) cursor_ = pos;
        return true;
    }

    bool has_next() const { return cursor_ < size_; }

    // The nearest unexpanded entry, left in place.
    std::uint32_t peek() const { return id_[cursor_]; }

    // The nearest unexpanded entry, marked expanded.
    std::uint32_t pop() {
        const std::uint32_t id = id_[cursor_];
        id_[cursor_] |= kExpanded;
        while (cursor_ < size_ && (id_[cursor_] & kExpanded)) ++cursor_;
        return id;
    }

    std::uint32_t id(std::size_t i) const { return id_[i] & ~kExpanded; }
    float dist(std::size_t i) const { return dist_[i]; }

    // Ids below this bound leave the top bit free for the expanded flag.
    static constexpr std::uint32_t kMaxId = 0x7fffffffu;

private:
    static constexpr std::uint32_t kExpanded = 0x80000000u;
    std::vector<float> dist_;
    std::vector<std::uint32_t> id_;
    std::size_t capacity_ = 0, size_ = 0, cursor_ = 0;
};

}  // namespace evidex
