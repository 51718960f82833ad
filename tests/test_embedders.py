"""TransformersEmbedder on a tiny random BERT (fast) and on all-MiniLM-L6-v2 (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from evidex.embedders import TextEmbedder, TransformersEmbedder


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
def test_encode_shapes_norms_and_batch_independence(tiny_model_dir, pooling) -> None:
    emb = TransformersEmbedder(tiny_model_dir, pooling=pooling, batch_size=2)
    assert isinstance(emb, TextEmbedder)
    texts = ["the cat sat on the mat", "a dog", "the cat sat on the mat", "dog"]
    out = emb.encode(texts)
    assert out.shape == (4, 16) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out[0], out[2])
    # Padding never changes an embedding: alone or batched with longer texts.
    fresh = TransformersEmbedder(tiny_model_dir, pooling=pooling, cache_size=0)
    np.testing.assert_allclose(fresh.encode(["a dog"])[0], out[1], rtol=1e-4, atol=1e-5)


def test_cache_serves_repeats(tiny_model_dir) -> None:
    emb = TransformersEmbedder(tiny_model_dir, cache_size=2)
    calls = []
    real = emb._forward
    emb._forward = lambda texts: calls.append(list(texts)) or real(texts)
    emb.encode(["the cat", "a dog"])
    emb.encode(["a dog", "the cat", "the cat"])
    assert calls == [["a dog", "the cat"]]
    emb.encode(["the mat"])  # evicts the least recently used
    assert len(emb._cache) == 2


def test_errors(tiny_model_dir, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no model directory"):
        TransformersEmbedder(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="pooling"):
        TransformersEmbedder(tiny_model_dir, pooling="median")
    emb = TransformersEmbedder(tiny_model_dir)
    with pytest.raises(TypeError, match="not one string"):
        emb.encode("the cat")
    with pytest.raises(TypeError, match="expected strings"):
        emb.encode(["the cat", 3])
    assert emb.encode([]).shape == (0, 16)


def test_minilm_from_offline_package() -> None:
    emb = TransformersEmbedder.minilm()
    out = emb.encode(
        ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]
    )
    assert out.shape == (3, 384)
    sims = out @ out.T
    assert sims[0, 1] > 0.6 > sims[0, 2]
