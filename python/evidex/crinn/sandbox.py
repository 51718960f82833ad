"""Running untrusted candidate kernels: a separate worker process per evaluation.

What is isolated (Linux):

- resource limits (``setrlimit``): CPU seconds, address space, file size, open
  files, processes, no core dumps; plus a wall-clock timeout after which the
  worker's whole process group is killed;
- a scrubbed environment (no inherited variables but a fixed PATH and thread
  counts) and a fresh working directory;
- a new network namespace when the system allows it (root, or unprivileged user
  namespaces), so the worker has no network interface but loopback;
- on x86-64, a seccomp filter installed *before* the candidate library is
  loaded: creating processes or threads, ``execve``, every socket call, opening
  files for writing, and deleting, renaming, linking or chmod-ing files kill the
  worker (SIGSYS); threads are allowed (a construction worker builds with several).
  Reading files stays possible (the worker must read the index and the dataset),
  so a candidate can read what the user running the loop can.

Not isolated: reads of the file system, and CPU caches and memory bandwidth
shared with the host. Without seccomp (other architectures) writes and network
are limited only by the namespace and the limits above.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Limits:
    """Resource limits of one worker."""

    cpu_seconds: int = 120
    wall_seconds: float = 180.0
    memory_bytes: int = 4 << 30
    file_bytes: int = 1 << 20
    open_files: int = 256
    processes: int = 64


@dataclass
class WorkerResult:
    ok: bool
    result: dict[str, Any]
    reason: str  # "" when ok
    stderr: str


# ------------------------------------------------------------------ isolation
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


def _unshare_network() -> str:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNET) == 0:
        return "netns"
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
        return "userns+netns"
    return "none"


def _preexec(limits: Limits) -> Callable[[], None]:
    def apply() -> None:
        os.setsid()
        for what, value in (
            (resource.RLIMIT_CPU, limits.cpu_seconds),  # SIGXCPU, then SIGKILL 1 s on
            (resource.RLIMIT_AS, limits.memory_bytes),
            (resource.RLIMIT_FSIZE, limits.file_bytes),
            (resource.RLIMIT_NOFILE, limits.open_files),
            (resource.RLIMIT_NPROC, limits.processes),
            (resource.RLIMIT_CORE, 0),
        ):
            hard = value + 1 if what == resource.RLIMIT_CPU else value
            resource.setrlimit(what, (value, hard))
        os.environ["EVIDEX_SANDBOX_NET"] = _unshare_network()

    return apply


# x86-64 seccomp-bpf: the syscalls a benchmark never needs once it has started.
_DENY_X86_64 = {
    "fork": 57, "vfork": 58, "execve": 59, "execveat": 322,
    "socket": 41, "connect": 42, "accept": 43, "sendto": 44, "bind": 49, "listen": 50,
    "socketpair": 53, "accept4": 288, "sendmsg": 46, "sendmmsg": 307,
    "unlink": 87, "unlinkat": 263, "rename": 82, "renameat": 264, "renameat2": 316,
    "mkdir": 83, "mkdirat": 258, "rmdir": 84, "truncate": 76, "ftruncate": 77, "creat": 85,
    "link": 86, "linkat": 265, "symlink": 88, "symlinkat": 266, "chmod": 90, "fchmod": 91,
    "fchmodat": 268, "chown": 92, "fchown": 93, "fchownat": 260, "lchown": 94,
    "kill": 62, "ptrace": 101, "mount": 165, "umount2": 166, "unshare": 272, "setns": 308,
    "process_vm_writev": 311, "openat2": 437, "reboot": 169, "init_module": 175,
    "finit_module": 313, "delete_module": 176, "io_uring_setup": 425,
}  # fmt: skip
_OPEN, _OPENAT, _CLONE, _CLONE3 = 2, 257, 56, 435
_CLONE_THREAD = 0x10000
_WRITE_FLAGS = (
    0o1 | 0o2 | 0o100 | 0o1000 | 0o2000 | 0o20000000
)  # WRONLY RDWR CREAT TRUNC APPEND TMPFILE


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def install_seccomp() -> bool:
    """Forbid the syscalls in _DENY_X86_64, opening files for writing and creating
    processes (threads stay allowed), for this process and its threads, for good.
    Returns False where unsupported."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return False
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, KILL, ERRNO_ENOSYS = 0x7FFF0000, 0x80000000, 0x00050000 | 38
    prog: list[tuple[int, Any, Any, int]] = [
        (LD, 0, 0, 4),  # arch
        (JEQ, 1, 0, 0xC000003E),
        (RET, 0, 0, KILL),
        (LD, 0, 0, 0),  # syscall number
        (JGE, "kill", 0, 0x40000000),  # x32 ABI
    ]
    for nr in sorted(_DENY_X86_64.values()):
        prog.append((JEQ, "kill", 0, nr))
    prog += [
        (JEQ, "open", 0, _OPEN),
        (JEQ, "openat", 0, _OPENAT),
        (JEQ, "clone", 0, _CLONE),
        (JEQ, "enosys", 0, _CLONE3),
        (RET, 0, 0, ALLOW),
    ]
    labels = {"open": len(prog)}
    prog += [(LD, 0, 0, 16 + 8 * 1), (JSET, "kill", 0, _WRITE_FLAGS), (RET, 0, 0, ALLOW)]
    labels["openat"] = len(prog)
    prog += [(LD, 0, 0, 16 + 8 * 2), (JSET, "kill", 0, _WRITE_FLAGS), (RET, 0, 0, ALLOW)]
    # Threads may be made (clone with CLONE_THREAD), processes may not. clone3 hides
    # its flags in memory a filter cannot read: it fails with ENOSYS, and the C
    # library falls back to clone.
    labels["clone"] = len(prog)
    prog += [(LD, 0, 0, 16), (JSET, 0, "kill", _CLONE_THREAD), (RET, 0, 0, ALLOW)]
    labels["enosys"] = len(prog)
    prog.append((RET, 0, 0, ERRNO_ENOSYS))
    labels["kill"] = len(prog)
    prog.append((RET, 0, 0, KILL))
    filters = (_SockFilter * len(prog))()
    for i, (code, jt, jf, k) in enumerate(prog):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        filters[i] = _SockFilter(code, jt, jf, k)
    fprog = _SockFprog(len(prog), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    # seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC): all threads.
    if libc.syscall(317, 1, 1, ctypes.byref(fprog)) != 0:
        return False
    return True


# ------------------------------------------------------------------ running
def run_worker(spec: dict[str, Any], limits: Limits | None = None) -> WorkerResult:
    """Run ``python -m evidex.crinn.worker`` on `spec` in the sandbox."""
    limits = limits or Limits()
    with tempfile.TemporaryDirectory(prefix="evidex-crinn-run-") as cwd:
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": cwd,
            "TMPDIR": cwd,
            "LC_ALL": "C",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        if "PYTHONPATH" in os.environ:  # a source checkout run without installing
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        proc = subprocess.Popen(
            [sys.executable, "-m", "evidex.crinn.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=env,
            text=True,
            preexec_fn=_preexec(limits),
        )
        try:
            out, err = proc.communicate(json.dumps(spec), timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            return WorkerResult(
                False, {}, f"timed out after {limits.wall_seconds:.0f} s (wall clock)", err[-4000:]
            )
        finally:
            _kill_group(proc)  # whatever it left behind
    return _interpret(proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


_SIGNAL_REASONS = {
    signal.SIGSYS: "sandbox violation: a forbidden system call (process creation, network, "
    "file write or deletion)",
    signal.SIGSEGV: "crashed (segmentation fault)",
    signal.SIGBUS: "crashed (bus error)",
    signal.SIGFPE: "crashed (floating-point exception)",
    signal.SIGILL: "crashed (illegal instruction)",
    signal.SIGABRT: "crashed (abort)",
    signal.SIGXCPU: "CPU time limit exceeded",
    signal.SIGXFSZ: "file size limit exceeded",
    signal.SIGKILL: "killed (memory or time limit)",
}


def _interpret(returncode: int, out: str, err: str) -> WorkerResult:
    stage = ""
    for line in err.splitlines():
        if line.startswith("evidex-worker-stage: "):
            stage = line.split(": ", 1)[1]
    where = f" while {stage}" if stage else ""
    if returncode < 0:
        sig = signal.Signals(-returncode)
        reason = _SIGNAL_REASONS.get(sig, f"killed by {sig.name}")
        return WorkerResult(False, {}, reason + where, err[-4000:])
    lines = [line for line in out.splitlines() if line.strip()]
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if returncode != 0 or not isinstance(result, dict):
        tail = err.strip().splitlines()[-1:] or ["no output"]
        if "MemoryError" in err or "bad_alloc" in err:
            return WorkerResult(False, {}, "memory limit exceeded" + where, err[-4000:])
        return WorkerResult(
            False, {}, f"worker failed{where} (exit {returncode}): {tail[0][:300]}", err[-4000:]
        )
    if result.get("error"):
        return WorkerResult(False, result, f"{result['error']}{where}", err[-4000:])
    return WorkerResult(True, result, "", err[-4000:])


class Pool(Protocol):
    """Runs jobs; the loop's only dependency on how workers are scheduled."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]: ...


class LocalPool:
    """Up to `workers` sandboxed workers at once on this machine (threads that
    each wait on a worker process)."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, workers)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        items = list(items)
        if self.workers == 1 or len(items) <= 1:
            return iter([fn(x) for x in items])
        with ThreadPoolExecutor(self.workers) as ex:
            return iter(list(ex.map(fn, items)))
