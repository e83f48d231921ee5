"""Benchmark 18: orchestrators on PostgreSQL (issue 15's figures).

A throwaway PostgreSQL 15 cluster (Debian's binaries, started as the ``postgres`` user as
the tests do: ``tests/postgres.py``), then, in one run:

1. **dispatch throughput**, no-op jobs, 4 robots: benchmark 6's drain (one orchestrator in
   this process) on its DuckDB file and on PostgreSQL; then ``casare-nb orchestrator``
   processes on PostgreSQL, **one node, then two** (the 4 robots split between them, in a
   process per node), 10,000 jobs queued in bulk, timed until the database says every one
   completed; every job's attempts and the robots' own counts say whether one ran twice;
2. **an orchestrator SIGKILLed** while 20 jobs run: two ``casare-nb orchestrator``
   processes on the database (``a`` leading, ``b``), two ``casare-nb robot`` processes given
   both addresses (2 jobs at a time each, real kernels, on ``a`` first); ``a`` is killed
   once 4 jobs run. Measured: the kill -> ``b`` leading (its runtime file) -> both robots
   registered with ``b``; then every job's outcome: completed once, lost, run twice (a job
   completed more than once, or cell rows of one attempt recorded twice);
3. **the leader SIGKILLed across a due time**: a schedule due 3 s after it is made, the
   leader killed at once; how many jobs it made (must be 1; more than one fire of the due
   time fails the run) and how late it fired;
4. **PostgreSQL restarted under load**: one orchestrator, one robot, a client submitting a
   job every 50 ms while the server is stopped (``-m immediate``) and started again: every
   submission answered 201 is completed once; the others were refused with 503 (nothing was
   acknowledged for them).

    .venv/bin/python -m bench.scale_out [--quick]
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench import common
from bench import dispatch_throughput as dispatch
from bench import notebooks as nbs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import psutil  # noqa: E402
import psycopg  # noqa: E402
from helpers import write_notebook  # noqa: E402  (the process helpers live with the tests)
from jupyter_harness import free_port  # noqa: E402
from nodes import (  # noqa: E402
    LEADS,
    due_time_across_a_kill,
    expect_all,
    kill_the_active_one,
    orchestrator_node,
    robot_process,
)
from postgres import PgServer, throwaway_server  # noqa: E402

from bench.cluster import RobotProcess  # noqa: E402
from casare_nb import Client, ClientError  # noqa: E402
from casare_nb.core.models import RunStatus  # noqa: E402
from casare_nb.core.tokens import TokenRole  # noqa: E402
from casare_nb.store.jobs import SqlJobStore  # noqa: E402
from casare_nb.store.postgres import open_postgres  # noqa: E402

COMMAND = ".venv/bin/python -m bench.scale_out"
ROBOTS = 4
DRAIN_BUDGET_S = 120.0
FAILOVER_JOBS = 20
BACK_TARGET_S = 5.0
LATE_TARGET_S = 5.0


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes ``pids`` used so far (gone ones: 0)."""
    used = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        used += times.user + times.system
    return used


class _Cpu:
    """CPU use of the drain's parts, from a start to an end: the orchestrator nodes, the
    robots' processes, PostgreSQL's server processes (backends started meanwhile count from
    0), this process (it polls), and the whole machine (busy share of every core)."""

    def __init__(self, nodes: list[int], robots: list[int]) -> None:
        self.groups = {"nodes": nodes, "robots": robots, "bench": [os.getpid()]}
        self.start = {name: _cpu_s(pids) for name, pids in self.groups.items()}
        self.start["postgres"] = _cpu_s(_postgres_pids())
        self._machine = psutil.cpu_times()
        self._wall = time.perf_counter()

    def end(self, jobs: int) -> dict[str, Any]:
        wall = time.perf_counter() - self._wall
        machine = psutil.cpu_times()
        busy = sum(machine) - machine.idle - machine.iowait
        busy_before = sum(self._machine) - self._machine.idle - self._machine.iowait
        used = {name: _cpu_s(pids) - self.start[name] for name, pids in self.groups.items()}
        used["postgres"] = _cpu_s(_postgres_pids()) - self.start["postgres"]
        return {
            "machine_busy_pct": 100 * (busy - busy_before) / (wall * (psutil.cpu_count() or 1)),
            "per_job_ms": {name: 1e3 * s / jobs for name, s in used.items()} if jobs else {},
        }


def _postgres_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]


async def _drain_nodes(server: PgServer, work: Path, nodes: int, total: int) -> dict[str, Any]:
    """``nodes`` orchestrator processes on a new database, 4 no-op robots split between
    them, ``total`` jobs queued in bulk: the drain time and what ran twice (see the module
    docstring)."""
    url = server.new_database()
    (work / "workflows").mkdir(parents=True, exist_ok=True)
    path = nbs.write_notebook(work / "workflows" / "noop.ipynb", ["x = 1"])
    names = [chr(ord("a") + i) for i in range(nodes)]
    ports = {name: (free_port(), free_port()) for name in names}
    procs = []
    robots: list[RobotProcess] = []
    stores = open_postgres(url, work / "state")
    jobs = stores.jobs
    assert isinstance(jobs, SqlJobStore)
    try:
        for name in names:
            procs.append(orchestrator_node(work, url, name, ports[name]))
            if name == "a":
                expect_all(procs[-1], LEADS, "orchestrator ready")
            else:
                procs[-1].expect("orchestrator ready")
        for i, name in enumerate(names):
            ids = [f"robot-{k}" for k in range(ROBOTS) if k % nodes == i]
            tokens = [
                {"robot_id": rid, "token": stores.tokens.create_token(rid, TokenRole.ROBOT)}
                for rid in ids
            ]
            setup = {
                "url": f"ws://127.0.0.1:{ports[name][0]}",
                "mode": "noop",
                "robots": tokens,
                "capacity": 1,
            }
            robots.append(await RobotProcess.start(setup, work / f"robots-{name}"))
        for group in robots:
            await group.event("prepared")
        jobs.owner = "bench"  # the bulk insert is announced to the nodes
        await asyncio.to_thread(jobs.add_jobs, dispatch._bulk_jobs(path, total))
        cpu = _Cpu([p.popen.pid for p in procs], [group.proc.pid for group in robots])
        start = time.perf_counter()
        for group in robots:
            await group.send("go")
        done = 0
        while done < total and time.perf_counter() - start < DRAIN_BUDGET_S:
            await asyncio.sleep(0.05)
            rows = jobs.db.select("SELECT count(*) FROM jobs WHERE status = 'completed'")
            done = int(rows[0][0])
        drain_s = time.perf_counter() - start
        used = cpu.end(done)
        reports = [await group.stop() for group in robots]
        robots = []
        rows = jobs.db.select(
            "SELECT owner, attempt, count(*) FROM jobs GROUP BY owner, attempt ORDER BY 1, 2"
        )
        for proc in procs:
            proc.popen.terminate()
        for proc in procs:
            proc.wait(60)
    finally:
        for group in robots:
            await group.kill()
        for proc in procs:
            proc.kill()
        stores.close()
    assigned: dict[str, int] = {}
    for report in reports:
        for job_id, n in report["assigned"].items():
            assigned[job_id] = assigned.get(job_id, 0) + n
    return {
        "nodes": nodes,
        "total": total,
        "completed": done,
        "drain_s": drain_s,
        "rate": done / drain_s if drain_s else 0.0,
        "by_owner_attempt": [[str(o), int(a), int(n)] for o, a, n in rows],
        "assigned_twice": sum(1 for n in assigned.values() if n > 1),
        "not_first_attempt": sum(int(n) for _, a, n in rows if int(a) != 1),
        "cpu": used,
    }


def _failover(server: PgServer, work: Path) -> dict[str, Any]:
    url = server.new_database()
    seen = kill_the_active_one(work, url, jobs=FAILOVER_JOBS, robots=2, slots=2, running=4)
    with psycopg.connect(url) as con:
        completed = con.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").fetchone()
        attempts = con.execute(
            "SELECT attempt, count(*) FROM jobs GROUP BY attempt ORDER BY attempt"
        ).fetchall()
        runs = con.execute("SELECT count(*) FROM runs WHERE status = 'completed'").fetchone()
    done = [j.status for j in seen.finished].count(RunStatus.COMPLETED)
    return {
        "serving_s": seen.serving_s,
        "back_s": seen.back_s,
        "jobs": FAILOVER_JOBS,
        "completed": done,
        "completed_rows": completed[0] if completed else 0,
        "completed_runs": runs[0] if runs else 0,
        "attempts": {int(k): int(v) for k, v in attempts},
        "lost": FAILOVER_JOBS - done,
    }


def _due_time(server: PgServer, work: Path) -> dict[str, Any]:
    url = server.new_database()
    fire, done, _ = due_time_across_a_kill(work, url)
    with psycopg.connect(url) as con:
        jobs = con.execute("SELECT count(*) FROM jobs WHERE trigger IS NOT NULL").fetchone()
    return {
        "fires": 1,
        "jobs": jobs[0] if jobs else 0,
        "late_s": (fire.fired_at - fire.due_at).total_seconds(),
        "completed": done.status is RunStatus.COMPLETED,
    }


def _restart(server: PgServer, work: Path, submits: int) -> dict[str, Any]:
    url = server.new_database()
    (work / "workflows").mkdir(parents=True)
    write_notebook(work / "workflows" / "tick.ipynb", ["x = 1"])
    ports = (free_port(), free_port())
    orch = orchestrator_node(work, url, "a", ports)
    procs = [orch]
    acked: list[str] = []
    refused: list[str] = []
    try:
        orch.expect("runtime file")
        with Client.local(work / "state") as client:
            token = client.create_token("r1", "robot")
            procs.append(robot_process(work, f"ws://127.0.0.1:{ports[0]}", token, "r1", 2))
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
    nodes_total = 2_000 if quick else 10_000
    raw: dict[str, Any] = {"dispatch": {}, "failover": [], "due": []}
    with throwaway_server() as server:
        for name, store in (("duckdb", None), ("postgresql", "pg")):
            with nbs.temp_dir(f"scale-dispatch-{name}") as work:
                url = server.new_database() if store else None
                print(f"  [scale-out] dispatch on {name}", file=sys.stderr, flush=True)
                measured = asyncio.run(dispatch._measure(work, total, 100, 60.0, None, url))
                raw["dispatch"][name] = {"raw": measured, "check": dispatch._check(measured)}
        raw["nodes"] = {1: [], 2: []}
        for i in range(reps):
            for count in (1, 2):
                print(f"  [scale-out] {count} node(s) {i + 1}/{reps}", file=sys.stderr, flush=True)
                with nbs.temp_dir(f"scale-nodes-{count}") as work:
                    raw["nodes"][count].append(
                        asyncio.run(_drain_nodes(server, work, count, nodes_total))
                    )
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


def _cpu_text(runs: list[dict[str, Any]]) -> str:
    """The machine's busy share and the CPU per job of each part (medians of ``runs``)."""
    busy = nbs.median([r["cpu"]["machine_busy_pct"] for r in runs])
    parts = ("nodes", "postgres", "robots", "bench")
    per_job = {p: nbs.median([r["cpu"]["per_job_ms"].get(p, 0.0) for r in runs]) for p in parts}
    spent = ", ".join(f"{p} {per_job[p]:.2f}" for p in parts)
    return f"machine {busy:.0f} % busy; CPU ms per job: {spent} (total {sum(per_job.values()):.2f})"


def _lost(runs: list[dict[str, Any]]) -> int:
    return sum(r["total"] - r["completed"] for r in runs)


def _report(raw: dict[str, Any], reps: int) -> dict[str, Any]:
    duck, pg = raw["dispatch"]["duckdb"], raw["dispatch"]["postgresql"]
    duck_rate, pg_rate = _rate(duck), _rate(pg)
    one, two = raw["nodes"][1], raw["nodes"][2]
    one_rate = nbs.median([r["rate"] for r in one])
    two_rate = nbs.median([r["rate"] for r in two])
    nodes_total = sum(r["total"] for r in [*one, *two])
    nodes_twice = sum(r["assigned_twice"] + r["not_first_attempt"] for r in [*one, *two])
    nodes_lost = _lost([*one, *two])
    split = "; ".join(", ".join(f"{o}: {n}" for o, _, n in r["by_owner_attempt"]) for r in two)
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
            "dispatch, one `casare-nb orchestrator` on PostgreSQL (4 no-op robots)",
            f"{one[0]['total']} jobs x {len(one)}; lost {_lost(one)}",
            f"{one_rate:.0f} jobs/s (median)",
            f"1.00x (the nodes' anchor); {_cpu_text(one)}",
        ],
        [
            "dispatch, two `casare-nb orchestrator` nodes on PostgreSQL (2 robots each)",
            f"{two[0]['total']} jobs x {len(two)}; lost {_lost(two)}",
            f"{two_rate:.0f} jobs/s (median)",
            (common.ratio(two_rate / one_rate) if one_rate else "-")
            + f" (jobs per node: {split}); {_cpu_text(two)}",
        ],
        [
            f"an orchestrator SIGKILLed, {FAILOVER_JOBS} jobs running on its 2 robots",
            f"the other leading after {common.sec(serving)}, robots registered with it after "
            f"{common.sec(back)} (medians of {reps})",
            f"lost {lost}, run twice {twice}",
            "attempts: "
            + "; ".join(
                ", ".join(f"{k}: {v}" for k, v in sorted(f["attempts"].items())) for f in fails
            ),
        ],
        [
            "the leader SIGKILLed 3 s before a due time",
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
            f"{two_rate:.0f} vs {one_rate:.0f} jobs/s: "
            + (common.ratio(two_rate / one_rate) if one_rate else "-"),
            bool(one_rate) and two_rate >= 1.5 * one_rate,
        ),
        common.target(
            f"no job run twice in {nodes_total:,} (one and two nodes)",
            f"run twice {nodes_twice}, lost {nodes_lost}",
            nodes_twice == 0 and nodes_lost == 0,
        ),
        common.target(
            f"SIGKILL one orchestrator of two while {FAILOVER_JOBS} jobs run: 0 lost, 0 twice; "
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
        "Nodes: `casare-nb orchestrator` processes on a new database (one, then two), the "
        "4 no-op robots in one process per node (split between the nodes), the jobs queued "
        "in bulk (announced to the nodes), timed from the robots' connecting until the "
        "database says every job completed (polled every 50 ms); run twice: a job the robots "
        "were assigned more than once, or not completed as attempt 1. On 2 cores the nodes, "
        "the robots and PostgreSQL share the same two cores.",
        "Failover: `casare-nb orchestrator` processes `a` (leading; the robots' first address) "
        "and `b` on one database and one state directory (shared checkpoint files), "
        "`reconnect_grace_s` 1 s; "
        "`casare-nb robot` processes with both addresses (`--orchestrator ws://a,ws://b`); "
        "4-cell jobs of 0.3 s a cell; SIGKILL of `a` once 4 jobs run.",
        f"Repetitions: failover and due time {reps} each (medians), one restart run.",
    ]
    return {
        "name": "scale_out",
        "title": "18. Orchestrators on PostgreSQL: dispatch, failover, schedules, restarts",
        "command": COMMAND,
        "runs": f"{reps} failovers, {reps} due times, 1 restart, 1 drain per store, "
        f"{reps} drains per node count",
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
