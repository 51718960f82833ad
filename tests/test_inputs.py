"""Bad input raises a clear ValueError / TypeError; good input of any layout works."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import evidex


@pytest.fixture
def idx() -> evidex.HNSWIndex:
    index = evidex.HNSWIndex(8, "l2")
    index.add(np.random.default_rng(0).normal(size=(50, 8)))
    return index


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="unknown space"):
        evidex.HNSWIndex(8, "hamming")
    with pytest.raises(ValueError, match="dim"):
        evidex.HNSWIndex(0)
    with pytest.raises(TypeError, match="dim"):
        evidex.HNSWIndex(8.5)
    with pytest.raises(ValueError, match="M"):
        evidex.HNSWIndex(8, M=1)
    with pytest.raises(ValueError, match="ef"):
        evidex.HNSWIndex(8, ef=0)


@pytest.mark.parametrize(
    ("vectors", "error", "match"),
    [
        (np.zeros((3, 7)), ValueError, "dimension 7"),
        (np.zeros((3, 8, 1)), ValueError, "1-D or 2-D"),
        (np.array([[np.nan] * 8]), ValueError, "NaN or infinity"),
        (np.array([[np.inf] * 8]), ValueError, "NaN or infinity"),
        (np.array([[1e39] * 8]), ValueError, "NaN or infinity"),  # overflows float32
        (np.array([["a"] * 8]), TypeError, "dtype"),
        (np.zeros((2, 8), dtype=complex), TypeError, "dtype"),
        (np.zeros((2, 8), dtype=bool), TypeError, "dtype"),
    ],
)
def test_bad_vectors(idx, vectors, error, match) -> None:
    with pytest.raises(error, match=match):
        idx.add(vectors)
    with pytest.raises(error, match=match):
        idx.search(vectors, k=1)
    assert len(idx) == 50  # nothing was added


@pytest.mark.parametrize(
    ("ids", "error", "match"),
    [
        ([1, 2], ValueError, "2 ids for 3 vectors"),
        ([-1, 2, 3], ValueError, "non-negative"),
        ([1.5, 2.0, 3.0], TypeError, "integers"),
        ([2**63, 1, 2], ValueError, "below 2\\*\\*63"),
    ],
)
def test_bad_ids(idx, ids, error, match) -> None:
    with pytest.raises(error, match=match):
        idx.add(np.zeros((3, 8)), ids)


def test_bad_search_arguments(idx) -> None:
    q = np.zeros(8)
    with pytest.raises(ValueError, match="k must be at least 1"):
        idx.search(q, k=0)
    with pytest.raises(ValueError, match="larger than the number of elements"):
        idx.search(q, k=51)
    with pytest.raises(TypeError, match="k must be an integer"):
        idx.search(q, k=2.0)
    with pytest.raises(ValueError, match="ef"):
        idx.search(q, k=1, ef=0)
    with pytest.raises(ValueError, match="num_threads"):
        idx.search(q, k=1, num_threads=-5)
    with pytest.raises(ValueError, match="empty"):
        evidex.HNSWIndex(8).search(q, k=1)
    idx.delete(np.arange(45))
    with pytest.raises(ValueError, match="larger than the number of elements in the index \\(5\\)"):
        idx.search(q, k=6)


def test_layouts_and_dtypes_give_the_same_answer(idx) -> None:
    base = np.random.default_rng(1).normal(size=(6, 8))
    want = idx.search(base.astype(np.float32), k=3)[0]
    variants = [
        base,  # float64
        base.astype(np.float16).astype(np.float32),
        np.asfortranarray(base),
        np.repeat(base, 2, axis=1)[:, ::2],  # strided view
        base.tolist(),
        torch.from_numpy(base),
        torch.from_numpy(base).float().requires_grad_(),
        torch.from_numpy(base).t().contiguous().t(),  # non-contiguous tensor
    ]
    for v in variants:
        got = idx.search(v, k=3)[0]
        assert got.shape == (6, 3)
        np.testing.assert_array_equal(got[:, 0], want[:, 0])


def test_integer_vectors_are_converted() -> None:
    index = evidex.HNSWIndex(3, "l2")
    index.add(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32))
    assert index.search(np.array([4, 5, 6]), k=1)[0][0] == 1


def test_torch_ids_and_filters(idx) -> None:
    idx.add(torch.zeros(2, 8), torch.tensor([1000, 1001]))
    ids, _ = idx.search(torch.zeros(8), k=2, filter=torch.tensor([1000, 1001]))
    assert sorted(ids.tolist()) == [1000, 1001]
