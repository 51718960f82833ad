"""Format + alignment rewards for 10,000 completions (issue #5: under a second).

    python -m bench.rewards_speed

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
