"""Model directories both ways between evidex and sentence-transformers (6, installed by
the test extra): the same embeddings to 1e-6 with every pooling mode, prompts, maximum
length and normalisation; what evidex cannot reproduce is refused."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from evidex.embedders import minilm_path
from evidex.train import Embedder

TEXTS = [
    "A red car waits at the crossing.",
    "Über naïve café",
    "word " * 400,  # past every maximum length here
    "apt: package manager",
]


def assert_same(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Equal to 1e-6 of each embedding's length (unnormalised ones reach lengths of 20,
    where float32 sums in another order differ in the 7th digit)."""
    scale = np.maximum(np.linalg.norm(theirs, axis=1, keepdims=True), 1.0)
    np.testing.assert_allclose(ours / scale, theirs / scale, atol=1e-6, rtol=0)


def _st_pooling(dim: int, mode: str, include_prompt: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from sentence_transformers.models import Pooling

    return Pooling(dim, pooling_mode=mode, include_prompt=include_prompt)


@pytest.mark.parametrize(
    ("pooling", "normalize", "include_prompt"),
    [
        ("mean", True, True),
        ("cls", True, False),
        ("max", False, True),
        ("last", True, False),
        ("mean_sqrt_len", False, False),
        ("weighted_mean", True, False),
    ],
)
def test_evidex_saved_model_loads_in_sentence_transformers_alike(
    tmp_path, pooling, normalize, include_prompt
) -> None:
    ours = Embedder.from_pretrained(minilm_path(), pooling=pooling, max_length=96)
    ours.normalize = normalize
    ours.prompts = {"query": "query: ", "doc": ""}
    ours.default_prompt_name = "query"
    ours.include_prompt = include_prompt
    ours.save_pretrained(str(tmp_path / "m"))
    theirs = SentenceTransformer(str(tmp_path / "m"), device="cpu", local_files_only=True)
    assert theirs.max_seq_length == 96
    assert_same(ours.encode(TEXTS), theirs.encode(TEXTS))
    assert_same(
        ours.encode(TEXTS, prompt_name="doc"),
        theirs.encode(TEXTS, prompt_name="doc"),
    )
    again = Embedder.from_pretrained(str(tmp_path / "m"))
    assert_same(again.encode(TEXTS), ours.encode(TEXTS))


@pytest.mark.parametrize("mode", ["cls", "max", "mean", "lasttoken", "weightedmean"])
def test_sentence_transformers_saved_model_loads_in_evidex_alike(tmp_path, mode) -> None:
    theirs = SentenceTransformer(minilm_path(), device="cpu", local_files_only=True)
    theirs[1] = _st_pooling(384, mode, include_prompt=mode != "max")
    theirs.max_seq_length = 128
    theirs.prompts = {"query": "search query: "}
    theirs.default_prompt_name = "query"
    theirs.save(str(tmp_path / "st"))
    ours = Embedder.from_pretrained(str(tmp_path / "st"))
    assert ours.max_length == 128 and ours.default_prompt_name == "query"
    assert_same(ours.encode(TEXTS), theirs.encode(TEXTS))


def test_older_sentence_transformers_layouts_are_read(tmp_path) -> None:
    """Files as sentence-transformers 2-5 wrote them: pooling_mode_* flags, the maximum
    length in sentence_bert_config.json, module types under sentence_transformers.models."""
    path = tmp_path / "old"
    shutil.copytree(minilm_path(), path)
    flags = {
        "word_embedding_dimension": 384,
        "pooling_mode_cls_token": True,
        "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False,
    }
    (path / "1_Pooling" / "config.json").write_text(json.dumps(flags))
    (path / "sentence_bert_config.json").write_text('{"max_seq_length": 64, "do_lower_case": true}')
    ours = Embedder.from_pretrained(str(path))
    assert (ours.pooling, ours.max_length, ours.lowercase) == ("cls", 64, True)
    theirs = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    assert_same(ours.encode(TEXTS), theirs.encode(TEXTS))


def test_what_evidex_cannot_reproduce_is_refused(tmp_path) -> None:
    path = tmp_path / "dense"
    shutil.copytree(minilm_path(), path)
    modules = json.loads((path / "modules.json").read_text())
    modules.append(
        {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="module 'Dense' is not supported"):
        Embedder.from_pretrained(str(path))
    (path / "modules.json").write_text(json.dumps(modules[:3]))
    (path / "1_Pooling" / "config.json").write_text('{"pooling_mode": ["cls", "mean"]}')
    with pytest.raises(ValueError, match="pooling"):
        Embedder.from_pretrained(str(path))
    (path / "modules.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        Embedder.from_pretrained(str(path))
    # emb_token pooling has no sentence-transformers form: no modules.json, a warning.
    ours = Embedder.from_pretrained(minilm_path(), pooling="emb_token")
    with pytest.warns(UserWarning, match="no sentence-transformers equivalent"):
        ours.save_pretrained(str(tmp_path / "emb"))
    assert not os.path.exists(tmp_path / "emb" / "modules.json")
    assert Embedder.from_pretrained(str(tmp_path / "emb")).pooling == "emb_token"
    with pytest.raises(ValueError, match="unknown prompt_name"):
        ours.encode(["x"], prompt_name="nope")
