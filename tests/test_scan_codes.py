"""Scan codes and the "coded_scan" filtered-search method (HNSWIndex.build_scan_codes)."""

from __future__ import annotations

import math
import pickle
import struct

import numpy as np
import pytest

import evidex
from conftest import clustered, exact_distances, recall_at_k, run_on_threads
from evidex import _core

N, DIM = 3000, 24
SPACES = ("l2", "cosine", "ip")


def exact(x: np.ndarray, allowed: np.ndarray, q: np.ndarray, k: int, space: str) -> np.ndarray:
    """The k nearest allowed ids of each query, by brute force in float64."""
    xs = x[allowed].astype(np.float64)
    qs = q.astype(np.float64)
    if space == "cosine":
        xs = xs / np.linalg.norm(xs, axis=1, keepdims=True)
        qs = qs / np.linalg.norm(qs, axis=1, keepdims=True)
    if space == "l2":
        d = (qs**2).sum(1)[:, None] + (xs**2).sum(1)[None] - 2 * qs @ xs.T
    else:
        d = 1 - qs @ xs.T
    return allowed[np.argsort(d, axis=1, kind="stable")[:, :k]]


@pytest.fixture(scope="module")
def data():
    return clustered(N, DIM, seed=1)


def coded_index(x: np.ndarray, space: str, pq_dims: int = 0) -> evidex.HNSWIndex:
    index = evidex.HNSWIndex(DIM, space, M=8, ef_construction=40, seed=2)
    index.add(x, num_threads=1)  # slots in row order: the same codes every run
    index.build_scan_codes(pq_dims)
    return index


@pytest.mark.parametrize("space", SPACES)
def test_coded_scan_finds_the_allowed_neighbours_with_exact_distances(data, space) -> None:
    index = coded_index(data, space)
    assert index.scan_code_dims == 2  # the default up to 64 dimensions
    rng = np.random.default_rng(3)
    allowed = np.sort(rng.choice(N, 600, replace=False))
    q = data[rng.choice(N, 50)] + rng.normal(scale=0.5, size=(50, DIM)).astype(np.float32)
    truth = exact(data, allowed, q, 10, space)
    for ef, floor in ((64, 0.9), (600, 1.0)):  # depth >= allowed: every one re-ranked
        ids, dist = index.search(q, k=10, ef=ef, filter=allowed, filter_strategy="coded_scan")
        assert index.last_plan()["strategy"] == "coded_scan"
        assert np.isin(ids, allowed).all()
        assert recall_at_k(ids, truth, 10) >= floor
        assert np.allclose(dist, exact_distances(data, q, ids, space), rtol=1e-4, atol=1e-4)
        assert (np.diff(dist, axis=1) >= 0).all()


def test_recall_grows_with_ef_and_wider_subspaces_cost_less(data) -> None:
    fine, coarse = coded_index(data, "l2", 2), coded_index(data, "l2", 8)
    assert coarse.stats()["scan_code_bytes"] < fine.stats()["scan_code_bytes"]
    rng = np.random.default_rng(4)
    allowed = np.sort(rng.choice(N, 1500, replace=False))
    q = data[rng.choice(N, 60)] + rng.normal(scale=0.3, size=(60, DIM)).astype(np.float32)
    truth = exact(data, allowed, q, 10, "l2")
    for index in (fine, coarse):
        recalls = [recall_at_k(index.search(q, 10, ef=ef, filter=allowed,
                                            filter_strategy="coded_scan")[0], truth, 10)
                   for ef in (10, 40, 160)]  # fmt: skip
        assert recalls[0] <= recalls[1] <= recalls[2] and recalls[2] >= 0.95, recalls


def test_k_past_the_allowed_count_pads_and_deleted_elements_never_pass(data) -> None:
    index = coded_index(data, "l2")
    index.delete([1, 2])
    ids, dist = index.search(data[:3], k=5, ef=3, filter=[1, 2, 3, 4], filter_strategy="coded_scan")
    assert (np.sort(ids[:, :2], axis=1) == [3, 4]).all() and (ids[:, 2:] == -1).all()
    assert np.isinf(dist[:, 2:]).all()
    ids, _ = index.search(data[:2], k=3, filter=[1, 2], filter_strategy="coded_scan")
    assert (ids == -1).all()


def test_new_and_updated_vectors_are_coded(data) -> None:
    index = coded_index(data[:2000], "l2")
    index.add(data[2000:], np.arange(2000, N))  # coded as they arrive
    rng = np.random.default_rng(5)
    recalls = []
    for allowed in (np.arange(0, 1000), np.arange(2000, N)):  # coded at build, coded on add
        q = data[rng.choice(allowed, 40)] + 0.1
        truth = exact(data, allowed, q, 10, "l2")
        ids, _ = index.search(q, 10, ef=40, filter=allowed, filter_strategy="coded_scan")
        recalls.append(recall_at_k(ids, truth, 10))
    assert recalls[1] >= 0.7 and recalls[1] >= recalls[0] - 0.1, recalls  # uncoded: ~0.04
    allowed = np.arange(1500, N)
    # An update moves a vector next to element 7 (outside the allowed set), far
    # from where it was: found there at a shallow depth only if its code moved too.
    target = data[7] + 0.01
    assert np.linalg.norm(data[2500] - target) > 5
    index.add(target, [2500])
    ids, _ = index.search(data[7], k=1, ef=10, filter=allowed, filter_strategy="coded_scan")
    assert ids.tolist() == [2500]


def test_codes_grow_with_the_index_and_follow_reused_slots(data) -> None:
    index = evidex.HNSWIndex(DIM, "l2", M=8, ef_construction=40, max_elements=100, seed=2)
    index.add(data[:100], num_threads=1)
    index.build_scan_codes()
    index.add(data[100:1000], np.arange(100, 1000), num_threads=1)  # grows past max_elements
    index.delete([5])
    target = data[950] + 0.01
    index.add(target, [5000], replace_deleted=True)  # takes slot 5's place
    ids, _ = index.search(data[950], k=1, ef=20, filter=[5000] + list(range(100, 900)),
                          filter_strategy="coded_scan")  # fmt: skip
    assert ids.tolist() == [5000]
    q = data[100:140]
    allowed = np.arange(100, 1000)
    ids, _ = index.search(q, 10, ef=50, filter=allowed, filter_strategy="coded_scan")
    assert recall_at_k(ids, exact(data, allowed, q, 10, "l2"), 10) >= 0.9


def test_without_codes_the_method_is_refused_and_the_planner_skips_it(data) -> None:
    index = evidex.HNSWIndex(DIM, M=8, ef_construction=40)
    index.add(data)
    assert index.scan_code_dims == 0
    with pytest.raises(ValueError, match="build_scan_codes"):
        index.search(data[:2], k=3, filter=np.arange(500), filter_strategy="coded_scan")
    index.search(data[:2], k=3, filter=np.arange(500))
    assert index.last_plan()["predicted_ns_per_query"]["coded_scan"] is None
    index.build_scan_codes()
    index.search(data[:2], k=3, ef=16, filter=np.arange(500))
    assert index.last_plan()["predicted_ns_per_query"]["coded_scan"] is not None
    # ef not below the allowed count: the exact scan's work and more; not a candidate.
    index.search(data[:2], k=3, ef=600, filter=np.arange(500))
    assert index.last_plan()["predicted_ns_per_query"]["coded_scan"] is None
    with pytest.raises(ValueError, match="k-NN"):
        index.search_range(data[:2], 1.0, filter=np.arange(500), filter_strategy="coded_scan")
    index.drop_scan_codes()
    assert index.scan_code_dims == 0 and index.stats()["scan_code_bytes"] == 0
    with pytest.raises(ValueError, match="build_scan_codes"):
        index.search(data[:2], k=3, filter=np.arange(500), filter_strategy="coded_scan")


def test_bad_arguments_are_refused(data) -> None:
    empty = evidex.HNSWIndex(DIM)
    with pytest.raises(ValueError, match="live elements"):
        empty.build_scan_codes()
    index = evidex.HNSWIndex(DIM)
    index.add(data[:10])
    index.delete(np.arange(10))
    with pytest.raises(ValueError, match="live elements"):
        index.build_scan_codes()
    index.add(data[10:20], np.arange(10, 20))
    for bad in (DIM + 1, -1):
        with pytest.raises(ValueError):
            index.build_scan_codes(bad)
    with pytest.raises(TypeError):
        index.build_scan_codes("4")
    with pytest.raises(ValueError, match="filter strategy|filter_strategy"):
        index.search(data[:1], filter=[10], filter_strategy="coded")


@pytest.mark.parametrize("space", ("l2", "cosine"))
def test_codes_survive_save_load_mmap_bytes_and_pickle(data, space, tmp_path) -> None:
    index = coded_index(data, space, 4)
    index.add(data[:5] + 1, np.arange(N, N + 5))
    allowed = np.arange(0, N, 3)
    q = data[:20] + 0.2
    want = index.search(q, 10, ef=24, filter=allowed, filter_strategy="coded_scan")
    path = str(tmp_path / "coded.evx")
    index.save(path)
    with open(path, "rb") as f:
        assert struct.unpack_from("<I", f.read(12), 8)[0] == 4  # format version
    for copy in (evidex.HNSWIndex.load(path), evidex.HNSWIndex.load(path, mmap=True),
                 evidex.HNSWIndex.from_bytes(index.to_bytes()),
                 pickle.loads(pickle.dumps(index))):  # fmt: skip
        assert copy.scan_code_dims == 4
        got = copy.search(q, 10, ef=24, filter=allowed, filter_strategy="coded_scan")
        assert (got[0] == want[0]).all() and np.allclose(got[1], want[1])
    index.drop_scan_codes()
    index.save(path)
    with open(path, "rb") as f:
        assert struct.unpack_from("<I", f.read(12), 8)[0] == 1  # no longer needs 4
    assert evidex.HNSWIndex.load(path).scan_code_dims == 0


def _image_with_codes(data) -> bytearray:
    index = evidex.HNSWIndex(DIM, "l2", M=4, ef_construction=16, seed=1)
    index.add(data[:200])
    index.build_scan_codes()
    return bytearray(index.to_bytes())


def _reseal(image: bytearray) -> bytes:
    from fuzz_index_files import reseal

    return reseal(image)


def test_hostile_scan_sections_with_valid_checksums_are_refused(data) -> None:
    image = _image_with_codes(data)
    assert struct.unpack_from("<I", image, 8)[0] == 4
    (dims,) = struct.unpack_from("<Q", image, 240)
    quant_offset, quant_bytes = struct.unpack_from("<QQ", image, 200)
    scan_offset = quant_offset + quant_bytes
    subspaces = math.ceil(math.ceil(DIM / dims) / 4) * 4  # padded to a multiple of 4
    codes_offset = scan_offset + subspaces * 16 * dims * 4

    def edited(at: int, fmt: str, value) -> bytearray:
        bad = bytearray(image)
        struct.pack_into(fmt, bad, at, value)
        return bad

    cases = [
        ("NaN", edited(scan_offset + 8, "<f", float("nan"))),
        ("scan code", edited(240, "<Q", DIM + 1)),  # wider than the vectors
        ("section sizes", edited(240, "<Q", dims + 1)),  # the section's size changes
        ("scan code", edited(8, "<I", 3)),  # scan codes in a version 3 file
        ("truncated", bytearray(image[:-8])),
    ]
    for message, bad in cases:
        with pytest.raises(evidex.CorruptIndexError, match=message):
            evidex.HNSWIndex.from_bytes(_reseal(bad))
    # Any code bytes are valid (every nibble names a centroid): still searchable.
    noisy = bytearray(image)
    count = 200 * subspaces // 2
    noisy[codes_offset : codes_offset + count] = (
        np.random.default_rng(0).integers(0, 256, count, dtype=np.uint8).tobytes()
    )
    copy = evidex.HNSWIndex.from_bytes(_reseal(noisy))
    ids, dist = copy.search(data[:5], 5, filter=np.arange(100), filter_strategy="coded_scan")
    assert np.isin(ids, np.arange(100)).all()
    assert np.allclose(dist, exact_distances(data, data[:5], ids, "l2"), rtol=1e-4, atol=1e-4)


def test_loading_into_another_space_drops_codes_fitted_to_the_old_one(data, tmp_path) -> None:
    import evidex.compat.hnswlib as hnswlib

    index = coded_index(data[:300], "l2")
    path = str(tmp_path / "x.evx")
    index.save(path)
    same = hnswlib.Index("l2", DIM)
    same.load_index(path)
    other = hnswlib.Index("cosine", DIM)
    other.load_index(path)
    assert same._index.scan_code_dims == 2 and other._index.scan_code_dims == 0


def test_levels_give_the_same_answers(data) -> None:
    index = coded_index(data, "cosine")
    allowed = np.arange(0, N, 2)
    q = data[:30] * 1.5 + 0.1
    answers = []
    for level in ("scalar", evidex.cpu_simd_level()):
        evidex.set_simd_level(level)
        answers.append(index.search(q, 10, ef=20, filter=allowed, filter_strategy="coded_scan"))
    assert (answers[0][0] == answers[1][0]).all()
    assert np.allclose(answers[0][1], answers[1][1], rtol=1e-5, atol=1e-6)


def test_coded_searches_during_adds_updates_builds_and_drops(data) -> None:
    index = coded_index(data[:1500], "l2")
    allowed = np.arange(0, N, 2)
    stop = []

    def work(i: int) -> None:
        rng = np.random.default_rng(i)
        for step in range(30):
            if i == 0:  # adds and updates
                lo = 1500 + step * 50
                index.add(data[lo : lo + 50], np.arange(lo, lo + 50))
                index.add(data[:20] + step, np.arange(20))
            elif i == 1:  # rebuilds and drops
                if step % 3 == 2:
                    index.drop_scan_codes()
                else:
                    index.build_scan_codes(int(rng.choice([0, 4])))
            else:
                q = data[rng.choice(1500, 8)]
                try:
                    ids, dist = index.search(q, 5, ef=16, filter=allowed,
                                             filter_strategy="coded_scan")  # fmt: skip
                except ValueError as e:  # dropped meanwhile: refused, never wrong
                    assert "build_scan_codes" in str(e)
                    continue
                found = ids[ids >= 0]
                assert np.isin(found, allowed).all()
                assert np.isfinite(dist[ids >= 0]).all()
        stop.append(i)

    run_on_threads(work, 4)
    assert len(stop) == 4


@pytest.mark.parametrize("seed", range(12))
def test_shortlist_keeps_the_lowest_estimates(seed: int) -> None:
    """A fast scan's shortlist (IVFIndex's lists, the coded scan): the `depth` lowest
    estimates base + scale * sum (+ extra) of a stream of groups, the earlier ones
    among ties, whether sums are compared as integers (no extra term: the bound
    turned into a sum limit per base) or as floats. Bases far above the scale's
    steps (many sums, one estimate), sums at 0 and 65535, partial last groups."""
    rng = np.random.default_rng(seed)
    groups = int(rng.integers(1, 60))
    count = groups * 32 - int(rng.integers(0, 32))
    kind = seed % 6
    if kind == 0:
        sums = rng.integers(0, 4000, (groups, 32))
        base, scale = rng.normal(0.0, 1.0, groups), 1e-3
    elif kind == 1:  # few distinct sums: ties everywhere
        sums = rng.integers(0, 4, (groups, 32)) * 1000
        base, scale = np.repeat(rng.normal(0.0, 1.0, 3), groups)[:groups], 0.01
    elif kind == 2:  # a base where one step of the sum is below its float's spacing
        sums = rng.integers(0, 65536, (groups, 32))
        base, scale = 1e4 + rng.integers(0, 3, groups), 1e-5
    elif kind == 3:  # the extremes of the sums
        sums = rng.choice([0, 1, 65534, 65535], (groups, 32))
        base, scale = rng.normal(0.0, 1.0, groups), 0.5
    elif kind == 4:  # small sums, integer bases: sums just under a limit are common
        sums = rng.integers(0, 200, (groups, 32))
        base, scale = rng.integers(0, 30, groups).astype(np.float64), 1.0
    else:
        sums = rng.integers(0, 65536, (groups, 32))
        base, scale = -rng.random(groups) * 100, float(rng.random() + 1e-3)
    sums = sums.astype(np.uint16)
    base = base.astype(np.float32)
    extra = rng.random((groups, 32)).astype(np.float32) if seed % 2 else None
    est = base[:, None] + np.float32(scale) * sums.astype(np.float32)
    if extra is not None:
        est = est + extra
    est = est.reshape(-1)[:count]
    for depth in {1, 5, 10, 33, count // 7 + 1, count // 3 + 1, count, count + 3}:
        kept = _core.shortlist(sums, base, scale, depth, count, extra)
        want = np.lexsort((np.arange(count), est))[: min(depth, count)]
        assert sorted(kept.tolist()) == sorted(want.tolist()), (depth, kind)
    # A staircase: each group's lowest estimate is one step under everything before
    # it, so every group offers the estimate just under the bound (and nothing lower).
    steps = 40 + seed
    stairs = (steps - np.arange(steps)[:, None] + np.arange(32)[None, :]).astype(np.uint16)
    flat = np.zeros(steps, np.float32)
    for depth in (1, 2, 3, 7):
        kept = _core.shortlist(stairs, flat, 1.0, depth, steps * 32)
        est = stairs.reshape(-1).astype(np.float32)
        want = np.lexsort((np.arange(steps * 32), est))[:depth]
        assert sorted(kept.tolist()) == sorted(want.tolist()), depth


@pytest.mark.parametrize("seed", range(6))
def test_shortlist_selection_keeps_the_smallest_in_input_order(seed: int) -> None:
    """The selection behind the coded scan's and IVFIndex's shortlists: the `keep`
    smallest values (up to keep + slack of them), in input order, the earlier ones
    among ties at the cut; values clustered, tied, negative, infinite or far apart."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    kind = seed % 3
    if kind == 0:
        values = rng.normal(0.5, 0.05, n)
    elif kind == 1:  # few distinct values: ties at every cut
        values = rng.integers(0, 5, n).astype(np.float64) - 2.0
    else:  # far outliers and infinities around a tight cluster
        values = rng.normal(0.3, 1e-4, n)
        values[rng.random(n) < 0.1] = np.inf
        values[rng.random(n) < 0.05] = -1e30
    values = values.astype(np.float32)
    order = np.argsort(values, kind="stable")
    for keep in {0, 1, 2, n // 3, n - 1, n, n + 5}:
        kept = _core.keep_smallest(values, keep)
        assert kept.tolist() == sorted(order[: min(keep, n)].tolist())
        for slack in (1, 8, 40):
            loose = _core.keep_smallest(values, keep, slack)
            assert min(keep, n) <= len(loose) <= keep + slack
            assert np.all(np.diff(loose.astype(np.int64)) > 0)  # input order
            left = np.setdiff1d(np.arange(n), loose)
            if len(loose) and len(left):
                assert values[loose].max() <= values[left].min()
