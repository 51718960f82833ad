"""seccomp-bpf filters for the CRINN sandbox (Linux, x86-64).

Two profiles:

- ``kernel``: **default deny** for the process that runs a candidate kernel. Only
  the calls a loaded kernel and the worker's read-compute-write loop need pass
  (memory, futexes, clocks, reading files, writing to stdout/stderr, signals
  on itself); a few pass only with safe arguments (``open`` for reading,
  ``write`` to fds 1 and 2, ``prlimit64`` without a new limit, ``clone`` for a
  thread where threads are allowed). Anything else kills the process (SIGSYS).
- ``build``: for the compiler (cmake, ninja, the C++ compiler). A compiler forks,
  execs, creates and renames files: its needs are too wide for an allow-list, so
  this profile denies the kernel's attack surface instead (ptrace, other
  processes' memory, mounts and namespaces, BPF, perf, keyrings, io_uring,
  userfaultfd, modules, sockets, file handles ...): such a call fails with
  ENOSYS (build tools probe for features and fall back). The compile's containment is
  the namespace jail (``jail.py``): an unprivileged user with no capabilities in
  a minimal read-only root whose one writable folder is the build folder.

Both need ``no_new_privs`` (set here) and apply to every thread (TSYNC).
"""

from __future__ import annotations

import ctypes
import platform
import sys
from typing import Any

# x86-64 system call numbers.
NR = {
    "read": 0, "write": 1, "open": 2, "close": 3, "stat": 4, "fstat": 5, "lstat": 6,
    "poll": 7, "lseek": 8, "mmap": 9, "mprotect": 10, "munmap": 11, "brk": 12,
    "rt_sigaction": 13, "rt_sigprocmask": 14, "rt_sigreturn": 15, "ioctl": 16,
    "pread64": 17, "pwrite64": 18, "readv": 19, "writev": 20, "access": 21, "pipe": 22,
    "select": 23, "sched_yield": 24, "mremap": 25, "msync": 26, "mincore": 27,
    "madvise": 28, "dup": 32, "dup2": 33, "nanosleep": 35, "getpid": 39, "socket": 41,
    "connect": 42, "accept": 43, "sendto": 44, "recvfrom": 45, "sendmsg": 46, "recvmsg": 47,
    "bind": 49, "listen": 50, "socketpair": 53, "clone": 56, "fork": 57, "vfork": 58,
    "execve": 59, "exit": 60, "wait4": 61, "kill": 62, "uname": 63, "fcntl": 72,
    "getcwd": 79, "readlink": 89, "gettimeofday": 96, "getrlimit": 97, "sysinfo": 99,
    "ptrace": 101, "getuid": 102, "getgid": 104, "geteuid": 107, "getegid": 108,
    "getppid": 110, "setsid": 112, "sigaltstack": 131, "personality": 135,
    "setpriority": 141, "sched_setparam": 142, "sched_setscheduler": 144, "mlock": 149,
    "prctl": 157, "arch_prctl": 158, "adjtimex": 159, "setrlimit": 160, "chroot": 161,
    "acct": 163, "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167,
    "swapoff": 168, "reboot": 169, "sethostname": 170, "setdomainname": 171, "iopl": 172,
    "ioperm": 173, "init_module": 175, "delete_module": 176, "quotactl": 179, "gettid": 186,
    "tkill": 200, "time": 201, "futex": 202, "sched_setaffinity": 203,
    "sched_getaffinity": 204, "lookup_dcookie": 212, "getdents64": 217,
    "set_tid_address": 218, "clock_settime": 227, "clock_gettime": 228,
    "clock_getres": 229, "clock_nanosleep": 230, "exit_group": 231, "tgkill": 234,
    "mbind": 237, "set_mempolicy": 238, "kexec_load": 246, "add_key": 248,
    "request_key": 249, "keyctl": 250, "ioprio_set": 251, "migrate_pages": 256,
    "openat": 257, "newfstatat": 262, "readlinkat": 267, "faccessat": 269, "pselect6": 270,
    "ppoll": 271, "unshare": 272, "set_robust_list": 273, "move_pages": 279,
    "perf_event_open": 298, "rt_tgsigqueueinfo": 297, "prlimit64": 302,
    "name_to_handle_at": 303, "open_by_handle_at": 304, "clock_adjtime": 305,
    "setns": 308, "getcpu": 309, "process_vm_readv": 310, "process_vm_writev": 311,
    "kcmp": 312, "finit_module": 313, "sched_setattr": 314, "seccomp": 317,
    "getrandom": 318, "memfd_create": 319, "kexec_file_load": 320, "bpf": 321,
    "execveat": 322, "userfaultfd": 323, "membarrier": 324, "pkey_mprotect": 329,
    "statx": 332, "rseq": 334, "pidfd_send_signal": 424, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "pidfd_open": 434,
    "clone3": 435, "openat2": 437, "pidfd_getfd": 438, "faccessat2": 439,
    "process_madvise": 440, "mount_setattr": 442, "landlock_create_ruleset": 444,
    "memfd_secret": 447, "process_mrelease": 448, "futex_waitv": 449,
    "rt_sigqueueinfo": 129, "mknod": 133, "mknodat": 259, "setxattr": 188,
    "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197, "lremovexattr": 198,
    "fremovexattr": 199, "utime": 132, "utimes": 235, "utimensat": 280, "futimesat": 261,
    "pivot_root": 155, "syslog": 103, "vhangup": 153, "nfsservctl": 180,
    "sched_getattr": 315, "get_mempolicy": 239,
}  # fmt: skip

_O_WRITE = (
    0o1 | 0o2 | 0o100 | 0o1000 | 0o2000 | 0o20000000
)  # WRONLY RDWR CREAT TRUNC APPEND TMPFILE
_CLONE_THREAD = 0x10000
_ARCH_GET = (0x1003, 0x1004, 0x1011, 0x1021, 0x1022)  # ARCH_GET_{FS,GS,CPUID,XCOMP_SUPP,XCOMP_PERM}
_F_GET_SET_FD_FL = (1, 2, 3)  # F_GETFD, F_SETFD, F_GETFL

# Calls a kernel and the worker loop make, allowed with any arguments.
_KERNEL_ALLOW = (
    "read", "pread64", "readv", "lseek", "close", "fstat", "stat", "lstat", "newfstatat",
    "statx", "access", "faccessat", "faccessat2", "readlink", "readlinkat", "getcwd",
    "getdents64", "mmap", "munmap", "mremap", "mprotect", "madvise", "brk", "mincore",
    "membarrier", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",
    "futex", "futex_waitv", "sched_yield", "set_robust_list", "rseq", "set_tid_address",
    "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday", "time",
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid", "uname",
    "sysinfo", "getrandom", "sched_getaffinity", "getcpu", "exit", "exit_group",
    "getrlimit",
)  # fmt: skip

# What a compiler may never do.
_BUILD_DENY = (
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "process_mrelease",
    "pidfd_open", "pidfd_getfd", "pidfd_send_signal", "kcmp", "mount", "umount2",
    "pivot_root", "chroot", "unshare", "setns", "open_tree", "move_mount", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr", "open_by_handle_at",
    "name_to_handle_at", "bpf", "perf_event_open", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon",
    "swapoff", "syslog", "acct", "quotactl", "sethostname", "setdomainname",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm",
    "lookup_dcookie", "vhangup", "nfsservctl", "mbind", "set_mempolicy", "migrate_pages",
    "move_pages", "socket", "socketpair", "connect", "bind", "listen", "accept", "sendto",
    "sendmsg", "setpriority", "ioprio_set", "sched_setscheduler", "sched_setparam",
    "sched_setattr", "memfd_secret",
)  # fmt: skip

PROFILES = ("kernel", "kernel-threads", "build")

_LD, _JEQ, _JGE, _JSET, _RET, _AND = 0x20, 0x15, 0x35, 0x45, 0x06, 0x54
_ALLOW, _KILL_PROCESS = 0x7FFF0000, 0x80000000
_ERRNO = 0x00050000
_ENOSYS, _EPERM = 38, 1
_AUDIT_ARCH_X86_64 = 0xC000003E


def supported() -> bool:
    """seccomp filters can be built here (Linux on x86-64)."""
    return sys.platform == "linux" and platform.machine() == "x86_64"


class _Program:
    """A BPF program with symbolic jump targets."""

    def __init__(self) -> None:
        self.code: list[tuple[int, Any, Any, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int, jt: Any = 0, jf: Any = 0) -> None:
        self.code.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def allow_if(self, offset: int, values: tuple[int, ...]) -> None:
        """Allow when the 32-bit word at `offset` is one of `values`, else kill."""
        self.op(_LD, offset)
        for i, v in enumerate(values):
            self.op(_JEQ, v, "allow", 0 if i < len(values) - 1 else "kill")

    def require_zero(self, offset: int) -> None:
        """Kill unless the 32-bit word at `offset` is 0 (a high half, a NULL)."""
        self.op(_LD, offset)
        self.op(_JEQ, 0, 0, "kill")

    def assemble(self) -> list[tuple[int, int, int, int]]:
        out = []
        for i, (code, jt, jf, k) in enumerate(self.code):
            jt = self.labels[jt] - i - 1 if isinstance(jt, str) else jt
            jf = self.labels[jf] - i - 1 if isinstance(jf, str) else jf
            if not (0 <= jt < 256 and 0 <= jf < 256):
                raise ValueError("seccomp program too long for its jumps")
            out.append((code, jt, jf, k))
        return out


def _arg_lo(i: int) -> int:
    return 16 + 8 * i  # low 32 bits of argument i (little-endian)


def _arg_hi(i: int) -> int:
    return 20 + 8 * i


def build(profile: str, self_pid: int = 0) -> list[tuple[int, int, int, int]]:
    """The filter of `profile` as (code, jt, jf, k) instructions. `self_pid`: the
    process the kernel profile runs in, which may signal itself (abort, raise)
    and nothing else."""
    if profile not in PROFILES:
        raise ValueError(f"unknown seccomp profile {profile!r}; expected one of {PROFILES}")
    p = _Program()
    p.op(_LD, 4)  # arch: anything but x86-64 (i386, x32 numbers) is killed
    p.op(_JEQ, _AUDIT_ARCH_X86_64, 0, "kill")
    p.op(_LD, 0)  # syscall number
    p.op(_JGE, 0x40000000, "kill", 0)
    if profile == "build":
        # Build tools probe for features (libuv tries io_uring): a denied call
        # fails with ENOSYS, as on a kernel without it, instead of killing them.
        for name in sorted(set(_BUILD_DENY)):
            p.op(_JEQ, NR[name], "enosys", 0)
        p.op(_JEQ, NR["clone3"], "enosys", 0)  # flags unreadable here; glibc falls back
        p.op(_RET, _ALLOW)
    else:
        for name in _KERNEL_ALLOW:
            p.op(_JEQ, NR[name], "allow", 0)
        p.op(_JEQ, NR["write"], "write", 0)
        p.op(_JEQ, NR["open"], "open", 0)
        p.op(_JEQ, NR["openat"], "openat", 0)
        p.op(_JEQ, NR["prlimit64"], "prlimit", 0)
        p.op(_JEQ, NR["fcntl"], "fcntl", 0)
        p.op(_JEQ, NR["arch_prctl"], "arch_prctl", 0)
        p.op(_JEQ, NR["ioctl"], "ioctl", 0)
        p.op(_JEQ, NR["prctl"], "prctl", 0)
        p.op(_JEQ, NR["seccomp"], "seccomp", 0)
        p.op(_JEQ, NR["clone3"], "enosys", 0)
        p.op(_JEQ, NR["openat2"], "enosys", 0)
        if profile == "kernel-threads":
            p.op(_JEQ, NR["clone"], "clone", 0)
        if self_pid > 0:
            p.op(_JEQ, NR["tgkill"], "self", 0)
            p.op(_JEQ, NR["kill"], "self", 0)
        p.op(_RET, _KILL_PROCESS)
        # kill(pid, sig) / tgkill(tgid, tid, sig): this process only.
        p.label("self")
        p.require_zero(_arg_hi(0))
        p.allow_if(_arg_lo(0), (max(self_pid, 0),))
        # write(fd, ...): stdout (the channel) and stderr only.
        p.label("write")
        p.require_zero(_arg_hi(0))
        p.allow_if(_arg_lo(0), (1, 2))
        # open(path, flags) / openat(dir, path, flags): reading only.
        p.label("open")
        p.op(_LD, _arg_lo(1))
        p.op(_JSET, _O_WRITE, "kill", "allow")
        p.label("openat")
        p.op(_LD, _arg_lo(2))
        p.op(_JSET, _O_WRITE, "kill", "allow")
        # prlimit64(pid, resource, new, old): reading a limit, never setting one.
        p.label("prlimit")
        p.require_zero(_arg_lo(2))
        p.allow_if(_arg_hi(2), (0,))
        p.label("fcntl")
        p.allow_if(_arg_lo(1), _F_GET_SET_FD_FL)
        p.label("arch_prctl")
        p.allow_if(_arg_lo(0), _ARCH_GET)
        # prctl(PR_SET_NO_NEW_PRIVS) and seccomp(SET_MODE_FILTER): only ever more
        # restrictions (the worker adds a filter once its build threads are done).
        p.label("prctl")
        p.allow_if(_arg_lo(0), (38,))
        p.label("seccomp")
        p.allow_if(_arg_lo(0), (1,))
        # ioctl: only TCGETS (isatty), which fails harmlessly on pipes.
        p.label("ioctl")
        p.allow_if(_arg_lo(1), (0x5401,))
        if profile == "kernel-threads":
            # clone(flags, ...): a thread of this process, never a new process.
            p.label("clone")
            p.op(_LD, _arg_lo(0))
            p.op(_JSET, _CLONE_THREAD, "allow", "kill")
        p.label("allow")
        p.op(_RET, _ALLOW)
    p.label("enosys")
    p.op(_RET, _ERRNO | _ENOSYS)
    p.label("kill")
    p.op(_RET, _KILL_PROCESS)
    return p.assemble()


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def install(profile: str, self_pid: int = 0) -> None:
    """Install `profile` on this process and all its threads, for good (the kernel
    profiles let `self_pid`, this process, signal itself).

    Raises:
        OSError: seccomp is not available (not Linux on x86-64, or refused).
    """
    if not supported():
        raise OSError(f"seccomp filters are not supported on {sys.platform}/{platform.machine()}")
    prog = build(profile, self_pid)
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    # seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, prog): every thread.
    if libc.syscall(NR["seccomp"], 1, 1, ctypes.byref(fprog)) != 0:
        raise OSError(ctypes.get_errno(), "seccomp(SECCOMP_SET_MODE_FILTER) failed")
