"""Deletion, undeletion, slot reuse, updates, resize and filters."""

from __future__ import annotations

import numpy as np
import pytest

import evidex
from conftest import clustered


def _index(n: int = 1_000, dim: int = 12, space: str = "l2") -> tuple[evidex.HNSWIndex, np.ndarray]:
    data = clustered(n, dim)
    idx = evidex.HNSWIndex(dim, space, max_elements=n)
    idx.add(data, np.arange(n) + 100)
    return idx, data


def test_deleted_ids_leave_results_and_come_back() -> None:
    idx, data = _index()
    ids, _ = idx.search(data[5], k=1)
    assert ids[0] == 105
    idx.delete([105, 106])
    assert len(idx) == 998 and 105 not in idx
    ids, _ = idx.search(data[:50], k=10, ef=200)
    assert not np.isin(ids, [105, 106]).any()
    idx.undelete([105])
    assert idx.search(data[5], k=1)[0][0] == 105
    assert 105 in idx.ids() and 106 not in idx.ids() and 106 in idx.ids(include_deleted=True)


def test_delete_errors() -> None:
    idx, _ = _index(100)
    with pytest.raises(KeyError, match="7"):
        idx.delete([7])
    idx.delete([100])
    with pytest.raises(ValueError, match="already deleted"):
        idx.delete([101, 100])
    assert 101 in idx  # nothing deleted by the failed call
    with pytest.raises(ValueError, match="not deleted"):
        idx.undelete([101])


def test_replace_deleted_reuses_slots() -> None:
    idx, data = _index(500)
    idx.delete(np.arange(100, 200))
    slots = idx.stats()["capacity"]
    new = clustered(100, 12, seed=42)
    idx.add(new, np.arange(100) + 10_000, replace_deleted=True)
    s = idx.stats()
    assert s["capacity"] == slots and s["deleted"] == 0 and len(idx) == 500
    ids, _ = idx.search(new[:20], k=1, ef=100)
    np.testing.assert_array_equal(ids[:, 0], np.arange(20) + 10_000)
    assert 150 not in idx


def test_re_adding_an_id_updates_its_vector() -> None:
    idx, data = _index(800)
    far = np.full(12, 50.0, np.float32)
    idx.add(far, [100])
    assert len(idx) == 800
    np.testing.assert_allclose(idx.get_vectors([100])[0], far)
    assert idx.search(far, k=1)[0][0] == 100
    assert idx.search(data[0], k=1)[0][0] != 100
    # Re-adding a deleted id brings it back with the new vector.
    idx.delete([101])
    idx.add(far + 1, [101])
    assert 101 in idx and idx.search(far + 1, k=1)[0][0] == 101


def test_growth_and_resize() -> None:
    idx = evidex.HNSWIndex(4, "l2", max_elements=2)
    idx.add(np.random.default_rng(0).normal(size=(100, 4)))
    assert len(idx) == 100 and idx.max_elements >= 100
    idx.resize(5_000)
    assert idx.max_elements == 5_000
    with pytest.raises(ValueError, match="cannot resize"):
        idx.resize(10)
    assert idx.search(idx.get_vectors([42])[0], k=1)[0][0] == 42


def test_automatic_ids_continue_after_largest() -> None:
    idx = evidex.HNSWIndex(3)
    np.testing.assert_array_equal(idx.add(np.eye(3)), [0, 1, 2])
    idx.add(np.ones(3), [10])
    np.testing.assert_array_equal(idx.add(np.eye(3) * 2), [11, 12, 13])


@pytest.mark.parametrize("kind", ["array", "list", "mask", "callable"])
def test_filters(kind: str) -> None:
    idx, data = _index(2_000)
    allowed = np.arange(100, 2_100, 7)
    if kind == "array":
        flt = allowed
    elif kind == "list":
        flt = allowed.tolist()
    elif kind == "mask":
        flt = np.zeros(2_100, bool)
        flt[allowed] = True
    else:
        allowed_set = set(allowed.tolist())
        flt = lambda label: label in allowed_set  # noqa: E731
    ids, dist = idx.search(data[:20], k=10, ef=100, filter=flt)
    assert np.isin(ids, allowed).all()
    rows = allowed - 100
    truth, _ = evidex.exact_knn(data[rows], data[:20], 10)
    hits = np.mean([len(np.intersect1d(a, rows[t] + 100)) / 10 for a, t in zip(ids, truth)])
    assert hits >= 0.9


def test_restrictive_filter_pads_results() -> None:
    idx, data = _index(300)
    ids, dist = idx.search(data[:3], k=5, filter=[100, 101])
    assert (ids[:, :2] >= 100).all() and (ids[:, 2:] == -1).all()
    assert np.isinf(dist[:, 2:]).all()
    ids, _ = idx.search(data[0], k=3, filter=[])
    assert (ids == -1).all()


def test_filter_errors_propagate_and_bad_types_raise() -> None:
    idx, data = _index(200)

    def boom(label: int) -> bool:
        raise ZeroDivisionError("filter failed")

    with pytest.raises(ZeroDivisionError, match="filter failed"):
        idx.search(data[0], k=3, filter=boom)
    for bad in ["abc", {"a": 1}, np.array([0.5, 1.5]), np.zeros((2, 2), bool)]:
        with pytest.raises((TypeError, ValueError)):
            idx.search(data[0], k=3, filter=bad)
    # The index still works after the errors.
    assert idx.search(data[0], k=1)[0][0] == 100
