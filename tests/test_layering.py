"""shared/ is the core: it imports nothing above it. The worker and the API import shared,
never the other way round; the CLI starts them as processes by name and sends tasks by
name (shared.jobs). Every module under shared/ is parsed, imports inside functions and
importlib.import_module("...") calls included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ABOVE_THE_CORE = ("worker", "api")


def imports_from_above(source: str) -> list[tuple[int, str]]:
    """(line, module) of every import of a package in ABOVE_THE_CORE, wherever it is."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [(node.lineno, n) for n in names if n.split(".")[0] in ABOVE_THE_CORE]
    return sorted(found)


def test_shared_imports_nothing_above_it():
    files = sorted((ROOT / "shared").rglob("*.py"))
    assert ROOT / "shared" / "cli.py" in files and ROOT / "shared" / "jobs.py" in files
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for path in files
        for line, module in imports_from_above(path.read_text())
    ]
    assert offenders == []


def test_the_check_sees_every_kind_of_import():
    source = """
import os
import worker
from api.ops import bp
from shared import jobs
from . import api
import apiary

def later():
    from worker.app import make_celery
    import importlib
    importlib.import_module("api")
    return __import__("worker.tasks")
"""
    assert imports_from_above(source) == [
        (3, "worker"),
        (4, "api.ops"),
        (10, "worker.app"),
        (12, "api"),
        (13, "worker.tasks"),
    ]
