"""The notebook so far of a running attempt lives in the orchestrator's memory: no file write
per cell, written before the robot's heartbeat is acknowledged or when the robot is lost,
dropped when the attempt ends. A real orchestrator on 127.0.0.1 port 0, real DuckDB files,
a robot speaking the protocol by hand over a real WebSocket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cluster import notebook
from websockets.asyncio.client import ClientConnection, connect

from casare_nb.core.models import CellStatus, RunStatus
from casare_nb.core.tokens import TokenRole
from casare_nb.notebook.state import StateDir
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.protocol import (
    Envelope,
    Heartbeat,
    HeartbeatAck,
    JobAccept,
    JobAssign,
    JobComplete,
    JobProgress,
    JobRef,
    Message,
    Register,
    RegisterAck,
    decode,
    encode,
)

TIMEOUT = 20.0  # a bound on each wait, never slept


class Robot:
    """A robot speaking the protocol by hand."""

    def __init__(self, ws: ClientConnection, robot_id: str) -> None:
        self.ws = ws
        self.robot_id = robot_id
        self.seq = 0

    async def send(self, msg: Envelope) -> None:
        await self.ws.send(encode(msg))

    async def recv(self) -> Message:
        return decode(await asyncio.wait_for(self.ws.recv(), TIMEOUT))

    async def assignment(self) -> JobAssign:
        msg = await self.recv()
        assert isinstance(msg, JobAssign), msg
        return msg

    async def heartbeat(self, running: list[JobRef]) -> None:
        """Send a heartbeat and wait for its ack."""
        self.seq += 1
        await self.send(
            Heartbeat(robot_id=self.robot_id, status="busy", running_jobs=running, seq=self.seq)
        )
        msg = await self.recv()
        assert isinstance(msg, HeartbeatAck) and msg.seq == self.seq, msg

    async def cell(self, assign: JobAssign, cell_id: str, text: str, done: int) -> None:
        """Report the cell ``cell_id`` executed, printing ``text``."""
        cells = assign.notebook["cells"]
        index, source = next((i, c) for i, c in enumerate(cells) if c.get("id") == cell_id)
        executed = {
            **source,
            "outputs": [{"output_type": "stream", "name": "stdout", "text": text}],
            "execution_count": done,
        }
        await self.send(
            JobProgress(
                job_id=assign.job_id,
                attempt=assign.attempt,
                cell_index=index,
                cell_id=cell_id,
                status=CellStatus.OK,
                duration_s=0.01,
                cells_done=done,
                cells_total=2,
                cell=executed,
            )
        )


async def robot(orch: Orchestrator, robot_id: str) -> Robot:
    token = await asyncio.to_thread(orch.create_token, robot_id, TokenRole.ROBOT)
    ws = await connect(orch.url, additional_headers={"Authorization": f"Bearer {token}"})
    await ws.send(encode(Register(robot_id=robot_id, name=robot_id)))
    ack = decode(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert isinstance(ack, RegisterAck) and ack.accepted, ack
    return Robot(ws, robot_id)


@pytest.fixture
async def orch(tmp_path: Path) -> AsyncIterator[Orchestrator]:
    """An orchestrator whose robots are not swept while a test runs (heartbeats every 60 s)."""
    server = Orchestrator(tmp_path / "state", port=0, heartbeat_interval_s=60, missed_heartbeats=10)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def output_of(orch: Orchestrator, job_id: str, attempt: int = 1) -> Path:
    return StateDir(orch.state_dir).attempt(job_id, attempt).output


def printed(path: Path, cell_id: str) -> str:
    """What the cell ``cell_id`` printed, as the notebook file holds it."""
    nb: dict[str, Any] = json.loads(path.read_text("utf-8"))
    cell = next(c for c in nb["cells"] if c.get("id") == cell_id)
    return "".join(str(o.get("text", "")) for o in cell.get("outputs", []))


async def started(orch: Orchestrator, tmp_path: Path) -> tuple[Robot, JobAssign]:
    nb = notebook(tmp_path, "two.ipynb", ["x = 1", "y = 2"])
    bot = await robot(orch, "robot-a")
    await orch.submit(nb)
    assign = await bot.assignment()
    await bot.send(JobAccept(job_id=assign.job_id, attempt=assign.attempt))
    return bot, assign


async def kept(orch: Orchestrator, assign: JobAssign, cell_id: str, text: str) -> None:
    """Wait until the orchestrator keeps ``text`` as the output of ``cell_id``."""

    def holds() -> bool:
        nb = orch.job_manager.notebook_so_far(assign.job_id, assign.attempt)
        cells = (nb or {}).get("cells", [])
        cell = next((c for c in cells if c.get("id") == cell_id), None)
        return cell is not None and any(o.get("text") == text for o in cell["outputs"])

    await orch.wait_for(holds, TIMEOUT)


async def test_a_reported_cell_is_kept_in_memory_and_no_file_is_written(
    orch: Orchestrator, tmp_path: Path
) -> None:
    """job_progress puts the executed cell in the attempt's notebook so far in memory (what
    the API's notebook of a running attempt answers); nothing is written to disk per cell."""
    bot, assign = await started(orch, tmp_path)
    await bot.cell(assign, "c0", "one\n", 1)
    await bot.cell(assign, "c1", "two\n", 2)
    await kept(orch, assign, "c1", "two\n")
    assert not output_of(orch, assign.job_id).exists()


async def test_a_heartbeat_ack_comes_once_the_notebook_so_far_is_written(
    orch: Orchestrator, tmp_path: Path
) -> None:
    """The ack of a heartbeat sent after a cell means that cell is in the file (the robot
    forgets what an ack covers)."""
    bot, assign = await started(orch, tmp_path)
    await bot.cell(assign, "c0", "one\n", 1)
    await bot.heartbeat([JobRef(job_id=assign.job_id, attempt=assign.attempt)])
    assert printed(output_of(orch, assign.job_id), "c0") == "one\n"


async def test_a_lost_robot_leaves_its_notebook_so_far_for_the_resume(
    orch: Orchestrator, tmp_path: Path
) -> None:
    """When the robot is lost, the attempt's notebook so far is written before the job is
    requeued to resume from it, and forgotten in memory."""
    bot, assign = await started(orch, tmp_path)
    await bot.cell(assign, "c0", "one\n", 1)
    await kept(orch, assign, "c0", "one\n")
    orch.job_manager.robot_gone("robot-a", grace=False)
    requeued = orch.job(assign.job_id)
    assert requeued is not None and requeued.status is RunStatus.QUEUED
    assert printed(output_of(orch, assign.job_id), "c0") == "one\n"
    assert len(orch.job_manager.book.sofar) == 0
    await bot.ws.close()


async def test_finished_attempts_leave_nothing_in_memory_and_their_own_notebook_on_disk(
    orch: Orchestrator, tmp_path: Path
) -> None:
    """An attempt completed with its output notebook drops its notebook so far unwritten:
    the file is the robot's output notebook, and memory holds no finished attempt."""
    bot, assign = await started(orch, tmp_path)
    await bot.cell(assign, "c0", "so far\n", 1)
    await kept(orch, assign, "c0", "so far\n")
    final = json.loads(json.dumps(assign.notebook))
    final["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "final\n"}]
    await bot.send(
        JobComplete(
            job_id=assign.job_id, attempt=assign.attempt, output_notebook=final, duration_s=0.1
        )
    )
    await orch.wait_for(
        lambda: (j := orch.job(assign.job_id)) is not None and j.status.finished, TIMEOUT
    )
    assert printed(output_of(orch, assign.job_id), "c0") == "final\n"
    book = orch.job_manager.book
    assert len(book.sofar) == 0 and not book.attempts
