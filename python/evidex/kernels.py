"""Replaceable index kernels: load a compiled kernel library, self-test it, serve it.

The index's level-0 search, neighbour selection on insert and final re-ranking are
slots of a versioned C ABI (``evidex/include/evidex/kernel_abi.h``, see
:func:`abi_header`). A kernel library (a CRINN winner, :mod:`evidex.crinn`) exports
any of them; :meth:`evidex.HNSWIndex.use_kernels` loads it after checking its ABI
version and a self-test. Loading runs the library's code in this process: load
only libraries that passed the CRINN sandbox, or that you trust.

Kernels serve float32 searches without a filter or deleted elements; filtered,
SQ8 and deleted-aware searches use the built-in paths. Kernels are not saved with
an index (they belong to the machine): load them again after ``HNSWIndex.load``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from . import _core
from .bruteforce import exact_knn
from .metrics import recall_at_k


class _Vectors(Protocol):
    """What the self-test reads of an index (HNSWIndex has it)."""

    def __len__(self) -> int: ...
    def ids(self) -> np.ndarray: ...
    def get_vectors(self, ids: Any) -> np.ndarray: ...


ABI_VERSION: int = _core.KERNEL_ABI_VERSION
SLOTS = ("search", "construction", "refinement")


class KernelSelfTestError(ValueError):
    """A kernel library loaded but gave wrong results on the probe set."""


def abi_header() -> Path:
    """Path of ``kernel_abi.h``; its folder's parent goes on a candidate's include path."""
    here = Path(__file__).resolve().parent
    package = sys.modules[__name__.rpartition(".")[0]]  # evidex, already imported
    candidates = [Path(p) / "include" / "evidex" / "kernel_abi.h" for p in package.__path__]
    # A source checkout (editable install): the header beside the C++ core.
    candidates.append(here.parents[1] / "cpp" / "include" / "evidex" / "kernel_abi.h")
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError("kernel_abi.h is not installed with this evidex")


def describe(kernel_set: Any) -> dict[str, str]:
    """Where each slot of a kernel set comes from: ``"builtin"`` or a library path."""
    return {
        "search": kernel_set.search_source,
        "filtered search": kernel_set.search_filtered_source,
        "construction": kernel_set.select_source,
        "refinement": kernel_set.refine_source,
    }


def load_library(path: str | os.PathLike[str], base: Any = None) -> Any:
    """Load a kernel library over `base` (default: the built-in set).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not loadable, no or another ABI version, or no slot exported.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"kernel library {path!r} does not exist")
    return _core.load_kernel_library(
        os.path.abspath(path), base if base is not None else _core.builtin_kernel_set()
    )


def _probe_data(index: _Vectors | None, dim: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if index is not None and len(index) >= n:
        ids = rng.choice(index.ids(), size=n, replace=False)
        return np.ascontiguousarray(index.get_vectors(ids), dtype=np.float32)
    # Clustered Gaussian data: a graph with real structure, not a uniform cloud.
    centres = rng.standard_normal((16, dim)).astype(np.float32) * 2
    return (centres[rng.integers(0, 16, n)] + rng.standard_normal((n, dim))).astype(np.float32)


def self_test(
    kernel_set: Any,
    *,
    dim: int,
    space: str = "l2",
    M: int = 16,
    ef_construction: int = 100,
    index: _Vectors | None = None,
    probe_size: int = 1000,
    queries: int = 100,
    k: int = 10,
    efs: tuple[int, ...] = (16, 64),
    tolerance: float = 0.01,
    seed: int = 0,
) -> dict[str, Any]:
    """Check a kernel set against the built-in kernels on a probe set.

    Two probe indexes are built from the same vectors (``probe_size`` of `index`'s,
    or clustered Gaussian data), one with the built-in kernels and one with
    `kernel_set` (so a construction kernel builds its graph), and both answer the
    same perturbed queries at each ef. The kernel set passes when every returned
    id is a real element, no row repeats an id, every returned distance equals the
    exact distance (relative 1e-3), and its recall@k is at least the built-in
    kernels' minus `tolerance` at every ef.

    Returns:
        ``{"recall": {ef: (builtin, kernel)}, "queries": n}``.

    Raises:
        KernelSelfTestError: naming the first failed check.
    """
    data = _probe_data(index, dim, probe_size, seed)
    rng = np.random.default_rng(seed + 1)
    picks = rng.choice(len(data), size=min(queries, len(data)), replace=False)
    q = data[picks] + 0.1 * rng.standard_normal((len(picks), dim)).astype(np.float32)
    q = q * float(np.std(data)) / max(float(np.std(q)), 1e-12)
    truth = exact_knn(data, q, k, space)[0]

    # Probe indexes on the compiled layer itself (this module sits below HNSWIndex).
    def build(ks: Any) -> Any:
        probe = _core.HNSW(dim, _core.parse_space(space), M, ef_construction, len(data), 100)
        probe.set_kernel_set(ks)
        probe.add_auto(np.ascontiguousarray(data, np.float32), 1, False, True)
        return probe

    def search(probe: Any, ef: int) -> tuple[np.ndarray, np.ndarray]:
        return probe.query(np.ascontiguousarray(q, np.float32), k, ef, None, 1)

    try:
        reference, candidate = build(_core.builtin_kernel_set()), build(kernel_set)
    except RuntimeError as e:
        raise KernelSelfTestError(f"building the probe index failed: {e}") from e
    stored = candidate.get_vectors(np.arange(len(data), dtype=np.uint64))
    recalls: dict[int, tuple[float, float]] = {}
    for ef in efs:
        ids_ref, _ = search(reference, ef)
        try:
            ids, dists = search(candidate, ef)
        except RuntimeError as e:
            raise KernelSelfTestError(f"search at ef={ef} failed: {e}") from e
        for row, (r_ids, r_d) in enumerate(zip(ids, dists)):
            got = r_ids[r_ids >= 0]
            if len(np.unique(got)) != len(got):
                raise KernelSelfTestError(f"query {row} at ef={ef}: repeated ids {got.tolist()}")
            true_d = _distances(stored[got], q[row], space)
            if not np.allclose(r_d[: len(got)], true_d, rtol=1e-3, atol=1e-4):
                raise KernelSelfTestError(
                    f"query {row} at ef={ef}: distances differ from the exact ones"
                )
        r_ref = recall_at_k(ids_ref, truth)
        r_got = recall_at_k(ids, truth)
        recalls[ef] = (r_ref, r_got)
        if r_got < r_ref - tolerance:
            raise KernelSelfTestError(
                f"recall@{k} at ef={ef} is {r_got:.4f}, the built-in kernels reach {r_ref:.4f}"
            )
    return {"recall": recalls, "queries": len(q)}


def _distances(vectors: np.ndarray, query: np.ndarray, space: str) -> np.ndarray:
    if space == "l2":
        return ((vectors - query) ** 2).sum(1)
    if space == "cosine":
        query = query / max(float(np.linalg.norm(query)), 1e-30)
    return 1.0 - vectors @ query
