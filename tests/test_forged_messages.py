"""A robot cannot touch another robot's job: its job messages are refused and change nothing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cluster import Cluster, fake_robot, notebook, waiting_cell
from websockets.asyncio.client import ClientConnection

from casare_nb.core.models import CellStatus, RunStatus
from casare_nb.orchestrator.jobs.attempts import JobMessage
from casare_nb.protocol import (
    CheckpointOffer,
    Envelope,
    Error,
    ErrorCode,
    Heartbeat,
    HeartbeatAck,
    JobAccept,
    JobCancelled,
    JobComplete,
    JobFailed,
    JobProgress,
    JobReject,
    LogBatch,
    LogRecord,
    decode,
    encode,
)


class HandRobot:
    """A hand-played robot with its own valid token (a forger, here): it heartbeats as
    draining (so it is sent no job) and collects what the orchestrator answers."""

    def __init__(self, ws: ClientConnection, robot_id: str) -> None:
        self.ws = ws
        self.robot_id = robot_id
        self.replies: dict[str, Envelope] = {}
        self._arrived = asyncio.Event()
        self._seq = itertools.count()

    def beat(self) -> Heartbeat:
        """The next heartbeat: draining, so that no job is sent here."""
        return Heartbeat(robot_id=self.robot_id, status="draining", seq=next(self._seq))

    async def heartbeat(self) -> None:
        await self.ws.send(encode(self.beat()))

    async def run(self) -> None:
        """Heartbeat every 0.1 s and read the answers until the connection closes."""

        async def keep_beating() -> None:
            while True:
                await self.heartbeat()
                await asyncio.sleep(0.1)  # the robot's heartbeat period, not a wait

        beating = asyncio.create_task(keep_beating())
        try:
            async for frame in self.ws:
                msg = decode(frame)
                if msg.reply_to is not None:
                    self.replies[msg.reply_to] = msg
                    self._arrived.set()
        finally:
            beating.cancel()

    async def ask(self, msg: Envelope) -> Envelope:
        """Send ``msg``; what answers it."""
        self.replies.pop(msg.id, None)
        await self.ws.send(encode(msg))
        async with asyncio.timeout(10):
            while msg.id not in self.replies:
                self._arrived.clear()
                await self._arrived.wait()
        return self.replies.pop(msg.id)

    async def refused(self, msg: Envelope) -> Error:
        """Send ``msg``; the error that answers it (anything else fails the test)."""
        answer = await self.ask(msg)
        assert isinstance(answer, Error), f"{msg.type} was answered by {answer!r}"
        return answer


@contextlib.asynccontextmanager
async def hand_robot(cluster: Cluster, robot_id: str) -> AsyncIterator[HandRobot]:
    async with fake_robot(cluster.orch, robot_id) as ws:
        link = HandRobot(ws, robot_id)
        await link.heartbeat()  # draining before any job is queued
        reader = asyncio.create_task(link.run())
        try:
            yield link
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def forgeries(job_id: str, attempt: int, ids: Callable[[], str | None]) -> list[Envelope]:
    """Every job message a robot can send, about ``job_id`` ``attempt``; ``ids`` gives the
    message id of each (None: a fresh one)."""
    output = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    made: list[Envelope] = [
        JobProgress(
            job_id=job_id,
            attempt=attempt,
            cell_index=2,
            cell_id="c1",
            status=CellStatus.OK,
            duration_s=0.1,
            cells_done=2,
            cells_total=4,
        ),
        CheckpointOffer(job_id=job_id, attempt=attempt, cell_id="c1", manifest={"vars": {}}),
        JobFailed(
            job_id=job_id,
            attempt=attempt,
            failed_cell=2,
            error_name="Forged",
            error_message="forged failure",
        ),
        JobComplete(job_id=job_id, attempt=attempt, output_notebook=output, duration_s=1.0),
        JobCancelled(job_id=job_id, attempt=attempt),
        JobReject(job_id=job_id, attempt=attempt, reason="forged"),
        JobAccept(job_id=job_id, attempt=attempt),
    ]
    out: list[Envelope] = []
    for msg in made:
        chosen = ids()
        out.append(msg if chosen is None else msg.model_copy(update={"id": chosen}))
    return out


async def test_forged_job_messages_are_refused_and_change_nothing(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every job message a second robot sends about the first robot's job (fresh ids, and
    replays of the genuine robot's message ids) is refused with stale_attempt; the genuine job
    then completes with each cell recorded once, cancel stops a running job and the next job
    runs."""
    genuine: list[JobMessage] = []
    attempts = cluster.orch.job_manager.attempts
    handle = attempts.on_message

    def spy(robot_id: str, msg: JobMessage) -> Error | None:
        if robot_id == "robot-a":
            genuine.append(msg)
        return handle(robot_id, msg)

    monkeypatch.setattr(attempts, "on_message", spy)
    started, go = tmp_path / "started", tmp_path / "go"
    nb = notebook(
        tmp_path, "wf.ipynb", ["x = 1", waiting_cell(started, go), "y = x + 1", "print('y', y)"]
    )
    await cluster.robot("robot-a")
    job = await cluster.orch.submit(nb)
    await cluster.until(lambda: started.exists() and any(m.type == "job_progress" for m in genuine))
    running = cluster.job(job.job_id)
    assert (running.status, running.robot_id, running.attempt) == (
        RunStatus.RUNNING,
        "robot-a",
        1,
    )
    async with hand_robot(cluster, "robot-forger") as bad:
        fresh = forgeries(job.job_id, 1, lambda: None)
        genuine_ids = itertools.cycle([m.id for m in genuine])
        replays = forgeries(job.job_id, 1, lambda: next(genuine_ids))
        for msg in [*fresh, *replays, *fresh]:  # the fresh ones twice: a resend is refused too
            error = await bad.refused(msg)
            assert error.code is ErrorCode.STALE_ATTEMPT, error
            assert "robot-forger" in error.message
            same = cluster.job(job.job_id)
            assert (same.status, same.robot_id, same.attempt) == (RunStatus.RUNNING, "robot-a", 1)
        go.touch()
        done = await cluster.finished(job.job_id)
        assert (done.status, done.attempt, done.robot_id) == (RunStatus.COMPLETED, 1, "robot-a")
        cells = (await cluster.history()).list_cells(job.job_id)
        assert sorted((c.cell_index, c.cell_id) for c in cells) == [
            (1, "c0"),
            (2, "c1"),
            (3, "c2"),
            (4, "c3"),
        ]
        assert all(c.status is CellStatus.OK and c.attempt == 1 for c in cells)

        # cancel still stops a running job, and the queue still moves
        started2, never = tmp_path / "started2", tmp_path / "never"
        slow = notebook(tmp_path, "slow.ipynb", [waiting_cell(started2, never)])
        stuck = await cluster.orch.submit(slow)
        await cluster.until(lambda: started2.exists())
        for msg in forgeries(stuck.job_id, 1, lambda: None):
            assert (await bad.refused(msg)).code is ErrorCode.STALE_ATTEMPT
        cluster.orch.cancel(stuck.job_id)
        assert (await cluster.finished(stuck.job_id)).status is RunStatus.CANCELLED
        quick = notebook(tmp_path, "quick.ipynb", ["z = 3"])
        after = await cluster.orch.submit(quick)
        done_after = await cluster.finished(after.job_id)
        assert (done_after.status, done_after.robot_id) == (RunStatus.COMPLETED, "robot-a")


async def test_a_replayed_log_batch_id_hides_no_other_robot_logs(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Log batches are de-duplicated per robot: a batch another robot sent first under the same
    id does not hide this robot's batch (both are logged, each under its own robot)."""
    caplog.set_level(logging.INFO, logger="casare_nb.orchestrator.robot")
    async with (
        hand_robot(cluster, "robot-forger") as bad,
        hand_robot(cluster, "robot-b") as good,
    ):
        forged = LogBatch(robot_id="robot-forger", records=[LogRecord(message="forged line")])
        await bad.ws.send(encode(forged))
        genuine = LogBatch(
            id=forged.id, robot_id="robot-b", records=[LogRecord(message="genuine line")]
        )
        await good.ws.send(encode(genuine))
        # a heartbeat is answered once the batch sent before it was handled
        assert isinstance(await good.ask(good.beat()), HeartbeatAck)
    logged = {(r.name, r.getMessage()) for r in caplog.records}
    assert ("casare_nb.orchestrator.robot.robot-forger", "forged line") in logged
    assert ("casare_nb.orchestrator.robot.robot-b", "genuine line") in logged
