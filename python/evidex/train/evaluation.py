"""Retrieval evaluation on an evidex index: Recall@K, MRR@10, nDCG@10.

Relevance is binary. Recall@K is the fraction of a query's relevant documents found in
its top K (averaged over queries), MRR@10 the mean reciprocal rank of the first relevant
document within the top 10, nDCG@10 the usual log2-discounted gain over the ideal
ordering.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from ..bruteforce import BruteForceIndex
from ..index import HNSWIndex


def _items(data: Sequence[str] | Mapping[Any, str], what: str) -> tuple[list[Any], list[str]]:
    if isinstance(data, Mapping):
        ids, texts = list(data.keys()), list(data.values())
    elif isinstance(data, str):
        raise TypeError(f"{what} must be a sequence or mapping of strings, not one string")
    else:
        texts = list(data)
        ids = list(range(len(texts)))
    if not texts:
        raise ValueError(f"{what} is empty")
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"{what} must hold strings, got {type(t).__name__}")
    return ids, texts


def _encode(embedder: Any, texts: list[str], batch_size: int, show_progress: bool) -> np.ndarray:
    accepted = inspect.signature(embedder.encode).parameters
    if "batch_size" in accepted and "show_progress" in accepted:
        out = embedder.encode(texts, batch_size=batch_size, show_progress=show_progress)
    else:  # a plain TextEmbedder: encode(texts)
        out = embedder.encode(texts)
    out = np.ascontiguousarray(out, dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != len(texts):
        raise ValueError(f"the embedder returned shape {out.shape} for {len(texts)} texts")
    return out


def evaluate_retrieval(
    embedder: Any,
    queries: Sequence[str] | Mapping[Any, str],
    corpus: Sequence[str] | Mapping[Any, str],
    relevant: Sequence[Collection[Any]] | Mapping[Any, Collection[Any]],
    k_values: Sequence[int] = (1, 5, 10),
    batch_size: int = 64,
    exact_below: int = 20_000,
    per_query: bool = False,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Embed `queries` and `corpus`, search, and score against `relevant`.

    Args:
        embedder: anything with ``encode(texts) -> [n, d]`` (an `Embedder`, a
            `TransformersEmbedder`, ...); cosine similarity ranks.
        queries: a list (ids are positions) or a mapping id -> text.
        corpus: a list (ids are positions) or a mapping id -> text.
        relevant: per query (same order / ids as `queries`) the ids of its relevant
            corpus entries. Queries with none are skipped (counted in ``"queries"``).
        k_values: cut-offs for Recall@K (MRR and nDCG are @10).
        exact_below: corpora smaller than this are searched exactly; larger ones with
            an `HNSWIndex` (M=32, ef=max(200, 4K)).
        per_query: also return ``"per_query"``: for each query its id, the ranked
            corpus ids and its metrics.

    Returns:
        ``{"recall@1": ..., "recall@5": ..., "recall@10": ..., "mrr@10": ...,
        "ndcg@10": ..., "queries": n}`` (plus ``"per_query"``).
    """
    q_ids, q_texts = _items(queries, "queries")
    c_ids, c_texts = _items(corpus, "corpus")
    if isinstance(relevant, Mapping):
        missing = [q for q in q_ids if q not in relevant]
        rel = [set(relevant.get(q, ())) for q in q_ids]
    else:
        rel = [set(r) for r in relevant]
        missing = []
        if len(rel) != len(q_ids):
            raise ValueError(f"relevant has {len(rel)} entries for {len(q_ids)} queries")
    known = set(c_ids)
    for q, r in zip(q_ids, rel):
        unknown = r - known
        if unknown:
            raise ValueError(f"query {q!r}: relevant ids not in the corpus: {sorted(unknown)[:5]}")
    k_values = sorted({int(k) for k in k_values} | {10})
    depth = min(max(k_values), len(c_ids))
    doc_vecs = _encode(embedder, c_texts, batch_size, show_progress)
    query_vecs = _encode(embedder, q_texts, batch_size, show_progress)
    if doc_vecs.shape[1] != query_vecs.shape[1]:
        raise ValueError("query and corpus embeddings differ in dimension")
    if len(c_ids) < exact_below:
        index: Any = BruteForceIndex(doc_vecs.shape[1], "cosine")
        index.add(doc_vecs)
    else:
        index = HNSWIndex(doc_vecs.shape[1], "cosine", M=32, ef_construction=200)
        index.add(doc_vecs)
        index.ef = max(200, 4 * depth)
    rows, _ = index.search(query_vecs, k=depth)
    rows = rows.astype(np.int64)

    sums = {f"recall@{k}": 0.0 for k in k_values}
    sums.update({"mrr@10": 0.0, "ndcg@10": 0.0})
    details = []
    scored = 0
    discounts = 1.0 / np.log2(np.arange(2, 12))
    for qi, (qid, relevant_ids) in enumerate(zip(q_ids, rel)):
        ranked = [c_ids[r] for r in rows[qi] if 0 <= r < len(c_ids)]
        if not relevant_ids:
            if per_query:
                details.append({"query_id": qid, "ranked": ranked})
            continue
        scored += 1
        hits = np.array([c in relevant_ids for c in ranked], dtype=bool)
        metrics = {f"recall@{k}": hits[:k].sum() / len(relevant_ids) for k in k_values}
        first = np.flatnonzero(hits[:10])
        metrics["mrr@10"] = 1.0 / (first[0] + 1) if len(first) else 0.0
        dcg = float((hits[:10] * discounts[: len(hits[:10])]).sum())
        ideal = float(discounts[: min(len(relevant_ids), 10)].sum())
        metrics["ndcg@10"] = dcg / ideal
        for name, value in metrics.items():
            sums[name] += float(value)
        if per_query:
            details.append({"query_id": qid, "ranked": ranked, **metrics})
    result: dict[str, Any] = {k: v / max(scored, 1) for k, v in sums.items()}
    result["queries"] = scored
    if missing:
        result["queries_without_relevant"] = len(missing)
    if per_query:
        result["per_query"] = details
    return result


class RetrievalEvaluator:
    """`evaluate_retrieval` as an object, for evaluation during training.

    ``evaluator(model)`` returns the metrics prefixed with `name` (e.g.
    ``"dev/ndcg@10"``); `ContrastiveTrainer` calls it every ``eval_steps``.
    """

    def __init__(
        self,
        queries: Sequence[str] | Mapping[Any, str],
        corpus: Sequence[str] | Mapping[Any, str],
        relevant: Sequence[Collection[Any]] | Mapping[Any, Collection[Any]],
        name: str = "eval",
        **kwargs: Any,
    ) -> None:
        self.queries, self.corpus, self.relevant = queries, corpus, relevant
        self.name = name
        self.kwargs = kwargs

    def __call__(self, embedder: Any) -> dict[str, float]:
        result = evaluate_retrieval(
            embedder, self.queries, self.corpus, self.relevant, **self.kwargs
        )
        return {f"{self.name}/{k}": v for k, v in result.items() if k != "per_query"}
