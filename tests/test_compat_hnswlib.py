"""evidex.compat.hnswlib against the real hnswlib 0.8 (installed by the test extra)."""

from __future__ import annotations

import pickle

import hnswlib as real
import numpy as np
import pytest

import evidex
import evidex.compat.hnswlib as ours
from conftest import clustered, recall_at_k

DIM = 16


def _both(space: str = "l2", n: int = 1_000, **init):
    data = clustered(n, DIM)
    indexes = []
    for lib in (real, ours):
        p = lib.Index(space=space, dim=DIM)
        p.init_index(max_elements=n, ef_construction=100, M=16, **init)
        p.add_items(data, np.arange(n))
        indexes.append(p)
    return data, indexes


def _raises_alike(fn_real, fn_ours):
    with pytest.raises(Exception) as r:  # noqa: B017,PT011 - compared below
        fn_real()
    with pytest.raises(type(r.value), match=str(r.value)[:40].replace("(", r"\(")):
        fn_ours()


def test_api_surface_covers_hnswlib() -> None:
    for cls in ("Index", "BFIndex"):
        theirs, mine = getattr(real, cls)("l2", 4), getattr(ours, cls)("l2", 4)
        public = [a for a in dir(theirs) if not a.startswith("_")]
        assert [a for a in public if a not in dir(mine)] == []


@pytest.mark.parametrize("space", ["l2", "ip", "cosine"])
def test_same_results_and_types(space: str) -> None:
    data, (r, o) = _both(space)
    q = clustered(50, DIM, seed=2)
    truth, _ = evidex.exact_knn(data, q, 10, space)
    for ef in (20, 200):
        r.set_ef(ef)
        o.set_ef(ef)
        rl, rd = r.knn_query(q, k=10)
        ol, od = o.knn_query(q, k=10)
        assert ol.dtype == rl.dtype == np.uint64 and od.dtype == rd.dtype == np.float32
        assert ol.shape == rl.shape
        assert (
            recall_at_k(ol.astype(np.int64), truth, 10)
            >= recall_at_k(rl.astype(np.int64), truth, 10) - 0.03
        )
    # At a beam width covering the data both are exact: same neighbours and distances.
    r.set_ef(1_000)
    o.set_ef(1_000)
    rl, rd = r.knn_query(q, k=5)
    ol, od = o.knn_query(q, k=5)
    np.testing.assert_array_equal(ol, rl)
    np.testing.assert_allclose(od, rd, rtol=1e-4, atol=1e-5)
    # 1-D query, like hnswlib, gives 2-D results.
    assert o.knn_query(q[0], k=3)[0].shape == r.knn_query(q[0], k=3)[0].shape == (1, 3)


def test_properties_and_accessors() -> None:
    data, (r, o) = _both("cosine", 300)
    for attr in ("M", "ef_construction", "element_count", "max_elements", "space", "dim", "ef"):
        assert getattr(o, attr) == getattr(r, attr), attr
    assert o.get_current_count() == r.get_current_count()
    assert o.get_max_elements() == r.get_max_elements()
    assert sorted(o.get_ids_list()) == sorted(r.get_ids_list())
    np.testing.assert_allclose(o.get_items([3, 5]), r.get_items([3, 5]), rtol=1e-6)
    assert isinstance(o.get_items([3], return_type="list"), list)
    np.testing.assert_allclose(o.get_items([3], "list"), r.get_items([3], "list"), rtol=1e-6)
    assert o.get_items(None).shape == r.get_items(None).shape == (0,)
    assert o.get_items(None, "list") == r.get_items(None, "list") == []
    o.ef = 33
    r.ef = 33
    assert o.ef == r.ef == 33
    o.set_num_threads(1)
    assert o.num_threads == 1
    assert repr(o) == repr(r)


def test_same_exceptions() -> None:
    data, (r, o) = _both("l2", 100)
    _raises_alike(lambda: r.knn_query(data[:1], k=101), lambda: o.knn_query(data[:1], k=101))
    _raises_alike(lambda: r.mark_deleted(5_000), lambda: o.mark_deleted(5_000))
    _raises_alike(lambda: r.get_items([5_000]), lambda: o.get_items([5_000]))
    _raises_alike(
        lambda: r.add_items(np.zeros((1, DIM + 1))), lambda: o.add_items(np.zeros((1, DIM + 1)))
    )
    _raises_alike(
        lambda: r.add_items(np.zeros((1, DIM)), [1_000]),
        lambda: o.add_items(np.zeros((1, DIM)), [1_000]),
    )
    _raises_alike(
        lambda: r.add_items(np.zeros((2, DIM)), [1]), lambda: o.add_items(np.zeros((2, DIM)), [1])
    )
    _raises_alike(
        lambda: r.add_items(np.zeros((1, DIM)), [-1]), lambda: o.add_items(np.zeros((1, DIM)), [-1])
    )
    _raises_alike(lambda: r.resize_index(10), lambda: o.resize_index(10))
    _raises_alike(
        lambda: r.add_items(np.zeros((1, DIM)), [7], replace_deleted=True),
        lambda: o.add_items(np.zeros((1, DIM)), [7], replace_deleted=True),
    )
    r.mark_deleted(3)
    o.mark_deleted(3)
    _raises_alike(lambda: r.mark_deleted(3), lambda: o.mark_deleted(3))
    _raises_alike(lambda: r.unmark_deleted(4), lambda: o.unmark_deleted(4))
    _raises_alike(lambda: real.Index("hamming", 3), lambda: ours.Index("hamming", 3))
    for lib_index in (r, o):
        labels, _ = lib_index.knn_query(data[:1], k=0)
        assert labels.shape == (1, 0)


def test_where_hnswlib_crashes_evidex_raises(tmp_path) -> None:
    p = ours.Index("l2", DIM)
    with pytest.raises(RuntimeError, match="not initialized"):
        p.add_items(np.zeros((1, DIM)))
    with pytest.raises(RuntimeError, match="not initialized"):
        p.knn_query(np.zeros((1, DIM)))
    p.init_index(10)
    p.add_items(np.ones((3, DIM)))
    with pytest.raises(RuntimeError, match="Wrong dimensionality"):
        p.knn_query(np.zeros((1, DIM - 1)))
    with pytest.raises(RuntimeError, match="Cannot open file"):
        p.load_index(str(tmp_path / "missing.bin"))
    assert p.get_current_count() == 3  # a failed load leaves the index as it was
    bf = ours.BFIndex("l2", DIM)
    bf.init_index(5)
    bf.add_items(np.ones((3, DIM)))
    with pytest.raises(RuntimeError, match="contiguous 2D array"):
        bf.knn_query(np.ones(DIM), k=4)


def test_deletes_replacement_and_filter() -> None:
    data, (r, o) = _both("l2", 500, allow_replace_deleted=True)
    for p in (r, o):
        p.set_ef(200)
        for label in range(0, 50):
            p.mark_deleted(label)
        labels, _ = p.knn_query(data[:50], k=5)
        assert not np.isin(labels, np.arange(50)).any()
        p.add_items(data[:10] + 100, np.arange(1_000, 1_010), replace_deleted=True)
        assert p.get_current_count() == 500
        labels, _ = p.knn_query(data[100:110], k=3, filter=lambda label: label % 2 == 0)
        assert (labels % 2 == 0).all()
    _raises_alike(lambda: r.add_items(data[20:21], [20]), lambda: o.add_items(data[20:21], [20]))


def test_save_load_pickle(tmp_path) -> None:
    data, (_, o) = _both("ip", 400)
    path = str(tmp_path / "i.bin")
    o.save_index(path)
    q = clustered(20, DIM, seed=5)
    want = o.knn_query(q, k=5)
    p = ours.Index("ip", DIM)
    p.load_index(path, max_elements=1_000)
    assert p.get_max_elements() == 1_000 and p.element_count == 400
    np.testing.assert_array_equal(p.knn_query(q, k=5)[0], want[0])
    p.add_items(q)  # room left by max_elements
    c = pickle.loads(pickle.dumps(o))
    np.testing.assert_array_equal(c.knn_query(q, k=5)[0], want[0])
    np.testing.assert_array_equal(ours.Index(o).knn_query(q, k=5)[0], want[0])
    assert o.index_file_size() == len(open(path, "rb").read())
    with pytest.raises(RuntimeError, match="dimension"):
        ours.Index("ip", DIM + 1).load_index(path)


@pytest.mark.parametrize("space", ["l2", "ip", "cosine"])
def test_bfindex_matches_hnswlib(space: str, tmp_path) -> None:
    data = clustered(300, DIM)
    q = clustered(20, DIM, seed=3)
    results = []
    for lib in (real, ours):
        bf = lib.BFIndex(space=space, dim=DIM)
        bf.init_index(400)
        bf.add_items(data, np.arange(300) + 7)
        bf.delete_vector(7)
        bf.delete_vector(123_456)  # missing: ignored, as in hnswlib
        assert bf.get_current_count() == 299 and bf.get_max_elements() == 400
        results.append(bf.knn_query(q, k=5))
        results.append(bf.knn_query(q, k=3, filter=lambda label: label % 3 == 0))
    np.testing.assert_array_equal(results[2][0], results[0][0])
    if space == "cosine":
        # hnswlib's BFIndex does not normalise cosine queries, so its distances are
        # 1 - <x/|x|, q>; evidex returns the true cosine distance (same ranking).
        live = np.arange(1, 300)
        _, want = evidex.exact_knn(data[live], q, 5, "cosine")
        np.testing.assert_allclose(results[2][1], want, rtol=1e-4, atol=1e-5)
    else:
        np.testing.assert_allclose(results[2][1], results[0][1], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(results[3][0], results[1][0])
    bf.save_index(str(tmp_path / "bf.npz"))
    loaded = ours.BFIndex(space, DIM)
    loaded.load_index(str(tmp_path / "bf.npz"))
    np.testing.assert_array_equal(loaded.knn_query(q, k=5)[0], results[2][0])
    with pytest.raises(RuntimeError, match="exceeds the specified limit"):
        loaded.add_items(np.zeros((200, DIM)))
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="corrupted"):
        loaded.load_index(str(tmp_path / "bad.npz"))
