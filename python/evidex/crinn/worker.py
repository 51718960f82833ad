"""The sandboxed side of a CRINN measurement (started by evidex.crinn.sandbox in the
jail). It is trusted only until the candidate loads; everything it says after
that may be forged, so it reports results, never judgements: the loop times
each request itself and checks every answer against its own ground truth.

Protocol (frames of evidex.crinn.channel, stdin to stdout):

1. ``setup`` {slot, libraries, index | base, space, M, ef_construction,
   build_threads, seccomp[, layout][, tuning]}: load the graph (or the base
   vectors), install the seccomp filter, load the kernel libraries, build the
   graph for the construction slot (in `layout`, a ``Layout``'s build settings,
   when given), apply the search `tuning`; answer ``ready`` {n, dim}.
2. ``search`` {k, ef, nq[, filter_step]} + float32 queries: answer ``result``
   {dist_count} + int64 ids + float32 distances. With filter_step, a filtered search
   (strategy "filtered": the filtered search slot) over the ids divisible by it.
3. ``export``: answer ``graph`` + the graph's file image (to build the search
   slot's graph with a construction winner without loading it in the loop).
End of input ends the worker.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    from evidex.crinn.channel import ChannelError, read_frame, write_frame

    stage = "starting"
    try:
        setup, _ = read_frame(0, max_payload=0)
        stage = "loading"
        import numpy as np

        from evidex import _core, kernels
        from evidex.crinn import seccomp
        from evidex.crinn.layout import Layout
        from evidex.index import HNSWIndex

        construction = setup["slot"] == "construction"
        threads = max(1, int(setup.get("build_threads", 1)))
        if construction:
            base = np.load(setup["base"])
            index = None
        else:
            index = HNSWIndex.load(setup["index"])
        # The filter goes on before any candidate code runs (dlopen runs its
        # constructors). Threads only where a construction kernel builds.
        sandboxed = bool(setup.get("seccomp", True))
        if sandboxed:
            profile = "kernel-threads" if construction and threads > 1 else "kernel"
            seccomp.install(profile, self_pid=os.getpid())
        stage = "loading the kernel library"
        kernel_set = _core.builtin_kernel_set()
        for library in setup.get("libraries", []):
            kernel_set = kernels.load_library(library, kernel_set)
        if construction:
            stage = "building the index"
            # The built-in layout (no "layout") is a plain float32 graph.
            index = Layout(**setup.get("layout", {})).build(
                base, setup["space"], M=int(setup["M"]),
                ef_construction=int(setup["ef_construction"]), num_threads=threads,
                kernels=kernel_set,
            )  # fmt: skip
            if sandboxed and threads > 1:
                seccomp.install("kernel", self_pid=os.getpid())  # no more threads
        else:
            index._core.set_kernel_set(kernel_set)
        if setup.get("tuning"):
            index.set_search_tuning(**{k: int(v) for k, v in setup["tuning"].items()})
        write_frame(1, {"op": "ready", "n": len(index), "dim": index.dim})
        stage = "searching"
        while True:
            try:
                request, payload = read_frame(0, max_payload=1 << 31)
            except ChannelError:
                return 0  # the loop closed the channel
            op = request.get("op")
            if op == "search":
                k, ef, nq = int(request["k"]), int(request["ef"]), int(request["nq"])
                queries = np.frombuffer(payload, np.float32).reshape(nq, index.dim)
                step = int(request.get("filter_step") or 0)
                if step > 0:
                    allowed = np.arange(0, len(index), step)
                    ids, dists = index.search(
                        queries, k, ef=ef, num_threads=1, filter=allowed,
                        filter_strategy="filtered",
                    )  # fmt: skip
                else:
                    ids, dists = index.search(queries, k, ef=ef, num_threads=1)
                computed = index._core.stats()["last_search_distance_computations"]
                write_frame(
                    1,
                    {"op": "result", "dist_count": int(computed)},
                    np.ascontiguousarray(ids, np.int64).tobytes()
                    + np.ascontiguousarray(dists, np.float32).tobytes(),
                )
            elif op == "export":
                write_frame(1, {"op": "graph"}, index.to_bytes())
            else:
                write_frame(1, {"op": "error", "stage": stage})
                return 1
    except Exception:  # noqa: BLE001 - reported as a stage; the loop words the reason
        try:
            write_frame(1, {"op": "error", "stage": stage})
        except OSError:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
