"""Batch search with queries interleaved on a thread: QPS by group size.

    python -m bench.interleave --dataset glove --size 200000
    python -m bench.interleave --dataset minilm --size 100000 --groups 1,2,4

Builds an ``"sq8"`` index, then searches the same batch with every group size
(``set_search_tuning(interleave=...)``; 1 searches the queries one by one) at
each beam, group sizes interleaved within a round, best of the rounds, on one
thread and on all cores. Every group size must return the same answers as 1.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import evidex

from . import save_figures
from .ann import machine_info
from .datasets import DATASETS, load_dataset


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = ", ".join(sorted(DATASETS))
    p.add_argument("--dataset", default="glove", help=f"{names}, hdf5:PATH or fvecs:BASE,QUERY")
    p.add_argument("--size", type=int, default=200_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--groups", default="1,2,3,4,8")
    p.add_argument("--efs", default="32,64,128")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--index", help="cache the built index at this path")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    data = load_dataset(args.dataset, size=args.size, n_queries=args.queries)
    if args.index and os.path.exists(args.index):
        index = evidex.HNSWIndex.load(args.index)
    else:
        index = evidex.HNSWIndex(data.base.shape[1], data.space, M=16, ef_construction=200,
                                 quantization="sq8")  # fmt: skip
        index.add(data.base, num_threads=os.cpu_count())
        if args.index:
            index.save(args.index)
    q = data.queries[: args.queries]
    groups = [int(g) for g in args.groups.split(",")]
    out = {"dataset": data.name, "n": len(index), "code_bytes": index.stats()["code_bytes"],
           "machine": machine_info(), "rows": []}  # fmt: skip
    print(f"{data.name}: {len(index)} x {q.shape[1]}, sq8 code {out['code_bytes']} bytes")
    for threads in (1, os.cpu_count() or 1):
        for ef in (int(e) for e in args.efs.split(",")):
            best = dict.fromkeys(groups, float("inf"))
            want = None
            for _ in range(args.rounds):
                for g in groups:
                    index.set_search_tuning(interleave=g)
                    t0 = time.perf_counter()
                    ids, dist = index.search(q, k=10, ef=ef, num_threads=threads)
                    best[g] = min(best[g], time.perf_counter() - t0)
                    if want is None:
                        want = (ids, dist)
                    elif not (np.array_equal(ids, want[0]) and np.array_equal(dist, want[1])):
                        raise SystemExit(f"group {g} changed the answers at ef {ef}")
            row = {"threads": threads, "ef": ef,
                   "qps": {g: q.shape[0] / best[g] for g in groups}}  # fmt: skip
            out["rows"].append(row)
            base = row["qps"][groups[0]]
            cells = [f"g{g} {v:,.0f} ({v / base:.2f}x)" for g, v in row["qps"].items()]
            print(f"  {threads} thread(s) ef {ef}: " + "  ".join(cells), flush=True)
    index.set_search_tuning()
    return save_figures(out, args.out)


if __name__ == "__main__":
    main()
