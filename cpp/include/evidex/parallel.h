// A minimal parallel-for over std::thread (no OpenMP): dynamic scheduling through
// an atomic counter, first exception re-thrown after every thread has joined.
#pragma once

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace evidex {

// Threads for `work_items` items: `requested` (0: one per core), never more than
// the items, nor more than four per core (beyond that a thread only costs).
inline std::size_t resolve_threads(std::size_t requested, std::size_t work_items) {
    if (work_items <= 1) return 1;
    // Read once: glibc answers hardware_concurrency() by opening and parsing a
    // /sys file, which cost more than a whole small search (one query per call).
    static const std::size_t cores = std::max<unsigned>(1u, std::thread::hardware_concurrency());
    std::size_t n = requested == 0 ? cores : std::min(requested, std::max<std::size_t>(64, 4 * cores));
    return std::max<std::size_t>(1, std::min(n, work_items));
}

// Threads for a batch of nq cheap queries (a k-NN search: tens to hundreds of
// microseconds each): at least four per thread, as starting a thread costs
// about as much as a query (hnswlib keeps such batches on one thread).
inline std::size_t query_threads(std::size_t requested, std::size_t nq) {
    return resolve_threads(requested, (nq + 3) / 4);
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
    // Joins whatever was started, also when starting a thread fails part-way: a
    // joinable std::thread destroyed unjoined would terminate the process.
    struct Pool {
        std::vector<std::thread> threads;
        ~Pool() {
            for (auto& t : threads)
                if (t.joinable()) t.join();
        }
    } pool;
    for (std::size_t t = 1; t < threads; ++t) {
        try {
            pool.threads.emplace_back(worker);
        } catch (const std::system_error&) {
            break;  // the system gives no more threads: the ones we have do the work
        }
    }
    worker();
    for (auto& th : pool.threads) th.join();
    if (error) std::rethrow_exception(error);
}

}  // namespace evidex
