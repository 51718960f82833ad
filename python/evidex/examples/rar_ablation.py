"""RAR ablation: no enhancement, corpus only, query only, both; each fine-tuned and scored.

    python -m evidex.examples.rar_ablation --data pairs.jsonl \\
        --generator image-text:/path/to/vlm --embedder /path/to/encoder

`--data` holds one relevant (query, target) pair per line: ``{"query": text or null,
"query_image": path or null, "target": text or null, "target_image": path or null}``.
For every configuration the same train/held-out split is enhanced as configured (an
image with no text and no enhancement is invisible to a text embedder: every such image
embeds as the same placeholder text), a fresh copy of the embedder is fine-tuned on the
train pairs with `ContrastiveTrainer`, and held-out queries are scored by Recall@K
against all held-out targets. Generators: ``image-text:<dir>`` (transformers image-text-
to-text model with its processor), ``causal:<dir>[::<file.gguf>]`` (text only; images
are then not captioned). Generations are cached next to the data, so each item is
enhanced once.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from typing import Any

from ..train.data import read_jsonl
from ..train.rar import Item, RAREnhancer

CONFIGS = [
    ("none", False, False),
    ("corpus", True, False),
    ("query", False, True),
    ("both", True, True),
]


def load_pairs(path: str) -> list[tuple[Item, Item]]:
    """(query, target) items from the JSONL; image paths are relative to the file.

    An optional ``"label"`` per line makes every target with the same label relevant to
    the query (the ground-truth relevance, which enhancement never changes); without
    labels each query's only relevant target is its own.
    """
    from ..media import load_image

    base = os.path.dirname(os.path.abspath(path))
    pairs = []
    for n, row in read_jsonl(path):

        def image(key: str, row: dict = row) -> Any:
            value = row.get(key)
            return load_image(os.path.join(base, value)) if value else None

        query = Item(row.get("query"), image("query_image"))
        target = Item(row.get("target"), image("target_image"))
        query.label = target.label = row.get("label", f"line {n}")
        if query.text is None and query.image is None:
            raise ValueError(f"{path}:{n}: the query has neither text nor image")
        if target.text is None and target.image is None:
            raise ValueError(f"{path}:{n}: the target has neither text nor image")
        pairs.append((query, target))
    return pairs


def make_generator(spec: str, cache: str) -> Any:
    """A generator from ``image-text:<dir>`` or ``causal:<dir>[::<file.gguf>]``."""
    kind, _, where = spec.partition(":")
    if kind == "image-text":
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from ..train.generation import ImageTextGenerator

        model = AutoModelForImageTextToText.from_pretrained(where, local_files_only=True)
        processor = AutoProcessor.from_pretrained(where, local_files_only=True)
        return ImageTextGenerator(model, processor, where, cache=cache)
    if kind == "causal":
        from ..train.generation import CausalLMGenerator
        from ..train.rl import load_causal_lm

        path, _, gguf = where.partition("::")
        model, tok = load_causal_lm(path, gguf or None)
        return _TextOnly(CausalLMGenerator(model, tok, where, cache=cache))
    raise ValueError(f"unknown generator {spec!r}; use image-text:<dir> or causal:<dir>")


class _TextOnly:
    """A text-only generator inside RAR: image inputs are dropped, not an error."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def generate_batch(self, prompts: list[str], images: list[Any] | None = None) -> list[str]:
        return self.inner.generate_batch(prompts)


def _label(pair: tuple[Item, Item], index: int) -> Any:
    return pair[0].label if pair[0].label is not None else f"#{index}"


# What a text embedder gets for an image nobody described: the same for every image.
UNSEEN_IMAGE = "[image]"


def texts_for(enhancer: RAREnhancer, items: list[Item], enhance: bool, corpus: bool) -> list[str]:
    if enhance:
        return enhancer.enhance_corpus(items) if corpus else enhancer.enhance_queries(items)
    return [i.text or UNSEEN_IMAGE for i in items]


def run(
    pairs: list[tuple[Item, Item]],
    generator: Any,
    embedder_path: str,
    held_fraction: float = 0.2,
    epochs: int = 1,
    batch_size: int = 16,
    lr: float = 2e-5,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The four configurations' Recall@1/5/10 and nDCG@10 on the held-out pairs."""
    from ..train.embedder import Embedder
    from ..train.evaluation import evaluate_retrieval
    from ..train.trainer import ContrastiveTrainer

    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_held = max(1, int(held_fraction * len(pairs)))
    held, train = order[:n_held], order[n_held:]
    enhancer = RAREnhancer(generator)
    queries = [q for q, _ in pairs]
    targets = [t for _, t in pairs]
    rows = []
    for name, corpus_on, query_on in CONFIGS:
        q_texts = texts_for(enhancer, queries, query_on, corpus=False)
        t_texts = texts_for(enhancer, targets, corpus_on, corpus=True)
        model = Embedder.from_pretrained(embedder_path)
        train_pairs = [(q_texts[i] or UNSEEN_IMAGE, t_texts[i] or UNSEEN_IMAGE) for i in train]
        ContrastiveTrainer(
            model,
            train_pairs,
            batch_size=batch_size,
            epochs=epochs,
            learning_rate=lr,
            seed=seed,
            show_progress=False,
        ).train()
        labels = [_label(pairs[i], i) for i in held]
        result = evaluate_retrieval(
            model,
            [q_texts[i] or UNSEEN_IMAGE for i in held],
            [t_texts[i] or UNSEEN_IMAGE for i in held],
            [{j for j, other in enumerate(labels) if other == mine} for mine in labels],
        )
        rows.append({"config": name, **{k: v for k, v in result.items() if k != "queries"}})
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """The ablation as a markdown table."""
    print("| configuration | Recall@1 | Recall@5 | Recall@10 | nDCG@10 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['recall@1']:.3f} | {r['recall@5']:.3f} | "
            f"{r['recall@10']:.3f} | {r['ndcg@10']:.3f} |"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", required=True)
    p.add_argument("--generator", required=True)
    p.add_argument("--embedder", default=None, help="encoder dir (default all-MiniLM-L6-v2)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-5)
    args = p.parse_args(argv)
    from ..embedders import minilm_path

    pairs = load_pairs(args.data)
    generator = make_generator(
        args.generator, os.path.splitext(args.data)[0] + ".generations.jsonl"
    )
    rows = run(
        pairs,
        generator,
        args.embedder or minilm_path(),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
    )
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
