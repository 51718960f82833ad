"""How much a cheap first pass could spare an exact filtered scan.

    python -m bench.first_pass --method sketch --dataset minilm --size 100000
    python -m bench.first_pass --method pq4 --dataset minilm --size 100000

For the filtered benchmark's own filters (bench.filtered: random ids, the query's
own k-means clusters, other clusters), over 200 queries per filter. It measures
ideas, not implementations (bench/RESULTS.md, "Measured, not built").

``sketch``: with P the top p principal directions of the base vectors (fitted on
20,000 of them) and r(v) the length of the rest of v - mu,
|s(q) - s(x)|^2 + (r(q) - r(x))^2 <= |q - x|^2, so an exact top-k scan could score
sketches and read in full only the allowed vectors whose bound is below the true
k-th distance: how many that is per query (mean, 90th percentile) for several p,
and the variance the sketch keeps. Exact by construction.

``pq4``: 4-bit product codes (16 k-means centroids per subspace of --sub-dim
dimensions, trained on 20,000 base vectors) rank the allowed vectors, and the
best `depth` of them are re-ranked exactly: the recall@k that keeps for several
depths. Approximate; its cost is a fast scan of the codes plus `depth` distances.
"""

from __future__ import annotations

import argparse

import numpy as np

from .datasets import DATASETS, load_dataset
from .filtered import filter_cases, kmeans


def _sketch(sample, dims):
    """(variance kept per p, fn(q, x, kth) -> reads per query per p)."""
    mu = sample.mean(0)
    eigenvalues, vectors = np.linalg.eigh(np.cov((sample - mu).T))
    eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]
    kept = {d: float(eigenvalues[:d].sum() / eigenvalues.sum()) for d in dims}

    def reads(q, x, exact, kth):
        out = {}
        for d in dims:
            basis = vectors[:, :d]
            xc, qc = x - mu, q - mu
            xs, qs = xc @ basis, qc @ basis
            xr = np.sqrt(np.maximum((xc**2).sum(1) - (xs**2).sum(1), 0))
            qr = np.sqrt(np.maximum((qc**2).sum(1) - (qs**2).sum(1), 0))
            bound = ((qs**2).sum(1)[:, None] + (xs**2).sum(1)[None] - 2 * qs @ xs.T).clip(0)
            bound += (qr[:, None] - xr[None]) ** 2
            # A lower bound, to rounding (float64 here).
            assert (bound <= exact + 1e-9 * (1 + exact.max())).all(), "not a lower bound"
            out[d] = (bound < kth).sum(1)
        return out

    return kept, reads


def _pq4(sample, sub_dim, rng):
    """fn(q, x) -> estimated squared distances from 4-bit codes of x."""
    dim = sample.shape[1]
    spans = [(s, min(s + sub_dim, dim)) for s in range(0, dim, sub_dim)]
    books = []
    for a, b in spans:
        part = sample[:, a:b]
        centres = part[rng.choice(len(part), 16, replace=False)].copy()
        for _ in range(15):
            nearest = ((part[:, None, :] - centres[None]) ** 2).sum(2).argmin(1)
            for j in range(16):
                if (nearest == j).any():
                    centres[j] = part[nearest == j].mean(0)
        books.append(centres)

    def estimate(q, x):
        est = np.zeros((len(q), len(x)))
        for (a, b), centres in zip(spans, books):
            codes = ((x[:, None, a:b] - centres[None]) ** 2).sum(2).argmin(1)
            table = ((q[:, None, a:b] - centres[None]) ** 2).sum(2)  # [nq, 16]
            est += table[:, codes]
        return est

    return estimate


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=("sketch", "pq4"), default="sketch")
    p.add_argument("--dataset", default="minilm", help=", ".join(sorted(DATASETS)))
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--dims", default="16,32,64,96", help="sketch: dimensions kept")
    p.add_argument("--sub-dim", type=int, default=4, help="pq4: dimensions per subspace")
    p.add_argument("--depths", default="20,50,100,200", help="pq4: vectors re-ranked")
    p.add_argument("--selectivity", default="0.01,0.001")
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args(argv)
    ds = load_dataset(args.dataset, args.size, 1000)
    cosine = ds.space == "cosine"
    base = ds.base / np.linalg.norm(ds.base, axis=1, keepdims=True) if cosine else ds.base
    cluster, centroids = kmeans(base, 200)
    rng = np.random.default_rng(0)
    sample = base[rng.choice(len(base), min(20_000, len(base)), replace=False)].astype(np.float64)
    out = {"dataset": ds.name, "method": args.method, "rows": []}
    if args.method == "sketch":
        dims = [int(d) for d in args.dims.split(",")]
        kept, reads = _sketch(sample, dims)
        out["variance_kept"] = kept
        shares = ", ".join(f"{d} dims {v:.3f}" for d, v in kept.items())
        print(f"{ds.name}: variance kept {shares}")
    else:
        depths = [int(d) for d in args.depths.split(",")]
        estimate = _pq4(sample, args.sub_dim, rng)
        print(f"{ds.name}: 4-bit codes of {args.sub_dim} dimensions per subspace")
    sels = [float(s) for s in args.selectivity.split(",")]
    for kind, sel, _, allowed, _, q, _ in filter_cases(
        base, ds.queries, cluster, centroids, sels, ds.space, args.k, 200
    ):
        q = (q / np.linalg.norm(q, axis=1, keepdims=True) if cosine else q).astype(np.float64)
        x = base[allowed].astype(np.float64)
        exact = ((q**2).sum(1)[:, None] + (x**2).sum(1)[None] - 2 * q @ x.T).clip(0)
        row = {"filter": kind, "selectivity": sel, "allowed": len(allowed)}
        if args.method == "sketch":
            kth = np.sort(exact, 1)[:, args.k - 1 : args.k]
            counts = reads(q, x, exact, kth)
            row["read"] = {d: float(c.mean()) for d, c in counts.items()}
            cells = [f"{d} dims: {c.mean():.0f} (p90 {np.percentile(c, 90):.0f})"
                     for d, c in counts.items()]  # fmt: skip
            what = "read in full"
        else:
            truth = np.argsort(exact, 1)[:, : args.k]
            rank = np.argsort(np.argsort(estimate(q, x), 1), 1)  # each vector's place by estimate
            place = np.take_along_axis(rank, truth, 1)
            row["recall"] = {d: float((place < d).mean()) for d in depths}
            cells = [f"depth {d}: {r:.3f}" for d, r in row["recall"].items()]
            what = f"recall@{args.k}"
        out["rows"].append(row)
        print(f"{kind:>15} {sel:<6} {len(allowed):>6} allowed, {what}: " + " | ".join(cells))
    return out


if __name__ == "__main__":
    main()
