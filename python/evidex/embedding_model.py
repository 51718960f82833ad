"""A trainable text embedder: a transformers backbone, pooling and L2 normalisation.

``Embedder`` is a ``torch.nn.Module``: ``model(texts)`` returns embeddings with gradients
(for the losses in `evidex.train.losses`), ``model.encode(texts)`` returns float32 numpy
arrays for indexing. ``save_pretrained`` writes a directory that ``from_pretrained`` (and
transformers itself) reads back; a sentence-transformers directory's pooling mode is
honoured when no evidex config is present.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._arrays import check_texts
from ._progress import progress_bar

POOLINGS = ("mean", "cls", "last", "emb_token")
CONFIG_NAME = "evidex_embedder.json"
EMB_TOKEN = "<emb>"


def pool(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    pooling: str,
    input_ids: torch.Tensor | None = None,
    emb_token_id: int | None = None,
) -> torch.Tensor:
    """One vector per sequence from token states ``[n, L, d]`` (padding on either side).

    ``mean``: average of the non-padding tokens; ``cls``: the first non-padding token;
    ``last``: the last non-padding token (causal LMs); ``emb_token``: the last occurrence
    of the ``<emb>`` token (`emb_token_id`) in `input_ids`.
    """
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    mask = attention_mask.to(torch.bool)
    length = mask.shape[1]
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if pooling == "cls":
        return hidden[rows, mask.to(torch.int8).argmax(1)]
    if pooling == "last":
        return hidden[rows, length - 1 - mask.flip(1).to(torch.int8).argmax(1)]
    if pooling == "emb_token":
        if input_ids is None or emb_token_id is None:
            raise ValueError("emb_token pooling needs input_ids and the <emb> token id")
        is_emb = (input_ids == emb_token_id) & mask
        if not bool(is_emb.any(1).all()):
            raise ValueError("a sequence has no <emb> token (truncated away?)")
        return hidden[rows, length - 1 - is_emb.flip(1).to(torch.int8).argmax(1)]
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")


def _pooling_from_sentence_transformers(path: str) -> str | None:
    """The pooling a sentence-transformers model directory declares, if any."""
    cfg = os.path.join(path, "1_Pooling", "config.json")
    if not os.path.isfile(cfg):
        return None
    with open(cfg) as f:
        modes = json.load(f)
    if modes.get("pooling_mode_mean_tokens"):
        return "mean"
    if modes.get("pooling_mode_cls_token"):
        return "cls"
    if modes.get("pooling_mode_lasttoken"):
        return "last"
    return None


def length_groups(lengths: Sequence[int], overhead: int = 128) -> list[list[int]]:
    """Split ascending `lengths` into contiguous groups minimising padded tokens plus
    `overhead` token-equivalents per extra forward pass (dynamic programming).

    A batch padded to its longest text wastes compute on padding; a pass per text
    wastes the per-pass overhead. Returns lists of positions into `lengths`.
    """
    n = len(lengths)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(end):
            cost = best[start] + overhead + (end - start) * lengths[end - 1]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups = []
    end = n
    while end > 0:
        groups.append(list(range(cut[end], end)))
        end = cut[end]
    return groups[::-1]


class Embedder(torch.nn.Module):
    """Transformers backbone + pooling + L2 normalisation.

    Args:
        backbone: a transformers model returning ``last_hidden_state`` (an encoder) or
            ``hidden_states`` (a causal LM, see `causal`).
        tokenizer: its tokenizer.
        pooling: ``"mean"``, ``"cls"``, ``"last"`` or ``"emb_token"`` (an ``<emb>``
            token appended to every text; added to the vocabulary if missing).
        max_length: tokens per text; longer texts are truncated (the ``<emb>`` token is
            kept).
        normalize: L2-normalise the output (cosine similarity = dot product).
    """

    def __init__(
        self,
        backbone: Any,
        tokenizer: Any,
        pooling: str = "mean",
        max_length: int = 256,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = int(max_length)
        self.normalize = normalize
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.emb_token_id: int | None = None
        if pooling == "emb_token":
            if EMB_TOKEN not in tokenizer.get_vocab():
                tokenizer.add_special_tokens({"additional_special_tokens": [EMB_TOKEN]})
                backbone.resize_token_embeddings(len(tokenizer))
            self.emb_token_id = tokenizer.convert_tokens_to_ids(EMB_TOKEN)

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        pooling: str | None = None,
        max_length: int | None = None,
        normalize: bool | None = None,
        device: str | torch.device = "cpu",
        **model_kwargs: Any,
    ) -> Embedder:
        """Load from a local directory (no hub access). Settings saved by
        `save_pretrained` are used unless overridden; a sentence-transformers
        directory's pooling is read from its ``1_Pooling/config.json``."""
        from transformers import AutoModel, AutoTokenizer

        if not os.path.isdir(path):
            raise FileNotFoundError(f"no model directory at {path!r}")
        saved: dict[str, Any] = {}
        if os.path.isfile(os.path.join(path, CONFIG_NAME)):
            with open(os.path.join(path, CONFIG_NAME)) as f:
                saved = json.load(f)
        pooling = pooling or saved.get("pooling") or _pooling_from_sentence_transformers(path)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        backbone = AutoModel.from_pretrained(path, local_files_only=True, **model_kwargs)
        model = cls(
            backbone,
            tokenizer,
            pooling=pooling or "mean",
            max_length=max_length or saved.get("max_length", 256),
            normalize=saved.get("normalize", True) if normalize is None else normalize,
        )
        return model.to(device)

    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        """Unpadded token ids per text (``<emb>`` appended, never truncated away)."""
        if self.pooling != "emb_token":
            return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length - 1)["input_ids"]
        return [row + [self.emb_token_id] for row in ids]

    def _pad(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        left = self.tokenizer.padding_side == "left"
        for i, r in enumerate(rows):
            span = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, span] = torch.tensor(r)
            mask[i, span] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded tensors for `texts`; with ``emb_token`` pooling each text ends in ``<emb>``."""
        return self._pad(self._token_ids(check_texts(texts)))

    def forward(self, texts: Sequence[str] | dict[str, torch.Tensor]) -> torch.Tensor:
        """Embeddings ``[n, dim]`` (float32, with gradients when enabled).

        Texts are run in length-sorted sub-batches (`length_groups`), so a batch of
        mixed lengths is not padded to its longest text; the result is the same up to
        float rounding, in the input order.
        """
        if isinstance(texts, dict):
            return self._forward_padded(texts)
        rows = self._token_ids(check_texts(texts))
        if not rows:
            return torch.empty((0, self.dim), device=self.device)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        parts, placed = [], []
        for group in length_groups([len(rows[i]) for i in order]):
            members = [order[j] for j in group]
            parts.append(self._forward_padded(self._pad([rows[i] for i in members])))
            placed.extend(members)
        out = torch.cat(parts)
        inverse = torch.empty(len(placed), dtype=torch.long)
        inverse[torch.tensor(placed)] = torch.arange(len(placed))
        return out[inverse.to(out.device)]

    def _forward_padded(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.backbone(**batch, output_hidden_states=not self._has_last_hidden_state())
        hidden = out.last_hidden_state if self._has_last_hidden_state() else out.hidden_states[-1]
        pooled = pool(
            hidden, batch["attention_mask"], self.pooling, batch["input_ids"], self.emb_token_id
        ).float()
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def _has_last_hidden_state(self) -> bool:
        # Base encoders return last_hidden_state; *ForCausalLM models only hidden_states.
        return not type(self.backbone).__name__.endswith("ForCausalLM")

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        show_progress: bool = False,
    ) -> np.ndarray:
        """float32 numpy embeddings ``[len(texts), dim]``, batched in length order."""
        texts = check_texts(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        was_training = self.training
        self.eval()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        bar = progress_bar(len(texts), show_progress, "encode")
        try:
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                out[rows] = self.forward([texts[i] for i in rows]).cpu().numpy()
                if bar is not None:
                    bar.update(len(rows))
        finally:
            self.train(was_training)
            if bar is not None:
                bar.close()
        return out

    def save_pretrained(self, path: str) -> None:
        """Write backbone, tokenizer and pooling settings to `path`.

        Written to a temporary sibling first and swapped in, so a failed save leaves
        any previous model at `path` intact.
        """
        path = os.path.abspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self.backbone.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
                json.dump(
                    {
                        "pooling": self.pooling,
                        "max_length": self.max_length,
                        "normalize": self.normalize,
                    },
                    f,
                    indent=2,
                )
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = f"{path}.old{os.getpid()}"
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
