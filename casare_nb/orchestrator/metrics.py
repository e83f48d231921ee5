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
=================================== ==========================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from casare_nb.core.models import JobStatus, Priority, Robot, RobotStatus
from casare_nb.protocol import CellEvent, EventData, EventKind, JobEvent, RobotEvent

__all__ = ["CONTENT_TYPE", "OrchestratorMetrics"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

_CELL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_DISPATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


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

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
        elif kind is EventKind.CELL_FINISHED and isinstance(data, CellEvent):
            child = self._cell_children.get(data.status)
            if child is None:
                child = self._cell_children[data.status] = self.cells.labels(data.status.value)
            child.observe(data.duration_s)
        elif kind is EventKind.ROBOT_OFFLINE and isinstance(data, RobotEvent):
            if data.reason == "missed_heartbeats":
                self.heartbeat_misses.inc()
        elif kind is EventKind.JOB_STARTED and isinstance(data, JobEvent):
            job = data.job
            eligible = _time(job.eligible_at)
            started = _time(job.accepted_at) or _time(job.assigned_at)
            if eligible is not None and started is not None:
                self.dispatch_latency.observe(max(0.0, (started - eligible).total_seconds()))

    def render(
        self,
        *,
        depth: Mapping[Priority, int],
        counts: Mapping[JobStatus, int],
        robots: list[Robot],
        draining: bool,
    ) -> bytes:
        """The Prometheus text exposition, with the gauges set from the live state."""
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
