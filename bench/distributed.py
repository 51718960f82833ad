"""ShardedIndex on a local Ray cluster against one HNSWIndex on the same data.

    python -m bench.distributed --size 50000 --rounds 3

GloVe-50 (angular), `--size` vectors, 1,000 held-out queries, M 16, ef 64. Configurations:
one `HNSWIndex` in this process, and `ShardedIndex` with 1, 2 and 4 shards and with 2
shards x 2 replicas (actors of 0.1 CPU on a cluster of this machine's cores). For each
batch size (queries per call) the QPS of each configuration, interleaved, best of
`--rounds`, and recall@10; the overhead is 1 - QPS(sharded) / QPS(single). Also the memory
per vector of float32 and sq8 shards at 768 dimensions, for the 100M-vector plan.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from bench.multimodal import cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", type=int, default=50_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", default="1,10,100,1000")
    p.add_argument("--ef", type=int, default=64)
    p.add_argument("--out", default="bench/results/distributed.json")
    args = p.parse_args(argv)

    import ray

    import evidex
    from evidex.datasets import glove
    from evidex.distributed import ShardedIndex

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ds = glove(args.size, args.queries)
    base, queries = ds.base, ds.queries
    kwargs = {"M": 16, "ef_construction": 200, "ef": args.ef}
    configs: dict[str, object] = {}
    build: dict[str, float] = {}
    t = time.perf_counter()
    single = evidex.HNSWIndex(base.shape[1], "cosine", max_elements=len(base), **kwargs)
    single.add(base)
    build["single"] = time.perf_counter() - t
    configs["single"] = single
    for name, shards, replicas in (("1 shard", 1, 1), ("2 shards", 2, 1), ("4 shards", 4, 1),
                                   ("2 shards x 2 replicas", 2, 2)):  # fmt: skip
        t = time.perf_counter()
        index = ShardedIndex(base.shape[1], "cosine", shards, replicas, **kwargs)
        index.add(base)
        build[name] = time.perf_counter() - t
        configs[name] = index
    batches = [int(b) for b in args.batches.split(",")]
    qps: dict[str, dict[int, float]] = {n: {} for n in configs}
    recall: dict[str, float] = {}
    for name, index in configs.items():
        found, _ = index.search(queries, k=10, ef=args.ef)
        recall[name] = ds.recall(found, 10)
    for b in batches:
        n = min(len(queries), max(b * 20, 200))
        for _ in range(args.rounds):
            for name, index in configs.items():  # interleaved
                t = time.perf_counter()
                for s in range(0, n, b):
                    index.search(queries[s : s + b], k=10, ef=args.ef)
                rate = n / (time.perf_counter() - t)
                qps[name][b] = max(qps[name].get(b, 0.0), rate)
    memory = {}
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((20_000, 768)).astype(np.float32)
    for quant in (None, "sq8"):
        ix = evidex.HNSWIndex(768, "cosine", M=16, max_elements=len(sample), quantization=quant)
        ix.add(sample)
        memory[quant or "float32"] = ix.stats()["memory_bytes"] / len(sample)
    result = {
        "machine": cpu(),
        "args": vars(args),
        "build_seconds": {k: round(v, 1) for k, v in build.items()},
        "recall@10": recall,
        "qps": qps,
        "overhead": {
            n: {b: round(1 - qps[n][b] / qps["single"][b], 3) for b in batches}
            for n in configs
            if n != "single"
        },
        "bytes_per_vector_768d": memory,
    }
    print(json.dumps(result, indent=2))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
