"""No two modules of the package import each other, directly or through others.

Imports inside functions count too: a deferred import that closes a cycle hides a dependency
that runs both ways, which is what the package layout is meant to rule out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pyro_discrete

PACKAGE_DIR = Path(pyro_discrete.__file__).parent
PACKAGE = "pyro_discrete"


def _module_name(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package_dir: Path) -> dict[str, Path]:
    return {_module_name(path, package_dir): path for path in package_dir.rglob("*.py")}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from pkg import submodule`` names the
    submodule; ``from pkg import name`` the package's ``__init__``)."""
    modules = _modules(package_dir)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(name, path.name == "__init__.py", node)
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.append(submodule if submodule in modules else source)
            for target in targets:
                if target.split(".")[0] == PACKAGE and target in modules and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_deferred_and_relative_imports(tmp_path):
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .a import thing\n")
    (package / "sub" / "a.py").write_text("def f():\n    from pyro_discrete.sub import b\n")
    (package / "sub" / "b.py").write_text("from . import a\n")
    graph = import_graph(package)
    assert graph["pyro_discrete.sub"] == {"pyro_discrete.sub.a"}
    assert graph["pyro_discrete.sub.a"] == {"pyro_discrete.sub.b"}
    assert cycles(graph) == [["pyro_discrete.sub.a", "pyro_discrete.sub.b"]]


def test_no_import_cycles():
    # A submodule that imports names back from its own package's __init__ closes a cycle
    # too (the package imports the submodule): it works only by import order.
    assert cycles(import_graph(PACKAGE_DIR)) == []
