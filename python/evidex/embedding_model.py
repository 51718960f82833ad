"""A trainable text embedder: a transformers backbone, pooling and L2 normalisation.

``Embedder`` is a ``torch.nn.Module``: ``model(texts)`` returns embeddings with gradients
(for the losses in `evidex.train.losses`), ``model.encode(texts)`` returns float32 numpy
arrays for indexing. ``save_pretrained`` writes a directory that ``from_pretrained`` (and
transformers itself) reads back; a sentence-transformers directory's pooling mode is
honoured when no evidex config is present.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._arrays import check_texts
from ._files import atomic_directory
from ._progress import progress_bar

POOLINGS = ("mean", "cls", "last", "emb_token", "max", "mean_sqrt_len", "weighted_mean")
CONFIG_NAME = "evidex_embedder.json"
EMB_TOKEN = "<emb>"


def pool(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    pooling: str,
    input_ids: torch.Tensor | None = None,
    emb_token_id: int | None = None,
    first: torch.Tensor | None = None,
) -> torch.Tensor:
    """One vector per sequence from token states ``[n, L, d]`` (padding on either side).

    ``mean``: average of the non-padding tokens; ``cls``: the first non-padding token;
    ``last``: the last non-padding token (causal LMs); ``emb_token``: the last occurrence
    of the ``<emb>`` token (`emb_token_id`) in `input_ids`; ``max``: the elementwise
    maximum over the tokens; ``mean_sqrt_len``: their sum over the square root of their
    count; ``weighted_mean``: tokens weighted by their position (1, 2, ... from the first
    token, or from `first` ``[n, 1]`` when the mask also hides a prompt), as
    sentence-transformers' pooling modes of those names.
    """
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    mask = attention_mask.to(torch.bool)
    length = mask.shape[1]
    if pooling in ("mean", "mean_sqrt_len"):
        m = mask.unsqueeze(-1).to(hidden.dtype)
        count = m.sum(1).clamp(min=1e-9)
        return (hidden * m).sum(1) / (count if pooling == "mean" else count.sqrt())
    if pooling == "max":
        return hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1).values
    if pooling == "weighted_mean":
        # Position 1 is the first token of the text, wherever padding puts it.
        if first is None:
            first = mask.to(torch.int8).argmax(1, keepdim=True)
        position = torch.arange(1, length + 1, device=hidden.device).unsqueeze(0) - first
        w = (position * mask).unsqueeze(-1).to(hidden.dtype)
        return (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)
    if pooling == "cls":
        return hidden[rows, mask.to(torch.int8).argmax(1)]
    if pooling == "last":
        return hidden[rows, length - 1 - mask.flip(1).to(torch.int8).argmax(1)]
    if pooling == "emb_token":
        if input_ids is None or emb_token_id is None:
            raise ValueError("emb_token pooling needs input_ids and the <emb> token id")
        is_emb = (input_ids == emb_token_id) & mask
        if not bool(is_emb.any(1).all()):
            raise ValueError("a sequence has no <emb> token (truncated away?)")
        return hidden[rows, length - 1 - is_emb.flip(1).to(torch.int8).argmax(1)]
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")


# sentence-transformers' pooling modes, by the names of its configs (both its current
# ``pooling_mode`` values and the older ``pooling_mode_*`` flags), and evidex's names.
_ST_POOLINGS = {
    "mean": "mean",
    "cls": "cls",
    "max": "max",
    "lasttoken": "last",
    "mean_sqrt_len_tokens": "mean_sqrt_len",
    "weightedmean": "weighted_mean",
}
_ST_FLAGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}
ST_CONFIG = "config_sentence_transformers.json"


def _json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e


def read_sentence_transformers(path: str) -> dict[str, Any] | None:
    """The settings of a sentence-transformers model directory (``modules.json``), as
    `Embedder` arguments: pooling, max_length, normalize, lowercase, prompts,
    default_prompt_name and include_prompt. None when `path` is not one.

    Raises ValueError for what evidex cannot reproduce exactly (a module other than
    Transformer, Pooling and Normalize, such as Dense; several pooling modes at once),
    rather than embedding differently from sentence-transformers.
    """
    modules_file = os.path.join(path, "modules.json")
    if not os.path.isfile(modules_file):
        return None
    modules = _json(modules_file)
    if not isinstance(modules, list):
        raise ValueError(f"{modules_file}: expected a list of modules")
    kinds = []
    pooling_dir = None
    for m in sorted(modules, key=lambda m: m.get("idx", 0) if isinstance(m, dict) else 0):
        kind = str(m.get("type", "")).rsplit(".", 1)[-1] if isinstance(m, dict) else ""
        if kind not in ("Transformer", "Pooling", "Normalize"):
            raise ValueError(
                f"{modules_file}: module {kind or m!r} is not supported (evidex reproduces "
                "Transformer, Pooling and Normalize); its embeddings would differ"
            )
        if kind == "Transformer" and m.get("path", "") not in ("", "0_Transformer", "."):
            raise ValueError(f"{modules_file}: the transformer must be the directory itself")
        if kind == "Pooling":
            pooling_dir = os.path.join(path, m.get("path", "1_Pooling"))
        kinds.append(kind)
    if kinds[:1] != ["Transformer"] or kinds.count("Pooling") != 1:
        raise ValueError(
            f"{modules_file}: expected Transformer, Pooling [, Normalize], got {kinds}"
        )
    cfg = _json(os.path.join(pooling_dir, "config.json"))
    mode = cfg.get("pooling_mode")
    if mode is None:
        mode = [name for flag, name in _ST_FLAGS.items() if cfg.get(flag)]
    modes = [mode] if isinstance(mode, str) else list(mode)
    if len(modes) != 1 or modes[0] not in _ST_POOLINGS:
        raise ValueError(
            f"{pooling_dir}/config.json: pooling {modes} is not supported (one of "
            f"{sorted(_ST_POOLINGS)})"
        )
    out: dict[str, Any] = {
        "pooling": _ST_POOLINGS[modes[0]],
        "normalize": "Normalize" in kinds,
        "include_prompt": bool(cfg.get("include_prompt", True)),
    }
    bert = os.path.join(path, "sentence_bert_config.json")
    bert_cfg = _json(bert) if os.path.isfile(bert) else {}
    out["lowercase"] = bool(bert_cfg.get("do_lower_case", False))
    max_length = bert_cfg.get("max_seq_length")
    if max_length is None:  # sentence-transformers 6 keeps it in the tokenizer's config
        tok = os.path.join(path, "tokenizer_config.json")
        limit = _json(tok).get("model_max_length") if os.path.isfile(tok) else None
        if isinstance(limit, int) and 0 < limit < 1_000_000:
            max_length = limit
    if max_length is not None:
        out["max_length"] = int(max_length)
    st_cfg_file = os.path.join(path, ST_CONFIG)
    if os.path.isfile(st_cfg_file):
        st_cfg = _json(st_cfg_file)
        prompts = st_cfg.get("prompts") or {}
        if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
            raise ValueError(f"{st_cfg_file}: prompts must map names to strings")
        out["prompts"] = prompts
        out["default_prompt_name"] = st_cfg.get("default_prompt_name")
    return out


def length_groups(lengths: Sequence[int], overhead: int = 128) -> list[list[int]]:
    """Split ascending `lengths` into contiguous groups minimising padded tokens plus
    `overhead` token-equivalents per extra forward pass (dynamic programming).

    A batch padded to its longest text wastes compute on padding; a pass per text
    wastes the per-pass overhead. Returns lists of positions into `lengths`.
    """
    n = len(lengths)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(end):
            cost = best[start] + overhead + (end - start) * lengths[end - 1]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups = []
    end = n
    while end > 0:
        groups.append(list(range(cut[end], end)))
        end = cut[end]
    return groups[::-1]


class Embedder(torch.nn.Module):
    """Transformers backbone + pooling + L2 normalisation.

    Args:
        backbone: a transformers model returning ``last_hidden_state`` (an encoder) or
            ``hidden_states`` (a causal LM, see `causal`).
        tokenizer: its tokenizer.
        pooling: ``"mean"``, ``"cls"``, ``"last"``, ``"emb_token"`` (an ``<emb>``
            token appended to every text; added to the vocabulary if missing), or
            sentence-transformers' ``"max"``, ``"mean_sqrt_len"``, ``"weighted_mean"``.
        max_length: tokens per text; longer texts are truncated (the ``<emb>`` token is
            kept).
        normalize: L2-normalise the output (cosine similarity = dot product).
        lowercase: lowercase texts (and prompts) first (sentence-transformers'
            ``do_lower_case``).
        prompts: named prompts prepended to texts (``encode(..., prompt_name=...)``),
            as sentence-transformers' ``prompts``; `default_prompt_name` is used when
            none is given.
        include_prompt: whether the prompt's tokens are pooled with the text's.
    """

    def __init__(
        self,
        backbone: Any,
        tokenizer: Any,
        pooling: str = "mean",
        max_length: int = 256,
        normalize: bool = True,
        lowercase: bool = False,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        include_prompt: bool = True,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        prompts = dict(prompts or {})
        if default_prompt_name is not None and default_prompt_name not in prompts:
            raise ValueError(f"default_prompt_name {default_prompt_name!r} is not in prompts")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = int(max_length)
        self.normalize = normalize
        self.lowercase = bool(lowercase)
        self.prompts = prompts
        self.default_prompt_name = default_prompt_name
        self.include_prompt = bool(include_prompt)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.emb_token_id: int | None = None
        if pooling == "emb_token":
            if EMB_TOKEN not in tokenizer.get_vocab():
                tokenizer.add_special_tokens({"additional_special_tokens": [EMB_TOKEN]})
                backbone.resize_token_embeddings(len(tokenizer))
            self.emb_token_id = tokenizer.convert_tokens_to_ids(EMB_TOKEN)

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        pooling: str | None = None,
        max_length: int | None = None,
        normalize: bool | None = None,
        device: str | torch.device = "cpu",
        **model_kwargs: Any,
    ) -> Embedder:
        """Load from a local directory (no hub access): one written by `save_pretrained`,
        a sentence-transformers model directory (its modules, pooling, normalisation,
        maximum length, lowercasing and prompts; modules it cannot reproduce raise
        ValueError), or a plain transformers model (mean pooling). Arguments given here
        override the directory's settings."""
        from transformers import AutoModel, AutoTokenizer

        if not os.path.isdir(path):
            raise FileNotFoundError(f"no model directory at {path!r}")
        settings: dict[str, Any] = read_sentence_transformers(path) or {}
        if os.path.isfile(os.path.join(path, CONFIG_NAME)):
            settings.update(_json(os.path.join(path, CONFIG_NAME)))
        given = {"pooling": pooling, "max_length": max_length, "normalize": normalize}
        settings.update({k: v for k, v in given.items() if v is not None})
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        backbone = AutoModel.from_pretrained(path, local_files_only=True, **model_kwargs)
        known = ("pooling", "max_length", "normalize", "lowercase", "prompts")
        known += ("default_prompt_name", "include_prompt")
        model = cls(backbone, tokenizer, **{k: settings[k] for k in known if k in settings})
        return model.to(device)

    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def resolve_prompt(self, prompt_name: str | None = None, prompt: str | None = None) -> str:
        """The prompt text for a call: `prompt`, else the named one, else the default."""
        if prompt is not None and prompt_name is not None:
            raise ValueError("give prompt or prompt_name, not both")
        if prompt is not None:
            return prompt
        name = prompt_name if prompt_name is not None else self.default_prompt_name
        if name is None:
            return ""
        if name not in self.prompts:
            raise ValueError(f"unknown prompt_name {name!r}; known: {sorted(self.prompts)}")
        return self.prompts[name]

    def _token_ids(self, texts: list[str], prompt: str = "") -> list[list[int]]:
        """Unpadded token ids per text (``<emb>`` appended, never truncated away)."""
        texts = [prompt + t for t in texts] if prompt else texts
        if self.lowercase:
            texts = [t.lower() for t in texts]
        if self.pooling != "emb_token":
            return self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length - 1)["input_ids"]
        return [row + [self.emb_token_id] for row in ids]

    def _prompt_tokens(self, prompt: str) -> int:
        """Leading tokens of a prompted text that belong to the prompt (none when the
        prompt is pooled with the text): the prompt's own tokens less a closing special
        token, as sentence-transformers counts them."""
        if not prompt or self.include_prompt:
            return 0
        text = prompt.lower() if self.lowercase else prompt
        ids = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
        special = set(getattr(self.tokenizer, "all_special_ids", ()))
        return len(ids) - (1 if ids and ids[-1] in special else 0)

    def _pad(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        left = self.tokenizer.padding_side == "left"
        for i, r in enumerate(rows):
            span = slice(width - len(r), width) if left else slice(0, len(r))
            ids[i, span] = torch.tensor(r)
            mask[i, span] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded tensors for `texts`; with ``emb_token`` pooling each text ends in ``<emb>``."""
        return self._pad(self._token_ids(check_texts(texts)))

    def forward(
        self,
        texts: Sequence[str] | dict[str, torch.Tensor],
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> torch.Tensor:
        """Embeddings ``[n, dim]`` (float32, with gradients when enabled).

        Texts are run in length-sorted sub-batches (`length_groups`), so a batch of
        mixed lengths is not padded to its longest text; the result is the same up to
        float rounding, in the input order. A prompt (see `resolve_prompt`) is prepended.
        """
        if isinstance(texts, dict):
            return self._forward_padded(texts)
        prompt = self.resolve_prompt(prompt_name, prompt)
        rows = self._token_ids(check_texts(texts), prompt)
        if not rows:
            return torch.empty((0, self.dim), device=self.device)
        skip = self._prompt_tokens(prompt)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        parts, placed = [], []
        for group in length_groups([len(rows[i]) for i in order]):
            members = [order[j] for j in group]
            parts.append(self._forward_padded(self._pad([rows[i] for i in members]), skip))
            placed.extend(members)
        out = torch.cat(parts)
        inverse = torch.empty(len(placed), dtype=torch.long)
        inverse[torch.tensor(placed)] = torch.arange(len(placed))
        return out[inverse.to(out.device)]

    def _forward_padded(self, batch: dict[str, torch.Tensor], skip: int = 0) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.backbone(**batch, output_hidden_states=not self._has_last_hidden_state())
        hidden = out.last_hidden_state if self._has_last_hidden_state() else out.hidden_states[-1]
        mask = batch["attention_mask"]
        first = None
        if skip:  # the prompt's tokens are attended to but not pooled
            first = mask.to(torch.int8).argmax(1, keepdim=True)
            position = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
            mask = mask * (position >= first + skip)
        pooled = pool(
            hidden, mask, self.pooling, batch["input_ids"], self.emb_token_id, first
        ).float()
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def _has_last_hidden_state(self) -> bool:
        # Base encoders return last_hidden_state; *ForCausalLM models only hidden_states.
        return not type(self.backbone).__name__.endswith("ForCausalLM")

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        show_progress: bool = False,
        prompt_name: str | None = None,
        prompt: str | None = None,
    ) -> np.ndarray:
        """float32 numpy embeddings ``[len(texts), dim]``, batched in length order; a
        prompt (by name, or given, else the default) is prepended to every text."""
        self.resolve_prompt(prompt_name, prompt)  # bad names fail before any work
        texts = check_texts(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        was_training = self.training
        self.eval()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        bar = progress_bar(len(texts), show_progress, "encode")
        try:
            for start in range(0, len(texts), batch_size):
                rows = order[start : start + batch_size]
                batch = [texts[i] for i in rows]
                out[rows] = self.forward(batch, prompt_name, prompt).cpu().numpy()
                if bar is not None:
                    bar.update(len(rows))
        finally:
            self.train(was_training)
            if bar is not None:
                bar.close()
        return out

    def save_pretrained(self, path: str) -> None:
        """Write backbone, tokenizer and settings to `path`, as a directory that
        `from_pretrained`, transformers and sentence-transformers (``modules.json``,
        pooling, normalisation, maximum length, prompts) all read with these settings.
        ``emb_token`` pooling has no sentence-transformers equivalent: that directory
        gets no ``modules.json`` (and a warning).

        Written to a temporary sibling first and swapped in, so a failed save leaves
        any previous model at `path` intact.
        """
        path = os.path.abspath(path)
        with atomic_directory(path) as tmp:
            self.backbone.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            settings = {
                "pooling": self.pooling,
                "max_length": self.max_length,
                "normalize": self.normalize,
                "lowercase": self.lowercase,
                "prompts": self.prompts,
                "default_prompt_name": self.default_prompt_name,
                "include_prompt": self.include_prompt,
            }
            _write_json(os.path.join(tmp, CONFIG_NAME), settings)
            self._write_sentence_transformers(tmp)

    def _write_sentence_transformers(self, path: str) -> None:
        """sentence-transformers' files, in the form every version since 2 reads."""
        mode = {v: k for k, v in _ST_POOLINGS.items()}.get(self.pooling)
        if mode is None:
            warnings.warn(
                f"{self.pooling!r} pooling has no sentence-transformers equivalent; the saved "
                "model loads with these settings in evidex only",
                stacklevel=3,
            )
            return
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ]
        if self.normalize:
            modules.append(
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                }
            )
            os.makedirs(os.path.join(path, "2_Normalize"), exist_ok=True)
        _write_json(os.path.join(path, "modules.json"), modules)
        os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
        pooling = {"word_embedding_dimension": self.dim}
        pooling.update({flag: name == mode for flag, name in _ST_FLAGS.items()})
        pooling["include_prompt"] = self.include_prompt
        _write_json(os.path.join(path, "1_Pooling", "config.json"), pooling)
        _write_json(
            os.path.join(path, "sentence_bert_config.json"),
            {"max_seq_length": self.max_length, "do_lower_case": self.lowercase},
        )
        _write_json(
            os.path.join(path, ST_CONFIG),
            {
                "prompts": self.prompts,
                "default_prompt_name": self.default_prompt_name,
                "similarity_fn_name": "cosine" if self.normalize else "dot",
            },
        )


def _write_json(path: str, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
