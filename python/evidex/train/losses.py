"""Contrastive losses as objects, in the style of sentence-transformers.

`InfoNCELoss` scores every query against every document of the batch (its positives,
the hard negatives, and the other queries' documents as in-batch negatives). For query
i and each of its positives p::

    loss_ip = -s_ip + log(exp(s_ip) + sum_{n in negatives(i)} exp(s_in)),  s = scale * cos

averaged over the positives of a query, then over queries. A document whose *text*
equals one of query i's positives is not a negative of i (a false negative: decided on
the input, since dropout makes equal texts embed differently). ``symmetric=True`` adds
the document-to-query direction. Under ``torch.distributed`` the embeddings of all
processes are gathered (with gradients), so every query sees the negatives of the global
batch; each process's loss covers its own queries and DDP's gradient averaging makes the
result the loss of the global batch.

`CachedInfoNCELoss` computes the same loss with GradCache: embeddings are computed in
mini-batches without a graph, the loss's gradient with respect to them is cached, and
the mini-batches are re-run with gradients (same dropout masks) during backward. Memory
then depends on the mini-batch, not the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from .data import ContrastiveBatch


def _scale_from(temperature: float | None, scale: float | None) -> float:
    if temperature is not None and scale is not None:
        raise ValueError("give temperature or scale (= 1 / temperature), not both")
    if scale is None:
        scale = 1.0 / temperature if temperature is not None else 20.0
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"the scale (1 / temperature) must be positive and finite, got {scale}")
    return float(scale)


def _text_ids(texts: Sequence[Any]) -> list[int]:
    """Equal entries share an id: texts by value, media items by content."""
    from ..media.items import item_key

    ids: dict[Any, int] = {}
    keys = [t if isinstance(t, str) else (item_key(t) or ("object", id(t))) for t in texts]
    return [ids.setdefault(k, len(ids)) for k in keys]


class _Gathered:
    """A batch's embeddings and structure, gathered over processes when distributed."""

    def __init__(self, q: torch.Tensor, d: torch.Tensor, batch: ContrastiveBatch, gather: bool):
        dist = torch.distributed
        world = (
            dist.get_world_size() if gather and dist.is_available() and dist.is_initialized() else 1
        )
        if world == 1:
            self.q, self.d = q, d
            self.queries, self.documents = batch.queries, batch.documents
            self.positives = batch.positives
            self.local = range(len(batch.queries))
            return
        rank = dist.get_rank()
        meta: list[Any] = [None] * world
        dist.all_gather_object(meta, (batch.queries, batch.documents, batch.positives))
        self.q = _all_gather_rows(q, [len(m[0]) for m in meta])
        self.d = _all_gather_rows(d, [len(m[1]) for m in meta])
        self.queries, self.documents, self.positives = [], [], []
        q_start = 0
        for r, (queries, documents, positives) in enumerate(meta):
            offset = len(self.documents)
            if r == rank:
                q_start = len(self.queries)
            self.queries.extend(queries)
            self.documents.extend(documents)
            self.positives.extend([[offset + j for j in row] for row in positives])
        self.local = range(q_start, q_start + len(batch.queries))


def _all_gather_rows(x: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Concatenate each process's rows (counts may differ), keeping gradients."""
    import torch.distributed.nn.functional as dist_fn

    most = max(counts)
    padded = F.pad(x, (0, 0, 0, most - x.shape[0]))
    parts = dist_fn.all_gather(padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts)])


class InfoNCELoss(torch.nn.Module):
    """InfoNCE with in-batch and hard negatives, several positives, false-negative masking.

    Args:
        model: the `Embedder` (anything mapping a list of texts to ``[n, d]``).
        temperature: softmax temperature (the papers use 0.02-0.05), or
        scale: its inverse (sentence-transformers' ``scale=20``); default scale 20.
        learnable_temperature: learn the scale (as a log, clamped to [1, 100] like CLIP).
        symmetric: add the document-to-query loss over each positive pair.
        mask_false_negatives: documents whose text equals a positive of the query are
            not negatives (and, when symmetric, queries with the same text likewise).
        matryoshka_dims: also train truncated embeddings (each renormalised); the loss
            is the weighted sum over these dimensions (full size first, e.g.
            ``[384, 256, 128, 64]``).
        matryoshka_weights: one weight per dimension (default 1 each).
        gather_across_processes: use the negatives of every process under
            torch.distributed.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        temperature: float | None = None,
        scale: float | None = None,
        learnable_temperature: bool = False,
        symmetric: bool = False,
        mask_false_negatives: bool = True,
        matryoshka_dims: Sequence[int] | None = None,
        matryoshka_weights: Sequence[float] | None = None,
        gather_across_processes: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        init = _scale_from(temperature, scale)
        if learnable_temperature:
            self.log_scale = torch.nn.Parameter(torch.tensor(math.log(init)))
        else:
            self.register_buffer("log_scale", torch.tensor(math.log(init)), persistent=False)
        self.symmetric = symmetric
        self.mask_false_negatives = mask_false_negatives
        self.gather_across_processes = gather_across_processes
        if matryoshka_dims is not None:
            dims = [int(x) for x in matryoshka_dims]
            if not dims or any(x < 1 for x in dims):
                raise ValueError(f"matryoshka_dims must be positive integers, got {dims}")
            weights = [1.0] * len(dims) if matryoshka_weights is None else list(matryoshka_weights)
            if len(weights) != len(dims):
                raise ValueError(f"{len(weights)} matryoshka_weights for {len(dims)} dims")
            self.matryoshka = list(zip(dims, weights))
        else:
            if matryoshka_weights is not None:
                raise ValueError("matryoshka_weights needs matryoshka_dims")
            self.matryoshka = None

    @property
    def scale(self) -> torch.Tensor:
        """The current scale (1 / temperature)."""
        return self.log_scale.exp().clamp(1.0, 100.0)

    def embed(self, batch: ContrastiveBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Query and document embeddings (separate passes: queries are short)."""
        return self.model(batch.queries), self.model(batch.documents)

    def forward(self, batch: ContrastiveBatch) -> torch.Tensor:
        q, d = self.embed(batch)
        return self.loss_from_embeddings(q, d, batch)

    def loss_from_embeddings(
        self, q: torch.Tensor, d: torch.Tensor, batch: ContrastiveBatch
    ) -> torch.Tensor:
        """The loss of embeddings ``q [B, D]`` and ``d [N, D]`` with `batch`'s structure."""
        if q.shape[0] != len(batch.queries) or d.shape[0] != len(batch.documents):
            raise ValueError(
                f"embeddings {tuple(q.shape)} / {tuple(d.shape)} do not match a batch of "
                f"{len(batch.queries)} queries and {len(batch.documents)} documents"
            )
        g = _Gathered(q, d, batch, self.gather_across_processes)
        masks = self._masks(g)
        if self.matryoshka is None:
            return self._loss(g.q, g.d, masks)
        total = q.new_zeros(())
        for dim, weight in self.matryoshka:
            if dim > q.shape[1]:
                raise ValueError(f"matryoshka dim {dim} exceeds the embedding size {q.shape[1]}")
            total = total + weight * self._loss(
                F.normalize(g.q[:, :dim], dim=-1), F.normalize(g.d[:, :dim], dim=-1), masks
            )
        return total

    def _masks(self, g: _Gathered) -> dict[str, torch.Tensor]:
        device = g.q.device
        n_q, n_d = len(g.queries), len(g.documents)
        local = torch.tensor(list(g.local), dtype=torch.long, device=device)
        pair_q = [i for i in g.local for _ in g.positives[i]]
        pair_d = [p for i in g.local for p in g.positives[i]]
        # Each query counts once: its pairs share its weight.
        pair_w = [1.0 / len(g.positives[i]) for i in g.local for _ in g.positives[i]]
        doc_text = _text_ids(g.documents) if self.mask_false_negatives else list(range(n_d))
        query_text = _text_ids(g.queries) if self.mask_false_negatives else list(range(n_q))
        # neg[i, j]: document j is a negative of query i (its text is no positive of i).
        is_positive_text = torch.zeros(n_q, max(doc_text) + 1, dtype=torch.bool)
        for i, row in enumerate(g.positives):
            is_positive_text[i, [doc_text[p] for p in row]] = True
        neg = ~is_positive_text[:, torch.tensor(doc_text)]
        pair_q_t = torch.tensor(pair_q, dtype=torch.long, device=device)
        out = {
            "local": local,
            "pair_q": pair_q_t,
            "pair_row": pair_q_t - g.local.start,
            "pair_d": torch.tensor(pair_d, dtype=torch.long, device=device),
            "pair_w": torch.tensor(pair_w, dtype=torch.float32, device=device) / len(g.local),
            "neg": neg.to(device),
        }
        if self.symmetric:
            # qneg[k, j]: query j is a negative of pair k's document.
            qneg = neg[:, out["pair_d"].cpu()].T.clone()
            same_query = (
                torch.tensor(query_text)[None, :]
                == torch.tensor([query_text[i] for i in pair_q])[:, None]
            )
            out["qneg"] = (qneg & ~same_query).to(device)
        return out

    def _loss(self, q: torch.Tensor, d: torch.Tensor, m: dict[str, torch.Tensor]) -> torch.Tensor:
        scale = self.scale
        scores = scale * (q[m["local"]] @ d.T)  # [B_local, N]
        # A finite fill, not -inf: a query with no negatives at all (every document is
        # one of its positives) must give loss 0, not a NaN gradient.
        lowest = torch.finfo(scores.dtype).min
        neg_lse = scores.masked_fill(~m["neg"][m["local"]], lowest).logsumexp(-1)
        rows = m["pair_row"]
        pos = scores[rows, m["pair_d"]]
        loss = ((torch.logaddexp(pos, neg_lse[rows]) - pos) * m["pair_w"]).sum()
        if not self.symmetric:
            return loss
        # Document to query: each positive document against every query.
        rev = scale * (d[m["pair_d"]] @ q.T)  # [pairs, B_global]
        rev_lse = rev.masked_fill(~m["qneg"], lowest).logsumexp(-1)
        rev_pos = rev[torch.arange(rev.shape[0], device=q.device), m["pair_q"]]
        rev_loss = ((torch.logaddexp(rev_pos, rev_lse) - rev_pos) * m["pair_w"]).sum()
        return 0.5 * (loss + rev_loss)


class _ReplayBackward(torch.autograd.Function):
    """Carries the cached loss; its backward re-runs the mini-batches with gradients."""

    @staticmethod
    def forward(ctx, loss, replay, extra_grads, *extra):  # type: ignore[override]
        ctx.replay = replay
        ctx.extra_grads = extra_grads
        return loss.clone()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        ctx.replay(grad_out)
        return (None, None, None, *[g * grad_out for g in ctx.extra_grads])


class CachedInfoNCELoss(InfoNCELoss):
    """`InfoNCELoss` with GradCache: the batch can exceed what fits in memory at once.

    Args:
        model: the embedder, as for `InfoNCELoss`.
        mini_batch_size: texts per forward pass; memory scales with it, the loss and its
            gradients do not (they equal `InfoNCELoss`'s on the same batch, dropout
            included: each mini-batch's RNG state is replayed).
        **kwargs: the other arguments of `InfoNCELoss`.
    """

    def __init__(self, model: torch.nn.Module, mini_batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be positive, got {mini_batch_size}")
        self.mini_batch_size = int(mini_batch_size)

    def _chunks(self, texts: list[str]) -> list[list[str]]:
        m = self.mini_batch_size
        return [texts[i : i + m] for i in range(0, len(texts), m)]

    def forward(self, batch: ContrastiveBatch) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return super().forward(batch)
        query_chunks = self._chunks(batch.queries)
        chunks = query_chunks + self._chunks(batch.documents)
        n_query_chunks = len(query_chunks)
        states, reps = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(_rng_state())
                reps.append(self.model(chunk))
        q = torch.cat(reps[:n_query_chunks]).requires_grad_()
        d = torch.cat(reps[n_query_chunks:]).requires_grad_()
        extra = [p for p in self.parameters(recurse=False) if p.requires_grad]
        loss = self.loss_from_embeddings(q, d, batch)
        grads = torch.autograd.grad(loss, [q, d, *extra])
        rep_grads = list(torch.cat(grads[:2]).split([r.shape[0] for r in reps]))

        def replay(grad_out: torch.Tensor) -> None:
            model = self.model
            for n, (chunk, state, g) in enumerate(zip(chunks, states, rep_grads)):
                last = n == len(chunks) - 1
                sync = nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
                with sync, _restored_rng(state), torch.enable_grad():
                    (model(chunk) * (g * grad_out)).sum().backward()

        anchor = extra if extra else [torch.zeros((), requires_grad=True)]
        extra_grads = list(grads[2:]) if extra else [torch.zeros(())]
        return _ReplayBackward.apply(loss.detach(), replay, extra_grads, *anchor)


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


class _restored_rng:
    """Run a block under a saved RNG state, restoring the current one afterwards."""

    def __init__(self, state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
        self.state = state
        self._fork: Any = None

    def __enter__(self) -> None:
        devices = list(range(len(self.state[1]))) if self.state[1] is not None else []
        self._fork = torch.random.fork_rng(devices=devices)
        self._fork.__enter__()
        torch.set_rng_state(self.state[0])
        if self.state[1] is not None:
            torch.cuda.set_rng_state_all(self.state[1])

    def __exit__(self, *exc: Any) -> None:
        self._fork.__exit__(*exc)
