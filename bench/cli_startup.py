"""Benchmark: ``casare-nb submit NB --wait`` as a whole process vs the papermill CLI, on the
trivial 10-cell notebook, side by side in one invocation; and what the submit process spends
importing.

(a) ``casare-nb submit trivial_10.ipynb -p n 3 --wait``, the whole process (the console
    script, as a user types it): start Python, parse the command line, read the runtime file,
    subscribe to the job's events, submit, print each cell, exit 0 on ``completed``. It talks
    to an orchestrator service (real
    :class:`~casare_nb.orchestrator.service.OrchestratorService`: WebSocket and HTTP API,
    port 0 on 127.0.0.1, DuckDB state dir, runtime file) in this process, and one robot in a
    process of its own (``bench/robot_process.py``: RobotAgent + EngineRunner on a
    KernelPool of 1 warm kernel, checkpoints on). Each job starts once the robot's pool is
    full again and the used kernel is shut down (the robot says ``idle``; not timed).
(b) ``papermill in.ipynb out.ipynb -p n 3``, the whole process.
(c) the same submit with ``python -X importtime``: the time its imports take (the sum of the
    top-level imports, ``site`` included), and the heaviest of them.
(d) ``python -c pass``: the interpreter's own start, the floor of any command.

The four alternate, the order rotating every repetition, after one unmeasured run of each.

    .venv/bin/python -m bench.cli_startup [--quick]
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import common
from bench import notebooks as nbs
from bench.cluster import RobotProcess
from casare_nb.core.tokens import TokenRole
from casare_nb.orchestrator.service import OrchestratorService

COMMAND = ".venv/bin/python -m bench.cli_startup"
TARGET_VS_PAPERMILL = 5.0
JOB_TIMEOUT_S = 60.0
PYTHON = str(nbs.VENV_BIN / "python")
CASARE_NB = str(nbs.VENV_BIN / "casare-nb")


async def _process(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str, str]:
    """Run ``argv``; its wall clock, stdout and stderr. RuntimeError unless it exits 0."""
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({proc.returncode}): {out[-1000:]!r} {err[-2000:]!r}"
        )
    return elapsed, out.decode(errors="replace"), err.decode(errors="replace")


def import_times(stderr: str) -> tuple[float, list[tuple[str, float]]]:
    """From ``-X importtime`` output: the seconds of all top-level imports, and the top-level
    imports by their cumulative time, heaviest first."""
    top: list[tuple[str, float]] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue  # the heading
        name = parts[2][1:]
        if name.startswith(" "):
            continue  # nested: counted in its parent's cumulative time
        top.append((name.strip(), int(parts[1]) / 1e6))
    top.sort(key=lambda item: item[1], reverse=True)
    return sum(t for _, t in top), top


class Served:
    """An orchestrator service in this process and one engine robot in another."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.workflows = work / "workflows"
        self.path = nbs.trivial(self.workflows)
        self.state = work / "state"
        self.service = OrchestratorService(
            self.state, port=0, http_port=0, workflows_dir=self.workflows
        )
        self.robots: RobotProcess | None = None
        self.env = {
            k: v for k, v in os.environ.items() if k not in ("CASARE_URL", "CASARE_TOKEN")
        } | {"CASARE_HOME": str(self.state)}

    async def start(self) -> None:
        await self.service.start()
        orch = self.service.orchestrator
        token = await asyncio.to_thread(orch.create_token, "bench-robot", TokenRole.ROBOT)
        setup = {
            "url": orch.url,
            "mode": "engine",
            "robots": [{"robot_id": "bench-robot", "token": token}],
            "pool_size": 1,
        }
        self.robots = await RobotProcess.start(setup, self.work / "robot")
        await self.robots.event("prepared", JOB_TIMEOUT_S)  # the pool's kernel is warm
        await self.robots.send("go")
        await self.robots.event("connected", JOB_TIMEOUT_S)

    def argv(self, *prefix: str) -> list[str]:
        return [*prefix, CASARE_NB, "submit", self.path.name, "-p", "n", "3", "--wait"]

    async def submit(self, *prefix: str) -> tuple[float, str]:
        """One ``casare-nb submit --wait`` process (after ``prefix``: the interpreter and its
        options); its wall clock and stderr. Then wait (untimed) until the robot is idle."""
        assert self.robots is not None
        elapsed, out, err = await _process(self.argv(*prefix), self.workflows, self.env)
        if "completed" not in out:
            raise RuntimeError(f"the job did not complete: {out[-1000:]!r} {err[-1000:]!r}")
        await self.robots.event("job_done", JOB_TIMEOUT_S)
        await self.robots.event("idle", JOB_TIMEOUT_S)
        return elapsed, err

    async def stop(self) -> None:
        if self.robots is not None:
            try:
                await self.robots.stop()
            finally:
                await self.robots.kill()
        await self.service.stop()


async def _measure(reps: int, work: Path) -> dict[str, Any]:
    served = Served(work)
    imports: list[float] = []
    heaviest: list[list[tuple[str, float]]] = []

    async def submit() -> float:
        return (await served.submit())[0]

    async def submit_importtime() -> float:
        elapsed, err = await served.submit(PYTHON, "-X", "importtime")
        total, top = import_times(err)
        imports.append(total)
        heaviest.append(top[:8])
        return elapsed

    async def papermill() -> float:
        out = work / "papermill-out.ipynb"
        argv = [str(nbs.VENV_BIN / "papermill"), str(served.path), str(out), "-p", "n", "3"]
        return (await _process(argv, work, served.env))[0]

    async def python() -> float:
        return (await _process([PYTHON, "-c", "pass"], work, served.env))[0]

    try:
        await served.start()
        fns: dict[str, Callable[[], Awaitable[float]]] = {
            "submit": submit,
            "papermill": papermill,
            "submit_importtime": submit_importtime,
            "python": python,
        }
        first = await submit()  # the robot process's first job: reported apart
        for fn in fns.values():  # warm-up, not measured
            await fn()
        imports.clear()
        heaviest.clear()
        names = list(fns)
        times: dict[str, list[float]] = {n: [] for n in names}
        for rep in range(reps):
            print(f"  [cli_startup] rep {rep + 1}/{reps}", file=sys.stderr, flush=True)
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(await fns[name]())
        return {"first": first, "times": times, "imports": imports, "heaviest": heaviest}
    finally:
        await served.stop()


def main(quick: bool = False) -> dict[str, Any]:
    reps = 3 if quick else 9
    with nbs.temp_dir("cli-startup") as work:
        raw = asyncio.run(_measure(reps, work))
        shutil.rmtree(work / "state", ignore_errors=True)
    med = {name: nbs.median(values) for name, values in raw["times"].items()}
    submit, paper, python = med["submit"], med["papermill"], med["python"]
    imports = nbs.median(raw["imports"])
    vs_paper = paper / submit
    # the heaviest top-level imports of the median import run
    order = sorted(range(len(raw["imports"])), key=lambda i: raw["imports"][i])
    top = raw["heaviest"][order[len(order) // 2]] if order else []
    heavy = ", ".join(f"`{name}` {common.ms(t, 0)}" for name, t in top[:5])
    rows = [
        [
            "(a) `casare-nb submit --wait` (median)",
            "whole process, orchestrator + robot with a warm kernel",
            common.ms(submit, 0),
            common.ratio(vs_paper, 1),
        ],
        [
            "(b) papermill CLI (median)",
            "`papermill in.ipynb out.ipynb -p n 3`, whole process",
            common.sec(paper),
            "1.0x",
        ],
        [
            "(c) imports of the submit process (median)",
            "`python -X importtime`: the top-level imports, `site` included",
            common.ms(imports, 0),
            "",
        ],
        [
            "(d) `python -c pass` (median)",
            "the interpreter's start, the floor of any command",
            common.ms(python, 0),
            "",
        ],
    ]
    targets = [
        common.target(
            f"casare-nb submit --wait whole process >= {TARGET_VS_PAPERMILL:.0f}x faster than "
            "papermill CLI",
            f"{vs_paper:.1f}x ({common.ms(submit, 0)} vs {common.sec(paper)}, medians)",
            vs_paper >= TARGET_VS_PAPERMILL,
        )
    ]
    findings = [
        f"`casare-nb submit NB --wait` on the trivial notebook: {common.ms(submit, 0)} as a "
        f"whole process (median), {vs_paper:.1f}x faster than the papermill CLI "
        f"({common.sec(paper)}); {common.ms(imports, 0)} of it are imports (heaviest: "
        f"{heavy}), {common.ms(python, 0)} the interpreter's start.",
    ]
    return {
        "name": "cli_startup",
        "title": "15. `casare-nb submit --wait` as a process vs the papermill CLI (trivial 10-cell "
        "notebook, `-p n 3`)",
        "command": COMMAND,
        "runs": (
            f"{reps} of each (submit, papermill, submit with -X importtime, python -c pass), "
            "order rotating, after the robot's first job and one unmeasured run of each"
        ),
        "columns": ["measure", "how", "time", "papermill / this (x faster)"],
        "rows": rows,
        "targets": targets,
        "notes": [
            "Orchestrator service (WebSocket + HTTP API, runtime file) in the benchmark "
            "process, robot in its own process (`bench/robot_process.py`: RobotAgent + "
            "EngineRunner, KernelPool of 1, checkpoints on); the submit process finds the "
            "orchestrator through the runtime file (`CASARE_HOME`), like a user's.",
            "Each job starts once the robot's pool is full again and the used kernel is shut "
            "down, so the figure is a job on an idle robot with a warm kernel.",
            f"The robot process's first job (not in the medians): {common.ms(raw['first'], 0)}.",
            f"Heaviest top-level imports of the submit process (median run): {heavy}.",
            "`-X importtime` adds its own overhead; (c) is an upper bound of the import time "
            "within (a).",
        ],
        "findings": findings,
        "raw": raw | {"medians": med, "import_s": imports},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main("--quick" in sys.argv), indent=1, default=str))
