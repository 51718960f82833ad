"""evidex.ops against the eager plain-torch composition, interleaved, best of N.

    python -m bench.ops_ratios [--rounds 15]

Prints, per op, the best time of each side and evidex / torch (lower is better).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

import evidex.ops as O
from evidex.ops import _kernels


def torch_st_topk(scores: torch.Tensor, k: int, tau: float) -> torch.Tensor:
    """The straight-through top-k as CLaRa writes it in plain torch (softmax mode)."""
    idx = scores.topk(k, -1).indices
    hard = torch.zeros_like(scores).scatter_(-1, idx, 1.0)
    soft = torch.softmax(scores / tau, -1)
    return hard - soft.detach() + soft


# st_topk's exact custom-op path (same schemas, fake and autograd registrations) with
# kernels that only zero-fill their outputs (one thread, as ours): the time any kernel
# behind torch's custom-op dispatch needs before it computes anything.
@torch.library.custom_op("evidex_bench::topk_floor", mutates_args=(), device_types="cpu")
def _topk_floor(
    scores: torch.Tensor, k: int, tau: float, mode: int
) -> tuple[torch.Tensor, torch.Tensor]:
    s = scores.detach().contiguous()
    mask, idx = torch.empty_like(s), torch.empty((s.shape[0], k), dtype=torch.int64)
    mask.numpy().fill(0.0)
    idx.numpy().fill(0)
    return mask, idx


@_topk_floor.register_fake
def _(scores, k, tau, mode):
    return torch.empty_like(scores), scores.new_empty((scores.shape[0], k), dtype=torch.int64)


@torch.library.custom_op("evidex_bench::topk_floor_backward", mutates_args=(), device_types="cpu")
def _topk_floor_backward(
    scores: torch.Tensor,
    indices: torch.Tensor,
    grad: torch.Tensor,
    tau: float,
    mode: int,
    per_slot: bool,
) -> torch.Tensor:
    out = torch.empty_like(scores.detach().contiguous())
    out.numpy().fill(0.0)
    return out


@_topk_floor_backward.register_fake
def _(scores, indices, grad, tau, mode, per_slot):
    return torch.empty_like(scores)


def _floor_backward(ctx, grad_mask, grad_indices):
    scores, indices = ctx.saved_tensors
    return (
        _topk_floor_backward(scores, indices, grad_mask, ctx.tau, ctx.mode, False),
        None,
        None,
        None,
    )


torch.library.register_autograd(
    "evidex_bench::topk_floor", _floor_backward, setup_context=_kernels._st_topk_setup
)


def torch_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torchvision.ops.box_iou's broadcast formula."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[:, :2])
    rb = torch.min(a[:, None, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b - inter)


def torch_keyframes(frames: torch.Tensor, query: torch.Tensor, k: int, gap: int) -> list[int]:
    scores = (
        torch.nn.functional.normalize(query, dim=-1)
        @ torch.nn.functional.normalize(frames, dim=-1).t()
    )
    kept: list[int] = []
    for f in scores[0].argsort(descending=True).tolist():
        if all(abs(f - g) >= gap for g in kept):
            kept.append(f)
            if len(kept) == k:
                break
    return sorted(kept)


def interleaved(
    a: Callable[[], object], b: Callable[[], object], rounds: int
) -> tuple[float, float]:
    best_a = best_b = float("inf")
    for _ in range(rounds):
        for fn, which in ((a, 0), (b, 1)):
            t0 = time.perf_counter()
            fn()
            t = time.perf_counter() - t0
            if which == 0:
                best_a = min(best_a, t)
            else:
                best_b = min(best_b, t)
    return best_a, best_b


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows = []

    scores = torch.randn(64, 4096)
    g = torch.randn(64, 4096)

    def ours_topk():
        s = scores.clone().requires_grad_()
        w, _ = O.st_topk(s, 8, tau=0.02)
        (w * g).sum().backward()

    def theirs_topk():
        s = scores.clone().requires_grad_()
        (torch_st_topk(s, 8, 0.02) * g).sum().backward()

    def floor_topk():
        s = scores.clone().requires_grad_()
        w, _ = torch.ops.evidex_bench.topk_floor(s, 8, 0.02, 0)
        (w * g).sum().backward()

    rows.append(
        ("st_topk fwd+bwd [64, 4096], k=8", *interleaved(ours_topk, theirs_topk, args.rounds))
    )
    rows.append(
        (
            "the same path, kernels only zero their outputs (floor)",
            *interleaved(floor_topk, theirs_topk, args.rounds),
        )
    )

    xy = torch.rand(1000, 2) * 100
    a = torch.cat([xy, xy + torch.rand(1000, 2) * 50], 1)
    xy = torch.rand(1000, 2) * 100
    b = torch.cat([xy, xy + torch.rand(1000, 2) * 50], 1)
    rows.append(
        (
            "box_iou 1000 x 1000",
            *interleaved(lambda: O.box_iou(a, b), lambda: torch_box_iou(a, b), args.rounds),
        )
    )

    frames, query = torch.randn(3600, 512), torch.randn(1, 512)
    rows.append(
        (
            "frame_scores + select_keyframes T=3600, D=512",
            *interleaved(
                lambda: O.select_keyframes(O.frame_scores(frames, query)[0], 8, 30),
                lambda: torch_keyframes(frames, query, 8, 30),
                args.rounds,
            ),
        )
    )

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| op | evidex (ms) | plain torch (ms) | evidex / torch |")
    print("|---|---|---|---|")
    for name, ours, theirs in rows:
        print(f"| {name} | {ours * 1e3:.3f} | {theirs * 1e3:.3f} | {ours / theirs:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
