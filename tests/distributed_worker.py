"""Run by test_train_trainer under torchrun (2 processes, gloo): not a test module."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from evidex.train import ContrastiveTrainer, Embedder, InfoNCELoss, collate

sys.path.insert(0, os.path.dirname(__file__))
from conftest import debian_pairs  # noqa: E402


def main(model_dir: str, out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    pairs = debian_pairs()[:64]
    examples = [
        (p["query"], p["positive"], pairs[(i + 7) % 64]["positive"]) for i, p in enumerate(pairs)
    ]

    def shard(r: int) -> list[tuple[str, ...]]:
        # Ranks hold different numbers of documents: rank 0 has hard negatives.
        return [e if r == 0 else e[:2] for e in examples[r * 8 : r * 8 + 8]]

    model = Embedder.from_pretrained(model_dir, max_length=32).eval()
    batch = collate(shard(rank))
    with torch.no_grad():
        q = model(batch.queries).requires_grad_()
        d = model(batch.documents).requires_grad_()
    gathered_loss = InfoNCELoss(model, symmetric=True).loss_from_embeddings(q, d, batch)
    gathered_loss.backward()

    # The global batch in one process, without gathering.
    full = collate([e for r in range(world) for e in shard(r)])
    with torch.no_grad():
        fq = model(full.queries).requires_grad_()
        fd = model(full.documents).requires_grad_()
    single = InfoNCELoss(model, symmetric=True, gather_across_processes=False)
    single_loss = single.loss_from_embeddings(fq, fd, full)
    # Each rank's loss is the mean over its own queries; the gather's backward sums every
    # rank's gradient into the owner's rows, so the owner holds d(sum of rank losses) =
    # d(world * single loss).
    (single_loss * world).backward()
    q0 = 8 * rank
    d0 = sum(len(collate(shard(r)).documents) for r in range(rank))
    n_d = len(batch.documents)
    positive_rows = all(
        torch.allclose(d[batch.positives[i][0]], fd[d0 + batch.positives[i][0]])
        and full.positives[q0 + i] == [d0 + j for j in batch.positives[i]]
        for i in range(len(batch))
    )
    grad_ok = torch.allclose(q.grad, fq.grad[q0 : q0 + 8], atol=1e-6) and torch.allclose(
        d.grad, fd.grad[d0 : d0 + n_d], atol=1e-6
    )
    # DDP training: three steps, the replicas stay identical.
    model.train()
    out = ContrastiveTrainer(
        model, examples, batch_size=8, max_steps=3, show_progress=False, learning_rate=1e-3
    ).train()
    checksum = float(sum(p.double().sum() for p in model.parameters()))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(
            {
                "gathered_loss": gathered_loss.item(),
                "single_process_loss": single_loss.item(),
                "positive_rows_match": bool(positive_rows),
                "grad_matches_single_process": bool(grad_ok),
                "param_checksum": checksum,
                "steps": out.global_step,
            },
            f,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
