"""The CRINN loop: propose, build, screen in the sandbox, re-measure, keep winners.

How a kernel is measured (by the loop, never by the candidate) is `measure.Bench`.
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..metrics import qps_recall_auc
from .archive import Archive, Candidate, write_json
from .build import build_kernel
from .layout import Layout
from .measure import (
    DEFAULT_EFS,
    Bench,
    MeasurementFailed,
    Settings,
    _fingerprint,
    _settings_from,
    machine_fingerprint,
)
from .sandbox import LocalPool, Pool, Protection, require_protection
from .templates import SLOTS, Proposal, TemplateProposer

__all__ = ["DEFAULT_EFS", "CrinnRun", "MeasurementFailed", "Settings", "machine_fingerprint"]


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
        self.bench = Bench(self.root, self.settings, self.archive)
        if not stored:
            self.bench.prepare(np.asarray(data, np.float32), seed)
        self.baselines: dict[tuple[str, str], dict[str, Any]] = {}
        self.allow_weak = allow_weak_sandbox
        self.protection: Protection = require_protection(False, allow_weak_sandbox)

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
            curves = self.bench.measure(
                slot, None, self.other_winners(slot), "screen", self.settings.screen_repeats
            )
            self.baselines[key] = {"curve": curves["baseline"], "auc": self.auc(curves["baseline"])}
        return self.baselines[key]

    def gate(
        self,
        curve: Sequence[dict[str, float]],
        baseline: Sequence[dict[str, float]],
        slot: str = "search",
    ) -> str:
        """Correctness gate: recall at every ef within tolerance of the built-in's.
        A layout trades recall at a given ef for speed (its codes order the beam),
        which the AUC weighs; it must still reach the built-in's best recall."""
        tol = self.settings.recall_tolerance
        if slot == "layout":
            mine, ref = max(p["recall"] for p in curve), max(p["recall"] for p in baseline)
            if mine < ref - tol:
                return f"short of recall: at most {mine:.4f}, the built-in layout reaches {ref:.4f}"
            return ""
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
        # node: the machine this runs on (a pool may place it on any node of a cluster).
        cand = Candidate(cid, proposal.slot, proposal.origin, config=proposal.config,
                         prompt=proposal.prompt, iteration=iteration,
                         node=machine_fingerprint())  # fmt: skip
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
        layout = None
        if proposal.slot == "layout":
            try:
                if proposal.config is None:
                    raise ValueError("no configuration (the layout slot compiles no code)")
                layout = Layout.from_config(proposal.config)
            except ValueError as e:
                cand.reason = f"not a layout: {e}"
                self.archive.save(cand)
                return cand
            try:
                _, cand.build_seconds = self.bench.layout_file(layout, "screen")
            except (RuntimeError, ValueError) as e:
                cand.reason = str(e)
                self.archive.save(cand)
                return cand
            library: list[str] = []
        else:
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
            library = [str(built.library)]
        t0 = time.perf_counter()
        others = self.other_winners(proposal.slot)
        baseline = self.baseline(proposal.slot)
        try:
            repeats = self.settings.screen_repeats
            curves = self.bench.measure(
                proposal.slot, [*others, *library], others, "screen", repeats, layout=layout
            )
        except MeasurementFailed as e:
            cand.reason = str(e)
        else:
            cand.curve = curves["candidate"]
            cand.reason = self.gate(cand.curve, curves["baseline"], proposal.slot)
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
        # A kernel finalist adds its library; a layout finalist its layout.
        lib = {c.id: [] if slot == "layout" else [str(self.archive.folder(c.id) / "kernel.so")]
               for c in candidates}  # fmt: skip
        layouts: dict[str, Layout | None] = dict.fromkeys(lib)
        failed: dict[str, str] = {}
        if slot == "layout":
            for c in candidates:
                try:  # the archive's record, read back from disk
                    layouts[c.id] = Layout.from_config(c.config or {})
                except ValueError as e:
                    failed[c.id] = f"not a layout: {e}"
        ratios: dict[str, list[float]] = {c.id: [] for c in candidates}
        curves: dict[str, list[dict[str, float]]] = {}
        base_aucs: list[float] = []
        base_curve: list[dict[str, float]] = []
        for _ in range(s.final_repeats):
            for c in candidates:
                if c.id in failed:
                    continue
                try:
                    result = self.bench.measure(
                        slot, [*others, *lib[c.id]], others, "full", 1, layout=layouts[c.id]
                    )
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
                reason = self.gate(curves[c.id], base_curve, slot)
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
            if slot == "layout":
                raise ValueError("the layout slot takes template proposers only (it compiles "
                                 "no code)")  # fmt: skip
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
    from .._progress import progress_bar

    bar = progress_bar(total, enabled, desc, unit="kernel")
    if bar is not None and done:
        bar.update(min(done, total))
    return bar
