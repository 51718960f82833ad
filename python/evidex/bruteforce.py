"""Exact search: the recall reference for the HNSW index and the engine of BFIndex."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core
from ._arrays import as_float_matrix, as_labels, check_positive_int, check_threads


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows (float32); zero rows stay zero."""
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    return (x / (norms + 1e-30)).astype(np.float32)


def exact_knn(
    data: Any,
    queries: Any,
    k: int,
    space: str = "l2",
    num_threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (row indices, distances) with the SIMD kernels.

    Distances follow the index's conventions: squared L2, ``1 - dot``, ``1 - cosine``.
    """
    base = np.asarray(data)
    if base.ndim != 2:
        raise ValueError(f"data must be a 2-D array, got {base.ndim} dimensions")
    base, _ = as_float_matrix(base, base.shape[1], "data")
    q, was_1d = as_float_matrix(queries, base.shape[1], "queries")
    k = check_positive_int(k, "k")
    if k > base.shape[0]:
        raise ValueError(f"k={k} is larger than the number of data rows ({base.shape[0]})")
    if space == "cosine":
        base = normalize_rows(base)
    rows, dist = _core.brute_force_knn(base, q, k, space, None, check_threads(num_threads))
    return (rows[0], dist[0]) if was_1d else (rows, dist)


class BruteForceIndex:
    """A flat exact index with ids: ground truth, small corpora, and hnswlib's BFIndex.

    Adding an id that is present overwrites its vector; ``delete`` removes rows.
    """

    def __init__(self, dim: int, space: str = "l2") -> None:
        self.dim = check_positive_int(dim, "dim")
        if space not in ("l2", "ip", "cosine"):
            raise ValueError(f"unknown space {space!r}; expected 'l2', 'ip' or 'cosine'")
        self.space = space
        self._data = np.empty((0, self.dim), dtype=np.float32)
        self._ids = np.empty(0, dtype=np.uint64)
        self._count = 0
        self._row_of: dict[int, int] = {}

    def __len__(self) -> int:
        return self._count

    def __contains__(self, id: int) -> bool:
        return int(id) in self._row_of

    def ids(self) -> np.ndarray:
        return self._ids[: self._count].copy()

    def add(self, vectors: Any, ids: Any = None) -> np.ndarray:
        """Add or overwrite vectors; returns their ids (uint64)."""
        data, _ = as_float_matrix(vectors, self.dim, "vectors")
        n = data.shape[0]
        if self.space == "cosine":
            data = normalize_rows(data)
        if ids is None:
            start = int(self._ids[: self._count].max()) + 1 if self._count else 0
            labels = np.arange(start, start + n, dtype=np.uint64)
        else:
            labels = as_labels(ids, n)
        if self._count + n > self._data.shape[0]:
            grown = np.empty((max(self._count + n, 2 * self._data.shape[0]), self.dim), np.float32)
            grown[: self._count] = self._data[: self._count]
            self._data = grown
            ids_grown = np.empty(grown.shape[0], dtype=np.uint64)
            ids_grown[: self._count] = self._ids[: self._count]
            self._ids = ids_grown
        for row, label in zip(data, labels.tolist()):
            at = self._row_of.get(label)
            if at is None:
                at = self._count
                self._count += 1
                self._row_of[label] = at
                self._ids[at] = label
            self._data[at] = row
        return labels

    def delete(self, ids: Any, missing_ok: bool = False) -> None:
        """Remove ids (the last row moves into the hole)."""
        for label in as_labels(ids, None).tolist():
            at = self._row_of.pop(label, None)
            if at is None:
                if missing_ok:
                    continue
                raise KeyError(f"id {label} is not in the index")
            last = self._count - 1
            if at != last:
                self._data[at] = self._data[last]
                self._ids[at] = self._ids[last]
                self._row_of[int(self._ids[at])] = at
            self._count -= 1

    def search(
        self, queries: Any, k: int = 10, filter: Any = None, num_threads: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``(ids, distances)``; rows padded with ``2**64 - 1`` / ``inf`` where a
        filter leaves fewer than k candidates. ``filter``: callable on an id, or ids."""
        k = check_positive_int(k, "k")
        if self._count == 0:
            raise ValueError("the index is empty")
        if k > self._count:
            raise ValueError(f"k={k} is larger than the number of elements ({self._count})")
        q, was_1d = as_float_matrix(queries, self.dim, "queries")
        live_ids = self._ids[: self._count]
        mask = None
        if callable(filter):
            mask = np.fromiter((bool(filter(i)) for i in live_ids.tolist()), np.uint8, self._count)
        elif filter is not None:
            mask = np.isin(live_ids, as_labels(np.asarray(filter).reshape(-1), None)).astype(
                np.uint8
            )
        rows, dist = _core.brute_force_knn(
            self._data[: self._count], q, k, self.space, mask, check_threads(num_threads)
        )
        labels = np.where(rows >= 0, live_ids[np.maximum(rows, 0)], np.iinfo(np.uint64).max)
        labels = labels.astype(np.uint64)
        return (labels[0], dist[0]) if was_1d else (labels, dist)
