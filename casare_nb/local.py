"""Run and resume workflows in this process: the engine without an orchestrator.

``run_notebook`` validates parameters before any kernel starts, records the run in the
state directory's DuckDB history, executes cell by cell with a checkpoint after each cell,
and answers a ``RunResult``. ``resume`` re-runs a failed run from the failed cell in a fresh
kernel with the namespace restored, using the notebook's current source.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from jupyter_core.utils import run_sync
from nbformat import NotebookNode
from pydantic import BaseModel, Field

from casare_nb.core.cells import cell_names
from casare_nb.core.errors import ResumeError, RunNotFound, WorkflowError
from casare_nb.core.models import CellRecord, RestoreMode, RunRecord, RunStatus
from casare_nb.core.params import (
    INJECTED_TAG,
    ParameterError,
    ParamSchema,
    parameterize,
    read_schema,
    redact,
    render_injection,
)
from casare_nb.notebook.checkpoint import StateDir, write_json_atomic
from casare_nb.notebook.executor import (
    Executor,
    Options,
    Outcome,
    Progress,
    Step,
    code_steps,
    nbformat_node,
)
from casare_nb.notebook.kernels import KernelSession
from casare_nb.notebook.pool import KernelPool
from casare_nb.notebook.resume import ResumePlan, carry_outputs, plan_resume, replays
from casare_nb.notebook.workflow import INJECTED_ID, kernel_name_of, load_workflow, parse_workflow
from casare_nb.store.history import HistoryStore, HistoryWriter

REDACTED = "***"

CellHook = Callable[[CellRecord, NotebookNode], None]
"""Called after each executed cell with its record and the cell as the output holds it."""


class Recorder(Protocol):
    """Where a run's records go: the local DuckDB history (``HistoryWriter``) by default; a
    robot sends them to its orchestrator instead. Calls come in order: the run, its cells,
    the run again when it ends; ``flush`` before the first cell runs, ``close`` at the end."""

    def put_run(self, run: RunRecord) -> None: ...

    def put_cells(self, cells: Sequence[CellRecord]) -> None: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


class RunResult(BaseModel):
    """What a run (one attempt) came to."""

    run_id: str
    attempt: int
    status: RunStatus
    workflow_path: str
    output_path: str
    cells: list[CellRecord] = Field(default_factory=list)
    failed_cell: int | None = None
    failed_cell_id: str | None = None
    error_name: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    restored_from_cell: int | None = None
    replayed_cells: list[int] = Field(default_factory=list)
    restore_mode: RestoreMode | None = None
    skipped_names: dict[str, str] = Field(default_factory=dict)
    checkpoint_errors: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status is RunStatus.COMPLETED

    @property
    def resume_command(self) -> str:
        return f"casare-nb resume {self.run_id}"


_ISSUED_LOCK = threading.Lock()
_issued: tuple[str, set[str]] = ("", set())  # this second, and the ids drawn in it


def new_run_id() -> str:
    """Sortable by start time, short enough to type: 20261127-004512-3fa9c1; never the same
    twice in one process (an orchestrator draws hundreds a second: 3 random bytes alone would
    repeat within a second now and then)."""
    global _issued
    second = f"{datetime.now(UTC):%Y%m%d-%H%M%S}"
    with _ISSUED_LOCK:
        if _issued[0] != second:
            _issued = (second, set())
        drawn = _issued[1]
        while (run_id := f"{second}-{secrets.token_hex(3)}") in drawn:
            pass
        drawn.add(run_id)
    return run_id


def _validated(
    schema: ParamSchema,
    values: Mapping[str, Any] | None,
    raw: Mapping[str, str] | None,
    *,
    strict: bool,
) -> tuple[dict[str, Any], list[str]]:
    """Typed values (Python, JSON, YAML) and raw strings (``-p NAME VALUE``); raw wins."""
    checked = schema.validate_values(values or {}, strict=strict, text_values=raw)
    return dict(checked.values), list(checked.warnings)


def _parameterised(
    nb: NotebookNode, values: Mapping[str, Any], schema: ParamSchema
) -> tuple[NotebookNode, str, list[str]]:
    """The notebook to execute, the silent secret code and the secret values."""
    secret_names = schema.secret_names()
    out = nb
    if values:
        out = nbformat_node(parameterize(nb, values, schema))
        for cell in out.cells:
            if INJECTED_TAG in cell.metadata.get("tags", []):
                cell["id"] = INJECTED_ID
    _, secret_source = render_injection(values, secret_names)
    secret_values = [str(v) for k, v in values.items() if k in secret_names]
    return out, secret_source, secret_values


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
    progress: Progress | None = None,
    cancel: asyncio.Event | None = None,
    source: str = "api",
    on_start: Callable[[RunRecord], None] | None = None,
    kernels: KernelPool | None = None,
    notebook: bytes | None = None,
    run_id: str | None = None,
    recorder: Recorder | None = None,
    on_cell: CellHook | None = None,
) -> RunResult:
    """Run a workflow notebook with parameters; see the module docstring.

    ``kernels``: a warm pool to take the kernel from instead of starting one. ``notebook``:
    the notebook's bytes, when it came from elsewhere (a robot gets it in its job; ``path``
    then only names it). ``run_id``: the id to run under (a job's). ``recorder``: where the
    records go instead of the state directory's history. ``on_cell``: called after each
    executed cell with its record and the cell as the output notebook holds it."""
    if notebook is not None:
        nb, sha = parse_workflow(notebook, str(path)), hashlib.sha256(notebook).hexdigest()
    else:
        nb, sha = load_workflow(path)
    schema = read_schema(nb)
    values, warnings = _validated(schema, parameters, raw_parameters, strict=strict)
    nb_exec, secret_source, secret_values = _parameterised(nb, values, schema)
    state = StateDir(state_dir).ensure_writable()
    kernel = kernel_name_of(nb, kernel_name)
    record = RunRecord(
        run_id=run_id or new_run_id(),
        workflow_path=str(Path(path).absolute()),
        notebook_sha256=sha,
        parameters=redact(values, schema.secret_names()),
        kernel_name=kernel,
        started_at=datetime.now(UTC),
        source=source,
    )
    steps = code_steps(nb_exec)
    return await execute_prepared(
        nb_exec,
        record,
        steps,
        state=state,
        secret_names=sorted(schema.secret_names()),
        secret_source=secret_source,
        secret_values=secret_values,
        output_path=output_path,
        cwd=cwd,
        options=options,
        progress=progress,
        cancel=cancel,
        warnings=warnings,
        on_start=on_start,
        kernels=kernels,
        recorder=recorder,
        on_cell=on_cell,
    )


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
    progress: Progress | None = None,
    cancel: asyncio.Event | None = None,
    on_start: Callable[[RunRecord], None] | None = None,
    kernels: KernelPool | None = None,
    recorder: Recorder | None = None,
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
    values, warnings = _validated(
        schema, {**typed, **(parameters or {})}, raw_parameters, strict=strict
    )
    record = RunRecord(
        run_id=run_id,
        attempt=prev.attempt + 1,
        workflow_path=prev.workflow_path,
        notebook_sha256=sha,
        parameters={},
        kernel_name=prev.kernel_name,
        started_at=datetime.now(UTC),
        resumed_from_attempt=prev.attempt,
        source=prev.source,
    )
    return await _resume_into(
        nb,
        schema,
        values,
        record,
        from_cell=from_cell,
        state=state,
        warnings=warnings,
        output_path=output_path,
        cwd=cwd,
        options=options,
        progress=progress,
        cancel=cancel,
        on_start=on_start,
        kernels=kernels,
        recorder=recorder,
    )


async def aresume_attempt(
    path: str | os.PathLike[str],
    parameters: Mapping[str, Any] | None,
    *,
    notebook: bytes,
    run_id: str,
    attempt: int,
    from_attempt: int,
    from_cell: int | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    options: Options | None = None,
    progress: Progress | None = None,
    cancel: asyncio.Event | None = None,
    kernels: KernelPool | None = None,
    recorder: Recorder | None = None,
    on_cell: CellHook | None = None,
    source: str = "robot",
) -> RunResult:
    """Resume attempt ``from_attempt`` of ``run_id`` as attempt ``attempt``, without a history:
    the earlier attempt's output notebook and manifests are already in ``state_dir`` (a robot
    puts there what the orchestrator sent). ``notebook`` is the workflow to run now and
    ``parameters`` its full values (secrets included)."""
    nb, sha = parse_workflow(notebook, str(path)), hashlib.sha256(notebook).hexdigest()
    schema = read_schema(nb)
    values, warnings = _validated(schema, parameters, None, strict=True)
    record = RunRecord(
        run_id=run_id,
        attempt=attempt,
        workflow_path=str(path),
        notebook_sha256=sha,
        parameters={},
        kernel_name=kernel_name_of(nb, None),
        started_at=datetime.now(UTC),
        resumed_from_attempt=from_attempt,
        source=source,
    )
    return await _resume_into(
        nb,
        schema,
        values,
        record,
        from_cell=from_cell,
        state=StateDir(state_dir),
        warnings=warnings,
        cwd=cwd,
        options=options,
        progress=progress,
        cancel=cancel,
        kernels=kernels,
        recorder=recorder,
        on_cell=on_cell,
    )


async def _resume_into(
    nb: NotebookNode,
    schema: ParamSchema,
    values: dict[str, Any],
    record: RunRecord,
    *,
    from_cell: int | None,
    state: StateDir,
    warnings: list[str],
    output_path: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    options: Options | None = None,
    progress: Progress | None = None,
    cancel: asyncio.Event | None = None,
    on_start: Callable[[RunRecord], None] | None = None,
    kernels: KernelPool | None = None,
    recorder: Recorder | None = None,
    on_cell: CellHook | None = None,
) -> RunResult:
    """Plan the resume of attempt ``record.resumed_from_attempt`` and run it as ``record``."""
    secret_names = schema.secret_names()
    nb_exec, secret_source, secret_values = _parameterised(nb, values, schema)
    state.ensure_writable()
    assert record.resumed_from_attempt is not None
    prev_paths = state.attempt(record.run_id, record.resumed_from_attempt)
    prev_output = _read_output(prev_paths.output)
    plan = plan_resume(nb_exec, prev_output, prev_paths, from_cell=from_cell)
    carry_outputs(nb_exec, prev_output, plan)
    state.attempt(record.run_id, record.attempt).inherit(prev_paths, plan.inherit_ids)
    record.parameters = redact(values, secret_names)
    record.restored_from_cell = plan.restore_cell
    return await execute_prepared(
        nb_exec,
        record,
        code_steps(nb_exec, plan.start),
        state=state,
        secret_names=sorted(secret_names),
        secret_source=secret_source,
        secret_values=secret_values,
        output_path=output_path,
        cwd=cwd,
        options=options,
        progress=progress,
        cancel=cancel,
        warnings=warnings,
        resume=plan,
        on_start=on_start,
        kernels=kernels,
        recorder=recorder,
        on_cell=on_cell,
    )


def _read_output(path: Path) -> NotebookNode | None:
    try:
        return parse_workflow(path.read_bytes(), str(path))
    except (OSError, WorkflowError):
        return None


async def execute_prepared(
    nb: NotebookNode,
    record: RunRecord,
    steps: list[Step],
    *,
    state: StateDir,
    secret_names: Sequence[str],
    secret_source: str,
    secret_values: Sequence[str],
    output_path: str | os.PathLike[str] | None,
    cwd: str | os.PathLike[str] | None,
    options: Options | None,
    progress: Progress | None,
    cancel: asyncio.Event | None,
    warnings: list[str],
    resume: ResumePlan | None = None,
    on_start: Callable[[RunRecord], None] | None = None,
    kernels: KernelPool | None = None,
    recorder: Recorder | None = None,
    on_cell: CellHook | None = None,
) -> RunResult:
    writer = recorder or HistoryWriter(HistoryStore(state.history_path))
    paths = state.attempt(record.run_id, record.attempt).create()
    record.output_path = str(Path(output_path).absolute() if output_path else paths.output)
    record.cells_total = len(steps)
    writer.put_run(record)
    if on_start is not None:
        on_start(record)
    nb.metadata["casare"] = {"run_id": record.run_id, "attempt": record.attempt}
    session: KernelSession | None = None
    result = RunResult(
        run_id=record.run_id,
        attempt=record.attempt,
        status=RunStatus.RUNNING,
        workflow_path=record.workflow_path,
        output_path=record.output_path,
        warnings=warnings,
        restored_from_cell=record.restored_from_cell,
    )
    try:
        if kernels is not None:
            session = await kernels.acquire(record.kernel_name)
            if cwd is not None:
                await session.chdir(Path(cwd).absolute())
        else:
            session = await KernelSession.start(record.kernel_name, cwd=cwd)
        record.language = session.language
        executor = Executor(
            session,
            nb,
            run_id=record.run_id,
            attempt=record.attempt,
            state=state,
            options=options,
            progress=progress,
            secret_values=secret_values,
            on_cells=writer.put_cells,
            on_cell=on_cell,
        )
        await executor.prepare(secret_names=secret_names, secret_source=secret_source)
        outcome: Outcome | None = None
        if resume is not None:
            outcome = await _replay(executor, nb, resume, result, cancel, len(steps))
            record.replayed_cells = result.replayed_cells
            record.restore_mode = result.restore_mode
            record.restored_from_cell = result.restored_from_cell
            record.cells_total = len(steps) + len(result.replayed_cells)
        if executor.options.save_each_cell:
            executor.save()  # the notebook so far exists before the first cell ends
        await asyncio.to_thread(writer.flush)  # the run is on record before its first cell
        if outcome is None or outcome.status is RunStatus.COMPLETED:
            replayed = outcome.cells if outcome else []
            outcome = await executor.run(
                steps, cancel=cancel, done=len(replayed), total=len(replayed) + len(steps)
            )
            outcome.cells = replayed + outcome.cells
        for name, value in vars(outcome).items():  # Outcome's fields are RunResult's too
            setattr(result, name, value)
    except asyncio.CancelledError:
        result.status = RunStatus.CANCELLED
        result.error_name, result.error_message = "Cancelled", "cancelled before the run ended"
    except OSError as exc:
        result.status = RunStatus.FAILED
        result.error_name = "StateError"
        result.error_message = f"cannot write to the state directory: {exc}"
    except Exception as exc:
        result.status = RunStatus.FAILED
        result.error_name = type(exc).__name__
        result.error_message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    finally:
        if session is not None and kernels is not None:
            kernels.release(session)
        elif session is not None:
            await session.shutdown()
    nb.metadata["casare"].update(status=result.status.value)
    finished = datetime.now(UTC)
    record.status = result.status
    record.finished_at = finished
    record.duration_s = round((finished - record.started_at).total_seconds(), 6)
    record.error_name = result.error_name
    record.error_message = result.error_message
    record.failed_cell = result.failed_cell
    record.failed_cell_id = result.failed_cell_id
    try:
        write_json_atomic(paths.output, nb)
        if output_path:
            Path(output_path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(paths.output, output_path)
    except OSError as exc:
        record.status = result.status = RunStatus.FAILED
        record.error_name = result.error_name = "StateError"
        record.error_message = result.error_message = f"cannot write the output notebook: {exc}"
    writer.put_run(record)
    writer.close()
    return result


async def _replay(
    executor: Executor,
    nb: NotebookNode,
    plan: ResumePlan,
    result: RunResult,
    cancel: asyncio.Event | None,
    new_cells: int,
) -> Outcome | None:
    """Restore the checkpoint into the kernel, replay what it could not hold, then load
    again the restored names the replayed cells rebound, so the checkpoint's values win."""
    missing: set[str] = set()
    loaded: set[str] = set()
    if executor.checkpointing and plan.restore_manifest:
        answer = await executor.restore(plan.restore_manifest)
        loaded = set(answer.get("loaded", []))
        missing = set(answer.get("failed", {})) | set(answer.get("skipped", {}))
        result.skipped_names = {**answer.get("skipped", {}), **answer.get("failed", {})}
        result.restore_mode = RestoreMode.NAMESPACE
    else:
        result.restore_mode = RestoreMode.REPLAY
        result.restored_from_cell = None
    replay = replays(nb, plan, missing=missing, python=executor.checkpointing)
    result.replayed_cells = replay
    if not replay:
        return None
    total = len(replay) + new_cells
    # cells at or before the checkpoint rebuild what it could not hold; names they rebind are
    # loaded again so the checkpoint's values win; the cells after it then run on top
    restored_at = plan.restore_cell if result.restore_mode is RestoreMode.NAMESPACE else None
    rebuild = [i for i in replay if restored_at is not None and i <= restored_at]
    after = [i for i in replay if i not in rebuild]
    outcome = await executor.run(
        [Step(i, replay=True) for i in rebuild], cancel=cancel, total=total
    )
    kept = [i for i in rebuild if nb.cells[i].id != INJECTED_ID]  # new -p values must stay
    rebound = set().union(*(cell_names(nb.cells[i].source).defines for i in kept)) & loaded
    if outcome.status is RunStatus.COMPLETED and rebound and plan.restore_manifest:
        await executor.restore(plan.restore_manifest, sorted(rebound))
    if outcome.status is RunStatus.COMPLETED and after:
        done = outcome.cells
        outcome = await executor.run(
            [Step(i, replay=True) for i in after], cancel=cancel, done=len(done), total=total
        )
        outcome.cells = done + outcome.cells
    return outcome


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
