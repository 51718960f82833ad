"""Measuring kernels: a run's data (base vectors, a pool of held-out queries never
repeated within a measurement, exact neighbours), the graphs the slots run on, and
the interleaved measurement of a baseline and a candidate in two sandboxed workers.

The loop decides everything that matters outside the candidate's address space:
each worker receives the same batches in turn (A B, then B A) on one core while the
other is stopped; the loop times each round trip itself and checks every answer
(ids, exact distances, recall) against its own ground truth. A kernel that caches
answers, forges output or patches clocks gains nothing from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bruteforce import exact_knn
from ..index import HNSWIndex
from ..metrics import recall_at_k
from .archive import Archive, read_json, write_json
from .layout import Layout
from .sandbox import CORES, Limits, Worker, WorkerFailed

DEFAULT_EFS = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256)


@dataclass
class Settings:
    """How candidates are measured (stored in run.json; a resumed run reuses it).

    A screening measurement sends ``len(efs) * screen_repeats`` batches of
    ``screen_queries`` queries, a final one ``len(efs)`` batches of ``queries``,
    each batch fresh: the run holds out enough queries for the larger of the two.
    """

    k: int = 10
    efs: tuple[int, ...] = DEFAULT_EFS
    recall_range: tuple[float, float] = (0.85, 0.95)
    space: str = "cosine"
    M: int = 16
    ef_construction: int = 100
    screen_size: int = 50_000
    screen_queries: int = 200
    queries: int = 500
    screen_repeats: int = 3
    final_repeats: int = 5
    finalists: int = 3
    recall_tolerance: float = 0.005
    batch: int = 2
    build_threads: int = 2  # construction workers build their graphs with this many
    seccomp: bool = True
    limits: Limits = field(default_factory=Limits)

    def pool_size(self, which: str) -> int:
        if which == "screen":
            return len(self.efs) * self.screen_repeats * self.screen_queries
        return len(self.efs) * self.queries

    @property
    def held_out(self) -> int:
        return max(self.pool_size("screen"), self.pool_size("full"))


def machine_fingerprint() -> dict[str, str]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), ""
            )
    except OSError:
        pass
    from .. import _core

    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_features": " ".join(_core.cpu_features()),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
    }


def _fingerprint(a: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(a.shape).encode())
    h.update(np.ascontiguousarray(a[:: max(1, len(a) // 4096)]).tobytes())
    return h.hexdigest()[:16]


class _Data:
    """One side of a run's data as the loop holds it: base vectors (as stored by
    the index), the query pool and its exact neighbours."""

    def __init__(self, root: Path, which: str, space: str) -> None:
        d = root / "data"
        self.base = np.load(d / f"base_{which}.npy")
        self.queries = np.load(d / f"queries_{which}.npy")
        self.truth = np.load(d / f"gt_{which}.npy")
        self.space = space
        self.stored = self.base
        self.unit_queries = self.queries
        if space == "cosine":
            self.stored = self.base / np.maximum(
                np.linalg.norm(self.base, axis=1, keepdims=True), 1e-30
            )
            self.unit_queries = self.queries / np.maximum(
                np.linalg.norm(self.queries, axis=1, keepdims=True), 1e-30
            )

    def check(self, ids: np.ndarray, dists: np.ndarray, rows: slice, ef: int) -> str:
        """The loop's judgement of one answer: "" if it is sound."""
        n = len(self.base)
        if (ids < 0).any():
            return f"wrong answers: fewer than k results at ef={ef}"
        if (ids >= n).any():
            return f"wrong answers: ids out of range at ef={ef}"
        ordered = np.sort(ids, axis=1)
        if (ordered[:, 1:] == ordered[:, :-1]).any():
            return f"wrong answers: an id repeated in a result row at ef={ef}"
        q = self.unit_queries[rows]
        x = self.stored[ids]
        if self.space == "l2":
            exact = ((x - q[:, None, :]) ** 2).sum(-1)
        else:
            exact = 1.0 - np.einsum("qkd,qd->qk", x, q)
        if not np.allclose(dists, exact, rtol=1e-3, atol=1e-4):
            return f"wrong answers: distances differ from the exact ones at ef={ef}"
        return ""


# The filtered-search check: 1 id in FILTER_STEP allowed, recall within tolerance.
FILTER_STEP = 10
FILTER_TOLERANCE = 0.02


def _exact_among(data: _Data, rows: slice, allowed: np.ndarray, k: int) -> np.ndarray:
    """Exact k nearest of queries[rows] among the allowed base vectors (their ids)."""
    q = data.unit_queries[rows]
    x = data.stored[allowed]
    if data.space == "l2":
        d = (q**2).sum(1)[:, None] - 2 * q @ x.T + (x**2).sum(1)[None, :]
    else:
        d = -(q @ x.T)
    return allowed[np.argsort(d, axis=1, kind="stable")[:, :k]]


class MeasurementFailed(Exception):
    """The candidate's worker failed; str() is the reason, in the loop's words."""


class Bench:
    """The measurements of one run folder (`CrinnRun` holds one).

    Args:
        root: the run folder.
        settings: how to measure.
        archive: the run's archive (for the construction winner the search slot's
            graph is built with).
    """

    def __init__(self, root: Path, settings: Settings, archive: Archive) -> None:
        self.root, self.settings, self.archive = root, settings, archive
        self._data: dict[str, _Data] = {}

    # ------------------------------------------------------------ data
    def prepare(self, data: np.ndarray, seed: int) -> None:
        """Hold out the query pool, write the data files and the exact neighbours."""
        s = self.settings
        held_out = s.held_out
        if data.ndim != 2 or len(data) < held_out + 1000:
            raise ValueError(
                f"data must be [n, d] with n > {held_out + 1000} (the run holds out {held_out} "
                f"queries), got {data.shape}"
            )
        if not np.isfinite(data).all():
            raise ValueError("data contain NaN or infinity")
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(data))
        pool = data[order[:held_out]]
        base = data[order[held_out:]]
        screen = base[: min(s.screen_size, len(base))]
        d = self.root / "data"
        d.mkdir(exist_ok=True)
        files = {
            "base_full": base,
            "base_screen": screen,
            "queries_full": pool[: s.pool_size("full")],
            "queries_screen": pool[: s.pool_size("screen")],
        }
        for name, arr in files.items():
            np.save(d / f"{name}.npy", np.ascontiguousarray(arr, np.float32))
        for which in ("screen", "full"):
            gt, _ = exact_knn(files[f"base_{which}"], files[f"queries_{which}"], s.k, s.space)
            np.save(d / f"gt_{which}.npy", gt)
        self.archive.save_settings(
            {
                "settings": _settings_dict(s),
                "dataset": {
                    "fingerprint": _fingerprint(data),
                    "n": len(data),
                    "dim": data.shape[1],
                },
                "machine": machine_fingerprint(),
                "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
        )

    def data(self, which: str) -> _Data:
        """The screening or full side of the run's data, loaded once."""
        if which not in self._data:
            self._data[which] = _Data(self.root, which, self.settings.space)
        return self._data[which]

    def index_file(self, which: str) -> Path:
        """The graph the search and refinement slots run on: the built-in
        layout's, from :meth:`_graph_file`."""
        return self._graph_file("index", None, which)[0]

    def layout_file(self, layout: Layout, which: str) -> tuple[Path, float]:
        """The graph of `layout` on one side of the data, built once and kept in the
        run's data folder, and the seconds its build took (the built-in layout's
        graph is :meth:`index_file`'s)."""
        if layout.builds_builtin:
            return self.index_file(which), 0.0
        built = {k: v for k, v in layout.as_dict().items() if k not in layout.tuning()}
        return self._graph_file("layout", built, which)

    def _graph_file(
        self, kind: str, built: dict[str, int] | None, which: str
    ) -> tuple[Path, float]:
        """Build (once) the graph of the layout settings `built` (None: the built-in
        layout) on one side of the data, and its build seconds. With a construction
        winner it is built by that winner in a sandboxed worker, and only its file
        image (validated on load) comes back: no candidate code ever runs in the
        loop's process. Files are named by the winner and the settings, so a
        resumed run finds its graphs."""
        construction = self.archive.winner_library("construction")
        tag = "builtin" if construction is None else Path(construction).parent.name
        name = f"{kind}_{which}_{tag}"
        if built is not None:
            digest = hashlib.sha256(json.dumps(built, sort_keys=True).encode()).hexdigest()
            name += "_" + digest[:12]
        path = self.root / "data" / f"{name}.evx"
        record = path.with_suffix(".json")
        if path.exists():
            stored = read_json(record)  # only a report: a missing or damaged one reads 0 s
            seconds = stored.get("build_seconds") if isinstance(stored, dict) else None
            return path, float(seconds) if isinstance(seconds, (int, float)) else 0.0
        s = self.settings
        base_file = self.root / "data" / f"base_{which}.npy"
        t0 = time.perf_counter()
        if construction is None:  # the built-in core only: no candidate code runs
            index = Layout(**(built or {})).build(np.load(base_file), s.space, M=s.M,
                                                  ef_construction=s.ef_construction,
                                                  num_threads=s.build_threads)  # fmt: skip
            seconds = time.perf_counter() - t0
            index.save(path)
        else:
            setup = self._setup("construction", [construction], which)
            if built is not None:
                setup["layout"] = built
            try:  # a build: all cores (nothing is timed)
                with Worker(setup, [str(base_file), construction], s.limits,
                            sorted(os.sched_getaffinity(0))) as w:  # fmt: skip
                    w.start()
                    seconds = time.perf_counter() - t0
                    blob = w.export(max_bytes=1 << 34)
            except WorkerFailed as e:
                what = "graph" if built is None else "layout's graph"
                raise RuntimeError(
                    f"the construction winner failed to build the {what}: {e}"
                ) from e
            HNSWIndex.from_bytes(blob).save(path)  # validated as any file from a stranger
        write_json(record, {"build_seconds": seconds, "layout": built or {}})
        return path, seconds

    def _setup(
        self,
        slot: str,
        libraries: Sequence[str],
        which: str,
        index: Path | None = None,
        tuning: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        s = self.settings
        setup: dict[str, Any] = {
            "slot": slot,
            "libraries": [str(x) for x in libraries],
            "space": s.space,
            "M": s.M,
            "ef_construction": s.ef_construction,
            "seccomp": s.seccomp,
            "build_threads": s.build_threads,
        }
        if slot == "construction":
            setup["base"] = str(self.root / "data" / f"base_{which}.npy")
        else:
            setup["index"] = str(index or self.index_file(which))
        if tuning:
            setup["tuning"] = dict(tuning)
        return setup

    def measure(
        self,
        slot: str,
        candidate: Sequence[str] | None,
        baseline: Sequence[str],
        which: str,
        repeats: int,
        layout: Layout | None = None,
    ) -> dict[str, Any]:
        """QPS-recall curves of the baseline libraries and (optionally) the
        candidate's, measured interleaved in two sandboxed workers on one core.
        For the layout slot the candidate searches `layout`'s graph with its
        tuning, the baseline the built-in layout's (both with `baseline`'s kernels).

        Returns ``{"baseline": curve, "candidate": curve}`` (no "candidate" key
        without one). Raises MeasurementFailed with the loop's reason when the
        candidate fails; RuntimeError when the baseline does.
        """
        s = self.settings
        data = self.data(which)
        batch = s.screen_queries if which == "screen" else s.queries
        cpu = CORES.acquire()
        build_cpus = sorted(os.sched_getaffinity(0)) if slot == "construction" else [cpu]
        workers: dict[str, Worker] = {}
        try:
            sides: dict[str, tuple[list[str], Layout | None]] = {"baseline": (list(baseline), None)}
            if candidate is not None:
                sides["candidate"] = (list(candidate), layout)
            for name, (libs, own) in sides.items():
                index, tuning = None, None
                if own is not None:
                    index, _ = self.layout_file(own, which)
                    tuning = own.tuning()
                setup = self._setup(slot, libs, which, index, tuning)
                files = [setup.get("index") or setup["base"], *libs]
                workers[name] = Worker(setup, files, s.limits, build_cpus)
            for name, w in workers.items():
                try:
                    w.start()
                except WorkerFailed as e:
                    raise self._failure(name, str(e)) from None
                if w.pin(cpu) > 1 and name == "candidate":
                    raise MeasurementFailed("the kernel left threads running after the build")
                w.pause()
            curves = self._rounds(workers, data, batch, repeats)
            if slot in ("search", "layout") and "candidate" in workers:
                self._check_filtered(workers, data, batch)
            return curves
        finally:
            for w in workers.values():
                w.close()
            CORES.release(cpu)

    def _check_filtered(self, workers: dict[str, Worker], data: _Data, batch: int) -> None:
        """A search library's filtered slot (or the built-in one it leaves in place)
        (and a layout's own filtered walk) must answer filtered searches as well as
        the baseline: every result allowed,
        exact distances, and recall within the tolerance, over 1 id in
        FILTER_STEP. The score measures unfiltered search only; this keeps a fast
        kernel with a broken filtered search from winning."""
        s = self.settings
        rows = slice(0, min(batch, 100))
        ef = max(s.efs)
        allowed = np.arange(0, len(data.base), FILTER_STEP)
        truth = _exact_among(data, rows, allowed, s.k)
        recall = {}
        for name in ("baseline", "candidate"):
            try:
                ids, dists, _, _ = workers[name].search(
                    data.queries[rows], s.k, ef, filter_step=FILTER_STEP
                )
            except WorkerFailed as e:
                raise self._failure(name, f"{e} (in a filtered search)") from None
            problem = data.check(ids, dists, rows, ef)
            if not problem and (ids % FILTER_STEP != 0).any():
                problem = f"wrong answers: a filtered search returned excluded ids at ef={ef}"
            if problem:
                raise self._failure(
                    name, problem.replace("wrong answers", "wrong filtered answers")
                )
            recall[name] = recall_at_k(ids, truth, s.k)
        if recall["candidate"] < recall["baseline"] - FILTER_TOLERANCE:
            raise MeasurementFailed(
                f"filtered search recall {recall['candidate']:.3f} below the built-in's "
                f"{recall['baseline']:.3f} at ef={ef}"
            )

    def _failure(self, side: str, reason: str) -> Exception:
        if side == "candidate":
            return MeasurementFailed(reason)
        return RuntimeError(f"the built-in kernels failed in the sandbox: {reason}")

    def _rounds(
        self, workers: dict[str, Worker], data: _Data, batch: int, repeats: int
    ) -> dict[str, Any]:
        s = self.settings
        names = list(workers)
        curves: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        r = 0
        for ef in s.efs:
            best = dict.fromkeys(names, float("inf"))
            found = {name: [] for name in names}
            computed = dict.fromkeys(names, 0)
            rows_used = []
            for _ in range(repeats):
                rows = slice(r * batch, (r + 1) * batch)
                queries = data.queries[rows]
                rows_used.append(rows)
                order = names if r % 2 == 0 else names[::-1]  # A B, then B A
                r += 1
                for name in order:
                    try:
                        ids, dists, dc, seconds = workers[name].search(queries, s.k, ef)
                    except WorkerFailed as e:
                        raise self._failure(name, str(e)) from None
                    problem = data.check(ids, dists, rows, ef)
                    if problem:
                        raise self._failure(name, problem)
                    best[name] = min(best[name], seconds)
                    found[name].append(ids)
                    computed[name] += dc
            truth = np.concatenate([data.truth[rows] for rows in rows_used])
            for name in names:
                curves[name].append(
                    {
                        "ef": ef,
                        "recall": recall_at_k(np.concatenate(found[name]), truth, s.k),
                        "qps": batch / best[name],
                        "dist_per_query": computed[name] / (repeats * batch),
                    }
                )
        return curves


def _settings_dict(s: Settings) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(s)
    d["efs"] = list(s.efs)
    d["recall_range"] = list(s.recall_range)
    return d


def _settings_from(d: dict[str, Any]) -> Settings:
    d = dict(d)
    d["efs"] = tuple(d["efs"])
    d["recall_range"] = tuple(d["recall_range"])
    d["limits"] = Limits(**d["limits"])
    return Settings(**d)
