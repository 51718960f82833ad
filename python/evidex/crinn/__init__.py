"""CRINN (arXiv 2508.02091) for evidex's own HNSW kernels.

Proposers write candidate C++ kernels for a slot of the kernel ABI (search,
construction, refinement; ``evidex/include/evidex/kernel_abi.h``); each is built
with CMake and benchmarked in a namespace jail with a default-deny seccomp filter
(``sandbox``), timed and checked by the loop itself, scored by the area under its
QPS-recall curve, and kept in an archive. Finalists are
re-measured interleaved with the built-in kernel; a winner that beats it is
marked, and ``HNSWIndex.use_kernels(winner)`` serves queries with it. The
``layout`` slot tunes the index's own settings the same way (codes, links per
node, refinement, prefetch and interleaving; no code is compiled), and
``Layout.winner(run)`` builds indexes with the one it keeps.

    from evidex.crinn import CrinnRun, TemplateProposer
    run = CrinnRun("runs/glove", data=vectors)
    summary = run.optimize("search", budget=40)
"""

from .archive import Archive, Candidate
from .build import BuildResult, build_kernel
from .layout import Layout
from .loop import CrinnRun, Settings
from .sandbox import Limits, LocalPool, Pool, Protection, Worker, WorkerFailed, protection
from .templates import (
    SLOTS,
    SPACE,
    Proposal,
    TemplateProposer,
    builtin_config,
    reference_config,
    render,
)

__all__ = [
    "SLOTS",
    "SPACE",
    "Archive",
    "BuildResult",
    "Candidate",
    "CrinnRun",
    "Layout",
    "Limits",
    "LocalPool",
    "Pool",
    "Proposal",
    "Protection",
    "Settings",
    "TemplateProposer",
    "Worker",
    "WorkerFailed",
    "build_kernel",
    "builtin_config",
    "protection",
    "reference_config",
    "render",
]
