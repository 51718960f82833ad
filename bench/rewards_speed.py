"""Format + alignment rewards for 10,000 completions (issue #5: under a second), and
how much of the outcome reward's time is the embedder's.

    python -m bench.rewards_speed [--outcome]

Parses each completion and scores format and alignment (keywords, one box against one
reference box through the compiled IoU kernel, one key frame against a segment). The first
round includes torch's one-time import (the box kernel is a torch op); the second is steady state.
"""

from __future__ import annotations

import sys
import time

from evidex.evidence import Box, Evidence, KeyFrame, parse_evidence, render_evidence
from evidex.rewards import alignment_reward, format_reward


def main() -> int:
    n = 10_000
    ev = Evidence(
        "the photo shows a red car near the crossing",
        ["red", "car", "crossing"],
        [Box("query", (100, 100, 500, 500), "grid1000")],
        [KeyFrame("query", 4)],
    )
    texts = [render_evidence(ev)] * n
    refs = [[Box("query", (120, 100, 520, 480), "grid1000")]] * n
    sizes, counts = [{"query": (640, 480)}] * n, [{"query": 10}] * n
    for round_ in range(2):
        t0 = time.perf_counter()
        parsed = [parse_evidence(x) for x in texts]
        evidence, problems = [p.evidence for p in parsed], [p.problems for p in parsed]
        t1 = time.perf_counter()
        format_reward(evidence, problems, sizes, counts)
        t2 = time.perf_counter()
        alignment_reward(
            evidence, ["a red car at the crossing"] * n, refs, sizes, [{"query": [(0, 10)]}] * n
        )
        t3 = time.perf_counter()
        print(
            f"round {round_}: parse {t1 - t0:.3f} s, format {t2 - t1:.3f} s, "
            f"alignment {t3 - t2:.3f} s, total {t3 - t0:.3f} s for {n} completions"
        )
    if "--outcome" in sys.argv:
        outcome_share()
    return 0


def outcome_share(n: int = 512) -> None:
    """EmbedRLReward (all three components, the batch as candidates) on `n` Debian
    completions with the frozen all-MiniLM-L6-v2, and the share of its time spent in
    the embedder's encode."""
    from evidex.datasets import debian_pairs
    from evidex.embedders import TransformersEmbedder
    from evidex.rewards import EmbedRLReward

    pairs = debian_pairs()[:n]
    queries, targets = [q for q, _ in pairs], [t for _, t in pairs]
    completions = [
        render_evidence(Evidence(f"It needs {q.lower()}.", q.lower().split()[:3])) for q in queries
    ]
    embedder = TransformersEmbedder.minilm(cache_size=0)
    encode, spent = embedder.encode, [0.0]

    def timed(texts, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return encode(texts, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    embedder.encode = timed
    reward = EmbedRLReward(embedder)
    for round_ in range(2):
        spent[0] = 0.0
        t0 = time.perf_counter()
        reward(["p"] * n, completions, query=queries, target=targets)
        total = time.perf_counter() - t0
        print(
            f"outcome round {round_}: EmbedRLReward on {n} completions {total:.2f} s, "
            f"of which embedder.encode {spent[0]:.2f} s ({spent[0] / total:.0%})"
        )


if __name__ == "__main__":
    sys.exit(main())
