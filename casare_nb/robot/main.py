"""The robot process: a warm kernel pool, a job runner and the agent, wired together.

:class:`LocalRobot` is one robot in this process (``casare-nb robot``, the demo, tests):
:class:`~casare_nb.notebook.pool.KernelPool` + :class:`~casare_nb.robot.runner.EngineRunner`
+ :class:`~casare_nb.robot.agent.RobotAgent`. :func:`run_robot` runs one until the
orchestrator shuts it down or a signal comes:

- SIGTERM / SIGINT: take no new jobs (the robot pauses: it reports ``draining``), let the
  running jobs finish, then disconnect and exit 0;
- a second signal: cancel the running jobs (the orchestrator requeues them), exit at once.

A refused token or registration is an :class:`~casare_nb.robot.agent.AgentError` (one line).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol

from casare_nb.notebook.pool import KernelPool
from casare_nb.robot.agent import Metrics, RobotAgent
from casare_nb.robot.config import RobotConfig, load_config
from casare_nb.robot.runner import EngineRunner

__all__ = ["Enrolment", "LocalRobot", "default_work_dir", "local_robot", "run_robot"]


class Enrolment(Protocol):
    """What a robot started in the orchestrator's own process needs of it: where to
    connect, and a token of its own."""

    @property
    def url(self) -> str:
        """The WebSocket URL robots connect to."""
        ...

    def fresh_token(self, name: str) -> str:
        """A new token ``name`` (a live one of that name is revoked first); blocking."""
        ...


def default_work_dir(robot_id: str) -> Path:
    """``$CASARE_HOME/robots/<robot_id>`` (``./.casare/robots/<robot_id>`` without it)."""
    return Path(os.environ.get("CASARE_HOME") or ".casare").absolute() / "robots" / robot_id


class LocalRobot:
    """A robot in this process: its kernels, its jobs and its link to the orchestrator.

    ``pool_size`` defaults to the config's ``kernel_pool_size``; ``work_dir`` (the kernels'
    working directory and the robot's checkpoints) to the config's, else
    :func:`default_work_dir`.
    """

    def __init__(
        self,
        config: RobotConfig,
        *,
        pool_size: int | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.robot_id = config.robot.robot_id
        chosen = work_dir or config.job_execution.work_dir or default_work_dir(self.robot_id)
        self.work_dir = Path(chosen).absolute()
        self.pool_size = pool_size or config.robot.kernel_pool_size or 1
        self._metrics = metrics
        self.pool: KernelPool | None = None
        self.runner: EngineRunner | None = None
        self.agent: RobotAgent | None = None
        self.task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<LocalRobot {self.robot_id} -> {self.config.connection.orchestrator_url}>"

    async def start(self, *, wait_online: float | None = None) -> LocalRobot:
        """Fill the kernel pool, then connect (in a task: the agent reconnects on its own).

        With ``wait_online`` (seconds), return once registered; raise what stopped the agent
        or TimeoutError."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.pool = await KernelPool(
            size=self.pool_size,
            cwd=self.work_dir,
            zygote=self.config.robot.kernel_zygote,
            preload=self.config.robot.kernel_preload,
        ).start()
        self.runner = EngineRunner(
            self.pool,
            self.work_dir,
            max_concurrent_jobs=self.config.robot.max_concurrent_jobs,
            checkpoints=self.config.job_execution.checkpoint_enabled,
        )
        self.agent = RobotAgent(self.config, runner=self.runner, metrics=self._metrics)
        self.task = asyncio.create_task(self.agent.run(), name=f"robot-{self.robot_id}")
        if wait_online is not None:
            online = asyncio.create_task(self.agent.connected.wait())
            try:
                async with asyncio.timeout(wait_online):
                    await asyncio.wait({self.task, online}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                online.cancel()
            if self.task.done():
                self.task.result()  # raises why it stopped
                raise RuntimeError(f"robot {self.robot_id} stopped before registering")
        return self

    @property
    def running_jobs(self) -> int:
        return len(self.runner.running_jobs()) if self.runner else 0

    async def drain(self) -> None:
        """Take no new jobs (paused: heartbeats say ``draining``); return once the running
        jobs have ended."""
        if self.agent is not None:
            self.agent.paused = True
        if self.runner is not None:
            await self.runner.drain()
        if self.agent is not None:
            # The jobs' last reports leave the agent's outbox before the link closes (as the
            # agent does on a graceful ``shutdown``); RobotAgent has no public flush yet.
            idle: asyncio.Event | None = getattr(self.agent, "_outbox_idle", None)
            if idle is not None:
                await idle.wait()

    async def stop(self, *, graceful: bool = True) -> None:
        """Disconnect and close the kernels; ``graceful`` lets the running jobs finish first,
        otherwise they are cancelled. Idempotent."""
        if graceful:
            await self.drain()
        if self.agent is not None:
            self.agent.stop()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task
        await self.close()

    async def close(self) -> None:
        """Cancel what still runs and shut the kernels down (after the agent ended)."""
        if self.runner is not None:
            await self.runner.cancel_all()
        if self.pool is not None:
            await self.pool.close()


def local_robot(
    robot_id: str,
    *,
    pool_size: int = 1,
    work_dir: str | os.PathLike[str] | None = None,
    tags: Sequence[str] = (),
    environment: str | None = None,
    max_concurrent_jobs: int = 1,
    heartbeat_interval_s: float | None = None,
    checkpoints: bool = True,
) -> Callable[[Enrolment], Coroutine[Any, Any, LocalRobot]]:
    """A factory for :class:`~casare_nb.service_thread.ServiceThread`: given the
    orchestrator, it takes a fresh token named ``robot_id`` and starts a robot online."""

    async def make(orch: Enrolment) -> LocalRobot:
        token = await asyncio.to_thread(orch.fresh_token, robot_id)
        config = load_config(
            None,
            env={},
            overrides={
                "robot_id": robot_id,
                "orchestrator_url": orch.url,
                "token": token,
                "tags": list(tags),
                "environment": environment,
                "max_concurrent_jobs": max_concurrent_jobs,
                "heartbeat_interval_s": heartbeat_interval_s,
                "checkpoint_enabled": checkpoints,
            },
        )
        robot = LocalRobot(config, pool_size=pool_size, work_dir=work_dir)
        try:
            return await robot.start(wait_online=60)
        except BaseException:
            await robot.stop(graceful=False)
            raise

    return make


async def run_robot(robot: LocalRobot, *, say: Callable[[str], None] = print) -> int:
    """Run ``robot`` until the orchestrator shuts it down or SIGTERM/SIGINT (see the module
    docstring); the exit code (0). Raises the agent's error if it stops for good."""
    loop = asyncio.get_running_loop()
    signals = asyncio.Queue[int]()
    handled = (signal.SIGTERM, signal.SIGINT)
    for sig in handled:
        loop.add_signal_handler(sig, signals.put_nowait, int(sig))
    try:
        await robot.start()
        assert robot.task is not None and robot.agent is not None
        say(
            f"robot {robot.robot_id}: {robot.pool_size} warm kernel(s), "
            f"up to {robot.config.robot.max_concurrent_jobs} job(s) at once, "
            f"work dir {robot.work_dir}; orchestrator {robot.config.connection.orchestrator_url}"
        )
        first = asyncio.create_task(signals.get())
        await asyncio.wait({robot.task, first}, return_when=asyncio.FIRST_COMPLETED)
        if first.done():
            name = signal.Signals(first.result()).name
            say(
                f"{name}: finishing {robot.running_jobs} running job(s), taking no new ones "
                "(again to cancel them and stop now)"
            )
            drain = asyncio.create_task(robot.drain())
            second = asyncio.create_task(signals.get())
            await asyncio.wait({drain, second, robot.task}, return_when=asyncio.FIRST_COMPLETED)
            if second.done() and not drain.done():
                say("second signal: cancelling the running jobs")
                drain.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drain
            else:
                second.cancel()
            robot.agent.stop()
        else:
            first.cancel()
            if not robot.task.cancelled() and robot.task.exception() is None:
                say(f"robot {robot.robot_id}: shut down by the orchestrator")
        await robot.task  # raises AgentError when the orchestrator refused the robot
    finally:
        await robot.close()
        for sig in handled:
            loop.remove_signal_handler(sig)
    say(f"robot {robot.robot_id} stopped")
    return 0
