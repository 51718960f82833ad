"""The main job: `evidex demo` on real GloVe vectors (small sizes here)."""

from __future__ import annotations

import argparse
import re

import pytest

from evidex.cli import build_parser, main


@pytest.mark.parametrize("extra", [[], ["--quantization", "sq8"]])
def test_demo_prints_recall_and_qps(capsys, extra) -> None:
    assert main(["demo", "--n", "3000", "--queries", "30", "--ef", "16", "128", *extra]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\s+(\d+)\s+([0-9.]+)\s+(\d+)\s+(\d+)$", out, re.M)
    assert [int(r[0]) for r in rows] == [16, 128]
    recalls = [float(r[1]) for r in rows]
    assert recalls[1] >= 0.95 and recalls[1] >= recalls[0]
    assert all(int(r[2]) > 0 and int(r[3]) > 0 for r in rows)


def test_demo_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--quantization", "pq"])


def test_version_and_help_with_defaults(capsys) -> None:
    import evidex

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"evidex {evidex.__version__}"
    for argv in (["demo", "--help"], ["crinn", "optimize", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "(default:" in capsys.readouterr().out

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    missing += walk(child, f"{path} {name}")
            elif not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        return missing

    assert walk(build_parser(), "evidex") == []


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["demo", "--M", "1"], "argument --M: must be at least 2, got 1"),
        (["demo", "--n", "-5"], "argument --n: must be at least 100, got -5"),
        (["demo", "--ef", "0"], "argument --ef: must be at least 1, got 0"),
        (["demo", "--queries", "x"], "argument --queries: expected an integer, got 'x'"),
        (["crinn", "optimize", "--out", "o", "--budget", "0"], "argument --budget"),
    ],
)
def test_bad_arguments_are_one_line_naming_the_argument(capsys, argv, named) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def test_errors_inside_a_command_are_one_line(capsys) -> None:
    assert main(["demo", "--n", "100000000", "--queries", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "evidex demo: error: GloVe has 400000 vectors; asked for 100000005"


def test_crinn_optimize_refuses_an_empty_recall_range(tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit, match="--recall-range: need 0 <= LOW < HIGH <= 1"):
        main(["crinn", "optimize", "--out", str(out), "--recall-range", "0.95", "0.9"])
    assert not out.exists()


def test_crinn_show_of_a_missing_run_creates_nothing(tmp_path) -> None:
    missing = tmp_path / "no-such-run"
    with pytest.raises(SystemExit, match="holds no CRINN run"):
        main(["crinn", "show", str(missing)])
    assert not missing.exists()
