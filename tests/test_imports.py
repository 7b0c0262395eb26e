"""The package's imports run one way: no circles, and the product does not stand on the synthetic world.

Walks every module of `glacier_stac` with `ast` (imports inside functions count too: a lazy import is
still a dependency) and checks the graph, so a circle or a product module reaching into `synthetic/`
fails here before anyone builds on it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "glacier_stac"
ROOT_NAME = "glacier_stac"
# may import the synthetic world: the world itself, test support, and the two shells that generate worlds
MAY_IMPORT_SYNTHETIC = ("glacier_stac.synthetic", "glacier_stac.testing", "glacier_stac.demo", "glacier_stac.cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module that `name` loads (the longest known prefix), or None outside the project."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """module -> the project modules it imports (anywhere in its body)."""
    modules = modules if modules is not None else _modules()
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    pkg = mod if is_pkg else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}" if base else pkg
                # `from pkg import mod` imports the submodule; `from mod import name` the module
                targets = [f"{base}.{a.name}" for a in node.names] or [base]
            for t in targets:
                if t.split(".")[0] != ROOT_NAME:
                    continue
                dep = _resolve(t, modules)
                # the root package (`__version__`, lazy facades) is initialised before any of its modules,
                # so an edge into it is no ordering constraint and is left out
                if dep is not None and dep not in (mod, ROOT_NAME):
                    deps.add(dep)
        graph[mod] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _allowed_synthetic(mod: str) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in MAY_IMPORT_SYNTHETIC)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_graph_sees_the_package(graph):
    """Guard against a walker that finds nothing and so passes vacuously."""
    assert {"glacier_stac.cube", "glacier_stac.synthetic.world", "glacier_stac.labels"} <= set(graph)
    assert "glacier_stac.grid" in graph["glacier_stac.cube"]
    assert "glacier_stac.synthetic.world" in graph["glacier_stac.synthetic.render"]


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import circles (each line one circle): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_product_does_not_import_synthetic(graph):
    bad = {m: sorted(d for d in deps if d.startswith("glacier_stac.synthetic"))
           for m, deps in graph.items() if not _allowed_synthetic(m)}
    bad = {m: d for m, d in bad.items() if d}
    assert not bad, f"product modules importing the synthetic world: {bad}"


def test_vocabulary_imports_nothing_of_the_project(graph):
    assert graph["glacier_stac.labels"] == set()


def test_cycle_finder_finds_a_planted_cycle():
    """The checker itself can fail: a two-module and a three-module circle are both reported."""
    g = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
    assert sorted(find_cycles(g)) == [["a", "b"], ["c", "d", "e"]]
