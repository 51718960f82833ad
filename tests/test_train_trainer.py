"""ContrastiveTrainer on the Debian sample, checkpoints/resume, data loading, evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import debian_pairs
from evidex.train import (
    ContrastiveTrainer,
    Embedder,
    InfoNCELoss,
    RetrievalEvaluator,
    evaluate_retrieval,
    load_jsonl,
)


class _Fixed:
    """An 'embedder' that looks texts up in a table."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = table

    def encode(self, texts):
        return np.array([self.table[t] for t in texts], dtype=np.float32)


def test_metrics_by_hand() -> None:
    corpus = {"a": "A", "b": "B", "c": "C"}
    table = {"A": [1, 0], "B": [0.8, 0.6], "C": [0, 1], "q1": [1, 0.1], "q2": [0, 1]}
    queries = {"x": "q1", "y": "q2"}
    # x ranks a, b, c; relevant {b, c}: ranks 2 and 3. y ranks c, b, a; relevant {c}.
    result = evaluate_retrieval(
        _Fixed(table), queries, corpus, {"x": {"b", "c"}, "y": {"c"}}, per_query=True
    )
    d2, d3 = 1 / np.log2(3), 1 / np.log2(4)
    assert result["recall@1"] == pytest.approx((0 + 1) / 2)
    assert result["recall@5"] == pytest.approx(1.0)
    assert result["mrr@10"] == pytest.approx((1 / 2 + 1) / 2)
    assert result["ndcg@10"] == pytest.approx(((d2 + d3) / (1 + d2) + 1) / 2)
    assert result["per_query"][0]["ranked"] == ["a", "b", "c"]
    assert result["queries"] == 2


def test_hnsw_path_agrees_with_exact_and_errors() -> None:
    pairs = debian_pairs()[:200]
    rng = np.random.default_rng(0)
    table = {p["positive"]: rng.normal(size=8).tolist() for p in pairs}
    table.update({p["query"]: (np.array(table[p["positive"]]) + 0.3).tolist() for p in pairs})
    queries = [p["query"] for p in pairs]
    corpus = [p["positive"] for p in pairs]
    relevant = [{i} for i in range(len(pairs))]
    exact = evaluate_retrieval(_Fixed(table), queries, corpus, relevant)
    graph = evaluate_retrieval(_Fixed(table), queries, corpus, relevant, exact_below=0)
    for key in ("recall@1", "recall@10", "ndcg@10"):
        assert graph[key] == pytest.approx(exact[key], abs=0.02)
    with pytest.raises(ValueError, match="not in the corpus"):
        evaluate_retrieval(_Fixed(table), queries, corpus, [{999}] * len(queries))
    with pytest.raises(ValueError, match="entries for"):
        evaluate_retrieval(_Fixed(table), queries, corpus, relevant[:3])
    with pytest.raises(ValueError, match="empty"):
        evaluate_retrieval(_Fixed(table), [], corpus, [])


def test_jsonl_and_example_errors(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"query": "q", "positive": "p", "negatives": ["n"]}\n\n{"query": "q2"}\n')
    with pytest.raises(ValueError, match=r"d.jsonl:3: needs at least one positive"):
        load_jsonl(str(path))
    path.write_text('{"query": "q", "positive": "p"}\n{"query": "q2", "positive": "p2",}\n')
    with pytest.raises(ValueError, match=r"d.jsonl:2: not valid JSON"):
        load_jsonl(str(path))
    path.write_text('{"anchor": "q", "positives": ["p", "p2"]}\n')
    assert load_jsonl(str(path))[0].positives == ["p", "p2"]
    with pytest.raises(ValueError, match="example 1: the query"):
        ContrastiveTrainer(_tiny_model(), [("q", "p"), ("", "p")])
    with pytest.raises(ValueError, match="batch_size"):
        ContrastiveTrainer(_tiny_model(), [("q", "p")], batch_size=0)


_TINY_DIR: list[str] = []


def _tiny_model() -> Embedder:
    return Embedder.from_pretrained(_TINY_DIR[0])


@pytest.fixture(autouse=True)
def _remember_dir(debian_bert_dir):
    if not _TINY_DIR:
        _TINY_DIR.append(debian_bert_dir)


def _split():
    pairs = debian_pairs()
    return pairs[:320], pairs[320:]


def test_training_improves_retrieval_on_held_out_pairs(debian_bert_dir, tmp_path) -> None:
    train, held = _split()
    corpus = [p["positive"] for p in held]
    evaluator = RetrievalEvaluator(
        [p["query"] for p in held], corpus, [{i} for i in range(len(held))], name="held"
    )
    model = Embedder.from_pretrained(debian_bert_dir, max_length=64)
    before = evaluator(model)
    trainer = ContrastiveTrainer(
        model,
        [(p["query"], p["positive"]) for p in train],
        loss=InfoNCELoss(model, scale=20, symmetric=True),
        evaluator=evaluator,
        batch_size=32,
        epochs=6,
        learning_rate=3e-3,
        eval_steps=30,
        logging_steps=5,
        show_progress=False,
    )
    out = trainer.train()
    after = evaluator(model)
    assert out.global_step == 6 * 10 and out.examples_seen == 6 * 320
    assert after["held/recall@10"] > before["held/recall@10"] + 0.15
    assert after["held/ndcg@10"] > before["held/ndcg@10"] + 0.1
    losses = [h["loss"] for h in out.history if "loss" in h]
    assert losses[-1] < 0.5 * losses[0]
    assert [h["step"] for h in out.history if "held/ndcg@10" in h] == [30, 60]


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tmp_path) -> None:
    train, _ = _split()
    data = [(p["query"], p["positive"]) for p in train[:96]]  # 6 batches per epoch
    kwargs = dict(batch_size=16, epochs=2, learning_rate=1e-3, show_progress=False, save_steps=4)
    full = _tiny_model()  # dropout on: the resumed run must replay the RNG too
    ContrastiveTrainer(
        full, data, output_dir=str(tmp_path / "a"), save_total_limit=None, **kwargs
    ).train()
    assert sorted(os.listdir(tmp_path / "a")) == ["checkpoint-12", "checkpoint-4", "checkpoint-8"]
    state = torch.load(tmp_path / "a" / "checkpoint-4" / "trainer_state.pt", weights_only=False)
    assert (state["step"], state["epoch"], state["batches_in_epoch"]) == (4, 0, 4)

    resumed = _tiny_model()  # fresh weights: the checkpoint must bring them back
    trainer = ContrastiveTrainer(resumed, data, output_dir=str(tmp_path / "b"), **kwargs)
    out = trainer.train(resume_from=str(tmp_path / "a" / "checkpoint-4"))
    assert out.global_step == 12
    for a, b in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)
    # "latest" picks the newest complete checkpoint; the saved limit keeps two.
    assert sorted(os.listdir(tmp_path / "b")) == ["checkpoint-12", "checkpoint-8"]
    again = ContrastiveTrainer(_tiny_model(), data, output_dir=str(tmp_path / "b"), **kwargs)
    assert again.train(resume_from="latest").global_step == 12
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ContrastiveTrainer(_tiny_model(), data, output_dir=str(tmp_path / "none")).train("latest")


def test_gradient_accumulation_counts_optimizer_steps() -> None:
    train, _ = _split()
    data = [(p["query"], p["positive"]) for p in train[:80]]  # 5 batches of 16
    model = _tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    out = ContrastiveTrainer(
        model,
        data,
        batch_size=16,
        gradient_accumulation_steps=2,
        epochs=2,
        logging_steps=1,
        show_progress=False,
    ).train()
    # 5 batches per epoch -> steps after batches 2, 4 and the epoch's last (5).
    assert out.global_step == 6 and out.examples_seen == 160
    assert len([h for h in out.history if "loss" in h]) == 6
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_mixed_precision_on_cpu_and_errors() -> None:
    train, _ = _split()
    data = [(p["query"], p["positive"]) for p in train[:32]]
    model = _tiny_model()
    out = ContrastiveTrainer(
        model, data, batch_size=16, mixed_precision="bf16", show_progress=False
    ).train()
    assert out.global_step == 2
    with pytest.raises(ValueError, match="fp16 mixed precision needs a CUDA"):
        ContrastiveTrainer(model, data, mixed_precision="fp16", show_progress=False).train()
    with pytest.raises(ValueError, match="must wrap the model"):
        ContrastiveTrainer(model, data, loss=InfoNCELoss(_tiny_model()))


def test_torchrun_two_processes_gloo(debian_bert_dir, tmp_path) -> None:
    """torchrun, 2 CPU processes: gathered negatives line up with the single-process
    loss, and DDP training keeps the replicas identical."""
    script = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            script,
            debian_bert_dir,
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = results[0]["single_process_loss"]
    assert np.mean([r["gathered_loss"] for r in results]) == pytest.approx(single, rel=1e-5)
    for r in results:
        assert r["positive_rows_match"]
        assert r["grad_matches_single_process"]
    assert results[0]["param_checksum"] == pytest.approx(results[1]["param_checksum"], rel=1e-6)
    assert results[0]["steps"] == results[1]["steps"] == 3
