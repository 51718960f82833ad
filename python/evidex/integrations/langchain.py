"""A LangChain ``VectorStore`` over `evidex.HNSWIndex` (extra ``langchain``).

``EvidexVectorStore(embeddings)`` is LangChain's vector-store contract (checked by
``langchain-tests``' standard suite): documents with string ids, upserts by id,
deletion, ``get_by_ids``, similarity search with scores and relevance scores, maximal
marginal relevance, metadata filters (a dict of equalities or a callable on the
``Document``), and persistence with ``save_local`` / ``load_local`` in JSON and the
index's own checksummed file (no pickle: a folder from a stranger cannot run code).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

try:
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
    from langchain_core.vectorstores.utils import maximal_marginal_relevance
except ModuleNotFoundError as e:  # pragma: no cover - exercised without the extra
    raise ModuleNotFoundError(
        "evidex.integrations.langchain needs langchain-core: pip install 'evidex[langchain]'"
    ) from e

from ..index import HNSWIndex
from ._store import DocumentTable, read_folder, write_folder

__all__ = ["EvidexVectorStore"]

MetadataFilter = dict[str, Any] | Callable[[Document], bool] | None


class EvidexVectorStore(VectorStore):
    """LangChain vector store on an evidex HNSW index.

    Args:
        embedding: the LangChain ``Embeddings`` that turns texts into vectors.
        space: ``"cosine"`` (default), ``"ip"`` or ``"l2"``.
        M: graph degree of the index.
        ef_construction: beam width while building.
        ef: search beam width.
        index: an existing empty `HNSWIndex` to use instead of a new one.
    """

    def __init__(
        self,
        embedding: Embeddings,
        space: str = "cosine",
        M: int = 16,
        ef_construction: int = 200,
        ef: int = 64,
        index: HNSWIndex | None = None,
    ) -> None:
        self.embedding = embedding
        self._params = {"space": space, "M": M, "ef_construction": ef_construction, "ef": ef}
        self._index = index
        self._table = DocumentTable()
        self._lock = threading.RLock()

    @property
    def embeddings(self) -> Embeddings:
        return self.embedding

    @property
    def index(self) -> HNSWIndex | None:
        """The underlying `evidex.HNSWIndex` (None before the first document)."""
        return self._index

    def _index_for(self, dim: int) -> HNSWIndex:
        if self._index is None:
            p = self._params
            self._index = HNSWIndex(
                dim, p["space"], M=p["M"], ef_construction=p["ef_construction"], ef=p["ef"]
            )
        elif self._index.dim != dim:
            raise ValueError(
                f"embeddings of dimension {dim} for an index of dimension {self._index.dim}"
            )
        return self._index

    # ------------------------------------------------------------- writing
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and store `texts`; a given id already present is replaced (upsert)."""
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"{len(metadatas)} metadatas for {len(texts)} texts")
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        if not texts:
            return []
        vectors = np.asarray(self.embedding.embed_documents(texts), dtype=np.float32)
        with self._lock:
            index = self._index_for(vectors.shape[1])
            rows = [
                (ids[i] if ids is not None else None, t, (metadatas or [None] * len(texts))[i])
                for i, t in enumerate(texts)
            ]
            keys, labels = self._table.upsert(rows)
            index.add(vectors, labels, replace_deleted=True)
            self._table.commit(keys, labels, rows)
        return keys

    def add_documents(self, documents: list[Document], **kwargs: Any) -> list[str]:
        ids = kwargs.pop("ids", None)
        if ids is None and any(d.id for d in documents):
            ids = [d.id or None for d in documents]
        return self.add_texts(
            [d.page_content for d in documents], [dict(d.metadata) for d in documents], ids=ids
        )

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete the documents with these ids (missing ids are ignored); all with None."""
        with self._lock:
            labels = self._table.remove(ids)
            if labels and self._index is not None:
                self._index.delete(labels)
        return True

    # ------------------------------------------------------------- reading
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        with self._lock:
            return [self._document(key) for key in ids if key in self._table]

    def _document(self, key: str) -> Document:
        text, metadata = self._table.content(key)
        return Document(id=key, page_content=text, metadata=dict(metadata))

    def _search(
        self, vector: Sequence[float], k: int, filter: MetadataFilter, with_vectors: bool = False
    ) -> tuple[list[tuple[Document, float]], np.ndarray | None]:
        """(documents with distances, their stored vectors if asked), read under one
        hold of the lock: a concurrent delete cannot remove a hit before its document
        (or vector) is read."""
        with self._lock:
            index = self._index
            if index is None or len(index) == 0 or k <= 0:
                return [], None
            predicate = self._predicate(filter)
            k = min(int(k), len(index))
            q = np.asarray(vector, dtype=np.float32).reshape(1, -1)
            labels, dist = index.search(q, k=k, ef=max(k, index.ef), filter=predicate)
            hits = [
                (int(label), float(d))
                for label, d in zip(labels[0], dist[0])
                if label >= 0 and np.isfinite(d)
            ]
            docs = [(self._document(self._table.key_of(label)), d) for label, d in hits]
            vectors = index.get_vectors([label for label, _ in hits]) if with_vectors else None
            return docs, vectors

    def _predicate(self, filter: MetadataFilter) -> Callable[[int], bool] | None:
        if filter is None:
            return None
        if callable(filter):
            return lambda label: bool(filter(self._document(self._table.key_of(label))))
        if not isinstance(filter, dict):
            raise TypeError("filter must be a dict of metadata equalities or a callable(Document)")
        items = list(filter.items())
        return lambda label: all(
            self._table.content(self._table.key_of(label))[1].get(name) == value
            for name, value in items
        )

    def similarity_search_with_score_by_vector(
        self, embedding: Sequence[float], k: int = 4, filter: MetadataFilter = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Documents and their distances in the index's space (smaller is closer)."""
        return self._search(embedding, k, filter)[0]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: MetadataFilter = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return self.similarity_search_with_score_by_vector(
            self.embedding.embed_query(query), k, filter
        )

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: MetadataFilter = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, filter)]

    def similarity_search(
        self, query: str, k: int = 4, filter: MetadataFilter = None, **kwargs: Any
    ) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k, filter)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        space = self._params["space"] if self._index is None else self._index.space
        if space == "cosine":
            return lambda distance: 1.0 - distance  # cosine similarity
        if space == "ip":
            return lambda distance: 1.0 - distance  # the inner product itself
        return self._euclidean_relevance_score_fn_squared

    @staticmethod
    def _euclidean_relevance_score_fn_squared(distance: float) -> float:
        # l2 distances here are squared; LangChain's formula takes the plain distance.
        return 1.0 - float(np.sqrt(max(distance, 0.0))) / np.sqrt(2)

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: MetadataFilter = None,
        **kwargs: Any,
    ) -> list[Document]:
        found, vectors = self._search(embedding, max(fetch_k, k), filter, with_vectors=True)
        if not found:
            return []
        picked = maximal_marginal_relevance(
            np.asarray(embedding, dtype=np.float32), list(vectors), lambda_mult=lambda_mult, k=k
        )
        return [found[i][0] for i in picked]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: MetadataFilter = None,
        **kwargs: Any,
    ) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(
            self.embedding.embed_query(query), k, fetch_k, lambda_mult, filter
        )

    # ------------------------------------------------------------- construction and files
    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> EvidexVectorStore:
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    def save_local(self, folder_path: str) -> None:
        """Write the index (its checksummed format) and the documents (JSON) to a folder,
        each file through a temporary file and a rename."""
        with self._lock:
            write_folder(folder_path, self._index, self._table, {"params": self._params})

    @classmethod
    def load_local(cls, folder_path: str, embeddings: Embeddings) -> EvidexVectorStore:
        """A store from a folder written by `save_local`. The files are validated (the
        index as any evidex file, the documents against it); nothing is unpickled."""
        index, table, extra = read_folder(folder_path)
        params = extra.get("params") if isinstance(extra.get("params"), dict) else {}
        known = ("space", "M", "ef_construction", "ef")
        store = cls(embeddings, **{k: v for k, v in params.items() if k in known})
        store._index, store._table = index, table
        return store

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"EvidexVectorStore({len(self)} documents, space={self._params['space']!r})"
