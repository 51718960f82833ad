"""CRINN's QPS-recall scores: area under the curve and QPS at a recall."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evidex.rewards import qps_at_recall, qps_recall_auc, recall_at_k


def test_auc_of_a_flat_curve_is_width_times_height() -> None:
    assert qps_recall_auc([0.80, 0.99], [100.0, 100.0]) == pytest.approx(0.10 * 100)


def test_auc_integrates_linearly_between_points() -> None:
    recalls, qps = [0.80, 0.90, 1.00], [300.0, 200.0, 100.0]
    # qps(r) = 300 - 1000 (r - 0.8): mean 200 over any range centred on 0.9.
    assert qps_recall_auc(recalls, qps) == pytest.approx(20.0)
    assert qps_recall_auc(recalls, qps, (0.8, 1.0)) == pytest.approx(40.0)
    # A kink at 0.9: 11.25 on [0.85, 0.9] plus 7.5 on [0.9, 0.95].
    assert qps_recall_auc(recalls, [300.0, 200.0, 0.0]) == pytest.approx(18.75)


def test_auc_zero_when_range_not_reached_and_partial_when_half_reached() -> None:
    assert qps_recall_auc([0.5, 0.8], [1000.0, 500.0]) == 0.0
    assert qps_recall_auc([0.5, 0.9], [1000.0, 500.0]) == pytest.approx(
        np.trapezoid([562.5, 500.0], [0.85, 0.9])
    )


def test_dominated_points_do_not_lower_the_frontier() -> None:
    clean = qps_recall_auc([0.8, 0.9, 0.96], [900.0, 600.0, 300.0])
    noisy = qps_recall_auc([0.8, 0.9, 0.91, 0.96], [900.0, 600.0, 10.0, 300.0])
    assert noisy == pytest.approx(clean, rel=0.02)
    assert noisy >= clean


def test_order_of_points_does_not_matter() -> None:
    r, q = [0.99, 0.8, 0.9], [100.0, 900.0, 500.0]
    assert qps_recall_auc(r, q) == qps_recall_auc(sorted(r), [900.0, 500.0, 100.0])


def test_qps_at_recall_interpolates_in_log_space() -> None:
    r, q = [0.9, 1.0], [1000.0, 10.0]
    assert qps_at_recall(r, q, 0.95) == pytest.approx(100.0)
    assert qps_at_recall(r, q, 0.9) == pytest.approx(1000.0)
    assert math.isnan(qps_at_recall([0.5, 0.6], [10.0, 5.0], 0.9))
    assert qps_at_recall([0.5, 0.6], [10.0, 5.0], 0.1) == 10.0


@pytest.mark.parametrize(
    ("recalls", "qps", "rng"),
    [
        ([], [], (0.85, 0.95)),
        ([0.9], [1.0, 2.0], (0.85, 0.95)),
        ([0.9], [np.nan], (0.85, 0.95)),
        ([0.9], [-1.0], (0.85, 0.95)),
        ([0.9], [1.0], (0.95, 0.85)),
        ([0.9], [1.0], (0.5, 1.5)),
    ],
)
def test_bad_curves_raise(recalls, qps, rng) -> None:
    with pytest.raises(ValueError):
        qps_recall_auc(recalls, qps, rng)


def test_recall_at_k_counts_set_overlap_once() -> None:
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 2, 9], [6, 5, 4]])
    assert recall_at_k(found, truth) == pytest.approx(5 / 6)
    assert recall_at_k(found, truth, 1) == pytest.approx(0.0)
    assert recall_at_k(np.array([[1, 1, 1], [-1, -1, 4]]), truth) == pytest.approx(2 / 6)
    assert recall_at_k(np.array([[1, 2, 3, 7]]), np.array([[1, 2, 3, 4]]), 3) == 1.0
    with pytest.raises(ValueError, match="result rows"):
        recall_at_k(found[:1], truth)
