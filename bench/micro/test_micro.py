"""pytest-benchmark microbenchmarks of the compiled core.

    python -m pytest bench/micro --benchmark-only --benchmark-columns=min,median,ops

Distance kernels at every SIMD level the CPU runs and several dimensions (time per
call over 4,096 in-cache rows, so one distance = time / 4,096), single-query and
batch search, and a 10,000-vector build.
"""

from __future__ import annotations

import numpy as np
import pytest

import evidex
from evidex import _core

LEVELS = ["scalar", "avx2", "avx512"]
SUPPORTED = LEVELS[: LEVELS.index(evidex.cpu_simd_level()) + 1]
ROWS = 4_096


@pytest.mark.parametrize("level", SUPPORTED)
@pytest.mark.parametrize("dim", [50, 128, 384, 768])
@pytest.mark.parametrize("space", ["l2", "ip"])
def test_distance_kernel(benchmark, level: str, dim: int, space: str) -> None:
    rng = np.random.default_rng(dim)
    data = rng.normal(size=(ROWS, dim)).astype(np.float32)
    q = rng.normal(size=dim).astype(np.float32)
    benchmark.extra_info.update(rows=ROWS, dim=dim, level=level)
    out = benchmark(_core.distances, q, data, space, level)
    assert out.shape == (ROWS,)


@pytest.fixture(scope="module")
def glove_index(glove_small: np.ndarray) -> evidex.HNSWIndex:
    index = evidex.HNSWIndex(50, "cosine", M=16, ef_construction=200)
    index.add(glove_small)
    return index


@pytest.mark.parametrize("ef", [32, 128])
def test_single_query_search(benchmark, glove_index, glove_small, ef: int) -> None:
    q = glove_small[123] + 0.01
    glove_index.ef = ef
    ids, _ = benchmark(glove_index.search, q, 10, None, None, 1)
    assert ids.shape == (10,)


def test_batch_search(benchmark, glove_index, glove_small) -> None:
    queries = glove_small[:1_000] + 0.01
    glove_index.ef = 64
    ids, _ = benchmark(glove_index.search, queries, 10)
    assert ids.shape == (1_000, 10)


def test_build_10k(benchmark, glove_small) -> None:
    data = glove_small[:10_000]

    def build() -> evidex.HNSWIndex:
        index = evidex.HNSWIndex(50, "cosine", M=16, ef_construction=200, max_elements=10_000)
        index.add(data)
        return index

    index = benchmark.pedantic(build, rounds=3, iterations=1)
    assert len(index) == 10_000
