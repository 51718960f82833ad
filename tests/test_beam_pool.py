"""BeamPool (cpp/include/evidex/beam.h), the sorted beam every graph search uses,
against a plain sorted list: compiled here with the C++ compiler that builds the
package, fed random distances (with ties) at capacities that take both of its
placement paths (a count up to 128 entries, a binary search above)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

INCLUDE = Path(__file__).resolve().parents[1] / "cpp" / "include"

CHECK = r"""
#include "evidex/beam.h"
#include <algorithm>
#include <cstdio>
#include <random>
#include <vector>
using evidex::BeamPool;
struct Ref { float d; std::uint32_t id; bool done; };
int main() {
    std::mt19937 rng(7);
    long bad = 0;
    for (int t = 0; t < 4000; ++t) {
        const std::size_t cap = 1 + rng() % 300;
        BeamPool beam;
        beam.reset(cap);
        std::vector<Ref> ref;  // sorted, a new entry after equal distances
        for (std::uint32_t i = 0; i < 600; ++i) {
            const int op = static_cast<int>(rng() % 10);
            if (op == 0 && beam.has_next()) {  // expand the nearest unexpanded entry
                auto it = std::find_if(ref.begin(), ref.end(),
                                       [](const Ref& r) { return !r.done; });
                if (beam.pop() != it->id) ++bad;
                it->done = true;
                continue;
            }
            const float d = static_cast<float>(rng() % 64);
            if (op == 1 && !ref.empty()) {  // a better estimate for a queued entry
                const Ref pick = ref[rng() % ref.size()];
                if (pick.done) continue;
                const bool moved = beam.improve(d, pick.id);
                if (!moved) ++bad;
                if (d < pick.d) {
                    ref.erase(std::find_if(ref.begin(), ref.end(),
                                           [&](const Ref& r) { return r.id == pick.id; }));
                    auto at = std::upper_bound(ref.begin(), ref.end(), d,
                                               [](float x, const Ref& r) { return x < r.d; });
                    ref.insert(at, Ref{d, pick.id, false});
                }
                continue;
            }
            const bool fits = ref.size() < cap || d < ref.back().d;
            if (beam.insert(d, 1000 + i) != fits) ++bad;
            if (!fits) continue;
            auto at = std::upper_bound(ref.begin(), ref.end(), d,
                                       [](float x, const Ref& r) { return x < r.d; });
            ref.insert(at, Ref{d, 1000 + i, false});
            if (ref.size() > cap) ref.pop_back();
        }
        if (beam.size() != ref.size()) ++bad;
        for (std::size_t i = 0; i < ref.size() && i < beam.size(); ++i)
            if (beam.dist(i) != ref[i].d || beam.id(i) != ref[i].id) ++bad;
        if (beam.improve(0.f, 999999)) ++bad;  // not in the beam
    }
    std::printf("%ld\n", bad);
    return 0;
}
"""


def test_beam_pool_matches_a_sorted_list(tmp_path: Path) -> None:
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    assert compiler, "a C++ compiler builds this package; none is on PATH"
    src = tmp_path / "check.cpp"
    src.write_text(CHECK)
    exe = tmp_path / "check"
    subprocess.run(
        [compiler, "-O2", "-std=c++17", f"-I{INCLUDE}", str(src), "-o", str(exe)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "0", f"{out.stdout.strip()} disagreements with the sorted list"
