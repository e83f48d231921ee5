"""Robots in a process of their own, driven by the orchestrator benchmarks (5 and 6).

Not a benchmark: ``bench/orchestrated_run.py`` and ``bench/dispatch_throughput.py`` start it
with ``python -m bench.robot_process`` (cwd: the repository), so the robots do not share the
orchestrator's process and event loop (as on a real deployment; on this 2-core machine the
orchestrator and the robots then each get a core).

The conversation is one JSON object a line:

- stdin, first line: the setup, ``{"url", "mode", "robots": [{"robot_id", "token"}],
  "capacity", "pool_size", "work", "report", "zygote"}`` (``zygote``: fork the kernels from a
  zygote; default: ``CASARE_KERNEL_ZYGOTE``, on). ``mode`` is ``engine`` (a
  :class:`~casare_nb.robot.runner.EngineRunner` on a warm
  :class:`~casare_nb.notebook.pool.KernelPool`, checkpoints on: the real robot) or ``noop``
  (:class:`NoopRunner`: accepts every job and completes it at once).
- stdout ``{"event": "prepared"}`` once the pools are warm; stdin ``go``; stdout
  ``{"event": "connected"}`` once every agent is registered.
- engine mode, after each job: ``{"event": "job_done", "job_id", "robot_s"}`` (job_assign
  received -> job_complete handed to the agent, on this side), then ``{"event": "idle"}``
  once the pool is full again and the used kernel is shut down, so the next measurement
  does not compete with the background kernel start.
- stdin ``stop``: the agents stop, the counts go to the ``report`` file as JSON
  (``{"robots": {id: {"assigned", "completed"}}, "assigned": {job: n},
  "completed": {job: n}, "completed_by": {job: robot}}``), stdout ``{"event": "stopped"}``.

With ``"profile": PATH`` in the setup, cProfile runs on the process's thread from ``go`` to
``stop`` and its stats are dumped to PATH (``pstats`` format).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from casare_nb.notebook.pool import KernelPool
from casare_nb.protocol import (
    Envelope,
    JobAccept,
    JobAssign,
    JobCancelled,
    JobComplete,
    JobFailed,
    JobRef,
)
from casare_nb.robot.agent import RobotAgent, Send
from casare_nb.robot.config import load_config
from casare_nb.robot.runner import EngineRunner


def emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


class Tally:
    """What the robots of this process were sent and answered, per job."""

    def __init__(self) -> None:
        self.assigned: Counter[str] = Counter()
        self.completed: Counter[str] = Counter()
        self.completed_by: dict[str, str] = {}
        self.per_robot: dict[str, Counter[str]] = {}

    def count(self, robot_id: str, what: str, job_id: str) -> None:
        self.per_robot.setdefault(robot_id, Counter())[what] += 1
        if what == "assigned":
            self.assigned[job_id] += 1
        else:
            self.completed[job_id] += 1
            self.completed_by[job_id] = robot_id

    def report(self) -> dict[str, Any]:
        return {
            "robots": {r: dict(c) for r, c in self.per_robot.items()},
            "assigned": dict(self.assigned),
            "completed": dict(self.completed),
            "completed_by": self.completed_by,
        }


class NoopRunner:
    """A :class:`~casare_nb.robot.agent.JobRunner` that accepts every job and completes it
    at once (the job's own notebook as the output), holding nothing."""

    def __init__(self, robot_id: str, tally: Tally) -> None:
        self.robot_id = robot_id
        self.tally = tally

    def running_jobs(self) -> list[JobRef]:
        return []

    async def handle(self, msg: Envelope, send: Send) -> None:
        if not isinstance(msg, JobAssign):
            return
        self.tally.count(self.robot_id, "assigned", msg.job_id)
        await send(JobAccept(job_id=msg.job_id, attempt=msg.attempt, reply_to=msg.id))
        await send(
            JobComplete(
                job_id=msg.job_id,
                attempt=msg.attempt,
                output_notebook=msg.notebook,
                duration_s=0.0,
            )
        )
        self.tally.count(self.robot_id, "completed", msg.job_id)

    async def abandon(self, ref: JobRef) -> None:
        return None

    async def drain(self) -> None:
        return None

    async def cancel_all(self) -> None:
        return None


class ObservedEngine:
    """An :class:`EngineRunner` whose final messages are observed: it reports each job's
    robot-side time and when the pool is full and quiet again."""

    def __init__(self, robot_id: str, runner: EngineRunner, tally: Tally) -> None:
        self.robot_id = robot_id
        self.runner = runner
        self.tally = tally
        self._assigned_at: dict[str, float] = {}
        self._watchers: set[asyncio.Task[None]] = set()

    def running_jobs(self) -> list[JobRef]:
        return self.runner.running_jobs()

    async def handle(self, msg: Envelope, send: Send) -> None:
        if isinstance(msg, JobAssign):
            self._assigned_at[msg.job_id] = time.perf_counter()
            self.tally.count(self.robot_id, "assigned", msg.job_id)

        async def observed(out: Envelope) -> None:
            await send(out)
            if isinstance(out, JobComplete | JobFailed | JobCancelled):
                started = self._assigned_at.pop(out.job_id, None)
                robot_s = time.perf_counter() - started if started is not None else None
                if isinstance(out, JobComplete):
                    self.tally.count(self.robot_id, "completed", out.job_id)
                emit("job_done", job_id=out.job_id, type=out.type, robot_s=robot_s)
                task = asyncio.create_task(self._report_idle())
                self._watchers.add(task)
                task.add_done_callback(self._watchers.discard)

        await self.runner.handle(msg, observed)

    async def _report_idle(self) -> None:
        pool = self.runner.pool
        while self.runner.running_jobs():
            await asyncio.sleep(0.01)
        await pool.wait_full()
        # the used kernel is shut down in the background (the pool's private task set)
        closing: set[asyncio.Task[None]] = getattr(pool, "_closing", set())
        while closing:
            await asyncio.gather(*list(closing), return_exceptions=True)
        emit("idle")

    async def abandon(self, ref: JobRef) -> None:
        await self.runner.abandon(ref)

    async def drain(self) -> None:
        await self.runner.drain()

    async def cancel_all(self) -> None:
        await self.runner.cancel_all()


# --------------------------------------------------------------------------- the process


async def main() -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    setup = json.loads(await asyncio.to_thread(sys.stdin.readline))
    mode = setup["mode"]
    work = Path(setup["work"])
    capacity = int(setup.get("capacity", 1))
    tally = Tally()
    pools: list[KernelPool] = []
    agents: list[RobotAgent] = []
    for robot in setup["robots"]:
        robot_id = robot["robot_id"]
        config = load_config(
            None,
            env={},
            overrides={
                "robot_id": robot_id,
                "max_concurrent_jobs": capacity,
                "orchestrator_url": setup["url"],
                "token": robot["token"],
            },
        )
        runner: NoopRunner | ObservedEngine
        if mode == "engine":
            folder = work / robot_id
            folder.mkdir(parents=True, exist_ok=True)
            pool = await KernelPool(
                size=int(setup.get("pool_size", 1)), cwd=folder, zygote=setup.get("zygote")
            ).start()
            pools.append(pool)
            engine = EngineRunner(pool, folder, max_concurrent_jobs=capacity)
            runner = ObservedEngine(robot_id, engine, tally)
        elif mode == "noop":
            runner = NoopRunner(robot_id, tally)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        agents.append(RobotAgent(config, runner=runner, metrics=lambda: (0.0, 0.0)))
    emit("prepared")
    line = await asyncio.to_thread(sys.stdin.readline)
    if line.strip() != "go":
        return 1
    profile = cProfile.Profile() if setup.get("profile") else None
    if profile is not None:
        profile.enable()
    tasks = [asyncio.create_task(agent.run()) for agent in agents]
    await asyncio.gather(*(agent.connected.wait() for agent in agents))
    emit("connected")
    await asyncio.to_thread(sys.stdin.readline)  # "stop" (or EOF)
    for agent in agents:
        agent.stop()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    if profile is not None:
        profile.disable()
        profile.dump_stats(setup["profile"])
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    for agent in agents:
        with contextlib.suppress(Exception):
            await agent.runner.cancel_all()
    for pool in pools:
        await pool.close()
    report = tally.report()
    report["errors"] = errors
    Path(setup["report"]).write_text(json.dumps(report), encoding="utf-8")
    emit("stopped", errors=errors)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
