"""The orchestrator keeps its unfinished jobs in memory and writes their states behind: what
its API answers meanwhile, when a robot is acknowledged, dispatch counting its own
assignments, and the restart after a crash. A real orchestrator, fake robots over real
WebSockets, real DuckDB files."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cluster import notebook
from stores import opened
from websockets.asyncio.client import ClientConnection, connect

from casare_nb.core.models import Job, RunStatus
from casare_nb.core.tokens import TokenRole
from casare_nb.notebook.state import HISTORY_FILE
from casare_nb.orchestrator.jobs.manager import OPEN_MARKER
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.protocol import (
    Envelope,
    Heartbeat,
    HeartbeatAck,
    JobAccept,
    JobAssign,
    JobComplete,
    JobRef,
    Message,
    Register,
    RegisterAck,
    decode,
    encode,
)
from casare_nb.store.history import HistoryStore

TIMEOUT = 20.0  # a bound on each wait, never slept


class FakeRobot:
    """A robot speaking the protocol by hand."""

    def __init__(self, ws: ClientConnection, robot_id: str, ack: RegisterAck) -> None:
        self.ws = ws
        self.robot_id = robot_id
        self.ack = ack
        self.seq = 0

    async def send(self, msg: Envelope) -> None:
        await self.ws.send(encode(msg))

    async def recv(self) -> Message:
        return decode(await asyncio.wait_for(self.ws.recv(), TIMEOUT))

    async def assignment(self) -> JobAssign:
        msg = await self.recv()
        assert isinstance(msg, JobAssign), msg
        return msg

    async def heartbeat(self, running: list[JobRef]) -> HeartbeatAck:
        """Send a heartbeat and wait for its ack (other messages are not expected)."""
        self.seq += 1
        status = "busy" if running else "online"
        await self.send(
            Heartbeat(robot_id=self.robot_id, status=status, running_jobs=running, seq=self.seq)
        )
        msg = await self.recv()
        assert isinstance(msg, HeartbeatAck) and msg.seq == self.seq, msg
        return msg

    async def complete(self, assign: JobAssign) -> None:
        await self.send(
            JobComplete(
                job_id=assign.job_id,
                attempt=assign.attempt,
                output_notebook=assign.notebook,
                duration_s=0.0,
            )
        )


async def fake_robot(
    orch: Orchestrator, robot_id: str, *, capacity: int = 1, holds: list[JobRef] | None = None
) -> FakeRobot:
    token = await asyncio.to_thread(orch.create_token, robot_id, TokenRole.ROBOT)
    ws = await connect(orch.url, additional_headers={"Authorization": f"Bearer {token}"})
    register = Register(
        robot_id=robot_id, name=robot_id, max_concurrent_jobs=capacity, holding=holds or []
    )
    await ws.send(encode(register))
    ack = decode(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert isinstance(ack, RegisterAck) and ack.accepted, ack
    return FakeRobot(ws, robot_id, ack)


def stored(state: Path, job_id: str) -> tuple[Any, ...] | None:
    """The job's row as committed, on a connection of its own (no overlay, no wait)."""
    with HistoryStore(state / HISTORY_FILE).db.connect() as con:
        return con.execute(
            "SELECT status, attempt, robot_id, accepted_at IS NOT NULL FROM jobs WHERE job_id = ?",
            [job_id],
        ).fetchone()


@pytest.fixture
async def orch(tmp_path: Path) -> AsyncIterator[Orchestrator]:
    """An orchestrator with no periodic wake-up to speak of (heartbeat interval 60 s)."""
    server = Orchestrator(tmp_path / "state", port=0, heartbeat_interval_s=60, missed_heartbeats=10)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_a_robot_that_completed_a_job_gets_the_next_without_a_heartbeat(
    orch: Orchestrator, tmp_path: Path
) -> None:
    """A heartbeat sent while the robot ran its job does not keep it busy after its
    job_complete: the next job is sent at once (the dispatcher counts its own assignments)."""
    nb = notebook(tmp_path, "quick.ipynb", ["x = 1"])
    first = await orch.submit(nb)
    second = await orch.submit(nb)
    bot = await fake_robot(orch, "robot-a")
    assign = await bot.assignment()
    assert assign.job_id == first.job_id
    await bot.send(JobAccept(job_id=assign.job_id, attempt=assign.attempt))
    await bot.heartbeat([JobRef(job_id=assign.job_id, attempt=assign.attempt)])
    robot = orch.robot("robot-a")
    assert robot is not None and robot.running_jobs == 1  # what the heartbeat said
    await bot.complete(assign)
    nxt = await bot.assignment()  # well before the next heartbeat (60 s)
    assert nxt.job_id == second.job_id


async def test_reads_show_states_not_written_yet_and_acks_wait_for_them(
    orch: Orchestrator, tmp_path: Path
) -> None:
    """While the queue writer holds a change back, job(), jobs() and count_by_status() show
    it; a heartbeat_ack comes only once it is committed."""
    orch.stores.jobs.commit_interval_s = 3600  # commit only when someone waits
    state = orch.state_dir
    nb = notebook(tmp_path, "quick.ipynb", ["x = 1"])
    bot = await fake_robot(orch, "robot-a")
    job = await orch.submit(nb)
    assert stored(state, job.job_id) == ("queued", 0, None, False)  # submit waits its commit
    assign = await bot.assignment()
    await bot.send(JobAccept(job_id=job.job_id, attempt=assign.attempt))
    await orch.wait_for(lambda: (j := orch.job(job.job_id)) is not None and bool(j.accepted_at))
    assert stored(state, job.job_id) == ("queued", 0, None, False)  # not written yet
    current = orch.job(job.job_id)
    assert current is not None
    assert (current.status, current.attempt, current.robot_id) == (
        RunStatus.RUNNING,
        1,
        "robot-a",
    )
    assert [j.status for j in orch.jobs()] == [RunStatus.RUNNING]
    assert [j.job_id for j in orch.jobs(RunStatus.RUNNING)] == [job.job_id]
    assert orch.jobs(RunStatus.QUEUED) == []
    counts = await asyncio.to_thread(orch.stores.jobs.count_by_status)
    assert (counts[RunStatus.QUEUED], counts[RunStatus.RUNNING]) == (0, 1)
    await bot.heartbeat([JobRef(job_id=job.job_id, attempt=1)])
    assert stored(state, job.job_id) == ("running", 1, "robot-a", True)


async def test_a_finished_job_has_its_output_and_its_state_in_the_database_once_acked(
    orch: Orchestrator, tmp_path: Path
) -> None:
    """After job_complete, the heartbeat_ack that follows means the output notebook, the
    completed state and the run record are all written."""
    orch.stores.jobs.commit_interval_s = 3600
    nb = notebook(tmp_path, "quick.ipynb", ["x = 1"])
    bot = await fake_robot(orch, "robot-a")
    job = await orch.submit(nb)
    assign = await bot.assignment()
    await bot.send(JobAccept(job_id=job.job_id, attempt=assign.attempt))
    await bot.complete(assign)
    await bot.heartbeat([])
    assert stored(orch.state_dir, job.job_id) == ("completed", 1, "robot-a", True)
    output = orch.state_dir / "runs" / job.job_id / "1" / "output.ipynb"
    assert output.is_file()
    run = HistoryStore(orch.state_dir / HISTORY_FILE).get_run(job.job_id, 1)
    assert run is not None and run.status is RunStatus.COMPLETED
    assert run.output_path == str(output)


async def test_jobs_added_to_the_store_directly_are_dispatched(
    orch: Orchestrator, tmp_path: Path
) -> None:
    """Jobs queued with the job store's add_jobs (a bulk import) join the in-memory queue."""
    nb = notebook(tmp_path, "quick.ipynb", ["x = 1"])
    bot = await fake_robot(orch, "robot-a")
    now = datetime.now(UTC)
    bulk = Job(job_id="bulk-1", workflow_path=str(nb), created_at=now, eligible_at=now)
    await asyncio.to_thread(orch.stores.jobs.add_jobs, [bulk])
    assign = await bot.assignment()
    assert (assign.job_id, assign.attempt) == ("bulk-1", 1)


async def test_a_robot_keeps_the_attempt_a_crashed_orchestrator_never_wrote(
    tmp_path: Path,
) -> None:
    """After a crash (the state directory still marked open), dispatch waits for the robots;
    one naming an attempt the database never recorded keeps it, and completes it."""
    state = tmp_path / "state"
    nb = notebook(tmp_path, "quick.ipynb", ["x = 1"])
    with opened(state) as stores:
        now = datetime.now(UTC)
        stores.jobs.add_jobs(
            [
                Job(job_id=job_id, workflow_path=str(nb), created_at=now, eligible_at=now)
                for job_id in ("lost", "other")
            ]
        )
    (state / OPEN_MARKER).write_text("4242\n")  # the last orchestrator was killed
    orch = Orchestrator(state, port=0, heartbeat_interval_s=60, reconnect_grace_s=60)
    await orch.start()
    try:
        bot = await fake_robot(
            orch, "robot-a", capacity=2, holds=[JobRef(job_id="lost", attempt=1)]
        )
        assert bot.ack.continue_jobs == [JobRef(job_id="lost", attempt=1)]
        lost = orch.job("lost")
        assert lost is not None and (lost.status, lost.attempt, lost.robot_id) == (
            RunStatus.RUNNING,
            1,
            "robot-a",
        )
        assert orch.job_manager.dispatch() == 0  # held: robot-a has a free slot, gets nothing
        output = json.loads(nb.read_text())
        await bot.send(JobComplete(job_id="lost", attempt=1, output_notebook=output, duration_s=0))
        await orch.wait_for(lambda: (j := orch.job("lost")) is not None and j.status.finished)
        done = orch.job("lost")
        assert done is not None and (done.status, done.attempt) == (RunStatus.COMPLETED, 1)
        other = orch.job("other")
        assert other is not None and other.status is RunStatus.QUEUED
    finally:
        await orch.stop()
    assert not (state / OPEN_MARKER).exists()  # a clean stop


async def test_one_durable_mark_covers_job_states_and_history_records(
    orch: Orchestrator, tmp_path: Path
) -> None:
    """JobManager.durable_mark() covers both writers: durable() returns once the staged job
    state and the run record made before it are both committed."""
    orch.stores.jobs.commit_interval_s = 3600
    nb = notebook(tmp_path, "quick.ipynb", ["x = 1"])
    bot = await fake_robot(orch, "robot-a")
    job = await orch.submit(nb)
    assign = await bot.assignment()
    await bot.send(JobAccept(job_id=job.job_id, attempt=assign.attempt))
    await orch.wait_for(lambda: (j := orch.job(job.job_id)) is not None and bool(j.accepted_at))
    manager = orch.job_manager
    mark = manager.durable_mark()
    assert not manager.is_durable(mark)  # the queue writer waits for its window
    assert await manager.durable(mark, TIMEOUT)
    assert manager.is_durable(mark)
    assert stored(orch.state_dir, job.job_id) == ("running", 1, "robot-a", True)
    run = HistoryStore(orch.state_dir / HISTORY_FILE).get_run(job.job_id, 1)
    assert run is not None and run.status is RunStatus.RUNNING
