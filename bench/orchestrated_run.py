"""Benchmark 5: the trivial 10-cell notebook through the orchestrator and a robot, vs the
papermill CLI and vs the warm-kernel floor, side by side in one invocation.

(a) **orchestrated**: ``Orchestrator.submit(nb, {"n": 3})`` until the job is ``completed``.
    The orchestrator (real :class:`~casare_nb.orchestrator.orchestrator.Orchestrator`, port 0 on
    127.0.0.1, its DuckDB file in a temporary state dir) runs in this process; one robot
    (:class:`~casare_nb.robot.agent.RobotAgent` + :class:`~casare_nb.robot.runner.EngineRunner`
    on a :class:`~casare_nb.notebook.pool.KernelPool` of 1 warm kernel, checkpoints on) runs
    in a process of its own (``bench/robot_process.py``) and talks to it over WebSocket.
    The first job is reported apart; then jobs one at a time, each once the pool is full
    again and the used kernel shut down (the robot says so), so no job competes with the
    background kernel start of the one before.
(b) ``papermill in.ipynb out.ipynb -p n 3``, the whole process (after one unmeasured run).
(c) the **floor**: the same 11 cell sources (the notebook's 10 plus the injected
    ``n = 3``) sent one by one to an already-running kernel with jupyter_client
    (``execute_interactive``: execute, wait for the reply and the kernel's idle status).

The three alternate, the order rotating every repetition.

    .venv/bin/python -m bench.orchestrated_run [--quick]
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.manager import AsyncKernelManager

from bench import common
from bench import notebooks as nbs
from bench.cluster import JobWatch, RobotProcess, robot_tokens
from casare_nb.notebook.state import HISTORY_FILE
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.store.history import HistoryStore

COMMAND = ".venv/bin/python -m bench.orchestrated_run"
TARGET_VS_PAPERMILL = 25.0
TARGET_VS_FLOOR = 3.0
JOB_TIMEOUT_S = 60.0
PARAMETERS = {"n": 3}


def _floor_sources(path: Path) -> list[str]:
    """The cells a parameterised run executes: the injected ``n = 3`` after the parameters
    cell, as papermill and casare-nb both do."""
    nb = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    sources: list[str] = []
    for cell in nb.cells:
        sources.append(cell.source)
        if "parameters" in cell.metadata.get("tags", []):
            sources.append(
                "# Parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in PARAMETERS.items())
            )
    return sources


class Floor:
    """An already-running kernel that executes cell sources one by one."""

    def __init__(self, cwd: Path) -> None:
        self.km = AsyncKernelManager(kernel_name="python3")
        self.cwd = cwd
        self.kc: Any = None

    async def start(self) -> None:
        await self.km.start_kernel(cwd=str(self.cwd))
        self.kc = self.km.client()
        self.kc.start_channels()
        await self.kc.wait_for_ready(timeout=60)

    async def run(self, sources: list[str]) -> float:
        t0 = time.perf_counter()
        for source in sources:
            reply = await self.kc.execute_interactive(
                source, output_hook=lambda msg: None, timeout=JOB_TIMEOUT_S
            )
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"floor cell failed: {reply['content']}")
        return time.perf_counter() - t0

    async def stop(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        await self.km.shutdown_kernel(now=True)


async def _papermill(path: Path, work: Path) -> float:
    out = work / "papermill-out.ipynb"
    argv = [str(nbs.VENV_BIN / "papermill"), str(path), str(out), "-p", "n", "3"]
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=work,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"papermill failed ({proc.returncode}): {err[-2000:]!r}")
    return elapsed


class Orchestrated:
    """An orchestrator in this process and one engine robot in another."""

    def __init__(self, work: Path, path: Path) -> None:
        self.work = work
        self.path = path
        self.orch = Orchestrator(work / "state", port=0)
        self.watch = JobWatch(self.orch)
        self.robots: RobotProcess | None = None
        self.jobs: list[dict[str, Any]] = []

    async def start(self) -> None:
        await self.orch.start()
        tokens = await robot_tokens(self.orch, ["bench-robot"])
        setup = {"url": self.orch.url, "mode": "engine", "robots": tokens, "pool_size": 1}
        self.robots = await RobotProcess.start(setup, self.work / "robot")
        await self.robots.event("prepared", JOB_TIMEOUT_S)  # the pool's kernel is warm
        await self.robots.send("go")
        await self.robots.event("connected", JOB_TIMEOUT_S)

    async def run(self) -> float:
        """One job, submit -> completed; then wait (untimed) until the robot is idle."""
        assert self.robots is not None
        t0 = time.perf_counter()
        job = await self.orch.submit(self.path, PARAMETERS)
        submitted = time.perf_counter()
        done = await self.watch.finished(job.job_id, JOB_TIMEOUT_S)
        status = self.watch.finished_status[job.job_id]
        if status != "completed":
            raise RuntimeError(f"job {job.job_id} ended {status}: {self.robots.tail()}")
        robot = await self.robots.event("job_done", JOB_TIMEOUT_S)
        await self.robots.event("idle", JOB_TIMEOUT_S)
        assigned = self.watch.assigned_at[job.job_id]
        self.jobs.append(
            {
                "job_id": job.job_id,
                "total_s": done - t0,
                "submit_s": submitted - t0,
                "to_assign_s": assigned - t0,
                "robot_s": float(robot["robot_s"]),
                "after_robot_s": done - assigned - float(robot["robot_s"]),
            }
        )
        return done - t0

    async def cell_sums(self) -> dict[str, float]:
        """Job id -> sum of its cells' durations, from the orchestrator's history."""
        await asyncio.to_thread(self.orch.job_manager.flush_history, 30)
        history = HistoryStore(self.orch.state_dir / HISTORY_FILE)
        out: dict[str, float] = {}
        for job in self.jobs:
            cells = await asyncio.to_thread(history.list_cells, job["job_id"])
            out[job["job_id"]] = sum(c.duration_s for c in cells)
        return out

    async def stop(self) -> None:
        if self.robots is not None:
            try:
                await self.robots.stop()
            finally:
                await self.robots.kill()
        await self.orch.stop()


async def _measure(reps: int, work: Path) -> dict[str, Any]:
    path = nbs.trivial(work)
    sources = _floor_sources(path)
    floor = Floor(work)
    cluster = Orchestrated(work, path)
    try:
        await floor.start()
        await cluster.start()
        first = await cluster.run()
        first_job = dict(cluster.jobs[0])
        await _papermill(path, work)  # warm-up
        await floor.run(sources)  # warm-up
        fns: dict[str, Callable[[], Awaitable[float]]] = {
            "orchestrated": cluster.run,
            "papermill": lambda: _papermill(path, work),
            "floor": lambda: floor.run(sources),
        }
        names = list(fns)
        times: dict[str, list[float]] = {n: [] for n in names}
        for rep in range(reps):
            print(f"  [orchestrated_run] rep {rep + 1}/{reps}", file=sys.stderr, flush=True)
            order = names[rep % 3 :] + names[: rep % 3]
            for name in order:
                times[name].append(await fns[name]())
        sums = await cluster.cell_sums()
        warm_jobs = cluster.jobs[1:]
        for job in cluster.jobs:
            job["cells_s"] = sums.get(job["job_id"], 0.0)
        return {
            "first": first,
            "first_job": first_job | {"cells_s": cluster.jobs[0]["cells_s"]},
            "times": times,
            "warm_jobs": warm_jobs,
            "n_floor_cells": len(sources),
        }
    finally:
        try:
            await cluster.stop()
        finally:
            await floor.stop()


def main(quick: bool = False) -> dict[str, Any]:
    reps = 3 if quick else 9
    with nbs.temp_dir("orchestrated") as work:
        raw = asyncio.run(_measure(reps, work))
        shutil.rmtree(work / "state", ignore_errors=True)
    times = raw["times"]
    med = {name: nbs.median(values) for name, values in times.items()}
    warm, paper, floor = med["orchestrated"], med["papermill"], med["floor"]
    first = raw["first"]
    jobs = raw["warm_jobs"]

    def part(key: str) -> float:
        return nbs.median([float(j[key]) for j in jobs])

    vs_paper = paper / warm
    vs_floor = warm / floor
    rows = [
        [
            "(a) orchestrated, warm pool (median)",
            "`Orchestrator.submit(...)` -> completed, robot process, checkpoints on",
            common.ms(warm, 0),
            common.ratio(vs_paper, 1),
            common.ratio(vs_floor, 1),
        ],
        [
            "(a') orchestrated, first job",
            "the robot process's first job (warm kernel, first engine use)",
            common.ms(first, 0),
            common.ratio(paper / first, 1),
            common.ratio(first / floor, 1),
        ],
        [
            "(b) papermill CLI (median)",
            "`papermill in.ipynb out.ipynb -p n 3`, whole process",
            common.sec(paper),
            "1.0x",
            common.ratio(paper / floor, 0),
        ],
        [
            "(c) floor (median)",
            f"{raw['n_floor_cells']} cells on an already-running kernel (jupyter_client)",
            common.ms(floor, 1),
            common.ratio(paper / floor, 0),
            "1.0x",
        ],
    ]
    breakdown = (
        f"submit() call {common.ms(part('submit_s'), 1)}; submit -> job_assign sent "
        f"{common.ms(part('to_assign_s'), 1)}; robot, job_assign received -> job_complete queued "
        f"{common.ms(part('robot_s'), 0)} (of which the cells' own durations "
        f"{common.ms(part('cells_s'), 0)}); the rest (network, recording the result) "
        f"{common.ms(part('after_robot_s'), 1)}"
    )
    targets = [
        common.target(
            f"orchestrated trivial 10-cell job >= {TARGET_VS_PAPERMILL:.0f}x faster than the "
            "papermill CLI",
            f"{vs_paper:.1f}x ({common.ms(warm, 0)} vs {common.sec(paper)}, medians)",
            vs_paper >= TARGET_VS_PAPERMILL,
        ),
        common.target(
            f"orchestrated job within {TARGET_VS_FLOOR:.0f}x of the warm-kernel floor",
            f"{vs_floor:.1f}x ({common.ms(warm, 0)} vs {common.ms(floor, 1)}, medians)",
            vs_floor <= TARGET_VS_FLOOR,
        ),
    ]
    if paper / floor < TARGET_VS_PAPERMILL:
        findings_floor = [
            f"The {TARGET_VS_PAPERMILL:.0f}x target cannot be met on this machine today: the "
            f"floor itself (the cells on an already-running kernel, nothing else) is only "
            f"{paper / floor:.0f}x faster than the papermill CLI ({common.ms(floor, 0)} vs "
            f"{common.sec(paper)}; the issue assumed a ~30 ms floor). The orchestrated job "
            f"is {vs_floor:.1f}x the floor (benchmark 5)."
        ]
    else:
        findings_floor = []
    slow = [j for j in jobs if j["to_assign_s"] > 0.25]
    findings = [
        f"Orchestrated trivial job: {common.ms(warm, 0)} end to end (median), "
        f"{vs_paper:.1f}x faster than the papermill CLI and {vs_floor:.1f}x the warm-kernel "
        f"floor of {common.ms(floor, 0)}. Where the time goes (medians): {breakdown} "
        "(benchmark 5).",
        *findings_floor,
    ]
    if slow:
        findings.append(
            f"{len(slow)} of {len(jobs)} warm jobs waited "
            + ", ".join(common.ms(j["to_assign_s"], 0) for j in slow)
            + " between submit and job_assign with the robot idle: the robot's last "
            "heartbeat (sent while it ran the previous job) still said 1 running job, and "
            "dispatch trusts it until the next heartbeat (every 2 s), although the "
            "orchestrator saw the job_complete (benchmark 5)."
        )
    return {
        "name": "orchestrated_run",
        "title": "5. Orchestrated run vs papermill (trivial 10-cell notebook, `-p n 3`)",
        "command": COMMAND,
        "runs": (
            f"{reps} of each (orchestrated, papermill, floor), order rotating, after the first "
            "job and one unmeasured papermill and floor run"
        ),
        "columns": [
            "measure",
            "how",
            "time",
            "papermill / this (x faster)",
            "this / floor",
        ],
        "rows": rows,
        "targets": targets,
        "notes": [
            "Orchestrator in the benchmark process (port 0, 127.0.0.1, DuckDB state dir), "
            "robot in its own process (`bench/robot_process.py`: RobotAgent + EngineRunner, "
            "KernelPool of 1, checkpoints on); the job's end is the moment the orchestrator "
            "publishes `job_finished` (seen by wrapping its job manager's `link`, no database "
            "query).",
            "Each orchestrated job starts once the robot's pool is full again and the used "
            "kernel is shut down, so the figure is a job on an idle robot with a warm kernel; "
            "the next kernel's start is not counted (it runs between jobs).",
            f"Breakdown of the warm jobs (medians): {breakdown}.",
            f"The floor runs {raw['n_floor_cells']} cells: the notebook's 10 and the injected "
            "parameters cell, the cells papermill and casare-nb execute.",
        ],
        "findings": findings,
        "raw": raw | {"medians": med},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main("--quick" in sys.argv), indent=1, default=str))
