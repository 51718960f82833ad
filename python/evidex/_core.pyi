"""Type stubs of the compiled core (``cpp/python/module.cpp``, ``ops_bindings.cpp``).

The public API is ``evidex.HNSWIndex`` and friends; this module is its engine."""

from collections.abc import Callable
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

ops: ModuleType  # the CPU kernels of evidex.ops (topk_rows, box_iou_matrix, ...)

KERNEL_ABI_VERSION: int

class CorruptIndexError(ValueError):
    """A saved index that fails validation: wrong magic, newer format, truncated,
    checksum mismatch, or fields and structure out of bounds."""

class Space:
    l2: ClassVar[Space]
    ip: ClassVar[Space]
    cosine: ClassVar[Space]
    name: str
    value: int

class Quantization:
    none: ClassVar[Quantization]
    sq8: ClassVar[Quantization]
    pq4: ClassVar[Quantization]
    rabitq: ClassVar[Quantization]
    name: str
    value: int

class KernelSet:
    search_source: str
    select_source: str
    search_filtered_source: str
    refine_source: str

def simd_level() -> str: ...
def cpu_simd_level() -> str: ...
def set_simd_level(level: str) -> None: ...
def cpu_features() -> list[str]: ...
def known_cpu_features() -> list[str]: ...
def kernel_library_cpu_features(path: str) -> list[str]: ...
def parse_space(name: str) -> Space: ...
def builtin_kernel_set() -> KernelSet: ...
def load_kernel_library(path: str, base: KernelSet) -> KernelSet: ...
def distance(a: npt.ArrayLike, b: npt.ArrayLike, space: str = "l2", level: str = "") -> float: ...
def memory_latency(megabytes: int = 512, steps: int = 2000000) -> float: ...
def fastscan32(
    block: npt.ArrayLike, lut: npt.ArrayLike, level: str = ""
) -> npt.NDArray[np.uint16]: ...
def fastscan16(
    block: npt.ArrayLike, lut: npt.ArrayLike, level: str = ""
) -> npt.NDArray[np.uint16]: ...
def rabitq_edge(
    x: npt.ArrayLike, y: npt.ArrayLike, seed: int = 0, space: str = "l2"
) -> tuple[
    npt.NDArray[np.uint8], float, float, npt.NDArray[np.float32], npt.NDArray[np.float32]
]: ...
def keep_smallest(values: npt.ArrayLike, keep: int, slack: int = 0) -> npt.NDArray[np.uint32]: ...
def shortlist(
    sums: npt.ArrayLike,
    base: npt.ArrayLike,
    scale: float,
    depth: int,
    count: int,
    extra: npt.ArrayLike | None = None,
) -> npt.NDArray[np.uint32]: ...
def distances(
    query: npt.ArrayLike, data: npt.ArrayLike, space: str = "l2", level: str = ""
) -> npt.NDArray[np.float32]: ...
def brute_force_knn(
    data: npt.ArrayLike,
    queries: npt.ArrayLike,
    k: int,
    space: str = "l2",
    allow: npt.ArrayLike | None = None,
    num_threads: int = 0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...

class IVF:
    def __init__(
        self,
        dim: int,
        space: Space,
        nlist: int,
        pq_dims: int,
        seed: int,
        anisotropic_threshold: float,
    ) -> None: ...
    def train(self, data: npt.ArrayLike, num_threads: int = 0) -> None: ...
    def add(self, data: npt.ArrayLike, labels: npt.ArrayLike, num_threads: int = 0) -> None: ...
    def query(
        self,
        queries: npt.ArrayLike,
        k: int,
        nprobe: int,
        reorder: int,
        num_threads: int,
        allowed: npt.ArrayLike | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
    def add_auto(self, data: npt.ArrayLike, num_threads: int = 0) -> int: ...
    next_id: int
    def remove(self, labels: npt.ArrayLike) -> None: ...
    def labels(self) -> npt.NDArray[np.uint64]: ...
    def get_vectors(self, labels: npt.ArrayLike) -> npt.NDArray[np.float32]: ...
    deleted_count: int
    size: int
    dim: int
    space: str
    nlist: int
    pq_dims: int
    trained: bool
    anisotropic_threshold: float
    default_nprobe: int
    default_reorder: int
    memory_bytes: int
    def save(self, path: str) -> None: ...
    def serialize(self) -> bytes: ...
    @staticmethod
    def load(path: str) -> IVF: ...
    @staticmethod
    def deserialize(data: bytes) -> IVF: ...

class HNSW:
    def __init__(
        self,
        dim: int,
        space: Space,
        M: int,
        ef_construction: int,
        max_elements: int,
        seed: int,
        quantization: Quantization = ...,
        pq_dims: int = 0,
    ) -> None: ...
    dim: int
    space: str
    M: int
    ef_construction: int
    capacity: int
    element_count: int
    deleted_count: int
    live_count: int
    next_label: int
    seed: int
    ef: int
    is_mapped: bool
    trained: bool
    quantization: str
    pq_dims: int
    scan_code_dims: int
    def build_scan_codes(self, sub_dim: int, num_threads: int) -> None: ...
    def drop_scan_codes(self) -> None: ...
    def train(self, data: npt.ArrayLike) -> None: ...
    def add(
        self,
        data: npt.ArrayLike,
        labels: npt.ArrayLike,
        num_threads: int = 0,
        replace_deleted: bool = False,
        forbid_update_deleted: bool = False,
        grow: bool = False,
        attributes: list[tuple[str, str, npt.ArrayLike]] | None = None,
    ) -> None: ...
    def add_auto(
        self, data: npt.ArrayLike, num_threads: int = 0, replace_deleted: bool = False,
        grow: bool = True, attributes: list[tuple[str, str, npt.ArrayLike]] | None = None,
    ) -> int: ...  # fmt: skip
    def query(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        ef: int,
        filter: Callable[[int], bool] | npt.ArrayLike | None,
        num_threads: int,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
    def query_set(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        ef: int,
        labels: npt.ArrayLike | None,
        program: list[tuple[Any, ...]] | None,
        strategy: str,
        num_threads: int,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
    def range_query(
        self,
        queries: npt.NDArray[np.float32],
        radius: float,
        max_results: int,
        ef: int,
        labels: npt.ArrayLike | None,
        program: list[tuple[Any, ...]] | None,
        strategy: str,
        num_threads: int,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]: ...
    def labels_where(self, fn: Callable[[int], bool]) -> npt.NDArray[np.uint64]: ...
    def attribute_fields(self) -> list[tuple[str, str]]: ...
    def attribute_values(
        self, field: str, labels: npt.ArrayLike
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]: ...
    def last_plan(self) -> dict[str, Any]: ...
    def mark_deleted(self, labels: npt.ArrayLike) -> None: ...
    def unmark_deleted(self, labels: npt.ArrayLike) -> None: ...
    def is_deleted(self, label: int) -> bool: ...
    def contains(self, label: int) -> bool: ...
    def resize(self, max_elements: int) -> None: ...
    def refine_graph(self, ef: int = 0, num_threads: int = 0, steered: bool = False) -> None: ...
    def get_vectors(self, labels: npt.ArrayLike) -> npt.NDArray[np.float32]: ...
    def labels(self, include_deleted: bool = False) -> npt.NDArray[np.uint64]: ...
    def stats(self) -> dict[str, Any]: ...
    def kernel_set(self) -> KernelSet: ...
    def set_kernel_set(self, kernels: KernelSet) -> None: ...
    def set_prefetch(self, ahead: int, lines: int) -> None: ...
    def set_interleave(self, group: int) -> None: ...
    def set_scan_bits(self, bits: int) -> None: ...
    def save(self, path: str) -> None: ...
    def save_hnswlib(self, path: str) -> None: ...
    @staticmethod
    def load_hnswlib(path: str, space: str, dim: int, max_elements: int = 0) -> HNSW: ...
    def serialize(self) -> bytes: ...
    @staticmethod
    def load(
        path: str, mmap: bool = False, max_elements: int = 0, space: str | None = None
    ) -> HNSW: ...
    @staticmethod
    def deserialize(data: bytes, max_elements: int = 0) -> HNSW: ...
