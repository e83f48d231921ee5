"""Bench-side pieces of the orchestrator benchmarks (5 and 6): a robot process to drive
(:class:`RobotProcess`, running ``bench/robot_process.py``) and :class:`JobWatch`, which sees
the orchestrator's job events without touching its database."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from casare_nb.core.models import Robot
from casare_nb.core.tokens import TokenRole
from casare_nb.orchestrator.jobs.book import Link
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.protocol import Envelope, EventData, EventKind, JobAssign, JobEvent

ROOT = Path(__file__).resolve().parent.parent


class JobWatch:
    """Wraps the link of an orchestrator's job manager (its ``link`` attribute): everything
    is passed on unchanged, and the moment (``time.perf_counter``) of each ``job_assign``
    sent and each job that reached a final status is recorded.

    This costs the orchestrator a dict update per event, where waiting with
    ``Orchestrator.wait_for`` and a predicate reading the job would add a DuckDB query per
    state change to the measured path.
    """

    def __init__(self, orch: Orchestrator) -> None:
        self.inner: Link = orch.job_manager.book.link
        self.assigned_at: dict[str, float] = {}
        self.finished_at: dict[str, float] = {}
        self.finished_status: dict[str, str] = {}
        self.on_finished: Callable[[str], None] | None = None
        orch.job_manager.book.link = self

    def robots(self) -> list[Robot]:
        return self.inner.robots()

    def send_to_robot(self, robot_id: str, msg: Envelope) -> bool:
        if isinstance(msg, JobAssign):
            self.assigned_at.setdefault(msg.job_id, time.perf_counter())
        return self.inner.send_to_robot(robot_id, msg)

    def publish(self, kind: EventKind, data: EventData) -> None:
        if kind is EventKind.JOB_FINISHED and isinstance(data, JobEvent):
            job = data.job
            self.finished_at[job.job_id] = time.perf_counter()
            self.finished_status[job.job_id] = job.status.value
            if self.on_finished is not None:
                self.on_finished(job.job_id)
        self.inner.publish(kind, data)

    def notify(self) -> None:
        self.inner.notify()

    async def finished(self, job_id: str, timeout: float) -> float:
        """Wait until ``job_id`` reached a final status; the moment it did."""
        done = asyncio.Event()
        if job_id not in self.finished_at:
            self.on_finished = lambda finished: done.set() if finished == job_id else None
            try:
                await asyncio.wait_for(done.wait(), timeout)
            finally:
                self.on_finished = None
        return self.finished_at[job_id]


class RobotProcess:
    """The benchmark's handle on a robot process (see ``bench/robot_process.py``)."""

    def __init__(self, proc: asyncio.subprocess.Process, report: Path, log: Path) -> None:
        self.proc = proc
        self.report_path = report
        self.log_path = log
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, setup: dict[str, Any], folder: Path) -> RobotProcess:
        """Start the process with ``setup``; its work dir, report and stderr in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        setup = {**setup, "work": str(folder), "report": str(folder / "report.json")}
        log = folder / "robots.log"
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.robot_process",
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        robots = cls(proc, Path(setup["report"]), log)
        await robots.send(json.dumps(setup))
        return robots

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def event(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        """The next event called ``name`` (every event read is kept in :attr:`events`)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"the robot process ended: {self.tail()}")
                event: dict[str, Any] = json.loads(line)
                self.events.append(event)
                if event["event"] == name:
                    return event

    async def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """Stop the robots and the process; their report."""
        await self.send("stop")
        await self.event("stopped", timeout)
        await asyncio.wait_for(self.proc.wait(), timeout)
        report: dict[str, Any] = json.loads(self.report_path.read_text("utf-8"))
        return report

    async def kill(self) -> None:
        """End the process if it still runs (cleanup after a failure)."""
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text("utf-8", errors="replace")[-chars:]
        except OSError:
            return ""


async def robot_tokens(orch: Orchestrator, robot_ids: list[str]) -> list[dict[str, str]]:
    """A token per robot id, as the robot process's setup wants them."""
    return [
        {"robot_id": rid, "token": await asyncio.to_thread(orch.create_token, rid, TokenRole.ROBOT)}
        for rid in robot_ids
    ]
