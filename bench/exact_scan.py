"""The exact scan's 8-bit first pass against float32 only: time per query by
allowed-set size.

    python -m bench.exact_scan --dataset minilm --size 100000
    python -m bench.exact_scan --dataset glove --size 200000 --allowed 1000,10000

For each size, the allowed set is the vectors nearest one base vector (a
cluster, queries drawn from inside it, as the filtered benchmark's hardest
rows) or a random sample; the same batch of queries is scanned
(``filter_strategy="scan"``, one thread) with ``set_search_tuning(scan_bits=32)``
and ``scan_bits=8`` in turn, interleaved within a round, best of the rounds.
Both must return the same ids (the count of differing ones, ties broken
differently by float32 rounding, is reported).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import evidex

from . import save_figures
from .ann import machine_info
from .datasets import DATASETS, load_dataset


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = ", ".join(sorted(DATASETS))
    p.add_argument("--dataset", default="minilm", help=f"{names}, hdf5:PATH or fvecs:BASE,QUERY")
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=200, help="queries per call")
    p.add_argument("--allowed", default="1000,2000,4000,10000,30000")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    data = load_dataset(args.dataset, size=args.size, n_queries=10)
    base = data.base
    # The scan reads the stored vectors only: a sparse graph builds fast.
    index = evidex.HNSWIndex(base.shape[1], data.space, M=4, ef_construction=10)
    index.add(base, num_threads=2)
    rng = np.random.default_rng(0)
    centre = base[rng.integers(len(base))].astype(np.float64)
    if data.space == "l2":
        order = np.argsort(((base - centre) ** 2).sum(1))
    else:
        order = np.argsort(-(base @ centre))
    out = {"dataset": data.name, "n": len(index), "dim": base.shape[1], "k": args.k,
           "queries": args.queries, "machine": machine_info(), "rows": []}  # fmt: skip
    print(f"{data.name}: {len(index)} x {base.shape[1]} ({data.space}), {args.queries} queries "
          f"per call, k={args.k}, 1 thread")  # fmt: skip
    print("allowed      filter   float32 us/q   8-bit us/q   speed-up   ids differing")
    for size in (int(s) for s in args.allowed.split(",")):
        for kind in ("cluster", "random"):
            allowed = np.sort(
                order[:size] if kind == "cluster" else rng.choice(len(base), size, replace=False)
            )
            picks = allowed[rng.integers(0, size, args.queries)]
            noise = rng.standard_normal((args.queries, base.shape[1])).astype(np.float32)
            q = base[picks] + 0.02 * noise * np.abs(base[picks]).mean()
            best = {32: float("inf"), 8: float("inf")}
            answers = {}
            for _ in range(args.rounds):
                for bits in (32, 8):
                    index.set_search_tuning(scan_bits=bits)
                    t0 = time.perf_counter()
                    answers[bits] = index.search(q, args.k, filter=allowed, filter_strategy="scan",
                                                 num_threads=1)  # fmt: skip
                    best[bits] = min(best[bits], time.perf_counter() - t0)
            index.set_search_tuning()
            differing = int((answers[8][0] != answers[32][0]).sum())
            row = {"allowed": size, "filter": kind, "float32_us": best[32] / args.queries * 1e6,
                   "int8_us": best[8] / args.queries * 1e6, "speedup": best[32] / best[8],
                   "ids_differing": differing}  # fmt: skip
            out["rows"].append(row)
            print(f"{size:>7,}  {kind:>9}  {row['float32_us']:>12.2f}  {row['int8_us']:>11.2f}  "
                  f"{row['speedup']:>8.2f}x  {differing:>6}")  # fmt: skip
    return save_figures(out, args.out)


if __name__ == "__main__":
    main()
