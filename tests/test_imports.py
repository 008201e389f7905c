"""The import graph of qfi_cli, read statically (ast): no module imports another that imports it back (not even
through a function-level import), and no module imports another module's private (``_name``) names.

Show the graph's cycles and private imports:  python -m pytest tests/test_imports.py -q
"""

from __future__ import annotations

import ast
from pathlib import Path

import qfi_cli

SRC = Path(qfi_cli.__file__).resolve().parent.parent


def _modules() -> dict[str, Path]:
    mods = {}
    for path in sorted((SRC / "qfi_cli").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(mod: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import of a qfi_cli module in ``path``, at any
    depth (top level, functions, classes). ``from pkg import sub`` names the submodule ``pkg.sub``."""
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name in mods]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name not in mods:
                continue
            for a in node.names:
                sub = f"{name}.{a.name}"
                found.append((sub, None, node.lineno) if sub in mods else (name, a.name, node.lineno))
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: {target for target, _, _ in _imports(m, p, mods) if target != m} for m, p in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that ends where it starts) per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for component in components:  # a shortest way back to the component's first module, by breadth-first search
        start, inside = component[0], set(component)
        paths, frontier = {start: [start]}, [start]
        while frontier:
            back = [v for v in frontier if start in graph[v]]
            if back:
                cycles.append(paths[back[0]] + [start])
                break
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & inside):
                    if w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
            frontier = nxt
    return cycles


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_function_level_imports():
    graph = _graph()
    assert "qfi_cli.faults.bits" in graph["qfi_cli.faults.replay"]
    assert "qfi_cli.faults.injector" in graph["qfi_cli.faults.search"]  # imported inside a function


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles in qfi_cli:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_names():
    mods = _modules()
    private = [f"{m} (line {line}) imports {name} from {target}"
               for m, p in mods.items() for target, name, line in _imports(m, p, mods)
               if name is not None and name.startswith("_") and not name.startswith("__") and target != m]
    assert not private, "private names imported across qfi_cli modules:\n" + "\n".join(private)
