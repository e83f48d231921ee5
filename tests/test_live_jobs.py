"""The orchestrator's in-memory queue (casare_nb.core.jobs): dispatch order, retry
backoff, compare-and-set transitions, and every change handed on in order. Pure: no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from casare_nb.core.dispatch import dispatch_key
from casare_nb.core.errors import QueueError
from casare_nb.core.jobs import LiveJobs
from casare_nb.core.models import Job, Priority, RunStatus

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make_job(job_id: str, **changes: Any) -> Job:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "workflow_path": "wf.ipynb",
        "created_at": T0,
        "eligible_at": T0,
    }
    fields.update(changes)
    return Job(**fields)


class Staged(list[tuple[Job, bool]]):
    """The stage callback: records (job, cancel_requested) in order."""

    def __call__(self, job: Job, cancel_requested: bool) -> int:
        self.append((job, cancel_requested))
        return len(self)

    def states(self) -> list[tuple[str, str, int]]:
        return [(job.job_id, job.status.value, job.attempt) for job, _ in self]


@pytest.fixture
def staged() -> Staged:
    return Staged()


@pytest.fixture
def live(staged: Staged) -> LiveJobs:
    return LiveJobs(staged)


def ids(jobs: list[Job]) -> list[str]:
    return [job.job_id for job in jobs]


def test_take_pops_queued_jobs_in_dispatch_order(live: LiveJobs) -> None:
    """take() answers priority first, then oldest, then id: the order of dispatch_key."""
    jobs = [
        make_job("low", priority=Priority.LOW),
        make_job("n2", created_at=T0 + timedelta(seconds=2)),
        make_job("n1b", created_at=T0 + timedelta(seconds=1)),
        make_job("n1a", created_at=T0 + timedelta(seconds=1)),
        make_job("crit", priority=Priority.CRITICAL, created_at=T0 + timedelta(hours=1)),
        make_job("high", priority=Priority.HIGH, created_at=T0 + timedelta(hours=1)),
    ]
    for job in jobs:
        assert live.add(job)
    expected = ids(sorted(jobs, key=dispatch_key))
    assert expected == ["crit", "high", "n1a", "n1b", "n2", "low"]
    now = T0 + timedelta(days=1)
    first = live.take(now, 2)
    assert ids(first) == ["crit", "high"]
    live.put_back(first)
    assert ids(live.take(now, 10)) == expected
    assert live.take(now, 10) == []  # everything was taken and not given back


def test_put_back_keeps_order_and_drops_jobs_that_left(live: LiveJobs) -> None:
    """Jobs given back keep their place; one assigned or cancelled meanwhile is dropped."""
    for i in range(5):
        live.add(make_job(f"j{i}", created_at=T0 + timedelta(seconds=i)))
    taken = live.take(T0, 3)
    live.assign("j0", "robot-1", now=T0)
    live.cancel("j2", now=T0)
    live.put_back(taken)
    assert ids(live.take(T0, 10)) == ["j1", "j3", "j4"]


def test_jobs_waiting_for_their_backoff_are_taken_once_due(live: LiveJobs) -> None:
    """A job whose eligible_at is later is skipped until then, and then comes in order."""
    live.add(make_job("later", eligible_at=T0 + timedelta(minutes=5)))
    live.add(make_job("now", created_at=T0 + timedelta(seconds=1)))
    assert ids(live.take(T0, 10)) == ["now"]
    assert live.next_eligible() == T0 + timedelta(minutes=5)
    assert live.take(T0 + timedelta(minutes=1), 10) == []
    assert ids(live.take(T0 + timedelta(minutes=5), 10)) == ["later"]


def test_a_requeued_job_keeps_its_place_and_waits_for_its_backoff(live: LiveJobs) -> None:
    """A retry is queued again by creation time, not at the back, after its backoff."""
    live.add(make_job("old"))
    live.add(make_job("new", created_at=T0 + timedelta(seconds=1)))
    assert ids(live.take(T0, 1)) == ["old"]
    live.assign("old", "robot-1", now=T0)
    live.requeue("old", eligible_at=T0 + timedelta(seconds=30), resume_from_failed=True, now=T0)
    assert ids(live.take(T0 + timedelta(seconds=1), 10)) == ["new"]
    again = live.take(T0 + timedelta(seconds=30), 10)
    assert ids(again) == ["old"] and again[0].attempt == 1


def test_transitions_are_compare_and_set(live: LiveJobs, staged: Staged) -> None:
    """Stale attempts, wrong states and unknown jobs are refused and change nothing."""
    live.add(make_job("j1"))
    with pytest.raises(QueueError, match="not running"):
        live.accept("j1", 0, now=T0)
    running = live.assign("j1", "robot-1", now=T0)
    assert (running.status, running.attempt, running.robot_id) == (
        RunStatus.RUNNING,
        1,
        "robot-1",
    )
    with pytest.raises(QueueError, match="not queued"):
        live.assign("j1", "robot-2", now=T0)
    with pytest.raises(QueueError, match="attempt 2 is stale"):
        live.accept("j1", 2, now=T0)
    accepted = live.accept("j1", 1, now=T0 + timedelta(seconds=1))
    assert live.accept("j1", 1, now=T0 + timedelta(seconds=9)) == accepted  # first time wins
    done = live.finish("j1", 1, RunStatus.COMPLETED, now=T0 + timedelta(seconds=2))
    assert done.status is RunStatus.COMPLETED and "j1" not in live
    with pytest.raises(QueueError, match="not queued or running"):
        live.finish("j1", 1, RunStatus.COMPLETED, now=T0)  # a finished job is not finished twice
    with pytest.raises(QueueError, match="not running"):
        live.requeue("nope", eligible_at=T0, resume_from_failed=False, now=T0)
    assert staged.states() == [
        ("j1", "running", 1),
        ("j1", "running", 1),  # accepted
        ("j1", "completed", 1),
    ]


def test_requeue_of_a_job_whose_cancel_was_asked_cancels_it(live: LiveJobs, staged: Staged) -> None:
    """A running job with a cancel requested ends cancelled when it would be requeued."""
    live.add(make_job("j1"))
    live.assign("j1", "robot-1", now=T0)
    assert live.cancel("j1", now=T0) is not None and live.cancel_requested("j1")
    job = live.requeue("j1", eligible_at=T0, resume_from_failed=True, now=T0, reason="robot died")
    assert (job.status, job.error_message) == (RunStatus.CANCELLED, "robot died")
    assert "j1" not in live and staged[-1] == (job, True)


def test_cancel_a_queued_job_at_once_and_a_finished_one_not_at_all(live: LiveJobs) -> None:
    """Cancel ends a queued job now; for a job not here (finished, unknown) it answers None."""
    live.add(make_job("j1", error_message="earlier"))
    done = live.cancel("j1", now=T0 + timedelta(seconds=1))
    assert done is not None and (done.status, done.finished_at, done.error_message) == (
        RunStatus.CANCELLED,
        T0 + timedelta(seconds=1),
        "earlier",
    )
    assert live.cancel("j1", now=T0) is None and live.cancel("nope", now=T0) is None


def test_reopen_queues_a_finished_job_again(live: LiveJobs) -> None:
    """A finished job re-runs as its next attempt with errors and failures cleared."""
    failed = make_job(
        "j1",
        status=RunStatus.FAILED,
        attempt=2,
        failures=2,
        error_name="ValueError",
        finished_at=T0,
        robot_id="robot-1",
    )
    job = live.reopen(failed, now=T0 + timedelta(hours=1), resume_from_failed=True)
    assert (job.status, job.attempt, job.failures, job.error_name, job.robot_id) == (
        RunStatus.QUEUED,
        2,
        0,
        None,
        None,
    )
    assert live.assign("j1", "robot-2", now=T0).attempt == 3
    with pytest.raises(QueueError, match="only a finished job re-runs"):
        live.reopen(failed, now=T0, resume_from_failed=False)  # it is running again


def test_a_robot_claims_an_attempt_the_database_never_recorded(live: LiveJobs) -> None:
    """claim() makes a queued job the robot's later attempt; an older or equal one is ignored."""
    live.add(make_job("j1", attempt=1))
    assert live.claim("j1", "robot-1", 1, now=T0) is None
    job = live.claim("j1", "robot-1", 2, now=T0)
    assert job is not None and (job.status, job.attempt, job.robot_id, job.accepted_at) == (
        RunStatus.RUNNING,
        2,
        "robot-1",
        T0,
    )
    assert live.take(T0, 10) == [] and ids(live.running_on("robot-1")) == ["j1"]


def test_loaded_jobs_are_not_staged_again(live: LiveJobs, staged: Staged) -> None:
    """Jobs loaded from the database are kept as they are; finished or known ones refused."""
    assert live.add(make_job("q"))
    assert live.add(
        make_job("r", status=RunStatus.RUNNING, attempt=1, robot_id="robot-1"),
        cancel_requested=True,
    )
    assert not live.add(make_job("q"))
    assert not live.add(make_job("done", status=RunStatus.COMPLETED))
    assert staged == [] and live.cancel_requested("r")
    assert ids(live.unaccepted()) == ["r"] and live.queued_count == 1 and len(live) == 2
