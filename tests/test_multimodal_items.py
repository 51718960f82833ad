"""evidex.media's items (what multimodal embedders read) and image arrays (numpy + pillow)."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

pytest.importorskip("PIL")

from PIL import Image  # noqa: E402

from evidex.media import ImageItem, Interleaved, VideoItem, as_item, item_kind, load_image  # noqa: E402
from evidex.media.items import check_items, item_key  # noqa: E402


def test_a_string_is_always_text_never_a_file(tmp_path):
    path = tmp_path / "cat.png"
    Image.new("RGB", (4, 4)).save(path)
    assert item_kind(str(path)) == "text"  # wrap paths: a caption may look like a name
    assert item_kind(ImageItem(str(path))) == "image"
    assert item_kind(pathlib.Path(path)) == "image"  # a Path is unambiguous
    assert item_kind(tmp_path / "clip.MP4") == "video"
    with pytest.raises(ValueError, match="image or a video"):
        as_item(tmp_path / "notes.txt")


def test_kinds_of_every_accepted_form():
    a = np.zeros((5, 6, 3), np.uint8)
    assert item_kind(a) == "image"
    assert item_kind(b"\x89PNG") == "image"
    assert item_kind(Image.new("RGB", (2, 2))) == "image"
    assert item_kind(["a caption", a]) == "interleaved"
    with pytest.raises(TypeError, match="cannot embed a dict"):
        as_item({"image": "x.png"})
    with pytest.raises(TypeError, match="cannot embed a int"):
        as_item(3)


def test_interleaved_checks_its_parts_and_weights():
    a = np.zeros((5, 6, 3), np.uint8)
    item = Interleaved(("text", a), (0.5, 1))
    assert isinstance(item.parts[1], ImageItem) and item.weights == (0.5, 1.0)
    with pytest.raises(ValueError, match="at least one part"):
        Interleaved(())
    with pytest.raises(ValueError, match="cannot nest"):
        Interleaved(("a", Interleaved(("b",))))
    for bad in [(1.0,), (1.0, -1.0), (0.0, 0.0), (float("nan"), 1.0)]:
        with pytest.raises(ValueError, match="weights"):
            Interleaved(("text", a), bad)


def test_video_item_checks_its_numbers():
    for kwargs, error in [
        ({"frames": 0}, ValueError),
        ({"frames": 2.5}, TypeError),
        ({"start": -1}, ValueError),
        ({"start": 5, "end": 5}, ValueError),
    ]:
        with pytest.raises(error):
            VideoItem("clip.mp4", **kwargs)


def test_check_items_wants_a_list():
    for single in ["text", np.zeros((2, 2, 3), np.uint8), ImageItem("x.png")]:
        with pytest.raises(TypeError, match="list of items"):
            check_items(single)
    assert check_items(["a", "b"]) == ["a", "b"]


def test_cache_keys_follow_the_content(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(path)
    first = item_key(ImageItem(str(path)))
    assert first == item_key(ImageItem(path))  # same file, either spelling
    Image.new("RGB", (5, 4), (0, 255, 0)).save(path)  # rewritten in place
    os.utime(path, ns=(10**18, 10**18))
    assert item_key(ImageItem(str(path))) != first
    a = np.zeros((3, 3, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 1
    assert item_key(a) == item_key(a.copy()) != item_key(b)
    assert item_key(ImageItem(str(tmp_path / "missing.png"))) is None  # not cached; load raises
    assert item_key(["t", a]) == item_key(["t", a.copy()]) != item_key(["u", a])


def test_load_image_takes_uint8_arrays_and_refuses_others():
    assert load_image(np.full((3, 5), 7, np.uint8)).size == (5, 3)
    assert load_image(np.zeros((3, 5, 4), np.uint8)).mode == "RGB"
    assert load_image(np.zeros((3, 5, 1), np.uint8)).size == (5, 3)
    for bad in [
        np.zeros((3, 5, 3), np.float32),
        np.zeros((3, 5, 2), np.uint8),
        np.zeros((0, 5, 3), np.uint8),
    ]:
        with pytest.raises(ValueError, match="image array|no pixels"):
            load_image(bad)
    with pytest.raises(FileNotFoundError):
        ImageItem("/nonexistent/x.png").load()
