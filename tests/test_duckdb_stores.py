"""What the embedded DuckDB stores do beyond their interfaces: the file's schema and its
migrations, group commit of the job store's writer, retries, raw SQL, and what a SIGKILL
leaves in the file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import sigkill_after
from stores import T0, make_job, running

from casare_nb.core.errors import QueueError
from casare_nb.core.models import Job, JobStatus
from casare_nb.store import database, jobs, schema
from casare_nb.store.database import Database
from casare_nb.store.embedded import open_embedded
from casare_nb.store.history import HistoryStore
from casare_nb.store.interfaces import Stores
from casare_nb.store.jobs import SqlJobStore

WAIT = 30.0  # seconds a mark may take on a slow machine; never slept

STAGE_THEN_BLOCK_SCRIPT = """
import sys
from datetime import UTC, datetime
from casare_nb.core.models import Job, JobStatus
from casare_nb.store.embedded import open_embedded

t0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
store = open_embedded(sys.argv[1], commit_interval_s=3600).jobs
bulk = Job(job_id="j-bulk", workflow_path="wf.ipynb", created_at=t0, eligible_at=t0)
store.add_jobs([bulk])
job = Job(job_id="j-staged", workflow_path="wf.ipynb", created_at=t0, eligible_at=t0)
store.stage(job, new=True)
mark = store.stage(
    job.model_copy(update={"status": JobStatus.RUNNING, "attempt": 1, "robot_id": "robot-1"})
)
assert store.wait_mark(mark, 60)
print("durable", flush=True)
store.stage(job.model_copy(update={"status": JobStatus.COMPLETED, "attempt": 1}))
sys.stdin.read()
"""


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def embedded(state: Path) -> Iterator[Stores]:
    """The embedded stores, the job store committing only when someone waits."""
    stores = open_embedded(state, commit_interval_s=3600)
    stores.open()
    try:
        yield stores
    finally:
        stores.close()


def committed(state: Path, job_id: str) -> tuple[Any, ...] | None:
    """The job's row as committed, read on a connection of its own (no overlay, no wait)."""
    with Database(state / "history.duckdb").connect() as con:
        row: tuple[Any, ...] | None = con.execute(
            "SELECT status, attempt, robot_id, cancel_requested FROM jobs WHERE job_id = ?",
            [job_id],
        ).fetchone()
    return row


def test_every_job_field_has_a_column() -> None:
    """The job store's column list covers exactly the fields of Job."""
    assert list(jobs._JOB_COLUMNS) == list(Job.model_fields)


def test_migrations_upgrade_a_v1_file_and_keep_its_history(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A v1 file (history only) gets jobs (with their robot-loss and timeouts columns), tokens,
    the trigger tables and the runs' trigger column; its runs stay."""
    assert schema.SCHEMA_VERSION >= 8  # 8: token roles, jobs.submitted_by
    db_path = state / "history.duckdb"
    with monkeypatch.context() as patch:
        patch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])
        patch.setattr(database, "_MIGRATED", set())
        with Database(db_path).connect() as con:  # a run as a v1 file holds it
            con.execute(
                "INSERT INTO runs (run_id, attempt, workflow_path, notebook_sha256, status, "
                "kernel_name, language, started_at) VALUES "
                "('r1', 1, 'wf', '0', 'running', 'python3', 'python', ?)",
                [T0.replace(tzinfo=None)],
            )
        assert HistoryStore(db_path).schema_version() == 1
    monkeypatch.setattr(database, "_MIGRATED", set())
    stores = open_embedded(state)
    try:
        stores.jobs.add_jobs([make_job()])
        assert stores.jobs.get_job("j1") == make_job()
    finally:
        stores.close()
    with Database(db_path).connect() as con:
        tables = {row[0] for row in con.execute("SHOW TABLES").fetchall()}
    assert {"runs", "cells", "jobs", "tokens", "schedules", "fires", "triggers"} <= tables
    assert {"deliveries", "watched_files", "outputs"} <= tables
    history = HistoryStore(db_path)
    assert history.schema_version() == schema.SCHEMA_VERSION
    assert [(run.run_id, run.trigger) for run in history.list_runs()] == [("r1", None)]


def test_staged_states_within_the_window_go_in_one_batch(embedded: Stores, state: Path) -> None:
    """States staged within the group-commit window go in one transaction, only the last
    state of each job written; waiting for a mark commits them without waiting the window."""
    store = embedded.jobs
    assert isinstance(store, SqlJobStore)
    first = store.stage(make_job("j0"), new=True)
    assert store.wait_mark(first, WAIT)
    assert store.write_stats() == (1, 1)
    news = [make_job(f"j{i}") for i in range(1, 4)]
    for job in news:
        store.stage(job, new=True)
    store.stage(running(news[0]))
    store.stage(running(make_job("j0"), robot_id="robot-2"), cancel_requested=True)
    last = store.stage(running(news[0], robot_id="robot-3", attempt=2))
    assert not store.reached(last)  # the writer waits for its window
    assert committed(state, "j1") is None
    assert store.wait_mark(last, WAIT)
    assert store.write_stats() == (2, 1 + 4)  # 4 jobs in the second batch
    assert committed(state, "j1") == ("running", 2, "robot-3", False)
    assert committed(state, "j0") == ("running", 1, "robot-2", True)
    assert committed(state, "j3") == ("queued", 0, None, False)


def test_a_mark_waits_while_the_connection_is_held_elsewhere(embedded: Stores, state: Path) -> None:
    """While the shared connection is held the writer cannot commit: the mark waits."""
    store = embedded.jobs
    assert isinstance(store, SqlJobStore)
    with store.connection():
        mark = store.stage(make_job(), new=True)
        store.hurry()
        assert not store.wait_mark(mark, 0.05)
        assert not store.reached(mark)
    assert store.wait_mark(mark, WAIT) and store.reached(mark)
    assert committed(state, "j1") == ("queued", 0, None, False)


def test_raw_sql_sees_the_staged_states_committed(embedded: Stores) -> None:
    """The connection of ``connection()`` is handed out once every staged state is
    committed: raw SQL never races the writer."""
    store = embedded.jobs
    assert isinstance(store, SqlJobStore)
    store.add_jobs([make_job()])
    store.stage(running(make_job()))
    with store.connection() as con:
        row = con.execute("SELECT status FROM jobs WHERE job_id = 'j1'").fetchone()
    assert row == ("running",)


def test_a_failed_batch_is_retried_until_it_commits(
    embedded: Stores, state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose transaction fails goes back and is written by a later attempt; its mark
    is reached only then."""
    write = SqlJobStore._write
    calls: list[int] = []

    def flaky(self: SqlJobStore, batch: Any) -> object:
        calls.append(len(batch))
        if len(calls) == 1:
            raise QueueError("disk full (simulated)")
        return write(self, batch)

    monkeypatch.setattr(SqlJobStore, "_write", flaky)
    mark = embedded.jobs.stage(make_job(), new=True)
    embedded.jobs.stage(running(make_job()))
    assert embedded.jobs.wait_mark(mark, WAIT)
    assert len(calls) == 2
    assert committed(state, "j1") == ("running", 1, "robot-1", False)


def test_a_token_is_stored_as_its_hash_only(embedded: Stores, state: Path) -> None:
    """Neither the tokens table nor any file of the state directory holds a token."""
    token = embedded.tokens.create_token("robot-a")
    holder = embedded.tokens.verify_token(token)
    assert holder is not None and holder.name == "robot-a"
    with Database(state / "history.duckdb").connect() as con:
        rows = con.execute("SELECT * FROM tokens").fetchall()
    assert len(rows) == 1 and all(token not in str(value) for value in rows[0])
    embedded.close()
    data = b"".join(p.read_bytes() for p in state.iterdir() if p.is_file())
    assert token.encode() not in data


def test_what_was_durable_survives_sigkill(state: Path) -> None:
    """A process SIGKILLed after add_jobs returned and a mark was reached keeps those
    changes; what it staged after (never committed) is simply not there."""
    assert sigkill_after(STAGE_THEN_BLOCK_SCRIPT, str(state), "durable") == -9
    stores = open_embedded(state)
    try:
        bulk = stores.jobs.get_job("j-bulk")
        job = stores.jobs.get_job("j-staged")
    finally:
        stores.close()
    assert bulk is not None and bulk.status is JobStatus.QUEUED
    assert job is not None and (job.status, job.attempt, job.robot_id) == (
        JobStatus.RUNNING,
        1,
        "robot-1",
    )
