"""Machines decide, actors do I/O: machines/ imports no I/O, clock or actor, and stays strict."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from quiesce.machines import ALL_MACHINES, Lifecycle

MACHINES_DIR = Path(__file__).resolve().parents[1] / "machines"
MACHINE_FILES = sorted(MACHINES_DIR.glob("*.py"))

# Top-level packages a machine module must never import.
FORBIDDEN = frozenset(
    {
        "trio",
        "websockets",
        "pulsar",
        "pulsar_lite",
        "time",
        "asyncio",
        "socket",
        "logging",
        "actors",
        "supervisor",
    }
)


def imported_modules(source: str) -> set[str]:
    """Every module name an ``import`` or ``from … import`` statement in ``source`` names.

    ``from x import y`` yields both ``x`` and ``x.y`` (``y`` may be a submodule), and a relative
    import from inside machines/ yields ``machines.…``.
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = "machines" + ("." + base if base else "")
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _top(name: str) -> str:
    """The package a module name belongs to, looking through the ``quiesce.`` prefix."""
    parts = name.split(".")
    if parts[0] == "quiesce" and len(parts) > 1:
        return parts[1]
    return parts[0]


def forbidden_imports(source: str) -> set[str]:
    """The imports in ``source`` whose top-level package is forbidden to a machine."""
    return {name for name in imported_modules(source) if _top(name) in FORBIDDEN}


def test_the_machines_package_has_modules_to_check() -> None:
    """The scan finds the machine modules, so an empty glob cannot pass silently."""
    names = {path.name for path in MACHINE_FILES}
    assert {"__init__.py", "_base.py", "connection.py", "worker.py"} <= names
    assert {"supervisor.py", "receipts.py", "delivery.py", "broker.py"} <= names


@pytest.mark.parametrize("path", MACHINE_FILES, ids=lambda p: p.name)
def test_a_machine_module_imports_no_io_clock_or_actor(path: Path) -> None:
    """No machine module imports trio, sockets, Pulsar, a clock, logging, actors/ or supervisor."""
    assert forbidden_imports(path.read_text(encoding="utf-8")) == set()


@pytest.mark.parametrize(
    "source",
    [
        "import trio",
        "import time as clock",
        "from trio import sleep",
        "import pulsar_lite.binary_finder",
        "from actors.publisher import Publisher",
        "from quiesce.actors.publisher import Publisher",
        "from quiesce import supervisor",
        "from supervisor import Supervisor",
        "def f():\n    import logging\n",
        "if True:\n    from asyncio import sleep\n",
        "try:\n    import socket\nexcept ImportError:\n    pass\n",
        "import os, websockets",
    ],
)
def test_the_import_scan_catches_a_forbidden_import(source: str) -> None:
    """The scanner sees forbidden imports however they are spelled or nested."""
    assert forbidden_imports(source)


@pytest.mark.parametrize(
    "source",
    [
        "from statemachine import State",
        "from machines._base import Lifecycle",
        "from quiesce.machines._base import Lifecycle",
        "from quiesce.core.protocol import CloseCode",
        "from . import publisher",
        "import timeit",
        "from __future__ import annotations",
    ],
)
def test_the_import_scan_lets_an_allowed_import_through(source: str) -> None:
    """Allowed imports (and names that merely start like a forbidden one) pass the scan."""
    assert forbidden_imports(source) == set()


@pytest.mark.parametrize("cls", [Lifecycle, *ALL_MACHINES], ids=lambda c: c.__name__)
def test_every_machine_class_is_strict(cls: type[Lifecycle]) -> None:
    """An illegal event raises and a callback's error propagates, on every machine class."""
    assert cls.allow_event_without_transition is False
    assert cls.catch_errors_as_events is False


def test_every_machine_derives_from_the_strict_base() -> None:
    """Every machine in ``ALL_MACHINES`` inherits the strict ``Lifecycle`` settings."""
    assert len(ALL_MACHINES) == 5
    for cls in ALL_MACHINES:
        assert issubclass(cls, Lifecycle)
