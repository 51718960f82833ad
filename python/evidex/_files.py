"""Files: directories written so that a failed write never destroys the previous one,
checksums, and versioned JSON manifests read as untrusted input."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """Yield a fresh sibling directory to write into; on success it replaces `path`
    (the old directory moved aside first, then removed), on any error it is removed and
    `path` is left as it was."""
    path = os.path.abspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = f"{path}.old{os.getpid()}"
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_versioned_json(file: str, fmt: str, version: int, what: str) -> dict[str, Any]:
    """A JSON object whose ``format`` is `fmt` and ``version`` is `version`:
    FileNotFoundError when absent (naming `what`), ValueError when unreadable or other."""
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"no {what} at {os.path.dirname(file)!r} (no {os.path.basename(file)})"
        )
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {file}: {e}") from e
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ValueError(f"{file} is not an {what}")
    if data.get("version") != version:
        raise ValueError(f"{file}: unsupported version {data.get('version')!r}")
    return data
