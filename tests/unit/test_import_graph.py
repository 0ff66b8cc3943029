"""The import graph of `predictor/`: no cycles, no edge to the development harness, a core without HTTP.

Read from the source with ast, so lazy imports inside functions count as edges (they run on the first
request instead of at start-up, and a cycle through them still breaks a refactor); imports under
`if TYPE_CHECKING:` never run and are skipped.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "predictor"
# Packages of the serving stack the core must not import (it knows nothing of HTTP or RPC).
SERVING_STACK = {"kserve", "fastapi", "starlette", "uvicorn", "grpc"}
# Adapters and tools built on the core; everything else in the package is the core.
ADAPTERS = ("predictor.serving", "predictor.bench", "predictor.__main__")


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is its __init__.py)."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _run_time_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of the tree except the bodies of `if TYPE_CHECKING:` (their `else:` does run)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _absolute(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute name a (possibly relative) `from ... import` refers to."""
    if level == 0:
        return module or ""
    base = importer.split(".")
    base = base[: len(base) - level + (1 if is_package else 0)]
    return ".".join(base + ([module] if module else []))


def imported_names(source: str, importer: str, is_package: bool) -> Iterator[tuple[str, list[str]]]:
    """(module, names imported from it) for each import that can run, including
    `importlib.import_module("...")` and `__import__("...")` with a literal name."""
    for node in _run_time_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            yield _absolute(node.module, node.level, importer, is_package), [a.name for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                yield node.args[0].value, []


def import_graph(package_dir: Path) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between the package's own modules, top-level external packages each module imports)."""
    modules = module_names(package_dir)
    edges: dict[str, set[str]] = {name: set() for name in modules}
    external: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for target, names in imported_names(path.read_text(encoding="utf-8"), name, is_package):
            if target.split(".")[0] != package_dir.name:
                external[name].add(target.split(".")[0])
                continue
            # `from pkg import sub` imports the module pkg.sub; `from mod import f` imports mod.
            submodules = {f"{target}.{n}" for n in names} & modules.keys()
            edges[name] |= submodules or {target}
            if len(submodules) < len(names) and submodules:
                edges[name].add(target)
    return edges, external


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def is_core(module: str) -> bool:
    """True for the modules outside the adapters (serving, bench, the entry point)."""
    return not any(module == a or module.startswith(a + ".") for a in ADAPTERS)


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """The import graph of the predictor package in this checkout."""
    return import_graph(ROOT / PACKAGE)


def test_the_graph_sees_the_modules_and_their_lazy_imports(
    graph: tuple[dict[str, set[str]], dict[str, set[str]]],
) -> None:
    edges, external = graph
    assert {"predictor.handler", "predictor.tasks.question_answering", "predictor.serving.cli"} <= edges.keys()
    # the tasks import their explainer inside a method
    assert "predictor.explain" in edges["predictor.tasks.question_answering"]
    assert "captum" in external["predictor.explain"]


def test_predictor_has_no_import_cycle(graph: tuple[dict[str, set[str]], dict[str, set[str]]]) -> None:
    edges, _ = graph
    assert find_cycle(edges) is None, f"import cycle: {' -> '.join(find_cycle(edges) or [])}"


def test_nothing_in_predictor_imports_the_top_level_benchmarks_package(
    graph: tuple[dict[str, set[str]], dict[str, set[str]]],
) -> None:
    _, external = graph
    assert sorted(m for m, pkgs in external.items() if "benchmarks" in pkgs) == []


def test_the_core_imports_no_serving_stack_and_no_adapter(
    graph: tuple[dict[str, set[str]], dict[str, set[str]]],
) -> None:
    edges, external = graph
    stack = {m: sorted(pkgs & SERVING_STACK) for m, pkgs in external.items() if is_core(m) and pkgs & SERVING_STACK}
    assert stack == {}
    adapters = {m: sorted(t for t in targets if not is_core(t)) for m, targets in edges.items()
                if is_core(m) and any(not is_core(t) for t in targets)}
    assert adapters == {}


def test_the_checks_catch_a_lazy_cycle_and_skip_type_checking_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "toy"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from toy.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n    import importlib\n"
                                      "    importlib.import_module('benchmarks.run')\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from toy import a\n"
                              "else:\n    import kserve\n")
    edges, external = import_graph(pkg)
    assert find_cycle(edges) == ["toy.a", "toy.sub.b", "toy.a"]
    assert "benchmarks" in external["toy.sub.b"]
    assert edges["toy.c"] == set() and external["toy.c"] >= {"kserve"}
