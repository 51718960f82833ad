// Storage that searches read at random: from 4 MiB on, aligned to 2 MiB and
// marked for transparent huge pages, so a random read costs a cache miss but
// rarely a TLB miss as well (page walks were a good part of each graph hop on
// 4 KiB pages). Freed with std::free.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdlib>
#include <new>

namespace evidex {

inline void* alloc_random_access(std::size_t bytes) {
    constexpr std::size_t kHuge = std::size_t{2} << 20;
    bytes = bytes < 64 ? 64 : bytes;
    if (bytes < 2 * kHuge) return std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    const std::size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
    void* p = std::aligned_alloc(kHuge, rounded);
#ifdef MADV_HUGEPAGE
    if (p != nullptr) ::madvise(p, rounded, MADV_HUGEPAGE);
#endif
    return p;
}

// The same for standard containers.
template <class T>
struct RandomAccessAllocator {
    using value_type = T;
    RandomAccessAllocator() = default;
    template <class U>
    RandomAccessAllocator(const RandomAccessAllocator<U>&) {}
    T* allocate(std::size_t n) {
        if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_alloc();
        void* p = alloc_random_access(n * sizeof(T));
        if (p == nullptr) throw std::bad_alloc();
        return static_cast<T*>(p);
    }
    void deallocate(T* p, std::size_t) { std::free(p); }
    template <class U>
    bool operator==(const RandomAccessAllocator<U>&) const { return true; }
    template <class U>
    bool operator!=(const RandomAccessAllocator<U>&) const { return false; }
};

}  // namespace evidex
