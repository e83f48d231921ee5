"""casare_nb.core stays pure (no I/O frameworks) and ``import casare_nb`` stays cheap."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import casare_nb

CORE = Path(casare_nb.__file__).parent / "core"
FORBIDDEN = frozenset(
    {
        "duckdb",
        "websockets",
        "papermill",
        "nbclient",
        "jupyter_client",
        "ipywidgets",
        "anywidget",
        "apscheduler",
        "playwright",
        "starlette",
        "aiohttp",
        "tornado",
        "nbformat",
        "yaml",
        "click",
    }
)
IMPORT_FUNCTIONS = {"__import__", "import_module"}


def imported_roots(tree: ast.AST) -> set[str]:
    """Top-level names of every module a tree imports, anywhere (also in functions)."""
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if (
                name in IMPORT_FUNCTIONS
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                roots.add(node.args[0].value.split(".")[0])
    return roots


def loaded_forbidden(code: str) -> list[str]:
    """Forbidden modules in sys.modules after running ``code`` in a fresh interpreter."""
    script = (
        f"{code}\n"
        "import json, sys\n"
        f"forbidden = {sorted(FORBIDDEN)!r}\n"
        "print(json.dumps(sorted({m for m in sys.modules if m.split('.')[0] in forbidden})))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


def test_core_sources_import_no_io_framework() -> None:
    """No file under casare_nb/core imports duckdb, papermill, nbformat, yaml, click and co."""
    files = sorted(CORE.rglob("*.py"))
    assert {"errors.py", "models.py", "params.py", "cells.py"} <= {f.name for f in files}
    offenders = {
        str(f.relative_to(CORE)): sorted(
            imported_roots(ast.parse(f.read_text("utf-8"))) & FORBIDDEN
        )
        for f in files
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_import_scanner_sees_nested_and_dynamic_imports() -> None:
    """The AST scan catches imports inside functions and importlib/__import__ calls."""
    tree = ast.parse(
        "def f():\n    import duckdb.typing\n"
        "def g():\n    from yaml import safe_load\n"
        "importlib.import_module('click')\n__import__('nbformat')\n"
    )
    assert imported_roots(tree) == {"duckdb", "yaml", "click", "nbformat"}


def test_importing_core_modules_loads_no_io_framework() -> None:
    """Importing core.params, injection, models and cells leaves every forbidden module unloaded."""
    code = (
        "import casare_nb.core.params, casare_nb.core.injection, casare_nb.core.models, "
        "casare_nb.core.cells"
    )
    assert loaded_forbidden(code) == []


def test_importing_the_package_is_lazy() -> None:
    """`import casare_nb` alone loads neither nbclient nor duckdb (nor the engine module)."""
    code = (
        "import sys, casare_nb\n"
        "assert 'casare_nb.local' not in sys.modules, 'casare_nb.local was imported'\n"
    )
    loaded = loaded_forbidden(code)
    assert "nbclient" not in loaded
    assert "duckdb" not in loaded
    assert loaded == []


OWNERS = {
    "apscheduler": {"orchestrator/triggers/schedules.py"},
    "watchdog": {"orchestrator/triggers/watch.py"},
    "pythonjsonlogger": {"logs.py"},
    "prometheus_client": {"orchestrator/metrics.py"},
    "fastapi": {"orchestrator/http/"},
    "uvicorn": {"orchestrator/http/"},
    "duckdb": {"store/database.py", "nodes/data.py"},  # the history; the SQL node in a kernel
    "psycopg": {"store/postgres.py"},
    "psycopg_pool": {"store/postgres.py"},
    "playwright": {"nodes/browser.py"},
    "anywidget": {"widgets/graph_view.py"},
    "papermill": {"papermill_engine.py"},
    "ipywidgets": {"widgets/"},
    "bqplot": {"widgets/chart.py"},
    "jupyter_server": {"jupyter/"},
    "tornado": {"jupyter/"},
    "websockets": {
        "orchestrator/websocket.py",
        "robot/agent.py",
        "robot/runner.py",
        "client/client.py",
        "client/events.py",
    },
}
"""Heavy dependency -> the module (or package, ending in /) that owns it."""


def test_each_heavy_dependency_is_imported_by_its_one_module() -> None:
    """apscheduler, watchdog, prometheus_client, FastAPI/uvicorn (the HTTP package), duckdb,
    psycopg, papermill, jupyter_server/tornado (the server extension), websockets, playwright and
    anywidget are each imported only by the module(s) that own them."""
    package = CORE.parent
    seen: dict[str, set[str]] = {name: set() for name in OWNERS}
    for path in package.rglob("*.py"):
        rel = path.relative_to(package).as_posix()
        for root in imported_roots(ast.parse(path.read_text("utf-8"))) & set(OWNERS):
            owner = next((o for o in OWNERS[root] if o.endswith("/") and rel.startswith(o)), rel)
            seen[root].add(owner)
    assert seen == OWNERS


def test_robot_processes_do_not_import_duckdb() -> None:
    """The robot's modules (agent, runner, process) load no duckdb: a robot keeps no history."""
    code = "import casare_nb.robot.main, casare_nb.robot.runner, casare_nb.robot.agent"
    assert "duckdb" not in loaded_forbidden(code)
