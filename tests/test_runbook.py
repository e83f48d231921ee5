"""docs/runbook.md is what operators type: its ``bash`` blocks run here, in order, as one
script, against the orchestrator and robot the blocks themselves start (real processes on
free ports of 127.0.0.1, a real state directory), so the document cannot drift from the
code."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNBOOK = ROOT / "docs" / "runbook.md"
BLOCK = re.compile(r"^```bash\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
OPERATOR_COMMANDS = (
    "casare-nb status",
    "casare-nb backup --to",
    "casare-nb restore",
    "casare-nb cleanup --older-than",
    "casare-nb doctor",
    "casare-nb autoscale --command",
    "casare-nb fires",
    "casare-nb resume-submissions",
    "casare-nb maintenance on",
    "casare-nb token create",
)
"""The commands issue 13 lists for the runbook (and the reversible drain and token roles)."""
PRELUDE = """set -euo pipefail
stop_all() { kill $(jobs -p) 2>/dev/null || true; wait || true; }
trap stop_all EXIT
"""
SCRIPT_TIMEOUT_S = 600


def bash_blocks(text: str) -> list[str]:
    """The bodies of the ```bash fenced blocks of a Markdown text, in order."""
    return [m.group(1) for m in BLOCK.finditer(text)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def script_of(blocks: list[str]) -> str:
    """One bash script: the prelude, then each block after a marker line naming it."""
    parts = [PRELUDE]
    for number, block in enumerate(blocks, 1):
        parts.append(f"echo '### runbook block {number}'\n{block}")
    return "\n".join(parts)


def test_bash_blocks_are_found_in_order() -> None:
    """bash_blocks returns the bash fences' bodies in order and ignores console fences."""
    text = "a\n```bash\necho 1\n```\n```console\n$ no\n```\n```bash\necho 2\necho 3\n```\n"
    assert bash_blocks(text) == ["echo 1\n", "echo 2\necho 3\n"]


def test_the_runbook_runs_every_operator_command() -> None:
    """Each command of the operators' list is in a bash block, so the runbook test runs it."""
    commands = "\n".join(bash_blocks(RUNBOOK.read_text()))
    missing = [c for c in OPERATOR_COMMANDS if c not in commands]
    assert not missing, f"not in a bash block of docs/runbook.md: {missing}"


@pytest.mark.slow
def test_the_runbook_commands_run_in_order_against_a_live_stack(tmp_path: Path) -> None:
    """docs/runbook.md's bash blocks, run in order with bash -euo pipefail, all succeed."""
    work = tmp_path / "ops"
    shutil.copytree(ROOT / "workflows", work / "workflows")
    (tmp_path / "home").mkdir()
    port, http_port = free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CASARE_") and key not in {"VIRTUAL_ENV"}
    }
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(tmp_path / "home"),
        CASARE_HOME=str(work / "state"),
        CASARE_ORCH_PORT=str(port),
        CASARE_ORCH_HTTP_PORT=str(http_port),
        CASARE_ORCHESTRATOR_URL=f"ws://127.0.0.1:{port}",
    )
    script = work / "runbook.sh"
    script.write_text(script_of(bash_blocks(RUNBOOK.read_text())))
    proc = subprocess.Popen(
        ["bash", str(script)],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=SCRIPT_TIMEOUT_S)
    finally:
        if proc.poll() is None or _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    tail = "\n".join(out.splitlines()[-60:])
    assert proc.returncode == 0, f"the runbook script exited {proc.returncode}:\n{tail}"
    blocks = len(bash_blocks(RUNBOOK.read_text()))
    assert f"### runbook block {blocks}" in out, tail
    assert f"ports: 127.0.0.1:{port}, 127.0.0.1:{http_port} free" in out, tail  # its settings
    assert re.search(r"job \S+ completed \(attempt 2, robot robot-1\)", out), tail  # resumed
    assert "backup written to" in out and "restored casare-backup.tar" in out, tail
    assert "maintenance off" in out and "robots shut down        robot-1" in out, tail
    assert not (work / "state" / "orchestrator.json").exists()  # shut down cleanly
    assert (work / "casare-backup.tar").is_file() and (work / "restored").is_dir()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
