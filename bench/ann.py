"""ann-benchmarks-style runner: evidex against hnswlib, FAISS and usearch, side by side.

    python -m bench.ann --dataset glove --size 200000 --queries 1000 --out bench/out

Each library builds an HNSW index with the same M and ef_construction; then, for every
ef, every library answers the same held-out queries one per call on one thread,
interleaved A B C A B C over --repeats rounds, best round kept (a single pass on a
shared machine can be off by 50%). Recall@10 is against exact ground truth. Output:
a JSON of every point, a table, and a QPS-recall plot per dataset.

``evidex-layout`` builds the layout a CRINN run kept for this data and machine
(``evidex crinn optimize --slot layout --out RUN``, then ``--layout RUN`` here); its
own ``M``, when it sets one, replaces ``--M`` for evidex alone.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

import evidex
from evidex.rewards import qps_at_recall, qps_recall_auc, recall_at_k

from .datasets import DATASETS, load_dataset

DEFAULT_EFS = [10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]


# --------------------------------------------------------------------- adapters
class Library:
    """One library's HNSW behind a common face. Ids are base-row numbers."""

    name = ""

    def build(self, data: np.ndarray, space: str, M: int, efc: int, threads: int) -> None:
        raise NotImplementedError

    def set_ef(self, ef: int) -> None:
        raise NotImplementedError

    def query(self, q: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError

    def batch(self, queries: np.ndarray, k: int, threads: int) -> np.ndarray:
        raise NotImplementedError

    def memory_bytes(self) -> int | None:
        return None

    def distance_computations(self) -> float | None:
        return None


class Evidex(Library):
    name = "evidex"

    def build(self, data, space, M, efc, threads):
        self.index = evidex.HNSWIndex(
            data.shape[1], space, M=M, ef_construction=efc, max_elements=data.shape[0]
        )
        self.index.add(data, np.arange(data.shape[0]), num_threads=threads)

    def set_ef(self, ef):
        self.index.ef = ef

    def query(self, q, k):
        return self.index.search(q, k, num_threads=1)[0]

    def batch(self, queries, k, threads):
        return self.index.search(queries, k, num_threads=threads)[0]

    def memory_bytes(self):
        return self.index.stats()["memory_bytes"]

    def layout(self):
        s = self.index.stats()
        keys = ("node_bytes", "code_bytes", "pq4_block_bytes", "edge_group_codes")
        return {key: s[key] for key in keys}

    def search_counts(self, queries, k):
        """Mean distance computations and hops per query over a whole batch."""
        self.index.search(queries, k, num_threads=1)
        s = self.index.stats()
        return (s["last_search_distance_computations_per_query"],
                s["last_search_hops_per_query"])  # fmt: skip


class EvidexSQ8(Evidex):
    """evidex traversing 8-bit codes, re-ranking the beam in float32."""

    name = "evidex-sq8"
    quantization = "sq8"

    def build(self, data, space, M, efc, threads):
        self.index = evidex.HNSWIndex(
            data.shape[1],
            space,
            M=M,
            ef_construction=efc,
            max_elements=data.shape[0],
            quantization=self.quantization,
        )
        self.index.add(data, np.arange(data.shape[0]), num_threads=threads)


class EvidexPQ4(EvidexSQ8):
    """evidex steering by 4-bit fast-scan estimates of each node's edges."""

    name = "evidex-pq4"
    quantization = "pq4"


class EvidexRaBitQ(EvidexSQ8):
    """evidex steering by RaBitQ codes of each node's edges (SymphonyQG's estimator)."""

    name = "evidex-rabitq"
    quantization = "rabitq"


def _refined(base: type[Evidex], steered: bool = False) -> type[Evidex]:
    """`base` with one refine_graph round after its build (counted in the build time);
    `steered`: the round's search steered by the RaBitQ edge codes."""

    class Refined(base):
        name = base.name + ("-refined-steered" if steered else "-refined")

        def build(self, data, space, M, efc, threads):
            super().build(data, space, M, efc, threads)
            self.index.refine_graph(num_threads=threads, steered=steered)

    how = " by a search steered by its edge codes" if steered else ""
    Refined.__doc__ = f"{base.name}, its graph refined once after the build{how}."
    return Refined


class EvidexLayout(Evidex):
    """evidex in the layout a CRINN run kept (``--layout RUN``; ``evidex crinn optimize
    --slot layout``): its codes, links per node (over ``--M``), refinement (counted in
    the build time) and search tuning."""

    name = "evidex-layout"
    run_folder: str | None = None  # set from --layout

    def build(self, data, space, M, efc, threads):
        from evidex.crinn import Layout

        if self.run_folder is None:
            raise ValueError("evidex-layout needs --layout RUN (a CRINN run folder)")
        layout = Layout.winner(self.run_folder)
        print(f"  evidex-layout: {layout}", flush=True)
        self.index = layout.build(data, space, M=M, ef_construction=efc,
                                  ids=np.arange(data.shape[0]), num_threads=threads)  # fmt: skip


class EvidexIVF(Evidex):
    """evidex's partitioned index (IVFIndex): k-means lists scanned by 4-bit fast scan,
    re-ranked exactly. The beam width maps to lists scanned and the re-rank depth to
    max(100, that), as for ScaNN."""

    name = "evidex-ivf"

    def build(self, data, space, M, efc, threads):
        self.index = evidex.IVFIndex(data.shape[1], space)
        self.index.add(data, num_threads=threads)

    def set_ef(self, ef):
        self.index.nprobe = ef
        self.index.reorder = max(100, ef)

    layout = None  # not a graph

    def search_counts(self, queries, k):
        return None, None


class Hnswlib(Library):
    name = "hnswlib"

    def build(self, data, space, M, efc, threads):
        self.index = self.build_index(data, space, M, efc, threads)

    @staticmethod
    def build_index(data, space, M, efc, threads):
        import hnswlib

        index = hnswlib.Index(space=space, dim=data.shape[1])
        index.init_index(max_elements=data.shape[0], M=M, ef_construction=efc)
        index.add_items(data, np.arange(data.shape[0]), num_threads=threads)
        index.set_num_threads(1)
        return index

    def set_ef(self, ef):
        self.index.set_ef(ef)

    def query(self, q, k):
        return self.index.knn_query(q, k)[0]

    def batch(self, queries, k, threads):
        return self.index.knn_query(queries, k, num_threads=threads)[0]

    def memory_bytes(self):
        # Its data block plus link lists, as saved; hnswlib keeps no more in RAM
        # besides the label map and per-element locks, counted as evidex counts them.
        n = self.index.element_count
        return self.index.index_file_size() + n * (40 + 8 + 32)


class Faiss(Library):
    name = "faiss"

    def build(self, data, space, M, efc, threads):
        import faiss

        self.faiss = faiss
        self.normalize = space == "cosine"
        metric = faiss.METRIC_L2 if space == "l2" else faiss.METRIC_INNER_PRODUCT
        self.index = faiss.IndexHNSWFlat(data.shape[1], M, metric)
        self.index.hnsw.efConstruction = efc
        faiss.omp_set_num_threads(threads or os.cpu_count())
        self.index.add(self._prep(data))
        faiss.omp_set_num_threads(1)

    def _prep(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.normalize:
            x = x / np.linalg.norm(x, axis=-1, keepdims=True)
        return x

    def set_ef(self, ef):
        self.index.hnsw.efSearch = ef

    def batch(self, queries, k, threads):
        self.faiss.omp_set_num_threads(threads or os.cpu_count())
        try:
            return self.index.search(self._prep(queries), k)[1]
        finally:
            self.faiss.omp_set_num_threads(1)

    def memory_bytes(self):
        return int(self.faiss.serialize_index(self.index).nbytes)

    def query(self, q, k):  # noqa: F811 - counts distance computations as it goes
        self.faiss.cvar.hnsw_stats.reset()
        out = self.index.search(self._prep(q)[None, :], k)[1][0]
        self._ndis = self.faiss.cvar.hnsw_stats.ndis
        return out

    def distance_computations(self):
        # Of the last query only (the runner's passes end on a full query).
        return float(getattr(self, "_ndis", 0)) or None


class Usearch(Library):
    name = "usearch"

    def build(self, data, space, M, efc, threads):
        from usearch.index import Index

        metric = {"l2": "l2sq", "ip": "ip", "cosine": "cos"}[space]
        self.index = Index(
            ndim=data.shape[1], metric=metric, dtype="f32", connectivity=M, expansion_add=efc
        )
        self.index.add(np.arange(data.shape[0]), data, threads=threads)

    def set_ef(self, ef):
        self.index.expansion_search = ef

    def query(self, q, k):
        return self.index.search(q, k, threads=1).keys

    def batch(self, queries, k, threads):
        return self.index.search(queries, k, threads=threads).keys

    def memory_bytes(self):
        return int(self.index.memory_usage)


class Scann(Library):
    """ScaNN (pip `scann`): k-means tree, anisotropic 4-bit AH (2 dims per block),
    exact re-ordering: the authors' ann-benchmarks configuration. The runner's
    beam width maps to leaves searched (of about 2 sqrt(n) leaves) and the
    re-order depth to max(100, that)."""

    name = "scann"

    def build(self, data, space, M, efc, threads):
        import scann

        self.normalize = space == "cosine"
        data = _unit(data) if self.normalize else np.ascontiguousarray(data, np.float32)
        n = data.shape[0]
        self.leaves = max(1, min(n // 50, int(2 * np.sqrt(n))))
        metric = "squared_l2" if space == "l2" else "dot_product"
        builder = scann.scann_ops_pybind.builder(data, 10, metric)
        builder = builder.tree(
            num_leaves=self.leaves,
            num_leaves_to_search=min(self.leaves, 64),
            training_sample_size=min(n, 250_000),
        )
        threshold = float("nan") if space == "l2" else 0.2
        builder = builder.score_ah(2, anisotropic_quantization_threshold=threshold)
        self.searcher = (
            builder.reorder(512).set_n_training_threads(threads or os.cpu_count()).build()
        )
        self.set_ef(64)

    def set_ef(self, ef):
        self.search_leaves = max(1, min(ef, self.leaves))
        self.reorder = max(100, ef)

    def query(self, q, k):
        q = _unit(q) if self.normalize else q
        return self.searcher.search(
            q, final_num_neighbors=k, pre_reorder_num_neighbors=self.reorder,
            leaves_to_search=self.search_leaves,
        )[0]  # fmt: skip

    def batch(self, queries, k, threads):
        queries = _unit(queries) if self.normalize else queries
        self.searcher.set_num_threads(threads or os.cpu_count())
        try:
            return self.searcher.search_batched_parallel(
                queries, final_num_neighbors=k, pre_reorder_num_neighbors=self.reorder,
                leaves_to_search=self.search_leaves,
            )[0]  # fmt: skip
        finally:
            self.searcher.set_num_threads(1)


class SymphonyQG(Library):
    """SymphonyQG (pip `rabitqlib`, SymqgIndex): a graph whose nodes hold their
    neighbours' RaBitQ codes for fast scan; degree 32 as its authors run it."""

    name = "symphonyqg"

    def build(self, data, space, M, efc, threads):
        import rabitqlib

        self.normalize = space == "cosine"
        # Its rotation takes dimensions in multiples of 4 (50 is refused): zero
        # padding changes no distance.
        self.dim = data.shape[1]
        self.padded = -(-self.dim // 16) * 16
        metric = "ip" if space == "ip" else "l2"  # cosine: L2 on unit vectors
        self.index = rabitqlib.SymqgIndex(self.padded, 32, metric)
        self.index.build(self._prep(data), efc, threads or os.cpu_count())
        self.ef = 64

    def _prep(self, x):
        x = _unit(x) if self.normalize else np.ascontiguousarray(x, np.float32)
        if self.padded == self.dim:
            return x
        out = np.zeros((*x.shape[:-1], self.padded), np.float32)
        out[..., : self.dim] = x
        return out

    def set_ef(self, ef):
        self.ef = ef

    def query(self, q, k):
        return np.asarray(self.index.search(self._prep(q)[None, :], k, self.ef, 1)[0]).reshape(-1)

    def batch(self, queries, k, threads):
        threads = threads or os.cpu_count()
        return np.asarray(self.index.search_batch(self._prep(queries), k, self.ef, threads)[0])


MODULES = {"symphonyqg": "rabitqlib"}  # pip package of a library, where not its name


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


LIBRARIES: dict[str, Callable[[], Library]] = {
    "evidex": Evidex,
    "evidex-sq8": EvidexSQ8,
    "evidex-pq4": EvidexPQ4,
    "evidex-rabitq": EvidexRaBitQ,
    "evidex-sq8-refined": _refined(EvidexSQ8),
    "evidex-rabitq-refined": _refined(EvidexRaBitQ),
    "evidex-rabitq-refined-steered": _refined(EvidexRaBitQ, steered=True),
    "evidex-ivf": EvidexIVF,
    "evidex-layout": EvidexLayout,
    "scann": Scann,
    "symphonyqg": SymphonyQG,
    "hnswlib": Hnswlib,
    "faiss": Faiss,
    "usearch": Usearch,
}


def available(names: list[str]) -> list[Library]:
    out = []
    for name in names:
        lib = LIBRARIES[name]()
        module = "evidex" if name.startswith("evidex") else MODULES.get(name, name)
        try:
            __import__(module)
        except ImportError:
            print(f"skipping {name}: not installed (pip install 'evidex[bench]')")
            continue
        out.append(lib)
    return out


# --------------------------------------------------------------------- measurement
@dataclass
class Point:
    library: str
    ef: int
    recall: float
    qps: float
    batch_qps: float | None = None
    distance_computations: float | None = None
    hops: float | None = None  # expanded nodes per query (evidex graphs)


@dataclass
class Result:
    dataset: str
    space: str
    n_base: int
    n_queries: int
    dim: int
    M: int
    ef_construction: int
    machine: dict[str, Any]
    build_seconds: dict[str, float] = field(default_factory=dict)
    memory_bytes: dict[str, int | None] = field(default_factory=dict)  # RSS growth of the build
    reported_bytes: dict[str, int | None] = field(default_factory=dict)  # the library's own count
    # evidex graphs: bytes of a level-0 node, an SQ8 code row, a PQ4 block.
    layouts: dict[str, dict[str, int]] = field(default_factory=dict)
    points: list[Point] = field(default_factory=list)
    brute_force_qps: float | None = None


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def single_pass(lib: Library, queries: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    query = lib.query
    t0 = time.perf_counter()
    for i in range(queries.shape[0]):
        out[i] = query(queries[i], k)
    return time.perf_counter() - t0, out


def _layout_info(args: argparse.Namespace) -> dict[str, Any]:
    """The CRINN layout evidex-layout builds, for the results file."""
    if "evidex-layout" not in args.libraries:
        return {}
    from evidex.crinn import Layout

    return {"layout": {"run": str(args.layout), **Layout.winner(args.layout).as_dict()}}


def machine_info() -> dict[str, Any]:
    """The CPU (model name, family and model numbers, its SIMD flags), the SIMD level
    evidex runs at and the best it could, and the software versions."""
    fields = {"model name": platform.processor() or "", "cpu family": "", "model": ""}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in fields and not fields[key.strip()]:
                    fields[key.strip()] = value.strip()
                if line.strip() == "":  # the first processor's block is enough
                    break
    except OSError:
        pass
    flags = [f for f in evidex._core.cpu_features() if f.startswith(("avx", "fma"))]
    return {
        "cpu": fields["model name"],
        "cpu_family_model": f"{fields['cpu family']}/{fields['model']}",
        "cpu_simd_flags": " ".join(flags),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "evidex_simd": evidex.simd_level(),
        "evidex_cpu_simd": evidex.cpu_simd_level(),
        "numpy": np.__version__,
    }


def run(args: argparse.Namespace) -> Result:
    data = load_dataset(args.dataset, size=args.size, n_queries=args.queries)
    k = args.k
    libs = available(args.libraries)
    res = Result(
        data.name,
        data.space,
        data.base.shape[0],
        data.queries.shape[0],
        data.base.shape[1],
        args.M,
        args.ef_construction,
        {**machine_info(), "batch_threads": args.batch_threads, **_layout_info(args)},
    )
    print(
        f"{data.name}: {data.base.shape[0]} x {data.base.shape[1]} {data.space}, "
        f"{data.queries.shape[0]} queries",
        flush=True,
    )

    # Build, interleaved over libraries, best of --build-repeats. Memory is the
    # growth of this process's resident set over the first build of each library
    # (earlier indexes stay alive, so the growths do not overlap).
    for rep in range(args.build_repeats):
        for lib in libs:
            gc.collect()
            rss0 = rss_bytes()
            t0 = time.perf_counter()
            lib.build(data.base, data.space, args.M, args.ef_construction, args.threads)
            t = time.perf_counter() - t0
            if rep == 0:
                res.memory_bytes[lib.name] = rss_bytes() - rss0
            res.build_seconds[lib.name] = min(t, res.build_seconds.get(lib.name, t))
            print(f"  build {lib.name:8s} round {rep + 1}: {t:7.1f} s", flush=True)
    for lib in libs:
        res.reported_bytes[lib.name] = lib.memory_bytes()
        if getattr(lib, "layout", None) is not None:
            res.layouts[lib.name] = lib.layout()

    # Exact search floor (numpy-free: evidex's SIMD brute force, one thread).
    if not args.no_brute_force:
        res.brute_force_qps = brute_force_qps(data.base, data.queries[:100], data.space, k)

    warm = data.queries[: min(50, data.queries.shape[0])]
    for ef in args.ef:
        best: dict[str, float] = {}
        found: dict[str, np.ndarray] = {}
        for lib in libs:
            lib.set_ef(ef)
            single_pass(lib, warm, k)  # warm caches and branch predictors
        for _ in range(args.repeats):
            for lib in libs:
                t, ids = single_pass(lib, data.queries, k)
                best[lib.name] = min(t, best.get(lib.name, t))
                found[lib.name] = ids
        for lib in libs:
            if hasattr(lib, "search_counts"):  # evidex: means over the whole batch
                dc, hops = lib.search_counts(data.queries, k)
            else:
                dc, hops = lib.distance_computations(), None
            batch = None
            if args.batch:
                tb = min(
                    _timed(lambda lib=lib: lib.batch(data.queries, k, args.batch_threads))
                    for _ in range(args.repeats)
                )
                batch = data.queries.shape[0] / tb
            p = Point(
                lib.name,
                ef,
                recall_at_k(found[lib.name], data.neighbors, k),
                data.queries.shape[0] / best[lib.name],
                batch,
                dc,
                hops,
            )
            res.points.append(p)
        line = "  ".join(
            f"{p.library}: r={p.recall:.4f} qps={p.qps:8.0f}" for p in res.points if p.ef == ef
        )
        print(f"  ef={ef:4d}  {line}", flush=True)
    return res


def brute_force_qps(base: np.ndarray, queries: np.ndarray, space: str, k: int) -> float:
    """Exact search, one query per call on one thread: the floor every index must beat.
    Cosine data is normalised once up front (ranking by inner product is then exact)."""
    from evidex.bruteforce import normalize_rows

    if space == "cosine":
        base, space = normalize_rows(base), "ip"
    t0 = time.perf_counter()
    for q in queries:
        evidex.exact_knn(base, q, k, space, num_threads=1)
    return queries.shape[0] / (time.perf_counter() - t0)


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------- reporting
def summarize(res: Result, targets=(0.90, 0.95, 0.99), auc_range=(0.85, 0.95)) -> dict:
    out: dict[str, dict[str, Any]] = {}
    for lib in sorted({p.library for p in res.points}):
        pts = [p for p in res.points if p.library == lib]
        r = [p.recall for p in pts]
        row: dict[str, Any] = {
            "build_s": res.build_seconds.get(lib),
            "memory_mb": (res.memory_bytes.get(lib) or 0) / 2**20 or None,
            "reported_mb": (res.reported_bytes.get(lib) or 0) / 2**20 or None,
            "auc": qps_recall_auc(r, [p.qps for p in pts], auc_range),
        }
        for t in targets:
            row[f"qps@{t}"] = qps_at_recall(r, [p.qps for p in pts], t)
            bq = [p.batch_qps for p in pts]
            row[f"batch_qps@{t}"] = qps_at_recall(r, bq, t) if all(bq) else None
        out[lib] = row
    return out


def table(res: Result, summary: dict) -> str:
    libs = list(summary)
    cols = ["qps@0.9", "qps@0.95", "qps@0.99", "batch_qps@0.95", "auc", "build_s", "memory_mb"]
    lines = [
        f"### {res.dataset} ({res.n_base} x {res.dim}, {res.space}, {res.n_queries} queries,"
        f" M={res.M}, ef_construction={res.ef_construction})",
        "",
        "| library | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for lib in libs:
        cells = []
        for c in cols:
            v = summary[lib].get(c)
            cells.append(
                "-"
                if v is None or (isinstance(v, float) and np.isnan(v))
                else f"{v:.0f}"
                if c != "build_s"
                else f"{v:.1f}"
            )
        lines.append(f"| {lib} | " + " | ".join(cells) + " |")
    for ours in [lib for lib in libs if lib.startswith("evidex")]:
        lines += ["", f"{ours} / peer ratios:", ""]
        for lib in libs:
            if lib.startswith("evidex"):
                continue
            ratios = []
            for c in ["qps@0.95", "qps@0.99", "batch_qps@0.95", "build_s", "memory_mb"]:
                a, b = summary[ours].get(c), summary[lib].get(c)
                ok = a is not None and b and not np.isnan(a) and not np.isnan(b)
                ratios.append(f"{c} {a / b:.2f}x" if ok else f"{c} -")
            lines.append(f"- vs {lib}: " + ", ".join(ratios))
    lines += [
        "",
        f"| library | ef | recall@10 | QPS (1 thread) | batch QPS "
        f"({res.machine.get('batch_threads', '-')} threads) | dist/query |",
        "|---|---|---|---|---|---|",
    ]
    for p in res.points:
        lines.append(
            f"| {p.library} | {p.ef} | {p.recall:.4f} | {p.qps:.0f} | "
            f"{p.batch_qps or 0:.0f} | "
            f"{'-' if p.distance_computations is None else f'{p.distance_computations:.0f}'} |"
        )
    return "\n".join(lines)


def plot(res: Result, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 5))
    for lib in sorted({p.library for p in res.points}):
        pts = sorted((p for p in res.points if p.library == lib), key=lambda p: p.recall)
        ax.plot([p.recall for p in pts], [p.qps for p in pts], marker="o", label=lib)
    if res.brute_force_qps:
        ax.axhline(res.brute_force_qps, color="grey", ls=":", label="brute force (evidex)")
    ax.set_yscale("log")
    ax.set_xlabel("recall@10")
    ax.set_ylabel("queries per second (1 thread, 1 query per call)")
    ax.set_title(f"{res.dataset}: {res.n_base} x {res.dim} {res.space}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.ann",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", choices=sorted(DATASETS), default="glove")
    p.add_argument("--size", type=int, default=None, help="subsample the base set")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--M", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--ef", type=int, nargs="+", default=DEFAULT_EFS)
    p.add_argument(
        "--libraries",
        nargs="+",
        choices=list(LIBRARIES),
        default=["evidex", "evidex-sq8", "hnswlib", "faiss", "usearch"],
    )
    p.add_argument("--layout", default=None,
                   help="CRINN run folder whose layout winner evidex-layout builds")  # fmt: skip
    p.add_argument("--threads", type=int, default=0, help="build/batch threads (0: all)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds per ef")
    p.add_argument("--build-repeats", type=int, default=1)
    p.add_argument("--batch", action="store_true", help="also measure batch QPS")
    p.add_argument(
        "--batch-threads",
        type=int,
        default=0,
        help="threads of the batch search (0: --threads). 1 compares the search "
        "kernels alone: a one-query call also pays each library's per-call cost",
    )
    p.add_argument("--no-brute-force", action="store_true")
    p.add_argument("--out", default="bench/out")
    p.add_argument(
        "--filter-selectivity",
        default=None,
        help="comma-separated allowed fractions: run the filtered and range search "
        "benchmark (bench/filtered.py) instead",
    )
    p.add_argument("--filter-queries", type=int, default=200, help="queries per filter")
    p.add_argument("--clusters", type=int, default=200, help="k-means clusters for filters")
    p.add_argument("--filter-draws", type=int, default=1,
                   help="sets of clusters per selectivity for the correlated filters")  # fmt: skip
    p.add_argument("--min-seconds", type=float, default=0.05,
                   help="filtered search: a point's calls repeat this long (timeit)")  # fmt: skip
    args = p.parse_args(argv)
    args.threads = args.threads or os.cpu_count()
    EvidexLayout.run_folder = args.layout
    if "evidex-layout" in args.libraries and not args.layout:
        p.error("evidex-layout needs --layout RUN (a CRINN run folder)")
    if args.filter_draws < 1:
        p.error(f"--filter-draws must be at least 1, got {args.filter_draws}")
    args.batch_threads = args.batch_threads or args.threads
    if args.filter_selectivity:
        from .filtered import main_filtered

        return main_filtered(args)

    res = run(args)
    summary = summarize(res)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"{res.dataset}-{res.n_base}")
    with open(stem + ".json", "w") as f:
        json.dump(
            {
                "result": asdict(res),
                "summary": summary,
                "command": " ".join(["python -m bench.ann", *sys.argv[1:]]),
            },
            f,
            indent=1,
        )
    text = table(res, summary)
    with open(stem + ".md", "w") as f:
        f.write(text + "\n")
    plot(res, stem + ".png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
