"""The compiled kernels as torch custom ops (``torch.ops.evidex.*``).

Each op has a CPU kernel (evidex._core.ops, called on the tensors' numpy views), a
CUDA kernel (evidex._cuda, called with device pointers on torch's current stream),
a fake implementation for tracing, and an autograd formula where it has a
gradient. Nothing here compiles against torch.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from .. import _core
from .. import cuda as _cuda_loader

_THREADS = 0  # all cores
_MODES = {"softmax": 0, "successive": 1}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _cuda():
    return _cuda_loader.module()


def _stream(t: torch.Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def _dtype_code(t: torch.Tensor) -> int:
    if t.dtype == torch.float32:
        return 0
    if t.dtype == torch.float64:
        return 1
    raise TypeError(f"CUDA kernels take float32 or float64, got {t.dtype}")


# ----------------------------------------------------------------- argument checks
# Every implementation of an op (CPU, CUDA, fake) checks its arguments: a raw
# torch.ops.evidex call gets the same clear errors as the Python functions.
def _require(ok: bool, op: str, what: str) -> None:
    if not ok:
        raise ValueError(f"evidex::{op}: {what}")


def _check_float(t: torch.Tensor, op: str, name: str) -> None:
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"evidex::{op}: {name} must be float32 or float64, got {t.dtype}")


def _check_selection(scores: torch.Tensor, k: int, tau: float, mode: int, op: str) -> None:
    _check_float(scores, op, "scores")
    _require(scores.dim() == 2, op, f"scores must be 2-D [rows, n], got {tuple(scores.shape)}")
    _require(1 <= k <= scores.shape[1], op, f"k must be in [1, {scores.shape[1]}], got {k}")
    _require(tau > 0 and math.isfinite(tau), op, f"tau must be positive and finite, got {tau}")
    _require(mode in (0, 1), op, f"mode must be 0 (softmax) or 1 (successive), got {mode}")


def _check_backward(
    scores: torch.Tensor, indices: torch.Tensor, grad: torch.Tensor, tau: float, mode: int,
    per_slot: bool,
) -> None:  # fmt: skip
    op = "st_topk_backward"
    _check_float(scores, op, "scores")
    _require(scores.dim() == 2 and indices.dim() == 2, op, "scores and indices must be 2-D")
    rows, n = scores.shape
    _require(indices.shape[0] == rows and indices.dtype == torch.int64, op,
             "indices must be int64 [rows, k]")  # fmt: skip
    k = indices.shape[1]
    want = (rows, k, n) if per_slot else (rows, n)
    _require(tuple(grad.shape) == want, op, f"grad must be {want}, got {tuple(grad.shape)}")
    _require(tau > 0 and math.isfinite(tau), op, f"tau must be positive and finite, got {tau}")
    _require(mode in (0, 1), op, f"mode must be 0 (softmax) or 1 (successive), got {mode}")


def _check_box_backward(
    a: torch.Tensor, b: torch.Tensor, grad: torch.Tensor, op: str, pairs: bool
) -> None:
    _check_boxes(a, b, op, pairs=pairs)
    want = (a.shape[0],) if pairs else (a.shape[0], b.shape[0])
    _require(tuple(grad.shape) == want, op, f"grad must be {want}, got {tuple(grad.shape)}")


def _check_eps(eps: float, op: str) -> None:
    _require(eps >= 0 and math.isfinite(eps), op, f"eps must be finite and >= 0, got {eps}")


def _check_frames(frames: torch.Tensor, queries: torch.Tensor) -> None:
    op = "frame_scores"
    _check_float(frames, op, "frames")
    _check_float(queries, op, "queries")
    _require(frames.dim() == 2 and queries.dim() == 2, op, "frames and queries must be 2-D")
    _require(frames.shape[1] == queries.shape[1] and frames.shape[1] >= 1, op,
             f"frames [T, D] and queries [Q, D] need one D >= 1, got {tuple(frames.shape)} "
             f"and {tuple(queries.shape)}")  # fmt: skip
    _require(frames.dtype == queries.dtype, op, "frames and queries must share a dtype")


def _check_keyframes(scores: torch.Tensor, k: int, min_gap: int) -> None:
    op = "select_keyframes"
    _check_float(scores, op, "scores")
    _require(scores.dim() == 1, op, f"scores must be 1-D [T], got {tuple(scores.shape)}")
    _require(1 <= k <= max(1, scores.shape[0]), op, f"k must be in [1, T], got {k}")
    _require(min_gap >= 1, op, f"min_gap must be at least 1, got {min_gap}")


def _check_boxes(a: torch.Tensor, b: torch.Tensor, op: str, pairs: bool, width: int = 4) -> None:
    for t, name in ((a, "boxes1"), (b, "boxes2")):
        _check_float(t, op, name)
        _require(t.dim() == 2 and t.shape[1] == width, op,
                 f"{name} must be [N, {width}], got {tuple(t.shape)}")  # fmt: skip
    _require(a.dtype == b.dtype, op, "both inputs must share a dtype")
    if pairs:
        _require(a.shape[0] == b.shape[0], op, "both inputs must have as many rows")


# ----------------------------------------------------------------- top-k selection
@torch.library.custom_op("evidex::st_topk", mutates_args=(), device_types="cpu")
def st_topk_op(
    scores: torch.Tensor, k: int, tau: float, mode: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of [R, N] scores -> (k-hot mask [R, N], indices [R, k]); tau and mode
    only shape the backward pass."""
    _check_selection(scores, k, tau, mode, "st_topk")
    # Outputs from torch's caching allocator: no fresh pages faulted in per call.
    s = scores.detach().contiguous()
    mask = torch.empty_like(s)
    idx = torch.empty((s.shape[0], k), dtype=torch.int64)
    _core.ops.topk_rows_into(s.numpy(), k, mask.numpy(), idx.numpy(), _THREADS)
    return mask, idx


@st_topk_op.register_kernel("cuda")
def _(scores, k, tau, mode):
    _check_selection(scores, k, tau, mode, "st_topk")
    s = scores.contiguous()
    rows, n = s.shape
    mask = torch.empty_like(s)
    idx = torch.empty((rows, k), dtype=torch.int64, device=s.device)
    if rows:
        _cuda().topk_rows(
            s.data_ptr(), mask.data_ptr(), idx.data_ptr(), rows, n, k, _dtype_code(s), _stream(s)
        )
    return mask, idx


@st_topk_op.register_fake
def _(scores, k, tau, mode):
    _check_selection(scores, k, tau, mode, "st_topk")
    return torch.empty_like(scores), scores.new_empty((scores.shape[0], k), dtype=torch.int64)


@torch.library.custom_op("evidex::st_topk_backward", mutates_args=(), device_types="cpu")
def st_topk_backward_op(
    scores: torch.Tensor,
    indices: torch.Tensor,
    grad: torch.Tensor,
    tau: float,
    mode: int,
    per_slot: bool,
) -> torch.Tensor:
    """d loss / d scores of the straight-through selector (see ops.h)."""
    _check_backward(scores, indices, grad, tau, mode, per_slot)
    s = scores.detach().contiguous()
    out = torch.empty_like(s)
    _core.ops.st_topk_backward_into(
        s.numpy(), _np(indices), _np(grad.to(s.dtype)), tau, mode, per_slot, out.numpy(), _THREADS
    )
    return out


@st_topk_backward_op.register_kernel("cuda")
def _(scores, indices, grad, tau, mode, per_slot):
    _check_backward(scores, indices, grad, tau, mode, per_slot)
    s, i, g = scores.contiguous(), indices.contiguous(), grad.to(scores.dtype).contiguous()
    out = torch.empty_like(s)
    rows, n = s.shape
    if rows:
        _cuda().st_topk_backward(
            s.data_ptr(),
            i.data_ptr(),
            g.data_ptr(),
            out.data_ptr(),
            rows,
            n,
            i.shape[1],
            tau,
            mode,
            per_slot,
            _dtype_code(s),
            _stream(s),
        )
    return out


@st_topk_backward_op.register_fake
def _(scores, indices, grad, tau, mode, per_slot):
    _check_backward(scores, indices, grad, tau, mode, per_slot)
    return torch.empty_like(scores)


def _st_topk_setup(ctx, inputs, output):
    scores, _, tau, mode = inputs
    ctx.save_for_backward(scores, output[1])
    ctx.tau, ctx.mode = tau, mode


def _st_topk_backward(ctx, grad_mask, grad_indices):
    scores, indices = ctx.saved_tensors
    grad = st_topk_backward_op(scores, indices, grad_mask, ctx.tau, ctx.mode, False)
    return grad, None, None, None


torch.library.register_autograd("evidex::st_topk", _st_topk_backward, setup_context=_st_topk_setup)


@torch.library.custom_op("evidex::st_slots", mutates_args=(), device_types="cpu")
def st_slots_op(
    scores: torch.Tensor, k: int, tau: float, mode: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of [R, N] scores -> (one-hot per slot [R, k, N] in rank order, indices [R, k])."""
    _check_selection(scores, k, tau, mode, "st_slots")
    mask, idx = st_topk_op(scores, k, tau, mode)
    slots = torch.zeros((scores.shape[0], k, scores.shape[1]), dtype=scores.dtype)
    slots.scatter_(2, idx.unsqueeze(-1), 1.0)
    return slots, idx


@st_slots_op.register_kernel("cuda")
def _(scores, k, tau, mode):
    _check_selection(scores, k, tau, mode, "st_slots")
    _, idx = st_topk_op(scores, k, tau, mode)
    slots = torch.zeros(
        (scores.shape[0], k, scores.shape[1]), dtype=scores.dtype, device=scores.device
    )
    slots.scatter_(2, idx.unsqueeze(-1), 1.0)
    return slots, idx


@st_slots_op.register_fake
def _(scores, k, tau, mode):
    _check_selection(scores, k, tau, mode, "st_slots")
    return (
        scores.new_empty((scores.shape[0], k, scores.shape[1])),
        scores.new_empty((scores.shape[0], k), dtype=torch.int64),
    )


def _st_slots_backward(ctx, grad_slots, grad_indices):
    scores, indices = ctx.saved_tensors
    grad = st_topk_backward_op(scores, indices, grad_slots.contiguous(), ctx.tau, ctx.mode, True)
    return grad, None, None, None


torch.library.register_autograd(
    "evidex::st_slots", _st_slots_backward, setup_context=_st_topk_setup
)


# ----------------------------------------------------------------- boxes
@torch.library.custom_op("evidex::box_iou_matrix", mutates_args=(), device_types="cpu")
def box_iou_matrix_op(
    boxes1: torch.Tensor, boxes2: torch.Tensor, generalized: bool
) -> torch.Tensor:
    """Pairwise [N, M] IoU or GIoU of xyxy boxes."""
    _check_boxes(boxes1, boxes2, "box_iou_matrix", pairs=False)
    out = _core.ops.box_iou_matrix(_np(boxes1), _np(boxes2), generalized, _THREADS)
    return torch.from_numpy(out)


@box_iou_matrix_op.register_kernel("cuda")
def _(boxes1, boxes2, generalized):
    _check_boxes(boxes1, boxes2, "box_iou_matrix", pairs=False)
    a, b = boxes1.contiguous(), boxes2.contiguous()
    out = torch.empty((a.shape[0], b.shape[0]), dtype=a.dtype, device=a.device)
    if out.numel():
        _cuda().box_iou_matrix(
            a.data_ptr(),
            b.data_ptr(),
            out.data_ptr(),
            a.shape[0],
            b.shape[0],
            generalized,
            _dtype_code(a),
            _stream(a),
        )
    return out


@box_iou_matrix_op.register_fake
def _(boxes1, boxes2, generalized):
    _check_boxes(boxes1, boxes2, "box_iou_matrix", pairs=False)
    return boxes1.new_empty((boxes1.shape[0], boxes2.shape[0]))


@torch.library.custom_op("evidex::box_iou_matrix_backward", mutates_args=(), device_types="cpu")
def box_iou_matrix_backward_op(
    boxes1: torch.Tensor, boxes2: torch.Tensor, grad: torch.Tensor, generalized: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_box_backward(boxes1, boxes2, grad, "box_iou_matrix_backward", pairs=False)
    g = _np(grad.to(boxes1.dtype))
    ga, gb = _core.ops.box_iou_matrix_backward(_np(boxes1), _np(boxes2), g, generalized, _THREADS)
    return torch.from_numpy(ga), torch.from_numpy(gb)


@box_iou_matrix_backward_op.register_kernel("cuda")
def _(boxes1, boxes2, grad, generalized):
    _check_box_backward(boxes1, boxes2, grad, "box_iou_matrix_backward", pairs=False)
    a, b, g = boxes1.contiguous(), boxes2.contiguous(), grad.to(boxes1.dtype).contiguous()
    ga, gb = torch.empty_like(a), torch.empty_like(b)
    if a.shape[0] + b.shape[0]:
        _cuda().box_iou_matrix_backward(
            a.data_ptr(),
            b.data_ptr(),
            g.data_ptr(),
            ga.data_ptr(),
            gb.data_ptr(),
            a.shape[0],
            b.shape[0],
            generalized,
            _dtype_code(a),
            _stream(a),
        )
    return ga, gb


@box_iou_matrix_backward_op.register_fake
def _(boxes1, boxes2, grad, generalized):
    _check_box_backward(boxes1, boxes2, grad, "box_iou_matrix_backward", pairs=False)
    return torch.empty_like(boxes1), torch.empty_like(boxes2)


def _matrix_setup(ctx, inputs, output):
    boxes1, boxes2, generalized = inputs
    ctx.save_for_backward(boxes1, boxes2)
    ctx.generalized = generalized


def _matrix_backward(ctx, grad):
    boxes1, boxes2 = ctx.saved_tensors
    ga, gb = box_iou_matrix_backward_op(boxes1, boxes2, grad.contiguous(), ctx.generalized)
    return ga, gb, None


torch.library.register_autograd(
    "evidex::box_iou_matrix", _matrix_backward, setup_context=_matrix_setup
)


@torch.library.custom_op("evidex::box_iou_pairs", mutates_args=(), device_types="cpu")
def box_iou_pairs_op(
    boxes1: torch.Tensor, boxes2: torch.Tensor, generalized: bool, eps: float
) -> torch.Tensor:
    """Elementwise [N] IoU or GIoU of two [N, 4] xyxy box sets (eps as torchvision's losses)."""
    _check_boxes(boxes1, boxes2, "box_iou_pairs", pairs=True)
    _check_eps(eps, "box_iou_pairs")
    return torch.from_numpy(_core.ops.box_iou_pairs(_np(boxes1), _np(boxes2), generalized, eps))


@box_iou_pairs_op.register_kernel("cuda")
def _(boxes1, boxes2, generalized, eps):
    _check_boxes(boxes1, boxes2, "box_iou_pairs", pairs=True)
    _check_eps(eps, "box_iou_pairs")
    a, b = boxes1.contiguous(), boxes2.contiguous()
    out = torch.empty(a.shape[0], dtype=a.dtype, device=a.device)
    if out.numel():
        _cuda().box_iou_pairs(
            a.data_ptr(),
            b.data_ptr(),
            out.data_ptr(),
            a.shape[0],
            generalized,
            eps,
            _dtype_code(a),
            _stream(a),
        )
    return out


@box_iou_pairs_op.register_fake
def _(boxes1, boxes2, generalized, eps):
    _check_boxes(boxes1, boxes2, "box_iou_pairs", pairs=True)
    _check_eps(eps, "box_iou_pairs")
    return boxes1.new_empty(boxes1.shape[0])


@torch.library.custom_op("evidex::box_iou_pairs_backward", mutates_args=(), device_types="cpu")
def box_iou_pairs_backward_op(
    boxes1: torch.Tensor, boxes2: torch.Tensor, grad: torch.Tensor, generalized: bool, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_box_backward(boxes1, boxes2, grad, "box_iou_pairs_backward", pairs=True)
    ga, gb = _core.ops.box_iou_pairs_backward(
        _np(boxes1), _np(boxes2), _np(grad.to(boxes1.dtype)), generalized, eps
    )
    return torch.from_numpy(ga), torch.from_numpy(gb)


@box_iou_pairs_backward_op.register_kernel("cuda")
def _(boxes1, boxes2, grad, generalized, eps):
    _check_box_backward(boxes1, boxes2, grad, "box_iou_pairs_backward", pairs=True)
    a, b, g = boxes1.contiguous(), boxes2.contiguous(), grad.to(boxes1.dtype).contiguous()
    ga, gb = torch.empty_like(a), torch.empty_like(b)
    if a.shape[0]:
        _cuda().box_iou_pairs_backward(
            a.data_ptr(),
            b.data_ptr(),
            g.data_ptr(),
            ga.data_ptr(),
            gb.data_ptr(),
            a.shape[0],
            generalized,
            eps,
            _dtype_code(a),
            _stream(a),
        )
    return ga, gb


@box_iou_pairs_backward_op.register_fake
def _(boxes1, boxes2, grad, generalized, eps):
    _check_box_backward(boxes1, boxes2, grad, "box_iou_pairs_backward", pairs=True)
    return torch.empty_like(boxes1), torch.empty_like(boxes2)


def _pairs_setup(ctx, inputs, output):
    boxes1, boxes2, generalized, eps = inputs
    ctx.save_for_backward(boxes1, boxes2)
    ctx.generalized = generalized
    ctx.eps = eps


def _pairs_backward(ctx, grad):
    boxes1, boxes2 = ctx.saved_tensors
    ga, gb = box_iou_pairs_backward_op(boxes1, boxes2, grad.contiguous(), ctx.generalized, ctx.eps)
    return ga, gb, None, None


torch.library.register_autograd(
    "evidex::box_iou_pairs", _pairs_backward, setup_context=_pairs_setup
)


# ----------------------------------------------------------------- frames
@torch.library.custom_op("evidex::frame_scores", mutates_args=(), device_types="cpu")
def frame_scores_op(frames: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [Q, T] of queries [Q, D] against frames [T, D]."""
    _check_frames(frames, queries)
    return torch.from_numpy(_core.ops.frame_scores(_np(frames), _np(queries), _THREADS))


@frame_scores_op.register_kernel("cuda")
def _(frames, queries):
    _check_frames(frames, queries)
    f, q = frames.contiguous(), queries.contiguous()
    out = torch.empty((q.shape[0], f.shape[0]), dtype=f.dtype, device=f.device)
    if out.numel():
        _cuda().frame_scores(
            f.data_ptr(),
            q.data_ptr(),
            out.data_ptr(),
            f.shape[0],
            q.shape[0],
            f.shape[1],
            _dtype_code(f),
            _stream(f),
        )
    return out


@frame_scores_op.register_fake
def _(frames, queries):
    _check_frames(frames, queries)
    return frames.new_empty((queries.shape[0], frames.shape[0]))


def _frame_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1], output)


def _frame_backward(ctx, grad):
    # d cos(q, f) / d q = (f_hat - cos * q_hat) / |q|, and symmetrically for f.
    frames, queries, cos = ctx.saved_tensors
    fn = frames.norm(dim=1, keepdim=True).clamp_min(1e-12)
    qn = queries.norm(dim=1, keepdim=True).clamp_min(1e-12)
    fh, qh = frames / fn, queries / qn
    grad_q = (grad @ fh - (grad * cos).sum(1, keepdim=True) * qh) / qn
    grad_f = (grad.t() @ qh - (grad * cos).sum(0).unsqueeze(1) * fh) / fn
    return grad_f, grad_q


torch.library.register_autograd("evidex::frame_scores", _frame_backward, setup_context=_frame_setup)


@torch.library.custom_op("evidex::select_keyframes", mutates_args=(), device_types="cpu")
def select_keyframes_op(scores: torch.Tensor, k: int, min_gap: int) -> torch.Tensor:
    """Greedy temporal NMS over [T] scores -> kept frame indices in time order."""
    _check_keyframes(scores, k, min_gap)
    return torch.from_numpy(_core.ops.select_keyframes(_np(scores), k, min_gap))


@select_keyframes_op.register_kernel("cuda")
def _(scores, k, min_gap):
    _check_keyframes(scores, k, min_gap)
    s = scores.contiguous()
    out = torch.empty(min(k, s.shape[0]), dtype=torch.int64, device=s.device)
    count = torch.zeros(1, dtype=torch.int64, device=s.device)
    if s.shape[0]:
        _cuda().select_keyframes(
            s.data_ptr(),
            out.data_ptr(),
            count.data_ptr(),
            s.shape[0],
            k,
            min_gap,
            _dtype_code(s),
            _stream(s),
        )
    return out[: int(count.item())].clone()


@select_keyframes_op.register_fake
def _(scores, k, min_gap):
    _check_keyframes(scores, k, min_gap)
    n = torch.library.get_ctx().new_dynamic_size()
    return scores.new_empty(n, dtype=torch.int64)


@torch.library.custom_op("evidex::temporal_iou", mutates_args=(), device_types="cpu")
def temporal_iou_op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise [N, M] IoU of [start, end] intervals."""
    _check_boxes(a, b, "temporal_iou", pairs=False, width=2)
    return torch.from_numpy(_core.ops.temporal_iou_matrix(_np(a), _np(b)))


@temporal_iou_op.register_kernel("cuda")
def _(a, b):
    _check_boxes(a, b, "temporal_iou", pairs=False, width=2)
    a, b = a.contiguous(), b.contiguous()
    out = torch.empty((a.shape[0], b.shape[0]), dtype=a.dtype, device=a.device)
    if out.numel():
        _cuda().temporal_iou_matrix(
            a.data_ptr(),
            b.data_ptr(),
            out.data_ptr(),
            a.shape[0],
            b.shape[0],
            _dtype_code(a),
            _stream(a),
        )
    return out


@temporal_iou_op.register_fake
def _(a, b):
    _check_boxes(a, b, "temporal_iou", pairs=False, width=2)
    return a.new_empty((a.shape[0], b.shape[0]))


def set_num_threads(n: int) -> None:
    """Threads of the CPU kernels (0: all cores)."""
    global _THREADS
    _THREADS = max(0, int(n))


_THREADS = int(os.environ.get("EVIDEX_OPS_THREADS", "0"))
