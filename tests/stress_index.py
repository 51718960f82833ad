"""An 8-thread stress workload over one HNSWIndex: every mutating and reading call at
once (add with and without ids, updates, delete, undelete, every kind of filter,
get, stats, resize, refine_graph, save, to_bytes, pickle, ef, a filter that calls back into the
index), with invariants checked as it runs and at the end:

- every saved file and every byte image loads, and re-serialises to exactly the
  same bytes (it is one consistent snapshot); counts match flags in it;
- no search returns a filtered-out id, an id deleted before the search started
  (by the searching thread, or a tombstone), or an id never added;
- automatic ids are never handed out twice;
- at the end, the index holds exactly what the threads' own models say: the live
  and deleted ids, and each id's last vector.

Used by test_stress.py: briefly in CI, for ten minutes under the ``slow`` marker.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import evidex
from evidex import F

BASE = 2000  # ids [0, BASE) are never deleted
TOMBSTONES = range(BASE, BASE + 200)  # deleted before the threads start, never again
AUTO_FROM = 10**9  # automatic ids start above every explicit range
NEVER = range(5 * 10**8, 5 * 10**8 + 50)  # never added


SPAN = 1_000_000  # explicit ids of thread t: [SPAN * (t + 1), SPAN * (t + 2))


def thread_range(t: int) -> range:
    return range(SPAN * (t + 1), SPAN * (t + 2))


@dataclass
class Report:
    operations: int = 0
    thread_seconds: float = 0.0
    saves: int = 0
    images: int = 0
    searches: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    auto_ids: int = 0


class _Thread:
    def __init__(self, t: int, index: evidex.HNSWIndex, dim: int, tmp: Path, seed: int) -> None:
        self.t, self.index, self.dim, self.tmp = t, index, dim, tmp
        self.rng = np.random.default_rng(seed + t)
        self.ids = iter(thread_range(t))
        self.vectors: dict[int, np.ndarray] = {}  # own ids -> last vector
        self.deleted: set[int] = set()
        self.auto: list[int] = []
        self.counts: dict[str, int] = {}

    def vec(self, n: int) -> np.ndarray:
        return self.rng.standard_normal((n, self.dim)).astype(np.float32)

    def live(self) -> list[int]:
        return [i for i in self.vectors if i not in self.deleted]

    # ---------------------------------------------------------------- checks
    def check_results(self, ids: np.ndarray, allowed: set[int] | None = None) -> None:
        found = {int(i) for i in np.asarray(ids).ravel() if i >= 0}
        assert not found & set(TOMBSTONES), "a tombstone came back"
        assert not found & set(NEVER), "a never-added id came back"
        assert not found & self.deleted, "an id this thread deleted came back"
        for i in found:
            assert i < BASE + len(TOMBSTONES) or SPAN <= i < 9 * SPAN or i >= AUTO_FROM - 1, i
        if allowed is not None:
            assert found <= allowed, "a filtered-out id came back"

    def check_image(self, data: bytes) -> None:
        copy = evidex.HNSWIndex.from_bytes(data)
        assert copy.to_bytes() == data, "a snapshot does not re-serialise to itself"
        s = copy.stats()
        every = copy.ids(include_deleted=True)
        live = copy.ids()
        assert s["deleted"] == len(every) - len(live) and s["count"] == len(live)
        assert set(range(BASE)) <= set(live.tolist())
        assert not set(TOMBSTONES) & set(live.tolist())

    # ---------------------------------------------------------------- ops
    def step(self) -> None:
        index, rng = self.index, self.rng
        r = rng.random()
        q = self.vec(int(rng.integers(1, 9)))
        if r < 0.25:
            ids, dist = index.search(
                q, k=int(rng.integers(1, 11)), num_threads=int(rng.integers(0, 3))
            )
            assert (ids >= 0).all(), "padding without a filter"
            assert np.isfinite(dist).all()
            self.check_results(ids)
            self._count("search")
        elif r < 0.31:
            # Stored attributes: explicit adds carry t (the thread) and m (id % 7).
            m = int(rng.integers(0, 7))
            strategy = ("auto", "scan", "filtered", "two_hop")[int(rng.integers(0, 4))]
            ids, _ = index.search(
                q, k=5, filter=(F("t") == self.t) & (F("m") == m), filter_strategy=strategy
            )
            self.check_results(ids)
            mine = thread_range(self.t)
            assert all(int(i) in mine and int(i) % 7 == m for i in ids.ravel() if i >= 0)
            radius = 2.0 * self.dim if index.space == "l2" else 1.0
            lims, hits, dist = index.search_range(
                q[:2], radius, max_results=50, filter=F("t") == self.t
            )
            assert lims[-1] == hits.size and (dist < radius).all()
            self.check_results(hits)
            assert all(int(i) in mine for i in hits)
            self._count("attribute filter / range")
        elif r < 0.35:
            own = self.live()
            allow = (
                set(rng.choice(own, size=min(len(own), 20), replace=False).tolist())
                if own
                else set()
            )
            allow |= set(rng.integers(0, BASE, 30).tolist()) | set(TOMBSTONES[:5]) | set(NEVER[:5])
            kind = rng.integers(0, 2)
            if kind == 0:
                ids, _ = index.search(
                    q, k=5, filter=sorted(allow), num_threads=int(rng.integers(0, 3))
                )
            else:
                mask = np.zeros(max(allow) + 1, bool)
                mask[sorted(allow)] = True
                ids, _ = index.search(q, k=5, filter=mask)
            self.check_results(ids, allowed=allow)
            self._count("filtered search")
        elif r < 0.37:
            ids, _ = index.search(q[:1], k=5, filter=lambda i: i % 2 == 0)
            assert all(i % 2 == 0 for i in ids.ravel() if i >= 0)
            self.check_results(ids)
            self._count("callable filter")
        elif r < 0.38:

            def hostile_filter(i: int) -> bool:
                index.add(self.vec(1))  # calls back into the index: must raise
                return True

            try:
                index.search(q[:1], k=1, filter=hostile_filter)
                raise AssertionError("a re-entrant call did not raise")
            except RuntimeError as e:
                assert "must not call" in str(e), e
            self._count("re-entrant filter")
        elif r < 0.52:
            n = int(rng.integers(1, 40))
            new = [next(self.ids) for _ in range(n)]
            v = self.vec(n)
            index.add(
                v,
                new,
                num_threads=int(rng.integers(0, 3)),
                attributes={"t": self.t, "m": np.array(new) % 7},
            )
            for i, row in zip(new, v):
                self.vectors[i] = row
            self._count("add")
        elif r < 0.56:
            n = int(rng.integers(1, 20))
            got = index.add(self.vec(n))
            assert len(set(got.tolist())) == n and min(got) >= AUTO_FROM
            self.auto += got.tolist()
            self._count("add (automatic ids)")
        elif r < 0.60 and self.vectors:
            i = int(rng.choice(list(self.vectors)))
            v = self.vec(1)
            index.add(v, [i])  # an update (also undeletes)
            self.vectors[i] = v[0]
            self.deleted.discard(i)
            self._count("update")
        elif r < 0.68:
            own = self.live()
            if own:
                pick = rng.choice(own, size=min(len(own), int(rng.integers(1, 6))), replace=False)
                index.delete(pick)
                self.deleted |= set(pick.tolist())
                self._count("delete")
        elif r < 0.72:
            if self.deleted:
                pick = rng.choice(
                    sorted(self.deleted), size=min(len(self.deleted), 3), replace=False
                )
                index.undelete(pick)
                self.deleted -= set(pick.tolist())
                self._count("undelete")
        elif r < 0.76:
            own = list(self.vectors)
            if own:
                pick = rng.choice(own, size=min(len(own), 5), replace=False)
                got = index.get_vectors(pick)
                want = np.stack([self.vectors[int(i)] for i in pick])
                if index.space == "cosine":
                    want = want / np.linalg.norm(want, axis=1, keepdims=True)
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            self._count("get")
        elif r < 0.80:
            s = index.stats()
            assert s["count"] >= BASE
            assert len(index) >= BASE and (0 in index) and (TOMBSTONES[0] not in index)
            everything = index.ids(include_deleted=True)
            assert len(set(everything.tolist())) == len(everything), "an id listed twice"
            self._count("stats / ids")
        elif r < 0.815:
            index.resize(index.max_elements + int(rng.integers(0, 500)))
            self._count("resize")
        elif r < 0.82:
            index.refine_graph(ef=int(rng.integers(4, 40)), num_threads=int(rng.integers(0, 3)))
            self._count("refine_graph")
        elif r < 0.87:
            path = self.tmp / ("shared.evx" if rng.random() < 0.5 else f"own-{self.t}.evx")
            index.save(path)
            try:
                data = path.read_bytes()  # another thread may have replaced it since
            except FileNotFoundError:
                data = None
            if data is not None:
                self.check_image(data)
                private = self.tmp / f"check-{self.t}.evx"
                private.write_bytes(data)
                for mmap in (False, True):
                    assert evidex.HNSWIndex.load(private, mmap=mmap).to_bytes() == data
            self._count("save")
        elif r < 0.91:
            self.check_image(index.to_bytes())
            self._count("to_bytes")
        elif r < 0.93:
            copy = pickle.loads(pickle.dumps(index))
            assert len(copy) >= BASE
            self._count("pickle")
        else:
            index.ef = int(rng.integers(10, 200))
            self._count("ef")

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


def run_stress(
    seconds: float, tmp: Path, threads: int = 8, dim: int = 16, space: str = "l2",
    quantization: str | None = None, seed: int = 0,
) -> Report:  # fmt: skip
    """Run the workload for `seconds`; raises AssertionError on a broken invariant."""
    rng = np.random.default_rng(seed)
    index = evidex.HNSWIndex(dim, space, M=8, ef_construction=40, max_elements=256,
                             quantization=quantization, seed=seed)  # fmt: skip
    # The base declares the attribute fields (t = -1: no thread's), so a filtered search
    # that runs before any thread's first add finds the fields it names.
    index.add(rng.standard_normal((BASE, dim)), np.arange(BASE),
              attributes={"t": -1, "m": np.arange(BASE) % 7})  # fmt: skip
    index.add(rng.standard_normal((len(TOMBSTONES), dim)), np.array(TOMBSTONES))
    index.delete(np.array(TOMBSTONES))
    index.add(rng.standard_normal((1, dim)), [AUTO_FROM - 1])  # auto ids start above
    workers = [_Thread(t, index, dim, tmp, seed) for t in range(threads)]
    errors: list[BaseException] = []
    deadline = time.monotonic() + seconds
    ops = [0] * threads

    def loop(w: _Thread) -> None:
        try:
            while time.monotonic() < deadline:
                w.step()
                ops[w.t] += 1
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    started = time.monotonic()
    pool = [threading.Thread(target=loop, args=(w,)) for w in workers]
    for p in pool:
        p.start()
    for p in pool:
        p.join()
    elapsed = time.monotonic() - started
    if errors:
        raise errors[0]
    # The end state equals the threads' own models.
    live = set(range(BASE)) | {AUTO_FROM - 1}
    deleted = set(TOMBSTONES)
    autos: list[int] = []
    for w in workers:
        live |= set(w.live())
        deleted |= w.deleted
        autos += w.auto
    assert len(autos) == len(set(autos)), "an automatic id was handed out twice"
    live |= set(autos)
    assert set(index.ids().tolist()) == live
    assert set(index.ids(include_deleted=True).tolist()) == live | deleted
    s = index.stats()
    assert s["count"] == len(live) and s["deleted"] == len(deleted)
    for w in workers:
        own = list(w.vectors)
        if own:
            got = index.get_vectors(own)
            want = np.stack([w.vectors[i] for i in own])
            if space == "cosine":
                want = want / np.linalg.norm(want, axis=1, keepdims=True)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    final = tmp / "final.evx"
    index.save(final)
    assert evidex.HNSWIndex.load(final).to_bytes() == final.read_bytes()
    report = Report(operations=sum(ops), thread_seconds=elapsed * threads, auto_ids=len(autos))
    for w in workers:
        for k, v in w.counts.items():
            report.counts[k] = report.counts.get(k, 0) + v
    report.saves = report.counts.get("save", 0)
    report.images = report.counts.get("to_bytes", 0)
    report.searches = sum(v for k, v in report.counts.items() if "search" in k or "filter" in k)
    return report


if __name__ == "__main__":  # python tests/stress_index.py SECONDS [l2|cosine|sq8|pq4]
    import sys
    import tempfile

    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 60
    mode = sys.argv[2] if len(sys.argv) > 2 else "l2"
    with tempfile.TemporaryDirectory() as d:
        rep = run_stress(secs, Path(d), space="cosine" if mode == "cosine" else "l2",
                         quantization=mode if mode in ("sq8", "pq4") else None,
                         seed=int(os.environ.get("SEED", "0")))  # fmt: skip
    print(rep)
