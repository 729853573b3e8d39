"""The house's import rule, checked from the source: every `import` counts, those inside functions too.

Rooms are the top-level packages and the entry scripts. Each room has a layer; a module may import its own room
and rooms of lower layers only, so imports run one way, from the entry scripts down to `operations/`:

    entry scripts (train, evaluate, mine, export, compare)      5
    training/                                                    4
    shipping/  mining/                                           3
    evaluation/                                                  2
    embedders/                                                   1.5
    losses/  datamodules/                                        1
    operations/                                                  0

Rooms of one layer do not import each other (shipping and mining, losses and datamodules). No module circle,
deferred imports included; no entry script imports another. Inside the library rooms, an import placed in a
function may only name a third-party package (an optional or heavy dependency), never a module of this project:
such an import would only hide an arrow from a reader. Entry scripts may defer their own room imports (start-up
time of `--help` and of command-line errors).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ENTRY_SCRIPTS = ("train", "evaluate", "mine", "export", "compare")
LAYERS = {
    "operations": 0,
    "losses": 1, "datamodules": 1,
    "embedders": 1.5,
    "evaluation": 2,
    "shipping": 3, "mining": 3,
    "training": 4,
    **{name: 5 for name in ENTRY_SCRIPTS},
}
#: Deferred project imports that are not hiding an arrow, with the reason (checked: every other one fails).
ALLOWED_DEFERRED: dict[tuple[str, str], str] = {}
SKIP_DIRS = {"tests", "benchmarks", "conf", "docs", "build", "dist", "logs", "data", "outputs", "multirun"}


@dataclass
class Graph:
    modules: dict[str, Path]
    edges: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    deferred: set[tuple[str, str, int]] = field(default_factory=set)   # (module, imported module, line)
    unknown_rooms: set[str] = field(default_factory=set)


def room(module: str) -> str:
    return module.split(".")[0]


def find_modules(root: Path) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in SKIP_DIRS or any(part.startswith(".") for part in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = path
    return out


def _resolve(target: str, known: dict[str, Path]) -> str | None:
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def build_graph(root: Path) -> Graph:
    graph = Graph(find_modules(root))
    known = graph.modules
    for name, path in known.items():
        if room(name) not in LAYERS:
            graph.unknown_rooms.add(room(name))
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        in_function = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        in_function.add(id(inner))
        for node in tree.body:  # a package's lazy exports ({"Name": ".module"}) are imports on first use
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "LAZY_EXPORTS"
                                                    for t in node.targets):
                for relative in ast.literal_eval(node.value).values():
                    level = len(relative) - len(relative.lstrip("."))
                    base = ".".join(package[: len(package) - (level - 1)] + [relative.lstrip(".")]) if level \
                        else relative
                    resolved = _resolve(base, known)
                    if resolved is not None and resolved != name:
                        graph.edges[name].add(resolved)
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package[: len(package) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" if base else a.name for a in node.names]
            for target in targets:
                resolved = _resolve(target, known)
                if resolved is None or resolved == name:
                    continue
                graph.edges[name].add(resolved)
                if id(node) in in_function:
                    graph.deferred.add((name, resolved, node.lineno))
    return graph


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def violations(root: str | Path) -> list[str]:
    """Every breach of the rule in the tree at `root`, one line each (empty: the house is in order)."""
    graph = build_graph(Path(root))
    problems = [f"room {r!r} has no layer in tests/house/import_graph.py: place it" for r in sorted(graph.unknown_rooms)]
    for module, targets in sorted(graph.edges.items()):
        a = room(module)
        for target in sorted(targets):
            b = room(target)
            if a == b or a not in LAYERS or b not in LAYERS:
                continue
            if a in ENTRY_SCRIPTS and b in ENTRY_SCRIPTS:
                problems.append(f"entry script imports another: {module} -> {target}")
            elif LAYERS[b] >= LAYERS[a]:
                problems.append(f"{module} -> {target}: {a} may not import {b} (layer {LAYERS[a]} imports lower "
                                f"layers only; {b} is layer {LAYERS[b]})")
    for component in _cycles(graph.edges):
        problems.append("module circle: " + " -> ".join(component))
    for module, target, line in sorted(graph.deferred):
        if room(module) not in ENTRY_SCRIPTS and (module, target) not in ALLOWED_DEFERRED:
            problems.append(f"{graph.modules[module]}:{line}: {module} imports {target} inside a function (project "
                            "modules are imported at the top; a deferred import is for a third-party dependency)")
    return problems


if __name__ == "__main__":
    found = violations(Path.cwd())
    print("\n".join(found) or "imports run one way")
    sys.exit(1 if found else 0)
