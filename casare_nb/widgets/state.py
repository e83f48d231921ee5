"""What the dashboard shows, as plain Python: :class:`DashboardState` is fed the
orchestrator's monitor events (and snapshots read over HTTP) and answers view models
(:mod:`casare_nb.widgets.viewmodels`).

No widget library here (ipywidgets is the views' business): the reducers are tested without
a browser, and a benchmark can measure them alone. Thread-safe: one thread applies events
(the dashboard's event stream) while another reads view models (the renderer); listeners
(:meth:`DashboardState.on_change`) are called after each change, outside the lock, in the
thread that made it.

Everything kept is bounded, so a dashboard left open for days holds the same memory as after
an hour: the event log and the recently finished jobs are ``deque(maxlen=...)``, the running
map holds only running jobs, robots are capped (offline ones go first), the queue tracks at
most :data:`QUEUE_TRACK_LIMIT` jobs one by one (beyond, counts only).

Ages and elapsed times come from an injectable clock (a callable answering an aware
datetime), so tests set the time instead of sleeping.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from casare_nb.api import Health, ServerInfo
from casare_nb.core.models import Job, Priority, Robot, RobotStatus, RunStatus
from casare_nb.core.thresholds import Level, Thresholds
from casare_nb.protocol import CellEvent, Event, EventKind, JobEvent, RobotEvent, RobotSnapshot
from casare_nb.widgets.viewmodels import (
    DEFAULT_THRESHOLDS,
    Change,
    ConnectionState,
    ConnectionView,
    FinishedView,
    QueueView,
    RobotView,
    RunningView,
    describe_failure,
    percent_level,
    queue_level,
    workflow_name,
)

__all__ = [
    "EVENT_LOG_SIZE",
    "MAX_ROBOTS",
    "MAX_SOURCE_TRIES",
    "QUEUE_TRACK_LIMIT",
    "RECENT_FINISHED",
    "RECENT_TTL",
    "DashboardState",
    "Level",
]

# -- bounds ----------------------------------------------------------------------------------

EVENT_LOG_SIZE: Final = 200
"""Lines of the event log kept (the oldest go)."""
RECENT_FINISHED: Final = 20
"""Finished jobs kept in the "recently finished" list."""
RECENT_TTL: Final = timedelta(minutes=10)
"""A finished job leaves the recently finished list after this long."""
MAX_ROBOTS: Final = 500
"""Robots kept; past it, the offline robot seen least recently goes first."""
QUEUE_TRACK_LIMIT: Final = 10_000
"""Queued jobs tracked one by one (for the oldest's age); past it, counted only."""
MAX_SOURCE_TRIES: Final = 3
"""Times the renderer tries to read a running job's notebook for its cells' first lines."""

PRIORITY_ORDER: Final = (Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW)


def _utcnow() -> datetime:
    return datetime.now(UTC)


# -- the state -------------------------------------------------------------------------------


@dataclass
class _Running:
    job: Job
    attempt: int
    started_at: datetime
    cells_done: int = 0
    cells_total: int = 0
    last_cell_index: int | None = None
    sources: dict[int, str] | None = None
    source_tries: int = 0
    seen_cells: bool = False
    from_snapshot: bool = False


@dataclass
class _Robot:
    robot: Robot
    seq: int
    """The state's change counter when an event last told about it."""


@dataclass
class _Finished:
    job: Job
    finished_at: datetime


@dataclass
class _Queue:
    tracked: dict[str, tuple[Priority, datetime]] = field(default_factory=dict)
    """Queued jobs in the order they were queued (the first is the oldest)."""
    untracked: Counter[Priority] = field(default_factory=Counter)
    """Queued jobs past :data:`QUEUE_TRACK_LIMIT`, counted only."""


Listener = Callable[[Change], None]


class DashboardState:
    """The dashboard's model: robots, the queue, running and recently finished jobs, the
    connection, an event log. Fed by :meth:`apply` (monitor events) and the ``load_*``
    snapshots; read through the view-model methods. See the module docstring."""

    def __init__(
        self,
        *,
        clock: Callable[[], datetime] = _utcnow,
        event_log_size: int = EVENT_LOG_SIZE,
        recent_finished: int = RECENT_FINISHED,
        recent_ttl: timedelta = RECENT_TTL,
        max_robots: int = MAX_ROBOTS,
        queue_track_limit: int = QUEUE_TRACK_LIMIT,
    ) -> None:
        self.clock = clock
        self.recent_ttl = recent_ttl
        self.max_robots = max_robots
        self.queue_track_limit = queue_track_limit
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []
        self._robots: dict[str, _Robot] = {}
        self._queue = _Queue()
        self._running: dict[str, _Running] = {}
        self._finished: deque[_Finished] = deque(maxlen=recent_finished)
        self._log: deque[str] = deque(maxlen=event_log_size)
        self._connection = ConnectionView(ConnectionState.CONNECTING, "connecting…")
        self._submissions_paused = False
        self._draining = False
        self._workflows: tuple[str, ...] = ()
        self.thresholds = DEFAULT_THRESHOLDS
        """What the views' levels are judged by: the orchestrator's, once read."""
        self.seq = 0
        """Counts changes; a snapshot read started at ``seq`` loses to events after it."""
        self.events = 0
        """Events applied so far."""
        self.finished_count = 0
        """Jobs seen finishing so far (the history refreshes on it)."""

    # -- listeners -----------------------------------------------------------------------

    def on_change(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(change)`` after every change (in the changing thread); answers a
        function that removes it."""
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def _notify(self, change: Change) -> None:
        if not change.parts:
            return
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(change)

    # -- events --------------------------------------------------------------------------

    def apply(self, event: Event) -> Change:
        """Apply one monitor event; answers (and tells the listeners) what it changed."""
        with self._lock:
            self.seq += 1
            self.events += 1
            parts = self._apply(event)
        change = Change(frozenset(parts), event.ts, event.kind.value)
        self._notify(change)
        return change

    def apply_all(self, events: Iterable[Event]) -> None:
        """Apply several events (one listener call each)."""
        for event in events:
            self.apply(event)

    def _apply(self, event: Event) -> set[str]:
        data = event.data
        if isinstance(data, RobotSnapshot):
            self._replace_robots(data.robots, None)
            return {"robots"}
        if isinstance(data, RobotEvent):
            robot = data.robot
            self._put_robot(robot)
            if event.kind is EventKind.ROBOT_OFFLINE:
                why = f" ({data.reason})" if data.reason else ""
                self._say(event.ts, f"robot {robot.robot_id} offline{why}")
            elif event.kind is EventKind.ROBOT_ONLINE:
                self._say(event.ts, f"robot {robot.robot_id} online")
            else:
                self._say(event.ts, f"robot {robot.robot_id} {robot.status.value}")
            return {"robots", "log"}
        if isinstance(data, JobEvent):
            return self._apply_job(event.kind, data, event.ts)
        if isinstance(data, CellEvent):
            return self._apply_cell(data)
        return set()

    def _apply_job(self, kind: EventKind, data: JobEvent, ts: datetime) -> set[str]:
        job = data.job
        name = workflow_name(job.workflow_path, self._workflows)
        if kind is EventKind.JOB_QUEUED:
            parts = {"queue", "log"}
            if self._running.pop(job.job_id, None) is not None:
                parts.add("running")
            self._enqueue(job, ts)
            why = f" again ({data.reason})" if data.reason else ""
            self._say(ts, f"job {job.job_id} ({name}) queued{why}")
            return parts
        if kind is EventKind.JOB_STARTED:
            parts = {"running", "log"}
            if self._dequeue(job):
                parts.add("queue")
            self._start(job, job.accepted_at or ts)
            self._say(ts, f"job {job.job_id} ({name}) started on {job.robot_id}")
            return parts
        # job_finished
        parts = {"finished", "history", "log"}
        if self._running.pop(job.job_id, None) is not None:
            parts.add("running")
        elif self._dequeue(job):
            parts.add("queue")
        self._finished.append(_Finished(job, job.finished_at or ts))
        self.finished_count += 1
        error = f": {job.error_name}" if job.error_name else ""
        self._say(ts, f"job {job.job_id} ({name}) {job.status.value}{error}")
        return parts

    def _apply_cell(self, data: CellEvent) -> set[str]:
        running = self._running.get(data.job_id)
        if running is None or data.attempt < running.attempt:
            return set()
        if data.attempt > running.attempt:  # a new attempt we did not see start
            running.attempt = data.attempt
            running.cells_done = 0
            running.sources = None
            running.source_tries = 0
        running.cells_done = max(running.cells_done, data.cells_done)
        running.cells_total = data.cells_total
        if running.last_cell_index is None or data.cell_index > running.last_cell_index:
            running.last_cell_index = data.cell_index
        running.seen_cells = True
        return {"running"}

    # -- snapshots -----------------------------------------------------------------------

    def load_robots(self, robots: Iterable[Robot], *, since: int | None = None) -> None:
        """Robots as ``GET /api/robots`` lists them. With ``since`` (:attr:`seq` when the
        read started), a robot an event told about after that keeps the event's version."""
        with self._lock:
            self.seq += 1
            self._replace_robots(robots, since)
        self._notify(Change(frozenset({"robots"})))

    def update_robot(self, robot: Robot) -> None:
        """One robot as an action answered it (pause, unpause)."""
        with self._lock:
            self.seq += 1
            self._put_robot(robot)
        self._notify(Change(frozenset({"robots"})))

    def load_jobs(self, jobs: Iterable[Job]) -> None:
        """The unfinished jobs (``GET /api/jobs?status=queued`` and ``running``): they
        replace the queue and the running map (at connect, before the events)."""
        jobs = list(jobs)
        with self._lock:
            self.seq += 1
            self._queue = _Queue()
            old = self._running
            self._running = {}
            queued = sorted(
                (j for j in jobs if j.status is RunStatus.QUEUED), key=self._queued_since
            )
            for job in queued:
                self._enqueue(job, self._queued_since(job))
            for job in jobs:
                if job.status is RunStatus.RUNNING:
                    before = old.get(job.job_id)
                    if before is not None and before.attempt == job.attempt:
                        self._running[job.job_id] = before  # keep what the cells told
                        continue
                    self._start(job, job.accepted_at or job.assigned_at or self.clock())
                    self._running[job.job_id].from_snapshot = True
        self._notify(Change(frozenset({"queue", "running"})))

    def load_health(self, health: Health) -> None:
        """``/health``: the queue counts of the jobs not tracked one by one, draining."""
        with self._lock:
            self.seq += 1
            self._draining = health.status == "draining"
            tracked = Counter(p for p, _ in self._queue.tracked.values())
            self._queue.untracked = Counter(
                {p: n - tracked[p] for p, n in health.queue.items() if n > tracked[p]}
            )
        self._notify(Change(frozenset({"queue"})))

    def set_thresholds(self, thresholds: Thresholds) -> None:
        """Judge the figures by ``thresholds`` (the orchestrator's, from ``GET /status``)."""
        with self._lock:
            self.seq += 1
            self.thresholds = thresholds
        self._notify(Change(frozenset({"queue", "robots"})))

    def load_info(self, info: ServerInfo) -> None:
        """``/api/info``: whether submissions are paused, whether it drains."""
        with self._lock:
            self.seq += 1
            self._submissions_paused = info.submissions_paused
            self._draining = info.draining
        self._notify(Change(frozenset({"queue"})))

    def set_submissions_paused(self, paused: bool) -> None:
        with self._lock:
            self.seq += 1
            self._submissions_paused = paused
        self._notify(Change(frozenset({"queue"})))

    def set_workflows(self, paths: Iterable[str]) -> None:
        """The workflows the orchestrator serves (relative paths), to name jobs shortly."""
        with self._lock:
            self._workflows = tuple(paths)
        self._notify(Change(frozenset({"running", "finished"})))

    @property
    def workflows(self) -> tuple[str, ...]:
        return self._workflows

    # -- sources of running jobs ---------------------------------------------------------

    def sources_wanted(self) -> list[tuple[str, int]]:
        """(job, attempt) of the running jobs whose cells' first lines the renderer should
        read: once, after a first cell finished (the notebook-so-far exists from then on),
        or at once for a job found running by a snapshot; a failed read is tried again
        after the next cell, :data:`MAX_SOURCE_TRIES` times at most."""
        with self._lock:
            return [
                (job_id, r.attempt)
                for job_id, r in self._running.items()
                if r.sources is None
                and r.source_tries < MAX_SOURCE_TRIES
                and (r.seen_cells or (r.from_snapshot and r.source_tries == 0))
            ]

    def set_sources(self, job_id: str, attempt: int, lines: Mapping[int, str] | None) -> None:
        """The first lines of a running job's code cells (None: the read failed)."""
        with self._lock:
            running = self._running.get(job_id)
            if running is None or running.attempt != attempt:
                return
            running.source_tries += 1
            if lines is not None:
                running.sources = dict(lines)
            else:
                running.seen_cells = False  # try again after the next cell
        self._notify(Change(frozenset({"running"})))

    # -- connection ----------------------------------------------------------------------

    def set_connected(self, url: str) -> None:
        self._set_connection(ConnectionView(ConnectionState.CONNECTED, f"connected to {url}", url))

    def set_connecting(self, where: str) -> None:
        view = ConnectionView(ConnectionState.CONNECTING, f"connecting to {where}…", where)
        self._set_connection(view)

    def set_disconnected(
        self, where: str, reason: str, status: int | None, retry_in_s: float | None = None
    ) -> None:
        """The orchestrator at ``where`` failed: ``status`` 401/403 is a refused token,
        anything else (None: no answer) unreachable."""
        self._set_connection(describe_failure(where, reason, status, retry_in_s))

    def _set_connection(self, view: ConnectionView) -> None:
        with self._lock:
            if view == self._connection:
                return
            self.seq += 1
            parts = {"connection"}
            if view.message != self._connection.message:
                self._say(self.clock(), view.message)
                parts.add("log")
            self._connection = view
        self._notify(Change(frozenset(parts)))

    def connection(self) -> ConnectionView:
        with self._lock:
            return self._connection

    # -- view models ---------------------------------------------------------------------

    def robots(self) -> list[RobotView]:
        """Every robot by id: load, CPU and memory with their levels, heartbeat age."""
        now = self.clock()
        with self._lock:
            entries = [e.robot for e in self._robots.values()]
            limits = self.thresholds
        views = []
        for r in sorted(entries, key=lambda r: r.robot_id):
            age = (now - r.last_heartbeat).total_seconds() if r.last_heartbeat else None
            views.append(
                RobotView(
                    robot_id=r.robot_id,
                    name=r.name,
                    environment=r.environment,
                    tags=tuple(r.tags),
                    status=r.status,
                    running=r.running_jobs,
                    capacity=r.max_concurrent_jobs,
                    cpu_percent=r.cpu_percent,
                    cpu_level=percent_level(r.cpu_percent, limits.robot_cpu_percent),
                    memory_percent=r.memory_percent,
                    memory_level=percent_level(r.memory_percent, limits.robot_memory_percent),
                    heartbeat_age_s=age,
                )
            )
        return views

    def queue(self) -> QueueView:
        """Depth by priority, the oldest waiting job's age, the level, submissions paused."""
        now = self.clock()
        with self._lock:
            counts = Counter(p for p, _ in self._queue.tracked.values())
            counts.update(self._queue.untracked)
            oldest = next(iter(self._queue.tracked.items()), None)
            approximate = sum(self._queue.untracked.values()) > 0
            paused, draining = self._submissions_paused, self._draining
        depth = sum(counts.values())
        return QueueView(
            depth=depth,
            by_priority=tuple((p, counts[p]) for p in PRIORITY_ORDER),
            oldest_age_s=(now - oldest[1][1]).total_seconds() if oldest else None,
            oldest_job_id=oldest[0] if oldest else None,
            level=queue_level(depth, self.thresholds.queue_depth),
            submissions_paused=paused,
            draining=draining,
            approximate=approximate,
        )

    def running(self) -> list[RunningView]:
        """The running jobs, longest running first."""
        now = self.clock()
        with self._lock:
            views = [self._running_view(r, now) for r in self._running.values()]
        return sorted(views, key=lambda v: (-v.elapsed_s, v.job_id))

    def _running_view(self, r: _Running, now: datetime) -> RunningView:
        total = r.cells_total
        return RunningView(
            job_id=r.job.job_id,
            workflow=workflow_name(r.job.workflow_path, self._workflows),
            robot_id=r.job.robot_id,
            attempt=r.attempt,
            cells_done=r.cells_done,
            cells_total=total,
            fraction=min(1.0, r.cells_done / total) if total else 0.0,
            first_line=self._current_line(r),
            elapsed_s=max(0.0, (now - r.started_at).total_seconds()),
        )

    @staticmethod
    def _current_line(r: _Running) -> str:
        """The first line of the code cell after the last one that finished (the first code
        cell before any did; for a resume, the failed cell)."""
        if not r.sources:
            return ""
        if r.last_cell_index is not None:
            after = r.last_cell_index
        elif r.job.resume_from_failed and r.job.failed_cell is not None:
            after = r.job.failed_cell - 1
        else:
            after = -1
        later = [i for i in r.sources if i > after]
        return r.sources[min(later)] if later else ""

    def finished(self) -> list[FinishedView]:
        """Recently finished jobs, newest first; those older than the TTL are dropped."""
        now = self.clock()
        with self._lock:
            while self._finished and now - self._finished[0].finished_at > self.recent_ttl:
                self._finished.popleft()
            entries = list(self._finished)
        views = []
        for entry in reversed(entries):
            job = entry.job
            error = None
            if job.error_name or job.error_message:
                error = f"{job.error_name or 'error'}: {job.error_message or ''}".rstrip(": ")
            views.append(
                FinishedView(
                    job_id=job.job_id,
                    workflow=workflow_name(job.workflow_path, self._workflows),
                    status=job.status,
                    robot_id=job.robot_id,
                    finished_at=entry.finished_at,
                    age_s=max(0.0, (now - entry.finished_at).total_seconds()),
                    error=error,
                )
            )
        return views

    def log(self) -> list[str]:
        """The event log, oldest first (at most its size)."""
        with self._lock:
            return list(self._log)

    def sizes(self) -> dict[str, int]:
        """How much each buffer holds (tests check they stay bounded)."""
        with self._lock:
            return {
                "robots": len(self._robots),
                "queue_tracked": len(self._queue.tracked),
                "running": len(self._running),
                "finished": len(self._finished),
                "log": len(self._log),
            }

    # -- internals -----------------------------------------------------------------------

    def _say(self, ts: datetime, text: str) -> None:
        self._log.append(f"{ts.astimezone(UTC):%H:%M:%S} {text}")

    def _put_robot(self, robot: Robot) -> None:
        self._robots.pop(robot.robot_id, None)  # re-inserted last: the most recent
        self._robots[robot.robot_id] = _Robot(robot, self.seq)
        self._trim_robots()

    def _replace_robots(self, robots: Iterable[Robot], since: int | None) -> None:
        fresh = {r.robot_id: r for r in robots}
        kept: dict[str, _Robot] = {}
        for robot_id, entry in self._robots.items():
            if since is not None and entry.seq > since:
                kept[robot_id] = entry  # an event told about it after the read began
        self._robots = {rid: _Robot(r, self.seq) for rid, r in fresh.items() if rid not in kept}
        self._robots.update(kept)
        self._trim_robots()

    def _trim_robots(self) -> None:
        while len(self._robots) > self.max_robots:
            offline = next(
                (k for k, e in self._robots.items() if e.robot.status is RobotStatus.OFFLINE),
                None,
            )
            del self._robots[offline if offline is not None else next(iter(self._robots))]

    @staticmethod
    def _queued_since(job: Job) -> datetime:
        """When a queued job (from a snapshot) entered the queue: its creation, or the end
        or assignment of its previous attempt (a re-run, a retry, a lost robot)."""
        times = [t for t in (job.created_at, job.finished_at, job.assigned_at) if t is not None]
        return max(times)

    def _enqueue(self, job: Job, since: datetime) -> None:
        queue = self._queue
        if job.job_id in queue.tracked:
            return
        if len(queue.tracked) >= self.queue_track_limit:
            queue.untracked[job.priority] += 1
            return
        queue.tracked[job.job_id] = (job.priority, since)

    def _dequeue(self, job: Job) -> bool:
        """Take ``job`` out of the queue; whether it was in it. A job not tracked is taken
        from the untracked count of its priority (``/health`` corrects any drift)."""
        queue = self._queue
        if queue.tracked.pop(job.job_id, None) is not None:
            return True
        if queue.untracked[job.priority] > 0:
            queue.untracked[job.priority] -= 1
            return True
        return False

    def _start(self, job: Job, started_at: datetime) -> None:
        before = self._running.get(job.job_id)
        if before is not None and before.attempt == job.attempt:
            before.job = job
            return
        self._running[job.job_id] = _Running(job=job, attempt=job.attempt, started_at=started_at)
