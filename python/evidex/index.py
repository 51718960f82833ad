"""`HNSWIndex`: the compiled HNSW graph behind a numpy / torch friendly API."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

import numpy as np

from . import _core
from ._arrays import (
    C_INT_LIMIT,
    as_float_array,
    as_float_matrix,
    as_labels,
    as_queries,
    check_number,
    check_positive_int,
    check_threads,
    fast_int,
    fast_threads,
    to_numpy,
)
from .filters import Expr, F

SPACES = ("l2", "ip", "cosine")
_MAX_EF = 2**31 - 1
_NO_LABEL = np.uint64(np.iinfo(np.uint64).max)

Filter = Union[None, Expr, Callable[[int], bool], np.ndarray, "list[int]"]
STRATEGIES = ("auto", "scan", "filtered", "two_hop", "coded_scan")
PathLike = Union[str, "os.PathLike[str]"]


class HNSWIndex:
    """Approximate nearest-neighbour index over float32 vectors (HNSW graph).

    Args:
        dim: vector dimension.
        space: ``"l2"`` (squared Euclidean distance), ``"ip"`` (``1 - dot``) or
            ``"cosine"`` (``1 - cosine``; vectors are normalised once at insert).
        M: graph degree (level 0 keeps up to ``2 * M`` links).
        ef_construction: beam width while building; higher builds a better graph.
        max_elements: initial capacity; ``add`` grows it as needed (see ``resize``).
        seed: seed of the level generator; one thread plus a seed gives the same graph.
        ef: default beam width of ``search`` (at least ``k`` is always used).
        quantization: ``None`` (float32 traversal), ``"sq8"``: traverse on 8-bit
            codes (one range per dimension, learnt by ``train`` or from the first
            ``add``), then re-rank the beam in float32; or ``"pq4"``: each node keeps
            its neighbours' 4-bit product-quantisation codes beside its links, so a
            hop scores all neighbours from one contiguous read by SIMD table look-ups
            ("fast scan"), and every node the search expands is measured in float32.
            Distances returned are exact either way. sq8 costs ``dim`` bytes per
            vector; pq4 ``2 * M * dim / (2 * pq_dims)`` bytes per vector (its
            neighbours' codes). Both learn their codes from ``train`` or the first
            ``add``. ``"rabitq"``: the same layout with RaBitQ codes (the sign of
            each edge's randomly rotated residual, 1 bit per dimension, and two
            floats; SymphonyQG's estimator), which estimate edges more closely than
            pq4's at about the same size and need no training; an insert's
            level-0 search follows them too, measuring only what it expands
            (about half an add's time at 384 dimensions).
        pq_dims: dimensions per 4-bit subspace of ``"pq4"`` (0: 2 up to 64
            dimensions, 4 above). Fewer means finer estimates and more memory.
        kernels: a compiled kernel library (path) to load at once, as ``use_kernels``.

    Ids are non-negative integers below ``2**63``; ``search`` returns them as int64,
    with ``-1`` (distance ``inf``) where fewer than ``k`` elements pass a filter.
    All long calls release the GIL; ``search`` from several threads, and ``add``
    concurrent with ``search``, are safe.
    """

    def __init__(
        self,
        dim: int,
        space: str = "l2",
        M: int = 16,
        ef_construction: int = 200,
        max_elements: int = 1024,
        seed: int = 100,
        ef: int = 64,
        quantization: str | None = None,
        kernels: PathLike | None = None,
        pq_dims: int = 0,
    ) -> None:
        dim = check_positive_int(dim, "dim")
        if space not in SPACES:
            raise ValueError(f"unknown space {space!r}; expected one of {SPACES}")
        M = check_positive_int(M, "M", minimum=2)
        ef_construction = check_positive_int(ef_construction, "ef_construction")
        max_elements = check_positive_int(max_elements, "max_elements", minimum=0)
        seed = check_positive_int(seed, "seed", minimum=0)
        if quantization not in (None, "sq8", "pq4", "rabitq"):
            raise ValueError(
                f"unknown quantization {quantization!r}; expected None, 'sq8', 'pq4' or 'rabitq'"
            )
        quant = getattr(_core.Quantization, quantization or "none")
        pq_dims = check_positive_int(pq_dims, "pq_dims", minimum=0)
        if pq_dims and quantization != "pq4":
            raise ValueError("pq_dims applies to quantization='pq4' only")
        if pq_dims > dim:
            raise ValueError(f"pq_dims must be at most dim ({dim}), got {pq_dims}")
        self._core = _core.HNSW(
            dim, _core.parse_space(space), M, ef_construction, max_elements, seed, quant, pq_dims
        )
        self.ef = ef
        if kernels is not None:
            self.use_kernels(kernels)

    @classmethod
    def _wrap(cls, core: _core.HNSW) -> HNSWIndex:
        self = cls.__new__(cls)
        self._core = core
        return self

    # ------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._core.dim

    @property
    def space(self) -> str:
        return self._core.space

    @property
    def M(self) -> int:
        return self._core.M

    @property
    def ef_construction(self) -> int:
        return self._core.ef_construction

    @property
    def seed(self) -> int:
        return self._core.seed

    @property
    def quantization(self) -> str | None:
        return self._core.quantization or None

    @property
    def pq_dims(self) -> int:
        """Dimensions per 4-bit subspace of a ``"pq4"`` index (0 otherwise)."""
        return self._core.pq_dims

    @property
    def scan_code_dims(self) -> int:
        """Dimensions per subspace of the scan codes (0 without them; see
        :meth:`build_scan_codes`)."""
        return self._core.scan_code_dims

    def build_scan_codes(self, pq_dims: int = 0, num_threads: int = 0) -> None:
        """Give every stored vector a 4-bit product code for filtered search.

        With codes, filtered k-NN search gains the ``"coded_scan"`` method: the
        allowed elements are ranked by their codes (16 centroids per subspace of
        ``pq_dims`` dimensions, scored 32 at a time by SIMD table look-ups) and
        the best ``max(ef, k)`` re-ranked with exact distances, so returned
        distances are exact and recall depends on ``ef`` (as for the graph's
        methods; measured in bench/RESULTS.md). The planner (``"auto"``) weighs it
        against the exact scan and the graph by its cost model; a restrictive
        filter over wide vectors is where it wins.

        The centroids are fitted on up to 65,536 live vectors; from then on adds
        and updates code their vectors, and ``save`` keeps the codes (file
        format 4). Memory: half a byte per subspace, their count rounded up to a
        multiple of 4 (48 bytes per 384-d vector by default), plus 4 bytes per
        vector for ``"l2"``. Building again refits; :meth:`drop_scan_codes`
        removes them.

        Args:
            pq_dims: dimensions per subspace (0: 2 up to 64 dimensions, 4 above).
            num_threads: threads for fitting and coding (0: all cores).

        Raises:
            ValueError: the index has no live elements, or pq_dims exceeds dim.
        """
        pq_dims = check_positive_int(pq_dims, "pq_dims", minimum=0)
        if pq_dims > self.dim:
            raise ValueError(f"pq_dims must be at most dim ({self.dim}), got {pq_dims}")
        self._core.build_scan_codes(pq_dims, check_threads(num_threads))

    def drop_scan_codes(self) -> None:
        """Remove the scan codes (``"coded_scan"`` is then no longer available)."""
        self._core.drop_scan_codes()

    def set_search_tuning(
        self,
        prefetch_ahead: int = 0,
        prefetch_lines: int = 0,
        interleave: int = 0,
        scan_bits: int = 0,
    ) -> None:
        """Tune the search's memory access for this machine (0: chosen by data size).

        Not saved with the index: it belongs to the machine.

        Args:
            prefetch_ahead: neighbours whose data is requested ahead of use.
            prefetch_lines: cache lines requested of each (the rest streams in).
            interleave: queries of a batch searched together on one thread, their
                graph hops taken in turn so one query's memory requests are in flight
                while another computes (``"sq8"``, ``"pq4"`` and ``"rabitq"`` indexes
                without a filter or deletions; 0 picks: 2 for sq8 codes of at most 128
                bytes, else off; 1 turns it off, at most 16). Results are the same as
                searching the queries one by one.
            scan_bits: the exact scan's first pass for batches of k-NN queries (the
                ``"scan"`` strategy of filtered search): 8 scores 7-bit codes of
                queries and vectors with integer SIMD, then rescores in float32
                every vector its error bound cannot rule out; 32 scores float32 only;
                0 picks 8 for 16 or more queries against 2,048 or more vectors (1,024
                on CPUs with AVX-512 VNNI) of 96 or more dimensions. The answers are
                those of the float32 scan.
        """
        for name, v in (("prefetch_ahead", prefetch_ahead), ("prefetch_lines", prefetch_lines),
                        ("interleave", interleave), ("scan_bits", scan_bits)):  # fmt: skip
            check_positive_int(v, name, minimum=0)
        if interleave > 16:
            raise ValueError(f"interleave must be at most 16, got {interleave}")
        if scan_bits not in (0, 8, 32):
            raise ValueError(f"scan_bits must be 0, 8 or 32, got {scan_bits}")
        self._core.set_prefetch(int(prefetch_ahead), int(prefetch_lines))
        self._core.set_interleave(int(interleave))
        self._core.set_scan_bits(int(scan_bits))

    # ------------------------------------------------------------ kernels
    def use_kernels(
        self, path: PathLike, *, self_test: bool = True, tolerance: float = 0.01
    ) -> None:
        """Load a compiled kernel library (``evidex.kernels``; a CRINN winner).

        Its slots (search, construction, refinement) replace the active ones; the
        others stay. The library must export this evidex's kernel ABI version and,
        unless ``self_test=False``, pass :func:`evidex.kernels.self_test` against the
        built-in kernels (recall within `tolerance`, exact distances, valid ids).

        Raises:
            FileNotFoundError: no such library.
            ValueError: wrong ABI version, nothing exported, not loadable.
            evidex.kernels.KernelSelfTestError: wrong results on the probe set.
        """
        from . import kernels as _kernels

        candidate = _kernels.load_library(path, self._core.kernel_set())
        if self_test:
            _kernels.self_test(
                candidate,
                dim=self.dim,
                space=self.space,
                M=self.M,
                ef_construction=min(self.ef_construction, 200),
                index=self,
                tolerance=tolerance,
            )
        self._core.set_kernel_set(candidate)

    def reset_kernels(self) -> None:
        """Go back to the built-in kernels."""
        self._core.set_kernel_set(_core.builtin_kernel_set())

    def kernels(self) -> dict[str, str]:
        """Where each kernel slot comes from: ``"builtin"`` or a library path."""
        from . import kernels as _kernels

        return _kernels.describe(self._core.kernel_set())

    def train(self, vectors: Any) -> None:
        """Learn the quantiser (SQ8 ranges, PQ4 centroids) from samples, before the first add."""
        data, _ = as_float_matrix(vectors, self.dim, "vectors")
        if data.shape[0] == 0:
            raise ValueError("train() needs at least one vector")
        if self._core.element_count > 0:
            raise ValueError("train() must precede the first add")
        self._core.train(data)

    @property
    def max_elements(self) -> int:
        """Current capacity (slots, deleted ones included)."""
        return self._core.capacity

    @property
    def ef(self) -> int:
        """Default beam width of ``search``; saved with the index."""
        return self._core.ef

    @ef.setter
    def ef(self, value: int) -> None:
        self._core.ef = check_positive_int(value, "ef")

    def __len__(self) -> int:
        """Number of live (not deleted) elements."""
        return self._core.live_count

    def __contains__(self, id: int) -> bool:
        try:
            label = int(as_labels(id, 1)[0])
            return not self._core.is_deleted(label)
        except (TypeError, ValueError, KeyError):
            return False

    def __repr__(self) -> str:
        return (
            f"HNSWIndex(dim={self.dim}, space={self.space!r}, M={self.M}, "
            f"ef_construction={self.ef_construction}, len={len(self)}, "
            f"max_elements={self.max_elements})"
        )

    # ------------------------------------------------------------ building
    def add(
        self,
        vectors: Any,
        ids: Any = None,
        num_threads: int = 0,
        replace_deleted: bool = False,
        attributes: Mapping[str, Any] | None = None,
    ) -> np.ndarray:
        """Insert vectors; an id already present is updated in place.

        Args:
            vectors: ``[n, dim]`` (or one ``[dim]``) array or tensor, any real dtype.
            ids: ``n`` non-negative integer ids; by default ``next_id, next_id + 1, ...``
                where ``next_id`` is one past the largest id ever added.
            num_threads: insert threads (0: all cores). One thread and a fixed seed
                build the same graph every time.
            replace_deleted: reuse slots of deleted elements for new ids.
            attributes: values stored with the vectors, filterable with
                :class:`evidex.F`: ``{name: values}``, one integer or float per
                vector (or one scalar for all). A field keeps the kind of its first
                values (integers, bools as 0 / 1, or floats; NaN is refused). An
                update keeps the fields it does not give; a new element has none.

        Returns:
            The ids of the added vectors (int64).
        """
        data, _ = as_float_matrix(vectors, self.dim, "vectors")
        threads = check_threads(num_threads)
        columns = None
        if attributes is not None:
            columns = _attribute_columns(attributes, data.shape[0], self.attribute_fields)
        # Growth, training an SQ8 index on its first batch and automatic ids all
        # happen inside the core, under its locks: concurrent adds never collide.
        if ids is None:
            start = self._core.add_auto(data, threads, bool(replace_deleted), True, columns)
            return np.arange(start, start + data.shape[0], dtype=np.int64)
        labels = as_labels(ids, data.shape[0])  # the core refuses ids of 2**63 and more
        self._core.add(data, labels, threads, bool(replace_deleted), False, True, columns)
        return labels.astype(np.int64)

    @property
    def attribute_fields(self) -> dict[str, str]:
        """Stored attribute fields: name -> ``"int"`` or ``"float"``."""
        return dict(self._core.attribute_fields())

    def get_attributes(
        self, ids: Any, fields: Iterable[str] | None = None
    ) -> dict[str, np.ma.MaskedArray]:
        """Stored attribute values of ``ids`` (masked where an element has none).

        Raises KeyError for an id not in the index, ValueError for an unknown field.
        """
        labels = as_labels(ids, None)
        known = self.attribute_fields
        names = list(known) if fields is None else [str(f) for f in fields]
        out = {}
        for name in names:
            if name not in known:
                raise ValueError(f"unknown attribute {name!r}; the index has: "
                                 f"{', '.join(sorted(known)) or 'none'}")  # fmt: skip
            values, present = self._core.attribute_values(name, labels)
            out[name] = np.ma.MaskedArray(values, mask=~present)
        return out

    def resize(self, max_elements: int) -> None:
        """Change the capacity; it cannot shrink below the number of stored slots."""
        max_elements = check_positive_int(max_elements, "max_elements", minimum=0)
        if max_elements < self._core.element_count:
            raise ValueError(
                f"cannot resize to {max_elements}: the index holds "
                f"{self._core.element_count} elements (deleted ones included)"
            )
        self._core.resize(max_elements)

    def refine_graph(
        self, ef: int | None = None, num_threads: int = 0, *, steered: bool = False
    ) -> None:
        """Choose every node's level-0 links again from a search of the finished graph.

        Inserting a node picks its links from the graph as it stood then (at most
        ``M`` of them, from the ``ef_construction`` nearest it found). This pass,
        SymphonyQG's build round, searches the whole graph from each node with
        beam ``ef``, keeps up to ``2 * M`` links by hnswlib's heuristic from
        everything the search measured, and links back. The same recall then
        needs a smaller ``ef``: on MiniLM-100k (RaBitQ codes) recall at ``ef`` 32
        rose from 0.942 to 0.954 and at 192 from 0.990 to 0.993 (bench/RESULTS.md).
        It costs about one more build with the same settings (GloVe-200k, sq8,
        M 16: add 25 s, refinement 33 s on two cores), and it makes the build's
        own beam matter little: ``ef_construction=100`` under a refinement lost
        0.001 of recall at ``ef`` 64 for 0.8x the time. The index stays an
        ordinary one: searches and adds may run meanwhile (a ``resize``, or an
        add that must grow the index, waits for it), deleted elements neither get
        new links nor are chosen as one, later ``add`` calls insert as before, and
        a second call refines again.

        Args:
            ef: the beam of each node's search (default
                ``min(self.ef_construction, 100)``: a beam of 200 gave the same
                recall on MiniLM-100k and video-SIFT-200k, 0.002 more on GloVe-200k,
                for 1.4-1.6x the time; three times that when ``steered``).
            num_threads: threads (0: all cores).
            steered: search as SymphonyQG builds (``"rabitq"`` indexes only): a walk
                steered by the edge codes, whose expanded nodes, measured exactly,
                are the candidates. It depends on the data: on MiniLM-100k (384-d)
                a better graph (recall at ``ef`` 128 0.9880 -> 0.9896) in 0.7x the
                time; on video-SIFT-200k the same graph in about the same time; on
                clustered Gaussian noise a worse one unless the beam is wide
                (bench/RESULTS.md, "Refinement steered by the edge codes").

        Raises:
            ValueError: ``ef`` is not a positive integer, or ``steered`` on an
                index without RaBitQ codes.
            TypeError: ``steered`` is not a bool.
            RuntimeError: the index is memory-mapped (``resize`` copies it into memory).
        """
        ef = 0 if ef is None else min(check_positive_int(ef, "ef"), _MAX_EF)  # 0: default
        num_threads = check_positive_int(num_threads, "num_threads", minimum=0)
        if not isinstance(steered, (bool, np.bool_)):
            raise TypeError(f"steered must be True or False, got {steered!r}")
        if steered and self.quantization != "rabitq":
            raise ValueError(
                "steered refinement needs quantization='rabitq' (edge codes to steer by), "
                f"this index has {self.quantization!r}"
            )
        self._core.refine_graph(ef, num_threads, bool(steered))

    # ------------------------------------------------------------ search
    def search(
        self,
        queries: Any,
        k: int = 10,
        ef: int | None = None,
        filter: Filter = None,
        num_threads: int = 0,
        filter_strategy: str = "auto",
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of each query.

        Args:
            queries: ``[nq, dim]`` array or tensor, or one ``[dim]`` query.
            k: neighbours per query, at most ``len(self)``.
            ef: beam width (default ``self.ef``; ``max(ef, k)`` is used).
            filter: ``None``; an attribute expression (:class:`evidex.F`); an
                allow-list of ids (integer array or list); a boolean mask indexed by
                id; or a callable ``f(id) -> bool``. A callable is called with the
                GIL held: for a batch it is evaluated once per element up front
                (when that is fewer calls than a lazy search would make), else
                lazily on one thread.
            num_threads: search threads over queries (0: all cores).
            filter_strategy: how a filtered batch runs: ``"auto"`` (the planner
                picks the cheapest by its cost model, calibrated on this machine),
                ``"scan"`` (exact over the allowed elements), ``"filtered"``
                (beam search through every node, returning allowed ones) or
                ``"two_hop"`` (beam over allowed nodes reached through at most one
                rejected node, ACORN-1; falls back to ``"filtered"``) or
                ``"coded_scan"`` (the allowed elements ranked by their 4-bit scan
                codes, the best ``max(ef, k)`` re-ranked exactly; needs
                :meth:`build_scan_codes`).

        Returns:
            ``(ids, distances)``: int64 and float32 arrays ``[nq, k]`` (``[k]`` for a
            1-D query), nearest first; ``-1`` / ``inf`` pad rows that a filter leaves
            with fewer than ``k`` results.
        """
        # Plain ints and float32 arrays go straight to the compiled checks.
        k = fast_int(k, "k")
        if ef is None:
            ef = -1
        elif type(ef) is not int:
            ef = check_positive_int(ef, "ef")
        elif ef < 1:
            raise ValueError(f"ef must be at least 1, got {ef}")
        if ef > _MAX_EF:  # the core clamps to the element count anyway
            ef = _MAX_EF
        num_threads = fast_threads(num_threads)
        queries = as_queries(queries)
        if filter is None:
            if filter_strategy not in STRATEGIES:
                raise ValueError(f"unknown filter_strategy {filter_strategy!r}; "
                                 f"expected one of {STRATEGIES}")  # fmt: skip
            return self._core.query(queries, k, ef, None, num_threads)
        labels, program = self._allow(filter, queries, ef)
        if labels is None and program is None:  # a lazy callable
            return self._core.query(queries, k, ef, filter, num_threads)
        return self._core.query_set(
            queries, k, ef, labels, program, str(filter_strategy), num_threads
        )

    def search_range(
        self,
        queries: Any,
        radius: float,
        max_results: int = 1000,
        ef: int | None = None,
        filter: Filter = None,
        num_threads: int = 0,
        filter_strategy: str = "auto",
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every element within ``radius`` of each query (FAISS's ``range_search``).

        Distances are the index's (squared L2 for ``"l2"``, ``1 - cos`` for
        ``"cosine"``, ``1 - dot`` for ``"ip"``); an element is returned when its
        distance is below ``radius``. The planner estimates the result count from
        a sample and picks an exact scan of the allowed elements or the graph,
        whose beam starts at twice the estimate (at least ``ef``) and doubles
        while every element in it lies within the radius (approximate recall,
        measured in bench/RESULTS.md). ``filter_strategy="scan"`` is exact.

        Args:
            queries: ``[nq, dim]`` or one ``[dim]`` query.
            radius: a finite, non-negative distance.
            max_results: at most this many per query (the nearest).
            ef: the starting beam width (default ``self.ef``).
            filter: as in :meth:`search`.
            num_threads: search threads over queries (0: all cores).
            filter_strategy: as in :meth:`search`.

        Returns:
            ``(lims, ids, distances)``: query ``i``'s results are
            ``ids[lims[i]:lims[i + 1]]``, nearest first.
        """
        radius = check_number(radius, "radius")
        if not (math.isfinite(radius) and radius >= 0):
            raise ValueError(f"radius must be a finite non-negative number, got {radius}")
        max_results = min(check_positive_int(max_results, "max_results"), C_INT_LIMIT - 1)
        ef = -1 if ef is None else min(check_positive_int(ef, "ef"), _MAX_EF)
        num_threads = check_threads(num_threads)
        queries = as_float_array(queries, "queries")
        labels = program = None
        if filter is not None:
            labels, program = self._allow(filter, queries, ef, force=True)
        lims, ids, dists = self._core.range_query(
            queries, radius, max_results, ef, labels, program, str(filter_strategy), num_threads
        )
        return lims, ids, dists

    def last_plan(self) -> dict[str, Any]:
        """How the last filtered or range search ran: the method, the allowed
        count, and the planner's predicted nanoseconds per query for each method
        (``None`` for a method that was not a candidate)."""
        return dict(self._core.last_plan())

    def _allow(
        self, filter: Filter, queries: np.ndarray, ef: int, force: bool = False
    ) -> tuple[np.ndarray | None, list | None]:
        return resolve_filter(self._core, filter, queries, self.ef if ef == -1 else ef, force)

    # ------------------------------------------------------------ deletion
    def delete(self, ids: Any) -> None:
        """Mark ids deleted: they leave results but keep their slot (see ``replace_deleted``).

        All or nothing: raises KeyError for an id that is not in the index, ValueError
        for one that is already deleted or listed twice, and then deletes none.
        """
        self._core.mark_deleted(as_labels(ids, None))

    def undelete(self, ids: Any) -> None:
        """Bring deleted ids back into the results (all or nothing, as ``delete``)."""
        self._core.unmark_deleted(as_labels(ids, None))

    # ------------------------------------------------------------ access
    def get_vectors(self, ids: Any) -> np.ndarray:
        """Stored vectors ``[n, dim]`` (normalised for ``cosine``); deleted ids included.

        Raises KeyError for an id that is not in the index.
        """
        return self._core.get_vectors(as_labels(ids, None))

    def ids(self, include_deleted: bool = False) -> np.ndarray:
        """Ids in insertion order (int64)."""
        return self._core.labels(include_deleted).astype(np.int64)

    def stats(self) -> dict[str, Any]:
        """Counts, levels, memory in bytes, the distance computations and hops
        (expanded nodes; unfiltered k-NN searches with the built-in kernels) of the
        last search, and the layout's sizes (``node_bytes``, ``code_bytes``,
        ``pq4_block_bytes``: a node's fast-scan block, pq4 or rabitq;
        ``edge_group_codes``: the codes per group in that block, 32, or 16 for a block
        written in half groups; ``scan_code_bytes``: 0 where absent) for limit
        analyses."""
        s = dict(self._core.stats())
        s["simd_level"] = _core.simd_level()
        q = s["last_search_queries"]
        s["last_search_distance_computations_per_query"] = (
            s["last_search_distance_computations"] / q if q else 0.0
        )
        s["last_search_hops_per_query"] = s["last_search_hops"] / q if q else 0.0
        return s

    # ------------------------------------------------------------ persistence
    def save(self, path: PathLike, format: str = "evidex") -> None:
        """Write the index to ``path`` via a temporary file, read back and checked
        before it is renamed into place (a failed save leaves the old file).

        Args:
            format: ``"evidex"`` (versioned and checksummed; keeps everything) or
                ``"hnswlib"`` (hnswlib 0.8's ``save_index`` format, loadable by
                ``hnswlib.Index.load_index`` with this index's space and
                dimension: graph, vectors, ids and deletions; quantised codes are
                not written, stored attributes are refused with ValueError).
        """
        if format == "evidex":
            self._core.save(os.fspath(path))
        elif format == "hnswlib":
            self._core.save_hnswlib(os.fspath(path))
        else:
            raise ValueError(f"format must be 'evidex' or 'hnswlib', got {format!r}")

    @classmethod
    def from_hnswlib(cls, path: PathLike, space: str, dim: int, max_elements: int = 0) -> HNSWIndex:
        """Load a file written by hnswlib 0.8's ``save_index``, without rebuilding.

        hnswlib files name neither their space nor their dimension: give the ones
        the index was built with (a file of another space loads as hnswlib allows;
        into ``cosine`` its vectors are normalised). The file carries no checksum:
        every field is bounded and the graph checked as for evidex's own files.
        Capacity as hnswlib's ``load_index``: ``max_elements`` when at least the
        element count, else (and for 0) the file's.

        Raises:
            evidex.CorruptIndexError: truncated or inconsistent file, or an id of
                2**63 or more (evidex ids are below 2**63).
            ValueError: the file's dimension is not ``dim``; unknown space.
            OSError: the file cannot be opened.
        """
        if space not in SPACES:
            raise ValueError(f"unknown space {space!r}; expected one of {SPACES}")
        dim = check_positive_int(dim, "dim")
        max_elements = check_positive_int(max_elements, "max_elements", minimum=0)
        return cls._wrap(_core.HNSW.load_hnswlib(os.fspath(path), space, dim, max_elements))

    @classmethod
    def load(cls, path: PathLike, mmap: bool = False) -> HNSWIndex:
        """Load a file written by ``save``.

        With ``mmap=True`` the vectors and level-0 links are mapped privately from
        the file (shared with the page cache, never written back); the first ``add``
        copies them into memory.

        Raises:
            evidex.CorruptIndexError: wrong magic, newer format, truncation, checksum
                mismatch or an inconsistent graph.
            OSError: the file cannot be opened.
        """
        return cls._wrap(_core.HNSW.load(os.fspath(path), bool(mmap)))

    def to_bytes(self) -> bytes:
        """The file image that ``save`` writes."""
        return self._core.serialize()

    @classmethod
    def from_bytes(cls, data: bytes) -> HNSWIndex:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"from_bytes needs bytes, got {type(data).__name__}")
        return cls._wrap(_core.HNSW.deserialize(bytes(data)))

    def __getstate__(self) -> dict[str, Any]:
        return {"index": self.to_bytes()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._core = _core.HNSW.deserialize(state["index"])


def resolve_filter(
    core: _core.HNSW, filter: Filter, queries: np.ndarray, ef: int, force: bool = False
) -> tuple[np.ndarray | None, list | None]:
    """A filter as (allowed ids, attribute program) for the core's planned search,
    or (None, None) for a callable better called lazily during the search."""
    if isinstance(filter, Expr):
        return None, filter.compile(dict(core.attribute_fields()))
    if isinstance(filter, F):
        raise TypeError(f"{filter!r} is a field, not a filter: compare it, e.g. {filter!r} == 1")
    if callable(filter):
        n = core.live_count
        nq = 1 if queries.ndim == 1 else queries.shape[0]
        # A lazy search calls the filter for about every node it visits (up to
        # all of them, for a restrictive filter): once per element is fewer
        # calls when the batch is large.
        if not force and nq * min(n, 16 * ef) < n:
            return None, None
        return core.labels_where(filter), None
    return convert_filter(filter), None


def convert_filter(filter: Filter) -> Any:
    """An id filter as the core takes it: the callable itself, or the allowed ids
    (uint64) of an id array or a boolean mask indexed by id; TypeError or ValueError
    naming what is wrong otherwise."""
    if filter is None:
        return None
    if callable(filter):
        return filter
    if isinstance(filter, (str, bytes, dict)):
        raise TypeError(
            "filter must be None, a callable, an array of ids or a boolean mask, "
            f"got {type(filter).__name__}"
        )
    try:
        a = to_numpy(filter)
    except Exception as e:  # noqa: BLE001 - re-raised with the reason
        raise TypeError(f"filter of type {type(filter).__name__} is not usable: {e}") from e
    if a.dtype == np.bool_:
        if a.ndim != 1:
            raise ValueError("a boolean filter mask must be 1-D (indexed by id)")
        return np.flatnonzero(a).astype(np.uint64)
    if a.dtype.kind not in "iu" and a.size:
        raise TypeError(
            "filter must be None, a callable, an array of ids or a boolean mask, "
            f"got an array of dtype {a.dtype}"
        )
    return as_labels(a.reshape(-1), None, "filter ids")


def _attribute_columns(
    attributes: Mapping[str, Any], n: int, fields: Mapping[str, str]
) -> list[tuple[str, str, np.ndarray]]:
    """``add``'s attributes as (name, kind, 1-D array of n) for the core."""
    if not isinstance(attributes, Mapping):
        raise TypeError(f"attributes must be a dict of name -> values, got "
                        f"{type(attributes).__name__}")  # fmt: skip
    out = []
    for name, values in attributes.items():
        if not isinstance(name, str):
            raise TypeError(f"attribute names are str, got {name!r}")
        try:
            a = to_numpy(values)
        except Exception as e:  # noqa: BLE001 - re-raised with the field's name
            raise TypeError(f"attribute {name!r}: values of type {type(values).__name__} "
                            f"are not usable: {e}") from e  # fmt: skip
        if a.ndim == 0:
            a = np.full(n, a.item(), dtype=a.dtype)
        if a.ndim != 1 or a.shape[0] != n:
            raise ValueError(f"attribute {name!r} has shape {a.shape}; expected {n} values, "
                             f"one per vector")  # fmt: skip
        if a.dtype == object and n:
            try:
                a = np.asarray(a.tolist())
            except Exception:  # noqa: BLE001
                pass
        kind = fields.get(name)
        if a.dtype.kind in "biu" or (a.size == 0 and kind != "float"):
            if a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
                raise ValueError(f"attribute {name!r} has values past the int64 range")
            if kind == "float":
                out.append((name, "float", a.astype(np.float64)))
            else:
                out.append((name, "int", a.astype(np.int64)))
        elif a.dtype.kind == "f":
            f = a.astype(np.float64)
            if not np.isfinite(f).all():
                row = int(np.flatnonzero(~np.isfinite(f))[0])
                raise ValueError(f"attribute {name!r} has a NaN or infinite value (row {row})")
            if kind == "int":
                if not (np.floor(f) == f).all() or (np.abs(f) >= 2.0**63).any():
                    raise TypeError(f"attribute {name!r} holds integers; got non-integral "
                                    f"floats")  # fmt: skip
                out.append((name, "int", f.astype(np.int64)))
            else:
                out.append((name, "float", f))
        else:
            raise TypeError(f"attribute {name!r} must hold integers, bools or floats, "
                            f"got dtype {a.dtype}")  # fmt: skip
    return out
