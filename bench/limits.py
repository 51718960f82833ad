"""Limit analysis: how close does search get to what this machine allows?

    python -m bench.limits bench/results/glove-50-angular-200000.json

Per query, from the runner's counts (distance computations, hops = expanded
nodes) and the layout of the index, the cache lines a search touches, and three
bounds measured on this machine: the kernel bound (every distance at the speed
of one in-cache distance), the latency bound (every hop pays one dependent
DRAM access, measured by a pointer chase over huge-page storage as the graph
uses, and nothing else overlaps it) and the call cost. The limit is the larger
of the first two plus the call; "of limit" is limit time / measured time.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from evidex import _core


def seconds_per_distance(dim: int, space: str, level: str = "", rows: int = 4096) -> float:
    """Best-of-20 time of one distance over `rows` in-cache rows."""
    rng = np.random.default_rng(dim)
    data = rng.normal(size=(rows, dim)).astype(np.float32)
    q = rng.normal(size=dim).astype(np.float32)
    kernel_space = "l2" if space == "l2" else "ip"
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        _core.distances(q, data, kernel_space, level)
        best = min(best, time.perf_counter() - t0)
    return best / rows


def call_overhead(dim: int) -> float:
    """Seconds of one search call on a 1-element index: binding and Python cost."""
    import evidex

    index = evidex.HNSWIndex(dim)
    index.add(np.zeros((1, dim), np.float32))
    q = np.zeros(dim, np.float32)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(2000):
            index.search(q, 1, num_threads=1)
        best = min(best, (time.perf_counter() - t0) / 2000)
    return best


def lines_of(nbytes: int) -> int:
    return -(-int(nbytes) // 64)


def lines_per_query(library: str, p: dict, layout: dict, dim: int, M: int) -> float | None:
    """Cache lines a query touches: each hop reads a link list; each distance a
    vector (float32), a code row (SQ8, whose final beam is re-ranked in float32),
    or, with PQ4, each expanded node reads its block and its own vector."""
    dc, hops = p.get("distance_computations"), p.get("hops")
    if not dc or hops is None:
        return None
    links = lines_of((2 * M + 1) * 4)
    vector = lines_of(dim * 4)
    if library == "evidex-sq8":
        return hops * links + dc * lines_of(layout.get("code_bytes") or dim) + p["ef"] * vector
    if library == "evidex-pq4":
        return hops * (links + lines_of(layout.get("pq4_block_bytes") or 0) + vector)
    return hops * links + dc * vector


def analyse(path: str, latency_ns: float | None = None) -> str:
    with open(path) as f:
        doc = json.load(f)
    res = doc["result"]
    dim, space, M = res["dim"], res["space"], res["M"]
    t_dist = seconds_per_distance(dim, space)
    t_call = call_overhead(dim)
    t_mem = (latency_ns if latency_ns is not None else _core.memory_latency()) * 1e-9
    lines = [
        f"### Limit analysis: {res['dataset']} ({res['n_base']} x {dim}, {space})",
        "",
        f"One in-cache float32 distance ({_core.simd_level()}): {t_dist * 1e9:.1f} ns; one "
        f"dependent DRAM access (pointer chase, huge pages): {t_mem * 1e9:.0f} ns; one search "
        f"call's fixed cost (binding, Python): {t_call * 1e6:.1f} us.",
        "",
        "| library | ef | recall@10 | dist/query | hops/query | lines/query | kernel | "
        "latency chain | limit QPS | measured QPS | of limit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in res["points"]:
        dc, hops = p.get("distance_computations"), p.get("hops")
        if not dc or not p["library"].startswith("evidex") or not hops:
            continue
        layout = res.get("layouts", {}).get(p["library"], {})
        kernel = dc * t_dist
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
