"""Running untrusted candidate kernels and their builds.

Every build and every measurement runs in the namespace jail of ``jail.py``: an
unprivileged user with no capabilities, in its own pid, mount, ipc, network and
uts namespaces (the loop is invisible to it), in a minimal read-only root, under
resource limits and a wall-clock timeout after which its whole process tree dies.
Builds run under the ``build`` seccomp profile; a worker installs the default-deny
``kernel`` profile (``seccomp.py``) before it loads a candidate library.

The loop decides everything that matters outside the candidate's address space
(`Worker`): it times each request's round trip itself, sends queries the worker
has never seen, reads answers as size-limited frames (``channel.py``) and checks
them against its own ground truth; an idle worker is stopped (SIGSTOP), so it
cannot run while another is being timed. Reasons for a failure are the loop's
own words, never text from the worker.

Where the system has no user namespaces (or no seccomp), `protection()` says what
is missing; the loop reports it loudly and refuses model-written candidates unless
the user accepts the weaker sandbox.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from . import jail, seccomp
from .channel import ChannelError, ChannelTimeout, read_frame, write_frame

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Limits:
    """Resource limits of one sandboxed worker or build."""

    cpu_seconds: int = 120
    wall_seconds: float = 180.0
    memory_bytes: int = 4 << 30
    file_bytes: int = 1 << 20  # a worker writes only its (bounded) stderr
    open_files: int = 256
    processes: int = 64


@dataclass
class Protection:
    """What this system allows the sandbox to do."""

    jail: bool
    seccomp: bool
    why: str = ""

    @property
    def complete(self) -> bool:
        return self.jail and self.seccomp

    def describe(self) -> str:
        if self.complete:
            return "sandbox: namespaces jail (unprivileged user, own pid/mount/net) and seccomp"
        missing = []
        if not self.jail:
            missing.append(f"no namespaces jail ({self.why})")
        if not self.seccomp:
            missing.append("no seccomp filter (not Linux on x86-64)")
        return "WEAK SANDBOX: " + "; ".join(missing)


def protection() -> Protection:
    ok, why = jail.probe()
    return Protection(jail=ok, seccomp=seccomp.supported(), why=why)


class WeakSandboxError(RuntimeError):
    """Model-written candidates refused: the system cannot sandbox them fully."""


def require_protection(model_written: bool, allow_weak: bool) -> Protection:
    """Say loudly what the sandbox lacks; refuse model-written code unless allowed."""
    p = protection()
    if not p.complete:
        print(f"evidex.crinn: {p.describe()}", file=sys.stderr, flush=True)
        if model_written and not allow_weak:
            raise WeakSandboxError(
                f"{p.describe()}. Model-written kernels would run with weaker isolation; "
                "pass allow_weak_sandbox=True (--allow-weak-sandbox) to accept that."
            )
    return p


# ------------------------------------------------------------------ processes
_SIGNAL_REASONS = {
    signal.SIGSYS: "sandbox violation: a forbidden system call",
    signal.SIGSEGV: "crashed (segmentation fault)",
    signal.SIGBUS: "crashed (bus error)",
    signal.SIGFPE: "crashed (floating-point exception)",
    signal.SIGILL: "crashed (illegal instruction)",
    signal.SIGABRT: "crashed (abort)",
    signal.SIGXCPU: "CPU time limit exceeded",
    signal.SIGXFSZ: "file size limit exceeded",
    signal.SIGKILL: "killed (memory or time limit)",
}


def exit_reason(returncode: int | None) -> str:
    """The loop's words for how a sandboxed process ended."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            sig = signal.Signals(-returncode)
        except ValueError:
            return f"killed by signal {-returncode}"
        return _SIGNAL_REASONS.get(sig, f"killed by {sig.name}")
    if returncode == jail.SETUP_FAILED:
        return "the sandbox could not be set up"
    return f"exited with status {returncode}"


def base_env() -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LC_ALL": "C",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    for name in ("PYTHONPATH", "EVIDEX_SIMD"):  # a source checkout; a forced SIMD level
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def spawn(
    spec: jail.JailSpec, argv: list[str], stdin: Any, stdout: Any, stderr: Any
) -> subprocess.Popen:
    """Start `argv` in the jail (or, where namespaces are missing, with limits,
    affinity and seccomp alone), in a new session whose group is killed as one."""
    spec.isolate = protection().jail
    return subprocess.Popen(
        jail.command(spec, argv),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        start_new_session=True,
        close_fds=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process in D state
        pass


def _jail_limits(limits: Limits) -> jail.JailLimits:
    return jail.JailLimits(
        cpu_seconds=limits.cpu_seconds,
        memory_bytes=limits.memory_bytes,
        file_bytes=limits.file_bytes,
        open_files=limits.open_files,
        processes=limits.processes,
    )


# ------------------------------------------------------------------ cores
class _Cores:
    """Hands each concurrent measurement a core of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: set[int] = set()

    def acquire(self) -> int:
        cpus = sorted(os.sched_getaffinity(0))
        with self._lock:
            free = [c for c in cpus if c not in self._busy] or cpus
            cpu = free[-1]  # from the top: core 0 keeps the loop and the system
            self._busy.add(cpu)
            return cpu

    def release(self, cpu: int) -> None:
        with self._lock:
            self._busy.discard(cpu)


CORES = _Cores()


# ------------------------------------------------------------------ workers
class WorkerFailed(Exception):
    """A worker that crashed, broke the protocol or ran out of time; str() is the
    loop's own account of it."""


class Worker:
    """One sandboxed worker (``evidex.crinn.worker``) and the framed channel to it.

    Args:
        setup: the worker's setup request (see worker.py).
        files: host files the worker reads (index, base vectors, libraries).
        limits: its resource limits; `limits.wall_seconds` bounds each request.
        cpus: where it runs; the construction slot's build may use several, and
            `pin` moves every thread of it to one core afterwards.
    """

    def __init__(
        self, setup: dict[str, Any], files: Sequence[str], limits: Limits, cpus: Sequence[int]
    ) -> None:
        self.setup = setup
        self.limits = limits
        self.stage = "starting"
        self._stderr = tempfile.TemporaryFile(prefix="evidex-crinn-worker-")
        readonly = jail.system_paths() + jail.python_paths() + [os.path.abspath(f) for f in files]
        spec = jail.JailSpec(
            readonly=readonly, cwd="/tmp", env=base_env(), limits=_jail_limits(limits),
            cpus=list(cpus),
        )  # fmt: skip
        self.proc = spawn(
            spec, [sys.executable, "-m", "evidex.crinn.worker"],
            subprocess.PIPE, subprocess.PIPE, self._stderr,
        )  # fmt: skip
        os.set_blocking(self.proc.stdin.fileno(), False)
        self.n = 0
        self.dim = 0

    # -------------------------------------------------------- requests
    def _deadline(self, seconds: float | None = None) -> float:
        return time.monotonic() + (seconds or self.limits.wall_seconds)

    def _fail(self, what: str, answered: bool = False) -> WorkerFailed:
        """Kill the worker; the reason is how it ended (a signal, a status), else
        what went wrong. `answered`: it said it failed, which is the reason."""
        code = None
        if not answered:
            try:
                self.proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            code = self.proc.poll()
        kill_group(self.proc)
        if code is not None and code != 0:
            return WorkerFailed(f"{exit_reason(code)} while {self.stage}")
        return WorkerFailed(f"{what} while {self.stage}")

    def _exchange(
        self, meta: dict[str, Any], payload: bytes, max_payload: int, seconds: float | None = None
    ) -> tuple[dict[str, Any], bytes]:
        deadline = self._deadline(seconds)
        try:
            write_frame(self.proc.stdin.fileno(), meta, payload, deadline)
            answer, data = read_frame(self.proc.stdout.fileno(), max_payload, deadline)
        except ChannelTimeout:
            raise self._fail(
                f"timed out after {seconds or self.limits.wall_seconds:.0f} s"
            ) from None
        except ChannelError as e:
            raise self._fail(str(e)) from None
        except OSError:
            raise self._fail("the channel broke") from None
        if answer.get("op") == "error":
            raise self._fail("the kernel's answer was refused by the index", answered=True)
        return answer, data

    def start(self) -> None:
        """Send the setup and wait until the worker is ready (the graph loaded or,
        for the construction slot, built)."""
        self.stage = "building the index" if self.setup["slot"] == "construction" else "loading"
        answer, _ = self._exchange({"op": "setup", **self.setup}, b"", 0)
        if answer.get("op") != "ready":
            raise self._fail("an unexpected answer")
        self.n, self.dim = int(answer.get("n", -1)), int(answer.get("dim", -1))
        self.stage = "searching"

    def search(
        self, queries: np.ndarray, k: int, ef: int, filter_step: int = 0
    ) -> tuple[np.ndarray, np.ndarray, int, float]:
        """(ids, distances, distance computations, seconds): the time is the
        request's round trip, measured here. With `filter_step`, a filtered search
        over the ids divisible by it."""
        q = np.ascontiguousarray(queries, np.float32)
        nq = len(q)
        size = nq * k * 12
        self.resume()
        t0 = time.perf_counter()
        request = {"op": "search", "k": k, "ef": ef, "nq": nq}
        if filter_step:
            request["filter_step"] = int(filter_step)
        answer, data = self._exchange(request, q.tobytes(), size)
        seconds = time.perf_counter() - t0
        self.pause()
        if answer.get("op") != "result" or len(data) != size:
            raise self._fail("a malformed answer")
        ids = np.frombuffer(data, np.int64, nq * k).reshape(nq, k)
        dists = np.frombuffer(data, np.float32, nq * k, offset=nq * k * 8).reshape(nq, k)
        computed = answer.get("dist_count", 0)
        return ids, dists, int(computed) if isinstance(computed, int) else 0, seconds

    def export(self, max_bytes: int) -> bytes:
        """The worker's graph as a file image (validated by whoever loads it)."""
        self.resume()
        answer, data = self._exchange({"op": "export"}, b"", max_bytes)
        if answer.get("op") != "graph":
            raise self._fail("an unexpected answer")
        return data

    # -------------------------------------------------------- control
    def pause(self) -> None:
        """Stop every process of the worker (it cannot run while another is timed)."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def pin(self, cpu: int) -> int:
        """Move every thread of the worker's processes to `cpu` (from outside:
        the worker cannot undo it); returns the worker's largest thread count."""
        most = 0
        for pid in _descendants(self.proc.pid):
            tasks = os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else []
            most = max(most, len(tasks))
            for tid in tasks:
                try:
                    os.sched_setaffinity(int(tid), {cpu})
                except OSError:
                    pass
        return most

    def stderr_tail(self, limit: int = 4096) -> str:
        """The end of what the worker wrote to stderr: untrusted, for humans only."""
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - limit))
        return self._stderr.read(limit).decode("utf-8", "replace")

    def close(self) -> None:
        self.resume()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        kill_group(self.proc)
        for f in (self.proc.stdout, self._stderr):
            f.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return out


# ------------------------------------------------------------------ builds
@dataclass
class CommandResult:
    ok: bool
    output: str  # stdout and stderr, cut to `output_bytes` (untrusted)
    reason: str  # the loop's words; "" when ok
    seconds: float


def run_jailed(
    argv: list[str],
    *,
    readonly: Sequence[str],
    writable: Sequence[str],
    cwd: str,
    env: dict[str, str],
    limits: Limits,
    seccomp_profile: str | None = "build",
    output_bytes: int = 256 << 10,
) -> CommandResult:
    """Run `argv` in the jail (a build), its output bounded, its whole process tree
    killed at `limits.wall_seconds`."""
    spec = jail.JailSpec(
        readonly=list(readonly), writable=list(writable), cwd=cwd, env=env,
        limits=_jail_limits(limits), seccomp=seccomp_profile if seccomp.supported() else None,
    )  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryFile(prefix="evidex-crinn-build-") as out:
        proc = spawn(spec, argv, subprocess.DEVNULL, out, out)
        try:
            code = proc.wait(timeout=limits.wall_seconds)
            # 1: the tool itself said no (a compile error); anything else is how it ended.
            reason = "" if code == 0 else "failed" if code == 1 else exit_reason(code)
        except subprocess.TimeoutExpired:
            reason = f"timed out after {limits.wall_seconds:.0f} s"
        finally:
            kill_group(proc)
        out.seek(0)
        text = out.read(output_bytes).decode("utf-8", "replace")
    return CommandResult(not reason, text, reason, time.perf_counter() - start)


# ------------------------------------------------------------------ pools
class Pool(Protocol):
    """Runs jobs; the loop's only dependency on how workers are scheduled."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]: ...


class LocalPool:
    """Up to `workers` jobs at once on this machine (threads that each wait on
    sandboxed processes; each measurement gets a core of its own)."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, workers)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        items = list(items)
        if self.workers == 1 or len(items) <= 1:
            return iter([fn(x) for x in items])
        with ThreadPoolExecutor(self.workers) as ex:
            return iter(list(ex.map(fn, items)))
