"""Scores of approximate nearest-neighbour search: recall@k, and CRINN's area under
the QPS-recall curve and QPS at a recall (numpy only; used by the kernel self-test,
the benchmarks, the datasets, the CRINN loop and the rewards)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int | None = None) -> float:
    """Mean recall@k: the share of each query's `k` true neighbours (``truth[:, :k]``)
    among its first `k` results (``found[:, :k]``; -1 for a missing result).

    A result repeated in a row counts once.
    """
    truth = np.asarray(truth)
    k = truth.shape[1] if k is None else k
    found = np.asarray(found)[:, :k]
    truth = truth[:, :k]
    if found.shape[0] != truth.shape[0]:
        raise ValueError(f"{found.shape[0]} result rows for {truth.shape[0]} queries")
    if truth.size == 0:
        return 0.0
    hits = (truth[:, :, None] == found[:, None, :]).any(axis=2).sum()
    return float(hits) / truth.size


def _frontier(recalls: Sequence[float], qps: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The Pareto frontier sorted by recall: the points that no other point beats on
    both recall and QPS (a noisy slow point never lowers the curve)."""
    r = np.asarray(recalls, dtype=np.float64)
    q = np.asarray(qps, dtype=np.float64)
    if r.shape != q.shape or r.ndim != 1:
        raise ValueError("recalls and qps must be 1-D sequences of equal length")
    if r.size == 0:
        raise ValueError("the curve has no points")
    if not (np.isfinite(r).all() and np.isfinite(q).all()) or (q < 0).any():
        raise ValueError("recalls and qps must be finite, qps non-negative")
    order = np.lexsort((-q, r))  # by recall, the faster first among equal recalls
    r, q = r[order], q[order]
    # Drop dominated points: some other point is at least as accurate and faster.
    better_after = np.append(np.maximum.accumulate(q[::-1])[::-1][1:], -np.inf)
    keep = q > better_after
    return r[keep], q[keep]


def qps_at_recall(recalls: Sequence[float], qps: Sequence[float], target: float) -> float:
    """QPS at `target` recall, interpolated linearly in log QPS between the frontier's
    points around it; NaN when the curve never reaches the target."""
    r, q = _frontier(recalls, qps)
    if target > r[-1]:
        return float("nan")
    if target <= r[0]:
        return float(q[0])
    hi = int(np.searchsorted(r, target, side="left"))
    lo = hi - 1
    if r[hi] == r[lo]:
        return float(q[hi])
    t = (target - r[lo]) / (r[hi] - r[lo])
    lq = np.log(np.maximum(q[[lo, hi]], 1e-12))
    return float(np.exp(lq[0] + t * (lq[1] - lq[0])))


def qps_recall_auc(
    recalls: Sequence[float],
    qps: Sequence[float],
    recall_range: tuple[float, float] = (0.85, 0.95),
) -> float:
    """Area under the QPS-recall curve over `recall_range` (CRINN's reward).

    The curve is the Pareto frontier, linear between measured points; the part of
    the range the curve does not reach contributes zero, so a candidate that never
    reaches the range scores 0.
    """
    lo, hi = recall_range
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"recall_range must satisfy 0 <= lo < hi <= 1, got {recall_range}")
    r, q = _frontier(recalls, qps)
    if r[-1] <= lo:
        return 0.0
    grid_r = np.concatenate([[lo], r[(r > lo) & (r < hi)], [min(hi, r[-1])]])
    grid_q = np.interp(grid_r, r, q)
    # Below the first measured recall the best QPS is the first point's (frontier).
    grid_q = np.where(grid_r < r[0], q[0], grid_q)
    return float(np.trapezoid(grid_q, grid_r))
