"""A LlamaIndex vector store over `evidex.HNSWIndex` (extra ``llama-index``).

``EvidexLlamaStore()`` implements ``BasePydanticVectorStore``: nodes with their text
(``stores_text``), ``add`` / ``delete(ref_doc_id)`` / ``delete_nodes`` / ``get_nodes`` /
``clear``, ``query`` with ``similarity_top_k``, ``doc_ids``, ``node_ids`` and
``MetadataFilters`` (every operator and and/or/not, nested), and ``persist`` /
``from_persist_path`` to a folder of JSON and the index's own checksummed file (nothing
is unpickled). Use it as ``StorageContext.from_defaults(vector_store=EvidexLlamaStore())``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

try:
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.schema import BaseNode
    from llama_index.core.vector_stores.types import (
        BasePydanticVectorStore,
        FilterCondition,
        FilterOperator,
        MetadataFilter,
        MetadataFilters,
        VectorStoreQuery,
        VectorStoreQueryMode,
        VectorStoreQueryResult,
    )
    from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
except ModuleNotFoundError as e:  # pragma: no cover - exercised without the extra
    raise ModuleNotFoundError(
        "evidex.integrations.llama_index needs llama-index-core: pip install 'evidex[llama-index]'"
    ) from e

from ..index import HNSWIndex
from ._store import DocumentTable, read_folder, write_folder

__all__ = ["EvidexLlamaStore"]

_PARAMS = ("space", "M", "ef_construction", "ef")


def _compare(op: FilterOperator, value: Any, wanted: Any) -> bool:
    """One metadata filter on one stored value (missing values match only IS_EMPTY and
    the negative operators)."""
    if op == FilterOperator.IS_EMPTY:
        return value is None or value == [] or value == ""
    if value is None:
        return op in (FilterOperator.NE, FilterOperator.NIN)
    try:
        if op == FilterOperator.EQ:
            return value == wanted
        if op == FilterOperator.NE:
            return value != wanted
        if op == FilterOperator.GT:
            return value > wanted
        if op == FilterOperator.GTE:
            return value >= wanted
        if op == FilterOperator.LT:
            return value < wanted
        if op == FilterOperator.LTE:
            return value <= wanted
        if op == FilterOperator.IN:
            return value in wanted
        if op == FilterOperator.NIN:
            return value not in wanted
        if op == FilterOperator.ANY:
            return isinstance(value, list) and any(v in value for v in wanted)
        if op == FilterOperator.ALL:
            return isinstance(value, list) and all(v in value for v in wanted)
        if op == FilterOperator.CONTAINS:
            return isinstance(value, list) and wanted in value
        if op == FilterOperator.TEXT_MATCH:
            return isinstance(value, str) and str(wanted) in value
        if op == FilterOperator.TEXT_MATCH_INSENSITIVE:
            return isinstance(value, str) and str(wanted).lower() in value.lower()
    except TypeError:  # e.g. a string compared with a number: no match
        return False
    raise ValueError(f"unsupported filter operator {op!r}")


def _matcher(filters: MetadataFilters | None) -> Callable[[dict[str, Any]], bool]:
    if filters is None:
        return lambda metadata: True
    parts = [_matcher(f) if isinstance(f, MetadataFilters) else _single(f) for f in filters.filters]
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.AND:
        return lambda m: all(p(m) for p in parts)
    if condition == FilterCondition.OR:
        return lambda m: any(p(m) for p in parts)
    if condition == FilterCondition.NOT:
        return lambda m: not any(p(m) for p in parts)
    raise ValueError(f"unsupported filter condition {condition!r}")


def _single(f: MetadataFilter) -> Callable[[dict[str, Any]], bool]:
    return lambda m: _compare(f.operator, m.get(f.key), f.value)


class EvidexLlamaStore(BasePydanticVectorStore):
    """LlamaIndex vector store on an evidex HNSW index.

    Fields (pydantic): ``space`` is ``"cosine"`` (default; similarity = cosine),
    ``"ip"`` (similarity = inner product) or ``"l2"`` (similarity = minus the squared
    distance); ``M``, ``ef_construction`` and ``ef`` are the index's graph degree,
    build beam and search beam.
    """

    stores_text: bool = True
    space: str = "cosine"
    M: int = 16
    ef_construction: int = 200
    ef: int = 64

    _index: HNSWIndex | None = PrivateAttr(default=None)
    _table: DocumentTable = PrivateAttr(default_factory=DocumentTable)
    _lock: Any = PrivateAttr(default_factory=threading.RLock)

    @property
    def client(self) -> HNSWIndex | None:
        """The underlying `evidex.HNSWIndex` (None before the first node)."""
        return self._index

    # ------------------------------------------------------------- writing
    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        if not nodes:
            return []
        vectors = []
        for node in nodes:
            if node.embedding is None:
                raise ValueError(f"node {node.node_id} has no embedding; embed nodes first")
            vectors.append(node.get_embedding())
        data = np.asarray(vectors, dtype=np.float32)
        rows = [
            (
                node.node_id,
                json.dumps(node_to_metadata_dict(node, remove_text=False, flat_metadata=False)),
                {"ref_doc_id": node.ref_doc_id, "metadata": node.metadata},
            )
            for node in nodes
        ]
        with self._lock:
            if self._index is None:
                self._index = HNSWIndex(
                    data.shape[1], self.space, M=self.M, ef_construction=self.ef_construction,
                    ef=self.ef,
                )  # fmt: skip
            keys, labels = self._table.upsert(rows)
            self._index.add(data, labels, replace_deleted=True)
            self._table.commit(keys, labels, rows)
        return keys

    def _drop(self, keys: list[str]) -> None:
        labels = self._table.remove(keys)
        if labels and self._index is not None:
            self._index.delete(labels)

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the source document `ref_doc_id`."""
        with self._lock:
            self._drop(
                [
                    k
                    for k in self._table.keys()
                    if self._table.content(k)[1]["ref_doc_id"] == ref_doc_id
                ]
            )

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        with self._lock:
            self._drop([k for k in self._select(node_ids, filters)])

    def clear(self) -> None:
        with self._lock:
            self._drop(self._table.keys())

    # ------------------------------------------------------------- reading
    def _select(self, node_ids: list[str] | None, filters: MetadataFilters | None) -> list[str]:
        match = _matcher(filters)
        keys = self._table.keys() if node_ids is None else [k for k in node_ids if k in self._table]
        return [k for k in keys if match(self._table.content(k)[1]["metadata"])]

    def _node(self, key: str) -> BaseNode:
        return metadata_dict_to_node(json.loads(self._table.content(key)[0]))

    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        with self._lock:
            return [self._node(k) for k in self._select(node_ids, filters)]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        if query.mode != VectorStoreQueryMode.DEFAULT:
            raise ValueError(f"EvidexLlamaStore answers dense queries only, not {query.mode}")
        if query.query_embedding is None:
            raise ValueError("the query has no query_embedding")
        with self._lock:
            index = self._index
            if index is None or len(index) == 0 or query.similarity_top_k <= 0:
                return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
            match = _matcher(query.filters)
            # Empty lists restrict nothing: LlamaIndex's retriever passes its index
            # struct's node list, which is empty for stores that keep the text.
            doc_ids = set(query.doc_ids) if query.doc_ids else None
            node_ids = set(query.node_ids) if query.node_ids else None

            def allowed(label: int) -> bool:
                key = self._table.key_of(label)
                info = self._table.content(key)[1]
                return (
                    (node_ids is None or key in node_ids)
                    and (doc_ids is None or info["ref_doc_id"] in doc_ids)
                    and match(info["metadata"])
                )

            unfiltered = query.filters is None and doc_ids is None and node_ids is None
            k = min(int(query.similarity_top_k), len(index))
            q = np.asarray(query.query_embedding, dtype=np.float32).reshape(1, -1)
            labels, dist = index.search(
                q, k=k, ef=max(k, index.ef), filter=None if unfiltered else allowed
            )
            hits = [(int(lb), float(d)) for lb, d in zip(labels[0], dist[0]) if np.isfinite(d)]
            keys = [self._table.key_of(lb) for lb, _ in hits]
            similarity = (lambda d: -d) if index.space == "l2" else (lambda d: 1.0 - d)
            return VectorStoreQueryResult(
                nodes=[self._node(k) for k in keys],
                similarities=[similarity(d) for _, d in hits],
                ids=keys,
            )

    # ------------------------------------------------------------- files
    def persist(self, persist_path: str, fs: Any = None) -> None:
        """Write the store to the folder `persist_path` (index file and JSON documents,
        each replaced atomically). Local folders only (`fs` must be None)."""
        if fs is not None:
            raise ValueError("EvidexLlamaStore persists to a local folder (fs=None)")
        with self._lock:
            params = {name: getattr(self, name) for name in _PARAMS}
            write_folder(persist_path, self._index, self._table, {"params": params})

    @classmethod
    def from_persist_path(cls, persist_path: str, fs: Any = None) -> EvidexLlamaStore:
        """A store from a folder written by `persist`, validated (nothing is unpickled)."""
        if fs is not None:
            raise ValueError("EvidexLlamaStore persists to a local folder (fs=None)")
        index, table, extra = read_folder(persist_path)
        params = extra.get("params") if isinstance(extra.get("params"), dict) else {}
        store = cls(**{k: v for k, v in params.items() if k in _PARAMS})
        store._index, store._table = index, table
        return store
