"""Building a candidate kernel: a generated CMake project, compiled in the jail.

The compile runs sandboxed like the candidate itself (``sandbox.run_jailed``): an
unprivileged user without capabilities in a minimal read-only root whose only
writable folder is the build folder, no network, the ``build`` seccomp profile,
limits on CPU time, memory, file size and wall-clock time (its whole process
tree dies at the timeout), a scrubbed environment and bounded output. The
library must stay under `max_library_bytes`.

Candidates are built for the machine that runs them: with ``native`` they get
every instruction-set extension this CPU has (explicit ``-m`` flags, never
``-march=native``, so the list is known) and declare that list in the library
(``EVIDEX_KERNEL_CPU_FEATURES``); the loader refuses the library on a CPU that
lacks any of them. The ``crinn`` extra installs CMake and Ninja from PyPI.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import _core
from ..kernels import abi_header
from . import jail
from .sandbox import Limits, run_jailed

CMAKE_PROJECT = """cmake_minimum_required(VERSION 3.18)
project(evidex_crinn_candidate CXX)
set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
if(NOT CMAKE_BUILD_TYPE)
  set(CMAKE_BUILD_TYPE Release)
endif()
add_library(kernel SHARED kernel.cpp cpu_features.cpp)
target_include_directories(kernel PRIVATE "{include}")
target_compile_options(kernel PRIVATE -O3 {flags} -fvisibility=hidden -fno-math-errno)
set_target_properties(kernel PROPERTIES PREFIX "" OUTPUT_NAME kernel SUFFIX ".so")
"""

FEATURES_SOURCE = """// Generated: the CPU features this library was compiled for.
#include "evidex/kernel_abi.h"
EVIDEX_KERNEL_CPU_FEATURES("{features}");
"""

# Extensions enabled one by one (older compilers know every name here); their
# names are GCC's -m names and evidex's cpu_features names alike.
_X86_FEATURES = (
    "sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "cx16", "avx", "avx2", "fma", "f16c", "bmi",
    "bmi2", "lzcnt", "movbe", "xsave", "pclmul", "aes", "sha", "adx", "rdrnd", "rdseed",
    "prfchw", "avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512vnni",
    "avx512bf16", "avx512vbmi", "avx512vbmi2", "avx512bitalg", "avx512vpopcntdq",
    "avx512ifma", "gfni", "vaes", "vpclmulqdq",
)  # fmt: skip

DEFAULT_BUILD_LIMITS = Limits(
    cpu_seconds=120, wall_seconds=120.0, memory_bytes=4 << 30, file_bytes=64 << 20,
    open_files=512, processes=256,
)  # fmt: skip
MAX_LIBRARY_BYTES = 32 << 20


@dataclass
class BuildResult:
    ok: bool
    library: Path | None
    log: str  # the compiler's output (untrusted, for humans)
    seconds: float
    reason: str = ""  # why it failed, in the loop's words plus kernel.cpp's diagnostics
    features: tuple[str, ...] = ()


def native_features() -> tuple[str, ...]:
    """This CPU's extensions that candidates are compiled for (x86-64)."""
    have = set(_core.cpu_features())
    return tuple(f for f in _X86_FEATURES if f in have)


def compile_flags(native: bool) -> tuple[list[str], tuple[str, ...]]:
    """(compiler flags, declared features)."""
    import platform

    if not native or platform.machine() not in ("x86_64", "AMD64"):
        return [], ()
    features = native_features()
    return ["-march=x86-64", "-mtune=native", *(f"-m{f}" for f in features)], features


def _tool(name: str) -> str | None:
    try:  # the PyPI packages put their binaries beside the module
        if name == "cmake":
            import cmake

            path = os.path.join(cmake.CMAKE_BIN_DIR, "cmake")
        else:
            import ninja

            path = os.path.join(ninja.BIN_DIR, "ninja")
        if os.path.isfile(path):
            return path
    except (ImportError, AttributeError):
        pass
    return shutil.which(name)


_DIAGNOSTIC = re.compile(
    r"^(?:.*/)?kernel\.cpp:(\d+):(\d+): (fatal error|error|warning|note): (.*)$"
)


def diagnostics(log: str, limit: int = 5) -> list[str]:
    """The compiler's diagnostics about the candidate's own file (kernel.cpp), and
    nothing else: no other file's text, no paths, no environment."""
    out = []
    for line in log.splitlines():
        m = _DIAGNOSTIC.match(line.strip())
        if m and m.group(3).endswith("error"):
            out.append(f"kernel.cpp:{m.group(1)}:{m.group(2)}: {m.group(3)}: {m.group(4)[:200]}")
            if len(out) >= limit:
                break
    return out


def build_kernel(
    source: str,
    out_dir: str | os.PathLike[str],
    *,
    timeout: float = 120.0,
    native: bool = True,
    limits: Limits | None = None,
    max_library_bytes: int = MAX_LIBRARY_BYTES,
) -> BuildResult:
    """Compile `source` into ``out_dir/kernel.so`` in the jail.

    Never raises for a bad candidate: a compile error, a timeout, a limit or a
    missing tool gives ``ok=False`` with a reason and the (untrusted) log.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "source.cpp").write_text(source)
    start = time.perf_counter()
    cmake, ninja = _tool("cmake"), _tool("ninja")
    if cmake is None:
        return _done(out, False, None, "", start, "cmake not found (pip install 'evidex[crinn]')")
    limits = limits or Limits(**{**DEFAULT_BUILD_LIMITS.__dict__, "wall_seconds": timeout})
    flags, features = compile_flags(native)
    include = abi_header().parent.parent
    with tempfile.TemporaryDirectory(prefix="evidex-crinn-build-") as tmp:
        src, build, scratch = Path(tmp) / "src", Path(tmp) / "build", Path(tmp) / "tmp"
        for d in (src, build, scratch):
            d.mkdir()
        (src / "kernel.cpp").write_text(source)
        (src / "cpu_features.cpp").write_text(FEATURES_SOURCE.format(features=" ".join(features)))
        (src / "CMakeLists.txt").write_text(
            CMAKE_PROJECT.format(include=include.as_posix(), flags=" ".join(flags))
        )
        if os.geteuid() == 0:  # the jail's user is nobody
            for d in (Path(tmp), src, build, scratch):
                os.chown(d, 65534, 65534)
        configure = [cmake, "-S", str(src), "-B", str(build)]
        if ninja:
            configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        script = " && ".join(
            " ".join(_quote(a) for a in cmd) for cmd in (configure, [cmake, "--build", str(build)])
        )
        bins = [os.path.dirname(t) for t in (cmake, ninja) if t]
        env = {
            "PATH": ":".join([*bins, "/usr/local/bin", "/usr/bin", "/bin"]),
            "HOME": str(scratch),
            "TMPDIR": str(scratch),
            "LC_ALL": "C",
        }
        readonly = jail.system_paths() + jail.python_paths() + [str(include), *bins]
        result = run_jailed(
            ["/bin/sh", "-c", script], readonly=readonly, writable=[tmp], cwd=str(build),
            env=env, limits=limits,
        )  # fmt: skip
        library = build / "kernel.so"
        if not result.ok:
            errors = diagnostics(result.output)
            if result.reason == "failed":
                reason = "compile error: " + ("; ".join(errors) or "no diagnostic in kernel.cpp")
            else:
                reason = f"compile {result.reason}"
            return _done(out, False, None, result.output, start, reason)
        if not library.is_file() or library.is_symlink():
            return _done(out, False, None, result.output, start, "the build made no library")
        size = library.stat().st_size
        if size > max_library_bytes:
            reason = (
                f"the library is {size >> 20} MiB, over the {max_library_bytes >> 20} MiB limit"
            )
            return _done(out, False, None, result.output, start, reason)
        target = out / "kernel.so"
        shutil.copyfile(library, target)
    return _done(out, True, target, result.output, start, "", features)


def _quote(arg: str) -> str:
    return "'" + arg.replace("'", "'\\''") + "'"


def _done(
    out: Path,
    ok: bool,
    library: Path | None,
    log: str,
    start: float,
    reason: str,
    features: tuple[str, ...] = (),
) -> BuildResult:
    (out / "build.log").write_text(log)
    return BuildResult(ok, library, log, time.perf_counter() - start, reason, features)
