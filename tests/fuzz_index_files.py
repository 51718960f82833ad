"""A structure-aware fuzzer of evidex index files, as an attacker writes them: every
mutation is followed by recomputing both checksums (FNV-1a is a few lines, here
reimplemented independently), so only the loader's bounds stand in the way.

Mutations: header fields set to boundary values (0, 1, -1, 2^31, 2^32, 2^63,
off-by-one of the real values, the file size), section sizes that wrap past
2^64 so the sections seem to fit, link counts and link targets out of range,
unknown flags, NaN / infinite / huge vectors, ids of 2^63 and more, duplicate
ids, levels above the top, broken quantiser ranges, random bytes, truncation
and extension (with the size field following).

Each case is loaded in a child process every way a file can be (``load``,
``load(mmap=True)``, ``from_bytes``, pickle, the hnswlib drop-in) and, where it
loads, used (search, add, delete, save). Reported: crashes (the child died),
hangs (a case past its time), cases that raised MemoryError, and the largest
peak-memory growth of loading one case (all five ways), in bytes and against the
file's size.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MASK = (1 << 64) - 1
PRIME = 0x100000001B3
FIELDS = {  # name: (offset, struct format)
    "version": (8, "<I"), "endian": (12, "<I"), "header_bytes": (16, "<Q"), "dim": (24, "<Q"),
    "space": (32, "<Q"), "M": (40, "<Q"), "M0": (48, "<Q"), "ef_construction": (56, "<Q"),
    "seed": (64, "<Q"), "capacity": (72, "<Q"), "count": (80, "<Q"), "num_deleted": (88, "<Q"),
    "next_label": (96, "<Q"), "entry_point": (104, "<q"), "max_level": (112, "<q"),
    "node_bytes": (120, "<Q"), "level0_offset": (128, "<Q"), "level0_bytes": (136, "<Q"),
    "upper_offset": (144, "<Q"), "upper_bytes": (152, "<Q"), "file_bytes": (160, "<Q"),
    "ef": (176, "<Q"), "quantization": (184, "<Q"), "trained": (192, "<Q"),
    "quant_offset": (200, "<Q"), "quant_bytes": (208, "<Q"), "attr_offset": (216, "<Q"),
    "attr_bytes": (224, "<Q"), "pq_dims": (232, "<Q"), "scan_code_dims": (240, "<Q"),
}  # fmt: skip


def fnv(data: bytes) -> int:
    h = 0xCBF29CE484222325
    whole = len(data) // 8 * 8
    for (w,) in struct.iter_unpack("<Q", data[:whole]):
        h = ((h ^ w) * PRIME) & MASK
    rest = data[whole:]
    if rest:
        h = ((h ^ int.from_bytes(rest.ljust(8, b"\0"), "little")) * PRIME) & MASK
    return ((h ^ 0x9E3779B97F4A7C15) * PRIME) & MASK


def get(data: bytes | bytearray, name: str) -> int:
    off, fmt = FIELDS[name]
    return struct.unpack_from(fmt, data, off)[0]


def put(data: bytearray, name: str, value: int) -> None:
    off, fmt = FIELDS[name]
    lo, hi = (-(1 << 63), (1 << 63) - 1) if fmt.endswith("q") else (0, MASK)
    if fmt.endswith("I"):
        hi = (1 << 32) - 1
    value = ((value - lo) % (hi - lo + 1)) + lo
    struct.pack_into(fmt, data, off, value)


def reseal(data: bytearray) -> bytes:
    """Recompute the payload and header checksums, as an attacker would."""
    start = get(data, "level0_offset")
    if 256 <= start <= len(data):
        struct.pack_into("<Q", data, 168, fnv(bytes(data[start:])))
    struct.pack_into("<Q", data, 248, fnv(bytes(data[:248])))
    return bytes(data)


def seeds() -> list[bytes]:
    import evidex

    rng = np.random.default_rng(0)
    out = []
    for dim, space, quant, n, deleted in [
        (8, "l2", None, 300, 5), (6, "cosine", None, 120, 0), (16, "ip", "sq8", 200, 3),
        (4, "l2", None, 1, 0), (4, "l2", None, 0, 0), (10, "l2", "pq4", 150, 2),
        (20, "cosine", "rabitq", 120, 2),
    ]:  # fmt: skip
        index = evidex.HNSWIndex(dim, space, M=4, ef_construction=16, quantization=quant, seed=1)
        if n:
            index.add(rng.standard_normal((n, dim)), np.arange(n) * 7 + 3)
        if deleted:
            index.delete(np.arange(deleted) * 7 + 3)
        out.append(index.to_bytes())
    # Fast-scan blocks of full groups: M0 above 16 (any version), and a file from
    # before version 6, whose M0 of 16 kept full groups (tests/data).
    index = evidex.HNSWIndex(12, "l2", M=12, ef_construction=16, quantization="rabitq", seed=1)
    index.add(rng.standard_normal((80, 12)))
    out.append(index.to_bytes())
    out.append((Path(__file__).parent / "data" / "legacy_rabitq_l2_M8.evx").read_bytes())
    # Stored attributes (format version 2): an int and a float field, some missing.
    index = evidex.HNSWIndex(4, M=4, ef_construction=16, seed=1)
    index.add(rng.standard_normal((70, 4)), np.arange(70),
              attributes={"tenant": np.arange(70) % 5, "score": rng.random(70)})  # fmt: skip
    index.add(rng.standard_normal((10, 4)), np.arange(70, 80))  # no values
    index.delete([3, 71])
    out.append(index.to_bytes())
    # Scan codes (format version 4), with attributes after them and a deletion.
    index = evidex.HNSWIndex(12, "cosine", M=4, ef_construction=16, seed=1)
    index.add(rng.standard_normal((90, 12)), attributes={"tenant": np.arange(90) % 3})
    index.build_scan_codes(4)
    index.delete([4])
    out.append(index.to_bytes())
    return out


_INTERESTING = [0, 1, 2, 3, 7, 8, 255, 256, 4096, (1 << 16) - 1, 1 << 16, (1 << 24) + 1,
                (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, (1 << 63) - 1, 1 << 63, MASK,
                MASK - 1]  # fmt: skip


def mutate(seed: bytes, rng: random.Random) -> bytes:
    data = bytearray(seed)
    n = get(data, "count")
    node = get(data, "node_bytes")
    l0 = get(data, "level0_offset")
    kind = rng.randrange(14 if get(data, "attr_bytes") else 12)
    if kind <= 2:  # a header field at a boundary value
        name = rng.choice(list(FIELDS))
        cur = get(data, name)
        value = rng.choice(
            _INTERESTING + [cur + 1, cur - 1, cur * 2, cur * 1000, len(data), len(data) + 8]
        )
        put(data, name, value)
    elif kind == 3:  # a huge count whose sections wrap past 2^64 and seem to fit
        count = rng.choice([10**6, 1 << 31, 1 << 40, MASK // node])
        put(data, "count", count)
        put(data, "capacity", count)
        put(data, "level0_bytes", count * node)
        upper_off = l0 + count * node
        put(data, "upper_offset", upper_off)
        # upper + quant end exactly at the file's end, modulo 2^64
        quant = get(data, "quant_bytes")
        upper = (len(data) - quant - upper_off) & MASK
        put(data, "upper_bytes", upper)
        put(data, "quant_offset", (upper_off + upper) & MASK)
    elif kind == 4 and n:  # a link count or a link of a node
        i = rng.randrange(n)
        at = l0 + i * node
        if rng.random() < 0.5:
            struct.pack_into("<H", data, at, rng.choice([0, 0xFFFF, get(data, "M0") + 1, 65]))
        else:
            j = rng.randrange(1, get(data, "M0") + 1)
            struct.pack_into("<I", data, at + 4 * j, rng.choice([n, n + 1, (1 << 32) - 1, i]))
    elif kind == 5 and n:  # flags
        data[l0 + rng.randrange(n) * node + 2] = rng.choice([2, 3, 0x80, 0xFF])
    elif kind == 6 and n:  # a vector value
        vec = l0 + rng.randrange(n) * node + 4 * (get(data, "M0") + 1)
        d = rng.randrange(get(data, "dim"))
        struct.pack_into("<f", data, vec + 4 * d, rng.choice([float("nan"), float("inf"), 3e38]))
    elif kind == 7 and n:  # a label: 2^63 and more, or another node's
        i = rng.randrange(n)
        label_at = l0 + i * node + 4 * (get(data, "M0") + 1) + 4 * get(data, "dim")
        other = l0 + rng.randrange(n) * node + 4 * (get(data, "M0") + 1) + 4 * get(data, "dim")
        value = rng.choice([1 << 63, MASK, struct.unpack_from("<Q", data, other)[0]])
        struct.pack_into("<Q", data, label_at, value)
    elif kind == 8 and n:  # the levels array or an upper link
        up = get(data, "upper_offset")
        if rng.random() < 0.5:
            data[up + rng.randrange(n)] = rng.choice([255, get(data, "max_level") + 1, 1, 0])
        else:
            span = get(data, "upper_bytes") - ((n + 7) // 8 * 8)
            if span >= 4:
                at = up + (n + 7) // 8 * 8 + rng.randrange(span // 4) * 4
                struct.pack_into("<I", data, at, rng.choice([n, (1 << 32) - 1, 0xFFFF]))
    elif kind == 9:  # truncate or extend, the size field following
        size = max(
            256, rng.choice([257, len(data) // 2, len(data) - 8, len(data) + 64, len(data) * 3])
        )
        data = data[:size] if size <= len(data) else data + bytearray(size - len(data))
        put(data, "file_bytes", len(data))
    elif kind == 10 and get(data, "quantization") == 2:  # PQ4 centroids
        q = get(data, "quant_offset")
        at = q + 4 * rng.randrange(max(1, (get(data, "quant_bytes") - 8) // 4))
        struct.pack_into("<f", data, at, rng.choice([float("nan"), float("inf"), 1e38, 0.0]))
    elif kind == 10 and get(data, "quantization") == 1:  # quantiser ranges
        q = get(data, "quant_offset")
        d = rng.randrange(get(data, "dim"))
        dim = get(data, "dim")
        which = q + 4 * d + (4 * dim if rng.random() < 0.5 else 0)
        struct.pack_into("<f", data, which, rng.choice([float("nan"), 0.0, -1.0, float("inf")]))
    elif kind >= 12:  # the attribute section: counts, names, types, values, presence
        at = get(data, "attr_offset")
        size = get(data, "attr_bytes")
        word = at + 8 * rng.randrange(max(1, min(size // 8, 64)))
        choice = rng.randrange(4)
        if choice == 0:  # a count, length or type word near the start
            struct.pack_into("<Q", data, at + 8 * rng.randrange(4), rng.choice(_INTERESTING))
        elif choice == 1:  # a float value: NaN or infinity
            struct.pack_into("<d", data, word, rng.choice([float("nan"), float("inf")]))
        elif choice == 2:  # presence bits, past the elements too
            data[at + size - 1 - rng.randrange(min(size, 24))] ^= 1 << rng.randrange(8)
        else:  # a byte of a name
            data[at + 32 + rng.randrange(8)] = rng.choice([0, 32, 0xFF, ord("9")])
    else:  # random bytes anywhere
        for _ in range(rng.randrange(1, 9)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    return reseal(data)


# ------------------------------------------------------------------ the child
CHILD = r"""
import io, os, pickle, resource, struct, sys
import numpy as np
import evidex
import evidex.compat.hnswlib as hnswlib

resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
path = os.path.join(sys.argv[1], "case.evx")  # the parent's folder: it removes it

def rss_kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
    return 0

def use(index):
    if len(index) > 0:
        q = np.zeros((2, index.dim), np.float32)
        index.search(q, k=1)
        index.search(q, k=1, filter=index.ids()[:3])
        for name, kind in index.attribute_fields.items():
            index.get_attributes(index.ids()[:5])
            index.search(q, k=1, filter=evidex.F(name) >= 1)
            index.search_range(q, 1.0, filter=~(evidex.F(name) == 2))
        if index.scan_code_dims:
            index.search(q, k=2, ef=2, filter=index.ids()[:40], filter_strategy="coded_scan")
        index.delete(index.ids()[:1])
    index.add(np.ones((3, index.dim), np.float32))
    index.stats()
    index.save(path + ".out")

out = sys.stdout.buffer
while True:
    head = sys.stdin.buffer.read(8)
    if len(head) < 8:
        break
    data = sys.stdin.buffer.read(struct.unpack("<Q", head)[0])
    with open(path, "wb") as f:
        f.write(data)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak: this case's peak alone
    base = rss_kib("VmRSS:")
    outcomes, loaded = [], []
    for way in ("bytes", "load", "mmap", "pickle", "hnswlib"):
        try:
            if way == "bytes":
                loaded.append(evidex.HNSWIndex.from_bytes(data))
            elif way == "load":
                loaded.append(evidex.HNSWIndex.load(path))
            elif way == "mmap":
                loaded.append(evidex.HNSWIndex.load(path, mmap=True))
            elif way == "pickle":
                idx = pickle.loads(pickle.dumps(evidex.HNSWIndex(2)))
                idx.__setstate__({"index": data})
                loaded.append(idx)
            else:
                h = hnswlib.Index("l2", 1)
                try:
                    h.load_index(path)
                except RuntimeError as e:
                    if "dimension" not in str(e) and "holds a" not in str(e):
                        raise
            outcomes.append("loaded")
        except MemoryError:
            outcomes.append("memory")
        except (ValueError, RuntimeError, OSError, KeyError, TypeError, OverflowError):
            outcomes.append("refused")
        except Exception as e:
            outcomes.append("unexpected:" + type(e).__name__)
    peak = rss_kib("VmHWM:") - base  # of loading alone
    for idx in loaded:  # what loaded must also work, or fail cleanly
        try:
            use(idx)
        except MemoryError:
            outcomes.append("memory")
        except (ValueError, RuntimeError, OSError, KeyError, TypeError, OverflowError):
            pass
        except Exception as e:
            outcomes.append("unexpected:" + type(e).__name__)
    del loaded
    out.write((" ".join(outcomes) + f" {peak}\n").encode())
    out.flush()
"""


@dataclass
class FuzzReport:
    cases: int = 0
    crashes: int = 0
    hangs: int = 0
    memory_errors: int = 0
    unexpected: int = 0  # an exception that is not a clean error of the API
    loaded: int = 0  # cases some way loaded (and then used without error)
    worst_peak_kib: int = 0  # of loading one case five ways
    worst_peak_ratio: float = (
        0.0  # that growth / the file's size (fixed costs dominate small files)
    )
    largest_file: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def run(cases: int, seed: int = 0, case_timeout: float = 20.0) -> FuzzReport:
    """Fuzz `cases` files; crashes and hangs restart the child at the next case."""
    rng = random.Random(seed)
    originals = seeds()
    report = FuzzReport()
    start = time.monotonic()
    pending = [mutate(rng.choice(originals), rng) for _ in range(cases)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # The children are killed, not ended, so their files live in a folder of ours.
    work = tempfile.TemporaryDirectory(prefix="evidex-fuzz-")
    i = 0
    while i < len(pending):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, work.name], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        try:
            while i < len(pending):
                data = pending[i]
                child.stdin.write(struct.pack("<Q", len(data)) + data)
                child.stdin.flush()
                line = _read_line(child, case_timeout)
                if line is None:
                    if child.poll() is None:
                        report.hangs += 1
                        report.failures.append(f"case {i}: hang")
                    else:
                        report.crashes += 1
                        report.failures.append(f"case {i}: child died (exit {child.returncode})")
                    _save_failure(data, i)
                    i += 1
                    break
                *outcomes, peak = line.split()
                report.cases += 1
                report.loaded += "loaded" in outcomes
                report.memory_errors += "memory" in outcomes
                if "memory" in outcomes:
                    report.failures.append(f"case {i}: MemoryError")
                odd = [o for o in outcomes if o.startswith("unexpected")]
                if odd:
                    report.unexpected += 1
                    report.failures.append(f"case {i}: {odd[0]}")
                peak_kib = int(peak)
                report.worst_peak_kib = max(report.worst_peak_kib, peak_kib)
                report.worst_peak_ratio = max(report.worst_peak_ratio, peak_kib * 1024 / len(data))
                report.largest_file = max(report.largest_file, len(data))
                i += 1
        finally:
            child.kill()
            child.wait()
    work.cleanup()
    report.seconds = time.monotonic() - start
    return report


def _read_line(child: subprocess.Popen, timeout: float) -> str | None:
    import select

    poller = select.poll()
    poller.register(child.stdout, select.POLLIN)
    if not poller.poll(timeout * 1000):
        return None
    line = child.stdout.readline()
    if not line:  # the child died: wait for its status
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return None
    return line.decode()


def _save_failure(data: bytes, i: int) -> None:
    folder = Path(tempfile.gettempdir()) / "evidex-fuzz-failures"
    folder.mkdir(exist_ok=True)
    (folder / f"case-{i}.evx").write_bytes(data)


if __name__ == "__main__":  # python tests/fuzz_index_files.py CASES [SEED]
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    rep = run(n, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    print(json.dumps(rep.__dict__, indent=1))
    _ = pickle  # (the child uses pickle; kept importable here for the __main__ run)
