"""Shared helpers for tests that build notebooks and run casare-nb / papermill for real."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_notebook

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
ERROR_PREFIX = "casare-nb: error:"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
RESUME_RE = re.compile(r"casare-nb resume (\S+)")
PROCESS_TIMEOUT = 120


def make_notebook(*sources: str, params: str | None = None) -> NotebookNode:
    """A python3 notebook: an optional ``parameters``-tagged cell, then one code cell a source."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    cells = []
    if params is not None:
        cells.append(new_code_cell(params, metadata={"tags": ["parameters"]}))
    cells.extend(new_code_cell(source) for source in sources)
    nb.cells = cells
    return nb


def write_notebook(path: Path, *sources: str, params: str | None = None) -> Path:
    """Write ``make_notebook(*sources, params=params)`` to ``path``; answer ``path``."""
    nbformat.write(make_notebook(*sources, params=params), str(path))
    return path


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
