"""What a refined graph's build costs: the add, then refine_graph, against hnswlib.

    python -m bench.build_cost --dataset glove --size 200000 --configs 200:100 100:100 100:64

Each config is ``ef_construction:refine_beam`` (beam 0: not refined) for an evidex
index of ``--quantization`` and ``--M``; hnswlib (M 16, ef_construction 200) is
built first in the same process, with the same threads. For each: the add's and
the refinement's seconds, their sum over hnswlib's build, and recall@10 at a few
search beams (what the build time buys).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import evidex

from . import save_figures
from .ann import Hnswlib, machine_info
from .datasets import DATASETS, load_dataset


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="glove", help=", ".join(sorted(DATASETS)))
    p.add_argument("--size", type=int, default=200_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--quantization", default="sq8")
    p.add_argument("--M", type=int, default=16)
    p.add_argument("--configs", nargs="+", default=["200:100", "100:100", "100:64"])
    p.add_argument("--efs", default="16,32,64,128")
    p.add_argument("--threads", type=int, default=0, help="build threads (0: all)")
    p.add_argument("--no-hnswlib", action="store_true", help="skip hnswlib (ratios then absent)")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    data = load_dataset(args.dataset, size=args.size, n_queries=args.queries)
    base, space = data.base, data.space
    threads = args.threads or os.cpu_count() or 1
    efs = [int(e) for e in args.efs.split(",")]
    out: dict = {"machine": machine_info(), "dataset": data.name, "rows": []}
    reference = None
    if not args.no_hnswlib:
        t = time.perf_counter()
        Hnswlib.build_index(base, space, 16, 200, threads)
        reference = out["hnswlib_build_s"] = time.perf_counter() - t
        print(f"hnswlib build {reference:.1f} s", flush=True)
    for config in args.configs:
        efc, beam = (int(x) for x in config.split(":"))
        t = time.perf_counter()
        index = evidex.HNSWIndex(
            base.shape[1],
            space,
            M=args.M,
            ef_construction=efc,
            max_elements=len(base),
            quantization=args.quantization,
        )
        index.add(base, np.arange(len(base)), num_threads=threads)
        added = time.perf_counter()
        if beam:
            index.refine_graph(ef=beam, num_threads=threads)
        done = time.perf_counter()
        recall = [data.recall(index.search(data.queries, 10, ef=ef, num_threads=threads)[0], 10)
                  for ef in efs]  # fmt: skip
        row = {"ef_construction": efc, "refine_beam": beam, "add_s": added - t,
               "refine_s": done - added, "recall": dict(zip(efs, recall))}  # fmt: skip
        if reference:
            row["build_over_hnswlib"] = (done - t) / reference
        out["rows"].append(row)
        ratio = f" = {row['build_over_hnswlib']:.2f}x hnswlib" if reference else ""
        print(f"ef_construction {efc}, beam {beam}: add {row['add_s']:.1f} s, refine "
              f"{row['refine_s']:.1f} s{ratio}; recall at ef {efs}: "
              f"{[round(r, 4) for r in recall]}", flush=True)  # fmt: skip
    return save_figures(out, args.out)


if __name__ == "__main__":
    main()
