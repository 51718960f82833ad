"""What a multimodal embedder reads: text, images, videos, or several of them interleaved.

A plain ``str`` is always text (never a file name: wrap a path in `ImageItem` or
`VideoItem`). A PIL image, a ``uint8`` array ``[H, W, 3]`` / ``[H, W]`` or ``bytes`` is an
image; an `evidex.media.Video` is a video; a list or tuple of items is an `Interleaved`
item (a query's text and image plus the crops and key frames of its evidence).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .io import Video, load_image

__all__ = ["ImageItem", "Interleaved", "VideoItem", "as_item", "item_key", "item_kind"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")


@dataclass(frozen=True, eq=False)
class ImageItem:
    """An image: a path, encoded bytes, a PIL image or a ``uint8`` array."""

    source: Any

    def load(self) -> Any:
        """The RGB PIL image (ValueError / FileNotFoundError naming what is wrong)."""
        return load_image(self.source)


@dataclass(frozen=True, eq=False)
class VideoItem:
    """A video (a path or an open `evidex.media.Video`), or its frames ``[start, end)``,
    seen through `frames` frames sampled uniformly; an embedder pools their embeddings
    (`evidex.media.embedders.keyframe_embedding` picks query-aware key frames instead)."""

    source: Any
    frames: int = 8
    start: int = 0
    end: int | None = None

    def __post_init__(self) -> None:
        for name in ("frames", "start", "end"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, (int, np.integer)):
                raise TypeError(f"VideoItem.{name} must be an integer, got {v!r}")
        if self.frames < 1:
            raise ValueError(f"VideoItem.frames must be positive, got {self.frames}")
        if self.start < 0 or (self.end is not None and self.end <= self.start):
            raise ValueError(f"VideoItem needs 0 <= start < end, got [{self.start}, {self.end})")

    def open(self) -> Video:
        return self.source if isinstance(self.source, Video) else Video(self.source)

    def frame_indices(self, video: Video | None = None, n: int | None = None) -> np.ndarray:
        """`n` (default `frames`) frame indices spread evenly over ``[start, end)``."""
        video = video or self.open()
        end = len(video) if self.end is None else self.end
        if end > len(video) or self.start >= end:
            raise ValueError(
                f"frames [{self.start}, {end}) are outside {video.path!r} ({len(video)} frames)"
            )
        count = end - self.start
        n = min(int(n or self.frames), count)
        return self.start + ((np.arange(n) + 0.5) * count / n).astype(np.int64)

    def sample(self, n: int | None = None) -> np.ndarray:
        """``uint8 [n, H, W, 3]``: `n` (default `frames`) frames sampled uniformly."""
        video = self.open()
        return video.frames(self.frame_indices(video, n))


@dataclass(frozen=True, eq=False)
class Interleaved:
    """Several items read as one (text, images, crops, frames, videos), with optional
    per-part weights. Dual encoders average the parts' normalised embeddings (weighted);
    a vision-language embedder reads them in order as one sequence."""

    parts: tuple[Any, ...]
    weights: tuple[float, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        parts = tuple(as_item(p) for p in self.parts)
        if not parts:
            raise ValueError("an Interleaved item needs at least one part")
        if any(isinstance(p, Interleaved) for p in parts):
            raise ValueError("Interleaved items cannot nest")
        object.__setattr__(self, "parts", parts)
        if self.weights is not None:
            w = tuple(float(x) for x in self.weights)
            if len(w) != len(parts) or not all(np.isfinite(w)) or min(w) < 0 or sum(w) <= 0:
                raise ValueError(
                    f"Interleaved weights must be {len(parts)} non-negative finite numbers "
                    f"with a positive sum, got {self.weights!r}"
                )
            object.__setattr__(self, "weights", w)


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ModuleNotFoundError:
        return False
    return isinstance(x, Image.Image)


def as_item(x: Any) -> Any:
    """`x` as one of str, `ImageItem`, `VideoItem`, `Interleaved` (TypeError otherwise)."""
    if isinstance(x, (str, ImageItem, VideoItem, Interleaved)):
        return x
    if isinstance(x, Video):
        return VideoItem(x)
    if isinstance(x, (bytes, bytearray, memoryview, np.ndarray)) or _is_pil(x):
        return ImageItem(x)
    if isinstance(x, os.PathLike):
        suffix = os.fspath(x).lower()
        if suffix.endswith(IMAGE_SUFFIXES):
            return ImageItem(x)
        if suffix.endswith(VIDEO_SUFFIXES):
            return VideoItem(x)
        raise ValueError(f"cannot tell whether {os.fspath(x)!r} is an image or a video: wrap it")
    if isinstance(x, (list, tuple)):
        return Interleaved(tuple(x))
    raise TypeError(
        f"cannot embed a {type(x).__name__}: give text (str), an image (path in ImageItem, "
        "bytes, PIL image, uint8 array), a video (VideoItem, evidex.media.Video) or a list of them"
    )


def item_kind(x: Any) -> str:
    """``"text"``, ``"image"``, ``"video"`` or ``"interleaved"``."""
    x = as_item(x)
    if isinstance(x, str):
        return "text"
    if isinstance(x, ImageItem):
        return "image"
    if isinstance(x, VideoItem):
        return "video"
    return "interleaved"


def _source_key(source: Any) -> str | None:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            st = os.stat(path)
        except OSError:
            return None  # unreadable: let loading raise its error
        # A file rewritten in place gets a new key (size and modification time).
        return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return hashlib.sha1(bytes(source)).hexdigest()
    if isinstance(source, np.ndarray):
        a = np.ascontiguousarray(source)
        return f"{a.dtype}{a.shape}" + hashlib.sha1(a.tobytes()).hexdigest()
    if _is_pil(source):
        return f"{source.mode}{source.size}" + hashlib.sha1(source.tobytes()).hexdigest()
    return None


def item_key(x: Any) -> tuple | None:
    """A cache key that changes whenever the item's content can, or None (not cached)."""
    x = as_item(x)
    if isinstance(x, str):
        return ("text", x)
    if isinstance(x, ImageItem):
        k = _source_key(x.source)
        return None if k is None else ("image", k)
    if isinstance(x, VideoItem):
        src = x.source.path if isinstance(x.source, Video) else x.source
        k = _source_key(src)
        return None if k is None else ("video", k, int(x.frames), int(x.start), x.end)
    keys = tuple(item_key(p) for p in x.parts)
    return None if any(k is None for k in keys) else ("interleaved", keys, x.weights)


def check_items(items: Sequence[Any]) -> list[Any]:
    """`items` as a list of items (a single str or item is refused: pass a list)."""
    if isinstance(items, (str, bytes, ImageItem, VideoItem, Interleaved, np.ndarray)) or _is_pil(
        items
    ):
        raise TypeError("encode takes a list of items, not a single item")
    return [as_item(x) for x in items]
