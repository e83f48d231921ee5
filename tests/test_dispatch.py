"""Dispatch policy (pure): order, matching, load balancing, retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from casare_nb.core.dispatch import (
    Assignment,
    RetryPolicy,
    after_attempt,
    can_run,
    plan_dispatch,
)
from casare_nb.core.models import Job, Priority, Robot, RobotStatus, RunStatus

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=1)  # after every job below was created


def job(job_id: str, *, age: int = 0, **kw: object) -> Job:
    created = T0 + timedelta(seconds=age)
    return Job(
        job_id=job_id, workflow_path="w.ipynb", created_at=created, eligible_at=created, **kw
    )  # type: ignore[arg-type]


def robot(robot_id: str, **kw: object) -> Robot:
    return Robot(robot_id=robot_id, name=robot_id, **kw)  # type: ignore[arg-type]


def test_priority_first_then_oldest() -> None:
    """Higher priority goes first; within a priority, the oldest job goes first."""
    jobs = [
        job("old-normal", age=0),
        job("new-high", age=5, priority=Priority.HIGH),
        job("old-high", age=1, priority=Priority.HIGH),
        job("critical", age=9, priority=Priority.CRITICAL),
        job("low", age=-5, priority=Priority.LOW),
    ]
    plan = plan_dispatch(jobs, [robot("r", max_concurrent_jobs=5)], now=NOW)
    assert [a.job_id for a in plan] == ["critical", "old-high", "new-high", "old-normal", "low"]


def test_capacity_limits_assignments() -> None:
    """No robot gets more jobs than its free slots."""
    jobs = [job(f"j{i}", age=i) for i in range(10)]
    robots = [robot("a", max_concurrent_jobs=2, running_jobs=1), robot("b", max_concurrent_jobs=3)]
    plan = plan_dispatch(jobs, robots, now=NOW)
    assert len(plan) == 4
    assert sum(a.robot_id == "a" for a in plan) == 1
    assert [a.job_id for a in plan] == ["j0", "j1", "j2", "j3"]


def test_least_loaded_robot_first() -> None:
    """Jobs go to the robot with the smallest share of its capacity in use (ties: most free)."""
    robots = [
        robot("busy", max_concurrent_jobs=4, running_jobs=3),
        robot("idle", max_concurrent_jobs=4),
        robot("half", max_concurrent_jobs=2, running_jobs=1),
    ]
    jobs = [job(name, age=i) for i, name in enumerate("abcd")]
    plan = plan_dispatch(jobs, robots, now=NOW)
    # idle: 0/4, 1/4, then 2/4 ties half's 1/2 but has more free slots; then 3/4 > 1/2
    assert [a.robot_id for a in plan] == ["idle", "idle", "idle", "half"]


def test_environment_and_tags_must_match() -> None:
    """A job goes only to a robot of its environment that has all its tags."""
    robots = [
        robot("plain", environment="production"),
        robot("browser", environment="production", tags=["browser", "eu"]),
        robot("staging", environment="staging", tags=["browser", "eu"]),
    ]
    jobs = [
        job("needs-browser", tags=["browser"], environment="production"),
        job("any-env", age=1, tags=["eu"]),
        job("nowhere", age=2, tags=["gpu"]),
    ]
    plan = plan_dispatch(jobs, robots, now=NOW)
    assert Assignment("needs-browser", "browser") in plan
    assert Assignment("any-env", "staging") in plan
    assert all(a.job_id != "nowhere" for a in plan)


def test_unmatched_job_does_not_block_the_queue() -> None:
    """A job no robot can take leaves the jobs behind it free to go."""
    jobs = [job("gpu", priority=Priority.CRITICAL, tags=["gpu"]), job("plain", age=1)]
    assert plan_dispatch(jobs, [robot("r")], now=NOW) == [Assignment("plain", "r")]


def test_draining_and_offline_robots_take_nothing() -> None:
    """Robots that are draining or offline get no job."""
    robots = [robot("d", status=RobotStatus.DRAINING), robot("o", status=RobotStatus.OFFLINE)]
    assert plan_dispatch([job("a")], robots, now=NOW) == []
    assert not can_run(job("a"), robots[0])


def test_backoff_keeps_a_job_waiting() -> None:
    """A job whose retry time has not come is not dispatched yet."""
    waiting = job("retry").model_copy(update={"eligible_at": T0 + timedelta(seconds=30)})
    assert plan_dispatch([waiting], [robot("r")], now=T0) == []
    assert plan_dispatch([waiting], [robot("r")], now=T0 + timedelta(seconds=30)) == [
        Assignment("retry", "r")
    ]


def test_only_queued_jobs_are_dispatched() -> None:
    """Jobs already running or finished are never planned."""
    jobs = [job("run", status=RunStatus.RUNNING), job("done", status=RunStatus.COMPLETED)]
    assert plan_dispatch(jobs, [robot("r", max_concurrent_jobs=3)], now=NOW) == []


def test_retry_delay_grows_and_is_capped() -> None:
    """The backoff doubles per failure, stays under the cap, and jitters within bounds."""
    policy = RetryPolicy(base_s=1, factor=2, cap_s=10, jitter=0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5, 9)] == [1, 2, 4, 8, 10, 10]
    jittery = RetryPolicy(base_s=10, jitter=0.1)
    assert jittery.delay(1, rand=lambda: 0.0) == pytest.approx(9.0)
    assert jittery.delay(1, rand=lambda: 1.0) == pytest.approx(11.0)


def test_failure_is_retried_then_dead() -> None:
    """A failed attempt is requeued after backoff while retries remain, then the job is dead."""
    policy = RetryPolicy(base_s=5, jitter=0)
    first = job("j", max_retries=2).model_copy(update={"attempt": 1})
    fate = after_attempt(first, RunStatus.FAILED, now=T0, policy=policy)
    assert fate.retry and fate.eligible_at == T0 + timedelta(seconds=5)
    second = first.model_copy(update={"attempt": 2, "failures": 1})
    assert after_attempt(second, RunStatus.TIMEOUT, now=T0, policy=policy).eligible_at == T0 + (
        timedelta(seconds=10)
    )
    last = first.model_copy(update={"attempt": 3, "failures": 2})
    assert after_attempt(last, RunStatus.FAILED, now=T0, policy=policy).status is RunStatus.DEAD


def test_lost_attempts_do_not_use_up_retries() -> None:
    """Attempts lost with a robot (attempt grows, failures do not) leave the retries intact."""
    policy = RetryPolicy(base_s=5, jitter=0)
    lost_twice = job("j", max_retries=1).model_copy(update={"attempt": 3, "failures": 0})
    fate = after_attempt(lost_twice, RunStatus.FAILED, now=T0, policy=policy)
    assert fate.retry and fate.eligible_at == T0 + timedelta(seconds=5)
    spent = lost_twice.model_copy(update={"failures": 1})
    assert after_attempt(spent, RunStatus.FAILED, now=T0, policy=policy).status is RunStatus.DEAD


def test_no_retries_configured_keeps_the_failure() -> None:
    """Without retries a failure stays failed (not dead); completion and cancel are final."""
    once = job("j").model_copy(update={"attempt": 1})
    assert after_attempt(once, RunStatus.FAILED, now=T0).status is RunStatus.FAILED
    assert after_attempt(once, RunStatus.TIMEOUT, now=T0).status is RunStatus.TIMEOUT
    assert after_attempt(once, RunStatus.COMPLETED, now=T0).status is RunStatus.COMPLETED
    assert after_attempt(once, RunStatus.CANCELLED, now=T0).status is RunStatus.CANCELLED
    with pytest.raises(ValueError, match="cannot end 'running'"):
        after_attempt(once, RunStatus.RUNNING, now=T0)


def test_a_long_queue_fills_every_free_slot_in_order() -> None:
    """Over 10,000 queued jobs and 4 robots, the oldest 8 fill the 8 free slots, 2 each."""
    jobs = [job(f"j{i:05}", age=i) for i in range(10_000)]
    robots = [robot(f"r{i}", max_concurrent_jobs=2) for i in range(4)]
    plan = plan_dispatch(jobs, robots, now=NOW)
    assert [a.job_id for a in plan] == [f"j{i:05}" for i in range(8)]
    assert sorted(a.robot_id for a in plan) == ["r0", "r0", "r1", "r1", "r2", "r2", "r3", "r3"]
