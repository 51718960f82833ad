"""A multimodal corpus in an `evidex.HNSWIndex`: items (texts, images, videos,
interleaved) embedded and added in one call, searched by items of any kind.

The embedder is anything with ``encode(items) -> float32 [n, d]`` (L2-normalised), e.g.
`evidex.media.embedders.DualEncoderEmbedder`; the index uses the cosine space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._progress import progress_bar
from ..index import HNSWIndex
from .items import check_items

__all__ = ["index_items", "search_items"]


def _encode(embedder: Any, items: list[Any]) -> np.ndarray:
    out = np.asarray(embedder.encode(items), dtype=np.float32)
    if out.ndim != 2 or out.shape[0] != len(items):
        raise ValueError(
            f"the embedder returned {out.shape} for {len(items)} items; expected [n, dim]"
        )
    return out


def index_items(
    items: Sequence[Any],
    embedder: Any,
    index: HNSWIndex | None = None,
    ids: Any = None,
    attributes: Mapping[str, Any] | None = None,
    batch_size: int = 256,
    show_progress: bool = False,
    **index_kwargs: Any,
) -> HNSWIndex:
    """Embed `items` with `embedder` and add them to `index` (a new cosine `HNSWIndex`
    when None, built with `index_kwargs`), `batch_size` items at a time.

    `ids` and `attributes` are as `HNSWIndex.add` takes them (one per item). Every item is
    checked before anything is embedded, and all are embedded before anything is added,
    so a bad item or a failing embedder leaves the index unchanged.
    """
    items = check_items(items)
    if not items:
        raise ValueError("index_items needs at least one item")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if ids is not None:
        ids = np.asarray(ids)
        if ids.shape != (len(items),):
            raise ValueError(f"ids must hold one id per item: {ids.shape} for {len(items)} items")
    bar = progress_bar(len(items), show_progress, "embed", unit="item")
    chunks = []
    for start in range(0, len(items), batch_size):
        chunks.append(_encode(embedder, items[start : start + batch_size]))
        if bar is not None:
            bar.update(min(batch_size, len(items) - start))
    if bar is not None:
        bar.close()
    vectors = np.concatenate(chunks)
    if index is None:
        kwargs = {"space": "cosine", "max_elements": len(items), **index_kwargs}
        index = HNSWIndex(vectors.shape[1], **kwargs)
    elif index_kwargs:
        raise ValueError(f"index_kwargs {sorted(index_kwargs)} apply only to a new index")
    if index.dim != vectors.shape[1]:
        raise ValueError(
            f"the embedder gives {vectors.shape[1]}-d vectors; the index is {index.dim}-d"
        )
    index.add(vectors, ids, attributes=attributes)
    return index


def search_items(
    index: HNSWIndex, embedder: Any, queries: Sequence[Any], k: int = 10, **search_kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [nq, k], distances [nq, k])`` of the items nearest each query item (text,
    image, video or interleaved); `search_kwargs` go to `HNSWIndex.search` (ef, filter)."""
    queries = check_items(queries)
    if not queries:
        raise ValueError("search_items needs at least one query")
    vectors = _encode(embedder, queries)
    if index.dim != vectors.shape[1]:
        raise ValueError(
            f"the embedder gives {vectors.shape[1]}-d vectors; the index is {index.dim}-d"
        )
    return index.search(vectors, k=k, **search_kwargs)
