"""hnswlib 0.8 index files: read by evidex, written for hnswlib, checked against the
real hnswlib (test extra) both ways, and refused cleanly when hostile."""

from __future__ import annotations

import os
import struct

import hnswlib as real
import numpy as np
import pytest

import evidex
import evidex.compat.hnswlib as ours
from conftest import clustered

DIM = 12
# hnswlib's header: (offset, struct format) of each field, in saveIndex's order.
FIELDS = {
    "offset_level0": (0, "<Q"),
    "max_elements": (8, "<Q"),
    "count": (16, "<Q"),
    "size_data": (24, "<Q"),
    "label_offset": (32, "<Q"),
    "offset_data": (40, "<Q"),
    "max_level": (48, "<i"),
    "entry": (52, "<I"),
    "maxM": (56, "<Q"),
    "maxM0": (64, "<Q"),
    "M": (72, "<Q"),
    "mult": (80, "<d"),
    "ef_construction": (88, "<Q"),
}


def _field(blob: bytes, name: str):
    at, fmt = FIELDS[name]
    return struct.unpack_from(fmt, blob, at)[0]


def _with_field(blob: bytes, name: str, value) -> bytes:
    at, fmt = FIELDS[name]
    out = bytearray(blob)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def _real_index(space: str, n: int = 600, deleted=(5, 77), M: int = 8):
    data = clustered(n, DIM)
    p = real.Index(space=space, dim=DIM)
    p.init_index(max_elements=n + 100, ef_construction=60, M=M)
    p.add_items(data, np.arange(n) * 3 + 1)
    for label in deleted:
        p.mark_deleted(label * 3 + 1)
    return data, p


@pytest.mark.parametrize("space", ["l2", "ip", "cosine"])
def test_hnswlib_file_loads_searches_alike_and_goes_back_byte_for_byte(space, tmp_path) -> None:
    data, r = _real_index(space)
    path = str(tmp_path / "real.bin")
    r.save_index(path)
    e = evidex.HNSWIndex.from_hnswlib(path, space, DIM)
    assert len(e) == 598 and e.stats()["deleted"] == 2 and e.max_elements == 700
    assert e.M == 8 and e.ef_construction == 60
    q = clustered(40, DIM, seed=9)
    r.set_ef(40)
    e.ef = 40
    want_labels, want_d = r.knn_query(q, k=5)
    labels, d = e.search(q, k=5)
    np.testing.assert_array_equal(labels, want_labels.astype(np.int64))
    np.testing.assert_allclose(d, want_d, rtol=1e-5, atol=1e-5)
    # The same graph: written back, it is the same file.
    back = str(tmp_path / "back.bin")
    e.save(back, format="hnswlib")
    assert open(back, "rb").read() == open(path, "rb").read()


@pytest.mark.parametrize("quantization", [None, "sq8"])
@pytest.mark.parametrize("space", ["l2", "cosine"])
def test_evidex_index_saved_for_hnswlib_loads_in_hnswlib(space, quantization, tmp_path) -> None:
    data = clustered(800, DIM, seed=2)
    e = evidex.HNSWIndex(DIM, space, M=10, max_elements=1_000, quantization=quantization)
    e.add(data, np.arange(800) + 10)
    e.delete([10, 11, 500])
    path = str(tmp_path / "for-hnswlib.bin")
    e.save(path, format="hnswlib")
    r = real.Index(space=space, dim=DIM)
    r.load_index(path)
    assert r.get_max_elements() == 1_000 and r.get_current_count() == 800
    assert r.M == 10
    r.set_ef(800)  # exhaustive: both must return the exact answer over the live elements
    q = clustered(30, DIM, seed=4)
    labels, d = r.knn_query(q, k=6)
    live = np.setdiff1d(np.arange(800) + 10, [10, 11, 500])
    truth, truth_d = evidex.exact_knn(e.get_vectors(live), q, 6, space)
    np.testing.assert_array_equal(labels, live[truth])
    np.testing.assert_allclose(d, truth_d, rtol=1e-4, atol=1e-5)
    # And hnswlib can keep using it: the deleted labels stay deleted, new ones go in.
    r.add_items(clustered(5, DIM, seed=8), np.arange(5) + 5_000)
    with pytest.raises(RuntimeError):
        r.unmark_deleted(12)  # not deleted


def test_empty_index_both_ways(tmp_path) -> None:
    path = str(tmp_path / "empty.bin")
    evidex.HNSWIndex(DIM, "l2", max_elements=50).save(path, format="hnswlib")
    r = real.Index(space="l2", dim=DIM)
    r.load_index(path, max_elements=50)  # hnswlib gives an empty index capacity 0 otherwise
    assert r.get_current_count() == 0 and r.get_max_elements() == 50
    r.save_index(path)
    e = evidex.HNSWIndex.from_hnswlib(path, "l2", DIM)
    assert len(e) == 0 and e.max_elements == 50
    e.add(clustered(10, DIM), np.arange(10))
    assert e.search(clustered(1, DIM), k=1)[0].shape == (1, 1)


def test_capacity_follows_hnswlib_load_index(tmp_path) -> None:
    _, r = _real_index("l2")
    path = str(tmp_path / "cap.bin")
    r.save_index(path)
    assert evidex.HNSWIndex.from_hnswlib(path, "l2", DIM, max_elements=100).max_elements == 700
    assert evidex.HNSWIndex.from_hnswlib(path, "l2", DIM, max_elements=650).max_elements == 650
    p = ours.Index("l2", DIM)
    p.load_index(path)
    assert p.get_max_elements() == 700
    p.add_items(clustered(100, DIM, seed=1), np.arange(100) + 10_000)  # room up to 700
    with pytest.raises(RuntimeError, match="exceeds the specified limit"):
        p.add_items(clustered(3, DIM, seed=2), np.arange(3) + 20_000)


def test_drop_in_reads_both_formats_and_changes_space_like_hnswlib(tmp_path) -> None:
    data, r = _real_index("l2")
    path = str(tmp_path / "l2.bin")
    r.save_index(path)
    q = clustered(25, DIM, seed=6)
    # hnswlib: "the space can be changed - keeps the data, alters the distance function".
    r_ip = real.Index(space="ip", dim=DIM)
    r_ip.load_index(path)
    r_ip.set_ef(600)
    o_ip = ours.Index(space="ip", dim=DIM)
    o_ip.load_index(path)
    o_ip.set_ef(600)
    want = r_ip.knn_query(q, k=4)
    got = o_ip.knn_query(q, k=4)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-4)
    # An evidex file loads into another space too, through the drop-in.
    evidex_path = str(tmp_path / "evidex.bin")
    o_ip.save_index(evidex_path)
    assert open(evidex_path, "rb").read(8) == b"EVDXHNSW"
    o_l2 = ours.Index(space="l2", dim=DIM)
    o_l2.load_index(evidex_path)
    r.set_ef(600)
    o_l2.set_ef(600)
    np.testing.assert_array_equal(o_l2.knn_query(q, k=4)[0], r.knn_query(q, k=4)[0])
    # Into cosine, evidex normalises what it loads (the distances are true cosine).
    o_cos = ours.Index(space="cosine", dim=DIM)
    o_cos.load_index(path)
    o_cos.set_ef(600)
    labels, d = o_cos.knn_query(q, k=3)
    stored = o_cos.get_items(labels[0])
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1, rtol=1e-5)
    qn = q[0] / np.linalg.norm(q[0])
    np.testing.assert_allclose(d[0], 1 - stored @ qn, rtol=1e-4, atol=1e-5)
    # A quantised index keeps its own space (its codes were made in it).
    sq = evidex.HNSWIndex(DIM, "l2", quantization="sq8", max_elements=700)
    sq.add(data, np.arange(600))
    sq.save(str(tmp_path / "sq.bin"))
    with pytest.raises(RuntimeError, match="quantised l2 index"):
        ours.Index(space="ip", dim=DIM).load_index(str(tmp_path / "sq.bin"))
    ours.Index(space="l2", dim=DIM).load_index(str(tmp_path / "sq.bin"))


def test_save_for_hnswlib_refuses_attributes_and_keeps_the_old_file(tmp_path) -> None:
    e = evidex.HNSWIndex(DIM, "l2", max_elements=100)
    e.add(clustered(20, DIM), np.arange(20), attributes={"tenant": np.arange(20) % 3})
    path = tmp_path / "keep.bin"
    path.write_bytes(b"previous")
    with pytest.raises(ValueError, match="stored attributes"):
        e.save(str(path), format="hnswlib")
    assert path.read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["keep.bin"]  # no temporary left behind
    with pytest.raises(ValueError, match="format must be"):
        e.save(str(path), format="faiss")
    with pytest.raises(OSError):
        evidex.HNSWIndex(DIM).save(str(tmp_path / "missing-dir" / "x.bin"), format="hnswlib")


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory) -> bytes:
    _, r = _real_index("l2", n=300, M=4)  # M 4: several upper levels in 300 elements
    path = str(tmp_path_factory.mktemp("valid") / "v.bin")
    r.save_index(path)
    blob = open(path, "rb").read()
    assert _field(blob, "max_level") >= 2
    return blob


def _load(blob: bytes, tmp_path, dim: int = DIM):
    path = tmp_path / "hostile.bin"
    path.write_bytes(blob)
    return evidex.HNSWIndex.from_hnswlib(str(path), "l2", dim)


def _node(blob: bytes, i: int) -> int:
    return 96 + i * _field(blob, "size_data")


HOSTILE_FIELDS = [
    ("offset_level0", 8),
    ("M", 1),
    ("M", 3),
    ("M", 1 << 40),
    ("maxM0", 4),
    ("maxM", 5),
    ("size_data", 1 << 62),
    ("size_data", 4),
    ("label_offset", 0),
    ("label_offset", (1 << 64) - 4),
    ("offset_data", 0),
    ("count", 301),
    ("count", 1 << 62),
    ("max_elements", 10),
    ("max_elements", 1 << 40),
    ("max_level", -2),
    ("max_level", 1000),
    ("max_level", 0),
    ("max_level", 7),
    ("entry", 300),
    ("entry", 0xFFFFFFFF),
    ("mult", float("nan")),
    ("mult", -1.0),
    ("ef_construction", 0),
    ("ef_construction", 1 << 40),
]


@pytest.mark.parametrize(("name", "value"), HOSTILE_FIELDS)
def test_hostile_header_fields_are_refused(valid_file, tmp_path, name, value) -> None:
    with pytest.raises((evidex.CorruptIndexError, ValueError)):
        _load(_with_field(valid_file, name, value), tmp_path)


def test_truncated_or_extended_files_are_refused(valid_file, tmp_path) -> None:
    size = len(valid_file)
    cuts = [0, 1, 50, 95, 96, 97, _node(valid_file, 1) - 1, _node(valid_file, 300) - 1]
    cuts += [_node(valid_file, 300), _node(valid_file, 300) + 3, size - 4, size - 1]
    for cut in cuts:
        with pytest.raises(evidex.CorruptIndexError, match="truncated|hnswlib"):
            _load(valid_file[:cut], tmp_path)
    with pytest.raises(evidex.CorruptIndexError, match="trailing data"):
        _load(valid_file + b"\0", tmp_path)


def test_hostile_graph_contents_are_refused(valid_file, tmp_path) -> None:
    node = _node(valid_file, 7)
    label_at = node + _field(valid_file, "label_offset")
    vector_at = node + _field(valid_file, "offset_data")
    out_of_graph = bytearray(valid_file)
    struct.pack_into("<HBB", out_of_graph, node, 1, 0, 0)
    struct.pack_into("<I", out_of_graph, node + 4, 300)
    too_many_links = bytearray(valid_file)
    struct.pack_into("<H", too_many_links, node, 9)
    flags = bytearray(valid_file)
    flags[node + 2] = 0x80
    nan = bytearray(valid_file)
    struct.pack_into("<f", nan, vector_at, float("nan"))
    big_label = bytearray(valid_file)
    struct.pack_into("<Q", big_label, label_at, 1 << 63)
    duplicate = bytearray(valid_file)
    struct.pack_into("<Q", duplicate, label_at, 1)  # node 0's label
    upper = _node(valid_file, 300)  # the first node's upper-list size
    bad_upper = bytearray(valid_file)
    struct.pack_into("<I", bad_upper, upper, 7)
    cases = {
        "a link points outside the graph": out_of_graph,
        "longer than M allows": too_many_links,
        "unknown node flags": flags,
        "NaN or infinity": nan,
        "2\\*\\*63": big_label,
        "duplicate labels": duplicate,
        "upper link list size": bad_upper,
    }
    for message, blob in cases.items():
        with pytest.raises(evidex.CorruptIndexError, match=message):
            _load(bytes(blob), tmp_path)
    with pytest.raises(ValueError, match="dimension 12, not 13"):
        _load(valid_file, tmp_path, dim=13)


def test_an_evidex_file_is_not_read_as_hnswlib(tmp_path) -> None:
    e = evidex.HNSWIndex(DIM)
    e.add(clustered(5, DIM), np.arange(5))
    e.save(str(tmp_path / "e.bin"))
    with pytest.raises(evidex.CorruptIndexError, match="evidex index file; load it as one"):
        evidex.HNSWIndex.from_hnswlib(str(tmp_path / "e.bin"), "l2", DIM)


def test_random_damage_loads_or_is_refused_never_crashes(valid_file, tmp_path) -> None:
    """hnswlib files have no checksum: damage to a vector is a valid file; damage to
    the structure must be refused. Either way nothing crashes, and what loads works."""
    rng = np.random.default_rng(0)
    loaded = refused = 0
    for _ in range(300):
        blob = bytearray(valid_file)
        for at in rng.integers(0, len(blob), size=int(rng.integers(1, 4))):
            blob[at] = int(rng.integers(0, 256))
        try:
            e = _load(bytes(blob), tmp_path)
        except (evidex.CorruptIndexError, ValueError):
            refused += 1
            continue
        loaded += 1
        if len(e):
            e.search(clustered(3, DIM, seed=1), k=min(3, len(e)))
    assert loaded > 0 and refused > 0


def test_saving_for_hnswlib_during_changes_writes_consistent_snapshots(tmp_path) -> None:
    import threading

    e = evidex.HNSWIndex(DIM, "l2", max_elements=100, M=6)
    e.add(clustered(100, DIM), np.arange(100))
    stop = threading.Event()
    errors: list[BaseException] = []

    def change() -> None:
        label = 100
        try:
            while not stop.is_set():
                e.add(clustered(20, DIM, seed=label), np.arange(label, label + 20))
                e.delete([label, label + 7])
                label += 20
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    thread = threading.Thread(target=change)
    thread.start()
    try:
        for i in range(15):
            path = str(tmp_path / f"s{i % 2}.bin")
            e.save(path, format="hnswlib")
            loaded = evidex.HNSWIndex.from_hnswlib(path, "l2", DIM)
            r = real.Index(space="l2", dim=DIM)
            r.load_index(path)
            assert r.get_current_count() == len(loaded) + loaded.stats()["deleted"]
    finally:
        stop.set()
        thread.join()
    assert not errors
