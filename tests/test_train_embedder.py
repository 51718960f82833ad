"""evidex.train.Embedder: pooling, encode, save/load, MiniLM against sentence-transformers."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from evidex.embedders import minilm_path
from evidex.train import Embedder
from evidex.train.embedder import pool


def test_pool_modes_ignore_padding_on_either_side() -> None:
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert torch.equal(pool(hidden, right, "cls"), hidden[[0, 1], [0, 0]])
    assert torch.equal(pool(hidden, left, "cls"), hidden[[0, 1], [1, 2]])
    assert torch.equal(pool(hidden, right, "last"), hidden[[0, 1], [2, 1]])
    assert torch.equal(pool(hidden, left, "last"), hidden[[0, 1], [3, 3]])
    torch.testing.assert_close(pool(hidden, right, "mean")[1], hidden[1, :2].mean(0))
    ids = torch.tensor([[5, 9, 7, 0], [9, 9, 0, 0]])
    assert torch.equal(pool(hidden, right, "emb_token", ids, 9), hidden[[0, 1], [1, 1]])
    with pytest.raises(ValueError, match="no <emb> token"):
        pool(hidden, right, "emb_token", ids, 7 + 100)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(hidden, right, "median")
    # sentence-transformers' modes: max, sum / sqrt(count), position-weighted mean.
    assert torch.equal(pool(hidden, right, "max"), hidden[[0, 1], [2, 1]])
    assert torch.equal(pool(hidden, left, "max"), hidden[[0, 1], [3, 3]])
    torch.testing.assert_close(
        pool(hidden, right, "mean_sqrt_len")[1], hidden[1, :2].sum(0) / 2**0.5
    )
    w = torch.tensor([1.0, 2.0]).unsqueeze(1)
    want = (hidden[1, :2] * w).sum(0) / 3
    torch.testing.assert_close(pool(hidden, right, "weighted_mean")[1], want)
    torch.testing.assert_close(
        pool(hidden, left, "weighted_mean")[1], (hidden[1, 2:] * w).sum(0) / 3
    )


@pytest.mark.parametrize("pooling", ["mean", "cls", "last", "emb_token"])
def test_encode_is_normalised_and_batch_independent(tiny_model_dir, pooling) -> None:
    model = Embedder.from_pretrained(tiny_model_dir, pooling=pooling)
    texts = ["the cat sat on the mat", "a dog", "dog", "the cat sat on the mat"]
    out = model.encode(texts, batch_size=3)
    assert out.shape == (4, 16) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out[0], out[3], atol=1e-6)
    alone = np.stack([model.encode([t])[0] for t in texts])
    np.testing.assert_allclose(out, alone, atol=1e-5)
    assert model.training  # encode() restores the mode it found
    # forward() keeps gradients for training.
    assert model(["a dog"]).requires_grad


def test_emb_token_is_added_once_and_survives_truncation(tiny_model_dir, tmp_path) -> None:
    model = Embedder.from_pretrained(tiny_model_dir, pooling="emb_token", max_length=4)
    vocab = len(model.tokenizer)
    assert model.backbone.get_input_embeddings().num_embeddings == vocab
    batch = model.tokenize(["the cat sat on the mat", "dog"])
    last = batch["attention_mask"].sum(1) - 1
    assert (batch["input_ids"][torch.arange(2), last] == model.emb_token_id).all()
    assert batch["input_ids"].shape[1] == 4
    model.save_pretrained(str(tmp_path / "m"))
    again = Embedder.from_pretrained(str(tmp_path / "m"))
    assert again.pooling == "emb_token" and len(again.tokenizer) == vocab


def test_save_load_round_trip_and_failed_save_keeps_old(tiny_model_dir, tmp_path) -> None:
    model = Embedder.from_pretrained(tiny_model_dir, pooling="cls", max_length=32)
    with torch.no_grad():
        model.backbone.pooler.dense.weight.zero_()  # unused by pooling, but saved
        model.backbone.embeddings.word_embeddings.weight.mul_(2)
    target = str(tmp_path / "saved")
    model.save_pretrained(target)
    loaded = Embedder.from_pretrained(target)
    assert (loaded.pooling, loaded.max_length) == ("cls", 32)
    texts = ["the cat", "a dog sat"]
    np.testing.assert_allclose(loaded.encode(texts), model.encode(texts), atol=1e-6)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    model.tokenizer.save_pretrained = broken
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(target)
    np.testing.assert_allclose(Embedder.from_pretrained(target).encode(texts), loaded.encode(texts))
    assert sorted(os.listdir(tmp_path)) == ["saved"]


def test_errors(tiny_model_dir, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no model directory"):
        Embedder.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown pooling"):
        Embedder.from_pretrained(tiny_model_dir, pooling="median")
    model = Embedder.from_pretrained(tiny_model_dir)
    with pytest.raises(TypeError, match="not one string"):
        model.encode("the cat")
    with pytest.raises(TypeError, match="expected strings"):
        model.encode(["the cat", None])
    with pytest.raises(ValueError, match="batch_size"):
        model.encode(["the cat"], batch_size=0)


def test_minilm_matches_sentence_transformers() -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["A man is eating food.", "The new movie is awesome.", "apt: package manager"]
    ours = Embedder.from_pretrained(minilm_path())
    assert ours.pooling == "mean"  # read from the directory's 1_Pooling/config.json
    theirs = SentenceTransformer(minilm_path(), device="cpu", local_files_only=True)
    ours.max_length = theirs.max_seq_length
    np.testing.assert_allclose(
        ours.encode(texts), theirs.encode(texts, normalize_embeddings=True), atol=2e-5
    )
