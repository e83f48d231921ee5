"""The JobStore interface (casare_nb.store.interfaces.JobStore), run against every backend:
stored jobs, staged states written behind with marks, reads that show what is staged."""

from __future__ import annotations

from datetime import timedelta

import pytest
from stores import T0, Backend, make_job, running

from casare_nb.core.errors import JobExists, QueueError
from casare_nb.core.models import Job, JobStatus, Priority
from casare_nb.store.interfaces import Stores

WAIT = 30.0  # seconds a mark may take on a slow machine; never slept
SLOW = 3600.0  # a group-commit window that only a waiter cuts short


def committed(backend: Backend, job_id: str) -> Job | None:
    """The job as durably stored: read through a handle of its own (nothing staged there)."""
    return backend.open().jobs.get_job(job_id)


def test_added_jobs_round_trip_every_field(stores: Stores) -> None:
    """A job added comes back equal, with aware UTC timestamps; unknown ids give None."""
    job = make_job(
        priority=Priority.HIGH,
        environment="prod",
        max_retries=2,
        error_message="x",
        resume_from_failed=True,
        source="cli",
    )
    stores.jobs.add_jobs([job])
    stored = stores.jobs.get_job("j1")
    assert stored == job
    assert stored is not None and stored.created_at.tzinfo is not None
    assert stores.jobs.get_job("missing") is None


def test_a_job_id_is_taken_once(stores: Stores) -> None:
    """Adding a job_id again raises JobExists and keeps the first job."""
    stores.jobs.add_jobs([make_job()])
    with pytest.raises(JobExists, match="job j1 already exists"):
        stores.jobs.add_jobs([make_job(workflow_path="other.ipynb")])
    stored = stores.jobs.get_job("j1")
    assert stored is not None and stored.workflow_path == "workflows/demo.ipynb"


def test_bulk_add_is_all_or_nothing(stores: Stores) -> None:
    """add_jobs refuses repeated or existing ids and then stores none of the batch."""
    stores.jobs.add_jobs([make_job("j1")])
    with pytest.raises(QueueError, match="jobs already exist: j1"):
        stores.jobs.add_jobs([make_job("j0"), make_job("j1")])
    with pytest.raises(QueueError, match="more than once: j5"):
        stores.jobs.add_jobs([make_job("j5"), make_job("j5")])
    assert [job.job_id for job in stores.jobs.list_jobs()] == ["j1"]
    stores.jobs.add_jobs([])


def test_unfinished_jobs_come_in_dispatch_order(stores: Stores) -> None:
    """10,000 jobs added at once come back from unfinished() by priority, then oldest; a
    finished one is not there."""
    priorities = list(Priority)
    jobs = [
        make_job(
            f"job-{i:05d}", priority=priorities[i % 4], created_at=T0 + timedelta(milliseconds=i)
        )
        for i in range(10_000)
    ]
    stores.jobs.add_jobs(jobs)
    stores.jobs.stage(jobs[7].model_copy(update={"status": JobStatus.COMPLETED}))
    ordered = [job for job, _ in stores.jobs.unfinished()]
    assert len(ordered) == 9_999
    assert ordered[0].job_id == "job-00003"  # oldest CRITICAL (i % 4 == 3)
    assert ordered[1].job_id == "job-00011"  # job-00007 finished
    assert ordered[-1].job_id == "job-09996"  # newest LOW (i % 4 == 0)
    ranks = [job.priority.rank for job in ordered]
    assert ranks == sorted(ranks, reverse=True)


def test_list_jobs_newest_first_with_status_filter(stores: Stores) -> None:
    """list_jobs is newest first, filtered by status, cut at the limit."""
    stores.jobs.add_jobs(
        [make_job(f"j{i}", created_at=T0 + timedelta(seconds=i)) for i in range(4)]
    )
    stores.jobs.stage(running(make_job("j1", created_at=T0 + timedelta(seconds=1))))
    assert [j.job_id for j in stores.jobs.list_jobs()] == ["j3", "j2", "j1", "j0"]
    assert [j.job_id for j in stores.jobs.list_jobs(status=[JobStatus.RUNNING])] == ["j1"]
    assert [j.job_id for j in stores.jobs.list_jobs(status=[JobStatus.QUEUED], limit=2)] == [
        "j3",
        "j2",
    ]
    assert stores.jobs.list_jobs(status=[]) == [] and stores.jobs.list_jobs(limit=0) == []


def test_counts_by_status_and_queue_depth_by_priority(stores: Stores) -> None:
    """Counts cover every status and priority, zero included; depth counts queued jobs only
    (eligible or not yet)."""
    stores.jobs.add_jobs(
        [
            make_job("a", priority=Priority.HIGH),
            make_job("b", priority=Priority.HIGH, eligible_at=T0 + timedelta(days=1)),
            make_job("c", priority=Priority.LOW),
            make_job("d"),
            make_job("e"),
        ]
    )
    stores.jobs.stage(running(make_job("d")))
    stores.jobs.stage(make_job("e").model_copy(update={"status": JobStatus.CANCELLED}))
    assert stores.jobs.count_by_status() == {status: 0 for status in JobStatus} | {
        JobStatus.QUEUED: 3,
        JobStatus.RUNNING: 1,
        JobStatus.CANCELLED: 1,
    }
    assert stores.jobs.queue_depth_by_priority() == {
        Priority.LOW: 1,
        Priority.NORMAL: 0,
        Priority.HIGH: 2,
        Priority.CRITICAL: 0,
    }


def test_a_staged_state_is_read_back_at_once_and_durable_at_its_mark(backend: Backend) -> None:
    """Reads show a staged state before it is written; another handle sees it only once its
    mark is reached, the last state staged for a job winning."""
    jobs = backend.open(commit_interval_s=SLOW).jobs
    jobs.add_jobs([make_job("j0"), make_job("j1", created_at=T0 + timedelta(seconds=1))])
    jobs.stage(running(make_job("j1")), cancel_requested=True)
    jobs.stage(make_job("j9", priority=Priority.HIGH), new=True)
    mark = jobs.stage(running(make_job("j1"), robot_id="robot-2", attempt=2), cancel_requested=True)
    assert not jobs.reached(mark)
    stored = committed(backend, "j1")
    assert stored is not None and stored.status is JobStatus.QUEUED
    assert committed(backend, "j9") is None
    job = jobs.get_job("j1")
    assert job is not None and (job.status, job.attempt, job.robot_id) == (
        JobStatus.RUNNING,
        2,
        "robot-2",
    )
    assert [j.job_id for j in jobs.list_jobs(status=[JobStatus.QUEUED])] == ["j9", "j0"]
    counts = jobs.count_by_status()
    assert (counts[JobStatus.QUEUED], counts[JobStatus.RUNNING]) == (2, 1)
    assert jobs.queue_depth_by_priority()[Priority.HIGH] == 1
    assert [(j.job_id, asked) for j, asked in jobs.unfinished()] == [
        ("j9", False),
        ("j0", False),
        ("j1", True),
    ]
    assert jobs.wait_mark(mark, WAIT) and jobs.reached(mark)
    stored = committed(backend, "j1")
    assert stored is not None and (stored.attempt, stored.robot_id) == (2, "robot-2")
    assert committed(backend, "j9") == make_job("j9", priority=Priority.HIGH)
    assert jobs.count_by_status() == counts


def test_a_new_job_whose_id_is_taken_is_refused_and_the_stored_one_kept(stores: Stores) -> None:
    """A staged insert of an id already stored leaves the stored job; insert_refused says so,
    once."""
    stores.jobs.add_jobs([make_job(parameters={"n": 1})])
    mark = stores.jobs.stage(make_job(parameters={"n": 2}), new=True)
    assert stores.jobs.wait_mark(mark, WAIT)
    assert stores.jobs.insert_refused("j1") and not stores.jobs.insert_refused("j1")
    stored = stores.jobs.get_job("j1")
    assert stored is not None and stored.parameters == {"n": 1}


def test_listeners_hear_every_durable_mark_and_every_bulk_add(stores: Stores) -> None:
    """``written`` gets each durable mark; ``added`` the jobs add_jobs stored; unsubscribed
    listeners hear nothing more."""
    marks: list[int] = []
    added: list[list[str]] = []

    def on_added(jobs: list[Job]) -> None:
        added.append([j.job_id for j in jobs])

    stores.jobs.subscribe(written=marks.append, added=on_added)
    mark = stores.jobs.stage(make_job("s1"), new=True)
    assert stores.jobs.wait_mark(mark, WAIT)
    stores.jobs.add_jobs([make_job("d2"), make_job("d3")])
    assert marks[-1] == mark and added == [["d2", "d3"]]
    stores.jobs.unsubscribe(written=marks.append, added=on_added)
    stores.jobs.add_jobs([make_job("d4")])
    stores.jobs.flush(WAIT)
    assert added == [["d2", "d3"]]


def test_close_writes_what_was_staged_and_refuses_more(backend: Backend) -> None:
    """Closing writes the staged states first (no wait for the window); staging after
    closing raises QueueError."""
    stores = backend.open(commit_interval_s=SLOW)
    stores.jobs.stage(make_job(), new=True)
    stores.jobs.stage(running(make_job()))
    stores.close()
    stored = committed(backend, "j1")
    assert stored is not None and (stored.status, stored.robot_id) == (JobStatus.RUNNING, "robot-1")
    with pytest.raises(QueueError, match="closed"):
        stores.jobs.stage(make_job("j2"), new=True)


def test_a_reopened_store_finds_every_job_as_it_was_left(backend: Backend) -> None:
    """After a close, the store opened again holds every job in its last state."""
    stores = backend.open()
    stores.jobs.add_jobs([make_job(f"j{i}") for i in range(4)])
    stores.jobs.stage(running(make_job("j1")))
    stores.jobs.stage(running(make_job("j2")).model_copy(update={"status": JobStatus.COMPLETED}))
    stores.jobs.stage(make_job("j3").model_copy(update={"status": JobStatus.CANCELLED}))
    stores.jobs.flush(WAIT)
    before = {job.job_id: job for job in stores.jobs.list_jobs()}
    stores.close()
    reopened = backend.open()
    assert {job.job_id: job for job in reopened.jobs.list_jobs()} == before
    assert [before[j].status for j in ("j0", "j1", "j2", "j3")] == [
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        JobStatus.COMPLETED,
        JobStatus.CANCELLED,
    ]
