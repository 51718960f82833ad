// CUDA kernels of evidex.ops. The per-element math (box IoU/GIoU and its
// gradient, temporal IoU) comes from cpp/include/evidex/ops_math.h, the same
// functions the CPU kernels run, so the CPU tests check this math too.
#include <cuda_runtime.h>

#include <cstdint>

#include "evidex/ops_math.h"
#include "ops.h"

namespace {

constexpr int kBlock = 256;

// Block-wide reductions over kBlock threads through shared memory.
template <class T>
__device__ T block_sum(T v, T* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int s = kBlock / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    const T out = shared[0];
    __syncthreads();
    return out;
}

template <class T>
__device__ T block_max(T v, T* shared) {
    shared[threadIdx.x] = v;
    __syncthreads();
    for (int s = kBlock / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] = fmax(shared[threadIdx.x], shared[threadIdx.x + s]);
        __syncthreads();
    }
    const T out = shared[0];
    __syncthreads();
    return out;
}

// Arg-max with ties to the lower index, over candidates not excluded.
template <class T>
__device__ void block_argmax(T v, std::int64_t i, T* sv, std::int64_t* si) {
    sv[threadIdx.x] = v;
    si[threadIdx.x] = i;
    __syncthreads();
    for (int s = kBlock / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            const T ov = sv[threadIdx.x + s];
            const std::int64_t oi = si[threadIdx.x + s];
            const bool better = oi >= 0 && (si[threadIdx.x] < 0 || ov > sv[threadIdx.x] ||
                                            (ov == sv[threadIdx.x] && oi < si[threadIdx.x]));
            if (better) {
                sv[threadIdx.x] = ov;
                si[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
}

// One block per row: k rounds of arg-max over the entries not taken yet; the
// mask row doubles as the taken set.
template <class T>
__global__ void topk_rows_kernel(const T* scores, T* mask, std::int64_t* indices, int n, int k) {
    __shared__ T sv[kBlock];
    __shared__ std::int64_t si[kBlock];
    const T* s = scores + static_cast<std::int64_t>(blockIdx.x) * n;
    T* m = mask + static_cast<std::int64_t>(blockIdx.x) * n;
    for (int i = threadIdx.x; i < n; i += kBlock) m[i] = T(0);
    __syncthreads();
    for (int j = 0; j < k; ++j) {
        T best = T(0);
        std::int64_t best_i = -1;
        for (int i = threadIdx.x; i < n; i += kBlock) {
            if (m[i] != T(0)) continue;
            if (best_i < 0 || s[i] > best) {
                best = s[i];
                best_i = i;
            }
        }
        block_argmax(best, best_i, sv, si);
        if (threadIdx.x == 0) {
            indices[static_cast<std::int64_t>(blockIdx.x) * k + j] = si[0];
            m[si[0]] = T(1);
        }
        __syncthreads();
    }
}

// One block per row: for each slot, a max-subtracted softmax of the (masked)
// logits, then grad += soft * (g - <g, soft>) / tau, accumulated in double.
template <class T>
__global__ void st_topk_backward_kernel(const T* scores, const std::int64_t* indices,
                                        const T* grad, T* out, int n, int k, double tau,
                                        int mode, bool per_slot) {
    __shared__ double shared[kBlock];
    const std::int64_t r = blockIdx.x;
    const T* s = scores + r * n;
    const std::int64_t* idx = indices + r * k;
    T* o = out + r * n;
    for (int i = threadIdx.x; i < n; i += kBlock) o[i] = T(0);
    const int slots = mode == 0 ? 1 : k;
    const double log_free = log1p(1e-8), log_taken = log(1e-8);
    for (int j = 0; j < slots; ++j) {
        auto logit = [&](int i) {
            double l = static_cast<double>(s[i]) / tau;
            if (mode == 1) {
                bool taken = false;
                for (int t = 0; t < j; ++t) taken |= idx[t] == i;
                l += taken ? log_taken : log_free;
            }
            return l;
        };
        auto upstream = [&](int i) {
            if (!per_slot) return static_cast<double>(grad[r * n + i]);
            if (mode == 1) return static_cast<double>(grad[(r * k + j) * n + i]);
            double g = 0.0;
            for (int t = 0; t < k; ++t) g += static_cast<double>(grad[(r * k + t) * n + i]);
            return g;
        };
        double mx = -INFINITY;
        for (int i = threadIdx.x; i < n; i += kBlock) mx = fmax(mx, logit(i));
        mx = block_max(mx, shared);
        double sum = 0.0;
        for (int i = threadIdx.x; i < n; i += kBlock) sum += exp(logit(i) - mx);
        sum = block_sum(sum, shared);
        double dot = 0.0;
        for (int i = threadIdx.x; i < n; i += kBlock) dot += upstream(i) * exp(logit(i) - mx) / sum;
        dot = block_sum(dot, shared);
        for (int i = threadIdx.x; i < n; i += kBlock) {
            const double soft = exp(logit(i) - mx) / sum;
            o[i] = static_cast<T>(static_cast<double>(o[i]) + soft * (upstream(i) - dot) / tau);
        }
        __syncthreads();
    }
}

template <class T>
__global__ void box_iou_matrix_kernel(const T* a, const T* b, T* out, int na, int nb,
                                      bool generalized) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int i = blockIdx.y;
    if (i >= na || j >= nb) return;
    out[static_cast<std::int64_t>(i) * nb + j] =
        evidex::ops::iou_pair(a + 4 * i, b + 4 * j, generalized);
}

// d out / d boxes: one thread per row of boxes1 (summing over its columns), then
// one per box of boxes2 (summing over rows), as the CPU kernel: no atomics, the
// same order of sums on every run.
template <class T>
__global__ void box_iou_matrix_backward_kernel(const T* a, const T* b, const T* g, T* ga, T* gb,
                                               int na, int nb, bool generalized) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    T acc[4] = {0, 0, 0, 0}, unused[4];
    if (t < na) {
        for (int j = 0; j < nb; ++j)
            evidex::ops::box_iou_backward(a + 4 * t, b + 4 * j,
                                          g[static_cast<std::int64_t>(t) * nb + j], generalized,
                                          T(0), acc, unused);
        for (int c = 0; c < 4; ++c) ga[4 * t + c] = acc[c];
    } else if (t < na + nb) {
        const int j = t - na;
        for (int i = 0; i < na; ++i)
            evidex::ops::box_iou_backward(a + 4 * i, b + 4 * j,
                                          g[static_cast<std::int64_t>(i) * nb + j], generalized,
                                          T(0), unused, acc);
        for (int c = 0; c < 4; ++c) gb[4 * j + c] = acc[c];
    }
}

template <class T>
__global__ void box_iou_pairs_kernel(const T* a, const T* b, T* out, int n, bool generalized,
                                     T eps) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = evidex::ops::iou_pair(a + 4 * i, b + 4 * i, generalized, eps);
}

template <class T>
__global__ void box_iou_pairs_backward_kernel(const T* a, const T* b, const T* g, T* ga, T* gb,
                                              int n, bool generalized, T eps) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    T da[4] = {0, 0, 0, 0}, db[4] = {0, 0, 0, 0};
    evidex::ops::box_iou_backward(a + 4 * i, b + 4 * i, g[i], generalized, eps, da, db);
    for (int c = 0; c < 4; ++c) {
        ga[4 * i + c] = da[c];
        gb[4 * i + c] = db[c];
    }
}

template <class T>
__global__ void temporal_iou_kernel(const T* a, const T* b, T* out, int na, int nb) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    const int i = blockIdx.y;
    if (i >= na || j >= nb) return;
    out[static_cast<std::int64_t>(i) * nb + j] = evidex::ops::temporal_iou(a + 2 * i, b + 2 * j);
}

// Thread per (query, frame): cosine over D, accumulated in double.
template <class T>
__global__ void frame_scores_kernel(const T* frames, const T* queries, T* out, int nt, int nq,
                                    int d) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int q = blockIdx.y;
    if (t >= nt || q >= nq) return;
    const T* f = frames + static_cast<std::int64_t>(t) * d;
    const T* v = queries + static_cast<std::int64_t>(q) * d;
    double dot = 0, ff = 0, vv = 0;
    for (int i = 0; i < d; ++i) {
        dot += static_cast<double>(f[i]) * v[i];
        ff += static_cast<double>(f[i]) * f[i];
        vv += static_cast<double>(v[i]) * v[i];
    }
    out[static_cast<std::int64_t>(q) * nt + t] =
        static_cast<T>(dot / (fmax(sqrt(ff), 1e-12) * fmax(sqrt(vv), 1e-12)));
}

// One block: k rounds of arg-max over frames not blocked, each pick blocking its
// min_gap - 1 neighbours on either side; picks sorted into time order.
template <class T>
__global__ void select_keyframes_kernel(const T* scores, std::int64_t* out, std::int64_t* count,
                                        int n, int k, int min_gap, unsigned char* blocked) {
    __shared__ T sv[kBlock];
    __shared__ std::int64_t si[kBlock];
    for (int i = threadIdx.x; i < n; i += kBlock) blocked[i] = 0;
    __syncthreads();
    int kept = 0;
    for (; kept < k; ++kept) {
        T best = T(0);
        std::int64_t best_i = -1;
        for (int i = threadIdx.x; i < n; i += kBlock) {
            if (blocked[i]) continue;
            if (best_i < 0 || scores[i] > best) {
                best = scores[i];
                best_i = i;
            }
        }
        block_argmax(best, best_i, sv, si);
        const std::int64_t f = si[0];
        if (f < 0) break;
        if (threadIdx.x == 0) out[kept] = f;
        for (std::int64_t t = f - min_gap + 1 + threadIdx.x; t <= f + min_gap - 1; t += kBlock)
            if (t >= 0 && t < n) blocked[t] = 1;
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        for (int a = 1; a < kept; ++a)
            for (int b = a; b > 0 && out[b - 1] > out[b]; --b) {
                const std::int64_t tmp = out[b];
                out[b] = out[b - 1];
                out[b - 1] = tmp;
            }
        *count = kept;
    }
}

unsigned blocks(std::int64_t n) { return static_cast<unsigned>((n + kBlock - 1) / kBlock); }

template <class F>
int dispatch(int dtype, F&& f) {
    if (dtype == 0)
        f(float{});
    else
        f(double{});
    return static_cast<int>(cudaGetLastError());
}

}  // namespace

extern "C" {

int evidex_cuda_topk_rows(const void* scores, void* mask, void* indices, long long rows, int n,
                          int k, int dtype, void* stream) {
    return dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        topk_rows_kernel<T><<<static_cast<unsigned>(rows), kBlock, 0, (cudaStream_t)stream>>>(
            static_cast<const T*>(scores), static_cast<T*>(mask),
            static_cast<std::int64_t*>(indices), n, k);
    });
}

int evidex_cuda_st_topk_backward(const void* scores, const void* indices, const void* grad,
                                 void* out, long long rows, int n, int k, double tau, int mode,
                                 int per_slot, int dtype, void* stream) {
    return dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        st_topk_backward_kernel<T><<<static_cast<unsigned>(rows), kBlock, 0, (cudaStream_t)stream>>>(
            static_cast<const T*>(scores), static_cast<const std::int64_t*>(indices),
            static_cast<const T*>(grad), static_cast<T*>(out), n, k, tau, mode, per_slot != 0);
    });
}

int evidex_cuda_box_iou_matrix(const void* a, const void* b, void* out, int na, int nb,
                               int generalized, int dtype, void* stream) {
    return dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        box_iou_matrix_kernel<T><<<dim3(blocks(nb), na), kBlock, 0, (cudaStream_t)stream>>>(
            static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(out), na, nb,
            generalized != 0);
    });
}

int evidex_cuda_box_iou_matrix_backward(const void* a, const void* b, const void* g, void* ga,
                                        void* gb, int na, int nb, int generalized, int dtype,
                                        void* stream) {
    return dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        box_iou_matrix_backward_kernel<T><<<blocks(na + nb), kBlock, 0, (cudaStream_t)stream>>>(
            static_cast<const T*>(a), static_cast<const T*>(b), static_cast<const T*>(g),
            static_cast<T*>(ga), static_cast<T*>(gb), na, nb, generalized != 0);
    });
}

int evidex_cuda_box_iou_pairs(const void* a, const void* b, void* out, int n, int generalized,
                              double eps, int dtype, void* stream) {
    return dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        box_iou_pairs_kernel<T><<<blocks(n), kBlock, 0, (cudaStream_t)stream>>>(
            static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(out), n,
            generalized != 0, static_cast<T>(eps));
    });
}

int evidex_cuda_box_iou_pairs_backward(const void* a, const void* b, const void* g, void* ga,
                                       void* gb, int n, int generalized, double eps, int dtype,
                                       void* stream) {
    return dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        box_iou_pairs_backward_kernel<T><<<blocks(n), kBlock, 0, (cudaStream_t)stream>>>(
            static_cast<const T*>(a), static_cast<const T*>(b), static_cast<const T*>(g),
            static_cast<T*>(ga), static_cast<T*>(gb), n, generalized != 0, static_cast<T>(eps));
    });
}

int evidex_cuda_temporal_iou_matrix(const void* a, const void* b, void* out, int na, int nb,
                                    int dtype, void* stream) {
    return dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        temporal_iou_kernel<T><<<dim3(blocks(nb), na), kBlock, 0, (cudaStream_t)stream>>>(
            static_cast<const T*>(a), static_cast<const T*>(b), static_cast<T*>(out), na, nb);
    });
}

int evidex_cuda_frame_scores(const void* frames, const void* queries, void* out, int nt, int nq,
                             int d, int dtype, void* stream) {
    return dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        frame_scores_kernel<T><<<dim3(blocks(nt), nq), kBlock, 0, (cudaStream_t)stream>>>(
            static_cast<const T*>(frames), static_cast<const T*>(queries), static_cast<T*>(out),
            nt, nq, d);
    });
}

int evidex_cuda_select_keyframes(const void* scores, void* out, void* count, int n, int k,
                                 int min_gap, int dtype, void* stream) {
    unsigned char* blocked = nullptr;
    cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&blocked), n, (cudaStream_t)stream);
    if (err != cudaSuccess) return static_cast<int>(err);
    const int rc = dispatch(dtype, [&](auto t) {
        using T = decltype(t);
        select_keyframes_kernel<T><<<1, kBlock, 0, (cudaStream_t)stream>>>(
            static_cast<const T*>(scores), static_cast<std::int64_t*>(out),
            static_cast<std::int64_t*>(count), n, k, min_gap, blocked);
    });
    cudaFreeAsync(blocked, (cudaStream_t)stream);
    return rc;
}

}  // extern "C"
