"""Traceability chain of thought (Embed-RL): typed evidence, a tolerant parser, a renderer.

The format a reasoner is asked to write::

    <think>why the query matches the target ...</think>
    <evidence>{"keywords": ["red car", "crosswalk"],
               "boxes": [{"image": "query", "bbox_2d": [120, 40, 610, 380], "scale": "grid1000"}],
               "key_frames": [{"video": "target", "frame": 212, "time": 8.48}]}</evidence>
    <answer>optional short answer</answer>

Boxes are xyxy in one of three scales: ``"normalized"`` ([0, 1]), ``"grid1000"`` (the 0-1000
integer grid of Qwen-VL style models and Embed-RL's code) or ``"pixel"``. `parse_evidence` never
raises on model output: it returns what it could read plus a list of problems (which the format
reward counts). `render_evidence` writes the same format back, so parse(render(e)) == e.
"""

from __future__ import annotations

import ast
import json
import math
import re
import reprlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Scale = Literal["normalized", "grid1000", "pixel"]
SCALES: tuple[str, ...] = ("normalized", "grid1000", "pixel")

__all__ = [
    "DEFAULT_SHOTS",
    "INSTRUCTION",
    "VISUAL_SHOTS",
    "Box",
    "Evidence",
    "KeyFrame",
    "ParseResult",
    "parse_evidence",
    "reasoner_prompt",
    "render_evidence",
    "unusable_crops",
]


@dataclass(frozen=True)
class Box:
    """A region of an image: xyxy coordinates in `scale` units."""

    image: str
    xyxy: tuple[float, float, float, float]
    scale: Scale = "grid1000"

    def to_pixels(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The box in pixels of a ``width x height`` image."""
        x1, y1, x2, y2 = self.xyxy
        if self.scale == "pixel":
            return (x1, y1, x2, y2)
        unit = 1.0 if self.scale == "normalized" else 1000.0
        return (x1 / unit * width, y1 / unit * height, x2 / unit * width, y2 / unit * height)

    def to_normalized(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The box as fractions of the image's width and height."""
        x1, y1, x2, y2 = self.to_pixels(width, height)
        return (x1 / width, y1 / height, x2 / width, y2 / height)


@dataclass(frozen=True)
class KeyFrame:
    """A frame of a video, by index and/or timestamp (seconds)."""

    video: str
    frame: int | None = None
    time: float | None = None


@dataclass
class Evidence:
    reasoning: str = ""
    keywords: list[str] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    key_frames: list[KeyFrame] = field(default_factory=list)
    answer: str | None = None


@dataclass
class ParseResult:
    evidence: Evidence
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# ----------------------------------------------------------------- parsing
_TAG = r"<{0}>(.*?)(?:</{0}>|$)"
MAX_CHARS = 100_000  # of a completion read; a reasoner's output is far shorter
MAX_ITEMS = 256  # keywords, boxes and key frames each
MAX_PROBLEMS = 20
_LITERAL_CHARS = 20_000  # Python-literal fallback only below this (its parser is costly)
_short = reprlib.Repr()
_short.maxlevel, _short.maxstring, _short.maxother, _short.maxlist, _short.maxdict = 2, 40, 40, 4, 4


def _tagged(text: str, tag: str, problems: list[str]) -> str | None:
    m = re.search(_TAG.format(tag), text, re.S | re.I)
    if m is None:
        return None
    if not re.search(rf"</{tag}>", text, re.I):
        problems.append(f"<{tag}> is not closed")
    body = m.group(1)
    # An unclosed tag runs to the next tag of the format, not the end of the text.
    if not re.search(rf"</{tag}>", text, re.I):
        body = re.split(r"<(?:think|evidence|answer)>", body, maxsplit=1, flags=re.I)[0]
    return body.strip()


def _loads_lenient(raw: str, problems: list[str]) -> Any:
    """JSON as small models write it: code fences, single quotes, trailing commas,
    Python literals, surrounding prose."""
    s = raw.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)(?:```|$)", s, re.S)
    if fence:
        s = fence.group(1).strip()
    start = s.find("{")
    if start > 0:
        s = s[start:]
    if start < 0:
        problems.append("evidence holds no JSON object")
        return None
    end = s.rfind("}")
    candidates = [s, s[: end + 1]] if end >= 0 else [s]
    for c in candidates:
        try:
            return json.loads(c)
        except (ValueError, RecursionError):
            pass
    for c in candidates:
        fixed = re.sub(r",\s*([}\]])", r"\1", c)
        try:
            return json.loads(fixed)
        except (ValueError, RecursionError):
            pass
        if len(fixed) > _LITERAL_CHARS:
            continue
        py = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", fixed))
        py = re.sub(r"\bnull\b", "None", py)
        try:
            with warnings.catch_warnings():  # escapes that Python would warn about
                warnings.simplefilter("ignore")
                value = ast.literal_eval(py)
            problems.append("evidence is not strict JSON (Python literal syntax)")
            return value
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            pass
    problems.append("evidence is not valid JSON")
    return None


def _number(v: Any) -> float | None:
    """A finite float, or None (also for integers beyond float's range)."""
    if isinstance(v, bool):
        return None
    try:
        if isinstance(v, (int, float)):
            f = float(v)
        elif isinstance(v, str) and len(v) <= 64:
            f = float(v.strip())
        else:
            return None
    except (ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def _infer_scale(xyxy: tuple[float, ...], default: Scale) -> Scale:
    if all(0.0 <= c <= 1.0 for c in xyxy) and any(c != int(c) for c in xyxy):
        return "normalized"
    if default != "pixel" and all(0.0 <= c <= 1000.0 for c in xyxy):
        return default
    return "pixel"


def _parse_box(item: Any, default_image: str, default_scale: Scale, problems: list[str]):
    image, scale, coords = default_image, None, None
    if isinstance(item, dict):
        image = str(item.get("image", item.get("source", default_image)))
        scale = item.get("scale")
        for key in ("bbox_2d", "bbox", "box", "xyxy", "coordinates"):
            if key in item:
                coords = item[key]
                break
        if coords is None and all(k in item for k in ("x1", "y1", "x2", "y2")):
            coords = [item["x1"], item["y1"], item["x2"], item["y2"]]
    elif isinstance(item, (list, tuple)):
        coords = item
    if not isinstance(coords, (list, tuple)) or len(coords) != 4:
        problems.append(f"box {_short.repr(item)} has no four coordinates")
        return None
    xyxy = tuple(_number(c) for c in coords)
    if any(c is None for c in xyxy):
        problems.append(f"box {_short.repr(item)} has a non-numeric coordinate")
        return None
    if scale is not None and scale not in SCALES:
        problems.append(f"box scale {scale!r} is not one of {SCALES}")
        scale = None
    return Box(image, xyxy, scale or _infer_scale(xyxy, default_scale))  # type: ignore[arg-type]


def _parse_frame(item: Any, default_video: str, problems: list[str]) -> KeyFrame | None:
    if isinstance(item, bool):
        problems.append(f"key frame {item!r} is not a frame")
        return None
    if isinstance(item, int):
        if 0 <= item < 2**63:
            return KeyFrame(default_video, frame=item)
        problems.append(f"key frame {_short.repr(item)} is out of range")
        return None
    if isinstance(item, float):
        return KeyFrame(default_video, time=item) if math.isfinite(item) and item >= 0 else None
    if isinstance(item, dict):
        video = str(item.get("video", item.get("source", default_video)))
        frame = _number(item.get("frame", item.get("index", item.get("frame_index"))))
        time = _number(item.get("time", item.get("timestamp", item.get("seconds"))))
        if frame is None and time is None:
            problems.append(f"key frame {_short.repr(item)} has neither a frame nor a time")
            return None
        if (frame is not None and (frame < 0 or frame >= 2**63 or frame != int(frame))) or (
            time is not None and time < 0
        ):
            problems.append(f"key frame {_short.repr(item)} is out of range")
            return None
        return KeyFrame(video, None if frame is None else int(frame), time)
    problems.append(f"key frame {_short.repr(item)} is not a number or an object")
    return None


def _as_list(v: Any, name: str, problems: list[str]) -> list:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        if len(v) > MAX_ITEMS:
            problems.append(f"{name}: {len(v)} items, only the first {MAX_ITEMS} were read")
        return list(v[:MAX_ITEMS])
    problems.append(f"{name} should be a list")
    return [v]


def parse_evidence(
    text: Any,
    default_image: str = "query",
    default_video: str = "query",
    default_scale: Scale = "grid1000",
    max_chars: int = MAX_CHARS,
) -> ParseResult:
    """Read a reasoner's output; never raises. Missing or malformed parts become problems.

    Accepts a string or a chat completion (a list of ``{"role", "content"}`` messages, whose
    last assistant content is read). Bounded for any input: only the first `max_chars`
    characters are read, at most 256 keywords, boxes and key frames each, and at most
    20 problems are listed; the work is linear in what is read.
    """
    problems: list[str] = []
    try:
        result = _parse(text, default_image, default_video, default_scale, max_chars, problems)
    except Exception as e:  # noqa: BLE001 - the promise: model output never raises
        result = ParseResult(Evidence(), problems + [f"unreadable completion ({type(e).__name__})"])
    if len(result.problems) > MAX_PROBLEMS:
        more = len(result.problems) - MAX_PROBLEMS
        result.problems = result.problems[:MAX_PROBLEMS] + [f"... and {more} more problems"]
    return result


def _parse(
    text: Any,
    default_image: str,
    default_video: str,
    default_scale: Scale,
    max_chars: int,
    problems: list[str],
) -> ParseResult:
    try:
        text = _completion_text(text)
    except (TypeError, ValueError) as e:
        return ParseResult(Evidence(), [str(e)])
    if len(text) > max_chars:
        problems.append(f"completion has {len(text)} characters; the first {max_chars} were read")
        text = text[:max_chars]
    ev = Evidence()
    think = _tagged(text, "think", problems)
    if think is None:
        problems.append("no <think> reasoning")
    else:
        ev.reasoning = think
    answer = _tagged(text, "answer", problems)
    raw = _tagged(text, "evidence", problems)
    if raw is None:
        problems.append("no <evidence> block")
        # Small models often drop the tag but keep the JSON.
        rest = re.sub(_TAG.format("think"), "", text, flags=re.S | re.I)
        raw = rest if "{" in rest else None
    data = _loads_lenient(raw, problems) if raw is not None else None
    if data is not None and not isinstance(data, dict):
        problems.append("evidence is not a JSON object")
        data = None
    data = data or {}
    keywords = data.get("keywords", data.get("keyword"))
    if isinstance(keywords, str):
        keywords = [k.strip() for k in keywords.split(",") if k.strip()]
    for kw in _as_list(keywords, "keywords", problems):
        if isinstance(kw, str) and kw.strip():
            ev.keywords.append(kw.strip())
        else:
            problems.append(f"keyword {_short.repr(kw)} is not a non-empty string")
    boxes = data.get("boxes", data.get("bboxes", data.get("bbox_2d")))
    if (
        isinstance(boxes, (list, tuple))
        and len(boxes) == 4
        and all(_number(b) is not None for b in boxes)
    ):
        boxes = [boxes]  # one bare box
    for item in _as_list(boxes, "boxes", problems):
        box = _parse_box(item, default_image, default_scale, problems)
        if box is not None:
            ev.boxes.append(box)
    frames = data.get("key_frames", data.get("keyframes", data.get("frames")))
    for item in _as_list(frames, "key_frames", problems):
        kf = _parse_frame(item, default_video, problems)
        if kf is not None:
            ev.key_frames.append(kf)
    if answer is None and isinstance(data.get("answer"), (str, int, float)):
        answer = str(data["answer"])[:max_chars]
    ev.answer = answer
    return ParseResult(ev, problems)


def _completion_text(completion: Any) -> str:
    """The text of a completion: a string, or TRL's conversational form (read
    without recursion, so no nesting depth can exhaust the stack)."""
    for _ in range(16):
        if isinstance(completion, str):
            return completion
        if isinstance(completion, dict) and "content" in completion:
            completion = completion["content"]
            continue
        if isinstance(completion, (list, tuple)):
            for message in reversed(completion):
                if isinstance(message, dict) and message.get("role", "assistant") == "assistant":
                    content = message.get("content", "")
                    if isinstance(content, list):  # multimodal content parts
                        return "".join(
                            p.get("text", "")
                            for p in content
                            if isinstance(p, dict) and isinstance(p.get("text", ""), str)
                        )
                    if isinstance(content, str):
                        return content
                    completion = content
                    break
            else:
                raise ValueError("the completion holds no assistant message")
            continue
        raise TypeError(
            f"a completion must be a string or chat messages, got {type(completion).__name__}"
        )
    raise ValueError("the completion is nested too deeply")


# ----------------------------------------------------------------- rendering
def render_evidence(ev: Evidence) -> str:
    """The tagged format, as the parser reads it (for prompts and few-shot examples)."""
    data: dict[str, Any] = {"keywords": list(ev.keywords)}
    data["boxes"] = [
        {"image": b.image, "bbox_2d": [_plain(c) for c in b.xyxy], "scale": b.scale}
        for b in ev.boxes
    ]
    frames = []
    for kf in ev.key_frames:
        item: dict[str, Any] = {"video": kf.video}
        if kf.frame is not None:
            item["frame"] = kf.frame
        if kf.time is not None:
            item["time"] = kf.time
        frames.append(item)
    data["key_frames"] = frames
    out = f"<think>{ev.reasoning}</think>\n<evidence>{json.dumps(data)}</evidence>"
    if ev.answer is not None:
        out += f"\n<answer>{ev.answer}</answer>"
    return out


def _plain(c: float) -> float | int:
    return int(c) if float(c).is_integer() else c


# ----------------------------------------------------------------- checks
def unusable_crops(
    ev: Evidence,
    image_sizes: dict[str, tuple[int, int]],
    min_side: float = 10.0,
    max_aspect: float = 50.0,
) -> list[str]:
    """Problems of boxes whose crop is useless (Embed-RL drops crops under 10 px or
    with aspect ratio over 50): one message per such box; unknown images are reported."""
    problems = []
    for box in ev.boxes:
        if box.image not in image_sizes:
            problems.append(f"box refers to unknown image {box.image!r}")
            continue
        w, h = image_sizes[box.image]
        x1, y1, x2, y2 = box.to_pixels(w, h)
        bw, bh = x2 - x1, y2 - y1
        if bw < min_side or bh < min_side:
            problems.append(f"box {box.xyxy} on {box.image!r} is under {min_side:g} px")
        elif max(bw / bh, bh / bw) > max_aspect:
            problems.append(f"box {box.xyxy} on {box.image!r} has aspect ratio over {max_aspect:g}")
    return problems


# ----------------------------------------------------------------- the reasoner's prompt
INSTRUCTION = "Explain what a good match for the query must contain, then list evidence.\n\n"

# Worked examples shown before the query. Two, on different topics, so a small base
# model learns the pattern (evidence taken from its own query) instead of copying
# one example's keywords verbatim, which is what a single example invites.
DEFAULT_SHOTS: tuple[tuple[str, Evidence], ...] = (
    (
        "data compression library",
        Evidence(
            reasoning="It needs a library that compresses files; a match explains the "
            "compression format and the API.",
            keywords=["compression", "library", "zlib format"],
        ),
    ),
    (
        "interactive process monitor",
        Evidence(
            reasoning="It needs a terminal tool to monitor processes; a match describes an "
            "interactive process viewer.",
            keywords=["process viewer", "terminal", "monitoring"],
        ),
    ),
)

# For image and video queries: the same format with boxes and key frames.
VISUAL_SHOTS: tuple[tuple[str, Evidence], ...] = (
    (
        "a red car at a crossing",
        Evidence(
            reasoning="The query asks for a red car at a crossing.",
            keywords=["red car", "crossing"],
            boxes=[Box("query", (120, 40, 610, 380), "grid1000")],
            key_frames=[KeyFrame("query", 12)],
        ),
    ),
)


def reasoner_prompt(query: str, shots: Sequence[tuple[str, Evidence]] = DEFAULT_SHOTS) -> str:
    """The prompt that asks the reasoner for a traceability chain of thought: the
    instruction, worked examples (query, evidence) in the tagged format, the query."""
    parts = [INSTRUCTION]
    for example_query, evidence in shots:
        parts.append(f"Query: {example_query}\n{render_evidence(evidence)}\n\n")
    parts.append(f"Query: {query}\n")
    return "".join(parts)
