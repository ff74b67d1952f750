"""The house points one way: no import circle between modules or packages, deferred imports included.

Every import of `ml.src` (module level, inside functions, under TYPE_CHECKING) is an edge; only the
`if __name__ == "__main__":` block of a module is left out, since running a module as a script is the
one place a core module may hand over to the command line above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "ml" / "src"

# Lowest first: a package may import only from its own layer or below.
LAYERS: tuple[str, ...] = (
    "common",
    "data",
    "features",
    "training",
    "inference",
    "monitoring",
    "scheduler",
    "cli",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.rglob("*.py")}


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    left = node.test.left
    return isinstance(left, ast.Name) and left.id == "__name__"


def _walk_without_main_guard(tree: ast.Module) -> list[ast.AST]:
    nodes: list[ast.AST] = []
    stack: list[ast.AST] = [s for s in tree.body if not _is_main_guard(s)]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports (a `from pkg import mod` counts as importing `pkg.mod`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _walk_without_main_guard(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            targets = [f"{stem}.{alias.name}" for alias in node.names] + [stem]
        for target in targets:
            # The longest project module the target names (pkg.mod.attr -> pkg.mod).
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name and not _is_empty_package(modules[target]):
                found.add(target)
    return found


def _is_empty_package(path: Path) -> bool:
    """A package's `__init__` that imports nothing is only a marker, not an edge worth following."""
    if path.name != "__init__.py":
        return False
    tree = ast.parse(path.read_text())
    return not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree))


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one member are the circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(module: str) -> str:
    parts = module.split(".")
    # ml.src.<pkg>.<mod>; a module directly under ml.src (none should remain) counts as common.
    return parts[2] if len(parts) > 3 else "common"


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set(LAYERS), f"packages without a layer: {sorted(packages - set(LAYERS))}"


def test_no_import_circle_between_modules() -> None:
    circles = strongly_connected(import_graph())
    assert circles == [], "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_packages_import_only_downward() -> None:
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = sorted(
        f"{src} -> {dst}"
        for src, targets in import_graph().items()
        for dst in targets
        if rank[layer_of(dst)] > rank[layer_of(src)]
    )
    assert upward == [], "imports that point up the layers:\n" + "\n".join(upward)


def test_the_check_sees_a_deferred_circle(tmp_path: Path) -> None:
    """The checker itself can fail: a circle kept alive by an import inside a function is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    pkg = tmp_path / "ml" / "src" / "training"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "one.py").write_text("def f():\n    from ml.src.training import two\n")
    (pkg / "two.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import one\n"
    )
    (pkg / "three.py").write_text("if __name__ == '__main__':\n    from ml.src.training import one\n")
    modules = {module_name_at(tmp_path, p): p for p in (tmp_path / "ml").rglob("*.py")}
    graph = {n: imports_of(n, p, modules) for n, p in modules.items()}
    assert strongly_connected(graph) == [["ml.src.training.one", "ml.src.training.two"]]
    assert graph["ml.src.training.three"] == set()


def module_name_at(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)
