"""The package's import graph: no cycles, and no module of a lower layer importing a higher one.

The layers are the table in docs/architecture.md ("Layers"), low to high. Every import counts,
including the ones inside functions (a lazy import is still a dependency). The root package
``recfm`` is the facade on top: importing any ``recfm.X`` runs it anyway, and its API names are
resolved lazily, so imports *of* the root (``from recfm import __version__``) are not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recfm"

# (layer, module prefixes), low to high; a module belongs to the layer of its longest matching prefix.
LAYERS = [
    ("core", ["recfm.errors", "recfm.atomic", "recfm.overrides", "recfm.recommender", "recfm.distributed",
              "recfm.compute", "recfm.checkpoint", "recfm.curves", "recfm.rundir"]),
    ("data", ["recfm.data"]),
    ("evaluation", ["recfm.evaluation"]),
    ("models", ["recfm.models"]),
    ("methods", ["recfm.baselines", "recfm.textid", "recfm.bench", "recfm.multitask"]),
    ("runs", ["recfm.model_table", "recfm.config", "recfm.config_docs", "recfm.runs", "recfm.tune", "recfm.demo",
              "recfm.reports", "recfm.batch", "recfm.api", "recfm.serve"]),
    ("cli", ["recfm.cli", "recfm"]),
]
METHODS = LAYERS[4][1]  # peers: a method package never imports another one


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                submodules = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in mods]
                targets = submodules + ([source] if len(submodules) < len(node.names) else [])
            else:
                continue
            graph[name] |= {t for t in targets if t in mods and t not in (name, "recfm")}
    return graph


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the prefix that placed it)."""
    matches = [(len(p), i, p) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes
               if module == p or module.startswith(p + ".")]
    _, index, prefix = max(matches)
    return index, prefix


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for a, targets in sorted(graph.items()):
        la, pa = layer_of(a)
        for b in sorted(targets):
            lb, pb = layer_of(b)
            if lb > la:
                bad.append(f"{a} ({LAYERS[la][0]}) imports {b} ({LAYERS[lb][0]})")
            elif la == lb and pa in METHODS and pb in METHODS and pa != pb:
                bad.append(f"{a} imports {b}: method packages are peers")
    return bad


def test_no_import_cycle_inside_the_package():
    assert cycles(import_graph()) == []


def test_no_lower_layer_imports_a_higher_one():
    assert upward_imports(import_graph()) == []


def test_every_module_has_a_layer_and_the_docs_list_the_layers():
    mods = modules()
    assert all(layer_of(m) for m in mods)
    docs = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    for name, prefixes in LAYERS:
        assert f"| {name} |" in docs, f"layer {name!r} missing from docs/architecture.md"
        for p in prefixes:
            if p != "recfm":
                assert f"`{p.removeprefix('recfm.')}" in docs, f"{p} missing from the layer table in docs/architecture.md"


@pytest.mark.parametrize("graph, want", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_cycle_finder_finds_cycles(graph, want):
    assert cycles(graph) == want


def test_the_checks_catch_what_they_are_for():
    graph = {"recfm.data.dataset": {"recfm.runs"}, "recfm.runs": set(), "recfm.textid.trie": {"recfm.bench.tasks"},
             "recfm.bench.tasks": set()}
    assert upward_imports(graph) == ["recfm.data.dataset (data) imports recfm.runs (runs)",
                                     "recfm.textid.trie imports recfm.bench.tasks: method packages are peers"]
