"""The framed channel between the CRINN loop and a sandboxed worker.

A frame is a 16-byte header (magic ``EVXF``, the JSON part's length as u32, the
binary part's length as u64), a JSON object, then raw bytes. The loop reads a
frame only up to the sizes it expects, within a deadline: a worker (which runs
untrusted code) cannot make it block, buffer without bound, or accept anything
but a well-formed frame. Nothing outside frames is read at all.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

MAGIC = b"EVXF"
_HEADER = struct.Struct("<4sIQ")
MAX_JSON = 1 << 16


class ChannelError(Exception):
    """A broken, oversized, late or malformed frame (the loop's words only)."""


class ChannelTimeout(ChannelError):
    """No whole frame by the deadline."""


def encode(meta: dict[str, Any], payload: bytes | memoryview = b"") -> list[bytes | memoryview]:
    text = json.dumps(meta).encode()
    return [_HEADER.pack(MAGIC, len(text), len(payload)), text, payload]


def write_frame(
    fd: int, meta: dict[str, Any], payload: bytes | memoryview = b"", deadline: float | None = None
) -> None:
    """Write one frame to `fd`; with a deadline (time.monotonic()), `fd` must be
    non-blocking and a reader that stops reading raises ChannelError."""
    poller = None
    if deadline is not None:
        poller = select.poll()
        poller.register(fd, select.POLLOUT | select.POLLERR | select.POLLHUP)
    for part in encode(meta, payload):
        view = memoryview(part).cast("B")
        while view:
            if poller is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ChannelError("the worker stopped reading")
                poller.poll(max(1, int(left * 1000)))
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                continue
            except BrokenPipeError as e:
                raise ChannelError("the channel closed") from e
            view = view[n:]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    poller = select.poll() if deadline is not None else None
    if poller is not None:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while got < n:
        if poller is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(max(1, int(left * 1000))):
                if time.monotonic() >= deadline:
                    raise ChannelTimeout("no answer in time")
                continue
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise ChannelError("the channel closed before a whole frame arrived")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame(
    fd: int, max_payload: int, deadline: float | None = None, max_json: int = MAX_JSON
) -> tuple[dict[str, Any], bytes]:
    """Read one frame from `fd`; raises ChannelError unless it is well formed and
    within `max_json` / `max_payload` bytes by `deadline` (time.monotonic())."""
    magic, jlen, blen = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
    if magic != MAGIC:
        raise ChannelError("something other than a frame arrived")
    if jlen > max_json or blen > max_payload:
        raise ChannelError(f"a frame larger than expected ({jlen} + {blen} bytes)")
    try:
        meta = json.loads(_read_exact(fd, jlen, deadline))
    except (UnicodeDecodeError, ValueError) as e:
        raise ChannelError("a frame with a malformed header") from e
    if not isinstance(meta, dict):
        raise ChannelError("a frame with a malformed header")
    return meta, _read_exact(fd, blen, deadline) if blen else b""
