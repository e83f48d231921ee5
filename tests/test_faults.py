"""Faults with real processes: robots (``casare-nb robot``) SIGKILLed or frozen at the worst
moments; the orchestrator, real, in this process on loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cluster import RUN_TIMEOUT, Orchestrated, counted, notebook, waiting_cell
from helpers import KILL_ROBOT_CODE

from casare_nb.core.dispatch import RetryPolicy
from casare_nb.core.models import RunStatus
from casare_nb.core.tokens import TokenRole
from casare_nb.notebook.state import HISTORY_FILE
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.store.history import HistoryStore

pytestmark = pytest.mark.timeout(180)


class Fleet(Orchestrated):
    """An orchestrator in this process and robot processes started with ``casare-nb robot``."""

    def __init__(self, root: Path, orch: Orchestrator) -> None:
        self.root = root
        self.orch = orch
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    async def robot(self, robot_id: str, *, wait: bool = True) -> subprocess.Popen[bytes]:
        token = await asyncio.to_thread(self.orch.create_token, robot_id, TokenRole.ROBOT)
        work = self.root / robot_id
        work.mkdir(parents=True, exist_ok=True)
        log = (self.root / f"{robot_id}.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "casare_nb.cli",
                "robot",
                "--orchestrator",
                self.orch.url,
                "--token",
                token,
                "--robot-id",
                robot_id,
                "--work-dir",
                str(work),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "CASARE_HOME": str(self.root / "home")},
        )
        self.procs[robot_id] = proc
        if wait:
            await self.orch.wait_for(lambda: self.online(robot_id), timeout=60)
        return proc

    def kill(self, robot_id: str) -> None:
        proc = self.procs[robot_id]
        proc.send_signal(signal.SIGCONT)  # a frozen process must run to die
        proc.kill()
        proc.wait(10)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(10)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    orch = Orchestrator(
        tmp_path / "state",
        port=0,
        heartbeat_interval_s=0.3,
        missed_heartbeats=5,
        retry_policy=RetryPolicy(base_s=0.05, jitter=0),
        reconnect_grace_s=0.5,
        assign_timeout_s=3.0,
    )
    await orch.start()
    f = Fleet(tmp_path, orch)
    try:
        yield f
    finally:
        f.close()
        await orch.stop()


def once_per_attempt(history: HistoryStore, job_id: str) -> None:
    cells = history.list_cells(job_id)
    keys = [(c.attempt, c.cell_index) for c in cells]
    assert len(keys) == len(set(keys)), f"a cell was recorded twice in one attempt: {keys}"


@pytest.mark.slow
async def test_robot_sigkilled_mid_cell_job_resumes_on_another(
    fleet: Fleet, tmp_path: Path
) -> None:
    """SIGKILL a robot while a cell runs: the job resumes on the other robot from the last
    checkpoint (earlier cells not re-run); each cell recorded once per attempt."""
    ran, started, go = tmp_path / "ran.log", tmp_path / "started", tmp_path / "go"
    wait = waiting_cell(started, go)
    nb = notebook(
        tmp_path,
        "long.ipynb",
        [
            counted(ran, "c0", "rows = list(range(10))"),
            counted(ran, "c1", wait),
            "total = sum(rows)",
        ],
    )
    await fleet.robot("robot-a")
    job = await fleet.orch.submit(nb)
    store = fleet.orch.stores.checkpoints
    await fleet.until(lambda: started.exists() and "c0" in store.stored_cells(job.job_id, 1))
    await fleet.robot("robot-b")
    fleet.kill("robot-a")
    go.touch()
    done = await fleet.finished(job.job_id)
    assert (done.status, done.attempt, done.robot_id) == (RunStatus.COMPLETED, 2, "robot-b")
    assert ran.read_text().split() == ["c0", "c1", "c1"]
    history = await fleet.history()
    once_per_attempt(history, job.job_id)
    runs = history.attempts(job.job_id)
    assert [(r.attempt, r.status) for r in runs] == [
        (1, RunStatus.FAILED),
        (2, RunStatus.COMPLETED),
    ]
    assert runs[0].error_name == "RobotLost"


@pytest.mark.slow
async def test_robot_killed_after_a_cell_before_reporting_more(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The kernel SIGKILLs its robot right after a cell ended (before anything more is sent):
    the job completes elsewhere; each cell recorded once per attempt."""
    ran = tmp_path / "ran.log"
    kill_a = "import os\nif os.path.basename(os.getcwd()) == 'robot-a':\n" + "\n".join(
        "    " + line for line in KILL_ROBOT_CODE.splitlines()
    )
    nb = notebook(
        tmp_path,
        "killer.ipynb",
        [counted(ran, "c0", "x = 41"), counted(ran, "c1", kill_a), "y = x + 1\nprint('y', y)"],
    )
    await fleet.robot("robot-a")
    job = await fleet.orch.submit(nb)
    # the process itself: its death may change nothing more on the orchestrator to wake on
    await asyncio.to_thread(fleet.procs["robot-a"].wait, RUN_TIMEOUT)
    await fleet.robot("robot-b")
    done = await fleet.finished(job.job_id)
    assert (done.status, done.robot_id) == (RunStatus.COMPLETED, "robot-b")
    assert ran.read_text().split().count("c1") == 2
    once_per_attempt(await fleet.history(), job.job_id)


@pytest.mark.slow
async def test_frozen_robot_that_never_accepts_then_dies(fleet: Fleet, tmp_path: Path) -> None:
    """A robot frozen (SIGSTOP) before it could accept its job, then SIGKILLed: the job goes
    back to the queue and completes on another robot."""
    nb = notebook(tmp_path, "quick.ipynb", ["x = 1", "print('x', x)"])
    proc = await fleet.robot("robot-a")
    proc.send_signal(signal.SIGSTOP)
    job = await fleet.orch.submit(nb)
    await fleet.until(lambda: fleet.job(job.job_id).robot_id == "robot-a")
    assert fleet.job(job.job_id).accepted_at is None
    await fleet.robot("robot-b")
    fleet.kill("robot-a")
    done = await fleet.finished(job.job_id)
    assert (done.status, done.robot_id) == (RunStatus.COMPLETED, "robot-b")
    assert done.failures == 0  # a lost attempt is not a failure
    once_per_attempt(await fleet.history(), job.job_id)


@pytest.mark.slow
def test_orchestrator_sigkilled_mid_run_restarts_and_the_job_continues(tmp_path: Path) -> None:
    """SIGKILL the orchestrator while a cell runs and start it again: the queue is restored,
    the robot reconnects and its job continues as the same attempt; nothing runs twice and
    each cell is recorded once."""
    from test_cli_service import Gate, Proc, start_orchestrator, start_robot

    (tmp_path / "workflows").mkdir()
    ran = tmp_path / "ran.log"
    gate = Gate(tmp_path, "c1")
    notebook(
        tmp_path / "workflows",
        "long.ipynb",
        [
            counted(ran, "c0", "rows = list(range(10))"),
            counted(ran, "c1", gate.cell),
            "print(sum(rows))",
        ],
    )
    later = notebook(tmp_path / "workflows", "later.ipynb", ["x = 1"])
    (tmp_path / "robot_config.yaml").write_text("connection:\n  reconnect_max_backoff_s: 1\n")
    orch = start_orchestrator(tmp_path)
    procs = [orch.proc]
    try:
        port = orch.ws_url.rsplit(":", 1)[1]
        procs.append(start_robot(orch, "robot-1", "--config", str(tmp_path / "robot_config.yaml")))
        with orch.client() as client:
            job = client.submit("long.ipynb")
            gate.wait_started()
            queued = client.submit(str(later), tags=["nowhere"])
        orch.proc.kill()  # SIGKILL: no drain, no goodbye
        again = Proc(
            tmp_path,
            "orchestrator",
            "--port",
            port,
            "--http-port",
            "0",
            "--workflows",
            "workflows",
            "--log-level",
            "warning",
        )
        procs.append(again)
        again.expect("runtime file")
        orch.proc = again
        with orch.client() as client:
            assert client.get(queued.job_id).status is RunStatus.QUEUED
            gate.open()
            done = client.wait(job.job_id, timeout=RUN_TIMEOUT)
        assert (done.status, done.attempt, done.robot_id) == (RunStatus.COMPLETED, 1, "robot-1")
        assert ran.read_text().split() == ["c0", "c1"]
        again.popen.send_signal(signal.SIGTERM)
        assert again.wait() == 0
        history = HistoryStore(tmp_path / "state" / HISTORY_FILE)
        once_per_attempt(history, job.job_id)
        assert {c.cell_id for c in history.list_cells(job.job_id)} >= {"c0", "c1", "c2"}
    finally:
        for proc in procs:
            proc.kill()
