"""Embed-RL rewards: format, alignment, outcome, and the combined TRL reward function."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from evidex.evidence import Box, Evidence, KeyFrame, parse_evidence, render_evidence
from evidex.rewards import (
    EmbedRLReward,
    alignment_reward,
    format_reward,
    outcome_reward,
)


class BagOfWordsEmbedder:
    """A real (if simple) frozen embedder: hashed word counts, L2-normalised."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, zlib.crc32(w.strip(".,:").encode()) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


GOOD = Evidence(
    "the photo shows a red car",
    ["red", "car"],
    [Box("query", (100, 100, 500, 500), "grid1000")],
    [KeyFrame("query", 4)],
)


def test_format_reward_counts_checks() -> None:
    bad = parse_evidence("no tags")
    good = parse_evidence(render_evidence(GOOD))
    scores = format_reward(
        [good.evidence, bad.evidence],
        [good.problems, bad.problems],
        image_sizes=[{"query": (640, 480)}, {"query": (640, 480)}],
        frame_counts=[{"query": 10}, None],
    )
    assert scores[0] == 1.0
    assert scores[1] == 0.0
    outside = Evidence("r", ["k"], [Box("query", (0, 0, 700, 10), "pixel")])
    assert format_reward([outside], [[]], [{"query": (640, 480)}]) == [0.75]


def test_alignment_reward_components() -> None:
    refs = [Box("query", (100, 100, 500, 500), "grid1000")]
    s = alignment_reward(
        [GOOD],
        ["A red car parked"],
        reference_boxes=[refs],
        image_sizes=[{"query": (640, 480)}],
        reference_segments=[{"query": [(0, 10)]}],
    )
    assert s == [pytest.approx(1.0)]  # keywords in target, IoU 1, frame inside segment
    half = Evidence("r", ["red", "boat"], [Box("query", (100, 100, 300, 500), "grid1000")])
    s = alignment_reward(
        [half], ["A red car"], reference_boxes=[refs], image_sizes=[{"query": (640, 480)}]
    )
    assert s == [pytest.approx((0.5 + 0.5) / 2)]
    emb = BagOfWordsEmbedder()
    with_emb = alignment_reward([GOOD], ["red car"], queries=["which car?"], embedder=emb)
    assert 0.5 < with_emb[0] <= 1.0
    with pytest.raises(ValueError, match="needs queries"):
        alignment_reward([GOOD], ["x"], embedder=emb)


def test_outcome_reward_forms() -> None:
    q = np.eye(3)[:2]
    cand = np.stack([np.eye(3), np.eye(3)[[1, 0, 2]]])
    # Example 1's target (position 1) is e0, but its query is e1: ranked second.
    assert outcome_reward(q, cand, [0, 1]) == [1.0, 0.5]
    soft = outcome_reward(q, cand, [0, 0], form="softmax", temperature=0.1)
    assert soft[0] == pytest.approx(soft[1]) and soft[0] > 0.99
    margin = outcome_reward(q, cand, [0, 1], form="margin", temperature=0.05)
    assert margin[0] == pytest.approx(1.0) and margin[1] == 0.0
    with pytest.raises(ValueError, match="target_index"):
        outcome_reward(q, cand, [0, 5])
    with pytest.raises(ValueError, match="unknown form"):
        outcome_reward(q, cand, [0, 0], form="mrr")


def test_embedrl_reward_in_trl_signature() -> None:
    emb = BagOfWordsEmbedder()
    reward = EmbedRLReward(emb)
    targets = ["a red car on the street", "a blue boat on the lake", "a green tree in a park"]
    queries = ["which vehicle?", "what floats?", "what grows?"]
    good = [
        render_evidence(Evidence("because", ["red", "car"])),
        render_evidence(Evidence("because", ["blue", "boat", "lake"])),
        render_evidence(Evidence("because", ["green", "tree"])),
    ]
    bad = ["<think>", "{]", [{"role": "assistant", "content": "nothing"}]]
    prompts = ["p"] * 3
    r_good = reward(prompts, good, query=queries, target=targets)
    r_bad = reward(prompts, bad, query=queries, target=targets)
    assert all(g > b for g, b in zip(r_good, r_bad))
    assert reward.last is not None and reward.last.outcome[0] == 1.0
    with pytest.raises(ValueError, match="column 'target'"):
        reward(prompts, good, query=queries)
    with pytest.raises(ValueError, match="3 completions"):
        reward(["p"], good, query=queries, target=targets)
    with pytest.raises(ValueError, match="weights"):
        EmbedRLReward(emb, weights=(1.0, -1.0, 0.0))
    cands = [["a blue boat on the lake"], ["a red car on the street"], ["x"]]
    assert len(reward(prompts, good, query=queries, target=targets, candidates=cands)) == 3


def test_components_and_judge_hook() -> None:
    emb = BagOfWordsEmbedder()
    seen = []

    def judge(query, target, evidence):
        seen.append((query, target, tuple(evidence.keywords)))
        return 2.0  # clamped to 1

    reward = EmbedRLReward(emb, judge=judge)
    text = [render_evidence(Evidence("r", ["red", "car"]))]
    fmt = reward.component("format")
    assert fmt.__name__ == "embed_rl_format"
    assert fmt(["p"], text, query=["q"], target=["red car"]) == [1.0]
    ali = reward.component("alignment")(["p"], text, query=["q"], target=["red car"])
    assert seen[-1] == ("q", "red car", ("red", "car")) and 0.5 < ali[0] <= 1.0
    with pytest.raises(ValueError, match="unknown component"):
        reward.component("style")


def test_outcome_over_an_hnsw_index() -> None:
    import evidex
    from evidex.rewards import outcome_reward_index

    emb = BagOfWordsEmbedder(dim=4096)  # wide enough that no two words collide here
    corpus = [f"document number {i} about topic{i % 50} and item{i}" for i in range(2000)]
    index = evidex.HNSWIndex(emb.dim, "cosine")
    index.add(emb.encode(corpus), np.arange(2000) + 10, num_threads=1)  # one graph every time
    q = emb.encode(["about topic7 and item7", "document number 1999 about topic49 and item1999"])
    base = emb.encode(corpus)
    exact_rank = [
        int((base @ q[0] > base[7] @ q[0]).sum()),
        int((base @ q[1] > base[1999] @ q[1]).sum()),
    ]
    r = outcome_reward_index(q, index, [17, 2009], k=10)
    assert r == [pytest.approx(1 / (1 + exact_rank[0])), pytest.approx(1 / (1 + exact_rank[1]))]
    # Doc 0 shares only the boilerplate words: outside the 10 nearest, reward 0.
    assert outcome_reward_index(q[1:], index, [10], k=10) == [0.0]
    soft = outcome_reward_index(q, index, [17, 10], k=10, form="softmax", temperature=0.05)
    assert soft[0] > 0.2 and soft[1] < 0.05
    reward = EmbedRLReward(emb, candidate_index=index, index_k=50)
    good = [render_evidence(Evidence("about topic7", ["item7"]))]
    assert reward(["p"], good, query=["which?"], target=[corpus[7]], target_id=[17])[0] > 0.5
    assert reward.last.outcome == [1.0]
    with pytest.raises(ValueError, match="target_id"):
        reward(["p"], good, query=["which?"], target=[corpus[7]])
