"""The benchmark's plumbing: fvecs/ivecs reading, recall counting, limit analysis."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from bench.datasets import read_fvecs
from bench.limits import analyse
from evidex import _core


def _write_vecs(path, rows: np.ndarray) -> None:
    dim = rows.shape[1]
    out = np.empty((rows.shape[0], dim + 1), dtype=np.int32)
    out[:, 0] = dim
    out[:, 1:] = rows.view(np.int32) if rows.dtype == np.float32 else rows
    out.tofile(path)


def test_fvecs_and_ivecs_round_trip(tmp_path) -> None:
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    _write_vecs(tmp_path / "a.fvecs", x)
    np.testing.assert_array_equal(read_fvecs(str(tmp_path / "a.fvecs")).view(np.float32), x)
    ids = np.arange(12, dtype=np.int32).reshape(3, 4)
    _write_vecs(tmp_path / "a.ivecs", ids)
    np.testing.assert_array_equal(read_fvecs(str(tmp_path / "a.ivecs")), ids)


def test_fvecs_rejects_damaged_files(tmp_path) -> None:
    (tmp_path / "empty.fvecs").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_fvecs(str(tmp_path / "empty.fvecs"))
    x = np.ones((3, 4), np.float32)
    _write_vecs(tmp_path / "t.fvecs", x)
    (tmp_path / "t.fvecs").write_bytes((tmp_path / "t.fvecs").read_bytes()[:-4])
    with pytest.raises(ValueError, match="not a valid"):
        read_fvecs(str(tmp_path / "t.fvecs"))


def test_memory_latency_measures_and_refuses_bad_sizes() -> None:
    ns = _core.memory_latency(megabytes=4, steps=20_000)
    assert 0 < ns < 1e6
    for bad in ({"megabytes": 0}, {"steps": 0}, {"megabytes": 1 << 20}):
        with pytest.raises(ValueError, match="memory_latency"):
            _core.memory_latency(**bad)


def test_limit_analysis_reads_counts_and_layouts(tmp_path) -> None:
    """Each evidex point gets its lines, kernel and latency bounds; the limit is the
    larger bound plus the call, and a point without hops is left out."""
    import json

    point = {"library": "evidex-sq8", "ef": 64, "recall": 0.93, "qps": 1000.0,
             "distance_computations": 2000.0, "hops": 100.0}  # fmt: skip
    doc = {"result": {"dataset": "toy", "n_base": 1000, "dim": 50, "space": "angular", "M": 16,
                      "layouts": {"evidex-sq8": {"node_bytes": 340, "code_bytes": 64,
                                                 "pq4_block_bytes": 0}},
                      "points": [point, {**point, "library": "evidex", "hops": None},
                                 {**point, "library": "hnswlib"}]}}  # fmt: skip
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(doc))
    table = analyse(str(path), latency_ns=100.0)
    rows = [line for line in table.splitlines() if line.startswith("| evidex")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    # 100 hops x 3 link lines + 2000 codes x 1 line + a re-ranked beam of 64 x 4 lines
    assert cells[5] == str(100 * 3 + 2000 + 64 * 4)
    assert cells[7] == "10.0 us"  # 100 hops x 100 ns


def test_limit_analysis_of_a_fast_scan_graph(tmp_path) -> None:
    """A RaBitQ graph's hop reads one row (its node, then its block of edge codes),
    and its kernel bound counts each expanded node's group of 32 codes."""
    import json

    from bench.limits import edge_groups

    layout = {"node_bytes": 656, "code_bytes": 0, "pq4_block_bytes": 768}
    point = {"library": "evidex-rabitq-refined", "ef": 16, "recall": 0.93, "qps": 30000.0,
             "distance_computations": 45.0, "hops": 22.0}  # fmt: skip
    doc = {"result": {"dataset": "toy", "n_base": 1000, "dim": 128, "space": "l2", "M": 16,
                      "layouts": {"evidex-rabitq-refined": layout}, "points": [point]}}  # fmt: skip
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(doc))
    cells = [c.strip() for c in analyse(str(path), latency_ns=100.0).splitlines()[-1]
             .strip("|").split("|")]  # fmt: skip
    assert cells[0] == "evidex-rabitq-refined"
    assert cells[5] == str(22 * (11 + 12))  # node 656 bytes: 11 lines; block: 12
    assert cells[7] == "2.2 us"
    # 32 edges in one group; 768 = 32 subspaces x 16 bytes + 32 edges x 2 floats
    assert edge_groups("evidex-rabitq", layout, "l2", 16) == (1, 32, 32)
    assert edge_groups("evidex-pq4", {"pq4_block_bytes": 640}, "l2", 16) == (1, 32, 32)
    assert edge_groups("evidex-pq4", {"pq4_block_bytes": 512}, "cosine", 16) == (1, 32, 32)
    # M 8: 16 edges in one half group; 384 = 32 subspaces x 8 bytes + 16 edges x 2 floats
    assert edge_groups("evidex-rabitq", {"pq4_block_bytes": 384}, "l2", 8) == (1, 32, 16)
    # the same graph in a file from before half groups: the index reports its groups
    legacy = {"pq4_block_bytes": 640, "edge_group_codes": 32}
    assert edge_groups("evidex-rabitq", legacy, "l2", 8) == (1, 32, 32)
    assert edge_groups("evidex-sq8", layout, "l2", 16) is None


def test_reorder_reads_the_graph_and_orders_every_slot_once() -> None:
    """bench.reorder parses the level-0 graph from an hnswlib-format save (labels and
    links as the index holds them) and its breadth-first order is a permutation."""
    import evidex
    from bench.reorder import bfs_order, level0_graph

    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    index = evidex.HNSWIndex(8, M=6, ef_construction=30)
    index.add(x, np.arange(1000, 1500))
    labels, counts, links, entry = level0_graph(index)
    assert sorted(labels.tolist()) == list(range(1000, 1500))
    assert counts.max() <= 12 and counts.min() >= 1 and 0 <= entry < 500
    assert all((links[i, : counts[i]] < 500).all() for i in range(500))
    order = bfs_order(counts, links, entry)
    assert order[0] == entry and sorted(order.tolist()) == list(range(500))


def test_interleave_bench_measures_every_group_with_the_same_answers(tmp_path) -> None:
    """bench.interleave runs every group size at every beam and thread count, and
    would stop if a group size changed an answer."""
    from bench.interleave import main

    rng = np.random.default_rng(0)
    _write_vecs(tmp_path / "b.fvecs", rng.standard_normal((1500, 12)).astype(np.float32))
    _write_vecs(tmp_path / "q.fvecs", rng.standard_normal((25, 12)).astype(np.float32))
    out = main(["--dataset", f"fvecs:{tmp_path / 'b.fvecs'},{tmp_path / 'q.fvecs'}",
                "--size", "1500", "--queries", "25", "--groups", "1,2,3", "--efs", "16,40",
                "--rounds", "2", "--index", str(tmp_path / "i.evx"),
                "--out", str(tmp_path / "r.json")])  # fmt: skip
    assert out["n"] == 1500 and out["code_bytes"] > 0
    assert [(r["ef"], sorted(r["qps"])) for r in out["rows"][:2]] == [
        (16, [1, 2, 3]),
        (40, [1, 2, 3]),
    ]
    assert all(v > 0 for r in out["rows"] for v in r["qps"].values())
    assert (tmp_path / "i.evx").exists() and (tmp_path / "r.json").exists()


def test_exact_scan_bench_compares_both_passes_with_the_same_answers(tmp_path) -> None:
    """bench.exact_scan times both first passes for every size and filter kind and
    counts the ids on which they differ (none here: no ties in random data)."""
    from bench.exact_scan import main

    rng = np.random.default_rng(0)
    _write_vecs(tmp_path / "b.fvecs", rng.standard_normal((2500, 100)).astype(np.float32))
    _write_vecs(tmp_path / "q.fvecs", rng.standard_normal((10, 100)).astype(np.float32))
    out = main(["--dataset", f"fvecs:{tmp_path / 'b.fvecs'},{tmp_path / 'q.fvecs'}",
                "--size", "2500", "--queries", "20", "--allowed", "100,2100", "--rounds", "1",
                "--out", str(tmp_path / "r.json")])  # fmt: skip
    assert [(r["allowed"], r["filter"]) for r in out["rows"]] == [
        (100, "cluster"), (100, "random"), (2100, "cluster"), (2100, "random"),
    ]  # fmt: skip
    assert all(r["float32_us"] > 0 and r["int8_us"] > 0 for r in out["rows"])
    assert all(r["ids_differing"] == 0 for r in out["rows"])
    assert (tmp_path / "r.json").exists()


def test_first_pass_bench_counts_reads_under_a_true_lower_bound(tmp_path) -> None:
    """bench.first_pass (sketch) checks its bound never exceeds a distance, and
    more sketch dimensions never make a scan read more (all of them: only the k);
    (pq4) re-ranking every allowed vector finds every true neighbour."""
    from bench.first_pass import main

    rng = np.random.default_rng(0)
    low_rank = rng.standard_normal((2000, 4)) @ rng.standard_normal((4, 24))
    base = (low_rank + 0.05 * rng.standard_normal((2000, 24))).astype(np.float32)
    _write_vecs(tmp_path / "b.fvecs", base)
    _write_vecs(tmp_path / "q.fvecs", base[:30] + 0.01)
    data = ["--dataset", f"fvecs:{tmp_path / 'b.fvecs'},{tmp_path / 'q.fvecs'}", "--size", "2000"]
    out = main([*data, "--dims", "2,8,24", "--selectivity", "0.1"])
    assert out["variance_kept"][24] == pytest.approx(1.0)
    assert [r["filter"] for r in out["rows"]] == ["random", "cluster", "other-clusters"]
    for r in out["rows"]:
        reads = [r["read"][d] for d in (2, 8, 24)]
        assert reads[0] >= reads[1] >= reads[2] and reads[0] <= r["allowed"]
        assert reads[2] <= 10  # the whole vector: exactly the k nearest (ties aside)
    pq = main([*data, "--method", "pq4", "--sub-dim", "6", "--depths", "10,2000",
               "--selectivity", "0.1"])  # fmt: skip
    for r in pq["rows"]:
        assert 0 < r["recall"][10] <= r["recall"][2000] == 1.0


def _tiny_dataset(monkeypatch, seed: int, dim: int) -> None:
    """bench.datasets gains "tiny": 400 random vectors, 20 queries, l2."""
    from bench import datasets

    rng = np.random.default_rng(seed)
    base = rng.normal(size=(400, dim)).astype(np.float32)
    queries = rng.normal(size=(20, dim)).astype(np.float32)

    def tiny(size, n_queries):
        truth = datasets.ground_truth(base, queries, "l2")
        return datasets.VectorDataset("tiny", "l2", base, queries, truth)

    monkeypatch.setitem(datasets.DATASETS, "tiny", tiny)


def test_ann_bench_runs_the_batch_on_the_threads_asked_for(tmp_path, monkeypatch) -> None:
    import json

    from bench import ann

    _tiny_dataset(monkeypatch, seed=3, dim=8)
    seen: list[int] = []
    batch = ann.Evidex.batch

    def counting(self, q, k, threads):
        seen.append(threads)
        return batch(self, q, k, threads)

    monkeypatch.setattr(ann.Evidex, "batch", counting)
    args = ["--dataset", "tiny", "--queries", "20", "--libraries", "evidex", "--ef", "16",
            "--repeats", "1", "--batch", "--threads", "2", "--out", str(tmp_path)]  # fmt: skip
    assert ann.main([*args, "--batch-threads", "1"]) == 0
    assert seen and set(seen) == {1}
    text = (tmp_path / "tiny-400.md").read_text()
    assert "batch QPS (1 threads)" in text
    saved = json.loads((tmp_path / "tiny-400.json").read_text())
    assert saved["result"]["machine"]["batch_threads"] == 1
    seen.clear()
    assert ann.main(args) == 0  # the default: the --threads of the build
    assert set(seen) == {2}


def test_ann_bench_builds_a_crinn_layout_winner(tmp_path, monkeypatch) -> None:
    import json

    from bench import ann
    from evidex.crinn.archive import write_json

    _tiny_dataset(monkeypatch, seed=4, dim=16)
    config = {"EVX_CODES": 3, "EVX_M": 8, "EVX_REFINE_EF": 50}
    write_json(tmp_path / "run" / "run.json", {"settings": {}})
    write_json(tmp_path / "run" / "winners.json", {"layout": {"config": config}})
    args = ["--dataset", "tiny", "--queries", "20", "--libraries", "evidex-layout", "--ef", "16",
            "--repeats", "1", "--out", str(tmp_path)]  # fmt: skip
    with pytest.raises(SystemExit):
        ann.main(args)  # no run folder named
    assert ann.main([*args, "--layout", str(tmp_path / "run")]) == 0
    saved = json.loads((tmp_path / "tiny-400.json").read_text())
    layout = saved["result"]["machine"]["layout"]
    assert layout["quantization"] == "rabitq" and layout["M"] == 8 and layout["refine_ef"] == 50
    (point,) = [p for p in saved["result"]["points"] if p["library"] == "evidex-layout"]
    assert point["recall"] > 0.5


def test_groups_bench_compares_one_graph_in_both_layouts(tmp_path) -> None:
    """bench.groups: a file from before half groups (tests/data) against the same
    graph built today; it refuses a pair that is not the same graph in two layouts."""
    import json as json_module

    import evidex
    from bench.groups import main

    here = Path(__file__).parent / "data"
    data = np.load(here / "legacy_fast_scan_data.npy")
    queries = np.asarray(
        json_module.loads((here / "legacy_fast_scan.json").read_text())["queries"], np.float32
    )

    _write_vecs(tmp_path / "b.fvecs", data)
    _write_vecs(tmp_path / "q.fvecs", queries)
    spec = f"fvecs:{tmp_path / 'b.fvecs'},{tmp_path / 'q.fvecs'}"
    # pq4: a RaBitQ graph's inserts now follow its codes (another graph than the file's).
    half = evidex.HNSWIndex(24, "l2", M=4, ef_construction=40, quantization="pq4")
    half.add(data, num_threads=1)  # as the legacy file was built: the same graph
    half.save(tmp_path / "half.evx")
    full = str(here / "legacy_pq4_l2_M4.evx")
    args = ["--dataset", spec, "--size", "150", "--queries", "6", "--efs", "8,40"]
    out = main([full, str(tmp_path / "half.evx"), *args, "--rounds", "1"])
    assert [p["ef"] for p in out["points"]] == [8, 40]
    assert out["block_bytes"]["half"] < out["block_bytes"]["full"]
    assert all(p["qps"]["half"] > 0 and p["batch_qps"]["full"] > 0 for p in out["points"])
    other = evidex.HNSWIndex(24, "l2", M=4, ef_construction=40, quantization="pq4")
    other.add(data[::-1])  # other ids: not the same graph
    other.save(tmp_path / "other.evx")
    with pytest.raises(SystemExit, match="answer differently"):
        main([full, str(tmp_path / "other.evx"), *args, "--rounds", "1"])
    with pytest.raises(SystemExit, match="not a half-group pair"):
        main([str(tmp_path / "half.evx"), full, *args, "--rounds", "1"])


def test_build_cost_bench_times_add_and_refinement(tmp_path) -> None:
    """bench.build_cost: one row per ef_construction:beam config, the refinement's
    time apart from the add's, recall at each search beam."""
    from bench.build_cost import main

    rng = np.random.default_rng(3)
    _write_vecs(tmp_path / "b.fvecs", rng.normal(size=(400, 8)).astype(np.float32))
    _write_vecs(tmp_path / "q.fvecs", rng.normal(size=(5, 8)).astype(np.float32))
    spec = f"fvecs:{tmp_path / 'b.fvecs'},{tmp_path / 'q.fvecs'}"
    out = main(["--dataset", spec, "--size", "400", "--queries", "5", "--M", "4",
                "--configs", "40:0", "40:20", "--efs", "8,64", "--threads", "1",
                "--out", str(tmp_path / "o.json")])  # fmt: skip
    no_refine, refined = out["rows"]
    assert (no_refine["refine_beam"], refined["refine_beam"]) == (0, 20)
    assert refined["recall"][64] >= 0.9 and refined["build_over_hnswlib"] > 0
    assert out["hnswlib_build_s"] > 0 and (tmp_path / "o.json").exists()


def test_timed_calls_loops_until_the_minimum_time() -> None:
    from bench.filtered import timed_calls

    calls: list[int] = []

    def work(x: int) -> int:
        calls.append(x)
        time.sleep(0.002)
        return x * 2

    per_call, outs = timed_calls(work, 21, min_seconds=0.03)
    assert len(outs) == len(calls) >= 10 and set(outs) == {42}
    assert 0.002 <= per_call < 0.03  # the mean of the loop, not its total
    per_call, outs = timed_calls(work, 1, min_seconds=0.0)
    assert len(outs) == 1  # a call longer than the minimum runs once
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="min_seconds"):
            timed_calls(work, 1, min_seconds=bad)


def test_filtered_bench_times_every_kind_and_keeps_the_lowest_recall(tmp_path, monkeypatch) -> None:
    import json

    from bench import ann, filtered

    _tiny_dataset(monkeypatch, seed=5, dim=8)
    recalls: list[float] = []
    real = filtered.recall

    def noted(found, truth):
        recalls.append(real(found, truth))
        return recalls[-1]

    monkeypatch.setattr(filtered, "recall", noted)
    args = ["--dataset", "tiny", "--queries", "20", "--filter-selectivity", "0.5,0.05",
            "--filter-queries", "10", "--clusters", "8", "--repeats", "2", "--libraries",
            "evidex", "--min-seconds", "0.005", "--out", str(tmp_path)]  # fmt: skip
    assert ann.main(args) == 0
    saved = json.loads((tmp_path / "filtered-tiny-400.json").read_text())
    kinds = {(r["kind"], r["selectivity"]) for r in saved["filtered"]}
    assert ("random", 0.05) in kinds and ("cluster", 0.5) in kinds
    for row in saved["filtered"]:
        points = row["points"]["evidex"]
        assert points and all(p["qps"] > 0 and 0.0 <= p["recall"] <= 1.0 for p in points)
        assert row["points"]["evidex-exact-scan"][0]["recall"] == 1.0
    # Calls of ~0.1 ms loop for 5 ms: many per point and round, each one's recall counted.
    measured = 2 * sum(len(p) for r in saved["filtered"] for p in r["points"].values())
    assert len(recalls) >= 10 * measured
    # Range rows name the method that ran (the forced scan: "scan").
    assert saved["range"]
    for row in saved["range"]:
        assert row["points"]["evidex-exact-scan"]["plan"] == "scan"
        assert row["points"]["evidex"]["plan"] in ("scan", "filtered", "two_hop", "coded_scan")


def test_filter_sets_do_not_depend_on_the_other_selectivities_and_draws_differ() -> None:
    """A run over part of the selectivity list measures the same sets as the whole
    list (each selectivity has its own random stream), and each draw of the
    correlated filters takes other clusters than the earlier draws."""
    from bench.filtered import filter_cases, kmeans

    rng = np.random.default_rng(2)
    base = rng.standard_normal((3000, 6)).astype(np.float32)
    queries = rng.standard_normal((60, 6)).astype(np.float32)
    cluster, centroids = kmeans(base, 30)

    def sets(sels, draws):
        cases = filter_cases(base, queries, cluster, centroids, sels, "l2", 5, 20, draws=draws)
        return {(kind, sel, draw): allowed for kind, sel, draw, allowed, _, _, _ in cases}

    whole, part = sets([0.1, 0.01], 3), sets([0.01], 3)
    assert part and all(np.array_equal(whole[key], allowed) for key, allowed in part.items())
    clusters = [set(cluster[whole[("cluster", 0.01, d)]].tolist()) for d in range(3)]
    assert all(clusters) and not (clusters[0] & clusters[1] or clusters[1] & clusters[2])
    for d in range(3):  # other-clusters filters the same set as its draw's cluster row
        assert np.array_equal(whole[("cluster", 0.01, d)], whole[("other-clusters", 0.01, d)])


def test_filter_draws_below_one_is_refused(capsys) -> None:
    from bench import ann

    for bad in ("0", "-2"):
        with pytest.raises(SystemExit):
            ann.main(["--filter-selectivity", "0.1", "--filter-draws", bad])
        assert "--filter-draws must be at least 1" in capsys.readouterr().err
