"""A namespace jail for untrusted work (CRINN candidate builds and benchmarks), Linux.

``python -m evidex.crinn.jail SPEC -- ARGV...`` runs ARGV so that it

- is an unprivileged user: a new user namespace maps its uid to ``nobody`` when the
  loop runs as root (else to the user's own uid), with every capability dropped
  (bounding set included), ``SECBIT_NOROOT`` locked and ``no_new_privs``, so no
  exec gives any back;
- has its own pid, mount, ipc, network, uts and cgroup namespaces: it sees none of
  the host's processes (the parent is invisible; ``/proc`` is a fresh one of its own
  namespace), has no network interface but a loopback that is down, and dies
  whole (every process it started) when its first process dies;
- sees a minimal root: a fresh tmpfs holding read-only binds of the paths the
  spec names (the Python installation, the compiler, the run's files), writable
  binds of the few it must write (a build folder), ``/dev/null`` and a small
  ``/tmp``; nothing else of the host's file system exists for it;
- runs under resource limits (CPU seconds, address space, file size, open files,
  processes), with an optional seccomp profile (``seccomp.py``) installed before
  the exec, and is killed with its parent (``PR_SET_PDEATHSIG``).

`probe` tells whether the system allows it (unprivileged user namespaces may be
switched off, or a container may forbid them); callers then say so loudly.
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
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

# clone flags
_NEWNS, _NEWCGROUP, _NEWUTS, _NEWIPC = 0x20000, 0x02000000, 0x04000000, 0x08000000
_NEWUSER, _NEWPID, _NEWNET = 0x10000000, 0x20000000, 0x40000000
# mount flags
_RDONLY, _NOSUID, _NODEV, _NOEXEC, _REMOUNT = 1, 2, 4, 8, 32
_NOATIME, _NODIRATIME, _BIND, _REC, _PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
_RELATIME, _STRICTATIME = 1 << 21, 1 << 24
_MNT_DETACH = 2
_OPTION_FLAGS = {
    "nosuid": _NOSUID, "nodev": _NODEV, "noexec": _NOEXEC, "noatime": _NOATIME,
    "nodiratime": _NODIRATIME, "relatime": _RELATIME, "strictatime": _STRICTATIME,
}  # fmt: skip
_SYSCALLS = {  # (pivot_root, capset) per architecture
    "x86_64": (155, 126),
    "aarch64": (41, 91),
}
_NOBODY = 65534
SETUP_FAILED = 125  # exit status of a jail that could not be set up


@dataclass
class JailLimits:
    """Resource limits (setrlimit) inside the jail."""

    cpu_seconds: int = 120
    memory_bytes: int = 4 << 30
    file_bytes: int = 64 << 20
    open_files: int = 256
    processes: int = 64


@dataclass
class JailSpec:
    """What the jailed program sees and may do."""

    readonly: list[str] = field(default_factory=list)  # host paths, same path inside
    writable: list[str] = field(default_factory=list)
    cwd: str = "/"
    env: dict[str, str] = field(default_factory=dict)
    limits: JailLimits = field(default_factory=JailLimits)
    seccomp: str | None = None  # a profile of seccomp.py, installed before the exec
    devices: list[str] = field(default_factory=lambda: ["/dev/null"])
    tmp_bytes: int = 64 << 20
    cpus: list[int] | None = None  # CPU affinity, set before anything starts
    # False where namespaces cannot be had: limits, affinity, no_new_privs and the
    # seccomp profile only (the caller says so loudly).
    isolate: bool = True


def system_paths() -> list[str]:
    """What a dynamically linked program needs from the host: its loader, libraries
    and binaries (no /etc but the loader's cache, no /home, no /root)."""
    paths = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt"]
    paths += ["/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives"]
    return [p for p in paths if os.path.lexists(p)]


def python_paths() -> list[str]:
    """What this Python and its installed packages (evidex included) need."""
    import evidex

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.update(p for p in sys.path if p and os.path.isdir(p))
    paths.update(str(Path(p).resolve()) for p in evidex.__path__)
    paths.add(str(Path(evidex._core.__file__).resolve().parent))
    paths.add(str(Path(sys.executable).resolve().parent))
    try:
        import numpy

        paths.add(str(Path(numpy.__file__).resolve().parent.parent))
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return sorted(_minimal(paths))


def _minimal(paths: Iterable[str]) -> set[str]:
    """Drop paths inside another one of the set."""
    out: set[str] = set()
    for p in sorted({os.path.abspath(p) for p in paths}, key=len):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.add(p)
    return out


def command(spec: JailSpec, argv: list[str]) -> list[str]:
    """The command line that runs `argv` in the jail. The launcher runs as a plain
    script in isolated mode: no package import (so no thread starts before the
    unshare, which needs a single-threaded process) and nothing from the
    environment."""
    return [sys.executable, "-I", __file__, json.dumps(asdict(spec)), "--", *argv]


@lru_cache(maxsize=1)
def probe() -> tuple[bool, str]:
    """(True, "") if jails work here, else (False, why)."""
    if sys.platform != "linux" or platform.machine() not in _SYSCALLS:
        return False, f"namespaces jails need Linux on x86-64 or aarch64 ({sys.platform})"
    spec = JailSpec(readonly=system_paths() + python_paths(), env={"PATH": "/usr/bin:/bin"})
    try:
        r = subprocess.run(
            command(spec, [sys.executable, "-c", "import evidex"]),
            capture_output=True, text=True, timeout=60, env=spec.env,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("evidex-jail:")]
        return False, (lines[-1] if lines else r.stderr.strip()[-300:]) or f"exit {r.returncode}"
    return True, ""


# ------------------------------------------------------------------ inside
class SetupError(Exception):
    pass


_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)}")


def _mount(src: str | None, dst: str, fstype: str | None, flags: int, data: str | None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(
        _libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)),
        f"mount {src or fstype} on {dst}",
    )


def _pivot_root(new: str, old: str) -> None:
    nr = _SYSCALLS[platform.machine()][0]
    _check(_libc.syscall(nr, new.encode(), old.encode()), f"pivot_root {new}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _unescape(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field_):
        digits = field_[i + 1 : i + 4]
        if field_[i] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(field_[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def _remount_readonly(top: str, mountinfo: str) -> None:
    """Make `top` and every mount below it read-only, keeping the flags a
    less privileged namespace must keep (nosuid, nodev, noexec, atime)."""
    with open(mountinfo) as f:
        lines = f.read().splitlines()
    for line in lines:
        parts = line.split()
        target = _unescape(parts[4])
        if target != top and not target.startswith(top.rstrip("/") + "/"):
            continue
        flags = _REMOUNT | _BIND | _RDONLY
        for opt in parts[5].split(","):
            flags |= _OPTION_FLAGS.get(opt, 0)
        _mount(None, target, None, flags, None)


@dataclass
class _Entry:
    """A host path to show in the jail, opened by the launcher on the host (an
    O_PATH descriptor), so that folders only root may cross (a Python under
    /root) are reachable although the jail itself is nobody."""

    path: str
    kind: str  # "dir", "file" or "link"
    writable: bool
    fd: int = -1
    link: str = ""


def _open_entries(spec: JailSpec) -> list[_Entry]:
    entries = []
    wanted = [(p, False) for p in spec.readonly] + [(p, True) for p in spec.writable]
    wanted += [(d, True) for d in spec.devices]
    for path, writable in sorted(wanted, key=lambda w: (len(w[0]), w[1])):
        path = os.path.abspath(path)
        if path == "/":
            raise SetupError("the host's root cannot be bound into the jail")
        if not os.path.lexists(path):
            continue
        if os.path.islink(path):
            entries.append(_Entry(path, "link", writable, link=os.readlink(path)))
            continue
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        kind = "dir" if os.path.isdir(path) else "file"
        entries.append(_Entry(path, kind, writable, fd=fd))
    return entries


def _bind(entry: _Entry, mountinfo: str) -> None:
    dst = "/newroot" + entry.path
    if entry.kind == "link":
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.lexists(dst):
            os.symlink(entry.link, dst)
        return
    if entry.kind == "dir":
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if not os.path.exists(dst):
            open(dst, "w").close()
    _mount(f"/oldroot/proc/self/fd/{entry.fd}", dst, None, _BIND | _REC, None)
    if not entry.writable:
        _remount_readonly(dst, mountinfo)


def _build_root(spec: JailSpec, entries: list[_Entry]) -> None:
    """Pivot into a fresh tmpfs holding only what the spec names (bubblewrap's way:
    first pivot into a scratch tmpfs so the host tree is reachable as /oldroot)."""
    _mount(None, "/", None, _REC | _PRIVATE, None)
    base = "/tmp" if os.path.isdir("/tmp") else "/mnt"
    _mount("tmpfs", base, "tmpfs", _NODEV | _NOSUID, "mode=0755,size=1m")
    os.chdir(base)
    os.mkdir("newroot")
    os.mkdir("oldroot")
    _pivot_root(".", "oldroot")
    os.chdir("/")
    _mount("tmpfs", "/newroot", "tmpfs", _NODEV | _NOSUID, "mode=0755,size=1m")
    # /tmp first: binds of paths under the host's /tmp go on top of it.
    os.makedirs("/newroot/tmp", exist_ok=True)
    _mount("tmpfs", "/newroot/tmp", "tmpfs", _NODEV | _NOSUID, f"mode=1777,size={spec.tmp_bytes}")
    info = "/oldroot/proc/self/mountinfo"
    for entry in entries:
        _bind(entry, info)
    os.makedirs("/newroot/proc", exist_ok=True)
    try:  # a procfs of our own pid namespace: only the jail's processes
        _mount("proc", "/newroot/proc", "proc", _NOSUID | _NODEV | _NOEXEC, None)
    except SetupError:
        pass  # some containers forbid it: then /proc is an empty folder
    os.mkdir("/newroot/.oldroot")
    _pivot_root("/newroot", "/newroot/.oldroot")
    os.chdir("/")
    _check(_libc.umount2(b"/.oldroot", _MNT_DETACH), "umount the host's root")
    os.rmdir("/.oldroot")
    _mount(None, "/", None, _REMOUNT | _BIND | _RDONLY | _NODEV | _NOSUID, None)
    os.chdir(spec.cwd)


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies (set after any change of ids,
    which clears it)."""
    _check(_libc.prctl(1, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def _drop_privileges() -> None:
    """No capabilities now or after any exec; no new privileges."""
    # SECBIT_NOROOT, NO_SETUID_FIXUP and NO_CAP_AMBIENT_RAISE, each locked, and
    # KEEP_CAPS locked off: uid 0 inside never brings capabilities back.
    _check(_libc.prctl(28, 0xEF, 0, 0, 0), "prctl(PR_SET_SECUREBITS)")
    for cap in range(64):
        if _libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP; EINVAL past the last
            break
    _libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]  # fmt: skip

    header, data = Header(0x20080522, 0), (Data * 2)()
    nr = _SYSCALLS[platform.machine()][1]
    _check(_libc.syscall(nr, ctypes.byref(header), ctypes.byref(data)), "capset")
    _check(_libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def _set_limits(limits: JailLimits) -> None:
    for what, value in (
        (resource.RLIMIT_CPU, limits.cpu_seconds),
        (resource.RLIMIT_AS, limits.memory_bytes),
        (resource.RLIMIT_FSIZE, limits.file_bytes),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_NPROC, limits.processes),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(what, (value, value))


def _load_sibling(name: str):  # noqa: ANN202 - a module
    """A module beside this file, imported by path (this file runs as a script)."""
    import importlib.util

    loader = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    return module


def _fail(step: str, err: BaseException) -> None:
    sys.stderr.write(f"evidex-jail: {step}: {err}\n")
    sys.stderr.flush()
    os._exit(SETUP_FAILED)


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: python -m evidex.crinn.jail SPEC -- ARGV...\n")
        os._exit(2)
    raw = json.loads(argv[0])
    raw["limits"] = JailLimits(**raw["limits"])
    spec = JailSpec(**raw)
    target = argv[2:]
    if spec.cpus:
        os.sched_setaffinity(0, spec.cpus)
    if not spec.isolate:
        _weak(spec, target)
    outer_uid, outer_gid = os.geteuid(), os.getegid()
    ready_r, ready_w = os.pipe()
    mapped_r, mapped_w = os.pipe()
    inner = os.fork()
    if inner == 0:
        _inner(spec, target, ready_w, mapped_r)
    # The outer launcher, on the host: map the inner one's ids (only a process of
    # the parent namespace may map root to nobody), then wait and report.
    os.close(ready_w)
    os.close(mapped_r)
    if os.read(ready_r, 1) != b"1":
        _wait_and_exit(inner)
    try:
        # Root outside maps to nobody; anyone else to themselves. Inside: uid 0,
        # with no capabilities once set up.
        uid = _NOBODY if outer_uid == 0 else outer_uid
        gid = _NOBODY if outer_uid == 0 else outer_gid
        _write(f"/proc/{inner}/setgroups", "deny")
        _write(f"/proc/{inner}/uid_map", f"0 {uid} 1")
        _write(f"/proc/{inner}/gid_map", f"0 {gid} 1")
        os.write(mapped_w, b"1")
    except OSError as e:
        os.kill(inner, signal.SIGKILL)
        _fail("user namespace id maps", e)
    _wait_and_exit(inner)


def _inner(spec: JailSpec, target: list[str], ready_w: int, mapped_r: int) -> None:
    """In the new user namespace, outside the new pid namespace: start its first
    process, wait for it, report."""
    try:
        flags = _NEWUSER | _NEWNS | _NEWPID | _NEWNET | _NEWIPC | _NEWUTS | _NEWCGROUP
        _check(_libc.unshare(flags), "unshare (user namespaces may be disabled here)")
        # Opened in the new mount namespace but still as the caller's own uid, so
        # folders only it may cross (a Python under /root) can be bound.
        entries = _open_entries(spec)
    except (OSError, SetupError) as e:
        os.write(ready_w, b"0")
        _fail("namespaces", e)
    os.write(ready_w, b"1")
    if os.read(mapped_r, 1) != b"1":
        os._exit(SETUP_FAILED)
    try:
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        _die_with_parent()
    except (OSError, SetupError) as e:
        _fail("user namespace", e)
    first = os.fork()  # pid 1 of the new pid namespace
    if first == 0:
        try:
            _die_with_parent()
            _build_root(spec, entries)
            _libc.sethostname(b"evidex-jail", 11)
            _drop_privileges()
            _set_limits(spec.limits)
        except (OSError, SetupError, ValueError) as e:
            _fail("setup", e)
        _init(spec, target)
    _wait_and_exit(first, signals_as_status=True)


def _init(spec: JailSpec, target: list[str]) -> None:
    """Pid 1 of the jail: start the target as pid 2 (pid 1 ignores its own default
    signals, so abort() would not end it) and reap until the target ends; then
    report how it ended (a signal as 128 + its number) and so end the namespace."""
    pid = os.fork()
    if pid == 0:
        try:
            _die_with_parent()
            if spec.seccomp:
                _load_sibling("seccomp").install(spec.seccomp)
            os.execve(target[0], target, spec.env)
        except (OSError, SetupError, ValueError) as e:
            _fail(f"exec {target[0]}", e)
    for fd in (0, 1):
        os.close(fd)
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:  # pragma: no cover - the target is always a child
            os._exit(SETUP_FAILED)
        if done == pid:
            break
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status))


def _weak(spec: JailSpec, target: list[str]) -> None:
    """Without namespaces: what any process may do to itself, then the exec."""
    try:
        _die_with_parent()
        _check(_libc.prctl(38, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        _set_limits(spec.limits)
        os.chdir(spec.cwd)
        if spec.seccomp:
            _load_sibling("seccomp").install(spec.seccomp)
        os.execve(target[0], target, spec.env)
    except (OSError, SetupError, ValueError) as e:
        _fail("setup", e)


def _wait_and_exit(pid: int, signals_as_status: bool = False) -> None:
    """Wait for `pid` and end as it ended (the same signal, or exit status; with
    `signals_as_status`, a status 129-192 from the jail's pid 1 is a signal)."""
    for fd in (0, 1):
        try:
            os.close(fd)
        except OSError:
            pass
    _, status = os.waitpid(pid, 0)
    sig = 0
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
    elif signals_as_status and 128 < os.WEXITSTATUS(status) <= 192:
        sig = os.WEXITSTATUS(status) - 128
    if sig:
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status))


if __name__ == "__main__":
    main(sys.argv[1:])
