"""A real orchestrator and real robot agents with warm kernels, in this process, for tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import write_notebook
from stores import BACKENDS
from websockets.asyncio.client import ClientConnection, connect

from casare_nb.core.dispatch import RetryPolicy
from casare_nb.core.models import Job, RobotStatus
from casare_nb.core.tokens import TokenRole
from casare_nb.notebook.pool import KernelPool
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.protocol import Register, RegisterAck, decode, encode
from casare_nb.robot.agent import RobotAgent
from casare_nb.robot.config import load_config
from casare_nb.robot.runner import EngineRunner
from casare_nb.store.interfaces import RunHistory

__all__ = [
    "ON_EVERY_BACKEND",
    "RUN_TIMEOUT",
    "Bot",
    "Cluster",
    "Orchestrated",
    "cluster",
    "counted",
    "fake_robot",
    "impatient_with_fake_robot",
    "notebook",
    "waiting_cell",
]

RUN_TIMEOUT = 60.0

ON_EVERY_BACKEND = pytest.mark.parametrize("cluster", sorted(BACKENDS), indirect=True)
"""A test's ``cluster`` once on each store backend (embedded, PostgreSQL)."""


@dataclass
class Bot:
    agent: RobotAgent
    runner: EngineRunner
    pool: KernelPool
    task: asyncio.Task[None]


class Orchestrated:
    """What tests ask of an orchestrator running in this process: jobs, waits, history."""

    orch: Orchestrator

    def online(self, robot_id: str) -> bool:
        robot = self.orch.robot(robot_id)
        return robot is not None and robot.status is not RobotStatus.OFFLINE

    async def until(self, predicate: Callable[[], bool]) -> None:
        await self.orch.wait_for(predicate, timeout=RUN_TIMEOUT)

    def job(self, job_id: str) -> Job:
        job = self.orch.job(job_id)
        assert job is not None
        return job

    async def finished(self, job_id: str) -> Job:
        await self.until(lambda: self.job(job_id).status.finished)
        return self.job(job_id)

    async def history(self) -> RunHistory:
        await asyncio.to_thread(self.orch.job_manager.flush_history, 30)
        return self.orch.stores.history


@dataclass
class Cluster(Orchestrated):
    """An orchestrator and the robots the test starts; :meth:`close` stops them all."""

    root: Path
    orch: Orchestrator
    bots: list[Bot] = field(default_factory=list)

    async def robot(
        self, robot_id: str, *, tags: Sequence[str] = (), capacity: int = 1, pool_size: int = 1
    ) -> Bot:
        token = await asyncio.to_thread(self.orch.create_token, robot_id, TokenRole.ROBOT)
        config = load_config(
            None,
            env={},
            overrides={
                "robot_id": robot_id,
                "tags": list(tags),
                "max_concurrent_jobs": capacity,
                "orchestrator_url": self.orch.url,
                "token": token,
            },
        )
        work = self.root / robot_id
        work.mkdir(parents=True, exist_ok=True)
        pool = await KernelPool(size=pool_size, cwd=work).start()
        runner = EngineRunner(pool, work, max_concurrent_jobs=capacity)
        agent = RobotAgent(config, runner=runner, metrics=lambda: (0.0, 0.0))
        bot = Bot(agent, runner, pool, asyncio.create_task(agent.run()))
        self.bots.append(bot)
        await self.orch.wait_for(lambda: self.online(robot_id), timeout=10)
        return bot

    async def stop_bot(self, bot: Bot) -> None:
        bot.agent.stop()
        await asyncio.wait_for(bot.task, 10)
        await bot.runner.cancel_all()

    async def close(self) -> None:
        for bot in self.bots:
            await self.stop_bot(bot)
            await bot.pool.close()
        await self.orch.stop()


@pytest.fixture
async def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    """An orchestrator on the embedded stores, or on those the indirect parameter names
    (a backend of tests/stores.py: ``pytest.mark.parametrize("cluster", [...],
    indirect=True)``)."""
    backend = getattr(request, "param", "embedded")
    orch = Orchestrator(
        tmp_path / "state",
        stores=BACKENDS[backend](request, tmp_path)(),
        port=0,
        heartbeat_interval_s=0.2,
        missed_heartbeats=10,
        retry_policy=RetryPolicy(base_s=0.05, jitter=0),
        reconnect_grace_s=0.3,
    )
    await orch.start()
    c = Cluster(tmp_path, orch)
    try:
        yield c
    finally:
        await c.close()


def notebook(tmp_path: Path, name: str, cells: Sequence[str], **kw: Any) -> Path:
    return write_notebook(tmp_path / name, cells, **kw)


def counted(log: Path, name: str, body: str = "") -> str:
    """A cell appending ``name`` to ``log`` each time it executes, then ``body``."""
    return f"with open({str(log)!r}, 'a') as _f:\n    _f.write({name!r} + '\\n')\n{body}"


def waiting_cell(started: Path, go: Path) -> str:
    """A cell that touches ``started``, then waits until ``go`` exists."""
    return (
        f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\n"
        f"while not pathlib.Path({str(go)!r}).exists():\n    time.sleep(0.02)"
    )


@contextlib.asynccontextmanager
async def fake_robot(orch: Orchestrator, robot_id: str) -> AsyncIterator[ClientConnection]:
    """A WebSocket registered as robot ``robot_id`` (its own token), for tests that play the
    robot's side of the protocol by hand."""
    token = await asyncio.to_thread(orch.create_token, robot_id, TokenRole.ROBOT)
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(orch.url, additional_headers=headers) as ws:
        await ws.send(encode(Register(robot_id=robot_id, name=robot_id)))
        assert isinstance(decode(await ws.recv()), RegisterAck)
        yield ws


@contextlib.asynccontextmanager
async def impatient_with_fake_robot(
    state_dir: Path, robot_id: str
) -> AsyncIterator[tuple[Orchestrator, ClientConnection]]:
    """An orchestrator that waits only 0.3 s for a job_accept, and a hand-played robot."""
    async with (
        Orchestrator(
            state_dir, port=0, heartbeat_interval_s=0.1, missed_heartbeats=50, assign_timeout_s=0.3
        ) as orch,
        fake_robot(orch, robot_id) as ws,
    ):
        yield orch, ws
