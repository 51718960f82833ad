// Bindings of the CPU op kernels (`evidex._core.ops`). The torch layer
// (python/evidex/ops) calls these on CPU tensors' numpy views; shapes and dtypes
// are checked there, so these only guard what could corrupt memory.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "evidex/ops.h"

namespace py = pybind11;

namespace evidex {
namespace {

template <class T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

// Rows of `width` values: [n, width] exactly (a [2, 6] array is not 3 boxes).
template <class T>
std::size_t rows_of(const Arr<T>& a, std::size_t width, const char* what) {
    if (a.ndim() != 2 || static_cast<std::size_t>(a.shape(1)) != width)
        throw py::value_error(std::string(what) + " must be [N, " + std::to_string(width) +
                              "], got " + std::to_string(a.ndim()) + " dimensions");
    return static_cast<std::size_t>(a.shape(0));
}

void check_tau_mode(double tau, int mode) {
    if (!(tau > 0) || !std::isfinite(tau))
        throw py::value_error("tau must be positive and finite, got " + std::to_string(tau));
    if (mode != 0 && mode != 1)
        throw py::value_error("mode must be 0 (softmax) or 1 (successive), got " +
                              std::to_string(mode));
}

template <class T>
void require(const Arr<T>& a, std::size_t size, const char* what) {
    if (static_cast<std::size_t>(a.size()) != size)
        throw py::value_error(std::string(what) + " has " + std::to_string(a.size()) +
                              " elements, expected " + std::to_string(size));
}

template <class T>
void register_dtype(py::module_& m) {
    m.def("topk_rows", [](const Arr<T>& scores, std::size_t k, std::size_t num_threads) {
        if (scores.ndim() != 2) throw py::value_error("scores must be 2-D");
        const std::size_t rows = scores.shape(0), n = scores.shape(1);
        if (k < 1 || k > n) throw py::value_error("k must be in [1, n]");
        py::array_t<std::int64_t> idx({rows, k});
        py::array_t<T> mask({rows, n});
        auto* ip = idx.mutable_data();
        auto* mp = mask.mutable_data();
        {
            py::gil_scoped_release release;
            ops::topk_rows(scores.data(), rows, n, k, ip, mp, num_threads);
        }
        return py::make_tuple(mask, idx);
    });
    // Variants writing into caller-provided outputs (numpy views of tensors from
    // torch's caching allocator, so no fresh pages are faulted in per call).
    m.def("topk_rows_into", [](const Arr<T>& scores, std::size_t k, py::array_t<T> mask,
                               py::array_t<std::int64_t> idx, std::size_t num_threads) {
        if (scores.ndim() != 2) throw py::value_error("scores must be 2-D");
        const std::size_t rows = scores.shape(0), n = scores.shape(1);
        if (k < 1 || k > n) throw py::value_error("k must be in [1, n]");
        if (static_cast<std::size_t>(mask.size()) != rows * n ||
            static_cast<std::size_t>(idx.size()) != rows * k ||
            !(mask.flags() & py::array::c_style) || !(idx.flags() & py::array::c_style))
            throw py::value_error("outputs must be C-contiguous [rows, n] and [rows, k]");
        auto* ip = idx.mutable_data();
        auto* mp = mask.mutable_data();
        py::gil_scoped_release release;
        ops::topk_rows(scores.data(), rows, n, k, ip, mp, num_threads);
    });
    m.def("st_topk_backward_into", [](const Arr<T>& scores, const Arr<std::int64_t>& indices,
                                      const Arr<T>& grad, double tau, int mode, bool per_slot,
                                      py::array_t<T> out, std::size_t num_threads) {
        check_tau_mode(tau, mode);
        if (scores.ndim() != 2 || indices.ndim() != 2) throw py::value_error("bad ranks");
        const std::size_t rows = scores.shape(0), n = scores.shape(1), k = indices.shape(1);
        require(indices, rows * k, "indices");
        require(grad, per_slot ? rows * k * n : rows * n, "grad");
        if (static_cast<std::size_t>(out.size()) != rows * n || !(out.flags() & py::array::c_style))
            throw py::value_error("out must be C-contiguous [rows, n]");
        const std::int64_t* ip = indices.data();
        for (std::size_t i = 0; i < rows * k; ++i)
            if (ip[i] < 0 || static_cast<std::size_t>(ip[i]) >= n)
                throw py::value_error("indices out of range");
        auto* op = out.mutable_data();
        py::gil_scoped_release release;
        ops::st_topk_backward(scores.data(), ip, grad.data(), rows, n, k, tau, mode, per_slot,
                              op, num_threads);
    });
    m.def("st_topk_backward", [](const Arr<T>& scores, const Arr<std::int64_t>& indices,
                                 const Arr<T>& grad, double tau, int mode, bool per_slot,
                                 std::size_t num_threads) {
        check_tau_mode(tau, mode);
        if (scores.ndim() != 2 || indices.ndim() != 2) throw py::value_error("bad ranks");
        const std::size_t rows = scores.shape(0), n = scores.shape(1), k = indices.shape(1);
        require(indices, rows * k, "indices");
        require(grad, per_slot ? rows * k * n : rows * n, "grad");
        const std::int64_t* ip = indices.data();
        for (std::size_t i = 0; i < rows * k; ++i)
            if (ip[i] < 0 || static_cast<std::size_t>(ip[i]) >= n)
                throw py::value_error("indices out of range");
        py::array_t<T> out({rows, n});
        auto* op = out.mutable_data();
        {
            py::gil_scoped_release release;
            ops::st_topk_backward(scores.data(), ip, grad.data(), rows, n, k, tau, mode,
                                  per_slot, op, num_threads);
        }
        return out;
    });
    m.def("box_iou_matrix", [](const Arr<T>& a, const Arr<T>& b, bool generalized,
                               std::size_t num_threads) {
        const std::size_t na = rows_of(a, 4, "boxes1"), nb = rows_of(b, 4, "boxes2");
        py::array_t<T> out({na, nb});
        auto* op = out.mutable_data();
        {
            py::gil_scoped_release release;
            ops::box_iou_matrix(a.data(), na, b.data(), nb, generalized, op, num_threads);
        }
        return out;
    });
    m.def("box_iou_matrix_backward", [](const Arr<T>& a, const Arr<T>& b, const Arr<T>& g,
                                        bool generalized, std::size_t num_threads) {
        const std::size_t na = rows_of(a, 4, "boxes1"), nb = rows_of(b, 4, "boxes2");
        require(g, na * nb, "grad");
        py::array_t<T> ga({na, std::size_t{4}}), gb({nb, std::size_t{4}});
        auto *pa = ga.mutable_data(), *pb = gb.mutable_data();
        {
            py::gil_scoped_release release;
            ops::box_iou_matrix_backward(a.data(), na, b.data(), nb, g.data(), generalized, pa,
                                         pb, num_threads);
        }
        return py::make_tuple(ga, gb);
    });
    m.def("box_iou_pairs", [](const Arr<T>& a, const Arr<T>& b, bool generalized, double eps) {
        const std::size_t n = rows_of(a, 4, "boxes1");
        if (rows_of(b, 4, "boxes2") != n) throw py::value_error("boxes1 and boxes2 differ in N");
        py::array_t<T> out(n);
        ops::box_iou_pairs(a.data(), b.data(), n, generalized, static_cast<T>(eps),
                           out.mutable_data());
        return out;
    });
    m.def("box_iou_pairs_backward", [](const Arr<T>& a, const Arr<T>& b, const Arr<T>& g,
                                       bool generalized, double eps) {
        const std::size_t n = rows_of(a, 4, "boxes1");
        if (rows_of(b, 4, "boxes2") != n) throw py::value_error("boxes1 and boxes2 differ in N");
        require(g, n, "grad");
        py::array_t<T> ga({n, std::size_t{4}}), gb({n, std::size_t{4}});
        ops::box_iou_pairs_backward(a.data(), b.data(), g.data(), n, generalized,
                                    static_cast<T>(eps), ga.mutable_data(), gb.mutable_data());
        return py::make_tuple(ga, gb);
    });
    m.def("temporal_iou_matrix", [](const Arr<T>& a, const Arr<T>& b) {
        const std::size_t na = rows_of(a, 2, "intervals1"), nb = rows_of(b, 2, "intervals2");
        py::array_t<T> out({na, nb});
        ops::temporal_iou_matrix(a.data(), na, b.data(), nb, out.mutable_data());
        return out;
    });
    m.def("frame_scores", [](const Arr<T>& frames, const Arr<T>& queries,
                             std::size_t num_threads) {
        if (frames.ndim() != 2 || queries.ndim() != 2 || frames.shape(1) != queries.shape(1) ||
            frames.shape(1) < 1)
            throw py::value_error("frame_scores needs frames [T, D] and queries [Q, D], D >= 1");
        const std::size_t nt = frames.shape(0), nq = queries.shape(0), d = frames.shape(1);
        py::array_t<T> out({nq, nt});
        auto* op = out.mutable_data();
        {
            py::gil_scoped_release release;
            ops::frame_scores(frames.data(), nt, queries.data(), nq, d, op, num_threads);
        }
        return out;
    });
    m.def("select_keyframes", [](const Arr<T>& scores, std::size_t k, std::size_t min_gap) {
        if (scores.ndim() != 1) throw py::value_error("scores must be 1-D [T]");
        if (k < 1 || min_gap < 1) throw py::value_error("k and min_gap must be at least 1");
        const std::size_t n = scores.size();
        std::vector<std::int64_t> picked(std::min(k, n));
        const std::size_t kept = ops::select_keyframes(scores.data(), n, k, min_gap, picked.data());
        py::array_t<std::int64_t> out(kept);
        std::copy(picked.begin(), picked.begin() + static_cast<std::ptrdiff_t>(kept),
                  out.mutable_data());
        return out;
    });
}

}  // namespace

void register_ops(py::module_& parent) {
    py::module_ m = parent.def_submodule("ops", "CPU kernels of evidex.ops");
    // float64 first: pybind11 tries overloads in order, and forcecast would
    // otherwise turn float64 input into float32.
    register_dtype<double>(m);
    register_dtype<float>(m);
}

}  // namespace evidex
