"""Two orchestrator processes on one PostgreSQL store: one active, one standing by; the
active one SIGKILLed while jobs run; the standby takes over, the robot (given both
addresses) comes back to it with its jobs, and every job ends once.

Real processes, a real server (tests/postgres.py), a real robot with kernels; every wait is
on a line a process prints or an orchestrator event.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from jupyter_harness import free_port
from nodes import due_time_across_a_kill, kill_the_active_one, orchestrator_node, standby_pair
from test_cli_service import cli, error_line

from casare_nb.core.models import RunStatus

JOBS = 4
TAKEOVER_S = 5.0  # the target: robots back on the other node within 5 s


def test_the_standby_takes_over_a_killed_active_orchestrator_and_no_job_is_lost(
    tmp_path: Path, pg_url: str
) -> None:
    """Node b stands by while a is active; a robot given both addresses runs a's jobs; a
    SIGKILL of a mid-run makes b active, the robot registers with b within 5 s holding its
    jobs, and every job completes once (one completed row each, cells recorded for each)
    with nothing lost."""
    seen = kill_the_active_one(tmp_path, pg_url, jobs=JOBS, robots=1, slots=2, running=2)
    assert [j.status for j in seen.finished] == [RunStatus.COMPLETED] * JOBS
    assert seen.back_s <= TAKEOVER_S, f"the robot came back after {seen.back_s:.1f} s"
    with psycopg.connect(pg_url) as con:
        rows = con.execute(
            "SELECT run_id, attempt, count(*) FROM cells GROUP BY run_id, attempt"
        ).fetchall()
        leaders = con.execute("SELECT node_id FROM leaders ORDER BY epoch").fetchall()
        completed = con.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").fetchone()
    assert completed == (JOBS,)
    assert {run_id for run_id, _, _ in rows} == set(seen.job_ids)
    assert leaders == [("a",), ("b",)]


def test_sigterm_of_the_active_one_hands_over_without_stopping_the_robots(
    tmp_path: Path, pg_url: str
) -> None:
    """SIGTERM of the active orchestrator of a shared store hands over: it exits 0 at once
    without draining, the standby takes over, the robot follows with its jobs running and is
    still running when every job has completed once as its first attempt."""
    seen = kill_the_active_one(
        tmp_path, pg_url, jobs=JOBS, robots=1, slots=2, running=2, handover=True
    )
    assert [j.status for j in seen.finished] == [RunStatus.COMPLETED] * JOBS
    assert [j.attempt for j in seen.finished] == [1] * JOBS
    assert seen.robots_alive
    assert seen.back_s <= TAKEOVER_S


def test_a_standby_stops_on_a_signal_and_a_node_id_is_checked(tmp_path: Path, pg_url: str) -> None:
    """SIGTERM while standing by stops the wait (exit 0); each node writes log and audit
    files of its own; a node id that is not a name is one line, exit 2."""
    a, b, _ = standby_pair(tmp_path, pg_url)
    try:
        b.popen.terminate()
        assert b.wait(30) == 0, b.describe()
        assert any("stopping" in line for line in b.out)
    finally:
        b.kill()
        a.kill()
    logs = tmp_path / "state" / "logs"
    assert {"orchestrator-a.log", "orchestrator-b.log", "audit-a.log", "audit-b.log"} <= {
        p.name for p in logs.iterdir()
    }  # nodes sharing a state directory rotate files of their own
    line = error_line(cli(tmp_path, "orchestrator", "--store", pg_url, "--node-id", "a b"))
    assert "node_id" in line
    alone = orchestrator_node(tmp_path, pg_url, "c", (free_port(), free_port()))
    try:
        alone.expect("runtime file")  # the last active one let go: a new one is active
    finally:
        alone.kill()


def test_a_due_time_across_the_active_ones_death_fires_once_on_the_standby(
    tmp_path: Path, pg_url: str
) -> None:
    """A schedule due 3 s after it is made, its active orchestrator SIGKILLed at once,
    fires exactly once, on the standby that took over (its job runs on the robot that
    followed), and not late by more than 5 s."""
    fire, done, due = due_time_across_a_kill(tmp_path, pg_url)
    assert done.status is RunStatus.COMPLETED
    with psycopg.connect(pg_url) as con:
        jobs = con.execute("SELECT job_id FROM jobs WHERE trigger IS NOT NULL").fetchall()
    assert jobs == [(fire.job_id,)]  # one job of the schedule, the fire's
    assert fire.due_at == due
    assert (fire.fired_at - fire.due_at).total_seconds() <= 5
