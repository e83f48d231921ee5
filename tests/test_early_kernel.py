"""The early kernel: started at a command's first line, taken by the run when it fits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from helpers import outputs_text, write_notebook

from casare_nb.notebook import early
from casare_nb.notebook.kernels import KernelSession

CLI = [sys.executable, "-m", "casare_nb.cli"]


@pytest.fixture(autouse=True)
def no_leftover() -> Iterator[None]:
    yield
    early._discard_pending()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_the_next_kernel_start_takes_the_early_kernel(tmp_path: Path) -> None:
    """KernelSession.start answers on the early process and moves it to the asked cwd."""
    kernel = early.launch()
    assert kernel is not None and early.pending()
    session = await KernelSession.start(cwd=tmp_path)
    try:
        assert session.pid == kernel.process.pid and not early.pending()
        got = await session.call(
            "import sys, types, json, os\n"
            "sys.modules.setdefault('__casare__', types.ModuleType('__casare__')).result = "
            "json.dumps(os.getcwd())"
        )
        assert got == str(tmp_path)
    finally:
        await session.shutdown()
    assert gone(kernel.process.pid)
    assert not kernel.connection_file.parent.exists()


async def test_an_early_kernel_of_another_command_is_discarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernelspec whose command differs gets its own kernel; the early one is killed."""
    spec = tmp_path / "jupyter" / "kernels" / "wrapped"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps(
            {"argv": argv, "env": {"WRAPPED": "1"}, "display_name": "w", "language": "python"}
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    kernel = early.launch()
    assert kernel is not None
    session = await KernelSession.start("wrapped")
    try:
        assert session.pid != kernel.process.pid
        assert kernel.process.poll() is not None and not early.pending()
    finally:
        await session.shutdown()


def test_an_early_kernel_nobody_took_ends_with_the_process() -> None:
    """A process that exits without running anything leaves no kernel behind."""
    script = (
        "from casare_nb.notebook import early\n"
        "k = early.launch()\n"
        "print(k.process.pid, k.connection_file, flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    pid, connection_file = done.stdout.split()
    assert gone(int(pid))
    assert not Path(connection_file).exists()


def test_casare_nb_run_runs_on_the_early_kernel_unless_turned_off(tmp_path: Path) -> None:
    """`casare-nb run` executes on the kernel it started first; CASARE_EARLY_KERNEL=0 does not."""
    nb = tmp_path / "argv.ipynb"
    write_notebook(nb, ["import sys\nprint(sys.argv[-1])"])
    seen = {}
    for flag in ("1", "0"):
        out = tmp_path / f"out-{flag}.ipynb"
        proc = subprocess.run(
            [*CLI, "run", "-q", str(nb), str(out), "--state-dir", str(tmp_path / "state")],
            cwd=tmp_path,
            env={**os.environ, "CASARE_EARLY_KERNEL": flag},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        seen[flag] = outputs_text(out, "c0").strip()
    assert Path(seen["1"]).name == "kernel.json"
    assert Path(seen["0"]).name != "kernel.json"


def test_a_refused_run_leaves_no_early_kernel(tmp_path: Path) -> None:
    """Bad input exits 2 with one line, and the kernel started early is gone with it."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.run(
        [*CLI, "run", str(tmp_path / "missing.ipynb")],
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp.glob("casare-k-*"))  # the early kernel's folder went with it
    kernels = [
        p for p in psutil.process_iter(["cmdline"]) if str(tmp) in " ".join(p.info["cmdline"] or [])
    ]
    assert all(p.status() == psutil.STATUS_ZOMBIE for p in kernels)
