"""IVFIndex files: round trips (save/load, bytes, pickle), atomic saves, saves during
adds, and hostile images whose checksums an attacker recomputed."""

from __future__ import annotations

import copy
import math
import os
import pickle
import struct
import threading

import numpy as np
import pytest
from fuzz_index_files import fnv

import evidex
from conftest import clustered

HEADER = 136
FIELDS = {  # name: (offset, struct format), as serialize.cpp's IvfHeader
    "version": (8, "<I"), "endian": (12, "<I"), "header_bytes": (16, "<Q"), "dim": (24, "<Q"),
    "space": (32, "<Q"), "nlist": (40, "<Q"), "sub_dim": (48, "<Q"), "seed": (56, "<Q"),
    "threshold": (64, "<d"), "trained": (72, "<Q"), "count": (80, "<Q"),
    "file_bytes": (88, "<Q"), "nprobe": (104, "<Q"), "reorder": (112, "<Q"),
    "next_label": (120, "<Q"),
}  # fmt: skip


def reseal(data: bytearray) -> bytes:
    """Recompute both checksums, as an attacker would."""
    struct.pack_into("<Q", data, 96, fnv(bytes(data[HEADER:])))
    struct.pack_into("<Q", data, 128, fnv(bytes(data[:128])))
    return bytes(data)


def with_field(image: bytes, name: str, value) -> bytes:
    data = bytearray(image)
    off, fmt = FIELDS[name]
    if fmt != "<d":
        value %= 1 << (8 * struct.calcsize(fmt))
    struct.pack_into(fmt, data, off, value)
    return reseal(data)


def sections(index: evidex.IVFIndex) -> dict[str, int]:
    """Offsets of the payload's arrays (serialize.cpp's IvfLayout)."""
    pad = lambda b: (b + 7) // 8 * 8  # noqa: E731
    n, dim = len(index) + index.stats()["deleted"], index.dim
    nsub = -(-dim // index.pq_dims)
    nsub = (nsub + 3) // 4 * 4
    out = {"centroids": HEADER}
    out["pq"] = out["centroids"] + pad(index.nlist * dim * 4)
    out["labels"] = out["pq"] + pad(nsub * 16 * index.pq_dims * 4)
    out["lists"] = out["labels"] + 8 * n
    out["live"] = out["lists"] + pad(4 * n)
    out["codes"] = out["live"] + pad(n)
    out["vectors"] = out["codes"] + pad(n * nsub // 2)
    return out


def built(space: str = "cosine", n: int = 2_000, dim: int = 24) -> evidex.IVFIndex:
    index = evidex.IVFIndex(dim, space, nprobe=9, reorder=40, seed=3)
    index.add(clustered(n, dim, seed=5), ids=np.arange(n) * 7 + 11)
    return index


@pytest.mark.parametrize("space", ["l2", "ip", "cosine"])
def test_round_trips_answer_the_same(space: str, tmp_path) -> None:
    index = built(space)
    queries = clustered(40, 24, seed=6)
    expect = index.search(queries, 10)
    path = tmp_path / "index.ivf"
    index.save(path)
    copies = [
        evidex.IVFIndex.load(path),
        evidex.IVFIndex.load(str(path)),
        evidex.IVFIndex.from_bytes(index.to_bytes()),
        pickle.loads(pickle.dumps(index)),
        copy.deepcopy(index),
    ]
    assert path.read_bytes() == index.to_bytes()
    more = clustered(300, 24, seed=7)
    index.add(more, ids=np.arange(300) + 10**6)
    after = index.search(queries, 10)
    for c in copies:
        assert (c.nprobe, c.reorder, c.nlist, c.pq_dims, c.space, len(c)) == (
            9, 40, index.nlist, index.pq_dims, space, 2_000)  # fmt: skip
        assert c.anisotropic_threshold == 0.2 and c.trained
        got = c.search(queries, 10)
        np.testing.assert_array_equal(got[0], expect[0])
        np.testing.assert_array_equal(got[1], expect[1])
        # A loaded index takes adds as the original does (same lists, same codes).
        c.add(more, ids=np.arange(300) + 10**6)
        np.testing.assert_array_equal(c.search(queries, 10)[0], after[0])


def test_deletions_round_trip() -> None:
    index = built("l2")
    index.delete(np.arange(10) * 7 + 11)
    index.add(clustered(3, 24, seed=8), ids=[11, 18, 10**9])  # two updates, one new
    back = evidex.IVFIndex.from_bytes(index.to_bytes())
    assert len(back) == len(index) == 1_993 and back.stats()["deleted"] == 10
    np.testing.assert_array_equal(back.ids(), index.ids())
    queries = clustered(20, 24, seed=6)
    np.testing.assert_array_equal(back.search(queries, 10)[0], index.search(queries, 10)[0])
    image = bytearray(back.to_bytes())
    at = sections(back)
    _corrupt(_patched(bytes(image), at["live"], b"\x02"))
    # A deleted row's id is free: reviving it beside its live copy is a duplicate.
    live = at["live"] + 2_000  # the first updated row (11) sits after the 2,000 first rows
    assert image[at["live"]] == 0
    _corrupt(_patched(bytes(image), at["live"], b"\x01"))
    assert image[live] == 1


def test_untrained_and_empty_indexes_round_trip(tmp_path) -> None:
    fresh = evidex.IVFIndex(8, "ip", nlist=5, pq_dims=2, anisotropic_threshold=0.5, reorder=7)
    back = evidex.IVFIndex.from_bytes(fresh.to_bytes())
    assert not back.trained and len(back) == 0 and back.anisotropic_threshold == 0.5
    assert back.pq_dims == 2 and back.reorder == 7
    back.add(clustered(200, 8, seed=1))
    assert back.nlist == 5 and len(back) == 200
    trained = evidex.IVFIndex(8, "l2", nlist=4)
    trained.train(clustered(100, 8, seed=2))
    path = tmp_path / "trained.ivf"
    trained.save(path)
    loaded = evidex.IVFIndex.load(path)
    assert loaded.trained and len(loaded) == 0 and loaded.nlist == 4
    loaded.add(clustered(50, 8, seed=3))
    assert len(loaded.search(clustered(3, 8, seed=4), 5)[0]) == 3


def test_search_defaults_are_checked_and_clamped() -> None:
    index = evidex.IVFIndex(8)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="nprobe"):
            index.nprobe = bad
    with pytest.raises(TypeError, match="reorder"):
        index.reorder = 2.5
    index.nprobe = 10**30  # more than any index holds: all lists
    assert index.nprobe == 2**31 - 1


def test_a_failed_save_leaves_the_previous_file(tmp_path) -> None:
    index = built()
    path = tmp_path / "index.ivf"
    index.save(path)
    before = path.read_bytes()
    with pytest.raises(OSError):
        index.save(tmp_path / "missing" / "index.ivf")
    (tmp_path / "dir.ivf").mkdir()
    with pytest.raises(OSError):
        index.save(tmp_path / "dir.ivf")
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["dir.ivf", "index.ivf"]  # no temporaries


def test_saves_during_adds_hold_a_whole_batch_or_none(tmp_path) -> None:
    index = built("l2", n=1_000)
    batches = [clustered(200, 24, seed=100 + i) for i in range(10)]
    path = tmp_path / "index.ivf"
    errors: list[BaseException] = []

    def adder() -> None:
        try:
            for i, b in enumerate(batches):
                index.add(b, ids=np.arange(200) + 10**6 + 1_000 * i)
                index.search(b[:5], 3)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=adder)
    t.start()
    sizes = set()
    while t.is_alive() or not sizes:
        index.save(path)
        loaded = evidex.IVFIndex.load(path)
        assert (len(loaded) - 1_000) % 200 == 0
        sizes.add(len(loaded))
        ids, dist = loaded.search(batches[0][:3], 5, nprobe=loaded.nlist)
        assert np.isfinite(dist).all()
    t.join()
    assert not errors
    assert len(evidex.IVFIndex.from_bytes(index.to_bytes())) == 3_000


def _corrupt(image: bytes) -> None:
    with pytest.raises(evidex.CorruptIndexError):
        evidex.IVFIndex.from_bytes(image)


def test_truncated_extended_and_flipped_images_are_refused(tmp_path) -> None:
    image = built().to_bytes()
    for cut in (0, 8, 127, 128, 129, len(image) // 2, len(image) - 1):
        _corrupt(image[:cut])
    _corrupt(image + b"\0" * 8)
    rng = np.random.default_rng(0)
    for at in rng.integers(0, len(image), 40):
        data = bytearray(image)
        data[at] ^= 1 << int(rng.integers(8))
        _corrupt(bytes(data))  # no checksum recomputed: caught by one of them
    path = tmp_path / "short.ivf"
    path.write_bytes(image[:1000])
    with pytest.raises(evidex.CorruptIndexError, match="truncated"):
        evidex.IVFIndex.load(path)
    hnsw = evidex.HNSWIndex(4)
    hnsw.add(np.eye(4, dtype=np.float32))
    with pytest.raises(evidex.CorruptIndexError, match="magic"):
        evidex.IVFIndex.from_bytes(hnsw.to_bytes())
    with pytest.raises(OSError):
        evidex.IVFIndex.load(tmp_path / "absent.ivf")
    with pytest.raises(TypeError):
        evidex.IVFIndex.from_bytes("not bytes")  # type: ignore[arg-type]


BOUNDARY = [0, 1, 2, 3, 2**16, 2**20 + 1, 2**24 + 1, 2**31, 2**32 - 1, 2**32, 2**63, 2**64 - 1]


@pytest.mark.parametrize("name", [n for n in FIELDS if n != "threshold"])
def test_resealed_header_fields_are_bounded(name: str) -> None:
    """Every header field at boundary values and off by one, checksums recomputed:
    refused, or (where the value is valid) loaded and usable."""
    index = built()
    image = index.to_bytes()
    off, fmt = FIELDS[name]
    real = struct.unpack_from(fmt, image, off)[0]
    for value in sorted(set(BOUNDARY + [real - 1, real + 1, real * 2, len(image)])):
        data = with_field(image, name, value)
        try:
            loaded = evidex.IVFIndex.from_bytes(data)
        except evidex.CorruptIndexError:
            continue
        _use(loaded)


def test_resealed_thresholds_are_bounded() -> None:
    image = built("ip").to_bytes()
    for value in (math.nan, math.inf, -0.5, 1.0, 0.9999999999, 1e300):
        _corrupt(with_field(image, "threshold", value))
    loaded = evidex.IVFIndex.from_bytes(with_field(image, "threshold", 0.5))
    assert loaded.anisotropic_threshold == 0.5
    _use(loaded)


def _use(index: evidex.IVFIndex) -> None:
    queries = clustered(5, index.dim, seed=9)
    if len(index):
        ids, dist = index.search(queries, min(5, len(index)), nprobe=index.nlist)
        assert ((ids >= 0) | np.isinf(dist)).all()
        assert not np.isnan(dist).any()
    index.add(clustered(40, index.dim, seed=10), ids=np.arange(40) + 2**62)
    evidex.IVFIndex.from_bytes(index.to_bytes())


def _patched(image: bytes, offset: int, raw: bytes) -> bytes:
    data = bytearray(image)
    data[offset : offset + len(raw)] = raw
    return reseal(data)


def test_resealed_payloads_are_checked() -> None:
    index = built("cosine")
    image = index.to_bytes()
    at = sections(index)
    f32 = lambda v: struct.pack("<f", v)  # noqa: E731
    for bad in (math.nan, math.inf, -math.inf):
        _corrupt(_patched(image, at["centroids"] + 4, f32(bad)))
        _corrupt(_patched(image, at["pq"], f32(bad)))
        _corrupt(_patched(image, at["vectors"] + 40, f32(bad)))
    first_label = struct.unpack_from("<Q", image, at["labels"])[0]
    _corrupt(_patched(image, at["labels"] + 8, struct.pack("<Q", first_label)))  # duplicate
    _corrupt(_patched(image, at["labels"], struct.pack("<Q", 2**63)))
    _corrupt(with_field(image, "next_label", 0))  # ids at or past it are inconsistent
    _corrupt(_patched(image, at["lists"] + 4, struct.pack("<I", index.nlist)))
    _corrupt(_patched(image, at["lists"], struct.pack("<I", 2**32 - 1)))
    _corrupt(_patched(image, at["vectors"], f32(3.0)))  # not unit length in cosine
    l2 = built("ip")
    l2_image, l2_at = l2.to_bytes(), sections(l2)
    huge = np.array([3e38, -3e38] * 12, np.float32).tobytes()  # add() refuses it
    _corrupt(_patched(l2_image, l2_at["vectors"], huge))
    _corrupt(_patched(l2_image, l2_at["centroids"], huge))
    _corrupt(_patched(l2_image, l2_at["pq"], f32(3e38)))
    # Valid but unusual payloads load and answer with finite distances: any codes
    # (estimates only pick the re-rank list), a zero vector, far centroids.
    codes = bytes(np.random.default_rng(1).integers(0, 256, at["vectors"] - at["codes"], np.uint8))
    _use(evidex.IVFIndex.from_bytes(_patched(image, at["codes"], codes)))
    _use(evidex.IVFIndex.from_bytes(_patched(image, at["vectors"], b"\0" * 4 * 24)))
    large = struct.pack("<f", 1e3) * 24  # far from every vector, but a usable centroid
    _use(evidex.IVFIndex.from_bytes(_patched(image, at["centroids"], large)))
    _use(evidex.IVFIndex.from_bytes(_patched(image, at["pq"], large)))


def test_random_resealed_mutations_never_crash() -> None:
    """Random bytes anywhere, checksums recomputed: refused or usable, never worse."""
    image = built("l2", n=600).to_bytes()
    rng = np.random.default_rng(2)
    loaded = 0
    for _ in range(150):
        data = bytearray(image)
        for at in rng.integers(0, len(data), int(rng.integers(1, 6))):
            data[at] = int(rng.integers(256))
        try:
            index = evidex.IVFIndex.from_bytes(reseal(data))
        except evidex.CorruptIndexError:
            continue
        loaded += 1
        _use(index)
    assert loaded > 0  # most payload bytes are codes and ids: many mutations load
