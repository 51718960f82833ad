"""SQ8, PQ4 and RaBitQ (fast-scan) traversal: recall near float32, exact distances,
persistence, errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import evidex
from conftest import clustered, exact_distances, level0_degrees, live_links_to_deleted, recall_at_k
from evidex import _core


@pytest.mark.parametrize("quant", ["sq8", "pq4", "rabitq"])
@pytest.mark.parametrize("space", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("dim", [3, 50, 129])
def test_quantised_recall_close_to_float32(quant: str, space: str, dim: int) -> None:
    data = clustered(3_000, dim, seed=dim)
    queries = clustered(100, dim, seed=dim + 7)
    if space == "ip":
        data /= np.linalg.norm(data, axis=1, keepdims=True)
    truth, true_dist = evidex.exact_knn(data, queries, 10, space)
    recalls = {}
    for q in (None, quant):
        index = evidex.HNSWIndex(dim, space, quantization=q, seed=1)
        index.add(data, num_threads=1)  # one thread: the same graph every run
        ids, dist = index.search(queries, k=10, ef=300)
        recalls[q] = recall_at_k(ids, truth, 10)
        # Every returned distance is the exact float32 one, found or not.
        same = ids[:, 0] == truth[:, 0]
        np.testing.assert_allclose(dist[same, 0], true_dist[same, 0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(
            dist, exact_distances(data, queries, ids, space), rtol=1e-4, atol=1e-4
        )
        assert (np.diff(dist, axis=1) >= 0).all()
    # PQ4 and RaBitQ steer by estimates of the edges: at the same beam a little
    # behind, they pay off in time per hop (bench/RESULTS.md).
    slack = 0.03 if quant == "sq8" else 0.08
    assert recalls[quant] >= recalls[None] - slack
    assert recalls[quant] >= 0.85


@pytest.mark.parametrize("quant", ["sq8", "pq4", "rabitq"])
def test_quantised_round_trip_and_properties(quant: str, tmp_path) -> None:
    data = clustered(1_000, 20)
    index = evidex.HNSWIndex(20, "l2", quantization=quant)
    assert index.quantization == quant
    index.add(data)
    want = index.search(data[:20], k=5)
    for loaded in (
        evidex.HNSWIndex.from_bytes(index.to_bytes()),
        _saved(index, tmp_path / "q.evx"),
        evidex.HNSWIndex.load(tmp_path / "q.evx", mmap=True),
    ):
        assert loaded.quantization == quant
        assert loaded.pq_dims == index.pq_dims
        got = loaded.search(data[:20], k=5)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    loaded.add(clustered(10, 20, seed=3))  # keeps the trained ranges
    assert len(loaded) == 1_010
    assert evidex.HNSWIndex(20).quantization is None


@pytest.mark.parametrize("quant", ["pq4", "rabitq"])
@pytest.mark.parametrize("space", ["l2", "cosine"])
def test_fast_scan_rows_and_mapped_blocks_hold_the_same_graph(quant, space, tmp_path) -> None:
    """In memory of its own a fast-scan node shares its row with its block of
    neighbour codes; a mapped file keeps nodes and blocks apart. Both layouts
    save the same bytes, answer alike, and grow (a mapping then moves into rows)
    into the same index."""
    data = clustered(1_500, 24, seed=5)
    more = clustered(300, 24, seed=6)
    index = evidex.HNSWIndex(24, space, quantization=quant, seed=2)
    index.add(data, num_threads=1)
    index.save(tmp_path / "g.evx")
    rows = evidex.HNSWIndex.load(tmp_path / "g.evx")
    mapped = evidex.HNSWIndex.load(tmp_path / "g.evx", mmap=True)
    saved = index.to_bytes()
    assert rows.to_bytes() == saved and mapped.to_bytes() == saved
    want = index.search(more[:50], k=10, ef=64)
    for loaded in (rows, mapped):
        got = loaded.search(more[:50], k=10, ef=64)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    for grown in (index, rows, mapped):
        grown.add(more, num_threads=1)  # past capacity: the rows are reallocated
    # (The original grew from another capacity, which its header records.)
    assert mapped.to_bytes() == rows.to_bytes()
    want = index.search(data[:50], k=10, ef=64)
    for grown in (rows, mapped):
        got = grown.search(data[:50], k=10, ef=64)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def _saved(index: evidex.HNSWIndex, path) -> evidex.HNSWIndex:
    index.save(path)
    return evidex.HNSWIndex.load(path)


@pytest.mark.parametrize("quant", ["sq8", "pq4", "rabitq"])
def test_quantised_corruption_detected(quant: str) -> None:
    index = evidex.HNSWIndex(8, "cosine", quantization=quant)
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


@pytest.mark.parametrize("quant", ["sq8", "pq4", "rabitq"])
def test_quantised_with_filters_and_deletions(quant: str) -> None:
    data = clustered(2_000, 16)
    index = evidex.HNSWIndex(16, "l2", quantization=quant)
    index.add(data)
    index.delete(np.arange(0, 2_000, 2))
    ids, _ = index.search(data[:30], k=5, ef=100)
    assert (ids % 2 == 1).all()
    ids, _ = index.search(data[:30], k=5, ef=100, filter=np.arange(1, 2_000, 4))
    assert (ids % 4 == 1).all()


def _fastscan_reference(block: np.ndarray, lut: np.ndarray) -> np.ndarray:
    nsub = len(block) // 16
    b = block.reshape(nsub, 16).astype(np.int64)
    t = lut.reshape(nsub, 16).astype(np.int64)
    codes = np.concatenate([b & 15, b >> 4], axis=1)  # [nsub, 32]
    return np.take_along_axis(t, codes, axis=1).sum(axis=0)


def test_pq4_options_and_errors() -> None:
    assert evidex.HNSWIndex(50, quantization="pq4").pq_dims == 2
    assert evidex.HNSWIndex(384, quantization="pq4").pq_dims == 4
    assert evidex.HNSWIndex(1, quantization="pq4").pq_dims == 1
    assert evidex.HNSWIndex(12, quantization="pq4", pq_dims=5).pq_dims == 5
    assert evidex.HNSWIndex(12).pq_dims == 0
    with pytest.raises(ValueError, match="pq_dims must be at most dim"):
        evidex.HNSWIndex(8, quantization="pq4", pq_dims=9)
    with pytest.raises(ValueError, match="applies to quantization='pq4' only"):
        evidex.HNSWIndex(8, quantization="sq8", pq_dims=2)
    with pytest.raises(ValueError, match="pq_dims"):
        evidex.HNSWIndex(8, quantization="pq4", pq_dims=-1)
    with pytest.raises(ValueError, match="4096"):
        evidex.HNSWIndex(10_000, quantization="pq4", pq_dims=2)


@pytest.mark.parametrize("dim, pq_dims", [(7, 3), (33, 0), (130, 0), (16, 16)])
def test_pq4_uneven_subspaces_and_explicit_training(dim: int, pq_dims: int) -> None:
    # Subspaces that do not divide dim, padding subspaces, one subspace of everything.
    data = clustered(1_500, dim, seed=dim)
    index = evidex.HNSWIndex(dim, "l2", quantization="pq4", pq_dims=pq_dims, seed=2)
    index.train(data[:700])
    index.add(data)
    truth, _ = evidex.exact_knn(data, data[:50], 10, "l2")
    ids, dist = index.search(data[:50], k=10, ef=200)
    np.testing.assert_allclose(
        dist, exact_distances(data, data[:50], ids, "l2"), rtol=1e-4, atol=1e-3
    )
    # One 16-level subspace for all 16 dimensions steers coarsely, yet steers.
    assert recall_at_k(ids, truth, 10) >= (0.9 if pq_dims < dim else 0.5)


def test_pq4_updates_and_growth_keep_blocks_consistent() -> None:
    # Updates re-encode a node and re-link it; growth moves codes and blocks.
    rng = np.random.default_rng(4)
    data = clustered(800, 12, seed=4)
    index = evidex.HNSWIndex(12, "cosine", quantization="pq4", max_elements=100, seed=3)
    index.add(data)
    moved = rng.choice(800, 200, replace=False)
    data[moved] = clustered(200, 12, seed=5)
    index.add(data[moved], moved)
    truth, _ = evidex.exact_knn(
        data / np.linalg.norm(data, axis=1, keepdims=True), data[:100], 10, "cosine"
    )
    ids, dist = index.search(data[:100], k=10, ef=200)
    assert recall_at_k(ids, truth, 10) >= 0.9
    np.testing.assert_allclose(dist, exact_distances(data, data[:100], ids, "cosine"), atol=1e-4)


@pytest.mark.parametrize("quant", ["pq4", "rabitq"])
@pytest.mark.parametrize("space", ["l2", "cosine"])
def test_fast_scan_wide_beam_is_exact_and_returns_each_node_once(space: str, quant: str) -> None:
    # The PQ4 beam may hold a node several times (met from several parents, each
    # with its own estimate) and expands it once: a beam wider than every such
    # entry expands every reachable node, so the answer is exact, each id once.
    data = clustered(400, 16, seed=11)
    queries = clustered(30, 16, seed=12)
    index = evidex.HNSWIndex(16, space, quantization=quant, M=8, seed=2)
    index.add(data, num_threads=1)
    truth, true_dist = evidex.exact_knn(data, queries, 20, space)
    ids, dist = index.search(queries, k=20, ef=20_000)
    np.testing.assert_array_equal(ids, truth)
    np.testing.assert_allclose(dist, true_dist, rtol=1e-4, atol=1e-4)
    small_ids, _ = index.search(queries, k=20, ef=20)
    for row in small_ids:
        live = row[row >= 0]
        assert len(set(live.tolist())) == len(live)


@pytest.mark.parametrize("quant", ["pq4", "rabitq"])
def test_fast_scan_answers_k_when_k_equals_ef(quant: str) -> None:
    # Copies of a node in the beam (one per parent) took slots: k = ef = 300 on
    # 1,500 vectors came back with ~75 ids and the rest -1 / inf.
    data = clustered(1_500, 16, seed=11)
    index = evidex.HNSWIndex(16, "l2", quantization=quant, seed=2)
    index.add(data)
    for k in (100, 300):
        ids, dist = index.search(data[:20], k=k, ef=k)
        assert (ids >= 0).all() and np.isfinite(dist).all()
        assert all(len(set(row.tolist())) == k for row in ids)
        assert np.all(np.diff(dist, axis=1) >= 0)
        truth, _ = evidex.exact_knn(data, data[:20], k, "l2")
        assert recall_at_k(ids, truth, k) > 0.7


@pytest.mark.parametrize("quant", [None, "rabitq"])
def test_visited_tags_survive_their_epoch_wrapping(quant: str | None) -> None:
    # A visited list's 16-bit epoch moves by two per search (visited, and queued
    # for the fast-scan beam) and wraps every 32,767 searches on a thread. Query a
    # searched, then 32,766 searches far from it, then a again: exactly one wrap
    # lies between a's two searches, at the same epoch, so tags a left behind
    # would read as "visited" the second time unless the wrap cleared them.
    data = clustered(2_000, 8, seed=3)
    index = evidex.HNSWIndex(8, "l2", quantization=quant, M=8, seed=1)
    index.add(data, num_threads=1)
    a = data[0]
    b = data[np.argmax(((data - a) ** 2).sum(axis=1))]
    queries = np.vstack([a, np.tile(b, (32_766, 1)), a])
    ids, dist = index.search(queries, k=5, ef=16, num_threads=1)
    np.testing.assert_array_equal(ids[-1], ids[0])
    np.testing.assert_array_equal(dist[-1], dist[0])


@pytest.mark.parametrize("quant", ["pq4", "rabitq"])
def test_fast_scan_concurrent_adds_and_searches(quant: str) -> None:
    import threading

    data = clustered(3_000, 24, seed=9)
    index = evidex.HNSWIndex(24, "l2", quantization=quant, max_elements=3_000)
    index.add(data[:500])
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for _ in range(60):
                ids, dist = index.search(data[:20], k=5, ef=40)
                live = ids[ids >= 0]
                assert (live < 3_000).all() and np.isfinite(dist[ids >= 0]).all()
                assert (np.diff(dist, axis=1) >= 0).all()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for lo in range(500, 3_000, 250):
        index.add(data[lo : lo + 250], np.arange(lo, lo + 250), num_threads=2)
    for t in threads:
        t.join()
    assert not errors, errors[0]
    ids, _ = index.search(data[:50], k=1, ef=64)
    assert (ids[:, 0] == np.arange(50)).mean() >= 0.98


def test_pq4_hostile_file_with_valid_checksums() -> None:
    """A NaN centroid or an impossible pq_dims, checksums recomputed, is refused."""
    from fuzz_index_files import get, put, reseal

    index = evidex.HNSWIndex(8, "l2", quantization="pq4", M=4, ef_construction=16)
    index.add(clustered(100, 8))
    good = bytearray(index.to_bytes())
    bad = bytearray(good)
    struct.pack_into("<f", bad, get(bad, "quant_offset") + 4 * 5, float("nan"))
    with pytest.raises(evidex.CorruptIndexError, match="centroid"):
        evidex.HNSWIndex.from_bytes(reseal(bad))
    for value in (0, 9, 1 << 40):
        bad = bytearray(good)
        put(bad, "pq_dims", value)
        with pytest.raises(evidex.CorruptIndexError):
            evidex.HNSWIndex.from_bytes(reseal(bad))
    # The codes' nibbles are all valid: a changed code changes estimates, never safety.
    bad = bytearray(good)
    centroid_bytes = 4 * 16 * 2 * 4  # 4 subspaces of 16 centroids of 2 floats
    at = get(bad, "quant_offset") + centroid_bytes + 99 * index.stats()["pq4_block_bytes"]
    bad[at : at + 8] = b"\xff" * 8  # the last block's first codes
    loaded = evidex.HNSWIndex.from_bytes(reseal(bad))
    assert loaded.search(clustered(5, 8), k=3)[0].shape == (5, 3)


@pytest.mark.parametrize("space", ["l2", "ip", "cosine"])
@pytest.mark.parametrize(
    ("quant", "k"), [("sq8", 7), ("pq4", 7), ("rabitq", 7), ("rabitq", 40), ("pq4", 40)]
)
def test_interleaved_batches_match_one_query_at_a_time(space: str, quant: str, k: int) -> None:
    # A batch's queries searched together on a thread, hops taken in turn: the
    # same answers, distance counts and hops as searching them one by one (k =
    # ef: fast-scan searches that come back short run again, inside the group).
    data = clustered(4_000, 24, seed=5)
    queries = clustered(37, 24, seed=6)  # not a multiple of any group size
    index = evidex.HNSWIndex(24, space, quantization=quant, seed=2)
    index.add(data, num_threads=1)
    one_ids = np.stack([index.search(q[None], k=k, ef=40)[0][0] for q in queries])
    one_dist = np.stack([index.search(q[None], k=k, ef=40)[1][0] for q in queries])
    assert (one_ids >= 0).all()
    index.set_search_tuning(interleave=1)
    index.search(queries, k=k, ef=40, num_threads=1)
    counts = (index.stats()["last_search_distance_computations"], index.stats()["last_search_hops"])
    for group in (0, 2, 3, 5, 16):
        index.set_search_tuning(interleave=group)
        for threads in (1, 2):
            ids, dist = index.search(queries, k=k, ef=40, num_threads=threads)
            np.testing.assert_array_equal(ids, one_ids)
            np.testing.assert_array_equal(dist, one_dist)
            stats = index.stats()
            assert (stats["last_search_distance_computations"], stats["last_search_hops"]) == counts
    # k as large as the index: every node, nearest first, in every row.
    small = evidex.HNSWIndex(24, space, quantization=quant)
    small.add(data[:5])
    small.set_search_tuning(interleave=4)
    ids, dist = small.search(queries[:9], k=5, num_threads=1)
    assert (np.sort(ids, axis=1) == np.arange(5)).all()
    assert (np.diff(dist, axis=1) >= 0).all()


def test_interleave_setting_errors_and_fallbacks() -> None:
    data = clustered(2_000, 16, seed=8)
    index = evidex.HNSWIndex(16, "l2", quantization="sq8", seed=3)
    index.add(data, num_threads=1)
    for bad in (-1, 17, 2.5, "2"):
        with pytest.raises((ValueError, TypeError), match="interleave"):
            index.set_search_tuning(interleave=bad)
    # Filters and deletions take the per-query path; answers stay right.
    index.set_search_tuning(interleave=4)
    want = evidex.exact_knn(data[1::2], data[:12], 5, "l2")[0] * 2 + 1
    ids, _ = index.search(data[:12], k=5, ef=200, filter=np.arange(1, 2_000, 2))
    assert recall_at_k(ids, want, 5) >= 0.95
    index.delete(np.arange(0, 2_000, 2))
    ids, _ = index.search(data[:12], k=5, ef=200)
    assert recall_at_k(ids, want, 5) >= 0.95


def test_rabitq_graphs_complete_their_level0_lists() -> None:
    # Each add fills the level-0 lists it touched up to 2 * M (the fast scan
    # scores 32 codes in the time of 20); later adds and updates keep the graph
    # searchable and the lists complete again.
    quant = "rabitq"
    data = clustered(3_000, 16, seed=21)
    index = evidex.HNSWIndex(16, "l2", quantization=quant, M=8, seed=4)
    plain = evidex.HNSWIndex(16, "l2", M=8, seed=4)
    index.add(data[:2_000], num_threads=1)
    plain.add(data[:2_000], num_threads=1)
    assert level0_degrees(plain).mean() < 13  # HNSW's selection leaves lists part full
    assert (level0_degrees(index) == 16).mean() > 0.99
    index.add(data[2_000:], num_threads=2)
    index.add(data[:300] + 0.01, np.arange(300))  # updates
    assert (level0_degrees(index) == 16).mean() > 0.95
    truth, _ = evidex.exact_knn(np.concatenate([data[:300] + 0.01, data[300:]]), data[:100], 10)
    ids, _ = index.search(data[:100], k=10, ef=64)
    assert recall_at_k(ids, truth, 10) >= 0.9


def test_completion_fills_free_slots_with_live_nodes() -> None:
    # After deletes, the next add re-completes the lists it touched from their
    # two-hop neighbourhoods, where deleted nodes still sit: they must not take
    # the free slots (measured: 0.09 of live links lead to deleted nodes after
    # the add; 0.23 without the check; 0.33 before the add).
    data = clustered(2_000, 16, seed=51)
    index = evidex.HNSWIndex(16, "l2", M=8, quantization="rabitq", seed=6)
    index.add(data[:1_500], num_threads=1)
    index.delete(np.arange(0, 1_500, 3))
    before = live_links_to_deleted(index)
    index.add(data[1_500:], num_threads=1)
    assert live_links_to_deleted(index) < 0.5 * before


def test_rabitq_options_and_hostile_files() -> None:
    from fuzz_index_files import get, put, reseal

    index = evidex.HNSWIndex(30, "cosine", quantization="rabitq", M=4, ef_construction=16)
    assert index.quantization == "rabitq" and index.pq_dims == 0
    with pytest.raises(ValueError, match="applies to quantization='pq4' only"):
        evidex.HNSWIndex(30, quantization="rabitq", pq_dims=2)
    with pytest.raises(ValueError, match="rabitq"):
        evidex.HNSWIndex(20_000, quantization="rabitq")
    index.train(clustered(10, 30))  # nothing to learn: accepted, changes nothing
    base = clustered(300, 30)
    index.add(base)
    good = bytearray(index.to_bytes())
    assert get(good, "version") == 6  # M0 8: half groups
    # A NaN scale or offset in a block (checksums recomputed) is refused.
    block_bytes = index.stats()["pq4_block_bytes"]
    for extra in (0, 1):
        bad = bytearray(good)
        # The last block's floats start after its one 16-code group (8 subspaces * 8).
        at = get(bad, "quant_offset") + 299 * block_bytes + 8 * 8 + 4 * 8 * extra
        struct.pack_into("<f", bad, at, float("nan"))
        with pytest.raises(evidex.CorruptIndexError, match="NaN"):
            evidex.HNSWIndex.from_bytes(reseal(bad))
    # Too wide for RaBitQ, RaBitQ in a version-4 file, or half groups called a
    # version-5 file (whose blocks would be read as full groups): refused before
    # allocating.
    for field, value in (("dim", 1 << 20), ("version", 4), ("version", 5)):
        bad = bytearray(good)
        put(bad, field, value)
        with pytest.raises(evidex.CorruptIndexError):
            evidex.HNSWIndex.from_bytes(reseal(bad))
    # Code bits are all valid: changed bits change estimates, never safety.
    bad = bytearray(good)
    at = get(bad, "quant_offset") + 5 * block_bytes
    bad[at : at + 64] = b"\xff" * 64
    loaded = evidex.HNSWIndex.from_bytes(reseal(bad))
    assert loaded.search(clustered(5, 30), k=3)[0].shape == (5, 3)
    # Finite but huge scales and offsets (estimates overflow: the walk stalls
    # early) load too; the codes only steer, so searches still answer all k from
    # the graph in float32, and adds (whose inserts follow the codes) work.
    bad = bytearray(good)
    for node in range(300):
        for j in range(16):  # M0 scales, M0 offsets after the block's one group
            at = get(bad, "quant_offset") + node * block_bytes + 8 * 8 + 4 * j
            struct.pack_into("<f", bad, at, 3e38)
    loaded = evidex.HNSWIndex.from_bytes(reseal(bad))
    more = clustered(100, 30, seed=4)
    loaded.add(more, np.arange(300, 400), num_threads=2)
    queries = clustered(40, 30, seed=5)
    ids, dist = loaded.search(queries, k=5)
    one_by_one = np.stack([loaded.search(q, k=5)[0] for q in queries])
    assert (ids >= 0).all() and (one_by_one >= 0).all()
    everything = np.concatenate([base, more])
    np.testing.assert_allclose(dist, exact_distances(everything, queries, ids, "cosine"), atol=1e-4)


LEGACY = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    "name", ["legacy_rabitq_l2_M8.evx", "legacy_pq4_l2_M4.evx", "legacy_pq4_cosine_M8.evx"]
)
def test_half_groups_and_files_from_before_them(name: str, tmp_path) -> None:
    """A fast-scan graph of at most 16 links per node keeps its edge codes in half
    groups (16 codes; format version 6). Files written before (tests/data, by
    make_legacy_fast_scan.py: full groups of 32, half of them padding) load, mapped
    or not, answer as they did, keep their layout through changes and saves. The
    same graph built today (one thread, as they were) holds smaller blocks and
    answers the same, at a beam narrow enough to follow the codes' estimates; a
    RaBitQ graph's inserts now follow its codes too (a graph of its own), found
    at least as near at every beam."""
    from fuzz_index_files import get

    recorded = json.loads((LEGACY / "legacy_fast_scan.json").read_text())
    queries = np.asarray(recorded["queries"], np.float32)
    want = recorded["answers"][name]
    data = np.load(LEGACY / "legacy_fast_scan_data.npy")
    quant, space, m = name[len("legacy_") : -len(".evx")].split("_")
    legacy_version = 5 if quant == "rabitq" else 3
    assert get(bytearray((LEGACY / name).read_bytes()), "version") == legacy_version
    fresh = evidex.HNSWIndex(24, space, M=int(m[1:]), ef_construction=40, quantization=quant)
    fresh.add(data, num_threads=1)
    assert get(bytearray(fresh.to_bytes()), "version") == 6
    truth, _ = evidex.exact_knn(data, queries, 8, space)
    for mmap in (False, True):
        old = evidex.HNSWIndex.load(LEGACY / name, mmap=mmap)
        assert fresh.stats()["pq4_block_bytes"] < old.stats()["pq4_block_bytes"]
        assert (old.stats()["edge_group_codes"], fresh.stats()["edge_group_codes"]) == (32, 16)
        for ef, answer in want.items():
            ids, dist = old.search(queries, k=8, ef=int(ef))
            np.testing.assert_array_equal(ids, answer["ids"])
            np.testing.assert_allclose(dist, answer["distances"], rtol=1e-6)
            found = fresh.search(queries, k=8, ef=int(ef))[0]
            if quant == "rabitq":
                assert recall_at_k(found, truth, 8) >= recall_at_k(ids, truth, 8)
            else:
                np.testing.assert_array_equal(found, ids)
    # Changes: new vectors (their blocks coded in the old layout), an update, a delete.
    rng = np.random.default_rng(5)
    more = rng.normal(size=(40, 24)).astype(np.float32)
    for index in (old, fresh):
        index.add(more, np.arange(150, 190), num_threads=1)
        index.add(data[:5] + 0.05, np.arange(5), num_threads=1)
        index.delete([7, 160])
    ids, dist = old.search(queries, k=8, ef=8)
    if quant != "rabitq":  # a RaBitQ graph is built its own way today (above)
        np.testing.assert_array_equal(ids, fresh.search(queries, k=8, ef=8)[0])
    assert not np.isin(ids, [7, 160]).any()
    assert not np.isin(fresh.search(queries, k=8, ef=8)[0], [7, 160]).any()
    old.save(tmp_path / "again.evx")
    assert get(bytearray((tmp_path / "again.evx").read_bytes()), "version") == legacy_version
    again = evidex.HNSWIndex.load(tmp_path / "again.evx")
    np.testing.assert_array_equal(again.search(queries, k=8, ef=8)[0], ids)
    np.testing.assert_array_equal(again.search(queries, k=8, ef=8)[1], dist)


@pytest.mark.parametrize("dim", [16, 50, 100, 128, 384])
@pytest.mark.parametrize("space", ["l2", "ip"])
def test_rabitq_edge_codes_match_a_reference(dim: int, space: str) -> None:
    """An edge x -> y is coded by the signs of P(y - x) (byte b, bit j: dimension 8b + j)
    and two factors of RaBitQ's estimator, recomputed here in float64: the coder's
    vectorised loop must keep the same bits on every machine and the sums to rounding."""
    rng = np.random.default_rng(dim)
    for trial in range(20):
        x = rng.normal(size=dim).astype(np.float32)
        y = x.copy() if trial == 0 else (x + rng.normal(scale=0.3, size=dim)).astype(np.float32)
        code, scale, offset, xr, yr = _core.rabitq_edge(x, y, seed=trial, space=space)
        assert xr.shape == yr.shape == (-(-dim // 16) * 16,)
        assert np.isclose(np.linalg.norm(xr), np.linalg.norm(x), rtol=1e-4)  # orthogonal
        r = yr - xr  # float32, as the coder subtracts
        assert code.tolist() == np.packbits(r > 0, bitorder="little").tolist()
        r64, x64 = r.astype(np.float64), xr.astype(np.float64)
        norm2, abs_sum = float(r64 @ r64), float(np.abs(r64).sum())
        sx = float(np.where(r > 0, x64, -x64).sum())
        alpha = norm2 / abs_sum if abs_sum > 0 else 0.0
        w = 2.0 if space == "l2" else 1.0
        want_offset = (norm2 if space == "l2" else -float(x64 @ r64)) + w * alpha * sx
        tol = 1e-4 * (norm2 + np.linalg.norm(x64) * np.sqrt(norm2) + 1e-6)
        assert scale == pytest.approx(w * alpha, rel=1e-4, abs=1e-6)
        assert offset == pytest.approx(want_offset, abs=tol)
        if trial == 0:  # a zero residual: no bits, and it estimates the node's own distance
            assert not code.any() and scale == 0.0 and offset == 0.0


@pytest.mark.parametrize("space", ["l2", "cosine"])
def test_rabitq_inserts_follow_the_codes_to_near_links(space: str) -> None:
    """A RaBitQ insert's level-0 search is steered by the edge codes and measures
    only the nodes it expands, which are its candidates: the lists it leaves hold
    each node's true nearest neighbours at least as often as a float32 graph's
    (whose inserts measure all they score)."""
    from conftest import _level0_rows

    data = clustered(3_000, 64, seed=4)
    nearest = evidex.exact_knn(data, data, 6, space)[0][:, 1:]  # each node's 5, not itself
    shares = {}
    for quant in (None, "rabitq"):
        index = evidex.HNSWIndex(64, space, M=8, ef_construction=64, quantization=quant, seed=3)
        index.add(data, num_threads=1)  # one thread: slots are ids
        head, slots = _level0_rows(index)
        degree = head & 0xFFFF
        shares[quant] = np.mean(
            [np.isin(nearest[i], slots[i, : degree[i]]).mean() for i in range(len(data))]
        )
    assert shares["rabitq"] >= shares[None] > 0.5


@pytest.mark.parametrize("space", ["l2", "cosine", "ip"])
def test_sq8_ranges_forged_huge_never_cut_answers_short(space: str) -> None:
    """Finite but huge sq8 ranges (checksums recomputed) load; the codes' estimates
    overflow and the walk strands, but the codes only steer: every query, batch or
    one by one, gets all k answers from the float32 search, with exact distances."""
    from fuzz_index_files import get, reseal

    data = clustered(800, 30)
    index = evidex.HNSWIndex(30, space, quantization="sq8", M=8)
    index.add(data)
    bad = bytearray(index.to_bytes())
    for d in range(30):  # the per-dimension minimums, then the scales
        struct.pack_into("<f", bad, get(bad, "quant_offset") + 4 * d, 3e38)
    loaded = evidex.HNSWIndex.from_bytes(reseal(bad))
    queries = clustered(40, 30, seed=5)
    ids, dist = loaded.search(queries, k=5)
    one_by_one = np.stack([loaded.search(q, k=5)[0] for q in queries])
    assert (ids >= 0).all() and (one_by_one >= 0).all()
    np.testing.assert_allclose(
        dist, exact_distances(data, queries, ids, space), rtol=1e-4, atol=1e-4
    )
