"""Images (pillow) and videos (decord) for evidence: load, crop boxes, sample frames.

Needs the ``media`` extra (``pip install "evidex[media]"``). Missing or corrupt files raise
FileNotFoundError / ValueError naming the file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..evidence import Box

__all__ = ["Video", "crop_box", "draw_boxes", "load_image"]


def _pil():
    try:
        from PIL import Image, ImageOps
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("evidex.media needs pillow: pip install 'evidex[media]'") from e
    return Image, ImageOps


def load_image(source: Any) -> Any:
    """An RGB PIL image from a path, bytes, a PIL image or a ``uint8`` array ``[H, W, 3]``
    / ``[H, W]``, with its EXIF orientation applied."""
    Image, ImageOps = _pil()
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or not (
            source.ndim == 2 or (source.ndim == 3 and source.shape[2] in (1, 3, 4))
        ):
            raise ValueError(
                f"an image array must be uint8 [H, W], [H, W, 3] or [H, W, 4], "
                f"got {source.dtype} {source.shape}"
            )
        if min(source.shape[:2]) == 0:
            raise ValueError(f"image array {source.shape} has no pixels")
        a = source[:, :, 0] if source.ndim == 3 and source.shape[2] == 1 else source
        return Image.fromarray(np.ascontiguousarray(a)).convert("RGB")
    if isinstance(source, Image.Image):
        image = source
        name = "<PIL image>"
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name = f"<{len(source)} bytes>"
        try:
            image = Image.open(io.BytesIO(bytes(source)))
            image.load()
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot decode image {name}: {e}") from e
    elif isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if not os.path.exists(name):
            raise FileNotFoundError(f"no image file at {name!r}")
        try:
            image = Image.open(name)
            image.load()
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot decode image {name!r}: {e}") from e
    else:
        raise TypeError(
            f"load_image takes a path, bytes, PIL image or uint8 array, got {type(source).__name__}"
        )
    image = ImageOps.exif_transpose(image)
    return image.convert("RGB") if image.mode != "RGB" else image


def _pixel_box(image: Any, box: Box | Sequence[float], scale: str) -> tuple[int, int, int, int]:
    w, h = image.size
    b = box if isinstance(box, Box) else Box("image", tuple(float(c) for c in box), scale)  # type: ignore[arg-type]
    x1, y1, x2, y2 = b.to_pixels(w, h)
    x1, x2 = sorted((min(max(x1, 0), w), min(max(x2, 0), w)))
    y1, y2 = sorted((min(max(y1, 0), h), min(max(y2, 0), h)))
    return round(x1), round(y1), round(x2), round(y2)


def crop_box(image: Any, box: Box | Sequence[float], scale: str = "pixel") -> Any:
    """The region of `box` (an evidence Box, or xyxy in `scale` units), clipped to the image.

    Raises ValueError when nothing of the box lies inside the image.
    """
    image = load_image(image)
    x1, y1, x2, y2 = _pixel_box(image, box, scale)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box {box} covers no pixel of the {image.size[0]}x{image.size[1]} image")
    return image.crop((x1, y1, x2, y2))


def draw_boxes(
    image: Any,
    boxes: Sequence[Box | Sequence[float]],
    labels: Sequence[str] | None = None,
    scale: str = "pixel",
    color: str = "red",
    width: int = 3,
) -> Any:
    """A copy of the image with the boxes (and optional labels) drawn, for inspection."""
    from PIL import ImageDraw

    out = load_image(image).copy()
    draw = ImageDraw.Draw(out)
    for i, box in enumerate(boxes):
        x1, y1, x2, y2 = _pixel_box(out, box, scale)
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        if labels is not None and i < len(labels):
            draw.text((x1 + width, y1 + width), str(labels[i]), fill=color)
    return out


class Video:
    """A video file read with decord: frame count, fps, duration, frames by index,
    uniform or fixed-rate sampling, index <-> time, and the codec's key frames."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"no video file at {self.path!r}")
        try:
            import decord
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError(
                "evidex.media.Video needs decord: pip install 'evidex[media]'"
            ) from e
        try:
            self._reader = decord.VideoReader(self.path, ctx=decord.cpu(0))
        except Exception as e:  # noqa: BLE001 - decord raises its own DECORDError types
            raise ValueError(f"cannot decode video {self.path!r}: {e}") from e
        if len(self._reader) == 0:
            raise ValueError(f"video {self.path!r} has no frames")

    def __len__(self) -> int:
        return len(self._reader)

    @property
    def frame_count(self) -> int:
        return len(self._reader)

    @property
    def fps(self) -> float:
        return float(self._reader.get_avg_fps())

    @property
    def duration(self) -> float:
        """Seconds, to the end of the last frame."""
        return float(self._reader.get_frame_timestamp(len(self) - 1)[1])

    def _check(self, indices: Sequence[int]) -> list[int]:
        out = [int(i) for i in indices]
        bad = [i for i in out if not 0 <= i < len(self)]
        if bad:
            raise IndexError(f"frames {bad[:5]} are outside the video ({len(self)} frames)")
        return out

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        """RGB frames [n, H, W, 3] (uint8) at the given indices."""
        idx = self._check(indices)
        if not idx:
            return np.empty((0, *self._reader[0].shape), dtype=np.uint8)
        return self._reader.get_batch(idx).asnumpy()

    def sample_uniform(self, n: int) -> np.ndarray:
        """n frame indices spread evenly (centres of n equal segments)."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        n = min(n, len(self))
        return ((np.arange(n) + 0.5) * len(self) / n).astype(np.int64)

    def sample_fps(self, fps: float) -> np.ndarray:
        """Frame indices at `fps` frames per second of video time."""
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        times = np.arange(0.0, self.duration, 1.0 / fps)
        return np.unique([self.time_to_index(t) for t in times])

    def index_to_time(self, index: int) -> float:
        """Start time (seconds) of frame `index`."""
        (i,) = self._check([index])
        return float(self._reader.get_frame_timestamp(i)[0])

    def time_to_index(self, seconds: float) -> int:
        """The frame showing at `seconds` (clamped to the video)."""
        starts = self._reader.get_frame_timestamp(range(len(self)))[:, 0]
        return int(np.clip(np.searchsorted(starts, seconds, side="right") - 1, 0, len(self) - 1))

    def key_frames(self) -> np.ndarray:
        """Indices of the codec's key frames (I-frames)."""
        return np.asarray(self._reader.get_key_indices(), dtype=np.int64)
