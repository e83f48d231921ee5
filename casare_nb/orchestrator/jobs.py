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
   over the first queued jobs in dispatch order and sends ``job_assign`` with the workflow as
   it is on disk now (with ``start_at`` for a job submitted ahead of its due time, while
   that is still ahead: the robot prepares it and waits). A robot's running count is the
   number of jobs assigned here and not ended (authoritative: a heartbeat sent while the
   robot still ran its previous job does not keep it busy; after an orchestrator restart
   :meth:`JobManager.robot_back` counts the jobs a robot continues).
3. ``job_accept`` marks the attempt started; ``job_reject`` requeues the job (and skips that
   robot once); an attempt not accepted within ``assign_timeout_s`` is requeued.
4. ``job_progress`` records each cell once in the history; messages about an attempt that
   is not the job's current one on that robot are refused with ``stale_attempt``.
5. ``job_complete`` / ``job_failed`` / ``job_cancelled`` finish the attempt: output notebook
   under ``state_dir/runs/<job_id>/<attempt>/output.ipynb``, a run record in the history,
   and for a failure :func:`~casare_nb.core.dispatch.after_attempt` decides retry or not. A
   ``job_failed`` saying ``cancelled`` that no user asked for (the robot stopped the job,
   e.g. shutting down) requeues the job at once. The robot's slot is free at once; the
   output notebook is written in a thread (``_OUTPUT_THREADS`` of them) and the job's new
   state applied once it is on disk, so a finished job always has its output.

Checkpoints travel (:mod:`.checkpoints`): each ``job_progress`` carries the executed cell,
so the orchestrator keeps every attempt's notebook so far; each ``checkpoint_offer`` is
answered with ``checkpoint_want`` (the blobs it lacks), the blobs come as ``blob_put``, and
``checkpoint_stored`` confirms once the manifest and all its blobs are stored.

A robot that goes offline keeps its running jobs for ``reconnect_grace_s``: if it registers
again within that time naming them in ``holding``, they continue (``continue_jobs``).
Otherwise they are requeued with ``resume_from_failed=True`` and the next attempt, on any
robot, **resumes from the last stored checkpoint**: :meth:`JobManager._resume_spec` plans the
resume on the stored notebook-so-far and manifests and sends them (``job_assign.resume``);
the robot fetches the blobs it lacks with ``blob_get``. Attempts lost this way, rejected or
not accepted in time do not count as failures (``max_retries`` counts ``job.failures``).

:meth:`JobManager.rerun` puts a finished job back in the queue: from the failed cell (the
last checkpoint before it, with the workflow's current source) or from the start.
``draining`` stops submissions and dispatch; running jobs go on.

State lives in memory, changes are written behind. :class:`~.live.LiveJobs` holds every
queued and running job and makes each state change (compare-and-set) on the event loop's
thread, in one order; each change is staged at once to the queue store's writer thread
(:meth:`~casare_nb.store.queue.QueueStore.stage`), which commits them in batches (group
commit, one per ``commit_interval_s`` at most unless someone waits). Run and cell records
go to the history's :class:`~casare_nb.store.history.HistoryWriter`, handed over every
``_HISTORY_WINDOW_S``. The database converges to memory; at start memory is loaded from it
(queued and running jobs). What must be durable waits for the writers:

- ``submit`` and ``rerun`` return once the job is committed (concurrent ones share a
  commit); a submitted job is dispatched only once its insert is committed;
- ``cancel`` returns once the cancel is committed;
- :meth:`JobManager.durable_mark` covers both writers (job states, history records) and the
  output notebooks being written: the server acknowledges a robot's heartbeat only once
  every record its earlier messages produced is committed, so what a robot forgets was
  written.

``job_assign`` goes out at once, before its assignment is committed (waiting for the commit
would cost a commit per dispatch on the robots' path). An orchestrator killed in between
loses the assignment, not the attempt: the state directory keeps :data:`OPEN_MARKER` while
a job manager runs, and when the next one finds it, dispatch waits ``reconnect_grace_s`` for
the robots to register again; a robot naming in ``holding`` an attempt of a job queued
at an earlier attempt keeps it (:meth:`JobManager.robot_back`), so the attempt is not handed
out twice.

Reads: :meth:`JobManager.job` answers unfinished jobs from memory; :meth:`JobManager.jobs`
and the store's reads lay the staged states not yet committed over the rows they read.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import functools
import hashlib
import heapq
import itertools
import logging
import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from nbformat import NotebookNode
from pydantic import SecretStr

from casare_nb.core.dispatch import RetryPolicy, after_attempt, plan_dispatch
from casare_nb.core.errors import CasareError, JobExists, QueueError, WorkflowError, one_line
from casare_nb.core.ids import new_run_id
from casare_nb.core.models import (
    CellRecord,
    Job,
    Priority,
    Robot,
    RunRecord,
    RunStatus,
    TriggerRef,
)
from casare_nb.core.params import REDACTED, ParameterError, ParamSchema, read_schema, redact
from casare_nb.notebook.resume import prepare_resume
from casare_nb.notebook.run import check_parameters, parameterised
from casare_nb.notebook.state import CheckpointError, blob_refs, write_json_atomic
from casare_nb.notebook.workflow import load_workflow, parse_workflow
from casare_nb.orchestrator.live import LiveJobs
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
from casare_nb.store.checkpoints import CheckpointStore
from casare_nb.store.history import HistoryStore, HistoryWriter
from casare_nb.store.queue import QueueStore

__all__ = [
    "JOB_MESSAGES",
    "DurableMark",
    "JobManager",
    "Link",
    "OrchestratorDraining",
    "output_path",
]

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


_SCAN_MIN = 16  # queued jobs a dispatch round looks at first (4 per free slot, at least this)
_SCAN_MAX = 1000  # and at most, when the first ones fit no robot (tags, environment)
_DURABLE_TIMEOUT_S = 30.0  # how long submit, rerun and cancel wait for their commit
_HISTORY_WINDOW_S = 0.05  # history records are handed to the history writer this often
_OUTPUT_THREADS = 4  # output notebooks written at once (file creation waits on the disk)
OPEN_MARKER = "jobs.open"
"""A file in the state directory while a job manager runs; found at start, it says the last
one did not stop cleanly (so dispatch waits for the robots to come back first)."""


class DurableMark(NamedTuple):
    """A point in what the orchestrator makes durable (see :meth:`JobManager.durable_mark`):
    the history writer's mark, the queue writer's mark, and the output notebooks being
    written then (0: none; their jobs' states are staged once they are written)."""

    history: int
    queue: int
    outputs: int = 0


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


@dataclass(frozen=True)
class _Workflow:
    """A workflow notebook as read from disk (parsed), its parameter schema and the SHA-256
    of its bytes."""

    nb: NotebookNode
    schema: ParamSchema
    sha256: str

    @classmethod
    def read(cls, path: str) -> _Workflow:
        raw = Path(path).read_bytes()
        nb = parse_workflow(raw, path)
        return cls(nb, read_schema(nb), hashlib.sha256(raw).hexdigest())

    def parameterised(self, values: Mapping[str, Any]) -> NotebookNode:
        """The notebook to run with ``values`` (the job's stored ones, secrets included):
        coerced to the types the workflow declares now and injected; :attr:`nb` itself when
        there is nothing to inject. ParameterError if they do not fit it any more."""
        checked, _ = check_parameters(self.schema, values, strict=True)
        nb, _ = parameterised(self.nb, checked, self.schema)
        return nb


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
        # called on the loop with every job that reaches a final status (chaining)
        self.finished_listeners: list[Callable[[Job], None]] = []
        # called on the loop with (job, cell index, executed cell) of each job_progress (outputs)
        self.cell_listeners: list[Callable[[Job, int, dict[str, Any]], None]] = []
        self._lost: dict[str, asyncio.TimerHandle] = {}  # robot id -> its jobs' requeue
        self._clock = clock
        self._writer = HistoryWriter(history)
        # history records wait here a moment, so the history writer gets them in batches
        self._history_lock = threading.Lock()
        self._runs_buffer: dict[tuple[str, int], RunRecord] = {}
        self._cells_buffer: list[CellRecord] = []
        self._history_timer: asyncio.TimerHandle | None = None
        self._live = LiveJobs(self._stage)
        self._inserting: set[str] = set()  # submitted job ids waiting for their insert
        self._workflows: dict[str, tuple[tuple[int, ...], _Workflow]] = {}
        self._secrets: dict[str, dict[str, Any]] = {}
        self._start_at: dict[str, datetime] = {}  # job id -> its first cell's time (in memory)
        self._assigned: dict[str, set[str]] = {}  # robot id -> job ids sent and not ended
        self._attempts: dict[tuple[str, int], _Attempt] = {}
        self._skip: dict[str, str] = {}  # job id -> robot that just rejected it
        self._dedup = Deduplicator()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hold_until: datetime | None = None  # no dispatch before (after a crash)
        # (queue mark, order, callback): run on the loop once the queue writer reached it
        self._waiters: list[tuple[int, int, Callable[[], None]]] = []
        self._waiter_order = itertools.count()
        # output notebooks are written in threads of their own; numbered as they come
        self._files = concurrent.futures.ThreadPoolExecutor(
            _OUTPUT_THREADS, thread_name_prefix="casare-outputs"
        )
        self._outputs_started = 0
        self._outputs_applied = 0  # outputs 1..this are written and their jobs' states applied
        self._outputs_ahead: set[int] = set()  # applied, beyond _outputs_applied
        self._completing: set[tuple[str, int]] = set()  # attempts whose output is written
        self._output_waiters: list[tuple[int, int, asyncio.Future[None]]] = []

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Load the queued and running jobs from the database and start the dispatcher task
        (in the running event loop). Jobs the database says are running (an orchestrator
        restart) wait twice ``reconnect_grace_s`` for their robots to come back, then are
        requeued to resume elsewhere."""
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self.queue.subscribe(added=self._on_added, written=self._on_written)
            for job, cancel_requested in self.queue.unfinished():
                self._live.add(job, cancel_requested=cancel_requested)
            self._hold_after_crash()
            self._task = asyncio.create_task(self._dispatch_forever(), name="orchestrator-dispatch")
            robots = {job.robot_id for job in self._live.running()}
            for robot_id in sorted(r for r in robots if r is not None):
                self._lose_later(robot_id, 2 * self.reconnect_grace_s)

    def _hold_after_crash(self) -> None:
        """Mark the state directory as in use; if the last job manager did not stop
        cleanly, hold dispatch ``reconnect_grace_s`` so that robots come back first and
        claim the jobs assigned to them in its last moments (never written: see
        :meth:`robot_back`), instead of these jobs going to others under the same attempt."""
        marker = self.state_dir / OPEN_MARKER
        crashed = marker.exists()
        try:
            marker.write_text(f"{os.getpid()}\n", encoding="utf-8")
        except OSError as exc:
            logger.warning("cannot write %s: %s", marker, exc)
        if crashed and self._live.queued_count and self.reconnect_grace_s > 0:
            now = self._clock()
            self._hold_until = now + timedelta(seconds=self.reconnect_grace_s)
            logger.warning(
                "the orchestrator did not stop cleanly last time: dispatch waits %g s for "
                "the robots to come back",
                self.reconnect_grace_s,
            )
            self._wake_at(self._hold_until, now)

    async def stop(self) -> None:
        """Stop the dispatcher and write out the queue changes and the history; idempotent."""
        if self._history_timer is not None:
            self._history_timer.cancel()
            self._history_timer = None
        for timer in [*self._timers, *self._lost.values()]:
            timer.cancel()
        self._timers.clear()
        self._lost.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_DURABLE_TIMEOUT_S):
                await self._outputs_done(self._outputs_started)
        await asyncio.to_thread(self._files.shutdown)
        try:
            await asyncio.to_thread(self.queue.flush)
        except QueueError as exc:
            logger.error("%s", exc)
        else:
            if self._loop is not None:  # it was started: everything is written
                (self.state_dir / OPEN_MARKER).unlink(missing_ok=True)
        self._run_waiters()  # e.g. submits whose insert the flush committed
        self.queue.unsubscribe(added=self._on_added, written=self._on_written)
        self._push_history()
        await asyncio.to_thread(self._writer.close)

    def wake(self) -> None:
        """Ask the dispatcher to look at the queue now."""
        self._wake.set()

    def flush_history(self, timeout: float | None = 30.0) -> None:
        """Block until the history records put and the job states staged so far are
        written (blocking)."""
        self._push_history()
        self._writer.flush(timeout)
        self.queue.flush(timeout)

    # -- durability ----------------------------------------------------------------------

    def durable_mark(self) -> DurableMark:
        """A mark for every state change and history record made so far, the jobs whose
        output notebooks are being written included: see :meth:`is_durable` and
        :meth:`durable`. One mark for both writers (job states, history records)."""
        pending = self._outputs_started > self._outputs_applied
        self._push_history()
        return DurableMark(
            history=self._writer.mark(),
            queue=self.queue.mark(),
            outputs=self._outputs_started if pending else 0,
        )

    def is_durable(self, mark: DurableMark) -> bool:
        """Whether everything made before ``mark`` is committed (False while outputs were
        being written then: :meth:`durable` waits for them)."""
        return (
            mark.outputs == 0
            and self._writer.reached(mark.history)
            and self.queue.reached(mark.queue)
        )

    async def durable(self, mark: DurableMark, timeout: float) -> bool:
        """Wait (in the event loop) until everything made before ``mark`` is committed;
        False after ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                if mark.outputs:
                    await self._outputs_done(mark.outputs)
                    # their jobs' states were staged once written: mark again
                    self._push_history()
                    mark = DurableMark(history=self._writer.mark(), queue=self.queue.mark())
                await self._queue_committed(mark.queue)
                if not self._writer.reached(mark.history):
                    await asyncio.to_thread(self._writer.wait_mark, mark.history, timeout)
        except TimeoutError:
            return False
        return self.is_durable(mark)

    def _put_history(self, run: RunRecord | None = None, cells: Sequence[CellRecord] = ()) -> None:
        """Keep history records until the next hand-over to the history writer (at most
        ``_HISTORY_WINDOW_S`` later, or at the next durable mark)."""
        with self._history_lock:
            if run is not None:
                self._runs_buffer[(run.run_id, run.attempt)] = run
            self._cells_buffer.extend(cells)
        if self._loop is None:
            self._push_history()
        elif self._history_timer is None:
            self._history_timer = self._loop.call_later(_HISTORY_WINDOW_S, self._history_due)

    def _history_due(self) -> None:
        self._history_timer = None
        self._push_history()

    def _push_history(self) -> None:
        """Hand the kept history records to the history writer (any thread; in order)."""
        with self._history_lock:
            runs, self._runs_buffer = self._runs_buffer, {}
            cells, self._cells_buffer = self._cells_buffer, []
            for run in runs.values():
                self._writer.put_run(run)
            self._writer.put_cells(cells)

    def _stage(self, job: Job, cancel_requested: bool) -> int:
        return self.queue.stage(job, cancel_requested=cancel_requested)

    def _after_commit(self, mark: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop once the queue writer committed up to ``mark``."""
        heapq.heappush(self._waiters, (mark, next(self._waiter_order), callback))
        if self.queue.reached(mark):  # after the push: a commit now still finds the waiter
            self._run_waiters()

    async def _queue_committed(self, mark: int) -> None:
        if self.queue.reached(mark):
            return
        self.queue.hurry()
        done = asyncio.get_running_loop().create_future()
        self._after_commit(mark, lambda: None if done.done() else done.set_result(None))
        await done

    def _on_written(self, mark: int) -> None:
        """The queue writer committed up to ``mark`` (called in its thread)."""
        loop = self._loop
        if loop is not None and self._waiters:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._run_waiters)

    def _run_waiters(self) -> None:
        while self._waiters and self.queue.reached(self._waiters[0][0]):
            _, _, callback = heapq.heappop(self._waiters)
            try:
                callback()
            except Exception:
                logger.exception("a callback after a queue commit failed")

    async def _outputs_done(self, count: int) -> None:
        """Wait until the first ``count`` output notebooks are written and applied."""
        if self._outputs_applied >= count:
            return
        done = asyncio.get_running_loop().create_future()
        heapq.heappush(self._output_waiters, (count, next(self._waiter_order), done))
        await done

    def _on_added(self, jobs: list[Job]) -> None:
        """Jobs were added to the database directly (any thread): keep them too."""
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
        added = sum(1 for job in jobs if self._live.add(job))
        if added:
            logger.info("%d jobs added to the queue directly", added)
            self.link.notify()
            self.wake()

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
        trigger: TriggerRef | None = None,
        job_id: str | None = None,
        start_at: datetime | None = None,
    ) -> Job:
        """Validate and queue a run of ``workflow_path``; the queued job, once committed.

        ``trigger`` records what submitted it (a schedule, webhook...); ``job_id`` is the id
        to give it (a trigger claims its event under the id first), a new one by default.
        ``start_at`` (aware; a schedule's due time, submitted ahead of it): the job is
        dispatched at once and its robot runs the first cell at that instant; dispatched once
        it has passed (no free robot before), the job runs at once. Kept in memory only.

        Raises :class:`~casare_nb.core.params.ParameterError` (bad parameters) or
        :class:`~casare_nb.core.errors.WorkflowError` (no such or broken notebook) before
        anything is queued; :class:`~casare_nb.store.queue.QueueError` if the job could not
        be stored."""
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, not {max_retries}")
        if start_at is not None and start_at.utcoffset() is None:
            raise ValueError("start_at must be timezone-aware")
        self._check_not_draining()
        path = Path(workflow_path).absolute()
        values, secret_names = await asyncio.to_thread(
            _validate, path, parameters or {}, raw_parameters
        )
        now = self._clock()
        if job_id is None:
            job_id = new_run_id()
            while job_id in self._live or job_id in self._inserting:
                job_id = new_run_id()
        elif job_id in self._live or job_id in self._inserting:
            raise JobExists(f"job {job_id} already exists")
        job = Job(
            job_id=job_id,
            workflow_path=str(path),
            parameters=redact(values, secret_names),
            priority=Priority(priority),
            environment=environment,
            tags=list(tags),
            max_retries=max_retries,
            created_at=now,
            eligible_at=now,
            source=source,
            trigger=trigger,
        )
        secrets = {k: _plain(v) for k, v in values.items() if k in secret_names}
        if secrets:
            self._secrets[job_id] = redact(secrets, ())
        if start_at is not None:
            self._start_at[job_id] = start_at
        try:
            mark = self.queue.stage(job, new=True)
        except BaseException:
            self._secrets.pop(job_id, None)
            self._start_at.pop(job_id, None)
            raise
        self._inserting.add(job_id)
        adopted: asyncio.Future[QueueError | None] = asyncio.get_running_loop().create_future()

        def committed() -> None:
            # the job joins the queue once its insert is committed, awaited or not
            self._inserting.discard(job_id)
            error: QueueError | None = None
            if self.queue.insert_refused(job_id):
                self._secrets.pop(job_id, None)
                self._start_at.pop(job_id, None)
                error = JobExists(f"job {job_id} already exists")
            else:
                self._live.add(job)
                logger.info("queued job %s (%s, %s)", job_id, path.name, job.priority.value)
                self.link.publish(EventKind.JOB_QUEUED, {"job": _dump(job)})
                self.link.notify()
                self.wake()
            if not adopted.done():
                adopted.set_result(error)

        self._after_commit(mark, committed)
        self.queue.hurry()
        try:
            async with asyncio.timeout(_DURABLE_TIMEOUT_S):
                error = await adopted
        except TimeoutError:
            raise QueueError(
                f"job {job_id} was not stored within {_DURABLE_TIMEOUT_S:g} s"
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
    ) -> Job:
        """Queue a finished job again as its next attempt; the queued job, once committed.

        ``from_failed``: resume from the first cell that did not run ok with its current
        source (the failed cell, or an earlier one the analyst edited), the namespace
        restored from the last checkpoint before it, on any robot; False: from the start.
        ``parameters`` / ``raw_parameters`` change values (the others are kept; secret ones
        must be given again). Raises QueueError (unknown, queued or running job),
        ParameterError or WorkflowError; nothing changes then."""
        self._check_not_draining()
        job = self._finished_job(job_id)
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
        job = self._live.reopen(
            self._finished_job(job_id),  # as it is now: it may have been re-run meanwhile
            now=self._clock(),
            resume_from_failed=from_failed,
            parameters=redact(values, secret_names),
        )
        mark = self.queue.mark()
        secrets = {k: _plain(v) for k, v in values.items() if k in secret_names}
        if secrets:
            self._secrets[job.job_id] = redact(secrets, ())
        how = "from the failed cell" if from_failed else "from the start"
        logger.info("re-running job %s %s", job_id, how)
        self.link.publish(EventKind.JOB_QUEUED, {"job": _dump(job), "reason": "rerun"})
        self.link.notify()
        self.wake()
        try:
            async with asyncio.timeout(_DURABLE_TIMEOUT_S):
                await self._queue_committed(mark)
        except TimeoutError:
            raise QueueError(
                f"the re-run of job {job_id} was not stored within {_DURABLE_TIMEOUT_S:g} s"
            ) from None
        return job.model_copy(deep=True)

    def _finished_job(self, job_id: str) -> Job:
        """The finished job ``job_id``; QueueError for an unknown, queued or running one."""
        current = self._live.get(job_id)
        if current is None:
            current = self.queue.get_job(job_id)
            if current is None:
                raise QueueError(f"unknown job {job_id}")
        if not current.status.finished:
            raise QueueError(
                f"job {job_id} is still {current.status.value}: only a finished job re-runs"
            )
        return current

    def running_jobs(self) -> list[Job]:
        """The jobs running now (assigned to a robot)."""
        return [job.model_copy() for job in self._live.running()]

    def _check_not_draining(self) -> None:
        if self.draining:
            raise OrchestratorDraining(
                "the orchestrator is draining: it takes no new submissions until restarted"
            )

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one by asking its robot (the job
        becomes cancelled when the robot answers); returns once the cancel is committed
        (blocking, briefly). A finished or unknown job raises
        :class:`~casare_nb.store.queue.QueueError`."""
        job = self._live.cancel(job_id, now=self._clock())
        if job is None:
            stored = self.queue.get_job(job_id)
            if stored is None:
                raise QueueError(f"unknown job {job_id}")
            raise QueueError(f"job {job_id} already {stored.status.value}")
        if job.status is RunStatus.CANCELLED:
            self._finished(job)
        elif job.robot_id is not None:
            # a robot that is gone gets its jobs requeued, which cancels this one instead
            self.link.send_to_robot(
                job.robot_id,
                JobCancel(job_id=job_id, attempt=job.attempt, reason="cancelled by a user"),
            )
        if not self.queue.wait_mark(self.queue.mark(), _DURABLE_TIMEOUT_S):
            raise QueueError(
                f"the cancel of job {job_id} was not stored within {_DURABLE_TIMEOUT_S:g} s"
            )
        return job.model_copy(deep=True)

    def jobs(self, status: RunStatus | None = None, *, limit: int = 100) -> list[Job]:
        """Up to ``limit`` jobs, newest first, optionally only those in ``status`` (staged
        states included: see the module docstring)."""
        return self.queue.list_jobs(status=None if status is None else [status], limit=limit)

    def job(self, job_id: str) -> Job | None:
        """The job ``job_id``, or None."""
        job = self._live.get(job_id)
        if job is not None:
            return job.model_copy(deep=True)
        return self.queue.get_job(job_id)

    # -- robots coming and going ---------------------------------------------------------

    def robot_gone(self, robot_id: str, *, grace: bool = True) -> None:
        """A robot went offline: its running jobs are requeued (to resume from their last
        checkpoint) after ``reconnect_grace_s`` unless it comes back for them first; at once
        with ``grace=False`` (it missed its heartbeats: it had its time)."""
        self._lose_later(robot_id, self.reconnect_grace_s if grace else 0.0)

    def robot_back(self, robot_id: str, holds: Sequence[JobRef]) -> list[JobRef]:
        """A robot registered again naming the jobs it ``holds``: those still running on it
        continue (answered in ``register_ack.continue_jobs``, and counted as its running
        jobs); its other running jobs are requeued now (it lost them, e.g. it restarted)."""
        timer = self._lost.pop(robot_id, None)
        if timer is not None:
            timer.cancel()
        held = {(ref.job_id, ref.attempt) for ref in holds}
        keep: list[JobRef] = []
        lost = False
        now = self._clock()
        for ref in holds:
            # an assignment sent before a crash but never written: the robot has it
            claimed = self._live.claim(ref.job_id, robot_id, ref.attempt, now=now)
            if claimed is not None:
                logger.warning(
                    "robot %s holds job %s attempt %d, which the database did not record: "
                    "it continues there",
                    robot_id,
                    ref.job_id,
                    ref.attempt,
                )
        for job in self._live.running_on(robot_id):
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
        for job in self._live.running_on(robot_id):
            if job.job_id in keep or (job.job_id, job.attempt) in self._completing:
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
        job = self._live.get(msg.job_id)
        if job is None:  # finished or unknown: the database says which (a rare path)
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
        if (job.job_id, job.attempt) in self._completing and not isinstance(
            msg, JobProgress | CheckpointOffer
        ):
            logger.info("ignored %s: job %s already ended on its robot", msg.type, job.job_id)
            return None  # the attempt ended: its output is being written
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
        job = self._live.accept(job.job_id, job.attempt, now=now)
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
        self._put_history(cells=[msg.to_cell_record()])
        if msg.cell is not None:
            try:
                self.checkpoints.record_cell(
                    job.job_id, job.attempt, msg.cell, base=attempt.notebook if attempt else None
                )
            except (OSError, CheckpointError) as exc:
                logger.warning("cannot keep cell %s of job %s: %s", msg.cell_id, job.job_id, exc)
            for listener in self.cell_listeners:
                try:
                    listener(job, msg.cell_index, msg.cell)
                except Exception:
                    logger.exception("a cell listener failed on job %s", job.job_id)
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
            job = self._live.get(job_id)
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

    def _resume_spec(self, job: Job, nb: NotebookNode) -> ResumeSpec | None:
        """How attempt ``job.attempt`` resumes the newest earlier attempt the store holds a
        notebook-so-far of, planned once here (:func:`~casare_nb.notebook.resume.prepare_resume`
        on the store: ``nb``, the notebook to send, gets the carried outputs; the new attempt
        the manifests up to the restore point) and started as the new attempt's
        notebook-so-far. None (start over) when no earlier attempt left anything, or it
        cannot be planned."""
        prev = self.checkpoints.latest_output(job.job_id, job.attempt - 1)
        if prev is None:
            return None
        try:
            self.checkpoints.attempt(job.job_id, job.attempt)  # the job id names a folder
            plan = prepare_resume(
                nb,
                self.checkpoints.state,
                job.job_id,
                from_attempt=prev,
                attempt=job.attempt,
            )
            self.checkpoints.start_output(job.job_id, job.attempt, nb)
        except (CasareError, ValueError, OSError) as exc:
            logger.warning("job %s: cannot plan a resume, starting over: %s", job.job_id, exc)
            return None
        paths = self.checkpoints.attempt(job.job_id, job.attempt)
        manifests = self.checkpoints.manifests_for(paths, plan.inherit_ids)
        blobs = sorted({sha for m in manifests.values() for sha in blob_refs(m)})
        logger.info(
            "job %s attempt %d resumes attempt %d at cell %d (restoring after cell %s)",
            job.job_id,
            job.attempt,
            prev,
            plan.start,
            plan.restore_cell,
        )
        return ResumeSpec(from_attempt=prev, plan=plan, manifests=manifests, blobs=blobs)

    def _on_complete(self, job: Job, msg: JobComplete, now: datetime) -> None:
        self._after_output(job, msg.output_notebook, functools.partial(self._completed, job, now))

    def _completed(self, job: Job, now: datetime, path: Path | None) -> None:
        done = self._live.finish(job.job_id, job.attempt, RunStatus.COMPLETED, now=now)
        self._history_run(done, RunStatus.COMPLETED, now, output=path)
        self._release(job.job_id, job.attempt)
        self._finished(done)

    def _on_failed(self, job: Job, msg: JobFailed, now: datetime) -> None:
        self._after_output(job, msg.output_notebook, functools.partial(self._failed, job, msg, now))

    def _failed(self, job: Job, msg: JobFailed, now: datetime, path: Path | None) -> None:
        error = (msg.error_name or msg.status.value, msg.error_message or "")
        self._history_run(
            job, msg.status, now, output=path, error=error, failed_cell=msg.failed_cell
        )
        self._release(job.job_id, job.attempt)
        if msg.status is RunStatus.CANCELLED and not self._live.cancel_requested(job.job_id):
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
        done = self._live.finish(
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
        done = self._live.finish(
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
        (nothing while draining, nor while held after a crash); the number of jobs sent."""
        now = self._clock()
        self._expire_unaccepted(now)
        if self._hold_until is not None:
            if now < self._hold_until:
                return 0
            self._hold_until = None
        if self.draining or not self._live.queued_count:
            return 0
        robots: list[Robot] = []
        free = 0
        for robot in self.link.robots():
            if not robot.status.takes_jobs:
                continue
            # jobs assigned here and not ended: a heartbeat may be older than a job_complete
            busy = len(self._assigned.get(robot.robot_id, ()))
            if busy != robot.running_jobs:
                robot = robot.model_copy(update={"running_jobs": busy})
            robots.append(robot)
            free += max(0, robot.max_concurrent_jobs - busy)
        if free <= 0:
            return 0
        # the first queued jobs in dispatch order; more when those fit no free robot
        want = max(_SCAN_MIN, 4 * free)
        taken: list[Job] = []
        while True:
            more = self._live.take(now, want - len(taken))
            taken += more
            plan = plan_dispatch(taken, robots, now=now)
            if len(plan) >= free or len(taken) < want or want >= _SCAN_MAX:
                break
            want = min(_SCAN_MAX, 2 * want)
        by_id = {job.job_id: job for job in taken}
        sent = 0
        for assignment in plan:
            if self._skip.pop(assignment.job_id, None) == assignment.robot_id:
                continue  # it just rejected this job: try again next round
            if self._send_assign(by_id[assignment.job_id], assignment.robot_id, now):
                sent += 1
        self._live.put_back(taken)  # those still queued
        if sent:
            self.link.notify()
        return sent

    def _send_assign(self, queued: Job, robot_id: str, now: datetime) -> bool:
        try:
            workflow = self._workflow(queued.workflow_path)
        except (OSError, ValueError, WorkflowError) as exc:
            done = self._live.finish(
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
            done = self._live.finish(
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
        try:
            notebook = workflow.parameterised({**queued.parameters, **secrets})
        except ParameterError as exc:
            # the workflow changed since the job was queued: its parameters no longer fit
            done = self._live.finish(
                queued.job_id,
                queued.attempt,
                RunStatus.FAILED,
                now=now,
                error_name="ParameterError",
                error_message=one_line(exc),
            )
            self._finished(done)
            return False
        job = self._live.assign(queued.job_id, robot_id, now=now)
        resume = None
        if job.resume_from_failed:
            notebook = copy.deepcopy(notebook) if notebook is workflow.nb else notebook
            resume = self._resume_spec(job, notebook)
        start_at = self._start_at.get(job.job_id)
        if start_at is not None and start_at <= datetime.now(UTC):  # real time: robots wait in it
            del self._start_at[job.job_id]
            start_at = None
        msg = JobAssign(
            job_id=job.job_id,
            attempt=job.attempt,
            workflow_path=job.workflow_path,
            notebook=notebook,
            secret_parameters=secrets,
            priority=job.priority,
            resume=resume,
            start_at=start_at,
        )
        self._assigned.setdefault(robot_id, set()).add(job.job_id)
        self._attempts[(job.job_id, job.attempt)] = _Attempt(
            robot_id, workflow.sha256, now, notebook=notebook
        )
        if not self.link.send_to_robot(robot_id, msg):
            self._release(job.job_id, job.attempt)
            self._requeue(job, now=now, event="send_failed", reason=None)
            return False
        logger.info("sent job %s attempt %d to robot %s", job.job_id, job.attempt, robot_id)
        return True

    def _workflow(self, path: str) -> _Workflow:
        """The workflow notebook as it is on disk now (shared: do not mutate); read again
        whenever the file's stat changes."""
        stat = os.stat(path)
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        cached = self._workflows.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        workflow = _Workflow.read(path)
        if len(self._workflows) >= 256:
            self._workflows.clear()
        self._workflows[path] = (key, workflow)
        return workflow

    def _expire_unaccepted(self, now: datetime) -> None:
        before = now - timedelta(seconds=self.assign_timeout_s)
        late = [
            job
            for job in self._live.unaccepted()
            if job.assigned_at is not None
            and job.assigned_at < before
            and (job.job_id, job.attempt) not in self._completing
        ]
        for job in sorted(late, key=lambda j: (j.assigned_at or before, j.job_id)):
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
            requeued = self._live.requeue(
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
        self._start_at.pop(job.job_id, None)
        self._skip.pop(job.job_id, None)
        logger.info("job %s %s", job.job_id, job.status.value)
        for listener in list(self.finished_listeners):
            try:
                listener(job.model_copy(deep=True))
            except Exception:
                logger.exception("a finished-job listener failed on job %s", job.job_id)
        self.link.publish(EventKind.JOB_FINISHED, {"job": _dump(job)})
        self.link.notify()
        self.wake()

    def _after_output(
        self, job: Job, notebook: dict[str, Any] | None, apply: Callable[[Path | None], None]
    ) -> None:
        """The attempt ended on its robot: write its output notebook (in the file thread),
        then ``apply(path)`` on the loop (path None: no output, or it could not be written).
        The robot's slot is free at once; the job stays running until applied."""
        if notebook is None:
            apply(None)
            return
        key = (job.job_id, job.attempt)
        self._completing.add(key)
        for jobs in self._assigned.values():
            jobs.discard(job.job_id)
        self.wake()
        self._outputs_started += 1
        number = self._outputs_started
        path = output_path(self.state_dir, job.job_id, job.attempt)
        written = asyncio.get_running_loop().run_in_executor(
            self._files, _write_output, path, notebook
        )

        def applied(future: asyncio.Future[bool]) -> None:
            try:
                ok = not future.cancelled() and future.exception() is None and future.result()
                apply(path if ok else None)
            except Exception:
                logger.exception("cannot finish attempt %d of job %s", job.attempt, job.job_id)
            finally:
                self._completing.discard(key)
                self._outputs_ahead.add(number)
                while self._outputs_applied + 1 in self._outputs_ahead:
                    self._outputs_applied += 1
                    self._outputs_ahead.discard(self._outputs_applied)
                while self._output_waiters and self._output_waiters[0][0] <= self._outputs_applied:
                    _, _, waiter = heapq.heappop(self._output_waiters)
                    if not waiter.done():
                        waiter.set_result(None)
                self.link.notify()

        written.add_done_callback(applied)

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
        self._put_history(record)


def _validate(
    path: Path, parameters: Mapping[str, Any], raw: Mapping[str, str] | None
) -> tuple[dict[str, Any], set[str]]:
    """Validated values and the secret names (blocking: reads the notebook)."""
    nb, _ = load_workflow(path)
    schema = read_schema(nb)
    checked = schema.validate_values(parameters, strict=True, text_values=raw)
    return dict(checked.values), schema.secret_names()


def _write_output(path: Path, notebook: dict[str, Any]) -> bool:
    """Store an output notebook (blocking); False (logged) if it cannot be written."""
    try:
        folder = path.parent  # runs/<job>/<attempt>: in general, two mkdir calls
        try:
            os.mkdir(folder.parent)
        except FileExistsError:
            pass
        except FileNotFoundError:
            folder.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder)
        write_json_atomic(path, notebook)
    except OSError as exc:
        logger.error("cannot store the output notebook %s: %s", path, exc)
        return False
    return True


def _error(code: ErrorCode, message: str, msg: Envelope) -> Error:
    return Error(code=code, message=message, reply_to=msg.id)


def _dump(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="json")
