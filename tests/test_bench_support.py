"""The benchmark's data plumbing: fvecs/ivecs reading and recall counting."""

from __future__ import annotations

import numpy as np
import pytest

from bench.datasets import read_fvecs


def _write_vecs(path, rows: np.ndarray) -> None:
    dim = rows.shape[1]
    out = np.empty((rows.shape[0], dim + 1), dtype=np.int32)
    out[:, 0] = dim
    out[:, 1:] = rows.view(np.int32) if rows.dtype == np.float32 else rows
    out.tofile(path)


def test_fvecs_and_ivecs_round_trip(tmp_path) -> None:
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    _write_vecs(tmp_path / "a.fvecs", x)
    np.testing.assert_array_equal(read_fvecs(str(tmp_path / "a.fvecs")).view(np.float32), x)
    ids = np.arange(12, dtype=np.int32).reshape(3, 4)
    _write_vecs(tmp_path / "a.ivecs", ids)
    np.testing.assert_array_equal(read_fvecs(str(tmp_path / "a.ivecs")), ids)


def test_fvecs_rejects_damaged_files(tmp_path) -> None:
    (tmp_path / "empty.fvecs").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_fvecs(str(tmp_path / "empty.fvecs"))
    x = np.ones((3, 4), np.float32)
    _write_vecs(tmp_path / "t.fvecs", x)
    (tmp_path / "t.fvecs").write_bytes((tmp_path / "t.fvecs").read_bytes()[:-4])
    with pytest.raises(ValueError, match="not a valid"):
        read_fvecs(str(tmp_path / "t.fvecs"))
