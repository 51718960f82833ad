"""Torch operators backed by evidex's C++ and CUDA kernels (needs the ``torch`` extra).

Selection (CLaRa): `st_topk`, `st_select`. Boxes (torchvision.ops semantics and
formats): `box_convert`, `box_area`, `box_iou`, `generalized_box_iou`,
`box_iou_pairs`, `generalized_box_iou_pairs`, `generalized_box_iou_loss`. Video:
`frame_scores`, `select_keyframes`, `temporal_iou`. Every op is a
``torch.library.custom_op`` (``torch.ops.evidex.*``) with a fake implementation, so
``torch.compile(fullgraph=True)`` traces it, and an autograd formula where it has a
gradient. Box and frame ops also take numpy arrays and then return numpy arrays.
"""

from __future__ import annotations

import math
from typing import Any

try:
    import torch
except ModuleNotFoundError as e:  # pragma: no cover - exercised without torch
    raise ModuleNotFoundError("evidex.ops needs torch: pip install 'evidex[torch]'") from e

import numpy as np

from . import _kernels
from ._kernels import set_num_threads

__all__ = [
    "box_area",
    "box_convert",
    "box_iou",
    "box_iou_pairs",
    "frame_scores",
    "generalized_box_iou",
    "generalized_box_iou_loss",
    "generalized_box_iou_pairs",
    "select_keyframes",
    "set_num_threads",
    "st_select",
    "st_topk",
    "temporal_iou",
]

_BOX_FORMATS = ("xyxy", "xywh", "cxcywh")


# ----------------------------------------------------------------- argument checks
def _float_tensor(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    """(tensor, came_from_numpy). Integer and other dtypes are refused."""
    from_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(x) if from_numpy else x
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}")
    return t, from_numpy


def _check_k(k: Any, n: int, what: str = "the selection dimension") -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] ({what} has {n} entries), got {k}")
    return k


def _check_tau(tau: Any) -> float:
    tau = float(tau)
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a positive finite number, got {tau}")
    return tau


def _check_mode(mode: str) -> int:
    if mode not in _kernels._MODES:
        raise ValueError(f"mode must be 'softmax' or 'successive', got {mode!r}")
    return _kernels._MODES[mode]


def _check_finite(t: torch.Tensor, name: str) -> None:
    # The CPU kernels check inside their first pass over the data (a separate
    # isfinite pass would cost as much as the op); other devices check here,
    # eagerly only (the check is data-dependent, so tracing skips it).
    if t.device.type == "cpu" or torch.compiler.is_compiling():
        return
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contain NaN or infinity")


# ----------------------------------------------------------------- selection
def st_topk(
    scores: torch.Tensor, k: int, tau: float = 1.0, dim: int = -1, mode: str = "softmax"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Straight-through top-k along `dim` (CLaRa's selector).

    Forward: ``weights`` is the hard k-hot mask (exactly 0/1, the dtype of scores);
    ``indices`` the top-k positions sorted by score, ties to the lower index.
    Backward, by `mode`:

    - ``"softmax"``: the gradient of ``softmax(scores / tau)``
      (``hard - soft.detach() + soft``);
    - ``"successive"`` (CLaRa's released code): slot j uses
      ``softmax(scores / tau + log(1 - taken_j + 1e-8))``, taken_j the hard picks of
      the slots before it, and the slots' gradients add up.

    Gradients scale like ``1 / tau``: at CLaRa's ``tau = 0.02`` on cosine scores
    they range from about 1e-11 to about 60 with the score gaps; the softmax is
    max-subtracted and accumulated in float64, but clipping the gradient norm is
    advised.
    """
    s, _ = _float_tensor(scores, "scores")
    if s.dim() == 0:
        raise ValueError("scores must have at least one dimension")
    dim = dim % s.dim()
    k = _check_k(k, s.shape[dim])
    tau, code = _check_tau(tau), _check_mode(mode)
    _check_finite(s, "scores")
    if s.dim() == 2 and dim == 1:  # the common case: no views in the autograd graph
        return torch.ops.evidex.st_topk(s, k, tau, code)
    moved = s.movedim(dim, -1)
    lead = moved.shape[:-1]
    flat = moved.reshape(-1, moved.shape[-1])
    mask, idx = torch.ops.evidex.st_topk(flat, k, tau, code)
    mask = mask.reshape(*lead, moved.shape[-1]).movedim(-1, dim)
    idx = idx.reshape(*lead, k).movedim(-1, dim)
    return mask, idx


def st_select(
    query: torch.Tensor,
    docs: torch.Tensor,
    k: int,
    tau: float = 1.0,
    mask: torch.Tensor | None = None,
    mode: str = "successive",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CLaRa's fused selector: cosine scores of ``query [B, D]`` against ``docs [B, N, D]``
    (``mask [B, N]`` True for real documents), per-slot straight-through one-hots
    ``weights [B, k, N]`` in rank order, and ``selected = weights @ docs [B, k, D]``.
    The forward pass sees exactly the chosen documents; the gradient reaches both the
    query and the documents. Returns ``(selected, weights, indices)``."""
    q, _ = _float_tensor(query, "query")
    d, _ = _float_tensor(docs, "docs")
    if (
        q.dim() != 2
        or d.dim() != 3
        or q.shape[0] != d.shape[0]
        or q.shape[1] != d.shape[2]
        or q.shape[1] < 1
    ):
        raise ValueError(
            f"st_select needs query [B, D] and docs [B, N, D] with D >= 1, got "
            f"{tuple(q.shape)} and {tuple(d.shape)}"
        )
    if q.dtype != d.dtype:
        raise TypeError(f"query and docs must share a dtype, got {q.dtype} and {d.dtype}")
    tau, code = _check_tau(tau), _check_mode(mode)
    scores = torch.nn.functional.cosine_similarity(q.unsqueeze(1), d, dim=-1)  # [B, N]
    available = d.shape[1]
    if mask is not None:
        if mask.shape != scores.shape:
            raise ValueError(
                f"mask must be [B, N] = {tuple(scores.shape)}, got {tuple(mask.shape)}"
            )
        mask = mask.to(torch.bool)
        if not torch.compiler.is_compiling():
            available = int(mask.sum(1).min()) if mask.shape[0] else available
        # Padding can never be picked and gets no probability mass: a very low score.
        scores = scores.masked_fill(~mask, -1e4 * (1.0 / tau))
    k = _check_k(k, available, "the smallest number of unmasked documents")
    _check_finite(q, "query")
    _check_finite(d, "docs")
    weights, indices = torch.ops.evidex.st_slots(scores.contiguous(), k, tau, code)
    selected = weights @ d
    return selected, weights, indices


# ----------------------------------------------------------------- boxes
def box_convert(boxes: Any, in_fmt: str, out_fmt: str) -> Any:
    """Convert [..., 4] boxes between ``xyxy``, ``xywh`` and ``cxcywh`` (torchvision's names)."""
    for fmt in (in_fmt, out_fmt):
        if fmt not in _BOX_FORMATS:
            raise ValueError(f"unknown box format {fmt!r}; expected one of {_BOX_FORMATS}")
    b, from_numpy = _float_tensor(boxes, "boxes")
    if b.shape[-1:] != (4,):
        raise ValueError(f"boxes must have a last dimension of 4, got {tuple(b.shape)}")
    if in_fmt != out_fmt:
        x, y, z, w = b.unbind(-1)
        if in_fmt == "xywh":
            b = torch.stack([x, y, x + z, y + w], -1)
        elif in_fmt == "cxcywh":
            b = torch.stack([x - z / 2, y - w / 2, x + z / 2, y + w / 2], -1)
        x1, y1, x2, y2 = b.unbind(-1)
        if out_fmt == "xywh":
            b = torch.stack([x1, y1, x2 - x1, y2 - y1], -1)
        elif out_fmt == "cxcywh":
            b = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)
    return b.numpy() if from_numpy else b


def _boxes(x: Any, name: str, fmt: str) -> tuple[torch.Tensor, bool]:
    b, from_numpy = _float_tensor(x, name)
    if b.dim() != 2 or b.shape[1] != 4:
        raise ValueError(f"{name} must be [N, 4], got {tuple(b.shape)}")
    _check_finite(b, name)
    if fmt != "xyxy":
        b = box_convert(b, fmt, "xyxy")
    return b, from_numpy


def box_area(boxes: Any, fmt: str = "xyxy") -> Any:
    """Areas [N] of [N, 4] boxes; degenerate boxes (x2 < x1 or y2 < y1) have area 0."""
    b, from_numpy = _boxes(boxes, "boxes", fmt)
    area = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    return area.numpy() if from_numpy else area


def _iou(a: Any, b: Any, generalized: bool, fmt: str, pairs: bool) -> Any:
    """IoU/GIoU of every pair (``pairs=False``, [N, M]) or of matching rows ([N])."""
    ta, from_numpy = _boxes(a, "boxes1", fmt)
    tb, _ = _boxes(b, "boxes2", fmt)
    if pairs and ta.shape != tb.shape:
        raise ValueError(
            f"boxes1 and boxes2 must have the same shape, got {tuple(ta.shape)} "
            f"and {tuple(tb.shape)}"
        )
    if ta.dtype != tb.dtype or ta.device != tb.device:
        raise TypeError("boxes1 and boxes2 must share dtype and device")
    op = torch.ops.evidex.box_iou_pairs if pairs else torch.ops.evidex.box_iou_matrix
    out = op(ta.contiguous(), tb.contiguous(), generalized)
    return out.numpy() if from_numpy else out


def box_iou(boxes1: Any, boxes2: Any, fmt: str = "xyxy") -> Any:
    """Pairwise IoU [N, M]; 0 where the union is empty, never NaN."""
    return _iou(boxes1, boxes2, False, fmt, pairs=False)


def generalized_box_iou(boxes1: Any, boxes2: Any, fmt: str = "xyxy") -> Any:
    """Pairwise generalised IoU [N, M], in [-1, 1]."""
    return _iou(boxes1, boxes2, True, fmt, pairs=False)


def box_iou_pairs(boxes1: Any, boxes2: Any, fmt: str = "xyxy") -> Any:
    """Elementwise IoU [N] of two [N, 4] box sets."""
    return _iou(boxes1, boxes2, False, fmt, pairs=True)


def generalized_box_iou_pairs(boxes1: Any, boxes2: Any, fmt: str = "xyxy") -> Any:
    """Elementwise generalised IoU [N], differentiable in both box sets."""
    return _iou(boxes1, boxes2, True, fmt, pairs=True)


def generalized_box_iou_loss(
    boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", fmt: str = "xyxy"
) -> torch.Tensor:
    """``1 - GIoU`` of box pairs (torchvision.ops.generalized_box_iou_loss), with gradients."""
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    loss = 1 - generalized_box_iou_pairs(boxes1, boxes2, fmt)
    if reduction == "mean":
        return loss.mean() if loss.numel() else loss.sum()
    return loss.sum() if reduction == "sum" else loss


# ----------------------------------------------------------------- video
def frame_scores(frames: Any, queries: Any) -> Any:
    """Cosine similarity [Q, T] of queries [Q, D] against frame embeddings [T, D]."""
    f, from_numpy = _float_tensor(frames, "frames")
    q, _ = _float_tensor(queries, "queries")
    if f.dim() != 2 or q.dim() != 2 or f.shape[1] != q.shape[1]:
        raise ValueError(
            f"frame_scores needs frames [T, D] and queries [Q, D], got "
            f"{tuple(f.shape)} and {tuple(q.shape)}"
        )
    if f.dtype != q.dtype:
        raise TypeError(f"frames and queries must share a dtype, got {f.dtype} and {q.dtype}")
    _check_finite(f, "frames")
    _check_finite(q, "queries")
    out = torch.ops.evidex.frame_scores(f.contiguous(), q.contiguous())
    return out.numpy() if from_numpy else out


def select_keyframes(scores: Any, k: int, min_gap: int = 1) -> Any:
    """Greedy temporal non-maximum suppression: the best frames at least `min_gap`
    apart (``min_gap=1``: any distinct frames), at most k, returned in time order."""
    s, from_numpy = _float_tensor(scores, "scores")
    if s.dim() != 1:
        raise ValueError(f"scores must be 1-D [T], got {tuple(s.shape)}")
    k = _check_k(k, s.shape[0], "the video")
    if isinstance(min_gap, bool) or not isinstance(min_gap, int) or min_gap < 1:
        raise ValueError(f"min_gap must be an int >= 1, got {min_gap!r}")
    _check_finite(s, "scores")
    out = torch.ops.evidex.select_keyframes(s.contiguous(), k, min_gap)
    return out.numpy() if from_numpy else out


def temporal_iou(a: Any, b: Any) -> Any:
    """Pairwise IoU [N, M] of [start, end] frame (or time) intervals."""
    ta, from_numpy = _float_tensor(a, "intervals1")
    tb, _ = _float_tensor(b, "intervals2")
    for t, name in ((ta, "intervals1"), (tb, "intervals2")):
        if t.dim() != 2 or t.shape[1] != 2:
            raise ValueError(f"{name} must be [N, 2], got {tuple(t.shape)}")
        _check_finite(t, name)
    if ta.dtype != tb.dtype:
        raise TypeError("intervals1 and intervals2 must share a dtype")
    out = torch.ops.evidex.temporal_iou(ta.contiguous(), tb.contiguous())
    return out.numpy() if from_numpy else out
