"""Benchmark 18: orchestrators on PostgreSQL (issue 15's figures).

A throwaway PostgreSQL 15 cluster (Debian's binaries, started as the ``postgres`` user as
the tests do: ``tests/postgres.py``), then, in one run:

1. **dispatch throughput**, no-op jobs, 4 robots (benchmark 6's drain): one orchestrator on
   its DuckDB file, then one on PostgreSQL, side by side;
2. **the active orchestrator SIGKILLed** while 20 jobs run: two ``casare-nb orchestrator``
   processes on the database (``a`` active, ``b`` standing by), two ``casare-nb robot``
   processes given both addresses (2 jobs at a time each, real kernels); ``a`` is killed
   once 4 jobs run. Measured: the kill -> ``b`` serving (its runtime file) -> both robots
   registered with ``b``; then every job's outcome: completed once, lost, run twice (a job
   completed more than once, or cell rows of one attempt recorded twice);
3. **the active orchestrator SIGKILLed across a due time**: a schedule due 2 s after the
   kill; how many jobs it made (must be 1) and how late it fired;
4. **PostgreSQL restarted under load**: one orchestrator, one robot, a client submitting a
   job every 50 ms while the server is stopped (``-m immediate``) and started again: every
   submission answered 201 is completed once; the others were refused with 503 (nothing was
   acknowledged for them).

    .venv/bin/python -m bench.scale_out [--quick]
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import common
from bench import dispatch_throughput as dispatch
from bench import notebooks as nbs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import psycopg  # noqa: E402
from helpers import write_notebook  # noqa: E402  (the process helpers live with the tests)
from jupyter_harness import free_port  # noqa: E402
from postgres import PgServer, throwaway_server  # noqa: E402
from test_cli_service import Proc  # noqa: E402

from casare_nb import Client, ClientError  # noqa: E402
from casare_nb.core.models import RunStatus  # noqa: E402
from casare_nb.protocol import EventKind  # noqa: E402

COMMAND = ".venv/bin/python -m bench.scale_out"
FAILOVER_JOBS = 20
BACK_TARGET_S = 5.0
LATE_TARGET_S = 5.0


def _orchestrator(base: Path, store: str, node: str, ports: tuple[int, int]) -> Proc:
    (base / "workflows").mkdir(exist_ok=True)
    (base / "orchestrator.yaml").write_text("reconnect_grace_s: 1.0\n")
    return Proc(
        base,
        "orchestrator",
        "--store",
        store,
        "--node-id",
        node,
        "--port",
        str(ports[0]),
        "--http-port",
        str(ports[1]),
        "--workflows",
        "workflows",
        "--log-level",
        "warning",
    )


def _robot(base: Path, urls: str, token: str, robot_id: str, slots: int) -> Proc:
    return Proc(
        base,
        "robot",
        "--orchestrator",
        urls,
        "--token",
        token,
        "--robot-id",
        robot_id,
        "--max-jobs",
        str(slots),
        "--work-dir",
        str(base / robot_id),
        "--log-level",
        "warning",
    )


def _pair(base: Path, url: str) -> tuple[Proc, Proc, str]:
    """Orchestrators a (active) and b (standing by) on ``url``; the robots' address list."""
    ports = {name: (free_port(), free_port()) for name in ("a", "b")}
    a = _orchestrator(base, url, "a", ports["a"])
    a.expect("runtime file")
    b = _orchestrator(base, url, "b", ports["b"])
    b.expect("standby:")
    return a, b, ",".join(f"ws://127.0.0.1:{ws}" for ws, _ in ports.values())


def _online(client: Client, robot_ids: set[str]) -> bool:
    return robot_ids <= {r.robot_id for r in client.robots() if r.status != "offline"}


def _failover(server: PgServer, work: Path) -> dict[str, Any]:
    url = server.new_database()
    (work / "workflows").mkdir(parents=True)
    write_notebook(
        work / "workflows" / "steps.ipynb",
        [f"import time; time.sleep(0.3); step = {i}" for i in range(4)],
    )
    a, b, urls = _pair(work, url)
    procs = [a, b]
    try:
        with Client.local(work / "state") as client:
            robots = {"r1", "r2"}
            tokens = {r: client.create_token(r, "robot") for r in sorted(robots)}
            with client.subscribe(("jobs", "robots")) as events:
                procs += [_robot(work, urls, tokens[r], r, 2) for r in sorted(robots)]
                while not _online(client, robots):
                    events.receive(timeout=60)
                ids = [client.submit("steps.ipynb").job_id for _ in range(FAILOVER_JOBS)]
                running: set[str] = set()
                while len(running) < 4:
                    event = events.receive(timeout=60)
                    job = getattr(event.data, "job", None)
                    if event.kind is EventKind.JOB_STARTED and job is not None:
                        running.add(job.job_id)
        a.kill()
        killed = time.monotonic()
        b.expect("runtime file", timeout=60)
        serving_s = time.monotonic() - killed
        with Client.local(work / "state") as client:
            with client.subscribe(("robots",)) as events:
                while not _online(client, robots):
                    events.receive(timeout=60)
            back_s = time.monotonic() - killed
            finished = [client.wait(job_id, timeout=300) for job_id in ids]
        b.popen.terminate()
        b.wait(120)
    finally:
        for proc in reversed(procs):
            proc.kill()
    with psycopg.connect(url) as con:
        completed = con.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").fetchone()
        attempts = con.execute(
            "SELECT attempt, count(*) FROM jobs GROUP BY attempt ORDER BY attempt"
        ).fetchall()
        runs = con.execute("SELECT count(*) FROM runs WHERE status = 'completed'").fetchone()
        cells = con.execute("SELECT count(DISTINCT (run_id, attempt)) FROM cells").fetchone()
    statuses = [j.status for j in finished]
    return {
        "serving_s": serving_s,
        "back_s": back_s,
        "jobs": FAILOVER_JOBS,
        "completed": statuses.count(RunStatus.COMPLETED),
        "completed_rows": completed[0] if completed else 0,
        "completed_runs": runs[0] if runs else 0,
        "attempts": {int(k): int(v) for k, v in attempts},
        "attempts_with_cells": cells[0] if cells else 0,
        "lost": FAILOVER_JOBS - statuses.count(RunStatus.COMPLETED),
    }


def _due_time(server: PgServer, work: Path) -> dict[str, Any]:
    url = server.new_database()
    (work / "workflows").mkdir(parents=True)
    write_notebook(work / "workflows" / "tick.ipynb", ["x = 1"])
    a, b, urls = _pair(work, url)
    procs = [a, b]
    try:
        with Client.local(work / "state") as client:
            token = client.create_token("r1", "robot")
            due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
            schedule = client.add_schedule("tick.ipynb", at=due.replace(tzinfo=None)).schedule
        procs.append(_robot(work, urls, token, "r1", 1))
        a.kill()
        b.expect("runtime file", timeout=60)
        with Client.local(work / "state") as client, client.subscribe(("jobs",)) as events:
            while not (fires := client.fires(schedule.schedule_id)) or fires[0].job_id is None:
                events.receive(timeout=60)
            fire = fires[0]
            assert fire.job_id is not None
            done = client.wait(fire.job_id, timeout=120)
        b.popen.terminate()
        b.wait(120)
    finally:
        for proc in reversed(procs):
            proc.kill()
    with psycopg.connect(url) as con:
        jobs = con.execute("SELECT count(*) FROM jobs WHERE trigger IS NOT NULL").fetchone()
    return {
        "fires": len(fires),
        "jobs": jobs[0] if jobs else 0,
        "late_s": (fire.fired_at - fire.due_at).total_seconds(),
        "completed": done.status is RunStatus.COMPLETED,
    }


def _restart(server: PgServer, work: Path, submits: int) -> dict[str, Any]:
    url = server.new_database()
    (work / "workflows").mkdir(parents=True)
    write_notebook(work / "workflows" / "tick.ipynb", ["x = 1"])
    ports = (free_port(), free_port())
    orch = _orchestrator(work, url, "a", ports)
    procs = [orch]
    acked: list[str] = []
    refused: list[str] = []
    try:
        orch.expect("runtime file")
        with Client.local(work / "state") as client:
            token = client.create_token("r1", "robot")
            procs.append(_robot(work, f"ws://127.0.0.1:{ports[0]}", token, "r1", 2))
            restart = threading.Thread(target=server.restart)
            for i in range(submits):
                if i == submits // 4:
                    restart.start()
                try:
                    acked.append(client.submit("tick.ipynb").job_id)
                except ClientError as exc:
                    refused.append(str(exc))
                time.sleep(0.05)
            restart.join()
            finished = [client.wait(job_id, timeout=300) for job_id in acked]
        orch.popen.terminate()
        orch.wait(120)
    finally:
        for proc in reversed(procs):
            proc.kill()
    with psycopg.connect(url) as con:
        rows = con.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").fetchone()
    return {
        "submits": submits,
        "acked": len(acked),
        "refused": len(refused),
        "refusals": sorted({r.split(":")[0] for r in refused})[:3],
        "completed": sum(1 for j in finished if j.status is RunStatus.COMPLETED),
        "completed_rows": rows[0] if rows else 0,
    }


def main(quick: bool = False) -> dict[str, Any]:
    reps = 1 if quick else 3
    total = 1_000 if quick else 3_000
    raw: dict[str, Any] = {"dispatch": {}, "failover": [], "due": []}
    with throwaway_server() as server:
        for name, store in (("duckdb", None), ("postgresql", "pg")):
            with nbs.temp_dir(f"scale-dispatch-{name}") as work:
                url = server.new_database() if store else None
                print(f"  [scale-out] dispatch on {name}", file=sys.stderr, flush=True)
                measured = asyncio.run(dispatch._measure(work, total, 100, 60.0, None, url))
                raw["dispatch"][name] = {"raw": measured, "check": dispatch._check(measured)}
        for i in range(reps):
            print(f"  [scale-out] failover {i + 1}/{reps}", file=sys.stderr, flush=True)
            with nbs.temp_dir("scale-failover") as work:
                raw["failover"].append(_failover(server, work))
            print(f"  [scale-out] due time {i + 1}/{reps}", file=sys.stderr, flush=True)
            with nbs.temp_dir("scale-due") as work:
                raw["due"].append(_due_time(server, work))
        print("  [scale-out] server restart", file=sys.stderr, flush=True)
        with nbs.temp_dir("scale-restart") as work:
            raw["restart"] = _restart(server, work, 40 if quick else 80)
    return _report(raw, reps)


def _rate(entry: dict[str, Any]) -> float:
    measured = entry["raw"]
    return float(measured["finished"] / measured["drain_s"]) if measured["drain_s"] else 0.0


def _report(raw: dict[str, Any], reps: int) -> dict[str, Any]:
    duck, pg = raw["dispatch"]["duckdb"], raw["dispatch"]["postgresql"]
    duck_rate, pg_rate = _rate(duck), _rate(pg)
    fails, dues, restart = raw["failover"], raw["due"], raw["restart"]
    back = nbs.median([f["back_s"] for f in fails])
    serving = nbs.median([f["serving_s"] for f in fails])
    lost = sum(f["lost"] for f in fails)
    twice = sum(max(0, f["completed_rows"] - f["jobs"]) for f in fails) + sum(
        max(0, f["completed_runs"] - f["jobs"]) for f in fails
    )
    late = max(d["late_s"] for d in dues)
    fired_once = all(d["fires"] == 1 and d["jobs"] == 1 and d["completed"] for d in dues)
    restart_ok = restart["completed"] == restart["acked"] == restart["completed_rows"]

    def clean(entry: dict[str, Any]) -> str:
        check = entry["check"]
        return f"run twice {check['n_run_twice']}, lost {check['n_lost']}"

    rows = [
        [
            "dispatch, one orchestrator on DuckDB (4 no-op robots)",
            f"{duck['raw']['finished']} jobs; {clean(duck)}",
            f"{duck_rate:.0f} jobs/s",
            "1.00x",
        ],
        [
            "dispatch, one orchestrator on PostgreSQL (4 no-op robots)",
            f"{pg['raw']['finished']} jobs; {clean(pg)}",
            f"{pg_rate:.0f} jobs/s",
            common.ratio(pg_rate / duck_rate) if duck_rate else "-",
        ],
        [
            f"active orchestrator SIGKILLed, {FAILOVER_JOBS} jobs running on 2 robots",
            f"standby serving after {common.sec(serving)}, robots registered with it after "
            f"{common.sec(back)} (medians of {reps})",
            f"lost {lost}, run twice {twice}",
            "attempts: "
            + "; ".join(
                ", ".join(f"{k}: {v}" for k, v in sorted(f["attempts"].items())) for f in fails
            ),
        ],
        [
            "active orchestrator SIGKILLed 3 s before a due time",
            f"fires per due time: {[d['fires'] for d in dues]}, jobs: {[d['jobs'] for d in dues]}",
            f"latest {late:+.2f} s",
            "a negative lateness: fired ahead of the due time (the scheduler fires 0.5 s ahead)",
        ],
        [
            "PostgreSQL restarted under load (a submit every 50 ms)",
            f"{restart['submits']} submitted: {restart['acked']} acknowledged, "
            f"{restart['refused']} refused (503)",
            f"{restart['completed']} of {restart['acked']} acknowledged completed",
            ", ".join(restart["refusals"]) or "",
        ],
    ]
    targets = [
        common.target(
            "two orchestrators >= 1.5x one on PostgreSQL (dispatch)",
            "not measurable: one orchestrator of a database is active at a time (the others "
            f"stand by); one on PostgreSQL: {pg_rate:.0f} jobs/s",
            False,
        ),
        common.target(
            f"SIGKILL the active one of two while {FAILOVER_JOBS} jobs run: 0 lost, 0 twice; "
            f"robots back <= {BACK_TARGET_S:g} s",
            f"lost {lost}, twice {twice}; robots back after {common.sec(back)} (median)",
            lost == 0 and twice == 0 and back <= BACK_TARGET_S,
        ),
        common.target(
            f"SIGKILL the scheduler's node across a due time: fires once, <= {LATE_TARGET_S:g} s "
            "late",
            f"fired once: {fired_once}; latest {late:+.2f} s",
            fired_once and late <= LATE_TARGET_S,
        ),
        common.target(
            "PostgreSQL restarted under load: nothing acknowledged lost",
            f"{restart['completed']} of {restart['acked']} acknowledged jobs completed, "
            f"{restart['completed_rows']} completed rows",
            restart_ok,
        ),
    ]
    notes = [
        "PostgreSQL 15 (Debian) on 127.0.0.1 with fsync=off (a process crash loses nothing, "
        "the machine's crash could): the tests' throwaway cluster.",
        "Dispatch: benchmark 6's drain (4 robots of 1 slot in one process, no-op jobs, "
        "100 submitted one at a time, the rest queued in bulk); the orchestrator in this "
        "process, on its DuckDB file or on a new database of the cluster.",
        "Failover: `casare-nb orchestrator` processes `a` and `b` on one database and one "
        "state directory (shared checkpoint files), `reconnect_grace_s` 1 s; "
        "`casare-nb robot` processes with both addresses (`--orchestrator ws://a,ws://b`); "
        "4-cell jobs of 0.3 s a cell; SIGKILL of `a` once 4 jobs run.",
        f"Repetitions: failover and due time {reps} each (medians), one restart run.",
    ]
    return {
        "name": "scale_out",
        "title": "18. Orchestrators on PostgreSQL: dispatch, failover, schedules, restarts",
        "command": COMMAND,
        "runs": f"{reps} failovers, {reps} due times, 1 restart, 1 drain per store",
        "columns": ["what", "measured", "result", "detail"],
        "rows": rows,
        "targets": targets,
        "notes": notes,
        "findings": [],
        "raw": raw,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main("--quick" in sys.argv), indent=1, default=str))
