"""Limit analysis: how close does search get to what this machine allows?

    python -m bench.limits bench/results/glove-50-angular-200000.json

Per query, from the runner's counts (distance computations, hops = expanded
nodes) and the layout of the index, the cache lines a search touches, and three
bounds measured on this machine: the kernel bound (every distance at the speed
of one in-cache distance; for fast-scan graphs, pq4 and rabitq, also each
expanded node's groups of 32 (or 16) edge codes at the in-cache fast-scan speed), the
latency bound (every hop pays one dependent DRAM access, measured by a pointer
chase over huge-page storage as the graph uses, and nothing else overlaps it)
and the call cost. The limit is the larger of the first two plus the call; "of
limit" is limit time / measured time.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import numpy as np

from evidex import _core


def best_seconds(call: Callable[[], object], rounds: int, calls: int = 1) -> float:
    """Seconds per call of `call`, the best of `rounds` rounds of `calls` calls."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def seconds_per_distance(dim: int, space: str, level: str = "", rows: int = 4096) -> float:
    """Best-of-20 time of one distance over `rows` in-cache rows."""
    rng = np.random.default_rng(dim)
    data = rng.normal(size=(rows, dim)).astype(np.float32)
    q = rng.normal(size=dim).astype(np.float32)
    kernel_space = "l2" if space == "l2" else "ip"
    return best_seconds(lambda: _core.distances(q, data, kernel_space, level), 20) / rows


def call_overhead(dim: int) -> float:
    """Seconds of one search call on a 1-element index: binding and Python cost."""
    import evidex

    index = evidex.HNSWIndex(dim)
    index.add(np.zeros((1, dim), np.float32))
    q = np.zeros(dim, np.float32)
    return best_seconds(lambda: index.search(q, 1, num_threads=1), 5, 2000)


def seconds_per_subspace(level: str = "", codes: int = 32) -> float:
    """In-cache fast-scan time per subspace of one group of ``codes`` codes (32, or
    16 for the half groups of blocks of at most 16 edges): the slope of best-of-7
    call times over 8 and 256 subspaces (the call's own cost cancels)."""
    rng = np.random.default_rng(0)
    kernel = _core.fastscan32 if codes == 32 else _core.fastscan16

    def best(subspaces: int) -> float:
        block = rng.integers(0, 256, subspaces * codes // 2, dtype=np.uint8)
        lut = rng.integers(0, 256, subspaces * 16, dtype=np.uint8)
        return best_seconds(lambda: kernel(block, lut, level), 7, 20_000)

    return max(0.0, (best(256) - best(8)) / 248)


def lines_of(nbytes: int) -> int:
    return -(-int(nbytes) // 64)


def fast_scan(library: str) -> bool:
    return "-pq4" in library or "-rabitq" in library


def edge_groups(library: str, layout: dict, space: str, M: int) -> tuple[int, int, int] | None:
    """(groups of edges, subspaces per code, codes per group) of a fast-scan graph's
    node, from its block's size: the codes (half a byte per subspace per code; a
    group holds ``edge_group_codes`` codes, 32 or 16), then each edge's floats
    (RaBitQ: 2; PQ4: its norm under l2). Figures saved before the index reported
    its group size get today's rule: half groups when a node has at most 16 edges."""
    block = layout.get("pq4_block_bytes") or 0
    if not fast_scan(library) or not block:
        return None
    m0 = 2 * M
    codes = layout.get("edge_group_codes") or (16 if m0 <= 16 else 32)
    groups = -(-m0 // codes)
    extras = 2 if "-rabitq" in library else 1 if space == "l2" else 0
    return groups, (block - extras * 4 * m0) // (codes // 2 * groups), codes


def lines_per_query(library: str, p: dict, layout: dict, dim: int, M: int) -> float | None:
    """Cache lines a query touches: each hop reads a link list; each distance a
    vector (float32), a code row (SQ8, whose final beam is re-ranked in float32),
    or, with PQ4, each expanded node reads its block and its own vector."""
    dc, hops = p.get("distance_computations"), p.get("hops")
    if not dc or hops is None:
        return None
    links = lines_of((2 * M + 1) * 4)
    vector = lines_of(dim * 4)
    if "-sq8" in library:
        return hops * links + dc * lines_of(layout.get("code_bytes") or dim) + p["ef"] * vector
    if fast_scan(library):  # one row per node: its links and vector, then its block
        node = layout.get("node_bytes") or (links * 64 + dim * 4)
        return hops * (lines_of(node) + lines_of(layout.get("pq4_block_bytes") or 0))
    return hops * links + dc * vector


def analyse(path: str, latency_ns: float | None = None) -> str:
    with open(path) as f:
        doc = json.load(f)
    res = doc["result"]
    dim, space, M = res["dim"], res["space"], res["M"]
    t_dist = seconds_per_distance(dim, space)
    t_call = call_overhead(dim)
    layouts = res.get("layouts", {})
    codes = {scan[2] for name, layout in layouts.items()
             if (scan := edge_groups(name, layout, space, M)) is not None}  # fmt: skip
    t_sub = {c: seconds_per_subspace(codes=c) for c in sorted(codes)}
    t_mem = (latency_ns if latency_ns is not None else _core.memory_latency()) * 1e-9
    lines = [
        f"### Limit analysis: {res['dataset']} ({res['n_base']} x {dim}, {space})",
        "",
        f"One in-cache float32 distance ({_core.simd_level()}): {t_dist * 1e9:.1f} ns; one "
        f"dependent DRAM access (pointer chase, huge pages): {t_mem * 1e9:.0f} ns; one search "
        f"call's fixed cost (binding, Python): {t_call * 1e6:.1f} us."
        + (
            "".join(
                f" Fast scan in cache: {t * 1e9:.2f} ns per subspace of a group of {c} codes."
                for c, t in t_sub.items()
            )
            if t_sub
            else ""
        ),
        "",
        "| library | ef | recall@10 | dist/query | hops/query | lines/query | kernel | "
        "latency chain | limit QPS | measured QPS | of limit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in res["points"]:
        dc, hops = p.get("distance_computations"), p.get("hops")
        if not dc or not p["library"].startswith("evidex") or not hops:
            continue
        layout = layouts.get(p["library"], {})
        kernel = dc * t_dist
        scan = edge_groups(p["library"], layout, space, M)
        if scan is not None:  # each expanded node scores its edges' codes
            kernel += hops * scan[0] * scan[1] * t_sub[scan[2]]
        chain = hops * t_mem
        limit = max(kernel, chain) + t_call
        n_lines = lines_per_query(p["library"], p, layout, dim, M)
        lines.append(
            f"| {p['library']} | {p['ef']} | {p['recall']:.4f} | {dc:.0f} | {hops:.0f} | "
            f"{'-' if n_lines is None else f'{n_lines:.0f}'} | {kernel * 1e6:.1f} us | "
            f"{chain * 1e6:.1f} us | {1 / limit:.0f} | {p['qps']:.0f} | "
            f"{limit * p['qps']:.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    paths = argv if argv is not None else sys.argv[1:]
    latency = _core.memory_latency() if paths else None  # once for every file
    for path in paths:
        print(analyse(path, latency))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
