"""The dataset columns Embed-RL's rewards read, in every form they arrive in.

TRL hands a reward function the dataset's columns as keyword arguments, one value per
completion, after a round trip through Arrow: tuples come back as lists, objects must
have been plain data, and a dict column whose keys differ between rows comes back with
every row holding every key (missing ones as ``None``). The readers below accept the
Python forms and the Arrow forms alike and return one canonical form; anything else
raises ValueError naming the column and row.

Columns (one value per example; ``None``, or an absent column, marks an example a
component does not apply to):

========================  =================================================================
``query``                 str, required: what is searched for
``target``                str, required: the text the query should retrieve
``candidates``            list[str]: the pool the target is ranked in (default: the batch's
                          targets)
``target_id``             int: the target's id in ``EmbedRLReward(candidate_index=...)``
``image_sizes``           images by name with their sizes: ``[{"image": "query", "width":
                          640, "height": 480}]``, or ``{"query": (640, 480)}``
``frame_counts``          videos by name with their frame counts: ``[{"video": "target",
                          "frames": 300}]``, or ``{"target": 300}``
``reference_boxes``       boxes the evidence should point at: ``[{"image": "query",
                          "bbox": [x1, y1, x2, y2], "scale": "grid1000"}]``, or
                          `evidex.evidence.Box` objects
``reference_segments``    frame ranges key frames should fall in: ``[{"video": "target",
                          "start": 100, "end": 180}]``, or ``{"target": [(100, 180)]}``
``query_images``          the query's images, for a multimodal embedder (TRL's ``images``
                          column, which a vision-language reasoner is also shown, serves
                          when this one is absent): ``[{"image":
                          "query", "path": "cat.png"}]``, ``{"query": "cat.png"}``, one image
                          (named ``"query"``), or TRL's list of images (named ``"query"``,
                          ``"image1"``, ``"image2"``, ...); an image is a path, bytes, a PIL
                          image or a uint8 array. Their sizes serve for images missing from
                          ``image_sizes``.
``query_videos``          the query's videos (else ``videos``): ``[{"video": "query",
                          "path": "clip.mp4"}]``, ``{"query": "clip.mp4"}`` or one path
                          (named ``"query"``)
========================  =================================================================

`embedrl_dataset` builds a `datasets.Dataset` in the record forms, which survive Arrow as
they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..evidence import SCALES, VISUAL_SHOTS, Box, reasoner_prompt

__all__ = [
    "embedrl_dataset",
    "frame_counts_of",
    "image_sizes_of",
    "images_of",
    "reference_boxes_of",
    "reference_segments_of",
    "videos_of",
]


def _where(column: str, row: int | None) -> str:
    return column if row is None else f"{column}[{row}]"


def _records(value: Any, column: str, row: int | None) -> list[Mapping[str, Any]] | None:
    """A list of dicts (the record form) or None; a mapping is not records."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(
            f"{_where(column, row)}: expected a list of records or a dict, got {value!r}"
        )
    if not all(isinstance(r, Mapping) for r in value):
        raise ValueError(f"{_where(column, row)}: every record must be a dict, got {value!r}")
    return list(value)


def _number(x: Any, column: str, row: int | None, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"{_where(column, row)}: {what} must be a finite number, got {x!r}")
    return float(x)


def _count(x: Any, column: str, row: int | None, what: str, minimum: int) -> int:
    v = _number(x, column, row, what)
    if v != int(v) or v < minimum:
        raise ValueError(
            f"{_where(column, row)}: {what} must be an integer >= {minimum}, got {x!r}"
        )
    return int(v)


def _name(x: Any, column: str, row: int | None, what: str) -> str:
    if not isinstance(x, str) or not x:
        raise ValueError(f"{_where(column, row)}: {what} must be a non-empty string, got {x!r}")
    return x


def image_sizes_of(
    value: Any, column: str = "image_sizes", row: int | None = None
) -> dict[str, tuple[int, int]] | None:
    """``{image: (width, height)}`` from records, a dict of pairs, or Arrow's forms of
    either (pairs as lists, keys of other rows filled with None); None if no image."""
    out: dict[str, tuple[int, int]] = {}
    records = _records(value, column, row)
    if records is not None:
        for r in records:
            name = _name(r.get("image"), column, row, "image")
            out[name] = (
                _count(r.get("width"), column, row, "width", 1),
                _count(r.get("height"), column, row, "height", 1),
            )
    elif isinstance(value, Mapping):
        for name, size in value.items():
            if size is None:  # a key another row has
                continue
            if isinstance(size, Mapping):
                size = (size.get("width"), size.get("height"))
            if isinstance(size, (str, bytes)) or not isinstance(size, Sequence) or len(size) != 2:
                raise ValueError(f"{_where(column, row)}: size of {name!r} must be (width, height)")
            out[_name(name, column, row, "image")] = (
                _count(size[0], column, row, "width", 1),
                _count(size[1], column, row, "height", 1),
            )
    return out or None


def _is_image_source(x: Any) -> bool:
    from ..media.items import ImageItem, as_item

    if isinstance(x, str):
        return True  # a path
    try:
        return isinstance(as_item(x), ImageItem)
    except (TypeError, ValueError):
        return False


def _media(value: Any, column: str, row: int | None, kind: str) -> dict[str, Any] | None:
    """``{name: source}`` of the `images` or `videos` column (kind "image" / "video")."""
    if value is None:
        return None
    out: dict[str, Any] = {}
    if isinstance(value, Mapping):
        for name, source in value.items():
            if source is not None:  # a key another row has
                out[_name(name, column, row, kind)] = source
    elif (kind == "image" and _is_image_source(value)) or (
        kind == "video" and isinstance(value, str)
    ):
        out["query"] = value
    elif isinstance(value, Sequence) and value and all(isinstance(r, Mapping) for r in value):
        for r in value:
            source = r.get("path", r.get(kind))
            name = r.get(kind) if "path" in r else "query"
            out[_name(name, column, row, kind)] = source
    elif kind == "image" and isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        for i, source in enumerate(value):
            out["query" if i == 0 else f"image{i}"] = source
    else:
        raise ValueError(f"{_where(column, row)}: cannot read {kind}s from {value!r}")
    for name, source in out.items():
        ok = _is_image_source(source) if kind == "image" else isinstance(source, str)
        if not ok or (isinstance(source, str) and not source):
            raise ValueError(
                f"{_where(column, row)}: {kind} {name!r} must be "
                + ("a path, bytes, a PIL image or a uint8 array" if kind == "image" else "a path")
                + f", got {type(source).__name__}"
            )
    return out or None


def images_of(value: Any, column: str = "images", row: int | None = None) -> dict[str, Any] | None:
    """``{image name: source}`` from records, a dict, one image or TRL's list of images."""
    return _media(value, column, row, "image")


def videos_of(value: Any, column: str = "videos", row: int | None = None) -> dict[str, str] | None:
    """``{video name: path}`` from records, a dict or one path."""
    return _media(value, column, row, "video")


def frame_counts_of(
    value: Any, column: str = "frame_counts", row: int | None = None
) -> dict[str, int] | None:
    """``{video: frame count}`` from records or a dict (Arrow's None-filled keys dropped)."""
    out: dict[str, int] = {}
    records = _records(value, column, row)
    if records is not None:
        for r in records:
            out[_name(r.get("video"), column, row, "video")] = _count(
                r.get("frames"), column, row, "frames", 0
            )
    elif isinstance(value, Mapping):
        for name, count in value.items():
            if count is not None:
                out[_name(name, column, row, "video")] = _count(count, column, row, "frames", 0)
    return out or None


def reference_boxes_of(
    value: Any, column: str = "reference_boxes", row: int | None = None
) -> list[Box] | None:
    """Boxes from `Box` objects, records (``bbox``, ``bbox_2d`` or ``xyxy``; ``image``
    defaults to ``"query"``, ``scale`` to ``"grid1000"``, None-filled keys ignored), or bare
    ``[x1, y1, x2, y2]`` lists (image ``"query"``, scale ``"grid1000"``)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise ValueError(f"{_where(column, row)}: expected a list of boxes, got {value!r}")
    boxes: list[Box] = []
    for item in value:
        image, scale, coords = "query", "grid1000", item
        if isinstance(item, Box):
            image, scale, coords = item.image, item.scale, item.xyxy
        elif isinstance(item, Mapping):
            image = item.get("image") or "query"
            scale = item.get("scale") or "grid1000"
            coords = next(
                (item[k] for k in ("bbox", "bbox_2d", "xyxy") if item.get(k) is not None), None
            )
        if scale not in SCALES:
            raise ValueError(f"{_where(column, row)}: unknown scale {scale!r}; expected {SCALES}")
        if isinstance(coords, (str, bytes)) or not isinstance(coords, Sequence) or len(coords) != 4:
            raise ValueError(f"{_where(column, row)}: a box needs [x1, y1, x2, y2], got {item!r}")
        xyxy = tuple(_number(c, column, row, "a coordinate") for c in coords)
        boxes.append(Box(_name(image, column, row, "image"), xyxy, scale))  # type: ignore[arg-type]
    return boxes or None


def reference_segments_of(
    value: Any, column: str = "reference_segments", row: int | None = None
) -> dict[str, list[tuple[float, float]]] | None:
    """``{video: [(start, end), ...]}`` from records or a dict of pair lists (Arrow's
    None-filled keys dropped); start <= end."""
    out: dict[str, list[tuple[float, float]]] = {}

    def put(video: Any, start: Any, end: Any) -> None:
        s = _number(start, column, row, "start")
        e = _number(end, column, row, "end")
        if s > e:
            raise ValueError(f"{_where(column, row)}: segment ({s}, {e}) ends before it starts")
        out.setdefault(_name(video, column, row, "video"), []).append((s, e))

    records = _records(value, column, row)
    if records is not None:
        for r in records:
            put(r.get("video"), r.get("start"), r.get("end"))
    elif isinstance(value, Mapping):
        for video, segments in value.items():
            if segments is None:
                continue
            if isinstance(segments, (str, bytes)) or not isinstance(segments, Sequence):
                raise ValueError(f"{_where(column, row)}: segments of {video!r} must be a list")
            for seg in segments:
                if isinstance(seg, (str, bytes)) or not isinstance(seg, Sequence) or len(seg) != 2:
                    raise ValueError(
                        f"{_where(column, row)}: a segment is (start, end), got {seg!r}"
                    )
                put(video, seg[0], seg[1])
    return out or None


def read_column(values: Sequence[Any] | None, reader: Any, column: str) -> list[Any] | None:
    """Every row of a column through its reader (None for an absent column)."""
    if values is None:
        return None
    return [reader(v, column, i) for i, v in enumerate(values)]


def embedrl_dataset(
    query: Sequence[str],
    target: Sequence[str],
    *,
    prompt: Sequence[Any] | None = None,
    candidates: Sequence[Sequence[str] | None] | None = None,
    target_id: Sequence[int] | None = None,
    image_sizes: Sequence[Any] | None = None,
    frame_counts: Sequence[Any] | None = None,
    reference_boxes: Sequence[Any] | None = None,
    reference_segments: Sequence[Any] | None = None,
    query_images: Sequence[Any] | None = None,
    query_videos: Sequence[Any] | None = None,
) -> Any:
    """A `datasets.Dataset` with the columns GRPOTrainer and `EmbedRLReward` read, every
    structured column in its record form (which survives Arrow unchanged), checked here.
    ``query_images`` and ``query_videos`` must be paths here (a dataset holds plain data).

    ``prompt`` defaults to `evidex.evidence.reasoner_prompt` of each query (with the
    visual worked examples where the example has images or videos). Any value form the
    readers accept may be given.
    """
    try:
        from datasets import Dataset
    except ModuleNotFoundError as e:  # pragma: no cover - the train extra has it
        raise ModuleNotFoundError(
            "embedrl_dataset needs datasets: pip install 'evidex[train]'"
        ) from e
    n = len(query)
    columns: dict[str, Any] = {"query": list(query), "target": list(target)}
    optional = {
        "prompt": prompt,
        "candidates": candidates,
        "target_id": target_id,
        "image_sizes": image_sizes,
        "frame_counts": frame_counts,
        "reference_boxes": reference_boxes,
        "reference_segments": reference_segments,
        "query_images": query_images,
        "query_videos": query_videos,
    }
    for name, values in {**columns, **optional}.items():
        if values is not None and len(values) != n:
            raise ValueError(f"{name} has {len(values)} rows for {n} queries")
    for i, (q, t) in enumerate(zip(query, target)):
        _name(q, "query", i, "query")
        if not isinstance(t, str):
            raise ValueError(f"target[{i}]: must be a string, got {t!r}")
    sizes = read_column(image_sizes, image_sizes_of, "image_sizes")
    counts = read_column(frame_counts, frame_counts_of, "frame_counts")
    boxes = read_column(reference_boxes, reference_boxes_of, "reference_boxes")
    segments = read_column(reference_segments, reference_segments_of, "reference_segments")
    images = read_column(query_images, images_of, "query_images")
    videos = read_column(query_videos, videos_of, "query_videos")
    for column, rows in (("query_images", images), ("query_videos", videos)):
        for i, media in enumerate(rows or ()):
            for name, source in (media or {}).items():
                if not isinstance(source, str):
                    raise ValueError(
                        f"{column}[{i}]: {name!r} must be a path in a dataset, "
                        f"got {type(source).__name__}"
                    )
    if prompt is None:
        visual = [
            bool((sizes and sizes[i]) or (counts and counts[i]))
            or bool((images and images[i]) or (videos and videos[i]))
            for i in range(n)
        ]
        prompt = [
            reasoner_prompt(q, VISUAL_SHOTS) if v else reasoner_prompt(q)
            for q, v in zip(query, visual)
        ]
    columns["prompt"] = list(prompt)
    if candidates is not None:
        columns["candidates"] = [list(c) if c is not None else None for c in candidates]
    if target_id is not None:
        columns["target_id"] = [
            _count(t, "target_id", i, "target_id", 0) for i, t in enumerate(target_id)
        ]
    if sizes is not None:
        columns["image_sizes"] = [
            None
            if s is None
            else [{"image": k, "width": w, "height": h} for k, (w, h) in s.items()]
            for s in sizes
        ]
    if counts is not None:
        columns["frame_counts"] = [
            None if c is None else [{"video": k, "frames": f} for k, f in c.items()] for c in counts
        ]
    if boxes is not None:
        columns["reference_boxes"] = [
            None
            if b is None
            else [{"image": x.image, "bbox": list(x.xyxy), "scale": x.scale} for x in b]
            for b in boxes
        ]
    if segments is not None:
        columns["reference_segments"] = [
            None
            if s is None
            else [{"video": v, "start": a, "end": e} for v, segs in s.items() for a, e in segs]
            for s in segments
        ]
    for column, rows, kind in (
        ("query_images", images, "image"),
        ("query_videos", videos, "video"),
    ):
        if rows is not None:
            columns[column] = [
                None if m is None else [{kind: k, "path": p} for k, p in m.items()] for m in rows
            ]
    return Dataset.from_dict(columns)
