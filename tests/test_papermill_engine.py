"""The papermill engine ``casare``: papermill runs that get checkpoints, history and resume."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from helpers import (
    EXIT_OK,
    PROCESS_TIMEOUT,
    cell_text,
    cli_env,
    describe,
    notebook_text,
    run_cli,
    run_papermill,
    state_dir,
    write_notebook,
)
from nbformat.v4 import new_markdown_cell

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


# ---------------------------------------------------------------------------------------------
# papermill's own options, as its default engine (nbclient) honours them
# ---------------------------------------------------------------------------------------------

ENGINES = ["nbclient", "casare"]  # papermill's default engine, and ours


def options_notebook(path: Path) -> Path:
    """A parameterised notebook whose cells print to stdout and stderr and show a result,
    with cells that do not execute between them: markdown (also last) and an empty one."""
    write_notebook(
        path,
        ["print('out', n)", "", "import sys; print('err', n, file=sys.stderr)", "n * 21"],
        params="n = 1",
    )
    nb = nbformat.read(str(path), as_version=4)
    nb.cells.insert(3, new_markdown_cell("between", id="between"))
    nb.cells.append(new_markdown_cell("the end", id="end"))
    nbformat.write(nb, str(path))
    return path


def execute_in_process(
    base: Path, monkeypatch: pytest.MonkeyPatch, engine: str, **options: Any
) -> Any:
    """``papermill.execute_notebook`` of ``base/in.ipynb`` (-p n 2) with ``engine`` here."""
    import papermill

    monkeypatch.setenv("CASARE_HOME", str(state_dir(base)))
    monkeypatch.chdir(base)
    return papermill.execute_notebook(
        str(base / "in.ipynb"),
        str(base / f"out-{engine}.ipynb"),
        parameters={"n": 2},
        engine_name=engine,
        kernel_name="python3",
        **options,
    )


def papermill_lines(stderr: str) -> list[str]:
    """papermill's cell log lines (``Executing Cell``/``Ending Cell``) and the logged outputs
    of ``options_notebook``, in order."""
    return [
        line
        for line in stderr.splitlines()
        if line.startswith(("Executing Cell", "Ending Cell")) or line in {"out 2", "err 2", "42"}
    ]


@pytest.mark.slow
def test_log_output_logs_each_cell_output_as_the_default_engine_does(tmp_path: Path) -> None:
    """`--log-output` puts each cell's stdout, stderr and result in papermill's log, between
    its cell's Executing/Ending lines, exactly as papermill's default engine does."""
    options_notebook(tmp_path / "in.ipynb")
    logs = {}
    for engine in ENGINES:
        proc = run_papermill(
            tmp_path, "--engine", engine, "--log-output", "in.ipynb", "out.ipynb", "-p", "n", "2"
        )
        assert proc.returncode == EXIT_OK, describe(proc)
        logs[engine] = papermill_lines(proc.stderr)
    # 0 title, 1 parameters, 2 injected, 3 print, 4 markdown, 5 empty, 6 stderr, 7 result, 8 end
    executing = "Executing Cell 4" + "-" * 39  # cell 4 (index 3) is the print
    at = logs["casare"].index(executing)
    assert logs["casare"][at : at + 3] == [executing, "out 2", "Ending Cell 4" + "-" * 42]
    assert "err 2" in logs["casare"] and "42" in logs["casare"]
    assert logs["casare"] == logs["nbclient"]


@pytest.mark.slow
def test_stdout_and_stderr_files_hold_the_cells_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`stdout_file`/`stderr_file` (`--stdout-file`/`--stderr-file`) receive the cells'
    stdout and stderr, as with papermill's default engine."""
    options_notebook(tmp_path / "in.ipynb")
    written = {}
    for engine in ENGINES:
        out, err = tmp_path / f"{engine}.stdout", tmp_path / f"{engine}.stderr"
        with out.open("w", encoding="utf-8") as stdout, err.open("w", encoding="utf-8") as stderr:
            execute_in_process(
                tmp_path,
                monkeypatch,
                engine,
                progress_bar=False,
                stdout_file=stdout,
                stderr_file=stderr,
            )
        written[engine] = (out.read_text(encoding="utf-8"), err.read_text(encoding="utf-8"))
    assert written["casare"] == ("out 2\n", "err 2\n")
    assert written["casare"] == written["nbclient"]


@pytest.mark.slow
def test_progress_bar_counts_every_cell_of_the_notebook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The progress bar's total is the notebook's cell count and it advances one cell at a
    time through all of them (markdown and empty cells too), as with the default engine."""
    options_notebook(tmp_path / "in.ipynb")
    counts = {}
    for engine in ENGINES:
        bar = io.StringIO()
        nb = execute_in_process(
            tmp_path,
            monkeypatch,
            engine,
            progress_bar={"file": bar, "mininterval": 0, "miniters": 1, "ascii": True},
        )
        shown = [(int(n), int(total)) for n, total in re.findall(r"(\d+)/(\d+) \[", bar.getvalue())]
        assert {total for _, total in shown} == {len(nb.cells)}
        counts[engine] = [n for i, (n, _) in enumerate(shown) if i == 0 or n != shown[i - 1][0]]
    assert counts["casare"] == list(range(len(nb.cells) + 1)), counts
    assert counts["casare"] == counts["nbclient"]


@pytest.mark.slow
def test_start_timeout_bounds_the_kernel_start_as_the_default_engine(tmp_path: Path) -> None:
    """`--start-timeout 1` on a kernel that needs longer to answer fails with jupyter's
    "Kernel didn't respond in 1 seconds", as papermill's default engine does."""
    spec = tmp_path / "jupyter" / "kernels" / "slowpy"
    spec.mkdir(parents=True)
    late = "import time; time.sleep(60); from ipykernel.kernelapp import launch_new_instance"
    argv = [sys.executable, "-c", f"{late}; launch_new_instance()", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "slow", "language": "python"})
    )
    write_notebook(tmp_path / "in.ipynb", ["print('never')"])
    env = cli_env(tmp_path, {"JUPYTER_PATH": str(tmp_path / "jupyter")})
    script = str(Path(sys.executable).with_name("papermill"))
    files = ["in.ipynb", "out.ipynb"]
    for engine in ENGINES:
        t0 = time.monotonic()
        proc = subprocess.run(
            [script, "--engine", engine, "-k", "slowpy", "--start-timeout", "1", *files],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT,
            check=False,
        )
        assert proc.returncode != EXIT_OK, describe(proc)
        assert "Kernel didn't respond in 1 seconds" in proc.stderr.splitlines()[-1], describe(proc)
        assert time.monotonic() - t0 < 30  # not papermill's default 60 s, nor the kernel's
    [run] = history(tmp_path).list_runs()
    assert run.status is RunStatus.FAILED
    assert run.error_message == "Kernel didn't respond in 1 seconds"


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_long_cell_is_autosaved_while_it_runs(tmp_path: Path, engine: str) -> None:
    """`--request-save-on-cell-execute --autosave-cell-every 1`: while a long cell runs, the
    output notebook on disk already holds its outputs so far (papermill's autosave_cell)."""
    release = tmp_path / "release"
    write_notebook(
        tmp_path / "in.ipynb",
        [
            "import pathlib, time\n"
            "deadline = time.monotonic() + 60\n"
            "while not pathlib.Path(release).exists() and time.monotonic() < deadline:\n"
            "    print('tick', flush=True)\n"
            "    time.sleep(0.1)\n"
            "print('released')"
        ],
        params="release = ''",
    )
    script = str(Path(sys.executable).with_name("papermill"))
    args = [script, "--engine", engine, "--request-save-on-cell-execute"]
    args += ["--autosave-cell-every", "1", "in.ipynb", "out.ipynb", "-p", "release", str(release)]
    proc = subprocess.Popen(
        args,
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    saved: dict[str, Any] | None = None
    try:
        deadline = time.monotonic() + PROCESS_TIMEOUT
        while saved is None and proc.poll() is None and time.monotonic() < deadline:
            saved = _running_cell_with(tmp_path / "out.ipynb", "tick")
            time.sleep(0.05)  # polling the file papermill writes: no event to wait on
    finally:
        release.touch()
        stdout, stderr = proc.communicate(timeout=PROCESS_TIMEOUT)
    assert saved is not None, f"exit {proc.returncode}\n{stdout}\n{stderr}"
    assert "released" not in cell_text(saved)
    assert proc.returncode == EXIT_OK, stderr
    final = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4)
    assert "released" in notebook_text(final)


def _running_cell_with(path: Path, text: str) -> dict[str, Any] | None:
    """The cell of the notebook at ``path`` that papermill saved as running with ``text`` in
    its outputs; None while there is none (or the file is being written)."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for cell in nb.get("cells", []):
        status = cell.get("metadata", {}).get("papermill", {}).get("status")
        if status == "running" and text in cell_text(cell):
            return dict(cell)
    return None


@pytest.mark.slow
def test_execution_timeout_raises_the_default_engines_cell_timeout_error(tmp_path: Path) -> None:
    """`--execution-timeout 1` on `time.sleep(30)` ends with nbclient's CellTimeoutError, the
    text papermill's default engine shows, not the interrupted cell's KeyboardInterrupt."""
    write_notebook(tmp_path / "in.ipynb", ["import time; time.sleep(30)"])
    errors = {}
    for engine in ENGINES:
        t0 = time.monotonic()
        proc = run_papermill(
            tmp_path, "--engine", engine, "--execution-timeout", "1", "in.ipynb", "out.ipynb"
        )
        assert proc.returncode != EXIT_OK, describe(proc)
        assert time.monotonic() - t0 < 25, describe(proc)
        tail = proc.stderr[proc.stderr.rfind("Traceback") :]
        errors[engine] = tail[tail.index("nbclient.exceptions.CellTimeoutError") :]
        if engine == "casare":
            assert "casare-nb resume" in proc.stderr, describe(proc)
    assert errors["casare"].startswith(
        "nbclient.exceptions.CellTimeoutError: A cell timed out while it was being executed,"
        " after 1 seconds.\nThe message was: Cell execution timed out."
    )
    assert "import time; time.sleep(30)" in errors["casare"]
    assert errors["casare"] == errors["nbclient"]
    [run] = history(tmp_path).list_runs()
    assert run.status is RunStatus.TIMEOUT
