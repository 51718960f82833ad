"""RAR: classification, prompt routing, caps, a tiny random VLM, the ablation CLI."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from evidex.examples.rar_ablation import load_pairs, main, make_generator
from evidex.train.generation import ImageTextGenerator
from evidex.train.rar import (
    Item,
    RAREnhancer,
    cap_words,
    classify_entry,
    classify_query,
)

RED = Image.new("RGB", (40, 30), (200, 10, 10))


def test_classification() -> None:
    assert classify_entry(Item("a bike")) == "text"
    assert classify_entry(Item(None, RED)) == "image"
    assert classify_entry(Item("a bike", RED)) == "image+text"
    assert classify_query(Item("red bikes")) == "text"
    assert classify_query(Item("  ", RED)) == "image"
    assert classify_query(Item("What animal is this?", RED)) == "qa"
    assert classify_query(Item("the building shown here", RED)) == "qa"
    assert classify_query(Item("same dress but in blue", RED)) == "modification"
    assert classify_query(Item("make it longer and without sleeves", RED)) == "modification"
    assert classify_query(Item("red bikes", RED, kind="modification")) == "modification"
    with pytest.raises(ValueError, match="neither|needs text"):
        classify_query(Item())
    with pytest.raises(ValueError, match="unknown corpus entry kind"):
        classify_entry(Item("x", kind="video"))


def test_cap_words() -> None:
    text = " ".join(f"w{i}" for i in range(300)) + "\n\nsecond paragraph"
    assert cap_words(text, 100).split() == [f"w{i}" for i in range(100)]
    assert cap_words("short\ntext", 50) == "short text"


class _Recorder:
    """Records what RAR sends and answers with an over-long caption."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def generate(self, prompt, images=None):
        self.seen.append((prompt, images))
        return " ".join(["word"] * 300)


def test_routing_images_and_caps() -> None:
    gen = _Recorder()
    rar = RAREnhancer(gen)
    corpus = rar.enhance_corpus([Item("plain text"), Item(None, RED), Item("a bike", RED)])
    assert corpus[0] == "plain text"
    assert len(corpus[1].split()) == 100
    assert (
        corpus[2].startswith("a bike\nVisual Context: ") and len(corpus[2].split()) == 2 + 2 + 100
    )
    assert all(images == [RED] for _, images in gen.seen)
    gen.seen.clear()
    queries = rar.enhance_queries(
        [
            Item("red bikes"),
            Item(None, RED),
            Item("What animal is this?", RED),
            Item("same one but in blue", RED),
        ]
    )
    assert queries[0] == "red bikes"
    assert all(len(q.split()) == 50 for q in queries[1:])
    (cap_p, cap_i), (qa_p, qa_i), (mod_p, mod_i) = gen.seen
    assert "under 50 words" in cap_p and cap_i == [RED]
    assert "What animal is this?" in qa_p and qa_i == [RED]  # QA sees the image
    assert "same one but in blue" in mod_p and mod_i is None  # modification never does


def test_tiny_vlm_generator_caches_on_disk(tiny_vlm_dir, tmp_path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    cache = str(tmp_path / "gen.jsonl")
    gen = ImageTextGenerator(model, processor, "tiny", max_new_tokens=4, cache=cache)
    blue = Image.new("RGB", (30, 40), (10, 10, 200))
    first = gen.generate_batch(["Describe:", "Describe:"], [[RED], [blue]])
    assert gen.calls == 1 and all(isinstance(t, str) for t in first)
    again = ImageTextGenerator(model, processor, "tiny", max_new_tokens=4, cache=cache)
    assert again.generate_batch(["Describe:", "Describe:"], [[RED], [blue]]) == first
    assert again.calls == 0
    caption = RAREnhancer(again, corpus_words=3).enhance_corpus([Item(None, RED)])[0]
    assert again.calls == 1 and 0 < len(caption.split()) <= 3


def test_ablation_cli_runs_the_four_configurations(
    tiny_vlm_dir, tiny_model_dir, tmp_path, capsys
) -> None:
    colours = {"red": (200, 10, 10), "blue": (10, 10, 200), "green": (10, 200, 10)}
    rows = []
    for i in range(12):
        name = list(colours)[i % 3]
        Image.new("RGB", (32, 32), colours[name]).save(tmp_path / f"{i}.png")
        rows.append(
            {"query": f"the {name} mat", "target": f"a {name} cat", "target_image": f"{i}.png"}
        )
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    assert len(load_pairs(str(data))) == 12
    assert (
        main(
            [
                "--data",
                str(data),
                "--generator",
                f"image-text:{tiny_vlm_dir}",
                "--embedder",
                tiny_model_dir,
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out.strip().splitlines()
    assert [r.split("|")[1].strip() for r in table[2:]] == ["none", "corpus", "query", "both"]
    assert (tmp_path / "pairs.generations.jsonl").exists()  # captions cached once
    with pytest.raises(ValueError, match="unknown generator"):
        make_generator("clip:/x", str(tmp_path / "c.jsonl"))
    data.write_text('{"query": null, "target": "x"}\n')
    with pytest.raises(ValueError, match="pairs.jsonl:1: the query has neither"):
        load_pairs(str(data))


def test_easy_vqa_labels_and_pairs(tmp_path) -> None:
    from evidex.examples.rar import COLOURS, SHAPES, easy_vqa_labels, write_pairs

    labels = easy_vqa_labels("test")
    assert len(labels) > 500
    assert all(c in COLOURS and s in SHAPES for c, s in labels.values())
    path = tmp_path / "pairs.jsonl"
    write_pairs(str(path), 40)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 40
    assert all(os.path.isfile(r["target_image"]) for r in rows)
    assert sum("query" in r for r in rows) >= 20 and sum("query_image" in r for r in rows) >= 1
    for r in rows:
        if "query" in r:
            assert r["query"] == "a " + r["label"]
    pairs = load_pairs(str(path))
    assert pairs[0][0].label == pairs[0][1].label == rows[0]["label"]


def test_captioner_trains_saves_and_serves_as_a_generator(tmp_path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from evidex.examples.rar import caption_accuracy, train_captioner

    loss = train_captioner(str(tmp_path / "cap"), steps=2, batch_size=4, lr=1e-3)
    assert loss > 0
    model = AutoModelForImageTextToText.from_pretrained(str(tmp_path / "cap"))
    processor = AutoProcessor.from_pretrained(str(tmp_path / "cap"))
    gen = ImageTextGenerator(model, processor, "cap", max_new_tokens=4, batch_size=4)
    assert 0.0 <= caption_accuracy(gen, n=4) <= 1.0
    assert gen.calls == 1
