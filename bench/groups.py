"""Half groups against full groups of edge codes, on the same fast-scan graph.

    python -m bench.groups FULL.evx HALF.evx --dataset video-sift --size 200000

A pq4 or rabitq graph of M <= 8 keeps its edge codes in half groups of 16 since
format version 6; files from before keep full groups of 32 (half padding) and
load as they were. FULL.evx is such a file: the same graph saved by evidex 9d79f74
or older (build it with ``num_threads=1`` in both versions, and the graphs are the
same). The two must answer every query the same; then each ef's queries are
searched one per call on one thread and in a batch on all cores, the two indexes
interleaved within a round, best of the rounds.
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
    p.add_argument("full", help="the graph with full groups (a file from before version 6)")
    p.add_argument("half", help="the same graph with half groups")
    names = ", ".join(sorted(DATASETS))
    p.add_argument("--dataset", default="video-sift", help=names)
    p.add_argument("--size", type=int, default=200_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--efs", default="10,16,24,48,96")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    data = load_dataset(args.dataset, size=args.size, n_queries=args.queries)
    q = data.queries
    indexes = {"full": evidex.HNSWIndex.load(args.full), "half": evidex.HNSWIndex.load(args.half)}
    stats = {name: ix.stats() for name, ix in indexes.items()}
    if stats["half"]["pq4_block_bytes"] >= stats["full"]["pq4_block_bytes"]:
        raise SystemExit("HALF's blocks are not smaller than FULL's: not a half-group pair")
    out: dict = {"machine": machine_info(), "dataset": data.name, "points": [],
                 "memory_bytes": {n: s["memory_bytes"] for n, s in stats.items()},
                 "block_bytes": {n: s["pq4_block_bytes"] for n, s in stats.items()}}  # fmt: skip
    for ef in [int(e) for e in args.efs.split(",")]:
        answers = {n: ix.search(q, k=10, ef=ef, num_threads=1) for n, ix in indexes.items()}
        if not np.array_equal(answers["full"][0], answers["half"][0]):
            raise SystemExit(f"ef {ef}: the two graphs answer differently: not the same graph")
        one = {n: 0.0 for n in indexes}
        batch = {n: 0.0 for n in indexes}
        for r in range(args.rounds):
            order = list(indexes) if r % 2 == 0 else list(reversed(indexes))
            for n in order:
                ix = indexes[n]
                t = time.perf_counter()
                for i in range(len(q)):
                    ix.search(q[i : i + 1], k=10, ef=ef, num_threads=1)
                one[n] = max(one[n], len(q) / (time.perf_counter() - t))
                t = time.perf_counter()
                ix.search(q, k=10, ef=ef, num_threads=0)
                batch[n] = max(batch[n], len(q) / (time.perf_counter() - t))
        point = {"ef": ef, "recall": data.recall(answers["half"][0], 10),
                 "qps": one, "batch_qps": batch}  # fmt: skip
        out["points"].append(point)
        print(f"ef {ef}: recall {point['recall']:.4f}; one query per call: full {one['full']:.0f}"
              f" half {one['half']:.0f} ({one['half'] / one['full']:.2f}x); batch: full "
              f"{batch['full']:.0f} half {batch['half']:.0f} "
              f"({batch['half'] / batch['full']:.2f}x)", flush=True)  # fmt: skip
    mb = out["memory_bytes"]
    print(f"memory: full {mb['full'] / 2**20:.0f} MB, half {mb['half'] / 2**20:.0f} MB "
          f"({mb['half'] / mb['full']:.2f}x)")  # fmt: skip
    return save_figures(out, args.out)


if __name__ == "__main__":
    main()
