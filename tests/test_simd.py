"""Each SIMD level, forced in turn, gives the scalar results within float tolerance."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import evidex
from conftest import clustered
from evidex import _core

LEVELS = ["scalar", "avx2", "avx512"]
ORDER = {name: i for i, name in enumerate(LEVELS)}
SUPPORTED = [lvl for lvl in LEVELS if ORDER[lvl] <= ORDER[evidex.cpu_simd_level()]]


@pytest.mark.parametrize("level", SUPPORTED)
@pytest.mark.parametrize("dim", [1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 50, 64, 129, 384])
@pytest.mark.parametrize("space", ["l2", "ip"])
def test_kernels_match_scalar(level: str, dim: int, space: str) -> None:
    rng = np.random.default_rng(dim)
    for _ in range(5):
        a = rng.normal(size=dim).astype(np.float32)
        b = rng.normal(size=dim).astype(np.float32)
        exact = (
            float(np.sum((a.astype(np.float64) - b) ** 2))
            if space == "l2"
            else float(1 - np.dot(a.astype(np.float64), b))
        )
        got = _core.distance(a, b, space, level)
        ref = _core.distance(a, b, space, "scalar")
        assert got == pytest.approx(ref, rel=1e-5, abs=1e-4)
        assert got == pytest.approx(exact, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("level", SUPPORTED)
def test_search_results_same_at_every_level(level: str) -> None:
    data = clustered(2_000, 33)
    queries = clustered(50, 33, seed=3)
    evidex.set_simd_level("scalar")
    ref = evidex.HNSWIndex(33, "l2", seed=1)
    ref.add(data, num_threads=1)
    ref_ids, ref_dist = ref.search(queries, k=10, ef=400)

    evidex.set_simd_level(level)
    assert evidex.simd_level() == level
    index = evidex.HNSWIndex(33, "l2", seed=1)
    index.add(data, num_threads=1)
    ids, dist = index.search(queries, k=10, ef=400)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-3)
    # With ef far above k both are exact, so ids agree except for float ties.
    assert (ids == ref_ids).mean() > 0.99


def test_unsupported_or_unknown_level_raises() -> None:
    with pytest.raises(ValueError, match="unknown SIMD level"):
        evidex.set_simd_level("sse9")
    if evidex.cpu_simd_level() != "avx512":
        with pytest.raises(ValueError, match="not supported"):
            evidex.set_simd_level("avx512")


def _run(env_level: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, EVIDEX_SIMD=env_level)
    code = "import evidex; print(evidex.simd_level())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("level", SUPPORTED)
def test_environment_variable_forces_level(level: str) -> None:
    out = _run(level)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == level


def test_environment_variable_rejects_unknown_level() -> None:
    out = _run("fastest")
    assert out.returncode != 0
    assert "unknown SIMD level 'fastest'" in out.stderr


@pytest.mark.parametrize("level", SUPPORTED)
@pytest.mark.parametrize("space", ["l2", "ip", "cosine"])
def test_exact_scans_match_numpy_at_every_level(level: str, space: str) -> None:
    """The kernels of exact scans: four-query kernels below four queries, panel
    kernels from four (row tails 1-3 after blocks of 4 and 8, the last panel part
    full), odd dimensions (masked tails), chunks split over threads, every space."""
    rng = np.random.default_rng(7)
    evidex.set_simd_level(level)
    try:
        for dim in (1, 3, 7, 8, 9, 15, 16, 17, 33, 50):
            x = rng.standard_normal((300, dim)).astype(np.float32)
            index = evidex.HNSWIndex(dim, space, M=4, ef_construction=20)
            index.add(x)
            allowed = np.arange(0, 300, 3)
            xs = x / np.linalg.norm(x, axis=1, keepdims=True) if space == "cosine" else x
            for nq, threads in ((1, 1), (2, 1), (4, 1), (5, 1), (6, 1), (11, 1), (37, 2)):
                q = rng.standard_normal((nq, dim)).astype(np.float32)
                qs = q / np.linalg.norm(q, axis=1, keepdims=True) if space == "cosine" else q
                if space == "l2":
                    d = ((qs[:, None, :].astype(np.float64) - xs[allowed]) ** 2).sum(-1)
                else:
                    d = 1 - qs.astype(np.float64) @ xs[allowed].T
                ids, dist = index.search(
                    q, k=5, filter=allowed, filter_strategy="scan", num_threads=threads
                )
                np.testing.assert_allclose(dist, np.sort(d, axis=1)[:, :5], rtol=1e-4, atol=1e-4)
                # A radius halfway between two distinct distances: no ties at it.
                # (Radii are non-negative: inner-product distances below 0 are not used.)
                u = np.unique(np.round(d[d > 0], 4))
                r = float(u[len(u) // 2] + u[len(u) // 2 - 1]) / 2 if len(u) > 1 else 1.0
                lims, hits, _ = index.search_range(
                    q, r, filter=allowed, filter_strategy="scan", num_threads=threads
                )
                for i in range(nq):
                    want = set(allowed[d[i] < r].tolist())
                    assert set(hits[lims[i] : lims[i + 1]].tolist()) == want
    finally:
        evidex.set_simd_level(evidex.cpu_simd_level())


def _fastscan_codes(block: np.ndarray, nsub: int, codes: int) -> np.ndarray:
    """[nsub, codes]: code j of subspace s in a group. A group of 32: 16 bytes per
    subspace, byte j holding code j (low nibble) and j + 16. A half group of 16:
    32 bytes per 4 subspaces s..s+3, byte j holding code j of s (low nibble) and
    s + 2, byte 16 + j those of s + 1 and s + 3."""
    b = block.astype(np.int64)
    if codes == 32:
        b = b.reshape(nsub, 16)
        return np.concatenate([b & 15, b >> 4], axis=1)
    b = b.reshape(nsub // 4, 2, 16)  # [chunk, byte half, j]
    return np.stack([b[:, 0] & 15, b[:, 1] & 15, b[:, 0] >> 4, b[:, 1] >> 4], axis=1).reshape(
        nsub, 16
    )


@pytest.mark.parametrize("level", SUPPORTED)
@pytest.mark.parametrize("nsub", [4, 8, 12, 28, 96, 256])
@pytest.mark.parametrize("codes", [32, 16])
def test_fastscan_kernels_match_reference(level: str, nsub: int, codes: int) -> None:
    """The PQ4 fast-scan kernels (a group of 32 codes; a half group of 16, for
    blocks of at most 16 edges): the codes' table sums, at every level, up to the
    largest sums (255 per subspace over 256 subspaces still fits 16 bits)."""
    kernel = _core.fastscan32 if codes == 32 else _core.fastscan16
    rng = np.random.default_rng(nsub + codes)
    for extreme in (False, True):
        block = rng.integers(0, 256, nsub * codes // 2, dtype=np.uint8)
        lut = (
            np.full(nsub * 16, 255, np.uint8)
            if extreme
            else rng.integers(0, 256, nsub * 16, dtype=np.uint8)
        )
        table = lut.reshape(nsub, 16).astype(np.int64)
        want = np.take_along_axis(table, _fastscan_codes(block, nsub, codes), axis=1).sum(0)
        got = kernel(block, lut, level)
        assert got.shape == (codes,)
        np.testing.assert_array_equal(got.astype(np.int64), want)
    with pytest.raises(ValueError, match="multiple of 64"):
        kernel(np.zeros(48, np.uint8), np.zeros(48, np.uint8), level)
    with pytest.raises(ValueError, match=f"{codes // 2} bytes per subspace"):
        kernel(np.zeros(codes * 2 + 8, np.uint8), np.zeros(64, np.uint8), level)


@pytest.mark.parametrize("quant", ["pq4", "rabitq"])
@pytest.mark.parametrize("level", SUPPORTED)
def test_fast_scan_search_same_at_every_level(level: str, quant: str) -> None:
    data = clustered(2_000, 20)
    queries = clustered(40, 20, seed=5)
    results = {}
    for lvl in ("scalar", level):
        evidex.set_simd_level(lvl)
        index = evidex.HNSWIndex(20, "l2", quantization=quant, seed=1)
        index.add(data, num_threads=1)
        results[lvl] = index.search(queries, k=10, ef=100)
    # Table sums are integers, identical at every level; float distances differ in
    # their last bits, which may change a tie while building.
    assert (results[level][0] == results["scalar"][0]).mean() > 0.97
    np.testing.assert_allclose(results[level][1], results["scalar"][1], rtol=1e-4, atol=1e-3)


def _same_answers(got: tuple, want: tuple) -> None:
    """Equal ids, except where two distances are within float32 rounding of each
    other (the two passes sum in different orders: relative 1e-5)."""
    (ids, dist), (ref_ids, ref_dist) = got, want
    scale = max(1.0, float(np.abs(ref_dist[np.isfinite(ref_dist)]).max(initial=0.0)))
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-5 * scale)
    for row, ref, d in zip(ids, ref_ids, ref_dist):
        if not np.array_equal(row, ref):
            finite = d[np.isfinite(d)]
            assert np.min(np.diff(finite), initial=scale) < 1e-5 * scale, (row, ref, d)


@pytest.mark.parametrize("level", SUPPORTED)
@pytest.mark.parametrize("space", ["l2", "ip", "cosine"])
def test_the_8_bit_scan_answers_as_the_float32_scan_at_every_level(level: str, space: str) -> None:
    """The quantised first pass (scan_bits=8) against the float32 scan: odd and
    small dimensions (masked tails, padding to 8), fewer allowed vectors than a
    panel or than k, one query or many, chunks split over threads."""
    rng = np.random.default_rng(11)
    evidex.set_simd_level(level)
    try:
        for dim in (1, 3, 8, 9, 17, 50, 96, 100, 384):
            x = rng.standard_normal((700, dim)).astype(np.float32)
            index = evidex.HNSWIndex(dim, space, M=4, ef_construction=20)
            index.add(x)
            for allowed in (np.arange(5), np.arange(16), np.arange(17), np.arange(0, 700, 2)):
                shapes = ((1, 1, 5), (3, 1, 5), (17, 1, 10), (40, 2, 10), (17, 1, 400))
                for nq, threads, k in shapes:
                    q = rng.standard_normal((nq, dim)).astype(np.float32)
                    answers = {}
                    for bits in (32, 8):
                        index.set_search_tuning(scan_bits=bits)
                        answers[bits] = index.search(
                            q, k=k, filter=allowed, filter_strategy="scan", num_threads=threads
                        )
                    _same_answers(answers[8], answers[32])
                    assert (answers[8][0][:, len(allowed) :] == -1).all()  # k past the allowed
    finally:
        evidex.set_simd_level(evidex.cpu_simd_level())


@pytest.mark.parametrize("level", SUPPORTED)
@pytest.mark.parametrize("dim", [65536, 67000])
def test_the_8_bit_scan_keeps_its_sums_in_int32_at_the_widest_codes(level: str, dim: int) -> None:
    """Every code at its extreme (vectors and queries of +-1) in the widest vectors:
    VNNI's biased 8-bit sums reach 4 * 255 * 127 per 4 dimensions, within int32 up
    to 65,536 dimensions (8-bit codes), 7-bit codes past it."""
    rng = np.random.default_rng(5)
    evidex.set_simd_level(level)
    try:
        base = np.ones((40, dim), np.float32)
        base[1:, : dim // 2] = rng.choice([-1.0, 1.0], (39, dim // 2)).astype(np.float32)
        index = evidex.HNSWIndex(dim, "l2", M=4, ef_construction=8)
        index.add(base)
        q = np.ones((3, dim), np.float32)
        q[1:, :5] = -1.0
        answers = {}
        for bits in (32, 8):
            index.set_search_tuning(scan_bits=bits)
            answers[bits] = index.search(q, k=5, filter=np.arange(40), filter_strategy="scan")
        _same_answers(answers[8], answers[32])
        assert answers[8][0][0, 0] == 0  # the all-ones vector, at distance 0
    finally:
        evidex.set_simd_level(evidex.cpu_simd_level())


@pytest.mark.parametrize("level", SUPPORTED)
@pytest.mark.parametrize("space", ["l2", "ip"])
def test_the_8_bit_scan_orders_ties_by_id_deferred_or_not(level: str, space: str) -> None:
    """The pass rescores its first rows once all are bounded (fewer rows the more
    queries), later rows as they come: with small integer vectors every distance
    is exact in float32, with ties everywhere, so the answer is fully determined
    (ascending distance, ties by id) at every k: at and past the 16 upper bounds
    kept in AVX-512 registers, at and past the buffer's 64, with rows after the
    deferred ones and without."""
    rng = np.random.default_rng(17)
    evidex.set_simd_level(level)
    dim, n = 100, 700
    x = rng.integers(-3, 4, (n, dim)).astype(np.float32)
    x[100:140] = x[99]  # copies: equal distances at every query
    index = evidex.HNSWIndex(dim, space, M=4, ef_construction=20)
    index.add(x, num_threads=1)  # slots in id order: ties by slot are ties by id
    allowed = np.sort(rng.choice(n, 611, replace=False))
    x64 = x[allowed].astype(np.float64)
    index.set_search_tuning(scan_bits=8)
    try:
        for nq in (1100, 20):  # ~112 rows deferred, then the rest; all 611 deferred
            q = rng.integers(-3, 4, (nq, dim)).astype(np.float32)
            q[:5] = x[99]  # at distance 0 from 41 copies
            q64 = q.astype(np.float64)
            if space == "l2":
                exact = (q64**2).sum(1)[:, None] + (x64**2).sum(1)[None] - 2 * q64 @ x64.T
            else:
                exact = 1.0 - q64 @ x64.T
            for k in (1, 10, 16, 17, 33, 64, 65, 611):
                ids, dist = index.search(q, k=k, filter=allowed, filter_strategy="scan")
                for i in range(0, nq, max(1, nq // 60)):
                    order = np.lexsort((allowed, exact[i]))[:k]
                    np.testing.assert_array_equal(ids[i], allowed[order], err_msg=f"k={k} q={i}")
                    np.testing.assert_array_equal(dist[i], exact[i][order].astype(np.float32))
    finally:
        index.set_search_tuning()
        evidex.set_simd_level(evidex.cpu_simd_level())
