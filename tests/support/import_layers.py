"""The layer order of ``persona_axis`` and a static check of it (AST only; nothing is imported).

Every ``import`` statement counts, wherever it sits: module level, inside a function (lazy),
or under ``if TYPE_CHECKING``. A module may import from its own layer's unit, from a lower
layer, and from the same layer only where :data:`SAME_LAYER` allows that one edge. The package
face (``persona_axis/__init__.py``) may import anything; only ``cli`` sits above it. Imports of
one's own enclosing subpackages (``from persona_axis.models import X`` inside ``models/``) are
not edges, as Python runs those ``__init__`` files first anyway; the package root is the face,
so ``import persona_axis`` inside the package is an edge to it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

FACE = "__init__"

# Lowest first; each entry is one layer of units (a subpackage or a top-level module).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "files", "_version", "intervals"),
    ("models", "catalog"),
    ("inference",),
    ("axis", "judges"),
    ("pipeline", "report", "application"),
    ("drift", "evals"),
    ("serve",),
    (FACE,),
    ("cli",),
)

# The only imports allowed between two units of one layer: (importer, imported).
SAME_LAYER: frozenset[tuple[str, str]] = frozenset({("files", "errors")})


@dataclass(frozen=True)
class Edge:
    """``source`` (a module) imports ``target`` (a module) at ``line`` of ``path``."""

    source: str
    target: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} imports {self.target}"


def modules(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``package`` under ``src``."""
    found = {}
    for path in sorted((src / package).rglob("*.py")):
        dotted = ".".join(path.relative_to(src).with_suffix("").parts)
        found[dotted.removesuffix(".__init__")] = path
    return found


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Candidate dotted names one import statement brings in (most specific first)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, base] if base else parts)
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph(src: Path, package: str) -> dict[str, list[Edge]]:
    """Every module's imports of other modules of ``package``, with file and line."""
    known = modules(src, package)

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, list[Edge]] = {name: [] for name in known}
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = _targets(node, name, is_package)
            if isinstance(node, ast.ImportFrom) and targets:
                # ``from pkg import sub`` names the submodule when one exists, else pkg itself
                named = [t for t in targets[:-1] if t in known]
                targets = named or targets[-1:]
            for target in {resolve(t) for t in targets}:
                if target is None or target == name:
                    continue
                if name.startswith(target + ".") and target != package:
                    continue  # an enclosing subpackage
                graph[name].append(Edge(name, target, path, getattr(node, "lineno", 0)))
    return graph


def unit_of(module: str, package: str) -> str:
    """The unit a module belongs to: its top-level subpackage or module, or the face."""
    parts = module.split(".")
    return FACE if parts == [package] else parts[1]


def layer_of(unit: str) -> int | None:
    return next((index for index, units in enumerate(LAYERS) if unit in units), None)


def violations(graph: Mapping[str, Iterable[Edge]], package: str) -> list[str]:
    """Imports against :data:`LAYERS`, and modules in no layer."""
    problems = []
    for module, edges in graph.items():
        source = unit_of(module, package)
        here = layer_of(source)
        if here is None:
            problems.append(f"{module}: unit {source!r} is in no layer; add it to LAYERS")
            continue
        for edge in edges:
            target = unit_of(edge.target, package)
            there = layer_of(target)
            if target == source:
                continue
            if there is None or there > here:
                problems.append(f"{edge}: upward ({source} -> {target})")
            elif there == here and (source, target) not in SAME_LAYER:
                problems.append(f"{edge}: same layer ({source} -> {target}) not in SAME_LAYER")
    return problems


def cycles(graph: Mapping[str, Iterable[Edge]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    successors = {
        module: sorted({edge.target for edge in edges}) for module, edges in graph.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in successors:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if child < len(successors[node]):
                work.append((node, child + 1))
                nxt = successors[node][child]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found
