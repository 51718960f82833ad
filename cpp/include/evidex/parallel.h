// A minimal parallel-for over std::thread (no OpenMP): dynamic scheduling through
// an atomic counter, first exception re-thrown after every thread has joined.
#pragma once

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace evidex {

inline std::size_t resolve_threads(std::size_t requested, std::size_t work_items) {
    std::size_t n = requested;
    if (n == 0) n = std::max<unsigned>(1u, std::thread::hardware_concurrency());
    return std::max<std::size_t>(1, std::min(n, work_items));
}

template <class Fn>
void parallel_for(std::size_t n, std::size_t num_threads, Fn&& fn) {
    const std::size_t threads = resolve_threads(num_threads, n);
    if (threads <= 1) {
        for (std::size_t i = 0; i < n; ++i) fn(i);
        return;
    }
    std::atomic<std::size_t> next{0};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto worker = [&] {
        for (;;) {
            const std::size_t i = next.fetch_add(1);
            if (i >= n) break;
            try {
                fn(i);
            } catch (...) {
                std::lock_guard<std::mutex> lock(error_mutex);
                if (!error) error = std::current_exception();
                next.store(n);  // stop handing out work
            }
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(threads - 1);
    for (std::size_t t = 1; t < threads; ++t) pool.emplace_back(worker);
    worker();
    for (auto& th : pool) th.join();
    if (error) std::rethrow_exception(error);
}

}  // namespace evidex
