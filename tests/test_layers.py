"""The shape of the package (DESIGN.md "Shape"): layers import downward only, no import cycle, small modules.

Imports are read from the source (``ast``), including the ones inside functions: a lazy import is still a
dependency, and a cycle through one is still a cycle (it only fails later, at a worse time).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fetalclip"

# Rank of each top-level part; a module may import parts of its own rank or lower, never higher.
LAYERS = {
    0: {"errors", "growth", "metrics", "io", "progress", "torchrun", "outputs", "provenance", "__init__"},
    1: {"data", "models", "sim"},
    2: {"tasks", "train", "export"},
    3: {"bench", "deploy"},
    4: {"demo", "serve", "commands", "cli", "__main__"},
}
RANK = {part: rank for rank, parts in LAYERS.items() for part in parts}
MAX_LINES = 420  # "no module over ~400 lines"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                stem = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(stem + ([node.module] if node.module else []))
            candidates = [f"{base}.{alias.name}" for alias in node.names] or [base]
            targets.update(c if c in MODULES else base for c in candidates)
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
    resolved = set()
    for target in targets:
        while target not in MODULES and "." in target:
            target = target.rpartition(".")[0]
        # A package's __init__ re-exporting its own children is not a dependency of the package on itself.
        if target in MODULES and target != name and not target.startswith(name + "."):
            resolved.add(target)
    return resolved


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_part_of_the_package_has_a_layer():
    assert {_part(m) for m in MODULES} <= set(RANK), "a new top-level module needs a layer in tests/test_layers.py"


def test_layers_import_downward_only():
    upward = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets if RANK[_part(t)] > RANK[_part(m)])
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_cycle():
    """Tarjan's strongly connected components over module imports: every component must be one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in MODULES:
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines; split it by purpose"


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    """The rules above can fail: a cycle and an upward import are found in a graph built to have them."""
    global GRAPH
    saved = GRAPH
    GRAPH = {**saved, "fetalclip.metrics": saved["fetalclip.metrics"] | {"fetalclip.bench.tasks"},
             "fetalclip.bench.tasks": saved["fetalclip.bench.tasks"] | {"fetalclip.metrics"}}
    try:
        with pytest.raises(AssertionError, match="lower layer to a higher"):
            test_layers_import_downward_only()
        with pytest.raises(AssertionError, match="import cycles"):
            test_no_import_cycle()
    finally:
        GRAPH = saved
