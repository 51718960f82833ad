"""Package-level facts: import without optional extras, the CUDA module's wiring."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

import evidex
import evidex.cuda


def test_import_needs_numpy_only() -> None:
    code = (
        "import sys, evidex, evidex.compat.hnswlib\n"
        "heavy = {'torch', 'transformers', 'PIL', 'decord', 'evidex._cuda'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    ("module", "missing", "extra"),
    [
        ("evidex.train", "torch", "evidex[train]"),
        ("evidex.train", "transformers", "evidex[train]"),
        ("evidex.ops", "torch", "evidex[torch]"),
    ],
)
def test_extras_missing_name_what_to_install(module, missing, extra) -> None:
    code = (
        f"import sys; sys.modules[{missing!r}] = None\n"
        "import evidex, evidex.compat.hnswlib\n"  # the core works without them
        f"import {module}\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ModuleNotFoundError") and extra in last, out.stderr


def test_cuda_module_is_lazy_and_reports() -> None:
    # CI builds with EVIDEX_CUDA=ON, so there the module must exist.
    if os.environ.get("EVIDEX_CUDA") == "ON":
        assert evidex.cuda.is_built()
    if evidex.cuda.is_built():
        assert evidex.cuda.module().runtime_version() >= 12000
        assert evidex.cuda.device_count() >= 0
    else:
        with pytest.raises(RuntimeError, match="without its CUDA module"):
            evidex.cuda.module()


@pytest.mark.cuda
def test_cuda_kernel_runs_on_gpu() -> None:
    assert evidex.cuda.is_available(), "no CUDA device visible"
    assert evidex.cuda.module().self_test(1 << 20) == 0
    assert evidex.cuda.module().device_name(0)


def test_version() -> None:
    assert evidex.__version__


def test_cibuildwheel_configuration_and_its_test_command() -> None:
    """The wheel configuration is well-formed and its smoke test passes on this build
    (.ci/wheel builds and repairs a manylinux wheel and runs the same command)."""
    import tomllib

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        config = tomllib.load(f)["tool"]["cibuildwheel"]
    assert config["build"].split() == ["cp310-*", "cp311-*", "cp312-*", "cp313-*"]
    assert config["linux"]["manylinux-x86_64-image"] == "manylinux_2_28"
    assert "auditwheel repair" in config["linux"]["repair-wheel-command"]
    argv = shlex.split(config["test-command"])
    assert argv[:2] == ["python", "-c"]
    out = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_compiled_module_stub_lists_what_the_module_has() -> None:
    """python/evidex/_core.pyi (shipped with py.typed) against the built module: every
    public name and every public member of its classes, and nothing that is gone."""
    import ast

    import evidex._core as core

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tree = ast.parse(open(os.path.join(root, "python", "evidex", "_core.pyi")).read())

    def declared(body) -> set[str]:
        names = set()
        for node in body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        return {n for n in names if not n.startswith("_")}

    def public(obj) -> set[str]:
        return {n for n in dir(obj) if not n.startswith("_")}

    assert declared(tree.body) == public(core)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and isinstance(getattr(core, node.name), type):
            cls = getattr(core, node.name)
            if issubclass(cls, BaseException):
                continue
            inherited = public(int) if issubclass(cls, int) else set()  # enums
            assert declared(node.body) == public(cls) - inherited, node.name
    assert os.path.isfile(os.path.join(root, "python", "evidex", "py.typed"))
