"""evidex's benchmarks: ``python -m bench.<name> --help``; figures in bench/RESULTS.md."""

from __future__ import annotations

import json


def save_figures(figures: dict, path: str | None) -> dict:
    """Writes a benchmark's figures as JSON to ``path`` (its ``--out``; None: nowhere)
    and returns them."""
    if path:
        with open(path, "w") as f:
            json.dump(figures, f, indent=1)
    return figures
