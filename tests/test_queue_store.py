"""Tests of casare_nb.store.queue (jobs and robot tokens) against real DuckDB files."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import sigkill_after

from casare_nb.core.errors import QueueError
from casare_nb.core.models import Job, JobStatus, Priority, RunRecord
from casare_nb.store import history
from casare_nb.store.history import SCHEMA_VERSION, HistoryStore
from casare_nb.store.queue import QueueStore

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

ADD_THEN_BLOCK_SCRIPT = """
import sys
from datetime import UTC, datetime
from casare_nb.core.models import Job
from casare_nb.store.history import HistoryStore
from casare_nb.store.queue import QueueStore

t0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
store = QueueStore(HistoryStore(sys.argv[1]))
store.add_job(Job(job_id="j-kill", workflow_path="wf.ipynb", created_at=t0, eligible_at=t0))
store.add_job(Job(job_id="j-run", workflow_path="wf.ipynb", created_at=t0, eligible_at=t0))
store.assign("j-run", "robot-1", now=t0)
print("added", flush=True)
sys.stdin.read()
"""


def make_job(job_id: str = "j1", **changes: Any) -> Job:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "workflow_path": "workflows/demo.ipynb",
        "parameters": {"n": 3, "name": "x"},
        "tags": ["gpu"],
        "created_at": T0,
        "eligible_at": T0,
    }
    fields.update(changes)
    return Job(**fields)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "history.duckdb"


@pytest.fixture
def queue(db_path: Path) -> Iterator[QueueStore]:
    with QueueStore(HistoryStore(db_path)) as store:
        yield store


def running(queue: QueueStore, job_id: str = "j1", robot_id: str = "robot-1") -> Job:
    """Add a job and assign it."""
    queue.add_job(make_job(job_id))
    return queue.assign(job_id, robot_id, now=T0 + timedelta(seconds=1))


def forget_migrations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "_MIGRATED", set())


# -- schema -------------------------------------------------------------------------------


def test_migrations_upgrade_a_v1_file_and_keep_history(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A v1 file gets jobs (with failures, trigger), tokens and the trigger tables; runs kept."""
    assert SCHEMA_VERSION == 4
    with monkeypatch.context() as patch:
        patch.setattr(history, "MIGRATIONS", history.MIGRATIONS[:1])
        patch.setattr(history, "_MIGRATED", set())
        old = HistoryStore(db_path)
        old.start_run(
            RunRecord(run_id="r1", workflow_path="wf", notebook_sha256="0", started_at=T0)
        )
        assert old.schema_version() == 1
    forget_migrations(monkeypatch)

    with QueueStore(HistoryStore(db_path)) as queue:
        queue.add_job(make_job())
        with queue.connection() as con:
            tables = {row[0] for row in con.execute("SHOW TABLES").fetchall()}
        assert queue.get_job("j1") == make_job()
    assert {"runs", "cells", "jobs", "tokens", "schedules", "fires", "triggers"} <= tables
    assert {"deliveries", "watched_files", "outputs"} <= tables
    store = HistoryStore(db_path)
    assert store.schema_version() == 4
    assert [run.run_id for run in store.list_runs()] == ["r1"]


def test_every_job_field_has_a_column() -> None:
    """The job column list covers exactly the fields of Job."""
    from casare_nb.store import queue as queue_module

    assert list(queue_module._JOB_COLUMNS) == list(Job.model_fields)


# -- add, get, list -----------------------------------------------------------------------


def test_add_get_round_trips_every_field(queue: QueueStore) -> None:
    """A job added comes back equal, with aware UTC timestamps; unknown ids give None."""
    job = make_job(
        priority=Priority.HIGH,
        environment="prod",
        max_retries=2,
        robot_id=None,
        error_message="x",
        resume_from_failed=True,
        source="cli",
        finished_at=None,
    )
    queue.add_job(job)
    stored = queue.get_job("j1")
    assert stored == job
    assert stored is not None and stored.created_at.tzinfo is not None
    assert queue.get_job("missing") is None


def test_duplicate_job_id_is_refused(queue: QueueStore) -> None:
    """Adding a job_id twice raises QueueError and keeps the first job."""
    queue.add_job(make_job())
    with pytest.raises(QueueError, match="job j1 already exists"):
        queue.add_job(make_job(workflow_path="other.ipynb"))
    stored = queue.get_job("j1")
    assert stored is not None and stored.workflow_path == "workflows/demo.ipynb"


def test_list_jobs_newest_first_with_status_filter(queue: QueueStore) -> None:
    """list_jobs orders newest created_at first, filters by status and honours limit."""
    for i in range(4):
        queue.add_job(make_job(f"j{i}", created_at=T0 + timedelta(minutes=i)))
    queue.cancel("j1", now=T0)
    assert [j.job_id for j in queue.list_jobs()] == ["j3", "j2", "j1", "j0"]
    assert [j.job_id for j in queue.list_jobs(limit=2)] == ["j3", "j2"]
    assert [j.job_id for j in queue.list_jobs(status=[JobStatus.CANCELLED])] == ["j1"]
    assert queue.list_jobs(status=[]) == []


# -- dispatch order -----------------------------------------------------------------------


def test_queued_is_in_dispatch_order_and_skips_future_jobs(queue: QueueStore) -> None:
    """queued(): priority rank desc, then created_at, then job_id; future eligible_at excluded."""
    queue.add_job(make_job("low", priority=Priority.LOW, created_at=T0))
    queue.add_job(make_job("n2", created_at=T0 + timedelta(seconds=2)))
    queue.add_job(make_job("n1b", created_at=T0 + timedelta(seconds=1)))
    queue.add_job(make_job("n1a", created_at=T0 + timedelta(seconds=1)))
    queue.add_job(make_job("crit", priority=Priority.CRITICAL, created_at=T0 + timedelta(hours=1)))
    queue.add_job(make_job("high", priority=Priority.HIGH, created_at=T0 + timedelta(hours=1)))
    queue.add_job(
        make_job("later", priority=Priority.CRITICAL, eligible_at=T0 + timedelta(minutes=5))
    )
    running(queue, "busy")
    now = T0 + timedelta(minutes=1)
    assert [j.job_id for j in queue.queued(now=now)] == [
        "crit",
        "high",
        "n1a",
        "n1b",
        "n2",
        "low",
    ]
    assert [j.job_id for j in queue.queued(now=now, limit=2)] == ["crit", "high"]
    assert queue.queued(now=T0 + timedelta(minutes=5))[0].job_id == "later"


# -- transitions --------------------------------------------------------------------------


def test_assign_is_compare_and_set(queue: QueueStore) -> None:
    """assign moves queued -> running once; a second assign of the same job is refused."""
    queue.add_job(make_job())
    job = queue.assign("j1", "robot-1", now=T0 + timedelta(seconds=5))
    assert (job.status, job.robot_id, job.attempt) == (JobStatus.RUNNING, "robot-1", 1)
    assert job.assigned_at == T0 + timedelta(seconds=5)
    with pytest.raises(QueueError, match=r"job j1 is not queued \(status running\)"):
        queue.assign("j1", "robot-2", now=T0)
    assert queue.get_job("j1") == job
    with pytest.raises(QueueError, match="unknown job nope"):
        queue.assign("nope", "robot-1", now=T0)


def test_concurrent_assigns_only_one_wins(queue: QueueStore) -> None:
    """Of many threads assigning the same job at once, exactly one succeeds."""
    queue.add_job(make_job())
    wins: list[str] = []
    errors: list[QueueError] = []
    barrier = threading.Barrier(8)

    def attempt(robot: str) -> None:
        barrier.wait()
        try:
            wins.append(queue.assign("j1", robot, now=T0).robot_id or "")
        except QueueError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attempt, args=(f"r{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1 and len(errors) == 7
    job = queue.get_job("j1")
    assert job is not None and job.robot_id == wins[0] and job.attempt == 1


def test_accept_sets_accepted_at_and_refuses_stale_attempt(queue: QueueStore) -> None:
    """accept records accepted_at once (idempotent); a stale attempt is refused."""
    running(queue)
    accepted = queue.accept("j1", 1, now=T0 + timedelta(seconds=2))
    assert accepted.accepted_at == T0 + timedelta(seconds=2)
    assert queue.accept("j1", 1, now=T0 + timedelta(seconds=9)) == accepted
    with pytest.raises(QueueError, match="attempt 0 is stale"):
        queue.accept("j1", 0, now=T0)
    with pytest.raises(QueueError, match="attempt 2 is stale"):
        queue.accept("j1", 2, now=T0)


def test_requeue_keeps_attempt_and_sets_eligible_at(queue: QueueStore) -> None:
    """requeue: running -> queued, robot fields cleared, attempt kept; twice round the loop."""
    running(queue)
    queue.accept("j1", 1, now=T0)
    later = T0 + timedelta(minutes=3)
    job = queue.requeue("j1", eligible_at=later, resume_from_failed=True, reason="robot died")
    assert (job.status, job.attempt, job.eligible_at) == (JobStatus.QUEUED, 1, later)
    assert (job.robot_id, job.assigned_at, job.accepted_at) == (None, None, None)
    assert job.resume_from_failed and job.error_message == "robot died"
    assert queue.queued(now=T0) == []
    assert [j.job_id for j in queue.queued(now=later)] == ["j1"]
    with pytest.raises(QueueError, match=r"job j1 is not running \(status queued\)"):
        queue.requeue("j1", eligible_at=later, resume_from_failed=False)

    again = queue.assign("j1", "robot-2", now=later)
    assert again.attempt == 2
    job = queue.requeue("j1", eligible_at=later, resume_from_failed=False)
    assert (job.status, job.attempt, job.resume_from_failed) == (JobStatus.QUEUED, 2, False)
    assert queue.assign("j1", "robot-3", now=later).attempt == 3


def test_finish_is_idempotent_and_refuses_stale_or_conflicting(queue: QueueStore) -> None:
    """finish sets the final state; same status again returns it; stale or other status fail."""
    running(queue)
    done = queue.finish(
        "j1", 1, JobStatus.FAILED, now=T0 + timedelta(minutes=1), error_name="ValueError"
    )
    assert (done.status, done.finished_at, done.error_name) == (
        JobStatus.FAILED,
        T0 + timedelta(minutes=1),
        "ValueError",
    )
    assert queue.finish("j1", 1, JobStatus.FAILED, now=T0 + timedelta(hours=1)) == done
    with pytest.raises(QueueError, match="job j1 already failed"):
        queue.finish("j1", 1, JobStatus.COMPLETED, now=T0)
    with pytest.raises(QueueError, match="attempt 0 is stale"):
        queue.finish("j1", 0, JobStatus.FAILED, now=T0)
    with pytest.raises(QueueError, match="not a final status"):
        queue.finish("j1", 1, JobStatus.RUNNING, now=T0)
    assert queue.get_job("j1") == done


def test_finish_after_requeue_and_reassign_refuses_old_attempt(queue: QueueStore) -> None:
    """A late result of a superseded attempt is refused; the current attempt finishes."""
    running(queue)
    queue.requeue("j1", eligible_at=T0, resume_from_failed=False)
    queue.assign("j1", "robot-2", now=T0)
    with pytest.raises(QueueError, match=r"attempt 1 is stale \(current attempt 2\)"):
        queue.finish("j1", 1, JobStatus.COMPLETED, now=T0)
    assert queue.finish("j1", 2, JobStatus.COMPLETED, now=T0).status is JobStatus.COMPLETED


def test_cancel_queued_running_and_finished(queue: QueueStore) -> None:
    """cancel: queued -> cancelled; running -> flagged only (twice ok); finished -> refused."""
    queue.add_job(make_job("q"))
    cancelled = queue.cancel("q", now=T0 + timedelta(seconds=3))
    assert (cancelled.status, cancelled.finished_at) == (
        JobStatus.CANCELLED,
        T0 + timedelta(seconds=3),
    )
    with pytest.raises(QueueError, match="job q already cancelled"):
        queue.cancel("q", now=T0)

    running(queue, "r")
    assert not queue.cancel_requested("r")
    assert queue.cancel("r", now=T0).status is JobStatus.RUNNING
    assert queue.cancel("r", now=T0).status is JobStatus.RUNNING
    assert queue.cancel_requested("r")
    queue.finish("r", 1, JobStatus.CANCELLED, now=T0)

    running(queue, "c")
    queue.finish("c", 1, JobStatus.COMPLETED, now=T0)
    with pytest.raises(QueueError, match="job c already completed"):
        queue.cancel("c", now=T0)
    with pytest.raises(QueueError, match="unknown job nope"):
        queue.cancel_requested("nope")


def test_requeue_of_a_cancel_requested_job_cancels_it(queue: QueueStore) -> None:
    """A running job whose cancel is pending is cancelled, not requeued, when its robot dies."""
    running(queue)
    queue.cancel("j1", now=T0)
    job = queue.requeue(
        "j1", eligible_at=T0, resume_from_failed=False, now=T0 + timedelta(minutes=1)
    )
    assert (job.status, job.finished_at) == (JobStatus.CANCELLED, T0 + timedelta(minutes=1))


def test_requeue_counts_failures_only_when_told(queue: QueueStore) -> None:
    """A retry after a failure counts one failure; a requeue for a lost robot counts none."""
    running(queue)
    lost = queue.requeue("j1", eligible_at=T0, resume_from_failed=True)
    assert (lost.attempt, lost.failures) == (1, 0)
    queue.assign("j1", "robot-2", now=T0)
    retried = queue.requeue("j1", eligible_at=T0, resume_from_failed=True, failed=True)
    assert (retried.attempt, retried.failures) == (2, 1)


def test_reopen_queues_a_finished_job_again(queue: QueueStore) -> None:
    """reopen: a failed job is queued again with new parameters, errors and failures cleared;
    an unfinished or unknown job is refused."""
    running(queue)
    queue.requeue("j1", eligible_at=T0, resume_from_failed=True, failed=True)
    queue.assign("j1", "robot-1", now=T0)
    failed = queue.finish(
        "j1", 2, JobStatus.FAILED, now=T0, error_name="ValueError", error_message="x", failed_cell=4
    )
    assert failed.failed_cell == 4
    later = T0 + timedelta(minutes=5)
    job = queue.reopen("j1", now=later, resume_from_failed=True, parameters={"limit": 5})
    assert (job.status, job.attempt, job.failures, job.eligible_at) == (
        JobStatus.QUEUED,
        2,
        0,
        later,
    )
    assert (job.error_name, job.error_message, job.finished_at, job.failed_cell) == (None,) * 4
    assert job.parameters == {"limit": 5} and job.resume_from_failed
    with pytest.raises(QueueError, match="job j1 is still queued: only a finished job re-runs"):
        queue.reopen("j1", now=later, resume_from_failed=False)
    with pytest.raises(QueueError, match="unknown job nope"):
        queue.reopen("nope", now=later, resume_from_failed=False)


def test_running_on_and_assigned_unaccepted(queue: QueueStore) -> None:
    """running_on lists a robot's running jobs; assigned_unaccepted those not accepted in time."""
    queue.add_jobs([make_job(f"j{i}") for i in range(4)])
    queue.assign("j0", "robot-1", now=T0 + timedelta(seconds=1))
    queue.assign("j1", "robot-1", now=T0 + timedelta(seconds=2))
    queue.assign("j2", "robot-2", now=T0 + timedelta(seconds=3))
    queue.assign("j3", "robot-1", now=T0 + timedelta(seconds=4))
    queue.accept("j1", 1, now=T0 + timedelta(seconds=5))
    queue.finish("j3", 1, JobStatus.COMPLETED, now=T0)
    assert [j.job_id for j in queue.running_on("robot-1")] == ["j0", "j1"]
    assert [j.job_id for j in queue.running_on("robot-9")] == []
    before = T0 + timedelta(seconds=3)
    assert [j.job_id for j in queue.assigned_unaccepted(before=before)] == ["j0"]
    assert [j.job_id for j in queue.assigned_unaccepted(before=before + timedelta(1))] == [
        "j0",
        "j2",
    ]


def test_count_by_status_and_depth_by_priority(queue: QueueStore) -> None:
    """Counts cover every status and priority, zero included; depth counts queued jobs only."""
    queue.add_job(make_job("a", priority=Priority.HIGH))
    queue.add_job(make_job("b", priority=Priority.HIGH, eligible_at=T0 + timedelta(days=1)))
    queue.add_job(make_job("c", priority=Priority.LOW))
    running(queue, "d")
    queue.add_job(make_job("e"))
    queue.cancel("e", now=T0)
    counts = queue.count_by_status()
    assert counts == {status: 0 for status in JobStatus} | {
        JobStatus.QUEUED: 3,
        JobStatus.RUNNING: 1,
        JobStatus.CANCELLED: 1,
    }
    assert queue.queue_depth_by_priority() == {
        Priority.LOW: 1,
        Priority.NORMAL: 0,
        Priority.HIGH: 2,
        Priority.CRITICAL: 0,
    }


# -- tokens -------------------------------------------------------------------------------


def test_token_verifies_and_only_its_hash_is_stored(queue: QueueStore, db_path: Path) -> None:
    """create_token returns a token that verifies; neither the table nor the file holds it."""
    token = queue.create_token("robot-a")
    assert len(token) >= 40
    assert queue.verify_token(token) == "robot-a"
    assert queue.verify_token(token + "x") is None
    assert queue.verify_token("") is None
    with queue.connection() as con:
        rows = con.execute("SELECT * FROM tokens").fetchall()
    assert len(rows) == 1 and all(token not in str(value) for value in rows[0])
    listed = queue.list_tokens()
    assert [set(t) for t in listed] == [{"name", "created_at", "revoked_at"}]
    assert listed[0]["name"] == "robot-a" and listed[0]["revoked_at"] is None
    queue.close()
    data = b"".join(p.read_bytes() for p in db_path.parent.iterdir())
    assert token.encode() not in data


def test_revoke_duplicate_and_recreate_tokens(queue: QueueStore) -> None:
    """Revoked tokens stop verifying; a live name is unique; a revoked name can be reused."""
    first = queue.create_token("robot-a")
    with pytest.raises(QueueError, match="token robot-a already exists"):
        queue.create_token("robot-a")
    queue.revoke_token("robot-a")
    queue.revoke_token("robot-a")
    assert queue.verify_token(first) is None
    second = queue.create_token("robot-a")
    assert second != first
    assert queue.verify_token(second) == "robot-a"
    assert queue.verify_token(first) is None
    with pytest.raises(QueueError, match="unknown token ghost"):
        queue.revoke_token("ghost")
    listed = queue.list_tokens()
    assert [t["name"] for t in listed] == ["robot-a", "robot-a"]
    assert [t["revoked_at"] is None for t in listed] == [False, True]


# -- persistence --------------------------------------------------------------------------


def test_reopening_finds_every_job_in_its_state(db_path: Path) -> None:
    """After close, a new QueueStore on the same file sees every job as it was left."""
    with QueueStore(HistoryStore(db_path)) as queue:
        queue.add_jobs([make_job(f"j{i}") for i in range(4)])
        queue.assign("j1", "robot-1", now=T0)
        queue.assign("j2", "robot-1", now=T0)
        queue.accept("j2", 1, now=T0)
        queue.finish("j2", 1, JobStatus.COMPLETED, now=T0)
        queue.cancel("j3", now=T0)
        token = queue.create_token("robot-1")
        before = {job.job_id: job for job in queue.list_jobs()}
    with pytest.raises(QueueError, match="closed"):
        queue.get_job("j1")

    with QueueStore(HistoryStore(db_path)) as reopened:
        assert {job.job_id: job for job in reopened.list_jobs()} == before
        assert reopened.verify_token(token) == "robot-1"
    assert [before[j].status for j in ("j0", "j1", "j2", "j3")] == [
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        JobStatus.COMPLETED,
        JobStatus.CANCELLED,
    ]


def test_committed_jobs_survive_sigkill(db_path: Path) -> None:
    """A process SIGKILLed right after add_job/assign returned loses neither write."""
    assert sigkill_after(ADD_THEN_BLOCK_SCRIPT, str(db_path), "added") == -9

    with QueueStore(HistoryStore(db_path)) as queue:
        added = queue.get_job("j-kill")
        assigned = queue.get_job("j-run")
    assert added is not None and added.status is JobStatus.QUEUED
    assert assigned is not None
    assert (assigned.status, assigned.robot_id, assigned.attempt) == (
        JobStatus.RUNNING,
        "robot-1",
        1,
    )


# -- bulk ---------------------------------------------------------------------------------


def test_bulk_add_10000_jobs_in_dispatch_order(queue: QueueStore) -> None:
    """add_jobs stores 10,000 jobs in one go and queued() returns them in dispatch order."""
    priorities = list(Priority)
    jobs = [
        make_job(
            f"job-{i:05d}",
            priority=priorities[i % 4],
            created_at=T0 + timedelta(milliseconds=i),
        )
        for i in range(10_000)
    ]
    queue.add_jobs(jobs)
    ordered = queue.queued(now=T0 + timedelta(hours=1), limit=20_000)
    assert len(ordered) == 10_000
    assert ordered[0].job_id == "job-00003"  # oldest CRITICAL (i % 4 == 3)
    assert ordered[-1].job_id == "job-09996"  # newest LOW (i % 4 == 0)
    ranks = [job.priority.rank for job in ordered]
    assert ranks == sorted(ranks, reverse=True)
    assert ordered[1] == jobs[7]
    assert queue.count_by_status()[JobStatus.QUEUED] == 10_000


def test_bulk_add_is_all_or_nothing_on_duplicates(queue: QueueStore) -> None:
    """add_jobs refuses repeated or existing ids and then stores none of the batch."""
    queue.add_job(make_job("j1"))
    with pytest.raises(QueueError, match="jobs already exist: j1"):
        queue.add_jobs([make_job("j0"), make_job("j1")])
    with pytest.raises(QueueError, match="more than once: j5"):
        queue.add_jobs([make_job("j5"), make_job("j5")])
    assert [job.job_id for job in queue.list_jobs()] == ["j1"]
    queue.add_jobs([])
