// evidex._cuda: loaded lazily by evidex.cuda, never at `import evidex`.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "ops.h"
#include "runtime.h"

namespace py = pybind11;

namespace {
using ptr = std::uintptr_t;
void* as_ptr(ptr p) { return reinterpret_cast<void*>(p); }

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
    // Op kernels: arguments are device pointers (tensor.data_ptr()), sizes, a dtype
    // code and the CUDA stream handle; launches are asynchronous on that stream.
    m.def("topk_rows", [](ptr s, ptr mask, ptr idx, long long rows, int n, int k, int dt, ptr st) {
        check(evidex_cuda_topk_rows(as_ptr(s), as_ptr(mask), as_ptr(idx), rows, n, k, dt,
                                    as_ptr(st)), "topk_rows");
    });
    m.def("st_topk_backward", [](ptr s, ptr idx, ptr g, ptr out, long long rows, int n, int k,
                                 double tau, int mode, bool per_slot, int dt, ptr st) {
        check(evidex_cuda_st_topk_backward(as_ptr(s), as_ptr(idx), as_ptr(g), as_ptr(out), rows,
                                           n, k, tau, mode, per_slot, dt, as_ptr(st)),
              "st_topk_backward");
    });
    m.def("box_iou_matrix", [](ptr a, ptr b, ptr out, int na, int nb, bool gen, int dt, ptr st) {
        check(evidex_cuda_box_iou_matrix(as_ptr(a), as_ptr(b), as_ptr(out), na, nb, gen, dt,
                                         as_ptr(st)), "box_iou_matrix");
    });
    m.def("box_iou_matrix_backward", [](ptr a, ptr b, ptr g, ptr ga, ptr gb, int na, int nb,
                                        bool gen, int dt, ptr st) {
        check(evidex_cuda_box_iou_matrix_backward(as_ptr(a), as_ptr(b), as_ptr(g), as_ptr(ga),
                                                  as_ptr(gb), na, nb, gen, dt, as_ptr(st)),
              "box_iou_matrix_backward");
    });
    m.def("box_iou_pairs", [](ptr a, ptr b, ptr out, int n, bool gen, double eps, int dt,
                              ptr st) {
        check(evidex_cuda_box_iou_pairs(as_ptr(a), as_ptr(b), as_ptr(out), n, gen, eps, dt,
                                        as_ptr(st)), "box_iou_pairs");
    });
    m.def("box_iou_pairs_backward", [](ptr a, ptr b, ptr g, ptr ga, ptr gb, int n, bool gen,
                                       double eps, int dt, ptr st) {
        check(evidex_cuda_box_iou_pairs_backward(as_ptr(a), as_ptr(b), as_ptr(g), as_ptr(ga),
                                                 as_ptr(gb), n, gen, eps, dt, as_ptr(st)),
              "box_iou_pairs_backward");
    });
    m.def("temporal_iou_matrix", [](ptr a, ptr b, ptr out, int na, int nb, int dt, ptr st) {
        check(evidex_cuda_temporal_iou_matrix(as_ptr(a), as_ptr(b), as_ptr(out), na, nb, dt,
                                              as_ptr(st)), "temporal_iou_matrix");
    });
    m.def("frame_scores", [](ptr f, ptr q, ptr out, int nt, int nq, int d, int dt, ptr st) {
        check(evidex_cuda_frame_scores(as_ptr(f), as_ptr(q), as_ptr(out), nt, nq, d, dt,
                                       as_ptr(st)), "frame_scores");
    });
    m.def("select_keyframes", [](ptr s, ptr out, ptr count, int n, int k, int gap, int dt, ptr st) {
        check(evidex_cuda_select_keyframes(as_ptr(s), as_ptr(out), as_ptr(count), n, k, gap, dt,
                                           as_ptr(st)), "select_keyframes");
    });
    m.def("self_test", [](int n) {
        int bad = -1;
        check(evidex_cuda_self_test(n, &bad), "self test");
        return bad;
    }, py::arg("n") = 1 << 16);
}
