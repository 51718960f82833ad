"""Progress bars (tqdm when installed, else none), for long loops of any layer."""

from __future__ import annotations

from typing import Any


def progress_bar(total: int, enabled: bool, desc: str, unit: str = "text") -> Any:
    """A tqdm bar, or None when disabled, empty or tqdm is missing."""
    if not enabled or total == 0:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit)
