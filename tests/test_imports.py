"""The klqp package's modules import one another without a circle.

Every ``import`` in klqp/*.py counts, including those inside functions and methods
(a lazy import that closes a circle is still a circle: it only moves the failure to
run time). klqp/__init__.py is a node of its own, named ``klqp``.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = "klqp"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE


def module_name(path: pathlib.Path) -> str:
    return PACKAGE if path.name == "__init__.py" else f"{PACKAGE}.{path.stem}"


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(ROOT.glob("*.py"))}


def imported_modules(source: str, this: str, known: set[str]) -> set[str]:
    """The klqp modules that the module ``this`` (source text ``source``) imports,
    anywhere in its code, functions included.

    ``import klqp`` and ``from klqp import name`` are the package itself (klqp/__init__.py
    runs); ``from . import distributions as _d`` is klqp.distributions; ``from .x import
    name`` is klqp.x."""
    # the package a relative import starts from: __init__'s is the package itself
    package = this if this == PACKAGE else this.rpartition(".")[0]
    found: set[str] = set()

    def add(name: str) -> None:
        if name in known:
            found.add(name)

    for node in ast.walk(ast.parse(source, this)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)  # import klqp / import klqp.expr
                if alias.name.startswith(PACKAGE + "."):
                    add(PACKAGE)  # ... which binds (and first runs) the package
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . / from .x / from ..x
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue  # not klqp
            if target != PACKAGE:
                add(target)  # from .x import name / from klqp.x import name: klqp.x
            elif node.level == 0:
                add(PACKAGE)  # from klqp import name: the package
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    add(f"{target}.{alias.name}")  # from . import distributions: that module
                elif target == PACKAGE:
                    add(PACKAGE)  # from . import name, name not a module: the package's
    found.discard(this)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imported_modules(path.read_text(encoding="utf-8"), name, known)
            for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]):
    """One circle of ``graph`` as a list [a, b, ..., a], or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {n: WHITE for n in graph}
    stack: list[str] = []

    def visit(n):
        colour[n] = GREY
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if colour.get(m, BLACK) == GREY:
                return stack[stack.index(m):] + [m]
            if colour.get(m) == WHITE:
                cycle = visit(m)
                if cycle:
                    return cycle
        stack.pop()
        colour[n] = BLACK
        return None

    for n in sorted(graph):
        if colour[n] == WHITE:
            cycle = visit(n)
            if cycle:
                return cycle
    return None


KNOWN = {"klqp", "klqp.model", "klqp.distributions", "klqp.expr", "klqp.api"}


@pytest.mark.parametrize("source, this, want", [
    ("from . import distributions as _d", "klqp.model", {"klqp.distributions"}),
    ("from .expr import Expr", "klqp.model", {"klqp.expr"}),
    ("def f():\n    from .model import ModelError", "klqp.distributions", {"klqp.model"}),
    ("class C:\n    def m(self):\n        from .api import compile", "klqp.model", {"klqp.api"}),
    ("def f():\n    import klqp", "klqp.model", {"klqp"}),
    ("from klqp import Normal", "klqp.model", {"klqp"}),
    ("from klqp import expr", "klqp.model", {"klqp", "klqp.expr"}),
    ("import klqp.expr as e", "klqp.model", {"klqp", "klqp.expr"}),
    ("from klqp.expr import Expr", "klqp.model", {"klqp.expr"}),
    ("from .model import Model", "klqp", {"klqp.model"}),  # in __init__: its own package
    ("from . import api", "klqp", {"klqp.api"}),
    ("import numpy as np\nfrom typing import Any", "klqp.model", set()),
    ("from .model import Model", "klqp.model", set()),  # itself: not an edge
])
def test_imports_are_read_in_every_form(source, this, want):
    assert imported_modules(source, this, KNOWN) == want


def test_graph_holds_every_module():
    graph = import_graph()
    assert {"klqp", "klqp.model", "klqp.spec_json", "klqp.distributions"} <= set(graph)
    assert "klqp.model" in graph["klqp"]  # from .model import ... in __init__
    assert "klqp.spec_json" in graph["klqp.model"]  # Model's JSON methods call the codec
    assert "klqp.model" not in graph["klqp.spec_json"]  # ... which gets Model as an argument


def test_find_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle in each group of modules that import one another, directly or not
    (each strongly connected component of ``graph``), so a failure shows every group."""
    reach = {n: _reachable(graph, n) for n in graph}
    found, seen = [], set()
    for n in sorted(graph):
        group = {n} | {m for m in reach[n] if n in reach[m]}
        if n in seen or len(group) < 2:
            continue
        seen |= group
        found.append(find_cycle({m: graph[m] & group for m in group}))
    return found


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """The modules ``start`` imports, directly or not."""
    seen, todo = set(), [start]
    while todo:
        for m in graph.get(todo.pop(), ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_circles_finds_each_group():
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": set(), "d": {"e"}, "e": {"f"}, "f": {"d"}}
    assert circles(graph) == [["a", "b", "a"], ["d", "e", "f", "d"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    found = circles(import_graph())
    assert not found, ("import circles among klqp modules (imports inside functions "
                       "count):\n" + "\n".join(" -> ".join(c) for c in found))
