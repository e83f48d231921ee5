"""Benchmark: the orchestrator under load (issue 14, targets 13 and 14).

1. **Submit over HTTP.** An :class:`~casare_nb.orchestrator.service.OrchestratorService`
   (WebSocket + HTTP API, its DuckDB file in a temporary state dir, default settings) and
   one sequential client in a process of its own (``httpx``, one keep-alive connection):
   ``POST /api/jobs`` one after another, each answered only once the job is committed.
   Per run: p50 / p95 latency and submits/s; several runs, medians. The same client also
   times keep-alive ``GET`` requests of an unknown path (404: no database, no thread), the
   transport's own latency (a delayed-ACK stall, Nagle on, shows as ~40 ms).
2. **Cells recorded.** An :class:`~casare_nb.orchestrator.orchestrator.Orchestrator` in
   this process and fake robots in a process of their own that speak the WebSocket protocol
   and only report: for each ``job_assign`` a ``job_accept``, a ``job_progress`` per cell
   (the executed cell with a small output, as a robot sends it) and a ``job_complete`` with
   the output notebook; no kernel, no checkpoint. Jobs of :data:`CELLS` cells are queued in
   bulk. Timed from the robots' connection until every job finished and every cell row is
   committed to the history (``cells`` table counted): cell rows/s end to end. The
   orchestrator's RSS (``gc.collect()`` first) after the first :data:`WARM_JOBS` jobs and at
   the end: memory per 1,000 jobs.

    .venv/bin/python -m bench.orchestrator_load [--quick] [--profile]

``--profile`` runs cProfile on the orchestrator's thread during the cell drain and writes
the top functions to ``bench/out/orchestrator_load_profile.txt``.

The module is also its own helper processes: ``--submit-client URL TOKEN N`` (the HTTP
client) and ``--robots`` (the fake robots; setup on stdin, see :func:`_robots_main`).
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import itertools
import json
import pstats
import secrets
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench import common
from bench import notebooks as nbs
from bench.cluster import JobWatch, robot_tokens
from casare_nb.core.models import Job
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.orchestrator.service import OrchestratorService
from casare_nb.store.jobs import SqlJobStore

COMMAND = ".venv/bin/python -m bench.orchestrator_load"
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"

SUBMIT_P50_MS = 10.0  # target 13
SUBMIT_RATE = 300.0
CELL_RATE = 10_000.0  # target 14
CELLS = 50
ROBOTS = 4
CAPACITY = 4
WARM_JOBS = 1_000  # RSS is taken after these (allocator, caches and DuckDB warmed up)
FLAT_MB_PER_1000 = 2.0  # "flat": at most this much RSS per 1,000 jobs after the warm-up


# --------------------------------------------------------------------------- the client


def _client_main(url: str, token: str, count: int) -> None:
    """Submit ``count`` jobs one after another (after a warm-up); print the latencies."""
    import httpx

    submit_s: list[float] = []
    health_s: list[float] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(20):  # warm-up: connection, imports, caches
            http.post("/api/jobs", json={"workflow": "noop.ipynb"}).raise_for_status()
            http.get("/no-such-path")
        t0 = time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            response = http.post("/api/jobs", json={"workflow": "noop.ipynb"})
            submit_s.append(time.perf_counter() - t)
            if response.status_code != 201:
                raise SystemExit(f"submit answered {response.status_code}: {response.text}")
        elapsed = time.perf_counter() - t0
        for _ in range(100):
            t = time.perf_counter()
            http.get("/no-such-path")  # 404: no database, no thread
            health_s.append(time.perf_counter() - t)
    print(json.dumps({"submit_s": submit_s, "elapsed_s": elapsed, "health_s": health_s}))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _submit_run(work: Path, count: int) -> dict[str, Any]:
    workflows = work / "workflows"
    nbs.write_notebook(workflows / "noop.ipynb", ["x = 1"])
    service = OrchestratorService(
        work / "state",
        port=0,
        http_port=0,
        workflows_dir=workflows,
        write_runtime_file=False,
    )
    await service.start()
    try:
        assert service.admin_token is not None
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.orchestrator_load",
            "--submit-client",
            service.http_url,
            service.admin_token,
            str(count),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"the submit client failed ({proc.returncode})")
        raw: dict[str, Any] = json.loads(out)
        jobs = await asyncio.to_thread(service.orchestrator.jobs, None, limit=count + 100)
    finally:
        await service.stop()
    lat = raw["submit_s"]
    return {
        "count": count,
        "p50_s": statistics.median(lat),
        "p95_s": _pct(lat, 0.95),
        "rate": count / raw["elapsed_s"],
        "health_p50_s": statistics.median(raw["health_s"]),
        "health_max_s": max(raw["health_s"]),
        "stored": len(jobs),
    }


# --------------------------------------------------------------------------- the robots


class _FakeRobot:
    """One robot on the WebSocket protocol that only reports (no kernel, no checkpoint)."""

    _ids = itertools.count()

    def __init__(self, url: str, robot_id: str, token: str, capacity: int) -> None:
        self.url = url
        self.robot_id = robot_id
        self.token = token
        self.capacity = capacity
        self.prefix = f"{robot_id}-{secrets.token_hex(3)}-"
        self.running: dict[str, int] = {}
        self.assigned = 0
        self.completed = 0
        self.progress = 0
        self.errors: list[str] = []
        self.connected = asyncio.Event()

    def _msg(self, kind: str, **fields: Any) -> str:
        body = {
            "type": kind,
            "id": f"{self.prefix}{next(self._ids)}",
            "ts": datetime.now(UTC).isoformat(),
            **fields,
        }
        return json.dumps(body)

    async def run(self, stop: asyncio.Event) -> None:
        from websockets.asyncio.client import connect

        async with connect(
            self.url,
            additional_headers={"Authorization": f"Bearer {self.token}"},
            max_size=None,
        ) as ws:
            await ws.send(
                self._msg(
                    "register",
                    robot_id=self.robot_id,
                    name=self.robot_id,
                    max_concurrent_jobs=self.capacity,
                    protocol_version=2,
                )
            )
            ack = json.loads(await ws.recv())
            if ack.get("type") != "register_ack" or not ack.get("accepted"):
                raise RuntimeError(f"{self.robot_id} not registered: {ack}")
            self.connected.set()
            beat = asyncio.create_task(self._heartbeats(ws, float(ack["heartbeat_interval_s"])))
            jobs: set[asyncio.Task[None]] = set()
            reader = asyncio.create_task(self._read(ws, jobs))
            await stop.wait()
            beat.cancel()
            reader.cancel()
            for task in [beat, reader, *jobs]:
                task.cancel()
            await asyncio.gather(beat, reader, *jobs, return_exceptions=True)

    async def _heartbeats(self, ws: Any, interval: float) -> None:
        for seq in itertools.count():
            await asyncio.sleep(interval)
            running = [{"job_id": j, "attempt": a} for j, a in self.running.items()]
            status = "busy" if len(running) >= self.capacity else "online"
            await ws.send(
                self._msg(
                    "heartbeat",
                    robot_id=self.robot_id,
                    status=status,
                    running_jobs=running,
                    seq=seq,
                )
            )

    async def _read(self, ws: Any, jobs: set[asyncio.Task[None]]) -> None:
        async for frame in ws:
            msg = json.loads(frame)
            kind = msg.get("type")
            if kind == "job_assign":
                self.assigned += 1
                task = asyncio.create_task(self._job(ws, msg))
                jobs.add(task)
                task.add_done_callback(jobs.discard)
            elif kind == "error":
                self.errors.append(f"{msg.get('code')}: {msg.get('message')}")

    async def _job(self, ws: Any, assign: dict[str, Any]) -> None:
        job_id, attempt = assign["job_id"], assign["attempt"]
        self.running[job_id] = attempt
        accept = self._msg("job_accept", job_id=job_id, attempt=attempt, reply_to=assign["id"])
        await ws.send(accept)
        notebook = assign["notebook"]
        cells = [c for c in notebook["cells"] if c.get("cell_type") == "code"]
        total = len(cells)
        for done, cell in enumerate(cells, 1):
            now = datetime.now(UTC).isoformat()
            executed = {
                **cell,
                "execution_count": done,
                "outputs": [{"output_type": "stream", "name": "stdout", "text": f"{done}\n"}],
                "metadata": {**cell.get("metadata", {}), "casare": {"status": "ok"}},
            }
            cell.update(executed)
            await ws.send(
                self._msg(
                    "job_progress",
                    job_id=job_id,
                    attempt=attempt,
                    cell_index=done - 1,
                    cell_id=cell.get("id"),
                    status="ok",
                    duration_s=0.001,
                    cells_done=done,
                    cells_total=total,
                    started_at=now,
                    cell=executed,
                )
            )
            self.progress += 1
        await ws.send(
            self._msg(
                "job_complete",
                job_id=job_id,
                attempt=attempt,
                output_notebook=notebook,
                duration_s=0.05,
            )
        )
        self.running.pop(job_id, None)
        self.completed += 1


async def _robots_main() -> None:
    """The fake robots' process: setup ``{"url", "robots": [{"robot_id", "token"}],
    "capacity"}`` on stdin; ``{"event": "connected"}`` once all registered; ``stop`` on stdin
    ends them and prints their counts."""
    setup = json.loads(await asyncio.to_thread(sys.stdin.readline))
    stop = asyncio.Event()
    robots = [
        _FakeRobot(setup["url"], r["robot_id"], r["token"], int(setup["capacity"]))
        for r in setup["robots"]
    ]
    tasks = [asyncio.create_task(robot.run(stop)) for robot in robots]
    await asyncio.gather(*(robot.connected.wait() for robot in robots))
    print(json.dumps({"event": "connected"}), flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    stop.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    report = {
        "event": "stopped",
        "assigned": sum(r.assigned for r in robots),
        "completed": sum(r.completed for r in robots),
        "progress": sum(r.progress for r in robots),
        "errors": [e for r in robots for e in r.errors][:20],
        "failures": [repr(r) for r in results if isinstance(r, BaseException)],
    }
    print(json.dumps(report), flush=True)


# --------------------------------------------------------------------------- cells


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _bulk_jobs(path: Path, count: int) -> list[Job]:
    now = datetime.now(UTC)
    stem = f"{now:%Y%m%d-%H%M%S}-load{secrets.token_hex(2)}"
    return [
        Job(job_id=f"{stem}-{i:05d}", workflow_path=str(path), created_at=now, eligible_at=now)
        for i in range(count)
    ]


async def _cells_run(
    work: Path, total: int, budget_s: float, profile: cProfile.Profile | None
) -> dict[str, Any]:
    path = nbs.write_notebook(
        work / "cells.ipynb", [f"x{i} = {i}  # cell {i}" for i in range(CELLS)]
    )
    orch = Orchestrator(work / "state", port=0)
    watch = JobWatch(orch)
    proc: asyncio.subprocess.Process | None = None
    try:
        await orch.start()
        tokens = await robot_tokens(orch, [f"load-robot-{i}" for i in range(ROBOTS)])
        await asyncio.to_thread(orch.stores.jobs.add_jobs, _bulk_jobs(path, total))
        rss_start = _rss()
        samples: list[tuple[int, float]] = []
        warm = asyncio.Event()
        done = asyncio.Event()

        def finished(_job_id: str) -> None:
            n = len(watch.finished_at)
            if n % 500 == 0:
                samples.append((n, psutil.Process().memory_info().rss / (1 << 20)))
            if n >= min(WARM_JOBS, total // 5):
                warm.set()
            if n >= total:
                done.set()

        watch.on_finished = finished
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.orchestrator_load",
            "--robots",
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None
        setup = {"url": orch.url, "robots": tokens, "capacity": CAPACITY}
        proc.stdin.write(json.dumps(setup).encode() + b"\n")
        await proc.stdin.drain()
        robots_ps = psutil.Process(proc.pid)
        cpu0 = psutil.Process().cpu_times()
        robots_cpu0 = robots_ps.cpu_times()
        if profile is not None:
            profile.enable()
        start = time.perf_counter()
        await asyncio.wait_for(proc.stdout.readline(), 30)  # connected
        await warm.wait()
        warm_jobs = len(watch.finished_at)
        warm_at = time.perf_counter()
        rss_warm = _rss()
        try:
            await asyncio.wait_for(done.wait(), budget_s)
            complete = True
        except TimeoutError:
            complete = False
        finished_n = len(watch.finished_at)
        await asyncio.to_thread(orch.job_manager.flush_history, 120)
        end = time.perf_counter()
        if profile is not None:
            profile.disable()
        cpu1 = psutil.Process().cpu_times()
        robots_cpu1 = robots_ps.cpu_times()
        rss_end = _rss()
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
        report = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        await asyncio.wait_for(proc.wait(), 30)
        proc = None
        jobs_store = orch.stores.jobs
        assert isinstance(jobs_store, SqlJobStore)
        rows = await asyncio.to_thread(
            jobs_store.db.select,
            "SELECT (SELECT count(*) FROM cells), "
            "(SELECT count(*) FROM runs WHERE status = 'completed'), "
            "(SELECT count(*) FROM jobs WHERE status = 'completed')",
        )
        cells_rows, runs_completed, jobs_completed = (int(v) for v in rows[0])
        # notebooks so far still held: the store's (before issue 14) or the job manager's
        kept = len(getattr(orch.stores.checkpoints, "_outputs", {}))
        kept += len(getattr(orch.job_manager.book, "sofar", ()))
        return {
            "total": total,
            "cells": CELLS,
            "complete": complete,
            "finished": finished_n,
            "elapsed_s": end - start,
            "cells_rows": cells_rows,
            "runs_completed": runs_completed,
            "jobs_completed": jobs_completed,
            "warm_jobs": warm_jobs,
            "after_warm_s": end - warm_at,
            "rss_start": rss_start,
            "rss_warm": rss_warm,
            "rss_end": rss_end,
            "rss_samples_mb": samples,
            "notebooks_kept": kept,
            "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            "robots_cpu_s": (robots_cpu1.user + robots_cpu1.system)
            - (robots_cpu0.user + robots_cpu0.system),
            "report": report,
        }
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await orch.stop()


# --------------------------------------------------------------------------- main


def _profile_text(profile: cProfile.Profile) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative").print_stats(60)
    stats.sort_stats("tottime").print_stats(40)
    return out.getvalue()


def main(
    quick: bool = False, profile: bool = False, jobs: int | None = None, runs: int | None = None
) -> dict[str, Any]:
    runs = runs if runs is not None else 2 if quick else 3
    submits = 150 if quick else 400
    total = jobs if jobs is not None else 2_000 if quick else 10_000
    budget = 60.0 if quick else 240.0
    submit_runs: list[dict[str, Any]] = []
    for i in range(runs):
        print(f"  [load] submit run {i + 1}/{runs}", file=sys.stderr, flush=True)
        with nbs.temp_dir("load-submit") as work:
            submit_runs.append(asyncio.run(_submit_run(work, submits)))
    prof = cProfile.Profile() if profile else None
    print(f"  [load] {total} jobs of {CELLS} cells", file=sys.stderr, flush=True)
    with nbs.temp_dir("load-cells") as work:
        cells = asyncio.run(_cells_run(work, total, budget, prof))
    if prof is not None:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "orchestrator_load_profile.txt").write_text(_profile_text(prof), encoding="utf-8")

    p50 = nbs.median([r["p50_s"] for r in submit_runs])
    p95 = nbs.median([r["p95_s"] for r in submit_runs])
    rate = nbs.median([r["rate"] for r in submit_runs])
    health = nbs.median([r["health_p50_s"] for r in submit_runs])
    health_max = max(r["health_max_s"] for r in submit_runs)
    stored_ok = all(r["stored"] >= r["count"] for r in submit_runs)
    rows_rate = cells["cells_rows"] / cells["elapsed_s"] if cells["elapsed_s"] > 0 else 0.0
    expected_rows = cells["finished"] * CELLS
    after = cells["finished"] - cells["warm_jobs"]
    growth = cells["rss_end"] - cells["rss_warm"]
    per_1000 = growth / after * 1000 if after > 0 else 0.0
    report = cells["report"]
    clean = (
        cells["complete"]
        and cells["cells_rows"] == cells["total"] * CELLS
        and cells["jobs_completed"] == cells["total"]
        and cells["runs_completed"] == cells["total"]
        and report["completed"] == cells["total"]
        and not report["errors"]
        and not report["failures"]
    )
    drain = f"{cells['finished']} of {cells['total']} jobs x {CELLS} cells" + (
        "" if cells["complete"] else " (time budget ran out)"
    )
    rows = [
        [
            "submit over HTTP, one sequential client (p50 / p95)",
            f"{submits} `POST /api/jobs` x {runs} runs, keep-alive, each answered once committed",
            f"{common.ms(p50, 2)} / {common.ms(p95, 2)}",
            ", ".join(f"{r['p50_s'] * 1000:.2f}" for r in submit_runs) + " ms (p50 per run)",
        ],
        [
            "submits/s, one sequential client",
            "same runs",
            f"{rate:.0f} /s",
            ", ".join(f"{r['rate']:.0f}" for r in submit_runs),
        ],
        [
            "keep-alive `GET` of an unknown path, 404 (p50 / max)",
            "100 per run, same connection: the transport alone (a Nagle / delayed-ACK stall "
            "shows as ~40 ms)",
            f"{common.ms(health, 2)} / {common.ms(health_max, 1)}",
            "",
        ],
        [
            "cell rows recorded end to end",
            f"{drain}, {ROBOTS} fake robots x {CAPACITY} slots: connect -> every job "
            "finished and every cell row committed",
            f"{rows_rate:,.0f} rows/s",
            f"{cells['cells_rows']:,} rows in {cells['elapsed_s']:.1f} s",
        ],
        [
            "orchestrator RSS (after gc)",
            f"start / after {cells['warm_jobs']} jobs / after {cells['finished']} jobs",
            f"{common.mb(cells['rss_start'])} / {common.mb(cells['rss_warm'])} / "
            f"{common.mb(cells['rss_end'])}",
            f"{per_1000 / (1 << 20):+.1f} MB per 1,000 jobs after the warm-up",
        ],
        [
            "integrity",
            f"{cells['jobs_completed']} jobs completed, {cells['runs_completed']} runs "
            f"completed, {cells['cells_rows']:,} cell rows (expected {expected_rows:,}); "
            f"robots: {report['completed']} completed, {report['progress']:,} job_progress "
            f"sent, {len(report['errors'])} errors",
            "ok" if clean else "**problem**",
            "; ".join(report["errors"][:3]),
        ],
    ]
    targets = [
        common.target(
            f"submit over HTTP p50 <= {SUBMIT_P50_MS:.0f} ms (one sequential client, durable)",
            f"p50 {common.ms(p50, 2)} (p95 {common.ms(p95, 2)})",
            p50 <= SUBMIT_P50_MS / 1000 and stored_ok,
        ),
        common.target(
            f">= {SUBMIT_RATE:.0f} submits/s from one sequential client",
            f"{rate:.0f} submits/s",
            rate >= SUBMIT_RATE and stored_ok,
        ),
        common.target(
            f">= {CELL_RATE:,.0f} cell rows/s end to end (protocol-level robots)",
            f"{rows_rate:,.0f} rows/s",
            rows_rate >= CELL_RATE and clean,
        ),
        common.target(
            f"orchestrator memory flat over {cells['total']:,} jobs "
            f"(<= {FLAT_MB_PER_1000:.0f} MB per 1,000 jobs after the first {WARM_JOBS})",
            f"{common.mb(cells['rss_warm'])} -> {common.mb(cells['rss_end'])} "
            f"({per_1000 / (1 << 20):+.1f} MB per 1,000 jobs)",
            per_1000 <= FLAT_MB_PER_1000 * (1 << 20) and cells["complete"],
        ),
    ]
    notes = [
        "Submit: `OrchestratorService` (WebSocket + HTTP API) in the benchmark process; the "
        "client (`httpx.Client`, one keep-alive connection) in a process of its own, 20 "
        "warm-up submits first. A 1-cell workflow without parameters; no robot, so the "
        "queue grows by the submits. A submit is answered only after the job's insert is "
        "committed to DuckDB (the job store's writer is hurried by the waiting submit).",
        f"Cells: `Orchestrator` (no HTTP) in the benchmark process; {ROBOTS} fake robots "
        f"({CAPACITY} slots each) in one process of their own speak the WebSocket protocol "
        "(register, heartbeats, job_accept, one job_progress per cell with the executed cell, "
        "job_complete with the output notebook) and run nothing. "
        f"{cells['total']:,} jobs of {CELLS} cells queued in bulk (`JobStore.add_jobs`).",
        "RSS: psutil, after `gc.collect()`, of the benchmark process (the orchestrator; the "
        f"robots and the client are other processes); warm-up = the first {WARM_JOBS} jobs "
        "(DuckDB's buffers and the allocator's arenas grow while the tables are new).",
        f"Runs: submit {runs} runs, medians; cells 1 run of {cells['total']:,} jobs.",
    ]
    findings: list[str] = []
    return {
        "name": "orchestrator_load",
        "title": "16. Orchestrator under load: HTTP submits, cell reports, memory",
        "command": COMMAND,
        "runs": f"submit: {runs} runs of {submits}; cells: 1 run of {cells['total']} jobs",
        "columns": ["measure", "what", "result", "detail"],
        "rows": rows,
        "targets": targets,
        "notes": notes,
        "findings": findings,
        "raw": {
            "submit_runs": submit_runs,
            "submit_p50_s": p50,
            "submit_p95_s": p95,
            "submit_rate": rate,
            "health_p50_s": health,
            "cells": {k: v for k, v in cells.items()},
            "cell_rows_rate": rows_rate,
            "rss_per_1000_jobs": per_1000,
        },
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["--submit-client"]:
        _client_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif sys.argv[1:2] == ["--robots"]:
        asyncio.run(_robots_main())
    else:
        args = sys.argv[1:]
        jobs = int(args[args.index("--jobs") + 1]) if "--jobs" in args else None
        runs = int(args[args.index("--runs") + 1]) if "--runs" in args else None
        result = main("--quick" in args, profile="--profile" in args, jobs=jobs, runs=runs)
        print(json.dumps(result, indent=1, default=str))
