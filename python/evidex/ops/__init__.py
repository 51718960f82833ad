"""Torch operators backed by evidex's C++ and CUDA kernels (needs the ``torch`` extra).

Selection (CLaRa): `st_topk`, `st_select`. Boxes (torchvision.ops semantics and
formats): `box_convert`, `box_area`, `box_iou`, `generalized_box_iou`,
`distance_box_iou`, `complete_box_iou`, `box_iou_pairs`, `generalized_box_iou_pairs`,
and the losses `generalized_box_iou_loss`, `distance_box_iou_loss`,
`complete_box_iou_loss`. Video:
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
    "complete_box_iou",
    "complete_box_iou_loss",
    "distance_box_iou",
    "distance_box_iou_loss",
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
def _real_tensor(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    """(tensor, came_from_numpy) of any real dtype (not bool or complex)."""
    from_numpy = isinstance(x, np.ndarray)
    t = torch.from_numpy(x) if from_numpy else x
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold real numbers, got {t.dtype}")
    return t, from_numpy


def _float_tensor(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    """(tensor, came_from_numpy). Integer and other dtypes are refused."""
    t, from_numpy = _real_tensor(x, name)
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
# torchvision.ops' box functions, names, argument order and dtype rules (boxes of
# any real dtype; integer and half boxes computed in a wider type, their IoUs
# returned as float32; leading batch dimensions). One deliberate difference:
# degenerate boxes (x2 < x1 or y2 < y1) have area 0 and an empty union gives IoU
# 0, where torchvision gives negative areas and NaN; the rewards that use these
# ops must never see NaN. Not TorchScript-able (numpy inputs, keyword checks);
# torch.compile and torch.export trace them.
_REDUCTIONS = ("none", "mean", "sum")


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """torchvision's rule for areas: half floats to float32, small ints to int32."""
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def _compute_dtype(*ts: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(dtype the kernels compute in, dtype returned) for IoU-like ops: float32
    and float64 as given; half floats in float32; integers exactly in float64,
    returned as float32 (torchvision's true division of integer tensors)."""
    out = torch.float32
    for t in ts:
        if t.dtype == torch.float64:
            out = torch.float64
    compute = out
    if all(not t.is_floating_point() for t in ts):
        compute = torch.float64
    return compute, out


def _as_boxes(x: Any, name: str, min_dim: int) -> tuple[torch.Tensor, bool]:
    t, from_numpy = _real_tensor(x, name)
    if t.dim() < min_dim or t.shape[-1] != 4:
        shape = "[..., N, 4]" if min_dim == 2 else "[..., 4]"
        raise ValueError(f"{name} must be {shape}, got {tuple(t.shape)}")
    return t, from_numpy


def _to_xyxy(t: torch.Tensor, fmt: str, dtype: torch.dtype, name: str) -> torch.Tensor:
    if fmt not in _BOX_FORMATS:
        raise ValueError(f"unknown box format {fmt!r}; expected one of {_BOX_FORMATS}")
    t = t.to(dtype)
    _check_finite(t, name)
    return t if fmt == "xyxy" else box_convert(t, fmt, "xyxy")


def box_convert(boxes: Any, in_fmt: str, out_fmt: str) -> Any:
    """Convert [..., 4] boxes between ``xyxy``, ``xywh`` and ``cxcywh`` (torchvision's names).

    Integer boxes stay integer where the conversion needs no halving (xyxy <-> xywh),
    as in torchvision; the same format returns a copy.
    """
    for fmt in (in_fmt, out_fmt):
        if fmt not in _BOX_FORMATS:
            raise ValueError(f"unknown box format {fmt!r}; expected one of {_BOX_FORMATS}")
    b, from_numpy = _real_tensor(boxes, "boxes")
    if b.shape[-1:] != (4,):
        raise ValueError(f"boxes must have a last dimension of 4, got {tuple(b.shape)}")
    if in_fmt == out_fmt:
        b = b.clone()
    else:
        x, y, z, w = b.unbind(-1)
        if in_fmt == "xywh":
            b = torch.stack([x, y, x + z, y + w], -1)
        elif in_fmt == "cxcywh":
            b = torch.stack([x - 0.5 * z, y - 0.5 * w, x + 0.5 * z, y + 0.5 * w], -1)
        x1, y1, x2, y2 = b.unbind(-1)
        if out_fmt == "xywh":
            b = torch.stack([x1, y1, x2 - x1, y2 - y1], -1)
        elif out_fmt == "cxcywh":
            b = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)
    return b.numpy() if from_numpy else b


def box_area(boxes: Any, fmt: str = "xyxy") -> Any:
    """Areas [...] of [..., 4] boxes (torchvision.ops.box_area); degenerate boxes
    (x2 < x1 or y2 < y1, or a negative width or height) have area 0.

    Integer boxes give int32/int64 areas, half floats float32 (torchvision's upcast).
    """
    if fmt not in _BOX_FORMATS:
        raise ValueError(f"unknown box format {fmt!r}; expected one of {_BOX_FORMATS}")
    b, from_numpy = _as_boxes(boxes, "boxes", 1)
    b = _upcast(b)
    if b.is_floating_point():
        _check_finite(b, "boxes")
    if fmt == "xyxy":
        w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    else:
        w, h = b[..., 2], b[..., 3]
    area = w.clamp_min(0) * h.clamp_min(0)
    return area.numpy() if from_numpy else area


def _pairwise(
    a: Any, b: Any, generalized: bool, fmt: str
) -> tuple[torch.Tensor, bool, torch.Tensor, torch.Tensor]:
    """IoU/GIoU matrices [..., N, M] of [..., N, 4] and [..., M, 4] boxes by the
    compiled kernel (leading dimensions broadcast); also whether the input was numpy,
    and both box sets as checked xyxy tensors in the computing dtype."""
    ta, from_numpy = _as_boxes(a, "boxes1", 2)
    tb, _ = _as_boxes(b, "boxes2", 2)
    if ta.device != tb.device:
        raise ValueError(f"boxes1 and boxes2 are on {ta.device} and {tb.device}")
    compute, out_dtype = _compute_dtype(ta, tb)
    ta = _to_xyxy(ta, fmt, compute, "boxes1").contiguous()
    tb = _to_xyxy(tb, fmt, compute, "boxes2").contiguous()
    op = torch.ops.evidex.box_iou_matrix
    if ta.dim() == 2 and tb.dim() == 2:
        return op(ta, tb, generalized).to(out_dtype), from_numpy, ta, tb
    try:
        batch = torch.broadcast_shapes(ta.shape[:-2], tb.shape[:-2])
    except RuntimeError as e:
        raise ValueError(
            f"the batch dimensions of boxes1 {tuple(ta.shape)} and boxes2 {tuple(tb.shape)} "
            "do not broadcast"
        ) from e
    n, m = ta.shape[-2], tb.shape[-2]
    fa = ta.expand(*batch, n, 4).reshape(-1, n, 4)
    fb = tb.expand(*batch, m, 4).reshape(-1, m, 4)
    rows = [op(fa[i], fb[i], generalized) for i in range(fa.shape[0])]
    out = torch.stack(rows) if rows else ta.new_empty((0, n, m))
    return out.reshape(*batch, n, m).to(out_dtype), from_numpy, ta, tb


def _elementwise(
    a: Any, b: Any, generalized: bool, fmt: str, eps: float
) -> tuple[torch.Tensor, bool, torch.Tensor, torch.Tensor]:
    """IoU/GIoU of matching [..., 4] boxes (broadcast), by the compiled kernel; also
    whether the input was numpy, and the broadcast xyxy boxes in the computing dtype."""
    ta, from_numpy = _as_boxes(a, "boxes1", 1)
    tb, _ = _as_boxes(b, "boxes2", 1)
    if ta.device != tb.device:
        raise ValueError(f"boxes1 and boxes2 are on {ta.device} and {tb.device}")
    compute, out_dtype = _compute_dtype(ta, tb)
    ta = _to_xyxy(ta, fmt, compute, "boxes1")
    tb = _to_xyxy(tb, fmt, compute, "boxes2")
    try:
        ta, tb = torch.broadcast_tensors(ta, tb)
    except RuntimeError as e:
        raise ValueError(
            f"boxes1 {tuple(ta.shape)} and boxes2 {tuple(tb.shape)} do not broadcast"
        ) from e
    shape = ta.shape[:-1]
    out = torch.ops.evidex.box_iou_pairs(
        ta.reshape(-1, 4).contiguous(), tb.reshape(-1, 4).contiguous(), generalized, float(eps)
    )
    return out.reshape(shape).to(out_dtype), from_numpy, ta, tb


def _numpy_out(t: torch.Tensor, from_numpy: bool) -> Any:
    return t.detach().numpy() if from_numpy else t


def box_iou(boxes1: Any, boxes2: Any, fmt: str = "xyxy") -> Any:
    """Pairwise IoU [..., N, M] of [..., N, 4] and [..., M, 4] boxes
    (torchvision.ops.box_iou), differentiable; 0 where the union is empty."""
    out, from_numpy, _, _ = _pairwise(boxes1, boxes2, False, fmt)
    return _numpy_out(out, from_numpy)


def generalized_box_iou(boxes1: Any, boxes2: Any, fmt: str = "xyxy") -> Any:
    """Pairwise generalised IoU [..., N, M], in [-1, 1], differentiable
    (torchvision.ops.generalized_box_iou)."""
    out, from_numpy, _, _ = _pairwise(boxes1, boxes2, True, fmt)
    return _numpy_out(out, from_numpy)


def _distance_terms(
    a: torch.Tensor, b: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(squared centre distance / squared enclosing diagonal, aspect-ratio term v)
    of broadcast xyxy boxes: the DIoU and CIoU penalties (Zheng et al., 2020)."""
    lt = torch.minimum(a[..., :2], b[..., :2])
    rb = torch.maximum(a[..., 2:], b[..., 2:])
    diagonal = (rb - lt).clamp_min(0).pow(2).sum(-1) + eps
    centres = ((a[..., :2] + a[..., 2:]) - (b[..., :2] + b[..., 2:])) / 2
    penalty = centres.pow(2).sum(-1) / diagonal
    wa, ha = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    wb, hb = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    v = (4 / math.pi**2) * (torch.atan(wa / ha) - torch.atan(wb / hb)).pow(2)
    return penalty, v


def _check_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    return float(eps)


def _complete(iou: torch.Tensor, penalty: torch.Tensor, v: torch.Tensor, eps: float):
    with torch.no_grad():  # CIoU's trade-off weight is a constant for the gradient
        alpha = v / (1 - iou + v + eps)
    return iou - penalty - alpha * v


def _pairwise_family(boxes1: Any, boxes2: Any, eps: float, complete: bool) -> Any:
    eps = _check_eps(eps)
    iou, from_numpy, ta, tb = _pairwise(boxes1, boxes2, False, "xyxy")
    a = ta.to(iou.dtype).unsqueeze(-2)  # [..., N, 1, 4]
    b = tb.to(iou.dtype).unsqueeze(-3)  # [..., 1, M, 4]
    penalty, v = _distance_terms(a, b, eps)
    out = _complete(iou, penalty, v, eps) if complete else iou - penalty
    return _numpy_out(out, from_numpy)


def distance_box_iou(boxes1: Any, boxes2: Any, eps: float = 1e-7) -> Any:
    """Pairwise distance IoU [..., N, M] (torchvision.ops.distance_box_iou): IoU
    less the squared centre distance over the squared enclosing diagonal."""
    return _pairwise_family(boxes1, boxes2, eps, complete=False)


def complete_box_iou(boxes1: Any, boxes2: Any, eps: float = 1e-7) -> Any:
    """Pairwise complete IoU [..., N, M] (torchvision.ops.complete_box_iou):
    distance IoU less the aspect-ratio term."""
    return _pairwise_family(boxes1, boxes2, eps, complete=True)


def box_iou_pairs(boxes1: Any, boxes2: Any, fmt: str = "xyxy") -> Any:
    """Elementwise IoU [...] of matching [..., 4] boxes, differentiable."""
    out, from_numpy, _, _ = _elementwise(boxes1, boxes2, False, fmt, 0.0)
    return _numpy_out(out, from_numpy)


def generalized_box_iou_pairs(boxes1: Any, boxes2: Any, fmt: str = "xyxy") -> Any:
    """Elementwise generalised IoU [...] of matching [..., 4] boxes, differentiable."""
    out, from_numpy, _, _ = _elementwise(boxes1, boxes2, True, fmt, 0.0)
    return _numpy_out(out, from_numpy)


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return loss.mean() if loss.numel() else loss.sum()
    return loss.sum() if reduction == "sum" else loss


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"Invalid value for reduction: {reduction!r}; expected 'none', 'mean' or 'sum'"
        )


def generalized_box_iou_loss(
    boxes1: torch.Tensor,
    boxes2: torch.Tensor,
    reduction: str = "none",
    eps: float = 1e-7,
    *,
    fmt: str = "xyxy",
) -> torch.Tensor:
    """``1 - GIoU`` of matching [..., 4] boxes (torchvision.ops.generalized_box_iou_loss:
    same arguments, ``eps`` guarding both ratios), by the compiled kernel with its
    compiled gradient."""
    _check_reduction(reduction)
    giou, _, _, _ = _elementwise(boxes1, boxes2, True, fmt, _check_eps(eps))
    return _reduce(1 - giou, reduction)


def _loss_family(boxes1: Any, boxes2: Any, reduction: str, eps: float, complete: bool):
    _check_reduction(reduction)
    eps = _check_eps(eps)
    iou, _, ta, tb = _elementwise(boxes1, boxes2, False, "xyxy", eps)
    penalty, v = _distance_terms(ta.to(iou.dtype), tb.to(iou.dtype), eps)
    score = _complete(iou, penalty, v, eps) if complete else iou - penalty
    return _reduce(1 - score, reduction)


def distance_box_iou_loss(
    boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7
) -> torch.Tensor:
    """``1 - DIoU`` of matching [..., 4] boxes (torchvision.ops.distance_box_iou_loss)."""
    return _loss_family(boxes1, boxes2, reduction, eps, complete=False)


def complete_box_iou_loss(
    boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7
) -> torch.Tensor:
    """``1 - CIoU`` of matching [..., 4] boxes (torchvision.ops.complete_box_iou_loss)."""
    return _loss_family(boxes1, boxes2, reduction, eps, complete=True)


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
