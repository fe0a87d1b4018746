"""The package's shape, read from its source: the map, the sizes, and who may import whom.

Imports are read with `ast`, so an import inside a function counts as much as one at the top
(it runs all the same, just later); only those under `if TYPE_CHECKING:` are left out, as they
never run. A package's `__init__` counts as importing what it imports, lazily or not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dualgate

PACKAGE = Path(dualgate.__file__).parent
ARCHITECTURE = PACKAGE.parent / "ARCHITECTURE.md"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _runtime_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(inner) for inner in ast.walk(node))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in MODULES}


GRAPH = {name: _runtime_imports(path) - {name} for name, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(GRAPH[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    return found


def _reaches(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in GRAPH[todo.pop()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_import_graph_has_no_circle() -> None:
    assert _cycles() == []


def test_the_graph_sees_deferred_imports() -> None:
    # The reading above must count an import made inside a function: the launcher imports the
    # supervisor only when --workers asks for it, and that import is real.
    assert "dualgate.procs.supervisor" in _reaches("dualgate.launch")


def test_architecture_md_names_every_module() -> None:
    text = ARCHITECTURE.read_text()
    missing = [
        str(path.relative_to(PACKAGE))
        for path in MODULES.values()
        if path.name not in {"__init__.py", "__main__.py"}
        and str(path.relative_to(PACKAGE)) not in text
    ]
    assert missing == []


def test_architecture_md_names_no_module_that_is_gone() -> None:
    text = ARCHITECTURE.read_text()
    named = {word.strip("`,.;:()") for word in text.split()}
    paths = {str(path.relative_to(PACKAGE)) for path in MODULES.values()}
    subpackages = {path.split("/")[0] for path in paths if "/" in path}
    # A name like `http/reader.py` is a module of the package; `tests/...` and `hello.py` are not.
    claimed = {
        name
        for name in named
        if name.endswith(".py") and "/" in name and name.split("/")[0] in subpackages
    }
    assert claimed - paths == set()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_600_lines_and_no_class_over_400(name: str) -> None:
    source = MODULES[name].read_text()
    assert len(source.splitlines()) <= 600
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno is not None
            assert node.end_lineno - node.lineno + 1 <= 400, node.name


def test_the_top_level_stays_small() -> None:
    subpackages = [path for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()]
    top_modules = list(PACKAGE.glob("*.py"))
    assert len(subpackages) >= 4
    assert len(top_modules) <= 15


@pytest.mark.parametrize("name", sorted(n for n in MODULES if MODULES[n].name == "__init__.py"))
def test_every_subpackage_says_what_it_owns_and_may_import(name: str) -> None:
    doc = ast.get_docstring(ast.parse(MODULES[name].read_text())) or ""
    if name != "dualgate":
        assert "May import" in doc


# Which part may never import which (ARCHITECTURE.md, "Import rules").
FORBIDDEN = {
    # The wire modules do no I/O and know nothing above them.
    "dualgate.http.reader": ("dualgate.http.connection", "dualgate.http.cycle"),
    "dualgate.http.checks": ("dualgate.http.reader",),
    # The HTTP core never reaches up to the interfaces, the process layer or the server.
    "dualgate.http": (
        "dualgate.wsgi",
        "dualgate.asgi",
        "dualgate.ws",
        "dualgate.procs",
        "dualgate.server",
        "dualgate.launch",
    ),
    # HTTP/2 sits beside the HTTP core, below the interfaces, as the HTTP core does.
    "dualgate.h2": (
        "dualgate.wsgi",
        "dualgate.asgi",
        "dualgate.ws",
        "dualgate.procs",
        "dualgate.server",
        "dualgate.launch",
    ),
    "dualgate.wsgi.bridge": ("dualgate.http.connection", "dualgate.http.cycle"),
    "dualgate.wsgi.pool": ("dualgate.http",),
    "dualgate.wsgi.middleware": ("dualgate.http.connection", "dualgate.http.cycle"),
    # The ASGI handler hands WebSocket upgrades to ws/: ws may share the pure scope builder
    # (asgi/scope.py), never the handler.
    "dualgate.ws": ("dualgate.asgi.handler",),
    "dualgate.procs": ("dualgate.launch",),
    "dualgate.net": ("dualgate.http", "dualgate.server", "dualgate.procs"),
    "dualgate.metrics.snapshot": ("dualgate.http",),
    "dualgate.errors": ("dualgate.",),
}


@pytest.mark.parametrize("source", sorted(FORBIDDEN))
def test_forbidden_imports(source: str) -> None:
    importers = [n for n in GRAPH if n == source or n.startswith(source + ".")]
    assert importers, source
    for importer in importers:
        for banned in FORBIDDEN[source]:
            hits = sorted(t for t in GRAPH[importer] if t == banned or t.startswith(banned))
            assert hits == [], f"{importer} imports {hits}"


@pytest.mark.parametrize("name", ["dualgate.http.reader", "dualgate.http.checks"])
def test_the_wire_modules_do_no_io(name: str) -> None:
    # The stdlib is not in the graph above, so these are read from the source itself.
    tree = ast.parse(MODULES[name].read_text())
    names = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    } | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert names.isdisjoint({"asyncio", "socket", "selectors", "ssl"})
