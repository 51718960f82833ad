"""evidex.ops against plain-torch references, torch.library checks, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import evidex
import evidex.ops as O

torch.manual_seed(0)


# ----------------------------------------------------------------- references
def ref_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    hard = torch.zeros_like(scores).scatter_(-1, order, 1.0)
    return hard, order


def ref_st_topk(scores, k, tau, mode):
    hard, idx = ref_topk(scores.detach(), k)
    if mode == "softmax":
        soft = torch.softmax(scores / tau, -1)
        return hard - soft.detach() + soft, idx
    return ref_slots(scores, idx, tau).sum(-2), idx


def ref_slots(scores, idx, tau):
    """CLaRa's released successive masked softmax, per slot: [..., k, N]."""
    taken = torch.zeros_like(scores).detach()
    slots = []
    for j in range(idx.shape[-1]):
        soft = torch.softmax(scores / tau + torch.log(1 - taken + 1e-8), -1)
        one = torch.zeros_like(scores).scatter_(-1, idx[..., j : j + 1], 1.0)
        slots.append(one - soft.detach() + soft)
        taken = taken + one
    return torch.stack(slots, -2)


def ref_box_iou(a, b, generalized=False):
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1e-30), torch.zeros_like(union))
    if not generalized:
        return iou
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp_min(0)
    enc = wh[..., 0] * wh[..., 1]
    return torch.where(enc > 0, iou - (enc - union) / enc.clamp_min(1e-30), iou)


def random_boxes(n, dtype=torch.float64, degenerate=False):
    xy = torch.rand(n, 2, dtype=dtype) * 10
    wh = torch.rand(n, 2, dtype=dtype) * 5 + 0.1
    boxes = torch.cat([xy, xy + wh], 1)
    if degenerate and n >= 3:
        boxes[0, 2] = boxes[0, 0]  # zero width
        boxes[1, 2] = boxes[1, 0] - 1  # x2 < x1
        boxes[2] = boxes[2, :2].repeat(2)  # a point
    return boxes


# ----------------------------------------------------------------- st_topk
CASES = [((4, 10), 3), ((2, 3, 7), 7), ((5, 1), 1), ((0, 6), 2), ((3, 64), 1), ((1, 4096), 8)]


@pytest.mark.parametrize("mode", ["softmax", "successive"])
@pytest.mark.parametrize(("shape", "k"), CASES)
@pytest.mark.parametrize("tau", [1.0, 0.02, 50.0])
def test_st_topk_matches_reference(mode, shape, k, tau) -> None:
    scores = torch.randn(*shape, dtype=torch.float64)
    a = scores.clone().requires_grad_()
    b = scores.clone().requires_grad_()
    weights, idx = O.st_topk(a, k, tau=tau, mode=mode)
    ref_w, ref_idx = ref_st_topk(b, k, tau, mode)
    torch.testing.assert_close(idx, ref_idx)
    torch.testing.assert_close(weights, ref_topk(scores, k)[0])  # exactly 0/1
    g = torch.randn(*shape, dtype=torch.float64)
    (weights * g).sum().backward()
    (ref_w * g).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-9)


def test_st_topk_ties_take_lower_index_and_dim_argument() -> None:
    s = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]])
    _, idx = O.st_topk(s, 2)
    assert idx.tolist() == [[1, 2]]
    x = torch.randn(6, 4)
    w, idx = O.st_topk(x, 2, dim=0)
    assert w.shape == (6, 4) and idx.shape == (2, 4)
    torch.testing.assert_close(idx, ref_topk(x.t(), 2)[1].t())


def test_st_topk_non_contiguous_and_expanded() -> None:
    base = torch.randn(8, 12, dtype=torch.float64)
    for s in (base.t(), base[:, ::2], base[:1].expand(5, 12)):
        a = s.clone().requires_grad_() if s.is_contiguous() else s.detach().requires_grad_()
        w, idx = O.st_topk(a, 3, mode="successive", tau=0.3)
        ref_w, ref_idx = ref_st_topk(s.detach().clone().requires_grad_(), 3, 0.3, "successive")
        torch.testing.assert_close(idx, ref_idx)
        w.sum().backward()


def test_st_topk_float32_at_clara_temperature_is_finite() -> None:
    cos = torch.nn.functional.cosine_similarity(
        torch.randn(16, 1, 128), torch.randn(16, 500, 128), -1
    )
    s = cos.float().requires_grad_()
    w, _ = O.st_topk(s, 5, tau=0.02, mode="successive")
    (w * torch.randn_like(w)).sum().backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().max() < 1e4


@pytest.mark.parametrize("mode", ["softmax", "successive"])
def test_st_topk_gradient_is_the_surrogates_numerical_derivative(mode) -> None:
    """The hard mask is piecewise constant; its straight-through gradient must equal
    the finite-difference derivative of the soft surrogate (picks held fixed)."""
    s = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 6, dtype=torch.float64)
    w, idx = O.st_topk(s, 2, tau=0.7, mode=mode)
    (w * g).sum().backward()

    def surrogate(x):
        if mode == "softmax":
            return (torch.softmax(x / 0.7, -1) * g).sum()
        taken, total = torch.zeros_like(x), torch.zeros((), dtype=x.dtype)
        for j in range(2):
            total = total + (torch.softmax(x / 0.7 + torch.log(1 - taken + 1e-8), -1) * g).sum()
            taken = taken.scatter(-1, idx[:, j : j + 1], 1.0)
        return total

    eps = 1e-6
    numeric = torch.zeros_like(s)
    for i in range(s.numel()):
        d = torch.zeros(s.numel(), dtype=torch.float64)
        d[i] = eps
        d = d.view_as(s)
        numeric.view(-1)[i] = (surrogate(s.detach() + d) - surrogate(s.detach() - d)) / (2 * eps)
    torch.testing.assert_close(s.grad, numeric, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------- st_select
@pytest.mark.parametrize("mode", ["softmax", "successive"])
def test_st_select_forward_sees_chosen_docs_and_gradients_reach_query(mode) -> None:
    B, N, D, k = 3, 9, 16, 3
    q = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    docs = torch.randn(B, N, D, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[0, -3:] = False
    selected, weights, idx = O.st_select(q, docs, k, tau=0.1, mask=mask, mode=mode)
    assert selected.shape == (B, k, D) and weights.shape == (B, k, N)
    for b in range(B):
        torch.testing.assert_close(selected[b], docs[b, idx[b]])
    assert (idx[0] < N - 3).all()
    cos = torch.nn.functional.cosine_similarity(q[:, None], docs, -1)
    ref_idx = ref_topk(cos.masked_fill(~mask, -1e9).detach(), k)[1]
    torch.testing.assert_close(idx, ref_idx)
    # Gradients against the plain-torch composition.
    q2 = q.detach().clone().requires_grad_()
    d2 = docs.detach().clone().requires_grad_()
    s2 = torch.nn.functional.cosine_similarity(q2[:, None], d2, -1).masked_fill(~mask, -1e4 / 0.1)
    if mode == "successive":
        w2 = ref_slots(s2, ref_idx, 0.1)
    else:
        soft = torch.softmax(s2 / 0.1, -1).unsqueeze(1)
        hard = torch.zeros(B, k, N, dtype=torch.float64).scatter_(-1, ref_idx[..., None], 1.0)
        w2 = hard - soft.detach() + soft
    g = torch.randn(B, k, D, dtype=torch.float64)
    (selected * g).sum().backward()
    ((w2 @ d2) * g).sum().backward()
    assert q.grad.abs().sum() > 0
    torch.testing.assert_close(q.grad, q2.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(docs.grad, d2.grad, rtol=1e-6, atol=1e-9)


def test_st_select_errors() -> None:
    q, d = torch.randn(2, 4), torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="k must be in"):
        O.st_select(q, d, 6)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 2:] = False
    with pytest.raises(ValueError, match="unmasked"):
        O.st_select(q, d, 3, mask=mask)
    with pytest.raises(ValueError, match=r"query \[B, D\]"):
        O.st_select(q, d[:, :, :3], 2)


# ----------------------------------------------------------------- boxes
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("generalized", [False, True])
def test_box_iou_matches_reference(dtype, generalized) -> None:
    a, b = random_boxes(30, dtype, degenerate=True), random_boxes(17, dtype, degenerate=True)
    fn = O.generalized_box_iou if generalized else O.box_iou
    out = fn(a, b)
    assert out.dtype == dtype and out.shape == (30, 17) and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref_box_iou(a, b, generalized))
    pairs = (O.generalized_box_iou_pairs if generalized else O.box_iou_pairs)(a[:17], b)
    torch.testing.assert_close(pairs, ref_box_iou(a[:17], b, generalized).diagonal())
    np.testing.assert_allclose(fn(a.numpy(), b.numpy()), out.numpy(), rtol=1e-6)


def test_box_formats_and_area() -> None:
    xyxy = torch.tensor([[1.0, 2.0, 4.0, 8.0]])
    xywh = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    cxcywh = torch.tensor([[2.5, 5.0, 3.0, 6.0]])
    torch.testing.assert_close(O.box_convert(xyxy, "xyxy", "xywh"), xywh)
    torch.testing.assert_close(O.box_convert(xywh, "xywh", "cxcywh"), cxcywh)
    torch.testing.assert_close(O.box_convert(cxcywh, "cxcywh", "xyxy"), xyxy)
    torch.testing.assert_close(O.box_area(xyxy), torch.tensor([18.0]))
    torch.testing.assert_close(O.box_area(xywh, fmt="xywh"), torch.tensor([18.0]))
    torch.testing.assert_close(O.box_iou(cxcywh, cxcywh, fmt="cxcywh"), torch.tensor([[1.0]]))
    shifted = torch.tensor([1.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(
        O.box_iou(xywh, xywh + shifted, fmt="xywh"),
        O.box_iou(xyxy, xyxy + torch.tensor([1.0, 0.0, 1.0, 0.0])),
    )
    torch.testing.assert_close(
        O.box_area(torch.tensor([[3.0, 3.0, 1.0, 5.0]])), torch.tensor([0.0])
    )


def test_giou_loss_gradients() -> None:
    # Degenerate boxes without exact ties (at a tie, subgradient conventions differ).
    a = random_boxes(12)
    a[1, 2] = a[1, 0] - 1.0  # x2 < x1
    a[4, 3] = a[4, 1] - 0.5  # y2 < y1
    a.requires_grad_()
    b = random_boxes(12).requires_grad_()
    loss = O.generalized_box_iou_loss(a, b, reduction="sum")
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ref = (1 - ref_box_iou(a2, b2, True).diagonal()).sum()
    torch.testing.assert_close(loss, ref)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(b.grad, b2.grad)
    x, y = random_boxes(6).requires_grad_(), random_boxes(6).requires_grad_()
    assert torch.autograd.gradcheck(O.generalized_box_iou_pairs, (x, y))
    assert O.generalized_box_iou_loss(x, y, "mean").shape == ()


# ----------------------------------------------------------------- frames
def test_frame_scores_and_keyframes() -> None:
    frames = torch.randn(3600, 512)
    queries = torch.randn(4, 512)
    s = O.frame_scores(frames, queries)
    ref = (
        torch.nn.functional.normalize(queries, dim=1)
        @ torch.nn.functional.normalize(frames, dim=1).t()
    )
    torch.testing.assert_close(s, ref, rtol=1e-4, atol=1e-5)
    picked = O.select_keyframes(s[0], k=8, min_gap=30)
    assert picked.tolist() == sorted(picked.tolist()) and len(picked) == 8
    assert (picked.diff() >= 30).all()
    # Greedy NMS reference.
    order = torch.sort(s[0], descending=True, stable=True).indices.tolist()
    kept: list[int] = []
    for f in order:
        if all(abs(f - g) >= 30 for g in kept):
            kept.append(f)
        if len(kept) == 8:
            break
    assert picked.tolist() == sorted(kept)
    np.testing.assert_array_equal(O.select_keyframes(s[0].numpy(), 8, 30), picked.numpy())


def test_frame_scores_gradcheck() -> None:
    f = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    q = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(O.frame_scores, (f, q))


def test_temporal_iou() -> None:
    a = torch.tensor([[0.0, 10.0], [5.0, 5.0], [3.0, 1.0]])
    b = torch.tensor([[5.0, 15.0], [0.0, 10.0]])
    out = O.temporal_iou(a, b)
    torch.testing.assert_close(out, torch.tensor([[5 / 15, 1.0], [0.0, 0.0], [0.0, 0.0]]))


def _greedy_keyframes(scores: torch.Tensor, k: int, gap: int) -> list[int]:
    kept: list[int] = []
    for f in torch.sort(scores, descending=True, stable=True).indices.tolist():
        if all(abs(f - g) >= gap for g in kept):
            kept.append(f)
        if len(kept) == k:
            break
    return sorted(kept)


@pytest.mark.parametrize("kind", ["ties", "smooth", "constant"])
@pytest.mark.parametrize("gap", [1, 3, 40])
def test_select_keyframes_matches_greedy_nms_with_ties(kind: str, gap: int) -> None:
    g = torch.Generator().manual_seed(gap)
    if kind == "ties":  # few distinct values: ties everywhere, broken by lower index
        s = torch.randint(0, 4, (500,), generator=g).double()
    elif kind == "smooth":  # neighbouring frames alike, as in video
        s = torch.randn(500, generator=g).cumsum(0)
    else:
        s = torch.zeros(500)
    for k in (1, 7, 500):
        assert O.select_keyframes(s, k, min_gap=gap).tolist() == _greedy_keyframes(s, k, gap)


def test_select_keyframes_min_gap_one_is_plain_topk() -> None:
    s = torch.tensor([0.1, 0.9, 0.8, 0.7])
    assert O.select_keyframes(s, 2).tolist() == [1, 2]
    assert O.select_keyframes(s, 4, min_gap=3).tolist() == [1]


# ----------------------------------------------------------------- torch.library
def test_opcheck_every_op() -> None:
    s = torch.randn(4, 9, dtype=torch.float64, requires_grad=True)
    idx = ref_topk(s.detach(), 3)[1]
    a, b = random_boxes(5).requires_grad_(), random_boxes(5)
    samples = [
        (torch.ops.evidex.st_topk.default, (s, 3, 0.5, 0)),
        (torch.ops.evidex.st_topk.default, (s, 3, 0.5, 1)),
        (torch.ops.evidex.st_slots.default, (s, 3, 0.5, 1)),
        (
            torch.ops.evidex.st_topk_backward.default,
            (s.detach(), idx, torch.randn(4, 9, dtype=torch.float64), 0.5, 1, False),
        ),
        (torch.ops.evidex.box_iou_matrix.default, (a, b, True)),
        (torch.ops.evidex.box_iou_matrix.default, (a, b.clone().requires_grad_(), False)),
        (
            torch.ops.evidex.box_iou_matrix_backward.default,
            (a.detach(), b, torch.randn(5, 5, dtype=torch.float64), True),
        ),
        (torch.ops.evidex.box_iou_pairs.default, (a, b, True, 0.0)),
        (torch.ops.evidex.box_iou_pairs.default, (a, b, False, 1e-7)),
        (
            torch.ops.evidex.box_iou_pairs_backward.default,
            (a.detach(), b, torch.randn(5, dtype=torch.float64), True, 1e-7),
        ),
        (
            torch.ops.evidex.frame_scores.default,
            (torch.randn(6, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True)),
        ),
        (torch.ops.evidex.temporal_iou.default, (torch.rand(3, 2), torch.rand(4, 2))),
    ]
    for op, args in samples:
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph() -> None:
    def pipeline(scores, boxes1, boxes2, frames, queries):
        w, idx = O.st_topk(scores, 2, tau=0.5, mode="successive")
        iou = O.generalized_box_iou(boxes1, boxes2)
        loss = O.generalized_box_iou_loss(boxes1, boxes2[: boxes1.shape[0]], reduction="mean")
        fs = O.frame_scores(frames, queries)
        return w.sum() + iou.sum() + loss + fs.sum(), idx

    compiled = torch.compile(pipeline, fullgraph=True, backend="eager")
    args = (
        torch.randn(3, 7),
        random_boxes(4, torch.float32),
        random_boxes(5, torch.float32),
        torch.randn(10, 8),
        torch.randn(2, 8),
    )
    out, idx = compiled(*args)
    ref, ref_idx = pipeline(*args)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(idx, ref_idx)


# ----------------------------------------------------------------- bad input
def _simd_levels() -> list[str]:
    order = ["scalar", "avx2", "avx512"]
    return order[: order.index(evidex.cpu_simd_level()) + 1]


@pytest.mark.parametrize("level", _simd_levels())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", [0, 7, 40, 130, 199])
def test_st_topk_rejects_non_finite_anywhere(level, dtype, bad, where) -> None:
    # The finiteness check rides along with the top-k scan: it must see the first k
    # entries, the skipped and the searched 64-wide chunks and the tail alike
    # (n = 200: k = 5 first, three chunks, then 3 in the tail), at every SIMD level.
    evidex.set_simd_level(level)
    s = torch.randn(3, 200, dtype=dtype)
    s[1, where] = bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        O.st_topk(s, 5)


@pytest.mark.parametrize("level", _simd_levels())
def test_st_topk_forward_at_every_simd_level(level) -> None:
    evidex.set_simd_level(level)
    g = torch.Generator().manual_seed(1)
    for n, k in ((4096, 8), (4096, 65), (1000, 1), (130, 130), (64, 3), (67, 64), (200, 64)):
        one_class = torch.randn(5, n, generator=g)
        one_class[:, ::64] += 100  # the k best share one residue class mod 64
        for s in (
            torch.randn(5, n, generator=g),
            torch.randint(0, 3, (5, n), generator=g).float(),  # ties everywhere
            torch.arange(n, dtype=torch.float32).repeat(5, 1),  # rising: every chunk hits
            torch.arange(n, 0, -1, dtype=torch.float32).repeat(5, 1),  # falling
            one_class,
        ):
            mask, idx = O.st_topk(s, k)
            ref_mask, ref_idx = ref_topk(s, k)
            assert torch.equal(idx, ref_idx) and torch.equal(mask, ref_mask)


def _softmax_backward_reference(scores: torch.Tensor, grad: torch.Tensor, tau: float):
    soft = torch.softmax(scores / tau, -1)
    return soft * (grad - (grad * soft).sum(-1, keepdim=True)) / tau


def _assert_as_accurate_as_torch(ours: torch.Tensor, scores, grad, tau: float) -> None:
    """Row-wise error against a float64 softmax backward within 4x that of torch's
    own float32 one (a near one-hot row cancels in float32 either way), plus 1e-5
    of the row's largest gradient."""
    exact = _softmax_backward_reference(scores.double(), grad.double(), tau)
    torch_err = (_softmax_backward_reference(scores, grad, tau).double() - exact).abs()
    bound = 4 * torch_err.amax(-1, keepdim=True) + 1e-5 * exact.abs().amax(-1, keepdim=True)
    assert ((ours.double() - exact).abs() <= bound + 1e-30).all(), tau


@pytest.mark.parametrize("level", _simd_levels())
@pytest.mark.parametrize("n", [4096, 1000])
def test_st_topk_float32_softmax_backward_sparse_and_dense_rows(level, n) -> None:
    # At a small tau most softmax terms flush to exactly 0 and the kernel computes
    # only the rest; rows where many survive go the dense way. Both must agree
    # with a float64 softmax backward, at every SIMD level.
    evidex.set_simd_level(level)
    gen = torch.Generator().manual_seed(2)
    scores = torch.stack(
        [
            torch.randn(n, generator=gen),  # a few percent above the flush point: sparse
            torch.rand(n, generator=gen),  # all within 1 of the max: dense
            torch.randn(n, generator=gen) * 1e4,  # large magnitudes: sparse, rounding margin
            torch.cat([torch.randn(n - 20, generator=gen) - 5, torch.randn(20, generator=gen)]),
            torch.full((n,), 0.25),  # all tied
        ]
    )
    grad = torch.randn(scores.shape, generator=gen)
    for tau in (0.02, 1.0):
        s = scores.clone().requires_grad_()
        w, _ = O.st_topk(s, 8, tau=tau)
        (w * grad).sum().backward()
        _assert_as_accurate_as_torch(s.grad, scores, grad, tau)


def test_st_topk_backward_kernel_finds_the_maximum_itself() -> None:
    # The sparse backward takes the forward's best entry as the row maximum; given
    # indices whose first entry is not the maximum it must still be right.
    from evidex import _core

    scores = torch.randn(4, 4096)
    grad = torch.randn(4, 4096)
    idx = scores.topk(8, -1).indices.flip(-1).contiguous()  # worst of the eight first
    out = torch.empty_like(scores)
    _core.ops.st_topk_backward_into(
        scores.numpy(), idx.numpy(), grad.numpy(), 0.02, 0, False, out.numpy(), 1
    )
    _assert_as_accurate_as_torch(out, scores, grad, 0.02)


def test_bad_input() -> None:
    s = torch.randn(2, 5)
    with pytest.raises(ValueError, match="k must be in"):
        O.st_topk(s, 0)
    with pytest.raises(ValueError, match="k must be in"):
        O.st_topk(s, 6)
    with pytest.raises(ValueError, match="tau"):
        O.st_topk(s, 1, tau=0.0)
    with pytest.raises(ValueError, match="mode"):
        O.st_topk(s, 1, mode="gumbel")
    with pytest.raises(TypeError, match="float32 or float64"):
        O.st_topk(torch.ones(2, 5, dtype=torch.int64), 1)
    with pytest.raises(ValueError, match="NaN"):
        O.st_topk(torch.tensor([[1.0, float("nan")]]), 1)
    with pytest.raises(ValueError, match="unknown box format"):
        O.box_convert(torch.zeros(1, 4), "xyxy", "yxyx")
    with pytest.raises(ValueError, match=r"\[\.\.\., N, 4\]"):
        O.box_iou(torch.zeros(3, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        O.box_iou(torch.tensor([[0.0, 0.0, float("nan"), 1.0]]), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="real numbers"):
        O.box_iou(torch.zeros(3, 4, dtype=torch.bool), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="do not broadcast"):
        O.box_iou_pairs(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="do not broadcast"):
        O.box_iou(torch.zeros(2, 3, 4), torch.zeros(3, 2, 4))
    with pytest.raises(ValueError, match="eps must be"):
        O.complete_box_iou_loss(torch.zeros(1, 4), torch.zeros(1, 4), eps=float("nan"))
    with pytest.raises(ValueError, match="frames"):
        O.frame_scores(torch.zeros(3, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="min_gap"):
        O.select_keyframes(torch.zeros(5), 2, min_gap=0)
    with pytest.raises(ValueError, match="reduction"):
        O.generalized_box_iou_loss(torch.zeros(1, 4), torch.zeros(1, 4), reduction="max")


# ------------------------------------------------------------------ hostile input
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_boxes_beyond_the_float_range_of_their_areas_stay_exact(dtype) -> None:
    # (1e20)^2 overflows float32: the formula runs on scaled coordinates instead.
    big = torch.tensor([[0, 0, 1e20, 1e20], [1e20, 1e20, 3e20, 2e20]], dtype=dtype)
    same = torch.tensor([[0, 0, 1e20, 1e20], [0, 0, 1e20, 1e20]], dtype=dtype)
    assert O.box_iou(big, same)[0].tolist() == [1.0, 1.0]
    assert O.box_iou_pairs(big, same).tolist() == [1.0, 0.0]
    np.testing.assert_allclose(O.generalized_box_iou_pairs(big, same), [1.0, -0.5], rtol=1e-6)
    pred = big.clone().requires_grad_(True)
    loss = O.generalized_box_iou_loss(pred, same, reduction="sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    # Scale invariance: the same boxes at ordinary size give the same loss, and a
    # gradient 1e20 times larger.
    small = (big / 1e20).requires_grad_(True)
    ref = O.generalized_box_iou_loss(small, same / 1e20, reduction="sum")
    ref.backward()
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-6)
    np.testing.assert_allclose(pred.grad * 1e20, small.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: torch.ops.evidex.st_topk(torch.rand(2, 5), 2, 1.0, 77), "mode must be"),
        (lambda: torch.ops.evidex.st_topk(torch.rand(2, 5), 2, 0.0, 0), "tau must be"),
        (lambda: torch.ops.evidex.st_topk(torch.rand(2, 5), 9, 1.0, 0), "k must be"),
        (lambda: torch.ops.evidex.st_topk(torch.rand(5), 1, 1.0, 0), "2-D"),
        (lambda: torch.ops.evidex.st_slots(torch.rand(2, 5), 2, float("nan"), 0), "tau must be"),
        (
            lambda: torch.ops.evidex.st_topk_backward(
                torch.rand(2, 5), torch.zeros(2, 1, dtype=torch.int64), torch.rand(2, 5), 0.0, 0,
                False,
            ),
            "tau must be",
        ),
        (
            lambda: torch.ops.evidex.box_iou_matrix(torch.rand(2, 6), torch.rand(2, 6), False),
            r"\[N, 4\]",
        ),
        (
            lambda: torch.ops.evidex.box_iou_pairs(torch.rand(2, 4), torch.rand(3, 4), True, 0.0),
            "as many rows",
        ),
        (
            lambda: torch.ops.evidex.box_iou_pairs_backward(
                torch.rand(2, 4), torch.rand(2, 4), torch.rand(3), True, 0.0
            ),
            r"grad must be \(2,\)",
        ),
        (
            lambda: torch.ops.evidex.box_iou_matrix_backward(
                torch.rand(2, 4), torch.rand(3, 4), torch.rand(3, 2), False
            ),
            r"grad must be \(2, 3\)",
        ),
        (
            lambda: torch.ops.evidex.box_iou_pairs(torch.rand(2, 4), torch.rand(2, 4), True, -1.0),
            "eps must be",
        ),
        (lambda: torch.ops.evidex.frame_scores(torch.rand(3, 0), torch.rand(2, 0)), "D >= 1"),
        (lambda: torch.ops.evidex.select_keyframes(torch.rand(5), 0, 1), "k must be"),
        (lambda: torch.ops.evidex.select_keyframes(torch.rand(5), 1, 0), "min_gap"),
        (lambda: torch.ops.evidex.temporal_iou(torch.rand(2, 3), torch.rand(2, 2)), r"\[N, 2\]"),
        (lambda: O.st_select(torch.rand(2, 0), torch.rand(2, 3, 0), 1), "D >= 1"),
        (
            lambda: evidex._core.ops.box_iou_matrix(
                np.zeros((2, 6), np.float32), np.zeros((2, 6), np.float32), False, 0
            ),
            r"\[N, 4\]",
        ),
    ],
    ids=[
        "mode", "tau", "k", "rank", "slots-tau", "backward-tau", "box-shape", "pairs-rows",
        "grad-shape", "matrix-grad-shape", "eps", "frames-D0", "keyframes-k", "keyframes-gap",
        "intervals", "st_select-D0", "core-box-shape",
    ],
)  # fmt: skip
def test_raw_op_calls_get_the_same_checks(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_fake_implementations_check_too() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(), pytest.raises(ValueError, match="mode must be"):
        torch.ops.evidex.st_topk(torch.empty(2, 5), 2, 1.0, 5)


# ------------------------------------------------------------------ torchvision parity
# torchvision.ops' formulas in plain torch (its boxes.py and losses, for valid boxes),
# so values and autograd gradients can be compared without torchvision installed.
def tv_iou_parts(a, b):
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.max(a[..., None, :2], b[..., None, :, :2])
    rb = torch.min(a[..., None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[..., None] + area_b[..., None, :] - inter
    lti = torch.min(a[..., None, :2], b[..., None, :, :2])
    rbi = torch.max(a[..., None, 2:], b[..., None, :, 2:])
    whi = (rbi - lti).clamp(min=0)
    return inter / union, whi, union


def tv_matrix(a, b, kind, eps=1e-7):
    iou, whi, union = tv_iou_parts(a, b)
    if kind == "iou":
        return iou
    if kind == "giou":
        area = whi[..., 0] * whi[..., 1]
        return iou - (area - union) / area
    diag = whi[..., 0] ** 2 + whi[..., 1] ** 2 + eps
    ca = (a[..., :2] + a[..., 2:]) / 2
    cb = (b[..., :2] + b[..., 2:]) / 2
    dist = ((ca[..., :, None, :] - cb[..., None, :, :]) ** 2).sum(-1)
    diou = iou - dist / diag
    if kind == "diou":
        return diou
    wa, ha = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    wb, hb = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    v = (4 / math.pi**2) * (
        torch.atan(wa / ha)[..., :, None] - torch.atan(wb / hb)[..., None, :]
    ) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


MATRIX_OPS = {
    "iou": O.box_iou,
    "giou": O.generalized_box_iou,
    "diou": O.distance_box_iou,
    "ciou": O.complete_box_iou,
}


@pytest.mark.parametrize("kind", list(MATRIX_OPS))
def test_matrices_match_torchvision_values_and_gradients(kind) -> None:
    torch.manual_seed(0)
    a0, b0 = random_boxes(7), random_boxes(5)
    a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    ra, rb = a0.clone().requires_grad_(), b0.clone().requires_grad_()
    got, want = MATRIX_OPS[kind](a, b), tv_matrix(ra, rb, kind)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    w = torch.randn(7, 5, dtype=torch.float64)
    (got * w).sum().backward()
    (want * w).sum().backward()
    torch.testing.assert_close(a.grad, ra.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(b.grad, rb.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("generalized", [False, True])
def test_matrix_gradients_pass_gradcheck_and_detr_style_losses_train(generalized) -> None:
    torch.manual_seed(1)
    fn = O.generalized_box_iou if generalized else O.box_iou
    a, b = random_boxes(4).requires_grad_(), random_boxes(3).requires_grad_()
    assert torch.autograd.gradcheck(fn, (a, b))
    # DETR's matching cost and loss: the diagonal of the matrix of predictions x targets.
    pred = random_boxes(6).requires_grad_()
    target = random_boxes(6)
    opt = torch.optim.SGD([pred], lr=0.5)
    first = None
    for _ in range(30):
        loss = (1 - torch.diag(fn(pred, target))).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_batched_boxes_broadcast_like_torchvision() -> None:
    torch.manual_seed(2)
    a = torch.stack([random_boxes(4) for _ in range(3)])  # [3, 4, 4]
    b = torch.stack([random_boxes(5) for _ in range(3)])  # [3, 5, 4]
    for kind, fn in MATRIX_OPS.items():
        got = fn(a, b)
        assert got.shape == (3, 4, 5)
        for i in range(3):
            torch.testing.assert_close(got[i], fn(a[i], b[i]))
        torch.testing.assert_close(got, tv_matrix(a, b, kind), rtol=1e-12, atol=1e-12)
    # One set of targets against a batch of predictions: batch dimensions broadcast.
    one = random_boxes(5)
    torch.testing.assert_close(O.box_iou(a, one), torch.stack([O.box_iou(x, one) for x in a]))
    assert O.box_iou(a[:0], b[:0]).shape == (0, 4, 5)
    assert O.box_area(a).shape == (3, 4)
    x = torch.tensor([[[0.0, 0, 2, 2]], [[1, 1, 2, 3]]])  # [2, 1, 4]
    torch.testing.assert_close(O.box_iou_pairs(x, x[:1]), torch.tensor([[1.0], [0.2]]))


def test_dtypes_follow_torchvision() -> None:
    boxes = [[0, 0, 100, 100], [0, 0, 50, 50], [10, 10, 60, 30]]
    for dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        t = torch.tensor(boxes, dtype=dtype)
        area = O.box_area(t)
        assert area.dtype == (torch.int64 if dtype == torch.int64 else torch.int32)
        assert area.tolist() == [10000, 2500, 1000]
        iou = O.box_iou(t, t)
        assert iou.dtype == torch.float32 and iou[0, 1].item() == 0.25
    for dtype in (torch.float16, torch.bfloat16):
        t = torch.tensor(boxes, dtype=dtype)
        assert O.box_area(t).dtype == torch.float32
        assert O.generalized_box_iou(t, t).dtype == torch.float32
        assert O.generalized_box_iou_loss(t, t).dtype == torch.float32
    mixed = O.box_iou(
        torch.tensor(boxes, dtype=torch.float32), torch.tensor(boxes, dtype=torch.float64)
    )
    assert mixed.dtype == torch.float64
    # Integer xyxy <-> xywh conversion stays integer, as in torchvision.
    assert O.box_convert(torch.tensor(boxes), "xyxy", "xywh").dtype == torch.int64


def test_losses_take_torchvision_arguments_and_eps() -> None:
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[0.5, 0.0, 1.5, 1.0]], dtype=torch.float64)
    # The 4th positional argument is eps, as in torchvision: inter / (union + eps).
    eps = 0.5
    assert O.generalized_box_iou_loss(a, b, "none", eps).item() == pytest.approx(
        1 - (0.5 / (1.5 + eps) - (1.5 - 1.5) / (1.5 + eps))
    )
    # A single [4] box, as torchvision's losses take.
    assert O.complete_box_iou_loss(a[0], a[0]).shape == ()
    for loss in (O.generalized_box_iou_loss, O.distance_box_iou_loss, O.complete_box_iou_loss):
        with pytest.raises(ValueError, match="^Invalid"):
            loss(a, b, reduction="avg")
        x = a.clone().requires_grad_()
        loss(x, b, "mean").backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # Gradient of the eps-guarded loss against autograd of torchvision's formula.
    x, y = random_boxes(6).requires_grad_(), random_boxes(6)
    O.generalized_box_iou_loss(x, y, "sum", 1e-3).backward()
    rx = x.detach().clone().requires_grad_()
    iou, whi, union = tv_iou_parts(rx[:, None], y[:, None])
    area = whi[..., 0] * whi[..., 1]
    inter = iou * union
    ref = (1 - (inter / (union + 1e-3) - (area - union) / (area + 1e-3))).sum()
    ref.backward()
    torch.testing.assert_close(x.grad, rx.grad, rtol=1e-9, atol=1e-12)


def test_box_ops_compile_with_gradients() -> None:
    @torch.compile(fullgraph=True, backend="aot_eager")
    def cost(pred, target):
        return (1 - torch.diag(O.generalized_box_iou(pred, target))).sum()

    pred, target = random_boxes(5).requires_grad_(), random_boxes(5)
    cost(pred, target).backward()
    eager = pred.detach().clone().requires_grad_()
    (1 - torch.diag(O.generalized_box_iou(eager, target))).sum().backward()
    torch.testing.assert_close(pred.grad, eager.grad)
