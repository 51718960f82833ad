"""The CRINN archive: every candidate on disk, the winners marked, resumable.

Layout under the run folder::

    run.json                     dataset and machine fingerprints, settings
    candidates/<id>/source.cpp   the kernel source
    candidates/<id>/build.log    compiler output
    candidates/<id>/meta.json    slot, origin, config or prompt, curve, score, reason
    candidates/<id>/kernel.so    the library (when it built)
    winners.json                 the best candidate per slot

Every JSON file is written to a temporary file and renamed into place, so an
interrupted run leaves whole files; a candidate without meta.json never finished
and is built again on resume.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MAX_JSON_BYTES = 64 << 20


def read_json(path: Path) -> Any:
    """A JSON file of the archive, or None if there is none. Only a regular file
    is read (never a FIFO or a device someone put in its place, which would block
    or never end), and only up to MAX_JSON_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(f"{path} cannot be read as an archive file: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if st.st_size > MAX_JSON_BYTES:
            raise ValueError(f"{path} is larger than {MAX_JSON_BYTES >> 20} MiB")
        raw = f.read(MAX_JSON_BYTES + 1)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def write_json(path: Path, data: Any) -> None:
    """Atomically replace `path` with `data` as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@dataclass
class Candidate:
    """One proposed kernel and what became of it."""

    id: str
    slot: str
    origin: str
    score: float = 0.0  # AUC of its QPS-recall curve; 0 when rejected
    reason: str = ""  # why it scored 0 ("" when it passed)
    config: dict[str, int] | None = None
    prompt: str | None = None
    curve: list[dict[str, float]] = field(default_factory=list)
    screen_score: float = 0.0
    final: dict[str, Any] | None = None  # the interleaved re-measurement, if a finalist
    build_seconds: float = 0.0
    eval_seconds: float = 0.0
    iteration: int = 0
    node: dict[str, str] | None = None  # CPU fingerprint of the machine that built and measured it

    @property
    def ok(self) -> bool:
        return not self.reason


class Archive:
    """The candidates of a run folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()  # workers run in their own folders
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "candidates").mkdir(exist_ok=True)

    def folder(self, candidate_id: str) -> Path:
        return self.root / "candidates" / candidate_id

    def new_id(self, slot: str) -> str:
        """A fresh candidate id, its folder claimed by ``mkdir`` (atomic, also on a shared
        file system), so concurrent workers, threads or cluster nodes never share one."""
        n = sum(1 for _ in (self.root / "candidates").glob(f"{slot}-*"))
        while True:
            cid = f"{slot}-{n:04d}"
            try:
                self.folder(cid).mkdir(parents=True)
                return cid
            except FileExistsError:
                n += 1

    def save(self, candidate: Candidate) -> None:
        write_json(self.folder(candidate.id) / "meta.json", asdict(candidate))

    def __iter__(self) -> Iterator[Candidate]:
        for meta in sorted((self.root / "candidates").glob("*/meta.json")):
            try:
                data = read_json(meta)
                yield Candidate(**data)
            except (ValueError, TypeError):
                continue  # unreadable or not a candidate: skipped, as unfinished

    def candidates(self, slot: str | None = None) -> list[Candidate]:
        return [c for c in self if slot is None or c.slot == slot]

    def unfinished(self) -> list[Path]:
        """Candidate folders an interruption left without a result."""
        return [
            p
            for p in (self.root / "candidates").iterdir()
            if p.is_dir() and not (p / "meta.json").exists()
        ]

    # ------------------------------------------------------------ winners
    def winners(self) -> dict[str, dict[str, Any]]:
        data = read_json(self.root / "winners.json")
        return data if isinstance(data, dict) else {}

    def mark_winner(self, slot: str, candidate: Candidate, baseline_auc: float) -> None:
        winners = self.winners()
        winners[slot] = {
            "id": candidate.id,
            # A layout compiles nothing: its configuration is the winner.
            "library": None
            if candidate.slot == "layout"
            else str(self.folder(candidate.id) / "kernel.so"),
            "auc": candidate.final["auc"] if candidate.final else candidate.score,
            "baseline_auc": baseline_auc,
            "config": candidate.config,
        }
        write_json(self.root / "winners.json", winners)

    def winner_library(self, slot: str) -> str | None:
        w = self.winners().get(slot)
        return w.get("library") if isinstance(w, dict) else None

    def settings(self) -> dict[str, Any]:
        data = read_json(self.root / "run.json")
        return data if isinstance(data, dict) else {}

    def save_settings(self, settings: dict[str, Any]) -> None:
        write_json(self.root / "run.json", settings)
