"""How much of an exact filtered scan a principal-component sketch could skip.

    python -m bench.sketch_bound --dataset minilm --size 100000
    python -m bench.sketch_bound --dataset video-sift --size 200000

With P the top p principal directions of the base vectors (fitted on 20,000 of
them) and r(v) the length of the rest of v - mu,
|s(q) - s(x)|^2 + (r(q) - r(x))^2 <= |q - x|^2, so an exact top-k scan could
score sketches and read in full only the allowed vectors whose bound is below
the true k-th distance. For the filtered benchmark's own filters (bench.filtered:
random ids, the query's own k-means clusters, other clusters), this prints how
many allowed vectors that is per query (mean, 90th percentile) for several p,
and the variance the sketch keeps. It measures the idea, not an implementation
(bench/RESULTS.md, "Measured, not built").
"""

from __future__ import annotations

import argparse

import numpy as np

from .datasets import DATASETS, load_dataset
from .filtered import filter_cases, kmeans


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="minilm", help=", ".join(sorted(DATASETS)))
    p.add_argument("--size", type=int, default=100_000)
    p.add_argument("--dims", default="16,32,64,96")
    p.add_argument("--selectivity", default="0.01,0.001")
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args(argv)
    ds = load_dataset(args.dataset, args.size, 1000)
    cosine = ds.space == "cosine"
    base = ds.base / np.linalg.norm(ds.base, axis=1, keepdims=True) if cosine else ds.base
    cluster, centroids = kmeans(base, 200)
    rng = np.random.default_rng(0)
    sample = base[rng.choice(len(base), min(20_000, len(base)), replace=False)].astype(np.float64)
    mu = sample.mean(0)
    eigenvalues, vectors = np.linalg.eigh(np.cov((sample - mu).T))
    eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]
    dims = [int(d) for d in args.dims.split(",")]
    kept = {d: float(eigenvalues[:d].sum() / eigenvalues.sum()) for d in dims}
    print(f"{ds.name}: variance kept " + ", ".join(f"{d} dims {v:.3f}" for d, v in kept.items()))
    out = {"dataset": ds.name, "variance_kept": kept, "rows": []}
    sels = [float(s) for s in args.selectivity.split(",")]
    for kind, sel, allowed, _, q, _ in filter_cases(
        base, ds.queries, cluster, centroids, sels, ds.space, args.k, 200
    ):
        q = q / np.linalg.norm(q, axis=1, keepdims=True) if cosine else q
        x = base[allowed].astype(np.float64)
        q = q.astype(np.float64)
        exact = ((q**2).sum(1)[:, None] + (x**2).sum(1)[None] - 2 * q @ x.T).clip(0)
        kth = np.sort(exact, 1)[:, args.k - 1 : args.k]
        cells, row = [], {}
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
            read = (bound < kth).sum(1)
            row[d] = float(read.mean())
            cells.append(f"{d} dims: {read.mean():.0f} (p90 {np.percentile(read, 90):.0f})")
        print(f"{kind:>15} {sel:<6} {len(allowed):>6} allowed, read in full: " + " | ".join(cells))
        out["rows"].append(
            {"filter": kind, "selectivity": sel, "allowed": len(allowed), "read": row}
        )
    return out


if __name__ == "__main__":
    main()
