"""The shape of the house (issue 20): imports run one way, each job's public API imports.

The import graph is read from the source (every ``import`` statement, function-local ones included),
so a lazy import that closes a cycle is caught as well as a top-level one.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "feedback_etl", "propensity", "rm_train")
# Data flows raw events -> feedback_etl -> propensity -> rm_train; schemas is below everything.
LAYER = {"schemas": 0, "feedback_etl": 1, "propensity": 2, "rm_train": 3, "cli": 4}
SUBPACKAGES = (
    "propensity.models", "propensity.noise", "propensity.weights", "propensity.audit", "propensity.slice",
    "propensity", "feedback_etl", "rm_train", "schemas",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _project_modules() -> dict[str, Path]:
    modules = {"cli": ROOT / "cli.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[_module_name(path)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an import statement names (``a.b.c`` may be module ``a.b`` + attribute ``c``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    modules = _project_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                resolved = _resolve(target, modules)
                # A package's __init__ re-exporting its own modules is not a dependency of those modules.
                if resolved and resolved != name:
                    graph[name].add(resolved)
    return graph


def _package_inits_importing_children(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop edges from a package to its own submodules: ``pkg/__init__`` re-exporting ``pkg.mod`` while
    ``pkg.mod`` imports ``pkg.other`` is how Python packages work, not a cycle between jobs."""
    return {src: {dst for dst in dsts if not dst.startswith(src + ".")} for src, dsts in graph.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; returns the components with more than one module (the cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles_between_modules():
    graph = _package_inits_importing_children(import_graph())
    assert strongly_connected(graph) == []


def test_cycle_detector_finds_a_cycle():
    # The detector itself must be able to fail.
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_run_downstream_only():
    """A module imports only from its own layer or upstream of it, and nothing imports cli.py."""
    backwards = []
    for src, dsts in import_graph().items():
        for dst in dsts:
            if LAYER[dst.split(".")[0]] > LAYER[src.split(".")[0]]:
                backwards.append(f"{src} -> {dst}")
    assert backwards == []


def test_propensity_jobs_import_one_way():
    """Inside propensity/: models -> slice -> noise -> weights -> audit (io, diagnostics shared)."""
    order = {"io": 0, "diagnostics": 0, "models": 1, "slice": 2, "noise": 3, "weights": 4, "audit": 5}
    backwards = []
    for src, dsts in import_graph().items():
        if not src.startswith("propensity.") or src.count(".") < 1:
            continue
        for dst in dsts:
            if not dst.startswith("propensity."):
                continue
            a, b = src.split(".")[1], dst.split(".")[1]
            if order[b] > order[a]:
                backwards.append(f"{src} -> {dst}")
    assert backwards == []


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_public_api_importable(package):
    module = importlib.import_module(package)
    assert module.__doc__ and module.__doc__.strip(), f"{package} states its public API in its docstring"
    missing = [name for name in getattr(module, "__all__", ()) if not hasattr(module, name)]
    assert missing == []
    if package.startswith("propensity"):
        assert getattr(module, "__all__", None), f"{package} declares __all__"
