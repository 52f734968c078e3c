"""The package's shape (docs/ARCHITECTURE.md): imports flow one way, with no cycle; modules import the package's
own modules at the top, not inside functions; every module stays short enough to read in a sitting."""

import ast
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
# Function-local imports of our own modules that defer a heavy dependency, and why.
DEFERRED = {
    ("pipeline.cli", "pipeline.train.loop"): "torch and transformers: `flanpipe render` and `lint` stay light",
    ("pipeline.cli", "pipeline.evaluate.command"): "torch and transformers: `flanpipe render` and `lint` stay light",
    ("pipeline.cli", "pipeline.modeling"): "transformers, for `render --tokenized` only",
}
MAX_LINES = 420


def module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    """(module -> the package modules it imports, [(module, imported, line) for imports inside functions]).

    `from a.b import c` depends on `a.b.c` when that is a module, else on `a.b`; importing a module also runs
    its parent packages' `__init__`, so it depends on those too. Imports under `if TYPE_CHECKING:` count: a
    cycle of type hints is still two modules that each need the other to be read.
    """
    package = root.name
    modules = {module_name(root, path): path for path in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    local: list[tuple[str, str, int]] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        functions = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)]
        inside = {id(inner) for function in functions for inner in ast.walk(function)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                           for alias in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] != package:
                    continue
                parts = target.split(".")
                for depth in range(1, len(parts) + 1):
                    dependency = ".".join(parts[:depth])
                    if dependency in modules and dependency != name and not name.startswith(dependency + "."):
                        graph[name].add(dependency)
                if id(node) in inside:
                    local.append((name, target, node.lineno))
    return graph, local


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, deterministic order)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == "open":
                return stack[stack.index(child):] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph, _ = import_graph(PACKAGE)
    assert len(graph) > 30, "the walk found too few modules"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_subpackages_import_one_way():
    """Collapsed to `pipeline.<first level>`, the graph is still acyclic: whole layers depend one way."""
    graph, _ = import_graph(PACKAGE)
    layer = {name: ".".join(name.split(".")[:2]) for name in graph}
    layers: dict[str, set[str]] = {}
    for name, dependencies in graph.items():
        layers.setdefault(layer[name], set()).update(
            layer[d] for d in dependencies if layer[d] != layer[name] and d != PACKAGE.name)
    cycle = find_cycle(layers)
    assert cycle is None, "layers import each other: " + " -> ".join(cycle)


def test_own_modules_are_imported_at_the_top_unless_deferring_a_heavy_dependency():
    _, local = import_graph(PACKAGE)
    unexplained = [f"{module}:{line} imports {target}" for module, target, line in local
                   if (module, target) not in DEFERRED]
    assert unexplained == []


def test_every_module_is_short_enough_to_read_in_a_sitting():
    long = {module_name(PACKAGE, path): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "pkg"


@pytest.mark.parametrize("kind", ["top level", "inside a function", "type checking", "through a package init"])
def test_the_walk_finds_a_cycle_however_it_is_hidden(tmp_path, kind):
    """The checks above are only as good as the walk: a cycle added back in any form must be found."""
    back = {
        "top level": "from pkg.a import f\n",
        "inside a function": "def g():\n    from pkg.a import f\n",
        "type checking": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n",
        "through a package init": "import pkg.sub\n",
    }[kind]
    root = write_package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg.b import g\n\ndef f():\n    pass\n",
        "b.py": back,
        "sub/__init__.py": "from pkg.sub.c import h\n",
        "sub/c.py": "import pkg.a\n\ndef h():\n    pass\n",
    })
    graph, _ = import_graph(root)
    assert find_cycle(graph) is not None
    acyclic = write_package(tmp_path / "ok", {"__init__.py": "", "a.py": "from pkg.b import g\n", "b.py": "g = 1\n"})
    assert find_cycle(import_graph(acyclic)[0]) is None
