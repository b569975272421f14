"""The house rules of ``voxgate/`` (docs/architecture.md), checked on the
import graph read from the source with ``ast``: no import circle, every
import runs down the floors (a package imports only packages below it),
``models`` and ``metering`` import nothing from the adapters or the rooms
above them, and ``metering`` does no I/O and reads no clock.

Every import counts, at module level or inside a function, except those
under ``if TYPE_CHECKING:`` (annotations only, never executed).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "voxgate"

# Floors from the top down; a module imports only from its own floor's
# package (no circle) or from a floor below.
FLOORS: list[tuple[str, ...]] = [
    ("voxgate.__main__", "voxgate.cli"),
    ("voxgate.admin", "voxgate.call"),
    ("voxgate.server",),
    ("voxgate.web",),
    ("voxgate.jobs",),
    ("voxgate.billing", "voxgate.loadtest"),
    ("voxgate.proxy",),
    ("voxgate.admission", "voxgate.store"),
    ("voxgate.voice",),
    ("voxgate.config",),
    ("voxgate.metering",),
    ("voxgate.models",),
    ("voxgate.errors", "voxgate.logs", "voxgate.caches", "voxgate.aio", "voxgate"),
]
ABOVE_THE_DOMAIN = ("voxgate.store", "voxgate.admission", "voxgate.proxy", "voxgate.billing",
                    "voxgate.web", "voxgate.jobs", "voxgate.server", "voxgate.voice",
                    "voxgate.loadtest", "voxgate.cli", "voxgate.config")
IO_MODULES = ("sqlite3", "psycopg", "psycopg_pool", "redis", "aiohttp", "aiortc", "aioice",
              "asyncio", "socket", "ssl", "threading", "subprocess", "time", "os", "urllib",
              "http", "requests", "stripe", "websockets")
CLOCK_CALLS = ("now", "utcnow", "today", "time", "monotonic", "perf_counter")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(tree: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` that skips ``if TYPE_CHECKING:`` bodies."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                todo.extend(child.orelse)
                continue
            todo.append(child)


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules ``name`` imports: voxgate modules resolved to the module
    itself (``from voxgate.store import x`` is ``voxgate.store``, or
    ``voxgate.store.x`` when ``x`` is a module), others to their top name."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name if alias.name in known else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base in known or base.startswith("voxgate"):
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in known else base)
            else:
                found.add(base.split(".")[0])
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def floor_of(module: str) -> int:
    best, floor = -1, len(FLOORS)
    for i, roots in enumerate(FLOORS):
        for root in roots:
            if (module == root or module.startswith(root + ".")) and len(root) > best:
                best, floor = len(root), i
    return floor


def room_of(module: str) -> str:
    for roots in FLOORS:
        for root in sorted(roots, key=len, reverse=True):
            if root != "voxgate" and (module == root or module.startswith(root + ".")):
                return root
    return module


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read(graph):
    """The check itself sees the arrows it is about (a guard against an
    import reader that finds nothing and passes everything)."""
    assert "voxgate.proxy.gateway" in graph["voxgate.server"]
    assert "voxgate.metering.verdict" in graph["voxgate.proxy.gateway"]
    assert "voxgate.models.sessions" in graph["voxgate.metering.verdict"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert floor_of("voxgate.web.views") < floor_of("voxgate.proxy.gateway") < floor_of(
        "voxgate.models.plans")


def test_no_import_circle(graph):
    assert circles(graph) == []


def test_every_import_runs_down_the_floors(graph):
    upward = sorted(
        f"{src} -> {dst}"
        for src, dsts in graph.items() for dst in dsts
        if dst.startswith("voxgate") and room_of(src) != room_of(dst)
        and floor_of(dst) < floor_of(src)
    )
    assert upward == []


@pytest.mark.parametrize("room", ["voxgate.models", "voxgate.metering"])
def test_the_domain_imports_nothing_above_it(graph, room):
    bad = sorted(f"{src} -> {dst}" for src, dsts in graph.items()
                 if src == room or src.startswith(room + ".")
                 for dst in dsts if dst.startswith(ABOVE_THE_DOMAIN))
    assert bad == []


def test_metering_does_no_io_and_reads_no_clock(graph):
    mods = modules()
    io = sorted(f"{src} imports {dst}" for src, dsts in graph.items()
                if src.startswith("voxgate.metering")
                for dst in dsts if dst.split(".")[0] in IO_MODULES)
    clock = []
    for name, path in mods.items():
        if not name.startswith("voxgate.metering"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in CLOCK_CALLS:
                clock.append(f"{name}:{node.lineno} calls .{node.func.attr}()")
    assert io == [] and clock == []
