"""Recall against brute force, per space, size and dimension (odd dims stress SIMD tails)."""

from __future__ import annotations

import numpy as np
import pytest

import evidex
from conftest import clustered, recall_at_k


@pytest.mark.parametrize("space", ["l2", "ip", "cosine"])
@pytest.mark.parametrize(("n", "dim"), [(300, 3), (2_000, 50), (5_000, 129), (3_000, 17)])
def test_recall_against_brute_force(space: str, n: int, dim: int) -> None:
    data = clustered(n, dim, seed=dim)
    queries = clustered(100, dim, seed=dim + 1)
    if space == "ip":
        # Inner product as used in practice: embeddings of similar norm.
        rng = np.random.default_rng(dim)
        data /= np.linalg.norm(data, axis=1, keepdims=True) / rng.uniform(0.9, 1.1, (n, 1))
    index = evidex.HNSWIndex(dim, space, M=16, ef_construction=100, max_elements=n)
    index.add(data)
    ids, dist = index.search(queries, k=10, ef=400)
    true_ids, true_dist = evidex.exact_knn(data, queries, 10, space)
    # Inner product is no metric, so graph search finds less of it (hnswlib alike).
    assert recall_at_k(ids, true_ids, 10) >= (0.9 if space == "ip" else 0.95)
    # Distances are the space's own convention and sorted nearest first.
    assert np.all(np.diff(dist, axis=1) >= -1e-6)
    same = ids[:, 0] == true_ids[:, 0]
    assert same.mean() >= 0.85
    np.testing.assert_allclose(dist[same, 0], true_dist[same, 0], rtol=1e-4, atol=1e-4)


def test_distance_conventions() -> None:
    a = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], np.float32)
    q = np.array([3.0, 0.0, 0.0], np.float32)
    for space, expected in [("l2", [4.0, 13.0]), ("ip", [1 - 3.0, 1.0]), ("cosine", [0.0, 1.0])]:
        index = evidex.HNSWIndex(3, space)
        index.add(a, [10, 20])
        ids, dist = index.search(q, k=2)
        order = np.argsort(expected)
        np.testing.assert_array_equal(ids, np.array([10, 20])[order])
        np.testing.assert_allclose(dist, np.sort(expected), atol=1e-6)


def test_exact_search_when_ef_covers_everything() -> None:
    data = clustered(500, 24)
    index = evidex.HNSWIndex(24, "l2", max_elements=500)
    index.add(data)
    ids, _ = index.search(data[:50], k=5, ef=500)
    true_ids, _ = evidex.exact_knn(data, data[:50], 5, "l2")
    np.testing.assert_array_equal(ids, true_ids)


@pytest.mark.parametrize("quantization", [None, "sq8", "rabitq"])
def test_long_answers_come_back_in_order_with_their_own_distances(
    quantization: str | None,
) -> None:
    """k in the hundreds: the beam holds more than 128 entries, where it places
    a new entry by binary search rather than by counting. (Not exactness: an
    HNSW graph may leave a node unreachable, even at ef = n.)"""
    data = clustered(1_500, 16, seed=11)
    index = evidex.HNSWIndex(16, "l2", quantization=quantization, seed=2)
    index.add(data, num_threads=1)
    ids, dist = index.search(data[:20], k=300, ef=1_500, num_threads=1)
    assert (ids >= 0).all()
    assert np.all(np.diff(dist, axis=1) >= 0)
    own = ((data[ids] - data[:20, None, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(dist, own, rtol=1e-4, atol=1e-3)
    assert all(len(set(row.tolist())) == 300 for row in ids)
    true_ids, _ = evidex.exact_knn(data, data[:20], 300, "l2")
    assert recall_at_k(ids, true_ids, 300) > 0.97


def test_single_thread_with_seed_is_deterministic() -> None:
    data = clustered(2_000, 16)
    results = []
    for _ in range(2):
        index = evidex.HNSWIndex(16, "l2", seed=7)
        index.add(data, num_threads=1)
        results.append(index.to_bytes())
    assert results[0] == results[1]
    other = evidex.HNSWIndex(16, "l2", seed=8)
    other.add(data, num_threads=1)
    assert other.to_bytes() != results[0]


def test_parallel_build_quality_matches_serial() -> None:
    data = clustered(4_000, 32)
    queries = clustered(100, 32, seed=5)
    truth, _ = evidex.exact_knn(data, queries, 10)
    recalls = []
    for threads in (1, 2):
        index = evidex.HNSWIndex(32, "l2")
        index.add(data, num_threads=threads)
        recalls.append(recall_at_k(index.search(queries, 10, ef=64)[0], truth, 10))
    assert recalls[1] >= recalls[0] - 0.02


def test_single_query_and_batch_agree() -> None:
    data = clustered(1_000, 8)
    index = evidex.HNSWIndex(8, "cosine")
    index.add(data)
    batch_ids, batch_dist = index.search(data[:20], k=3)
    for i in range(20):
        ids, dist = index.search(data[i], k=3)
        assert ids.shape == (3,)
        np.testing.assert_array_equal(ids, batch_ids[i])
        np.testing.assert_allclose(dist, batch_dist[i])


def test_stats_report_counts_levels_and_work() -> None:
    data = clustered(3_000, 16)
    index = evidex.HNSWIndex(16, "l2")
    index.add(data)
    index.search(data[:10], k=5)
    s = index.stats()
    assert s["count"] == 3_000 and s["deleted"] == 0
    assert sum(s["level_counts"]) == 3_000 and len(s["level_counts"]) == s["max_level"] + 1
    assert s["memory_bytes"] >= 3_000 * 16 * 4
    assert s["last_search_queries"] == 10
    assert 10 * 5 <= s["last_search_distance_computations"] < 10 * 3_000
    assert s["simd_level"] == evidex.simd_level()
    # Hops: at least one expansion per query and fewer than the distances, and the
    # layout of each storage mode for limit analyses.
    assert 10 <= s["last_search_hops"] < s["last_search_distance_computations"]
    assert s["last_search_hops_per_query"] == s["last_search_hops"] / 10
    assert s["node_bytes"] >= 16 * 4 + (2 * 16 + 1) * 4 and s["code_bytes"] == 0
    assert s["pq4_block_bytes"] == s["edge_group_codes"] == 0
    index.search(data[:4], k=5, filter=np.arange(100))  # hops count k-NN searches only
    assert index.stats()["last_search_hops"] == 0
    for quantization, key in (("sq8", "code_bytes"), ("pq4", "pq4_block_bytes")):
        q_index = evidex.HNSWIndex(16, "l2", quantization=quantization)
        q_index.add(data[:600])
        q_index.search(data[:5], k=5)
        q_stats = q_index.stats()
        assert q_stats[key] > 0 and q_stats["last_search_hops"] >= 5
        assert q_stats["edge_group_codes"] == (32 if quantization == "pq4" else 0)  # M 16
