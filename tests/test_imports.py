"""The package graph of tunesmith: no package imports one above it, and there is no cycle.

Every ``import tunesmith.x`` / ``from tunesmith.x import`` / relative import in every module
under ``src/tunesmith`` counts, at module level or inside a function (a lazy import is still
a dependency; it only moves the failure to run time). Each import is mapped to its top-level
package (``tunesmith.train``, ``tunesmith.eval``, ...); modules directly under ``tunesmith/``
(``config.py``, ``errors.py``, ...) are nodes of their own. The package ``__init__`` only
re-exports the public API lazily by name and is left out.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import tunesmith

SRC = Path(tunesmith.__file__).parent
ROOT = "tunesmith"

# Lowest first. A package may import only packages of strictly lower layers; the entry layer
# (the CLI and its command modules) sits on top and may import anything, itself included.
LAYERS: list[set[str]] = [
    # no tunesmith imports (but errors)
    {
        "errors",
        "_callable",
        "precision",
        "shape",
        "cpu_share",
        "heap",
        "adamw",
        "vector_math",
        "switches",
    },
    {
        "atomic",
        "disk",
        "crashlog",
        "methods",
        "trackers",
        "core_watch",
    },  # file writes; the PEFT registry; threads
    {"data"},
    {"config"},
    {"rundir", "loss", "demo"},  # a run's files; the loss; the demo task
    {"objectives"},  # DPO and kin (their log-probs use the loss's head-at-selected-positions path)
    {"models", "plan", "report", "track"},
    {"eval", "distributed"},
    {"export"},
    {"train"},  # the train workflow: plan, clean, load, train, evaluate, save, report
    {"serve", "publish"},
    {"bench"},
    {"compare"},
    {"ui"},  # the web app: over train, serve, export and compare's rows
    {"cli", "commands", "__main__"},
]
ENTRY_LAYER = len(LAYERS) - 1


@dataclass(frozen=True)
class Edge:
    """One import of package ``target`` by a module of package ``source``."""

    source: str
    target: str
    where: str  # path:line
    text: str  # the import statement


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _node(module: str) -> str | None:
    """The top-level package (or module) of ``tunesmith.a.b``; None outside tunesmith."""
    parts = module.split(".")
    if parts[0] != ROOT:
        return None
    return parts[1] if len(parts) > 1 else ROOT


def _imported(tree: ast.AST, module: str, is_package: bool):
    """(node, lineno) for each tunesmith module an import statement or call names."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for alias in n.names:
                yield n, alias.name
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = package[: len(package) - (n.level - 1)]
                target = ".".join(base + ([n.module] if n.module else []))
            else:
                target = n.module or ""
            if target == ROOT:  # from tunesmith import train, plan: each name is a module
                for alias in n.names:
                    yield n, f"{ROOT}.{_public_module(alias.name)}"
            else:
                yield n, target
        elif (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr == "import_module"
            and n.args
            and isinstance(n.args[0], ast.Constant)
            and isinstance(n.args[0].value, str)
        ):
            yield n, n.args[0].value


def _public_module(name: str) -> str:
    """``from tunesmith import NAME``: the subpackage NAME, or where ``tunesmith._API`` puts it."""
    if (SRC / name).is_dir() or (SRC / f"{name}.py").is_file():
        return name
    target = tunesmith._API.get(name)
    return target.partition(":")[0].removeprefix(f"{ROOT}.") if target else name


def import_edges() -> list[Edge]:
    edges = []
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        source = _node(module)
        if source == ROOT:
            continue  # tunesmith/__init__.py: the lazy public API, by name
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
        lines = text.splitlines()
        for stmt, target_module in _imported(tree, module, path.name == "__init__.py"):
            target = _node(target_module)
            if target is None or target == source:
                continue
            where = f"{path.relative_to(SRC.parent.parent)}:{stmt.lineno}"
            edges.append(Edge(source, target, where, lines[stmt.lineno - 1].strip()))
    return edges


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(c, graph) for c in components if len(c) > 1]


def _cycle_in(component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first node, as [a, b, ..., a]."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {component}")


def _explain(a: str, b: str, edges: list[Edge]) -> str:
    return "\n".join(f"    {e.where}: {e.text}" for e in edges if (e.source, e.target) == (a, b))


def test_no_package_level_import_cycle():
    edges = import_edges()
    graph: dict[str, set[str]] = defaultdict(set)
    for e in edges:
        graph[e.source].add(e.target)
    report = []
    for cycle in _cycles(graph):
        report.append("cycle: " + " -> ".join(cycle) + " (break it, then run again for more)")
        for a, b in zip(cycle, cycle[1:], strict=False):
            report.append(f"  {a} -> {b}:\n{_explain(a, b, edges)}")
    assert not report, "\n".join(report)


def test_every_package_has_a_layer():
    layered = set().union(*LAYERS)
    nodes = {_node(_module_name(p)) for p in SRC.rglob("*.py")} - {ROOT}
    assert not nodes - layered, f"declare the layer of {sorted(nodes - layered)} in LAYERS"


def test_no_package_imports_a_package_above_it():
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    upward = [
        e
        for e in import_edges()
        if e.source in layer
        and e.target in layer
        and layer[e.source] != ENTRY_LAYER
        and layer[e.target] >= layer[e.source]
    ]
    assert not upward, "imports of a package in the same or a higher layer:\n" + "\n".join(
        f"  {e.source} (layer {layer[e.source]}) -> {e.target} (layer {layer[e.target]}): "
        f"{e.where}: {e.text}"
        for e in upward
    )


def test_the_walker_sees_lazy_and_relative_imports():
    """The walker counts imports inside functions and resolves relative ones."""
    code = "def f():\n    from ..train import loop\n    import tunesmith.eval.sql\n"
    tree = ast.parse(code)
    found = [m for _, m in _imported(tree, "tunesmith.demo.dataset", is_package=False)]
    assert found == ["tunesmith.train", "tunesmith.eval.sql"]


def test_cycles_are_found_and_spelled_out():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
