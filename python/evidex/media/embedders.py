"""Multimodal embedders: one protocol, ``encode(items) -> float32 [n, d]`` (rows
L2-normalised), for text, images, videos and interleaved items (`evidex.media.items`).

Backends:

- `DualEncoder` / `DualEncoderEmbedder`: evidex's own image tower + text tower + projection
  heads (EfficientNet-Lite0 and all-MiniLM-L6-v2 by default, `evidex.examples.clip` trains
  one), saved and loaded as a directory.
- `TransformersDualEncoder`: any transformers model with ``get_text_features`` and
  ``get_image_features`` (CLIP, SigLIP, ...) from a local directory.
- `VLMEmbedder`: a vision-language model (``AutoModelForImageTextToText``) read through its
  chat template; the embedding is the last token's (or the last ``<emb>`` token's) final
  hidden state, as Embed-RL's and RGE's embedders take it.

A text is embedded by the text tower, an image by the image tower, a video as the mean of
its sampled frames' embeddings, and an interleaved item, by a dual encoder, as the
normalised (weighted) mean of its parts' embeddings; a VLM reads an interleaved item as one
sequence. Since a ``str`` is text, every embedder here is also a text embedder
(`evidex.embedders.TextEmbedder`) and plugs into the Embed-RL rewards as it is.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._files import atomic_directory, read_versioned_json
from .._progress import progress_bar
from .items import ImageItem, Interleaved, VideoItem, check_items, item_key

__all__ = [
    "DualEncoder",
    "DualEncoderEmbedder",
    "ItemEmbedder",
    "MultimodalEmbedder",
    "TransformersDualEncoder",
    "VLMEmbedder",
    "frame_embeddings",
    "keyframe_embedding",
]


@runtime_checkable
class MultimodalEmbedder(Protocol):
    """What evidex needs of a multimodal embedder (``accepts_items = True`` tells the
    Embed-RL rewards they may pass media items)."""

    dim: int
    accepts_items: bool

    def encode(self, items: Sequence[Any]) -> np.ndarray:
        """float32 ``[len(items), dim]``, rows L2-normalised."""
        ...


def _normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


class ItemEmbedder:
    """Batching, caching and progress around a backend's ``_encode_texts`` and
    ``_encode_images`` (a dual encoder) or ``_encode_items`` (a model reading whole items).

    Args:
        batch_size: texts or images per forward pass.
        cache_size: items whose embeddings are kept (by content: a file's path, size and
            modification time; a hash of bytes, arrays and PIL images); 0 disables.
    """

    dim: int
    accepts_items = True  # reads media items, not only texts (the Embed-RL rewards check)

    def __init__(self, batch_size: int = 32, cache_size: int = 10_000) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()  # encode may be called from many threads

    # ---- what a backend provides ---------------------------------------------------------
    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def _encode_images(self, images: list[Any]) -> np.ndarray:
        raise NotImplementedError

    def _encode_items(self, items: list[Any]) -> np.ndarray:
        """Embeddings of a batch of items (not yet normalised). Default: the dual-encoder
        composition of text and image embeddings."""
        texts: list[str] = []
        images: list[Any] = []
        plans: list[list[tuple[str, int, float]]] = []  # per item: (kind, leaf, weight)

        def leaves(item: Any, weight: float) -> list[tuple[str, int, float]]:
            if isinstance(item, str):
                texts.append(item)
                return [("text", len(texts) - 1, weight)]
            if isinstance(item, ImageItem):
                images.append(item.load())
                return [("image", len(images) - 1, weight)]
            if isinstance(item, VideoItem):
                frames = item.sample()
                start = len(images)
                images.extend(frames)
                return [("image", start + i, weight / len(frames)) for i in range(len(frames))]
            raise TypeError(f"cannot embed {type(item).__name__}")

        for item in items:
            if isinstance(item, Interleaved):
                w = item.weights or (1.0,) * len(item.parts)
                # Each part counts by its weight, whatever its number of frames.
                plan = []
                for part, weight in zip(item.parts, w):
                    plan.extend(leaves(part, weight))
                plans.append(plan)
            else:
                plans.append(leaves(item, 1.0))
        bs = self.batch_size
        t = [self._encode_texts(texts[i : i + bs]) for i in range(0, len(texts), bs)]
        v = [self._encode_images(images[i : i + bs]) for i in range(0, len(images), bs)]
        text_emb = _normalize(np.concatenate(t)) if t else None
        image_emb = _normalize(np.concatenate(v)) if v else None
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        for row, plan in enumerate(plans):
            for kind, leaf, weight in plan:
                source = text_emb if kind == "text" else image_emb
                assert source is not None
                out[row] += weight * source[leaf]
        return out

    # ---- the protocol --------------------------------------------------------------------
    def encode(
        self, items: Sequence[Any], batch_size: int | None = None, show_progress: bool = False
    ) -> np.ndarray:
        """float32 ``[len(items), dim]``, rows L2-normalised; repeated items (and items seen
        before, up to `cache_size`) are embedded once."""
        items = check_items(items)
        keys = [item_key(x) for x in items]
        out = np.empty((len(items), self.dim), dtype=np.float32)
        todo: dict[Any, list[int]] = {}
        with self._cache_lock:
            for i, k in enumerate(keys):
                if k is not None and k in self._cache:
                    self._cache.move_to_end(k)
                    out[i] = self._cache[k]
                else:
                    todo.setdefault(k if k is not None else ("uncached", i), []).append(i)
        groups = list(todo.values())
        bs = batch_size or self.batch_size
        bar = progress_bar(len(groups), show_progress, "encode", unit="item")
        for start in range(0, len(groups), bs):
            chunk = groups[start : start + bs]
            emb = self._encode_items([items[g[0]] for g in chunk])
            emb = np.asarray(emb, dtype=np.float32)
            if emb.shape != (len(chunk), self.dim) or not np.isfinite(emb).all():
                raise ValueError(
                    f"{type(self).__name__} produced {emb.shape} embeddings "
                    f"(finite: {bool(np.isfinite(emb).all())}) for {len(chunk)} items"
                )
            emb = _normalize(emb)
            with self._cache_lock:
                for g, e in zip(chunk, emb):
                    out[g] = e
                    if self.cache_size and keys[g[0]] is not None:
                        self._cache[keys[g[0]]] = e
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return out

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """Embeddings ``[T, dim]`` of video frames ``uint8 [T, H, W, 3]``."""
        return self.encode([ImageItem(f) for f in np.asarray(frames)])


# ------------------------------------------------------------------------- video
def frame_embeddings(
    embedder: Any, video: Any, n: int = 32, start: int = 0, end: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(indices [T], embeddings [T, dim])`` of `n` frames sampled uniformly from
    `video` (a path, `evidex.media.Video` or `VideoItem`) between `start` and `end`."""
    item = video if isinstance(video, VideoItem) else VideoItem(video, n, start, end)
    v = item.open()
    idx = item.frame_indices(v, n)
    return idx, embedder.encode([ImageItem(f) for f in v.frames(idx)])


def keyframe_embedding(
    frames: np.ndarray, query: np.ndarray, k: int = 4, min_gap: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """A video's embedding for one query: the normalised mean of its `k` key frames, the
    frames most similar to `query` (`evidex.ops.frame_scores`), at least `min_gap`
    samples apart (`evidex.ops.select_keyframes`). Returns ``(embedding [dim], chosen
    positions)``; uniform pooling is ``frames.mean(0)``, normalised."""
    from ..ops import frame_scores, select_keyframes

    f = np.asarray(frames, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32).reshape(1, -1)
    scores = frame_scores(f, q)[0]
    chosen = select_keyframes(scores, min(k, f.shape[0]), min_gap)
    return _normalize(f[chosen].mean(0)), chosen


# ------------------------------------------------------------------------- dual encoder
DUAL_CONFIG = "evidex_dual_encoder.json"
DUAL_WEIGHTS = "dual_encoder.safetensors"
_TOWERS = ("efficientnet-lite0",)


def _image_tower(name: str) -> nn.Module:
    if name == "efficientnet-lite0":
        from .efficientnet import EfficientNetLite0

        return EfficientNetLite0()
    raise ValueError(f"unknown image tower {name!r}; known: {_TOWERS}")


class DualEncoder(nn.Module):
    """A CLIP-style dual encoder: an image tower and an `evidex.embedding_model.Embedder`
    text tower, each followed by a linear projection to a shared `dim`.

    ``model(items)`` embeds a list of texts and images (``ImageItem``, PIL, uint8 arrays)
    with gradients, so `evidex.train.ContrastiveTrainer` trains it on (image, caption)
    examples like any text embedder.

    Args:
        image_tower: a module with ``features(x [B, 3, H, W]) -> [B, F]`` and ``feature_dim``
            (`EfficientNetLite0`), or with ``forward_features`` giving a ``[B, F, h, w]`` map.
        text_model: the text tower.
        dim: the shared embedding size.
        image_size: images are resized (bilinear, antialiased) to this square size.
        mean: per-channel input mean (of 0-1 pixels).
        std: per-channel input scale.
        grid: the image tower's final feature map is average-pooled over a ``grid x grid``
            layout (1: global pooling), keeping where things are.
        tower_name: recorded in the saved config, to rebuild the tower on load.
    """

    def __init__(
        self,
        image_tower: nn.Module,
        text_model: nn.Module,
        dim: int = 256,
        image_size: int = 128,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        grid: int = 1,
        tower_name: str = "efficientnet-lite0",
    ) -> None:
        super().__init__()
        for name, v in (("dim", dim), ("image_size", image_size), ("grid", grid)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.image_tower = image_tower
        self.text_model = text_model
        self.dim = dim
        self.image_size = image_size
        self.grid = grid
        self.tower_name = tower_name
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        feature_dim = int(image_tower.feature_dim) * grid * grid
        self.image_proj = nn.Linear(feature_dim, dim)
        self.text_proj = nn.Linear(int(text_model.dim), dim)

    def train(self, mode: bool = True) -> DualEncoder:
        """Training mode, except the image tower's batch norms, which keep their
        statistics: fine-tuning batches are too small to re-estimate them."""
        super().train(mode)
        for m in self.image_tower.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def probe_items(self) -> list[Any]:
        """Inputs reaching every parameter (what DDP set-up probes with)."""
        return ["probe", ImageItem(np.zeros((32, 32, 3), dtype=np.uint8))]

    @classmethod
    def efficientnet_minilm(
        cls, dim: int = 256, image_size: int = 128, grid: int = 1
    ) -> DualEncoder:
        """EfficientNet-Lite0 (ImageNet weights) and all-MiniLM-L6-v2, both from the
        offline packages, with fresh projection heads."""
        from ..embedders import minilm_path
        from ..embedding_model import Embedder
        from .efficientnet import MEAN, STD, EfficientNetLite0

        text = Embedder.from_pretrained(minilm_path(), pooling="mean", max_length=64)
        tower = EfficientNetLite0.pretrained()
        return cls(tower, text, dim, image_size, MEAN, STD, grid, "efficientnet-lite0")

    # ---- embedding -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.mean.device

    def pixels(self, images: Sequence[Any]) -> torch.Tensor:
        """Normalised ``[B, 3, S, S]`` pixels of images (any form `ImageItem` reads),
        resized by pillow (antialiased bilinear, on uint8: cheap for any input size)."""
        from PIL import Image

        size = (self.image_size, self.image_size)
        rows = []
        for im in images:
            pil = im.load() if isinstance(im, ImageItem) else ImageItem(im).load()
            rows.append(np.asarray(pil.resize(size, Image.BILINEAR), dtype=np.uint8))
        x = torch.from_numpy(np.stack(rows)).permute(0, 3, 1, 2).to(self.device, torch.float32)
        return (x / 255.0 - self.mean) / self.std

    def _tower_features(self, x: torch.Tensor) -> torch.Tensor:
        tower = self.image_tower
        if self.grid == 1 and hasattr(tower, "features"):
            return tower.features(x)
        fmap = tower.feature_map(x) if hasattr(tower, "feature_map") else tower.forward_features(x)
        return F.adaptive_avg_pool2d(fmap, self.grid).flatten(1)

    def embed_images(self, images: Sequence[Any] | torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings ``[B, dim]`` (with gradients)."""
        x = images if isinstance(images, torch.Tensor) else self.pixels(images)
        return F.normalize(self.image_proj(self._tower_features(x)), dim=-1)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised text embeddings ``[B, dim]`` (with gradients)."""
        return F.normalize(self.text_proj(self.text_model(list(texts))), dim=-1)

    def forward(self, items: Sequence[Any]) -> torch.Tensor:
        """Embeddings ``[n, dim]`` of texts and images, in their order."""
        items = check_items(items)
        out: list[torch.Tensor | None] = [None] * len(items)
        text_rows = [i for i, x in enumerate(items) if isinstance(x, str)]
        image_rows = [i for i, x in enumerate(items) if isinstance(x, ImageItem)]
        if len(text_rows) + len(image_rows) != len(items):
            raise TypeError("DualEncoder.forward takes texts and images; use encode for videos")
        if text_rows:
            for i, e in zip(text_rows, self.embed_texts([items[i] for i in text_rows])):
                out[i] = e
        if image_rows:
            for i, e in zip(image_rows, self.embed_images([items[i] for i in image_rows])):
                out[i] = e
        return torch.stack(out)  # type: ignore[arg-type]

    # ---- files -------------------------------------------------------------------------
    def save_pretrained(self, path: str) -> None:
        """Write a directory `from_pretrained` reads: the config, the text tower (a
        transformers / sentence-transformers directory under ``text/``) and the image tower,
        heads and scale (safetensors). Written beside `path` and swapped in, so a failed
        save leaves a previous model intact."""
        from safetensors.torch import save_file

        with atomic_directory(path) as tmp:
            self.text_model.save_pretrained(os.path.join(tmp, "text"))
            state = {
                k: v.detach().contiguous().cpu()
                for k, v in self.state_dict().items()
                if not k.startswith("text_model.") and k not in ("mean", "std")
            }
            save_file(state, os.path.join(tmp, DUAL_WEIGHTS))
            config = {
                "format": "evidex-dual-encoder",
                "version": 1,
                "image_tower": self.tower_name,
                "dim": self.dim,
                "image_size": self.image_size,
                "grid": self.grid,
                "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist(),
            }
            with open(os.path.join(tmp, DUAL_CONFIG), "w", encoding="utf-8") as f:
                json.dump(config, f, indent=2)

    def _load_own_weights(self, path: str) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(os.path.join(path, DUAL_WEIGHTS))
        except (OSError, SafetensorError) as e:
            raise ValueError(f"cannot read {os.path.join(path, DUAL_WEIGHTS)}: {e}") from e
        for name, t in state.items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(f"{path}: weight {name} holds NaN or infinity")
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as e:  # a tensor of the wrong shape
            raise ValueError(f"{path}: weights do not fit the config: {e}") from e
        missing = [
            k
            for k in missing
            if not k.startswith("text_model.")
            and k not in ("mean", "std")
            and not k.endswith("num_batches_tracked")
        ]
        if missing or unexpected:
            raise ValueError(f"{path}: weights missing {missing[:3]}, unexpected {unexpected[:3]}")

    def load_weights(self, path: str) -> None:
        """Load the weights of a directory `save_pretrained` wrote into this model (the
        trainer's resume); ValueError when they do not fit."""
        from ..embedding_model import Embedder

        text = Embedder.from_pretrained(os.path.join(path, "text"))
        try:
            self.text_model.backbone.load_state_dict(text.backbone.state_dict())
        except RuntimeError as e:
            raise ValueError(f"{path}: text tower does not fit: {e}") from e
        self._load_own_weights(path)

    @classmethod
    def from_pretrained(cls, path: str, device: str | torch.device = "cpu") -> DualEncoder:
        """Load a directory written by `save_pretrained` (ValueError for a malformed one)."""
        from ..embedding_model import Embedder

        config_file = os.path.join(path, DUAL_CONFIG)
        config = read_versioned_json(config_file, "evidex-dual-encoder", 1, "evidex dual encoder")
        try:
            kwargs = {
                "dim": int(config["dim"]),
                "image_size": int(config["image_size"]),
                "grid": int(config.get("grid", 1)),
                "mean": [float(x) for x in config["mean"]],
                "std": [float(x) for x in config["std"]],
            }
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{config_file}: malformed field ({e})") from e
        if len(kwargs["mean"]) != 3 or len(kwargs["std"]) != 3 or min(kwargs["std"]) <= 0:
            raise ValueError(f"{config_file}: mean and std need 3 values, std positive")
        # Bounds before anything is allocated: a hostile config must not ask for terabytes.
        for name, top in (("dim", 65536), ("image_size", 4096), ("grid", 16)):
            if not 1 <= kwargs[name] <= top:
                raise ValueError(f"{config_file}: {name} must be in [1, {top}], got {kwargs[name]}")
        text = Embedder.from_pretrained(os.path.join(path, "text"))
        model = cls(
            _image_tower(str(config.get("image_tower"))),
            text,
            tower_name=str(config["image_tower"]),
            **kwargs,
        )
        model._load_own_weights(path)
        return model.to(device).eval()


class DualEncoderEmbedder(ItemEmbedder):
    """A `DualEncoder` behind the multimodal protocol (put in eval mode; run without
    gradients). Its cache assumes the model no longer changes: make a new embedder after
    training it further.

    Args:
        model: a `DualEncoder`, or the path of a saved one (loaded frozen).
    """

    def __init__(
        self,
        model: DualEncoder | str,
        batch_size: int = 32,
        cache_size: int = 10_000,
        device: str = "cpu",
    ) -> None:
        super().__init__(batch_size, cache_size)
        if isinstance(model, (str, os.PathLike)):
            model = DualEncoder.from_pretrained(os.fspath(model), device=device)
            model.requires_grad_(False)
        self.model = model.eval()  # inference_mode below: no gradients either way
        self.dim = model.dim

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return self.model.embed_texts(texts).float().cpu().numpy()

    def _encode_images(self, images: list[Any]) -> np.ndarray:
        with torch.inference_mode():
            return self.model.embed_images(images).float().cpu().numpy()


# ------------------------------------------------------------------------- transformers
def _features(out: Any) -> torch.Tensor:
    """transformers' get_*_features returns a tensor (v4) or an output object (v5)."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("pooler_output", "text_embeds", "image_embeds"):
        v = getattr(out, name, None)
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"cannot read features from {type(out).__name__}")


class TransformersDualEncoder(ItemEmbedder):
    """A transformers dual encoder (CLIP, SigLIP, or any model with ``get_text_features``
    and ``get_image_features``) and its processor, from a local directory (no hub access).

    SigLIP models get their text padded to ``max_length``, as they were trained.
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 32,
        cache_size: int = 10_000,
        device: str = "cpu",
        max_length: int | None = None,
    ) -> None:
        from transformers import AutoModel, AutoProcessor

        super().__init__(batch_size, cache_size)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no model directory at {path!r}")
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        for need in ("get_text_features", "get_image_features"):
            if not hasattr(self.model, need):
                raise ValueError(f"{type(self.model).__name__} at {path!r} has no {need}")
        self.model.requires_grad_(False)
        self.device = device
        config = self.model.config
        self.siglip = "siglip" in str(getattr(config, "model_type", "")).lower()
        text_config = getattr(config, "text_config", config)
        self.max_length = max_length or int(getattr(text_config, "max_position_embeddings", 77))
        probe = self._encode_texts(["probe"])
        self.dim = int(probe.shape[1])

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        tok = self.processor.tokenizer
        padding = "max_length" if self.siglip else True
        batch = tok(
            texts, padding=padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            return _features(self.model.get_text_features(**batch)).float().cpu().numpy()

    def _encode_images(self, images: list[Any]) -> np.ndarray:
        pils = [im.load() if isinstance(im, ImageItem) else ImageItem(im).load() for im in images]
        pixels = self.processor.image_processor(images=pils, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            out = self.model.get_image_features(pixel_values=pixels.to(self.device))
            return _features(out).float().cpu().numpy()


class VLMEmbedder(ItemEmbedder):
    """A vision-language model as an embedder: each item becomes one user turn of the
    model's chat template (its text, images, crops and frames in order; a video as
    `frames_per_video` frames), followed by ``<emb>`` with ``pooling="emb_token"``; the
    embedding is the final hidden state of the last token (``"last"``) or of the last
    ``<emb>`` token.

    Args:
        model: an ``AutoModelForImageTextToText`` (or a path to one), frozen here.
        processor: its processor (loaded from `model`'s path when it is one); it must have
            a chat template, or give `chat_template`.
        instruction: a system turn (e.g. "Represent the user's input."), if any.
    """

    def __init__(
        self,
        model: Any,
        processor: Any = None,
        pooling: str = "last",
        instruction: str | None = None,
        chat_template: str | None = None,
        frames_per_video: int = 4,
        batch_size: int = 8,
        cache_size: int = 10_000,
        device: str = "cpu",
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        super().__init__(batch_size, cache_size)
        if pooling not in ("last", "emb_token"):
            raise ValueError(f"VLMEmbedder pooling must be 'last' or 'emb_token', got {pooling!r}")
        if isinstance(model, (str, os.PathLike)):
            path = os.fspath(model)
            if not os.path.isdir(path):
                raise FileNotFoundError(f"no model directory at {path!r}")
            model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
            processor = processor or AutoProcessor.from_pretrained(path, local_files_only=True)
        if processor is None:
            raise ValueError("VLMEmbedder needs the model's processor")
        self.model = model.to(device).eval()
        self.model.requires_grad_(False)
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"  # the last token of every row is at the end
        self.chat_template = chat_template or getattr(processor, "chat_template", None)
        if not self.chat_template:
            raise ValueError("the processor has no chat template: give chat_template")
        self.pooling = pooling
        self.instruction = instruction
        self.frames_per_video = int(frames_per_video)
        self.device = device
        self.emb_token_id = None
        if pooling == "emb_token":
            from ..embedding_model import EMB_TOKEN

            if EMB_TOKEN not in self.tokenizer.get_vocab():
                raise ValueError(f"emb_token pooling needs {EMB_TOKEN} in the vocabulary")
            self.emb_token_id = self.tokenizer.convert_tokens_to_ids(EMB_TOKEN)
        config = self.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.dim = int(text_config.hidden_size)

    def _message(self, item: Any) -> tuple[str, list[Any]]:
        parts = item.parts if isinstance(item, Interleaved) else (item,)
        content: list[dict[str, Any]] = []
        images: list[Any] = []
        for part in parts:
            if isinstance(part, str):
                content.append({"type": "text", "text": part})
            elif isinstance(part, ImageItem):
                content.append({"type": "image"})
                images.append(part.load())
            elif isinstance(part, VideoItem):
                for frame in part.sample(min(self.frames_per_video, part.frames)):
                    content.append({"type": "image"})
                    images.append(ImageItem(frame).load())
        messages = []
        if self.instruction:
            messages.append(
                {"role": "system", "content": [{"type": "text", "text": self.instruction}]}
            )
        messages.append({"role": "user", "content": content})
        prompt = self.processor.apply_chat_template(
            messages, chat_template=self.chat_template, add_generation_prompt=False, tokenize=False
        )
        if self.pooling == "emb_token":
            from ..embedding_model import EMB_TOKEN

            prompt += EMB_TOKEN
        return prompt, images

    def _encode_items(self, items: list[Any]) -> np.ndarray:
        from ..embedding_model import pool

        prompts, images = [], []
        for item in items:
            p, ims = self._message(item)
            prompts.append(p)
            images.extend(ims)
        batch = self.processor(
            text=prompts, images=images or None, padding=True, return_tensors="pt"
        )
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            out = self.model(**batch, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        pooled = pool(
            hidden, batch["attention_mask"], self.pooling, batch["input_ids"], self.emb_token_id
        )
        return pooled.float().cpu().numpy()
