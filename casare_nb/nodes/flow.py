"""Flow nodes: sub-workflows, a sub-workflow per row, and waiting.

What the ``notebook.call``, ``control.for_each`` and ``control.wait`` templates call.
:func:`call_workflow` runs another workflow notebook with parameters on a fresh kernel,
with casare_nb's own engine in this process, and answers what it recorded with
``casare_nb.output(name, value)``.

They are coroutines, awaited where they are called: a notebook cell awaits them at its top
level (``outputs = await nb_flow.call_workflow("child.ipynb", {"day": day})``) -- a
kernel runs its cells on an event loop already, so nothing blocks it -- and a plain script
runs them with ``asyncio.run(...)``.

A sub-workflow keeps no history: it runs in a temporary state directory, removed when it
ends, never in the caller's (whose history database the caller may hold open). It runs in
the caller's working directory, so relative paths mean the same in both.
"""

from __future__ import annotations

import asyncio
import math
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from casare_nb.core.errors import CasareError, one_line
from casare_nb.core.ids import new_run_id
from casare_nb.core.injection import redact
from casare_nb.core.models import RunRecord, RunStatus
from casare_nb.core.outputs import extract_outputs
from casare_nb.core.params import read_schema
from casare_nb.notebook.executor import Options
from casare_nb.notebook.run import RunResult, RunSpec, check_parameters, execute, parameterised
from casare_nb.notebook.state import StateDir
from casare_nb.notebook.workflow import kernel_name_of, load_workflow

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["SubWorkflowError", "call_workflow", "for_each", "wait", "workflow_parameters"]

PathLike: TypeAlias = str | os.PathLike[str]
T = TypeVar("T")


class SubWorkflowError(RuntimeError):
    """A sub-workflow that could not run or failed; ``str(err)`` is one line:
    ``sub-workflow X failed at cell N: ErrorName: message``. ``failed_cell`` is the index
    of the failed cell in the sub-workflow's notebook (None when no cell failed)."""

    def __init__(
        self,
        message: str,
        *,
        failed_cell: int | None = None,
        error_name: str | None = None,
        error_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.failed_cell = failed_cell
        self.error_name = error_name
        self.error_message = error_message


async def call_workflow(
    path: PathLike,
    parameters: Mapping[str, Any] | None = None,
    *,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run the workflow notebook at ``path`` (relative: to the working directory) with
    ``parameters`` on a fresh kernel; answer name -> value of what it recorded with
    ``casare_nb.output``. ``timeout_s`` limits the whole run.

    Raises :class:`SubWorkflowError` (one line) when it cannot start (no such notebook,
    parameters that do not fit it) or a cell fails or it times out."""
    name = os.fspath(path)
    workflow = Path(path).absolute()
    try:
        nb, sha = load_workflow(workflow)
        schema = read_schema(nb)
        values, warnings = check_parameters(schema, parameters, strict=True)
    except CasareError as exc:
        raise SubWorkflowError(f"sub-workflow {name} failed: {one_line(exc)}") from None
    nb_exec, secrets = parameterised(nb, values, schema)
    with tempfile.TemporaryDirectory(prefix="casare-sub-") as tmp:
        record = RunRecord(
            run_id=new_run_id(),
            workflow_path=str(workflow),
            notebook_sha256=sha,
            parameters=redact(values, secrets.names),
            kernel_name=kernel_name_of(nb),
            started_at=datetime.now(UTC),
            source="sub-workflow",
        )
        spec = RunSpec(
            nb_exec,
            record,
            StateDir(tmp).ensure_writable(),
            secrets=secrets,
            # nothing to resume from a throwaway state directory: no checkpoints, no files
            options=Options(
                run_timeout=timeout_s, checkpoint=False, save_each_cell=False, save_output=False
            ),
            cwd=Path.cwd(),
            warnings=warnings,
        )
        # the engine stops on this event; given one, a cancel of our task stops the run
        # cleanly (the kernel interrupted and shut down) and we re-raise it below
        result = await execute(spec, cancel=asyncio.Event())
    if result.status is not RunStatus.COMPLETED:
        task = asyncio.current_task()
        if result.status is RunStatus.CANCELLED and task is not None and task.cancelling():
            raise asyncio.CancelledError  # the caller was cancelled: so are we
        raise _failure(name, nb, result)
    cells = (result.notebook or {}).get("cells", [])
    return {key: value for key, (value, _) in extract_outputs(cells).items()}


def workflow_parameters(path: PathLike) -> list[str]:
    """The parameter names of the workflow notebook at ``path``, in declaration order."""
    try:
        nb, _ = load_workflow(Path(path).absolute())
        return read_schema(nb).names()
    except CasareError as exc:
        raise SubWorkflowError(f"sub-workflow {os.fspath(path)} failed: {one_line(exc)}") from None


async def for_each(
    rows: pd.DataFrame,
    path: PathLike,
    mapping: Mapping[str, str] | None = None,
    *,
    parameters: Mapping[str, Any] | None = None,
    timeout_s: float | None = None,
) -> pd.DataFrame:
    """Run the workflow at ``path`` once per row of ``rows``, one after the other; answer
    a DataFrame of what each run recorded (a column per output name), one row per input
    row, on the same index.

    ``mapping``: column -> parameter name; none (or empty): every column named like a
    parameter of the workflow. ``parameters``: values given to every run (a row's win).
    ``timeout_s`` limits each run. The first failed run raises :class:`SubWorkflowError`
    naming the row."""
    import pandas as pd  # on first use: a sub-workflow call needs no pandas

    if not isinstance(rows, pd.DataFrame):
        raise TypeError(f"for_each: rows must be a DataFrame, not a {type(rows).__name__}")
    columns = [str(c) for c in rows.columns]
    if mapping:
        missing = [c for c in mapping if c not in columns]
        if missing:
            raise ValueError(
                f"for_each: no column {', '.join(map(repr, missing))} in the rows "
                f"(columns: {', '.join(columns)})"
            )
        chosen = dict(mapping)
    else:
        names = workflow_parameters(path)
        chosen = {c: c for c in columns if c in names}
        if names and not chosen and len(rows):
            raise ValueError(
                f"for_each: no column of the rows is a parameter of {os.fspath(path)} "
                f"(parameters: {', '.join(names)}; columns: {', '.join(columns)}); "
                "give a mapping column -> parameter"
            )
    results: list[dict[str, Any]] = []
    for position, (label, row) in enumerate(zip(rows.index, rows.to_dict("records"), strict=True)):
        given = {**(parameters or {}), **{chosen[c]: _plain(row[c]) for c in chosen}}
        try:
            results.append(await call_workflow(path, given, timeout_s=timeout_s))
        except SubWorkflowError as exc:
            where = f"row {label!r}" if label != position else f"row {position}"
            raise SubWorkflowError(
                f"for_each {where}: {exc}",
                failed_cell=exc.failed_cell,
                error_name=exc.error_name,
                error_message=exc.error_message,
            ) from None
    return pd.DataFrame(results, index=rows.index)


async def wait(seconds: float, value: T | None = None) -> T | None:
    """Wait ``seconds`` without blocking the kernel's loop; answer ``value`` (so a wait can
    sit between two nodes)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"wait: seconds must be a finite number >= 0, got {seconds}")
    await asyncio.sleep(seconds)
    return value


def _failure(name: str, nb: Any, result: RunResult) -> SubWorkflowError:
    """The one-line error of a failed run, its cell numbered as in the workflow's file."""
    index = result.failed_cell
    if result.failed_cell_id is not None:
        ids = [cell.get("id") for cell in nb.cells]
        if result.failed_cell_id in ids:
            index = ids.index(result.failed_cell_id)
    where = f" at cell {index}" if index is not None else ""
    error = result.error_name or result.status.value
    message = one_line(result.error_message or "")
    text = f"sub-workflow {name} failed{where}: {error}"
    if message:
        text += f": {message}"
    return SubWorkflowError(
        text, failed_cell=index, error_name=result.error_name, error_message=result.error_message
    )


def _plain(value: Any) -> Any:
    """A DataFrame cell as a plain Python value a parameter takes (NaN/NA: None)."""
    import pandas as pd

    if isinstance(value, pd.Timestamp):
        return None if pd.isna(value) else value.to_pydatetime()
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        value = value.item()
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):  # a list or an array: not one value
        pass
    return value
