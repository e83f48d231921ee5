"""Benchmark 9: how soon the dashboard knows. A real orchestrator (HTTP + WebSocket, in a
thread of this process), 50 simulated robots connected over WebSocket (real
:class:`~casare_nb.robot.agent.RobotAgent` links in a process of their own, each with a
runner that reports a cell every ``CELL_S`` without running anything), 20 jobs running at
once and reporting progress; a real :class:`~casare_nb.widgets.Dashboard` (its widgets,
event thread and render thread; no browser) subscribed to the monitor channel.

Measured: event published on the orchestrator (the ``ts`` the orchestrator stamps on each
monitor event when it builds it) -> the dashboard's ``DashboardState`` changed (its change
listener called, in the dashboard's event thread), for every event of every run. Both ends
read the same host clock. Each run submits 20 jobs and lasts until the dashboard saw all 20
finish; median and p95 per run and over all runs.

    .venv/bin/python -m bench.dashboard_latency [--quick]

The robot side is this module too: ``python -m bench.dashboard_latency --robots`` reads its
setup (``{"url", "robots": [{"robot_id", "token"}], "cell_s"}``) on stdin, prints
``{"event": "connected"}`` once every robot is registered, and stops at ``stop`` (or EOF).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bench import common
from bench import notebooks as nbs

if TYPE_CHECKING:
    from casare_nb.client import Client

COMMAND: Final = ".venv/bin/python -m bench.dashboard_latency"
ROOT: Final = Path(__file__).resolve().parent.parent
ROBOTS: Final = 50
RUNNING: Final = 20
CELLS: Final = 20
CELL_S: Final = 0.1
TARGET_P95_S: Final = 0.2
HEARTBEAT_S: Final = 1.0


# --------------------------------------------------------------------------- robot side


class ProgressRunner:
    """A job runner that accepts a job, reports each code cell of its notebook as done
    every ``cell_s`` seconds (``job_progress`` with the cell), then completes it."""

    def __init__(self, cell_s: float) -> None:
        self.cell_s = cell_s
        self._running: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def running_jobs(self) -> list[Any]:
        return list(self._running.values())

    async def handle(self, msg: Any, send: Any) -> None:
        from casare_nb.protocol import JobAssign

        if isinstance(msg, JobAssign):
            task = asyncio.create_task(self._run(msg, send))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, msg: Any, send: Any) -> None:
        from casare_nb.core.models import CellStatus
        from casare_nb.protocol import JobAccept, JobComplete, JobProgress, JobRef

        ref = JobRef(job_id=msg.job_id, attempt=msg.attempt)
        self._running[msg.job_id] = ref
        try:
            await send(JobAccept(job_id=msg.job_id, attempt=msg.attempt, reply_to=msg.id))
            cells = msg.notebook.get("cells", [])
            code = [i for i, c in enumerate(cells) if c.get("cell_type") == "code"]
            for done, index in enumerate(code, start=1):
                await asyncio.sleep(self.cell_s)
                cell = {**cells[index], "outputs": [], "execution_count": done}
                await send(
                    JobProgress(
                        job_id=msg.job_id,
                        attempt=msg.attempt,
                        cell_index=index,
                        cell_id=cells[index].get("id"),
                        status=CellStatus.OK,
                        duration_s=self.cell_s,
                        cells_done=done,
                        cells_total=len(code),
                        cell=cell,
                    )
                )
            await send(
                JobComplete(
                    job_id=msg.job_id,
                    attempt=msg.attempt,
                    output_notebook=msg.notebook,
                    duration_s=self.cell_s * len(code),
                )
            )
        finally:
            self._running.pop(msg.job_id, None)

    async def abandon(self, ref: Any) -> None:
        return None

    async def drain(self) -> None:
        return None

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()


async def robots_main() -> int:
    """The robot process: see the module docstring."""
    from casare_nb.robot.agent import RobotAgent
    from casare_nb.robot.config import load_config

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    setup = json.loads(await asyncio.to_thread(sys.stdin.readline))
    agents = []
    for robot in setup["robots"]:
        config = load_config(
            None,
            env={},
            overrides={
                "robot_id": robot["robot_id"],
                "orchestrator_url": setup["url"],
                "token": robot["token"],
            },
        )
        agents.append(
            RobotAgent(config, runner=ProgressRunner(setup["cell_s"]), metrics=lambda: (12.0, 30.0))
        )
    tasks = [asyncio.create_task(agent.run()) for agent in agents]
    await asyncio.gather(*(agent.connected.wait() for agent in agents))
    sys.stdout.write(json.dumps({"event": "connected"}) + "\n")
    sys.stdout.flush()
    await asyncio.to_thread(sys.stdin.readline)
    for agent in agents:
        agent.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    return 0


# --------------------------------------------------------------------------- bench side


class Latencies:
    """Listens to a dashboard state: publish -> state changed, per event kind."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.samples: list[tuple[str, float]] = []

    def __call__(self, change: Any) -> None:
        if change.published_at is None:
            return
        seconds = (datetime.now(UTC) - change.published_at).total_seconds()
        with self.lock:
            self.samples.append((change.kind or "?", seconds))

    def take(self) -> list[tuple[str, float]]:
        with self.lock:
            taken, self.samples = self.samples, []
        return taken


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _finished(state: Any, count: int) -> bool:
    return bool(state.finished_count >= count)


def _wait(predicate: Any, timeout: float, what: str, condition: threading.Condition) -> None:
    with condition:
        if not condition.wait_for(predicate, timeout):
            raise RuntimeError(f"{what}: not within {timeout} s")


def _orchestrator(work: Path, workflows: Path) -> subprocess.Popen[str]:
    """``casare-nb orchestrator`` in a process of its own (as it runs beside JupyterLab),
    on free ports; returns once its runtime file is written."""
    from casare_nb.api import read_runtime_file, runtime_file_path

    state = work / "state"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "casare_nb.cli",
            "orchestrator",
            "--state-dir",
            str(state),
            "--workflows",
            str(workflows),
            "--port",
            "0",
            "--http-port",
            "0",
            "--drain-timeout",
            "5",
            "--log-level",
            "warning",
        ],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 60
    while read_runtime_file(runtime_file_path(state)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the orchestrator did not start")
        time.sleep(0.1)
    return proc


def _stop(proc: subprocess.Popen[str] | None, line: str | None = None) -> None:
    if proc is None:
        return
    with contextlib.suppress(OSError, ValueError):
        if line is not None and proc.stdin is not None:
            proc.stdin.write(line)
            proc.stdin.flush()
        else:
            proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _measure(work: Path, runs: int) -> dict[str, Any]:
    from casare_nb.client import Client

    workflows = work / "workflows"
    nbs.write_notebook(
        workflows / "progress.ipynb", [f"x{i} = {i}" for i in range(CELLS)], prefix="p"
    )
    orchestrator: subprocess.Popen[str] | None = None
    robots: subprocess.Popen[str] | None = None
    try:
        orchestrator = _orchestrator(work, workflows)
        client = Client.local(work / "state")
        tokens = [
            {"robot_id": f"sim-{i:02d}", "token": client.create_token(f"sim-{i:02d}", "robot")}
            for i in range(ROBOTS)
        ]
        robots = subprocess.Popen(
            [sys.executable, "-m", "bench.dashboard_latency", "--robots"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert robots.stdin is not None and robots.stdout is not None
        ws_url = client.info().ws_url
        robots.stdin.write(json.dumps({"url": ws_url, "robots": tokens, "cell_s": CELL_S}))
        robots.stdin.write("\n")
        robots.stdin.flush()
        if json.loads(robots.stdout.readline() or "{}").get("event") != "connected":
            raise RuntimeError("the robot process did not connect")
        return _runs(client, runs)
    finally:
        _stop(robots, "stop\n")
        _stop(orchestrator)


def _runs(client: Client, runs: int) -> dict[str, Any]:
    """Warm-up run, then ``runs`` runs of :data:`RUNNING` jobs, a dashboard watching."""
    from casare_nb.widgets import Dashboard, Intervals

    dashboard = Dashboard(client, intervals=Intervals())
    latencies = Latencies()
    condition = threading.Condition()

    def changed(change: Any) -> None:
        with condition:
            condition.notify_all()

    state = dashboard.state
    state.on_change(changed)
    try:
        _wait(
            lambda: state.connection().ok and len(state.robots()) == ROBOTS,
            60,
            "dashboard connected with every robot",
            condition,
        )
        state.on_change(latencies)
        per_run: list[dict[str, Any]] = []
        all_samples: list[tuple[str, float]] = []
        for run in range(runs + 1):  # run 0 warms up
            latencies.take()
            before = state.finished_count
            t0 = time.perf_counter()
            for _ in range(RUNNING):
                client.submit("progress.ipynb")
            _wait(
                functools.partial(_finished, state, before + RUNNING),
                120,
                f"run {run}: {RUNNING} jobs finished",
                condition,
            )
            wall = time.perf_counter() - t0
            samples = latencies.take()
            if run == 0:
                continue
            values = [s for _, s in samples]
            all_samples += samples
            per_run.append(
                {
                    "run": run,
                    "events": len(values),
                    "wall_s": wall,
                    "median_s": statistics.median(values),
                    "p95_s": _quantile(values, 0.95),
                    "max_s": max(values),
                    "events_per_s": len(values) / wall,
                }
            )
            print(
                f"  [dashboard] run {run}: {len(values)} events in {wall:.1f} s, median "
                f"{common.ms(statistics.median(values))}, p95 "
                f"{common.ms(_quantile(values, 0.95))}",
                file=sys.stderr,
                flush=True,
            )
        by_kind: dict[str, list[float]] = {}
        for kind, seconds in all_samples:
            by_kind.setdefault(kind, []).append(seconds)
        return {
            "runs": per_run,
            "all": [s for _, s in all_samples],
            "by_kind": {
                k: {"n": len(v), "median_s": statistics.median(v), "p95_s": _quantile(v, 0.95)}
                for k, v in sorted(by_kind.items())
            },
            "sizes": state.sizes(),
        }
    finally:
        dashboard.close()
        client.close()


def main(quick: bool = False) -> dict[str, Any]:
    runs = 3 if quick else 5
    with nbs.temp_dir("dashboard") as work:
        raw = _measure(work, runs)
    values = raw.pop("all")
    median = statistics.median(values)
    p95 = _quantile(values, 0.95)
    rows = [
        [
            str(r["run"]),
            str(r["events"]),
            f"{r['events_per_s']:.0f}/s",
            common.ms(r["median_s"]),
            common.ms(r["p95_s"]),
            common.ms(r["max_s"]),
        ]
        for r in raw["runs"]
    ]
    rows.append(
        ["all", str(len(values)), "-", common.ms(median), common.ms(p95), common.ms(max(values))]
    )
    kinds = ", ".join(
        f"{k} {v['n']} (p95 {common.ms(v['p95_s'])})" for k, v in raw["by_kind"].items()
    )
    targets = [
        common.target(
            f"event published -> dashboard state changed, p95 <= {TARGET_P95_S * 1000:.0f} ms "
            f"({ROBOTS} robots, {RUNNING} running jobs)",
            f"p95 {common.ms(p95)} (median {common.ms(median)}, {len(values)} events)",
            p95 <= TARGET_P95_S,
        )
    ]
    notes = [
        f"Orchestrator (`OrchestratorService`: WebSocket + HTTP) in a thread of the benchmark "
        f"process, heartbeat every {HEARTBEAT_S:.0f} s; the {ROBOTS} robots are real "
        "`RobotAgent` WebSocket links in one process of their own whose runner runs nothing: "
        f"it accepts a job, reports each of its {CELLS} code cells done every "
        f"{CELL_S * 1000:.0f} ms (`job_progress` with the cell), then completes it.",
        f"Each run submits {RUNNING} jobs at once (they run side by side on {RUNNING} of the "
        f"robots) and ends when the dashboard has seen all {RUNNING} finish; a warm-up run "
        "is left out.",
        "The dashboard is `casare_nb.widgets.Dashboard` with its default intervals: widgets "
        "(no browser attached), its event thread and its render thread (drawing at most every "
        "100 ms, reading each running job's notebook once). Latency: `DashboardState` change "
        "listener time minus the event's `ts`, stamped by the orchestrator when it builds the "
        "event; same host clock.",
        f"Events measured by kind: {kinds}.",
    ]
    findings = []
    if p95 > TARGET_P95_S:
        findings.append(
            f"Dashboard event latency p95 is {common.ms(p95)}, above "
            f"{TARGET_P95_S * 1000:.0f} ms, with {ROBOTS} robots and {RUNNING} running jobs "
            "(benchmark 9)."
        )
    return {
        "name": "dashboard_latency",
        "title": f"9. Dashboard latency ({ROBOTS} robots, {RUNNING} running jobs)",
        "command": COMMAND,
        "runs": f"{len(raw['runs'])} runs of {RUNNING} jobs x {CELLS} cells (after a warm-up run)",
        "columns": ["run", "events", "rate", "median", "p95", "max"],
        "rows": rows,
        "targets": targets,
        "notes": notes,
        "findings": findings,
        "raw": {**raw, "median_s": median, "p95_s": p95, "events": len(values)},
    }


if __name__ == "__main__":
    if "--robots" in sys.argv:
        sys.exit(asyncio.run(robots_main()))
    print(json.dumps(main("--quick" in sys.argv), indent=1, default=str))
