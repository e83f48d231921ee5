"""Which queued job goes to which robot, and what happens after a failure.

Pure: the orchestrator calls these with a snapshot of its queue and robots and applies the
answer; nothing here reads a clock, a socket or a database.

Dispatch: highest priority first, then oldest, then job id; a job goes to a robot that is
online (not draining, not offline), whose environment matches (a job without one takes
any), that has every tag the job asks for and a free slot; among those, the least loaded
(running / capacity), then the one with most free slots, then robot id.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from casare_nb.core.models import Job, Robot, RunStatus


@dataclass(frozen=True)
class Assignment:
    """Send job ``job_id`` to robot ``robot_id``."""

    job_id: str
    robot_id: str


def dispatch_key(job: Job) -> tuple[int, datetime, str]:
    """Sort key of the queue: priority (highest first), then age, then id."""
    return (-job.priority.rank, job.created_at, job.job_id)


def can_run(job: Job, robot: Robot, running: int | None = None) -> bool:
    """Whether ``robot`` may take ``job`` now (status, environment, tags, a free slot);
    ``running`` overrides the robot's count of running jobs."""
    busy = robot.running_jobs if running is None else running
    return (
        robot.status.takes_jobs
        and busy < robot.max_concurrent_jobs
        and (job.environment is None or job.environment == robot.environment)
        and set(job.tags) <= set(robot.tags)
    )


def plan_dispatch(
    queued: Sequence[Job], robots: Sequence[Robot], *, now: datetime
) -> list[Assignment]:
    """Assignments for as many queued jobs as the robots can take now, in queue order.

    A job no robot can take does not hold up the jobs behind it (they may need other
    robots); a job whose retry backoff has not elapsed (``eligible_at > now``) waits."""
    load = {r.robot_id: r.running_jobs for r in robots}
    live = [r for r in robots if r.status.takes_jobs]
    plan: list[Assignment] = []
    for job in sorted(queued, key=dispatch_key):
        if job.status is not RunStatus.QUEUED or job.eligible_at > now:
            continue
        candidates = [r for r in live if can_run(job, r, load[r.robot_id])]
        if not candidates:
            continue
        best = min(
            candidates,
            key=lambda r: (
                load[r.robot_id] / r.max_concurrent_jobs,
                -(r.max_concurrent_jobs - load[r.robot_id]),
                r.robot_id,
            ),
        )
        load[best.robot_id] += 1
        plan.append(Assignment(job.job_id, best.robot_id))
        if all(load[r.robot_id] >= r.max_concurrent_jobs for r in live):
            break
    return plan


class RetryPolicy(BaseModel):
    """Capped exponential backoff with jitter between the attempts of a job."""

    model_config = ConfigDict(frozen=True)

    base_s: float = Field(default=2.0, gt=0)
    factor: float = Field(default=2.0, ge=1)
    cap_s: float = Field(default=300.0, gt=0)
    jitter: float = Field(default=0.1, ge=0, le=1)  # +- this fraction of the delay

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait before the attempt after ``failures`` failed ones (>= 1)."""
        raw = min(self.cap_s, self.base_s * self.factor ** max(0, failures - 1))
        return max(0.0, raw * (1 + self.jitter * (2 * rand() - 1)))


@dataclass(frozen=True)
class AfterFailure:
    """What a finished attempt leads to: the job's next status and, for a retry, when."""

    status: RunStatus
    eligible_at: datetime | None = None

    @property
    def retry(self) -> bool:
        return self.status is RunStatus.QUEUED


def after_attempt(
    job: Job,
    outcome: RunStatus,
    *,
    now: datetime,
    policy: RetryPolicy | None = None,
    rand: Callable[[], float] = random.random,
) -> AfterFailure:
    """The job's fate after attempt ``job.attempt`` ended with ``outcome``.

    Completed and cancelled are final. A failure or timeout is retried while retries remain
    (``max_retries`` failures beyond the first; ``job.failures`` counts the earlier ones, so
    attempts lost with a robot or rejected do not use up retries), after the policy's
    backoff; the last one makes the job ``dead`` when retries were allowed, or leaves it
    ``failed``/``timeout``."""
    if outcome in (RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.DEAD):
        return AfterFailure(outcome)
    if outcome not in (RunStatus.FAILED, RunStatus.TIMEOUT):
        raise ValueError(f"an attempt cannot end {outcome.value!r}")
    failures = job.failures + 1
    if failures <= job.max_retries:
        wait = (policy or RetryPolicy()).delay(failures, rand)
        return AfterFailure(RunStatus.QUEUED, now + timedelta(seconds=wait))
    return AfterFailure(RunStatus.DEAD if job.max_retries > 0 else outcome)


def lost_once_too_often(job: Job) -> bool:
    """Whether losing the robot of attempt ``job.attempt`` makes ``job`` dead.

    An attempt lost with its robot (it disconnected, missed its heartbeats, or came back
    without the job) is not a failure (``max_retries`` does not count it: the robot may have
    gone for reasons of its own), but a job whose robot goes every time is a poison job (a
    cell that kills its robot, a native crash): it may be lost ``max_robot_losses`` times
    (``job.robot_losses`` counts the earlier ones) and is dead at the next loss, so the queue
    moves on instead of feeding it robot after robot."""
    return job.robot_losses + 1 > job.max_robot_losses
