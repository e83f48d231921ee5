"""Executing workflows cell by cell on real kernels: outputs, history, limits, failures."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import Workspace, cell_index, mark, outputs_text
from nbformat import NotebookNode

from casare_nb.core.errors import StateError
from casare_nb.core.models import CellRecord, CellStatus, RunRecord, RunStatus
from casare_nb.core.params import ParameterError, read_schema
from casare_nb.notebook.executor import Options
from casare_nb.notebook.hooks import RunHooks
from casare_nb.notebook.run import RunSpec, execute, parameterised
from casare_nb.notebook.state import StateDir
from casare_nb.notebook.workflow import load_workflow


async def test_run_completes_and_records_history(ws: Workspace) -> None:
    """A completed run writes an output notebook with outputs and one history row per cell."""
    nb = ws.notebook(["x = 20", "y = x + 1", "print(x + y)"])
    result = await ws.run(nb)
    assert result.status is RunStatus.COMPLETED
    assert outputs_text(result.output_path, "c2") == "41\n"
    run = ws.history.get_run(result.run_id)
    assert run is not None and run.status is RunStatus.COMPLETED and run.cells_total == 3
    assert run.finished_at is not None and run.duration_s is not None
    cells = ws.history.list_cells(result.run_id)
    assert [c.cell_id for c in cells] == ["c0", "c1", "c2"]
    assert all(c.status is CellStatus.OK for c in cells)
    saved = json.loads(Path(result.output_path).read_text())
    assert saved["metadata"]["casare"] == {
        "run_id": result.run_id,
        "attempt": 1,
        "status": "completed",
    }
    assert saved["cells"][1]["metadata"]["casare"]["status"] == "ok"


async def test_output_path_written_when_given(ws: Workspace) -> None:
    """An explicit output path receives the executed notebook as well."""
    nb = ws.notebook(["print('hello')"])
    result = await ws.run(nb, output_path=ws.root / "out" / "done.ipynb")
    assert result.output_path == str(ws.root / "out" / "done.ipynb")
    assert outputs_text(result.output_path, "c0") == "hello\n"


async def test_parameters_injected_coerced_and_kept_as_data(ws: Workspace) -> None:
    """-p strings are coerced to the declared types and injected as literals, never as code."""
    nb = ws.notebook(
        ["print(limit * 2, repr(region))"],
        params='limit: int = 1\nregion: str = "EU"',
    )
    result = await ws.run(nb, raw_parameters={"limit": "10", "region": "1; import os"})
    assert result.status is RunStatus.COMPLETED
    assert outputs_text(result.output_path, "c0") == "20 '1; import os'\n"
    saved = json.loads(Path(result.output_path).read_text())
    injected = [c for c in saved["cells"] if c.get("id") == "injected-parameters"]
    assert injected and "injected-parameters" in injected[0]["metadata"]["tags"]
    assert ws.history.get_run(result.run_id).parameters == {  # type: ignore[union-attr]
        "limit": 10,
        "region": "1; import os",
    }


async def test_bad_parameter_fails_before_any_kernel(ws: Workspace) -> None:
    """An unknown parameter is refused before a kernel starts and records nothing."""
    nb = ws.notebook(["pass"], params="limit: int = 1")
    with pytest.raises(ParameterError, match="unknown parameter 'nope'"):
        await ws.run(nb, {"nope": 1})
    assert not ws.state.exists()


async def test_failure_stops_at_failed_cell(ws: Workspace) -> None:
    """A raising cell fails the run there; later cells do not run; the error is recorded."""
    nb = ws.notebook(["x = 1", "raise ValueError('bad input row 7')", "print('never')"])
    result = await ws.run(nb)
    assert result.status is RunStatus.FAILED
    assert result.failed_cell_id == "c1" and result.error_name == "ValueError"
    assert result.error_message == "bad input row 7"
    assert result.traceback is not None and "ValueError" in result.traceback
    assert outputs_text(result.output_path, "c2") == ""
    cells = ws.history.list_cells(result.run_id)
    assert [(c.cell_id, c.status) for c in cells] == [
        ("c0", CellStatus.OK),
        ("c1", CellStatus.ERROR),
    ]
    run = ws.history.get_run(result.run_id)
    assert run is not None and run.failed_cell_id == "c1" and run.status is RunStatus.FAILED


async def test_cell_timeout_interrupts_the_cell(ws: Workspace) -> None:
    """A cell past --cell-timeout is interrupted and recorded as timeout."""
    nb = ws.notebook(["x = 1", "import time\ntime.sleep(60)", "print('never')"])
    result = await ws.run(nb, options=Options(cell_timeout=1.0))
    assert result.status is RunStatus.TIMEOUT
    cell = result.cells[-1]
    assert cell.status is CellStatus.TIMEOUT and cell.cell_id == "c1"
    assert 1.0 <= cell.duration_s < 10
    assert "cell timed out after 1 s" in (result.error_message or "")


async def test_run_timeout_stops_the_run(ws: Workspace) -> None:
    """The whole-run timeout stops the run in whichever cell is running then."""
    nb = ws.notebook(["import time\ntime.sleep(0.2)", "time.sleep(60)"])
    result = await ws.run(nb, options=Options(run_timeout=1.5))
    assert result.status is RunStatus.TIMEOUT
    assert result.failed_cell_id == "c1"
    assert "run timed out after 1.5 s" in (result.error_message or "")


async def test_sys_exit_is_recorded_as_exited(ws: Workspace) -> None:
    """A cell calling sys.exit() ends the run with that cell marked exited."""
    nb = ws.notebook(["import sys\nsys.exit(3)", "print('never')"])
    result = await ws.run(nb)
    assert result.status is RunStatus.FAILED
    assert result.cells[-1].status is CellStatus.EXITED
    assert "sys.exit(3)" in (result.error_message or "")


async def test_exit_call_is_recorded_as_exited(ws: Workspace) -> None:
    """A cell calling IPython's exit() (the kernel stops) is recorded as exited, not hung on."""
    nb = ws.notebook(["exit()", "print('never')"])
    result = await ws.run(nb)
    assert result.cells[-1].status is CellStatus.EXITED
    assert result.status is RunStatus.FAILED


@pytest.mark.slow
async def test_kernel_death_is_recorded(ws: Workspace) -> None:
    """A cell that kills its kernel is recorded as kernel_died, and the run fails."""
    nb = ws.notebook(["import os\nos._exit(1)", "print('never')"])
    result = await ws.run(nb)
    assert result.status is RunStatus.FAILED
    assert result.cells[-1].status is CellStatus.KERNEL_DIED
    assert result.error_name == "DeadKernelError"


async def test_megabytes_of_output_are_truncated(ws: Workspace) -> None:
    """Output past the per-cell limit is dropped with a notice and the cell is flagged."""
    nb = ws.notebook(["for i in range(50):\n    print('x' * 100_000)", "print('after')"])
    result = await ws.run(nb, options=Options(max_output_bytes=200_000))
    assert result.status is RunStatus.COMPLETED
    assert result.cells[0].output_truncated
    text = outputs_text(result.output_path, "c0")
    assert "of output dropped here; limit 200 kB" in text
    assert len(text) < 400_000
    assert Path(result.output_path).stat().st_size < 1_000_000
    assert outputs_text(result.output_path, "c1") == "after\n"


class _CancelWhenStarted(RunHooks):
    """Hooks that set the cancel event when a given cell starts."""

    def __init__(self, nb: Path, cell_id: str, cancel: asyncio.Event) -> None:
        self.index, self.cancel = cell_index(nb, cell_id), cancel

    def cell_started(self, index: int, position: int, total: int) -> None:
        if index == self.index:
            asyncio.get_running_loop().call_later(0.3, self.cancel.set)


async def test_cancel_interrupts_the_running_cell(ws: Workspace) -> None:
    """Cancelling interrupts the kernel at once and records the run and the cell as cancelled."""
    nb = ws.notebook([mark("c0"), "import time\ntime.sleep(60)", mark("c2")])
    cancel = asyncio.Event()
    result = await ws.run(nb, cancel=cancel, hooks=_CancelWhenStarted(nb, "c1", cancel))
    assert result.status is RunStatus.CANCELLED
    assert result.cells[-1].status is CellStatus.CANCELLED
    assert result.cells[-1].duration_s < 10
    assert ws.ran() == ["c0"]
    run = ws.history.get_run(result.run_id)
    assert run is not None and run.status is RunStatus.CANCELLED


async def test_cancel_before_the_first_cell_sends_no_cell(ws: Workspace) -> None:
    """A run cancelled before its first cell ends cancelled at once, executing nothing."""
    nb = ws.notebook([mark("c0") + "\nimport time\ntime.sleep(60)", mark("c1")])
    cancel = asyncio.Event()
    cancel.set()
    result = await ws.run(nb, cancel=cancel)
    assert result.status is RunStatus.CANCELLED
    assert [c.status for c in result.cells] == [CellStatus.CANCELLED]
    assert result.cells[0].error_message == "cancelled before the cell started"
    assert ws.ran() == []


async def test_state_dir_not_writable_is_a_clear_error(ws: Workspace) -> None:
    """A state directory the OS refuses to write fails before a kernel starts."""
    nb = ws.notebook(["x = 1"])
    with pytest.raises(StateError, match="state directory /sys/casare-state is not writable"):
        await ws.run(nb, state_dir="/sys/casare-state")


async def test_notebook_kernel_language_recorded(ws: Workspace) -> None:
    """The run records the kernel name and the language the kernel reports."""
    result = await ws.run(ws.notebook(["1"]))
    run = ws.history.get_run(result.run_id)
    assert run is not None and (run.kernel_name, run.language) == ("python3", "python")


class _ListHooks(RunHooks):
    """Hooks that keep what they are told, in order (a robot would send it on)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def run_started(self, run: RunRecord) -> None:
        self.calls.append(("run", run.model_copy()))

    async def cells_starting(self, run: RunRecord) -> None:
        self.calls.append(("cells", None))

    def cell_finished(
        self, record: CellRecord, cell: NotebookNode, position: int, total: int
    ) -> None:
        self.calls.append(("cell", (record, cell.get("id"), position, total)))

    def run_finished(self, run: RunRecord) -> None:
        self.calls.append(("end", run.model_copy()))


async def test_engine_runs_a_prepared_notebook_and_tells_its_hooks(ws: Workspace) -> None:
    """The engine runs a notebook prepared elsewhere (parameters injected) under a given id,
    tells its hooks in order, and writes no history database (what a robot does)."""
    path = ws.notebook(["x = 2", "print(x * n)"], params="n: int = 1")
    nb, _ = load_workflow(path)
    schema = read_schema(nb)
    nb_exec, secrets = parameterised(nb, {"n": 21}, schema)
    record = RunRecord(
        run_id="job-42",
        workflow_path="jobs/wf.ipynb",
        notebook_sha256="",
        started_at=datetime.now(UTC),
    )
    hooks = _ListHooks()
    spec = RunSpec(nb_exec, record, StateDir(ws.state), secrets=secrets, cwd=ws.root)
    result = await execute(spec, hooks=hooks)
    assert result.status is RunStatus.COMPLETED and result.run_id == "job-42"
    assert outputs_text(result.output_path, "c1") == "42\n"
    assert result.notebook is not None and result.notebook["cells"][-1]["id"] == "c1"
    kinds = [k for k, _ in hooks.calls]
    assert kinds == ["run", "cells", *["cell"] * 4, "end"]  # params, injected, c0, c1
    cells = [c for k, c in hooks.calls if k == "cell"]
    assert [(cid, pos, total) for _, cid, pos, total in cells] == [  # type: ignore[misc]
        ("params", 1, 4),
        ("injected-parameters", 2, 4),
        ("c0", 3, 4),
        ("c1", 4, 4),
    ]
    first, last = hooks.calls[0][1], hooks.calls[-1][1]
    assert first.status is RunStatus.RUNNING and last.status is RunStatus.COMPLETED  # type: ignore[attr-defined]
    assert not (ws.state / "history.duckdb").exists()


async def test_robot_style_run_writes_no_output_notebook(ws: Workspace) -> None:
    """With save_each_cell and save_output off, the result holds the output notebook and
    nothing is written where the output would go."""
    path = ws.notebook(["print('hello')"])
    nb, _ = load_workflow(path)
    record = RunRecord(
        run_id="job-7", workflow_path="wf", notebook_sha256="", started_at=datetime.now(UTC)
    )
    options = Options(save_each_cell=False, save_output=False)
    spec = RunSpec(nb, record, StateDir(ws.state), options=options, cwd=ws.root)
    result = await execute(spec)
    assert result.status is RunStatus.COMPLETED
    assert not Path(result.output_path).exists()
    assert result.notebook is not None
    assert result.notebook["metadata"]["casare"]["status"] == "completed"
    assert result.notebook["cells"][-1]["outputs"][0]["text"] == "hello\n"
