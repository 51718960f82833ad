"""RAR on easy-VQA images, with a tiny captioning VLM trained here.

    python -m evidex.examples.rar --out runs/rar_easyvqa

No vision-language model ships offline, so this example first trains one: a LLaVA-style
image-text-to-text model (CLIP-style vision tower + small Llama with a word-level
vocabulary, randomly initialised, about 0.2M parameters) learns to caption easy-VQA's
training images ("a blue circle"), with captions assembled from the dataset's own
question/answer labels. It is then used as RAR's generator, behind the same
`ImageTextGenerator` a real VLM would use.

Retrieval task, on easy-VQA's test images: the corpus is image-only entries; half of the
queries are text ("a blue circle"), half are query-by-example images; a target is
relevant when it shows the same colour and shape. `evidex.examples.rar_ablation` then runs
the four configurations (no enhancement / corpus / query / both), each with its own
fine-tuned all-MiniLM-L6-v2. Without enhancement an image is invisible to the text
embedder (it embeds as empty text).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from typing import Any

import torch

from ..train.rar import CAPTION_PROMPT, QUERY_WORDS

COLOURS = {"red", "blue", "green", "gray", "teal", "black", "yellow", "brown"}
SHAPES = {"circle", "rectangle", "triangle"}


def easy_vqa_labels(split: str) -> dict[int, tuple[str, str]]:
    """image id -> (colour, shape), read off easy-VQA's own questions and answers.

    Each image shows one shape in one colour; every question names or asks one of them
    ("what color is the circle?" -> blue: colour blue, shape circle; "is there a red
    shape?" -> yes: colour red). Negated questions are skipped.
    """
    import easy_vqa

    questions, answers, ids = (
        easy_vqa.get_train_questions() if split == "train" else easy_vqa.get_test_questions()
    )
    colour: dict[int, str] = {}
    shape: dict[int, str] = {}
    for q, a, i in zip(questions, answers, ids):
        words = set(re.findall(r"[a-z]+", q))
        if words & {"not", "no"} or (a == "no"):
            continue
        for w in words | {a}:
            if w in COLOURS:
                colour[i] = w
            elif w in SHAPES:
                shape[i] = w
    return {i: (colour[i], shape[i]) for i in colour if i in shape}


def caption_of(label: tuple[str, str]) -> str:
    return f"a {label[0]} {label[1]} on a white background"


def captioner_tokenizer() -> Any:
    """A word-level tokenizer over RAR's prompts and the captions' words: the captioner's
    output layer is then tiny, which is what makes training it on a CPU quick."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from ..train.rar import MODIFICATION_PROMPT, QA_RESOLVE_PROMPT

    text = " ".join(
        [CAPTION_PROMPT, QA_RESOLVE_PROMPT, MODIFICATION_PROMPT, caption_of(("x", "y"))]
        + sorted(COLOURS | SHAPES)
    )
    words = sorted(set(re.findall(r"\w+|[^\w\s]", text.lower())))
    special = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]
    vocab = {w: i for i, w in enumerate(special + [w for w in words if w not in special])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<image>"],
    )


def build_captioner(
    tokenizer: Any,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    image_size: int = 64,
    patch_size: int = 8,
) -> tuple[Any, Any]:
    """A randomly initialised tiny LLaVA and its processor (`tokenizer` must hold
    ``<image>`` and a pad token); the defaults are the 64x64 easy-VQA captioner."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    vision = CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    square = {"height": image_size, "width": image_size}
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=square),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    return LlavaForConditionalGeneration(config), processor


def train_captioner(out_dir: str, steps: int, batch_size: int, lr: float, seed: int = 0) -> float:
    """Train the captioner on easy-VQA's training images; save it; return its final loss."""
    import easy_vqa

    from ..media import load_image

    torch.manual_seed(seed)
    model, processor = build_captioner(captioner_tokenizer())
    labels = easy_vqa_labels("train")
    paths = easy_vqa.get_train_image_paths()
    ids = sorted(labels)
    images = [load_image(paths[i]) for i in ids]
    prompt = "<image>" + CAPTION_PROMPT.format(word_limit=QUERY_WORDS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(seed)
    eos = processor.tokenizer.eos_token
    model.train()
    loss_value = float("nan")
    for step in range(steps):
        rows = rng.sample(range(len(ids)), batch_size)
        texts = [f"{prompt} {caption_of(labels[ids[r]])}{eos}" for r in rows]
        batch = processor(
            text=texts, images=[images[r] for r in rows], return_tensors="pt", padding=True
        )
        target = batch["input_ids"].clone()
        target[batch["attention_mask"] == 0] = -100
        prompt_len = len(processor(text=[prompt], images=[images[rows[0]]])["input_ids"][0])
        target[:, :prompt_len] = -100  # learn the caption, not the prompt
        loss = model(**batch, labels=target).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_value = loss.item()
        if (step + 1) % 50 == 0:
            print(f"captioner step {step + 1}: loss {loss_value:.3f}", flush=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return loss_value


def caption_accuracy(generator: Any, n: int = 200) -> float:
    """Fraction of test images whose caption names the right colour and shape."""
    import easy_vqa

    from ..media import load_image

    labels = easy_vqa_labels("test")
    paths = easy_vqa.get_test_image_paths()
    ids = sorted(labels)[:n]
    prompt = CAPTION_PROMPT.format(word_limit=QUERY_WORDS)
    captions = generator.generate_batch([prompt] * len(ids), [[load_image(paths[i])] for i in ids])
    hits = [labels[i][0] in c.split() and labels[i][1] in c.split() for i, c in zip(ids, captions)]
    return sum(hits) / len(hits)


def write_pairs(path: str, n: int, seed: int = 0) -> int:
    """The retrieval JSONL over easy-VQA test images (image paths absolute)."""
    import easy_vqa

    labels = easy_vqa_labels("test")
    paths = easy_vqa.get_test_image_paths()
    ids = sorted(labels)
    rng = random.Random(seed)
    rng.shuffle(ids)
    targets, examples = ids[:n], ids[n:]
    by_label: dict[tuple[str, str], list[int]] = {}
    for i in examples:
        by_label.setdefault(labels[i], []).append(i)
    with open(path, "w") as f:
        for k, t in enumerate(targets):
            label = labels[t]
            row: dict[str, Any] = {"target_image": paths[t], "label": " ".join(label)}
            if k % 2 == 0 or not by_label.get(label):
                row["query"] = f"a {label[0]} {label[1]}"
            else:  # query by example: another test image with the same colour and shape
                row["query_image"] = paths[rng.choice(by_label[label])]
            f.write(json.dumps(row) + "\n")
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/rar_easyvqa")
    p.add_argument("--captioner-steps", type=int, default=400)
    p.add_argument("--pairs", type=int, default=800)
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args(argv)

    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..embedders import minilm_path
    from ..train.generation import ImageTextGenerator
    from .rar_ablation import load_pairs, print_table, run

    os.makedirs(args.out, exist_ok=True)
    captioner_dir = os.path.join(args.out, "captioner")
    if not os.path.isfile(os.path.join(captioner_dir, "config.json")):
        t0 = time.time()
        loss = train_captioner(captioner_dir, args.captioner_steps, 32, 2e-3)
        print(f"captioner trained in {time.time() - t0:.0f} s, final loss {loss:.3f}", flush=True)
    model = AutoModelForImageTextToText.from_pretrained(captioner_dir, local_files_only=True)
    processor = AutoProcessor.from_pretrained(captioner_dir, local_files_only=True)
    n_params = sum(x.numel() for x in model.parameters())
    generator = ImageTextGenerator(
        model,
        processor,
        captioner_dir,
        max_new_tokens=12,
        batch_size=32,
        cache=os.path.join(args.out, "generations.jsonl"),
    )
    accuracy = caption_accuracy(generator)
    print(
        f"captioner: {n_params:,} parameters; colour+shape right on {accuracy:.1%} "
        "of 200 test images",
        flush=True,
    )
    data = os.path.join(args.out, "pairs.jsonl")
    write_pairs(data, args.pairs)
    rows = run(load_pairs(data), generator, minilm_path(), epochs=args.epochs)
    print_table(rows)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(
            {
                "captioner_parameters": n_params,
                "caption_accuracy": accuracy,
                "pairs": args.pairs,
                "rows": rows,
            },
            f,
            indent=2,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
