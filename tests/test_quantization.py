"""SQ8 traversal: recall near float32, exact re-ranked distances, persistence, errors."""

from __future__ import annotations

import numpy as np
import pytest

import evidex
from conftest import clustered, recall_at_k


@pytest.mark.parametrize("space", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("dim", [3, 50, 129])
def test_sq8_recall_close_to_float32(space: str, dim: int) -> None:
    data = clustered(3_000, dim, seed=dim)
    queries = clustered(100, dim, seed=dim + 7)
    if space == "ip":
        data /= np.linalg.norm(data, axis=1, keepdims=True)
    truth, true_dist = evidex.exact_knn(data, queries, 10, space)
    recalls = {}
    for quant in (None, "sq8"):
        index = evidex.HNSWIndex(dim, space, quantization=quant, seed=1)
        index.add(data)
        ids, dist = index.search(queries, k=10, ef=300)
        recalls[quant] = recall_at_k(ids, truth, 10)
        # Re-ranking makes every returned distance the exact float32 one.
        same = ids[:, 0] == truth[:, 0]
        np.testing.assert_allclose(dist[same, 0], true_dist[same, 0], rtol=1e-4, atol=1e-4)
    assert recalls["sq8"] >= recalls[None] - 0.03
    assert recalls["sq8"] >= 0.85


def test_sq8_round_trip_and_properties(tmp_path) -> None:
    data = clustered(1_000, 20)
    index = evidex.HNSWIndex(20, "l2", quantization="sq8")
    assert index.quantization == "sq8"
    index.add(data)
    want = index.search(data[:20], k=5)
    for loaded in (
        evidex.HNSWIndex.from_bytes(index.to_bytes()),
        _saved(index, tmp_path / "q.evx"),
        evidex.HNSWIndex.load(tmp_path / "q.evx", mmap=True),
    ):
        assert loaded.quantization == "sq8"
        got = loaded.search(data[:20], k=5)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    loaded.add(clustered(10, 20, seed=3))  # keeps the trained ranges
    assert len(loaded) == 1_010
    assert evidex.HNSWIndex(20).quantization is None


def _saved(index: evidex.HNSWIndex, path) -> evidex.HNSWIndex:
    index.save(path)
    return evidex.HNSWIndex.load(path)


def test_sq8_corruption_detected() -> None:
    index = evidex.HNSWIndex(8, "cosine", quantization="sq8")
    index.add(clustered(200, 8))
    data = index.to_bytes()
    for pos in np.random.default_rng(0).integers(256, len(data), 100).tolist():
        damaged = bytearray(data)
        damaged[pos] ^= 0x10
        with pytest.raises(evidex.CorruptIndexError):
            evidex.HNSWIndex.from_bytes(bytes(damaged))


def test_explicit_training_and_errors() -> None:
    sample = clustered(500, 6)
    index = evidex.HNSWIndex(6, "l2", quantization="sq8")
    index.train(sample)
    # Vectors outside the trained range clamp during traversal; re-ranking still
    # finds them by their exact distance.
    far = np.full((1, 6), 1e3, np.float32)
    index.add(np.concatenate([sample, far]))
    ids, dist = index.search(far[0], k=1)
    assert ids[0] == 500 and dist[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="precede the first add"):
        index.train(sample)
    with pytest.raises(ValueError, match="at least one vector"):
        evidex.HNSWIndex(6, quantization="sq8").train(np.zeros((0, 6)))
    with pytest.raises(ValueError, match="unknown quantization"):
        evidex.HNSWIndex(6, quantization="pq")


def test_sq8_with_filters_and_deletions() -> None:
    data = clustered(2_000, 16)
    index = evidex.HNSWIndex(16, "l2", quantization="sq8")
    index.add(data)
    index.delete(np.arange(0, 2_000, 2))
    ids, _ = index.search(data[:30], k=5, ef=100)
    assert (ids % 2 == 1).all()
    ids, _ = index.search(data[:30], k=5, ef=100, filter=np.arange(1, 2_000, 4))
    assert (ids % 4 == 1).all()
