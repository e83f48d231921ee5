"""The job manager: submit, rerun, cancel and read jobs; the parts that move them, wired.

One :class:`JobManager` per orchestrator. It holds the in-memory book (:mod:`.book`: the
job state machine :class:`~casare_nb.core.jobs.LiveJobs` and what is remembered of each
attempt) and four parts working on it, each a module of this package:

- :mod:`.dispatch` -- queued jobs to robots (``job_assign``);
- :mod:`.attempts` -- the robots' job messages, robots lost and back;
- :mod:`.relay` -- checkpoints in, resumes out;
- :mod:`.durable` -- what is written behind, and when it is durable;
- :mod:`.sharing` -- with several active orchestrators on one database, what the database
  decides (claims, cancels, re-runs, robots moving) and what the other nodes changed.

``submit`` validates the parameters against the workflow's schema (the one validation of a
job: see :mod:`.dispatch` for what happens if the workflow changes while it waits) and
returns once the job is committed; secrets stay in memory only. ``rerun`` puts a finished
job back in the queue, from the failed cell or from the start; ``cancel`` ends a queued job
at once and asks a running job's robot to stop it. The path of a job through these parts is
told in ``docs/architecture.md``.

An orchestrator killed between a ``job_assign`` and its commit loses the assignment, not
the attempt: the state directory holds :data:`OPEN_MARKER` while a job manager runs; the next
one to find it holds dispatch ``reconnect_grace_s`` so robots come back first and claim
their attempts (:meth:`~.attempts.Attempts.robot_back`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

from pydantic import SecretStr

from casare_nb.api import DebugBundle
from casare_nb.core.dispatch import RetryPolicy
from casare_nb.core.errors import (
    JobExists,
    OrchestratorDraining,
    QueueError,
    SubmissionsClosed,
    SubmissionsPaused,
)
from casare_nb.core.ids import new_run_id
from casare_nb.core.injection import REDACTED, redact
from casare_nb.core.jobs import LiveJobs
from casare_nb.core.models import Job, JobTimeouts, Priority, RunStatus, TriggerRef
from casare_nb.core.params import ParameterError, read_schema
from casare_nb.notebook.run import check_parameters, parameterised
from casare_nb.notebook.workflow import kernel_name_of, load_workflow, write_cell_sources
from casare_nb.orchestrator.jobs.attempts import Attempts, JobMessage
from casare_nb.orchestrator.jobs.book import JobBook, Link
from casare_nb.orchestrator.jobs.dispatch import Dispatcher, check_frame, check_inside
from casare_nb.orchestrator.jobs.durable import DURABLE_TIMEOUT_S, Durability, DurableMark
from casare_nb.orchestrator.jobs.relay import CheckpointRelay
from casare_nb.orchestrator.jobs.sharing import Sharing
from casare_nb.orchestrator.jobs.sofar import NotebooksSoFar
from casare_nb.protocol import (
    MAX_FRAME_BYTES,
    BlobGet,
    BlobPut,
    Envelope,
    Error,
    EventKind,
    JobAssign,
    JobCancel,
    JobEvent,
    JobRef,
)
from casare_nb.store.interfaces import Stores

__all__ = ["OPEN_MARKER", "JobManager"]

logger = logging.getLogger("casare_nb.orchestrator.jobs")

OPEN_MARKER: Final = "jobs.open"
"""A file in the state directory while a job manager runs; found at start, it says the last
one did not stop cleanly (so dispatch waits for the robots to come back first)."""


class JobManager:
    """Queue, dispatch and track jobs; see the module docstring.

    ``clock`` is the time source of every decision; ``retry_policy`` spaces the attempts of
    a failing job; ``assign_timeout_s`` is how long a robot has to accept a job.
    ``workflows_dir``: every read of a workflow (submit, dispatch, rerun, debug) checks that
    its path, symlinks resolved, lies inside it (None: no check). ``max_frame_bytes``: the
    largest ``job_assign`` a submit takes (the workflow parameterised must fit one frame).
    """

    def __init__(
        self,
        stores: Stores,
        link: Link,
        *,
        state_dir: Path,
        clock: Callable[[], datetime],
        heartbeat_interval_s: float,
        assign_timeout_s: float = 10.0,
        retry_policy: RetryPolicy | None = None,
        reconnect_grace_s: float = 5.0,
        workflows_dir: Path | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        self.store = stores.jobs
        self.workflows_dir = workflows_dir  # every workflow read must lie inside (None: any)
        self.max_frame_bytes = max_frame_bytes
        self.state_dir = state_dir
        sofar = NotebooksSoFar(stores.checkpoints.attempt)
        self.durability = Durability(stores.jobs, stores.history.writer(), sofar)
        self.sharing: Sharing | None = None
        self.book = JobBook(LiveJobs(self._stage), link, clock, sofar)
        self.submissions_paused = False  # an operator's pause: submit and rerun refused
        self.relay = CheckpointRelay(self.book, stores.checkpoints)
        self.dispatcher = Dispatcher(
            self.book,
            self.relay,
            heartbeat_interval_s=heartbeat_interval_s,
            assign_timeout_s=assign_timeout_s,
            workflows_dir=workflows_dir,
            max_frame_bytes=max_frame_bytes,
        )
        self.attempts = Attempts(
            self.book,
            self.durability,
            self.relay,
            stores.jobs,
            retry_policy=retry_policy or RetryPolicy(),
            reconnect_grace_s=reconnect_grace_s,
        )
        self._inserting: set[str] = set()  # submitted job ids waiting for their insert
        self._loop: asyncio.AbstractEventLoop | None = None
        if stores.shared is not None:
            self.sharing = Sharing(self.book, stores.shared, self.attempts, self.durability)
            self.dispatcher.claims = self.sharing

    def _stage(self, job: Job, cancel_requested: bool) -> int:
        """Hand a state LiveJobs made to the job store (remembered per job when several
        orchestrators share the database: see :mod:`.sharing`)."""
        mark = self.durability.stage(job, cancel_requested)
        if self.sharing is not None:
            self.sharing.staged(job.job_id, mark)
        return mark

    # -- what other parts of the orchestrator use ----------------------------------------

    def now(self) -> datetime:
        """The clock of every decision (aware UTC)."""
        return self.book.clock()

    @property
    def draining(self) -> bool:
        return self.book.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.book.draining = value

    @property
    def finished_listeners(self) -> list[Callable[[Job], None]]:
        """Called on the loop with every job that reaches a final status."""
        return self.book.finished_listeners

    @property
    def finished_elsewhere_listeners(self) -> list[Callable[[Job], None]]:
        """Called on the loop with every job another orchestrator of a shared database
        finished (never called with one orchestrator)."""
        return self.sharing.finished_elsewhere if self.sharing is not None else []

    @property
    def cell_listeners(self) -> list[Callable[[Job, int, dict[str, Any]], None]]:
        """Called on the loop with (job, cell index, executed cell) of each job_progress."""
        return self.book.cell_listeners

    def wake(self) -> None:
        """Ask the dispatcher to look at the queue now."""
        self.book.wake()

    def dispatch(self) -> int:
        """One dispatch round now; the number of jobs sent."""
        return self.dispatcher.dispatch()

    def on_message(self, robot_id: str, msg: JobMessage) -> Error | None:
        """A job message from robot ``robot_id``; the error to answer, if any."""
        return self.attempts.on_message(robot_id, msg)

    def on_blob_put(self, robot_id: str, msg: BlobPut) -> Error | None:
        return self.relay.on_blob_put(robot_id, msg)

    def on_blob_get(self, robot_id: str, msg: BlobGet) -> list[Envelope]:
        return self.relay.on_blob_get(robot_id, msg)

    def robot_gone(self, robot_id: str, *, grace: bool = True) -> None:
        self.attempts.robot_gone(robot_id, grace=grace)

    def robot_back(self, robot_id: str, holds: Sequence[JobRef]) -> list[JobRef]:
        return self.attempts.robot_back(robot_id, holds)

    def durable_mark(self, robot_id: str | None = None) -> DurableMark:
        """A mark over what was made so far (``robot_id``: its notebooks so far are
        written; None: every robot's)."""
        return self.durability.mark(robot_id)

    def is_durable(self, mark: DurableMark) -> bool:
        return self.durability.is_durable(mark)

    async def durable(self, mark: DurableMark, timeout: float) -> bool:
        return await self.durability.durable(mark, timeout)

    def notebook_so_far(self, job_id: str, attempt: int) -> dict[str, Any] | None:
        """The notebook so far of a running attempt, as kept in memory (its cells shared:
        do not change them); None when it is not kept (ended, or no cell reported yet)."""
        return self.book.sofar.get((job_id, attempt))

    def flush_history(self, timeout: float | None = 30.0) -> None:
        """Block until the history records and job states made so far are written."""
        self.durability.flush(timeout)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Load the queued and running jobs from the store and start dispatching (in the
        running event loop). Jobs the store says are running (an orchestrator restart) wait
        twice ``reconnect_grace_s`` for their robots to come back, then are requeued to
        resume elsewhere."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self.durability.start()
        self.store.subscribe(added=self._on_added)
        if self.sharing is not None:  # claims are decided in the database: no crash hold
            self.sharing.load()
            self.sharing.start()
        else:
            for job, cancel_requested in self.store.unfinished():
                self.book.live.add(job, cancel_requested=cancel_requested)
            self._hold_after_crash()
        self.dispatcher.start()
        robots = {job.robot_id for job in self.book.live.running()}
        for robot_id in sorted(r for r in robots if r is not None):
            self.attempts.lose_later(robot_id, 2 * self.attempts.reconnect_grace_s)

    def _hold_after_crash(self) -> None:
        """Mark the state directory as in use; if the last job manager did not stop
        cleanly, hold dispatch ``reconnect_grace_s`` so that robots come back first and
        claim the jobs assigned to them in its last moments (never written), instead of
        these jobs going to others under the same attempt."""
        marker = self.state_dir / OPEN_MARKER
        crashed = marker.exists()
        try:
            marker.write_text(f"{os.getpid()}\n", encoding="utf-8")
        except OSError as exc:
            logger.warning("cannot write %s: %s", marker, exc)
        grace = self.attempts.reconnect_grace_s
        if crashed and self.book.live.queued_count and grace > 0:
            now = self.book.clock()
            hold = self.dispatcher.hold_until = now + timedelta(seconds=grace)
            logger.warning(
                "the orchestrator did not stop cleanly last time: dispatch waits %g s for "
                "the robots to come back",
                grace,
            )
            self.book.wake_at(hold, now)

    async def stop(self) -> None:
        """Stop dispatching and write out the job states and the history; idempotent."""
        self.book.cancel_timers()
        self.attempts.stop()
        await self.dispatcher.stop()
        committed = await self.durability.stop()
        if self.sharing is not None and self._loop is not None:
            counts = self.sharing.counts
            logger.info(
                "node %s: %d claims won, %d lost to other nodes, %d rows heard from them",
                self.sharing.node,
                counts["claimed"],
                counts["lost"],
                counts["heard"],
            )
        if committed and self._loop is not None:  # it was started: everything is written
            (self.state_dir / OPEN_MARKER).unlink(missing_ok=True)
        self.store.unsubscribe(added=self._on_added)

    def _on_added(self, jobs: list[Job]) -> None:
        """Jobs were added to the store in bulk (any thread): keep them too."""
        loop = self._loop
        if loop is None:
            return
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if here:
            self._adopt(jobs)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._adopt, jobs)

    def _adopt(self, jobs: list[Job]) -> None:
        added = sum(1 for job in jobs if self.book.live.add(job))
        if added:
            logger.info("%d jobs added to the queue directly", added)
            self.book.link.notify()
            self.book.wake()

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
        max_robot_losses: int = 3,
        timeouts: JobTimeouts | Mapping[str, Any] | None = None,
        source: str = "api",
        trigger: TriggerRef | None = None,
        job_id: str | None = None,
        start_at: datetime | None = None,
        submitted_by: str | None = None,
    ) -> Job:
        """Validate and queue a run of ``workflow_path``; the queued job, once committed.

        ``max_retries``: attempts after a failure before the job is dead;
        ``max_robot_losses``: attempts it may lose with their robot (not failures: see
        :func:`~casare_nb.core.dispatch.lost_once_too_often`) before it is dead.
        ``trigger`` records what submitted it (a schedule, webhook...); ``job_id`` is the id
        to give it (a trigger claims its event under the id first), a new one by default.
        ``start_at`` (aware; a schedule's due time, submitted ahead of it): the job is
        dispatched at once and its robot runs the first cell at that instant; dispatched once
        it has passed (no free robot before), the job runs at once. Kept in memory only.
        ``timeouts``: the job's execution limits (per cell, whole run), sent with every
        attempt. ``submitted_by``: the name of the token that submitted it.

        Raises :class:`~casare_nb.core.params.ParameterError` (bad parameters) or
        :class:`~casare_nb.core.errors.WorkflowError` (no such or broken notebook) before
        anything is queued; :class:`~casare_nb.core.errors.QueueError` if the job could not
        be stored."""
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {max_retries}")
        if max_robot_losses < 0:
            raise ValueError(f"max_robot_losses must be >= 0, not {max_robot_losses}")
        if start_at is not None and start_at.utcoffset() is None:
            raise ValueError("start_at must be timezone-aware")
        self._check_taking_submissions()
        book = self.book
        path = Path(workflow_path).absolute()
        values, secret_names = await asyncio.to_thread(
            self._validate, path, parameters or {}, raw_parameters, size=True
        )
        now = book.clock()
        if job_id is None:
            job_id = new_run_id()
            while job_id in book.live or job_id in self._inserting:
                job_id = new_run_id()
        elif job_id in book.live or job_id in self._inserting:
            raise JobExists(f"job {job_id} already exists")
        job = Job(
            job_id=job_id,
            workflow_path=str(path),
            parameters=redact(values, secret_names),
            priority=Priority(priority),
            environment=environment,
            tags=list(tags),
            max_retries=max_retries,
            max_robot_losses=max_robot_losses,
            timeouts=_limits(timeouts),
            created_at=now,
            eligible_at=now,
            source=source,
            trigger=trigger,
            submitted_by=submitted_by,
        )
        self._keep_secrets(job_id, values, secret_names)
        if start_at is not None:
            book.start_at[job_id] = start_at
        try:
            mark = self.store.stage(job, new=True)
        except BaseException:
            book.secrets.pop(job_id, None)
            book.start_at.pop(job_id, None)
            raise
        self._inserting.add(job_id)
        adopted: asyncio.Future[QueueError | None] = asyncio.get_running_loop().create_future()

        def committed() -> None:
            # the job joins the queue once its insert is committed, awaited or not
            self._inserting.discard(job_id)
            error: QueueError | None = None
            if self.store.insert_refused(job_id):
                book.secrets.pop(job_id, None)
                book.start_at.pop(job_id, None)
                error = JobExists(f"job {job_id} already exists")
            else:
                book.live.add(job)
                logger.info("queued job %s (%s, %s)", job_id, path.name, job.priority.value)
                book.link.publish(EventKind.JOB_QUEUED, JobEvent(job=job))
                book.link.notify()
                book.wake()
            if not adopted.done():
                adopted.set_result(error)

        self.durability.after_commit(mark, committed)
        self.store.hurry()
        try:
            async with asyncio.timeout(DURABLE_TIMEOUT_S):
                error = await adopted
        except TimeoutError:
            raise QueueError(
                f"job {job_id} was not stored within {DURABLE_TIMEOUT_S:g} s"
            ) from None
        if error is not None:
            raise error
        return job.model_copy(deep=True)

    async def rerun(
        self,
        job_id: str,
        *,
        from_failed: bool = True,
        parameters: Mapping[str, Any] | None = None,
        raw_parameters: Mapping[str, str] | None = None,
        cell_sources: Mapping[str, str] | None = None,
    ) -> Job:
        """Queue a finished job again as its next attempt; the queued job, once committed.

        ``from_failed``: resume from the first cell that did not run ok with its current
        source (the failed cell, or an earlier one the analyst edited), the namespace
        restored from the last checkpoint before it, on any robot; False: from the start.
        ``parameters`` / ``raw_parameters`` change values (the others are kept; secret ones
        must be given again). ``cell_sources`` (by cell id) are written into the workflow
        first: the analyst's fix, which the resume then starts from. Raises QueueError
        (unknown, queued or running job), ParameterError or WorkflowError; nothing changes
        then (but for the fixed cells, kept when a parameter is refused)."""
        self._check_taking_submissions()
        book = self.book
        job = self._finished_job(job_id)
        path = Path(job.workflow_path)
        check_inside(path, self.workflows_dir)
        if cell_sources:
            changed = await asyncio.to_thread(write_cell_sources, path, dict(cell_sources))
            logger.info("job %s: cells %s of %s rewritten for its re-run", job_id, changed, path)
        given = {**(parameters or {}), **(raw_parameters or {})}
        earlier = {k: v for k, v in job.parameters.items() if k not in (raw_parameters or {})}
        for name, value in sorted(earlier.items()):
            if value == REDACTED and name not in given:
                raise ParameterError(
                    f"job {job_id} used secret parameter {name!r}; give it again to re-run"
                )
        earlier = {k: v for k, v in earlier.items() if v != REDACTED}
        values, secret_names = await asyncio.to_thread(
            self._validate, path, {**earlier, **(parameters or {})}, raw_parameters
        )
        if self.sharing is not None:
            await self.sharing.settled(job_id)
        was = self._finished_job(job_id)  # as it is now: it may have been re-run meanwhile
        if self.sharing is not None:  # the database decides, before anything is staged
            await asyncio.to_thread(
                self.sharing.reopen,
                LiveJobs.reopening(
                    was,
                    now=book.clock(),
                    resume_from_failed=from_failed,
                    parameters=redact(values, secret_names),
                ),
                was,
            )
        job = book.live.reopen(
            was,
            now=book.clock(),
            resume_from_failed=from_failed,
            parameters=redact(values, secret_names),
        )
        mark = self.store.mark()
        self._keep_secrets(job.job_id, values, secret_names)
        how = "from the failed cell" if from_failed else "from the start"
        logger.info("re-running job %s %s", job_id, how)
        book.link.publish(EventKind.JOB_QUEUED, JobEvent(job=job, reason="rerun"))
        book.link.notify()
        book.wake()
        try:
            async with asyncio.timeout(DURABLE_TIMEOUT_S):
                await self.durability.committed(mark)
        except TimeoutError:
            raise QueueError(
                f"the re-run of job {job_id} was not stored within {DURABLE_TIMEOUT_S:g} s"
            ) from None
        return job.model_copy(deep=True)

    def debug_bundle(self, job_id: str) -> DebugBundle:
        """What a debug kernel needs to hold ``job_id``'s namespace before its failed cell
        (blocking: reads the workflow and the checkpoint store). QueueError when the job is
        unknown, unfinished or did not fail, or left no notebook; ParameterError /
        WorkflowError when its workflow no longer takes its parameters."""
        job = self._finished_job(job_id)
        if job.status is RunStatus.COMPLETED:
            raise QueueError(f"job {job_id} completed: there is no failed cell to debug")
        attempt = self.relay.checkpoints.latest_output(job_id, job.attempt)
        if attempt is None:
            raise QueueError(f"job {job_id} left no notebook: it failed before its first cell")
        check_inside(job.workflow_path, self.workflows_dir)
        nb, _ = load_workflow(job.workflow_path)
        schema = read_schema(nb)
        values = {k: v for k, v in job.parameters.items() if v != REDACTED}
        secret_names = sorted(k for k, v in job.parameters.items() if v == REDACTED)
        checked, _ = check_parameters(schema, values, strict=False)
        notebook, _ = parameterised(nb, checked, schema)
        notebook = copy.deepcopy(notebook)
        spec = self.relay.debug_spec(job_id, attempt, notebook)
        start = spec.plan.start
        return DebugBundle(
            job_id=job_id,
            attempt=attempt,
            workflow_path=job.workflow_path,
            kernel_name=kernel_name_of(notebook),
            notebook=notebook,
            plan=spec.plan,
            manifests=spec.manifests,
            blobs=spec.blobs,
            failed_cell_index=start,
            failed_cell_id=notebook.cells[start].id if start < len(notebook.cells) else None,
            secret_names=secret_names,
        )

    def _validate(
        self,
        path: Path,
        parameters: Mapping[str, Any],
        raw: Mapping[str, str] | None,
        *,
        size: bool = False,
    ) -> tuple[dict[str, Any], set[str]]:
        """Validated values and the secret names (blocking: reads the notebook, which must
        lie inside the workflows directory). ``size``: JobTooLarge too when the notebook
        the job would send (the workflow parameterised) does not fit one frame."""
        check_inside(path, self.workflows_dir)
        nb, _ = load_workflow(path)
        schema = read_schema(nb)
        values, _ = check_parameters(schema, parameters, raw, strict=True)
        if size:
            notebook, secrets = parameterised(nb, values, schema)
            probe = JobAssign(
                job_id="size-probe",
                attempt=1,
                workflow_path=str(path),
                notebook=notebook,
                secret_parameters={k: _plain(v) for k, v in values.items() if k in secrets.names},
            )
            check_frame(probe, self.max_frame_bytes)
        return values, schema.secret_names()

    def _keep_secrets(self, job_id: str, values: Mapping[str, Any], names: set[str]) -> None:
        """Secret values stay in this process's memory only, plain."""
        secrets = {k: _plain(v) for k, v in values.items() if k in names}
        if secrets:
            self.book.secrets[job_id] = redact(secrets, ())

    def _finished_job(self, job_id: str) -> Job:
        """The finished job ``job_id``; QueueError for an unknown, queued or running one."""
        current = self.book.live.get(job_id)
        if current is None:
            current = self.store.get_job(job_id)
            if current is None:
                raise QueueError(f"unknown job {job_id}")
        if not current.status.finished:
            raise QueueError(
                f"job {job_id} is still {current.status.value}: only a finished job re-runs"
            )
        return current

    def _check_taking_submissions(self) -> None:
        if self.book.draining:
            raise OrchestratorDraining(
                "the orchestrator is draining: it takes no new submissions until restarted"
            )
        if self.submissions_paused:
            raise SubmissionsPaused("submissions are paused: none is taken until resumed")
        fault = self.durability.fault()
        if fault is not None:  # acknowledged now, it could not be kept
            raise SubmissionsClosed(f"the orchestrator cannot store jobs now: {fault}")

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one by asking its robot (the job
        becomes cancelled when the robot answers); returns once the cancel is committed
        (blocking, briefly). A finished or unknown job raises QueueError."""
        book = self.book
        held = book.live.get(job_id)
        if self.sharing is not None and (held is None or held.status is RunStatus.QUEUED):
            self.sharing.settled_now(job_id, DURABLE_TIMEOUT_S)
            shared = self.sharing.cancel(job_id)  # the database decides, wherever it runs
            if shared is not None:
                return shared.model_copy(deep=True)
            stored = self.store.get_job(job_id)
            if stored is None:
                raise QueueError(f"unknown job {job_id}")
            raise QueueError(f"job {job_id} already {stored.status.value}")
        job = book.live.cancel(job_id, now=book.clock())
        if job is None:
            stored = self.store.get_job(job_id)
            if stored is None:
                raise QueueError(f"unknown job {job_id}")
            raise QueueError(f"job {job_id} already {stored.status.value}")
        if job.status is RunStatus.CANCELLED:
            book.finished(job)
        elif job.robot_id is not None:
            # a robot that is gone gets its jobs requeued, which cancels this one instead
            book.link.send_to_robot(
                job.robot_id,
                JobCancel(job_id=job_id, attempt=job.attempt, reason="cancelled by a user"),
            )
        if not self.store.wait_mark(self.store.mark(), DURABLE_TIMEOUT_S):
            raise QueueError(
                f"the cancel of job {job_id} was not stored within {DURABLE_TIMEOUT_S:g} s"
            )
        return job.model_copy(deep=True)

    def running_jobs(self) -> list[Job]:
        """The jobs running now (assigned to a robot)."""
        return [job.model_copy() for job in self.book.live.running()]

    def unfinished_jobs(self) -> list[Job]:
        """The jobs queued or running now."""
        live = self.book.live
        return [job.model_copy() for job in [*live.queued(), *live.running()]]

    def jobs(self, status: RunStatus | None = None, *, limit: int = 100) -> list[Job]:
        """Up to ``limit`` jobs, newest first, optionally only those in ``status`` (states
        not written yet included)."""
        return self.store.list_jobs(status=None if status is None else [status], limit=limit)

    def job(self, job_id: str) -> Job | None:
        """The job ``job_id``, or None."""
        job = self.book.live.get(job_id)
        if job is not None:
            return job.model_copy(deep=True)
        return self.store.get_job(job_id)


def _plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _limits(timeouts: JobTimeouts | Mapping[str, Any] | None) -> JobTimeouts:
    """A job's timeouts as given (a schedule's template passes them as a dict)."""
    if isinstance(timeouts, JobTimeouts):
        return timeouts
    return JobTimeouts.model_validate(dict(timeouts or {}))
