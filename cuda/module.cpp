// evidex._cuda: loaded lazily by evidex.cuda, never at `import evidex`.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "runtime.h"

namespace py = pybind11;

namespace {
void check(int code, const char* what) {
    if (code != 0)
        throw std::runtime_error(std::string(what) + ": " + evidex_cuda_error_string(code));
}
}  // namespace

PYBIND11_MODULE(_cuda, m) {
    m.doc() = "evidex CUDA kernels (static CUDA runtime)";
    m.def("device_count", [] {
        int n = 0;
        evidex_cuda_device_count(&n);  // no driver or no GPU: zero devices
        return n;
    });
    m.def("runtime_version", [] {
        int v = 0;
        check(evidex_cuda_runtime_version(&v), "cudaRuntimeGetVersion");
        return v;
    });
    m.def("device_name", [](int device) {
        char name[256];
        check(evidex_cuda_device_name(device, name, sizeof(name)), "cudaGetDeviceProperties");
        return std::string(name);
    }, py::arg("device") = 0);
    m.def("self_test", [](int n) {
        int bad = -1;
        check(evidex_cuda_self_test(n, &bad), "self test");
        return bad;
    }, py::arg("n") = 1 << 16);
}
