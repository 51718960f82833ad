"""CLaRa: joint training of retrieval and generation over compressed documents.

A `DocumentCompressor` turns each document into a few memory vectors in the generator's
embedding space; a `QueryEncoder` maps the question into the same space; the selector
`evidex.ops.st_select` picks the top-k documents by cosine score with a straight-through
gradient; the generator (a causal LM) reads the selected memories as input embeddings,
then the question, and is trained on the next-token loss of the answer. The hard top-k
forward means the generator only ever sees the chosen documents, while the backward pass
carries the generation loss through the selection weights into the query encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..ops import st_select
from .embedder import pool


def _token_states(module: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states and attention mask of `texts` under `module`'s encoder."""
    batch = module.tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=module.max_length,
        return_tensors="pt",
    ).to(module.project.weight.device)
    # A frozen encoder runs without a graph: only the layers above it train.
    with torch.set_grad_enabled(torch.is_grad_enabled() and not module.freeze_encoder):
        states = module.encoder(**batch).last_hidden_state
    return states, batch["attention_mask"]


class _EncoderHead(torch.nn.Module):
    """A transformers encoder with trainable layers above it; a frozen encoder is a
    fixed feature extractor and stays in eval mode (no dropout noise) under ``train()``."""

    def __init__(self, encoder: Any, tokenizer: Any, max_length: int, freeze_encoder: bool) -> None:
        super().__init__()
        self.encoder, self.tokenizer = encoder, tokenizer
        self.max_length, self.freeze_encoder = max_length, freeze_encoder
        encoder.requires_grad_(not freeze_encoder)
        if freeze_encoder:
            encoder.eval()

    def train(self, mode: bool = True) -> _EncoderHead:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self


class DocumentCompressor(_EncoderHead):
    """Encoder + attention pooling into `n_memory` vectors + projection.

    ``freeze_encoder=True`` trains only the memory slots and the projection (the encoder
    runs without a graph: much cheaper on a CPU).

    Each memory slot is a learned query that attends over the document's token states;
    the slots start at zero, i.e. as mean pooling, and specialise during training.
    The retrieval key of a document is the normalised mean of its memory vectors.
    """

    def __init__(
        self,
        encoder: Any,
        tokenizer: Any,
        out_dim: int,
        n_memory: int = 4,
        max_length: int = 128,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__(encoder, tokenizer, max_length, freeze_encoder)
        hidden = int(encoder.config.hidden_size)
        self.memory_queries = torch.nn.Parameter(torch.zeros(n_memory, hidden))
        self.project = torch.nn.Linear(hidden, out_dim)
        self.n_memory = n_memory

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Memories ``[len(texts), n_memory, out_dim]``."""
        states, mask = _token_states(self, texts)  # [n, L, h], [n, L]
        logits = torch.einsum("mh,nlh->nml", self.memory_queries, states) / states.shape[-1] ** 0.5
        logits = logits.masked_fill(~mask.bool()[:, None, :], -torch.inf)
        pooled = torch.einsum("nml,nlh->nmh", logits.softmax(-1), states)
        return self.project(pooled)

    @staticmethod
    def keys(memories: torch.Tensor) -> torch.Tensor:
        """Retrieval keys ``[..., out_dim]`` of memories ``[..., n_memory, out_dim]``."""
        return F.normalize(memories.mean(-2), dim=-1)


class QueryEncoder(_EncoderHead):
    """Encoder + mean pooling + projection into the generator's embedding space
    (``freeze_encoder=True``: only the projection trains)."""

    def __init__(
        self,
        encoder: Any,
        tokenizer: Any,
        out_dim: int,
        max_length: int = 64,
        freeze_encoder: bool = False,
    ) -> None:
        super().__init__(encoder, tokenizer, max_length, freeze_encoder)
        self.project = torch.nn.Linear(int(encoder.config.hidden_size), out_dim)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        states, mask = _token_states(self, texts)
        return self.project(pool(states, mask, "mean"))


@dataclass
class ClaraOutput:
    loss: torch.Tensor  # next-token loss of the answers
    indices: torch.Tensor  # [B, k] selected documents, best first
    scores: torch.Tensor  # [B, N] cosine scores (padding at -inf)


class CLaRa(torch.nn.Module):
    """Compressor + query encoder + straight-through selector + generator.

    Args:
        compressor, query_encoder: as above, projecting to the generator's hidden size.
        generator: a transformers causal LM; frozen unless `train_generator`.
        tokenizer: the generator's tokenizer.
        k: documents selected per question.
        tau: selector temperature (CLaRa uses 0.02 on cosine scores; expect large
            gradients and clip them).
        mode: ``"successive"`` (CLaRa's code) or ``"softmax"`` backward.
        prompt: how the question follows the memories; ``{question}`` is filled in.
    """

    def __init__(
        self,
        compressor: DocumentCompressor,
        query_encoder: QueryEncoder,
        generator: Any,
        tokenizer: Any,
        k: int = 1,
        tau: float = 0.1,
        mode: str = "successive",
        train_generator: bool = False,
        prompt: str = "\nQuestion: {question}\nAnswer:",
    ) -> None:
        super().__init__()
        self.compressor, self.query_encoder = compressor, query_encoder
        self.generator, self.tokenizer = generator, tokenizer
        self.k, self.tau, self.mode, self.prompt = k, tau, mode, prompt
        generator.requires_grad_(train_generator)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token

    @torch.no_grad()
    def calibrate_scale(self, documents: Sequence[str]) -> float:
        """Rescale the compressor's projection so memories have the RMS of the
        generator's token embeddings (measured on `documents`); returns the factor.

        A large LM (Gemma scales its embeddings by sqrt(hidden)) otherwise reads memories
        at a hundredth of a token's norm, i.e. as near-silence.
        """
        embed = self.generator.get_input_embeddings()
        ids = self.tokenizer(list(documents), add_special_tokens=False)["input_ids"]
        flat = torch.tensor([t for row in ids for t in row], device=embed.weight.device)
        target = embed(flat).float().pow(2).mean().sqrt()
        current = self.compressor(documents).float().pow(2).mean().sqrt()
        factor = float(target / current.clamp(min=1e-12))
        self.compressor.project.weight.mul_(factor)
        self.compressor.project.bias.mul_(factor)
        return factor

    def select(
        self, questions: Sequence[str], documents: Sequence[Sequence[str]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(selected memories [B, k, m, d], weights [B, k, N], indices, scores)``."""
        if len(questions) != len(documents):
            raise ValueError(f"{len(questions)} questions for {len(documents)} document lists")
        n = max(len(d) for d in documents)
        if min(len(d) for d in documents) < self.k:
            raise ValueError(f"every question needs at least k={self.k} documents")
        flat = [t for docs in documents for t in docs]
        memories = self.compressor(flat)
        m, dim = memories.shape[1], memories.shape[2]
        padded = memories.new_zeros(len(documents), n, m, dim)
        mask = torch.zeros(len(documents), n, dtype=torch.bool, device=memories.device)
        start = 0
        for b, docs in enumerate(documents):
            padded[b, : len(docs)] = memories[start : start + len(docs)]
            mask[b, : len(docs)] = True
            start += len(docs)
        keys = DocumentCompressor.keys(padded)
        keys = torch.where(mask[..., None], keys, torch.full_like(keys, 1.0 / dim**0.5))
        query = self.query_encoder(questions)
        _, weights, indices = st_select(query, keys, self.k, self.tau, mask, self.mode)
        selected = torch.einsum("bkn,bnmd->bkmd", weights, padded)
        scores = F.cosine_similarity(query[:, None, :], keys, dim=-1).masked_fill(~mask, -torch.inf)
        return selected, weights, indices, scores

    def forward(
        self,
        questions: Sequence[str],
        documents: Sequence[Sequence[str]],
        answers: Sequence[str],
    ) -> ClaraOutput:
        """Next-token loss of `answers` given the selected compressed documents."""
        if len(answers) != len(questions):
            raise ValueError(f"{len(answers)} answers for {len(questions)} questions")
        selected, _, indices, scores = self.select(questions, documents)
        b, k, m, dim = selected.shape
        memory = selected.reshape(b, k * m, dim)
        tok = self.tokenizer
        eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
        rows, labels = [], []
        for q, a in zip(questions, answers):
            prompt_ids = tok(self.prompt.format(question=q), add_special_tokens=False)["input_ids"]
            answer_ids = tok(" " + a.strip(), add_special_tokens=False)["input_ids"] + eos
            rows.append(prompt_ids + answer_ids)
            labels.append([-100] * len(prompt_ids) + answer_ids)
        width = max(len(r) for r in rows)
        device = memory.device
        ids = torch.full((b, width), tok.pad_token_id, dtype=torch.long, device=device)
        lab = torch.full((b, k * m + width), -100, dtype=torch.long, device=device)
        attn = torch.zeros((b, k * m + width), dtype=torch.long, device=device)
        attn[:, : k * m] = 1
        for i, (r, lb) in enumerate(zip(rows, labels)):
            ids[i, : len(r)] = torch.tensor(r, device=device)
            lab[i, k * m : k * m + len(lb)] = torch.tensor(lb, device=device)
            attn[i, k * m : k * m + len(r)] = 1
        embed = self.generator.get_input_embeddings()
        inputs = torch.cat([memory.to(embed.weight.dtype), embed(ids)], dim=1)
        return ClaraOutput(self._answer_loss(inputs, attn, lab), indices, scores)

    def _answer_loss(
        self, inputs: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Next-token loss on the answer tokens, with the output layer applied only where
        a label is (a 262k-word vocabulary over every position would dominate the step)."""
        hidden = self.generator.get_decoder()(
            inputs_embeds=inputs, attention_mask=attention_mask
        ).last_hidden_state
        target = labels[:, 1:]
        where = target != -100
        logits = self.generator.get_output_embeddings()(hidden[:, :-1][where])
        cap = getattr(self.generator.config, "final_logit_softcapping", None)
        if cap:
            logits = cap * torch.tanh(logits / cap)
        return F.cross_entropy(logits.float(), target[where])

    @torch.no_grad()
    def recall_at_1(
        self, questions: Sequence[str], documents: Sequence[Sequence[str]], gold: Sequence[int]
    ) -> float:
        """Fraction of questions whose top-scored document is the gold one."""
        _, _, indices, _ = self.select(questions, documents)
        return float((indices[:, 0].cpu() == torch.as_tensor(list(gold))).float().mean())
