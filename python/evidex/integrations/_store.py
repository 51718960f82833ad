"""What the framework stores share: documents by string id beside an `HNSWIndex`
(integer ids), and a folder format for both that never unpickles anything.

A folder holds ``documents.json`` (format, the documents, and the name and SHA-256 of
the index file it belongs to) and that index file, ``index-<token>.evx``. A save writes
a new index file, then replaces ``documents.json`` (temporary file, fsync, rename), then
removes older index files: a crash at any point leaves a matching pair.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from .._core import CorruptIndexError
from .._files import sha256_file
from ..index import HNSWIndex

FORMAT = "evidex-documents/1"
DOCUMENTS = "documents.json"


class DocumentTable:
    """String ids <-> index ids, with each document's text and JSON metadata.

    Changes come in two steps, so that a failed index update changes nothing here:
    `upsert` picks ids, the caller updates the index, `commit` records the rows.
    """

    def __init__(self) -> None:
        self._label: dict[str, int] = {}
        self._key: dict[int, str] = {}
        self._content: dict[str, tuple[str, dict[str, Any]]] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._label)

    def __contains__(self, key: object) -> bool:
        return key in self._label

    def keys(self) -> list[str]:
        return list(self._label)

    def key_of(self, label: int) -> str:
        return self._key[label]

    def label_of(self, key: str) -> int:
        return self._label[key]

    def content(self, key: str) -> tuple[str, dict[str, Any]]:
        return self._content[key]

    def upsert(self, rows: Sequence[tuple[str | None, str, Any]]) -> tuple[list[str], list[int]]:
        """Ids for rows of (key or None, text, metadata): a present key keeps its index
        id (an update), a new or missing key gets a fresh one."""
        keys = [key if key is not None else uuid.uuid4().hex for key, _, _ in rows]
        for key in keys:
            if not isinstance(key, str) or not key:
                raise ValueError(f"ids must be non-empty strings, got {key!r}")
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate ids in one call")
        labels, fresh = [], self._next
        for key in keys:
            if key in self._label:
                labels.append(self._label[key])
            else:
                labels.append(fresh)
                fresh += 1
        for _, text, metadata in rows:
            if not isinstance(text, str):
                raise TypeError(f"document text must be a string, got {type(text).__name__}")
            _check_json(metadata or {})
        return keys, labels

    def commit(self, keys: Sequence[str], labels: Sequence[int], rows: Sequence[tuple]) -> None:
        for key, label, (_, text, metadata) in zip(keys, labels, rows):
            self._label[key] = label
            self._key[label] = key
            self._content[key] = (text, dict(metadata or {}))
            self._next = max(self._next, label + 1)

    def remove(self, keys: Iterable[str] | None) -> list[int]:
        """Forget these keys (missing ones ignored; None: all); their index ids."""
        keys = list(self._label) if keys is None else [k for k in keys if k in self._label]
        labels = []
        for key in dict.fromkeys(keys):
            label = self._label.pop(key)
            del self._key[label], self._content[key]
            labels.append(label)
        return labels

    # ------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        return {
            "next": self._next,
            "documents": [
                {
                    "id": key,
                    "label": label,
                    "text": self._content[key][0],
                    "metadata": self._content[key][1],
                }
                for key, label in self._label.items()
            ],
        }

    @classmethod
    def from_json(cls, data: Any, index: HNSWIndex | None) -> DocumentTable:
        """A table from `to_json`'s form, checked field by field and against the index."""
        table = cls()
        if not isinstance(data, dict) or not isinstance(data.get("documents"), list):
            raise CorruptIndexError(f"{DOCUMENTS}: no document list")
        nxt = data.get("next")
        if isinstance(nxt, bool) or not isinstance(nxt, int) or nxt < 0:
            raise CorruptIndexError(f"{DOCUMENTS}: invalid next id {nxt!r}")
        for i, doc in enumerate(data["documents"]):
            ok = (
                isinstance(doc, dict)
                and isinstance(doc.get("id"), str)
                and doc["id"]
                and isinstance(doc.get("label"), int)
                and not isinstance(doc["label"], bool)
                and 0 <= doc["label"] < nxt
                and isinstance(doc.get("text"), str)
                and isinstance(doc.get("metadata"), dict)
            )
            if not ok or doc["id"] in table._label or doc["label"] in table._key:
                raise CorruptIndexError(f"{DOCUMENTS}: document {i} is invalid or repeated")
            table.commit([doc["id"]], [doc["label"]], [(None, doc["text"], doc["metadata"])])
        table._next = nxt
        live = set() if index is None else set(index.ids().tolist())
        if live != set(table._key):
            raise CorruptIndexError(f"{DOCUMENTS} and the index file hold different documents")
        return table


def _check_json(value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata must be JSON (strings, numbers, lists, dicts): {e}") from e


def write_folder(
    folder: str, index: HNSWIndex | None, table: DocumentTable, extra: dict[str, Any]
) -> None:
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    name = None
    if index is not None:
        name = f"index-{secrets.token_hex(8)}.evx"
        index.save(os.path.join(folder, name))
    manifest = {
        "format": FORMAT,
        "index_file": name,
        "index_sha256": sha256_file(os.path.join(folder, name)) if name else None,
        **table.to_json(),
        **extra,
    }
    tmp = os.path.join(folder, f".{DOCUMENTS}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(folder, DOCUMENTS))
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        if name:
            os.remove(os.path.join(folder, name))
        raise
    for old in os.listdir(folder):
        if old.startswith("index-") and old.endswith(".evx") and old != name:
            os.remove(os.path.join(folder, old))


def read_folder(folder: str) -> tuple[HNSWIndex | None, DocumentTable, dict[str, Any]]:
    path = os.path.join(os.fspath(folder), DOCUMENTS)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except ValueError as e:
        raise CorruptIndexError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptIndexError(f"{path}: not an evidex document folder ({FORMAT})")
    name = manifest.get("index_file")
    index = None
    if name is not None:
        if not isinstance(name, str) or os.path.basename(name) != name or not name.endswith(".evx"):
            raise CorruptIndexError(f"{path}: invalid index file name {name!r}")
        index_path = os.path.join(os.fspath(folder), name)
        if sha256_file(index_path) != manifest.get("index_sha256"):
            raise CorruptIndexError(f"{index_path} is not the index {DOCUMENTS} was saved with")
        index = HNSWIndex.load(index_path)
    table = DocumentTable.from_json(manifest, index)
    extra = {
        k: v
        for k, v in manifest.items()
        if k not in ("format", "index_file", "index_sha256", "next", "documents")
    }
    return index, table, extra
