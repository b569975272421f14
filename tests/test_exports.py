"""Every public name a module lists in ``__all__`` exists, and the layering
rule holds: ``models`` and ``metering`` import nothing from ``store``,
``admission``, ``proxy``, ``billing`` or ``web``; the adapters ``store`` and
``admission`` import neither each other nor anything above them."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import voxgate

PACKAGE_DIR = Path(voxgate.__file__).parent
MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages([str(PACKAGE_DIR)], prefix="voxgate.")
)


@pytest.mark.parametrize("name", [m for m in MODULES if m != "voxgate.__main__"])
def test_all_names_exist(name):
    module = importlib.import_module(name)
    for public in getattr(module, "__all__", ()):
        assert hasattr(module, public), f"{name}.__all__ lists missing {public!r}"


_ABOVE = ("voxgate.proxy", "voxgate.billing", "voxgate.web", "voxgate.jobs", "voxgate.server",
          "voxgate.cli", "voxgate.admin")
FORBIDDEN = {
    "models": ("voxgate.store", "voxgate.admission", *_ABOVE),
    "metering": ("voxgate.store", "voxgate.admission", *_ABOVE),
    "store": ("voxgate.admission", *_ABOVE),
    "admission": ("voxgate.store", *_ABOVE),
}


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_core_rooms_do_not_import_edges(room):
    for path in (PACKAGE_DIR / room).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert not any(n == f or n.startswith(f + ".") for f in FORBIDDEN[room]), \
                    f"{path.relative_to(PACKAGE_DIR)} imports {n}"
