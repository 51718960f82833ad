"""Hostile index files with valid checksums (fuzz_index_files.py), each loaded every
way a file can be in a child process: no crash, no hang, no MemoryError, no
unexpected exception, and loading never grows memory by more than a small
multiple of the file (plus fixed costs). 500 cases in CI, 10,000 under ``slow``."""

from __future__ import annotations

import pytest
from fuzz_index_files import run


def _check(report) -> None:
    assert report.failures == [], report.failures[:10]
    assert report.crashes == report.hangs == report.memory_errors == report.unexpected == 0
    assert report.cases > 0 and report.loaded > 0  # some mutations are valid files
    assert report.worst_peak_kib * 1024 <= 64 * report.largest_file + (4 << 20)


def test_five_hundred_hostile_files() -> None:
    _check(run(500, seed=0))


@pytest.mark.slow
def test_ten_thousand_hostile_files() -> None:
    report = run(10_000, seed=1)
    print(report)
    _check(report)
