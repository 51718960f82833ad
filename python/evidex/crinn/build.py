"""Building a candidate kernel: a generated CMake project in a fresh folder.

Candidates are built for the machine that runs them, so unlike the packaged core
they may use ``-march=native``. The ``crinn`` extra installs CMake and Ninja from
PyPI, so a pip-only machine can build them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..kernels import abi_header

CMAKE_PROJECT = """cmake_minimum_required(VERSION 3.18)
project(evidex_crinn_candidate CXX)
set(CMAKE_CXX_STANDARD 17)
set(CMAKE_CXX_STANDARD_REQUIRED ON)
if(NOT CMAKE_BUILD_TYPE)
  set(CMAKE_BUILD_TYPE Release)
endif()
add_library(kernel SHARED kernel.cpp)
target_include_directories(kernel PRIVATE "{include}")
target_compile_options(kernel PRIVATE -O3 {march} -fvisibility=hidden -fno-math-errno)
set_target_properties(kernel PROPERTIES PREFIX "" OUTPUT_NAME kernel SUFFIX ".so")
"""


@dataclass
class BuildResult:
    ok: bool
    library: Path | None
    log: str
    seconds: float


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    try:  # the PyPI packages put their binaries beside the module
        if name == "cmake":
            import cmake

            return os.path.join(cmake.CMAKE_BIN_DIR, "cmake")
        if name == "ninja":
            import ninja

            return os.path.join(ninja.BIN_DIR, "ninja")
    except (ImportError, AttributeError):
        return None
    return None


def build_kernel(
    source: str,
    out_dir: str | os.PathLike[str],
    *,
    timeout: float = 120.0,
    native: bool = True,
) -> BuildResult:
    """Compile `source` into ``out_dir/kernel.so`` (build tree in a temporary folder).

    Never raises for a bad candidate: a compile error, a timeout or a missing tool
    gives ``ok=False`` with the log.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "source.cpp").write_text(source)
    start = time.perf_counter()
    cmake = _tool("cmake")
    if cmake is None:
        return BuildResult(False, None, "cmake not found (pip install 'evidex[crinn]')", 0.0)
    include = abi_header().parent.parent
    with tempfile.TemporaryDirectory(prefix="evidex-crinn-build-") as tmp:
        src, build = Path(tmp) / "src", Path(tmp) / "build"
        src.mkdir()
        (src / "kernel.cpp").write_text(source)
        (src / "CMakeLists.txt").write_text(
            CMAKE_PROJECT.format(
                include=include.as_posix(), march="-march=native" if native else ""
            )
        )
        configure = [cmake, "-S", str(src), "-B", str(build)]
        ninja = _tool("ninja")
        if ninja:
            configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        log: list[str] = []
        for cmd in (configure, [cmake, "--build", str(build)]):
            left = timeout - (time.perf_counter() - start)
            try:
                proc = subprocess.run(
                    cmd,
                    capture_output=True,
                    text=True,
                    timeout=max(left, 1.0),
                    env={**os.environ, "LC_ALL": "C"},
                )
            except subprocess.TimeoutExpired as e:
                log.append(_text(e.stdout) + _text(e.stderr))
                log.append(f"build timed out after {timeout:.0f} s")
                return _done(out, False, None, log, start)
            log.append(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                return _done(out, False, None, log, start)
        library = out / "kernel.so"
        shutil.copy2(build / "kernel.so", library)
    return _done(out, True, library, log, start)


def _text(b: bytes | str | None) -> str:
    if b is None:
        return ""
    return b if isinstance(b, str) else b.decode(errors="replace")


def _done(out: Path, ok: bool, library: Path | None, log: list[str], start: float) -> BuildResult:
    text = "\n".join(log)
    (out / "build.log").write_text(text)
    return BuildResult(ok, library, text, time.perf_counter() - start)
