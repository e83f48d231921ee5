"""Prometheus metrics of one orchestrator; the one module that imports prometheus_client.

Each :class:`OrchestratorMetrics` has its own registry (two orchestrators in one process,
as in tests, do not share counters). Counters and histograms follow the orchestrator's
events (:meth:`OrchestratorMetrics.observe` sees every event it publishes, monitors or
not); gauges are read from the live state when scraped (:meth:`render`).

=================================== ==========================================================
metric                              what
=================================== ==========================================================
``casare_queue_depth{priority}``    queued jobs by priority (eligible now or later)
``casare_jobs{status}``             jobs by status (queued, running, completed, ...)
``casare_jobs_running``             jobs assigned to a robot and not ended
``casare_robots{status}``           robots by status (online, busy, draining, offline)
``casare_job_outcomes_total``       jobs that reached a final status, by ``status``
``casare_cell_duration_seconds``    executed cells' durations (histogram), by ``status``
``casare_heartbeat_misses_total``   robots marked offline after missing their heartbeats
``casare_dispatch_latency_seconds`` a job eligible -> accepted by a robot (histogram)
``casare_draining``                 1 while the orchestrator drains
``casare_robot_cpu_percent``        CPU use of each connected robot's host, by ``robot``
``casare_robot_memory_percent``     memory use of each connected robot's host, by ``robot``
``casare_robot_heartbeats_missed``  heartbeat intervals each robot has been silent, by ``robot``
``casare_connection_failures_total`` refused authentications and robot connections lost, by
                                    ``kind`` (``refused``, ``lost``)
``casare_job_failure_rate_percent`` failed, timed-out and dead jobs among the jobs that ended
                                    in the last hour (cancelled ones not counted)
``casare_jobs_finished_last_hour``  jobs that ended in the last hour (cancelled ones not
                                    counted): the failure rate's sample
``process_*``                       the orchestrator process: CPU seconds, memory, open files
=================================== ==========================================================

The last-hour figures (failures, connection failures) are kept in memory from the
orchestrator's start: :class:`HourWindow`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)
from prometheus_client.exposition import generate_latest

from casare_nb.core.models import JobStatus, Priority, Robot, RobotStatus
from casare_nb.core.thresholds import Limit, Thresholds
from casare_nb.protocol import CellEvent, EventData, EventKind, JobEvent, RobotEvent

__all__ = [
    "CONTENT_TYPE",
    "FAILED_STATUSES",
    "HOUR",
    "HourWindow",
    "OrchestratorMetrics",
    "alert_rules",
    "heartbeats_missed",
]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

_CELL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_DISPATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


HOUR: Final = timedelta(hours=1)
FAILED_STATUSES: Final = frozenset({JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.DEAD})
"""The final statuses that count as failures (cancelled is neither a failure nor a success)."""
_LATE_FRACTION: Final = 0.25  # a heartbeat this late (of an interval) is not yet missed


def _utcnow() -> datetime:
    return datetime.now(UTC)


def heartbeats_missed(age_s: float | None, interval_s: float) -> int | None:
    """Heartbeat intervals a robot has been silent for, ``age_s`` after its last heartbeat
    (a quarter of an interval of lateness forgiven); None when it never sent one."""
    if age_s is None:
        return None
    return max(0, math.floor(age_s / interval_s - _LATE_FRACTION))


class HourWindow:
    """Things that happened in the last hour, by kind; times from one clock, in order."""

    def __init__(self) -> None:
        self._seen: deque[tuple[datetime, str]] = deque()

    def add(self, kind: str, when: datetime) -> None:
        self._seen.append((when, kind))

    def counts(self, now: datetime) -> dict[str, int]:
        """How many of each kind happened within the hour before ``now``."""
        while self._seen and now - self._seen[0][0] > HOUR:
            self._seen.popleft()
        out: dict[str, int] = {}
        for _, kind in self._seen:
            out[kind] = out.get(kind, 0) + 1
        return out


def _time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


class OrchestratorMetrics:
    """The metrics of one orchestrator; see the module docstring."""

    def __init__(self, clock: Callable[[], datetime] = _utcnow) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._clock = clock
        ProcessCollector(registry=r)
        self.robot_cpu = Gauge(
            "casare_robot_cpu_percent", "CPU use of a robot's host.", ["robot"], registry=r
        )
        self.robot_memory = Gauge(
            "casare_robot_memory_percent", "Memory use of a robot's host.", ["robot"], registry=r
        )
        self.robot_silence = Gauge(
            "casare_robot_heartbeats_missed",
            "Heartbeat intervals a robot has been silent for.",
            ["robot"],
            registry=r,
        )
        self.connection_failures = Counter(
            "casare_connection_failures",
            "Refused authentications and robot connections lost.",
            ["kind"],
            registry=r,
        )
        for kind in ("refused", "lost"):
            self.connection_failures.labels(kind)
        self.failure_rate = Gauge(
            "casare_job_failure_rate_percent",
            "Failed jobs among those that ended in the last hour (cancelled not counted).",
            registry=r,
        )
        self.finished_last_hour = Gauge(
            "casare_jobs_finished_last_hour",
            "Jobs that ended in the last hour (cancelled not counted).",
            registry=r,
        )
        self.outcomes_window = HourWindow()  # final statuses of the last hour
        self.failures_window = HourWindow()  # connection failures of the last hour
        self.lost_robots: dict[str, datetime] = {}  # offline after missed heartbeats: when
        self.queue_depth = Gauge(
            "casare_queue_depth", "Queued jobs by priority.", ["priority"], registry=r
        )
        self.jobs = Gauge("casare_jobs", "Jobs by status.", ["status"], registry=r)
        self.running = Gauge("casare_jobs_running", "Jobs running on a robot.", registry=r)
        self.robots = Gauge("casare_robots", "Robots by status.", ["status"], registry=r)
        self.draining = Gauge("casare_draining", "1 while the orchestrator drains.", registry=r)
        self.outcomes = Counter(
            "casare_job_outcomes", "Jobs that reached a final status.", ["status"], registry=r
        )
        self.cells = Histogram(
            "casare_cell_duration_seconds",
            "Durations of executed cells.",
            ["status"],
            buckets=_CELL_BUCKETS,
            registry=r,
        )
        self.heartbeat_misses = Counter(
            "casare_heartbeat_misses",
            "Robots marked offline after missing their heartbeats.",
            registry=r,
        )
        self.dispatch_latency = Histogram(
            "casare_dispatch_latency_seconds",
            "From a job being eligible to a robot accepting it.",
            buckets=_DISPATCH_BUCKETS,
            registry=r,
        )
        for status in JobStatus:
            if status.finished:
                self.outcomes.labels(status.value)
        self._cell_children: dict[Any, Any] = {}  # status -> its histogram (labels() is slow)

    def observe(self, kind: EventKind, data: EventData) -> None:
        """Count one published event."""
        if kind is EventKind.JOB_FINISHED and isinstance(data, JobEvent):
            self.outcomes.labels(data.job.status.value).inc()
            self.outcomes_window.add(data.job.status.value, self._clock())
        elif kind is EventKind.CELL_FINISHED and isinstance(data, CellEvent):
            child = self._cell_children.get(data.status)
            if child is None:
                child = self._cell_children[data.status] = self.cells.labels(data.status.value)
            child.observe(data.duration_s)
        elif kind is EventKind.ROBOT_OFFLINE and isinstance(data, RobotEvent):
            if data.reason == "missed_heartbeats":
                self.heartbeat_misses.inc()
                self.lost_robots[data.robot.robot_id] = self._clock()
        elif kind is EventKind.ROBOT_ONLINE and isinstance(data, RobotEvent):
            self.lost_robots.pop(data.robot.robot_id, None)
        elif kind is EventKind.JOB_STARTED and isinstance(data, JobEvent):
            job = data.job
            eligible = _time(job.eligible_at)
            started = _time(job.accepted_at) or _time(job.assigned_at)
            if eligible is not None and started is not None:
                self.dispatch_latency.observe(max(0.0, (started - eligible).total_seconds()))

    def connection_failed(self, kind: str) -> None:
        """Count a connection failure: ``refused`` (an authentication failed, HTTP or
        WebSocket) or ``lost`` (a robot's connection dropped without a close, or went silent
        past its missed heartbeats)."""
        self.connection_failures.labels(kind).inc()
        self.failures_window.add(kind, self._clock())

    def connection_failures_last_hour(self) -> dict[str, int]:
        """Connection failures of the last hour by kind (``refused``, ``lost``)."""
        counts = self.failures_window.counts(self._clock())
        return {kind: counts.get(kind, 0) for kind in ("refused", "lost")}

    def outcomes_last_hour(self) -> tuple[int, int]:
        """(jobs that ended in the last hour, cancelled ones not counted; those that failed,
        timed out or died)."""
        counts = self.outcomes_window.counts(self._clock())
        ended = sum(n for status, n in counts.items() if status != JobStatus.CANCELLED.value)
        failed = sum(counts.get(status.value, 0) for status in FAILED_STATUSES)
        return ended, failed

    def failure_rate_percent(self) -> float | None:
        """Failed jobs among those that ended in the last hour, in percent (None: none)."""
        ended, failed = self.outcomes_last_hour()
        return 100.0 * failed / ended if ended else None

    def robot_heartbeats_missed(
        self, robot: Robot, *, interval_s: float, misses: int
    ) -> int | None:
        """Heartbeat intervals ``robot`` has been silent for: for a robot online (or busy,
        draining), from its last heartbeat; for one marked offline after missing its
        heartbeats within the last hour, at least ``misses``; None for a robot that left
        (disconnected) or was lost over an hour ago."""
        now = self._clock()
        age = (now - robot.last_heartbeat).total_seconds() if robot.last_heartbeat else None
        missed = heartbeats_missed(age, interval_s)
        if robot.status is not RobotStatus.OFFLINE:
            return missed
        lost = self.lost_robots.get(robot.robot_id)
        if lost is None or now - lost > HOUR:
            return None
        return max(misses, missed or 0)

    def render(
        self,
        *,
        depth: Mapping[Priority, int],
        counts: Mapping[JobStatus, int],
        robots: list[Robot],
        draining: bool,
        heartbeat_interval_s: float = 2.0,
        missed_heartbeats: int = 3,
    ) -> bytes:
        """The Prometheus text exposition, with the gauges set from the live state."""
        self.robot_cpu.clear()
        self.robot_memory.clear()
        self.robot_silence.clear()
        for robot in robots:
            missed = self.robot_heartbeats_missed(
                robot, interval_s=heartbeat_interval_s, misses=missed_heartbeats
            )
            if missed is not None:
                self.robot_silence.labels(robot.robot_id).set(missed)
            if robot.status is RobotStatus.OFFLINE:
                continue
            if robot.cpu_percent is not None:
                self.robot_cpu.labels(robot.robot_id).set(robot.cpu_percent)
            if robot.memory_percent is not None:
                self.robot_memory.labels(robot.robot_id).set(robot.memory_percent)
        ended, _ = self.outcomes_last_hour()
        self.finished_last_hour.set(ended)
        self.failure_rate.set(self.failure_rate_percent() or 0.0)
        for priority in Priority:
            self.queue_depth.labels(priority.value).set(depth.get(priority, 0))
        for status in JobStatus:
            self.jobs.labels(status.value).set(counts.get(status, 0))
        self.running.set(counts.get(JobStatus.RUNNING, 0))
        for robot_status in RobotStatus:
            self.robots.labels(robot_status.value).set(
                sum(1 for robot in robots if robot.status is robot_status)
            )
        self.draining.set(1 if draining else 0)
        return generate_latest(self.registry)


_ALERTS: Final = (
    # (thresholds field, alert name, PromQL of the figure, what it is, unit)
    ("queue_depth", "CasareQueueDepth", "sum(casare_queue_depth)", "queued jobs", ""),
    (
        "robot_cpu_percent",
        "CasareRobotCpu",
        "max by (robot) (casare_robot_cpu_percent)",
        "robot {{ $labels.robot }} CPU",
        " %",
    ),
    (
        "robot_memory_percent",
        "CasareRobotMemory",
        "max by (robot) (casare_robot_memory_percent)",
        "robot {{ $labels.robot }} memory",
        " %",
    ),
    (
        "failure_rate_percent",
        "CasareJobFailureRate",
        "max(casare_job_failure_rate_percent)",
        "failed jobs among those that ended in the last hour",
        " %",
    ),
    (
        "heartbeats_missed",
        "CasareHeartbeatsMissed",
        "max by (robot) (casare_robot_heartbeats_missed)",
        "heartbeats robot {{ $labels.robot }} missed",
        "",
    ),
    (
        "connection_failures_per_hour",
        "CasareConnectionFailures",
        "sum(increase(casare_connection_failures_total[1h]))",
        "connection failures (refused tokens, robots lost) in the last hour",
        "",
    ),
)


def alert_rules(thresholds: Thresholds) -> dict[str, Any]:
    """Prometheus alerting rules for ``thresholds`` (docs/alerts.rules.yml holds those of the
    runbook's defaults): per figure, a ``warning`` and a ``critical`` alert, labelled with
    the thresholds field (``figure``) they come from."""
    rules: list[dict[str, Any]] = []
    for field, name, expr, what, unit in _ALERTS:
        limit: Limit = getattr(thresholds, field)
        op = ">" if limit.strict else ">="
        for severity, bound in (("warning", limit.warn), ("critical", limit.critical)):
            rules.append(
                {
                    "alert": f"{name}{severity.capitalize()}",
                    "expr": f"{expr} {op} {bound:g}",
                    "for": "1m",
                    "labels": {"severity": severity, "figure": field},
                    "annotations": {
                        "summary": f"{what} {op} {bound:g}{unit} ({severity})",
                        "value": "{{ $value }}",
                    },
                }
            )
    return {"groups": [{"name": "casare_nb", "rules": rules}]}
