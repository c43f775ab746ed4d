"""The shape of app/, held by the import graph: no cycles, and dependencies one way
(transports → protocol and core → event log). A newcomer can follow an event from the log to a
socket without going back and forth between layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

APP = ROOT / "app"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every app module and the app modules it imports, anywhere in it (functions and
    TYPE_CHECKING blocks included: a cycle hidden behind a lazy import is still a cycle)."""
    modules = {_module(path): path for path in APP.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                while target and target not in modules:  # `from app.x import name`: the module app.x
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("app"):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                found.append([*stack[stack.index(target):], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_cycle_in_app() -> None:
    graph = import_graph()
    assert len(graph) > 40 and "app.core.session" in graph["app.transports.ws"]  # the parse found the graph
    assert cycles(graph) == []


def _imports_of(graph: dict[str, set[str]], prefix: str) -> set[str]:
    return {target for name, targets in graph.items() if name == prefix or name.startswith(prefix + ".") for target in targets}


@pytest.mark.parametrize(("layer", "forbidden"), [
    ("app.eventlog", ("app.core", "app.protocol", "app.transports", "app.api", "app.main", "app.deps")),
    ("app.protocol", ("app.core", "app.transports", "app.api", "app.main", "app.deps")),
    ("app.core", ("app.protocol", "app.transports", "app.api", "app.main", "app.deps")),
    ("app.transports", ("app.api", "app.main")),
    ("app.rules", ("app",)),  # the publisher package's rules, and the standard library
])
def test_dependencies_point_one_way(layer: str, forbidden: tuple[str, ...]) -> None:
    graph = import_graph()
    wrong = {target for target in _imports_of(graph, layer)
             if any(target == f or target.startswith(f + ".") for f in forbidden) and not target.startswith(layer)}
    assert wrong == set(), f"{layer} must not import {sorted(wrong)}"


def test_the_core_names_no_transport() -> None:
    """The core is given what a transport offers; it never branches on a transport's name."""
    for path in sorted((APP / "core").glob("*.py")):
        strings = {node.value for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        named = {s for s in strings if s in ("ws", "sse", "poll", "websocket") or s.startswith(("poll-", "ws-", "sse-"))}
        assert named == set(), f"{path.name} names transports: {named}"
