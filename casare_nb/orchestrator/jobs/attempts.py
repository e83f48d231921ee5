"""Attempts on robots: the robots' job messages, and robots coming and going.

- ``job_accept`` marks the attempt started; ``job_reject`` requeues the job (and skips that
  robot once).
- ``job_progress`` records each cell once in the history and keeps it in the attempt's
  notebook-so-far (in memory, :mod:`.sofar`); messages about an attempt that is not the
  job's current one on that robot are refused with ``stale_attempt``. A refused message has
  no effect at all (de-duplication remembers only handled messages, keyed by their sender).
- ``job_complete`` / ``job_failed`` / ``job_cancelled`` finish the attempt: the output
  notebook is written (in a file thread), then the run record goes to the history and, for a
  failure, :func:`~casare_nb.core.dispatch.after_attempt` decides retry or not. A
  ``job_failed`` saying ``cancelled`` that no user asked for (the robot stopped the job, e.g.
  shutting down) requeues the job at once. The robot's slot is free at once; the job's new
  state is applied once its output is on disk and the stores commit (storage faults are
  retried meanwhile), so a finished job always has its output and its record.

A robot that goes offline keeps its running jobs for ``reconnect_grace_s``: if it registers
again within that time naming them in ``holding``, they continue (``continue_jobs``).
Otherwise they are requeued to resume, on any robot, from the last stored checkpoint.
Attempts lost this way do not count as failures (``max_retries`` counts ``job.failures``)
but as robot losses (``job.robot_losses``): a job lost with its robot more than
``job.max_robot_losses`` times is a poison job (a cell that kills its robot, a native crash)
and ends ``dead`` (``PoisonJob``, naming the cell that was running each time), so it does
not take robot after robot while the jobs behind it wait.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from casare_nb.core.dispatch import RetryPolicy, after_attempt, lost_once_too_often
from casare_nb.core.history import trigger_label
from casare_nb.core.models import Job, RunRecord, RunStatus
from casare_nb.notebook.state import CheckpointError
from casare_nb.orchestrator.jobs.book import JobBook, LostCell
from casare_nb.orchestrator.jobs.durable import Durability
from casare_nb.orchestrator.jobs.relay import CheckpointRelay, error_reply
from casare_nb.protocol import (
    CheckpointOffer,
    Deduplicator,
    Error,
    ErrorCode,
    EventKind,
    JobAccept,
    JobCancelled,
    JobComplete,
    JobEvent,
    JobFailed,
    JobProgress,
    JobRef,
    JobReject,
    dedup_key,
)
from casare_nb.store.interfaces import JobStore

__all__ = ["JOB_MESSAGES", "Attempts", "JobMessage", "poison_message"]

logger = logging.getLogger("casare_nb.orchestrator.jobs")

JOB_MESSAGES = (
    JobAccept,
    JobReject,
    JobProgress,
    JobComplete,
    JobFailed,
    JobCancelled,
    CheckpointOffer,
)
"""The job-scoped robot messages :meth:`Attempts.on_message` handles."""

JobMessage = (
    JobAccept | JobReject | JobProgress | JobComplete | JobFailed | JobCancelled | CheckpointOffer
)


class Attempts:
    """The robots' side of each attempt; see the module docstring."""

    def __init__(
        self,
        book: JobBook,
        durability: Durability,
        relay: CheckpointRelay,
        jobs: JobStore,
        *,
        retry_policy: RetryPolicy,
        reconnect_grace_s: float,
    ) -> None:
        if reconnect_grace_s < 0:
            raise ValueError(f"reconnect_grace_s must be >= 0, not {reconnect_grace_s}")
        self.book = book
        self.durability = durability
        self.relay = relay
        self.jobs = jobs
        self.retry_policy = retry_policy
        self.reconnect_grace_s = reconnect_grace_s
        self._lost: dict[str, asyncio.TimerHandle] = {}  # robot id -> its jobs' requeue
        self._dedup = Deduplicator()
        # several orchestrators on one database: a robot back here with an attempt another
        # node ran takes it over (the job, running here from now on; None: not that attempt)
        self.take_over: Callable[[str, JobRef], Job | None] | None = None

    def stop(self) -> None:
        for timer in self._lost.values():
            timer.cancel()
        self._lost.clear()

    # -- robots coming and going ---------------------------------------------------------

    def robot_gone(self, robot_id: str, *, grace: bool = True) -> None:
        """A robot went offline: its running jobs are requeued (to resume from their last
        checkpoint) after ``reconnect_grace_s`` unless it comes back for them first; at once
        with ``grace=False`` (it missed its heartbeats: it had its time)."""
        self.lose_later(robot_id, self.reconnect_grace_s if grace else 0.0)

    def robot_back(self, robot_id: str, holds: Sequence[JobRef]) -> list[JobRef]:
        """A robot registered again naming the jobs it ``holds``: those still running on it
        continue (answered in ``register_ack.continue_jobs``, and counted as its running
        jobs); its other running jobs are requeued now (it lost them, e.g. it restarted)."""
        book = self.book
        timer = self._lost.pop(robot_id, None)
        if timer is not None:
            timer.cancel()
        held = {(ref.job_id, ref.attempt) for ref in holds}
        keep: list[JobRef] = []
        lost = False
        now = book.clock()
        for ref in holds:
            if self.take_over is not None and not any(
                j.job_id == ref.job_id and j.attempt == ref.attempt
                for j in book.live.running_on(robot_id)
            ):
                self.take_over(robot_id, ref)
            # an assignment sent before a crash but never written: the robot has it
            claimed = book.live.claim(ref.job_id, robot_id, ref.attempt, now=now)
            if claimed is not None:
                logger.warning(
                    "robot %s holds job %s attempt %d, which the database did not record: "
                    "it continues there",
                    robot_id,
                    ref.job_id,
                    ref.attempt,
                )
        for job in book.live.running_on(robot_id):
            if (job.job_id, job.attempt) in held:
                keep.append(JobRef(job_id=job.job_id, attempt=job.attempt))
                book.assigned.setdefault(robot_id, set()).add(job.job_id)
            else:
                lost = True
        if lost:
            self._requeue_lost(robot_id, keep={ref.job_id for ref in keep})
        if keep:
            logger.info(
                "robot %s is back: %s continue", robot_id, ", ".join(r.job_id for r in keep)
            )
        return keep

    def lose_later(self, robot_id: str, delay: float) -> None:
        """Requeue the running jobs of ``robot_id`` in ``delay`` s unless it comes back."""
        old = self._lost.pop(robot_id, None)
        if old is not None:
            old.cancel()
        if delay <= 0:
            self._requeue_lost(robot_id)
            return
        loop = asyncio.get_running_loop()
        self._lost[robot_id] = loop.call_later(delay, self._requeue_lost_timer, robot_id)

    def _requeue_lost_timer(self, robot_id: str) -> None:
        self._lost.pop(robot_id, None)
        try:
            self._requeue_lost(robot_id)
        except Exception:
            logger.exception("cannot requeue the jobs of robot %s", robot_id)

    def _requeue_lost(self, robot_id: str, keep: Collection[str] = ()) -> None:
        """Requeue the running jobs of ``robot_id`` (but ``keep``) to resume elsewhere."""
        book = self.book
        now = book.clock()
        if not keep:
            book.assigned.pop(robot_id, None)
        for job in book.live.running_on(robot_id):
            if job.job_id in keep or (job.job_id, job.attempt) in book.completing:
                continue
            attempt = book.attempts.get((job.job_id, job.attempt))
            cell = attempt.running_cell() if attempt is not None else None
            lost_cells = book.lost_cells.setdefault(job.job_id, [])
            lost_cells.append(cell)
            where = f" while running {cell}" if cell is not None else ""
            self._history_run(
                job,
                RunStatus.FAILED,
                now,
                error=("RobotLost", f"robot {robot_id} went offline{where}"),
                failed_cell=(cell.index, cell.cell_id) if cell is not None else (None, None),
            )
            book.release(job.job_id, job.attempt)
            self.relay.checkpoints.forget_attempt(job.job_id, job.attempt)
            if lost_once_too_often(job) and not book.live.cancel_requested(job.job_id):
                message = poison_message(job.robot_losses + 1, lost_cells)
                logger.warning("job %s is dead: %s", job.job_id, message)
                book.finish(
                    job,
                    RunStatus.DEAD,
                    now=now,
                    error_name="PoisonJob",
                    error_message=message,
                    failed_cell=cell.index if cell is not None else None,
                    lost=True,
                )
                continue
            if book.requeue(
                job,
                now=now,
                event="robot_offline",
                reason=f"robot {robot_id} went offline{where}",
                resume_from_failed=True,
                lost=True,
            ):
                logger.info("requeued job %s: robot %s went offline", job.job_id, robot_id)
        book.link.notify()
        book.wake()

    # -- robot messages ------------------------------------------------------------------

    def on_message(self, robot_id: str, msg: JobMessage) -> Error | None:
        """Handle one job message from robot ``robot_id``; the error to answer, if any.

        A copy of a message this robot sent and that was handled (a robot resends what it is
        not sure arrived) is dropped. Only handled messages are remembered, and under their
        sender: a refused message (another robot's job, a stale attempt) or one whose handling
        raised changes nothing, not even what later counts as a duplicate, so it cannot hide
        the genuine robot's message (nor its own resend, which is refused again).
        """
        key = (robot_id, dedup_key(msg))
        if key in self._dedup:
            logger.debug("dropped a duplicate %s for job %s", msg.type, msg.job_id)
            return None
        error = self._on_message(robot_id, msg)
        if error is None:
            self._dedup.seen(key)
        return error

    def _on_message(self, robot_id: str, msg: JobMessage) -> Error | None:
        book = self.book
        job = book.live.get(msg.job_id)
        if job is None:  # finished or unknown: the store says which (a rare path)
            job = self.jobs.get_job(msg.job_id)
        if job is None:
            return error_reply(ErrorCode.UNKNOWN_JOB, f"unknown job {msg.job_id!r}", msg)
        if job.status is not RunStatus.RUNNING or job.attempt != msg.attempt:
            return error_reply(
                ErrorCode.STALE_ATTEMPT,
                f"job {job.job_id} attempt {msg.attempt} is not current "
                f"(the job is {job.status.value}, attempt {job.attempt})",
                msg,
            )
        if job.robot_id != robot_id:
            return error_reply(
                ErrorCode.STALE_ATTEMPT,
                f"job {job.job_id} attempt {msg.attempt} is not assigned to robot {robot_id}",
                msg,
            )
        if (job.job_id, job.attempt) in book.completing and not isinstance(
            msg, JobProgress | CheckpointOffer
        ):
            logger.info("ignored %s: job %s already ended on its robot", msg.type, job.job_id)
            return None  # the attempt ended: its output is being written
        now = book.clock()
        match msg:
            case CheckpointOffer():
                return self.relay.on_offer(robot_id, msg)
            case JobAccept():
                self._on_accept(job, now)
            case JobReject():
                self._on_reject(job, robot_id, msg, now)
            case JobProgress():
                self._on_progress(job, msg)
            case JobComplete():
                self._after_output(
                    job, msg.output_notebook, functools.partial(self._completed, job, now)
                )
            case JobFailed():
                self._after_output(
                    job, msg.output_notebook, functools.partial(self._failed, job, msg, now)
                )
            case JobCancelled():
                self._on_cancelled(job, now)
        book.link.notify()
        return None

    def _on_accept(self, job: Job, now: datetime) -> None:
        job = self.book.live.accept(job.job_id, job.attempt, now=now)
        attempt = self.book.attempts.get((job.job_id, job.attempt))
        if attempt is not None:
            attempt.started_at = now
        self._history_run(job, RunStatus.RUNNING, None)
        self.book.link.publish(EventKind.JOB_STARTED, JobEvent(job=job))

    def _on_reject(self, job: Job, robot_id: str, msg: JobReject, now: datetime) -> None:
        book = self.book
        logger.info("robot %s rejected job %s: %s", robot_id, job.job_id, msg.reason)
        book.release(job.job_id, job.attempt)
        if book.requeue(
            job, now=now, event="rejected", reason=f"rejected by robot {robot_id}: {msg.reason}"
        ):
            book.skip[job.job_id] = robot_id
        book.wake()

    def _on_progress(self, job: Job, msg: JobProgress) -> None:
        book = self.book
        attempt = book.attempts.get((job.job_id, job.attempt))
        if attempt is not None:
            attempt.cells_total = msg.cells_total
            if attempt.last_cell is None or msg.cell_index > attempt.last_cell:
                attempt.last_cell = msg.cell_index
        self.durability.put_history(cells=[msg.to_cell_record()])
        if msg.cell is not None:
            key = (job.job_id, job.attempt)
            try:
                if key not in book.completing:  # ended: its output notebook is being written
                    book.sofar.record(
                        key,
                        msg.cell,
                        robot_id=job.robot_id,
                        base=attempt.notebook if attempt else None,
                    )
            except (OSError, CheckpointError) as exc:
                logger.warning("cannot keep cell %s of job %s: %s", msg.cell_id, job.job_id, exc)
            for listener in book.cell_listeners:
                try:
                    listener(job, msg.cell_index, msg.cell)
                except Exception:
                    logger.exception("a cell listener failed on job %s", job.job_id)
        book.link.publish(EventKind.CELL_FINISHED, msg.to_cell_event())

    # -- the end of an attempt -----------------------------------------------------------

    def _after_output(
        self, job: Job, notebook: dict[str, Any] | None, apply: Callable[[Path | None], None]
    ) -> None:
        """The attempt ended on its robot: store its output notebook (in a file thread,
        retried while storage fails), then ``apply(path)`` on the loop (path None: no output).
        The robot's slot is free at once; the job stays running until applied, so it is only
        reported finished once its notebook is stored and the stores commit; if the
        orchestrator stops first it is not applied at all (the job stays running in the
        store, and a restart requeues it)."""
        if notebook is None:
            apply(None)
            return
        book = self.book
        key = (job.job_id, job.attempt)
        book.sofar.drop(key)  # its output notebook takes the place of the notebook so far
        book.completing.add(key)
        for jobs in book.assigned.values():
            jobs.discard(job.job_id)
        book.wake()
        path = self.relay.checkpoints.state.attempt(job.job_id, job.attempt).output

        def then(written: bool) -> None:
            try:
                if written:
                    apply(path)
                else:
                    logger.error(
                        "job %s attempt %d ended on its robot, but its output notebook was "
                        "not stored before the stop: it stays running",
                        job.job_id,
                        job.attempt,
                    )
            except Exception:
                logger.exception("cannot finish attempt %d of job %s", job.attempt, job.job_id)
            finally:
                book.completing.discard(key)
                book.link.notify()

        self.durability.write_output(path, notebook, then)

    def _completed(self, job: Job, now: datetime, path: Path | None) -> None:
        done = self.book.live.finish(job.job_id, job.attempt, RunStatus.COMPLETED, now=now)
        self._history_run(done, RunStatus.COMPLETED, now, output=path)
        self.book.release(job.job_id, job.attempt)
        self.book.finished(done)

    def _failed(self, job: Job, msg: JobFailed, now: datetime, path: Path | None) -> None:
        book = self.book
        error = (msg.error_name or msg.status.value, msg.error_message or "")
        self._history_run(
            job,
            msg.status,
            now,
            output=path,
            error=error,
            failed_cell=(msg.failed_cell, msg.failed_cell_id),
        )
        book.release(job.job_id, job.attempt)
        if msg.status is RunStatus.CANCELLED and not book.live.cancel_requested(job.job_id):
            # the robot stopped the job on its own (e.g. a shutdown): run it again elsewhere
            book.requeue(
                job,
                now=now,
                event="robot_stopped",
                reason=f"robot {job.robot_id} stopped the job",
                resume_from_failed=True,
            )
            book.wake()
            return
        fate = after_attempt(job, msg.status, now=now, policy=self.retry_policy)
        if fate.retry and fate.eligible_at is not None:
            if book.requeue(
                job,
                now=now,
                event="retry",
                reason=msg.error_message,
                eligible_at=fate.eligible_at,
                resume_from_failed=True,
                failed=True,
            ):
                logger.info("job %s attempt %d failed; retrying", job.job_id, job.attempt)
                book.wake_at(fate.eligible_at, now)
            return
        book.finish(
            job,
            fate.status,
            now=now,
            error_name=msg.error_name,
            error_message=msg.error_message,
            failed_cell=msg.failed_cell,
        )

    def _on_cancelled(self, job: Job, now: datetime) -> None:
        done = self.book.live.finish(
            job.job_id, job.attempt, RunStatus.CANCELLED, now=now, error_name="Cancelled"
        )
        self._history_run(done, RunStatus.CANCELLED, now, error=("Cancelled", "cancelled"))
        self.book.release(job.job_id, job.attempt)
        self.book.finished(done)

    def _history_run(
        self,
        job: Job,
        status: RunStatus,
        finished_at: datetime | None,
        *,
        output: Path | None = None,
        error: tuple[str, str] | None = None,
        failed_cell: tuple[int | None, str | None] = (None, None),
    ) -> None:
        attempt = self.book.attempts.get((job.job_id, job.attempt))
        started = (attempt.started_at if attempt else None) or job.accepted_at
        started = started or job.assigned_at or job.created_at
        record = RunRecord(
            run_id=job.job_id,
            attempt=max(1, job.attempt),
            workflow_path=job.workflow_path,
            notebook_sha256=attempt.sha256 if attempt else "",
            parameters=dict(job.parameters),
            status=status,
            started_at=started,
            finished_at=finished_at,
            duration_s=(finished_at - started).total_seconds() if finished_at else None,
            cells_total=attempt.cells_total if attempt else 0,
            error_name=error[0] if error else None,
            error_message=error[1] if error else None,
            failed_cell=failed_cell[0],
            failed_cell_id=failed_cell[1],
            output_path=str(output) if output else None,
            source=job.source,
            trigger=trigger_label(job.trigger),
        )
        self.durability.put_history(record)


def poison_message(losses: int, cells: Sequence[LostCell | None]) -> str:
    """Why a job lost with its robot ``losses`` times is dead, naming the cell that was running
    each time (``cells``: those this orchestrator saw, oldest first; None where unknown)."""
    known = [cell for cell in cells if cell is not None]
    if not known:
        return f"robot lost {losses} times (the cell running is unknown)"
    counts = Counter(known)
    if len(counts) == 1:
        return f"robot lost {losses} times while running {known[0]}"
    each = ", ".join(f"{cell} ({n}x)" for cell, n in counts.items())
    return f"robot lost {losses} times, while running {each}"
