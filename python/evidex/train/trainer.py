"""`ContrastiveTrainer`: fine-tune an `Embedder` with a contrastive loss.

AdamW with linear warm-up and decay, gradient accumulation, gradient clipping, mixed
precision where the device supports it, checkpoints that resume mid-epoch, evaluation
during training, and multi-process training through torch.distributed (launch with
``torchrun``; the trainer wraps the model in DistributedDataParallel and shards the data
with DistributedSampler, and the losses gather negatives across processes).
"""

from __future__ import annotations

import glob
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from .data import as_examples, collate, load_jsonl
from .embedder import Embedder
from .losses import InfoNCELoss

STATE_NAME = "trainer_state.pt"


@dataclass
class TrainOutput:
    """What `ContrastiveTrainer.train` returns."""

    global_step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    examples_seen: int = 0

    @property
    def examples_per_second(self) -> float:
        return self.examples_seen / self.train_seconds if self.train_seconds > 0 else 0.0


class ContrastiveTrainer:
    """Train `model` on (query, positive, [negatives]) examples.

    Args:
        model: the `Embedder` to train.
        train_data: a list of examples (see `evidex.train.data`), a JSONL path, or a
            torch Dataset whose items are examples.
        loss: an `InfoNCELoss` (or `CachedInfoNCELoss`) over `model`; default
            ``InfoNCELoss(model)`` (scale 20, in-batch negatives).
        evaluator: ``evaluator(model) -> dict`` (e.g. `RetrievalEvaluator`), run every
            `eval_steps` and at the end.
        output_dir: where checkpoints go (``checkpoint-<step>/``); None saves nothing.
        batch_size: examples per step per process (before accumulation).
        epochs: passes over the data.
        max_steps: optimizer steps; wins over `epochs` when given.
        learning_rate: AdamW's learning rate.
        weight_decay: AdamW's weight decay (none on biases and norms).
        warmup_ratio: the share of steps of linear warm-up, then linear decay to zero.
        warmup_steps: warm-up steps; wins over `warmup_ratio` when given.
        gradient_accumulation_steps: batches per optimizer step.
        mixed_precision: ``"auto"`` (bf16 or fp16 on CUDA, none on CPU), ``"bf16"``,
            ``"fp16"`` (CUDA only) or ``"no"``.
        max_grad_norm: clip the gradient norm (None: no clipping).
        logging_steps: logging interval in optimizer steps.
        eval_steps: evaluation interval in optimizer steps.
        save_steps: checkpoint interval in optimizer steps.
        save_total_limit: checkpoints kept (oldest removed).
        seed: shuffling and initialisation seed; the run is reproducible.
        show_progress: a progress bar (first process only).
    """

    def __init__(
        self,
        model: Embedder,
        train_data: Any,
        loss: InfoNCELoss | None = None,
        evaluator: Callable[[Embedder], dict[str, float]] | None = None,
        output_dir: str | None = None,
        batch_size: int = 32,
        epochs: int = 1,
        max_steps: int | None = None,
        learning_rate: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        warmup_steps: int | None = None,
        gradient_accumulation_steps: int = 1,
        mixed_precision: str = "auto",
        max_grad_norm: float | None = 1.0,
        logging_steps: int = 10,
        eval_steps: int | None = None,
        save_steps: int | None = None,
        save_total_limit: int | None = 2,
        seed: int = 0,
        show_progress: bool = True,
    ) -> None:
        for name, value in [
            ("batch_size", batch_size),
            ("epochs", epochs),
            ("gradient_accumulation_steps", gradient_accumulation_steps),
            ("logging_steps", logging_steps),
        ]:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        if mixed_precision not in ("auto", "bf16", "fp16", "no"):
            raise ValueError(f"mixed_precision must be auto, bf16, fp16 or no: {mixed_precision!r}")
        if loss is not None and loss.model is not model:
            raise ValueError("the loss must wrap the model being trained")
        self.model = model
        self.loss = loss if loss is not None else InfoNCELoss(model)
        self.dataset = self._dataset(train_data)
        self.evaluator = evaluator
        self.output_dir = output_dir
        self.batch_size = batch_size
        self.epochs = epochs
        self.max_steps = max_steps
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.warmup_steps = warmup_steps
        self.accumulation = gradient_accumulation_steps
        self.mixed_precision = mixed_precision
        self.max_grad_norm = max_grad_norm
        self.logging_steps = logging_steps
        self.eval_steps = eval_steps
        self.save_steps = save_steps
        self.save_total_limit = save_total_limit
        self.seed = seed
        self.show_progress = show_progress

    @staticmethod
    def _dataset(data: Any) -> Any:
        if isinstance(data, (str, os.PathLike)):
            return load_jsonl(os.fspath(data))
        if isinstance(data, torch.utils.data.Dataset):
            return data  # items validated as they are batched
        if isinstance(data, Iterable):
            examples = as_examples(data)
            if not examples:
                raise ValueError("train_data is empty")
            return examples
        raise TypeError(f"train_data must be examples, a JSONL path or a Dataset, not {data!r}")

    # ---- set-up ---------------------------------------------------------------------
    def _distributed(self) -> tuple[int, int]:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _loader(self, epoch: int, world: int, rank: int) -> torch.utils.data.DataLoader:
        if world > 1:
            sampler: Any = torch.utils.data.DistributedSampler(
                self.dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed
            )
            sampler.set_epoch(epoch)
        else:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            sampler = torch.utils.data.RandomSampler(self.dataset, generator=generator)
        return torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            collate_fn=collate,
            # Its own generator: creating an iterator must not draw from the global RNG,
            # whose state (dropout) a checkpoint restores.
            generator=torch.Generator().manual_seed(self.seed),
            # Equal batches on every process keep the gathered negatives aligned.
            drop_last=world > 1,
        )

    def _optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for p in self.model.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        extra = [p for n, p in self.loss.named_parameters() if not n.startswith("model.")]
        groups = [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay + extra, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.learning_rate)

    def _precision(self, device: torch.device) -> torch.dtype | None:
        mode = self.mixed_precision
        if mode == "auto":
            if device.type != "cuda":
                return None
            mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if mode == "fp16" and device.type != "cuda":
            raise ValueError("fp16 mixed precision needs a CUDA device; use bf16 on the CPU")
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)

    # ---- checkpoints ----------------------------------------------------------------
    def _checkpoints(self) -> list[str]:
        if not self.output_dir:
            return []
        found = glob.glob(os.path.join(self.output_dir, "checkpoint-*"))
        found = [p for p in found if os.path.isfile(os.path.join(p, STATE_NAME))]
        return sorted(found, key=lambda p: int(p.rsplit("-", 1)[1]))

    def _save(self, state: dict[str, Any]) -> None:
        assert self.output_dir
        final = os.path.join(self.output_dir, f"checkpoint-{state['step']}")
        tmp = final + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        self.model.save_pretrained(os.path.join(tmp, "model"))
        torch.save(state, os.path.join(tmp, STATE_NAME))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        if self.save_total_limit:
            for old in self._checkpoints()[: -self.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)

    def _load_weights(self, model_dir: str) -> None:
        from safetensors.torch import load_file

        if hasattr(self.model, "load_weights"):  # a model with its own layout (DualEncoder)
            self.model.load_weights(model_dir)
            return

        files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
        if not files:
            raise FileNotFoundError(f"no safetensors weights in {model_dir}")
        weights: dict[str, torch.Tensor] = {}
        for f in files:
            weights.update(load_file(f))
        result = self.model.backbone.load_state_dict(weights, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"checkpoint does not match the model: {result.unexpected_keys[:5]}")
        if result.missing_keys:  # weights tied to others are not saved twice
            self.model.backbone.tie_weights()

    # ---- training -------------------------------------------------------------------
    def train(self, resume_from: str | None = None) -> TrainOutput:
        """Train; ``resume_from`` is a checkpoint directory or ``"latest"``."""
        rank, world = self._distributed()
        device = self.model.device
        if world > 1:
            self._freeze_unused_parameters()
        torch.manual_seed(self.seed)
        random.seed(self.seed)
        amp_dtype = self._precision(device)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

        batches_per_epoch = len(self._loader(0, world, rank))
        if batches_per_epoch == 0:
            raise ValueError(
                f"{len(self.dataset)} examples make no batch of {self.batch_size} per process"
            )
        steps_per_epoch = math.ceil(batches_per_epoch / self.accumulation)
        total_steps = self.max_steps or self.epochs * steps_per_epoch
        warmup = (
            self.warmup_steps
            if self.warmup_steps is not None
            else int(self.warmup_ratio * total_steps)
        )
        optimizer = self._optimizer()
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: (
                (s + 1) / (warmup + 1)
                if s < warmup
                else max(0.0, (total_steps - s) / max(1, total_steps - warmup))
            ),
        )

        step, epoch, skip = 0, 0, 0
        out = TrainOutput(0)
        if resume_from is not None:
            path = resume_from
            if resume_from == "latest":
                found = self._checkpoints()
                if not found:
                    raise FileNotFoundError(f"no checkpoint to resume in {self.output_dir!r}")
                path = found[-1]
            state = torch.load(os.path.join(path, STATE_NAME), weights_only=False)
            self._load_weights(os.path.join(path, "model"))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            self.loss.load_state_dict(state["loss"], strict=False)
            step, epoch, skip = state["step"], state["epoch"], state["batches_in_epoch"]
            out.history = list(state["history"])
            torch.set_rng_state(state["torch_rng"])

        wrapped: Any = self.model
        if world > 1:
            ids = [device.index] if device.type == "cuda" else None
            wrapped = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.loss.model = wrapped
        self.model.train()
        bar = None
        if self.show_progress and rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, initial=step, desc="train", unit="step")
        start = time.perf_counter()
        running, running_n = 0.0, 0
        try:
            while step < total_steps:
                loader = self._loader(epoch, world, rank)
                pending = 0
                for b, batch in enumerate(loader):
                    if b < skip:
                        continue
                    last_of_epoch = b == batches_per_epoch - 1
                    sync = pending + 1 == self.accumulation or last_of_epoch
                    context = wrapped.no_sync() if world > 1 and not sync else nullcontext()
                    autocast = (
                        torch.autocast(device.type, dtype=amp_dtype)
                        if amp_dtype is not None
                        else nullcontext()
                    )
                    with context:
                        with autocast:
                            loss = self.loss(batch)
                        if not torch.isfinite(loss):
                            raise FloatingPointError(f"the loss is {loss.item()} at step {step}")
                        scaled = loss / self.accumulation
                        (scaler.scale(scaled) if scaler else scaled).backward()
                    running += loss.item()
                    running_n += 1
                    out.examples_seen += len(batch)
                    pending += 1
                    if not sync:
                        continue
                    if scaler:
                        scaler.unscale_(optimizer)
                    if self.max_grad_norm is not None:
                        params = [p for g in optimizer.param_groups for p in g["params"]]
                        torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
                    if scaler:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    pending = 0
                    step += 1
                    record: dict[str, Any] = {}
                    if step % self.logging_steps == 0 or step == total_steps:
                        record.update(loss=running / running_n, lr=scheduler.get_last_lr()[0])
                        running, running_n = 0.0, 0
                    if self.evaluator and (
                        (self.eval_steps and step % self.eval_steps == 0) or step == total_steps
                    ):
                        record.update(self._evaluate(rank, world))
                    if record:
                        out.history.append({"step": step, "epoch": epoch, **record})
                    if bar is not None:
                        bar.update(1)
                        if "loss" in record:
                            bar.set_postfix(loss=f"{record['loss']:.4f}")
                    if self.output_dir and (
                        (self.save_steps and step % self.save_steps == 0) or step == total_steps
                    ):
                        done = 0 if last_of_epoch else b + 1
                        self._save_on_rank0(
                            rank,
                            world,
                            {
                                "step": step,
                                "epoch": epoch + 1 if last_of_epoch else epoch,
                                "batches_in_epoch": done,
                                "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(),
                                "scaler": scaler.state_dict() if scaler else None,
                                "loss": {
                                    k: v
                                    for k, v in self.loss.state_dict().items()
                                    if not k.startswith("model.")
                                },
                                "history": out.history,
                                "torch_rng": torch.get_rng_state(),
                            },
                        )
                    if step >= total_steps:
                        break
                skip = 0
                epoch += 1
        finally:
            self.loss.model = self.model
            if bar is not None:
                bar.close()
        out.global_step = step
        out.train_seconds = time.perf_counter() - start
        return out

    def _freeze_unused_parameters(self) -> None:
        """Stop training parameters the embedding never uses (a BERT pooler head):
        DDP waits for a gradient from every trainable parameter."""
        was_training = self.model.training
        self.model.eval()
        self.model.zero_grad(set_to_none=True)
        probe = self.model.probe_items() if hasattr(self.model, "probe_items") else ["probe"]
        self.model(probe).sum().backward()
        for p in self.model.parameters():
            if p.requires_grad and p.grad is None:
                p.requires_grad_(False)
        self.model.zero_grad(set_to_none=True)
        self.model.train(was_training)

    def _evaluate(self, rank: int, world: int) -> dict[str, float]:
        result: dict[str, float] = {}
        if rank == 0:
            assert self.evaluator is not None
            result = dict(self.evaluator(self.model))
            self.model.train()
        if world > 1:
            box = [result]
            torch.distributed.broadcast_object_list(box, src=0)
            result = box[0]
        return result

    def _save_on_rank0(self, rank: int, world: int, state: dict[str, Any]) -> None:
        if rank == 0:
            self._save(state)
        if world > 1:
            torch.distributed.barrier()
