"""Duplicated, reordered and replayed robot messages, sent by a scripted robot on a real
WebSocket to a real orchestrator: each effect happens once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cluster import notebook
from websockets.asyncio.client import ClientConnection, connect

from casare_nb.core.models import CellStatus, RunStatus
from casare_nb.core.tokens import TokenRole
from casare_nb.notebook.state import HISTORY_FILE
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.protocol import (
    Envelope,
    Error,
    ErrorCode,
    HeartbeatAck,
    JobAccept,
    JobAssign,
    JobComplete,
    JobProgress,
    Message,
    Register,
    RegisterAck,
    decode,
    encode,
)
from casare_nb.store.history import HistoryStore


@pytest.fixture
async def orch(tmp_path: Path) -> AsyncIterator[Orchestrator]:
    async with Orchestrator(tmp_path / "state", port=0, heartbeat_interval_s=5) as o:
        yield o


async def fake_robot(orch: Orchestrator) -> ClientConnection:
    token = await asyncio.to_thread(orch.create_token, "fake-robot", TokenRole.ROBOT)
    ws = await connect(orch.url, additional_headers={"Authorization": f"Bearer {token}"})
    await ws.send(encode(Register(robot_id="fake-robot", name="fake")))
    assert isinstance(decode(await ws.recv()), RegisterAck)
    return ws


async def receive(ws: ClientConnection, kind: type[Message]) -> Message:
    """The next message of ``kind`` (other kinds, e.g. heartbeat acks, are skipped)."""
    while True:
        msg = decode(await asyncio.wait_for(ws.recv(), 10))
        if isinstance(msg, kind):
            return msg


def progress(assign: JobAssign, index: int, done: int) -> JobProgress:
    return JobProgress(
        job_id=assign.job_id,
        attempt=assign.attempt,
        cell_index=index,
        cell_id=f"c{index}",
        status=CellStatus.OK,
        duration_s=0.01,
        cells_done=done,
        cells_total=3,
    )


async def send_all(ws: ClientConnection, *msgs: Envelope) -> None:
    for msg in msgs:
        await ws.send(encode(msg))


async def test_duplicated_reordered_and_replayed_messages_take_effect_once(
    orch: Orchestrator, tmp_path: Path
) -> None:
    """Progress sent twice (same id, then re-sent under a new id), out of order, and a
    job_complete replayed: every cell is recorded once and the job completes once."""
    nb = notebook(tmp_path, "wf.ipynb", ["x = 1", "y = 2", "z = 3"])
    ws = await fake_robot(orch)
    try:
        job = await orch.submit(nb)
        assign = await receive(ws, JobAssign)
        assert isinstance(assign, JobAssign)
        accept = JobAccept(job_id=job.job_id, attempt=assign.attempt)
        first, second, third = (progress(assign, i, i + 1) for i in range(3))
        resent = second.model_copy(update={"id": "resent-under-a-new-id"})
        complete = JobComplete(
            job_id=job.job_id,
            attempt=assign.attempt,
            duration_s=0.1,
            output_notebook=assign.notebook,
        )
        await send_all(ws, accept, accept, third, first, second, second, resent, first)
        await send_all(ws, complete, complete)
        await orch.wait_for(lambda: (j := orch.job(job.job_id)) is not None and j.status.finished)
        finished = orch.job(job.job_id)
        assert finished is not None and (finished.status, finished.attempt) == (
            RunStatus.COMPLETED,
            1,
        )
        replay = complete.model_copy(update={"id": "replayed-later"})
        await send_all(ws, replay)
        late = progress(assign, 0, 1).model_copy(update={"id": "late-progress"})
        late = late.model_copy(update={"cell_index": 9, "cell_id": "c9"})
        await send_all(ws, late)
        reply = await receive(ws, Error)
        assert isinstance(reply, Error) and reply.code is ErrorCode.STALE_ATTEMPT
        assert reply.reply_to == late.id  # the replayed complete was dropped silently
    finally:
        await ws.close()
    await asyncio.to_thread(orch.job_manager.flush_history, 30)
    cells = HistoryStore(orch.state_dir / HISTORY_FILE).list_cells(job.job_id)
    assert sorted(c.cell_index for c in cells) == [0, 1, 2]
    runs = HistoryStore(orch.state_dir / HISTORY_FILE).attempts(job.job_id)
    assert [(r.attempt, r.status) for r in runs] == [(1, RunStatus.COMPLETED)]


async def test_heartbeat_ack_follows_the_records_of_earlier_messages(
    orch: Orchestrator, tmp_path: Path
) -> None:
    """A heartbeat_ack comes only once the progress sent before that heartbeat is in the
    history database (what an ack covers survives a SIGKILL of the orchestrator)."""
    from casare_nb.protocol import Heartbeat

    nb = notebook(tmp_path, "wf.ipynb", ["x = 1"])
    ws = await fake_robot(orch)
    try:
        job = await orch.submit(nb)
        assign = await receive(ws, JobAssign)
        assert isinstance(assign, JobAssign)
        await send_all(ws, JobAccept(job_id=job.job_id, attempt=1), progress(assign, 0, 1))
        beat = Heartbeat(robot_id="fake-robot", status="busy", seq=0)
        await send_all(ws, beat)
        ack = await receive(ws, HeartbeatAck)
        assert isinstance(ack, HeartbeatAck) and ack.reply_to == beat.id
        store = HistoryStore(orch.state_dir / HISTORY_FILE)  # read at once: no flush
        assert [c.cell_index for c in store.list_cells(job.job_id)] == [0]
    finally:
        await ws.close()
