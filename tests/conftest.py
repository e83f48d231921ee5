"""Shared fixtures: workflow notebooks written to a temp folder, a state dir, run helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import nbformat
import pytest
from helpers import KERNELSPEC
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from casare_nb.local import aresume, arun_notebook
from casare_nb.notebook.run import RunResult
from casare_nb.store.history import HistoryStore

pytest_plugins = ["cluster", "stores"]  # an orchestrator with robots; the store backends


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


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def mark(cell_id: str) -> str:
    """Code that logs that a cell ran, without leaving a variable behind."""
    return f"open('ran.log', 'a').write('{cell_id}\\n')\n"


@pytest.fixture
def other_language_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec whose kernel reports a language other than Python (it runs ipykernel)."""
    home = tmp_path / "jupyter"
    spec = home / "kernels" / "casare-test"
    spec.mkdir(parents=True)
    (home / "otherlang.py").write_text(
        "from ipykernel.ipkernel import IPythonKernel\n"
        "from ipykernel.kernelapp import IPKernelApp\n"
        "class OtherKernel(IPythonKernel):\n"
        "    language_info = {**IPythonKernel.language_info, 'name': 'casare-test'}\n"
        "IPKernelApp.launch_instance(kernel_class=OtherKernel)\n"
    )
    argv = [sys.executable, str(home / "otherlang.py"), "-f", "{connection_file}"]
    kernel_json = {"argv": argv, "display_name": "other", "language": "casare-test"}
    (spec / "kernel.json").write_text(json.dumps(kernel_json))
    monkeypatch.setenv("JUPYTER_PATH", str(home))
    return "casare-test"


Runner = Callable[..., Awaitable[RunResult]]
