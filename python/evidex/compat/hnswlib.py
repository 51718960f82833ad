"""A drop-in for hnswlib 0.8's Python API: ``import evidex.compat.hnswlib as hnswlib``.

`Index` and `BFIndex` take the same arguments, return the same dtypes and shapes,
and raise the same exceptions with the same messages where hnswlib raises them.
Where hnswlib crashes or answers wrongly (a call before ``init_index``, a query of
the wrong dimension, ``k`` above the element count in ``BFIndex``, NaN input),
this layer raises instead; hnswlib's BFIndex leaves cosine queries unnormalised
(distances ``1 - <x/|x|, q>``), this one returns true cosine distances (same
ranking). ``load_index`` reads evidex's files and hnswlib's; ``save_index`` writes
evidex's checksummed format, or hnswlib's with ``format="hnswlib"``.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from typing import Any

import numpy as np

from .. import _core
from .._arrays import as_float_matrix, to_numpy
from ..bruteforce import BruteForceIndex
from ..index import HNSWIndex, resolve_filter

__all__ = ["BFIndex", "Index"]

_NO_RESULTS = "Cannot return the results in a contiguous 2D array. Probably ef or M is too small"
_NO_LABEL = np.iinfo(np.uint64).max
_EVIDEX_MAGIC = b"EVDXHNSW"


def _default_threads() -> int:
    return os.cpu_count() or 1


def _check_space(space: str) -> None:
    if space not in ("l2", "ip", "cosine"):
        raise RuntimeError("Space name must be one of l2, ip, or cosine.")


def _rows(data: Any, dim: int) -> np.ndarray:
    a = to_numpy(data)
    if a.ndim not in (1, 2) or (a.shape[-1] if a.ndim else 0) != dim:
        raise RuntimeError("Wrong dimensionality of the vectors")
    return as_float_matrix(a, dim)[0]


def _labels_for(ids: Any, n: int, start: int) -> np.ndarray:
    if ids is None:
        return np.arange(start, start + n, dtype=np.uint64)
    labels = np.asarray(ids if not isinstance(ids, int) else [ids], dtype=np.uint64).reshape(-1)
    if labels.shape[0] != n:
        raise RuntimeError(
            f"The input label shape {labels.shape[0]} does not match the input data vector "
            f"shape {n}"
        )
    return labels


def _empty_results(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.empty((n, 0), np.uint64), np.empty((n, 0), np.float32)


class Index:
    """hnswlib.Index over evidex's HNSW graph."""

    def __init__(self, space: Any = None, dim: int | None = None) -> None:
        if isinstance(space, Index):  # Index(other): a copy
            state = space.__getstate__()
            self.__setstate__(state)
            return
        if isinstance(space, dict):  # Index(params): hnswlib's pickled form
            self.__setstate__(space)
            return
        _check_space(space)
        if dim is None:
            raise TypeError("Index() needs space and dim")
        self.space = space
        self.dim = int(dim)
        self._index: HNSWIndex | None = None
        self._ef = 10
        self._allow_replace_deleted = False
        self.num_threads = _default_threads()

    # ----------------------------------------------------------- life cycle
    def init_index(
        self,
        max_elements: int,
        M: int = 16,
        ef_construction: int = 200,
        random_seed: int = 100,
        allow_replace_deleted: bool = False,
    ) -> None:
        self._index = HNSWIndex(
            self.dim,
            self.space,
            M=M,
            ef_construction=ef_construction,
            max_elements=int(max_elements),
            seed=int(random_seed),
            ef=max(1, self._ef),
        )
        self._allow_replace_deleted = bool(allow_replace_deleted)

    def _ready(self) -> HNSWIndex:
        if self._index is None:
            raise RuntimeError("Index is not initialized: call init_index or load_index first")
        return self._index

    @property
    def _core(self) -> _core.HNSW:
        return self._ready()._core

    # ----------------------------------------------------------- parameters
    @property
    def ef(self) -> int:
        return self._ef

    @ef.setter
    def ef(self, value: int) -> None:
        self.set_ef(value)

    def set_ef(self, ef: int) -> None:
        self._ef = int(ef)
        if self._index is not None:
            self._index.ef = max(1, self._ef)

    def set_num_threads(self, num_threads: int) -> None:
        self.num_threads = int(num_threads)

    @property
    def M(self) -> int:
        return self._ready().M

    @property
    def ef_construction(self) -> int:
        return self._ready().ef_construction

    @property
    def max_elements(self) -> int:
        return self._ready().max_elements

    @property
    def element_count(self) -> int:
        return self._core.element_count

    def get_max_elements(self) -> int:
        return self.max_elements

    def get_current_count(self) -> int:
        return self.element_count

    def _threads(self, num_threads: int) -> int:
        return self.num_threads if num_threads is None or num_threads <= 0 else num_threads

    # ----------------------------------------------------------- data
    def add_items(
        self, data: Any, ids: Any = None, num_threads: int = -1, replace_deleted: bool = False
    ) -> None:
        core = self._core
        rows = _rows(data, self.dim)
        labels = _labels_for(ids, rows.shape[0], core.element_count)
        if replace_deleted and not self._allow_replace_deleted:
            raise RuntimeError("Replacement of deleted elements is disabled in constructor")
        core.add(
            rows,
            labels,
            self._threads(num_threads),
            bool(replace_deleted),
            self._allow_replace_deleted,
        )

    def knn_query(
        self, data: Any, k: int = 1, num_threads: int = -1, filter: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        core = self._core
        rows = _rows(data, self.dim)
        k = int(k)
        if k < 0:
            raise ValueError("k must be non-negative")
        if k == 0:
            return _empty_results(rows.shape[0])
        if k > core.live_count:
            raise RuntimeError(_NO_RESULTS)
        ef = max(1, self._ef)
        allowed, program = (None, None)
        if filter is not None:
            # A large batch evaluates a callable once per element, then plans.
            allowed, program = resolve_filter(core, filter, rows, ef)
        if allowed is None and program is None:
            labels, distances = core.query(rows, k, ef, filter, self._threads(num_threads))
        else:
            labels, distances = core.query_set(
                rows, k, ef, allowed, program, "auto", self._threads(num_threads)
            )
        labels = labels.view(np.uint64)
        if labels.size and (labels == _NO_LABEL).any():
            raise RuntimeError(_NO_RESULTS)
        return labels, distances

    def mark_deleted(self, label: int) -> None:
        try:
            self._core.mark_deleted(int(label))
        except KeyError:
            raise RuntimeError("Label not found") from None
        except ValueError:
            raise RuntimeError("The requested to delete element is already deleted") from None

    def unmark_deleted(self, label: int) -> None:
        try:
            self._core.unmark_deleted(int(label))
        except KeyError:
            raise RuntimeError("Label not found") from None
        except ValueError:
            raise RuntimeError("The requested to undelete element is not deleted") from None

    def resize_index(self, new_size: int) -> None:
        self._core.resize(int(new_size))

    def get_items(self, ids: Any = None, return_type: str = "numpy") -> Any:
        if return_type not in ("numpy", "list"):
            raise ValueError("return_type should be either 'numpy' or 'list'")
        if ids is None:  # hnswlib 0.8 returns nothing here, not every item
            return np.empty(0, np.float32) if return_type == "numpy" else []
        if np.ndim(ids) == 0:  # hnswlib iterates over ids: a scalar is a ValueError there
            raise ValueError("get_items takes a sequence of labels, not a single label")
        labels = np.asarray(ids, dtype=np.uint64).reshape(-1)
        try:
            vectors = self._core.get_vectors(labels)
        except KeyError:
            raise RuntimeError("Label not found") from None
        return vectors if return_type == "numpy" else vectors.tolist()

    def get_ids_list(self) -> list[int]:
        return self._core.labels(True).tolist()

    # ----------------------------------------------------------- persistence
    def save_index(self, path_to_index: str, format: str = "evidex") -> None:
        """Save in evidex's checksummed format, or ``format="hnswlib"`` for a file
        that hnswlib 0.8's ``load_index`` reads (``HNSWIndex.save``)."""
        self._ready().save(path_to_index, format=format)

    def load_index(
        self, path_to_index: str, max_elements: int = 0, allow_replace_deleted: bool = False
    ) -> None:
        """Load a file saved by this module or by hnswlib itself (recognised by its
        first bytes), into this Index's space: like hnswlib, a file of another
        space keeps its data and takes this distance."""
        path = os.fspath(path_to_index)
        try:
            with open(path, "rb") as f:
                evidex_file = f.read(len(_EVIDEX_MAGIC)) == _EVIDEX_MAGIC
            if evidex_file:
                core = _core.HNSW.load(path, False, int(max_elements), self.space)
            else:
                core = _core.HNSW.load_hnswlib(path, self.space, self.dim, int(max_elements))
        except OSError as e:
            raise RuntimeError(f"Cannot open file: {e}") from e
        except (_core.CorruptIndexError, ValueError) as e:
            raise RuntimeError(f"Index seems to be corrupted or unsupported: {e}") from e
        if core.dim != self.dim:
            raise RuntimeError(
                f"the file holds an index of dimension {core.dim}, this Index is of "
                f"dimension {self.dim}"
            )
        self._index = HNSWIndex._wrap(core)
        self._index.ef = max(1, self._ef)
        self._allow_replace_deleted = bool(allow_replace_deleted)

    def index_file_size(self) -> int:
        return len(self._ready().to_bytes())

    def __getstate__(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "dim": self.dim,
            "ef": self._ef,
            "num_threads": self.num_threads,
            "allow_replace_deleted": self._allow_replace_deleted,
            "index": None if self._index is None else self._index.to_bytes(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.space = state["space"]
        self.dim = int(state["dim"])
        self._ef = int(state["ef"])
        self.num_threads = int(state["num_threads"])
        self._allow_replace_deleted = bool(state["allow_replace_deleted"])
        blob = state["index"]
        self._index = None if blob is None else HNSWIndex.from_bytes(blob)

    def __repr__(self) -> str:
        return f"<hnswlib.Index(space='{self.space}', dim={self.dim})>"


class BFIndex:
    """hnswlib.BFIndex (exact search) over evidex's brute-force kernel."""

    def __init__(self, space: str, dim: int) -> None:
        _check_space(space)
        self.space = space
        self.dim = int(dim)
        self.num_threads = _default_threads()
        self._flat: BruteForceIndex | None = None
        self._max_elements = 0

    def init_index(self, max_elements: int) -> None:
        self._flat = BruteForceIndex(self.dim, self.space)
        self._max_elements = int(max_elements)

    def _ready(self) -> BruteForceIndex:
        if self._flat is None:
            raise RuntimeError("Index is not initialized: call init_index or load_index first")
        return self._flat

    def set_num_threads(self, num_threads: int) -> None:
        self.num_threads = int(num_threads)

    def get_max_elements(self) -> int:
        return self._max_elements

    def get_current_count(self) -> int:
        return len(self._ready())

    def add_items(self, data: Any, ids: Any = None) -> None:
        flat = self._ready()
        rows = _rows(data, self.dim)
        labels = _labels_for(ids, rows.shape[0], len(flat))
        new = sum(1 for label in labels.tolist() if label not in flat)
        if len(flat) + new > self._max_elements:
            raise RuntimeError("The number of elements exceeds the specified limit")
        flat.add(rows, labels)

    def delete_vector(self, label: int) -> None:
        self._ready().delete([int(label)], missing_ok=True)

    def knn_query(
        self, data: Any, k: int = 1, num_threads: int = -1, filter: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        flat = self._ready()
        rows = _rows(data, self.dim)
        k = int(k)
        if k == 0:
            return _empty_results(rows.shape[0])
        if k > len(flat):
            raise RuntimeError(_NO_RESULTS)
        threads = self.num_threads if num_threads is None or num_threads <= 0 else num_threads
        labels, distances = flat.search(rows, k, filter=filter, num_threads=threads)
        if (labels == _NO_LABEL).any():
            raise RuntimeError(_NO_RESULTS)
        return labels, distances

    def save_index(self, path_to_index: str) -> None:
        flat = self._ready()
        path = os.fspath(path_to_index)
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".bfindex-", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(
                    f,
                    vectors=flat._data[: len(flat)],
                    ids=flat.ids(),
                    meta=np.array([self.dim, self._max_elements], dtype=np.int64),
                    space=np.array(self.space),
                )
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise

    def load_index(self, path_to_index: str, max_elements: int = 0) -> None:
        try:
            with np.load(os.fspath(path_to_index), allow_pickle=False) as z:
                vectors, ids, meta, space = z["vectors"], z["ids"], z["meta"], str(z["space"])
        except OSError as e:
            raise RuntimeError(f"Cannot open file: {e}") from e
        except (ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
            raise RuntimeError(f"Index seems to be corrupted or unsupported: {e}") from e
        if int(meta[0]) != self.dim or space != self.space:
            raise RuntimeError(
                f"the file holds a {space} index of dimension {int(meta[0])}, this BFIndex is "
                f"{self.space} of dimension {self.dim}"
            )
        self.init_index(max(int(max_elements), int(meta[1]), len(ids)))
        if len(ids):
            self._ready().add(vectors, ids)

    def __repr__(self) -> str:
        return f"<hnswlib.BFIndex(space='{self.space}', dim={self.dim})>"
