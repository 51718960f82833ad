"""Eight threads doing everything to one index at once (stress_index.py): short in CI,
ten minutes under the ``slow`` marker. Every invariant is checked, not just "no crash"."""

from __future__ import annotations

import pytest
from stress_index import run_stress


@pytest.mark.parametrize(
    ("space", "quantization", "seconds"),
    [("l2", None, 12), ("cosine", "sq8", 8), ("l2", "pq4", 8), ("cosine", "rabitq", 8)],
)
def test_eight_threads_doing_everything_keep_every_invariant(
    tmp_path, space, quantization, seconds
) -> None:
    report = run_stress(seconds, tmp_path, space=space, quantization=quantization)
    assert report.saves > 0 and report.searches > 0 and report.counts.get("delete", 0) > 0
    assert report.counts.get("re-entrant filter", 0) > 0
    assert report.counts.get("refine_graph", 0) > 0


@pytest.mark.slow
@pytest.mark.parametrize("space", ["l2", "cosine"])
def test_eight_threads_for_ten_minutes(tmp_path, space) -> None:
    report = run_stress(
        300, tmp_path, space=space, quantization="sq8" if space == "cosine" else None
    )
    print(report)
    assert report.operations > 10_000
