// pybind11 bindings of the compiled core (`evidex._core`). Argument checking that
// is cheap and hot (shapes, finiteness) lives here so single-query calls stay
// fast; policy (auto ids, growth, torch inputs) lives in python/evidex/index.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <numeric>
#include <optional>
#include <random>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "evidex/coded_scan.h"
#include "evidex/cpu_features.h"
#include "evidex/distance.h"
#include "evidex/errors.h"
#include "evidex/hnsw.h"
#include "evidex/ivf.h"
#include "evidex/kernels.h"
#include "evidex/memory.h"
#include "evidex/rabitq.h"
#include "evidex/select.h"

namespace py = pybind11;
using namespace evidex;

namespace evidex {
void register_ops(py::module_& parent);  // ops_bindings.cpp
}

namespace {

using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using LabelArray = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>;

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
    d["last_search_hops"] = s.last_search_hops;
    d["last_search_queries"] = s.last_search_queries;
    d["node_bytes"] = s.node_bytes;
    d["code_bytes"] = s.code_bytes;
    d["pq4_block_bytes"] = s.pq4_block_bytes;
    d["edge_group_codes"] = s.edge_group_codes;
    d["scan_code_bytes"] = s.scan_code_bytes;
    return d;
}

// Checked arguments of a k-NN query.
struct QueryArgs {
    const float* q = nullptr;
    std::size_t nq = 0, k = 0, ef = 0, threads = 0;
    bool one = false;
};

// The queries ([dim] or [nq, dim], float32 C-contiguous) and thread count of a
// query, checked.
QueryArgs check_query_rows(const py::array_t<float, py::array::c_style>& queries,
                           std::size_t index_dim, Space space, py::ssize_t num_threads) {
    if (num_threads < -1)
        throw py::value_error("num_threads must be -1, 0 (all cores) or positive, got " +
                              std::to_string(num_threads));
    QueryArgs a;
    a.one = queries.ndim() == 1;
    if (!a.one && queries.ndim() != 2)
        throw py::value_error("queries must be a 1-D or 2-D array, got " +
                              std::to_string(queries.ndim()) + " dimensions");
    const std::size_t dim = static_cast<std::size_t>(queries.shape(a.one ? 0 : 1));
    a.nq = a.one ? 1 : static_cast<std::size_t>(queries.shape(0));
    if (dim != index_dim)
        throw py::value_error("Wrong dimensionality of the vectors: queries have dimension " +
                              std::to_string(dim) + ", the index has " +
                              std::to_string(index_dim));
    a.q = queries.data();
    check_rows(a.q, a.nq, dim, space, "queries");
    a.threads = static_cast<std::size_t>(std::max<py::ssize_t>(0, num_threads));
    return a;
}

// The fast path of HNSWIndex.search: the Python layer hands over float32
// C-contiguous queries ([dim] or [nq, dim]) and plain ints; everything else is
// checked here, where it costs nanoseconds instead of microseconds.
QueryArgs check_query(const HNSW& index, const py::array_t<float, py::array::c_style>& queries,
                      py::ssize_t k, py::ssize_t ef, py::ssize_t num_threads, bool need_k) {
    const std::size_t live = index.live_count();
    if (need_k) {
        if (k < 1) throw py::value_error("k must be at least 1, got " + std::to_string(k));
        if (live == 0) throw py::value_error("the index is empty");
        if (static_cast<std::size_t>(k) > live)
            throw py::value_error("k=" + std::to_string(k) +
                                  " is larger than the number of elements in the index (" +
                                  std::to_string(live) + ")");
    }
    if (ef == -1) ef = static_cast<py::ssize_t>(index.ef());
    if (ef < 1) throw py::value_error("ef must be at least 1, got " + std::to_string(ef));
    QueryArgs a = check_query_rows(queries, index.dim(), index.space(), num_threads);
    a.k = static_cast<std::size_t>(std::max<py::ssize_t>(k, 0));
    a.ef = static_cast<std::size_t>(ef);
    return a;
}

// The [k] or [nq, k] result arrays of a query. Labels are written as uint64;
// the padding label 2^64-1 reads as -1.
struct KnnOut {
    explicit KnnOut(const QueryArgs& a)
        : ids(shape(a)), distances(shape(a)) {}
    static std::vector<py::ssize_t> shape(const QueryArgs& a) {
        const auto k = static_cast<py::ssize_t>(a.k);
        return a.one ? std::vector<py::ssize_t>{k}
                     : std::vector<py::ssize_t>{static_cast<py::ssize_t>(a.nq), k};
    }
    label_t* labels() { return reinterpret_cast<label_t*>(ids.mutable_data()); }
    py::array_t<std::int64_t> ids;
    py::array_t<float> distances;
};

py::tuple query(const HNSW& index, const py::array_t<float, py::array::c_style>& queries,
                py::ssize_t k, py::ssize_t ef, const py::object& filter, py::ssize_t num_threads) {
    const QueryArgs a = check_query(index, queries, k, ef, num_threads, true);
    KnnOut out(a);
    label_t* out_l = out.labels();
    float* out_d = out.distances.mutable_data();
    if (filter.is_none()) {
        py::gil_scoped_release release;
        index.search(a.q, a.nq, a.k, a.ef, nullptr, a.threads, out_l, out_d);
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
        index.search_in(*session, a.q, a.nq, a.k, a.ef, &f, 1, out_l, out_d);
    } else {
        const LabelArray allow = filter.cast<LabelArray>();
        py::gil_scoped_release release;
        index.search_allowed(a.q, a.nq, a.k, a.ef, allow.data(),
                             static_cast<std::size_t>(allow.size()), a.threads, out_l, out_d);
    }
    return py::make_tuple(out.ids, out.distances);
}

// A filter program from the Python layer's postfix list of tuples:
//   ("in", field, ints or None, floats or None), ("irange", field, lo, hi),
//   ("frange", field, lo, hi, lo_open, hi_open), ("and",), ("or",), ("not",)
FilterProgram to_program(const py::list& steps) {
    FilterProgram p;
    for (const py::handle h : steps) {
        const py::tuple t = h.cast<py::tuple>();
        const std::string op = t[0].cast<std::string>();
        FilterStep s;
        if (op == "in") {
            s.op = FilterStep::Op::In;
            s.field = t[1].cast<std::string>();
            if (!t[2].is_none()) s.ints = t[2].cast<std::vector<std::int64_t>>();
            if (!t[3].is_none()) s.floats = t[3].cast<std::vector<double>>();
        } else if (op == "irange") {
            s.op = FilterStep::Op::Range;
            s.field = t[1].cast<std::string>();
            s.ilo = t[2].cast<std::int64_t>();
            s.ihi = t[3].cast<std::int64_t>();
        } else if (op == "frange") {
            s.op = FilterStep::Op::Range;
            s.field = t[1].cast<std::string>();
            s.lo = t[2].cast<double>();
            s.hi = t[3].cast<double>();
            s.lo_open = t[4].cast<bool>();
            s.hi_open = t[5].cast<bool>();
        } else if (op == "and") {
            s.op = FilterStep::Op::And;
        } else if (op == "or") {
            s.op = FilterStep::Op::Or;
        } else if (op == "not") {
            s.op = FilterStep::Op::Not;
        } else {
            throw py::value_error("unknown filter step '" + op + "'");
        }
        p.push_back(std::move(s));
    }
    return p;
}

// An allow-spec over the Python layer's (labels or None, program or None).
struct PyAllow {
    PyAllow(const py::object& labels, const py::object& program) {
        if (!labels.is_none()) {
            array = labels.cast<LabelArray>();
            spec.labels = array.data();
            spec.n_labels = static_cast<std::size_t>(array.size());
            spec.has_labels = true;
        }
        if (!program.is_none()) {
            steps = to_program(program.cast<py::list>());
            spec.program = &steps;
        }
    }
    LabelArray array;
    FilterProgram steps;
    AllowSpec spec;
};

FilterStrategy parse_strategy(const std::string& name) {
    if (name == "auto") return FilterStrategy::Auto;
    if (name == "scan") return FilterStrategy::Scan;
    if (name == "filtered") return FilterStrategy::Filtered;
    if (name == "two_hop") return FilterStrategy::TwoHop;
    if (name == "coded_scan") return FilterStrategy::CodedScan;
    throw py::value_error("unknown filter strategy '" + name +
                          "' (expected 'auto', 'scan', 'filtered', 'two_hop' or 'coded_scan')");
}

py::tuple query_set(const HNSW& index, const py::array_t<float, py::array::c_style>& queries,
                    py::ssize_t k, py::ssize_t ef, const py::object& labels,
                    const py::object& program, const std::string& strategy,
                    py::ssize_t num_threads) {
    const QueryArgs a = check_query(index, queries, k, ef, num_threads, true);
    const FilterStrategy s = parse_strategy(strategy);
    PyAllow allow(labels, program);
    KnnOut out(a);
    label_t* out_l = out.labels();
    float* out_d = out.distances.mutable_data();
    {
        py::gil_scoped_release release;
        index.search_set(a.q, a.nq, a.k, a.ef, allow.spec, s, a.threads, out_l, out_d);
    }
    return py::make_tuple(out.ids, out.distances);
}

py::tuple range_query(const HNSW& index, const py::array_t<float, py::array::c_style>& queries,
                      double radius, py::ssize_t max_results, py::ssize_t ef,
                      const py::object& labels, const py::object& program,
                      const std::string& strategy, py::ssize_t num_threads) {
    if (!(radius >= 0.0) || !std::isfinite(radius))
        throw py::value_error("radius must be a finite non-negative number, got " +
                              std::to_string(radius));
    if (max_results < 1)
        throw py::value_error("max_results must be at least 1, got " +
                              std::to_string(max_results));
    const QueryArgs a = check_query(index, queries, 0, ef, num_threads, false);
    const FilterStrategy s = parse_strategy(strategy);
    const bool filtered = !labels.is_none() || !program.is_none();
    PyAllow allow(labels, program);
    RangeResult r;
    {
        py::gil_scoped_release release;
        r = index.search_range(a.q, a.nq, static_cast<float>(radius),
                               static_cast<std::size_t>(max_results), a.ef,
                               filtered ? &allow.spec : nullptr, s, a.threads);
    }
    py::array_t<std::int64_t> lims(static_cast<py::ssize_t>(r.lims.size()));
    std::copy(r.lims.begin(), r.lims.end(), lims.mutable_data());
    py::array_t<std::int64_t> ids(static_cast<py::ssize_t>(r.labels.size()));
    std::memcpy(ids.mutable_data(), r.labels.data(), r.labels.size() * sizeof(label_t));
    py::array_t<float> distances(static_cast<py::ssize_t>(r.distances.size()));
    std::copy(r.distances.begin(), r.distances.end(), distances.mutable_data());
    return py::make_tuple(lims, ids, distances);
}

// Attribute columns from the Python layer's list of (name, "int"/"float", array).
std::unique_ptr<std::vector<AttrColumn>> to_columns(const py::object& attributes) {
    if (attributes.is_none()) return nullptr;
    auto cols = std::make_unique<std::vector<AttrColumn>>();
    for (const py::handle h : attributes.cast<py::list>()) {
        const py::tuple t = h.cast<py::tuple>();
        AttrColumn c;
        c.name = t[0].cast<std::string>();
        const std::string kind = t[1].cast<std::string>();
        if (kind == "int") {
            c.type = AttrType::Int;
            const auto a = t[2].cast<py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>>();
            c.ints.assign(a.data(), a.data() + a.size());
        } else {
            c.type = AttrType::Float;
            const auto a = t[2].cast<py::array_t<double, py::array::c_style | py::array::forcecast>>();
            c.floats.assign(a.data(), a.data() + a.size());
        }
        cols->push_back(std::move(c));
    }
    return cols;
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
        "memory_latency",
        [](std::size_t megabytes, std::size_t steps) {
            // A pointer chase over one random cycle (Sattolo's shuffle) through
            // storage allocated as the index's graph is: each load depends on
            // the last, so the time per step is the latency of a random access.
            if (megabytes < 1 || megabytes > 65536 || steps < 1 || steps > (1u << 30))
                throw py::value_error("memory_latency() needs 1-65536 MiB and 1-2^30 steps");
            const std::size_t n = (megabytes << 20) / 64;  // one pointer per cache line
            struct Line {
                std::size_t next;
                char pad[56];
            };
            Line* lines = static_cast<Line*>(alloc_random_access(n * sizeof(Line)));
            if (lines == nullptr) throw std::bad_alloc();
            std::unique_ptr<Line, decltype(&std::free)> owner(lines, &std::free);
            std::vector<std::size_t> order(n);
            std::iota(order.begin(), order.end(), std::size_t{0});
            std::mt19937_64 rng(42);
            for (std::size_t i = n - 1; i > 0; --i)
                std::swap(order[i], order[std::uniform_int_distribution<std::size_t>(0, i - 1)(rng)]);
            for (std::size_t i = 0; i < n; ++i) lines[order[i]].next = order[(i + 1) % n];
            py::gil_scoped_release release;
            std::size_t at = 0;
            for (std::size_t i = 0; i < std::min(steps, n); ++i) at = lines[at].next;  // warm up
            const auto t0 = std::chrono::steady_clock::now();
            for (std::size_t i = 0; i < steps; ++i) at = lines[at].next;
            const double ns =
                std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0)
                    .count();
            volatile std::size_t sink = at;
            (void)sink;
            return ns / static_cast<double>(steps);
        },
        py::arg("megabytes") = 512, py::arg("steps") = 2000000,
        "Nanoseconds of one random, dependent memory access (a pointer chase over "
        "`megabytes` of huge-page storage, as the graph uses): the latency bound of a hop.");

    // The fast-scan kernels of a SIMD level on one group (for tests and bench.limits).
    auto fastscan = [](FastScanKernel DistanceKernels::*kernel, std::size_t codes) {
        return [kernel, codes](
                   const py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>& block,
                   const py::array_t<std::uint8_t, py::array::c_style | py::array::forcecast>& lut,
                   const std::string& level) {
            const std::size_t bytes_per_sub = codes / 2;
            if (block.ndim() != 1 || lut.ndim() != 1 || lut.shape(0) % 64 != 0 ||
                lut.shape(0) == 0 ||
                static_cast<std::size_t>(block.shape(0)) !=
                    static_cast<std::size_t>(lut.shape(0)) / 16 * bytes_per_sub)
                throw py::value_error(
                    "fastscan" + std::to_string(codes) + "() needs a table of 16 bytes per " +
                    "subspace (a multiple of 4 subspaces: a multiple of 64 bytes) and a block of " +
                    std::to_string(bytes_per_sub) + " bytes per subspace");
            const DistanceKernels& k =
                level.empty() ? active_kernels() : kernels_for(parse_simd_level(level));
            py::array_t<std::uint16_t> out(static_cast<py::ssize_t>(codes));
            (k.*kernel)(block.data(), lut.data(), static_cast<std::size_t>(lut.shape(0)) / 16,
                        out.mutable_data());
            return out;
        };
    };
    m.def("fastscan32", fastscan(&DistanceKernels::fastscan32, PQ4::kGroup), py::arg("block"),
          py::arg("lut"), py::arg("level") = "",
          "The PQ4 fast-scan kernel of a SIMD level on one group of 32 codes (for tests).");
    m.def("fastscan16", fastscan(&DistanceKernels::fastscan16, PQ4::kHalfGroup),
          py::arg("block"), py::arg("lut"), py::arg("level") = "",
          "The PQ4 fast-scan kernel of a SIMD level on one half group of 16 codes (for tests).");

    m.def(
        "rabitq_edge",
        [](const FloatArray& x, const FloatArray& y, std::uint64_t seed, const std::string& space) {
            if (x.ndim() != 1 || y.ndim() != 1 || x.shape(0) != y.shape(0))
                throw py::value_error("rabitq_edge() needs two [dim] vectors");
            const std::size_t dim = static_cast<std::size_t>(x.shape(0));
            const EdgeCoder coder(dim, seed, parse_space(space) == Space::L2);
            std::vector<float> xr(coder.padded()), yr(coder.padded());
            coder.rotate(x.data(), xr.data());
            coder.rotate(y.data(), yr.data());
            py::array_t<std::uint8_t> code(static_cast<py::ssize_t>(coder.layout().code_bytes()));
            const EdgeFactors f = coder.encode(xr.data(), y.data(), code.mutable_data());
            return py::make_tuple(code, f.scale, f.offset,
                                  py::array_t<float>(static_cast<py::ssize_t>(xr.size()), xr.data()),
                                  py::array_t<float>(static_cast<py::ssize_t>(yr.size()), yr.data()));
        },
        py::arg("x"), py::arg("y"), py::arg("seed") = 0, py::arg("space") = "l2",
        "The RaBitQ code of edge x -> y: (code bytes, scale, offset, x rotated, y rotated) "
        "(for tests).");
    m.def(
        "keep_smallest",
        [](const FloatArray& values, std::size_t keep, std::size_t slack) {
            if (values.ndim() != 1) throw py::value_error("keep_smallest() needs a [n] array");
            const std::size_t n = static_cast<std::size_t>(values.shape(0));
            std::vector<float> dist(values.data(), values.data() + n);
            std::vector<std::uint32_t> ids(n);
            std::iota(ids.begin(), ids.end(), 0u);
            const std::size_t kept = keep_smallest(dist.data(), ids.data(), n, keep, slack);
            return py::array_t<std::uint32_t>(static_cast<py::ssize_t>(kept), ids.data());
        },
        py::arg("values"), py::arg("keep"), py::arg("slack") = 0,
        "Positions of the values the shortlists' selection keeps, in input order (for tests).");

    m.def(
        "shortlist",
        [](const py::array_t<std::uint16_t, py::array::c_style | py::array::forcecast>& sums,
           const FloatArray& base, float scale, std::size_t depth, std::size_t count,
           const std::optional<FloatArray>& extra) {
            if (sums.ndim() != 2 || sums.shape(1) != static_cast<py::ssize_t>(PQ4::kGroup) ||
                base.ndim() != 1 || base.shape(0) != sums.shape(0))
                throw py::value_error("shortlist() needs [g, 32] sums and [g] bases");
            const std::size_t groups = static_cast<std::size_t>(sums.shape(0));
            if (count > groups * PQ4::kGroup) throw py::value_error("count past the groups");
            if (extra && (extra->ndim() != 2 || extra->shape(0) != sums.shape(0) ||
                          extra->shape(1) != sums.shape(1)))
                throw py::value_error("shortlist() needs [g, 32] extra terms");
            if (!(scale > 0.f)) throw py::value_error("scale must be positive");
            Shortlist list(depth);
            for (std::size_t g = 0; g * PQ4::kGroup < count; ++g) {
                const std::size_t first = g * PQ4::kGroup;
                list.offer(sums.data() + first, extra ? extra->data() + first : nullptr,
                           base.data()[g], scale, std::min(PQ4::kGroup, count - first),
                           [&](unsigned j) { return static_cast<std::uint32_t>(first + j); },
                           [](std::uint32_t) { return true; });
            }
            const std::size_t kept = list.finish();
            return py::array_t<std::uint32_t>(static_cast<py::ssize_t>(kept), list.rows());
        },
        py::arg("sums"), py::arg("base"), py::arg("scale"), py::arg("depth"), py::arg("count"),
        py::arg("extra") = py::none(),
        "Rows (g * 32 + j) a fast scan's shortlist keeps from groups of kernel sums, estimate "
        "base[g] + scale * sums[g, j] (+ extra[g, j]) (for tests).");

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
        .value("sq8", Quantization::SQ8)
        .value("pq4", Quantization::PQ4)
        .value("rabitq", Quantization::RaBitQ);
    py::enum_<Space>(m, "Space")
        .value("l2", Space::L2)
        .value("ip", Space::IP)
        .value("cosine", Space::Cosine);
    // Kernel sets (kernel_abi.h): opaque, with where each slot comes from.
    py::class_<KernelSet, std::shared_ptr<KernelSet>>(m, "KernelSet")
        .def_readonly("search_source", &KernelSet::search_source)
        .def_readonly("select_source", &KernelSet::select_source)
        .def_readonly("search_filtered_source", &KernelSet::search_filtered_source)
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

    py::class_<IVFFastScan>(m, "IVF")
        .def(py::init<std::size_t, Space, std::size_t, std::size_t, std::uint64_t, double>(),
             py::arg("dim"), py::arg("space"), py::arg("nlist"), py::arg("pq_dims"), py::arg("seed"),
             py::arg("anisotropic_threshold"))
        .def(
            "train",
            [](IVFFastScan& self, const FloatArray& data, std::size_t num_threads) {
                const std::size_t n = check_matrix(data, self.dim(), "training vectors", self.space());
                py::gil_scoped_release release;
                self.train(data.data(), n, num_threads);
            },
            py::arg("data"), py::arg("num_threads") = 0)
        .def(
            "add",
            [](IVFFastScan& self, const FloatArray& data, const LabelArray& labels,
               std::size_t num_threads) {
                const std::size_t n = check_matrix(data, self.dim(), "vectors", self.space());
                if (labels.ndim() != 1 || static_cast<std::size_t>(labels.shape(0)) != n)
                    throw py::value_error("need one id per vector");
                py::gil_scoped_release release;
                self.add(data.data(), n, labels.data(), num_threads);
            },
            py::arg("data"), py::arg("labels"), py::arg("num_threads") = 0)
        .def(
            "add_auto",
            [](IVFFastScan& self, const FloatArray& data, std::size_t num_threads) {
                const std::size_t n = check_matrix(data, self.dim(), "vectors", self.space());
                py::gil_scoped_release release;
                return self.add_auto(data.data(), n, num_threads);
            },
            py::arg("data"), py::arg("num_threads") = 0)
        .def_property_readonly("next_id", &IVFFastScan::next_id)
        .def(
            // The fast path of IVFIndex.search: [dim] or [nq, dim] float32
            // C-contiguous queries and plain ints, checked here.
            "query",
            [](const IVFFastScan& self, const py::array_t<float, py::array::c_style>& queries,
               py::ssize_t k, py::ssize_t nprobe, py::ssize_t reorder, py::ssize_t num_threads,
               const std::optional<LabelArray>& allowed) {
                if (k < 1) throw py::value_error("k must be at least 1, got " + std::to_string(k));
                if (static_cast<std::size_t>(k) > self.size())
                    throw py::value_error("k (" + std::to_string(k) +
                                          ") is larger than the number of vectors (" +
                                          std::to_string(self.size()) + ")");
                for (auto [v, name] : {std::pair{nprobe, "nprobe"}, std::pair{reorder, "reorder"}})
                    if (v < 1)
                        throw py::value_error(std::string(name) + " must be at least 1, got " +
                                              std::to_string(v));
                QueryArgs a = check_query_rows(queries, self.dim(), self.space(), num_threads);
                a.k = static_cast<std::size_t>(k);
                KnnOut out(a);
                label_t* l = out.labels();
                float* d = out.distances.mutable_data();
                {
                    py::gil_scoped_release release;
                    self.search(a.q, a.nq, a.k, static_cast<std::size_t>(nprobe),
                                static_cast<std::size_t>(reorder), a.threads, l, d,
                                allowed ? allowed->data() : nullptr,
                                allowed ? static_cast<std::size_t>(allowed->size()) : 0);
                }
                return py::make_tuple(out.ids, out.distances);
            },
            py::arg("queries"), py::arg("k"), py::arg("nprobe"), py::arg("reorder"),
            py::arg("num_threads"), py::arg("allowed") = py::none())
        .def(
            "remove",
            [](IVFFastScan& self, const LabelArray& labels) {
                py::gil_scoped_release release;
                self.remove(labels.data(), static_cast<std::size_t>(labels.size()));
            },
            py::arg("labels"))
        .def("labels",
             [](const IVFFastScan& self) {
                 std::vector<label_t> l;
                 {
                     py::gil_scoped_release release;
                     l = self.live_labels();
                 }
                 return py::array_t<label_t>(static_cast<py::ssize_t>(l.size()), l.data());
             })
        .def(
            "get_vectors",
            [](const IVFFastScan& self, const LabelArray& labels) {
                const auto n = static_cast<py::ssize_t>(labels.size());
                py::array_t<float> out({n, static_cast<py::ssize_t>(self.dim())});
                float* o = out.mutable_data();
                {
                    py::gil_scoped_release release;
                    self.get_vectors(labels.data(), static_cast<std::size_t>(n), o);
                }
                return out;
            },
            py::arg("labels"))
        .def_property_readonly("deleted_count", &IVFFastScan::deleted_count)
        .def_property_readonly("size", &IVFFastScan::size)
        .def_property_readonly("dim", &IVFFastScan::dim)
        .def_property_readonly("space", [](const IVFFastScan& self) { return space_name(self.space()); })
        .def_property_readonly("nlist", &IVFFastScan::nlist)
        .def_property_readonly("pq_dims", &IVFFastScan::pq_dims)
        .def_property_readonly("trained", &IVFFastScan::trained)
        .def_property_readonly("anisotropic_threshold", &IVFFastScan::anisotropic_threshold)
        .def_property("default_nprobe", &IVFFastScan::default_nprobe,
                      &IVFFastScan::set_default_nprobe)
        .def_property("default_reorder", &IVFFastScan::default_reorder,
                      &IVFFastScan::set_default_reorder)
        .def_property_readonly("memory_bytes", &IVFFastScan::memory_bytes)
        .def("save", &IVFFastScan::save, py::arg("path"), py::call_guard<py::gil_scoped_release>())
        .def("serialize",
             [](const IVFFastScan& self) {
                 std::string s;
                 {
                     py::gil_scoped_release release;
                     s = self.serialize();
                 }
                 return py::bytes(s);
             })
        .def_static("load", &IVFFastScan::load, py::arg("path"),
                    py::call_guard<py::gil_scoped_release>())
        .def_static(
            "deserialize",
            [](const py::bytes& data) {
                const std::string_view view = data;
                py::gil_scoped_release release;
                return IVFFastScan::deserialize(view.data(), view.size());
            },
            py::arg("data"));

    py::class_<HNSW>(m, "HNSW")
        .def(py::init<std::size_t, Space, std::size_t, std::size_t, std::size_t, std::uint64_t,
                      Quantization, std::size_t>(),
             py::arg("dim"), py::arg("space"), py::arg("M"), py::arg("ef_construction"),
             py::arg("max_elements"), py::arg("seed"), py::arg("quantization") = Quantization::None,
             py::arg("pq_dims") = 0)
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
            switch (self.quantization()) {
                case Quantization::SQ8: return std::string("sq8");
                case Quantization::PQ4: return std::string("pq4");
                case Quantization::RaBitQ: return std::string("rabitq");
                default: return std::string();
            }
        })
        .def_property_readonly("pq_dims", &HNSW::pq_dims)
        .def("build_scan_codes", &HNSW::build_scan_codes, py::arg("sub_dim"),
             py::arg("num_threads"), py::call_guard<py::gil_scoped_release>())
        .def("drop_scan_codes", &HNSW::drop_scan_codes, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("scan_code_dims", &HNSW::scan_code_dims)
        .def(
            "add",
            [](HNSW& self, const FloatArray& data, const LabelArray& labels,
               std::size_t num_threads, bool replace_deleted, bool forbid_update_deleted,
               bool grow, const py::object& attributes) {
                const std::size_t n = check_matrix(data, self.dim(), "vectors", self.space());
                if (labels.ndim() != 1 || static_cast<std::size_t>(labels.shape(0)) != n)
                    throw py::value_error("got " + std::to_string(labels.size()) + " ids for " +
                                          std::to_string(n) + " vectors");
                const auto cols = to_columns(attributes);
                py::gil_scoped_release release;
                self.add(data.data(), n, labels.data(), num_threads, replace_deleted,
                         forbid_update_deleted, grow, cols.get());
            },
            py::arg("data"), py::arg("labels"), py::arg("num_threads") = 0,
            py::arg("replace_deleted") = false, py::arg("forbid_update_deleted") = false,
            py::arg("grow") = false, py::arg("attributes") = py::none())
        .def(
            "add_auto",
            [](HNSW& self, const FloatArray& data, std::size_t num_threads, bool replace_deleted,
               bool grow, const py::object& attributes) {
                const std::size_t n = check_matrix(data, self.dim(), "vectors", self.space());
                const auto cols = to_columns(attributes);
                py::gil_scoped_release release;
                return self.add_auto(data.data(), n, num_threads, replace_deleted, grow,
                                     cols.get());
            },
            py::arg("data"), py::arg("num_threads") = 0, py::arg("replace_deleted") = false,
            py::arg("grow") = true, py::arg("attributes") = py::none(),
            "add() with the next free automatic ids, reserved atomically; returns the first.")
        .def("query", &query, py::arg("queries"), py::arg("k"), py::arg("ef"),
             py::arg("filter"), py::arg("num_threads"))
        .def("query_set", &query_set, py::arg("queries"), py::arg("k"), py::arg("ef"),
             py::arg("labels"), py::arg("program"), py::arg("strategy"), py::arg("num_threads"))
        .def("range_query", &range_query, py::arg("queries"), py::arg("radius"),
             py::arg("max_results"), py::arg("ef"), py::arg("labels"), py::arg("program"),
             py::arg("strategy"), py::arg("num_threads"))
        .def(
            "labels_where",
            [](const HNSW& self, const py::function& fn) {
                // The callable runs while this thread holds the index's read lock
                // (as during a lazily filtered search): calling back into the
                // index raises instead of deadlocking; the lock is awaited
                // without the GIL.
                std::unique_ptr<HNSW::ReadSession> session;
                {
                    py::gil_scoped_release release;
                    session = self.read_session();
                }
                const std::vector<label_t> all = self.labels_in(*session, false);
                std::vector<label_t> keep;
                for (const label_t l : all)
                    if (fn(l).cast<bool>()) keep.push_back(l);
                LabelArray out(static_cast<py::ssize_t>(keep.size()));
                std::copy(keep.begin(), keep.end(), out.mutable_data());
                return out;
            },
            py::arg("fn"), "Live ids for which fn(id) is true, in insertion order.")
        .def("attribute_fields",
             [](const HNSW& self) {
                 std::vector<std::pair<std::string, std::string>> out;
                 for (const auto& f : self.attribute_fields())
                     out.emplace_back(f.name, f.type == AttrType::Int ? "int" : "float");
                 return out;
             })
        .def(
            "attribute_values",
            [](const HNSW& self, const std::string& field, const LabelArray& labels) {
                const std::size_t n = static_cast<std::size_t>(labels.size());
                std::vector<std::uint64_t> raw(n);
                py::array_t<bool> present(static_cast<py::ssize_t>(n));
                AttrType t;
                {
                    py::gil_scoped_release release;
                    t = self.attribute_values(field, labels.data(), n, raw.data(),
                                              reinterpret_cast<std::uint8_t*>(present.mutable_data()));
                }
                py::array values = t == AttrType::Int
                                       ? py::array(py::array_t<std::int64_t>(static_cast<py::ssize_t>(n)))
                                       : py::array(py::array_t<double>(static_cast<py::ssize_t>(n)));
                if (n) std::memcpy(values.mutable_data(), raw.data(), n * 8);
                return py::make_tuple(values, present);
            },
            py::arg("field"), py::arg("labels"))
        .def("last_plan",
             [](const HNSW& self) {
                 const PlanInfo p = self.last_plan();
                 py::dict d;
                 d["strategy"] = strategy_name(p.strategy);
                 d["allowed"] = p.allowed;
                 py::dict cost;
                 for (FilterStrategy s : {FilterStrategy::Scan, FilterStrategy::Filtered,
                                          FilterStrategy::TwoHop, FilterStrategy::CodedScan})
                 {
                     // None: not a candidate for this batch (two hops outside their
                     // range, no scan codes, or ef not below the allowed count).
                     const double v = p.predicted_ns[static_cast<std::size_t>(s)];
                     cost[strategy_name(s)] = std::isfinite(v) ? py::cast(v) : py::none();
                 }
                 d["predicted_ns_per_query"] = cost;
                 return d;
             })
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
        .def("refine_graph", &HNSW::refine_graph, py::arg("ef") = 0, py::arg("num_threads") = 0,
             py::arg("steered") = false, py::call_guard<py::gil_scoped_release>())
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
        .def("set_interleave", &HNSW::set_interleave, py::arg("group"))
        .def("set_scan_bits", &HNSW::set_scan_bits, py::arg("bits"))
        .def_property_readonly("is_mapped", &HNSW::is_mapped)
        .def("save", &HNSW::save, py::call_guard<py::gil_scoped_release>())
        .def("save_hnswlib", &HNSW::save_hnswlib, py::call_guard<py::gil_scoped_release>())
        .def_static(
            "load_hnswlib",
            [](const std::string& path, const std::string& space, std::size_t dim,
               std::size_t max_elements) {
                const Space parsed = parse_space(space);
                py::gil_scoped_release release;
                return HNSW::load_hnswlib(path, parsed, dim, max_elements);
            },
            py::arg("path"), py::arg("space"), py::arg("dim"), py::arg("max_elements") = 0)
        .def("serialize",
             [](const HNSW& self) {
                 std::string s;
                 {
                     py::gil_scoped_release release;
                     s = self.serialize();
                 }
                 return py::bytes(s);
             })
        .def_static(
            "load",
            [](const std::string& path, bool mmap, std::size_t max_elements,
               std::optional<std::string> space) {
                std::optional<Space> parsed;
                if (space) parsed = parse_space(*space);
                py::gil_scoped_release release;
                return HNSW::load(path, mmap, max_elements, parsed);
            },
            py::arg("path"), py::arg("mmap") = false, py::arg("max_elements") = 0,
            py::arg("space") = py::none())
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
