"""Text generators behind one protocol, with an on-disk cache.

``generate(prompt, images=None) -> str`` is all RAR and RGE need of a generator;
``generate_batch(prompts, images=None)`` batches it. `CausalLMGenerator` wraps a
transformers causal LM (text only), `ImageTextGenerator` a transformers
image-text-to-text model with its processor. Both are greedy by default and consult a
`GenerationCache`, a JSONL file keyed by model id, prompt and image bytes, so a corpus is
enhanced once and a rerun (or a resumed run) costs nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Generator(Protocol):
    """What RAR and RGE need of a generator."""

    def generate(self, prompt: str, images: Sequence[Any] | None = None) -> str: ...


def _image_digest(image: Any) -> str:
    """A stable digest of an image (PIL image, array, bytes or path)."""
    if isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            data = f.read()
    elif hasattr(image, "tobytes") and hasattr(image, "size") and hasattr(image, "mode"):
        data = f"{image.mode}{image.size}".encode() + image.tobytes()  # PIL
    elif hasattr(image, "tobytes"):
        data = f"{getattr(image, 'shape', '')}{getattr(image, 'dtype', '')}".encode()
        data += image.tobytes()
    else:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data = buf.getvalue()
    return hashlib.sha256(data).hexdigest()


def cache_key(model_id: str, prompt: str, images: Sequence[Any] | None = None) -> str:
    """The cache key of one generation: model, prompt and every input image."""
    h = hashlib.sha256()
    for part in [model_id, prompt, *(_image_digest(i) for i in images or [])]:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


class GenerationCache:
    """Generations on disk, one JSON object per line (``{"key": ..., "text": ...}``).

    Appends are flushed per entry; a torn last line (an interrupted run) is ignored on
    load, so the cache never blocks a rerun.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._entries: dict[str, str] = {}
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        item = json.loads(line)
                        self._entries[item["key"]] = item["text"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> str | None:
        return self._entries.get(key)

    def put(self, key: str, text: str) -> None:
        self._entries[key] = text
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "text": text}) + "\n")


class _CachedGenerator:
    """Cache lookup and batching shared by the generators; subclasses generate."""

    model: Any
    model_id: str
    max_new_tokens: int
    batch_size: int
    cache: GenerationCache | None
    calls: int

    def _generate_uncached(
        self, prompts: list[str], images: list[Sequence[Any] | None]
    ) -> list[str]:
        raise NotImplementedError

    def _greedy(self, inputs: Any, tokenizer: Any) -> list[str]:
        """Greedy generation from model inputs; the new tokens decoded and stripped.
        The model's training mode is restored afterwards."""
        import torch

        model = self.model
        inputs = inputs.to(model.device)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                out = model.generate(
                    **inputs,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
        finally:
            model.train(was_training)
        new = out[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]

    def generate(self, prompt: str, images: Sequence[Any] | None = None) -> str:
        return self.generate_batch([prompt], [images] if images else None)[0]

    def generate_batch(
        self, prompts: Sequence[str], images: Sequence[Sequence[Any] | None] | None = None
    ) -> list[str]:
        """Generations for `prompts` (with `images[i]` for prompt i), cached ones reused."""
        prompts = list(prompts)
        per_prompt = list(images) if images is not None else [None] * len(prompts)
        if len(per_prompt) != len(prompts):
            raise ValueError(f"{len(per_prompt)} image lists for {len(prompts)} prompts")
        keys = [cache_key(self.model_id, p, im) for p, im in zip(prompts, per_prompt)]
        out: list[str | None] = [
            self.cache.get(k) if self.cache is not None else None for k in keys
        ]
        todo = [i for i, o in enumerate(out) if o is None]
        for start in range(0, len(todo), self.batch_size):
            rows = todo[start : start + self.batch_size]
            texts = self._generate_uncached(
                [prompts[i] for i in rows], [per_prompt[i] for i in rows]
            )
            self.calls += 1
            for i, text in zip(rows, texts):
                out[i] = text
                if self.cache is not None:
                    self.cache.put(keys[i], text)
        return [o or "" for o in out]


@contextmanager
def _left_padding(tokenizer: Any) -> Iterator[None]:
    """Pad on the left while the block runs (generation continues from the right)."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        yield
    finally:
        tokenizer.padding_side = side


def _as_cache(cache: str | GenerationCache | None) -> GenerationCache | None:
    return GenerationCache(cache) if isinstance(cache, (str, os.PathLike)) else cache


class CausalLMGenerator(_CachedGenerator):
    """A transformers causal LM as a text-only `Generator` (greedy, left-padded batches).

    Args:
        model, tokenizer: e.g. from `evidex.train.rl.load_causal_lm`.
        model_id: names the model in cache keys (a path or a hub-style name).
        max_new_tokens: generation budget.
        batch_size: prompts per generate() call.
        cache: a `GenerationCache` or a path to one.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        model_id: str,
        max_new_tokens: int = 64,
        batch_size: int = 8,
        cache: str | GenerationCache | None = None,
    ) -> None:
        self.model, self.tokenizer, self.model_id = model, tokenizer, model_id
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.cache = _as_cache(cache)
        self.calls = 0  # generate() calls on the model (cache misses, batched)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token

    def _generate_uncached(
        self, prompts: list[str], images: list[Sequence[Any] | None]
    ) -> list[str]:

        if any(images):
            raise ValueError("a text-only causal LM cannot read images; use ImageTextGenerator")
        with _left_padding(self.tokenizer):
            batch = self.tokenizer(prompts, return_tensors="pt", padding=True)
        return self._greedy(batch, self.tokenizer)


class ImageTextGenerator(_CachedGenerator):
    """A transformers image-text-to-text model (LLaVA, Qwen-VL, ...) as a `Generator`.

    `processor` turns ``text=`` and ``images=`` into model inputs; each prompt must
    contain the model's image placeholder once per image (``processor.image_token``),
    which `generate_batch` inserts at the front when missing.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        model_id: str,
        max_new_tokens: int = 64,
        batch_size: int = 4,
        cache: str | GenerationCache | None = None,
    ) -> None:
        self.model, self.processor, self.model_id = model, processor, model_id
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.cache = _as_cache(cache)
        self.calls = 0  # generate() calls on the model (cache misses, batched)

    def _generate_uncached(
        self, prompts: list[str], images: list[Sequence[Any] | None]
    ) -> list[str]:

        token = getattr(self.processor, "image_token", "<image>")
        texts, flat = [], []
        for prompt, ims in zip(prompts, images):
            ims = list(ims or [])
            missing = len(ims) - prompt.count(token)
            texts.append(token * max(0, missing) + prompt)
            flat.extend(ims)
        with _left_padding(self.processor.tokenizer):
            inputs = self.processor(
                text=texts, images=flat or None, return_tensors="pt", padding=True
            )
        return self._greedy(inputs, self.processor.tokenizer)
