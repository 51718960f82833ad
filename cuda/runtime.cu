#include <cuda_runtime.h>

#include <cstring>
#include <vector>

#include "runtime.h"

namespace {

__global__ void iota_kernel(int* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = i;
}

}  // namespace

extern "C" {

int evidex_cuda_device_count(int* count) {
    *count = 0;
    const cudaError_t err = cudaGetDeviceCount(count);
    if (err != cudaSuccess) *count = 0;
    return static_cast<int>(err);
}

int evidex_cuda_runtime_version(int* version) {
    return static_cast<int>(cudaRuntimeGetVersion(version));
}

int evidex_cuda_device_name(int device, char* name, int capacity) {
    cudaDeviceProp prop{};
    const cudaError_t err = cudaGetDeviceProperties(&prop, device);
    if (err == cudaSuccess && capacity > 0) {
        std::strncpy(name, prop.name, static_cast<size_t>(capacity) - 1);
        name[capacity - 1] = '\0';
    }
    return static_cast<int>(err);
}

int evidex_cuda_self_test(int n, int* mismatches) {
    *mismatches = -1;
    int* device = nullptr;
    cudaError_t err = cudaMalloc(&device, sizeof(int) * static_cast<size_t>(n));
    if (err != cudaSuccess) return static_cast<int>(err);
    iota_kernel<<<(n + 255) / 256, 256>>>(device, n);
    err = cudaGetLastError();
    std::vector<int> host(static_cast<size_t>(n), -1);
    if (err == cudaSuccess)
        err = cudaMemcpy(host.data(), device, sizeof(int) * static_cast<size_t>(n),
                         cudaMemcpyDeviceToHost);
    cudaFree(device);
    if (err != cudaSuccess) return static_cast<int>(err);
    int bad = 0;
    for (int i = 0; i < n; ++i) bad += host[static_cast<size_t>(i)] != i;
    *mismatches = bad;
    return 0;
}

const char* evidex_cuda_error_string(int code) {
    return cudaGetErrorString(static_cast<cudaError_t>(code));
}

}  // extern "C"
