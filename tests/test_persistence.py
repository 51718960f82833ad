"""Save/load round trips, memory mapping, pickling, and every kind of damaged file."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

import evidex
from conftest import clustered


@pytest.fixture
def index() -> evidex.HNSWIndex:
    idx = evidex.HNSWIndex(20, "cosine", M=8, ef_construction=64, seed=3, ef=77)
    idx.add(clustered(1_500, 20), np.arange(1_500) * 3)
    idx.delete([0, 3, 6])
    return idx


def _same(a: evidex.HNSWIndex, b: evidex.HNSWIndex) -> None:
    q = clustered(30, 20, seed=9)
    ids_a, dist_a = a.search(q, k=10)
    ids_b, dist_b = b.search(q, k=10)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(dist_a, dist_b)
    assert (len(a), a.dim, a.space, a.M, a.ef, a.ef_construction) == (
        len(b),
        b.dim,
        b.space,
        b.M,
        b.ef,
        b.ef_construction,
    )
    np.testing.assert_array_equal(a.ids(), b.ids())
    np.testing.assert_array_equal(a.ids(include_deleted=True), b.ids(include_deleted=True))


@pytest.mark.parametrize("mmap", [False, True])
def test_round_trip(index: evidex.HNSWIndex, tmp_path, mmap: bool) -> None:
    path = tmp_path / "a.evx"
    index.save(path)
    loaded = evidex.HNSWIndex.load(path, mmap=mmap)
    assert loaded.stats()["deleted"] == 3
    _same(index, loaded)
    # The loaded index keeps working: adds (a mapped one copies itself first),
    # deletes, saves again, and the file on disk is not modified by them.
    before = path.read_bytes()
    loaded.add(clustered(10, 20, seed=4), np.arange(10) + 10_000)
    loaded.delete([9])
    assert len(loaded) == len(index) + 10 - 1
    assert path.read_bytes() == before
    loaded.save(tmp_path / "b.evx")
    _same(loaded, evidex.HNSWIndex.load(tmp_path / "b.evx"))


def test_mmap_index_marks_deleted_without_touching_file(index, tmp_path) -> None:
    path = tmp_path / "a.evx"
    index.save(path)
    before = path.read_bytes()
    mapped = evidex.HNSWIndex.load(path, mmap=True)
    mapped.delete([9, 12])
    assert 9 not in mapped and path.read_bytes() == before


def test_pickle_and_bytes(index: evidex.HNSWIndex) -> None:
    _same(index, pickle.loads(pickle.dumps(index)))
    _same(index, evidex.HNSWIndex.from_bytes(index.to_bytes()))


def test_empty_index_round_trip(tmp_path) -> None:
    empty = evidex.HNSWIndex(4, "l2")
    empty.save(tmp_path / "e.evx")
    loaded = evidex.HNSWIndex.load(tmp_path / "e.evx")
    assert len(loaded) == 0
    loaded.add(np.ones((3, 4)))
    assert loaded.search(np.ones(4), k=1)[0][0] in (0, 1, 2)


def test_truncated_files_raise(index, tmp_path) -> None:
    data = index.to_bytes()
    for size in [0, 10, 255, 256, 300, len(data) // 2, len(data) - 1]:
        path = tmp_path / f"t{size}.evx"
        path.write_bytes(data[:size])
        with pytest.raises(evidex.CorruptIndexError, match="truncated"):
            evidex.HNSWIndex.load(path)
        with pytest.raises(evidex.CorruptIndexError):
            evidex.HNSWIndex.from_bytes(data[:size])


def test_trailing_bytes_raise(index) -> None:
    with pytest.raises(evidex.CorruptIndexError, match="trailing"):
        evidex.HNSWIndex.from_bytes(index.to_bytes() + b"\0")


def test_wrong_magic_raises(index, tmp_path) -> None:
    data = bytearray(index.to_bytes())
    data[:8] = b"NOTANIDX"
    with pytest.raises(evidex.CorruptIndexError, match="magic"):
        evidex.HNSWIndex.from_bytes(bytes(data))
    (tmp_path / "x").write_bytes(b"hello world, this is not an index" * 20)
    with pytest.raises(evidex.CorruptIndexError, match="magic"):
        evidex.HNSWIndex.load(tmp_path / "x")


def test_newer_format_version_raises(index) -> None:
    data = bytearray(index.to_bytes())
    struct.pack_into("<I", data, 8, 99)
    with pytest.raises(evidex.CorruptIndexError, match="newer"):
        evidex.HNSWIndex.from_bytes(bytes(data))


def test_corrupted_bytes_are_detected_everywhere(index) -> None:
    data = index.to_bytes()
    rng = np.random.default_rng(0)
    positions = list(range(0, 256, 7)) + rng.integers(256, len(data), 200).tolist()
    for pos in positions:
        damaged = bytearray(data)
        damaged[pos] ^= 0x41
        with pytest.raises(evidex.CorruptIndexError):
            evidex.HNSWIndex.from_bytes(bytes(damaged))


def test_missing_file_is_an_os_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        evidex.HNSWIndex.load(tmp_path / "missing.evx")
    with pytest.raises(OSError):
        evidex.HNSWIndex.load(tmp_path)  # a directory


def test_failed_write_keeps_previous_file(index, tmp_path) -> None:
    path = tmp_path / "keep.evx"
    index.save(path)
    before = path.read_bytes()
    # A write that fails half-way (the file size limit of a child process): the
    # previous file stays, and no temporary file is left behind.
    script = f"""
import resource, signal, sys
import numpy as np
sys.path.insert(0, {os.path.dirname(__file__)!r})
import evidex
from conftest import clustered
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
bigger = evidex.HNSWIndex(20, "cosine")
bigger.add(clustered(3000, 20))
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    bigger.save({str(path)!r})
except OSError as e:
    print("OSError", e.errno)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.stdout.startswith("OSError"), out.stderr
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.evx"]
    with pytest.raises(OSError):
        index.save(tmp_path / "no" / "such" / "dir.evx")
    assert not (tmp_path / "no").exists()
    with pytest.raises(OSError):
        index.save(tmp_path)  # a directory: the rename fails, nothing is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.evx"]


@pytest.mark.parametrize("space", ["l2", "ip", "cosine"])
def test_resealed_vectors_add_would_refuse_are_refused(space: str, tmp_path) -> None:
    """A file whose checksums an attacker recomputed must not bring in a vector that
    add() refuses (too large for float32 distances) or, in cosine space, one of other
    than unit length: either would give inf or NaN distances without a word."""
    from fuzz_index_files import reseal

    data = clustered(200, 8, seed=3)
    index = evidex.HNSWIndex(8, space)
    index.add(data)
    image = index.to_bytes()
    stored = index.get_vectors([7])[0].astype(np.float32).tobytes()
    at = image.find(stored)
    assert at > 0
    hostile = [np.array([3e38, -3e38] * 4, np.float32), np.full(8, 4e18, np.float32)]
    if space == "cosine":
        hostile.append(np.full(8, 0.5, np.float32))  # length sqrt(2)
    for v in hostile:
        patched = bytearray(image)
        patched[at : at + 32] = v.tobytes()
        with pytest.raises(evidex.CorruptIndexError, match="too large|unit length"):
            evidex.HNSWIndex.from_bytes(reseal(patched))
        path = tmp_path / "hostile.evdx"
        path.write_bytes(reseal(patched))
        for mmap in (False, True):
            with pytest.raises(evidex.CorruptIndexError):
                evidex.HNSWIndex.load(path, mmap=mmap)
