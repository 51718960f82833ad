"""The layout slot: how an index stores and walks its graph, tuned by the CRINN loop.

The kernel slots compile code; the layout slot's candidates are settings of the
built-in core: which codes each node keeps of its neighbours (float32 rows, 8-bit
scalar codes, 4-bit PQ fast-scan codes of a chosen width, or RaBitQ codes),
how many links a node's block holds (``M``), whether and how the graph is refined, and the
search's machine tuning (prefetch depth, interleaved queries). The loop builds
each candidate's index, measures its QPS-recall curve as it measures kernels, and
keeps the winner; :meth:`Layout.winner` gives it back to build indexes with::

    layout = Layout.winner("runs/sift")
    index = layout.build(vectors, space="l2")  # codes, block size, refinement
    layout.tune(loaded_index)  # the machine's part, after a load

Re-rank depth is no knob of this layout: the walk scores every expanded node's
exact distance (its codes only order the beam), so its results are exact at any
setting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .archive import read_json

CODES = (None, "sq8", "pq4", "rabitq")

# The layout slot's knobs (first value: the built-in layout, the float32 graph the
# other slots run on). Values are what a template proposer may try.
LAYOUT_SPACE: dict[str, tuple[int, ...]] = {
    "EVX_CODES": (0, 1, 2, 3),  # index into CODES
    "EVX_PQ_DIMS": (0, 2, 4, 8),  # pq4: dimensions per 4-bit subspace (0: by dimension)
    "EVX_M": (0, 8, 12, 24, 32),  # links per node (level 0: 2 M); 0: the run's M
    "EVX_REFINE_EF": (0, 50, 100, 200, 300),  # refine_graph's beam; 0: not refined
    "EVX_REFINE_STEERED": (0, 1),  # refine_graph(steered=...) (RaBitQ codes only)
    "EVX_INTERLEAVE": (0, 1, 2, 4),  # queries walked together on a thread (codes only)
    "EVX_AHEAD": (0, 1, 2, 4, 8),  # prefetch: neighbours ahead (0: by data size)
    "EVX_LINES": (0, 1, 2, 4),  # prefetch: cache lines of each (0: by data size)
}


def canonical_layout(config: Mapping[str, int]) -> dict[str, int]:
    """Knobs with no effect under `config` set to their first value."""
    c = dict(config)
    if c["EVX_CODES"] != CODES.index("pq4"):
        c["EVX_PQ_DIMS"] = 0
    if c["EVX_CODES"] == 0:
        c["EVX_INTERLEAVE"] = 0  # float32 rows are never interleaved
    if c["EVX_CODES"] != CODES.index("rabitq") or c["EVX_REFINE_EF"] == 0:
        c["EVX_REFINE_STEERED"] = 0  # only RaBitQ edge codes steer a refinement
    return c


@dataclass(frozen=True)
class Layout:
    """An index layout: build settings (saved in the index file) and search
    tuning (the machine's, applied after every load).

    Attributes:
        quantization: None (float32 rows), ``"sq8"``, ``"pq4"`` or ``"rabitq"``.
        pq_dims: dimensions per subspace of ``"pq4"`` (0: the index's default).
        M: links per node (0: the caller's ``M``).
        refine_ef: beam of :meth:`HNSWIndex.refine_graph` (0: no refinement).
        refine_steered: that refinement steered by the RaBitQ edge codes
            (``refine_graph(steered=True)``; better or worse by the data).
        interleave, prefetch_ahead, prefetch_lines: as
            :meth:`HNSWIndex.set_search_tuning` (0: chosen by data size).
    """

    quantization: str | None = None
    pq_dims: int = 0
    M: int = 0
    refine_ef: int = 0
    refine_steered: bool = False
    interleave: int = 0
    prefetch_ahead: int = 0
    prefetch_lines: int = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Layout:
        """The layout of a template configuration; every knob checked against
        the space (a winners file is data from disk, not trusted)."""
        if not isinstance(config, Mapping):
            raise ValueError(f"a layout configuration must be a mapping, got {type(config)}")
        unknown = set(config) - set(LAYOUT_SPACE)
        if unknown:
            raise ValueError(f"unknown layout knobs {sorted(unknown)}")
        c: dict[str, int] = {}
        for name, values in LAYOUT_SPACE.items():
            value = config.get(name, values[0])
            if isinstance(value, bool) or not isinstance(value, int) or value not in values:
                raise ValueError(f"{name}={value!r} is not in the layout space {values}")
            c[name] = value
        c = canonical_layout(c)
        return cls(
            quantization=CODES[c["EVX_CODES"]],
            pq_dims=c["EVX_PQ_DIMS"],
            M=c["EVX_M"],
            refine_ef=c["EVX_REFINE_EF"],
            refine_steered=bool(c["EVX_REFINE_STEERED"]),
            interleave=c["EVX_INTERLEAVE"],
            prefetch_ahead=c["EVX_AHEAD"],
            prefetch_lines=c["EVX_LINES"],
        )

    @classmethod
    def winner(cls, run: str | os.PathLike[str]) -> Layout:
        """The layout a CRINN run kept (the built-in one when no layout won).

        Raises:
            ValueError: `run` holds no CRINN run, or a damaged layout record.
        """
        from pathlib import Path

        if not isinstance(read_json(Path(run) / "run.json"), dict):
            raise ValueError(f"{run} holds no CRINN run")  # a mistyped path, not "no winner"
        winners = read_json(Path(run) / "winners.json")
        if not isinstance(winners, dict):
            winners = {}
        entry = winners.get("layout")
        if entry is None:
            return cls()
        if not isinstance(entry, dict):
            raise ValueError(f"{run}: the layout winner is not a record")
        return cls.from_config(entry.get("config") or {})

    @property
    def builds_builtin(self) -> bool:
        """Builds the same index as the built-in layout (tuning aside)."""
        return (self.quantization, self.M, self.refine_ef) == (None, 0, 0)

    def tuning(self) -> dict[str, int]:
        return {"interleave": self.interleave, "prefetch_ahead": self.prefetch_ahead,
                "prefetch_lines": self.prefetch_lines}  # fmt: skip

    def build(
        self,
        vectors: Any,
        space: str = "l2",
        M: int = 16,
        ef_construction: int = 200,
        ids: Any = None,
        num_threads: int = 0,
        kernels: Any = None,
    ) -> Any:
        """An index of `vectors` in this layout, tuned for this machine.

        Args:
            vectors: ``[n, dim]`` float32 vectors.
            space: the distance, as :class:`evidex.HNSWIndex`.
            M: links per node, unless the layout sets its own.
            ef_construction: the build beam.
            ids: their ids (default ``0..n-1``).
            num_threads: build threads (0: all cores).
            kernels: a kernel set (``evidex.kernels``) to build with, if not the
                built-in one.
        """
        import numpy as np

        from ..index import HNSWIndex

        x = np.asarray(vectors)
        if x.ndim != 2:
            raise ValueError(f"vectors must be [n, dim], got shape {x.shape}")
        dim = x.shape[1]
        pq_dims = min(self.pq_dims, dim) if self.quantization == "pq4" else 0
        index = HNSWIndex(dim, space, M=self.M or M, ef_construction=ef_construction,
                          max_elements=max(1, len(x)), quantization=self.quantization,
                          pq_dims=pq_dims)  # fmt: skip
        if kernels is not None:
            index._core.set_kernel_set(kernels)
        index.add(x, ids, num_threads=num_threads)
        if self.refine_ef:
            index.refine_graph(ef=self.refine_ef, num_threads=num_threads,
                               steered=self.refine_steered)  # fmt: skip
        self.tune(index)
        return index

    def tune(self, index: Any) -> None:
        """Apply the layout's search tuning to `index` (it is not saved in files)."""
        index.set_search_tuning(**self.tuning())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
