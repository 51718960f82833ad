"""CRINN's contrastive rewards over ANN scores; the scores themselves (recall@k, the
area under the QPS-recall curve) live in :mod:`evidex.metrics` and are re-exported here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..metrics import qps_at_recall, qps_recall_auc, recall_at_k

__all__ = ["contrastive_rewards", "qps_at_recall", "qps_recall_auc", "recall_at_k"]


def contrastive_rewards(scores: Sequence[float]) -> list[float]:
    """CRINN's contrastive reward of each variant against the others of its round.

    Variant i gets the mean over the other variants j of the relative gain
    ``(s_i - s_j) / max(s_i, s_j)`` (0 when both are 0), so rewards lie in
    [-1, 1], sum to zero, and depend on score ratios, not on the machine's
    absolute speed. A single variant gets 0.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if not np.isfinite(s).all() or (s < 0).any():
        raise ValueError("scores must be finite and non-negative (AUCs)")
    n = len(s)
    if n < 2:
        return [0.0] * n
    top = np.maximum(s[:, None], s[None, :])
    gain = np.divide(s[:, None] - s[None, :], top, out=np.zeros((n, n)), where=top > 0)
    return (gain.sum(1) / (n - 1)).tolist()
