"""InfoNCE losses: against hand-computed values, masking, Matryoshka, GradCache equality."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from evidex.train import (
    CachedInfoNCELoss,
    ContrastiveExample,
    Embedder,
    InfoNCELoss,
    collate,
)


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _batch(n: int) -> tuple:
    return collate([ContrastiveExample(f"q{i}", [f"d{i}"]) for i in range(n)])


def test_single_positive_is_cross_entropy_and_symmetric_averages_both_ways() -> None:
    q, d = _unit(6, 8), _unit(6, 8, seed=1)
    batch, labels = _batch(6), torch.arange(6)
    plain = InfoNCELoss(None, scale=20.0).loss_from_embeddings(q, d, batch)
    torch.testing.assert_close(plain, F.cross_entropy(20 * q @ d.T, labels))
    sym = InfoNCELoss(None, temperature=0.05, symmetric=True).loss_from_embeddings(q, d, batch)
    expected = 0.5 * (F.cross_entropy(20 * q @ d.T, labels) + F.cross_entropy(20 * d @ q.T, labels))
    torch.testing.assert_close(sym, expected.to(sym.dtype))


def test_hard_negatives_and_several_positives() -> None:
    examples = [
        ContrastiveExample("q0", ["a", "b"], ["n0"]),
        ContrastiveExample("q1", ["c"], ["n1", "n2"]),
    ]
    batch = collate(examples)
    assert batch.documents == ["a", "b", "n0", "c", "n1", "n2"]
    assert batch.positives == [[0, 1], [3]]
    q, d = _unit(2, 5), _unit(6, 5, seed=3)
    s = 10 * q @ d.T
    # q0: each positive against every non-positive document (n0, c, n1, n2).
    neg0 = s[0, [2, 3, 4, 5]]
    l0 = sum(-s[0, p] + torch.logsumexp(torch.cat([s[0, p : p + 1], neg0]), 0) for p in (0, 1)) / 2
    neg1 = s[1, [0, 1, 2, 4, 5]]
    l1 = -s[1, 3] + torch.logsumexp(torch.cat([s[1, 3:4], neg1]), 0)
    loss = InfoNCELoss(None, scale=10).loss_from_embeddings(q, d, batch)
    torch.testing.assert_close(loss, (l0 + l1) / 2)


def test_false_negatives_are_masked_by_text() -> None:
    # Queries 0 and 2 share a positive text: neither copy is a negative of either query.
    batch = collate([ContrastiveExample(f"q{i}", [t]) for i, t in enumerate(["x", "y", "x"])])
    q, d = _unit(3, 4), _unit(3, 4, seed=5)
    s = 20 * q @ d.T
    masked = InfoNCELoss(None).loss_from_embeddings(q, d, batch)
    terms = []
    for i, negs in [(0, [1]), (1, [0, 2]), (2, [1])]:
        row = torch.cat([s[i, i : i + 1], s[i, negs]])
        terms.append(-s[i, i] + torch.logsumexp(row, 0))
    torch.testing.assert_close(masked, sum(terms) / 3)
    unmasked = InfoNCELoss(None, mask_false_negatives=False).loss_from_embeddings(q, d, batch)
    torch.testing.assert_close(unmasked, F.cross_entropy(s, torch.arange(3)))
    assert not torch.allclose(masked, unmasked)


def test_temperature_arguments_and_learnable_scale() -> None:
    with pytest.raises(ValueError, match="not both"):
        InfoNCELoss(None, temperature=0.05, scale=20)
    with pytest.raises(ValueError, match="positive"):
        InfoNCELoss(None, temperature=-1.0)
    assert float(InfoNCELoss(None, temperature=0.02).scale) == pytest.approx(50.0)
    loss = InfoNCELoss(None, scale=20, learnable_temperature=True)
    assert [n for n, _ in loss.named_parameters()] == ["log_scale"]
    loss.loss_from_embeddings(_unit(4, 8), _unit(4, 8, seed=1), _batch(4)).backward()
    assert loss.log_scale.grad is not None and loss.log_scale.grad != 0


def test_matryoshka_sums_truncated_renormalised_losses() -> None:
    q, d, batch = _unit(5, 16), _unit(5, 16, seed=2), _batch(5)
    loss = InfoNCELoss(None, matryoshka_dims=[16, 8, 4], matryoshka_weights=[1, 0.5, 0.25])
    expected = sum(
        w
        * InfoNCELoss(None).loss_from_embeddings(
            F.normalize(q[:, :k], dim=-1), F.normalize(d[:, :k], dim=-1), batch
        )
        for k, w in [(16, 1), (8, 0.5), (4, 0.25)]
    )
    torch.testing.assert_close(loss.loss_from_embeddings(q, d, batch), expected)
    with pytest.raises(ValueError, match="exceeds"):
        InfoNCELoss(None, matryoshka_dims=[32]).loss_from_embeddings(q, d, batch)
    with pytest.raises(ValueError, match="matryoshka_weights"):
        InfoNCELoss(None, matryoshka_dims=[8], matryoshka_weights=[1, 2])


def _grads(model: torch.nn.Module, loss_obj: InfoNCELoss, batch) -> list[torch.Tensor]:
    model.zero_grad()
    torch.manual_seed(123)
    loss = loss_obj(batch)
    (loss * 0.5).backward()  # a scaled backward, as gradient accumulation does
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    extra = [p.grad.clone() for n, p in loss_obj.named_parameters() if not n.startswith("model.")]
    return [loss.detach(), *grads, *extra]


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("dropout", [False, True])
def test_cached_loss_gives_the_plain_gradients(tiny_model_dir, symmetric, dropout) -> None:
    model = Embedder.from_pretrained(tiny_model_dir).train(dropout)
    words = ["the cat", "a dog", "the mat", "cat sat", "dog sat on a mat", "the the", "a", "sat"]
    examples = [
        ContrastiveExample(w, [words[(i + 1) % 8]], [words[(i + 3) % 8]])
        for i, w in enumerate(words)
    ]
    batch = collate(examples)
    kwargs = dict(scale=20.0, symmetric=symmetric, learnable_temperature=True)
    plain = _grads(model, InfoNCELoss(model, **kwargs), batch)
    # Without dropout any split gives the plain gradients. With dropout the masks depend
    # on how texts are split into forward passes; one pass per side (as the plain loss
    # does) must replay the very masks of the first pass during backward.
    mini = 16 if dropout else 3
    cached = _grads(model, CachedInfoNCELoss(model, mini_batch_size=mini, **kwargs), batch)
    assert len(plain) == len(cached) > 10
    for a, b in zip(plain, cached):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    if dropout:  # the masks are really on: another seed gives other gradients
        model.zero_grad()
        InfoNCELoss(model, **kwargs)(batch).backward()
        assert not torch.allclose(next(model.parameters()).grad, plain[1])
    with pytest.raises(ValueError, match="mini_batch_size"):
        CachedInfoNCELoss(model, mini_batch_size=0)


def test_cached_loss_without_grad_is_the_plain_loss(tiny_model_dir) -> None:
    model = Embedder.from_pretrained(tiny_model_dir).eval()
    batch = collate([ContrastiveExample(w, [w + " mat"]) for w in ["the cat", "a dog", "sat"]])
    with torch.no_grad():
        a = InfoNCELoss(model)(batch)
        b = CachedInfoNCELoss(model, mini_batch_size=2)(batch)
    torch.testing.assert_close(a, b)


def test_embedding_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="do not match"):
        InfoNCELoss(None).loss_from_embeddings(_unit(3, 4), _unit(2, 4), _batch(3))


def test_no_negatives_gives_zero_loss_and_finite_gradients() -> None:
    # Every positive has the same text: nothing in the batch is a negative of anyone.
    batch = collate([ContrastiveExample(f"q{i}", ["same"]) for i in range(3)])
    q = _unit(3, 4).requires_grad_()
    d = _unit(3, 4, seed=1).requires_grad_()
    loss = InfoNCELoss(None, symmetric=True).loss_from_embeddings(q, d, batch)
    loss.backward()
    assert abs(loss.item()) < 1e-6
    assert torch.isfinite(q.grad).all() and torch.isfinite(d.grad).all()
