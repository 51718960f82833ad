"""Indexes across machines on Ray: `ShardedIndex` (shards and replicas held by Ray
actors, one `HNSWIndex` each), its manifest-checked persistence, a distributed build from
a Ray Dataset, and `RayPool`, which runs CRINN's sandboxed measurements on a cluster.

Needs the ``ray`` extra (``pip install "evidex[ray]"``) and a Ray cluster (``ray.init()``
starts a local one).

Routing: an id lives on shard ``splitmix64(id) % num_shards`` (`shard_of`), a fixed,
documented hash, so adds, updates and deletes of an id always reach the same shard, and a
saved index routes the same way when loaded anywhere.

Actors hold their CPUs for as long as they live, so a shard actor asks for a fraction of
a CPU by default (``actor_options={"num_cpus": 0.1}``): shard actors never starve the rest
of a cluster's work (two 1-CPU actors on a 2-CPU cluster would starve every task). Give
more (or a node's custom resource) through `actor_options`. Actors that cannot be placed
within `START_TIMEOUT` seconds raise RuntimeError naming the options, never hang.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from ._files import atomic_directory, read_versioned_json, sha256_file
from .index import HNSWIndex

__all__ = [
    "MANIFEST",
    "RayPool",
    "ShardUnavailableError",
    "ShardedIndex",
    "shard_of",
]

MANIFEST = "manifest.json"
DEFAULT_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0.1}
START_TIMEOUT = 120.0  # seconds for shard actors to be placed and started
T = TypeVar("T")
R = TypeVar("R")


class ShardUnavailableError(RuntimeError):
    """Every replica of a shard failed; ``shard`` names it."""

    def __init__(self, shard: int, cause: BaseException | None = None) -> None:
        super().__init__(f"shard {shard}: no replica answered ({cause!r})")
        self.shard = shard


def _ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("evidex.distributed needs ray: pip install 'evidex[ray]'") from e
    if not ray.is_initialized():
        raise RuntimeError("start or join a Ray cluster first: ray.init()")
    return ray


def shard_of(ids: Any, num_shards: int) -> np.ndarray:
    """The shard of each id: splitmix64's finaliser of the id (as uint64), mod
    `num_shards`. Stable across processes, machines and versions."""
    x = np.asarray(ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(num_shards)).astype(np.int64)


class _Shard:
    """What a shard actor holds: one HNSWIndex."""

    def __init__(
        self,
        dim: int,
        space: str,
        index_kwargs: Mapping[str, Any],
        path: str | None = None,
        mmap: bool = False,
    ) -> None:
        self.index = (
            HNSWIndex.load(path, mmap=mmap) if path else HNSWIndex(dim, space, **index_kwargs)
        )

    def add(self, vectors: np.ndarray, ids: np.ndarray, attributes: Any) -> int:
        self.index.add(vectors, ids, attributes=attributes)
        return len(self.index)

    def missing(self, ids: np.ndarray) -> list[int]:
        """Ids of `ids` that are not live here (what a delete would refuse)."""
        live = set(self.index.ids().tolist())
        return [int(i) for i in ids if int(i) not in live]

    def delete(self, ids: np.ndarray) -> None:
        self.index.delete(ids)

    def build_scan_codes(self, pq_dims: int) -> int:
        if len(self.index):  # an empty shard has nothing to fit; it answers no query anyway
            self.index.build_scan_codes(pq_dims)
        return self.index.scan_code_dims

    def search(
        self, queries: np.ndarray, k: int, ef: int | None, filter: Any, strategy: str
    ) -> tuple[np.ndarray, np.ndarray]:
        n = len(queries)
        kk = min(k, len(self.index))
        ids = np.full((n, k), -1, np.int64)
        dist = np.full((n, k), np.inf, np.float32)
        if kk:
            got_ids, got_dist = self.index.search(
                queries, k=kk, ef=ef, filter=filter, filter_strategy=strategy
            )
            ids[:, :kk], dist[:, :kk] = got_ids, got_dist
        return ids, dist

    def get_vectors(self, ids: np.ndarray) -> np.ndarray:
        return self.index.get_vectors(ids)

    def stats(self) -> dict[str, Any]:
        return self.index.stats()

    def save(self, path: str) -> int:
        self.index.save(path)
        return len(self.index)

    def ping(self) -> str:
        return "ok"


def _merge(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of every shard's k best, by distance (ties by shard order)."""
    ids = np.concatenate([p[0] for p in parts], axis=1)
    dist = np.concatenate([p[1] for p in parts], axis=1)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(dist, order, axis=1)


class ShardedIndex:
    """An index split over `num_shards` Ray actors, each shard held by `replicas` actors.

    The `HNSWIndex` interface where it makes sense: `add` routes each id to its shard
    (`shard_of`) and writes every replica; `search` asks one replica of every shard (round
    robin), retries a failed shard on its other replicas, and merges the k best exactly;
    filters (attribute expressions, id lists, masks, picklable callables) pass through.

    Args:
        dim: vector dimension.
        space: ``"l2"``, ``"ip"`` or ``"cosine"``.
        num_shards: shards (fixed for the index's life: routing depends on it).
        replicas: actors per shard, for throughput and failover.
        actor_options: Ray actor options of each shard actor (default a tenth of a CPU).
        start_timeout: seconds for the actors to start before RuntimeError.
        **index_kwargs: `HNSWIndex` arguments of each shard (M, ef_construction, ef,
            quantization, max_elements, ...).
    """

    def __init__(
        self,
        dim: int,
        space: str = "l2",
        num_shards: int = 2,
        replicas: int = 1,
        actor_options: Mapping[str, Any] | None = None,
        start_timeout: float = START_TIMEOUT,
        **index_kwargs: Any,
    ) -> None:
        for name, v in (("num_shards", num_shards), ("replicas", replicas)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        HNSWIndex(dim, space, **{**index_kwargs, "max_elements": 0})  # check the arguments here
        self.dim, self.space = int(dim), space
        self.num_shards, self.index_kwargs = num_shards, dict(index_kwargs)
        self.actor_options = dict(DEFAULT_ACTOR_OPTIONS if actor_options is None else actor_options)
        self.start_timeout = float(start_timeout)
        self._next_id = 0
        self._turn = [0] * num_shards
        self._replicas = [
            [self._actor(dim, space, self.index_kwargs) for _ in range(replicas)]
            for _ in range(num_shards)
        ]
        self._wait_ready()

    # ---- actors --------------------------------------------------------------------
    def _actor(self, *args: Any, **kwargs: Any) -> Any:
        ray = _ray()
        return ray.remote(**self.actor_options)(_Shard).remote(*args, **kwargs)

    def _wait_ready(self) -> None:
        ray = _ray()
        actors = [a for group in self._replicas for a in group]
        try:
            ray.get([a.ping.remote() for a in actors], timeout=self.start_timeout)
        except ray.exceptions.GetTimeoutError:
            for actor in actors:
                ray.kill(actor)
            raise RuntimeError(
                f"{len(actors)} shard actors with {self.actor_options} could not be placed in "
                f"{self.start_timeout:.0f} s: the cluster lacks the resources (see actor_options)"
            ) from None

    def _dead(self, error: BaseException) -> bool:
        ray = _ray()
        return isinstance(
            error, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)
        )

    def _write(self, shard: int, method: str, *args: Any) -> list[Any]:
        """Call `method` on every replica of `shard`; replicas that died are dropped (the
        others hold the data); an error of the index itself is raised as it is."""
        ray = _ray()
        group = self._replicas[shard]
        refs = [getattr(a, method).remote(*args) for a in group]
        results, alive, last = [], [], None
        for actor, ref in zip(group, refs):
            try:
                results.append(ray.get(ref))
                alive.append(actor)
            except ray.exceptions.RayTaskError as e:  # the index refused: same on every replica
                raise e.as_instanceof_cause() from None
            except Exception as e:  # noqa: BLE001 - an actor gone
                if not self._dead(e):
                    raise
                last = e
        if not alive:
            raise ShardUnavailableError(shard, last)
        self._replicas[shard] = alive
        return results

    @property
    def replicas(self) -> list[int]:
        """Live replicas per shard (as last seen)."""
        return [len(g) for g in self._replicas]

    def _rows(self, x: Any, name: str) -> np.ndarray:
        """float32 rows [n, dim] (one 1-D row allowed), finite: what add and search take."""
        a = np.asarray(x, dtype=np.float32)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[1] != self.dim:
            raise ValueError(f"{name} must be [n, {self.dim}], got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{name} hold NaN or infinity")
        return a

    # ---- the index interface -------------------------------------------------------------
    def __len__(self) -> int:
        return int(sum(s["count"] for s in self.shard_stats()))  # count excludes deleted

    def add(
        self, vectors: Any, ids: Any = None, attributes: Mapping[str, Any] | None = None
    ) -> np.ndarray:
        """Insert (or update) vectors; ids default to ``next_id, next_id + 1, ...``.
        Returns the ids. Each shard checks its part as `HNSWIndex.add` does; a shard that
        refuses raises, and shards already written keep their part."""
        v = self._rows(vectors, "vectors")
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + len(v), dtype=np.int64)
        ids = np.asarray(ids)
        if ids.shape != (len(v),) or not np.issubdtype(ids.dtype, np.integer) or (ids < 0).any():
            raise ValueError(f"ids must be {len(v)} non-negative integers")
        ids = ids.astype(np.int64)
        if len(np.unique(ids)) != len(ids):
            raise ValueError("ids are listed twice")
        attrs = dict(attributes or {})
        for name, values in attrs.items():
            a = np.asarray(values)
            if a.ndim and a.shape[0] != len(v):
                raise ValueError(f"attribute {name!r} has {a.shape[0]} values for {len(v)} vectors")
        shard = shard_of(ids, self.num_shards)
        for s in range(self.num_shards):
            rows = np.flatnonzero(shard == s)
            if len(rows):
                part = {
                    k: (np.asarray(x)[rows] if np.asarray(x).ndim else x) for k, x in attrs.items()
                }
                self._write(s, "add", v[rows], ids[rows], part or None)
        if len(ids):
            self._next_id = max(self._next_id, int(ids.max()) + 1)
        return ids

    def delete(self, ids: Any) -> None:
        """Delete ids, all or nothing: KeyError (naming them) if any is not live."""
        ray = _ray()
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        shard = shard_of(ids, self.num_shards)
        parts = {s: ids[shard == s] for s in range(self.num_shards) if (shard == s).any()}
        missing = [
            m
            for s, part in parts.items()
            for m in ray.get(self._replicas[s][0].missing.remote(part))
        ]
        if missing:
            raise KeyError(f"ids not in the index: {missing[:10]}")
        for s, part in parts.items():
            self._write(s, "delete", part)

    def build_scan_codes(self, pq_dims: int = 0) -> None:
        """`HNSWIndex.build_scan_codes` on every replica of every shard (each shard fits
        its own codes, the same on its replicas: the fitting is seeded), so that
        ``filter_strategy="coded_scan"`` and the planner's coded scan run on every shard.
        Saved and loaded with the shards."""
        if (
            isinstance(pq_dims, bool)
            or not isinstance(pq_dims, int)
            or not 0 <= pq_dims <= self.dim
        ):
            raise ValueError(f"pq_dims must be an integer in [0, {self.dim}], got {pq_dims!r}")
        for s in range(self.num_shards):
            self._write(s, "build_scan_codes", pq_dims)

    def search(
        self,
        queries: Any,
        k: int = 10,
        ef: int | None = None,
        filter: Any = None,
        filter_strategy: str = "auto",
        allow_partial: bool = False,
    ) -> Any:
        """k nearest of each query over all shards: ``(ids, distances)``, padded with -1 /
        inf where fewer elements pass. A shard whose every replica fails raises
        `ShardUnavailableError` naming it; with ``allow_partial=True`` the result is
        ``(ids, distances, missing_shards)`` from the shards that answered."""
        ray = _ray()
        q = self._rows(queries, "queries")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        q_ref = ray.put(q)
        pending = {}
        for s in range(self.num_shards):
            group = self._replicas[s]
            if group:
                actor = group[self._turn[s] % len(group)]
                self._turn[s] += 1
                pending[s] = (
                    actor,
                    actor.search.remote(q_ref, int(k), ef, filter, filter_strategy),
                )
        parts, missing = [], []
        for s in range(self.num_shards):
            try:
                if s not in pending:
                    raise ShardUnavailableError(s)
                actor, ref = pending[s]
                parts.append(
                    self._answer(s, actor, ref, q_ref, int(k), ef, filter, filter_strategy)
                )
            except ShardUnavailableError:
                if not allow_partial:
                    raise
                missing.append(s)
        if not parts:
            raise ShardUnavailableError(missing[0]) if missing else ValueError("no shards")
        ids, dist = _merge(parts, int(k))
        return (ids, dist, missing) if allow_partial else (ids, dist)

    def _answer(
        self, shard: int, first: Any, ref: Any, *args: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """Shard `shard`'s answer: `ref`, or, if its actor died, another replica's."""
        ray = _ray()
        tried, last = [first], None
        while True:
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # bad input: every replica says the same
                raise e.as_instanceof_cause() from None
            except Exception as e:  # noqa: BLE001
                if not self._dead(e):
                    raise
                last = e
            group = self._replicas[shard] = [a for a in self._replicas[shard] if a not in tried]
            if not group:
                raise ShardUnavailableError(shard, last)
            tried.append(group[0])
            ref = group[0].search.remote(*args)

    def get_vectors(self, ids: Any) -> np.ndarray:
        """Stored vectors of `ids` (KeyError for an id no shard holds)."""
        ray = _ray()
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        shard = shard_of(ids, self.num_shards)
        out = np.empty((len(ids), self.dim), np.float32)
        for s in range(self.num_shards):
            rows = np.flatnonzero(shard == s)
            if len(rows):
                try:
                    out[rows] = ray.get(self._replicas[s][0].get_vectors.remote(ids[rows]))
                except ray.exceptions.RayTaskError as e:
                    raise e.as_instanceof_cause() from None
        return out

    def shard_stats(self) -> list[dict[str, Any]]:
        """`HNSWIndex.stats` of one replica of each shard."""
        ray = _ray()
        return ray.get([g[0].stats.remote() for g in self._replicas])

    def stats(self) -> dict[str, Any]:
        """Counts (live, deleted) and memory summed over shards (one replica each), and the
        layout."""
        per = self.shard_stats()
        return {
            "count": sum(s["count"] for s in per),
            "deleted": sum(s["deleted"] for s in per),
            "memory_bytes": sum(s["memory_bytes"] for s in per),
            "num_shards": self.num_shards,
            "replicas": self.replicas,
            "shard_counts": [s["count"] for s in per],
        }

    # ---- persistence ------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write every shard's file and a manifest (layout, routing, files with sizes and
        SHA-256) into directory `path`, atomically: a failed save leaves a previous index
        there intact. The shard actors write the files, so on several machines `path`
        must be on a file system they share with this process."""
        ray = _ray()
        with atomic_directory(path) as tmp:
            names = [f"shard-{s:05d}.evx" for s in range(self.num_shards)]
            counts = ray.get(
                [g[0].save.remote(os.path.join(tmp, n)) for g, n in zip(self._replicas, names)]
            )
            manifest = {
                "format": "evidex-sharded-index",
                "version": 1,
                "dim": self.dim,
                "space": self.space,
                "num_shards": self.num_shards,
                "routing": "splitmix64-mod",
                "next_id": self._next_id,
                "index_kwargs": self.index_kwargs,
                "shards": [
                    {
                        "file": n,
                        "bytes": os.path.getsize(os.path.join(tmp, n)),
                        "sha256": sha256_file(os.path.join(tmp, n)),
                        "count": int(c),
                    }
                    for n, c in zip(names, counts)
                ],
            }
            with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=2)

    @classmethod
    def load(
        cls,
        path: str,
        replicas: int = 1,
        actor_options: Mapping[str, Any] | None = None,
        mmap: bool = False,
        start_timeout: float = START_TIMEOUT,
    ) -> ShardedIndex:
        """Place the shards of a saved index on new actors. The manifest is the single
        source of truth: a missing, resized or altered shard file (SHA-256) is refused
        with ValueError naming it, before any actor starts."""
        manifest = _read_manifest(path)
        self = cls.__new__(cls)
        self.dim, self.space = manifest["dim"], manifest["space"]
        self.num_shards = manifest["num_shards"]
        self.index_kwargs = manifest["index_kwargs"]
        self.actor_options = dict(DEFAULT_ACTOR_OPTIONS if actor_options is None else actor_options)
        self.start_timeout = float(start_timeout)
        self._next_id = manifest["next_id"]
        self._turn = [0] * self.num_shards
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
            raise ValueError(f"replicas must be a positive integer, got {replicas!r}")
        files = [os.path.join(path, s["file"]) for s in manifest["shards"]]
        self._replicas = [
            [self._actor(self.dim, self.space, {}, f, mmap) for _ in range(replicas)] for f in files
        ]
        try:
            self._wait_ready()
        except Exception as e:  # noqa: BLE001 - a shard file the index refuses
            ray = _ray()
            for group in self._replicas:
                for actor in group:
                    ray.kill(actor)
            cause = e.as_instanceof_cause() if hasattr(e, "as_instanceof_cause") else e
            raise ValueError(f"{path}: a shard cannot be loaded: {cause}") from None
        return self

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        dim: int,
        space: str = "cosine",
        num_shards: int = 2,
        vector_column: str = "vector",
        id_column: str | None = "id",
        embedder: Callable[[], Any] | None = None,
        text_column: str = "text",
        image_column: str | None = None,
        batch_size: int = 1024,
        map_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> ShardedIndex:
        """Build from a Ray Dataset of vectors (`vector_column`, optional `id_column`), or
        of texts (`text_column`) or images (`image_column`: paths, encoded bytes or uint8
        arrays) embedded on the cluster: `embedder` is a zero-argument factory, called once
        per worker (a model is not shipped from here), returning an object with
        ``encode(items)`` (a multimodal embedder for images); `map_options` go to
        ``map_batches`` (``num_gpus``, ``num_cpus``, ``concurrency``). Other arguments
        are `ShardedIndex`'s."""
        if embedder is not None:
            ds = dataset.map_batches(
                _Embed,
                fn_constructor_args=(
                    embedder,
                    image_column or text_column,
                    vector_column,
                    image_column is not None,
                ),  # fmt: skip
                batch_size=batch_size,
                batch_format="numpy",
                **{"concurrency": 1, **dict(map_options or {})},
            )
        else:
            ds = dataset
        index = cls(dim, space, num_shards, **kwargs)
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
            if vector_column not in batch:
                raise ValueError(f"the dataset has no column {vector_column!r}")
            vectors = np.stack(list(batch[vector_column])).astype(np.float32)
            ids = batch[id_column] if id_column and id_column in batch else None
            index.add(vectors, ids)
        return index


class _Embed:
    """A ``map_batches`` worker: the embedder is made once, where it runs."""

    def __init__(
        self, factory: Callable[[], Any], column: str, vector_column: str, images: bool
    ) -> None:
        self.embedder = factory()
        self.column, self.vector_column, self.images = column, vector_column, images

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.column not in batch:
            raise ValueError(f"the dataset has no column {self.column!r}")
        if self.images:
            from .media.items import ImageItem

            items: list[Any] = [
                ImageItem(x if not isinstance(x, np.str_) else str(x)) for x in batch[self.column]
            ]
        else:
            items = [str(t) for t in batch[self.column]]
        out = dict(batch)
        out[self.vector_column] = np.asarray(self.embedder.encode(items), dtype=np.float32)
        return out


def _read_manifest(path: str) -> dict[str, Any]:
    file = os.path.join(path, MANIFEST)
    m = read_versioned_json(file, "evidex-sharded-index", 1, "evidex sharded index manifest")
    if m.get("routing") != "splitmix64-mod":
        raise ValueError(f"{file}: unknown routing {m.get('routing')!r}")
    shards = m.get("shards")
    n = m.get("num_shards")
    if not isinstance(n, int) or n < 1 or not isinstance(shards, list) or len(shards) != n:
        raise ValueError(f"{file}: num_shards does not match the shard list")
    for key, kind in (("dim", int), ("next_id", int), ("space", str), ("index_kwargs", dict)):
        if not isinstance(m.get(key), kind):
            raise ValueError(f"{file}: {key} is missing or malformed")
    names = set()
    for s, entry in enumerate(shards):
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or os.path.basename(name) != name or name in names:
            raise ValueError(f"{file}: shard {s} has a bad file name {name!r}")
        names.add(name)
        where = os.path.join(path, name)
        if not os.path.isfile(where):
            raise ValueError(f"shard {s}: its file {name} is missing")
        if os.path.getsize(where) != entry.get("bytes"):
            raise ValueError(
                f"shard {s}: {name} has {os.path.getsize(where)} bytes, "
                f"the manifest says {entry.get('bytes')}"
            )
        if sha256_file(where) != entry.get("sha256"):
            raise ValueError(f"shard {s}: {name} does not match the manifest's SHA-256")
    return m


# ------------------------------------------------------------------ CRINN on a cluster
class RayPool:
    """CRINN's `Pool` on a Ray cluster: each job runs as a Ray task holding one CPU and,
    when `resource` is given, one unit of that custom resource (declare it on the nodes
    that may measure, e.g. ``ray start --resources='{"crinn_bench": 2}'`` for one
    benchmark per core). Results come back in order. Each task runs the same sandboxed
    build and measurement as `LocalPool` does, on the node that runs it, which builds
    for its own CPU; the run's archive must be on a file system every node shares.
    """

    def __init__(self, resource: str | None = None, num_cpus: float = 1.0) -> None:
        self.resource = resource
        self.num_cpus = num_cpus

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        return iter([result for result, _node in self.map_with_nodes(fn, items)])

    def map_with_nodes(self, fn: Callable[[T], R], items: Iterable[T]) -> list[tuple[R, dict]]:
        """As `map`, with the CPU fingerprint of the node that ran each job."""
        ray = _ray()
        options: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.resource:
            options["resources"] = {self.resource: 1}
        task = ray.remote(**options)(_run_with_node)
        try:
            return ray.get([task.remote(fn, x) for x in items])
        except ray.exceptions.RayTaskError as e:
            raise e.as_instanceof_cause() from None


def _run_with_node(fn: Callable[[Any], Any], item: Any) -> tuple[Any, dict[str, str]]:
    from .crinn.measure import machine_fingerprint

    return fn(item), machine_fingerprint()
