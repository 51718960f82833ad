"""Embed-RL's rewards from a frozen embedder: format, alignment and outcome.

Each takes parsed evidence (`evidex.evidence`) and the example's data, scores in [0, 1], and is
vectorised over a batch. `EmbedRLReward` combines them (weights 0.2 / 0.3 / 0.5 by default) and is
itself a TRL reward function: ``f(prompts, completions, **kwargs) -> list[float]``, where kwargs
are the dataset's columns (``query``, ``target``, and optionally ``candidates``, ``image_sizes``,
``frame_counts``, ``reference_boxes``, ``reference_segments``). ``None`` marks an example a
component does not apply to.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..evidence import Box, Evidence, parse_evidence
from .columns import (
    frame_counts_of,
    image_sizes_of,
    images_of,
    read_column,
    reference_boxes_of,
    reference_segments_of,
    videos_of,
)

__all__ = [
    "AlignmentReward",
    "EmbedRLReward",
    "FormatReward",
    "OutcomeReward",
    "alignment_reward",
    "evidence_item",
    "evidence_text",
    "format_reward",
    "outcome_reward",
    "outcome_reward_index",
]

_TOKEN = re.compile(r"[a-z0-9]+")


def _tokens(text: str) -> set[str]:
    return set(_TOKEN.findall(text.lower()))


def evidence_text(query: str, ev: Evidence) -> str:
    """The query enriched with its reasoning and keywords: what the frozen embedder reads."""
    parts = [query]
    if ev.reasoning:
        parts.append(ev.reasoning)
    if ev.keywords:
        parts.append("Keywords: " + ", ".join(ev.keywords))
    return "\n".join(parts)


def evidence_item(
    query: str,
    ev: Evidence,
    images: Mapping[str, Any] | None = None,
    videos: Mapping[str, str] | None = None,
    min_crop: float = 10.0,
    text_weight: float = 1.0,
) -> Any:
    """What a multimodal frozen embedder reads: the query's text with the evidence
    (`evidence_text`), the query's images, the crop of every evidence box on a known image,
    and the key frames of known videos, as one `evidex.media.Interleaved` item (the plain
    text when there are no images or videos). Crops under `min_crop` pixels a side are
    left out, as Embed-RL drops them; so are boxes and key frames naming unknown media or
    frames outside the video. `text_weight` weighs the text against each image, crop and
    frame where a dual encoder averages the parts (a VLM reads them all in one sequence
    and ignores weights)."""
    text = evidence_text(query, ev)
    if not images and not videos:
        return text
    from ..media import ImageItem, Interleaved, Video, crop_box, load_image

    parts: list[Any] = [text]
    loaded = {name: load_image(source) for name, source in (images or {}).items()}
    parts.extend(ImageItem(im) for im in loaded.values())
    for box in ev.boxes:
        image = loaded.get(box.image)
        if image is None:
            continue
        x1, y1, x2, y2 = box.to_pixels(*image.size)
        if min(x2, image.size[0]) - max(x1, 0) < min_crop:
            continue
        if min(y2, image.size[1]) - max(y1, 0) < min_crop:
            continue
        parts.append(ImageItem(crop_box(image, box)))
    opened: dict[str, Any] = {}
    for kf in ev.key_frames:
        path = (videos or {}).get(kf.video)
        if path is None:
            continue
        video = opened.get(kf.video) or opened.setdefault(kf.video, Video(path))
        index = kf.frame if kf.frame is not None else video.time_to_index(float(kf.time or 0))
        if 0 <= index < len(video):
            parts.append(ImageItem(video.frames([index])[0]))
    if len(parts) == 1:  # no usable image, crop or frame
        return text
    return Interleaved(tuple(parts), (float(text_weight),) + (1.0,) * (len(parts) - 1))


def _media(kwargs: Mapping[str, Any], kind: str) -> Any:
    """The ``query_images`` / ``query_videos`` column, else TRL's ``images`` / ``videos``
    (what a vision-language reasoner is shown)."""
    value = kwargs.get(f"query_{kind}")
    return kwargs.get(kind) if value is None else value


def _check_text_weight(w: Any) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
        raise ValueError(f"text_weight must be a non-negative finite number, got {w!r}")
    return float(w)


def _accepts_items(embedder: Any) -> bool:
    return bool(getattr(embedder, "accepts_items", False))


def _embedded_queries(
    embedder: Any,
    queries: Sequence[str],
    evidence: Sequence[Evidence],
    images: Sequence[Any] | None,
    videos: Sequence[Any] | None,
    text_weight: float = 1.0,
) -> np.ndarray:
    """The embedder's vectors of the evidence-enriched queries, with their media when the
    examples have ``images`` / ``videos`` columns."""
    n = len(queries)
    _check_lengths(n, images=images, videos=videos)
    images = read_column(images, images_of, "images")
    videos = read_column(videos, videos_of, "videos")
    if (images and any(images)) or (videos and any(videos)):
        if not _accepts_items(embedder):
            raise ValueError(
                "the query_images / query_videos columns need a multimodal embedder "
                "(encode(items), accepts_items = True, e.g. "
                "evidex.media.embedders.DualEncoderEmbedder)"
            )
        items = [
            evidence_item(
                q,
                ev,
                images[i] if images else None,
                videos[i] if videos else None,
                text_weight=text_weight,
            )
            for i, (q, ev) in enumerate(zip(queries, evidence))
        ]
        return embedder.encode(items)
    return embedder.encode([evidence_text(q, ev) for q, ev in zip(queries, evidence)])


# ----------------------------------------------------------------- format
def format_reward(
    evidence: Sequence[Evidence],
    problems: Sequence[Sequence[str]],
    image_sizes: Sequence[Any] | None = None,
    frame_counts: Sequence[Any] | None = None,
    keyword_range: tuple[int, int] = (1, 10),
    images: Sequence[Any] | None = None,
) -> list[float]:
    """Fraction of checks passed: reasoning present, no parser problems, keyword count in
    range, boxes inside their image with positive area (examples with images: sizes from
    `image_sizes`, else from `images`), key frames inside their video (examples with
    videos). Columns in any form `evidex.rewards.columns` reads."""
    n = len(evidence)
    _check_lengths(n, problems=problems, image_sizes=image_sizes, frame_counts=frame_counts)
    image_sizes = read_column(image_sizes, image_sizes_of, "image_sizes")
    if images is not None:
        image_sizes = _sizes_with_images(n, image_sizes, images)
    frame_counts = read_column(frame_counts, frame_counts_of, "frame_counts")
    lo, hi = keyword_range
    scores = []
    for i, ev in enumerate(evidence):
        checks = [bool(ev.reasoning), not problems[i], lo <= len(ev.keywords) <= hi]
        sizes = image_sizes[i] if image_sizes is not None else None
        if sizes:
            checks.append(bool(ev.boxes) and all(_box_inside(b, sizes) for b in ev.boxes))
        counts = frame_counts[i] if frame_counts is not None else None
        if counts:
            checks.append(
                bool(ev.key_frames)
                and all(
                    kf.video in counts and kf.frame is not None and 0 <= kf.frame < counts[kf.video]
                    for kf in ev.key_frames
                )
            )
        scores.append(sum(checks) / len(checks))
    return scores


def _box_inside(box: Box, sizes: dict[str, tuple[int, int]]) -> bool:
    if box.image not in sizes:
        return False
    w, h = sizes[box.image]
    x1, y1, x2, y2 = box.to_pixels(w, h)
    return 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h


# ----------------------------------------------------------------- alignment
def alignment_reward(
    evidence: Sequence[Evidence],
    targets: Sequence[str],
    reference_boxes: Sequence[Any] | None = None,
    image_sizes: Sequence[Any] | None = None,
    reference_segments: Sequence[Any] | None = None,
    queries: Sequence[str] | None = None,
    embedder: Any = None,
    images: Sequence[Any] | None = None,
    videos: Sequence[Any] | None = None,
    text_weight: float = 1.0,
) -> list[float]:
    """Mean of the components an example has: keyword overlap with the target text,
    best IoU of each box against the reference boxes of its image, the share of key frames
    inside a reference segment of their video, and (with an embedder and queries) the
    frozen embedder's cosine between query-with-evidence (with its images, crops and key
    frames, `evidence_item`, when `images` / `videos` are given) and target, mapped to
    [0, 1]. Images also give the sizes of images missing from `image_sizes`."""
    n = len(evidence)
    _check_lengths(
        n,
        targets=targets,
        reference_boxes=reference_boxes,
        image_sizes=image_sizes,
        reference_segments=reference_segments,
        queries=queries,
    )
    reference_boxes = read_column(reference_boxes, reference_boxes_of, "reference_boxes")
    image_sizes = read_column(image_sizes, image_sizes_of, "image_sizes")
    reference_segments = read_column(
        reference_segments, reference_segments_of, "reference_segments"
    )
    if images is not None:
        image_sizes = _sizes_with_images(n, image_sizes, images)
    cos = None
    if embedder is not None:
        if queries is None:
            raise ValueError("alignment_reward needs queries to use the embedder")
        a = _embedded_queries(embedder, queries, evidence, images, videos, text_weight)
        b = embedder.encode(list(targets))
        cos = np.sum(a * b, axis=1)
    box_scores = (
        _box_agreements(evidence, reference_boxes, image_sizes)
        if reference_boxes is not None
        else {}
    )
    scores = []
    for i, ev in enumerate(evidence):
        parts = []
        target_tokens = _tokens(targets[i])
        if ev.keywords:
            hits = [bool(_tokens(k)) and _tokens(k) <= target_tokens for k in ev.keywords]
            parts.append(sum(hits) / len(hits))
        else:
            parts.append(0.0)
        if i in box_scores:
            parts.append(box_scores[i])
        segs = reference_segments[i] if reference_segments is not None else None
        if segs:
            inside = [
                any(
                    s <= (kf.frame if kf.frame is not None else kf.time) <= e
                    for s, e in segs.get(kf.video, ())
                )
                for kf in ev.key_frames
            ]
            parts.append(sum(inside) / len(inside) if inside else 0.0)
        if cos is not None:
            parts.append(float((cos[i] + 1.0) / 2.0))
        scores.append(sum(parts) / len(parts))
    return scores


def _sizes_with_images(n: int, image_sizes: list[Any] | None, images: Sequence[Any]) -> list[Any]:
    """`image_sizes` with the sizes of the ``images`` column's images filled in."""
    from ..media import load_image

    _check_lengths(n, images=images)
    read = read_column(images, images_of, "images") or [None] * n
    out = list(image_sizes) if image_sizes is not None else [None] * n
    for i, media in enumerate(read):
        if media:
            sizes = dict(out[i] or {})
            for name, source in media.items():
                sizes.setdefault(name, load_image(source).size)
            out[i] = sizes
    return out


def _box_agreements(
    evidence: Sequence[Evidence],
    reference_boxes: Sequence[Sequence[Box] | None],
    image_sizes: Sequence[dict[str, tuple[int, int]] | None] | None,
) -> dict[int, float]:
    """Per example with reference boxes: mean over its predicted boxes of the best IoU with
    a reference box of the same image. All pairs of the batch go through one call of the
    compiled ``box_iou_pairs`` kernel."""
    a_rows, b_rows, owner = [], [], []  # owner: (example, predicted box) of each pair
    counts: dict[int, int] = {}
    for i, ev in enumerate(evidence):
        refs = reference_boxes[i]
        if not refs:
            continue
        counts[i] = len(ev.boxes)
        sizes = image_sizes[i] if image_sizes is not None and image_sizes[i] else {}
        for p, box in enumerate(ev.boxes):
            w, h = sizes.get(box.image, (1000, 1000))
            pixels = box.to_pixels(w, h)
            if not all(math.isfinite(c) for c in pixels):
                continue  # a model-written 1e308 scaled past float range: IoU 0
            for ref in refs:
                if ref.image == box.image:
                    a_rows.append(pixels)
                    b_rows.append(ref.to_pixels(w, h))
                    owner.append((i, p))
    best: dict[tuple[int, int], float] = {}
    if a_rows:
        from ..ops import box_iou_pairs

        ious = box_iou_pairs(np.asarray(a_rows, np.float64), np.asarray(b_rows, np.float64))
        for key, v in zip(owner, ious.tolist()):
            best[key] = max(best.get(key, 0.0), v)
    return {
        i: (sum(best.get((i, p), 0.0) for p in range(n)) / n if n else 0.0)
        for i, n in counts.items()
    }


# ----------------------------------------------------------------- outcome
def outcome_reward(
    query_embeddings: np.ndarray,
    candidate_embeddings: np.ndarray,
    target_index: Sequence[int],
    form: str = "reciprocal_rank",
    temperature: float = 0.05,
) -> list[float]:
    """How well the evidence-enriched query retrieves its target among the candidates.

    ``query_embeddings [B, d]`` and ``candidate_embeddings [B, C, d]`` (L2-normalised);
    ``target_index[b]`` the target's position among example b's candidates. Forms:
    ``"reciprocal_rank"`` 1 / (1 + rank) (rank 0 = first); ``"softmax"`` the target's
    softmax probability at `temperature`; ``"margin"`` (Embed-RL's code) hit@1 times the
    positive's similarity minus the softmax-weighted similarity of the negatives.
    """
    q = np.asarray(query_embeddings, dtype=np.float64)
    c = np.asarray(candidate_embeddings, dtype=np.float64)
    if q.ndim != 2 or c.ndim != 3 or c.shape[0] != q.shape[0] or c.shape[2] != q.shape[1]:
        raise ValueError(
            f"need queries [B, d] and candidates [B, C, d], got {q.shape} and {c.shape}"
        )
    t = np.asarray(target_index, dtype=np.int64)
    if t.shape != (q.shape[0],) or (t < 0).any() or (t >= c.shape[1]).any():
        raise ValueError("target_index must hold one valid candidate position per query")
    if form not in ("reciprocal_rank", "softmax", "margin"):
        raise ValueError(f"unknown form {form!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    sims = np.einsum("bd,bcd->bc", q, c)
    rows = np.arange(q.shape[0])
    pos = sims[rows, t]
    if form == "reciprocal_rank":
        rank = (sims > pos[:, None]).sum(1)
        return (1.0 / (1.0 + rank)).tolist()
    logits = sims / temperature
    logits -= logits.max(1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(1, keepdims=True)
    if form == "softmax":
        return prob[rows, t].tolist()
    neg = np.ones_like(sims, dtype=bool)
    neg[rows, t] = False
    out = []
    for b in range(q.shape[0]):
        if not neg[b].any():
            out.append(1.0)
            continue
        w = np.exp((sims[b, neg[b]] - sims[b, neg[b]].max()) / temperature)
        weighted = float((w / w.sum()) @ sims[b, neg[b]])
        hit = float(sims[b].argmax() == t[b])
        out.append(max(0.0, hit * (pos[b] - weighted)))
    return out


def outcome_reward_index(
    query_embeddings: np.ndarray,
    index: Any,
    target_ids: Sequence[int],
    k: int = 100,
    form: str = "reciprocal_rank",
    temperature: float = 0.05,
) -> list[float]:
    """`outcome_reward` against a large candidate set held in an `evidex.HNSWIndex`
    (cosine or ip space over the candidates' embeddings, ids as given at ``add``).

    The target's rank is its position among the index's k nearest; a target outside them
    scores 0. ``"softmax"`` normalises over those k and the target.
    """
    q = np.asarray(query_embeddings, dtype=np.float32)
    t = np.asarray(target_ids, dtype=np.int64)
    if q.ndim != 2 or t.shape != (q.shape[0],):
        raise ValueError(f"need queries [B, d] and one target id each, got {q.shape}, {t.shape}")
    if form not in ("reciprocal_rank", "softmax"):
        raise ValueError(f"form over an index must be 'reciprocal_rank' or 'softmax', got {form!r}")
    k = min(k, len(index))
    ids, dist = index.search(q, k=k, ef=max(k, 64))
    out = []
    target_vecs = index.get_vectors(t)
    for b in range(q.shape[0]):
        hit = np.flatnonzero(ids[b] == t[b])
        if form == "reciprocal_rank":
            out.append(1.0 / (1.0 + hit[0]) if hit.size else 0.0)
            continue
        sims = 1.0 - dist[b]  # both spaces store 1 - similarity
        pos = float(target_vecs[b] @ q[b] / max(np.linalg.norm(q[b]), 1e-12))
        pool = np.append(sims[ids[b] != t[b]], pos)
        logits = (pool - pool.max()) / temperature
        prob = np.exp(logits) / np.exp(logits).sum()
        out.append(float(prob[-1]))
    return out


# ----------------------------------------------------------------- TRL reward functions
def _completion(completion: Any) -> Any:
    """A completion as TRL passes it: a string, or for conversational datasets a list of
    messages (or one message), which `parse_evidence` reads as its last assistant
    content. Anything else is a caller's mistake, refused rather than scored as empty."""
    if isinstance(completion, (str, Mapping)) or (
        isinstance(completion, Sequence) and not isinstance(completion, (bytes, bytearray))
    ):
        return completion
    raise TypeError(
        f"a completion must be text or a list of messages, got {type(completion).__name__}"
    )


def _parsed(
    prompts: Sequence[Any], completions: Sequence[Any]
) -> tuple[list[Evidence], list[list[str]]]:
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"got {len(prompts)} prompts for {n} completions")
    parsed = [parse_evidence(_completion(c)) for c in completions]
    return [p.evidence for p in parsed], [p.problems for p in parsed]


def _column(kwargs: dict[str, Any], name: str, n: int, owner: str) -> list[Any]:
    if name not in kwargs:
        raise ValueError(f"{owner} needs the dataset column {name!r}")
    values = list(kwargs[name])
    _check_lengths(n, **{name: values})
    return values


class _ComponentReward:
    """A TRL reward function over parsed evidence: subclasses implement `score`."""

    __name__ = "embed_rl_component"

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float]:
        evidence, problems = _parsed(prompts, completions)
        return self.score(evidence, problems, kwargs)

    def score(
        self, evidence: list[Evidence], problems: list[list[str]], kwargs: dict[str, Any]
    ) -> list[float]:
        raise NotImplementedError


class FormatReward(_ComponentReward):
    """The format reward alone, as a TRL reward function (no embedder needed).

    Reads the optional columns ``image_sizes`` and ``frame_counts``.
    """

    def __init__(self, keyword_range: tuple[int, int] = (1, 10)) -> None:
        lo, hi = keyword_range
        if not 0 <= lo <= hi:
            raise ValueError(
                f"keyword_range must be (lo, hi) with 0 <= lo <= hi, got {keyword_range}"
            )
        self.keyword_range = (int(lo), int(hi))
        self.__name__ = "embed_rl_format"

    def score(
        self, evidence: list[Evidence], problems: list[list[str]], kwargs: dict[str, Any]
    ) -> list[float]:
        return format_reward(
            evidence,
            problems,
            kwargs.get("image_sizes"),
            kwargs.get("frame_counts"),
            self.keyword_range,
            _media(kwargs, "images"),
        )


class AlignmentReward(_ComponentReward):
    """The alignment reward alone, as a TRL reward function.

    Reads ``target`` (and ``query`` when an embedder is given) and the optional columns
    ``reference_boxes``, ``image_sizes``, ``reference_segments`` and ``query_images`` /
    ``query_videos`` (for a multimodal embedder; `text_weight` as in `evidence_item`).
    With ``judge``, a process scorer ``judge(query, target, evidence) -> [0, 1]`` is
    averaged in.
    """

    def __init__(
        self,
        embedder: Any = None,
        judge: Callable[[str, str, Evidence], float] | None = None,
        text_weight: float = 1.0,
    ) -> None:
        if embedder is not None and not hasattr(embedder, "encode"):
            raise TypeError("embedder must have encode(texts) -> [n, d] array")
        self.embedder = embedder
        self.judge = judge
        self.text_weight = _check_text_weight(text_weight)
        self.__name__ = "embed_rl_alignment"

    def score(
        self, evidence: list[Evidence], problems: list[list[str]], kwargs: dict[str, Any]
    ) -> list[float]:
        n = len(evidence)
        targets = _column(kwargs, "target", n, "the alignment reward")
        needs_query = self.embedder is not None or self.judge is not None
        queries = _column(kwargs, "query", n, "the alignment reward") if needs_query else None
        scores = alignment_reward(
            evidence,
            targets,
            kwargs.get("reference_boxes"),
            kwargs.get("image_sizes"),
            kwargs.get("reference_segments"),
            queries,
            self.embedder,
            _media(kwargs, "images"),
            _media(kwargs, "videos"),
            self.text_weight,
        )
        if self.judge is not None:
            judged = [float(self.judge(q, t, ev)) for q, t, ev in zip(queries, targets, evidence)]
            scores = [(a + min(1.0, max(0.0, j))) / 2 for a, j in zip(scores, judged)]
        return scores


class OutcomeReward(_ComponentReward):
    """The outcome reward alone, as a TRL reward function: how well the frozen embedder,
    reading the query with the evidence, retrieves the target.

    Reads ``query`` and ``target``, and ``candidates`` (default: the batch's targets) or,
    with ``candidate_index`` (an `evidex.HNSWIndex` of candidate embeddings), ``target_id``;
    with a multimodal embedder also ``query_images`` / ``query_videos`` (the query is then
    `evidence_item`: text, images, crops and key frames; `text_weight` as there).
    """

    def __init__(
        self,
        embedder: Any,
        form: str = "reciprocal_rank",
        temperature: float = 0.05,
        candidate_index: Any = None,
        index_k: int = 100,
        text_weight: float = 1.0,
    ) -> None:
        if not hasattr(embedder, "encode"):
            raise TypeError("embedder must have encode(texts) -> [n, d] array")
        if form not in ("reciprocal_rank", "softmax", "margin"):
            raise ValueError(f"unknown form {form!r}")
        self.embedder = embedder
        self.form = form
        self.temperature = temperature
        self.candidate_index = candidate_index
        self.index_k = index_k
        self.text_weight = _check_text_weight(text_weight)
        self.__name__ = "embed_rl_outcome"

    def score(
        self, evidence: list[Evidence], problems: list[list[str]], kwargs: dict[str, Any]
    ) -> list[float]:
        n = len(evidence)
        queries = _column(kwargs, "query", n, "the outcome reward")
        q = _embedded_queries(
            self.embedder,
            queries,
            evidence,
            _media(kwargs, "images"),
            _media(kwargs, "videos"),
            self.text_weight,
        )
        if self.candidate_index is not None:
            target_ids = _column(kwargs, "target_id", n, "the outcome reward over an index")
            form = "softmax" if self.form == "softmax" else "reciprocal_rank"
            return outcome_reward_index(
                q, self.candidate_index, target_ids, self.index_k, form, self.temperature
            )
        targets = _column(kwargs, "target", n, "the outcome reward")
        candidates = kwargs.get("candidates")
        if candidates is None:
            pools = [list(dict.fromkeys(targets)) for _ in range(n)]
        else:
            _check_lengths(n, candidates=candidates)
            pools = [list(dict.fromkeys([t, *(c or ())])) for t, c in zip(targets, candidates)]
        texts = sorted({t for pool in pools for t in pool})
        emb = self.embedder.encode(texts)
        where = {t: i for i, t in enumerate(texts)}
        size = max(len(p) for p in pools)
        cand = np.zeros((n, size, q.shape[1]), dtype=np.float64)
        for b, pool in enumerate(pools):
            cand[b, : len(pool)] = emb[[where[t] for t in pool]]
            cand[b, len(pool) :] = -q[b]  # padding: never closer than a real candidate
        target_index = [pool.index(t) for pool, t in zip(pools, targets)]
        return outcome_reward(q, cand, target_index, self.form, self.temperature)


@dataclass
class _Last:
    format: list[float]
    alignment: list[float]
    outcome: list[float]


class EmbedRLReward:
    """format, alignment and outcome rewards from a frozen embedder, in TRL's signature.

    The three are `FormatReward`, `AlignmentReward` and `OutcomeReward`, weighted; each is
    also a TRL reward function by itself (`component`). The columns they read, and a helper
    that builds a valid `datasets.Dataset`: `evidex.rewards.columns`.

    Args:
        embedder: anything with ``encode(texts) -> float32 [n, d]`` (L2-normalised), frozen.
        weights: (format, alignment, outcome).
        outcome_form: see `outcome_reward`.
        judge: optional process scorer ``judge(query, target, evidence) -> [0, 1]`` (a language
            model, as Embed-RL's code uses), averaged into the alignment reward.
        text_weight: with a multimodal embedder and ``query_images`` / ``query_videos``,
            the weight of the query's text against each image, crop and key frame
            (`evidence_item`).
        candidate_index: an `evidex.HNSWIndex` of candidate embeddings; the outcome then ranks
            each example's ``target_id`` column among the index's ``index_k`` nearest.
    """

    def __init__(
        self,
        embedder: Any,
        weights: tuple[float, float, float] = (0.2, 0.3, 0.5),
        outcome_form: str = "reciprocal_rank",
        temperature: float = 0.05,
        keyword_range: tuple[int, int] = (1, 10),
        judge: Callable[[str, str, Evidence], float] | None = None,
        candidate_index: Any = None,
        index_k: int = 100,
        text_weight: float = 1.0,
    ) -> None:
        if len(weights) != 3 or any(not math.isfinite(w) or w < 0 for w in weights):
            raise ValueError(f"weights must be three non-negative numbers, got {weights}")
        if not hasattr(embedder, "encode"):
            raise TypeError("embedder must have encode(texts) -> [n, d] array")
        self.embedder = embedder
        self.weights = tuple(float(w) for w in weights)
        self.format = FormatReward(keyword_range)
        self.alignment = AlignmentReward(embedder, judge, text_weight)
        self.outcome = OutcomeReward(
            embedder, outcome_form, temperature, candidate_index, index_k, text_weight
        )
        self.last: _Last | None = None
        self.__name__ = "embed_rl_reward"  # TRL logs reward functions by name

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float]:
        evidence, problems = _parsed(prompts, completions)
        n = len(evidence)
        for required in ("query", "target"):
            _column(kwargs, required, n, "EmbedRLReward")
        fmt = self.format.score(evidence, problems, kwargs)
        ali = self.alignment.score(evidence, problems, kwargs)
        out = self.outcome.score(evidence, problems, kwargs)
        self.last = _Last(fmt, ali, out)
        wf, wa, wo = self.weights
        return [wf * f + wa * a + wo * o for f, a, o in zip(fmt, ali, out)]

    def component(self, name: str) -> RewardFn:
        """One component as its own TRL reward function (``"format"``, ``"alignment"`` or
        ``"outcome"``), computing only that component, e.g.
        ``GRPOTrainer(reward_funcs=[r.component("format"), ...])``."""
        if name not in ("format", "alignment", "outcome"):
            raise ValueError(f"unknown component {name!r}")
        return getattr(self, name)


def _check_lengths(n: int, **columns: Sequence[Any] | None) -> None:
    for name, col in columns.items():
        if col is not None and len(col) != n:
            raise ValueError(f"{name} has {len(col)} entries for a batch of {n}")


RewardFn = Callable[..., list[float]]
