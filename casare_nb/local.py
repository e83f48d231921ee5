"""Run and resume workflows in this process, recording them in the local DuckDB history.

``run_notebook`` validates parameters before any kernel starts, records the run in the
state directory's history, executes it with the engine (:mod:`casare_nb.notebook.run`) and
answers a :class:`~casare_nb.notebook.run.RunResult`. ``resume`` re-runs a failed run from
the failed cell in a fresh kernel with the namespace restored, using the notebook's current
source. This is ``casare-nb run`` / ``resume`` and the papermill engine; an orchestrator
keeps its own history and its robots run the engine directly.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jupyter_core.utils import run_sync
from nbformat import NotebookNode

from casare_nb.core.errors import ResumeError, RunNotFound, WorkflowError
from casare_nb.core.ids import new_run_id
from casare_nb.core.injection import REDACTED, redact
from casare_nb.core.models import CellRecord, RunRecord, RunStatus
from casare_nb.core.params import ParameterError, read_schema
from casare_nb.notebook.executor import Options
from casare_nb.notebook.hooks import RunHooks
from casare_nb.notebook.pool import KernelPool
from casare_nb.notebook.resume import prepare_resume
from casare_nb.notebook.run import (
    RunResult,
    RunSpec,
    check_parameters,
    execute,
    parameterised,
)
from casare_nb.notebook.state import StateDir
from casare_nb.notebook.workflow import kernel_name_of, load_workflow
from casare_nb.store.history import HistoryStore, HistoryWriter

__all__ = ["HistoryHooks", "aresume", "arun_notebook", "record_run", "resume", "run_notebook"]

Hooked = Sequence[RunHooks] | RunHooks | None


class HistoryHooks(RunHooks):
    """Records an attempt in a state directory's history: the run when it starts (written
    before its first cell), each cell, the run again when it ends."""

    def __init__(self, state: StateDir) -> None:
        self.writer = HistoryWriter(HistoryStore(state.history_path))

    def run_started(self, run: RunRecord) -> None:
        self.writer.put_run(run)

    async def cells_starting(self, run: RunRecord) -> None:
        await asyncio.to_thread(self.writer.flush)

    def cell_finished(
        self, record: CellRecord, cell: NotebookNode, position: int, total: int
    ) -> None:
        self.writer.put_cells([record])

    def run_finished(self, run: RunRecord) -> None:
        self.writer.put_run(run)
        self.writer.close()


def _hook_list(hooks: Hooked) -> list[RunHooks]:
    if hooks is None:
        return []
    return [hooks] if isinstance(hooks, RunHooks) else list(hooks)


async def record_run(
    spec: RunSpec,
    *,
    hooks: Hooked = None,
    kernels: KernelPool | None = None,
    cancel: asyncio.Event | None = None,
) -> RunResult:
    """Execute ``spec``, recording it in its state directory's history before ``hooks``."""
    return await execute(
        spec,
        hooks=[HistoryHooks(spec.state), *_hook_list(hooks)],
        kernels=kernels,
        cancel=cancel,
    )


def _path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else Path(value)


async def arun_notebook(
    path: str | os.PathLike[str],
    parameters: Mapping[str, Any] | None = None,
    *,
    output_path: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    raw_parameters: Mapping[str, str] | None = None,
    strict: bool = True,
    kernel_name: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    options: Options | None = None,
    hooks: Hooked = None,
    cancel: asyncio.Event | None = None,
    source: str = "api",
    kernels: KernelPool | None = None,
) -> RunResult:
    """Run a workflow notebook with parameters; see the module docstring.

    ``kernels``: a warm pool to take the kernel from instead of starting one. ``hooks``:
    told of the run's progress (after the history)."""
    nb, sha = load_workflow(path)
    schema = read_schema(nb)
    values, warnings = check_parameters(schema, parameters, raw_parameters, strict=strict)
    nb_exec, secrets = parameterised(nb, values, schema)
    state = StateDir(state_dir).ensure_writable()
    record = RunRecord(
        run_id=new_run_id(),
        workflow_path=str(Path(path).absolute()),
        notebook_sha256=sha,
        parameters=redact(values, secrets.names),
        kernel_name=kernel_name_of(nb, kernel_name),
        started_at=datetime.now(UTC),
        source=source,
    )
    spec = RunSpec(
        nb_exec,
        record,
        state,
        secrets=secrets,
        options=options or Options(),
        cwd=_path(cwd),
        output_path=_path(output_path),
        warnings=warnings,
    )
    return await record_run(spec, hooks=hooks, kernels=kernels, cancel=cancel)


async def aresume(
    run_id: str,
    parameters: Mapping[str, Any] | None = None,
    *,
    from_cell: int | None = None,
    output_path: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    raw_parameters: Mapping[str, str] | None = None,
    strict: bool = True,
    cwd: str | os.PathLike[str] | None = None,
    options: Options | None = None,
    hooks: Hooked = None,
    cancel: asyncio.Event | None = None,
    kernels: KernelPool | None = None,
) -> RunResult:
    """Re-run ``run_id`` from its failed cell (or ``from_cell``) as a new attempt."""
    state = StateDir(state_dir)
    store = HistoryStore(state.history_path)
    if not state.history_path.exists():
        raise RunNotFound(f"unknown run id {run_id!r}: no history in {state.root}")
    attempts = store.attempts(run_id)
    if not attempts:
        raise RunNotFound(f"unknown run id {run_id!r} (see `casare-nb history`)")
    prev = attempts[-1]
    if prev.status is RunStatus.COMPLETED and from_cell is None:
        raise ResumeError(
            f"run {run_id} completed; nothing to resume (give --from-cell N to re-run from a cell)"
        )
    try:
        nb, sha = load_workflow(prev.workflow_path)
    except WorkflowError as exc:
        raise ResumeError(f"cannot resume {run_id}: {exc}") from None
    schema = read_schema(nb)
    secret_names = schema.secret_names()
    earlier = {k: v for k, v in prev.parameters.items() if k in schema.params or not strict}
    given = {**(parameters or {}), **(raw_parameters or {})}
    for name in sorted(secret_names):
        if earlier.get(name) == REDACTED and name not in given:
            raise ParameterError(
                f"run {run_id} used secret parameter {name!r}; give it again to resume "
                f"(-p {name} ...)"
            )
        earlier.pop(name, None)
    typed = {k: v for k, v in earlier.items() if k not in (raw_parameters or {})}
    values, warnings = check_parameters(
        schema, {**typed, **(parameters or {})}, raw_parameters, strict=strict
    )
    nb_exec, secrets = parameterised(nb, values, schema)
    state.ensure_writable()
    record = RunRecord(
        run_id=run_id,
        attempt=prev.attempt + 1,
        workflow_path=prev.workflow_path,
        notebook_sha256=sha,
        parameters=redact(values, secrets.names),
        kernel_name=prev.kernel_name,
        started_at=datetime.now(UTC),
        resumed_from_attempt=prev.attempt,
        source=prev.source,
    )
    plan = prepare_resume(
        nb_exec,
        state,
        run_id,
        from_attempt=prev.attempt,
        attempt=record.attempt,
        from_cell=from_cell,
    )
    spec = RunSpec(
        nb_exec,
        record,
        state,
        secrets=secrets,
        resume=plan,
        options=options or Options(),
        cwd=_path(cwd),
        output_path=_path(output_path),
        warnings=warnings,
    )
    return await record_run(spec, hooks=hooks, kernels=kernels, cancel=cancel)


def run_notebook(
    path: str | os.PathLike[str], parameters: Mapping[str, Any] | None = None, **kwargs: Any
) -> RunResult:
    """Synchronous ``arun_notebook``; works in a Jupyter kernel too (where a loop runs)."""
    result: RunResult = run_sync(arun_notebook)(path, parameters, **kwargs)
    return result


def resume(run_id: str, parameters: Mapping[str, Any] | None = None, **kwargs: Any) -> RunResult:
    """Synchronous ``aresume``; works in a Jupyter kernel too."""
    result: RunResult = run_sync(aresume)(run_id, parameters, **kwargs)
    return result
