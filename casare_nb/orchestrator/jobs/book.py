"""The job manager's shared book: what it remembers of unfinished jobs and their attempts in
memory, and the moves every part of it makes on them (requeue, finish, free a robot's slot,
wake the dispatcher).

The parts (:mod:`.dispatch`, :mod:`.attempts`, :mod:`.relay`, :mod:`.manager`) each hold
the one :class:`JobBook`; none holds another part's state. Everything here runs on the event
loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from casare_nb.core.errors import QueueError
from casare_nb.core.jobs import LiveJobs
from casare_nb.core.models import Job, ResumePlan, Robot, RunStatus
from casare_nb.notebook.executor import SKIP_TAG
from casare_nb.orchestrator.jobs.sofar import NotebooksSoFar
from casare_nb.protocol import Envelope, EventData, EventKind, JobEvent

__all__ = ["Attempt", "JobBook", "Link", "LostCell"]

logger = logging.getLogger("casare_nb.orchestrator.jobs")


class Link(Protocol):
    """What the job manager needs from the side that owns the robots' connections."""

    def robots(self) -> list[Robot]:
        """Every known robot (offline ones too)."""
        ...

    def send_to_robot(self, robot_id: str, msg: Envelope) -> bool:
        """Queue ``msg`` on the robot's connection; False if it is not connected."""
        ...

    def publish(self, kind: EventKind, data: EventData) -> None:
        """Send an event to the subscribed monitors."""
        ...

    def notify(self) -> None:
        """State changed: wake ``wait_for`` callers."""
        ...


@dataclass(frozen=True)
class LostCell:
    """The cell an attempt was running when its robot was lost: its index in the executed
    notebook, its id and the first line of its source."""

    index: int
    cell_id: str | None
    first_line: str

    def __str__(self) -> str:
        return f"cell {self.index} (`{self.first_line}`)"


@dataclass
class Attempt:
    """What the orchestrator remembers of an attempt it sent, until it ends."""

    robot_id: str
    sha256: str
    started_at: datetime
    cells_total: int = 0
    notebook: dict[str, Any] | None = None  # what the notebook-so-far starts from
    plan: ResumePlan | None = None  # how it resumes an earlier attempt, if it does
    last_cell: int | None = None  # the highest cell index a job_progress reported

    def running_cell(self) -> LostCell | None:
        """The cell running now, as far as the orchestrator can tell: the first cell the
        attempt executes (the replayed ones of a resume, then those from its start) after
        the last one reported. None when the notebook is not known or every cell ran."""
        cells = (self.notebook or {}).get("cells") or []
        start = self.plan.start if self.plan is not None else 0
        steps = [i for i in range(start, len(cells)) if _executes(cells[i])]
        if self.plan is not None:
            steps = sorted({*(i for i in self.plan.rerun if i < len(cells)), *steps})
        after = -1 if self.last_cell is None else self.last_cell
        index = next((i for i in steps if i > after), None)
        if index is None:
            return None
        cell = cells[index]
        return LostCell(index, cell.get("id"), _first_line(_source(cell)))


def _executes(cell: dict[str, Any]) -> bool:
    """Whether the engine executes ``cell`` (code, not empty, not tagged skip-execution)."""
    tags = (cell.get("metadata") or {}).get("tags") or []
    return bool(cell.get("cell_type") == "code" and _source(cell).strip() and SKIP_TAG not in tags)


def _source(cell: dict[str, Any]) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _first_line(source: str, width: int = 60) -> str:
    """The first non-blank line of a cell's source, cut to ``width`` characters."""
    line = next((ln.strip() for ln in source.splitlines() if ln.strip()), "")
    return line if len(line) <= width else line[: width - 3] + "..."


class JobBook:
    """The in-memory state the job manager's parts share; see the module docstring."""

    def __init__(
        self,
        live: LiveJobs,
        link: Link,
        clock: Callable[[], datetime],
        sofar: NotebooksSoFar,
    ) -> None:
        self.live = live
        self.link = link
        self.clock = clock
        self.sofar = sofar  # the running attempts' notebooks so far
        self.draining = False
        self.secrets: dict[str, dict[str, Any]] = {}  # job id -> its secret values (memory only)
        self.start_at: dict[str, datetime] = {}  # job id -> its first cell's time (memory only)
        self.assigned: dict[str, set[str]] = {}  # robot id -> job ids sent and not ended
        self.attempts: dict[tuple[str, int], Attempt] = {}
        self.skip: dict[str, str] = {}  # job id -> robot that just rejected it
        self.completing: set[tuple[str, int]] = set()  # attempts whose output is being written
        # job id -> the cell each attempt lost with its robot was running (memory only)
        self.lost_cells: dict[str, list[LostCell | None]] = {}
        # called on the loop with every job that reaches a final status (chaining); the job
        # is the finished snapshot itself (nothing changes it afterwards): do not mutate it
        self.finished_listeners: list[Callable[[Job], None]] = []
        # called on the loop with (job, cell index, executed cell) of each job_progress (outputs)
        self.cell_listeners: list[Callable[[Job, int, dict[str, Any]], None]] = []
        self.wakeup = asyncio.Event()  # the dispatcher waits on it
        self.timers: set[asyncio.TimerHandle] = set()

    def wake(self) -> None:
        """Ask the dispatcher to look at the queue now."""
        self.wakeup.set()

    def wake_at(self, when: datetime, now: datetime) -> None:
        """Ask the dispatcher to look at the queue at ``when`` (e.g. a retry's backoff)."""
        delay = max(0.0, (when - now).total_seconds())
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            if handle is not None:
                self.timers.discard(handle)
            self.wake()

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self.timers.add(handle)

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()

    def release(self, job_id: str, attempt: int) -> None:
        """The attempt ended (or never started): free its robot's slot; its notebook so far
        is written if it changed (unless dropped first: it ended with its own notebook) and
        forgotten. Its pending checkpoint offers stay: their blobs may still be on the way."""
        record = self.attempts.pop((job_id, attempt), None)
        self.sofar.finish((job_id, attempt))
        for robot_id, jobs in list(self.assigned.items()):
            jobs.discard(job_id)
            if not jobs:
                del self.assigned[robot_id]
        if record is not None:
            self.wake()

    def finished(self, job: Job) -> None:
        """The job reached a final status: forget it here, tell the listeners and monitors."""
        self.secrets.pop(job.job_id, None)
        self.start_at.pop(job.job_id, None)
        self.skip.pop(job.job_id, None)
        self.lost_cells.pop(job.job_id, None)
        logger.info("job %s %s", job.job_id, job.status.value)
        for listener in list(self.finished_listeners):
            try:
                listener(job)
            except Exception:
                logger.exception("a finished-job listener failed on job %s", job.job_id)
        self.link.publish(EventKind.JOB_FINISHED, JobEvent(job=job))
        self.link.notify()
        self.wake()

    def finish(
        self,
        job: Job,
        status: RunStatus,
        *,
        now: datetime,
        error_name: str | None = None,
        error_message: str | None = None,
        failed_cell: int | None = None,
        lost: bool = False,
    ) -> Job:
        """End ``job``'s current attempt in the final ``status`` (``lost``: the attempt was
        lost with its robot); the finished job."""
        done = self.live.finish(
            job.job_id,
            job.attempt,
            status,
            now=now,
            error_name=error_name,
            error_message=error_message,
            failed_cell=failed_cell,
            lost=lost,
        )
        self.finished(done)
        return done

    def requeue(
        self,
        job: Job,
        *,
        now: datetime,
        event: str,
        reason: str | None,
        eligible_at: datetime | None = None,
        resume_from_failed: bool | None = None,
        failed: bool = False,
        lost: bool = False,
    ) -> Job | None:
        """Put a job back in the queue and tell the monitors why (``event``); ``failed``
        counts a failure, ``lost`` an attempt lost with its robot. A job whose cancel was
        asked meanwhile ends cancelled instead. Answers the queued job, or None when it was
        cancelled or could not be requeued (logged)."""
        try:
            requeued = self.live.requeue(
                job.job_id,
                eligible_at=eligible_at or now,
                resume_from_failed=(
                    job.resume_from_failed if resume_from_failed is None else resume_from_failed
                ),
                reason=reason,
                now=now,
                failed=failed,
                lost=lost,
            )
        except QueueError as exc:
            logger.warning("cannot requeue job %s: %s", job.job_id, exc)
            return None
        if requeued.status is RunStatus.CANCELLED:
            self.finished(requeued)
            return None
        self.link.publish(EventKind.JOB_QUEUED, JobEvent(job=requeued, reason=event))
        return requeued
