"""The CRINN loop: propose, build, screen in the sandbox, re-measure, keep winners.

Measurements (`CrinnRun.measure`) are the loop's, not the candidate's: a baseline
worker and a candidate worker, each its own sandboxed process, receive the same
batches of queries in turn (A B, then B A), every batch one neither has seen
before in this measurement; the loop times each round trip itself, stops the
idle worker meanwhile, and checks every answer (ids, exact distances, recall)
against its own ground truth. A kernel that caches answers, forges output or
patches clocks gains nothing from it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..bruteforce import exact_knn
from ..index import HNSWIndex
from ..rewards.ann import qps_recall_auc, recall_at_k
from .archive import Archive, Candidate, write_json
from .build import build_kernel
from .sandbox import (
    CORES,
    Limits,
    LocalPool,
    Pool,
    Protection,
    Worker,
    WorkerFailed,
    require_protection,
)
from .templates import SLOTS, Proposal, TemplateProposer

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


class MeasurementFailed(Exception):
    """The candidate's worker failed; str() is the reason, in the loop's words."""


class CrinnRun:
    """One run folder: its dataset files, settings, archive and measurements.

    Args:
        out: the run folder (created; an existing one is resumed).
        data: base vectors ``[n, d]`` (queries are held out of them), needed to
            start a run; None to resume one.
        settings: measurement settings for a new run.
        pool: where sandboxed workers run (default: one at a time, here).
        allow_weak_sandbox: accept model-written candidates where the system cannot
            jail them fully (no user namespaces or no seccomp); off by default, and
            the run says at start what is missing.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        data: np.ndarray | None = None,
        settings: Settings | None = None,
        pool: Pool | None = None,
        seed: int = 0,
        allow_weak_sandbox: bool = False,
    ) -> None:
        self.archive = Archive(out)
        self.root = self.archive.root
        self.pool = pool or LocalPool(1)
        stored = self.archive.settings()
        if stored:
            self.settings = _settings_from(stored["settings"])
            if data is not None and stored["dataset"]["fingerprint"] != _fingerprint(
                np.asarray(data, np.float32)
            ):
                raise ValueError(f"{out} holds a run on other data; choose another folder")
        else:
            if data is None:
                raise ValueError(f"{out} holds no run; pass data to start one")
            self.settings = settings or Settings()
            self._prepare(np.asarray(data, np.float32), seed)
        self.baselines: dict[tuple[str, str], dict[str, Any]] = {}
        self._data: dict[str, _Data] = {}
        self.allow_weak = allow_weak_sandbox
        self.protection: Protection = require_protection(False, allow_weak_sandbox)

    # ------------------------------------------------------------ data
    def _prepare(self, data: np.ndarray, seed: int) -> None:
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
        if which not in self._data:
            self._data[which] = _Data(self.root, which, self.settings.space)
        return self._data[which]

    def _index_file(self, which: str) -> Path:
        """The graph the search and refinement slots run on. With a construction
        winner it is built by that winner in a sandboxed worker, and only its
        file image (validated on load) comes back: no candidate code ever runs
        in the loop's process."""
        construction = self.archive.winner_library("construction")
        tag = "builtin" if construction is None else Path(construction).parent.name
        path = self.root / "data" / f"index_{which}_{tag}.evx"
        if path.exists():
            return path
        s = self.settings
        base_file = self.root / "data" / f"base_{which}.npy"
        if construction is None:
            base = np.load(base_file)
            index = HNSWIndex(base.shape[1], s.space, M=s.M, ef_construction=s.ef_construction,
                              max_elements=len(base))  # fmt: skip
            index.add(base)
            index.save(path)
            return path
        setup = self._setup("construction", [construction], which)
        files = [str(base_file), construction]
        cpu = CORES.acquire()
        try:
            with Worker(setup, files, s.limits, sorted(os.sched_getaffinity(0))) as w:
                w.start()
                blob = w.export(max_bytes=1 << 34)
        except WorkerFailed as e:
            raise RuntimeError(f"the construction winner failed to build the graph: {e}") from e
        finally:
            CORES.release(cpu)
        HNSWIndex.from_bytes(blob).save(path)  # validated as any file from a stranger
        return path

    def _setup(self, slot: str, libraries: Sequence[str], which: str) -> dict[str, Any]:
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
            setup["index"] = str(self._index_file(which))
        return setup

    def measure(
        self,
        slot: str,
        candidate: Sequence[str] | None,
        baseline: Sequence[str],
        which: str,
        repeats: int,
    ) -> dict[str, Any]:
        """QPS-recall curves of the baseline libraries and (optionally) the
        candidate's, measured interleaved in two sandboxed workers on one core.

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
            sides = {"baseline": list(baseline)}
            if candidate is not None:
                sides["candidate"] = list(candidate)
            for name, libs in sides.items():
                setup = self._setup(slot, libs, which)
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
            return self._rounds(workers, data, batch, repeats)
        finally:
            for w in workers.values():
                w.close()
            CORES.release(cpu)

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

    def other_winners(self, slot: str) -> list[str]:
        """Winners of the slots before `slot` (CRINN optimises them in order)."""
        libs = []
        for other in SLOTS[: SLOTS.index(slot)]:
            lib = self.archive.winner_library(other)
            if lib:
                libs.append(lib)
        return libs

    # ------------------------------------------------------------ scoring
    def auc(self, curve: Sequence[dict[str, float]]) -> float:
        return qps_recall_auc(
            [p["recall"] for p in curve], [p["qps"] for p in curve], self.settings.recall_range
        )

    def baseline(self, slot: str) -> dict[str, Any]:
        """The built-in kernel's screening curve (measured once per slot)."""
        key = (slot, "screen")
        if key not in self.baselines:
            curves = self.measure(
                slot, None, self.other_winners(slot), "screen", self.settings.screen_repeats
            )
            self.baselines[key] = {"curve": curves["baseline"], "auc": self.auc(curves["baseline"])}
        return self.baselines[key]

    def gate(self, curve: Sequence[dict[str, float]], baseline: Sequence[dict[str, float]]) -> str:
        """Correctness gate: recall at every ef within tolerance of the built-in's."""
        tol = self.settings.recall_tolerance
        for mine, ref in zip(curve, baseline):
            if mine["recall"] < ref["recall"] - tol:
                return (
                    f"wrong answers: recall {mine['recall']:.4f} at ef={mine['ef']} below the "
                    f"built-in kernel's {ref['recall']:.4f}"
                )
        return ""

    # ------------------------------------------------------------ candidates
    def evaluate(self, proposal: Proposal, iteration: int = 0) -> Candidate:
        """Build and screen one proposal; the result is saved in the archive."""
        cid = self.archive.new_id(proposal.slot)
        folder = self.archive.folder(cid)
        cand = Candidate(cid, proposal.slot, proposal.origin, config=proposal.config,
                         prompt=proposal.prompt, iteration=iteration)  # fmt: skip
        if proposal.error:
            folder.mkdir(parents=True, exist_ok=True)
            cand.reason = proposal.error
            self.archive.save(cand)
            return cand
        if proposal.origin != "template" and not self.protection.complete and not self.allow_weak:
            folder.mkdir(parents=True, exist_ok=True)
            cand.reason = (
                "refused: the sandbox is incomplete here (" + self.protection.describe() + ")"
            )
            self.archive.save(cand)
            return cand
        built = build_kernel(
            proposal.source,
            folder,
            timeout=self.settings.limits.wall_seconds,
            native=proposal.native,
        )
        cand.build_seconds = built.seconds
        if not built.ok:
            cand.reason = built.reason
            self.archive.save(cand)
            return cand
        t0 = time.perf_counter()
        others = self.other_winners(proposal.slot)
        baseline = self.baseline(proposal.slot)
        try:
            curves = self.measure(proposal.slot, [*others, str(built.library)], others, "screen",
                                  self.settings.screen_repeats)  # fmt: skip
        except MeasurementFailed as e:
            cand.reason = str(e)
        else:
            cand.curve = curves["candidate"]
            cand.reason = self.gate(cand.curve, curves["baseline"])
            if not cand.reason:
                # Scaled by the baseline measured alongside, so a candidate is not
                # lucky or unlucky with the machine's state.
                local = self.auc(curves["baseline"])
                cand.score = self.auc(cand.curve) * baseline["auc"] / max(local, 1e-9)
                cand.screen_score = cand.score
        cand.eval_seconds = time.perf_counter() - t0
        self.archive.save(cand)
        return cand

    def remeasure(self, slot: str, candidates: Sequence[Candidate]) -> dict[str, Any]:
        """Finalists against the built-in kernel on the full set, ``final_repeats``
        rounds. Each round measures every finalist in a pair of fresh workers
        against the built-in kernel; a finalist's final AUC is the median over
        rounds of its AUC ratio to the built-in's, times the built-in's median AUC."""
        s = self.settings
        others = self.other_winners(slot)
        lib = {c.id: str(self.archive.folder(c.id) / "kernel.so") for c in candidates}
        ratios: dict[str, list[float]] = {c.id: [] for c in candidates}
        curves: dict[str, list[dict[str, float]]] = {}
        base_aucs: list[float] = []
        base_curve: list[dict[str, float]] = []
        failed: dict[str, str] = {}
        for _ in range(s.final_repeats):
            for c in candidates:
                if c.id in failed:
                    continue
                try:
                    result = self.measure(slot, [*others, lib[c.id]], others, "full", 1)
                except MeasurementFailed as e:
                    failed[c.id] = str(e)
                    continue
                curves[c.id] = result["candidate"]
                local = self.auc(result["baseline"])
                base_aucs.append(local)
                base_curve = result["baseline"]
                ratios[c.id].append(self.auc(result["candidate"]) / max(local, 1e-9))
        base_auc = statistics.median(base_aucs) if base_aucs else 0.0
        out: dict[str, Any] = {"builtin": {"auc": base_auc, "curve": base_curve}}
        for c in candidates:
            if c.id in failed or not ratios[c.id]:
                res: dict[str, Any] = {"auc": 0.0, "reason": failed.get(c.id, "no measurement")}
            else:
                ratio = statistics.median(ratios[c.id])
                res = {"auc": ratio * base_auc, "ratio": ratio, "ratios": ratios[c.id],
                       "curve": curves[c.id]}  # fmt: skip
                reason = self.gate(curves[c.id], base_curve)
                if reason:
                    res["auc"], res["reason"] = 0.0, reason
            out[c.id] = res
            c.final = res
            self.archive.save(c)
        return out

    # ------------------------------------------------------------ the loop
    def optimize(
        self,
        slot: str,
        budget: int,
        proposers: Sequence[Any] | None = None,
        progress: bool = True,
        on_candidate: Callable[[Candidate], None] | None = None,
    ) -> dict[str, Any]:
        """Spend `budget` candidates (counting those a resumed run already has) on
        `slot`, then re-measure the finalists and mark the winner if it beats the
        built-in kernel."""
        if slot not in SLOTS:
            raise ValueError(f"unknown kernel slot {slot!r}; expected one of {SLOTS}")
        dim = self.archive.settings()["dataset"]["dim"]
        proposers = list(proposers or [TemplateProposer(slot, dim=dim)])
        if any(not isinstance(p, TemplateProposer) for p in proposers):
            require_protection(True, self.allow_weak)  # model-written code: refuse if weak
        baseline = self.baseline(slot)
        done = len(self.archive.candidates(slot))
        bar = _bar(budget, done, progress, f"crinn {slot}")
        iteration = 0
        while done < budget:
            made = 0
            for proposer in proposers:
                want = min(self.settings.batch, budget - done)
                if want <= 0:
                    break
                proposals = proposer.propose(self.archive.candidates(slot), want)
                evaluate = functools.partial(self.evaluate, iteration=iteration)
                scored = list(self.pool.map(evaluate, proposals))
                if hasattr(proposer, "learn"):  # e.g. an LLM proposer's update step
                    proposer.learn(scored)
                for cand in scored:
                    done += 1
                    made += 1
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(
                            best=f"{self._best_score(slot):.0f}", base=f"{baseline['auc']:.0f}"
                        )
                    if on_candidate:
                        on_candidate(cand)
            iteration += 1
            if made == 0:
                break  # every proposer is exhausted
        if bar is not None:
            bar.close()
        ranked = sorted((c for c in self.archive.candidates(slot) if c.ok), key=lambda c: -c.score)
        # Finalists in groups down the ranking: when a whole group fails the full
        # set's gate (they often share one flaw), the next group gets its chance,
        # up to three groups.
        n = self.settings.finalists
        final: dict[str, Any] = {}
        finalists: list[Candidate] = []
        for start in range(0, min(len(ranked), 3 * n), n):
            group = ranked[start : start + n]
            result = self.remeasure(slot, group)
            base = result["builtin"]["auc"]
            for c in group:  # each against the built-in measured in its own round
                final[c.id] = {**result[c.id], "builtin_auc": base}
            final["builtin"] = result["builtin"]
            finalists += group
            if any(final[c.id]["auc"] > 0 for c in group):
                break
        winner = None
        if finalists:
            best = max(
                finalists, key=lambda c: final[c.id].get("ratio", 0.0) * (final[c.id]["auc"] > 0)
            )
            if final[best.id]["auc"] > final[best.id]["builtin_auc"]:
                winner = best
                self.archive.mark_winner(slot, best, final[best.id]["builtin_auc"])
        summary = {
            "slot": slot,
            "baseline_screen_auc": baseline["auc"],
            "final": final,
            "winner": winner.id if winner else None,
            "candidates": len(self.archive.candidates(slot)),
        }
        write_json(self.root / f"summary-{slot}.json", summary)
        return summary

    def _best_score(self, slot: str) -> float:
        return max((c.score for c in self.archive.candidates(slot)), default=0.0)


def _bar(total: int, done: int, enabled: bool, desc: str) -> Any:
    from ..embedders import progress_bar

    bar = progress_bar(total, enabled, desc, unit="kernel")
    if bar is not None and done:
        bar.update(min(done, total))
    return bar


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
