"""GRPO training of a causal-LM reasoner against `EmbedRLReward`, on TRL's GRPOTrainer.

The embedder inside the reward stays frozen; only the reasoner learns to write evidence
(``<think>``, ``<evidence>``) that makes its query retrieve the right target. Needs the
``train`` extra plus ``trl`` (and ``gguf`` for GGUF checkpoints).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from typing import Any

# The reasoner's prompt lives beside the format it asks for (evidex.evidence).
from ..evidence import DEFAULT_SHOTS, INSTRUCTION, VISUAL_SHOTS, reasoner_prompt

__all__ = [
    "DEFAULT_SHOTS",
    "INSTRUCTION",
    "VISUAL_SHOTS",
    "load_causal_lm",
    "reasoner_prompt",
    "retrieval_dataset",
    "train_grpo",
]


def load_causal_lm(
    source: str, gguf_file: str | None = None, cache_dir: str | None = None
) -> tuple[Any, Any]:
    """(model, tokenizer) from a local directory, optionally a GGUF file in it.

    A GGUF checkpoint is dequantised once and cached as safetensors under `cache_dir`
    (default ``~/.cache/evidex/models``), so later loads skip the conversion.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not os.path.isdir(source):
        raise FileNotFoundError(f"no model directory at {source!r}")

    def from_dir(path: str) -> tuple[Any, Any]:
        return (
            AutoModelForCausalLM.from_pretrained(path, local_files_only=True),
            AutoTokenizer.from_pretrained(path, local_files_only=True),
        )

    if gguf_file is None:
        return from_dir(source)
    gguf_path = os.path.join(source, gguf_file)
    if not os.path.isfile(gguf_path):
        raise FileNotFoundError(f"no GGUF file at {gguf_path!r}")
    stat = os.stat(gguf_path)
    key = hashlib.sha1(f"{os.path.abspath(gguf_path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    cache = os.path.join(
        cache_dir or os.path.expanduser("~/.cache/evidex/models"), key.hexdigest()[:16]
    )
    if os.path.isfile(os.path.join(cache, "config.json")):
        return from_dir(cache)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    # The weights are dequantised float tensors now; drop the GGUF marker that makes
    # transformers refuse to save them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = cache + f".tmp{os.getpid()}"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    try:
        os.replace(tmp, cache)
    except OSError:  # another process cached it first
        pass
    # Reload from the cache: a plain float model, trainable (the GGUF-loaded one is not).
    return from_dir(cache)


def retrieval_dataset(queries: Sequence[str], targets: Sequence[str], **columns: Any) -> Any:
    """A `datasets.Dataset` with the columns GRPOTrainer and EmbedRLReward read
    (`evidex.rewards.columns.embedrl_dataset`; further columns as keyword arguments)."""
    from ..rewards.columns import embedrl_dataset

    if len(queries) != len(targets):
        raise ValueError(f"got {len(queries)} queries for {len(targets)} targets")
    return embedrl_dataset(queries, targets, **columns)


def train_grpo(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    reward: Any | Sequence[Any],
    output_dir: str,
    max_steps: int = 20,
    num_generations: int = 4,
    batch_size: int = 4,
    max_completion_length: int = 64,
    learning_rate: float = 1e-5,
    seed: int = 0,
    temperature: float = 1.0,
) -> Any:
    """Run GRPO (TRL) for `max_steps` with one reward function or several (TRL adds them)
    and return the trainer (its ``state.log_history`` holds the mean reward per step)."""
    from trl import GRPOConfig, GRPOTrainer

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    # TRL turns activation checkpointing on; transformers 5 renamed the option and
    # warns on the old name, which older versions still need.
    names = {f.name for f in dataclasses.fields(GRPOConfig)}
    checkpointing = (
        {"activation_checkpointing": True}
        if "activation_checkpointing" in names
        else {"gradient_checkpointing": True}
    )
    config = GRPOConfig(
        **checkpointing,
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        num_generations=num_generations,
        max_completion_length=max_completion_length,
        learning_rate=learning_rate,
        temperature=temperature,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=seed,
        use_cpu=True,
        bf16=False,
    )
    rewards = list(reward) if isinstance(reward, (list, tuple)) else [reward]
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=rewards,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer
