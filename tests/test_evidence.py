"""The traceability-CoT parser: tolerant of real small-model output, never raising, round trip."""

from __future__ import annotations

import random

import pytest

from evidex.evidence import (
    Box,
    Evidence,
    KeyFrame,
    ParseResult,
    parse_evidence,
    render_evidence,
    unusable_crops,
)

FULL = Evidence(
    reasoning="The query mentions a red car at a crossing; the target shows one.",
    keywords=["red car", "crosswalk"],
    boxes=[
        Box("query", (120, 40, 610, 380), "grid1000"),
        Box("target", (0.1, 0.2, 0.5, 0.9), "normalized"),
    ],
    key_frames=[KeyFrame("target", 212, 8.48), KeyFrame("query", frame=3)],
    answer="yes",
)


def test_round_trip() -> None:
    text = render_evidence(FULL)
    result = parse_evidence(text)
    assert result.ok, result.problems
    assert result.evidence == FULL
    assert parse_evidence(render_evidence(Evidence())).evidence == Evidence()


@pytest.mark.parametrize(
    "text",
    [
        # code fence, single quotes, trailing commas
        "<think>ok</think><evidence>```json\n"
        "{'keywords': ['a', 'b',], 'boxes': [[1, 2, 30, 40],],}\n```</evidence>",
        # prose around the JSON, Python literals
        '<think>ok</think><evidence>Here you go: {"keywords": ["a", "b"], '
        '"boxes": [{"bbox": [1, 2, 30, 40]}], "flag": true}</evidence>',
        # no evidence tag at all
        '<think>ok</think> {"keywords": "a, b", "boxes": [{"x1": 1, "y1": 2, "x2": 30, "y2": 40}]}',
    ],
)
def test_tolerant_forms(text: str) -> None:
    result = parse_evidence(text)
    assert result.evidence.keywords == ["a", "b"]
    assert result.evidence.boxes == [Box("query", (1, 2, 30, 40), "grid1000")]
    assert result.evidence.reasoning == "ok"


def test_problems_are_reported_not_raised() -> None:
    r = parse_evidence("no tags at all")
    assert not r.ok and "no <think> reasoning" in r.problems and "no <evidence> block" in r.problems
    r = parse_evidence(
        '<think>x</think><evidence>{"boxes": [[1, 2, 3]], "keywords": [3, ""], '
        '"key_frames": [-1, {"video": "q"}, true]}</evidence>'
    )
    assert r.evidence.boxes == [] and r.evidence.keywords == [] and r.evidence.key_frames == []
    assert any("four coordinates" in p for p in r.problems)
    assert any("keyword" in p for p in r.problems)
    assert any("neither a frame nor a time" in p for p in r.problems)
    r = parse_evidence('<think>unclosed reasoning <evidence>{"keywords": ["k"]}')
    assert r.evidence.reasoning == "unclosed reasoning" and r.evidence.keywords == ["k"]
    assert "<think> is not closed" in r.problems and "<evidence> is not closed" in r.problems


def test_scales_are_inferred_or_taken() -> None:
    r = parse_evidence(
        '<think></think><evidence>{"boxes": [[0.1, 0.2, 0.4, 0.5], [10, 20, 1500, 900],'
        ' {"bbox_2d": [1, 2, 3, 4], "scale": "pixel"}]}</evidence>'
    )
    assert [b.scale for b in r.evidence.boxes] == ["normalized", "pixel", "pixel"]
    box = Box("query", (100, 200, 500, 1000), "grid1000")
    assert box.to_pixels(640, 480) == pytest.approx((64, 96, 320, 480))
    assert box.to_normalized(640, 480) == pytest.approx((0.1, 0.2, 0.5, 1.0))


def test_chat_messages_as_trl_passes_them() -> None:
    msgs = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": render_evidence(FULL)},
    ]
    assert parse_evidence(msgs).evidence == FULL
    parts = [{"role": "assistant", "content": [{"type": "text", "text": render_evidence(FULL)}]}]
    assert parse_evidence(parts).evidence == FULL
    assert not parse_evidence([{"role": "user", "content": "q"}]).ok
    assert not parse_evidence(12345).ok


def test_unusable_crops() -> None:
    ev = Evidence(
        boxes=[
            Box("query", (0, 0, 5, 100), "pixel"),  # too thin
            Box("query", (0, 0, 600, 11), "pixel"),  # aspect ratio 54.5
            Box("query", (100, 100, 400, 300), "grid1000"),  # fine: 192 x 96 px
            Box("other", (0, 0, 1, 1), "normalized"),
        ]
    )
    problems = unusable_crops(ev, {"query": (640, 480)})
    assert len(problems) == 3
    assert (
        "under 10 px" in problems[0] and "aspect ratio" in problems[1] and "unknown" in problems[2]
    )


def test_fuzz_never_raises() -> None:
    """Every truncation of a valid output, and random mutations of it, parse without raising."""
    text = render_evidence(FULL)
    for cut in range(len(text) + 1):
        result = parse_evidence(text[:cut])
        assert isinstance(result.evidence, Evidence)
    rng = random.Random(0)
    alphabet = "{}[]<>/\"',:0123456789.-e tnrufalsNTF\\`"
    for _ in range(3000):
        chars = list(text)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(chars))
            op = rng.random()
            if op < 0.4:
                chars[pos] = rng.choice(alphabet)
            elif op < 0.7:
                del chars[pos]
            else:
                chars.insert(pos, rng.choice(alphabet))
        result = parse_evidence("".join(chars))
        assert isinstance(result.problems, list)
    for _ in range(500):
        junk = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 200)))
        parse_evidence(junk)
        parse_evidence("<think>" + junk + "</think><evidence>" + junk + "</evidence>")


# ------------------------------------------------------------------ hostile output
def _deep_chat(depth: int) -> dict:
    d: dict = {"content": "<think>x</think>"}
    for _ in range(depth):
        d = {"content": d}
    return d


@pytest.mark.parametrize(
    "completion",
    [
        '<think>x</think><evidence>{"boxes": [[' + "9" * 400 + ", 1, 2, 3]]}</evidence>",
        '<evidence>{"key_frames": [' + "9" * 400 + ', {"frame": 1e400}]}</evidence>',
        '<evidence>{"boxes": [[' + "9" * 5000 + ", 1, 2, 3]]}</evidence>",
        _deep_chat(100_000),
        [{"role": "assistant", "content": _deep_chat(100_000)}],
        "<evidence>{'boxes': [" + ",".join(["[1, 2, 3, 4]"] * 350_000) + "]}</evidence>",
        "<evidence>{'k': [" + "1," * 10_000_000 + "]}",
        '<evidence>{"boxes": ' + "[" * 100_000 + "]" * 100_000 + "}</evidence>",
        "<think>" * 200_000,
        '<evidence>{"boxes": [' + ",".join(['{"bbox_2d": [1, 2, "x", 4]}'] * 5000) + "]}",
        [{"role": "assistant", "content": [{"text": 5}, {"text": "<think>a</think>"}]}],
        {"content": 12},
    ],
    ids=[
        "int-400-digits", "frame-overflow", "int-5000-digits", "deep-chat", "deep-message",
        "4mb-literal", "20mb-literal", "nested-json", "unclosed-tags", "5000-bad-boxes",
        "odd-parts", "not-text",
    ],
)  # fmt: skip
def test_hostile_output_is_bounded_and_never_raises(completion) -> None:
    result = parse_evidence(completion)
    assert isinstance(result, ParseResult)
    assert len(result.problems) <= 21  # at most 20, then one "... and N more"
    assert all(len(p) < 400 for p in result.problems)
    assert len(result.evidence.boxes) <= 256 and len(result.evidence.key_frames) <= 256


def test_only_the_first_max_chars_are_read() -> None:
    text = "<think>" + "a" * 200 + "</think><evidence>{}</evidence>"
    result = parse_evidence(text, max_chars=100)
    assert "the first 100 were read" in result.problems[0]
    assert result.evidence.reasoning == "a" * 93
