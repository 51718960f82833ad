"""Writes the legacy fast-scan files the persistence tests load: indexes with at
most 16 level-0 links whose blocks hold a full group of 32 edge codes, as evidex
wrote them before format version 6 (RaBitQ: version 5; PQ4: version 3).

Run once with an evidex from before version 6 (commit 9d79f74 or older), from the
repository root: ``python tests/data/make_legacy_fast_scan.py``. Each file comes
with the queries' expected neighbours (ids and distances) as that evidex found them,
at a narrow beam (where the search follows the edge codes' estimates) and a wide one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import evidex

HERE = Path(__file__).parent


def main() -> None:
    rng = np.random.default_rng(2026)
    data = rng.normal(size=(150, 24)).astype(np.float32)
    queries = rng.normal(size=(6, 24)).astype(np.float32)
    np.save(HERE / "legacy_fast_scan_data.npy", data)
    answers = {}
    for quant, space, M in (("rabitq", "l2", 8), ("pq4", "l2", 4), ("pq4", "cosine", 8)):
        index = evidex.HNSWIndex(24, space=space, M=M, ef_construction=40, quantization=quant)
        index.add(data, num_threads=1)  # one thread: today's build makes the same graph
        name = f"legacy_{quant}_{space}_M{M}.evx"
        index.save(HERE / name)
        answers[name] = {}
        for ef in (8, 60):  # a narrow beam follows the edge codes' estimates
            ids, dist = index.search(queries, k=8, ef=ef)
            answers[name][str(ef)] = {"ids": ids.tolist(), "distances": dist.tolist()}
    (HERE / "legacy_fast_scan.json").write_text(
        json.dumps({"queries": queries.tolist(), "answers": answers}) + "\n"
    )


if __name__ == "__main__":
    main()
