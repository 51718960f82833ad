"""Fine-tune all-MiniLM-L6-v2 on Debian package descriptions; compare with sentence-transformers.

    python -m bench.train_minilm quality      # Recall@10 / nDCG@10 before and after
    python -m bench.train_minilm throughput   # pairs/s: ContrastiveTrainer vs ST's trainer

Task: the synopsis of a Debian package (query) retrieves the first paragraph of its
description (document). Held-out queries search their own documents plus distractor
descriptions that no training pair contains. The throughput comparison trains the same
model on the same pairs with the same batch size, sequence length, learning rate and
loss (in-batch InfoNCE at scale 20 = ST's MultipleNegativesRankingLoss), interleaving
the two trainers and keeping the best of several runs of each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def _split(n_train: int, n_held: int, n_distractors: int):
    from evidex.datasets import debian_pairs

    pairs = debian_pairs(seed=0)
    if n_train + n_held + n_distractors > len(pairs):
        raise SystemExit(f"only {len(pairs)} Debian pairs available")
    train = pairs[:n_train]
    held = pairs[n_train : n_train + n_held]
    distractors = [d for _, d in pairs[n_train + n_held : n_train + n_held + n_distractors]]
    return train, held, distractors


def quality(args: argparse.Namespace) -> dict:
    from evidex.embedders import minilm_path
    from evidex.train import ContrastiveTrainer, Embedder, InfoNCELoss, RetrievalEvaluator

    train, held, distractors = _split(args.train, args.held, args.distractors)
    corpus = [d for _, d in held] + distractors
    evaluator = RetrievalEvaluator(
        [q for q, _ in held], corpus, [{i} for i in range(len(held))], name="held_out"
    )
    model = Embedder.from_pretrained(minilm_path(), max_length=args.max_length)
    t0 = time.perf_counter()
    before = evaluator(model)
    print(f"before: {before}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = ContrastiveTrainer(
            model,
            train,
            loss=InfoNCELoss(model, scale=20.0, symmetric=True),
            batch_size=args.batch_size,
            epochs=args.epochs,
            learning_rate=args.lr,
            output_dir=tmp,
            show_progress=True,
        )
        out = trainer.train()
    after = evaluator(model)
    print(f"after:  {after}", flush=True)
    return {
        "model": "all-MiniLM-L6-v2",
        "train_pairs": len(train),
        "held_out_queries": len(held),
        "corpus": len(corpus),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "max_length": args.max_length,
        "loss": "InfoNCE scale 20, symmetric, in-batch negatives",
        "train_seconds": out.train_seconds,
        "before": before,
        "after": after,
    }


def _ours(path: str, pairs, args) -> float:
    from evidex.train import ContrastiveTrainer, Embedder, InfoNCELoss

    model = Embedder.from_pretrained(path, max_length=args.max_length)
    trainer = ContrastiveTrainer(
        model,
        pairs,
        loss=InfoNCELoss(model, scale=20.0),
        batch_size=args.batch_size,
        epochs=1,
        learning_rate=2e-5,
        show_progress=False,
    )
    t0 = time.perf_counter()
    trainer.train()
    return len(pairs) / (time.perf_counter() - t0)


def _sentence_transformers(path: str, pairs, args) -> float:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )

    model = SentenceTransformer(path, device="cpu", local_files_only=True)
    model.max_seq_length = args.max_length
    data = Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [d for _, d in pairs]})
    with tempfile.TemporaryDirectory() as tmp:
        trainer = SentenceTransformerTrainer(
            model=model,
            args=SentenceTransformerTrainingArguments(
                output_dir=tmp,
                per_device_train_batch_size=args.batch_size,
                num_train_epochs=1,
                learning_rate=2e-5,
                warmup_ratio=0.1,
                save_strategy="no",
                report_to=[],
                use_cpu=True,
                disable_tqdm=True,
                logging_steps=10_000,
                seed=0,
            ),
            train_dataset=data,
            loss=losses.MultipleNegativesRankingLoss(model, scale=20.0),
        )
        t0 = time.perf_counter()
        trainer.train()
        return len(pairs) / (time.perf_counter() - t0)


def throughput(args: argparse.Namespace) -> dict:
    import sentence_transformers
    import torch

    from evidex.embedders import minilm_path

    train, _, _ = _split(args.steps * args.batch_size, 0, 0)
    runs: dict[str, list[float]] = {"evidex": [], "sentence-transformers": []}
    trainers = [("evidex", _ours), ("sentence-transformers", _sentence_transformers)]
    for r in range(args.rounds):
        for name, fn in trainers if r % 2 == 0 else trainers[::-1]:  # A B, then B A
            runs[name].append(fn(minilm_path(), train, args))
            print(f"round {r} {name}: {runs[name][-1]:.1f} pairs/s", flush=True)
    best = {k: max(v) for k, v in runs.items()}
    return {
        "pairs": len(train),
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "torch_threads": torch.get_num_threads(),
        "sentence_transformers": sentence_transformers.__version__,
        "runs_pairs_per_s": runs,
        "best_pairs_per_s": best,
        "ratio_evidex_over_st": best["evidex"] / best["sentence-transformers"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", choices=["quality", "throughput"])
    p.add_argument("--train", type=int, default=6000)
    p.add_argument("--held", type=int, default=1000)
    p.add_argument("--distractors", type=int, default=19000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=16, help="throughput: steps per run")
    p.add_argument("--rounds", type=int, default=4, help="throughput: runs of each trainer")
    args = p.parse_args(argv)
    result = quality(args) if args.what == "quality" else throughput(args)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"train_minilm_{args.what}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
