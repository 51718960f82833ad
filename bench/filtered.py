"""Filtered and range search, side by side (``python -m bench.ann --filter-selectivity ...``).

For each selectivity and each kind of filter, every library answers the same batch of
queries in one call on one thread, for a sweep of beam widths, interleaved over
``--repeats`` rounds (best kept); a point's call repeats until ``--min-seconds`` have
passed (timeit's practice: its time per call is the mean of the loop). Recall@k is
against the exact k nearest *allowed* neighbours. Filter kinds:

* ``random``: a uniformly random allow-list;
* ``cluster``: whole k-means clusters (stored as an attribute, filtered with
  ``evidex.F("cluster").isin(...)``), queried from inside those clusters;
* ``other-clusters``: the same filter, queried from clusters it excludes (the
  hard case: the query's neighbourhood is all filtered out).

Each selectivity draws its sets from its own random stream (a run over part of the list
measures the same sets); ``--filter-draws N`` measures N disjoint sets of clusters per
selectivity for the two correlated kinds.

Libraries: evidex (its planner, with scan codes built so that ``"coded_scan"`` is
among its methods; they count in its build time), evidex's exact scan of the allowed
set (the floor its planner must never fall below), evidex's IVFIndex with an allow-list
(``--libraries evidex-ivf``), hnswlib (a ``filter=`` callable), FAISS HNSW with an
``IDSelectorBitmap``. usearch's Python package (2.26) has no filtered search.
Range search: recall against the exact range answer and QPS, at radii that return
about 10, 100 and 1,000 results per query, for evidex over the graph, evidex exactly,
and FAISS (HNSW range search where the installed FAISS has it, and a flat scan).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from typing import Any

import numpy as np

import evidex
from evidex import F

from .datasets import load_dataset

EFS = [10, 16, 32, 64, 128, 256, 512]
TARGET = 0.95


def kmeans(x: np.ndarray, k: int, iters: int = 8, seed: int = 0) -> np.ndarray:
    """Cluster labels of x (Lloyd's algorithm on float32, k centroids)."""
    rng = np.random.default_rng(seed)
    c = x[rng.choice(x.shape[0], k, replace=False)].copy()
    for _ in range(iters):
        lab = assign(x, c)
        for j in range(k):
            m = lab == j
            if m.any():
                c[j] = x[m].mean(0)
    return assign(x, c), c


def assign(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape[0], np.int64)
    cn = (c * c).sum(1)
    for s in range(0, x.shape[0], 20000):
        d = cn[None, :] - 2 * x[s : s + 20000] @ c.T
        out[s : s + 20000] = d.argmin(1)
    return out


def exact_allowed(base, queries, allowed, space, k):
    ids, dist = evidex.exact_knn(base[allowed], queries, min(k, len(allowed)), space)
    return allowed[ids], dist


class Lib:
    name = ""

    def build(self, base, space, M, efc, cluster): ...

    def search(self, q, k, ef, allowed, expr):  # -> ids [nq, k]
        raise NotImplementedError


class EvidexLib(Lib):
    name = "evidex"
    strategy = "auto"

    def build(self, base, space, M, efc, cluster):
        self.index = evidex.HNSWIndex(base.shape[1], space, M=M, ef_construction=efc)
        self.index.add(base, np.arange(base.shape[0]), attributes={"cluster": cluster})
        self.index.build_scan_codes()

    def search(self, q, k, ef, allowed, expr):
        f = expr if expr is not None else allowed
        ids, _ = self.index.search(
            q, k, ef=ef, filter=f, num_threads=1, filter_strategy=self.strategy
        )
        self.plan = self.index.last_plan()["strategy"]
        return ids


class EvidexScan(EvidexLib):
    name = "evidex-exact-scan"
    strategy = "scan"

    def __init__(self, shared: EvidexLib) -> None:
        self.shared = shared

    def build(self, base, space, M, efc, cluster):
        self.index = self.shared.index


class EvidexIVFLib(Lib):
    """IVFIndex with an id allow-list (it stores no attributes): the beam maps to
    lists scanned and re-rank depth as in bench.ann."""

    name = "evidex-ivf"

    def build(self, base, space, M, efc, cluster):
        self.index = evidex.IVFIndex(base.shape[1], space)
        self.index.add(base, num_threads=os.cpu_count() or 1)

    def search(self, q, k, ef, allowed, expr):
        return self.index.search(
            q, k, nprobe=ef, reorder=max(100, ef), filter=allowed, num_threads=1
        )[0]


class HnswlibLib(Lib):
    name = "hnswlib"

    def build(self, base, space, M, efc, cluster):
        from .ann import Hnswlib

        self.index = Hnswlib().build_index(base, space, M, efc, os.cpu_count())

    def search(self, q, k, ef, allowed, expr):
        self.index.set_ef(ef)
        # A C-level callable (hnswlib's best case), built once per filter, outside
        # the timed search from the second round on.
        if getattr(self, "_allowed", None) is not allowed:
            self._allowed, self._member = allowed, set(allowed.tolist()).__contains__
        member = self._member
        try:
            return self.index.knn_query(q, k, num_threads=1, filter=member)[0].astype(np.int64)
        except RuntimeError:  # fewer than k found in some row
            out = np.full((q.shape[0], k), -1, np.int64)
            for i in range(q.shape[0]):
                try:
                    out[i] = self.index.knn_query(q[i], k, num_threads=1, filter=member)[0]
                except RuntimeError:
                    pass
            return out


class FaissLib(Lib):
    name = "faiss"

    def build(self, base, space, M, efc, cluster):
        from .ann import Faiss

        self.built = Faiss()
        self.built.build(base, space, M, efc, os.cpu_count())
        self.faiss, self.index, self.prep = self.built.faiss, self.built.index, self.built._prep
        self.n = base.shape[0]

    def search(self, q, k, ef, allowed, expr):
        if getattr(self, "_allowed", None) is not allowed:  # built once per filter
            bits = np.zeros(self.n, bool)
            bits[allowed] = True
            self._allowed, self._packed = allowed, np.packbits(bits, bitorder="little")
        sel = self.faiss.IDSelectorBitmap(self.n, self.faiss.swig_ptr(self._packed))
        params = self.faiss.SearchParametersHNSW(sel=sel, efSearch=ef)
        return self.index.search(self.prep(q), k, params=params)[1]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[a >= 0].tolist()) & set(b.tolist())) / k
                          for a, b in zip(found, truth)]))  # fmt: skip


def filter_cases(
    base, queries, cluster, centroids, selectivities, space, k, n_queries, seed=0, draws=1
):
    """(kind, selectivity, draw, allowed ids, expression or None, queries, truth).

    Each selectivity draws its sets from its own random stream (seeded by the
    selectivity), so a run over part of the list measures the same sets as the whole
    list; the correlated kinds draw `draws` different sets of clusters (one cluster
    is one sample of how clustered the data is there)."""
    n = base.shape[0]
    qcl = assign(queries / np.linalg.norm(queries, axis=1, keepdims=True)
                 if space == "cosine" else queries, centroids)  # fmt: skip
    sizes = np.bincount(cluster, minlength=centroids.shape[0])
    for sel in selectivities:
        rng = np.random.default_rng([seed, int(round(sel * 1e9))])
        want = max(k, int(round(sel * n)))
        allowed = np.sort(rng.choice(n, want, replace=False))
        q = queries[:n_queries]
        yield ("random", sel, 0, allowed, None, q, exact_allowed(base, q, allowed, space, k)[0])
        order = list(rng.permutation(centroids.shape[0]))
        for draw in range(draws):
            # Whole clusters adding up to about the wanted count (one cluster, or part
            # of the smallest ones when even one is too many: then a sub-range of ids),
            # none of them taken by an earlier draw.
            chosen, total = [], 0
            while order:
                c = order.pop(0)
                if total + sizes[c] <= want * 1.25 or not chosen:
                    chosen.append(int(c))
                    total += sizes[c]
                if total >= want * 0.8:
                    break
            if not chosen:
                break
            yield from _cluster_cases(base, queries, qcl, cluster, chosen, sel, draw, space, k,
                                      n_queries, rng)  # fmt: skip


def _cluster_cases(base, queries, qcl, cluster, chosen, sel, draw, space, k, n_queries, rng):
    """The "cluster" and "other-clusters" cases of one set of clusters."""
    expr = F("cluster").isin(chosen)
    allowed = np.flatnonzero(np.isin(cluster, chosen))
    if len(allowed) < k:
        return
    # Queries from inside: the held-out queries that fall in the chosen clusters,
    # topped up to n_queries with perturbed members (few held-out queries fall
    # in 1% of the clusters: a batch of 14 would measure one call's fixed cost).
    inside = np.flatnonzero(np.isin(qcl, chosen))[:n_queries]
    qin = queries[inside]
    missing = n_queries - len(inside)
    if missing > 0:
        extra = base[allowed[rng.choice(len(allowed), missing)]]
        extra = extra + 0.01 * rng.standard_normal(extra.shape).astype(np.float32)
        qin = np.concatenate([qin, extra]).astype(np.float32)
    yield ("cluster", sel, draw, allowed, expr, qin,
           exact_allowed(base, qin, allowed, space, k)[0])  # fmt: skip
    qout = queries[np.flatnonzero(~np.isin(qcl, chosen))[:n_queries]]
    yield ("other-clusters", sel, draw, allowed, expr, qout,
           exact_allowed(base, qout, allowed, space, k)[0])  # fmt: skip


def timed(fn, *args, **kwargs) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def timed_calls(fn, *args, min_seconds: float = 0.05) -> tuple[float, list[Any]]:
    """Seconds per call and every call's answer: fn is called until `min_seconds` have
    passed (timeit's autorange). A call of a millisecond timed once reads the machine's
    state more than the call: on this VM, one after a 10 ms pause or a gc.collect()
    took 1.3-1.5x one in a loop (bench/RESULTS.md); calls of a second run once."""
    if not 0.0 <= min_seconds < float("inf"):  # NaN too: the loop would never end
        raise ValueError(f"min_seconds must be a finite number >= 0, got {min_seconds}")
    gc.collect()
    outs = []
    t0 = time.perf_counter()
    while True:
        outs.append(fn(*args))
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return elapsed / len(outs), outs


def measure(lib: Lib, q, k, ef, allowed, expr, truth, min_seconds: float) -> tuple[float, float]:
    """QPS of one point and its lowest recall over its calls (evidex's planner may
    change its method as it learns)."""
    t, outs = timed_calls(lib.search, q, k, ef, allowed, expr, min_seconds=min_seconds)
    return q.shape[0] / t, min(recall(found, truth) for found in outs)


def run_filtered(args) -> dict:
    from .ann import machine_info

    data = load_dataset(args.dataset, size=args.size, n_queries=args.queries)
    base, queries, space, k = data.base, data.queries, data.space, args.k
    unit = base / np.linalg.norm(base, axis=1, keepdims=True) if space == "cosine" else base
    cluster, centroids = kmeans(unit, args.clusters)
    ev = EvidexLib()
    libs: list[Lib] = [ev, EvidexScan(ev)]
    if "evidex-ivf" in args.libraries:
        libs.append(EvidexIVFLib())
    for name, cls in (("hnswlib", HnswlibLib), ("faiss", FaissLib)):
        if name in args.libraries:
            try:
                __import__(name)
                libs.append(cls())
            except ImportError:
                print(f"skipping {name}: not installed")
    out: dict[str, Any] = {
        "dataset": data.name, "n": int(base.shape[0]), "dim": int(base.shape[1]),
        "space": space, "k": k, "M": args.M, "ef_construction": args.ef_construction,
        "machine": machine_info(), "build_seconds": {}, "filtered": [], "range": [],
    }  # fmt: skip
    print(f"{data.name}: {base.shape[0]} x {base.shape[1]} {space}", flush=True)
    for lib in libs:
        t, _ = timed(lib.build, base, space, args.M, args.ef_construction, cluster)
        out["build_seconds"][lib.name] = t
        print(f"  built {lib.name} in {t:.1f} s", flush=True)
    sels = [float(s) for s in args.filter_selectivity.split(",")]
    cases = filter_cases(base, queries, cluster, centroids, sels, space, k,
                         args.filter_queries, draws=args.filter_draws)  # fmt: skip
    for kind, sel, draw, allowed, expr, q, truth in cases:
        row: dict[str, Any] = {"kind": kind, "selectivity": sel, "draw": draw,
                               "allowed": int(len(allowed)), "queries": int(q.shape[0]),
                               "points": {}}  # fmt: skip
        # Rounds outermost: every library at every beam once per round (the
        # libraries interleaved), best round kept. The first round settles each
        # library's beams: past recall 0.999 wider beams only cost more.
        points: dict[str, list[dict]] = {lib.name: [] for lib in libs}
        for rnd in range(args.repeats):
            for lib in libs:
                # hnswlib and FAISS visit most of the graph per query when the filter
                # is restrictive: a smaller query sample keeps a point under seconds.
                nq = q.shape[0]
                if lib.name in ("hnswlib", "faiss") and sel <= 0.01:
                    nq = min(nq, max(20, args.filter_queries // 5))
                if rnd == 0:
                    efs = [EFS[0]] if lib.name == "evidex-exact-scan" else EFS
                    for ef in efs:
                        qps, r = measure(
                            lib, q[:nq], k, ef, allowed, expr, truth[:nq], args.min_seconds
                        )
                        points[lib.name].append({"ef": ef, "recall": r, "qps": qps,
                                                 "plan": getattr(lib, "plan", None)})  # fmt: skip
                        if r >= 0.999 and lib.name != "evidex":
                            break
                    continue
                for p in points[lib.name]:
                    qps, r = measure(
                        lib, q[:nq], k, p["ef"], allowed, expr, truth[:nq], args.min_seconds
                    )
                    p["recall"] = min(p["recall"], r)
                    if qps > p["qps"]:  # the best round, and its plan
                        p["qps"], p["plan"] = qps, getattr(lib, "plan", None)
        row["points"] = points
        row["summary"] = summarize_row(row)
        print(format_row(row), flush=True)
        out["filtered"].append(row)
    out["range"] = run_range(ev.index, base, queries[: args.filter_queries], space, args)
    return out


def best_at(points: list[dict], target: float = TARGET) -> dict | None:
    ok = [p for p in points if p["recall"] >= target]
    return max(ok, key=lambda p: p["qps"]) if ok else None


def summarize_row(row: dict) -> dict:
    s = {name: best_at(pts) for name, pts in row["points"].items()}
    ev, hn, scan = s.get("evidex"), s.get("hnswlib"), s.get("evidex-exact-scan")
    return {
        "at_target": s,
        "x_hnswlib": ev["qps"] / hn["qps"] if ev and hn else None,
        "x_exact_scan": ev["qps"] / scan["qps"] if ev and scan else None,
    }


def format_row(row: dict) -> str:
    draw = f"#{row['draw']}" if row.get("draw") else "  "
    parts = [f"{row['kind']:>15} {row['selectivity']:<7}{draw} allowed {row['allowed']:>7}:"]
    for name, p in row["summary"]["at_target"].items():
        parts.append(f"{name} " + (f"{p['qps']:.0f} qps r{p['recall']:.3f} ef{p['ef']}"
                                   + (f" ({p['plan']})" if p.get("plan") else "")
                                   if p else f"< {TARGET}"))  # fmt: skip
    x = row["summary"]["x_hnswlib"]
    parts.append(f"x hnswlib {x:.1f}" if x else "x hnswlib -")
    return " | ".join(parts)


def run_range(index, base, queries, space, args) -> list[dict]:
    """Radii returning about 10, 100 and 1,000 results; recall against the exact answer."""
    q = queries
    n = base.shape[0]
    _, d = evidex.exact_knn(base, q, min(1000, n), space)
    rows = []
    faiss = None
    if "faiss" in args.libraries:
        try:
            import faiss
        except ImportError:
            pass
    for target in (10, 100, 1000):
        if target > n:
            continue
        radius = float(np.median(d[:, target - 1]))
        exact = [
            set(np.flatnonzero(row < radius).tolist()) for row in exact_distances(base, q, space)
        ]
        total = sum(len(e) for e in exact)
        row: dict[str, Any] = {"target": target, "radius": radius,
                               "mean_results": total / len(exact), "points": {}}  # fmt: skip
        for name, strategy, ef in (("evidex", "auto", 64), ("evidex-exact-scan", "scan", 64)):
            best, plan = float("inf"), None
            for _ in range(args.repeats):
                t, (lims, ids, _) = timed(index.search_range, q, radius, max_results=n, ef=ef,
                                          filter_strategy=strategy, num_threads=1)  # fmt: skip
                if t < best:  # the best round, and the method it ran
                    best, plan = t, index.last_plan()["strategy"]
            hits = sum(len(set(ids[lims[i]:lims[i + 1]].tolist()) & exact[i])
                       for i in range(len(exact)))  # fmt: skip
            row["points"][name] = {"qps": len(exact) / best, "recall": hits / max(1, total),
                                   "plan": plan}  # fmt: skip
        if faiss is not None:
            unit = base if space == "l2" else base / np.linalg.norm(base, axis=1, keepdims=True)
            qq = q if space == "l2" else q / np.linalg.norm(q, axis=1, keepdims=True)
            flat = faiss.IndexFlatL2(base.shape[1]) if space == "l2" else faiss.IndexFlatIP(
                base.shape[1])  # fmt: skip
            flat.add(np.ascontiguousarray(unit, np.float32))
            faiss.omp_set_num_threads(1)
            r = radius if space == "l2" else 1.0 - radius  # FAISS IP: similarity above r
            best = float("inf")
            for _ in range(args.repeats):
                t, (lims, _, ids) = timed(flat.range_search, np.ascontiguousarray(qq), r)
                best = min(best, t)
            hits = sum(len(set(ids[lims[i]:lims[i + 1]].tolist()) & exact[i])
                       for i in range(len(exact)))  # fmt: skip
            row["points"]["faiss-flat"] = {"qps": len(exact) / best, "recall": hits / max(1, total)}
        print(f"  range ~{target}: radius {radius:.4g}, mean {row['mean_results']:.0f} results: "
              + ", ".join(f"{k} {v['qps']:.0f} qps recall {v['recall']:.3f}"
                          + (f" ({v['plan']})" if v.get("plan") else "")
                          for k, v in row["points"].items()), flush=True)  # fmt: skip
        rows.append(row)
    return rows


def exact_distances(base, q, space):
    if space == "l2":
        return (q * q).sum(1)[:, None] - 2 * q @ base.T + (base * base).sum(1)[None, :]
    bn = base / np.linalg.norm(base, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    return 1.0 - qn @ bn.T


def main_filtered(args) -> int:
    res = run_filtered(args)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"filtered-{res['dataset']}-{res['n']}")
    res["command"] = " ".join(["python -m bench.ann", *sys.argv[1:]])
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {stem}.json")
    return 0
