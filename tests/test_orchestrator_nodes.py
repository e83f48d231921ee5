"""Two orchestrator processes on one PostgreSQL store, both serving, one leading: the one
the robots are on SIGKILLed while jobs run; the robot (given both addresses) comes back to
the other with its jobs, which adopts the dead node's jobs, and every job ends once; the
leader's death across a due time fires it once, on the other.

Real processes, a real server (tests/postgres.py), a real robot with kernels; every wait is
on a line a process prints or an orchestrator event.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from jupyter_harness import free_port
from nodes import (
    LEADS,
    WAIT_S,
    due_time_across_a_kill,
    expect_all,
    kill_the_active_one,
    node_pair,
    orchestrator_node,
    robot_process,
)
from test_cli_service import cli, error_line

from casare_nb import Client
from casare_nb.core.models import RunStatus

JOBS = 4
TAKEOVER_S = 5.0  # the target: robots back on the other node within 5 s


def test_the_other_node_takes_a_killed_nodes_robots_and_no_job_is_lost(
    tmp_path: Path, pg_url: str
) -> None:
    """Nodes a (leading) and b serve; a robot given both addresses runs a's jobs; a SIGKILL
    of a mid-run makes b lead, the robot registers with b within 5 s holding its jobs, and
    every job completes once (one completed row each, cells recorded for each, b owns them)
    with nothing lost."""
    seen = kill_the_active_one(tmp_path, pg_url, jobs=JOBS, robots=1, slots=2, running=2)
    assert [j.status for j in seen.finished] == [RunStatus.COMPLETED] * JOBS
    assert seen.back_s <= TAKEOVER_S, f"the robot came back after {seen.back_s:.1f} s"
    with psycopg.connect(pg_url) as con:
        rows = con.execute(
            "SELECT run_id, attempt, count(*) FROM cells GROUP BY run_id, attempt"
        ).fetchall()
        leaders = con.execute("SELECT node_id FROM leaders ORDER BY epoch").fetchall()
        completed = con.execute(
            "SELECT owner, count(*) FROM jobs WHERE status = 'completed' GROUP BY owner"
        ).fetchall()
    assert completed == [("b", JOBS)]
    assert {run_id for run_id, _, _ in rows} == set(seen.job_ids)
    assert leaders == [("a",), ("b",)]


def test_sigterm_of_a_node_hands_over_without_stopping_the_robots(
    tmp_path: Path, pg_url: str
) -> None:
    """SIGTERM of an orchestrator of a shared store hands over: it exits 0 at once without
    draining, the other leads, the robot follows with its jobs running and is still running
    when every job has completed once as its first attempt."""
    seen = kill_the_active_one(
        tmp_path, pg_url, jobs=JOBS, robots=1, slots=2, running=2, handover=True
    )
    assert [j.status for j in seen.finished] == [RunStatus.COMPLETED] * JOBS
    assert [j.attempt for j in seen.finished] == [1] * JOBS
    assert seen.robots_alive
    assert seen.back_s <= TAKEOVER_S


def test_a_second_node_serves_at_once_and_a_node_id_is_checked(tmp_path: Path, pg_url: str) -> None:
    """A second node serves as soon as it starts (not leading) and stops on SIGTERM (exit
    0); each node writes log and audit files of its own; a node id that is not a name is one
    line, exit 2; a node started after both are gone leads."""
    a, b, _ = node_pair(tmp_path, pg_url)
    try:
        assert not any(LEADS in line for line in b.out)
        b.popen.terminate()
        assert b.wait(30) == 0, b.describe()
        assert any("orchestrator stopped" in line for line in b.out)
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
        expect_all(alone, LEADS, "orchestrator ready")  # the leader let go: a new one leads
    finally:
        alone.kill()


def test_a_due_time_across_the_leaders_death_fires_once_on_the_other_node(
    tmp_path: Path, pg_url: str
) -> None:
    """A schedule due 3 s after it is made, its leader SIGKILLed at once, fires exactly
    once, on the node that leads next (its job runs on the robot that followed), and not
    late by more than 5 s."""
    fire, done, due = due_time_across_a_kill(tmp_path, pg_url)
    assert done.status is RunStatus.COMPLETED
    with psycopg.connect(pg_url) as con:
        jobs = con.execute("SELECT job_id FROM jobs WHERE trigger IS NOT NULL").fetchall()
    assert jobs == [(fire.job_id,)]  # one job of the schedule, the fire's
    assert fire.due_at == due
    assert (fire.fired_at - fire.due_at).total_seconds() <= 5


def test_a_node_lists_and_hears_the_robots_of_the_other(tmp_path: Path, pg_url: str) -> None:
    """A robot connected to b only: a monitor of a hears it come, `casare-nb robots` asked
    of a lists it with node b, and once the robot stops a's list says it is gone."""
    a, b, urls = node_pair(tmp_path, pg_url)
    procs = [a, b]
    try:
        with Client.local(tmp_path / "state") as client:  # a: the runtime file names it
            token = client.create_token("rb", "robot")
            with client.subscribe(("robots",)) as events:
                procs.append(robot_process(tmp_path, urls.split(",")[1], token, "rb"))
                while not any(r.robot_id == "rb" for r in client.robots()):
                    events.receive(timeout=WAIT_S)
            listed = cli(tmp_path, "robots")
            assert listed.returncode == 0, listed.stderr
            (row,) = [line for line in listed.stdout.splitlines() if line.startswith("rb")]
            assert row.split()[-1] == "b" and listed.stdout.split()[8] == "NODE"
            with client.subscribe(("robots",)) as events:
                procs[-1].popen.terminate()
                assert procs[-1].wait(WAIT_S) == 0
                while any(r.robot_id == "rb" for r in client.robots()):
                    events.receive(timeout=WAIT_S)
    finally:
        for proc in reversed(procs):
            proc.kill()
