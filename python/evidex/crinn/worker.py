"""The sandboxed benchmark of one candidate (run by evidex.crinn.sandbox).

Reads a JSON spec on stdin, prints one JSON line: the QPS-recall curve, or
``{"error": ...}`` for a wrong answer. Everything it needs is read before the
seccomp filter goes on; the candidate library is loaded after.
"""

from __future__ import annotations

import json
import sys
import time


def stage(name: str) -> None:
    print(f"evidex-worker-stage: {name}", file=sys.stderr, flush=True)


def main() -> int:
    spec = json.loads(sys.stdin.read())
    stage("starting")
    import numpy as np

    from evidex import _core, kernels
    from evidex.crinn.sandbox import install_seccomp
    from evidex.index import HNSWIndex
    from evidex.rewards.ann import recall_at_k

    queries = np.load(spec["queries"])
    truth = np.load(spec["ground_truth"])
    k = int(spec["k"])
    if spec["slot"] == "construction":
        base = np.load(spec["base"])
        index = None
    else:
        index = HNSWIndex.load(spec["index"])
        base = None
    sandboxed = install_seccomp() if spec.get("seccomp", True) else False
    stage("loading the kernel library")

    def load(libraries: list[str]) -> object:
        kernel_set = _core.builtin_kernel_set()
        for library in libraries:
            kernel_set = kernels.load_library(library, kernel_set)
        return kernel_set

    kernel_set = load(spec.get("libraries", []))
    # The baseline measured in the same process, interleaved with the candidate
    # (A B A B per ef): machine drift then cancels out of their ratio.
    compare = spec.get("compare_libraries")
    baseline_set = load(compare) if compare is not None else None
    sets = {"curve": kernel_set}
    if baseline_set is not None:
        sets["baseline_curve"] = baseline_set
    # Construction: each kernel set builds its own graph, searched with the
    # built-in search; otherwise one graph, searched through each set in turn.
    graphs: dict[str, HNSWIndex] = {}
    build_seconds: dict[str, float] = {}
    for name, ks in sets.items():
        if index is None:
            stage("building the index")
            graph = HNSWIndex(
                base.shape[1], spec["space"], M=spec["M"],
                ef_construction=spec["ef_construction"], max_elements=len(base),
            )  # fmt: skip
            graph._core.set_kernel_set(ks)
            t0 = time.perf_counter()
            graph.add(base, num_threads=int(spec.get("build_threads", 1)))
            build_seconds[name] = time.perf_counter() - t0
            graphs[name] = graph
        else:
            graphs[name] = index
    n = len(graphs["curve"])
    stage("searching")
    curves: dict[str, list[dict[str, float]]] = {name: [] for name in sets}
    for ef in spec["efs"]:
        best = dict.fromkeys(sets, float("inf"))
        found: dict[str, tuple[np.ndarray, int]] = {}
        for _ in range(int(spec.get("repeats", 1))):
            for name, ks in sets.items():
                graph = graphs[name]
                graph._core.set_kernel_set(ks)
                t0 = time.perf_counter()
                ids, _ = graph.search(queries, k, ef=ef, num_threads=1)
                best[name] = min(best[name], time.perf_counter() - t0)
                found[name] = (ids, graph.stats()["last_search_distance_computations"])
        for name in sets:
            ids, computed = found[name]
            if (ids < 0).any():
                print(json.dumps({"error": f"wrong answers: fewer than k results at ef={ef}"}))
                return 0
            if (ids >= n).any():
                print(json.dumps({"error": f"ids out of range at ef={ef}"}))
                return 0
            rows = np.sort(ids, axis=1)
            if (rows[:, 1:] == rows[:, :-1]).any():
                print(json.dumps({"error": f"duplicate ids in a result row at ef={ef}"}))
                return 0
            curves[name].append(
                {
                    "ef": ef,
                    "recall": recall_at_k(ids, truth, k),
                    "qps": len(queries) / best[name],
                    "dist_per_query": computed / len(queries),
                }
            )
    result = {**curves, "build_seconds": build_seconds, "seccomp": sandboxed}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
