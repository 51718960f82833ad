"""Stored attributes, evidex.F filters, the filtered-search planner and range search."""

from __future__ import annotations

import pickle
import struct
import threading

import numpy as np
import pytest

import evidex
import evidex.compat.hnswlib as hnswlib
from conftest import run_on_threads
from evidex import F

N, DIM = 3000, 16
STRATEGIES = ("scan", "filtered", "two_hop", "auto")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    attrs = {
        "tenant": rng.integers(0, 50, N),
        "year": rng.integers(1990, 2025, N),
        "score": rng.random(N),
    }
    return x, attrs


@pytest.fixture()
def index(data):
    x, attrs = data
    idx = evidex.HNSWIndex(DIM, M=12, ef_construction=100, seed=3)
    idx.add(x, np.arange(N), attributes=attrs)
    return idx


def truth(x, allowed, q, k):
    d = ((x[allowed][None, :, :] - q[:, None, :]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return allowed[order]


def members(idx, f):
    """Everything a filter admits, by an exact scan as large as the index."""
    ids, _ = idx.search(np.zeros(idx.dim), k=len(idx), filter=f, filter_strategy="scan")
    return set(ids[ids >= 0].tolist())


# ------------------------------------------------------------------ attributes
def test_attributes_are_stored_typed_and_read_back(index, data) -> None:
    _, attrs = data
    assert index.attribute_fields == {"tenant": "int", "year": "int", "score": "float"}
    got = index.get_attributes([5, 7])
    assert got["tenant"].tolist() == attrs["tenant"][[5, 7]].tolist()
    assert got["score"].dtype == np.float64 and got["year"].dtype == np.int64
    assert index.get_attributes([5], fields=["year"]).keys() == {"year"}
    with pytest.raises(KeyError):
        index.get_attributes([10**9])
    with pytest.raises(ValueError, match="unknown attribute 'colour'"):
        index.get_attributes([5], fields=["colour"])


def test_updates_keep_fields_not_given_and_new_elements_have_none(index) -> None:
    v = np.ones((1, DIM), np.float32)
    index.add(v, [5], attributes={"year": [1800]})  # an update of one field
    got = index.get_attributes([5])
    assert got["year"][0] == 1800 and not np.ma.is_masked(got["tenant"][0])
    index.add(v, [N + 1])  # a new element, no values
    got = index.get_attributes([N + 1])
    assert all(np.ma.is_masked(got[name][0]) for name in got)
    assert N + 1 not in members(index, F("year") <= 3000)
    assert N + 1 in members(index, ~(F("year") == 1990))  # ~ complements, within the index
    assert N + 1 not in members(index, F("year") != 1990)  # != needs a value


def test_a_reused_slot_does_not_inherit_the_deleted_elements_values() -> None:
    idx = evidex.HNSWIndex(4, max_elements=10)
    idx.add(np.eye(4, dtype=np.float32), [0, 1, 2, 3], attributes={"t": [7, 7, 7, 7]})
    idx.delete([2])
    idx.add(np.ones((1, 4)), [9], replace_deleted=True)
    assert np.ma.is_masked(idx.get_attributes([9])["t"][0])
    assert members(idx, F("t") == 7) == {0, 1, 3}


def test_scalars_broadcast_and_kinds_follow_the_field(index) -> None:
    v = np.ones((3, DIM), np.float32)
    index.add(v, [N + 10, N + 11, N + 12], attributes={"tenant": 3, "score": [1, 2, 3]})
    got = index.get_attributes([N + 10, N + 12])
    assert got["tenant"].tolist() == [3, 3] and got["score"].tolist() == [1.0, 3.0]
    index.add(v[:1], [N + 13], attributes={"tenant": [4.0]})  # integral floats into ints
    assert index.get_attributes([N + 13])["tenant"][0] == 4
    index.add(v[:1], [N + 14], attributes={"flag": [True]})
    assert index.attribute_fields["flag"] == "int"


@pytest.mark.parametrize(
    "attributes, error, match",
    [
        ({"tenant": [1, 2]}, ValueError, "expected 3 values"),
        ({"score": [0.1, float("nan"), 0.3]}, ValueError, "NaN or infinite"),
        ({"score": [0.1, float("inf"), 0.3]}, ValueError, "NaN or infinite"),
        ({"tenant": [1.5, 2, 3]}, TypeError, "holds integers"),
        ({"name": ["a", "b", "c"]}, TypeError, "must hold integers, bools or floats"),
        ({"9lives": [1, 2, 3]}, ValueError, "is not valid"),
        ({"": [1, 2, 3]}, ValueError, "is not valid"),
        ({3: [1, 2, 3]}, TypeError, "names are str"),
        ({"big": np.array([2**64 - 1] * 3, np.uint64)}, ValueError, "int64 range"),
        ([1, 2, 3], TypeError, "dict of name -> values"),
    ],
)
def test_bad_attributes_raise_and_change_nothing(index, attributes, error, match) -> None:
    before_len, before_fields = len(index), index.attribute_fields
    with pytest.raises(error, match=match):
        index.add(np.ones((3, DIM), np.float32), [N + 20, N + 21, N + 22], attributes=attributes)
    assert len(index) == before_len and index.attribute_fields == before_fields
    assert N + 20 not in index


def test_a_field_keeps_its_kind_across_adds_in_the_core() -> None:
    idx = evidex.HNSWIndex(4)
    idx.add(np.ones((1, 4)), [0], attributes={"x": [1]})
    with pytest.raises(ValueError, match="holds integers, got floats"):
        idx._core.add(np.ones((1, 4), np.float32), np.array([1], np.uint64), 0, False, False,
                      True, [("x", "float", np.array([0.5]))])  # fmt: skip
    assert 1 not in idx


def test_at_most_64_fields() -> None:
    idx = evidex.HNSWIndex(4)
    idx.add(np.ones((1, 4)), [0], attributes={f"f{i}": [i] for i in range(64)})
    with pytest.raises(ValueError, match="at most 64"):
        idx.add(np.ones((1, 4)), [1], attributes={"one_more": [1]})
    assert 1 not in idx


# ------------------------------------------------------------------ F expressions
def expressions(a):
    t, y, s = a["tenant"], a["year"], a["score"]
    return [
        (F("tenant") == 7, t == 7),
        (F("tenant") != 7, t != 7),
        (F("tenant").isin([1, 2, 3]), np.isin(t, [1, 2, 3])),
        (F("tenant").isin([]), np.zeros_like(t, bool)),
        (F("year") > 2000, y > 2000),
        (F("year") >= 2000.5, y >= 2001),
        (F("year") < 1995.5, y < 1996),
        (F("year") <= 1995, y <= 1995),
        (F("year").between(2000, 2004), (y >= 2000) & (y <= 2004)),
        (F("year") == 2000.5, np.zeros_like(t, bool)),  # no integer equals it
        (F("score") < 0.25, s < 0.25),
        (F("score") > 0.5, s > 0.5),
        (F("score").between(0.1, 0.2), (s >= 0.1) & (s <= 0.2)),
        (F("score") >= 1, s >= 1),
        ((F("tenant") == 7) | (F("tenant") == 8), np.isin(t, [7, 8])),
        ((F("tenant") < 10) & ~(F("year") > 2000), (t < 10) & ~(y > 2000)),
        (~((F("tenant") < 10) | (F("score") > 0.1)), ~((t < 10) | (s > 0.1))),
        (F("tenant").exists(), np.ones_like(t, bool)),
        (F("year") > float("inf"), np.zeros_like(t, bool)),
        (F("year") < float("inf"), np.ones_like(t, bool)),
    ]


def test_every_expression_admits_exactly_what_numpy_says(index, data) -> None:
    _, a = data
    index.delete([0, 1, 2])
    live = np.ones(N, bool)
    live[:3] = False
    for i, (f, mask) in enumerate(expressions(a)):
        # Twice: first by a column scan, later by the sorted posting lists.
        for _ in range(4):
            assert members(index, f) == set(np.flatnonzero(mask & live).tolist()), (i, f)


def test_posting_lists_follow_updates(index) -> None:
    for _ in range(4):
        members(index, F("tenant") == 49)  # builds the sorted view
    index.add(np.zeros((1, DIM)), [10], attributes={"tenant": [49]})
    assert 10 in members(index, F("tenant") == 49)
    index.add(np.zeros((1, DIM)), [10], attributes={"tenant": [48]})
    assert 10 not in members(index, F("tenant") == 49)


def test_common_tags_answer_from_their_bitmaps_as_numpy_says() -> None:
    """Values held by at least 1/64 of the slots are answered from a bitmap once the
    field's sorted view exists (the third evaluation on): every expression over them,
    with a partial last word (n % 64 != 0), deletions, updates that move elements
    between tags and a new element in a reused slot, admits what numpy says, and the
    planner counts the same allowed set."""
    rng = np.random.default_rng(4)
    n = 3001
    x = rng.standard_normal((n, 4)).astype(np.float32)
    kind = rng.integers(0, 4, n)  # ~750 each: bitmaps
    kind[:40] = 9  # a rare value: its posting list
    idx = evidex.HNSWIndex(4, M=8, ef_construction=40, seed=1)
    year = rng.integers(0, 3, n)
    idx.add(x, np.arange(n), attributes={"kind": kind, "year": year})
    live = np.ones(n, bool)

    def check(year) -> None:
        cases = [(F("kind") == 2, kind == 2),
                 (F("kind").isin([0, 3, 9]), np.isin(kind, [0, 3, 9])),
                 (F("kind") != 1, kind != 1),
                 ((F("kind") == 0) & (F("year") == 1), (kind == 0) & (year == 1)),
                 (~(F("kind") == 3) | (F("kind") == 9), (kind != 3) | (kind == 9))]  # fmt: skip
        for f, mask in cases:
            for _ in range(4):  # column scans, then the sorted view and its bitmaps
                assert members(idx, f) == set(np.flatnonzero(mask & live).tolist()), f
                assert idx.last_plan()["allowed"] == int((mask & live).sum())

    check(year)
    idx.delete(np.arange(100, 400))
    live[100:400] = False
    check(year)
    moved = np.arange(1000, 1100)
    kind[moved] = 2
    idx.add(x[moved], moved, attributes={"kind": kind[moved], "year": year[moved]})
    check(year)
    idx.add(x[:1], [n], attributes={"kind": [1], "year": [0]})  # into a deleted slot
    kind, year, live = np.append(kind, 1), np.append(year, 0), np.append(live, True)
    check(year)


def test_misused_expressions_raise(index) -> None:
    q = np.zeros(DIM)
    with pytest.raises(ValueError, match="unknown attribute 'colour'.*tenant"):
        index.search(q, k=1, filter=F("colour") == 1)
    with pytest.raises(TypeError, match="is a field, not a filter"):
        index.search(q, k=1, filter=F("tenant"))
    with pytest.raises(TypeError, match="combine filter expressions with &"):
        (F("tenant") == 1) and (F("year") == 2)  # noqa: B018
    with pytest.raises(ValueError, match="NaN"):
        F("score") < float("nan")  # noqa: B015
    with pytest.raises(TypeError, match="compares with numbers"):
        F("tenant") == "seven"  # noqa: B015
    with pytest.raises(TypeError, match="iterable of numbers"):
        F("tenant").isin("abc")
    with pytest.raises(ValueError, match="unknown filter strategy"):
        index.search(q, k=1, filter=F("tenant") == 1, filter_strategy="fast")


# ------------------------------------------------------------------ search methods
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.02, 0.002])
def test_each_method_returns_allowed_ids_with_recall(index, data, strategy, fraction) -> None:
    x, _ = data
    rng = np.random.default_rng(int(fraction * 1000))
    allowed = np.sort(rng.choice(N, max(1, int(N * fraction)), replace=False))
    q = rng.standard_normal((40, DIM)).astype(np.float32)
    k = min(10, len(allowed))
    ids, dist = index.search(q, k=k, ef=64, filter=allowed, filter_strategy=strategy)
    assert np.isin(ids, allowed).all()
    exact = truth(x, allowed, q, k)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact)])
    assert recall >= (1.0 if strategy == "scan" else 0.8), recall
    assert np.allclose(dist, ((x[ids] - q[:, None, :]) ** 2).sum(-1), rtol=1e-4, atol=1e-4)
    plan = index.last_plan()
    assert plan["allowed"] == len(allowed)
    assert strategy == "auto" or plan["strategy"] == strategy


def test_the_planner_scans_a_tiny_set_and_searches_the_graph_for_a_large_one(index) -> None:
    q = np.random.default_rng(5).standard_normal((20, DIM))
    index.search(q, k=5, filter=np.arange(5))
    assert index.last_plan()["strategy"] == "scan"
    index.search(q, k=5, filter=np.arange(N)[: N * 9 // 10])
    plan = index.last_plan()
    assert plan["strategy"] != "scan", plan
    predicted = plan["predicted_ns_per_query"]
    assert set(predicted) == {"scan", "filtered", "two_hop", "coded_scan"}
    assert predicted["coded_scan"] is None  # no scan codes built


def test_no_allowed_element_pads_and_k_past_the_allowed_count_pads(index) -> None:
    ids, d = index.search(np.zeros(DIM), k=3, filter=F("tenant") == 999)
    assert ids.tolist() == [-1, -1, -1] and np.isinf(d).all()
    for strategy in STRATEGIES:
        ids, d = index.search(np.zeros(DIM), k=4, filter=[1, 2], filter_strategy=strategy)
        assert sorted(ids[:2].tolist()) == [1, 2] and ids[2:].tolist() == [-1, -1]


def test_deleted_elements_never_pass_a_filter(index) -> None:
    index.delete([1, 2])
    for strategy in STRATEGIES:
        ids, _ = index.search(np.zeros(DIM), k=3, filter=[1, 2, 3], filter_strategy=strategy)
        assert ids.tolist() == [3, -1, -1]


def test_a_batched_callable_is_called_once_per_element_with_the_same_answer(index) -> None:
    q = np.random.default_rng(9).standard_normal((100, DIM)).astype(np.float32)
    calls = []

    def odd(i: int) -> bool:
        calls.append(i)
        return i % 7 == 1

    ids, _ = index.search(q, k=5, filter=odd)
    assert len(calls) == len(index) and all(i % 7 == 1 for i in ids.ravel())
    ref, _ = index.search(q, k=5, filter=[i for i in range(N) if i % 7 == 1])
    assert (ids == ref).all()
    with pytest.raises(RuntimeError, match="must not call methods of the index"):
        index.search(q, k=5, filter=lambda i: len(index.ids()) > 0)


def test_hnswlib_filter_callables_use_the_planner(data) -> None:
    x, _ = data
    p = hnswlib.Index("l2", DIM)
    p.init_index(N, M=12, ef_construction=100)
    p.add_items(x, np.arange(N))
    p.set_ef(64)
    q = x[:50] + 0.01
    labels, _ = p.knn_query(q, k=3, filter=lambda i: i % 100 == 0)
    assert (labels % 100 == 0).all()
    assert (labels[:, 0] == np.arange(50) // 100 * 100).all() or labels.shape == (50, 3)
    with pytest.raises(RuntimeError):  # hnswlib: fewer than k results is an error
        p.knn_query(q, k=3, filter=lambda i: i == 5)


# ------------------------------------------------------------------ range search
def exact_range(x, q, radius, allowed=None):
    d = ((x[None, :, :] - q[:, None, :]) ** 2).sum(-1)
    out = []
    for row in d:
        hit = np.flatnonzero(row < radius)
        if allowed is not None:
            hit = np.intersect1d(hit, allowed)
        out.append(set(hit.tolist()))
    return out


@pytest.mark.parametrize("strategy", ["scan", "auto", "filtered"])
def test_range_search_matches_the_exact_answer(index, data, strategy) -> None:
    x, _ = data
    q = x[:20] + 0.05
    radius = 14.0
    lims, ids, dist = index.search_range(q, radius, filter_strategy=strategy)
    assert lims.shape == (21,) and lims[0] == 0 and (np.diff(lims) >= 0).all()
    assert ids.shape == dist.shape == (lims[-1],)
    exact = exact_range(x, q, radius)
    found = [set(ids[lims[i] : lims[i + 1]].tolist()) for i in range(20)]
    hits = sum(len(f & e) for f, e in zip(found, exact))
    assert all(f <= e for f, e in zip(found, exact))  # never outside the radius
    assert hits / max(1, sum(len(e) for e in exact)) >= (1.0 if strategy == "scan" else 0.9)
    for i in range(20):
        assert (np.diff(dist[lims[i] : lims[i + 1]]) >= 0).all() and (dist < radius).all()


def test_range_search_reports_its_plan_and_learns_its_graph_figure(index, data) -> None:
    """A range search leaves its plan in last_plan(); once the graph has run a range
    search, the graph's prediction is the range figure learnt from it (per unit of
    beam), not the k-NN model's."""
    x, _ = data
    q = x[:16] + 0.05
    for strategy in ("scan", "filtered"):
        index.search_range(q, 14.0, filter_strategy=strategy)
        plan = index.last_plan()
        assert plan["strategy"] == strategy and plan["allowed"] == len(index)
    before = index.last_plan()["predicted_ns_per_query"]["filtered"]
    index.search_range(q, 14.0, filter_strategy="filtered")
    after = index.last_plan()["predicted_ns_per_query"]["filtered"]
    assert before > 0 and after > 0 and after != before
    index.search_range(q, 14.0)
    plan = index.last_plan()
    assert plan["strategy"] in ("scan", "filtered", "two_hop")
    assert plan["predicted_ns_per_query"]["scan"] > 0


def test_range_search_filtered_truncated_and_edge_cases(index, data) -> None:
    x, a = data
    q = x[:5]
    f = F("tenant") < 5
    allowed = np.flatnonzero(a["tenant"] < 5)
    lims, ids, _ = index.search_range(q, 20.0, filter=f)
    exact = exact_range(x, q, 20.0, allowed)
    for i in range(5):
        assert set(ids[lims[i] : lims[i + 1]].tolist()) == exact[i]
    lims, ids, dist = index.search_range(q, 1e9, max_results=7)
    assert (np.diff(lims) == 7).all()
    ref, refd = index.search(q, k=7, ef=200)
    assert np.allclose(np.sort(dist.reshape(5, 7), axis=1), refd, rtol=1e-5)
    lims, ids, _ = index.search_range(q[0], 0.0)  # nothing is strictly closer than 0
    assert lims.tolist() == [0, 0] and ids.size == 0
    for bad, err in [(-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                     ("1", TypeError), (True, TypeError)]:  # fmt: skip
        with pytest.raises(err, match="radius"):
            index.search_range(q, bad)
    with pytest.raises(ValueError, match="max_results"):
        index.search_range(q, 1.0, max_results=0)
    with pytest.raises(ValueError, match="dimension"):
        index.search_range(np.zeros(DIM + 1), 1.0)


def test_range_search_in_cosine_space() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    idx = evidex.HNSWIndex(8, "cosine")
    idx.add(x)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    lims, ids, dist = idx.search_range(x[:3], 0.2, filter_strategy="scan")
    for i in range(3):
        exact = np.flatnonzero(1 - xn @ xn[i] < 0.2)
        assert set(ids[lims[i] : lims[i + 1]].tolist()) == set(exact.tolist())


# ------------------------------------------------------------------ persistence
def test_attributes_survive_save_load_mmap_pickle(index, tmp_path, data) -> None:
    _, a = data
    f = (F("tenant") == 7) & (F("score") > 0.3)
    want = members(index, f)
    path = tmp_path / "a.evx"
    index.save(path)
    raw = path.read_bytes()
    assert struct.unpack_from("<I", raw, 8)[0] == 2  # the attribute format version
    for loaded in (
        evidex.HNSWIndex.load(path),
        evidex.HNSWIndex.load(path, mmap=True),
        pickle.loads(pickle.dumps(index)),
        evidex.HNSWIndex.from_bytes(raw),
    ):
        assert loaded.attribute_fields == index.attribute_fields
        assert members(loaded, f) == want
        assert loaded.get_attributes([11])["year"][0] == a["year"][11]
        loaded.add(np.zeros((1, DIM)), [N + 50], attributes={"tenant": [7], "score": [0.9]})
        assert N + 50 in members(loaded, f)


def test_an_index_without_attributes_still_writes_format_1(tmp_path) -> None:
    idx = evidex.HNSWIndex(4)
    idx.add(np.ones((3, 4)))
    assert struct.unpack_from("<I", idx.to_bytes(), 8)[0] == 1


def test_a_forged_attribute_section_is_refused(index) -> None:
    from fuzz_index_files import get, reseal

    raw = bytearray(index.to_bytes())
    at, size = get(raw, "attr_offset"), get(raw, "attr_bytes")
    assert at > 0 and size > 0
    cases = []
    bad = bytearray(raw)
    struct.pack_into("<Q", bad, at, 65)  # too many fields
    cases.append((bad, "too many attribute fields"))
    bad = bytearray(raw)
    struct.pack_into("<Q", bad, at + 8, 7)  # the element count
    cases.append((bad, "element count"))
    bad = bytearray(raw)
    struct.pack_into("<Q", bad, at + 16, 9)  # a type
    cases.append((bad, "unknown attribute type"))
    # The float field is last: its first value NaN.
    names = index.attribute_fields
    assert list(names)[-1] == "score"
    bad = bytearray(raw)
    last_values = at + size - (N + 63) // 64 * 8 - N * 8
    struct.pack_into("<d", bad, last_values, float("nan"))
    cases.append((bad, "non-finite"))
    bad = bytearray(raw)
    bad[at + size - 1] |= 0x80  # presence past the elements
    cases.append((bad, "presence bits past"))
    for forged, match in cases:
        with pytest.raises(evidex.CorruptIndexError, match=match):
            evidex.HNSWIndex.from_bytes(reseal(forged))


# ------------------------------------------------------------------ concurrency
def run_together(stop: threading.Event, seconds: float, targets) -> None:
    """Runs every target on its own thread until `seconds` pass, then stops them."""
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()


def test_concurrent_attribute_adds_and_filtered_searches(data) -> None:
    """Values are a function of the id, so every result can be checked as it comes."""
    x, _ = data
    idx = evidex.HNSWIndex(DIM, M=8, ef_construction=40)
    idx.add(x[:500], np.arange(500), attributes={"t": np.arange(500) % 10})
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                ids = rng.integers(0, N, 20)
                ids = np.unique(ids)
                idx.add(x[ids], ids, attributes={"t": ids % 10, "s": ids / N})
                if rng.random() < 0.3:
                    live = [i for i in ids.tolist() if i in idx]
                    if live:
                        try:
                            idx.delete(live[:2])
                        except (KeyError, ValueError):
                            pass
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                t = int(rng.integers(0, 10))
                strategy = STRATEGIES[int(rng.integers(0, 4))]
                ids, _ = idx.search(rng.standard_normal((4, DIM)), k=3, filter=F("t") == t,
                                    filter_strategy=strategy)  # fmt: skip
                got = ids[ids >= 0]
                assert (got % 10 == t).all(), (t, got)
                lims, rids, _ = idx.search_range(
                    rng.standard_normal(DIM), 30.0, filter=F("s") < 0.5
                )
                assert (rids < N / 2).all()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    run_together(stop, 3.0, [lambda i=i: writer(i) for i in range(2)]
                 + [lambda i=i: reader(10 + i) for i in range(3)])  # fmt: skip
    assert not errors, errors[0]
    idx2 = evidex.HNSWIndex.from_bytes(idx.to_bytes())
    assert members(idx2, F("t") == 3) == members(idx, F("t") == 3)


def test_stats_count_the_attribute_memory() -> None:
    idx = evidex.HNSWIndex(4)
    idx.add(np.ones((1000, 4)))
    before = idx.stats()["memory_bytes"]
    idx.add(np.ones((1000, 4)), np.arange(1000), attributes={"a": np.arange(1000)})
    assert idx.stats()["memory_bytes"] >= before + 1000 * 9


def test_slots_reused_during_filtered_searches_never_leak_into_results() -> None:
    """Deleted elements' slots reused (replace_deleted) while filtered searches run: a
    result must never name the new element unless the filter allows it."""
    rng = np.random.default_rng(0)
    idx = evidex.HNSWIndex(8, M=8, ef_construction=32, max_elements=4000)
    idx.add(rng.standard_normal((300, 8)), np.arange(300), attributes={"t": np.arange(300) % 10})
    stop = threading.Event()
    errors: list[BaseException] = []

    def adder() -> None:
        r = np.random.default_rng(1)
        while not stop.is_set():
            ids = np.unique(r.integers(0, 1000, 30))
            idx.add(r.standard_normal((len(ids), 8)), ids, attributes={"t": ids % 10})

    def replacer() -> None:
        r = np.random.default_rng(2)
        new = 10**6
        while not stop.is_set():
            live = idx.ids()
            live = live[live < 1000]
            pick = r.choice(live, 5, replace=False)
            try:
                idx.delete(pick)
            except (KeyError, ValueError):
                continue
            idx.add(r.standard_normal((5, 8)), np.arange(new, new + 5), replace_deleted=True)
            new += 5

    def reader(seed: int) -> None:
        r = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                t = int(r.integers(0, 10))
                strategy = STRATEGIES[int(r.integers(0, 4))]
                q = r.standard_normal((4, 8))
                ids, _ = idx.search(q, k=3, filter=F("t") == t, filter_strategy=strategy)
                got = ids[ids >= 0]
                assert ((got < 1000) & (got % 10 == t)).all(), (t, got)
                lims, hits, _ = idx.search_range(q, 20.0, filter=F("t") == t)
                assert ((hits < 1000) & (hits % 10 == t)).all(), (t, hits)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    run_together(stop, 4.0, [adder, replacer, lambda: reader(3), lambda: reader(4)])
    assert not errors, errors[0]
    live = idx.ids()
    values = idx.get_attributes(live)["t"].tolist()
    for i, v in zip(live.tolist(), values):
        assert (v is None) if i >= 10**6 else v == i % 10, (i, v)


def test_scans_from_many_threads_at_once_equal_the_exact_answer(index, data) -> None:
    """Scans keep packed blocks and query buffers per thread: eight threads scanning
    batches of every shape (below four queries, panel tails, several chunks, threads
    inside the call) at once each get numpy's exact answer."""
    x, _ = data
    rng = np.random.default_rng(11)
    cases = []
    for nq in (1, 3, 4, 7, 33, 150):
        allowed = np.sort(rng.choice(N, int(rng.integers(20, 700)), replace=False))
        q = rng.standard_normal((nq, DIM)).astype(np.float32)
        d = ((x[allowed][None, :, :].astype(np.float64) - q[:, None, :]) ** 2).sum(-1)
        cases.append((q, allowed, np.sort(d, axis=1)[:, :5]))

    def worker(seed: int) -> None:
        order = np.random.default_rng(seed).permutation(len(cases) * 4) % len(cases)
        for c in order:
            q, allowed, want = cases[c]
            ids, dist = index.search(q, k=5, filter=allowed, filter_strategy="scan",
                                     num_threads=int(seed % 3))  # fmt: skip
            assert np.isin(ids, allowed).all()
            np.testing.assert_allclose(dist, want, rtol=1e-4, atol=1e-4)

    run_on_threads(worker, 8)


def _answers_by_bits(index, q, k, allowed, threads=1) -> dict:
    out = {}
    for bits in (32, 8, 0):
        index.set_search_tuning(scan_bits=bits)
        out[bits] = index.search(q, k=k, filter=allowed, filter_strategy="scan",
                                 num_threads=threads)  # fmt: skip
    index.set_search_tuning()
    return out


@pytest.mark.parametrize("space", ["l2", "ip", "cosine"])
def test_the_8_bit_scan_keeps_exact_answers_on_hostile_values(space) -> None:
    """The 8-bit pass's error bound must hold where quantisation is worst: one
    huge component among small ones, ties (copies), zero vectors, vectors past the
    bound's arithmetic (norm 1e18: scored in float32 regardless) and queries past
    it (the float32 scan instead); scan_bits 0 picks the 8-bit pass here."""
    dim, n = 96, 2600
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, dim)).astype(np.float32) * 0.01
    x[:300, 0] = 50.0  # one component dominates: the rest quantise to 0
    x[300:600] = x[300]  # 300 copies: ties at every distance
    x[600:620] = 0.0
    if space != "cosine":
        x[620:630] = rng.standard_normal((10, dim)) * 1e17  # |x| ~1e18, past 1e15
    index = evidex.HNSWIndex(dim, space, M=4, ef_construction=20)
    index.add(x)
    allowed = np.arange(n)
    queries = [x[rng.integers(0, n, 20)] + rng.standard_normal((20, dim)).astype(np.float32) * 1e-3,
               rng.standard_normal((20, dim)).astype(np.float32)]  # fmt: skip
    if space != "cosine":
        queries.append(np.vstack([queries[1][:19], np.full((1, dim), 1e17, np.float32)]))
    stored = x.astype(np.float64)
    if space == "cosine":
        stored /= np.maximum(np.linalg.norm(stored, axis=1, keepdims=True), 1e-300)
    for q in queries:
        q64 = q.astype(np.float64)
        if space == "cosine":
            q64 /= np.linalg.norm(q64, axis=1, keepdims=True)
        if space == "l2":
            exact = (q64**2).sum(1)[:, None] + (stored**2).sum(1)[None] - 2 * q64 @ stored.T
        else:
            exact = 1 - q64 @ stored.T
        for k in (1, 10, 400):
            got = _answers_by_bits(index, q, k, allowed)
            for bits in (8, 0):
                ids, dist = got[bits]
                np.testing.assert_array_equal(np.isinf(dist), np.isinf(got[32][1]))
                for i in range(len(q)):
                    # A valid k nearest: each id within rounding of the true k-th
                    # distance, its distance the true one (ties broken either way).
                    kth = np.sort(exact[i])[k - 1]
                    fin = np.isfinite(dist[i])
                    tol = 1e-5 * max(1.0, abs(kth), float(np.abs(exact[i][ids[i][fin]]).max()))
                    assert (exact[i][ids[i][fin]] <= kth + tol).all(), (bits, k, i)
                    np.testing.assert_allclose(dist[i][fin], exact[i][ids[i][fin]], rtol=1e-5,
                                               atol=tol)  # fmt: skip
                    assert len(set(ids[i][fin].tolist())) == fin.sum()


@pytest.mark.parametrize("space", ["l2", "ip"])
def test_the_float32_scan_orders_ties_by_id_at_every_k(space) -> None:
    """The scan keeps its nearest sorted in AVX-512 registers up to k = 16 (on
    CPUs with them), else in a buffer cut now and then (not a heap): with small
    integer vectors every distance is exact in float32, so the answer is fully
    determined: ascending distance, equal distances by slot (here the id),
    whatever k (at and past 16, at and past the buffer's 64 entries, and the
    whole allowed set), in panels of several queries."""
    rng = np.random.default_rng(11)
    dim, n = 7, 700  # 7 dimensions and 499 rows: the panels' packing has tails both ways
    x = rng.integers(-3, 4, (n, dim)).astype(np.float32)  # many exact ties
    index = evidex.HNSWIndex(dim, space, M=4, ef_construction=20)
    index.add(x, num_threads=1)  # slots in id order: ties by slot are ties by id
    allowed = np.sort(rng.choice(n, 499, replace=False))
    q = rng.integers(-3, 4, (9, dim)).astype(np.float32)
    x64, q64 = x[allowed].astype(np.float64), q.astype(np.float64)
    if space == "l2":
        exact = ((q64[:, None, :] - x64[None]) ** 2).sum(-1)
    else:
        exact = 1.0 - q64 @ x64.T
    index.set_search_tuning(scan_bits=32)
    try:
        for k in (1, 10, 16, 17, 32, 33, 64, 65, 200, 499):
            ids, dist = index.search(q, k=k, filter=allowed, filter_strategy="scan")
            for i in range(len(q)):
                order = np.lexsort((allowed, exact[i]))[:k]
                np.testing.assert_array_equal(ids[i], allowed[order], err_msg=f"k={k} q={i}")
                np.testing.assert_array_equal(dist[i], exact[i][order].astype(np.float32))
    finally:
        index.set_search_tuning()


def test_8_bit_scans_from_many_threads_equal_the_float32_scan() -> None:
    """The 8-bit pass keeps its codes and panels per thread."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 128)).astype(np.float32)
    index = evidex.HNSWIndex(128, "l2", M=4, ef_construction=20)
    index.add(x)
    cases = []
    for nq in (1, 16, 40, 100):
        allowed = np.sort(rng.choice(3000, int(rng.integers(20, 3000)), replace=False))
        q = rng.standard_normal((nq, 128)).astype(np.float32)
        cases.append((q, allowed, index.search(q, 5, filter=allowed, filter_strategy="scan")))
    index.set_search_tuning(scan_bits=8)

    def worker(seed: int) -> None:
        for c in np.random.default_rng(seed).permutation(len(cases) * 3) % len(cases):
            q, allowed, (want_ids, want) = cases[c]
            ids, dist = index.search(q, k=5, filter=allowed, filter_strategy="scan",
                                     num_threads=int(seed % 3))  # fmt: skip
            np.testing.assert_array_equal(ids, want_ids)
            np.testing.assert_allclose(dist, want, rtol=1e-5)

    run_on_threads(worker, 8)


def test_scan_bits_is_checked() -> None:
    index = evidex.HNSWIndex(4)
    for bad in (7, 16, -1, 64):
        with pytest.raises(ValueError, match="scan_bits"):
            index.set_search_tuning(scan_bits=bad)
