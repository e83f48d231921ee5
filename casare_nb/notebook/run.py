"""The engine: run one attempt of a workflow notebook, cell by cell, checkpointing each cell.

An attempt is a :class:`RunSpec` -- the notebook ready to execute (parameters injected),
its :class:`~casare_nb.core.models.RunRecord`, its :class:`Secrets`, and for a re-run the
:class:`~casare_nb.core.models.ResumePlan` -- carried out by :func:`execute` on a kernel
(from a warm pool, or started for it). What happens is told to
:class:`~casare_nb.notebook.hooks.RunHooks`: the engine keeps no history itself. Who builds
the spec decides where it comes from: :mod:`casare_nb.local` from a file and the local
history, the papermill engine from papermill's notebook, a robot from its ``job_assign``.

Parameters are injected the papermill way (:func:`parameterised`): an ``injected-parameters``
cell after the ``parameters`` cell. Secret ones are not: they are set silently in the kernel
before the first cell and again after the parameters cell, and scrubbed from every output.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nbformat import NotebookNode
from pydantic import BaseModel, Field

from casare_nb.core.cells import cell_names
from casare_nb.core.injection import parameterize, render_injection
from casare_nb.core.models import CellRecord, RestoreMode, ResumePlan, RunRecord, RunStatus
from casare_nb.core.parameters_cell import INJECTED_TAG
from casare_nb.core.params import ParamSchema
from casare_nb.notebook.executor import Executor, Options, Outcome, Step, code_steps
from casare_nb.notebook.hooks import RunHooks, hooks_of
from casare_nb.notebook.kernels import KernelSession
from casare_nb.notebook.pool import KernelPool
from casare_nb.notebook.resume import replays
from casare_nb.notebook.state import AttemptPaths, StateDir, write_json_atomic
from casare_nb.notebook.workflow import INJECTED_ID, nbformat_node

__all__ = [
    "RunResult",
    "RunSpec",
    "Secrets",
    "check_parameters",
    "execute",
    "parameterised",
]


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
    notebook: dict[str, Any] | None = Field(default=None, exclude=True, repr=False)
    """The output notebook (secrets scrubbed), also when it was not written to a file."""

    @property
    def ok(self) -> bool:
        return self.status is RunStatus.COMPLETED

    @property
    def resume_command(self) -> str:
        return f"casare-nb resume {self.run_id}"


@dataclass(frozen=True)
class Secrets:
    """The secret parameters of a run: their names (the checkpoint skips variables holding
    them), the silent code that sets them in the kernel, and their values (scrubbed from
    outputs and errors)."""

    names: tuple[str, ...] = ()
    source: str = ""
    values: tuple[str, ...] = ()

    @classmethod
    def of(cls, values: Mapping[str, Any], names: Collection[str]) -> Secrets:
        """The secrets among ``values`` (those named in ``names``)."""
        given = {k: v for k, v in values.items() if k in names}
        _, source = render_injection(given, names)
        return cls(tuple(sorted(names)), source, tuple(str(v) for v in given.values()))


def check_parameters(
    schema: ParamSchema,
    values: Mapping[str, Any] | None,
    raw: Mapping[str, str] | None = None,
    *,
    strict: bool = True,
) -> tuple[dict[str, Any], list[str]]:
    """Typed values (Python, JSON, YAML) and raw strings (``-p NAME VALUE``; raw wins),
    checked against ``schema``: the values, and the warnings (``strict=False`` only).
    :class:`~casare_nb.core.params.ParameterError` when they do not fit."""
    checked = schema.validate_values(values or {}, strict=strict, text_values=raw)
    return dict(checked.values), list(checked.warnings)


def parameterised(
    nb: NotebookNode, values: Mapping[str, Any], schema: ParamSchema
) -> tuple[NotebookNode, Secrets]:
    """The notebook to execute (``values`` injected after the parameters cell, secrets
    left out) and the secrets. ``nb`` itself is left as it is."""
    out = nb
    if values:
        out = nbformat_node(parameterize(nb, values, schema))
        for cell in out.cells:
            if INJECTED_TAG in cell.metadata.get("tags", []):
                cell["id"] = INJECTED_ID
    return out, Secrets.of(values, schema.secret_names())


@dataclass
class RunSpec:
    """One attempt to execute: what (the notebook, its record, secrets, a resume plan) and
    where (state directory, kernel working directory, a copy of the output notebook)."""

    notebook: NotebookNode
    record: RunRecord
    state: StateDir
    secrets: Secrets = Secrets()
    resume: ResumePlan | None = None
    options: Options = field(default_factory=Options)
    cwd: Path | None = None
    output_path: Path | None = None  # also copy the output notebook here
    warnings: list[str] = field(default_factory=list)


async def execute(
    spec: RunSpec,
    *,
    hooks: Sequence[RunHooks] | RunHooks | None = None,
    kernels: KernelPool | None = None,
    cancel: asyncio.Event | None = None,
) -> RunResult:
    """Run ``spec`` on a kernel of ``kernels`` (or one started for it); ``cancel`` stops it
    between or inside cells. Errors of the run end up in the result; a hook's raise."""
    told = hooks_of(hooks)
    nb, record, options = spec.notebook, spec.record, spec.options
    paths = spec.state.attempt(record.run_id, record.attempt).create()
    steps = code_steps(nb, spec.resume.start if spec.resume else 0)
    record.output_path = str(spec.output_path.absolute() if spec.output_path else paths.output)
    record.cells_total = len(steps)
    if spec.resume is not None:
        record.restored_from_cell = spec.resume.restore_cell
    await told.run_started(record)
    nb.metadata["casare"] = {"run_id": record.run_id, "attempt": record.attempt}
    session: KernelSession | None = None
    result = RunResult(
        run_id=record.run_id,
        attempt=record.attempt,
        status=RunStatus.RUNNING,
        workflow_path=record.workflow_path,
        output_path=record.output_path,
        warnings=spec.warnings,
        restored_from_cell=record.restored_from_cell,
    )
    try:
        if kernels is not None:
            session = await kernels.acquire(record.kernel_name)
            if spec.cwd is not None:
                await session.chdir(Path(spec.cwd).absolute())
        else:
            session = await KernelSession.start(record.kernel_name, cwd=spec.cwd)
        record.language = session.language
        executor = Executor(
            session,
            nb,
            run_id=record.run_id,
            attempt=record.attempt,
            state=spec.state,
            options=options,
            hooks=told,
            secret_values=spec.secrets.values,
        )
        await executor.prepare(secret_names=spec.secrets.names, secret_source=spec.secrets.source)
        outcome: Outcome | None = None
        if spec.resume is not None:
            outcome = await restore_and_replay(
                executor, spec.resume, paths, result, cancel, len(steps)
            )
            record.replayed_cells = result.replayed_cells
            record.restore_mode = result.restore_mode
            record.restored_from_cell = result.restored_from_cell
            record.cells_total = len(steps) + len(result.replayed_cells)
        if options.save_each_cell:
            executor.save()  # the notebook so far exists before the first cell ends
        await told.cells_starting(record)
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
    _finish(record, result)
    if options.save_output:
        try:
            write_json_atomic(paths.output, nb)
            if spec.output_path:
                Path(spec.output_path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(paths.output, spec.output_path)
        except OSError as exc:
            record.status = result.status = RunStatus.FAILED
            record.error_name = result.error_name = "StateError"
            record.error_message = result.error_message = f"cannot write the output notebook: {exc}"
    result.notebook = nb
    await told.run_finished(record)
    return result


def _finish(record: RunRecord, result: RunResult) -> None:
    """Copy how the attempt ended into its record."""
    finished = datetime.now(UTC)
    record.status = result.status
    record.finished_at = finished
    record.duration_s = round((finished - record.started_at).total_seconds(), 6)
    record.error_name = result.error_name
    record.error_message = result.error_message
    record.failed_cell = result.failed_cell
    record.failed_cell_id = result.failed_cell_id


async def restore_and_replay(
    executor: Executor,
    plan: ResumePlan,
    paths: AttemptPaths,
    result: RunResult,
    cancel: asyncio.Event | None,
    new_cells: int,
) -> Outcome | None:
    """Restore the checkpoint into the kernel, replay what it could not hold, then load
    again the restored names the replayed cells rebound, so the checkpoint's values win."""
    nb = executor.nb
    missing: set[str] = set()
    loaded: set[str] = set()
    manifest = None
    if plan.restore_cell_id is not None:
        manifest = str(paths.manifest(plan.restore_cell_id))
    if executor.checkpointing and manifest is not None:
        answer = await executor.restore(manifest)
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
    if outcome.status is RunStatus.COMPLETED and rebound and manifest is not None:
        await executor.restore(manifest, sorted(rebound))
    if outcome.status is RunStatus.COMPLETED and after:
        done = outcome.cells
        outcome = await executor.run(
            [Step(i, replay=True) for i in after], cancel=cancel, done=len(done), total=total
        )
        outcome.cells = done + outcome.cells
    return outcome
