// C entry points of the CUDA module. Plain C types only, so the host-compiled
// bindings need no CUDA headers; every function returns a cudaError_t code.
#pragma once

extern "C" {
int evidex_cuda_device_count(int* count);
int evidex_cuda_runtime_version(int* version);
int evidex_cuda_device_name(int device, char* name, int capacity);
// Launches a kernel that writes out[i] = i for n elements and checks the copy
// back: the smallest proof that kernels run on this machine.
int evidex_cuda_self_test(int n, int* mismatches);
const char* evidex_cuda_error_string(int code);
}
