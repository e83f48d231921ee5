"""The orchestrator on PostgreSQL, as a user runs it: ``casare-nb orchestrator --store
postgresql://...`` with a robot process, ``casare-nb migrate``, ``casare-nb export`` of a
state directory, the server unreachable at start and restarted while jobs are written.

Against a real server (tests/postgres.py); the store interfaces themselves run on both
backends in test_job_store, test_run_history, test_token_store, test_trigger_store,
test_checkpoint_store and test_upkeep_store.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from pathlib import Path

import psycopg
import pytest
from cluster import Cluster, notebook
from helpers import EXIT_OK, describe, write_notebook
from postgres import PgServer, throwaway_server
from stores import make_cell, make_job, make_run, opened, running
from test_cli_service import cli, error_line, start_orchestrator, start_robot

from casare_nb.core.errors import QueueError
from casare_nb.core.models import JobStatus, RunStatus
from casare_nb.core.tokens import TokenRole
from casare_nb.store.postgres import PgDatabase, PgLeadership, _pg_sql, open_postgres, redacted
from casare_nb.store.schema import SCHEMA_VERSION


def test_statements_are_translated_to_psycopg_placeholders_outside_literals() -> None:
    """``?`` becomes ``%s``, ``$name`` ``%(name)s``, a ``%`` is doubled; quoted text stays."""
    assert _pg_sql("SELECT ?, 'a?b', $cutoff FROM t WHERE x LIKE 'p%' AND y % 2 = ?") == (
        "SELECT %s, 'a?b', %(cutoff)s FROM t WHERE x LIKE 'p%' AND y %% 2 = %s"
    )
    assert _pg_sql("SELECT 'it''s ?'") == "SELECT 'it''s ?'"


def test_a_url_is_shown_without_its_password() -> None:
    """Messages and logs name the database without the password in its URL."""
    assert (
        redacted("postgresql://casare:s3cret@db:5432/casare")
        == "postgresql://casare@db:5432/casare"
    )
    assert redacted("postgresql://db/casare") == "postgresql://db/casare"


def test_an_orchestrator_on_postgresql_runs_a_job_and_keeps_it_there(
    tmp_path: Path, pg_url: str
) -> None:
    """`casare-nb orchestrator --store URL` says where its records are, a robot process runs
    a submitted job, and the job, its run and its cells are rows of the database."""
    (tmp_path / "workflows").mkdir()
    write_notebook(
        tmp_path / "workflows" / "add.ipynb", ["y = n + 1", "print(y)"], params="n: int = 1"
    )
    orch = start_orchestrator(tmp_path, "--store", pg_url)
    robot = None
    try:
        assert any(f"store             {pg_url}" in line for line in orch.proc.out)
        robot = start_robot(orch, "robot-1")
        done = cli(tmp_path, "submit", "workflows/add.ipynb", "-p", "n", "4", "--wait")
        assert done.returncode == EXIT_OK, describe(done)
        job_id = done.stdout.split()[1]
        robot.kill()
        orch.proc.popen.send_signal(signal.SIGTERM)  # drains: what is pending is written
        assert orch.proc.wait() == EXIT_OK, orch.proc.describe()
    finally:
        if robot is not None:
            robot.kill()
        orch.proc.kill()
    with psycopg.connect(pg_url) as con:
        status = con.execute("SELECT status FROM jobs WHERE job_id = %s", [job_id]).fetchone()
        cells = con.execute("SELECT count(*) FROM cells WHERE run_id = %s", [job_id]).fetchone()
        tokens = con.execute("SELECT name, role FROM tokens WHERE name = 'robot-1'").fetchall()
    assert status == ("completed",)
    assert cells is not None and cells[0] >= 3  # the parameters cell and the two cells
    assert tokens == [("robot-1", "robot")]


def test_an_unreachable_or_unknown_store_is_one_line_exit_2(
    tmp_path: Path, pg_server: PgServer
) -> None:
    """An orchestrator whose PostgreSQL does not answer, or given a store it does not know,
    says so in one line and exits 2."""
    (tmp_path / "workflows").mkdir()
    dead = f"postgresql://casare@127.0.0.1:{_closed_port()}/casare"
    line = error_line(
        cli(
            tmp_path,
            "orchestrator",
            "--port",
            "0",
            "--http-port",
            "0",
            "--workflows",
            "workflows",
            "--store",
            dead,
        )
    )
    assert "cannot reach PostgreSQL at" in line and "refused" in line
    line = error_line(cli(tmp_path, "orchestrator", "--store", "mysql://db/x"))
    assert "unknown store 'mysql://db/x'" in line


def test_migrate_brings_a_database_up_to_date_and_refuses_a_newer_one(
    pg_url: str, tmp_path: Path
) -> None:
    """`casare-nb migrate --store URL` applies the schema (and again changes nothing); a
    database of a newer casare_nb is refused in one line, exit 2."""
    first = cli(tmp_path, "migrate", "--store", pg_url)
    assert first.returncode == EXIT_OK, describe(first)
    assert first.stdout.strip() == f"{pg_url}: schema version {SCHEMA_VERSION}"
    assert cli(tmp_path, "migrate", "--store", pg_url).returncode == EXIT_OK
    with psycopg.connect(pg_url, autocommit=True) as con:
        con.execute("INSERT INTO schema_migrations VALUES (%s, now())", [SCHEMA_VERSION + 1])
    line = error_line(cli(tmp_path, "migrate", "--store", pg_url))
    assert f"has schema version {SCHEMA_VERSION + 1}, newer than this casare_nb" in line


def test_export_moves_a_state_directory_whole_and_only_into_an_empty_database(
    tmp_path: Path, pg_url: str
) -> None:
    """`casare-nb export --to URL` copies jobs, history, tokens and schedules so the
    PostgreSQL stores answer as the embedded ones did; a second export is refused and
    changes nothing; bad targets and a missing state directory are one line, exit 2."""
    state = tmp_path / "state"
    with opened(state) as stores:
        stores.jobs.add_jobs([make_job("j1"), running(make_job("j2"))])
        stores.history.write([make_run("j2")], [make_cell("j2", cell_index=i) for i in range(3)])
        token = stores.tokens.create_token("alice", TokenRole.ADMIN)
        stores.outputs.record_outputs("j2", 1, {"rows": (7, 1)})
    done = cli(tmp_path, "export", "--to", pg_url)
    assert done.returncode == EXIT_OK, describe(done)
    assert done.stdout.strip() == "exported 8 rows (tokens 1, jobs 2, runs 1, cells 3, outputs 1)"
    moved = open_postgres(pg_url, state)
    try:
        assert moved.jobs.get_job("j2") == running(make_job("j2"))
        assert [c.cell_index for c in moved.history.list_cells("j2")] == [0, 1, 2]
        assert moved.history.get_run("j2") == make_run("j2")
        holder = moved.tokens.verify_token(token)
        assert holder is not None and holder.name == "alice"
        assert moved.outputs.outputs("j2") == {"rows": 7}
    finally:
        moved.close()
    line = error_line(cli(tmp_path, "export", "--to", pg_url))
    assert "table tokens already has rows; export into a new database" in line
    with psycopg.connect(pg_url) as con:
        assert con.execute("SELECT count(*) FROM jobs").fetchone() == (2,)
    assert "expected postgresql://" in error_line(cli(tmp_path, "export", "--to", "/tmp/x.db"))
    missing = error_line(cli(tmp_path, "export", "--from", str(tmp_path / "none"), "--to", pg_url))
    assert "history.duckdb does not exist: nothing to export" in missing


def test_a_server_restart_loses_no_staged_job_state(tmp_path: Path) -> None:
    """Job states staged while PostgreSQL restarts are written once it is back (the writer
    retries); a read meanwhile is a one-line QueueError, not a crash; nothing is lost."""
    with throwaway_server() as server:
        url = server.new_database()
        stores = open_postgres(url, tmp_path / "state", commit_interval_s=0.01)
        stores.open()
        try:
            stores.jobs.stage(make_job("before"), new=True)
            stores.jobs.flush()
            server.stop("immediate")
            mark = stores.jobs.stage(make_job("during"), new=True)
            stores.jobs.stage(running(make_job("before")))
            with pytest.raises(QueueError, match=r"^database postgresql://"):
                stores.tokens.list_tokens()
            assert not stores.jobs.wait_mark(mark, timeout=0.3)
            server.start()
            assert stores.jobs.wait_mark(mark, timeout=30)
            stored = {j.job_id: j.status for j in stores.jobs.list_jobs()}
        finally:
            stores.close()
        again = open_postgres(url, tmp_path / "state")
        try:
            assert (
                {j.job_id: j.status for j in again.jobs.list_jobs()}
                == stored
                == {
                    "before": JobStatus.RUNNING,
                    "during": JobStatus.QUEUED,
                }
            )
        finally:
            again.close()


def test_orchestrators_starting_together_apply_each_migration_once(pg_url: str) -> None:
    """Eight connections migrating one new database at once all succeed, and every version
    is recorded once (an advisory lock orders them)."""
    errors: list[BaseException] = []

    def migrate() -> None:
        db = PgDatabase(pg_url)
        try:
            db.schema_version()
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=migrate) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    with psycopg.connect(pg_url) as con:
        rows = con.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [v for (v,) in rows] == list(range(1, SCHEMA_VERSION + 1))


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_leadership_goes_to_one_holder_and_survives_a_server_restart(tmp_path: Path) -> None:
    """Of two contenders one is active (epoch 1) and the other waits, told who is active;
    a server restart loses the lock's connection: check says unreachable while it is down
    and takes the lock back once it is up (nobody took over); when the holder lets go the
    other becomes active (epoch 2) knowing the previous one stopped cleanly."""
    with throwaway_server() as server:
        url = server.new_database()
        PgDatabase(url).schema_version()  # migrated: the leaders table exists
        first, second = PgLeadership(url, poll_s=0.05), PgLeadership(url, poll_s=0.05)
        assert first.acquire("a", lambda: False, lambda who: None) == 1
        told: list[str] = []
        waiting = threading.Event()
        stop = threading.Event()
        result: list[object] = []

        def contend() -> None:
            try:
                result.append(
                    second.acquire("b", stop.is_set, lambda who: (told.append(who), waiting.set()))
                )
            except QueueError as exc:
                result.append(exc)

        thread = threading.Thread(target=contend)
        thread.start()
        assert waiting.wait(10) and told[0].startswith("node a on ")
        assert first.check() is None
        server.stop("immediate")
        assert (first.check() or "").startswith("unreachable: ")
        server.start()
        assert first.check() is None  # taken back: still epoch 1, nobody else took over
        assert thread.is_alive()
        first.release()
        thread.join(10)
        assert result == [2] and second.previous_stopped()
        assert (first.check() or "").startswith("node b on ")  # it let go: b is active
        second.release()


def test_a_holder_that_lost_its_lock_to_another_is_told_so(tmp_path: Path) -> None:
    """When another process took the lock while the holder's connection was gone, check
    names who took over (the holder must stand down) and the new one knows the previous
    one did not stop cleanly."""
    with throwaway_server() as server:
        url = server.new_database()
        PgDatabase(url).schema_version()
        first, second = PgLeadership(url), PgLeadership(url)
        assert first.acquire("a", lambda: False, lambda who: None) == 1
        assert first._con is not None
        with psycopg.connect(url, autocommit=True) as admin:  # the holder's session dies
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks "
                "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
            )
        assert second.acquire("b", lambda: False, lambda who: None) == 2
        assert not second.previous_stopped()
        reason = first.check() or ""
        assert reason.startswith("node b on ") and "took over" in reason
        second.release()


@pytest.mark.parametrize("cluster", ["postgres"], indirect=True)
async def test_an_orchestrator_rides_out_a_server_restart(
    cluster: Cluster, pg_server: PgServer, tmp_path: Path
) -> None:
    """PostgreSQL restarted under a running orchestrator: once it is back the orchestrator
    stores and runs jobs again by itself, stays the active one (it takes its lock back),
    and every job and cell is in the database once."""
    nb = notebook(tmp_path, "quick.ipynb", ["x = 1", "y = x + 1"])
    await cluster.robot("robot-a")
    before = await cluster.orch.submit(nb)
    assert (await cluster.finished(before.job_id)).status is RunStatus.COMPLETED
    await asyncio.to_thread(pg_server.restart)
    await cluster.until(lambda: cluster.orch.storage_fault() is None)
    during = await cluster.orch.submit(nb)
    assert (await cluster.finished(during.job_id)).status is RunStatus.COMPLETED
    assert not cluster.orch.role.lost.is_set()
    assert cluster.orch.role.leadership is not None
    assert await asyncio.to_thread(cluster.orch.role.leadership.check) is None
    history = await cluster.history()
    for job in (before, during):
        assert sorted(c.cell_id or "" for c in history.list_cells(job.job_id)) == ["c0", "c1"]


def test_doctor_reads_the_tokens_where_the_settings_keep_them(tmp_path: Path, pg_url: str) -> None:
    """With `store:` in ./orchestrator.yaml, `casare-nb doctor` finds the tokens in that
    database (one created there with `token create --store`); a store it cannot reach fails
    the tokens check with the reason, exit 1."""
    made = cli(tmp_path, "token", "create", "r1", "--role", "robot", "--store", pg_url)
    assert made.returncode == EXIT_OK, describe(made)
    ports = [str(_closed_port()), str(_closed_port())]
    (tmp_path / "orchestrator.yaml").write_text(f"store: {pg_url}\n")
    seen = cli(tmp_path, "doctor", "--no-kernel", "--port", ports[0], "--http-port", ports[1])
    (line,) = [x for x in seen.stdout.splitlines() if " tokens: " in x]
    assert line.startswith("ok") and "1 live (r1)" in line, seen.stdout
    dead = f"postgresql://casare@127.0.0.1:{_closed_port()}/casare"
    (tmp_path / "orchestrator.yaml").write_text(f"store: {dead}\n")
    seen = cli(tmp_path, "doctor", "--no-kernel", "--port", ports[0], "--http-port", ports[1])
    assert seen.returncode == 1, describe(seen)
    (line,) = [x for x in seen.stdout.splitlines() if " tokens: " in x]
    assert line.startswith("fail") and "cannot reach PostgreSQL" in line, seen.stdout


def test_bad_store_arguments_are_one_line_exit_2(tmp_path: Path, pg_url: str) -> None:
    """A token command given a store it does not know, an export to a server that does not
    answer, and an export of a state directory an orchestrator holds: one line each, exit 2,
    nothing written."""
    line = error_line(cli(tmp_path, "token", "list", "--store", "mysql://db/x"))
    assert "unknown store 'mysql://db/x'" in line
    with opened(tmp_path / "state") as stores:
        stores.jobs.add_jobs([make_job("j1")])
    dead = f"postgresql://casare@127.0.0.1:{_closed_port()}/casare"
    assert "cannot reach PostgreSQL at" in error_line(cli(tmp_path, "export", "--to", dead))
    with opened(tmp_path / "state"):  # held, as a running orchestrator holds it
        line = error_line(cli(tmp_path, "export", "--to", pg_url))
    assert "locked by another process" in line
    with psycopg.connect(pg_url) as con:  # migrated before the source was read: empty
        assert con.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


def test_a_node_whose_lead_was_taken_keeps_writing(tmp_path: Path) -> None:
    """Once another orchestrator took the lead (here: the holder's lock connection killed,
    its pool still connected), the one before is told so and still writes its records
    (every node of a shared database writes; only leading moved)."""
    with throwaway_server() as server:
        url = server.new_database()
        old, new = open_postgres(url, tmp_path / "a"), open_postgres(url, tmp_path / "b")
        try:
            for stores in (old, new):
                stores.open()
            assert old.leadership is not None and new.leadership is not None
            assert old.leadership.acquire("a", lambda: False, lambda who: None) == 1
            old.tokens.create_token("before", TokenRole.USER)
            held = old.leadership
            assert isinstance(held, PgLeadership) and held._con is not None
            with psycopg.connect(url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", [held._con.info.backend_pid])
            assert new.leadership.acquire("b", lambda: False, lambda who: None) == 2
            reason = old.leadership.check()
            assert reason is not None and "took over" in reason
            old.tokens.create_token("after", TokenRole.USER)
            old.history.write([make_run("r-old")], [])
            assert [t["name"] for t in new.tokens.list_tokens()] == ["before", "after"]
            assert new.history.get_run("r-old") is not None
        finally:
            old.close()
            new.close()
