"""The package's layout keeps the design's layers: every import runs downward (or
sideways within a layer), nothing imports in a circle, and the library imports
none of the examples. Read statically from the sources (imports inside functions
count too), so a lazy import cannot hide an upward edge."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "evidex"

# Bottom to top. A module may import its own layer or lower ones.
LAYERS: list[tuple[str, ...]] = [
    (
        "evidex._core",
        "evidex._cuda",
        "evidex._arrays",
        "evidex._progress",
        "evidex._files",
        "evidex.cuda",
    ),  # fmt: skip
    ("evidex.metrics", "evidex.bruteforce", "evidex.filters"),
    ("evidex.kernels",),
    ("evidex.index", "evidex.ivf", "evidex"),
    (
        "evidex.compat",
        "evidex.datasets",
        "evidex.evidence",
        "evidex.embedders",
        "evidex.embedding_model",
        "evidex.media",
    ),  # fmt: skip
    # The torch-side of media (embedders use ops' video kernels) sits with ops.
    (
        "evidex.ops",
        "evidex.rewards",
        "evidex.crinn",
        "evidex.train",
        "evidex.media.embedders",
        "evidex.distributed",
    ),  # fmt: skip
    ("evidex.examples",),
    ("evidex.cli", "evidex.__main__", "evidex.crinn.cli"),
]
# Old names of the examples, kept importable where they were (they re-export).
MOVED = {f"evidex.train.{n}" for n in ("rar_example", "clara_example", "rge_example",
                                        "rl_example", "rar_ablation")}  # fmt: skip


def modules() -> dict[str, Path | None]:
    found: dict[str, Path | None] = {"evidex._core": None, "evidex._cuda": None}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        if path is None:
            continue
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or node.lineno in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [f"{target}.{a.name}" for a in node.names] + [target]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != mod and t.startswith("evidex"):
                    edges[mod].add(t)
                    break
    return edges


def layer(mod: str) -> int:
    best, depth = -1, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (mod == name or mod.startswith(name + ".")) and len(name) > depth:
                best, depth = i, len(name)
    assert best >= 0, f"{mod} is in no layer: add it to LAYERS"
    return best


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def report() -> dict[str, object]:
    edges = import_graph()
    upward = sorted(
        (a, b)
        for a, targets in edges.items()
        for b in targets
        if a not in MOVED and layer(b) > layer(a)
    )
    sizes = sorted(
        ((len(p.read_text().splitlines()), m) for m, p in modules().items() if p), reverse=True
    )
    return {"cycles": cycles(edges), "upward": upward, "largest": sizes[0]}


def test_no_import_circles() -> None:
    assert report()["cycles"] == []


def test_every_import_runs_down_the_layers() -> None:
    assert report()["upward"] == []


def test_the_library_imports_none_of_the_examples() -> None:
    for mod, targets in import_graph().items():
        if layer(mod) < layer("evidex.examples") and mod not in MOVED:
            assert not any(t.startswith("evidex.examples") for t in targets), mod


def test_moved_examples_stay_importable_where_they_were() -> None:
    import importlib

    for old in sorted(MOVED):
        new = "evidex.examples." + old.rpartition(".")[2].replace("_example", "")
        pytest_import = importlib.import_module
        assert pytest_import(old).main is pytest_import(new).main


if __name__ == "__main__":
    print(report())
