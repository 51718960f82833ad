"""hnswlib's own binding tests (tests/hnswlib_suite, unchanged but for the import)
against evidex.compat.hnswlib: the drop-in's promise, checked by the other project."""

from __future__ import annotations

import importlib.util
import io
import os
import unittest

import pytest

SUITE = os.path.join(os.path.dirname(__file__), "hnswlib_suite")
FILES = sorted(f for f in os.listdir(SUITE) if f.startswith("bindings_test") and f.endswith(".py"))


def test_the_whole_suite_is_here() -> None:
    assert len(FILES) == 11


@pytest.mark.parametrize("name", FILES)
def test_hnswlib_binding_tests_pass(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the tests write their index files to the working directory
    spec = importlib.util.spec_from_file_location(
        f"hnswlib_suite_{name[:-3]}", os.path.join(SUITE, name)
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with open(os.path.join(SUITE, name), encoding="utf-8") as f:
        assert "import evidex.compat.hnswlib as hnswlib" in f.read()
    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    assert suite.countTestCases() > 0
    out = io.StringIO()
    result = unittest.TextTestRunner(stream=out, verbosity=2).run(suite)
    assert result.wasSuccessful(), out.getvalue()[-6000:]
    assert result.testsRun == suite.countTestCases() and not result.skipped
