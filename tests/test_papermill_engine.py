"""The papermill engine ``casare``: papermill runs that get checkpoints, history and resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from helpers import (
    EXIT_OK,
    describe,
    notebook_text,
    run_cli,
    run_papermill,
    state_dir,
    write_notebook,
)

from casare_nb.core.models import RunStatus
from casare_nb.store.history import HistoryStore


def history(base: Path) -> HistoryStore:
    """The history the subprocesses in ``base`` write to."""
    return HistoryStore(state_dir(base) / "history.duckdb")


@pytest.mark.slow
def test_papermill_cli_with_casare_engine_records_a_checkpointed_run(tmp_path: Path) -> None:
    """`papermill --engine casare` completes, keeps papermill's metadata and records the run."""
    write_notebook(tmp_path / "in.ipynb", ["y = n * 2", "print('y is', y)"], params="n = 1")
    proc = run_papermill(tmp_path, "--engine", "casare", "in.ipynb", "out.ipynb", "-p", "n", "3")
    assert proc.returncode == EXIT_OK, describe(proc)

    out = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4)
    assert "y is 6" in notebook_text(out)
    assert out.metadata.papermill.parameters == {"n": 3}
    assert out.metadata.papermill.input_path == "in.ipynb"
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in out.cells)
    assert all(c.metadata.papermill.status == "completed" for c in out.cells)

    [run] = history(tmp_path).list_runs()
    assert run.status is RunStatus.COMPLETED
    assert run.source == "papermill"
    assert run.parameters == {"n": 3}
    assert run.attempt == 1
    assert run.workflow_path == str(tmp_path / "in.ipynb")
    cells = history(tmp_path).list_cells(run.run_id)
    code_cells = [c for c in out.cells if c.cell_type == "code"]
    assert [c.status.value for c in cells] == ["ok"] * len(code_cells)
    checkpoints = state_dir(tmp_path) / "runs" / run.run_id / "1" / "checkpoints"
    assert checkpoints.is_dir()
    assert sorted(p.name for p in checkpoints.glob("*.json")), "no checkpoint manifests"


def test_failed_papermill_run_resumes_from_the_failed_cell(tmp_path: Path) -> None:
    """A failing papermill run is recorded failed; `casare-nb resume` after a fix completes it."""
    source = tmp_path / "in.ipynb"
    write_notebook(
        source, ["x = n * 2", "raise ValueError('boom')", "print('after', x, z)"], params="n = 1"
    )
    proc = run_papermill(tmp_path, "--engine", "casare", "in.ipynb", "out.ipynb", "-p", "n", "3")
    assert proc.returncode != EXIT_OK, describe(proc)
    assert "PapermillExecutionError" in proc.stderr

    store = history(tmp_path)
    [failed] = store.list_runs()
    assert failed.status is RunStatus.FAILED
    assert failed.source == "papermill"
    assert failed.error_name == "ValueError"
    assert failed.failed_cell == 4  # 0 title, 1 parameters, 2 injected, 3 x = ..., 4 raise
    assert f"casare-nb resume {failed.run_id}" in proc.stderr

    nb = nbformat.read(str(source), as_version=4)
    ids = [c.id for c in nb.cells]
    next(c for c in nb.cells if c.id == "c1").source = "z = x + 1"  # the raising cell
    nbformat.write(nb, str(source))
    assert [c.id for c in nbformat.read(str(source), as_version=4).cells] == ids

    resumed = run_cli(tmp_path, "resume", failed.run_id)
    assert resumed.returncode == EXIT_OK, describe(resumed)
    assert "completed" in resumed.stdout

    second = store.get_run(failed.run_id)
    assert second is not None
    assert second.attempt == 2
    assert second.status is RunStatus.COMPLETED
    assert second.parameters == {"n": 3}
    assert second.restored_from_cell == 3
    cells = store.list_cells(failed.run_id, attempt=2)
    executed = [c.cell_index for c in cells if not c.replayed]
    replayed = [c.cell_index for c in cells if c.replayed]
    assert executed == [4, 5]
    assert all(i < failed.failed_cell for i in replayed)
    assert 3 not in replayed  # x came back from the checkpoint, not by re-running its cell
    assert all(c.status.value == "ok" for c in cells)
    output = nbformat.read(
        str(state_dir(tmp_path) / "runs" / failed.run_id / "2" / "output.ipynb"), as_version=4
    )
    assert "after 6 7" in notebook_text(output)


def test_papermill_execute_notebook_in_process_with_casare_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`papermill.execute_notebook(..., engine_name="casare")` in this process records the run."""
    import papermill

    monkeypatch.setenv("CASARE_HOME", str(state_dir(tmp_path)))
    monkeypatch.chdir(tmp_path)
    write_notebook(tmp_path / "in.ipynb", ["print('twice', n * 2)"], params="n = 1")
    nb = papermill.execute_notebook(
        str(tmp_path / "in.ipynb"),
        str(tmp_path / "out.ipynb"),
        parameters={"n": 3},
        engine_name="casare",
        kernel_name="python3",
        progress_bar=False,
    )
    assert "twice 6" in notebook_text(nb)
    assert "twice 6" in notebook_text(nbformat.read(str(tmp_path / "out.ipynb"), as_version=4))
    [run] = history(tmp_path).list_runs()
    assert run.status is RunStatus.COMPLETED
    assert run.source == "papermill"
    assert run.parameters == {"n": 3}


@pytest.mark.parametrize(
    "first",
    ["import casare_nb.papermill_engine", "import papermill.engines"],
    ids=["engine-first", "papermill-first"],
)
def test_engine_module_imports_on_its_own_and_registers_with_papermill(first: str) -> None:
    """Importing the engine module before papermill (or after) works, and papermill's
    registry names our class as its 'casare' engine."""
    code = (
        f"{first}\n"
        "import casare_nb.papermill_engine as ours\n"
        "from papermill.engines import papermill_engines\n"
        "assert papermill_engines.get_engine('casare') is ours.CasareEngine\n"
        "print(ours.CasareEngine.__name__)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "CasareEngine"
