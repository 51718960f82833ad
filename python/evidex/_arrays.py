"""Input conversion shared by the index, the compat layer and the embedders.

Arrays arrive as numpy arrays, torch tensors (any device, with or without grad)
or nested sequences. They leave as C-contiguous float32 / uint64 numpy arrays,
copied only when the input is not already in that form.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np


def _is_torch_tensor(x: Any) -> bool:
    # Checked by type name so that torch is never imported here.
    t = type(x)
    return t.__module__.startswith("torch") and hasattr(x, "detach") and hasattr(x, "numpy")


def to_numpy(x: Any) -> np.ndarray:
    if _is_torch_tensor(x):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def as_float_array(x: Any, name: str = "vectors") -> np.ndarray:
    """float32 C-contiguous array of the same shape (shape is checked by the caller)."""
    a = to_numpy(x)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused later
        return np.ascontiguousarray(a, dtype=np.float32)


def as_queries(x: Any) -> np.ndarray:
    """Queries as a float32 C-contiguous array of the same shape: ``x`` itself when it
    is one already (a search's fast path; the compiled layer checks the shape)."""
    if type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous:
        return x
    return as_float_array(x, "queries")


def as_float_matrix(x: Any, dim: int, name: str = "vectors") -> tuple[np.ndarray, bool]:
    """Return (float32 C-contiguous [n, dim] array, was_1d)."""
    a = to_numpy(x)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    if a.ndim == 1:
        a = a.reshape(1, -1)
        was_1d = True
    elif a.ndim == 2:
        was_1d = False
    else:
        raise ValueError(f"{name} must be a 1-D or 2-D array, got {a.ndim} dimensions")
    if a.shape[1] != dim:
        raise ValueError(
            f"Wrong dimensionality of the vectors: {name} have dimension {a.shape[1]}, "
            f"the index has {dim}"
        )
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused later
        return np.ascontiguousarray(a, dtype=np.float32), was_1d


def as_labels(ids: Any, n: int | None, name: str = "ids") -> np.ndarray:
    """Non-negative integer ids as a uint64 array (length n when given)."""
    if isinstance(ids, numbers.Integral):
        ids = [ids]
    if isinstance(ids, (list, tuple, range)):
        # Python ints: int64 when they fit, uint64 above 2**63, never float.
        try:
            a = np.array(ids, dtype=np.int64)
        except (OverflowError, TypeError, ValueError):
            try:
                a = np.array(ids, dtype=np.uint64)
            except (OverflowError, TypeError, ValueError):
                a = np.asarray(ids)
        if a.dtype.kind in "iu" and any(isinstance(v, float) for v in ids):
            a = np.asarray(ids)  # floats that happen to be whole are still not ids
    else:
        a = to_numpy(ids)
    if a.size == 0:
        a = a.astype(np.int64).reshape(0)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {a.dtype}")
    if a.ndim != 1:
        a = a.reshape(-1) if a.ndim == 0 else a
        if a.ndim != 1:
            raise ValueError(f"{name} must be a 1-D sequence, got {a.ndim} dimensions")
    if a.dtype.kind == "i" and a.size and int(a.min()) < 0:
        raise ValueError(f"{name} must be non-negative, got {int(a.min())}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"got {a.shape[0]} {name} for {n} vectors")
    return np.ascontiguousarray(a, dtype=np.uint64)


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def check_number(value: Any, name: str) -> float:
    """A real number (not a bool) as a float; the caller checks its range."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


# Integers the compiled layer takes (it reads them as 64-bit): a Python int beyond
# would fail its argument conversion with a signature dump instead of a message.
C_INT_LIMIT = 1 << 62


def check_threads(num_threads: Any) -> int:
    """0 or -1 mean all cores; returns the value the core takes (0 = all). More
    threads than the compiled layer can count ask for the most it starts anyway."""
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral):
        raise TypeError(f"num_threads must be an integer, got {type(num_threads).__name__}")
    if num_threads < -1:
        raise ValueError(f"num_threads must be -1, 0 (all cores) or positive, got {num_threads}")
    return min(max(0, int(num_threads)), C_INT_LIMIT - 1)


def fast_int(value: Any, name: str, clamp: bool = False) -> int:
    """A count for a search's fast path: a plain int the compiled layer can take
    passes untouched (it checks the range there); anything else is checked here.
    Beyond what the compiled layer takes: clamped where that many means "all"
    (``clamp``), else a ValueError."""
    if type(value) is int and -C_INT_LIMIT < value < C_INT_LIMIT:
        return value
    value = check_positive_int(value, name)
    if value >= C_INT_LIMIT:
        if clamp:
            return C_INT_LIMIT - 1
        raise ValueError(f"{name} must be less than 2**62, got {value}")
    return value


def fast_threads(num_threads: Any) -> int:
    """num_threads for a search's fast path (see fast_int and check_threads)."""
    if type(num_threads) is int and -C_INT_LIMIT < num_threads < C_INT_LIMIT:
        return num_threads
    return check_threads(num_threads)


def check_texts(texts: Sequence[str]) -> list[str]:
    """`texts` as a list, or a TypeError naming what is not a string."""
    if isinstance(texts, str):
        raise TypeError("expected a sequence of strings, not one string")
    texts = list(texts)
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"expected strings, got {type(t).__name__}")
    return texts
