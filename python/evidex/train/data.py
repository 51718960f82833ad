"""Contrastive training data: examples, JSONL loading and batching.

An example is a query, one or more positives and optional hard negatives. Accepted
forms: `ContrastiveExample`; a dict with ``query`` (or ``anchor``), ``positive`` or
``positives``, and optional ``negative`` / ``negatives``; a tuple ``(query, positive,
*negatives)``. A JSONL file holds one such dict per line.

Queries and documents are texts, or, for a multimodal model such as
`evidex.media.embedders.DualEncoder`, media items (`evidex.media.ImageItem`, PIL images,
uint8 arrays): an (image, caption) example trains image-to-text retrieval.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ContrastiveExample:
    """One query with its positives and (optional) hard negatives."""

    query: Any  # a text, or a media item for multimodal models
    positives: list[Any]
    negatives: list[Any] = field(default_factory=list)


@dataclass
class ContrastiveBatch:
    """A batch as the losses see it.

    ``documents`` holds every example's positives and hard negatives; ``positives[i]``
    lists the indices in ``documents`` of query i's positives. Every other document is
    a negative of query i (in-batch negatives), unless its text equals one of query i's
    positives (a false negative, masked by the losses).
    """

    queries: list[Any]
    documents: list[Any]
    positives: list[list[int]]

    def __len__(self) -> int:
        return len(self.queries)


def _entry(value: Any, what: str, where: str) -> Any:
    """A non-empty text, or a media item (images for multimodal models)."""
    label = "the query" if what == "query" else f"every {what}"
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where}: {label} must be a non-empty string, got {value!r}")
        return value
    from ..media.items import Interleaved, as_item

    try:
        item = as_item(value)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{where}: {label} must be a non-empty string or a media item ({e})"
        ) from e
    if isinstance(item, Interleaved):  # a list here is a list of entries, not one item
        raise ValueError(f"{where}: {label} must be a non-empty string or a media item")
    return item


def _texts(value: Any, what: str, where: str) -> list[Any]:
    if value is None:
        return []
    single = isinstance(value, str) or not isinstance(value, (list, tuple))
    return [_entry(t, what, where) for t in ([value] if single else value)]


def as_example(item: Any, where: str = "example") -> ContrastiveExample:
    """A `ContrastiveExample` from any accepted form; a ValueError names what is wrong."""
    if isinstance(item, ContrastiveExample):
        query, positives, negatives = item.query, item.positives, item.negatives
    elif isinstance(item, dict):
        query = item.get("query", item.get("anchor"))
        positives = item.get("positives", item.get("positive"))
        negatives = item.get("negatives", item.get("negative"))
    elif isinstance(item, (tuple, list)) and len(item) >= 2:
        query, positives, negatives = item[0], item[1], list(item[2:])
    else:
        raise ValueError(
            f"{where}: expected a dict with query/positive(s), a (query, positive, "
            f"*negatives) tuple or a ContrastiveExample, got {type(item).__name__}"
        )
    if query is None or isinstance(query, (list, tuple)):
        raise ValueError(f"{where}: the query must be a non-empty string, got {query!r}")
    query = _entry(query, "query", where)
    positives = _texts(positives, "positive", where)
    if not positives:
        raise ValueError(f"{where}: needs at least one positive")
    return ContrastiveExample(query, positives, _texts(negatives, "negative", where))


def as_examples(data: Iterable[Any]) -> list[ContrastiveExample]:
    """Validate a list of examples (any accepted form)."""
    return [as_example(item, f"example {i}") for i, item in enumerate(data)]


def read_jsonl(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, object) per non-blank line; a ValueError names a malformed line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None


def load_jsonl(path: str) -> list[ContrastiveExample]:
    """Examples from a JSONL file; a malformed line raises a ValueError naming it."""
    out = [as_example(item, f"{path}:{n}") for n, item in read_jsonl(path)]
    if not out:
        raise ValueError(f"{path}: no examples")
    return out


def collate(examples: Sequence[Any]) -> ContrastiveBatch:
    """One `ContrastiveBatch` from examples in any accepted form (each example's
    documents kept in order)."""
    queries, documents, positives = [], [], []
    for i, item in enumerate(examples):
        ex = as_example(item, f"example {i} of the batch")
        queries.append(ex.query)
        start = len(documents)
        documents.extend(ex.positives)
        positives.append(list(range(start, start + len(ex.positives))))
        documents.extend(ex.negatives)
    return ContrastiveBatch(queries, documents, positives)
