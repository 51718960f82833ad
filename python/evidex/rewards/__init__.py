"""Rewards: scores that the CRINN loop and the RL trainers optimise."""

from .ann import qps_at_recall, qps_recall_auc

__all__ = ["qps_at_recall", "qps_recall_auc"]
