"""A job that kills its robot is bounded: lost with its robot more than max_robot_losses times
it is dead (PoisonJob, naming the cell), and the jobs queued behind it run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cluster import RUN_TIMEOUT, Cluster, fake_robot, notebook
from helpers import KILL_ROBOT_CODE

from casare_nb.core.models import Job, Priority, ResumePlan, RunStatus
from casare_nb.core.tokens import TokenRole
from casare_nb.orchestrator.jobs.attempts import poison_message
from casare_nb.orchestrator.jobs.book import Attempt, LostCell
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.protocol import JobAccept, JobAssign, decode, encode

POISON = KILL_ROBOT_CODE  # the kernel SIGKILLs its robot


@contextlib.asynccontextmanager
async def robot_process(
    orch: Orchestrator, token: str, robot_id: str, root: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``casare-nb robot`` as a real process (its kernels are its children); stopped (SIGTERM,
    then SIGKILL) at the end if it still runs."""
    log = (root / f"{robot_id}.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "casare_nb.cli",
        "robot",
        "--orchestrator",
        orch.url,
        "--token",
        token,
        "--robot-id",
        robot_id,
        "--pool-size",
        "1",
        "--work-dir",
        str(root / robot_id),
        cwd=root,
        env={**os.environ, "CASARE_HOME": str(root / "robot-home")},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        yield proc
    finally:
        log.close()
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_job_that_kills_its_robot_is_dead_and_the_queue_moves_on(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A cell that SIGKILLs its robot process (restarted each time, as a supervisor would) ends
    the job dead after max_robot_losses + 1 losses, failures untouched, with a PoisonJob error
    naming the cell; the lower-priority jobs queued behind it then complete."""
    poison = notebook(tmp_path, "poison.ipynb", [POISON, "print('never runs')"])
    quick = notebook(tmp_path, "quick.ipynb", ["x = 1"])
    job = await cluster.orch.submit(
        poison, priority=Priority.HIGH, max_retries=2, max_robot_losses=2
    )
    behind = [await cluster.orch.submit(quick, priority=Priority.LOW) for _ in range(3)]
    token = await asyncio.to_thread(cluster.orch.create_token, "robot-p", TokenRole.ROBOT)
    kills = 0
    while not cluster.job(job.job_id).status.finished:
        assert kills <= 3, "the poison job outlived its bound"
        async with robot_process(cluster.orch, token, "robot-p", tmp_path) as proc:
            exited = asyncio.create_task(proc.wait())
            ended = asyncio.create_task(
                cluster.until(lambda: cluster.job(job.job_id).status.finished)
            )
            done, _ = await asyncio.wait({exited, ended}, return_when=asyncio.FIRST_COMPLETED)
            if exited not in done:  # the loss may be seen before the process is reaped
                done, _ = await asyncio.wait({exited}, timeout=RUN_TIMEOUT)
            if exited in done:
                ended.cancel()
                assert proc.returncode == -signal.SIGKILL, (tmp_path / "robot-p.log").read_text()
                kills += 1
                continue
            exited.cancel()
    assert kills == 3
    dead = cluster.job(job.job_id)
    assert (dead.status, dead.error_name) == (RunStatus.DEAD, "PoisonJob")
    assert (dead.robot_losses, dead.failures, dead.attempt) == (3, 0, 3)
    first_line = POISON.splitlines()[0]
    assert dead.error_message == f"robot lost 3 times while running cell 1 (`{first_line}`)"
    assert dead.failed_cell == 1
    # the queue moved on: a robot (not killed any more) runs the jobs behind it
    async with robot_process(cluster.orch, token, "robot-p", tmp_path):
        for queued in behind:
            done_job = await cluster.finished(queued.job_id)
            assert (done_job.status, done_job.robot_losses) == (RunStatus.COMPLETED, 0)
    runs = (await cluster.history()).attempts(job.job_id)
    assert [(r.status, r.error_name, r.failed_cell) for r in runs] == [
        (RunStatus.FAILED, "RobotLost", 1)
    ] * 3


async def test_robot_losses_survive_an_orchestrator_restart(tmp_path: Path) -> None:
    """robot_losses is stored with the job: after a restart the count goes on, and the loss
    beyond max_robot_losses makes the job dead."""
    nb = notebook(tmp_path, "wf.ipynb", ["x = 1"])
    state = tmp_path / "state"

    def job_of(orch: Orchestrator, job_id: str) -> Job:
        job = orch.job(job_id)
        assert job is not None
        return job

    async def lose_once(orch: Orchestrator, job_id: str, robot_id: str) -> None:
        """A hand-played robot takes the job, accepts it and disconnects."""
        async with fake_robot(orch, robot_id) as ws:
            while not isinstance(msg := decode(await ws.recv()), JobAssign):
                pass
            assert msg.job_id == job_id
            await ws.send(encode(JobAccept(job_id=job_id, attempt=msg.attempt, reply_to=msg.id)))
            await orch.wait_for(lambda: job_of(orch, job_id).accepted_at is not None)

    async with Orchestrator(state, port=0, reconnect_grace_s=0.05) as first:
        job = await first.submit(nb, max_robot_losses=1)
        assert (job.max_robot_losses, job.robot_losses) == (1, 0)
        assert (await first.submit(nb)).max_robot_losses == 3  # the default
        await lose_once(first, job.job_id, "robot-f1")
        await first.wait_for(lambda: job_of(first, job.job_id).status is RunStatus.QUEUED)
        assert job_of(first, job.job_id).robot_losses == 1
    async with Orchestrator(state, port=0, reconnect_grace_s=0.05) as second:
        again = job_of(second, job.job_id)
        assert (again.status, again.robot_losses, again.max_robot_losses) == (
            RunStatus.QUEUED,
            1,
            1,
        )
        await lose_once(second, job.job_id, "robot-f2")
        await second.wait_for(lambda: job_of(second, job.job_id).status.finished)
        dead = job_of(second, job.job_id)
        assert (dead.status, dead.error_name, dead.robot_losses) == (
            RunStatus.DEAD,
            "PoisonJob",
            2,
        )
        assert dead.error_message == "robot lost 2 times while running cell 1 (`x = 1`)"


def _code(source: str | list[str], **metadata: Any) -> dict[str, Any]:
    return {"cell_type": "code", "source": source, "metadata": metadata}


def test_the_lost_cell_is_the_one_after_the_last_reported() -> None:
    """The cell named for a lost attempt is the next one the attempt executes after the last
    job_progress (replayed cells of a resume first, skip-execution and markdown cells never),
    and the PoisonJob message counts each cell lost at."""
    cells = [
        {"cell_type": "markdown", "source": "# title", "metadata": {}},
        _code("a = 1\nb = 2"),
        _code("skipped()", tags=["skip-execution"]),
        _code(["\n", "crash()  # native\n", "more()"]),
        _code("done = True"),
    ]
    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    fresh = Attempt("robot-a", "0" * 64, t0, notebook={"cells": cells})
    assert fresh.running_cell() == LostCell(1, None, "a = 1")
    fresh.last_cell = 1
    assert fresh.running_cell() == LostCell(3, None, "crash()  # native")
    fresh.last_cell = 4
    assert fresh.running_cell() is None
    plan = ResumePlan(start=4, restore_cell=1, rerun=[3])
    resumed = Attempt("robot-a", "0" * 64, t0, notebook={"cells": cells}, plan=plan)
    assert resumed.running_cell() == LostCell(3, None, "crash()  # native")
    resumed.last_cell = 3
    assert resumed.running_cell() == LostCell(4, None, "done = True")
    crash, done = LostCell(3, "c2", "crash()"), LostCell(4, "c3", "done = True")
    assert poison_message(3, [crash, None, crash]) == (
        "robot lost 3 times while running cell 3 (`crash()`)"
    )
    assert poison_message(3, [crash, done, crash]) == (
        "robot lost 3 times, while running cell 3 (`crash()`) (2x), cell 4 (`done = True`) (1x)"
    )
    assert poison_message(2, [None]) == "robot lost 2 times (the cell running is unknown)"
