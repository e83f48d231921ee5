"""Benchmark 14: speed toward the floor (issue 14, targets 1, 2, 4 and 12), side by side in
one invocation, on the trivial 10-cell notebook (``-p n 3``, so 11 cells run):

- the **floor**: the same 11 cell sources on an already-running kernel (jupyter_client,
  execute + wait for the reply and idle), as benchmark 5;
- ``Client.submit(..., wait=True)`` from this long-lived process, against an orchestrator
  service (HTTP + WebSocket, in a thread of this process) and one robot process
  (``bench/robot_process.py``: a real :class:`~casare_nb.robot.runner.EngineRunner`, pool of
  2 warm kernels, checkpoints on, 2 jobs at a time). Two such clusters run side by side: the
  robot of one forks its kernels from the **zygote**, the other starts them **cold** (as
  before issue 14). Each is measured *spaced* (the robot idle and its pool full before the
  job) and *back to back* (the next job submitted as soon as the previous one is done, while
  the robot replaces the used kernel);
- the **robot's CPU per job**: user + system time of the robot process and everything under
  it (the zygote, the kernels: the one that ran the job and the one that replaces it), over
  the back-to-back jobs, divided by their number;
- **throughput** of one robot with real kernels: a burst of jobs submitted at once, jobs/s
  from the first submit to the last completion;
- ``casare-nb run NB -p n 3`` (local, no orchestrator) and ``papermill NB out -p n 3``, each
  the whole process.

    .venv/bin/python -m bench.floor [--quick]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

from bench import common
from bench import notebooks as nbs
from bench.cluster import RobotProcess
from bench.orchestrated_run import Floor, _floor_sources, _papermill
from casare_nb.core.tokens import TokenRole
from casare_nb.orchestrator.service import OrchestratorService
from casare_nb.service_thread import ServiceThread

COMMAND = ".venv/bin/python -m bench.floor"
PARAMETERS = {"n": 3}
JOB_TIMEOUT_S = 120.0
TARGET_VS_FLOOR = 1.2
TARGET_CPU_S = 0.100
TARGET_LOCAL_VS_PAPERMILL = 3.0
TARGET_JOBS_PER_S = 10.0


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and every process under it, living or reaped."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


class Cluster:
    """An orchestrator service in a thread of this process and one engine robot process."""

    def __init__(self, work: Path, name: str, *, zygote: bool) -> None:
        self.work = work
        self.name = name
        self.zygote = zygote
        self.thread: ServiceThread | None = None
        self.robots: RobotProcess | None = None
        self.client: Any = None
        self.finished = 0  # jobs done, each followed by one "idle" event of the robot
        self.idled = 0

    async def start(self) -> None:
        state = self.work / self.name / "state"
        service = OrchestratorService(state, port=0, http_port=0, workflows_dir=self.work)
        self.thread = ServiceThread(service)
        await asyncio.to_thread(self.thread.start)
        robot_id = f"robot-{self.name}"
        token = await asyncio.to_thread(
            service.orchestrator.create_token, robot_id, TokenRole.ROBOT
        )
        setup = {
            "url": service.ws_url,
            "mode": "engine",
            "robots": [{"robot_id": robot_id, "token": token}],
            "pool_size": 2,
            "capacity": 2,
            "zygote": self.zygote,
        }
        self.robots = await RobotProcess.start(setup, self.work / self.name / "robot")
        await self.robots.event("prepared", JOB_TIMEOUT_S)
        await self.robots.send("go")
        await self.robots.event("connected", JOB_TIMEOUT_S)
        self.client = self.thread.client()

    def _submit_wait(self, path: Path) -> float:
        t0 = time.perf_counter()
        job = self.client.submit(path.name, PARAMETERS, wait=True, timeout=JOB_TIMEOUT_S)
        elapsed = time.perf_counter() - t0
        if str(job.status) not in ("completed", "JobStatus.COMPLETED"):
            raise RuntimeError(f"job {job.job_id} ended {job.status}: {self.tail()}")
        return elapsed

    async def settle(self) -> None:
        """Wait until the robot is idle and its pool full after every job so far."""
        assert self.robots is not None
        while self.idled < self.finished:
            await self.robots.event("idle", JOB_TIMEOUT_S)
            self.idled += 1

    async def spaced(self, path: Path) -> float:
        await self.settle()
        elapsed = await asyncio.to_thread(self._submit_wait, path)
        self.finished += 1
        await self.settle()
        return elapsed

    async def back_to_back(self, path: Path, jobs: int) -> tuple[list[float], float]:
        """``jobs`` jobs one after the other; their times and the robot's CPU per job."""
        await self.settle()
        assert self.robots is not None
        cpu0 = tree_cpu(self.robots.proc.pid)
        times = []
        for _ in range(jobs):
            times.append(await asyncio.to_thread(self._submit_wait, path))
            self.finished += 1
        await self.settle()
        return times, (tree_cpu(self.robots.proc.pid) - cpu0) / jobs

    def _burst(self, path: Path, jobs: int) -> float:
        t0 = time.perf_counter()
        ids = [self.client.submit(path.name, PARAMETERS).job_id for _ in range(jobs)]
        for job_id in ids:
            job = self.client.wait(job_id, JOB_TIMEOUT_S)
            if str(job.status) not in ("completed", "JobStatus.COMPLETED"):
                raise RuntimeError(f"job {job_id} ended {job.status}: {self.tail()}")
        return jobs / (time.perf_counter() - t0)

    async def burst(self, path: Path, jobs: int) -> float:
        await self.settle()
        rate = await asyncio.to_thread(self._burst, path, jobs)
        self.finished += jobs
        await self.settle()
        return rate

    def tail(self) -> str:
        return self.robots.tail() if self.robots is not None else ""

    async def stop(self) -> None:
        if self.robots is not None:
            try:
                await self.robots.stop()
            finally:
                await self.robots.kill()
        if self.client is not None:
            self.client.close()
        if self.thread is not None:
            await asyncio.to_thread(self.thread.stop)


async def _local_run(path: Path, work: Path) -> float:
    argv = [
        str(nbs.VENV_BIN / "casare-nb"),
        "run",
        "-q",
        str(path),
        str(work / "local-out.ipynb"),
        "-p",
        "n",
        "3",
        "--state-dir",
        str(work / "local-state"),
    ]
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=work, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"casare-nb run failed ({proc.returncode}): {err[-2000:]!r}")
    return elapsed


async def _measure(reps: int, b2b: int, burst: int, bursts: int, work: Path) -> dict[str, Any]:
    path = nbs.trivial(work)
    sources = _floor_sources(path)
    floor = Floor(work)
    clusters = {"zygote": Cluster(work, "zygote", zygote=True)}
    clusters["cold"] = Cluster(work, "cold", zygote=False)
    try:
        await floor.start()
        for cluster in clusters.values():
            await cluster.start()
            await cluster.spaced(path)  # the robot's first job: warm-up
        await floor.run(sources)
        await _papermill(path, work)
        await _local_run(path, work)
        fns: dict[str, Callable[[], Awaitable[float]]] = {
            "floor": lambda: floor.run(sources),
            "spaced zygote": lambda: clusters["zygote"].spaced(path),
            "spaced cold": lambda: clusters["cold"].spaced(path),
            "local run": lambda: _local_run(path, work),
            "papermill": lambda: _papermill(path, work),
        }
        names = list(fns)
        times: dict[str, list[float]] = {n: [] for n in names}
        b2b_times: dict[str, list[float]] = {n: [] for n in clusters}
        cpu: dict[str, list[float]] = {n: [] for n in clusters}
        for rep in range(reps):
            print(f"  [floor] rep {rep + 1}/{reps}", file=sys.stderr, flush=True)
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                times[name].append(await fns[name]())
            for name, cluster in clusters.items():
                jobs, per_job = await cluster.back_to_back(path, b2b)
                b2b_times[name].extend(jobs)
                cpu[name].append(per_job)
        rates: dict[str, list[float]] = {n: [] for n in clusters}
        for i in range(bursts):
            print(f"  [floor] burst {i + 1}/{bursts}", file=sys.stderr, flush=True)
            for name, cluster in clusters.items():
                rates[name].append(await cluster.burst(path, burst))
        return {
            "times": times,
            "back_to_back": b2b_times,
            "cpu_per_job": cpu,
            "jobs_per_s": rates,
            "n_floor_cells": len(sources),
            "burst": burst,
            "b2b": b2b,
        }
    finally:
        for cluster in clusters.values():
            await cluster.stop()
        await floor.stop()


def main(quick: bool = False) -> dict[str, Any]:
    reps, b2b, burst, bursts = (3, 4, 12, 1) if quick else (7, 6, 30, 3)
    with nbs.temp_dir("floor") as work:
        raw = asyncio.run(_measure(reps, b2b, burst, bursts, work))
    med = {name: nbs.median(values) for name, values in raw["times"].items()}
    b2b_med = {name: nbs.median(values) for name, values in raw["back_to_back"].items()}
    cpu = {name: nbs.median(values) for name, values in raw["cpu_per_job"].items()}
    rate = {name: nbs.median(values) for name, values in raw["jobs_per_s"].items()}
    floor, paper, local = med["floor"], med["papermill"], med["local run"]

    def row(label: str, what: str, seconds: float) -> list[str]:
        return [
            label,
            what,
            common.ms(seconds, 0),
            common.ratio(paper / seconds, 1),
            common.ratio(seconds / floor, 1),
        ]

    rows = [
        row("floor", f"{raw['n_floor_cells']} cells on an already-running kernel", floor),
        row(
            "`Client.submit(wait=True)`, zygote, spaced",
            "orchestrator + robot, warm pool of forked kernels",
            med["spaced zygote"],
        ),
        row(
            "`Client.submit(wait=True)`, zygote, back to back",
            f"{raw['b2b']} jobs in a row, the pool refilling meanwhile",
            b2b_med["zygote"],
        ),
        row(
            "`Client.submit(wait=True)`, cold, spaced",
            "the same, kernels started cold (before issue 14)",
            med["spaced cold"],
        ),
        row(
            "`Client.submit(wait=True)`, cold, back to back",
            f"{raw['b2b']} jobs in a row, cold kernel starts meanwhile",
            b2b_med["cold"],
        ),
        row("`casare-nb run NB` (local)", "whole process, no orchestrator", local),
        row("`papermill` CLI", "whole process", paper),
    ]
    robot_rows = [
        [
            name,
            common.ms(cpu[name], 0),
            f"{rate[name]:.2f} jobs/s",
        ]
        for name in ("zygote", "cold")
    ]
    targets = [
        common.target(
            f"`Client.submit(wait=True)`, spaced: <= {TARGET_VS_FLOOR}x the floor",
            f"{med['spaced zygote'] / floor:.1f}x ({common.ms(med['spaced zygote'], 0)} vs "
            f"{common.ms(floor, 0)}); {paper / med['spaced zygote']:.1f}x faster than papermill",
            med["spaced zygote"] / floor <= TARGET_VS_FLOOR,
        ),
        common.target(
            f"`Client.submit(wait=True)`, back to back: <= {TARGET_VS_FLOOR}x the floor",
            f"{b2b_med['zygote'] / floor:.1f}x ({common.ms(b2b_med['zygote'], 0)})",
            b2b_med["zygote"] / floor <= TARGET_VS_FLOOR,
        ),
        common.target(
            f"robot CPU per trivial job <= {TARGET_CPU_S * 1e3:.0f} ms, replacement kernel "
            "included",
            f"{common.ms(cpu['zygote'], 0)} (cold kernels: {common.ms(cpu['cold'], 0)})",
            cpu["zygote"] <= TARGET_CPU_S,
        ),
        common.target(
            f"`casare-nb run NB` local >= {TARGET_LOCAL_VS_PAPERMILL:.0f}x faster than "
            "the papermill CLI",
            f"{paper / local:.1f}x ({common.ms(local, 0)} vs {common.ms(paper, 0)})",
            paper / local >= TARGET_LOCAL_VS_PAPERMILL,
        ),
        common.target(
            f"one robot with real kernels >= {TARGET_JOBS_PER_S:.0f} trivial jobs/s",
            f"{rate['zygote']:.2f} jobs/s (cold kernels: {rate['cold']:.2f})",
            rate["zygote"] >= TARGET_JOBS_PER_S,
        ),
    ]
    notes = [
        "The orchestrator service runs in a thread of the benchmark process; the robot in a "
        "process of its own (pool of 2, 2 jobs at a time, checkpoints on). The zygote and "
        "cold clusters run side by side, idle while the other is measured.",
        "Robot CPU per job: user + system of the robot process and every process under it "
        "(zygote, kernels, reaped ones included) over the back-to-back jobs, after the pool "
        "refilled: the job's own kernel (its 11 cells, its checkpoints) and the kernel that "
        "replaces it.",
        f"Throughput: {raw['burst']} jobs submitted at once, first submit -> last completion; "
        "median of the bursts.",
    ]
    return {
        "title": "14. Speed toward the floor: submit, robot CPU, throughput, local run",
        "command": COMMAND,
        "runs": f"{reps} rotations of (floor, spaced jobs on each cluster, local run, "
        f"papermill) + {raw['b2b']} back-to-back jobs per cluster each rotation, then "
        f"{len(raw['jobs_per_s']['zygote'])} bursts per cluster",
        "columns": ["path", "what", "median", "vs papermill CLI", "vs floor"],
        "rows": rows,
        "extra_tables": [
            {
                "columns": ["robot kernels", "robot CPU per job (median)", "jobs/s (median)"],
                "rows": robot_rows,
            }
        ],
        "targets": targets,
        "notes": notes,
        "findings": [],
        "raw": raw,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main("--quick" in sys.argv), indent=2, default=str))
