// A reader-writer lock that does not starve writers: once a writer waits, new
// readers queue behind it. std::shared_mutex on glibc prefers readers, so a
// steady stream of searches could hold off a resize or a save for ever. Nothing
// in the index takes one of these twice on a thread (HNSW::Busy refuses it), as
// writer preference requires.
#pragma once

#include <system_error>

#if defined(__GLIBC__)
#include <pthread.h>
#else
#include <shared_mutex>
#endif

namespace evidex {

#if defined(__GLIBC__)
class RwLock {
public:
    RwLock() {
        pthread_rwlockattr_t attr;
        pthread_rwlockattr_init(&attr);
        pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
        const int err = pthread_rwlock_init(&lock_, &attr);
        pthread_rwlockattr_destroy(&attr);
        if (err != 0) throw std::system_error(err, std::generic_category(), "rwlock");
    }
    ~RwLock() { pthread_rwlock_destroy(&lock_); }
    RwLock(const RwLock&) = delete;
    RwLock& operator=(const RwLock&) = delete;

    void lock() { check(pthread_rwlock_wrlock(&lock_)); }
    bool try_lock() { return pthread_rwlock_trywrlock(&lock_) == 0; }
    void unlock() { pthread_rwlock_unlock(&lock_); }
    void lock_shared() { check(pthread_rwlock_rdlock(&lock_)); }
    bool try_lock_shared() { return pthread_rwlock_tryrdlock(&lock_) == 0; }
    void unlock_shared() { pthread_rwlock_unlock(&lock_); }

private:
    static void check(int err) {
        if (err != 0) throw std::system_error(err, std::generic_category(), "rwlock");
    }
    pthread_rwlock_t lock_;
};
#else
using RwLock = std::shared_mutex;
#endif

}  // namespace evidex
