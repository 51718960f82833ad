"""The CRINN loop: propose, build, screen in the sandbox, re-measure, keep winners."""

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
from ..rewards.ann import qps_recall_auc
from .archive import Archive, Candidate, write_json
from .build import build_kernel
from .sandbox import Limits, LocalPool, Pool, run_worker
from .templates import SLOTS, Proposal, TemplateProposer

DEFAULT_EFS = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256)


@dataclass
class Settings:
    """How candidates are measured (stored in run.json; a resumed run reuses it)."""

    k: int = 10
    efs: tuple[int, ...] = DEFAULT_EFS
    recall_range: tuple[float, float] = (0.85, 0.95)
    space: str = "cosine"
    M: int = 16
    ef_construction: int = 100
    screen_size: int = 50_000
    screen_queries: int = 500
    queries: int = 1_000
    screen_repeats: int = 5
    final_repeats: int = 5
    finalists: int = 3
    recall_tolerance: float = 0.005
    batch: int = 2
    build_threads: int = 2  # construction workers build their graphs with this many
    seccomp: bool = True
    limits: Limits = field(default_factory=Limits)


def machine_fingerprint() -> dict[str, str]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), ""
            )
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
    }


def _fingerprint(a: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(a.shape).encode())
    h.update(np.ascontiguousarray(a[:: max(1, len(a) // 4096)]).tobytes())
    return h.hexdigest()[:16]


class CrinnRun:
    """One run folder: its dataset files, settings, archive and measurements.

    Args:
        out: the run folder (created; an existing one is resumed).
        data: base vectors ``[n, d]`` (queries are held out of them), needed to
            start a run; None to resume one.
        settings: measurement settings for a new run.
        pool: where sandboxed workers run (default: one at a time, here).
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        data: np.ndarray | None = None,
        settings: Settings | None = None,
        pool: Pool | None = None,
        seed: int = 0,
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

    # ------------------------------------------------------------ data
    def _prepare(self, data: np.ndarray, seed: int) -> None:
        s = self.settings
        if data.ndim != 2 or len(data) < s.queries + 100:
            raise ValueError(f"data must be [n, d] with n > {s.queries + 100}, got {data.shape}")
        if not np.isfinite(data).all():
            raise ValueError("data contain NaN or infinity")
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(data))
        queries = data[order[: s.queries]]
        base = data[order[s.queries :]]
        screen = base[: min(s.screen_size, len(base))]
        d = self.root / "data"
        d.mkdir(exist_ok=True)
        files = {
            "base_full": base,
            "base_screen": screen,
            "queries_full": queries,
            "queries_screen": queries[: s.screen_queries],
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

    def _index_file(self, which: str) -> Path:
        """The graph the search and refinement slots run on, built with the
        construction winner when there is one."""
        construction = self.archive.winner_library("construction")
        tag = "builtin" if construction is None else Path(construction).parent.name
        path = self.root / "data" / f"index_{which}_{tag}.evx"
        if not path.exists():
            s = self.settings
            base = np.load(self.root / "data" / f"base_{which}.npy")
            index = HNSWIndex(base.shape[1], s.space, M=s.M, ef_construction=s.ef_construction,
                              max_elements=len(base))  # fmt: skip
            if construction is not None:
                index.use_kernels(construction)
            index.add(base)
            index.save(path)
        return path

    def spec(self, slot: str, libraries: Sequence[str], which: str, repeats: int) -> dict[str, Any]:
        s = self.settings
        d = self.root / "data"
        spec = {
            "slot": slot,
            "libraries": [str(x) for x in libraries],
            "queries": str(d / f"queries_{which}.npy"),
            "ground_truth": str(d / f"gt_{which}.npy"),
            "k": s.k,
            "efs": list(s.efs),
            "repeats": repeats,
            "space": s.space,
            "M": s.M,
            "ef_construction": s.ef_construction,
            "seccomp": s.seccomp,
            "build_threads": s.build_threads,
        }
        if slot == "construction":
            spec["base"] = str(d / f"base_{which}.npy")
        else:
            spec["index"] = str(self._index_file(which))
        return spec

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
            spec = self.spec(slot, self.other_winners(slot), "screen", self.settings.screen_repeats)
            r = run_worker(spec, self.settings.limits)
            if not r.ok:
                raise RuntimeError(
                    f"the built-in kernels failed in the sandbox: {r.reason}\n{r.stderr}"
                )
            self.baselines[key] = {"curve": r.result["curve"], "auc": self.auc(r.result["curve"])}
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
        built = build_kernel(
            proposal.source,
            folder,
            timeout=self.settings.limits.wall_seconds,
            native=proposal.native,
        )
        cand.build_seconds = built.seconds
        if not built.ok:
            cand.reason = "compile error: " + _last_error(built.log)
            self.archive.save(cand)
            return cand
        t0 = time.perf_counter()
        others = self.other_winners(proposal.slot)
        spec = self.spec(proposal.slot, [*others, str(built.library)], "screen",
                         self.settings.screen_repeats)  # fmt: skip
        spec["compare_libraries"] = others  # the built-in measured alongside
        baseline = self.baseline(proposal.slot)
        r = run_worker(spec, self.settings.limits)
        cand.eval_seconds = time.perf_counter() - t0
        if not r.ok:
            cand.reason = r.reason
        else:
            cand.curve = r.result["curve"]
            cand.reason = self.gate(cand.curve, baseline["curve"])
            if not cand.reason:
                cand.score = self.auc(cand.curve)
                local = r.result.get("baseline_curve")
                if local:
                    # Scaled by the baseline measured in the same worker, so a
                    # candidate is not lucky or unlucky with the machine's state.
                    cand.score *= baseline["auc"] / max(self.auc(local), 1e-9)
                cand.screen_score = cand.score
        self.archive.save(cand)
        return cand

    def remeasure(self, slot: str, candidates: Sequence[Candidate]) -> dict[str, Any]:
        """Finalists against the built-in kernel on the full set, ``final_repeats``
        rounds. Each round runs every finalist in its own worker, measured A B A B
        per ef against the built-in kernel in that same worker (for construction,
        each builds its graph there); a finalist's final AUC is the median over
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
                spec = self.spec(slot, [*others, lib[c.id]], "full", 1)
                spec["compare_libraries"] = others
                r = run_worker(spec, s.limits)
                if not r.ok:
                    failed[c.id] = r.reason
                    continue
                curves[c.id] = r.result["curve"]
                local = self.auc(r.result["baseline_curve"])
                base_aucs.append(local)
                base_curve = r.result["baseline_curve"]
                ratios[c.id].append(self.auc(r.result["curve"]) / max(local, 1e-9))
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


def _last_error(log: str) -> str:
    lines = [line for line in log.splitlines() if "error" in line.lower()]
    return (lines[0] if lines else (log.strip().splitlines() or ["unknown"])[-1])[:300]


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
