"""Rewards: scores that the CRINN loop and the RL trainers optimise.

`recall_at_k`, `qps_recall_auc` and `qps_at_recall` score ANN search (numpy only); the
Embed-RL rewards (`format_reward`, `alignment_reward`, `outcome_reward`, and as TRL reward
functions `FormatReward`, `AlignmentReward`, `OutcomeReward` and their weighted sum
`EmbedRLReward`) score a reasoner's evidence and load on first use; the dataset columns
they read: `evidex.rewards.columns`.
"""

from __future__ import annotations

from typing import Any

from .ann import contrastive_rewards, qps_at_recall, qps_recall_auc, recall_at_k

_EMBEDRL = (
    "AlignmentReward",
    "EmbedRLReward",
    "FormatReward",
    "OutcomeReward",
    "alignment_reward",
    "evidence_text",
    "format_reward",
    "outcome_reward",
    "outcome_reward_index",
)

__all__ = [
    "contrastive_rewards",
    "qps_at_recall",
    "qps_recall_auc",
    "recall_at_k",
    *_EMBEDRL,
]


def __getattr__(name: str) -> Any:
    if name in _EMBEDRL:
        from . import embedrl

        return getattr(embedrl, name)
    raise AttributeError(f"module 'evidex.rewards' has no attribute {name!r}")
