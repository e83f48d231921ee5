"""``casare-nb lab`` as a real process: it starts an orchestrator and a robot when none
runs, JupyterLab with the server extension wired to them, the dashboard notebook, and
Ctrl-C stops everything."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from jupyter_harness import free_port, jupyter_env

pytestmark = pytest.mark.slow


def test_lab_starts_an_orchestrator_robot_and_jupyterlab_wired_together(tmp_path: Path) -> None:
    """Out of the box: JupyterLab answers, /casare/api reaches the orchestrator started for
    it with its robot online, the dashboard notebook exists; Ctrl-C ends all with 0 and
    the orchestrator's runtime file is gone."""
    root = tmp_path / "project"
    root.mkdir()
    port, token = free_port(), secrets.token_hex(8)
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "casare_nb.cli",
            "lab",
            "--port",
            str(port),
            "--no-browser",
            "--",
            f"--IdentityProvider.token={token}",
            "--allow-root",
        ],
        cwd=root,
        env=jupyter_env(tmp_path / "home"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        robots: list[dict[str, object]] = []
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=url, headers={"Authorization": f"token {token}"}) as http:
            while not robots:
                assert proc.poll() is None, (tmp_path / "lab.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "lab.log").read_text()
                try:
                    answer = http.get("/casare/api/robots")
                    if answer.status_code == 200:
                        robots = answer.json()
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)  # polling a starting process: no event to wait on
        assert [(r["robot_id"], r["status"]) for r in robots] == [("lab-robot", "online")]
        assert (root / "casare-dashboard.ipynb").is_file()
        assert (root / ".casare" / "orchestrator.json").is_file()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, (tmp_path / "lab.log").read_text()
        assert not (root / ".casare" / "orchestrator.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
