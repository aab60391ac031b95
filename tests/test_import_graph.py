"""No import cycles among lazyembed's modules: arrows between modules point one way.

Every ``import``/``from ... import`` of a lazyembed module in every module of the package
is an edge, wherever it sits: at the top, inside a function (a lazy import that breaks a
cycle at run time leaves the two modules knowing each other, which is the design cycle
this test is about) or under ``if TYPE_CHECKING:`` (a type-only import is still one
module depending on the other, and mypy reads it). Not edges: names in strings (e.g.
``importlib.import_module("lazyembed.x")`` or a preload list), and the implicit import of
a module's parent packages (``import lazyembed.runtime.onnx`` runs
``lazyembed/runtime/__init__.py`` first, but that is Python's loading order, not a
dependency of the importer on what the package re-exports; counting it would make every
package that re-exports its submodules a cycle).

Granularity is the module: a package is its ``__init__.py``, so ``from
lazyembed.runtime import RuntimeSpec`` is an edge to ``lazyembed.runtime`` and the
package's re-exports are edges from it; ``from lazyembed.runtime import onnx`` is an edge
to the submodule. Cycles are the strongly connected components of more than one module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import lazyembed

Graph = Mapping[str, Iterable[str]]

#: Cycles tolerated for now, each exactly as found (a changed cycle fails); none today.
#: An entry is a debt with an owner: the stale-entry test insists it goes once untied.
ALLOWED_CYCLES: frozenset[frozenset[str]] = frozenset()


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package under ``root`` (the package's folder), by dotted name."""
    modules: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(name: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    """The known modules that module ``name`` imports anywhere in ``source``."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(_nearest_known(alias.name, known))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in known else _nearest_known(base, known))
    found.discard("")
    found.discard(name)
    return found


def _nearest_known(dotted: str, known: set[str]) -> str:
    """``dotted`` or its longest known prefix ("" outside the package)."""
    parts = dotted.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return ""


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    files = module_files(root, package)
    known = set(files)
    return {
        name: imported_modules(
            name, path.read_text(encoding="utf-8"), path.name == "__init__.py", known
        )
        for name, path in files.items()
    }


def cycles(graph: Graph) -> list[frozenset[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    edges = {node: sorted(targets) for node, targets in graph.items()}
    for target in [t for targets in edges.values() for t in targets]:
        edges.setdefault(target, [])
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            targets = edges[node]
            if position < len(targets):
                work.append((node, position + 1))
                target = targets[position]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if work:  # returning to the caller: it takes our low-link
                caller = work[-1][0]
                low[caller] = min(low[caller], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def _describe(cycle: frozenset[str], graph: Graph) -> str:
    """The cycle's modules and its edges, for the failure message."""
    arrows = [
        f"{source} -> {target}"
        for source in sorted(cycle)
        for target in sorted(graph.get(source, ()))
        if target in cycle
    ]
    return "{" + ", ".join(sorted(cycle)) + "}: " + "; ".join(arrows)


def _package_graph() -> dict[str, set[str]]:
    return import_graph(Path(lazyembed.__file__).parent, "lazyembed")


def test_lazyembed_has_no_import_cycles() -> None:
    graph = _package_graph()
    new = [c for c in cycles(graph) if c not in ALLOWED_CYCLES]
    assert not new, "import cycles among lazyembed modules:\n" + "\n".join(
        _describe(c, graph) for c in new
    )


def test_every_allowed_cycle_still_exists() -> None:
    """An allow-list entry that no longer matches a cycle must go (it would hide a new one)."""
    stale = ALLOWED_CYCLES - set(cycles(_package_graph()))
    assert not stale, (
        f"remove from ALLOWED_CYCLES (no longer a cycle): {sorted(map(sorted, stale))}"
    )


def test_the_graph_sees_the_runtime_and_server_modules() -> None:
    """The graph is read from the real package: its known arrows are there."""
    graph = _package_graph()
    assert "lazyembed.runtime.onnx" in graph["lazyembed.runtime"]
    assert "lazyembed.runtime.tokens" in graph["lazyembed.runtime.onnx"]
    assert "lazyembed.server.chunks" in graph["lazyembed.server.batcher"]
    assert len(graph) > 50


def test_cycle_finder_on_a_synthetic_graph() -> None:
    graph = {
        "a": {"b"},
        "b": {"c"},
        "c": {"a", "d"},  # a -> b -> c -> a
        "d": {"e"},
        "e": {"d"},  # d <-> e, reached from the first cycle
        "f": {"a", "g"},  # not in a cycle, though it reaches both
        "g": set(),
        "h": {"h"},  # a self-import is not a cycle between modules
    }
    assert sorted(map(sorted, cycles(graph))) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    # One edge closes a long chain into a single cycle.
    chain = {str(n): {str(n + 1)} for n in range(500)}
    assert cycles(chain) == []
    chain["500"] = {"0"}
    assert cycles(chain) == [frozenset(str(n) for n in range(501))]


def _write(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for relative, text in files.items():
        path = package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return package


def test_every_kind_of_import_is_an_edge(tmp_path: Path) -> None:
    package = _write(
        tmp_path,
        {
            "__init__.py": "from pkg.sub import Thing\n",
            "top.py": "import pkg.plain\nimport os\n",
            "plain.py": "",
            "lazy.py": "def f():\n    from pkg import plain\n    return plain\n",
            "typed.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg.sub.leaf import X\n"
            ),
            "named.py": "import importlib\nimportlib.import_module('pkg.plain')\n",
            "sub/__init__.py": "from .leaf import Thing\nfrom . import other\n",
            "sub/leaf.py": "from ..plain import nothing\nfrom .. import top\n",
            "sub/other.py": "",
        },
    )
    graph = import_graph(package, "pkg")
    assert graph["pkg"] == {"pkg.sub"}  # a re-export: an edge from the package
    assert graph["pkg.top"] == {"pkg.plain"}  # outside modules are not nodes
    assert graph["pkg.lazy"] == {"pkg.plain"}  # function-level
    assert graph["pkg.typed"] == {"pkg.sub.leaf"}  # TYPE_CHECKING
    assert graph["pkg.named"] == set()  # a string is not an import
    assert graph["pkg.sub"] == {"pkg.sub.leaf", "pkg.sub.other"}  # relative
    assert graph["pkg.sub.leaf"] == {"pkg.plain", "pkg.top"}  # relative, two levels
    # No implicit edge from pkg.sub.leaf to its parent packages: pkg.sub's re-export
    # of leaf is therefore not a cycle.
    assert cycles(graph) == []


def test_a_new_cycle_fails_the_check(tmp_path: Path) -> None:
    """The check as run on the package, on a package given a cycle through a lazy import."""
    files = {
        "__init__.py": "",
        "a.py": "from pkg.b import B\n",
        "b.py": "B = 1\n",
    }
    assert cycles(import_graph(_write(tmp_path / "one", files), "pkg")) == []
    files["b.py"] = "def f():\n    from pkg import a\n    return a\n"
    graph = import_graph(_write(tmp_path / "two", files), "pkg")
    assert cycles(graph) == [frozenset({"pkg.a", "pkg.b"})]
    assert _describe(cycles(graph)[0], graph) == "{pkg.a, pkg.b}: pkg.a -> pkg.b; pkg.b -> pkg.a"
