"""Does the filtered-search planner pick the fastest method? A forced comparison.

    python -m bench.planner --dataset glove --size 50000

For each allowed fraction and beam width, one batch of queries (one thread) runs with
each method forced (exact scan, filtered beam, two hops) and with the planner
choosing; prints the measured microseconds per query of each, the planner's predictions
and its choice. Best of --repeats rounds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import evidex

from .datasets import load_dataset

METHODS = ("scan", "filtered", "two_hop", "auto")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.planner", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--dataset", default="glove")
    p.add_argument("--size", type=int, default=50000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    data = load_dataset(args.dataset, size=args.size, n_queries=args.queries)
    x, q = data.base, data.queries
    index = evidex.HNSWIndex(x.shape[1], data.space, M=16, ef_construction=200)
    index.add(x)
    rng = np.random.default_rng(0)
    agree = total = 0
    for fraction in (0.5, 0.2, 0.1, 0.03, 0.01):
        allowed = np.sort(rng.choice(len(x), int(fraction * len(x)), replace=False))
        for ef in (32, 128):
            measured = {}
            for method in METHODS:
                best = float("inf")
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    index.search(q, 10, ef=ef, filter=allowed, num_threads=1,
                                 filter_strategy=method)  # fmt: skip
                    best = min(best, time.perf_counter() - t0)
                measured[method] = best / len(q) * 1e6
            plan = index.last_plan()
            fastest = min(("scan", "filtered", "two_hop"), key=measured.get)
            agree += plan["strategy"] == fastest
            total += 1
            predicted = {
                k: None if v is None else round(v / 1000)
                for k, v in plan["predicted_ns_per_query"].items()
            }
            times = " ".join(f"{m} {measured[m]:.0f}" for m in METHODS)
            print(f"allowed {fraction:<5} ef {ef:<4} measured us/query {times} | predicted "
                  f"{predicted} | chose {plan['strategy']}, fastest {fastest}")  # fmt: skip
    print(f"the planner chose the fastest method in {agree} of {total} cases")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
