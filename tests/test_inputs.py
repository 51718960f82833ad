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


# ------------------------------------------------------------------ hostile input
def test_automatic_ids_past_the_limit_raise_and_change_nothing() -> None:
    index = evidex.HNSWIndex(4)
    index.add(np.ones((1, 4)), [2**63 - 1])
    with pytest.raises(OverflowError, match="2\\*\\*63"):
        index.add(np.ones((2, 4)))
    assert len(index) == 1
    with pytest.raises(ValueError, match="below 2\\*\\*63"):
        index.add(np.ones((1, 4)), [2**63])
    with pytest.raises(ValueError, match="below 2\\*\\*63"):
        index._core.add(np.ones((1, 4), np.float32), np.array([2**63], np.uint64))


def test_a_batch_delete_is_all_or_nothing(idx) -> None:
    for bad, error, match in [
        ([5, 5], ValueError, "listed twice"),
        ([5, 10**6], KeyError, "not in the index"),
    ]:
        with pytest.raises(error, match=match):
            idx.delete(bad)
        assert 5 in idx and len(idx) == 50
    idx.delete([5])
    with pytest.raises(ValueError, match="already deleted"):
        idx.delete([6, 5])
    assert 6 in idx
    with pytest.raises(ValueError, match="not deleted"):
        idx.undelete([5, 6])
    assert 5 not in idx


def test_vectors_whose_distances_would_overflow_are_refused(idx) -> None:
    huge = np.full((1, 8), 1e19, np.float32)  # |x|^2 = 8e38 > FLT_MAX
    with pytest.raises(ValueError, match="too large for float32 distances"):
        idx.add(huge)
    with pytest.raises(ValueError, match="too large for float32 distances"):
        idx.search(huge[0], k=1)
    assert len(idx) == 50
    # Below the bound every distance is finite and real results come back.
    index = evidex.HNSWIndex(8, "l2")
    index.add(np.full((3, 8), 3e18, np.float32) * np.array([[1], [-1], [0.5]], np.float32))
    ids, dist = index.search(np.zeros(8, np.float32), k=3)
    assert (ids >= 0).all() and np.isfinite(dist).all()
    # Cosine normalises first: any finite vector will do.
    cos = evidex.HNSWIndex(8, "cosine")
    cos.add(np.full((2, 8), 1e30, np.float32) * np.array([[1], [-1]], np.float32))
    ids, dist = cos.search(np.full(8, 1e30, np.float32), k=2)
    assert sorted(ids.tolist()) == [0, 1] and np.allclose(sorted(dist.tolist()), [0, 2], atol=1e-6)


@pytest.mark.parametrize("scale", [1e-30, 1e-42])
def test_tiny_cosine_vectors_normalise_to_unit_length_and_save(scale: float, tmp_path) -> None:
    # hnswlib divides by |v| + 1e-30, which leaves a vector of norm 1e-30 at half
    # length: such an index could be built but not saved (the file check wants
    # unit vectors). Normalised exactly, it saves, loads and answers alike.
    rng = np.random.default_rng(3)
    data = (rng.standard_normal((60, 8)) * scale).astype(np.float32)
    index = evidex.HNSWIndex(8, "cosine", M=4, seed=1)
    index.add(data)
    stored = index.get_vectors(np.arange(60))
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, rtol=1e-5)
    index.save(tmp_path / "tiny.evx")
    loaded = evidex.HNSWIndex.load(tmp_path / "tiny.evx")
    np.testing.assert_array_equal(loaded.search(data[:5], k=3)[0], index.search(data[:5], k=3)[0])
    assert (index.search(data[:5], k=1)[0][:, 0] == np.arange(5)).all()


def test_beam_widths_are_bounded_and_clamped() -> None:
    with pytest.raises(ValueError, match="ef_construction"):
        evidex.HNSWIndex(8, ef_construction=2**64 - 1)
    index = evidex.HNSWIndex(8)
    index.add(np.random.default_rng(0).standard_normal((200, 8)))
    ids, _ = index.search(np.zeros(8), k=5, ef=2**27)  # clamped to the 200 elements
    assert (ids >= 0).all()
    with pytest.raises(ValueError, match="ef must be"):
        index.ef = 2**40


def test_integers_past_64_bits_get_a_message_not_a_signature_dump(idx) -> None:
    """Python ints are unbounded, the compiled layer's are not: a count past 2**62
    is refused by name, or means "all" where it can."""
    q = np.zeros(8, np.float32)
    for big in (10**30, -(10**30), np.uint64(2**63)):
        with pytest.raises(ValueError, match="k must be"):
            idx.search(q, k=big)
    want = idx.search(q, k=3)
    for threads in (10**30, np.int64(2**62)):
        np.testing.assert_array_equal(idx.search(q, k=3, num_threads=threads)[0], want[0])
    lims, ids, _ = idx.search_range(q, 1e9, max_results=10**30)
    assert lims[-1] == len(idx)
    ivf = evidex.IVFIndex(8, "l2", nlist=4)
    ivf.add(np.random.default_rng(1).normal(size=(200, 8)))
    truth = ivf.search(q, k=3, nprobe=4, reorder=200)[0]
    got = ivf.search(q, k=3, nprobe=10**30, reorder=10**40, num_threads=10**30)[0]
    np.testing.assert_array_equal(got, truth)
    with pytest.raises(ValueError, match="k must be"):
        ivf.search(q, k=10**30)


def test_more_threads_than_the_system_gives_work_with_those_it_gets() -> None:
    index = evidex.HNSWIndex(8)
    index.add(np.random.default_rng(0).standard_normal((300, 8)), num_threads=10**6)
    q = np.random.default_rng(1).standard_normal((500, 8))
    ids, _ = index.search(q, k=3, num_threads=10**6)
    assert ids.shape == (500, 3) and (ids >= 0).all()


def test_a_filter_that_calls_back_into_its_index_raises_instead_of_deadlocking(idx) -> None:
    for call in (
        lambda: idx.add(np.ones((1, 8))),
        lambda: idx.resize(10_000),
        lambda: idx.save("/dev/null/x"),
        lambda: idx.delete([1]),
        lambda: idx.search(np.ones(8), k=1),
    ):

        def filter_(i: int, call=call) -> bool:
            call()
            return True

        with pytest.raises(RuntimeError, match="must not call methods of the index"):
            idx.search(np.ones(8), k=1, filter=filter_)
    assert len(idx) == 50 and idx.search(np.ones(8), k=1)[0][0] >= 0
    # Another index may be used from a filter.
    other = evidex.HNSWIndex(8)
    other.add(np.ones((2, 8)))
    ids, _ = idx.search(
        np.ones(8), k=1, filter=lambda i: len(other.search(np.ones(8), k=1)[0]) == 1
    )
    assert ids[0] >= 0


def test_a_loaded_index_keeps_its_capacity_limit_without_allocating_it(tmp_path) -> None:
    index = evidex.HNSWIndex(8, max_elements=100_000)
    index.add(np.ones((3, 8)))
    index.save(tmp_path / "a.evx")
    loaded = evidex.HNSWIndex.load(tmp_path / "a.evx")
    assert loaded.max_elements == 100_000
    assert loaded.stats()["memory_bytes"] < 1 << 20  # not 100,000 slots
    assert loaded.to_bytes() == index.to_bytes()


def test_when_the_system_gives_no_more_threads_the_work_goes_on() -> None:
    # Address space for about six more 8 MiB thread stacks: starting a 64-thread
    # search or add fails part-way; the threads that did start do the work.
    import subprocess
    import sys

    script = """
import resource, numpy as np, evidex
rng = np.random.default_rng(0)
index = evidex.HNSWIndex(8, max_elements=20_000)
index.add(rng.standard_normal((2_000, 8)), num_threads=1)
vm = int([l for l in open("/proc/self/status") if l.startswith("VmSize")][0].split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (48 << 20), vm + (48 << 20)))
ids, _ = index.search(rng.standard_normal((5_000, 8)), k=3, num_threads=64)
assert (ids >= 0).all()
index.add(rng.standard_normal((1_000, 8)), num_threads=64)
assert len(index) == 3_000
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
