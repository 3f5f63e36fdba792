"""The package's modules form no import cycle: no module imports one that (directly or through others) imports it
back. Every ``import`` statement counts, at module level or inside a function."""

import ast
from pathlib import Path

import medpeft

PACKAGE = Path(medpeft.__file__).parent


def module_name(path: Path) -> str:
    parts = ("medpeft",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the medpeft modules it imports (``from pkg import sub`` counts as importing the submodule)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
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


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "medpeft.bench.executors" in graph["medpeft.bench.executor_choice"]
    assert "medpeft.data.br35h" in graph["medpeft.data.registry"]  # `from . import br35h`


def test_no_module_imports_one_that_imports_it_back():
    assert cycles(import_graph()) == []


def test_only_the_cli_imports_the_study_code():
    """Study code (medpeft.studies: the demo's datasets, backbones and tables) uses the library; the library never
    uses it, except the CLI that runs the demo."""
    graph = import_graph()
    users = sorted(
        m
        for m, targets in graph.items()
        if not m.startswith("medpeft.studies") and any(t.startswith("medpeft.studies") for t in targets)
    )
    assert users and all(u == "medpeft.cli" or u.startswith("medpeft.cli.") for u in users), users
