// pybind11 bindings of the compiled core (`evidex._core`). Argument checking that
// is cheap and hot (shapes, finiteness) lives here so single-query calls stay
// fast; policy (auto ids, growth, torch inputs) lives in python/evidex/index.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cerrno>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "evidex/cpu_features.h"
#include "evidex/distance.h"
#include "evidex/errors.h"
#include "evidex/hnsw.h"
#include "evidex/kernels.h"

namespace py = pybind11;
using namespace evidex;

namespace evidex {
void register_ops(py::module_& parent);  // ops_bindings.cpp
}

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using LabelArray = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>;

// Squared norms above this could overflow float32 distances: |a - b|^2 <=
// 2|a|^2 + 2|b|^2 and |<a, b>| <= |a||b| stay finite below FLT_MAX / 4.
constexpr float kMaxSquaredNorm = 8.5e37f;

// Checks that `n` rows of `dim` floats are usable by an index of `space`: finite,
// and (l2, ip) of a norm whose distances fit in float32. Cosine rows are
// normalised (in double) before use, so any finite row will do.
void check_rows(const float* p, std::size_t n, std::size_t dim, Space space, const char* what) {
    for (std::size_t r = 0; r < n; ++r) {
        const float* row = p + r * dim;
        if (space != Space::Cosine) {
            float sq = 0.f;  // inf or NaN here if any entry is
            for (std::size_t i = 0; i < dim; ++i) sq += row[i] * row[i];
            if (sq <= kMaxSquaredNorm) continue;
        }
        for (std::size_t i = 0; i < dim; ++i)
            if (!std::isfinite(row[i]))
                throw py::value_error(std::string(what) + " contain NaN or infinity (row " +
                                      std::to_string(r) + ")");
        if (space == Space::Cosine) continue;
        double sq = 0.0;
        for (std::size_t i = 0; i < dim; ++i) sq += static_cast<double>(row[i]) * row[i];
        throw py::value_error(std::string(what) + " row " + std::to_string(r) +
                              " has squared norm " + std::to_string(sq) +
                              ", too large for float32 distances (at most 8.5e37): scale the "
                              "data down");
    }
}

// Checks a [n, dim] float32 matrix and returns n.
std::size_t check_matrix(const FloatArray& a, std::size_t dim, const char* what, Space space) {
    if (a.ndim() != 2)
        throw py::value_error(std::string(what) + " must be a 2-D array, got " +
                              std::to_string(a.ndim()) + " dimensions");
    if (static_cast<std::size_t>(a.shape(1)) != dim)
        throw py::value_error("Wrong dimensionality of the vectors: " + std::string(what) +
                              " have dimension " + std::to_string(a.shape(1)) +
                              ", the index has " + std::to_string(dim));
    const std::size_t n = static_cast<std::size_t>(a.shape(0));
    check_rows(a.data(), n, dim, space, what);
    return n;
}

// A Python callable filter: called with the GIL held, so searches using it run
// on the calling thread only (as in hnswlib).
class PyCallableFilter final : public SearchFilter {
public:
    explicit PyCallableFilter(py::function fn) : fn_(std::move(fn)) {}
    bool allowed(node_id, label_t label) const override { return fn_(label).cast<bool>(); }

private:
    py::function fn_;
};

py::dict stats_dict(const IndexStats& s) {
    py::dict d;
    d["count"] = s.count;
    d["deleted"] = s.deleted;
    d["capacity"] = s.capacity;
    d["max_level"] = s.max_level;
    d["level_counts"] = s.level_counts;
    d["memory_bytes"] = s.memory_bytes;
    d["last_search_distance_computations"] = s.last_search_distance_computations;
    d["last_search_queries"] = s.last_search_queries;
    return d;
}

// The fast path of HNSWIndex.search: the Python layer hands over float32
// C-contiguous queries ([dim] or [nq, dim]) and plain ints; everything else is
// checked here, where it costs nanoseconds instead of microseconds.
py::tuple query(const HNSW& index, const py::array_t<float, py::array::c_style>& queries,
                py::ssize_t k, py::ssize_t ef, const py::object& filter, py::ssize_t num_threads) {
    const std::size_t live = index.live_count();
    if (k < 1) throw py::value_error("k must be at least 1, got " + std::to_string(k));
    if (live == 0) throw py::value_error("the index is empty");
    if (static_cast<std::size_t>(k) > live)
        throw py::value_error("k=" + std::to_string(k) +
                              " is larger than the number of elements in the index (" +
                              std::to_string(live) + ")");
    if (ef == -1) ef = static_cast<py::ssize_t>(index.ef());
    if (ef < 1) throw py::value_error("ef must be at least 1, got " + std::to_string(ef));
    if (num_threads < -1)
        throw py::value_error("num_threads must be -1, 0 (all cores) or positive, got " +
                              std::to_string(num_threads));
    const bool one = queries.ndim() == 1;
    if (!one && queries.ndim() != 2)
        throw py::value_error("queries must be a 1-D or 2-D array, got " +
                              std::to_string(queries.ndim()) + " dimensions");
    const std::size_t dim = static_cast<std::size_t>(queries.shape(one ? 0 : 1));
    const std::size_t nq = one ? 1 : static_cast<std::size_t>(queries.shape(0));
    if (dim != index.dim())
        throw py::value_error("Wrong dimensionality of the vectors: queries have dimension " +
                              std::to_string(dim) + ", the index has " +
                              std::to_string(index.dim()));
    const float* q = queries.data();
    check_rows(q, nq, dim, index.space(), "queries");
    const std::size_t kk = static_cast<std::size_t>(k);
    std::vector<py::ssize_t> shape = one ? std::vector<py::ssize_t>{k}
                                         : std::vector<py::ssize_t>{static_cast<py::ssize_t>(nq), k};
    py::array_t<std::int64_t> ids(shape);
    py::array_t<float> distances(shape);
    // Labels are written as uint64; the padding label 2^64-1 reads as -1.
    auto* out_l = reinterpret_cast<label_t*>(ids.mutable_data());
    auto* out_d = distances.mutable_data();
    const std::size_t threads = static_cast<std::size_t>(std::max<py::ssize_t>(0, num_threads));
    const std::size_t e = static_cast<std::size_t>(ef);
    if (filter.is_none()) {
        py::gil_scoped_release release;
        index.search(q, nq, kk, e, nullptr, threads, out_l, out_d);
    } else if (py::isinstance<py::function>(filter)) {
        // The callable needs the GIL: one thread, which holds it while it searches,
        // but not while it waits for the index's lock (a writer may be queued there,
        // waiting for another search whose callable needs the GIL).
        PyCallableFilter f(filter.cast<py::function>());
        std::unique_ptr<HNSW::ReadSession> session;
        {
            py::gil_scoped_release release;
            session = index.read_session();
        }
        index.search_in(*session, q, nq, kk, e, &f, 1, out_l, out_d);
    } else {
        const LabelArray allow = filter.cast<LabelArray>();
        py::gil_scoped_release release;
        index.search_allowed(q, nq, kk, e, allow.data(), static_cast<std::size_t>(allow.size()),
                             threads, out_l, out_d);
    }
    return py::make_tuple(ids, distances);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "evidex compiled core: HNSW graph, SIMD distance kernels, brute-force k-NN";
    // Resolve the SIMD level now, so a bad EVIDEX_SIMD fails the import, loudly.
    active_kernels();

    auto corrupt = py::register_exception<CorruptIndexError>(m, "CorruptIndexError",
                                                             PyExc_ValueError);
    (void)corrupt;
    py::register_exception_translator([](std::exception_ptr p) {
        // (ReentrantCall is a std::logic_error: pybind11 raises RuntimeError.)
        try {
            if (p) std::rethrow_exception(p);
        } catch (const FileError& e) {
            py::object err = py::module_::import("builtins").attr("OSError")(
                e.error_number, e.what(), e.filename);
            PyErr_SetObject(PyExc_OSError, err.ptr());
        } catch (const LabelNotFound& e) {
            PyErr_SetString(PyExc_KeyError, e.what());
        }
    });

    m.def("simd_level", [] { return simd_level_name(active_kernels().level); },
          "SIMD level of the active distance kernels: 'scalar', 'avx2' or 'avx512'.");
    m.def("cpu_simd_level", [] { return simd_level_name(cpu_simd_level()); },
          "Best SIMD level this CPU supports.");
    m.def("cpu_features", [] { return cpu_features(); },
          "Instruction-set extensions of this CPU (GCC's -m names) that evidex can check.");
    m.def("known_cpu_features", [] { return known_cpu_features(); },
          "Every extension name a kernel library may declare.");
    m.def(
        "kernel_library_cpu_features",
        [](const std::string& path) {
            try {
                return kernel_library_cpu_features(path);
            } catch (const std::runtime_error& e) {
                throw py::value_error(e.what());
            }
        },
        py::arg("path"), "The CPU features a kernel library declares, read without loading it.");
    m.def("set_simd_level", [](const std::string& name) { set_simd_level(parse_simd_level(name)); },
          py::arg("level"), "Force the SIMD level of every index in this process.");

    m.def(
        "distance",
        [](const FloatArray& a, const FloatArray& b, const std::string& space,
           const std::string& level) {
            if (a.ndim() != 1 || b.ndim() != 1 || a.shape(0) != b.shape(0))
                throw py::value_error("distance() needs two 1-D arrays of equal length");
            const DistanceKernels& k =
                level.empty() ? active_kernels() : kernels_for(parse_simd_level(level));
            const std::size_t d = static_cast<std::size_t>(a.shape(0));
            return parse_space(space) == Space::L2 ? k.l2sq(a.data(), b.data(), d)
                                                   : 1.0f - k.dot(a.data(), b.data(), d);
        },
        py::arg("a"), py::arg("b"), py::arg("space") = "l2", py::arg("level") = "",
        "One distance with the kernel of a SIMD level (for tests and microbenchmarks); "
        "vectors are used as given (no normalisation for cosine).");

    m.def(
        "distances",
        [](const FloatArray& query, const FloatArray& data, const std::string& space,
           const std::string& level) {
            if (query.ndim() != 1 || data.ndim() != 2 || data.shape(1) != query.shape(0))
                throw py::value_error("distances() needs a [dim] query and [n, dim] data");
            const DistanceKernels& k =
                level.empty() ? active_kernels() : kernels_for(parse_simd_level(level));
            const bool l2 = parse_space(space) == Space::L2;
            const std::size_t n = static_cast<std::size_t>(data.shape(0));
            const std::size_t d = static_cast<std::size_t>(query.shape(0));
            py::array_t<float> out(n);
            float* o = out.mutable_data();
            const float* q = query.data();
            const float* x = data.data();
            {
                py::gil_scoped_release release;
                for (std::size_t i = 0; i < n; ++i)
                    o[i] = l2 ? k.l2sq(q, x + i * d, d) : 1.0f - k.dot(q, x + i * d, d);
            }
            return out;
        },
        py::arg("query"), py::arg("data"), py::arg("space") = "l2", py::arg("level") = "",
        "Distances of one query to every row with the kernel of a SIMD level (for "
        "microbenchmarks: time per distance computation).");

    m.def(
        "brute_force_knn",
        [](const FloatArray& data, const FloatArray& queries, std::size_t k,
           const std::string& space, const py::object& allow, std::size_t num_threads) {
            if (data.ndim() != 2) throw py::value_error("data must be a 2-D array");
            const std::size_t dim = static_cast<std::size_t>(data.shape(1));
            const std::size_t n = static_cast<std::size_t>(data.shape(0));
            const Space sp = parse_space(space);
            const std::size_t nq = check_matrix(queries, dim, "queries", sp);
            py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast> mask;
            const std::uint8_t* mask_ptr = nullptr;
            if (!allow.is_none()) {
                mask = allow.cast<decltype(mask)>();
                if (static_cast<std::size_t>(mask.size()) != n)
                    throw py::value_error("allow mask must have one entry per data row");
                mask_ptr = mask.data();
            }
            py::array_t<std::int64_t> rows({nq, k});
            py::array_t<float> dist({nq, k});
            auto* r = rows.mutable_data();
            auto* d = dist.mutable_data();
            {
                py::gil_scoped_release release;
                brute_force_knn(data.data(), n, dim, sp, queries.data(), nq, k, mask_ptr,
                                num_threads, r, d);
            }
            return py::make_tuple(rows, dist);
        },
        py::arg("data"), py::arg("queries"), py::arg("k"), py::arg("space") = "l2",
        py::arg("allow") = py::none(), py::arg("num_threads") = 0,
        "Exact k-NN of queries among data rows; returns (row indices, distances). For "
        "'cosine' the data rows must already be L2-normalised.");

    py::enum_<Quantization>(m, "Quantization")
        .value("none", Quantization::None)
        .value("sq8", Quantization::SQ8);
    py::enum_<Space>(m, "Space")
        .value("l2", Space::L2)
        .value("ip", Space::IP)
        .value("cosine", Space::Cosine);
    // Kernel sets (kernel_abi.h): opaque, with where each slot comes from.
    py::class_<KernelSet, std::shared_ptr<KernelSet>>(m, "KernelSet")
        .def_readonly("search_source", &KernelSet::search_source)
        .def_readonly("select_source", &KernelSet::select_source)
        .def_readonly("refine_source", &KernelSet::refine_source);
    m.def("builtin_kernel_set", [] { return std::make_shared<KernelSet>(builtin_kernels()); });
    m.def(
        "load_kernel_library",
        [](const std::string& path, const KernelSet& base) {
            try {
                return load_kernel_library(path, base);
            } catch (const std::runtime_error& e) {
                throw py::value_error(e.what());
            }
        },
        py::arg("path"), py::arg("base"));
    m.attr("KERNEL_ABI_VERSION") = EVIDEX_KERNEL_ABI_VERSION;

    py::class_<HNSW>(m, "HNSW")
        .def(py::init<std::size_t, Space, std::size_t, std::size_t, std::size_t, std::uint64_t,
                      Quantization>(),
             py::arg("dim"), py::arg("space"), py::arg("M"), py::arg("ef_construction"),
             py::arg("max_elements"), py::arg("seed"), py::arg("quantization") = Quantization::None)
        .def(
            "train",
            [](HNSW& self, const FloatArray& data) {
                const std::size_t n =
                    check_matrix(data, self.dim(), "training vectors", self.space());
                py::gil_scoped_release release;
                self.train(data.data(), n);
            },
            py::arg("data"))
        .def_property_readonly("trained", &HNSW::trained)
        .def_property_readonly("quantization", [](const HNSW& self) {
            return self.quantization() == Quantization::SQ8 ? std::string("sq8") : std::string();
        })
        .def(
            "add",
            [](HNSW& self, const FloatArray& data, const LabelArray& labels,
               std::size_t num_threads, bool replace_deleted, bool forbid_update_deleted,
               bool grow) {
                const std::size_t n = check_matrix(data, self.dim(), "vectors", self.space());
                if (labels.ndim() != 1 || static_cast<std::size_t>(labels.shape(0)) != n)
                    throw py::value_error("got " + std::to_string(labels.size()) + " ids for " +
                                          std::to_string(n) + " vectors");
                py::gil_scoped_release release;
                self.add(data.data(), n, labels.data(), num_threads, replace_deleted,
                         forbid_update_deleted, grow);
            },
            py::arg("data"), py::arg("labels"), py::arg("num_threads") = 0,
            py::arg("replace_deleted") = false, py::arg("forbid_update_deleted") = false,
            py::arg("grow") = false)
        .def(
            "add_auto",
            [](HNSW& self, const FloatArray& data, std::size_t num_threads, bool replace_deleted,
               bool grow) {
                const std::size_t n = check_matrix(data, self.dim(), "vectors", self.space());
                py::gil_scoped_release release;
                return self.add_auto(data.data(), n, num_threads, replace_deleted, grow);
            },
            py::arg("data"), py::arg("num_threads") = 0, py::arg("replace_deleted") = false,
            py::arg("grow") = true,
            "add() with the next free automatic ids, reserved atomically; returns the first.")
        .def("query", &query, py::arg("queries"), py::arg("k"), py::arg("ef"),
             py::arg("filter"), py::arg("num_threads"))
        .def(
            "mark_deleted",
            [](HNSW& self, const LabelArray& labels) {
                py::gil_scoped_release release;
                self.mark_deleted(labels.data(), static_cast<std::size_t>(labels.size()));
            },
            py::arg("labels"), "Delete ids, all or none (KeyError / ValueError otherwise).")
        .def(
            "unmark_deleted",
            [](HNSW& self, const LabelArray& labels) {
                py::gil_scoped_release release;
                self.unmark_deleted(labels.data(), static_cast<std::size_t>(labels.size()));
            },
            py::arg("labels"), "Undelete ids, all or none (KeyError / ValueError otherwise).")
        .def("is_deleted", &HNSW::is_deleted, py::call_guard<py::gil_scoped_release>())
        .def("contains", &HNSW::contains, py::call_guard<py::gil_scoped_release>())
        .def("resize", &HNSW::resize, py::call_guard<py::gil_scoped_release>())
        .def("get_vectors",
             [](const HNSW& self, const LabelArray& labels) {
                 const std::size_t n = static_cast<std::size_t>(labels.size());
                 py::array_t<float> out({n, self.dim()});
                 float* o = out.mutable_data();
                 {
                     py::gil_scoped_release release;
                     self.get_vectors(labels.data(), n, o);
                 }
                 return out;
             })
        .def("labels",
             [](const HNSW& self, bool include_deleted) {
                 std::vector<label_t> v;
                 {
                     py::gil_scoped_release release;
                     v = self.labels(include_deleted);
                 }
                 py::array_t<std::uint64_t> out(v.size());
                 std::copy(v.begin(), v.end(), out.mutable_data());
                 return out;
             },
             py::arg("include_deleted") = false)
        .def("stats",
             [](const HNSW& self) {
                 IndexStats s;
                 {
                     py::gil_scoped_release release;
                     s = self.stats();
                 }
                 return stats_dict(s);
             })
        .def("kernel_set",
             [](const HNSW& self) {
                 return std::const_pointer_cast<KernelSet>(self.kernel_set());
             })
        .def("set_kernel_set",
             [](HNSW& self, std::shared_ptr<KernelSet> set) { self.set_kernels(std::move(set)); })
        .def_property_readonly("dim", &HNSW::dim)
        .def_property_readonly("space", [](const HNSW& self) { return space_name(self.space()); })
        .def_property_readonly("M", &HNSW::M)
        .def_property_readonly("ef_construction", &HNSW::ef_construction)
        .def_property_readonly("capacity", &HNSW::capacity)
        .def_property_readonly("element_count", &HNSW::element_count)
        .def_property_readonly("deleted_count", &HNSW::deleted_count)
        .def_property_readonly("live_count", &HNSW::live_count)
        .def_property_readonly("next_label", &HNSW::next_label)
        .def_property_readonly("seed", &HNSW::seed)
        .def_property("ef", &HNSW::ef, &HNSW::set_ef)
        .def("set_prefetch", &HNSW::set_prefetch, py::arg("ahead"), py::arg("lines"))
        .def_property_readonly("is_mapped", &HNSW::is_mapped)
        .def("save", &HNSW::save, py::call_guard<py::gil_scoped_release>())
        .def("serialize",
             [](const HNSW& self) {
                 std::string s;
                 {
                     py::gil_scoped_release release;
                     s = self.serialize();
                 }
                 return py::bytes(s);
             })
        .def_static("load", &HNSW::load, py::arg("path"), py::arg("mmap") = false,
                    py::arg("max_elements") = 0, py::call_guard<py::gil_scoped_release>())
        .def_static(
            "deserialize",
            [](const py::bytes& data, std::size_t max_elements) {
                const std::string_view view = data;
                py::gil_scoped_release release;
                return HNSW::deserialize(view.data(), view.size(), max_elements);
            },
            py::arg("data"), py::arg("max_elements") = 0);

    m.def("parse_space", &parse_space);
    register_ops(m);
}
