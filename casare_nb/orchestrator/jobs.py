"""The orchestrator's jobs: submit, dispatch to robots, the robots' job messages, cancel.

:class:`JobManager` holds the logic; the WebSocket server (:mod:`.server`) owns the
connections and hands it the robots' job messages through :meth:`JobManager.on_message`,
telling it when robots come, beat and go. The manager reaches back through a small
:class:`Link` (send to a robot, publish an event, wake ``wait_for`` callers).

The path of one job:

1. :meth:`JobManager.submit` reads the workflow, validates the parameters against its
   schema (a :class:`~casare_nb.core.params.ParameterError` queues nothing) and queues the
   job. Secret values stay in this process's memory only; the queue holds them redacted.
2. The dispatcher (woken by a submit, a robot registering, a heartbeat, a finished job, and
   at least every heartbeat interval) plans with :func:`~casare_nb.core.dispatch.plan_dispatch`
   and sends ``job_assign`` with the workflow as it is on disk now. Running counts come from
   the assignments made here (and the robot's heartbeats, whichever is higher), so a full
   robot gets no second job between heartbeats.
3. ``job_accept`` marks the attempt started; ``job_reject`` requeues the job (and skips that
   robot once); an attempt not accepted within ``assign_timeout_s`` is requeued.
4. ``job_progress`` records each cell once in the history; messages about an attempt that
   is not the job's current one on that robot are refused with ``stale_attempt``.
5. ``job_complete`` / ``job_failed`` / ``job_cancelled`` finish the attempt: output notebook
   under ``state_dir/runs/<job_id>/<attempt>/output.ipynb``, a run record in the history,
   and for a failure :func:`~casare_nb.core.dispatch.after_attempt` decides retry or not. A
   ``job_failed`` saying ``cancelled`` that no user asked for (the robot stopped the job,
   e.g. shutting down) requeues the job at once.

Checkpoints travel (:mod:`.checkpoints`): each ``job_progress`` carries the executed cell,
so the orchestrator keeps every attempt's notebook so far; each ``checkpoint_offer`` is
answered with ``checkpoint_want`` (the blobs it lacks), the blobs come as ``blob_put``, and
``checkpoint_stored`` confirms once the manifest and all its blobs are stored.

A robot that goes offline keeps its running jobs for ``reconnect_grace_s``: if it registers
again within that time naming them in ``resume_from``, they continue (``continue_jobs``).
Otherwise they are requeued with ``resume_from_failed=True`` and the next attempt, on any
robot, **resumes from the last stored checkpoint**: :meth:`JobManager._resume_spec` plans the
resume on the stored notebook-so-far and manifests and sends them (``job_assign.resume``);
the robot fetches the blobs it lacks with ``blob_get``. Attempts lost this way, rejected or
not accepted in time do not count as failures (``max_retries`` counts ``job.failures``).

:meth:`JobManager.rerun` puts a finished job back in the queue: from the failed cell (the
last checkpoint before it, with the workflow's current source) or from the start.
``draining`` stops submissions and dispatch; running jobs go on.

Database calls are short local DuckDB transactions made on the event loop's thread, which
keeps every state change of a job in one order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from pydantic import SecretStr

from casare_nb.core.dispatch import RetryPolicy, after_attempt, plan_dispatch
from casare_nb.core.errors import CasareError, WorkflowError
from casare_nb.core.models import Job, Priority, Robot, RobotStatus, RunRecord, RunStatus
from casare_nb.core.params import ParameterError, read_schema, redact
from casare_nb.local import REDACTED, _parameterised, _read_output, new_run_id
from casare_nb.notebook.checkpoint import write_json_atomic
from casare_nb.notebook.resume import carry_outputs, plan_resume
from casare_nb.notebook.workflow import load_workflow, parse_workflow
from casare_nb.orchestrator.checkpoints import CheckpointError, CheckpointStore, blob_refs
from casare_nb.protocol import (
    BlobAck,
    BlobGet,
    BlobPut,
    CheckpointOffer,
    CheckpointStored,
    CheckpointWant,
    Deduplicator,
    Envelope,
    Error,
    ErrorCode,
    EventKind,
    JobAccept,
    JobAssign,
    JobCancel,
    JobCancelled,
    JobComplete,
    JobFailed,
    JobProgress,
    JobRef,
    JobReject,
    ResumeSpec,
    dedup_key,
)
from casare_nb.store.history import HistoryStore, HistoryWriter
from casare_nb.store.queue import QueueError, QueueStore

__all__ = ["JOB_MESSAGES", "JobManager", "Link", "OrchestratorDraining", "output_path"]

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
"""The job-scoped robot messages :meth:`JobManager.on_message` handles."""

JobMessage = (
    JobAccept | JobReject | JobProgress | JobComplete | JobFailed | JobCancelled | CheckpointOffer
)


class OrchestratorDraining(CasareError):
    """The orchestrator is draining: it takes no new submissions."""


_TAKES_JOBS = (RobotStatus.ONLINE, RobotStatus.BUSY)


class Link(Protocol):
    """What the job manager needs from the server that owns the connections."""

    def robots(self) -> list[Robot]:
        """Every known robot (offline ones too)."""
        ...

    def send_to_robot(self, robot_id: str, msg: Envelope) -> bool:
        """Queue ``msg`` on the robot's connection; False if it is not connected."""
        ...

    def publish(self, kind: EventKind, data: dict[str, Any]) -> None:
        """Send an event to the subscribed monitors."""
        ...

    def notify(self) -> None:
        """State changed: wake ``wait_for`` callers."""
        ...


def output_path(state_dir: Path, job_id: str, attempt: int) -> Path:
    """Where the orchestrator keeps the output notebook of one attempt."""
    return state_dir / "runs" / job_id / str(attempt) / "output.ipynb"


def _plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


@dataclass
class _Attempt:
    """What the orchestrator remembers of an attempt it sent, until it ends."""

    robot_id: str
    sha256: str
    started_at: datetime
    cells_total: int = 0
    notebook: dict[str, Any] | None = None  # what the notebook-so-far starts from


class JobManager:
    """Queue, dispatch and track jobs; see the module docstring.

    ``clock`` is the time source of every decision; ``retry_policy`` spaces the attempts of
    a failing job; ``assign_timeout_s`` is how long a robot has to accept a job.
    """

    def __init__(
        self,
        queue: QueueStore,
        history: HistoryStore,
        link: Link,
        *,
        state_dir: Path,
        clock: Callable[[], datetime],
        heartbeat_interval_s: float,
        assign_timeout_s: float = 10.0,
        retry_policy: RetryPolicy | None = None,
        reconnect_grace_s: float = 5.0,
    ) -> None:
        if assign_timeout_s <= 0:
            raise ValueError(f"assign_timeout_s must be > 0, not {assign_timeout_s}")
        if reconnect_grace_s < 0:
            raise ValueError(f"reconnect_grace_s must be >= 0, not {reconnect_grace_s}")
        self.queue = queue
        self.history = history
        self.link = link
        self.state_dir = state_dir
        self.assign_timeout_s = assign_timeout_s
        self.retry_policy = retry_policy or RetryPolicy()
        self.heartbeat_interval_s = heartbeat_interval_s
        self.reconnect_grace_s = reconnect_grace_s
        self.checkpoints = CheckpointStore(state_dir)
        self.draining = False
        self._lost: dict[str, asyncio.TimerHandle] = {}  # robot id -> its jobs' requeue
        self._clock = clock
        self._writer = HistoryWriter(history)
        self._secrets: dict[str, dict[str, Any]] = {}
        self._assigned: dict[str, set[str]] = {}  # robot id -> job ids sent and not ended
        self._attempts: dict[tuple[str, int], _Attempt] = {}
        self._skip: dict[str, str] = {}  # job id -> robot that just rejected it
        self._dedup = Deduplicator()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the dispatcher task (in the running event loop). Jobs the database says are
        running (an orchestrator restart) wait twice ``reconnect_grace_s`` for their robots
        to come back, then are requeued to resume elsewhere."""
        if self._task is None:
            self._task = asyncio.create_task(self._dispatch_forever(), name="orchestrator-dispatch")
            robots = {
                job.robot_id
                for job in self.queue.list_jobs(status=[RunStatus.RUNNING], limit=1_000_000)
            }
            for robot_id in sorted(r for r in robots if r is not None):
                self._lose_later(robot_id, 2 * self.reconnect_grace_s)

    async def stop(self) -> None:
        """Stop the dispatcher and write out the history; idempotent."""
        for timer in [*self._timers, *self._lost.values()]:
            timer.cancel()
        self._timers.clear()
        self._lost.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self._writer.close)

    def wake(self) -> None:
        """Ask the dispatcher to look at the queue now."""
        self._wake.set()

    @property
    def history_writer(self) -> HistoryWriter:
        """The background writer of the cell and run records."""
        return self._writer

    def flush_history(self, timeout: float | None = None) -> None:
        """Block until the history records put so far are written (blocking)."""
        self._writer.flush(timeout)

    # -- API -----------------------------------------------------------------------------

    async def submit(
        self,
        workflow_path: str | os.PathLike[str],
        parameters: Mapping[str, Any] | None = None,
        *,
        raw_parameters: Mapping[str, str] | None = None,
        priority: Priority = Priority.NORMAL,
        tags: Sequence[str] = (),
        environment: str | None = None,
        max_retries: int = 0,
        source: str = "api",
    ) -> Job:
        """Validate and queue a run of ``workflow_path``; the queued job.

        Raises :class:`~casare_nb.core.params.ParameterError` (bad parameters) or
        :class:`~casare_nb.core.errors.WorkflowError` (no such or broken notebook) before
        anything is queued."""
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {max_retries}")
        self._check_not_draining()
        path = Path(workflow_path).absolute()
        values, secret_names = await asyncio.to_thread(
            _validate, path, parameters or {}, raw_parameters
        )
        now = self._clock()
        job = Job(
            job_id=new_run_id(),
            workflow_path=str(path),
            parameters=redact(values, secret_names),
            priority=Priority(priority),
            environment=environment,
            tags=list(tags),
            max_retries=max_retries,
            created_at=now,
            eligible_at=now,
            source=source,
        )
        secrets = {k: _plain(v) for k, v in values.items() if k in secret_names}
        if secrets:
            self._secrets[job.job_id] = redact(secrets, ())
        try:
            self.queue.add_job(job)
        except BaseException:
            self._secrets.pop(job.job_id, None)
            raise
        logger.info("queued job %s (%s, %s)", job.job_id, path.name, job.priority.value)
        self.link.publish(EventKind.JOB_QUEUED, {"job": _dump(job)})
        self.link.notify()
        self.wake()
        return job

    async def rerun(
        self,
        job_id: str,
        *,
        from_failed: bool = True,
        parameters: Mapping[str, Any] | None = None,
        raw_parameters: Mapping[str, str] | None = None,
    ) -> Job:
        """Queue a finished job again as its next attempt; the queued job.

        ``from_failed``: resume from the first cell that did not run ok with its current
        source (the failed cell, or an earlier one the analyst edited), the namespace
        restored from the last checkpoint before it, on any robot; False: from the start.
        ``parameters`` / ``raw_parameters`` change values (the others are kept; secret ones
        must be given again). Raises QueueError (unknown, queued or running job),
        ParameterError or WorkflowError; nothing changes then."""
        self._check_not_draining()
        job = self.queue.get_job(job_id)
        if job is None:
            raise QueueError(f"unknown job {job_id}")
        if not job.status.finished:
            raise QueueError(
                f"job {job_id} is still {job.status.value}: only a finished job re-runs"
            )
        path = Path(job.workflow_path)
        given = {**(parameters or {}), **(raw_parameters or {})}
        earlier = {k: v for k, v in job.parameters.items() if k not in (raw_parameters or {})}
        for name, value in sorted(earlier.items()):
            if value == REDACTED and name not in given:
                raise ParameterError(
                    f"job {job_id} used secret parameter {name!r}; give it again to re-run"
                )
        earlier = {k: v for k, v in earlier.items() if v != REDACTED}
        values, secret_names = await asyncio.to_thread(
            _validate, path, {**earlier, **(parameters or {})}, raw_parameters
        )
        job = self.queue.reopen(
            job_id,
            now=self._clock(),
            resume_from_failed=from_failed,
            parameters=redact(values, secret_names),
        )
        secrets = {k: _plain(v) for k, v in values.items() if k in secret_names}
        if secrets:
            self._secrets[job.job_id] = redact(secrets, ())
        how = "from the failed cell" if from_failed else "from the start"
        logger.info("re-running job %s %s", job_id, how)
        self.link.publish(EventKind.JOB_QUEUED, {"job": _dump(job), "reason": "rerun"})
        self.link.notify()
        self.wake()
        return job

    def running_jobs(self) -> list[Job]:
        """The jobs running now (assigned to a robot)."""
        return self.queue.list_jobs(status=[RunStatus.RUNNING], limit=1_000_000)

    def _check_not_draining(self) -> None:
        if self.draining:
            raise OrchestratorDraining(
                "the orchestrator is draining: it takes no new submissions until restarted"
            )

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one by asking its robot (the job
        becomes cancelled when the robot answers). A finished or unknown job raises
        :class:`~casare_nb.store.queue.QueueError`."""
        job = self.queue.cancel(job_id, now=self._clock())
        if job.status is RunStatus.CANCELLED:
            self._finished(job)
            return job
        if job.robot_id is not None:
            # a robot that is gone gets its jobs requeued, which cancels this one instead
            self.link.send_to_robot(
                job.robot_id,
                JobCancel(job_id=job_id, attempt=job.attempt, reason="cancelled by a user"),
            )
        return job

    def jobs(self, status: RunStatus | None = None, *, limit: int = 100) -> list[Job]:
        """Up to ``limit`` jobs, newest first, optionally only those in ``status``."""
        return self.queue.list_jobs(status=None if status is None else [status], limit=limit)

    def job(self, job_id: str) -> Job | None:
        """The job ``job_id``, or None."""
        return self.queue.get_job(job_id)

    # -- robots coming and going ---------------------------------------------------------

    def robot_gone(self, robot_id: str, *, grace: bool = True) -> None:
        """A robot went offline: its running jobs are requeued (to resume from their last
        checkpoint) after ``reconnect_grace_s`` unless it comes back for them first; at once
        with ``grace=False`` (it missed its heartbeats: it had its time)."""
        self._lose_later(robot_id, self.reconnect_grace_s if grace else 0.0)

    def robot_back(self, robot_id: str, holds: Sequence[JobRef]) -> list[JobRef]:
        """A robot registered again naming the jobs it ``holds``: those still running on it
        continue (answered in ``register_ack.continue_jobs``); its other running jobs are
        requeued now (it lost them, e.g. it restarted)."""
        timer = self._lost.pop(robot_id, None)
        if timer is not None:
            timer.cancel()
        held = {(ref.job_id, ref.attempt) for ref in holds}
        keep: list[JobRef] = []
        lost = False
        for job in self.queue.running_on(robot_id):
            if (job.job_id, job.attempt) in held:
                keep.append(JobRef(job_id=job.job_id, attempt=job.attempt))
                self._assigned.setdefault(robot_id, set()).add(job.job_id)
            else:
                lost = True
        if lost:
            self._requeue_lost(robot_id, keep={ref.job_id for ref in keep})
        if keep:
            logger.info(
                "robot %s is back: %s continue", robot_id, ", ".join(r.job_id for r in keep)
            )
        return keep

    def _lose_later(self, robot_id: str, delay: float) -> None:
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
        now = self._clock()
        if not keep:
            self._assigned.pop(robot_id, None)
        for job in self.queue.running_on(robot_id):
            if job.job_id in keep:
                continue
            self._history_run(
                job, RunStatus.FAILED, now, error=("RobotLost", f"robot {robot_id} went offline")
            )
            self._release(job.job_id, job.attempt)
            self.checkpoints.forget_attempt(job.job_id, job.attempt)
            if self._requeue(
                job,
                now=now,
                event="robot_offline",
                reason=f"robot {robot_id} went offline",
                resume_from_failed=True,
            ):
                logger.info("requeued job %s: robot %s went offline", job.job_id, robot_id)
        self.link.notify()
        self.wake()

    # -- robot messages ------------------------------------------------------------------

    def on_message(self, robot_id: str, msg: JobMessage) -> Error | None:
        """Handle one job message from robot ``robot_id``; the error to answer, if any.

        A copy of a message already handled (a robot resends what it is not sure arrived) is
        dropped; a message whose handling raised is not remembered, so its resend is handled.
        """
        key = dedup_key(msg)
        if key in self._dedup:
            logger.debug("dropped a duplicate %s for job %s", msg.type, msg.job_id)
            return None
        error = self._on_message(robot_id, msg)
        self._dedup.seen(key)
        return error

    def _on_message(self, robot_id: str, msg: JobMessage) -> Error | None:
        job = self.queue.get_job(msg.job_id)
        if job is None:
            return _error(ErrorCode.UNKNOWN_JOB, f"unknown job {msg.job_id!r}", msg)
        if job.status is not RunStatus.RUNNING or job.attempt != msg.attempt:
            return _error(
                ErrorCode.STALE_ATTEMPT,
                f"job {job.job_id} attempt {msg.attempt} is not current "
                f"(the job is {job.status.value}, attempt {job.attempt})",
                msg,
            )
        if job.robot_id != robot_id:
            return _error(
                ErrorCode.STALE_ATTEMPT,
                f"job {job.job_id} attempt {msg.attempt} is not assigned to robot {robot_id}",
                msg,
            )
        now = self._clock()
        match msg:
            case CheckpointOffer():
                return self._on_offer(robot_id, msg)
            case JobAccept():
                self._on_accept(job, now)
            case JobReject():
                self._on_reject(job, robot_id, msg, now)
            case JobProgress():
                self._on_progress(job, msg)
            case JobComplete():
                self._on_complete(job, msg, now)
            case JobFailed():
                self._on_failed(job, msg, now)
            case JobCancelled():
                self._on_cancelled(job, now)
        self.link.notify()
        return None

    def _on_accept(self, job: Job, now: datetime) -> None:
        job = self.queue.accept(job.job_id, job.attempt, now=now)
        attempt = self._attempts.get((job.job_id, job.attempt))
        if attempt is not None:
            attempt.started_at = now
        self._history_run(job, RunStatus.RUNNING, None)
        self.link.publish(EventKind.JOB_STARTED, {"job": _dump(job)})

    def _on_reject(self, job: Job, robot_id: str, msg: JobReject, now: datetime) -> None:
        logger.info("robot %s rejected job %s: %s", robot_id, job.job_id, msg.reason)
        self._release(job.job_id, job.attempt)
        if self._requeue(
            job, now=now, event="rejected", reason=f"rejected by robot {robot_id}: {msg.reason}"
        ):
            self._skip[job.job_id] = robot_id
        self.wake()

    def _on_progress(self, job: Job, msg: JobProgress) -> None:
        attempt = self._attempts.get((job.job_id, job.attempt))
        if attempt is not None:
            attempt.cells_total = msg.cells_total
        self._writer.put_cells([msg.to_cell_record()])
        if msg.cell is not None:
            try:
                self.checkpoints.record_cell(
                    job.job_id, job.attempt, msg.cell, base=attempt.notebook if attempt else None
                )
            except (OSError, CheckpointError) as exc:
                logger.warning("cannot keep cell %s of job %s: %s", msg.cell_id, job.job_id, exc)
        self.link.publish(
            EventKind.CELL_FINISHED,
            {
                "job_id": msg.job_id,
                "attempt": msg.attempt,
                "cell_index": msg.cell_index,
                "cell_id": msg.cell_id,
                "status": msg.status.value,
                "duration_s": msg.duration_s,
                "cells_done": msg.cells_done,
                "cells_total": msg.cells_total,
            },
        )

    # -- checkpoints ---------------------------------------------------------------------

    def _on_offer(self, robot_id: str, msg: CheckpointOffer) -> Error | None:
        try:
            missing = self.checkpoints.offer(msg.job_id, msg.attempt, msg.cell_id, msg.manifest)
        except CheckpointError as exc:
            return _error(ErrorCode.INVALID_MESSAGE, str(exc), msg)
        except OSError as exc:
            return _error(ErrorCode.INTERNAL, f"cannot store the checkpoint: {exc}", msg)
        answer: Envelope
        if missing:
            answer = CheckpointWant(
                job_id=msg.job_id,
                attempt=msg.attempt,
                cell_id=msg.cell_id,
                blobs=missing,
                reply_to=msg.id,
            )
        else:
            answer = CheckpointStored(
                job_id=msg.job_id, attempt=msg.attempt, cell_id=msg.cell_id, reply_to=msg.id
            )
        self.link.send_to_robot(robot_id, answer)
        return None

    def on_blob_put(self, robot_id: str, msg: BlobPut) -> Error | None:
        """A blob a checkpoint offer waits for; stored, acknowledged, and the offers it
        completes confirmed with ``checkpoint_stored``. Blobs nobody asked for are refused."""
        if not self.checkpoints.awaited(msg.sha256):
            if self.checkpoints.has_blob(msg.sha256):  # a second copy: already stored
                self.link.send_to_robot(robot_id, BlobAck(sha256=[msg.sha256], reply_to=msg.id))
                return None
            return _error(ErrorCode.INVALID_MESSAGE, f"blob {msg.sha256} was not asked for", msg)
        try:
            self.checkpoints.write_blob(msg.payload())
        except OSError as exc:
            return _error(ErrorCode.INTERNAL, f"cannot store blob {msg.sha256}: {exc}", msg)
        self.link.send_to_robot(robot_id, BlobAck(sha256=[msg.sha256], reply_to=msg.id))
        for job_id, attempt, cell_id in self.checkpoints.blob_stored(msg.sha256):
            job = self.queue.get_job(job_id)
            if job is not None and job.robot_id is not None and job.attempt == attempt:
                self.link.send_to_robot(
                    job.robot_id,
                    CheckpointStored(job_id=job_id, attempt=attempt, cell_id=cell_id),
                )
        return None

    def on_blob_get(self, robot_id: str, msg: BlobGet) -> list[Envelope]:
        """The blobs a robot needs for a resume: a blob_put each, or an error for one the
        store does not hold."""
        answers: list[Envelope] = []
        for sha in msg.sha256:
            data = self.checkpoints.read_blob(sha)
            if data is None:
                answers.append(_error(ErrorCode.UNKNOWN_BLOB, f"blob {sha} is not stored", msg))
            else:
                answers.append(BlobPut.of(data, reply_to=msg.id))
        return answers

    def _resume_spec(self, job: Job, notebook: dict[str, Any], raw: bytes) -> ResumeSpec | None:
        """How attempt ``job.attempt`` resumes the newest earlier attempt the store holds a
        notebook-so-far of: plans the resume as the robot will, starts the new attempt's
        notebook-so-far with the carried cells and the manifests up to the restore point.
        None (start over) when no earlier attempt left anything, or it cannot be planned."""
        prev = self.checkpoints.latest_output(job.job_id, job.attempt - 1)
        if prev is None:
            return None
        try:
            nb = parse_workflow(raw, job.workflow_path)
            schema = read_schema(nb)
            values = {k: v for k, v in job.parameters.items() if k in schema.params}
            nb_exec, _, _ = _parameterised(nb, values, schema)
            prev_paths = self.checkpoints.attempt(job.job_id, prev)
            prev_output = _read_output(prev_paths.output)
            plan = plan_resume(nb_exec, prev_output, prev_paths)
            carry_outputs(nb_exec, prev_output, plan)
            paths = self.checkpoints.attempt(job.job_id, job.attempt)
            paths.inherit(prev_paths, plan.inherit_ids)
            self.checkpoints.start_output(job.job_id, job.attempt, dict(nb_exec))
        except (CasareError, ValueError, OSError) as exc:
            logger.warning("job %s: cannot plan a resume, starting over: %s", job.job_id, exc)
            return None
        manifests = self.checkpoints.manifests_for(prev_paths, plan.inherit_ids)
        blobs = sorted({sha for m in manifests.values() for sha in blob_refs(m)})
        restore = (
            nb_exec.cells[plan.restore_cell].get("id") if plan.restore_cell is not None else None
        )
        logger.info(
            "job %s attempt %d resumes attempt %d at cell %d (restoring after cell %s)",
            job.job_id,
            job.attempt,
            prev,
            plan.start,
            plan.restore_cell,
        )
        return ResumeSpec(
            from_attempt=prev,
            restore_cell_id=restore,
            previous_output=dict(prev_output) if prev_output is not None else None,
            manifests=manifests,
            blobs=blobs,
        )

    def _on_complete(self, job: Job, msg: JobComplete, now: datetime) -> None:
        path = self._store_output(job, msg.output_notebook)
        done = self.queue.finish(job.job_id, job.attempt, RunStatus.COMPLETED, now=now)
        self._history_run(done, RunStatus.COMPLETED, now, output=path)
        self._release(job.job_id, job.attempt)
        self._finished(done)

    def _on_failed(self, job: Job, msg: JobFailed, now: datetime) -> None:
        path = self._store_output(job, msg.output_notebook)
        error = (msg.error_name or msg.status.value, msg.error_message or "")
        self._history_run(
            job, msg.status, now, output=path, error=error, failed_cell=msg.failed_cell
        )
        self._release(job.job_id, job.attempt)
        if msg.status is RunStatus.CANCELLED and not self.queue.cancel_requested(job.job_id):
            # the robot stopped the job on its own (e.g. a shutdown): run it again elsewhere
            self._requeue(
                job,
                now=now,
                event="robot_stopped",
                reason=f"robot {job.robot_id} stopped the job",
                resume_from_failed=True,
            )
            self.wake()
            return
        fate = after_attempt(job, msg.status, now=now, policy=self.retry_policy)
        if fate.retry and fate.eligible_at is not None:
            if self._requeue(
                job,
                now=now,
                event="retry",
                reason=msg.error_message,
                eligible_at=fate.eligible_at,
                resume_from_failed=True,
                failed=True,
            ):
                logger.info("job %s attempt %d failed; retrying", job.job_id, job.attempt)
                self._wake_at(fate.eligible_at, now)
            return
        done = self.queue.finish(
            job.job_id,
            job.attempt,
            fate.status,
            now=now,
            error_name=msg.error_name,
            error_message=msg.error_message,
            failed_cell=msg.failed_cell,
        )
        self._finished(done)

    def _on_cancelled(self, job: Job, now: datetime) -> None:
        done = self.queue.finish(
            job.job_id, job.attempt, RunStatus.CANCELLED, now=now, error_name="Cancelled"
        )
        self._history_run(done, RunStatus.CANCELLED, now, error=("Cancelled", "cancelled"))
        self._release(job.job_id, job.attempt)
        self._finished(done)

    # -- dispatch ------------------------------------------------------------------------

    async def _dispatch_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                self.dispatch()
            except Exception:
                logger.exception("dispatch failed")

    def dispatch(self) -> int:
        """Requeue attempts not accepted in time, then assign what the robots can take
        (nothing while draining); the number of jobs sent."""
        now = self._clock()
        self._expire_unaccepted(now)
        if self.draining:
            return 0
        queued = self.queue.queued(now=now)
        if not queued:
            return 0
        robots = [
            r.model_copy(
                update={
                    "running_jobs": max(r.running_jobs, len(self._assigned.get(r.robot_id, ())))
                }
            )
            for r in self.link.robots()
            if r.status in _TAKES_JOBS
        ]
        by_id = {job.job_id: job for job in queued}
        sent = 0
        for assignment in plan_dispatch(queued, robots, now=now):
            if self._skip.pop(assignment.job_id, None) == assignment.robot_id:
                continue  # it just rejected this job: try again next round
            if self._send_assign(by_id[assignment.job_id], assignment.robot_id, now):
                sent += 1
        if sent:
            self.link.notify()
        return sent

    def _send_assign(self, queued: Job, robot_id: str, now: datetime) -> bool:
        try:
            raw = Path(queued.workflow_path).read_bytes()
            notebook = json.loads(raw)
            if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
                raise WorkflowError(f"workflow {queued.workflow_path} is not a notebook")
        except (OSError, ValueError, WorkflowError) as exc:
            done = self.queue.finish(
                queued.job_id,
                queued.attempt,
                RunStatus.FAILED,
                now=now,
                error_name="WorkflowError",
                error_message=f"cannot read workflow {queued.workflow_path}: {exc}",
            )
            self._finished(done)
            return False
        secrets = self._secrets.get(queued.job_id, {})
        lost = sorted(k for k, v in queued.parameters.items() if v == REDACTED and k not in secrets)
        if lost:
            # secrets live in memory only: an orchestrator restart loses those of queued jobs
            done = self.queue.finish(
                queued.job_id,
                queued.attempt,
                RunStatus.FAILED,
                now=now,
                error_name="SecretLost",
                error_message=f"secret parameter {lost[0]} was lost when the orchestrator "
                "restarted; re-run the job giving it again",
            )
            self._finished(done)
            return False
        job = self.queue.assign(queued.job_id, robot_id, now=now)
        resume = self._resume_spec(job, notebook, raw) if job.resume_from_failed else None
        msg = JobAssign(
            job_id=job.job_id,
            attempt=job.attempt,
            workflow_path=job.workflow_path,
            notebook=notebook,
            parameters={k: v for k, v in job.parameters.items() if k not in secrets},
            secret_parameters=secrets,
            priority=job.priority,
            resume=resume,
        )
        self._assigned.setdefault(robot_id, set()).add(job.job_id)
        self._attempts[(job.job_id, job.attempt)] = _Attempt(
            robot_id, hashlib.sha256(raw).hexdigest(), now, notebook=notebook
        )
        if not self.link.send_to_robot(robot_id, msg):
            self._release(job.job_id, job.attempt)
            self._requeue(job, now=now, event="send_failed", reason=None)
            return False
        logger.info("sent job %s attempt %d to robot %s", job.job_id, job.attempt, robot_id)
        return True

    def _expire_unaccepted(self, now: datetime) -> None:
        before = now - timedelta(seconds=self.assign_timeout_s)
        for job in self.queue.assigned_unaccepted(before=before):
            logger.warning(
                "robot %s did not accept job %s in %g s: requeued",
                job.robot_id,
                job.job_id,
                self.assign_timeout_s,
            )
            self._release(job.job_id, job.attempt)
            self._requeue(
                job,
                now=now,
                event="not_accepted",
                reason=f"robot {job.robot_id} did not accept the job in time",
            )

    def _requeue(
        self,
        job: Job,
        *,
        now: datetime,
        event: str,
        reason: str | None,
        eligible_at: datetime | None = None,
        resume_from_failed: bool | None = None,
        failed: bool = False,
    ) -> Job | None:
        """Put a job back in the queue and tell the monitors why (``event``). A job whose
        cancel was asked meanwhile ends cancelled instead. Answers the queued job, or None
        when it was cancelled or could not be requeued (logged)."""
        try:
            requeued = self.queue.requeue(
                job.job_id,
                eligible_at=eligible_at or now,
                resume_from_failed=(
                    job.resume_from_failed if resume_from_failed is None else resume_from_failed
                ),
                reason=reason,
                now=now,
                failed=failed,
            )
        except QueueError as exc:
            logger.warning("cannot requeue job %s: %s", job.job_id, exc)
            return None
        if requeued.status is RunStatus.CANCELLED:
            self._finished(requeued)
            return None
        self.link.publish(EventKind.JOB_QUEUED, {"job": _dump(requeued), "reason": event})
        return requeued

    def _wake_at(self, when: datetime, now: datetime) -> None:
        delay = max(0.0, (when - now).total_seconds())
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            if handle is not None:
                self._timers.discard(handle)
            self.wake()

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    # -- helpers -------------------------------------------------------------------------

    def _release(self, job_id: str, attempt: int) -> None:
        """The attempt ended (or never started): free its robot's slot. Its pending
        checkpoint offers stay: their blobs may still be on the way."""
        record = self._attempts.pop((job_id, attempt), None)
        for robot_id, jobs in list(self._assigned.items()):
            jobs.discard(job_id)
            if not jobs:
                del self._assigned[robot_id]
        if record is not None:
            self.wake()

    def _finished(self, job: Job) -> None:
        """The job reached a final status."""
        self._secrets.pop(job.job_id, None)
        self._skip.pop(job.job_id, None)
        logger.info("job %s %s", job.job_id, job.status.value)
        self.link.publish(EventKind.JOB_FINISHED, {"job": _dump(job)})
        self.link.notify()
        self.wake()

    def _store_output(self, job: Job, notebook: dict[str, Any] | None) -> Path | None:
        if notebook is None:
            return None
        path = output_path(self.state_dir, job.job_id, job.attempt)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, notebook)
        except OSError as exc:
            logger.error("cannot store the output of job %s: %s", job.job_id, exc)
            return None
        return path

    def _history_run(
        self,
        job: Job,
        status: RunStatus,
        finished_at: datetime | None,
        *,
        output: Path | None = None,
        error: tuple[str, str] | None = None,
        failed_cell: int | None = None,
    ) -> None:
        attempt = self._attempts.get((job.job_id, job.attempt))
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
            failed_cell=failed_cell,
            output_path=str(output) if output else None,
            source=job.source,
        )
        self._writer.put_run(record)


def _validate(
    path: Path, parameters: Mapping[str, Any], raw: Mapping[str, str] | None
) -> tuple[dict[str, Any], set[str]]:
    """Validated values and the secret names (blocking: reads the notebook)."""
    nb, _ = load_workflow(path)
    schema = read_schema(nb)
    checked = schema.validate_values(parameters, strict=True, text_values=raw)
    return dict(checked.values), schema.secret_names()


def _error(code: ErrorCode, message: str, msg: Envelope) -> Error:
    return Error(code=code, message=message, reply_to=msg.id)


def _dump(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="json")
