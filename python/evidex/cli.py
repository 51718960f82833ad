"""Command line: ``evidex demo`` builds an index on real vectors and reports recall and QPS."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def demo(args: argparse.Namespace) -> int:
    from . import HNSWIndex, simd_level
    from .datasets import glove

    t0 = time.perf_counter()
    data = glove(n_base=args.n, n_queries=args.queries)
    print(
        f"GloVe: {data.base.shape[0]} base vectors, {data.queries.shape[0]} held-out queries, "
        f"dim {data.base.shape[1]}, exact ground truth in {time.perf_counter() - t0:.1f} s"
    )
    index = HNSWIndex(
        data.base.shape[1],
        "cosine",
        M=args.M,
        ef_construction=args.ef_construction,
        max_elements=data.base.shape[0],
        quantization=args.quantization,
    )
    t0 = time.perf_counter()
    index.add(data.base, np.arange(data.base.shape[0]), num_threads=args.threads)
    build = time.perf_counter() - t0
    print(
        f"built HNSW (M={args.M}, ef_construction={args.ef_construction}, "
        f"quantization={args.quantization}) in {build:.1f} s "
        f"with {args.threads or 'all'} threads; SIMD: {simd_level()}; "
        f"memory {index.stats()['memory_bytes'] / 2**20:.0f} MiB"
    )
    print(f"{'ef':>5} {'recall@10':>10} {'QPS (1 thread, 1 query/call)':>30} {'batch QPS':>10}")
    for ef in args.ef:
        ids = np.empty((data.queries.shape[0], 10), dtype=np.int64)
        t0 = time.perf_counter()
        for i, q in enumerate(data.queries):
            ids[i] = index.search(q, k=10, ef=ef, num_threads=1)[0]
        single = data.queries.shape[0] / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        index.search(data.queries, k=10, ef=ef)
        batch = data.queries.shape[0] / (time.perf_counter() - t0)
        print(f"{ef:>5} {data.recall(ids):>10.4f} {single:>30.0f} {batch:>10.0f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evidex", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="build an index over GloVe and print recall@10 and QPS")
    p.add_argument("--n", type=int, default=200_000, help="base vectors")
    p.add_argument("--queries", type=int, default=1_000)
    p.add_argument("--M", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--threads", type=int, default=0, help="build threads (0: all cores)")
    p.add_argument("--ef", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument(
        "--quantization",
        choices=["sq8", "pq4"],
        default=None,
        help="sq8: traverse on 8-bit codes, re-rank in float32; pq4: steer by 4-bit "
        "fast-scan codes of each node's edges (experimental)",
    )
    p.set_defaults(func=demo)
    from .crinn.cli import add_parsers

    add_parsers(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
