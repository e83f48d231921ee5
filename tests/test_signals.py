"""Real processes, real signals: Ctrl-C cancels cleanly; a killed run can be resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import cell_index, mark, replace_cell, write_notebook

from casare_nb.core.models import CellStatus, RunStatus
from casare_nb.store.history import HistoryStore

BLOCKING_CELL = "open('ready', 'w').write('go')\nimport time\ntime.sleep(120)"


def start_cli(root: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "CASARE_HOME": str(root / "state")}
    return subprocess.Popen(
        [sys.executable, "-m", "casare_nb.cli", *args],
        cwd=root,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_until_cell_runs(root: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Block until the blocking cell opens the FIFO 'ready' (an event, not a sleep)."""
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append((root / "ready").read_text()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert got == ["go"], f"the cell never started; exit {proc.poll()}"


def blocking_workflow(root: Path) -> Path:
    os.mkfifo(root / "ready")
    return write_notebook(root / "wf.ipynb", [mark("c0") + "a = 5", BLOCKING_CELL, "print(a * 2)"])


def test_ctrl_c_interrupts_the_kernel_and_records_cancelled(tmp_path: Path) -> None:
    """SIGINT to `casare-nb run` interrupts the running cell, records cancelled, exits 130."""
    blocking_workflow(tmp_path)
    proc = start_cli(tmp_path, "run", "wf.ipynb")
    wait_until_cell_runs(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelled at cell" in err
    runs = HistoryStore(tmp_path / "state" / "history.duckdb").list_runs()
    assert len(runs) == 1 and runs[0].status is RunStatus.CANCELLED
    cells = HistoryStore(tmp_path / "state" / "history.duckdb").list_cells(runs[0].run_id)
    assert [(c.cell_id, c.status) for c in cells] == [
        ("c0", CellStatus.OK),
        ("c1", CellStatus.CANCELLED),
    ]


@pytest.mark.slow
def test_killed_run_resumes_from_the_cell_it_was_in(tmp_path: Path) -> None:
    """After SIGKILL of the runner mid-cell, resume restores and re-runs from that cell."""
    nb = blocking_workflow(tmp_path)
    proc = start_cli(tmp_path, "run", "wf.ipynb")
    wait_until_cell_runs(tmp_path, proc)
    proc.kill()
    proc.communicate(timeout=30)
    store = HistoryStore(tmp_path / "state" / "history.duckdb")
    (run,) = store.list_runs()
    assert run.status is RunStatus.RUNNING  # nobody recorded an end: the process died
    replace_cell(nb, "c1", "b = a + 1")
    resumed = start_cli(tmp_path, "resume", run.run_id)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert (tmp_path / "ran.log").read_text().split() == ["c0"]
    attempt = store.get_run(run.run_id)
    assert attempt is not None and attempt.attempt == 2
    assert attempt.status is RunStatus.COMPLETED
    assert attempt.restored_from_cell == cell_index(nb, "c0")
    assert "completed" in out
