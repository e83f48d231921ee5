"""Tests for the robot agent's offline buffer and its re-registering with the jobs it holds.

A real :class:`RobotAgent` talks to the fake orchestrator of ``fake_orchestrator.py`` (a real
websockets server on 127.0.0.1 port 0 that records what arrives on which connection), which
answers ``register`` with a ``register_ack`` the test chooses (by default continuing every
job of holding).
The job runner is a small fake: the runner is not the unit here, the agent's ``send`` is. No
test waits for real: heartbeat waits park until ``tick()``, the backoff wait before a
reconnect parks while the test holds the robot offline; everything else waits on events,
bounded by ``WAIT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fake_orchestrator import HB_S, WAIT_S, FakeOrchestrator, OnRegister

from casare_nb.core.models import CellStatus
from casare_nb.protocol import (
    Envelope,
    Heartbeat,
    JobAccept,
    JobAssign,
    JobCancel,
    JobCancelled,
    JobComplete,
    JobFailed,
    JobProgress,
    JobRef,
    JobReject,
    LogBatch,
    LogRecord,
    Register,
    RegisterAck,
    Shutdown,
    StatusRequest,
    StatusResponse,
    encode,
)
from casare_nb.robot.agent import RobotAgent, Send
from casare_nb.robot.backoff import Backoff
from casare_nb.robot.config import RobotConfig, load_config

TOKEN = "s3cret-robot-token"
NOTEBOOK: dict[str, Any] = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
T0 = datetime(2026, 1, 1, tzinfo=UTC)

M = TypeVar("M", bound=Envelope)


# --------------------------------------------------------------------------- fakes


def continue_all(register: Register, n: int) -> RegisterAck:
    """Accept the robot and continue every job it resumes."""
    return RegisterAck(
        accepted=True,
        heartbeat_interval_s=HB_S,
        continue_jobs=register.holding,
        reply_to=register.id,
    )


def continue_none(register: Register, n: int) -> RegisterAck:
    """Accept the robot with an ack that has no continue_jobs (an older orchestrator)."""
    return RegisterAck(accepted=True, heartbeat_interval_s=HB_S, reply_to=register.id)


class FakeSleep:
    """The agent's sleep: a heartbeat wait (HB_S) parks until ``tick()``; a backoff wait
    (before a reconnect) sets ``offline`` and parks while ``hold`` is set."""

    def __init__(self) -> None:
        self.offline = asyncio.Event()
        self.hold = False
        self._released = asyncio.Event()
        self._beats = asyncio.Semaphore(0)

    async def __call__(self, delay: float) -> None:
        if delay == HB_S:
            await self._beats.acquire()
            return
        self.offline.set()
        if self.hold:
            await self._released.wait()
        await asyncio.sleep(0)

    def tick(self) -> None:
        """Let the next heartbeat wait end."""
        self._beats.release()

    def release(self) -> None:
        """Let the robot reconnect."""
        self.hold = False
        self._released.set()


class FakeRunner:
    """Holds the jobs assigned to it (job_accept at once) and hands the test the agent's send;
    records abandon calls. A job_cancel waits for ``cancel_gate``, then sends job_cancelled
    and blocks its caller until cancelled, if the test set the gate."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobRef] = {}
        self.abandoned: list[JobRef] = []
        self.cancel_gate: asyncio.Event | None = None
        self.cancelled: JobCancelled | None = None
        self._send: Send | None = None

    @property
    def send(self) -> Send:
        assert self._send is not None, "no job message has reached the runner yet"
        return self._send

    def running_jobs(self) -> list[JobRef]:
        return list(self.jobs.values())

    async def handle(self, msg: Envelope, send: Send) -> None:
        self._send = send
        if isinstance(msg, JobAssign):
            self.jobs[msg.job_id] = JobRef(job_id=msg.job_id, attempt=msg.attempt)
            await send(JobAccept(job_id=msg.job_id, attempt=msg.attempt, reply_to=msg.id))
        elif isinstance(msg, JobCancel) and self.cancel_gate is not None:
            await self.cancel_gate.wait()
            self.jobs.pop(msg.job_id, None)
            self.cancelled = JobCancelled(job_id=msg.job_id, attempt=msg.attempt, reply_to=msg.id)
            await send(self.cancelled)
            await asyncio.Event().wait()  # the receive loop stays here: only a send can fail

    async def abandon(self, ref: JobRef) -> None:
        self.abandoned.append(ref)
        self.jobs.pop(ref.job_id, None)

    async def drain(self) -> None:
        for job_id, ref in list(self.jobs.items()):
            del self.jobs[job_id]
            await self.send(complete(ref.job_id))

    async def cancel_all(self) -> None:
        self.jobs.clear()


# --------------------------------------------------------------------------- helpers


def progress(job_id: str, cell: int, attempt: int = 1) -> JobProgress:
    return JobProgress(
        job_id=job_id,
        attempt=attempt,
        cell_index=cell,
        status=CellStatus.OK,
        duration_s=0.5,
        cells_done=cell + 1,
        cells_total=10,
        started_at=T0,
        ts=T0,
    )


def complete(job_id: str, attempt: int = 1) -> JobComplete:
    return JobComplete(
        job_id=job_id, attempt=attempt, output_notebook=NOTEBOOK, duration_s=1.0, ts=T0
    )


def assign(job_id: str) -> JobAssign:
    return JobAssign(job_id=job_id, attempt=1, workflow_path="wf.ipynb", notebook=NOTEBOOK)


def ref(job_id: str, attempt: int = 1) -> JobRef:
    return JobRef(job_id=job_id, attempt=attempt)


def ids(messages: Sequence[Envelope]) -> list[str]:
    return [m.id for m in messages]


def make_config(tmp_path: Path, url: str) -> RobotConfig:
    file = tmp_path / "robot_config.yaml"
    file.write_text("robot:\n  robot_id: robot-eu-1\n", encoding="utf-8")
    values = {"max_concurrent_jobs": 4, "orchestrator_url": url, "token": TOKEN}
    return load_config(file, env={}, overrides=values)


class Link:
    """One agent with a fake runner, linked to a fake orchestrator; see the module doc."""

    def __init__(
        self, orch: FakeOrchestrator, agent: RobotAgent, runner: FakeRunner, sleep: FakeSleep
    ) -> None:
        self.orch = orch
        self.agent = agent
        self.runner = runner
        self.sleep = sleep

    async def online(self, connection: int) -> None:
        """Wait until registration ``connection`` is accepted and the robot serves."""
        await self.orch.until(lambda: bool(self.orch.on(connection, Heartbeat)))

    async def assign(self, *job_ids: str) -> None:
        """Give the runner these jobs; returns once their job_accepts have arrived and a
        heartbeat_ack has confirmed them (they are out of the robot's outbox)."""
        for job_id in job_ids:
            await self.orch.send(assign(job_id))
        await self.orch.until(
            lambda: (
                {m.job_id for _, m in self.orch.received if isinstance(m, JobAccept)}
                >= set(job_ids)
            )
        )
        await self.beat()
        assert len(self.agent.outbox) == 0

    async def beat(self) -> None:
        """Let one heartbeat go out; returns once the robot has read the fake's ack of it
        (it answers a status_request sent after the ack, and reads frames in order)."""
        conn = self.orch.connections
        beats = len(self.orch.on(conn, Heartbeat))
        answers = len(self.orch.on(conn, StatusResponse))
        self.sleep.tick()
        await self.orch.until(lambda: len(self.orch.on(conn, Heartbeat)) > beats)
        await self.orch.send(StatusRequest())
        await self.orch.until(lambda: len(self.orch.on(conn, StatusResponse)) > answers)

    async def go_offline(self) -> None:
        """Drop the link and keep the robot from reconnecting until ``come_back()``."""
        self.sleep.offline.clear()
        self.sleep.hold = True
        await self.orch.drop()
        await asyncio.wait_for(self.sleep.offline.wait(), WAIT_S)
        assert not self.agent.connected.is_set()

    async def come_back(self, connection: int) -> None:
        """Let the robot reconnect; returns once it serves on connection ``connection``."""
        self.sleep.release()
        await self.online(connection)


@contextlib.asynccontextmanager
async def linked(
    tmp_path: Path, on_register: OnRegister = continue_all, **agent_kw: Any
) -> AsyncIterator[Link]:
    """A running agent, online on connection 1 of a fake orchestrator; all stopped after."""
    orch = await FakeOrchestrator(on_register).start()
    runner, sleep = FakeRunner(), FakeSleep()
    agent = RobotAgent(
        make_config(tmp_path, orch.url),
        runner=runner,
        backoff=Backoff(rand=lambda: 0.5),
        sleep=sleep,
        metrics=lambda: (0.0, 0.0),
        **agent_kw,
    )
    task = asyncio.create_task(agent.run())
    link = Link(orch, agent, runner, sleep)
    try:
        await link.online(1)
        yield link
    finally:
        agent.stop()
        async with asyncio.timeout(WAIT_S):
            await task
        await orch.close()


# --------------------------------------------------------------------------- tests


async def test_reports_sent_offline_arrive_after_reregister_in_order_before_new_ones(
    tmp_path: Path,
) -> None:
    """Job reports sent while the link is down arrive after the next register, oldest first,
    ahead of what the runner sends once the robot is back."""
    async with linked(tmp_path) as link:
        await link.assign("job-1")
        await link.go_offline()
        offline = [progress("job-1", 0), progress("job-1", 1), progress("job-1", 2)]
        for msg in offline:
            await link.runner.send(msg)  # does not raise: the link being down loses nothing
        assert len(link.agent.outbox) == 3
        link.sleep.release()
        await asyncio.wait_for(link.agent.connected.wait(), WAIT_S)
        late = progress("job-1", 3)
        await link.runner.send(late)
        await link.orch.until(lambda: len(link.orch.jobs_on(2)) == 4)
        (register,) = link.orch.on(2, Register)
        first = link.orch.on(2, Envelope)[0]
    assert first is register
    assert register.holding == [ref("job-1")]
    assert ids(link.orch.jobs_on(2)) == ids([*offline, late])
    assert link.orch.jobs_on(2) == [*offline, late]  # the same messages, ids and all


async def test_register_resumes_running_jobs_and_jobs_that_finished_offline(
    tmp_path: Path,
) -> None:
    """register's holding lists the jobs the runner holds and those whose final result
    waits in the buffer; continued, the result is delivered."""
    async with linked(tmp_path) as link:
        await link.assign("job-1", "job-2")
        (register_1,) = link.orch.on(1, Register)
        await link.go_offline()
        del link.runner.jobs["job-2"]  # job-2 finishes while the robot is offline
        result = complete("job-2")
        await link.runner.send(result)
        await link.come_back(2)
        await link.orch.until(lambda: bool(link.orch.on(2, JobComplete)))
        (register_2,) = link.orch.on(2, Register)
    assert register_1.holding == []
    assert register_2.holding == [ref("job-1"), ref("job-2")]
    assert link.orch.on(2, JobComplete) == [result]
    assert link.runner.abandoned == []


async def test_continue_jobs_keeps_some_and_abandons_the_others(tmp_path: Path) -> None:
    """Jobs left out of continue_jobs are abandoned: the runner is told, their buffered
    reports and later ones are dropped; the continued job's reports are delivered."""

    def continue_job_1(register: Register, n: int) -> RegisterAck:
        return RegisterAck(accepted=True, heartbeat_interval_s=HB_S, continue_jobs=[ref("job-1")])

    async with linked(tmp_path, continue_job_1) as link:
        await link.assign("job-1", "job-2")
        await link.go_offline()
        kept = [progress("job-1", 0), progress("job-1", 1)]
        await link.runner.send(kept[0])
        await link.runner.send(progress("job-2", 0))
        await link.runner.send(complete("job-2"))
        await link.runner.send(kept[1])
        await link.come_back(2)
        await link.runner.send(progress("job-2", 1))  # still running there: dropped too
        kept.append(progress("job-1", 2))
        await link.runner.send(kept[-1])
        await link.orch.until(lambda: len(link.orch.jobs_on(2)) == 3)
        assert link.runner.running_jobs() == [ref("job-1")]
    assert link.runner.abandoned == [ref("job-2")]
    assert link.orch.jobs_on(2) == kept


async def test_ack_without_continue_jobs_abandons_every_resumed_job(tmp_path: Path) -> None:
    """An ack with no continue_jobs abandons every job of holding and drops all their
    buffered reports; a job assigned afterwards is reported as usual."""
    async with linked(tmp_path, continue_none) as link:
        await link.assign("job-1", "job-2")
        await link.go_offline()
        del link.runner.jobs["job-2"]
        await link.runner.send(progress("job-1", 0))
        await link.runner.send(complete("job-2"))
        await link.come_back(2)
        assert len(link.agent.outbox) == 0
        await link.assign("job-3")
        (register_2,) = link.orch.on(2, Register)
    assert register_2.holding == [ref("job-1"), ref("job-2")]
    assert link.runner.abandoned == [ref("job-1"), ref("job-2")]
    (accept,) = link.orch.jobs_on(2)
    assert isinstance(accept, JobAccept) and accept.job_id == "job-3"


async def test_full_buffer_drops_oldest_progress_and_keeps_results(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Over its byte cap the buffer drops the oldest job_progress, never a job_complete or
    job_failed, and warns with the counts."""
    results = [complete("job-2"), JobFailed(job_id="job-3", attempt=1, ts=T0)]
    cells = [progress("job-1", i) for i in range(8)]
    size = len(encode(cells[0]).encode())
    cap = sum(len(encode(m).encode()) for m in results) + 3 * size + size // 2
    async with linked(tmp_path, buffer_max_bytes=cap) as link:
        await link.assign("job-1", "job-2", "job-3")
        await link.go_offline()
        link.runner.jobs.clear()
        with caplog.at_level(logging.WARNING, logger="casare_nb.robot.agent"):
            await link.runner.send(cells[0])
            await link.runner.send(results[0])
            for msg in cells[1:6]:
                await link.runner.send(msg)
            await link.runner.send(results[1])
            for msg in cells[6:]:
                await link.runner.send(msg)
        assert link.agent.outbox.bytes <= cap
        await link.come_back(2)
        await link.orch.until(lambda: len(link.orch.jobs_on(2)) == 5)
    assert link.orch.jobs_on(2) == [results[0], cells[5], results[1], cells[6], cells[7]]
    assert link.agent.outbox.dropped == {"job_progress": 5}
    warnings = [r.getMessage() for r in caplog.records if "offline buffer full" in r.getMessage()]
    # the first drop is told at once, the rest summed up at the next registration
    assert len(warnings) == 2
    assert sum(int(n) for w in warnings for n in re.findall(r"(\d+) job_progress", w)) == 5


async def test_report_whose_send_failed_as_the_link_dropped_is_resent_with_its_id(
    tmp_path: Path,
) -> None:
    """A job report whose send fails because the connection just closed is kept and sent
    after the next register, with the same message id."""
    async with linked(tmp_path) as link:
        await link.assign("job-1")
        link.runner.cancel_gate = asyncio.Event()
        await link.orch.send(JobCancel(job_id="job-1", attempt=1))
        await link.orch.drop()
        await link.orch.until(lambda: link.orch.closed == [1])
        link.runner.cancel_gate.set()  # the runner answers on a connection already closed
        await link.orch.until(lambda: bool(link.orch.on(2, JobCancelled)))
        sent = link.runner.cancelled
    assert sent is not None
    assert link.orch.on(1, JobCancelled) == []
    assert link.orch.on(2, JobCancelled) == [sent]
    assert link.orch.on(2, Register)[0].holding == [ref("job-1")]


async def test_report_written_but_not_acknowledged_is_resent_with_its_id(
    tmp_path: Path,
) -> None:
    """A report written just before a drop, with no heartbeat_ack after it, is sent again
    under the same id (at-least-once); one a heartbeat_ack covered is not."""
    async with linked(tmp_path) as link:
        await link.assign("job-1")
        covered, uncertain = progress("job-1", 0), progress("job-1", 1)
        await link.runner.send(covered)
        await link.orch.until(lambda: covered in link.orch.jobs_on(1))
        await link.beat()  # a heartbeat goes out after `covered` and is acknowledged
        await link.runner.send(uncertain)
        await link.orch.until(lambda: uncertain in link.orch.jobs_on(1))
        await link.go_offline()
        await link.come_back(2)
        await link.orch.until(lambda: bool(link.orch.jobs_on(2)))
    assert link.orch.jobs_on(1)[1:] == [covered, uncertain]
    assert link.orch.jobs_on(2) == [uncertain]


async def test_heartbeats_and_other_non_job_messages_are_not_buffered(tmp_path: Path) -> None:
    """While the link is down a heartbeat, a status_response, a job_reject or a robot log
    batch fails to send at once and is not delivered later."""
    not_buffered: list[Envelope] = [
        Heartbeat(robot_id="robot-eu-1", status="online", seq=99),
        StatusResponse(robot_id="robot-eu-1", status="online"),
        JobReject(job_id="job-9", attempt=1, reason="no"),
        LogBatch(robot_id="robot-eu-1", records=[LogRecord(message="robot log")]),
    ]
    async with linked(tmp_path) as link:
        await link.assign("job-1")
        await link.go_offline()
        for msg in not_buffered:
            with pytest.raises(ConnectionError, match="not connected"):
                await link.runner.send(msg)
        assert len(link.agent.outbox) == 0
        job_log = LogBatch(
            robot_id="robot-eu-1", job_id="job-1", attempt=1, records=[LogRecord(message="x")]
        )
        await link.runner.send(job_log)
        await link.come_back(2)
        await link.orch.until(lambda: bool(link.orch.on(2, LogBatch)))
        received = link.orch.on(2, Envelope)
    assert [m.seq for m in received if isinstance(m, Heartbeat)] == [0]
    assert not any(m.id in ids(not_buffered) for m in received)
    assert link.orch.on(2, LogBatch) == [job_log]


async def test_graceful_shutdown_sends_the_last_reports_before_closing(tmp_path: Path) -> None:
    """A graceful shutdown lets every final result of the drained jobs out before the link
    closes."""
    async with linked(tmp_path) as link:
        await link.assign("job-1", "job-2")
        await link.orch.send(Shutdown(graceful=True))
        await link.orch.until(lambda: link.orch.closed == [1])
    results = link.orch.jobs_on(1)[2:]
    assert [(m.type, m.job_id) for m in results if isinstance(m, JobComplete)] == [
        ("job_complete", "job-1"),
        ("job_complete", "job-2"),
    ]
    assert len(link.orch.on(1, Register)) == 1 and link.orch.closed == [1]
