"""Two orchestrator processes on one PostgreSQL store: one active, one standing by; the
active one SIGKILLed while jobs run; the standby takes over, the robot (given both
addresses) comes back to it with its jobs, and every job ends once.

Real processes, a real server (tests/postgres.py), a real robot with kernels; every wait is
on a line a process prints or an orchestrator event.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from helpers import write_notebook
from jupyter_harness import free_port
from test_cli_service import Proc, cli, error_line

from casare_nb import Client
from casare_nb.core.models import RunStatus
from casare_nb.protocol import EventKind

JOBS = 4
TAKEOVER_S = 5.0  # the target: robots back on the other node within 5 s


def orchestrator(base: Path, store: str, node: str, port: int, http_port: int) -> Proc:
    (base / "workflows").mkdir(exist_ok=True)
    # a lost robot's jobs wait 1 s for it (not 5): the standby's dispatch holds as long
    (base / "orchestrator.yaml").write_text("reconnect_grace_s: 1.0\n")
    return Proc(
        base,
        "orchestrator",
        "--store",
        store,
        "--node-id",
        node,
        "--port",
        str(port),
        "--http-port",
        str(http_port),
        "--workflows",
        "workflows",
        "--log-level",
        "warning",
    )


def test_the_standby_takes_over_a_killed_active_orchestrator_and_no_job_is_lost(
    tmp_path: Path, pg_url: str
) -> None:
    """Node b stands by while a is active; a robot given both addresses runs a's jobs; a
    SIGKILL of a mid-run makes b active, the robot registers with b within 5 s holding its
    jobs, and every job completes once (one completed row each, cells recorded once per
    job, attempt and cell) with nothing lost."""
    (tmp_path / "workflows").mkdir()
    write_notebook(
        tmp_path / "workflows" / "slow.ipynb",
        [f"import time; time.sleep(0.4); step = {i}" for i in range(5)],
    )
    ports = {name: (free_port(), free_port()) for name in ("a", "b")}
    a = orchestrator(tmp_path, pg_url, "a", *ports["a"])
    procs = [a]
    try:
        a.expect("runtime file")
        b = orchestrator(tmp_path, pg_url, "b", *ports["b"])
        procs.append(b)
        assert "standby: node a on" in b.expect("standby:")
        urls = ",".join(f"ws://127.0.0.1:{ws}" for ws, _ in ports.values())
        with Client.local(tmp_path / "state") as client:
            token = client.create_token("robot-1", "robot")
            robot = Proc(
                tmp_path,
                "robot",
                "--orchestrator",
                urls,
                "--token",
                token,
                "--robot-id",
                "robot-1",
                "--max-jobs",
                "2",
                "--pool-size",
                "2",
                "--work-dir",
                str(tmp_path / "robot-1"),
                "--log-level",
                "warning",
            )
            procs.append(robot)
            with client.subscribe(("jobs", "robots")) as events:
                ids = [client.submit("slow.ipynb").job_id for _ in range(JOBS)]
                running: set[str] = set()
                while len(running) < 2:  # both slots busy: kill mid-run
                    event = events.receive(timeout=60)
                    job = getattr(event.data, "job", None)
                    if event.kind is EventKind.JOB_STARTED and job is not None:
                        running.add(job.job_id)
        a.kill()
        killed = time.monotonic()
        b.expect("runtime file", timeout=30)  # b is active: it serves and wrote its file
        with Client.local(tmp_path / "state") as client:
            assert client.health().ready
            with client.subscribe(("robots",)) as events:
                while not any(
                    r.robot_id == "robot-1" and r.status != "offline" for r in client.robots()
                ):
                    events.receive(timeout=30)
            back_s = time.monotonic() - killed
            finished = [client.wait(job_id, timeout=120) for job_id in ids]
        assert [j.status for j in finished] == [RunStatus.COMPLETED] * JOBS
        assert back_s <= TAKEOVER_S, f"the robot came back after {back_s:.1f} s"
        b.popen.terminate()  # a clean stop writes what is staged
        assert b.wait() == 0, b.describe()
    finally:
        for proc in reversed(procs):
            proc.kill()
    with psycopg.connect(pg_url) as con:
        rows = con.execute(
            "SELECT run_id, attempt, count(*) FROM cells GROUP BY run_id, attempt"
        ).fetchall()
        leaders = con.execute("SELECT node_id FROM leaders ORDER BY epoch").fetchall()
        completed = con.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").fetchone()
    assert completed == (JOBS,)
    assert {run_id for run_id, _, _ in rows} == set(ids)
    assert leaders == [("a",), ("b",)]


def test_a_standby_stops_on_a_signal_and_a_node_id_is_checked(tmp_path: Path, pg_url: str) -> None:
    """SIGTERM while standing by stops the wait (exit 0); a node id that is not a name is
    one line, exit 2."""
    ports = (free_port(), free_port())
    a = orchestrator(tmp_path, pg_url, "a", *ports)
    try:
        a.expect("runtime file")
        b = orchestrator(tmp_path, pg_url, "b", free_port(), free_port())
        try:
            b.expect("standby:")
            b.popen.terminate()
            assert b.wait(30) == 0, b.describe()
            assert any("stopping" in line for line in b.out)
        finally:
            b.kill()
    finally:
        a.kill()
    line = error_line(cli(tmp_path, "orchestrator", "--store", pg_url, "--node-id", "a b"))
    assert "node_id" in line


def test_a_due_time_across_the_active_ones_death_fires_once_on_the_standby(
    tmp_path: Path, pg_url: str
) -> None:
    """A schedule due 2 s after its active orchestrator is SIGKILLed fires exactly once, on
    the standby that took over (its job runs on the robot that followed), and not late by
    more than 5 s."""
    (tmp_path / "workflows").mkdir()
    write_notebook(tmp_path / "workflows" / "tick.ipynb", ["x = 1"])
    ports = {name: (free_port(), free_port()) for name in ("a", "b")}
    a = orchestrator(tmp_path, pg_url, "a", *ports["a"])
    procs = [a]
    try:
        a.expect("runtime file")
        b = orchestrator(tmp_path, pg_url, "b", *ports["b"])
        procs.append(b)
        b.expect("standby:")
        urls = ",".join(f"ws://127.0.0.1:{ws}" for ws, _ in ports.values())
        with Client.local(tmp_path / "state") as client:
            token = client.create_token("robot-1", "robot")
            due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
            once = client.add_schedule("tick.ipynb", at=due.replace(tzinfo=None)).schedule
            schedule_id = once.schedule_id
        procs.append(
            Proc(
                tmp_path,
                "robot",
                "--orchestrator",
                urls,
                "--token",
                token,
                "--robot-id",
                "robot-1",
                "--work-dir",
                str(tmp_path / "robot-1"),
                "--log-level",
                "warning",
            )
        )
        a.kill()
        b.expect("runtime file", timeout=30)
        with Client.local(tmp_path / "state") as client, client.subscribe(("jobs",)) as events:
            while not (fires := client.fires(schedule_id)) or fires[0].job_id is None:
                events.receive(timeout=30)
            (fire,) = fires
            assert fire.job_id is not None
            assert client.wait(fire.job_id, timeout=60).status is RunStatus.COMPLETED
        b.popen.terminate()
        assert b.wait() == 0, b.describe()
    finally:
        for proc in reversed(procs):
            proc.kill()
    with psycopg.connect(pg_url) as con:
        jobs = con.execute("SELECT job_id FROM jobs WHERE trigger IS NOT NULL").fetchall()
    assert jobs == [(fire.job_id,)]  # one job of the schedule, the fire's
    assert fire.due_at == due
    assert (fire.fired_at - fire.due_at).total_seconds() <= 5
