"""Does a locality order of the graph's slots speed up search?

    python -m bench.reorder --dataset glove --size 200000 --order bfs
    python -m bench.reorder --dataset glove --size 200000 --order kmeans --clusters 2000

Builds the same vectors twice: in the data set's order (A), and in a locality
order (B): breadth-first from the entry point over A's level-0 graph (read from
A saved in hnswlib's format), or grouped by k-means cluster. Slots follow the
insertion order, so B's neighbours sit closer in memory. Then single-query QPS
and recall at the same beams, A and B interleaved, best of the rounds.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time

import numpy as np

import evidex

from .datasets import DATASETS, load_dataset


def level0_rows(index: evidex.HNSWIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(labels, header words, links [n, M0]) of every slot, and the entry slot, read
    from the index saved in hnswlib's format. A header word holds the link count in
    its low 16 bits and the flags (bit 16: deleted) above."""
    fd, path = tempfile.mkstemp()
    os.close(fd)
    try:
        index.save(path, format="hnswlib")
        with open(path, "rb") as f:
            raw = f.read()
    finally:
        os.unlink(path)
    _, _, count, size_per, label_off, _ = struct.unpack_from("<6Q", raw, 0)
    _, enter = struct.unpack_from("<iI", raw, 48)
    _, max_m0 = struct.unpack_from("<2Q", raw, 56)
    header = 8 * 6 + 8 + 8 * 3 + 8 + 8
    rows = np.frombuffer(raw, np.uint8, count * size_per, header).reshape(count, size_per)
    links = rows[:, : 4 * (max_m0 + 1)].copy().view(np.uint32)
    labels = rows[:, label_off : label_off + 8].copy().view(np.uint64).ravel()
    return labels, links[:, 0], links[:, 1:], int(enter)


def level0_graph(index: evidex.HNSWIndex) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(labels, link counts, links [n, M0]) of every slot, and the entry slot."""
    labels, heads, links, entry = level0_rows(index)
    return labels, heads & 0xFFFF, links, entry


def bfs_order(counts: np.ndarray, links: np.ndarray, entry: int) -> np.ndarray:
    """Slots in breadth-first order from the entry; unreached ones after."""
    n = counts.shape[0]
    seen = np.zeros(n, bool)
    order = [entry]
    seen[entry] = True
    head = 0
    while head < len(order):
        node = order[head]
        head += 1
        for nb in links[node, : counts[node]]:
            if not seen[nb]:
                seen[nb] = True
                order.append(int(nb))
    return np.concatenate([np.array(order), np.flatnonzero(~seen)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reorder", description=__doc__)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="glove")
    p.add_argument("--size", type=int, default=200000)
    p.add_argument("--order", choices=["bfs", "kmeans"], default="bfs")
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--quantization", default="sq8", choices=["none", "sq8", "pq4", "rabitq"])
    p.add_argument("--ef", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    data = load_dataset(args.dataset, size=args.size, n_queries=1000)
    base, queries, space = data.base, data.queries, data.space
    truth = evidex.exact_knn(base, queries, 10, space)[0]

    def build(order: np.ndarray) -> tuple[evidex.HNSWIndex, float]:
        index = evidex.HNSWIndex(
            base.shape[1], space, M=16, ef_construction=200, max_elements=len(base),
            quantization=None if args.quantization == "none" else args.quantization,
        )  # fmt: skip
        t0 = time.perf_counter()
        index.add(base[order], order, num_threads=2)
        return index, time.perf_counter() - t0

    a, build_a = build(np.arange(len(base)))
    if args.order == "bfs":
        labels, counts, links, entry = level0_graph(a)
        order = labels[bfs_order(counts, links, entry)].astype(np.int64)
    else:
        from .filtered import kmeans

        unit = base / np.linalg.norm(base, axis=1, keepdims=True) if space == "cosine" else base
        order = np.argsort(kmeans(unit, args.clusters)[0], kind="stable")
    b, build_b = build(order)
    print(f"{data.name} {len(base)} {args.quantization}, order {args.order}: "
          f"build A {build_a:.1f} s, B {build_b:.1f} s", flush=True)  # fmt: skip

    def run(index: evidex.HNSWIndex, ef: int) -> tuple[float, float]:
        index.ef = ef
        found = np.empty((len(queries), 10), np.int64)
        t0 = time.perf_counter()
        for i, q in enumerate(queries):
            found[i] = index.search(q, 10, num_threads=1)[0]
        qps = len(queries) / (time.perf_counter() - t0)
        return qps, float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))

    best: dict[tuple[str, int], tuple[float, float]] = {}
    for _ in range(args.rounds):
        for ef in args.ef:
            for name, index in (("A", a), ("B", b)):
                qps, rec = run(index, ef)
                best[name, ef] = (max(best.get((name, ef), (0.0, 0.0))[0], qps), rec)
    for ef in args.ef:
        (qa, ra), (qb, rb) = best["A", ef], best["B", ef]
        print(f"ef {ef:4d}: A {qa:8.0f} QPS recall {ra:.4f} | B {qb:8.0f} QPS recall {rb:.4f}"
              f" | B/A {qb / qa:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
