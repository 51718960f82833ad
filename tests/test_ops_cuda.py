"""CUDA kernels of evidex.ops against the CPU kernels (run with ``pytest -m cuda`` on a GPU)."""

from __future__ import annotations

import pytest
import torch

import evidex.cuda
import evidex.ops as O

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def _need_gpu():
    if not (torch.cuda.is_available() and evidex.cuda.is_available()):
        pytest.fail("the cuda marker was selected but no CUDA GPU (or evidex._cuda) is usable")


def _boxes(n, dtype):
    xy = torch.rand(n, 2, dtype=dtype) * 10
    return torch.cat([xy, xy + torch.rand(n, 2, dtype=dtype) * 5], 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["softmax", "successive"])
def test_st_topk_cuda_matches_cpu(dtype, mode) -> None:
    s = torch.randn(64, 4096, dtype=dtype)
    s[0, :10] = 1.0  # ties
    cpu = s.clone().requires_grad_()
    gpu = s.cuda().requires_grad_()
    w_c, i_c = O.st_topk(cpu, 8, tau=0.05, mode=mode)
    w_g, i_g = O.st_topk(gpu, 8, tau=0.05, mode=mode)
    torch.testing.assert_close(i_g.cpu(), i_c)
    torch.testing.assert_close(w_g.cpu(), w_c)
    g = torch.randn_like(s)
    (w_c * g).sum().backward()
    (w_g * g.cuda()).sum().backward()
    torch.testing.assert_close(gpu.grad.cpu(), cpu.grad, rtol=1e-4, atol=1e-5)


def test_st_select_cuda_matches_cpu() -> None:
    q, d = torch.randn(4, 32, dtype=torch.float64), torch.randn(4, 50, 32, dtype=torch.float64)
    out_c = O.st_select(q, d, 5, tau=0.1)
    out_g = O.st_select(q.cuda(), d.cuda(), 5, tau=0.1)
    for a, b in zip(out_g, out_c):
        torch.testing.assert_close(a.cpu(), b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_and_video_ops_cuda_match_cpu(dtype) -> None:
    a, b = _boxes(100, dtype), _boxes(70, dtype)
    for fn in (O.box_iou, O.generalized_box_iou):
        torch.testing.assert_close(fn(a.cuda(), b.cuda()).cpu(), fn(a, b))
    ga = a[:70].clone().requires_grad_()
    gg = a[:70].cuda().requires_grad_()
    O.generalized_box_iou_loss(ga, b, "sum").backward()
    O.generalized_box_iou_loss(gg, b.cuda(), "sum").backward()
    torch.testing.assert_close(gg.grad.cpu(), ga.grad)
    frames, queries = torch.randn(3600, 512, dtype=dtype), torch.randn(3, 512, dtype=dtype)
    s_c = O.frame_scores(frames, queries)
    s_g = O.frame_scores(frames.cuda(), queries.cuda())
    torch.testing.assert_close(s_g.cpu(), s_c, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        O.select_keyframes(s_c[0].cuda(), 8, 30).cpu(), O.select_keyframes(s_c[0], 8, 30)
    )
    iv = torch.rand(9, 2, dtype=dtype).sort(1).values
    torch.testing.assert_close(O.temporal_iou(iv.cuda(), iv.cuda()).cpu(), O.temporal_iou(iv, iv))


def test_cuda_ops_pass_opcheck() -> None:
    s = torch.randn(4, 9, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.evidex.st_topk.default, (s, 3, 0.5, 1))
    a = _boxes(5, torch.float32).cuda().requires_grad_()
    torch.library.opcheck(
        torch.ops.evidex.box_iou_pairs.default, (a, _boxes(5, torch.float32).cuda(), True)
    )
