"""The orchestrator: the front door of the service, and what it is made of.

:class:`Orchestrator` wires the parts together and answers what its users ask (the HTTP API,
the demo, tests): submit, rerun, cancel and read jobs, list robots, drain, manage tokens,
wait for a change. The parts, each in a module of its own:

- the stores (:mod:`casare_nb.store.interfaces`; the embedded DuckDB ones by default);
- the :class:`~casare_nb.orchestrator.jobs.manager.JobManager` (queue, dispatch, attempts,
  checkpoints, write-behind);
- the :class:`~casare_nb.orchestrator.websocket.WebSocketService` robots and monitors
  connect to, and the :class:`~casare_nb.orchestrator.registry.RobotRegistry` it keeps;
- the :class:`~casare_nb.orchestrator.triggers.hub.Triggers` (schedules, webhooks, file
  watch, chaining), which reach the jobs through the job manager only;
- :class:`~casare_nb.orchestrator.metrics.OrchestratorMetrics`.

The path of one job through them is told in ``docs/architecture.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from ssl import SSLContext
from types import TracebackType
from typing import Any, Final, Unpack

from casare_nb.api import DebugBundle, DrainResult
from casare_nb.core.dispatch import RetryPolicy
from casare_nb.core.errors import JobExists, QueueError, SubmissionsClosed
from casare_nb.core.models import Job, Robot, RobotStatus, RunStatus, SubmitOptions
from casare_nb.core.thresholds import Thresholds
from casare_nb.core.tokens import DEFAULT_ROLE, TokenRole, legacy_notice
from casare_nb.notebook.state import private_dir
from casare_nb.orchestrator.elsewhere import Elsewhere
from casare_nb.orchestrator.jobs.durable import DURABLE_TIMEOUT_S
from casare_nb.orchestrator.jobs.manager import JobManager
from casare_nb.orchestrator.jobs.sharing import SWEEP_S
from casare_nb.orchestrator.leader import ActiveRole, default_node_id
from casare_nb.orchestrator.metrics import OrchestratorMetrics
from casare_nb.orchestrator.registry import RobotRegistry
from casare_nb.orchestrator.triggers.hub import Triggers
from casare_nb.orchestrator.websocket import WebSocketService
from casare_nb.protocol import (
    MAX_FRAME_BYTES,
    Envelope,
    EventData,
    EventKind,
    JobCancel,
    Pause,
    RobotEvent,
    Shutdown,
    Topic,
    Unpause,
)
from casare_nb.store.backends import open_stores
from casare_nb.store.interfaces import Stores

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Orchestrator"]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8765
MAINTENANCE_FILE: Final = "maintenance.json"
"""In the state directory while schedules and triggers are held for maintenance."""

logger = logging.getLogger("casare_nb.orchestrator")


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("a background check failed: %s", task.exception())


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Orchestrator:
    """The orchestrator of one state directory; see the module docstring.

    Keeps its state in ``stores`` (default: those ``store`` names, a PostgreSQL URL, else the
    embedded DuckDB stores of ``state_dir``). On a store several orchestrators share, every
    one serves and dispatches (``node_id`` names this one: :mod:`.jobs.sharing`); one of them
    leads (:mod:`.leader`: schedules, file watch, dead nodes); a node whose lead another
    took goes on serving and waits to lead again.
    ``await start()`` opens them and binds ``host:port`` (127.0.0.1:8765 by default; port 0
    picks a free one); ``await stop()`` closes every connection and releases the storage;
    ``async with`` does both. Pass an ``ssl_context`` to serve ``wss://``.

    Robots that send nothing for ``heartbeat_interval_s * missed_heartbeats`` seconds are
    marked offline; ``clock`` is the time source of every decision. ``thresholds`` are the
    health limits ``GET /status`` (and ``casare-nb status``) judges the figures by.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        heartbeat_interval_s: float = 2.0,
        missed_heartbeats: int = 3,
        clock: Callable[[], datetime] = _utcnow,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        ssl_context: SSLContext | None = None,
        assign_timeout_s: float = 10.0,
        retry_policy: RetryPolicy | None = None,
        reconnect_grace_s: float = 5.0,
        workflows_dir: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        stores: Stores | None = None,
        store: str | None = None,
        node_id: str | None = None,
        thresholds: Thresholds | None = None,
    ) -> None:
        if heartbeat_interval_s <= 0:
            raise ValueError(f"heartbeat_interval_s must be > 0, not {heartbeat_interval_s}")
        if missed_heartbeats < 1:
            raise ValueError(f"missed_heartbeats must be >= 1, not {missed_heartbeats}")
        if max_frame_bytes < 1:
            raise ValueError(f"max_frame_bytes must be >= 1, not {max_frame_bytes}")
        self.state_dir = Path(state_dir)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.missed_heartbeats = missed_heartbeats
        self.thresholds = thresholds or Thresholds()
        self.started_at = clock()
        self.stores = stores or open_stores(store, self.state_dir)
        node = node_id or default_node_id()
        if self.stores.shared is not None:  # every node active: the job rows say whose
            self.stores.shared.bind(node)
        self.role = ActiveRole(self.stores.leadership, node, str(self.stores.where))
        self._leading: asyncio.Task[None] | None = None
        self.on_lead: Callable[[int], None] | None = None
        """Called with its epoch when this node of a shared database starts leading."""
        self.registry = RobotRegistry()
        self.metrics = OrchestratorMetrics(clock)
        self._clock = clock
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._stopped = False
        self._drain_report: DrainResult | None = None
        self._drain_lock = asyncio.Lock()
        self._final_drain = False
        self._fault: str | None = None  # the storage fault last seen (logged once)
        self.job_manager = JobManager(
            self.stores,
            self,
            state_dir=self.state_dir,
            clock=clock,
            heartbeat_interval_s=heartbeat_interval_s,
            assign_timeout_s=assign_timeout_s,
            retry_policy=retry_policy,
            reconnect_grace_s=reconnect_grace_s,
            workflows_dir=None if workflows_dir is None else Path(workflows_dir),
            max_frame_bytes=max_frame_bytes,
        )
        self.websocket = WebSocketService(
            registry=self.registry,
            jobs=self.job_manager,
            tokens=self.stores.tokens,
            metrics=self.metrics,
            clock=clock,
            changed=self._notify,
            host=host,
            port=port,
            heartbeat_interval_s=heartbeat_interval_s,
            missed_heartbeats=missed_heartbeats,
            max_frame_bytes=max_frame_bytes,
            ssl_context=ssl_context,
        )
        if self.stores.shared is not None:
            self.websocket.elsewhere = Elsewhere(
                self.stores.shared, self.websocket.to_monitors, self._connected_here, self._notify
            )
        self.job_manager.durability.on_fault(self._fault_changed)
        self.triggers = Triggers(
            self.job_manager,
            self.stores.triggers,
            self.stores.outputs,
            environ=environ,
            workflows_dir=None if workflows_dir is None else Path(workflows_dir),
        )

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "serving" if self._started else "not started"
        return f"<Orchestrator {self.url} {state}>"

    @property
    def url(self) -> str:
        """The URL robots and monitors connect to (the bound port once started)."""
        return self.websocket.url

    @property
    def port(self) -> int:
        return self.websocket.port

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> int:
        """Open the storage and start serving; the bound port."""
        if self._stopped:
            raise RuntimeError("this orchestrator was stopped; create a new one")
        if self._started:
            raise RuntimeError("the orchestrator is already started")
        # the state directory holds checkpoint files whatever keeps the records
        await asyncio.to_thread(private_dir, self.state_dir)
        await asyncio.to_thread(self.stores.open)  # fail now on a locked or unwritable file
        shared = self.stores.shared is not None
        if not shared:
            await self.role.become()  # at once: no other orchestrator shares the store
        for row in await asyncio.to_thread(self.stores.tokens.list_tokens):
            if row.get("role") is None and row["revoked_at"] is None:  # from before roles
                logger.warning("%s", legacy_notice(row["name"]))
        self._loop = asyncio.get_running_loop()
        elsewhere = self.websocket.elsewhere
        if elsewhere is not None:  # before the listener starts (with the job manager)
            await elsewhere.start()
        port = await self.websocket.start()
        self._started = True
        self.job_manager.start()
        if self.job_manager.sharing is not None:
            self.job_manager.sharing.token_listeners.append(self._token_changed_elsewhere)
            if elsewhere is not None:
                self.job_manager.sharing.nodes_gone.append(elsewhere.node_gone)
        held = await asyncio.to_thread(self._kept_maintenance)
        if held is not None:
            logger.warning("maintenance is on since %s: schedules and triggers held", held)
        await self.triggers.start(held_since=held, lead=not shared)
        if shared:  # every node serves; one leads (schedules, file watch, dead nodes)
            self._leading = asyncio.create_task(self._lead(), name="orchestrator-lead")
        else:
            self.role.watch()
        logger.info("orchestrator listening on %s", self.url)
        return port

    async def _lead(self) -> None:
        """Of several orchestrators on one database: wait to lead, then fire schedules,
        watch files, adopt the jobs of dead nodes and take up what the others changed
        (schedules, file watches, maintenance), every second. A node that stops leading (its
        lock lost and taken by another) stops firing and watching, goes on serving, and
        waits to lead again."""
        while True:
            try:
                await self.role.become()
            except QueueError as exc:
                logger.error("node %s cannot lead: %s", self.role.node_id, exc)
                return
            await self.triggers.lead()
            self.role.watch()
            if self.on_lead is not None and self.role.epoch is not None:
                self.on_lead(self.role.epoch)
            while not self.role.lost.is_set():
                await self._lead_round()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SWEEP_S):
                        await self.role.lost.wait()
            logger.warning(
                "node %s no longer leads (%s): it goes on serving, and leads again when it can",
                self.role.node_id,
                self.role.lost_reason,
            )
            await self.triggers.unlead()
            await self.role.release()
            self.role.reset()

    async def _lead_round(self) -> None:
        """One second of leading (see :meth:`_lead`)."""
        sharing = self.job_manager.sharing
        try:
            held = await asyncio.to_thread(self._kept_maintenance)
            if (held is None) != (self.triggers.held_since is None):
                await self.triggers.hold(held)
            await self.triggers.sync()
            if sharing is not None:
                await sharing.sweep()
        except Exception:
            logger.exception("leading failed a round")

    async def stop(self) -> None:
        """Close every connection (1001), stop serving and release the storage; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._leading is not None:
            self.role.give_up()
            self._leading.cancel()
            await asyncio.gather(self._leading, return_exceptions=True)
        await self.triggers.stop()
        await self.websocket.stop()
        if self.websocket.elsewhere is not None:  # its robots' going, for the other nodes
            await self.websocket.elsewhere.stop()
        await self.job_manager.stop()
        self.websocket.cancel_tasks()
        await asyncio.to_thread(self.stores.close)
        await self.role.release()  # after the last write: another node leads from here
        self._notify()
        if self._started:  # a start that failed said why; "stopped" would be noise
            logger.info("orchestrator on %s stopped", self.url)

    async def __aenter__(self) -> Orchestrator:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _check_started(self) -> None:
        if not self._started or self._stopped:
            raise RuntimeError("the orchestrator is not serving: start() it first")

    # -- jobs ----------------------------------------------------------------------------

    def now(self) -> datetime:
        """The orchestrator's clock (aware UTC): the time of every decision it makes."""
        return self._clock()

    async def submit(
        self,
        workflow_path: str | os.PathLike[str],
        parameters: Mapping[str, Any] | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Job:
        """Validate and queue a run of ``workflow_path``; the queued job, once stored (see
        :meth:`JobManager.submit <casare_nb.orchestrator.jobs.manager.JobManager.submit>`).

        Refused (:class:`~casare_nb.core.errors.SubmissionsClosed`, HTTP 503) while the
        storage is at fault (:meth:`storage_fault`), also when the fault shows while the job
        waits for its commit: it is then withdrawn (cancelled) if it is stored later."""
        self._check_started()
        self._refuse_if_storage_fault()
        submitting = asyncio.ensure_future(
            self.job_manager.submit(workflow_path, parameters, **options)
        )
        submitting.add_done_callback(lambda _: self._notify())
        with contextlib.suppress(TimeoutError):
            await self.wait_for(
                lambda: submitting.done() or self.storage_fault() is not None,
                timeout=2 * DURABLE_TIMEOUT_S,
            )
        if not submitting.done():
            submitting.add_done_callback(self._withdraw)
            self._refuse_if_storage_fault()
        try:
            return await submitting
        except QueueError as exc:
            if isinstance(exc, JobExists):
                raise
            self._refuse_if_storage_fault()
            raise

    def _withdraw(self, submitting: asyncio.Future[Job]) -> None:
        """A submission refused while it waited for its commit was stored after all: cancel
        it (it was never acknowledged)."""
        if submitting.cancelled() or submitting.exception() is not None:
            return
        job_id = submitting.result().job_id
        book = self.job_manager.book
        done = book.live.cancel(job_id, now=self.now())
        if done is not None and done.status is RunStatus.CANCELLED:
            logger.warning("job %s was refused (storage fault), then stored: cancelled", job_id)
            book.finished(done)
        elif done is not None and done.robot_id is not None:
            logger.warning("job %s was refused (storage fault), then stored: cancelling", job_id)
            reason = "refused (storage fault), then stored"
            self.send_to_robot(
                done.robot_id, JobCancel(job_id=job_id, attempt=done.attempt, reason=reason)
            )

    def storage_fault(self) -> str | None:
        """Why the orchestrator cannot keep what it acknowledges now (a write to its state
        directory fails, or the directory is gone), or None. Each episode is logged once, at
        ERROR, when it is first seen, and once when it ends."""
        if self._started and not self._stopped and not self.state_dir.is_dir():
            reason: str | None = f"state directory gone: {self.state_dir}"
        else:
            reason = self.job_manager.durability.fault()
        if reason != self._fault:
            if reason is None:
                logger.warning("storage recovered: submissions are taken again")
            elif self._fault is None:
                logger.error("storage fault: submissions are refused until it clears: %s", reason)
            self._fault = reason
        return reason

    def _refuse_if_storage_fault(self) -> None:
        fault = self.storage_fault()
        if fault is not None:
            raise SubmissionsClosed(f"the orchestrator cannot store jobs now: {fault}")

    def _fault_changed(self) -> None:
        """The durability's fault may have changed (any thread): say so, wake the waiters."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._fault_seen)

    def _fault_seen(self) -> None:
        self.storage_fault()
        self._notify()

    async def rerun(
        self,
        job_id: str,
        *,
        from_failed: bool = True,
        parameters: Mapping[str, Any] | None = None,
        raw_parameters: Mapping[str, str] | None = None,
        cell_sources: Mapping[str, str] | None = None,
    ) -> Job:
        """Queue a finished job again as a new attempt: ``from_failed`` resumes from the
        failed cell (restoring the last checkpoint before it, with the workflow's current
        source) on any robot; False starts over. ``cell_sources`` (by cell id) are written
        into the workflow first. QueueError for an unknown, queued or running job;
        ParameterError for bad parameters (secret ones must be given again); WorkflowError
        for a cell id the workflow lacks."""
        self._check_started()
        return await self.job_manager.rerun(
            job_id,
            from_failed=from_failed,
            parameters=parameters,
            raw_parameters=raw_parameters,
            cell_sources=cell_sources,
        )

    def debug_bundle(self, job_id: str) -> DebugBundle:
        """What a debug kernel needs to restore a failed job's namespace before its failed
        cell (blocking; see :meth:`JobManager.debug_bundle
        <casare_nb.orchestrator.jobs.manager.JobManager.debug_bundle>`)."""
        self._check_started()
        return self.job_manager.debug_bundle(job_id)

    def blob(self, sha256: str) -> bytes | None:
        """A checkpoint blob the orchestrator holds, or None (blocking)."""
        return self.stores.checkpoints.read_blob(sha256)

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one once its robot stopped it.
        A finished or unknown job raises :class:`~casare_nb.core.errors.QueueError`."""
        self._check_started()
        return self.job_manager.cancel(job_id)

    def jobs(self, status: RunStatus | None = None, *, limit: int = 100) -> list[Job]:
        """Up to ``limit`` jobs, newest first, optionally only those in ``status``."""
        return self.job_manager.jobs(status, limit=limit)

    def job(self, job_id: str) -> Job | None:
        """The job ``job_id``, or None."""
        return self.job_manager.job(job_id)

    # -- robots and monitors -------------------------------------------------------------

    def robots(self) -> list[Robot]:
        """Every robot that registered here since the start (offline ones too), by id."""
        return [r.model_copy(update={"tags": list(r.tags)}) for r in self.registry.snapshot()]

    def robots_everywhere(self) -> list[Robot]:
        """:meth:`robots`; with several orchestrators on one database, those connected to
        the others too, and each with its ``node``."""
        elsewhere = self.websocket.elsewhere
        return self.robots() if elsewhere is None else elsewhere.with_mine(self.robots())

    def robot(self, robot_id: str) -> Robot | None:
        """The robot ``robot_id``, or None if it never registered."""
        return self.registry.get(robot_id)

    def monitors(self, topic: Topic | None = None) -> int:
        """How many monitors are connected (subscribed to ``topic``, if given)."""
        return self.websocket.monitors(topic)

    def _connected_here(self, robot_id: str) -> bool:
        robot = self.registry.get(robot_id)
        return robot is not None and robot.status is not RobotStatus.OFFLINE

    def pause_robot(self, robot_id: str, paused: bool = True) -> Robot:
        """Drain one robot (``paused``: it takes no new jobs; the running ones finish) or
        let it take jobs again. The robot shows ``draining`` at once, and its heartbeats say
        so from then on. QueueError for a robot that is unknown or offline."""
        robot = self.registry.get(robot_id)
        if robot is None or robot.status is RobotStatus.OFFLINE:
            raise QueueError(f"robot {robot_id} is not online")
        msg = Pause(reason="paused by an operator") if paused else Unpause()
        if not self.send_to_robot(robot_id, msg):
            raise QueueError(f"robot {robot_id} is not connected")
        if paused:
            status = RobotStatus.DRAINING
        else:
            status = RobotStatus.BUSY if robot.free_slots == 0 else RobotStatus.ONLINE
        changed = self.registry.set_status(robot_id, status)
        assert changed is not None  # online just above, in this same loop turn
        self.publish(EventKind.ROBOT_STATUS, RobotEvent(robot=changed))
        if not paused:
            self.job_manager.wake()
        self._notify()
        return changed

    @property
    def submissions_paused(self) -> bool:
        """True while an operator paused submissions (:meth:`pause_submissions`)."""
        return self.job_manager.submissions_paused

    def pause_submissions(self, paused: bool = True) -> None:
        """Refuse (``paused``) or take again new submissions, re-runs and trigger fires,
        without stopping anything: queued jobs are still dispatched, running ones go on."""
        self.job_manager.submissions_paused = paused
        logger.info("submissions %s", "paused" if paused else "taken again")
        self._notify()

    @property
    def draining(self) -> bool:
        """True once :meth:`drain` began: no submissions, no new dispatch."""
        return self.job_manager.draining

    async def drain(self, timeout_s: float = 60.0, *, final: bool = False) -> DrainResult:
        """The runbook's graceful shutdown: stop taking submissions and dispatching, wait up
        to ``timeout_s`` for the running jobs to end, then tell every connected robot to shut
        down (jobs still running are stopped and requeued to resume from their checkpoint)
        and wait briefly for them to go. Idempotent: a second call answers the first's report.
        :meth:`undrain` while it waits ends it early (``cancelled``, no robot shut down);
        ``final`` (the service stopping) cannot be undone.
        """
        self._check_started()
        if timeout_s < 0:
            raise ValueError(f"timeout_s must be >= 0, not {timeout_s}")
        self._final_drain = self._final_drain or final
        async with self._drain_lock:
            if self._drain_report is not None:
                return self._drain_report
            self.job_manager.draining = True
            self._notify()
            logger.info("draining: no new submissions; waiting up to %g s for jobs", timeout_s)
            running = {job.job_id for job in self.job_manager.running_jobs()}

            def still_running() -> set[str]:
                return {job.job_id for job in self.job_manager.running_jobs()}

            def undrained() -> bool:
                return not self.job_manager.draining

            with contextlib.suppress(TimeoutError):
                await self.wait_for(lambda: undrained() or not still_running(), timeout=timeout_s)
            left = still_running()
            if undrained():
                logger.info("drain cancelled: jobs are taken and dispatched again")
                return DrainResult(
                    finished_jobs=sorted(running - left),
                    unfinished_jobs=sorted(left),
                    cancelled=True,
                )
            robots = self.websocket.connected_robots()
            for robot_id in robots:
                self.send_to_robot(
                    robot_id, Shutdown(graceful=not left, reason="the orchestrator is draining")
                )
            with contextlib.suppress(TimeoutError):
                await self.wait_for(
                    lambda: not self.websocket.connected_robots(),
                    timeout=max(5.0, self.heartbeat_interval_s),
                )
            report = DrainResult(
                finished_jobs=sorted(running - left),
                unfinished_jobs=sorted(left),
                robots_shut_down=robots,
            )
            self._drain_report = report
            logger.info(
                "drained: %d jobs finished, %d unfinished, %d robots shut down",
                len(report.finished_jobs),
                len(report.unfinished_jobs),
                len(robots),
            )
            return report

    def undrain(self) -> None:
        """Undo :meth:`drain` (one under way stops waiting and shuts no robot down; robots a
        finished one shut down must be started again) and :meth:`pause_submissions`: new
        submissions are taken and queued jobs dispatched again. QueueError while the service
        is stopping (its drain is final)."""
        self._check_started()
        if self._final_drain:
            raise QueueError("the orchestrator is shutting down: its drain cannot be undone")
        was = self.job_manager.draining
        self.job_manager.draining = False
        self._drain_report = None
        self.job_manager.submissions_paused = False
        if was:
            logger.info("drain undone: submissions are taken and jobs dispatched again")
        self.job_manager.wake()
        self._notify()

    # -- maintenance ---------------------------------------------------------------------

    @property
    def maintenance(self) -> datetime | None:
        """Since when schedules and triggers are held for maintenance (None: they are not)."""
        return self.triggers.held_since

    async def set_maintenance(self, on: bool) -> datetime | None:
        """Hold every schedule and trigger (``on``) or let them fire again; kept in the state
        directory (``maintenance.json``), so a restart stays in maintenance. Each schedule's
        and trigger's own paused/disabled state is left as it is. Since when (None: off)."""
        since = self._clock() if on else None
        if on and self.triggers.held_since is not None:
            return self.triggers.held_since
        await asyncio.to_thread(self._keep_maintenance, since)
        await self.triggers.hold(since)
        logger.info("maintenance %s", "on: schedules and triggers held" if on else "off")
        self._notify()
        return since

    def _keep_maintenance(self, since: datetime | None) -> None:
        path = self.state_dir / MAINTENANCE_FILE
        if since is None:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"since": since.isoformat()}) + "\n", encoding="utf-8")
        os.replace(tmp, path)

    def _kept_maintenance(self) -> datetime | None:
        try:
            text = (self.state_dir / MAINTENANCE_FILE).read_text(encoding="utf-8")
            return datetime.fromisoformat(json.loads(text)["since"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.error("%s unreadable (%s): maintenance stays on", MAINTENANCE_FILE, exc)
            return self._clock()

    # -- tokens --------------------------------------------------------------------------

    def create_token(self, name: str, role: TokenRole = DEFAULT_ROLE) -> str:
        """A new token named ``name`` with ``role`` (``user`` by default; see
        :mod:`casare_nb.core.tokens`), shown once, stored hashed. Blocking: in the event loop,
        call it through ``asyncio.to_thread``."""
        return self.stores.tokens.create_token(name, role)

    def fresh_token(self, name: str, role: TokenRole = TokenRole.ROBOT) -> str:
        """A new token ``name`` (a robot's by default); a live one of that name (an earlier
        run's) is revoked first. Blocking."""
        tokens = self.stores.tokens
        if any(t["name"] == name and t["revoked_at"] is None for t in tokens.list_tokens()):
            self.revoke_token(name)
        return self.create_token(name, role)

    def revoke_token(self, name: str) -> None:
        """Revoke the token ``name`` and close the live connections that used it (1008).
        Blocking and thread-safe: in the event loop, call it through ``asyncio.to_thread``."""
        self.stores.tokens.revoke_token(name)
        loop = self._loop
        if loop is not None and not self._stopped and not loop.is_closed():
            loop.call_soon_threadsafe(self.websocket.drop_token, name)

    def _token_changed_elsewhere(self, name: str) -> None:
        """A token was created or revoked on another orchestrator of the database: if
        ``name`` has no live token now, its connections here are closed too."""

        async def check() -> None:
            rows = await asyncio.to_thread(self.stores.tokens.list_tokens)
            if not any(r["name"] == name and r["revoked_at"] is None for r in rows):
                self.websocket.drop_token(name)

        task = asyncio.get_running_loop().create_task(check())
        task.add_done_callback(_log_failure)

    # -- waiting for a change ------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Return once ``predicate()`` is true, checking it after every change of state
        (robots, connections, subscriptions, jobs); raises TimeoutError after ``timeout`` s."""
        async with asyncio.timeout(timeout):
            while True:
                changed = self._changed
                if predicate():
                    return
                await changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -- the job manager's link (Link) ---------------------------------------------------

    def send_to_robot(self, robot_id: str, msg: Envelope) -> bool:
        """Queue ``msg`` on the robot's connection; False if it is not connected."""
        return self.websocket.send_to_robot(robot_id, msg)

    def publish(self, kind: EventKind, data: EventData) -> None:
        """Send an event to every monitor subscribed to its topic."""
        self.websocket.publish(kind, data)

    def notify(self) -> None:
        """Wake the ``wait_for`` callers."""
        self._notify()
