"""The main job: `evidex demo` on real GloVe vectors (small sizes here)."""

from __future__ import annotations

import re

import pytest

from evidex.cli import main


@pytest.mark.parametrize("extra", [[], ["--quantization", "sq8"]])
def test_demo_prints_recall_and_qps(capsys, extra) -> None:
    assert main(["demo", "--n", "3000", "--queries", "30", "--ef", "16", "128", *extra]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+(\d+)\s+([0-9.]+)\s+(\d+)\s+(\d+)$", out, re.M)
    assert [int(r[0]) for r in rows] == [16, 128]
    recalls = [float(r[1]) for r in rows]
    assert recalls[1] >= 0.95 and recalls[1] >= recalls[0]
    assert all(int(r[2]) > 0 and int(r[3]) > 0 for r in rows)


def test_demo_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--quantization", "pq"])
