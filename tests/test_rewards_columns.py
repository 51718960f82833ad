"""Embed-RL's dataset columns in the forms TRL hands them over (after Arrow), the
dataset helper, and each reward component as a TRL reward function by itself."""

from __future__ import annotations

import datasets
import pytest
from test_rewards_embedrl import BagOfWordsEmbedder

from evidex.evidence import Box, Evidence, KeyFrame, render_evidence
from evidex.rewards import (
    AlignmentReward,
    EmbedRLReward,
    FormatReward,
    OutcomeReward,
    alignment_reward,
    format_reward,
)
from evidex.rewards.columns import (
    embedrl_dataset,
    frame_counts_of,
    image_sizes_of,
    reference_boxes_of,
    reference_segments_of,
)

WITH_BOX = render_evidence(
    Evidence(
        "the photo shows a red car at a crossing",
        ["red car"],
        [Box("query", (100, 100, 500, 400), "grid1000")],
        [KeyFrame("target", 12)],
    )
)
TEXT_ONLY = render_evidence(Evidence("an old house", ["old house"]))


def _arrow(columns: dict) -> dict:
    """The columns as TRL passes them: through a datasets.Dataset (Arrow) and back."""
    return datasets.Dataset.from_dict(columns)[:]


PYTHON_FORMS = {
    "query": ["red car", "old house"],
    "target": ["a red car at a crossing", "an old house"],
    "image_sizes": [{"query": (640, 480)}, {"photo": (100, 50), "scan": (20, 20)}],
    "frame_counts": [{"target": 300}, None],
    "reference_boxes": [
        [Box("query", (100, 100, 500, 400), "grid1000")],
        None,
    ],
    "reference_segments": [{"target": [(0, 30)]}, {"clip": [(5, 9)]}],
}


def test_arrow_round_trip_fills_missing_keys_with_none_and_the_readers_undo_it() -> None:
    raw = {**PYTHON_FORMS}
    raw["reference_boxes"] = [
        [{"image": "query", "bbox_2d": [100, 100, 500, 400]}],  # keys differ between rows
        [{"image": "photo", "bbox": [0, 0, 10, 10], "scale": "pixel"}],
    ]
    back = _arrow(raw)
    assert back["image_sizes"][0] == {"query": [640, 480], "photo": None, "scan": None}
    assert back["reference_boxes"][0][0]["scale"] is None
    assert image_sizes_of(back["image_sizes"][0]) == {"query": (640, 480)}
    assert image_sizes_of(back["image_sizes"][1]) == {"photo": (100, 50), "scan": (20, 20)}
    assert frame_counts_of(back["frame_counts"][0]) == {"target": 300}
    assert frame_counts_of(back["frame_counts"][1]) is None
    assert reference_boxes_of(back["reference_boxes"][0]) == [
        Box("query", (100.0, 100.0, 500.0, 400.0), "grid1000")
    ]
    assert reference_boxes_of(back["reference_boxes"][1]) == [
        Box("photo", (0.0, 0.0, 10.0, 10.0), "pixel")
    ]
    assert reference_segments_of(back["reference_segments"][0]) == {"target": [(0.0, 30.0)]}
    assert reference_segments_of(back["reference_segments"][1]) == {"clip": [(5.0, 9.0)]}


def test_rewards_give_the_same_scores_for_every_form() -> None:
    completions = [WITH_BOX, TEXT_ONLY]
    prompts = ["p1", "p2"]
    reward = EmbedRLReward(BagOfWordsEmbedder())
    direct = reward(prompts, completions, **PYTHON_FORMS)
    via_arrow = reward(prompts, completions, **_arrow({**PYTHON_FORMS, "reference_boxes": [
        [{"image": "query", "bbox": [100, 100, 500, 400], "scale": "grid1000"}], None,
    ]}))  # fmt: skip
    assert via_arrow == pytest.approx(direct)
    records = embedrl_dataset(**PYTHON_FORMS)
    assert reward(prompts, completions, **records[:]) == pytest.approx(direct)
    # The box agreed with its reference: the alignment saw an IoU of 1.
    assert reward.last.alignment[0] > 0.5 and reward.last.format[0] == 1.0


def test_embedrl_dataset_checks_rows_and_survives_arrow(tmp_path) -> None:
    data = embedrl_dataset(**PYTHON_FORMS, candidates=[["x", "y"], None], target_id=[3, 4])
    assert data.column_names[:3] == ["query", "target", "prompt"]
    assert "Query: red car" in data[0]["prompt"] and "bbox_2d" in data[0]["prompt"]
    assert data[0]["image_sizes"] == [{"image": "query", "width": 640, "height": 480}]
    assert data[1]["reference_boxes"] is None
    data.save_to_disk(str(tmp_path / "ds"))
    again = datasets.load_from_disk(str(tmp_path / "ds"))
    assert image_sizes_of(again[1]["image_sizes"]) == {"photo": (100, 50), "scan": (20, 20)}
    bad = [
        ({"image_sizes": [{"query": (0, 480)}, None]}, r"image_sizes\[0\]: width"),
        ({"image_sizes": [{"query": (640,)}, None]}, r"image_sizes\[0\]"),
        ({"frame_counts": [{"v": -1}, None]}, r"frame_counts\[0\]: frames"),
        ({"reference_boxes": [[[1, 2, 3]], None]}, r"reference_boxes\[0\]: a box needs"),
        ({"reference_boxes": [[{"bbox": [0, 0, 1, 1], "scale": "inch"}], None]}, "unknown scale"),
        ({"reference_boxes": [[[0, 0, float("nan"), 1]], None]}, "finite"),
        ({"reference_segments": [{"v": [(9, 3)]}, None]}, "ends before it starts"),
        ({"reference_segments": [[{"video": "v", "start": 1}], None]}, "end must be"),
        ({"target_id": [1.5, 2]}, r"target_id\[0\]"),
        ({"candidates": [["a"]]}, "candidates has 1 rows for 2"),
    ]
    for extra, message in bad:
        with pytest.raises(ValueError, match=message):
            embedrl_dataset(["a", "b"], ["c", "d"], **extra)


def test_each_component_is_a_trl_reward_function_by_itself() -> None:
    prompts, completions = ["p1", "p2"], [WITH_BOX, [{"role": "assistant", "content": TEXT_ONLY}]]
    columns = _arrow(embedrl_dataset(**PYTHON_FORMS)[:])
    fmt = FormatReward()
    assert fmt.__name__ == "embed_rl_format"
    # The format reward needs no embedder and no target column.
    alone = fmt(prompts, completions, image_sizes=columns["image_sizes"])
    scores = fmt(prompts, completions, **columns)
    expected = format_reward(
        [Evidence("an old house", ["old house"])], [[]], [{"photo": (100, 50), "scan": (20, 20)}]
    )
    assert alone[1] == scores[1] == expected[0] == 0.75  # no box for an example with images
    assert scores[0] == 1.0 and 0 < scores[1] <= 1.0
    embedder = BagOfWordsEmbedder()
    ali = AlignmentReward()
    assert ali(prompts, completions, **columns) == pytest.approx(
        alignment_reward(
            [
                Evidence(
                    "the photo shows a red car at a crossing",
                    ["red car"],
                    [Box("query", (100, 100, 500, 400), "grid1000")],
                    [KeyFrame("target", 12)],
                ),
                Evidence("an old house", ["old house"]),
            ],
            columns["target"],
            columns["reference_boxes"],
            columns["image_sizes"],
            columns["reference_segments"],
        )
    )
    out = OutcomeReward(embedder)
    calls = embedder.calls
    assert len(out(prompts, completions, **columns)) == 2 and embedder.calls == calls + 2
    combined = EmbedRLReward(embedder)
    assert combined.component("outcome") is combined.outcome
    calls = embedder.calls
    combined.component("format")(prompts, completions, **columns)
    assert embedder.calls == calls  # the format component ran alone
    with pytest.raises(ValueError, match="needs the dataset column 'target'"):
        AlignmentReward()(prompts, completions)
    with pytest.raises(ValueError, match="needs the dataset column 'query'"):
        OutcomeReward(embedder)(prompts, completions, target=["a", "b"])
    with pytest.raises(TypeError, match="text or a list of messages"):
        fmt(prompts, [1, 2])
    with pytest.raises(TypeError, match="got bytes"):  # not decoded: not an empty completion
        fmt(prompts, [b"<think>a</think>", "b"])
    # A conversation is read as parse_evidence reads it: its last assistant message
    # (evidence in an earlier user turn is not the reasoner's).
    user = {"role": "user", "content": '<evidence>{"keywords": []}</evidence>'}
    chat = [user, {"role": "assistant", "content": TEXT_ONLY}]
    assert fmt(prompts, [WITH_BOX, chat], **columns) == scores
