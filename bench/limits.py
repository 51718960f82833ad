"""Limit analysis: how close does search get to its distance-kernel bound?

    python -m bench.limits bench/results/glove-50-angular-200000.json

The kernel-bound ceiling of a point is 1 / (distance computations per query x time
of one in-cache distance): the QPS a search would reach if all it did was compute
distances on data already in L1. The gap to the measured QPS is what memory
latency (random node accesses), the beam bookkeeping, the visited set and the
Python call cost take.
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


def analyse(path: str) -> str:
    with open(path) as f:
        doc = json.load(f)
    res = doc["result"]
    dim, space = res["dim"], res["space"]
    t_dist = seconds_per_distance(dim, space)
    t_call = call_overhead(dim)
    lines = [
        f"### Limit analysis: {res['dataset']} ({res['n_base']} x {dim}, {space})",
        "",
        f"One in-cache distance ({_core.simd_level()}): {t_dist * 1e9:.1f} ns; one search "
        f"call's fixed cost (binding, Python): {t_call * 1e6:.1f} us.",
        "",
        "| library | ef | recall@10 | dist/query | kernel-bound QPS | measured QPS | of bound |"
        " kernel | call | rest (memory, beam) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in res["points"]:
        dc = p.get("distance_computations")
        if not dc or not p["library"].startswith("evidex"):
            continue
        per_query = 1.0 / p["qps"]
        kernel = dc * t_dist
        rest = max(0.0, per_query - kernel - t_call)
        lines.append(
            f"| {p['library']} | {p['ef']} | {p['recall']:.4f} | {dc:.0f} | {1 / kernel:.0f} | "
            f"{p['qps']:.0f} | {kernel / per_query:.0%} | {kernel * 1e6:.1f} us | "
            f"{t_call * 1e6:.1f} us | {rest * 1e6:.1f} us |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    for path in argv if argv is not None else sys.argv[1:]:
        print(analyse(path))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
