"""The job state machine: the orchestrator's unfinished jobs in memory, the queue in dispatch
order and the running jobs, with their compare-and-set transitions. No I/O.

:class:`LiveJobs` holds every queued and running job as an immutable
:class:`~casare_nb.core.models.Job` snapshot (each transition makes a new one, so a reader in
another thread sees a whole state, old or new). Every change is handed to ``stage(job,
cancel_requested)`` at once, which the orchestrator wires to its job store's ``stage``
(:class:`~casare_nb.store.interfaces.JobStore`): the store follows memory, in the same order
and never decides a transition itself. Finished jobs leave memory (the store keeps them).

The transitions: ``assign`` (queued -> running, attempt + 1), ``accept``, ``requeue``
(running -> queued, counting a failure or a robot loss if asked; cancelled instead when a
cancel was requested), ``finish``, ``cancel`` and ``reopen`` (a finished job queued again).
A transition that does not apply (unknown job, wrong status, stale attempt) raises
:class:`~casare_nb.core.errors.QueueError` and changes nothing.

The queue: a heap of the eligible queued jobs in dispatch order
(:func:`~casare_nb.core.dispatch.dispatch_key`: priority rank, highest first, then
``created_at``, then ``job_id``) and a heap of those waiting for their ``eligible_at`` (retry
backoff). :meth:`LiveJobs.take` pops the first eligible ones for a dispatch round;
:meth:`LiveJobs.put_back` returns those the round did not send. Entries of jobs that left
the queue are dropped when they come up.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from casare_nb.core.dispatch import dispatch_key
from casare_nb.core.errors import QueueError
from casare_nb.core.models import Job, RunStatus

__all__ = ["LiveJobs"]

Stage = Callable[[Job, bool], Any]
"""Where each new state goes: ``stage(job, cancel_requested)``."""


def _utc(value: datetime) -> datetime:
    """Naive datetimes are UTC (the store's convention); aware ones stay as they are."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class LiveJobs:
    """Queued and running jobs, by id; see the module docstring."""

    def __init__(self, stage: Stage) -> None:
        self._stage = stage
        self._queued: dict[str, Job] = {}
        self._running: dict[str, Job] = {}
        self._cancel: set[str] = set()  # running jobs whose cancel was requested
        self._unaccepted: set[str] = set()  # running jobs no robot accepted yet
        self._ready: list[tuple[int, datetime, str]] = []  # dispatch_key heap
        self._in_ready: set[str] = set()  # job ids with an entry in _ready
        self._later: list[tuple[datetime, str]] = []  # (eligible_at, job id) heap

    def __len__(self) -> int:
        return len(self._queued) + len(self._running)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._queued or job_id in self._running

    def get(self, job_id: str) -> Job | None:
        """The queued or running job ``job_id``, or None (finished or unknown)."""
        return self._queued.get(job_id) or self._running.get(job_id)

    @property
    def queued_count(self) -> int:
        return len(self._queued)

    def queued(self) -> list[Job]:
        """The queued jobs (any order)."""
        return list(self._queued.values())

    def running(self) -> list[Job]:
        """The running jobs (any order)."""
        return list(self._running.values())

    def unaccepted(self) -> list[Job]:
        """The running jobs whose robot did not accept them yet (any order)."""
        return [self._running[job_id] for job_id in list(self._unaccepted)]

    def running_on(self, robot_id: str) -> list[Job]:
        """Jobs running on ``robot_id``, oldest assignment first."""
        jobs = [job for job in list(self._running.values()) if job.robot_id == robot_id]
        return sorted(jobs, key=lambda j: (j.assigned_at or j.created_at, j.job_id))

    def cancel_requested(self, job_id: str) -> bool:
        """Whether a cancel was asked for the running job ``job_id``."""
        return job_id in self._cancel

    # -- loading -------------------------------------------------------------------------

    def add(self, job: Job, *, cancel_requested: bool = False) -> bool:
        """Keep a job that the database already holds as it is (loaded at start, or just
        inserted); nothing is staged. False (and nothing changes) for a finished job or one
        already here."""
        if job.job_id in self or job.status.finished:
            return False
        job = job.model_copy(
            update={
                "created_at": _utc(job.created_at),
                "eligible_at": _utc(job.eligible_at),
            }
        )
        if job.status is RunStatus.QUEUED:
            self._queued[job.job_id] = job
            self._enqueue(job)
        else:
            self._running[job.job_id] = job
            if cancel_requested:
                self._cancel.add(job.job_id)
            if job.accepted_at is None:
                self._unaccepted.add(job.job_id)
        return True

    # -- transitions ---------------------------------------------------------------------

    def drop(self, job_id: str) -> Job | None:
        """Forget a job without staging anything (another orchestrator sharing the database
        owns it now); the job as it was here, or None."""
        job = self._queued.pop(job_id, None) or self._running.pop(job_id, None)
        self._cancel.discard(job_id)
        self._unaccepted.discard(job_id)
        return job

    @staticmethod
    def assignment(job: Job, robot_id: str, now: datetime) -> Job:
        """The running state :meth:`assign` makes of the queued ``job`` (nothing changes)."""
        return job.model_copy(
            update={
                "status": RunStatus.RUNNING,
                "robot_id": robot_id,
                "assigned_at": now,
                "accepted_at": None,
                "attempt": job.attempt + 1,
            }
        )

    def assign(self, job_id: str, robot_id: str, *, now: datetime) -> Job:
        """queued -> running on ``robot_id``: assigned_at = ``now``, attempt + 1."""
        job = self._queued.get(job_id)
        if job is None:
            raise QueueError(f"job {job_id} is not queued (status {self._status(job_id)})")
        running = self.assignment(job, robot_id, now)
        del self._queued[job_id]
        self._running[job_id] = running
        self._unaccepted.add(job_id)
        self._stage(running, False)
        return running

    def claim(self, job_id: str, robot_id: str, attempt: int, *, now: datetime) -> Job | None:
        """A robot says it holds ``attempt`` of a job that is queued here at an earlier
        attempt: the assignment was handed out but never written (the orchestrator
        stopped before). The job becomes that attempt, running (accepted) on ``robot_id``.
        None (nothing changes) otherwise."""
        job = self._queued.get(job_id)
        if job is None or attempt <= job.attempt:
            return None
        running = job.model_copy(
            update={
                "status": RunStatus.RUNNING,
                "robot_id": robot_id,
                "assigned_at": now,
                "accepted_at": now,
                "attempt": attempt,
            }
        )
        del self._queued[job_id]
        self._running[job_id] = running
        self._stage(running, False)
        return running

    def accept(self, job_id: str, attempt: int, *, now: datetime) -> Job:
        """The robot took ``attempt``: accepted_at = ``now`` (the first time only)."""
        job = self._current(job_id, attempt, RunStatus.RUNNING)
        if job.accepted_at is not None:
            return job
        accepted = job.model_copy(update={"accepted_at": now})
        self._running[job_id] = accepted
        self._unaccepted.discard(job_id)
        self._stage(accepted, job_id in self._cancel)
        return accepted

    def requeue(
        self,
        job_id: str,
        *,
        eligible_at: datetime,
        resume_from_failed: bool,
        now: datetime,
        reason: str | None = None,
        failed: bool = False,
        lost: bool = False,
    ) -> Job:
        """running -> queued, eligible at ``eligible_at``; keeps the attempt. ``reason``
        (if given) becomes the error message; ``failed`` counts one more failure, ``lost``
        one more attempt lost with its robot. A job whose cancel was requested ends
        cancelled instead (check the returned status)."""
        job = self._running.get(job_id)
        if job is None:
            raise QueueError(f"job {job_id} is not running (status {self._status(job_id)})")
        del self._running[job_id]
        self._unaccepted.discard(job_id)
        message = reason if reason is not None else job.error_message
        losses = job.robot_losses + int(lost)
        if job_id in self._cancel:
            self._cancel.discard(job_id)
            done = job.model_copy(
                update={
                    "status": RunStatus.CANCELLED,
                    "finished_at": now,
                    "error_message": message,
                    "robot_losses": losses,
                }
            )
            self._stage(done, True)
            return done
        queued = job.model_copy(
            update={
                "status": RunStatus.QUEUED,
                "robot_id": None,
                "assigned_at": None,
                "accepted_at": None,
                "eligible_at": eligible_at,
                "resume_from_failed": resume_from_failed,
                "error_message": message,
                "failures": job.failures + int(failed),
                "robot_losses": losses,
            }
        )
        self._queued[job_id] = queued
        self._enqueue(queued)
        self._stage(queued, False)
        return queued

    def finish(
        self,
        job_id: str,
        attempt: int,
        status: RunStatus,
        *,
        now: datetime,
        error_name: str | None = None,
        error_message: str | None = None,
        failed_cell: int | None = None,
        lost: bool = False,
    ) -> Job:
        """Queued or running ``attempt`` -> the final ``status``: finished_at, error fields;
        ``lost`` counts the attempt as lost with its robot."""
        if not status.finished:
            raise QueueError(f"cannot finish job {job_id} as {status}: not a final status")
        job = self._current(job_id, attempt, None)
        done = job.model_copy(
            update={
                "status": status,
                "finished_at": now,
                "error_name": error_name,
                "error_message": error_message,
                "failed_cell": failed_cell,
                "robot_losses": job.robot_losses + int(lost),
            }
        )
        self._queued.pop(job_id, None)
        self._running.pop(job_id, None)
        self._unaccepted.discard(job_id)
        cancel = job_id in self._cancel
        self._cancel.discard(job_id)
        self._stage(done, cancel)
        return done

    def cancel(self, job_id: str, *, now: datetime) -> Job | None:
        """A queued job -> cancelled at once; a running one keeps running with its cancel
        requested. None when the job is not here (finished or unknown)."""
        job = self._queued.pop(job_id, None)
        if job is not None:
            done = job.model_copy(update={"status": RunStatus.CANCELLED, "finished_at": now})
            self._stage(done, False)
            return done
        job = self._running.get(job_id)
        if job is None:
            return None
        if job_id not in self._cancel:
            self._cancel.add(job_id)
            self._stage(job, True)
        return job

    def reopen(
        self,
        job: Job,
        *,
        now: datetime,
        resume_from_failed: bool,
        parameters: dict[str, Any] | None = None,
    ) -> Job:
        """A finished ``job`` (as stored) -> queued again for a re-run: eligible now, error
        fields and cancel request cleared, failures and robot losses reset; the attempt
        counter goes on."""
        if not job.status.finished or job.job_id in self:
            raise QueueError(
                f"job {job.job_id} is still {self._status(job.job_id)}: only a finished job re-runs"
            )
        queued = self.reopening(
            job, now=now, resume_from_failed=resume_from_failed, parameters=parameters
        )
        self._queued[job.job_id] = queued
        self._enqueue(queued)
        self._stage(queued, False)
        return queued

    @staticmethod
    def reopening(
        job: Job,
        *,
        now: datetime,
        resume_from_failed: bool,
        parameters: dict[str, Any] | None = None,
    ) -> Job:
        """The queued state :meth:`reopen` makes of the finished ``job`` (nothing changes)."""
        return job.model_copy(
            update={
                "status": RunStatus.QUEUED,
                "eligible_at": now,
                "created_at": _utc(job.created_at),
                "robot_id": None,
                "assigned_at": None,
                "accepted_at": None,
                "finished_at": None,
                "error_name": None,
                "error_message": None,
                "failed_cell": None,
                "failures": 0,
                "robot_losses": 0,
                "resume_from_failed": resume_from_failed,
                "parameters": job.parameters if parameters is None else parameters,
            }
        )

    # -- the queue -----------------------------------------------------------------------

    def take(self, now: datetime, limit: int) -> list[Job]:
        """Pop up to ``limit`` queued jobs eligible at ``now``, in dispatch order; give
        back with :meth:`put_back` those not assigned."""
        while self._later and self._later[0][0] <= now:
            _, job_id = heapq.heappop(self._later)
            job = self._queued.get(job_id)
            if job is not None:
                self._enqueue(job)
        taken: list[Job] = []
        while self._ready and len(taken) < limit:
            key = heapq.heappop(self._ready)
            job_id = key[2]
            self._in_ready.discard(job_id)
            job = self._queued.get(job_id)
            if job is None:
                continue  # it left the queue
            if job.eligible_at > now:
                heapq.heappush(self._later, (job.eligible_at, job_id))
                continue
            taken.append(job)
        return taken

    def put_back(self, jobs: Iterable[Job]) -> None:
        """Return jobs :meth:`take` gave that are still queued."""
        for job in jobs:
            current = self._queued.get(job.job_id)
            if current is not None:
                self._enqueue(current)

    def next_eligible(self) -> datetime | None:
        """The earliest ``eligible_at`` of the jobs waiting for theirs, if any."""
        return self._later[0][0] if self._later else None

    # -- helpers -------------------------------------------------------------------------

    def _enqueue(self, job: Job) -> None:
        if job.job_id in self._in_ready:
            return
        heapq.heappush(self._ready, dispatch_key(job))
        self._in_ready.add(job.job_id)

    def _current(self, job_id: str, attempt: int, status: RunStatus | None) -> Job:
        """The job if it is here (in ``status``, if given) at ``attempt``; else QueueError."""
        job = self.get(job_id)
        if job is not None and job.attempt != attempt:
            raise QueueError(
                f"job {job_id}: attempt {attempt} is stale (current attempt {job.attempt})"
            )
        if job is None or (status is not None and job.status is not status):
            want = "running" if status is RunStatus.RUNNING else "queued or running"
            raise QueueError(f"job {job_id} is not {want} (status {self._status(job_id)})")
        return job

    def _status(self, job_id: str) -> str:
        job = self.get(job_id)
        return job.status.value if job is not None else "finished or unknown"
