// Visited sets for graph search: an epoch-tagged array per search, reused from a
// pool so a query never allocates (hnswlib's VisitedListPool idea).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "evidex/kernel_abi.h"

namespace evidex {

class VisitedList {
public:
    explicit VisitedList(std::size_t capacity) : tags_(capacity, 0) {}

    // Start a new search: the epoch moves by two (epoch - 1 tags "queued", see
    // below), clearing the tags only on wrap-around.
    void reset() {
        if (epoch_ >= 0xfffe) {
            std::fill(tags_.begin(), tags_.end(), 0);
            epoch_ = 0;
        }
        epoch_ += 2;
    }
    bool visited(std::uint32_t id) const { return tags_[id] == epoch_; }
    // A second state for searches that visit a node when they expand it (the
    // fast-scan beam): queued = entered the beam, not yet expanded.
    bool queued(std::uint32_t id) const { return tags_[id] == epoch_ - 1; }
    void mark_queued(std::uint32_t id) { tags_[id] = static_cast<std::uint16_t>(epoch_ - 1); }
    void mark(std::uint32_t id) { tags_[id] = epoch_; }
    // Returns true if `id` was not visited yet, and marks it.
    bool try_visit(std::uint32_t id) {
        if (tags_[id] == epoch_) return false;
        tags_[id] = epoch_;
        return true;
    }
    const std::uint16_t* data() const { return tags_.data(); }
    // The set as the kernel ABI passes it (kernel_abi.h), current epoch included.
    evx_visited abi() { return evx_visited{tags_.data(), epoch_}; }
    std::size_t capacity() const { return tags_.size(); }

private:
    std::vector<std::uint16_t> tags_;
    std::uint16_t epoch_ = 0;
};

class VisitedPool {
public:
    explicit VisitedPool(std::size_t capacity) : capacity_(capacity) {}

    // RAII handle: returns the list to the pool when it goes out of scope, also
    // when a search unwinds through an exception (a Python filter may throw).
    class Handle {
    public:
        Handle(VisitedPool* pool, std::unique_ptr<VisitedList> list)
            : pool_(pool), list_(std::move(list)) {}
        Handle(Handle&&) = default;
        ~Handle() {
            if (list_) pool_->release(std::move(list_));
        }
        VisitedList* operator->() { return list_.get(); }
        VisitedList& operator*() { return *list_; }

    private:
        VisitedPool* pool_;
        std::unique_ptr<VisitedList> list_;
    };

    Handle acquire() {
        std::unique_ptr<VisitedList> list;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!free_.empty()) {
                list = std::move(free_.back());
                free_.pop_back();
            }
        }
        if (!list) list = std::make_unique<VisitedList>(capacity_);
        list->reset();
        return Handle(this, std::move(list));
    }

    // Only called while no search runs (the index holds its exclusive lock).
    void resize(std::size_t capacity) {
        std::lock_guard<std::mutex> lock(mutex_);
        capacity_ = capacity;
        free_.clear();
    }

    std::size_t memory_bytes() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return free_.size() * capacity_ * sizeof(std::uint16_t);
    }

private:
    void release(std::unique_ptr<VisitedList> list) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (list->capacity() == capacity_) free_.push_back(std::move(list));
    }

    mutable std::mutex mutex_;
    std::size_t capacity_;
    std::vector<std::unique_ptr<VisitedList>> free_;
};

}  // namespace evidex
