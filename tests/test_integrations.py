"""The LangChain and LlamaIndex vector stores: LangChain's standard vector-store suite
(langchain-tests), LlamaIndex's SimpleVectorStore as the reference for the same queries,
persistence, and hostile folders."""

from __future__ import annotations

import json
import os
from collections.abc import Generator

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_tests.integration_tests import VectorStoreIntegrationTests
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores import SimpleVectorStore
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

import evidex
from evidex.integrations.langchain import EvidexVectorStore
from evidex.integrations.llama_index import EvidexLlamaStore


# ------------------------------------------------------------------ LangChain
class TestLangChainStandardSuite(VectorStoreIntegrationTests):
    """langchain-tests' contract for every VectorStore, sync and async."""

    @pytest.fixture()
    def vectorstore(self) -> Generator[EvidexVectorStore, None, None]:  # type: ignore[override]
        yield EvidexVectorStore(self.get_embeddings())


def _lc_store(n: int = 60) -> EvidexVectorStore:
    store = EvidexVectorStore(DeterministicFakeEmbedding(size=16), ef=200)
    store.add_texts(
        [f"document {i}" for i in range(n)],
        [{"kind": "even" if i % 2 == 0 else "odd", "i": i} for i in range(n)],
        ids=[f"d{i}" for i in range(n)],
    )
    return store


def test_langchain_search_filters_scores_and_mmr() -> None:
    store = _lc_store()
    emb = store.embeddings
    # Exact answers at this size (ef 200 over 60 documents): compare with brute force.
    q = np.asarray(emb.embed_query("document 7"), dtype=np.float32)
    vecs = np.asarray(emb.embed_documents([f"document {i}" for i in range(60)]), np.float32)
    truth, _ = evidex.exact_knn(vecs, q[None], 5, "cosine")
    got = store.similarity_search("document 7", k=5)
    assert [d.id for d in got] == [f"d{i}" for i in truth[0]]
    assert got[0].page_content == "document 7" and got[0].metadata == {"kind": "odd", "i": 7}
    odd = store.similarity_search("document 7", k=10, filter={"kind": "even"})
    assert len(odd) == 10 and all(d.metadata["kind"] == "even" for d in odd)
    small = store.similarity_search("document 7", k=10, filter=lambda d: d.metadata["i"] < 3)
    assert sorted(d.id for d in small) == ["d0", "d1", "d2"]
    scored = store.similarity_search_with_relevance_scores("document 7", k=3)
    assert scored[0][0].id == "d7" and scored[0][1] == pytest.approx(1.0, abs=1e-5)
    assert all(-1.0 <= s <= 1.0 for _, s in scored)
    mmr = store.max_marginal_relevance_search("document 7", k=4, fetch_k=20)
    assert len(mmr) == 4 and mmr[0].id == "d7" and len({d.id for d in mmr}) == 4
    retriever = store.as_retriever(search_kwargs={"k": 2})
    assert [d.id for d in retriever.invoke("document 7")][0] == "d7"
    with pytest.raises(ValueError, match="duplicate ids"):
        store.add_texts(["x", "y"], ids=["same", "same"])
    with pytest.raises(ValueError, match="metadata must be JSON"):
        store.add_texts(["x"], [{"bad": object()}])
    assert len(store) == 60  # refused calls changed nothing


def test_langchain_save_load_round_trip_and_hostile_folders(tmp_path) -> None:
    store = _lc_store()
    store.delete(["d3", "d4"])
    folder = tmp_path / "store"
    store.save_local(str(folder))
    store.save_local(str(folder))  # a second save replaces the first
    assert len([f for f in os.listdir(folder) if f.endswith(".evx")]) == 1
    again = EvidexVectorStore.load_local(str(folder), store.embeddings)
    assert len(again) == 58 and again.get_by_ids(["d3", "d5"])[0].id == "d5"
    assert [d.id for d in again.similarity_search("document 9", k=3)] == [
        d.id for d in store.similarity_search("document 9", k=3)
    ]
    manifest = json.loads((folder / "documents.json").read_text())
    index_file = folder / manifest["index_file"]
    # Documents that do not match the index, an index swapped under the manifest, a
    # path in the manifest, junk: refused with CorruptIndexError, nothing executed.
    hostile = [
        {**manifest, "documents": manifest["documents"][:-1]},
        {**manifest, "index_sha256": "0" * 64},
        {**manifest, "index_file": "../../etc/passwd"},
        {**manifest, "documents": [{"id": 1, "label": "x"}]},
        {**manifest, "format": "pickle"},
    ]
    for bad in hostile:
        (folder / "documents.json").write_text(json.dumps(bad))
        with pytest.raises(evidex.CorruptIndexError):
            EvidexVectorStore.load_local(str(folder), store.embeddings)
    (folder / "documents.json").write_text("{not json")
    with pytest.raises(evidex.CorruptIndexError, match="not valid JSON"):
        EvidexVectorStore.load_local(str(folder), store.embeddings)
    (folder / "documents.json").write_text(json.dumps(manifest))
    index_file.write_bytes(index_file.read_bytes()[:-8])
    with pytest.raises(evidex.CorruptIndexError):
        EvidexVectorStore.load_local(str(folder), store.embeddings)


# ------------------------------------------------------------------ LlamaIndex
def _nodes(n: int = 50, dim: int = 8) -> list[TextNode]:
    rng = np.random.default_rng(0)
    return [
        TextNode(
            id_=f"n{i}",
            text=f"node {i}",
            embedding=rng.standard_normal(dim).tolist(),
            metadata={"group": i % 3, "tag": "even" if i % 2 == 0 else "odd", "tags": [i % 5]},
        )
        for i in range(n)
    ]


def _both(nodes: list[TextNode]) -> tuple[EvidexLlamaStore, SimpleVectorStore]:
    ours, theirs = EvidexLlamaStore(ef=200), SimpleVectorStore()
    ours.add(nodes)
    theirs.add(nodes)
    return ours, theirs


FILTERS = [
    None,
    MetadataFilters(filters=[MetadataFilter(key="group", value=1)]),
    MetadataFilters(filters=[MetadataFilter(key="group", value=1, operator=FilterOperator.NE)]),
    MetadataFilters(
        filters=[
            MetadataFilter(key="group", value=[0, 2], operator=FilterOperator.IN),
            MetadataFilter(key="tag", value="odd"),
        ],
        condition=FilterCondition.AND,
    ),
    MetadataFilters(
        filters=[
            MetadataFilter(key="group", value=2, operator=FilterOperator.GTE),
            MetadataFilter(key="tags", value=4, operator=FilterOperator.CONTAINS),
        ],
        condition=FilterCondition.OR,
    ),
]


@pytest.mark.parametrize("filters", FILTERS)
def test_llama_index_store_answers_as_simple_vector_store(filters) -> None:
    nodes = _nodes()
    ours, theirs = _both(nodes)
    q = VectorStoreQuery(query_embedding=nodes[4].embedding, similarity_top_k=6, filters=filters)
    a, b = ours.query(q), theirs.query(q)
    assert a.ids == b.ids
    np.testing.assert_allclose(a.similarities, b.similarities, atol=1e-5)
    assert [n.get_content() for n in a.nodes] == [f"node {i[1:]}" for i in a.ids]


def test_llama_index_store_life_cycle_and_persistence(tmp_path) -> None:
    from llama_index.core import StorageContext, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding

    nodes = _nodes()
    for i, node in enumerate(nodes):
        node.relationships = {}
        node.metadata["source"] = f"doc{i // 10}"
    ours, theirs = _both(nodes)
    q = VectorStoreQuery(query_embedding=nodes[0].embedding, similarity_top_k=5, doc_ids=None)
    ours.delete_nodes(["n0", "n1"])
    theirs.delete_nodes(["n0", "n1"])
    assert ours.query(q).ids == theirs.query(q).ids
    assert [n.node_id for n in ours.get_nodes(["n2", "n0"])] == ["n2"]
    assert {n.node_id for n in ours.get_nodes(filters=FILTERS[1])} == {
        f"n{i}" for i in range(2, 50) if i % 3 == 1
    }
    ours.persist(str(tmp_path / "llama"))
    again = EvidexLlamaStore.from_persist_path(str(tmp_path / "llama"))
    assert again.query(q).ids == ours.query(q).ids and again.ef == 200
    again.clear()
    assert again.query(q).ids == [] and again.client is not None
    # In LlamaIndex's own pipeline: documents embedded, stored here, retrieved.
    index = VectorStoreIndex.from_documents(
        [],
        storage_context=StorageContext.from_defaults(vector_store=EvidexLlamaStore()),
        embed_model=MockEmbedding(embed_dim=8),
    )
    index.insert_nodes([TextNode(id_="a", text="alpha"), TextNode(id_="b", text="beta")])
    found = index.as_retriever(similarity_top_k=1).retrieve("alpha")
    assert len(found) == 1 and found[0].node.node_id in ("a", "b")
    with pytest.raises(ValueError, match="no embedding"):
        EvidexLlamaStore().add([TextNode(id_="x", text="x")])


def test_stores_under_many_threads_stay_consistent() -> None:
    """Adds, upserts, deletes and every kind of read at once: no error, and the
    documents and the index agree afterwards (a hit deleted mid-search once raised
    KeyError: documents and vectors are now read under the search's own lock)."""
    import random
    import threading
    import time

    lc = EvidexVectorStore(DeterministicFakeEmbedding(size=16))
    lc.add_texts([f"seed {i}" for i in range(50)], ids=[f"s{i}" for i in range(50)])
    llama = EvidexLlamaStore()
    llama.add(_nodes(50))
    errors: list[str] = []
    stop = time.monotonic() + 3

    def work(t: int) -> None:
        rng = random.Random(t)
        try:
            while time.monotonic() < stop:
                r = rng.random()
                key = f"t{t}-{rng.randrange(100)}"
                if r < 0.3:
                    lc.add_texts([f"text {key}"], [{"t": t}], ids=[key])
                    node = TextNode(
                        id_=key,
                        text=key,
                        embedding=np.random.default_rng(t).standard_normal(8).tolist(),
                    )
                    llama.add([node])
                elif r < 0.45:
                    lc.delete([key])
                    llama.delete_nodes([key])
                elif r < 0.7:
                    lc.similarity_search("text 5", k=5, filter={"t": t} if r < 0.6 else None)
                    llama.query(VectorStoreQuery(query_embedding=[0.1] * 8, similarity_top_k=5))
                elif r < 0.85:
                    lc.max_marginal_relevance_search("seed 3", k=3, fetch_k=10)
                else:
                    lc.get_by_ids([key, "s1"])
                    llama.get_nodes([key, "n1"])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[:3]
    assert len(lc) == len(lc.index)
    assert len(llama.client) == len(llama.get_nodes())
