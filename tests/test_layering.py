"""The package's import graph: no circle, leaves that stay leaves, layers that only import downward.

The graph is read from the source with ``ast``: every import, at the top of a module, inside a
function or under ``TYPE_CHECKING``, so a circle hidden in a function or a type-checking block counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import confidence_neurons

PACKAGE = Path(confidence_neurons.__file__).parent
NAME = "confidence_neurons"


def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


MODULES = _modules()


def _resolve(name: str) -> str:
    """The module an imported name lives in (``a.b.c`` of ``from a.b import c`` is a.b.c or a.b)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports_of(module: str) -> set[str]:
    """The toolkit's modules ``module`` imports anywhere in its source."""
    path = MODULES[module]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {r for n in names if n.split(".")[0] == NAME and (r := _resolve(n)) and r != module}
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def _circles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                on_stack.discard(w)
                component.append(w)
            on_stack.discard(v)
            if component:
                out.append(sorted([v, *component]))

    for v in GRAPH:
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read():
    assert len(MODULES) > 50
    assert "confidence_neurons.studies.scan" in GRAPH["confidence_neurons.commands.scan"]


def test_no_import_circle():
    assert _circles() == []


def test_a_circle_would_be_found():
    GRAPH["confidence_neurons.analysis.weights"].add("confidence_neurons.commands.scan")
    try:
        assert _circles(), "a planted circle analysis -> commands -> ... -> analysis was not found"
    finally:
        GRAPH["confidence_neurons.analysis.weights"].discard("confidence_neurons.commands.scan")


def _under(prefix: str) -> list[str]:
    return [m for m in GRAPH if m == prefix or m.startswith(prefix + ".")]


def test_leaves_import_nothing_of_the_toolkit():
    for leaf in ("confidence_neurons.paper", "confidence_neurons.errors", "confidence_neurons._version"):
        assert GRAPH[leaf] == set(), f"{leaf} imports {GRAPH[leaf]}"
    storage = {f"{NAME}.{m}" for m in ("rundir", "stores", "files", "errors")}
    for m in storage:
        assert GRAPH[m] <= storage, f"{m}, the storage layer, imports {GRAPH[m] - storage}"


def test_layers_import_only_downward():
    commands, report, studies, cli = (f"{NAME}.{x}" for x in ("commands", "report", "studies", "cli"))
    above = {
        studies: (commands, report, cli),
        report: (commands, cli),
        f"{NAME}.analysis": (studies, commands, report),
        f"{NAME}.induction": (studies, commands, report),
    }
    for layer, forbidden in above.items():
        for m in _under(layer):
            bad = {i for i in GRAPH[m] if any(i == f or i.startswith(f + ".") for f in forbidden)}
            assert not bad, f"{m} imports {bad}, a layer above it"
    for m in _under("confidence_neurons.figures"):
        outside = {i for i in GRAPH[m] if not i.startswith("confidence_neurons.figures")}
        assert not outside, f"{m} imports {outside}: figures import nothing outside themselves"
