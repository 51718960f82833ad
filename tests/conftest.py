from __future__ import annotations

import numpy as np
import pytest

import evidex


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of the true k nearest that `found` contains."""
    hits = sum(len(np.intersect1d(f[:k], t[:k])) for f, t in zip(found, truth))
    return hits / (truth.shape[0] * k)


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """Gaussian clusters: harder for a graph than uniform noise at low dim, closer to
    real embeddings than uniform noise at high dim."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)) * 3
    labels = rng.integers(0, clusters, size=n)
    return (centers[labels] + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.fixture(autouse=True)
def _restore_simd_level():
    level = evidex.simd_level()
    yield
    evidex.set_simd_level(level)
