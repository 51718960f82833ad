"""CRINN: kernel ABI and loading, templates, sandbox against hostile candidates,
the loop with its archive, the LLM proposer and its learning step."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from crinn_hostile import source as hostile_source

import evidex
from conftest import clustered
from evidex import HNSWIndex, kernels
from evidex.crinn import (
    CrinnRun,
    Limits,
    Proposal,
    Settings,
    TemplateProposer,
    build_kernel,
    builtin_config,
    reference_config,
    render,
)
from evidex.crinn.templates import KERNEL_SLOTS, SPACE, canonical, config_key
from evidex.rewards import contrastive_rewards

pytestmark = pytest.mark.skipif(
    os.name != "posix", reason="kernel libraries are built and sandboxed on Linux"
)


@pytest.fixture(scope="module")
def libs(tmp_path_factory) -> dict[str, Path]:
    """Kernel libraries built once for the module."""
    root = tmp_path_factory.mktemp("libs")
    out = {}
    for name, slot, config in [
        ("search_builtin", "search", builtin_config("search")),
        (
            "search_tuned",
            "search",
            {**builtin_config("search"), "EVX_BATCH": 1, "EVX_VISITED": 1, "EVX_PREFETCH_LINKS": 3},
        ),
        ("construction_alpha", "construction", {"EVX_SELECT": 1, "EVX_ALPHA_X100": 110}),
        ("refinement_hop", "refinement", {"EVX_REFINE": 1, "EVX_REFINE_TOP": 2}),
        (
            "construction_extend",
            "construction",
            {"EVX_SELECT": 1, "EVX_ALPHA_X100": 110, "EVX_EXTEND": 8},
        ),
        ("construction_extend_nearest", "construction", {"EVX_SELECT": 3, "EVX_EXTEND": 4}),
        (
            "search_quant_wide",
            "search",
            {**builtin_config("search"), "EVX_QUANT": 1, "EVX_QUANT_WIDEN": 8, "EVX_ENTRY": 1},
        ),
        ("search_patience", "search", {**builtin_config("search"), "EVX_PATIENCE": 16}),
    ]:
        built = build_kernel(render(slot, config), root / name)
        assert built.ok, built.log
        out[name] = built.library
    return out


# ------------------------------------------------------------------ ABI and loading
def test_abi_header_ships_with_the_package() -> None:
    text = kernels.abi_header().read_text()
    assert f"#define EVIDEX_KERNEL_ABI_VERSION {kernels.ABI_VERSION}u" in text
    for symbol in ("evx_search_fn", "evx_select_fn", "evx_refine_fn", "evx_graph_view"):
        assert symbol in text


def test_template_kernel_equal_to_builtin_serves_queries(libs) -> None:
    data = clustered(3000, 24)
    index = HNSWIndex(24, "l2", max_elements=3000)
    index.add(data)
    q = data[:50] + 0.05
    want = index.search(q, 10, ef=48)
    assert index.kernels() == {
        "search": "builtin",
        "filtered search": "builtin",
        "construction": "builtin",
        "refinement": "builtin",
    }
    allowed = np.arange(0, 3000, 7)
    want_filtered = index.search(q, 10, ef=48, filter=allowed, filter_strategy="filtered")
    index.use_kernels(libs["search_builtin"])
    assert index.kernels()["search"] == str(libs["search_builtin"])
    assert index.kernels()["filtered search"] == str(libs["search_builtin"])
    got = index.search(q, 10, ef=48)
    # The template's built-in configuration is the same algorithm: identical results.
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
    index.use_kernels(libs["search_tuned"])  # batched distances, bitset visited set
    np.testing.assert_array_equal(index.search(q, 10, ef=48)[0], want[0])
    # Filtered searches that walk the graph run the library's evidex_search_filtered
    # (the template's is hnswlib's filtered search, as the built-in): the same
    # results; exact scans and range searches stay built-in.
    got = index.search(q, 10, ef=48, filter=allowed, filter_strategy="filtered")
    np.testing.assert_array_equal(got[0], want_filtered[0])
    np.testing.assert_allclose(got[1], want_filtered[1], rtol=1e-5)
    for strategy in ("scan", "filtered", "two_hop", "auto"):
        ids, _ = index.search(q, 10, ef=48, filter=allowed, filter_strategy=strategy)
        assert np.isin(ids, allowed).all()
    few = np.arange(0, 3000, 997)  # fewer allowed than k: all of them, then padding
    ids, _ = index.search(q[:3], 10, ef=48, filter=few, filter_strategy="filtered")
    assert (np.sort(ids[:, :4], axis=1) == few).all() and (ids[:, 4:] == -1).all()
    lims, ids, _ = index.search_range(q, 1.0)
    assert lims[-1] == ids.size
    index.reset_kernels()
    assert index.kernels()["search"] == "builtin"


def test_every_slot_loads_and_stacks(libs) -> None:
    data = clustered(2000, 16, seed=1)
    index = HNSWIndex(16, "cosine", max_elements=2000, kernels=libs["construction_alpha"])
    index.use_kernels(libs["refinement_hop"])
    index.use_kernels(libs["search_tuned"])
    assert index.kernels() == {
        "search": str(libs["search_tuned"]),
        "filtered search": str(libs["search_tuned"]),
        "construction": str(libs["construction_alpha"]),
        "refinement": str(libs["refinement_hop"]),
    }
    index.add(data)  # built with the alpha-RNG neighbour selection
    ids, dists = index.search(data[:20], 5, ef=32)
    truth, true_d = evidex.exact_knn(data, data[:20], 5, "cosine")
    assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, truth)]) > 0.95
    np.testing.assert_allclose(dists[:, 0], true_d[:, 0], atol=1e-5)


def test_quantised_search_with_a_widened_beam_returns_ef_exact_results(libs) -> None:
    # 8-bit traversal over ef + 8 slots, re-ranked in float32: never more than ef
    # results (the ABI's buffers hold ef), with exact distances, at least the
    # built-in's recall.
    data = clustered(3000, 24, seed=4)
    index = HNSWIndex(24, "l2", max_elements=3000)
    index.add(data)
    q = data[:100] + 0.05
    truth, _ = evidex.exact_knn(data, q, 10, "l2")
    want_ids, _ = index.search(q, 10, ef=10)
    index.use_kernels(libs["search_quant_wide"])  # passes the self-test
    ids, dists = index.search(q, 10, ef=10)
    assert ids.shape == (100, 10)
    exact = ((data[ids] - q[:, None, :]) ** 2).sum(-1)
    np.testing.assert_allclose(dists, exact, rtol=1e-4, atol=1e-4)

    def recall(found):
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])

    assert recall(ids) >= recall(want_ids) - 0.005


def test_bad_libraries_are_refused(tmp_path, libs) -> None:
    index = HNSWIndex(8)
    index.add(np.random.default_rng(0).standard_normal((300, 8)))
    with pytest.raises(FileNotFoundError):
        index.use_kernels(tmp_path / "missing.so")
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not an ELF file")
    with pytest.raises(ValueError, match="not a valid ELF"):
        index.use_kernels(junk)
    wrong = build_kernel(
        '#include <evidex/kernel_abi.h>\nextern "C" __attribute__((visibility("default")))'
        " uint32_t evidex_kernel_abi_version(void) { return 999; }\n",
        tmp_path / "wrong",
    )
    assert wrong.ok, wrong.log
    with pytest.raises(ValueError, match="ABI version 999"):
        index.use_kernels(wrong.library)
    empty = build_kernel(
        '#include <evidex/kernel_abi.h>\nextern "C" __attribute__((visibility("default")))'
        " uint32_t evidex_kernel_abi_version(void) { return EVIDEX_KERNEL_ABI_VERSION; }\n",
        tmp_path / "empty",
    )
    with pytest.raises(ValueError, match="exports none"):
        index.use_kernels(empty.library)
    assert index.kernels()["search"] == "builtin"


def test_a_library_for_another_cpu_is_refused_before_any_of_its_code_runs(tmp_path) -> None:
    """Archives move between machines: a library needing an extension this CPU
    lacks is refused with its name (read from the file, no code run); one that
    declares nothing, or a name evidex cannot check, is refused too."""
    lacking = [f for f in evidex._core.known_cpu_features() if f not in evidex._core.cpu_features()]
    assert lacking, "this CPU has every extension evidex knows"
    marker = tmp_path / "constructor-ran"
    body = (
        "#include <evidex/kernel_abi.h>\n#include <cstdio>\n"
        'EVIDEX_KERNEL_CPU_FEATURES("{features}");\n'
        f'__attribute__((constructor)) static void ran() {{ fclose(fopen("{marker}", "w")); }}\n'
        'extern "C" __attribute__((visibility("default"))) uint32_t evidex_kernel_abi_version(void)'
        " { return EVIDEX_KERNEL_ABI_VERSION; }\n"
    )
    index = HNSWIndex(8)
    index.add(np.random.default_rng(0).standard_normal((300, 8)))
    for features, match in [
        (lacking[0], f"lacks: {lacking[0]}"),
        ("avx2 quantum-foo", "lacks: .*quantum-foo"),
    ]:
        lib = build_kernel(body.replace("{features}", features), tmp_path / features[:6],
                           native=False)  # fmt: skip
        assert lib.ok, lib.reason
        with pytest.raises(ValueError, match=match):
            index.use_kernels(lib.library)
        assert (
            evidex._core.kernel_library_cpu_features(str(lib.library))[-1] == features.split()[-1]
        )
    assert not marker.exists()
    # No declaration at all (a library built by other means): refused.
    bare = tmp_path / "bare.so"
    import shutil
    import subprocess

    shutil.copy(lib.library, bare)
    subprocess.run(["objcopy", "--remove-section", ".evidex_cpu", str(bare)], check=True)
    with pytest.raises(ValueError, match="declares no CPU features"):
        index.use_kernels(bare)
    assert not marker.exists() and index.kernels()["search"] == "builtin"


def test_native_builds_declare_exactly_the_extensions_they_use(tmp_path) -> None:
    from evidex.crinn.build import compile_flags, native_features

    flags, features = compile_flags(native=True)
    assert "-march=native" not in flags and "-march=x86-64" in flags
    assert set(features) <= set(evidex._core.cpu_features())
    assert all(f"-m{f}" in flags for f in features) and features == native_features()
    lib = build_kernel(render("search", builtin_config("search")), tmp_path / "n")
    assert tuple(evidex._core.kernel_library_cpu_features(str(lib.library))) == features


def test_self_test_rejects_wrong_results_and_keeps_the_old_kernels(tmp_path, libs) -> None:
    index = HNSWIndex(8)
    index.add(np.random.default_rng(0).standard_normal((500, 8)))
    bad = build_kernel(hostile_source("wrong_answer"), tmp_path / "bad")
    assert bad.ok, bad.log
    with pytest.raises(kernels.KernelSelfTestError, match="recall|distances"):
        index.use_kernels(bad.library)
    assert index.kernels()["search"] == "builtin"
    # Adaptive ef (patience) trades recall; the self-test measures it against the
    # built-in kernels instead of trusting it.
    report = kernels.self_test(kernels.load_library(libs["search_patience"]), dim=8)
    assert set(report["recall"]) == {16, 64}


def test_a_kernel_answer_out_of_range_is_an_error_not_a_crash(tmp_path) -> None:
    index = HNSWIndex(8)
    index.add(np.random.default_rng(0).standard_normal((100, 8)))
    lib = build_kernel(hostile_source("out_of_range"), tmp_path / "oor")
    index.use_kernels(lib.library, self_test=False)
    with pytest.raises(RuntimeError, match="past the 100"):
        index.search(np.zeros(8), 1)


def test_a_construction_kernel_may_add_level0_neighbours_of_its_candidates(libs) -> None:
    # EVX_EXTEND: the pool grows by the links of the nearest candidates, measured
    # against the node itself (ABI 3 passes the node and its level).
    data = clustered(3000, 16, seed=2)
    index = HNSWIndex(16, "l2", max_elements=3000, kernels=libs["construction_extend"])
    index.add(data, num_threads=2)
    ids, _ = index.search(data[:50] + 0.01, 10, ef=64)
    truth, _ = evidex.exact_knn(data, data[:50] + 0.01, 10, "l2")
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)]) > 0.95
    # Concurrent inserts: a widened pool can link a node into a list before its own
    # back-link arrives there; the index must not add it twice (the nearest-m rule
    # keeps every repeat, and the index refuses repeated neighbours).
    index = HNSWIndex(16, "l2", max_elements=20000)
    # (its recall is below the built-in's, which the self-test rightly refuses)
    index.use_kernels(libs["construction_extend_nearest"], self_test=False)
    index.add(np.random.default_rng(3).standard_normal((20000, 16)), num_threads=2)
    assert len(index) == 20000


_SELECT_HEAD = """#include <evidex/kernel_abi.h>
extern "C" __attribute__((visibility("default"))) uint32_t evidex_kernel_abi_version(void) {
    return EVIDEX_KERNEL_ABI_VERSION;
}
extern "C" __attribute__((visibility("default"))) int64_t evidex_select_neighbors(
    const evx_graph_view* g, uint32_t node, uint32_t level, const uint32_t* ids,
    const float* dists, size_t n, size_t m, uint32_t* out_ids, float* out_dists) {
    size_t kept = 0;
    for (; kept < n && kept < m; ++kept) {
        out_ids[kept] = ids[kept];
        out_dists[kept] = dists[kept];
    }
"""


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("self", "out_ids[0] = node;", "invalid neighbour"),
        ("repeat", "if (kept > 1) out_ids[1] = out_ids[0];", "invalid neighbour"),
        ("range", "out_ids[0] = (uint32_t)g->num_nodes + 5;", "invalid neighbour"),
        (
            # Above level 0 the view's links are the wrong level's: candidates only.
            "upper",
            "if (level > 0) { uint32_t x = 0; for (bool hit = true; hit; ++x) { hit = x == node;"
            " for (size_t i = 0; i < n; ++i) hit = hit || ids[i] == x; if (!hit) break; }"
            " out_ids[0] = x; }",
            "not a candidate above level 0",
        ),
    ],
)
def test_a_construction_kernel_that_breaks_the_contract_is_refused(
    tmp_path, name, body, message
) -> None:
    lib = build_kernel(_SELECT_HEAD + body + "\n    return (int64_t)kept;\n}\n", tmp_path / name)
    assert lib.ok, lib.log
    index = HNSWIndex(8, max_elements=3000, M=4)
    index.use_kernels(lib.library, self_test=False)
    with pytest.raises(RuntimeError, match=message):
        index.add(np.random.default_rng(0).standard_normal((3000, 8)))


@pytest.mark.parametrize("quantization", [None, "rabitq"])
def test_refine_graph_refuses_a_construction_kernel_that_breaks_the_contract(
    tmp_path, quantization
) -> None:
    """refine_graph re-chooses every list through the construction slot: a loaded
    kernel that returns the node itself is refused there too, and the graph stays
    searchable."""
    body = "out_ids[0] = node;"
    lib = build_kernel(_SELECT_HEAD + body + "\n    return (int64_t)kept;\n}\n", tmp_path / "s")
    assert lib.ok, lib.log
    data = np.random.default_rng(0).standard_normal((3000, 8)).astype(np.float32)
    index = HNSWIndex(8, max_elements=3000, M=4, quantization=quantization)
    index.add(data)
    index.use_kernels(lib.library, self_test=False)
    with pytest.raises(RuntimeError, match="invalid neighbour"):
        index.refine_graph(num_threads=2)
    ids, _ = index.search(data[:200], k=1, ef=64)
    assert (ids[:, 0] == np.arange(200)).mean() >= 0.98


# ------------------------------------------------------------------ templates
def test_template_space_renders_and_compiles_every_slot(tmp_path) -> None:
    for slot in KERNEL_SLOTS:
        for config in (builtin_config(slot), reference_config(slot)):
            built = build_kernel(render(slot, config), tmp_path / f"{slot}-{len(config)}")
            assert built.ok, built.log


def test_canonical_merges_configurations_that_build_the_same_kernel() -> None:
    a = {**builtin_config("search"), "EVX_PREFETCH": 0, "EVX_AHEAD": 8}
    b = {**builtin_config("search"), "EVX_PREFETCH": 0, "EVX_AHEAD": 2}
    assert config_key("search", a) == config_key("search", b)
    with pytest.raises(ValueError, match="not in the search space"):
        canonical("search", {"EVX_UNROLL": 3})


def test_template_proposer_never_repeats_and_exhausts() -> None:
    proposer = TemplateProposer("refinement", seed=1)
    seen = set()
    for _ in range(40):
        for p in proposer.propose([], 4):
            key = config_key("refinement", p.config)
            assert key not in seen
            seen.add(key)
    # Every distinct refinement kernel once: the space is small enough to exhaust.
    assert len(seen) == len({config_key("refinement", c) for c in _all_configs("refinement")})
    assert proposer.propose([], 1) == []


def _all_configs(slot: str):
    import itertools

    names = list(SPACE[slot])
    for values in itertools.product(*(SPACE[slot][n] for n in names)):
        yield dict(zip(names, values))


def test_template_proposer_starts_where_asked_and_mutates_the_best() -> None:
    from evidex.crinn import Candidate

    proposer = TemplateProposer("search", seed=0, explore=0.0, start=reference_config("search"))
    first = proposer.propose([], 1)[0]
    assert first.config == reference_config("search")
    best = Candidate(
        "search-0000", "search", "template", score=100.0, config=builtin_config("search")
    )
    children = proposer.propose([best], 6)
    base = builtin_config("search")
    # Mutations of the best: close to it (a few knobs changed).
    assert all(sum(c.config[k] != base[k] for k in base) <= 4 for c in children)


def test_template_proposer_tries_every_single_knob_change_of_the_best() -> None:
    from evidex.crinn import Candidate
    from evidex.crinn.templates import config_key

    proposer = TemplateProposer("construction", seed=1, explore=0.0, local=1.0)
    base = builtin_config("construction")
    best = Candidate("construction-0000", "construction", "template", score=1.0, config=base)
    proposer.seen.add(config_key("construction", base))
    steps = {
        config_key("construction", canonical("construction", {**base, k: v}))
        for k, values in SPACE["construction"].items()
        for v in values
    } - {config_key("construction", base)}
    got = proposer.propose([best], len(steps))
    # All of them, each once, before any other move.
    assert {config_key("construction", p.config) for p in got} == steps


# ------------------------------------------------------------------ sandbox and loop
@pytest.fixture(scope="module")
def run(tmp_path_factory) -> CrinnRun:
    settings = Settings(
        space="l2", screen_size=3000, queries=100, screen_queries=50, efs=(10, 20, 40, 80),
        screen_repeats=2, final_repeats=2, finalists=2, recall_range=(0.8, 0.99), batch=2,
        limits=Limits(cpu_seconds=4, wall_seconds=8, memory_bytes=1 << 30),
    )  # fmt: skip
    return CrinnRun(tmp_path_factory.mktemp("crinn") / "run", clustered(4000, 16), settings)


def test_a_failed_candidate_keeps_the_loops_reason(run) -> None:
    # (Every attack class is in test_crinn_sandbox.py.)
    cand = run.evaluate(Proposal("search", hostile_source("fork"), "test"))
    assert cand.score == 0.0 and "forbidden system call" in cand.reason, cand.reason
    good = run.evaluate(Proposal("search", render("search", builtin_config("search")), "test"))
    assert good.ok and good.score > 0


def test_optimize_keeps_a_winner_only_if_it_beats_the_builtin_and_resumes(run) -> None:
    run.settings.limits = Limits()
    summary = run.optimize("refinement", budget=3, progress=False)
    assert summary["candidates"] == 3
    assert "builtin" in summary["final"] and summary["final"]["builtin"]["auc"] > 0
    finalists = [c for c in run.archive.candidates("refinement") if c.final]
    assert finalists and all("auc" in c.final for c in finalists)
    winners = run.archive.winners()
    if summary["winner"]:
        assert winners["refinement"]["auc"] > winners["refinement"]["baseline_auc"]
        assert Path(winners["refinement"]["library"]).is_file()
    else:
        assert "refinement" not in winners
    # Resume: a new run object on the folder continues the count.
    again = CrinnRun(run.root)
    assert again.settings.efs == run.settings.efs
    summary = again.optimize("refinement", budget=4, progress=False)
    assert summary["candidates"] == 4
    ids = [c.id for c in again.archive.candidates("refinement")]
    assert len(ids) == len(set(ids)) == 4
    configs = [config_key("refinement", c.config) for c in again.archive.candidates("refinement")]
    assert len(set(configs)) == 4  # never the same configuration twice, across runs


# ------------------------------------------------------------------ the layout slot
def test_layout_space_configurations_and_checks() -> None:
    from evidex.crinn import Layout

    base = builtin_config("layout")
    assert Layout.from_config(base) == Layout() and Layout().builds_builtin
    # pq4's width means nothing to other codes; float32 rows are never interleaved.
    a = {**base, "EVX_CODES": 3, "EVX_PQ_DIMS": 8}
    assert config_key("layout", a) == config_key("layout", {**base, "EVX_CODES": 3})
    assert config_key("layout", {**base, "EVX_INTERLEAVE": 2}) == config_key("layout", base)
    # Only RaBitQ edge codes steer a refinement, and only a refinement is steered.
    for codes, ef in ((2, 100), (3, 0)):
        plain = {**base, "EVX_CODES": codes, "EVX_REFINE_EF": ef}
        steered = config_key("layout", {**plain, "EVX_REFINE_STEERED": 1})
        assert steered == config_key("layout", plain)
    rabitq = {**base, "EVX_CODES": 3, "EVX_REFINE_EF": 300}
    assert config_key("layout", {**rabitq, "EVX_REFINE_STEERED": 1}) != config_key("layout", rabitq)
    assert Layout.from_config({**rabitq, "EVX_REFINE_STEERED": 1}) == Layout(
        quantization="rabitq", refine_ef=300, refine_steered=True
    )
    layout = Layout.from_config({**base, "EVX_CODES": 2, "EVX_PQ_DIMS": 8, "EVX_M": 24,
                                 "EVX_REFINE_EF": 50, "EVX_AHEAD": 2})  # fmt: skip
    assert layout == Layout(quantization="pq4", pq_dims=8, M=24, refine_ef=50, prefetch_ahead=2)
    assert json.loads(render("layout", a)) == canonical("layout", a)  # settings, not C++
    for bad, match in [
        ({"EVX_CODES": 4}, "not in the layout space"),
        ({"EVX_CODES": "3"}, "not in the layout space"),
        ({"EVX_CODES": True}, "not in the layout space"),
        ({"EVX_REFINE_EF": 10**9}, "not in the layout space"),
        ({"EVX_UNROLL": 4}, "unknown layout knobs"),
        ([("EVX_CODES", 3)], "must be a mapping"),
    ]:
        with pytest.raises(ValueError, match=match):
            Layout.from_config(bad)
    # Every kind of code once (the rest as built in) before any other move; a started or
    # resumed proposer covers the kinds its start and its archive have not.
    from evidex.crinn import Candidate

    first = TemplateProposer("layout", seed=5).propose([], 4)
    assert [p.config["EVX_CODES"] for p in first] == [0, 1, 2, 3]
    assert all(p.config == canonical("layout", {**base, "EVX_CODES": i}) for i, p in
               enumerate(first))  # fmt: skip
    done = [Candidate("layout-0000", "layout", "template", score=1.0,
                      config={**base, "EVX_CODES": 3, "EVX_M": 8})]  # fmt: skip
    after = TemplateProposer("layout", seed=5, start=base).propose(done, 4)
    assert [p.config["EVX_CODES"] for p in after[:3]] == [0, 1, 2]
    # The proposer keeps pq4 subspaces within the data's dimension.
    proposer = TemplateProposer("layout", seed=3, dim=4)
    widths = {p.config["EVX_PQ_DIMS"] for _ in range(30) for p in proposer.propose([], 4)}
    assert widths and max(widths) <= 4
    with pytest.raises(ValueError, match="writes kernels"):
        from evidex.crinn.llm import LLMProposer

        LLMProposer("layout", backend=None)


def test_layout_builds_and_tunes_an_index(tmp_path) -> None:
    from evidex.crinn import Layout

    data = clustered(3000, 16)
    layout = Layout(quantization="sq8", M=8, refine_ef=50, interleave=2, prefetch_ahead=4)
    index = layout.build(data, space="l2", M=16, ef_construction=64, num_threads=2)
    assert index.quantization == "sq8" and index.M == 8 and len(index) == 3000
    index.save(tmp_path / "a.evx")
    again = HNSWIndex.load(tmp_path / "a.evx")
    layout.tune(again)  # the machine's part, not in the file
    ids, dists = again.search(data[:100], k=1, ef=64)
    assert (ids[:, 0] == np.arange(100)).mean() >= 0.98 and np.allclose(dists[:, 0], 0, atol=1e-3)
    with pytest.raises(ValueError, match=r"\[n, dim\]"):
        layout.build(data[0])


def test_layout_steered_refinement_reaches_the_index(monkeypatch) -> None:
    from evidex.crinn import Layout

    calls = []
    real = HNSWIndex.refine_graph

    def spy(self, ef=None, num_threads=0, *, steered=False):
        calls.append((ef, steered))
        return real(self, ef, num_threads, steered=steered)

    monkeypatch.setattr(HNSWIndex, "refine_graph", spy)
    data = clustered(1500, 16)
    index = Layout(quantization="rabitq", M=8, refine_ef=50, refine_steered=True).build(data)
    assert calls == [(50, True)] and index.quantization == "rabitq"
    ids, _ = index.search(data[:100], k=1, ef=64)
    assert (ids[:, 0] == np.arange(100)).mean() >= 0.98


def test_the_layout_gate_asks_for_the_builtin_best_recall_not_each_ef(run) -> None:
    base = [{"ef": 10, "recall": 0.90, "qps": 1.0}, {"ef": 40, "recall": 0.99, "qps": 0.5}]
    lower_at_small_ef = [
        {"ef": 10, "recall": 0.80, "qps": 3.0},
        {"ef": 40, "recall": 0.99, "qps": 2},
    ]
    assert run.gate(lower_at_small_ef, base, "layout") == ""
    assert "recall 0.8000 at ef=10" in run.gate(lower_at_small_ef, base, "search")
    short = [{"ef": 10, "recall": 0.90, "qps": 9.0}, {"ef": 40, "recall": 0.95, "qps": 8}]
    assert "short of recall" in run.gate(short, base, "layout")


def test_the_layout_slot_builds_measures_and_keeps_its_winner(run) -> None:
    from evidex.crinn import Layout

    run.settings.limits = Limits()
    sq8 = {**builtin_config("layout"), "EVX_CODES": 1, "EVX_REFINE_EF": 50}
    cand = run.evaluate(Proposal("layout", render("layout", sq8), "template", config=sq8))
    assert cand.ok and cand.score > 0 and cand.build_seconds > 0, cand.reason
    assert cand.curve and all(p["recall"] > 0 for p in cand.curve)
    files = list((run.root / "data").glob("layout_screen_builtin_*.evx"))
    assert len(files) == 1 and HNSWIndex.load(files[0]).quantization == "sq8"
    # Tuning alone builds nothing new: the same graph file, searched otherwise.
    tuned = {**sq8, "EVX_AHEAD": 8, "EVX_INTERLEAVE": 4}
    again = run.evaluate(Proposal("layout", render("layout", tuned), "template", config=tuned))
    assert again.ok and len(list((run.root / "data").glob("layout_screen_*.evx"))) == 1
    assert again.build_seconds == cand.build_seconds  # the recorded build, not a rebuild
    # The worker applies the tuning (an impossible one fails it there).
    from evidex.crinn.measure import MeasurementFailed

    with pytest.raises(MeasurementFailed):
        wild = Layout(quantization="sq8", refine_ef=50, interleave=99)  # past from_config
        run.bench.measure("layout", [], [], "screen", 1, layout=wild)
    # Not a layout: malformed or model-written proposals get the loop's reason.
    bad = run.evaluate(Proposal("layout", "{}", "template", config={"EVX_CODES": 7}))
    assert bad.score == 0 and "not a layout" in bad.reason
    with pytest.raises(ValueError, match="template proposers only"):
        run.optimize("layout", budget=3, proposers=[object()], progress=False)
    summary = run.optimize("layout", budget=4, progress=False)
    assert summary["candidates"] == 4 and summary["final"]["builtin"]["auc"] > 0
    winners = run.archive.winners()
    if summary["winner"]:
        entry = winners["layout"]
        assert entry["library"] is None and entry["auc"] > entry["baseline_auc"]
        assert Layout.winner(run.root) == Layout.from_config(entry["config"])
    else:
        assert "layout" not in winners and Layout.winner(run.root) == Layout()
    # The kernel slots never take the layout for a library.
    assert run.other_winners("layout") == [
        lib for lib in (run.archive.winner_library(s) for s in KERNEL_SLOTS) if lib
    ]


def test_a_layout_with_a_construction_winner_builds_in_the_sandbox(tmp_path, libs) -> None:
    from evidex.crinn import Layout
    from evidex.crinn.archive import write_json

    settings = Settings(space="l2", screen_size=3000, queries=100, screen_queries=50,
                        efs=(10, 20, 40, 80), screen_repeats=1)  # fmt: skip
    run = CrinnRun(tmp_path / "run", clustered(4000, 16), settings)
    library = libs["construction_alpha"]
    write_json(run.root / "winners.json",
               {"construction": {"id": "c", "library": str(library), "auc": 1.0,
                                 "baseline_auc": 0.5, "config": None}})  # fmt: skip
    path, seconds = run.bench.layout_file(Layout(quantization="rabitq", refine_ef=50), "screen")
    assert seconds > 0 and f"_{library.parent.name}_" in path.name
    index = HNSWIndex.load(path)
    assert index.quantization == "rabitq" and len(index) == 3000
    # Hostile winners files: a layout winner outside the space is refused.
    write_json(run.root / "winners.json", {"layout": {"config": {"EVX_CODES": 99}}})
    with pytest.raises(ValueError, match="not in the layout space"):
        Layout.winner(run.root)
    write_json(run.root / "winners.json", {"layout": "rabitq"})
    with pytest.raises(ValueError, match="not a record"):
        Layout.winner(run.root)
    with pytest.raises(ValueError, match="holds no CRINN run"):
        Layout.winner(tmp_path / "mistyped")  # not silently the built-in layout


def test_cli_show_and_plot(run, capsys) -> None:
    from evidex.cli import main
    from evidex.crinn.cli import plot

    run.evaluate(Proposal("search", hostile_source("fork"), "test"))
    main(["crinn", "show", str(run.root)])
    out = capsys.readouterr().out
    assert "search:" in out and "forbidden system call" in out
    summary = {"baseline_screen_auc": 1.0, "final": {}, "winner": None}
    path = plot(run.archive, "search", summary)
    assert path is None or path.stat().st_size > 0


def test_cli_show_reads_a_damaged_archive(tmp_path, capsys) -> None:
    from evidex.cli import main
    from evidex.crinn import Archive, Candidate
    from evidex.crinn.archive import write_json

    archive = Archive(tmp_path / "run")
    archive.save_settings({"dataset": {"n": 1}, "machine": {}})
    archive.save(Candidate(archive.new_id("layout"), "layout", "template", score=5.0,
                           config={"EVX_CODES": 99}))  # fmt: skip
    write_json(archive.root / "winners.json", {"layout": {"id": "layout-0000"}})
    assert main(["crinn", "show", str(archive.root)]) == 0
    out = capsys.readouterr().out
    assert "configuration outside the template space" in out and "damaged record" in out


def test_new_run_needs_data_and_matching_data(tmp_path) -> None:
    with pytest.raises(ValueError, match="holds no run"):
        CrinnRun(tmp_path / "empty")
    with pytest.raises(ValueError, match="holds out"):
        CrinnRun(tmp_path / "small", clustered(1500, 4), Settings(queries=100, screen_queries=50))
    with pytest.raises(ValueError, match="NaN"):
        bad = clustered(8000, 4)
        bad[3, 1] = np.nan
        CrinnRun(tmp_path / "nan", bad, Settings(queries=100, screen_queries=50))


def test_contrastive_rewards() -> None:
    r = contrastive_rewards([100.0, 50.0, 0.0])
    assert r[0] > r[1] > r[2]
    assert abs(sum(r)) < 1e-12
    assert r == pytest.approx([(0.5 + 1.0) / 2, (-0.5 + 1.0) / 2, (-1.0 - 1.0) / 2])
    assert contrastive_rewards([5.0]) == [0.0]
    with pytest.raises(ValueError, match="non-negative"):
        contrastive_rewards([1.0, -1.0])


# ------------------------------------------------------------------ LLM proposer
def test_extract_code_blocks_diffs_and_malformed_output() -> None:
    from evidex.crinn.llm import apply_unified_diff, extract_code

    current = "int a = 1;\nint b = 2;\nint evidex_search_x = 3;\n"
    assert "evidex_" in extract_code("Here:\n```cpp\nint evidex_search() {}\n```\n", current)
    diff = "```diff\n--- a\n+++ b\n@@ -1,2 +1,2 @@\n int a = 1;\n-int b = 2;\n+int b = 4;\n```"
    assert extract_code(diff, current) == "int a = 1;\nint b = 4;\nint evidex_search_x = 3;\n"
    with pytest.raises(ValueError, match="malformed"):
        extract_code("I would make it faster.", current)
    with pytest.raises(ValueError, match="does not match"):
        apply_unified_diff(current, "@@ -1,1 +1,1 @@\n-int z = 0;\n+int z = 1;\n")


class _StubHandler(http.server.BaseHTTPRequestHandler):
    answer = ""
    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(
            {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
        )
        reply = {"choices": [{"message": {"role": "assistant", "content": type(self).answer}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_llm_proposer_over_an_openai_compatible_endpoint(run) -> None:
    from evidex.crinn.llm import LLMProposer, OpenAIBackend

    improved = render("search", {**builtin_config("search"), "EVX_BATCH": 1})
    _StubHandler.answer = f"Batching the distances helps.\n```cpp\n{improved}```\n"
    server = http.server.HTTPServer(("127.0.0.1", 0), _StubHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = OpenAIBackend(
            f"http://127.0.0.1:{server.server_port}/v1", "stub-model", "sk-test"
        )
        proposer = LLMProposer("search", backend, archive=run.archive)
        proposals = proposer.propose(run.archive.candidates("search"), 1)
    finally:
        server.shutdown()
    req = _StubHandler.requests[-1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    prompt = req["body"]["messages"][0]["content"]
    # Contrastive: the ABI, a better and a failed variant with its reason.
    assert "evx_graph_view" in prompt and "Faster variants" in prompt and "score 0 (" in prompt
    assert proposals[0].source.strip() == improved.strip()
    cand = run.evaluate(proposals[0])
    assert cand.ok and cand.score > 0 and cand.origin == "llm"
    _StubHandler.answer = "no code today"
    server = http.server.HTTPServer(("127.0.0.1", 0), _StubHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = OpenAIBackend(f"http://127.0.0.1:{server.server_port}/v1", "stub-model", "")
        bad = LLMProposer("search", backend).propose([], 1)[0]
    finally:
        server.shutdown()
    cand = run.evaluate(bad)
    assert cand.score == 0 and "malformed model output" in cand.reason


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Answers with the statuses in `script` (then 200), counting requests."""

    script: list[int] = []
    seen = 0

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        cls.seen += 1
        status = cls.script.pop(0) if cls.script else 200
        if status == -1:  # hang past the client's timeout
            time.sleep(0.5)
            status = 200
        data = json.dumps({"choices": [{"message": {"content": "ok"}}]}).encode()
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "7")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_openai_backend_retries_transient_failures_with_backoff() -> None:
    from evidex.crinn.llm import OpenAIBackend

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    waits: list[float] = []
    try:
        _FlakyHandler.script, _FlakyHandler.seen = [429, 503, 502], 0
        backend = OpenAIBackend(url, "m", "", backoff=0.5, max_backoff=30, sleep=waits.append)
        assert backend.generate(["hi"], 8, 0.0) == ["ok"]
        assert _FlakyHandler.seen == 4
        assert waits[0] == 7.0  # the server's Retry-After
        assert 0 <= waits[1] <= 1.0 and 0 <= waits[2] <= 2.0  # jitter under the doubling cap
        # Not transient: fails at once, naming the status.
        _FlakyHandler.script, _FlakyHandler.seen = [401], 0
        with pytest.raises(RuntimeError, match="HTTP 401"):
            backend.generate(["hi"], 8, 0.0)
        assert _FlakyHandler.seen == 1
        # A timeout is retried too.
        _FlakyHandler.script, _FlakyHandler.seen = [-1], 0
        quick = OpenAIBackend(url, "m", "", timeout=0.1, sleep=waits.append)
        assert quick.generate(["hi"], 8, 0.0) == ["ok"] and _FlakyHandler.seen == 2
        # Always failing: the error says how often and why.
        _FlakyHandler.script, _FlakyHandler.seen = [503] * 10, 0
        few = OpenAIBackend(url, "m", "", max_retries=2, sleep=waits.append)
        with pytest.raises(RuntimeError, match="failed 3 times; last: HTTP 503"):
            few.generate(["hi"], 8, 0.0)
    finally:
        server.shutdown()
        server.server_close()  # else the socket still accepts, and the request below hangs
    closed = OpenAIBackend(url, "m", "", max_retries=1, timeout=5, sleep=waits.append)
    with pytest.raises(RuntimeError, match="failed 2 times"):
        closed.generate(["hi"], 8, 0.0)


def test_llm_proposer_with_a_local_model_and_a_learning_step(tiny_causal_lm) -> None:
    torch = pytest.importorskip("torch")
    from evidex.crinn import Candidate
    from evidex.crinn.llm import LLMProposer, TransformersBackend, policy_gradient_step

    model, tok = tiny_causal_lm
    backend = TransformersBackend(model, tok, "tinycoder")
    proposer = LLMProposer("search", backend, max_new_tokens=24, learning_rate=1e-2)
    proposals = proposer.propose([], 2)
    assert len(proposals) == 2
    # A random 1M-parameter model writes no kernel: recorded as malformed, no crash.
    assert all(p.error.startswith("malformed") or "evidex_" in p.source for p in proposals)
    # The round's scores drive one GRPO-style step through contrastive rewards.
    before = [p.detach().clone() for p in model.parameters()]
    scored = [
        Candidate("search-0000", "search", "llm", score=10.0),
        Candidate("search-0001", "search", "llm", score=0.0, reason="compile error"),
    ]
    assert proposer.learn(scored) != 0.0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # Equal scores: no advantage, no update.
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    prompt = proposer.history[0][0][-400:]
    assert policy_gradient_step(model, tok, prompt, ["a", "b"], [1.0, 1.0], opt) == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


FILTERED_HEAD = """
#include <evidex/kernel_abi.h>
extern "C" __attribute__((visibility("default"))) uint32_t evidex_kernel_abi_version(void) {
    return EVIDEX_KERNEL_ABI_VERSION;
}
extern "C" __attribute__((visibility("default"))) int64_t evidex_search_filtered(
    const evx_graph_view* g, const float* q, uint32_t entry, size_t ef, const evx_filter* f,
    evx_visited* v, uint32_t* ids, float* dists, uint64_t* count) {
"""
BAD_FILTERED = {
    # Ignores the filter: the first nodes, allowed or not (a leak of excluded data).
    "not_allowed": "size_t n = ef < g->num_nodes ? ef : g->num_nodes;"
    " for (size_t i = 0; i < n; ++i) { ids[i] = (uint32_t)i; dists[i] = 0; } return (int64_t)n;",
    "twice": "for (uint32_t i = 0; i < f->num_bits; ++i) if (evx_allowed(f, i)) {"
    " ids[0] = ids[1] = i; dists[0] = dists[1] = 0; return ef >= 2 ? 2 : 1; } return 0;",
    "out_of_range": "ids[0] = (uint32_t)g->num_nodes + 3; dists[0] = 0; return 1;",
    "too_many": "return (int64_t)ef + 1;",
    "negative": "return -7;",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILTERED))
def test_a_filtered_search_kernel_that_breaks_the_contract_fails_the_search(kind, tmp_path) -> None:
    built = build_kernel(FILTERED_HEAD + BAD_FILTERED[kind] + "\n}\n", tmp_path / kind)
    assert built.ok, built.log
    data = clustered(1500, 8, seed=3)
    index = HNSWIndex(8, "l2", max_elements=1500)
    index.add(data)
    index.use_kernels(built.library)
    assert index.kernels()["filtered search"] == str(built.library)
    assert index.kernels()["search"] == "builtin"
    allowed = np.arange(500, 1500, 3)
    with pytest.raises(RuntimeError, match="filtered search kernel returned"):
        index.search(data[:4], 5, ef=32, filter=allowed, filter_strategy="filtered")
    # Searches the slot does not serve are untouched.
    assert index.search(data[:4], 5, ef=32)[0][:, 0].tolist() == [0, 1, 2, 3]
    ids, _ = index.search(data[:4], 5, filter=allowed, filter_strategy="scan")
    assert np.isin(ids, allowed).all()
