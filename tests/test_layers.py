"""The package's layers point one way: every import between casare_nb's modules (at module
level, in functions, under TYPE_CHECKING) follows the table below, and none makes a cycle.

The table is the map of docs/architecture.md: a part may import the parts listed for it and
nothing above. Function-level imports of casare_nb modules (which hide an arrow from a
reader) are kept to the modules that do it for start-up cost and say so.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import casare_nb

PACKAGE = Path(casare_nb.__file__).parent

ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "protocol": {"core"},
    "api": {"core"},
    "outputs": {"core"},
    "notebook": {"core"},
    "store": {"core", "notebook"},
    "ops": {"core", "notebook", "store"},  # operators' procedures: backup, retention
    "local": {"core", "notebook", "store"},
    "papermill_engine": {"core", "notebook", "local"},
    "robot": {"core", "protocol", "notebook", "settings"},
    "orchestrator": {"core", "protocol", "api", "notebook", "store", "ops", "logs", "settings"},
    "client": {"core", "protocol", "api"},
    "nodes": {"core", "notebook", "local", "outputs"},  # what node cells call at run time
    "site": set(),
    "logs": set(),  # the services' log files and formats
    "settings": set(),  # the services' settings sources (YAML file, environment)
    "widgets": {"core", "protocol", "api", "client", "local", "notebook", "nodes"},
    "service_thread": {"orchestrator", "robot", "client"},
    "debugging": {"core", "api", "client", "notebook"},
    "jupyter": {"core", "api", "client", "notebook", "debugging"},
    "cli": {
        "core",
        "protocol",
        "api",
        "notebook",
        "store",
        "ops",
        "local",
        "robot",
        "orchestrator",
        "client",
        "service_thread",
        "debugging",
        "jupyter",
        "logs",
    },
    "": {"core", "outputs", "notebook", "local", "client"},  # casare_nb/__init__: the lazy API
}
"""Part -> the parts it may import (besides itself)."""

ORCHESTRATOR: dict[str, set[str]] = {
    "jobs": set(),
    "registry": set(),
    "metrics": set(),
    "audit": set(),
    "config": set(),
    "brake": {"audit"},
    "triggers": set(),
    "leader": set(),
    "elsewhere": set(),
    "websocket": {"jobs", "registry", "metrics", "brake", "audit", "elsewhere"},
    "orchestrator": {"jobs", "registry", "metrics", "triggers", "websocket", "leader", "elsewhere"},
    "http": {"orchestrator", "triggers", "metrics", "brake", "audit"},
    "service": {"orchestrator", "http"},
}
"""Inside the orchestrator: the front door (orchestrator.py) over its parts; HTTP over it."""

LAZY_IMPORTERS = {
    "__init__.py",
    "client",
    "papermill_engine.py",
    "cli",
    "jupyter",
    "store/backends.py",
}
"""Where function-level imports of casare_nb modules are allowed: each says why (start-up
cost, or papermill's plugin loading) in its docstring."""


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path) -> Iterator[tuple[str, int, bool]]:
    """(imported casare_nb module, line, inside a function) of every import in ``path``."""
    tree = ast.parse(path.read_text("utf-8"))
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            in_function.update(id(sub) for sub in ast.walk(node) if sub is not node)
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], base]).strip(".")
            names = [f"{base}.{alias.name}" for alias in node.names]
            targets = [n for n in names if (PACKAGE.parent / n.replace(".", "/")).exists()]
            targets = targets or [base]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            if target == "casare_nb" or target.startswith("casare_nb."):
                yield target, node.lineno, id(node) in in_function


def part(module: str) -> str:
    """The layer a module belongs to: casare_nb.<part>... ('' for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def orchestrator_part(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "orchestrator" else None


def edges() -> Iterator[tuple[str, str, int, bool]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for target, line, lazy in imports(path):
            yield source, target, line, lazy


def test_every_import_between_parts_follows_the_table() -> None:
    """No module imports a part its own part may not (function-level and TYPE_CHECKING
    imports count)."""
    wrong = []
    for source, target, line, _ in edges():
        mine, theirs = part(source), part(target)
        if target == "casare_nb":  # the package root: its version and a lazy getattr
            continue
        if mine != theirs and theirs not in ALLOWED[mine]:
            wrong.append(f"{source}:{line} imports {target}")
    assert wrong == []


def test_the_orchestrator_reads_top_down() -> None:
    """Inside the orchestrator, the front door imports its parts and the HTTP API imports
    the front door, never the other way."""
    wrong = []
    for source, target, line, _ in edges():
        mine, theirs = orchestrator_part(source), orchestrator_part(target)
        if mine is None or theirs is None or mine == theirs:
            continue
        if theirs not in ORCHESTRATOR[mine]:
            wrong.append(f"{source}:{line} imports {target}")
    assert wrong == []


def test_there_is_no_import_cycle() -> None:
    """The graph of imports between modules has no cycle."""
    graph: dict[str, set[str]] = {}
    for source, target, _, _ in edges():
        if source != target and not (source.startswith(target + ".")):
            graph.setdefault(source, set()).add(target)
    seen: dict[str, int] = {}  # 1 on the stack, 2 done
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                cycle.extend([*stack[stack.index(nxt) :], nxt] if nxt in stack else [node, nxt])
                return True
            if nxt not in seen and visit(nxt, [*stack, nxt]):
                return True
        seen[node] = 2
        return False

    for node in sorted(graph):
        if node not in seen and visit(node, [node]):
            break
    assert cycle == []


def test_function_level_imports_are_where_start_up_cost_asks_for_them() -> None:
    """casare_nb modules are imported inside functions only by the lazy entry points (the
    package, the CLI, the client, the papermill engine, the store backends' chooser), each
    saying so in its docstring."""
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        lazy = [line for _, line, inside in imports(path) if inside]
        if not lazy:
            continue
        if rel.parts[0] not in LAZY_IMPORTERS and rel.as_posix() not in LAZY_IMPORTERS:
            wrong.append(f"{rel}:{lazy[0]}")
    assert wrong == []
    for name in (
        "__init__.py",
        "client/client.py",
        "client/events.py",
        "papermill_engine.py",
        "cli/app.py",
        "store/backends.py",
    ):
        doc = ast.get_docstring(ast.parse((PACKAGE / name).read_text("utf-8"))) or ""
        why = ("on first use", "start-up", "first asked for")
        assert any(w in doc for w in why), f"{name} does not say why it imports in functions"


def test_the_import_scanner_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The scanner finds relative, function-level and TYPE_CHECKING imports."""
    found = {(t, lazy) for t, _, lazy in imports(PACKAGE / "orchestrator" / "triggers" / "hub.py")}
    assert ("casare_nb.orchestrator.triggers.desk", False) in found  # under TYPE_CHECKING
    lazy = {t for t, _, inside in imports(PACKAGE / "cli" / "service.py") if inside}
    assert "casare_nb.orchestrator.service" in lazy
