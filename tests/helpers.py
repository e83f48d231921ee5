"""Shared helpers for tests: workflow notebooks, a workspace to run them in, subprocesses of
casare-nb and papermill, an orchestrator and robot in a thread (``served``). Fixtures live
in conftest.py (and the cluster/stores plugins)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from casare_nb.local import aresume, arun_notebook
from casare_nb.notebook.run import RunResult
from casare_nb.orchestrator.service import OrchestratorService
from casare_nb.robot.main import local_robot
from casare_nb.service_thread import ServiceThread
from casare_nb.store.history import HistoryStore

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
ERROR_PREFIX = "casare-nb: error:"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
RESUME_RE = re.compile(r"casare-nb resume (\S+)")
PROCESS_TIMEOUT = 120


def write_notebook(
    path: Path,
    cells: Sequence[str],
    *,
    params: str | None = None,
    tags: dict[int, list[str]] | None = None,
    kernel: dict[str, str] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """A notebook of code cells with ids c0, c1 ... (the parameters cell, if any, is 'params';
    a leading markdown cell 'title' makes indices differ from positions, as in real notebooks).
    """
    nb = new_notebook()
    nb.cells.append(new_markdown_cell("# test workflow", id="title"))
    if params is not None:
        nb.cells.append(new_code_cell(params, id="params", metadata={"tags": ["parameters"]}))
    for i, source in enumerate(cells):
        cell_tags = (tags or {}).get(i)
        nb.cells.append(
            new_code_cell(source, id=f"c{i}", metadata={"tags": cell_tags} if cell_tags else {})
        )
    nb.metadata["kernelspec"] = kernel or KERNELSPEC
    nb.metadata.update(metadata or {})
    nbformat.write(nb, str(path))
    return path


def replace_cell(path: Path, cell_id: str, source: str) -> None:
    """Edit one cell of a notebook file, as an analyst fixing it would."""
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.get("id") == cell_id:
            cell.source = source
    nbformat.write(nb, str(path))


def cell_index(result_or_path: RunResult | Path, cell_id: str) -> int:
    """Index of a cell id in the executed notebook of a run."""
    path = (
        Path(result_or_path.output_path)
        if isinstance(result_or_path, RunResult)
        else result_or_path
    )
    nb = json.loads(path.read_text())
    return next(i for i, c in enumerate(nb["cells"]) if c.get("id") == cell_id)


def outputs_text(path: str | Path, cell_id: str) -> str:
    """All text a cell printed or displayed, from an output notebook."""
    nb = json.loads(Path(path).read_text())
    cell = next(c for c in nb["cells"] if c.get("id") == cell_id)
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
        parts.append(out.get("evalue", ""))
    return "".join(parts)


class Workspace:
    """A temp folder holding workflows, the kernel's cwd and a state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = root / "state"

    def notebook(self, cells: Sequence[str], name: str = "wf.ipynb", **kw: Any) -> Path:
        return write_notebook(self.root / name, cells, **kw)

    async def run(self, path: Path, params: dict[str, Any] | None = None, **kw: Any) -> RunResult:
        kw.setdefault("state_dir", self.state)
        kw.setdefault("cwd", self.root)
        return await arun_notebook(path, params, **kw)

    async def resume(
        self, run_id: str, params: dict[str, Any] | None = None, **kw: Any
    ) -> RunResult:
        kw.setdefault("state_dir", self.state)
        kw.setdefault("cwd", self.root)
        return await aresume(run_id, params, **kw)

    @property
    def history(self) -> HistoryStore:
        return HistoryStore(self.state / "history.duckdb")

    def manifest(self, result: RunResult, cell_id: str) -> dict[str, Any]:
        path = self.state / "runs" / result.run_id / str(result.attempt) / "checkpoints"
        data: dict[str, Any] = json.loads((path / f"{cell_id}.json").read_text())
        return data

    def ran(self) -> list[str]:
        """Cells that logged themselves (``mark('c0')``) in the order they ran."""
        log = self.root / "ran.log"
        return log.read_text().split() if log.exists() else []


def mark(cell_id: str) -> str:
    """Code that logs that a cell ran, without leaving a variable behind."""
    return f"open('ran.log', 'a').write('{cell_id}\\n')\n"


Runner = Callable[..., Awaitable[RunResult]]


def state_dir(base: Path) -> Path:
    """The state directory the subprocesses use: ``<base>/state``."""
    return base / "state"


def cli_env(base: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a subprocess: this one with CASARE_HOME=<base>/state."""
    env = dict(os.environ)
    env["CASARE_HOME"] = str(state_dir(base))
    env.pop("PYTHONWARNINGS", None)
    env.update(extra or {})
    return env


def run_process(
    args: Sequence[str], base: Path, *, timeout: float = PROCESS_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``args`` in ``base`` with CASARE_HOME=<base>/state; capture text output."""
    return subprocess.run(
        list(args),
        cwd=base,
        env=cli_env(base),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_cli(
    base: Path, *args: str, timeout: float = PROCESS_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """``python -m casare_nb.cli ARGS`` as a real subprocess in ``base``."""
    return run_process([sys.executable, "-m", "casare_nb.cli", *args], base, timeout=timeout)


def run_papermill(base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``papermill`` script of this interpreter as a real subprocess in ``base``."""
    script = Path(sys.executable).with_name("papermill")
    return run_process([str(script), *args], base)


def resume_run_id(text: str) -> str:
    """The run id in the ``casare-nb resume <RUN_ID>`` hint of ``text``."""
    match = RESUME_RE.search(text)
    assert match, f"no resume command in:\n{text}"
    return match.group(1)


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    """Exit code and output of a finished process, for assertion messages."""
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def cell_text(cell: Mapping[str, Any]) -> str:
    """Everything a code cell printed or displayed, as one string."""
    parts: list[str] = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
        elif out.get("output_type") == "error":
            parts.append(f"{out.get('ename')}: {out.get('evalue')}")
    return "".join(str(p) for p in parts)


def notebook_text(nb: Mapping[str, Any]) -> str:
    """Everything every code cell of ``nb`` printed, as one string."""
    return "".join(cell_text(c) for c in nb.get("cells", []) if c.get("cell_type") == "code")


def injected_source(nb: Mapping[str, Any]) -> str:
    """The source of the ``injected-parameters`` cell of ``nb``."""
    for cell in nb.get("cells", []):
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            source = cell.get("source", "")
            return "".join(source) if isinstance(source, list) else str(source)
    raise AssertionError("no injected-parameters cell")


def sigkill_after(script: str, arg: str, line: str) -> int:
    """Run ``python -c script arg``, wait until it prints ``line``, SIGKILL it; its exit code."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, arg],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == line
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
        if proc.stdin is not None:
            proc.stdin.close()
    return proc.returncode


@contextlib.contextmanager
def served(
    state: Path,
    workflows: Path,
    robot_id: str,
    *,
    pool_size: int = 1,
    work_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    checkpoints: bool = True,
) -> Iterator[ServiceThread]:
    """An orchestrator service on ``state`` serving ``workflows`` and one local robot with
    warm kernels, in a thread (fast heartbeats); stopped at the end. ``environ``: the
    orchestrator's environment (webhook secrets); ``checkpoints``: the robot's
    ``job_execution.checkpoint_enabled``."""
    service = OrchestratorService(
        state,
        port=0,
        http_port=0,
        workflows_dir=workflows,
        heartbeat_interval_s=0.5,
        environ=dict(environ) if environ is not None else None,
    )
    robot = local_robot(
        robot_id,
        pool_size=pool_size,
        work_dir=work_dir or state.parent / robot_id,
        heartbeat_interval_s=0.5,
        checkpoints=checkpoints,
    )
    with ServiceThread(service, robots=[robot]) as thread:
        yield thread


KILL_ROBOT_CODE = (
    "import os, signal, psutil\n"
    "_robot = psutil.Process().parent()  # the zygote that forked this kernel, or the robot\n"
    "while 'zygote_main' in ' '.join(_robot.cmdline()):\n"
    "    _robot = _robot.parent()\n"
    "os.kill(_robot.pid, signal.SIGKILL)"
)
"""A cell that SIGKILLs the robot process running its kernel."""
