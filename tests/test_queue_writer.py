"""Staged writes of casare_nb.store.queue (the writer thread): group commit, marks, the overlay
of staged states on reads, retries, and what survives a SIGKILL. Real DuckDB files."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import sigkill_after

from casare_nb.core.errors import QueueError
from casare_nb.core.models import Job, JobStatus, Priority
from casare_nb.store.history import HistoryStore
from casare_nb.store.queue import QueueStore

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
WAIT = 30.0  # seconds a mark may take on a slow machine; never slept

STAGE_THEN_BLOCK_SCRIPT = """
import sys
from datetime import UTC, datetime
from casare_nb.core.models import Job, JobStatus
from casare_nb.store.history import HistoryStore
from casare_nb.store.queue import QueueStore

t0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
store = QueueStore(HistoryStore(sys.argv[1]), commit_interval_s=3600)
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


def make_job(job_id: str = "j1", **changes: Any) -> Job:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "workflow_path": "workflows/demo.ipynb",
        "parameters": {"n": 3},
        "created_at": T0,
        "eligible_at": T0,
    }
    fields.update(changes)
    return Job(**fields)


def running(job: Job, robot_id: str = "robot-1", attempt: int = 1) -> Job:
    return job.model_copy(
        update={
            "status": JobStatus.RUNNING,
            "robot_id": robot_id,
            "attempt": attempt,
            "assigned_at": T0,
        }
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "history.duckdb"


@pytest.fixture
def store(db_path: Path) -> Iterator[QueueStore]:
    """A store whose writer commits only when someone waits (a window of an hour)."""
    with QueueStore(HistoryStore(db_path), commit_interval_s=3600) as queue:
        yield queue


def committed(db_path: Path, job_id: str) -> tuple[Any, ...] | None:
    """The job's row as committed, read on a connection of its own (no overlay, no wait)."""
    with HistoryStore(db_path).connect() as con:
        return con.execute(
            "SELECT status, attempt, robot_id, cancel_requested FROM jobs WHERE job_id = ?",
            [job_id],
        ).fetchone()


def test_staged_changes_wait_for_the_window_and_commit_in_one_batch(
    store: QueueStore, db_path: Path
) -> None:
    """Changes staged within the group-commit window go in one transaction, only the last
    state of each job written; waiting for a mark commits them without waiting the window."""
    first = store.stage(make_job("j0"), new=True)
    assert store.wait_mark(first, WAIT)
    assert store.write_stats() == (1, 1)
    jobs = [make_job(f"j{i}") for i in range(1, 4)]
    for job in jobs:
        store.stage(job, new=True)
    store.stage(running(jobs[0]))
    store.stage(running(make_job("j0"), robot_id="robot-2"), cancel_requested=True)
    last = store.stage(running(jobs[0], robot_id="robot-3", attempt=2))
    assert not store.reached(last)  # the writer waits for its window
    assert committed(db_path, "j1") is None
    assert store.wait_mark(last, WAIT)
    assert store.write_stats() == (2, 1 + 4)  # 4 jobs in the second batch
    assert committed(db_path, "j1") == ("running", 2, "robot-3", False)
    assert committed(db_path, "j0") == ("running", 1, "robot-2", True)
    assert committed(db_path, "j3") == ("queued", 0, None, False)


def test_a_mark_is_reached_only_once_its_changes_are_committed(
    store: QueueStore, db_path: Path
) -> None:
    """While the connection is held elsewhere the writer cannot commit: the mark waits."""
    with store.connection():
        mark = store.stage(make_job(), new=True)
        store.hurry()
        assert not store.wait_mark(mark, 0.05)
        assert not store.reached(mark)
    assert store.wait_mark(mark, WAIT) and store.reached(mark)
    assert committed(db_path, "j1") == ("queued", 0, None, False)


def test_reads_lay_staged_states_over_the_rows(store: QueueStore, db_path: Path) -> None:
    """get_job, list_jobs, queued, running_on, count_by_status and cancel_requested show a
    staged state the database does not have yet."""
    for i in range(3):
        store.add_job(make_job(f"j{i}", created_at=T0 + timedelta(seconds=i)))
    store.stage(
        running(make_job("j1", created_at=T0 + timedelta(seconds=1))), cancel_requested=True
    )
    store.stage(make_job("j9", priority=Priority.HIGH), new=True)
    assert committed(db_path, "j1") == ("queued", 0, None, False)
    assert committed(db_path, "j9") is None
    job = store.get_job("j1")
    assert job is not None and (job.status, job.robot_id) == (JobStatus.RUNNING, "robot-1")
    assert store.cancel_requested("j1")
    assert [j.job_id for j in store.list_jobs()] == ["j2", "j1", "j9", "j0"]
    assert [j.job_id for j in store.list_jobs(status=[JobStatus.QUEUED], limit=2)] == [
        "j2",
        "j9",
    ]
    assert [j.job_id for j in store.queued(now=T0)] == ["j9", "j0", "j2"]
    assert [j.job_id for j in store.running_on("robot-1")] == ["j1"]
    assert [j.job_id for j in store.assigned_unaccepted(before=T0 + timedelta(1))] == ["j1"]
    counts = store.count_by_status()
    assert (counts[JobStatus.QUEUED], counts[JobStatus.RUNNING]) == (3, 1)
    assert store.queue_depth_by_priority()[Priority.HIGH] == 1
    store.flush(WAIT)
    assert committed(db_path, "j9") == ("queued", 0, None, False)
    assert store.count_by_status() == counts


def test_direct_writes_and_raw_connections_wait_for_staged_writes(
    store: QueueStore, db_path: Path
) -> None:
    """A direct write never races a staged one: it commits after what was staged before."""
    store.add_job(make_job())
    store.stage(running(make_job()))
    with store.connection() as con:  # raw SQL sees the staged state, committed
        row = con.execute("SELECT status FROM jobs WHERE job_id = 'j1'").fetchone()
    assert row == ("running",)
    store.stage(running(make_job(), attempt=2))
    finished = store.finish("j1", 2, JobStatus.COMPLETED, now=T0)  # sees attempt 2
    assert finished.status is JobStatus.COMPLETED


def test_a_failed_batch_is_retried_until_it_commits(
    store: QueueStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose transaction fails goes back and is written by a later attempt; its mark
    is reached only then."""
    write = QueueStore._write_staged
    calls: list[int] = []

    def flaky(self: QueueStore, batch: Any) -> set[str]:
        calls.append(len(batch))
        if len(calls) == 1:
            raise QueueError("disk full (simulated)")
        return write(self, batch)

    monkeypatch.setattr(QueueStore, "_write_staged", flaky)
    mark = store.stage(make_job(), new=True)
    store.stage(running(make_job()))
    assert store.wait_mark(mark, WAIT)
    assert len(calls) == 2
    assert committed(db_path, "j1") == ("running", 1, "robot-1", False)


def test_a_new_job_whose_id_is_taken_is_refused_and_the_row_kept(
    store: QueueStore, db_path: Path
) -> None:
    """A staged insert of an id already stored leaves the stored row; insert_refused says so
    (once)."""
    store.add_job(make_job(parameters={"n": 1}))
    mark = store.stage(make_job(parameters={"n": 2}), new=True)
    assert store.wait_mark(mark, WAIT)
    assert store.insert_refused("j1") and not store.insert_refused("j1")
    stored = store.get_job("j1")
    assert stored is not None and stored.parameters == {"n": 1}


def test_written_listeners_hear_every_commit_and_added_ones_every_direct_insert(
    store: QueueStore,
) -> None:
    """``written`` gets each committed mark (from the writer thread); ``added`` the jobs
    add_job / add_jobs committed."""
    marks: list[int] = []
    added: list[list[str]] = []
    store.subscribe(written=marks.append, added=lambda jobs: added.append([j.job_id for j in jobs]))
    mark = store.stage(make_job("s1"), new=True)
    assert store.wait_mark(mark, WAIT)
    store.add_job(make_job("d1"))
    store.add_jobs([make_job("d2"), make_job("d3")])
    assert marks == [mark] and added == [["d1"], ["d2", "d3"]]


def test_close_commits_what_was_staged(db_path: Path) -> None:
    """Closing the store writes the staged changes first (no wait for the window)."""
    store = QueueStore(HistoryStore(db_path), commit_interval_s=3600)
    first = store.stage(make_job(), new=True)
    assert store.wait_mark(first, WAIT)
    store.stage(running(make_job()))
    store.close()
    assert committed(db_path, "j1") == ("running", 1, "robot-1", False)
    with pytest.raises(QueueError, match="closed"):
        store.stage(make_job("j2"), new=True)


def test_a_reached_mark_survives_sigkill(db_path: Path) -> None:
    """A process SIGKILLed after its mark was reached keeps those changes; what it staged
    after (never committed) is simply not there."""
    assert sigkill_after(STAGE_THEN_BLOCK_SCRIPT, str(db_path), "durable") == -9
    with QueueStore(HistoryStore(db_path)) as queue:
        job = queue.get_job("j-staged")
    assert job is not None and (job.status, job.attempt, job.robot_id) == (
        JobStatus.RUNNING,
        1,
        "robot-1",
    )
