"""``GET /status``: the operator's one screen (``casare-nb status``), for any valid token.

Every figure of the runbook's table is judged against the orchestrator's
:class:`~casare_nb.core.thresholds.Thresholds` (its settings' ``thresholds:``, else the
runbook's defaults): the queue (depth, by priority, the oldest queued job's wait), each robot
(CPU, memory, heartbeats missed), the jobs that ended in the last hour (failure rate) and the
connection failures of the last hour (refused authentications, robot connections lost). The
answer's ``level`` is the worst; ``breaches`` names, one line each, what passed its limit.
Besides the table: a storage fault is critical; a drain, paused submissions, maintenance
and jobs queued with no robot online are warnings.
"""

from fastapi import APIRouter

from casare_nb import __version__
from casare_nb.api import (
    ConnectionStatus,
    FailureStatus,
    OrchestratorStatus,
    QueueStatus,
    RobotStatusLine,
    Status,
)
from casare_nb.core.models import Priority, Robot, RobotStatus
from casare_nb.core.thresholds import Level, Limit, worst
from casare_nb.orchestrator.http.deps import AUTH_ERRORS, Caller, Orch
from casare_nb.orchestrator.orchestrator import Orchestrator

__all__ = ["build_status", "router"]

router = APIRouter(responses=AUTH_ERRORS, tags=["status"])


class _Breaches:
    """The lines of ``Status.breaches``."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def judge(self, what: str, value: float | None, limit: Limit, unit: str = "") -> Level:
        """The level of ``value`` against ``limit``; a line when it is not OK."""
        level = limit.level(value)
        if level is not Level.OK and value is not None:
            bound = limit.critical if level is Level.CRITICAL else limit.warn
            op = ">" if limit.strict else ">="
            self.lines.append(f"{level.value}: {what} {value:g}{unit} {op} {bound:g}{unit}")
        return level

    def say(self, level: Level, line: str) -> Level:
        self.lines.append(f"{level.value}: {line}")
        return level


def _robot_line(orch: Orchestrator, robot: Robot, breaches: _Breaches) -> RobotStatusLine:
    limits = orch.thresholds
    now = orch.now()
    age = (now - robot.last_heartbeat).total_seconds() if robot.last_heartbeat else None
    missed = orch.metrics.robot_heartbeats_missed(
        robot, interval_s=orch.heartbeat_interval_s, misses=orch.missed_heartbeats
    )
    online = robot.status is not RobotStatus.OFFLINE
    who = f"robot {robot.robot_id}"
    cpu = robot.cpu_percent if online else None
    memory = robot.memory_percent if online else None
    cpu_level = breaches.judge(f"{who} CPU", cpu, limits.robot_cpu_percent, " %")
    memory_level = breaches.judge(f"{who} memory", memory, limits.robot_memory_percent, " %")
    heartbeat_level = breaches.judge(f"{who} heartbeats missed", missed, limits.heartbeats_missed)
    return RobotStatusLine(
        robot_id=robot.robot_id,
        name=robot.name,
        status=robot.status,
        running_jobs=robot.running_jobs,
        max_concurrent_jobs=robot.max_concurrent_jobs,
        cpu_percent=robot.cpu_percent,
        cpu_level=cpu_level,
        memory_percent=robot.memory_percent,
        memory_level=memory_level,
        heartbeat_age_s=None if age is None else round(age, 3),
        heartbeats_missed=missed,
        heartbeat_level=heartbeat_level,
        level=worst((cpu_level, memory_level, heartbeat_level)),
    )


def build_status(orch: Orchestrator) -> Status:
    """The status of ``orch`` now (on its event loop: reads its live state only)."""
    limits = orch.thresholds
    now = orch.now()
    breaches = _Breaches()

    fault = orch.storage_fault()
    orch_levels = [Level.OK]
    if fault is not None:
        orch_levels.append(breaches.say(Level.CRITICAL, f"storage fault: {fault}"))
    if orch.draining:
        orch_levels.append(breaches.say(Level.WARN, "the orchestrator is draining"))
    elif orch.submissions_paused:
        orch_levels.append(breaches.say(Level.WARN, "submissions are paused"))
    if orch.maintenance is not None:
        orch_levels.append(breaches.say(Level.WARN, "maintenance: schedules and triggers held"))
    orchestrator = OrchestratorStatus(
        version=__version__,
        uptime_s=round(max(0.0, (now - orch.started_at).total_seconds()), 3),
        draining=orch.draining,
        submissions_paused=orch.submissions_paused,
        maintenance=orch.maintenance is not None,
        storage_fault=fault,
        heartbeat_interval_s=orch.heartbeat_interval_s,
        store=str(orch.stores.where),
        node_id=orch.role.node_id if orch.role.shared else None,
        epoch=orch.role.epoch,
        level=worst(orch_levels),
    )

    robots = [_robot_line(orch, robot, breaches) for robot in orch.robots()]

    queued = orch.job_manager.book.live.queued()
    by_priority = {p: 0 for p in Priority}
    for job in queued:
        by_priority[job.priority] += 1
    oldest = min((job.created_at for job in queued), default=None)
    depth = len(queued)
    queue_levels = [breaches.judge("queue depth", depth, limits.queue_depth)]
    if depth and not any(r.status is not RobotStatus.OFFLINE for r in robots):
        queue_levels.append(breaches.say(Level.WARN, f"{depth} jobs queued and no robot online"))
    queue = QueueStatus(
        depth=depth,
        by_priority=by_priority,
        oldest_queued_age_s=None if oldest is None else round((now - oldest).total_seconds(), 3),
        level=worst(queue_levels),
    )

    ended, failed = orch.metrics.outcomes_last_hour()
    rate = orch.metrics.failure_rate_percent()
    failures = FailureStatus(
        finished_last_hour=ended,
        failed_last_hour=failed,
        failure_rate_percent=None if rate is None else round(rate, 2),
        level=breaches.judge(
            "job failure rate (last hour)",
            None if rate is None else round(rate, 2),
            limits.failure_rate_percent,
            " %",
        ),
    )

    lost = orch.metrics.connection_failures_last_hour()
    total = lost["refused"] + lost["lost"]
    connections = ConnectionStatus(
        refused_last_hour=lost["refused"],
        lost_last_hour=lost["lost"],
        failures_last_hour=total,
        level=breaches.judge(
            "connection failures (last hour)", total, limits.connection_failures_per_hour
        ),
    )

    level = worst(
        (
            orchestrator.level,
            *(r.level for r in robots),
            queue.level,
            failures.level,
            connections.level,
        )
    )
    return Status(
        at=now,
        level=level,
        orchestrator=orchestrator,
        robots=robots,
        queue=queue,
        failures=failures,
        connections=connections,
        thresholds=limits,
        breaches=breaches.lines,
    )


@router.get("/status", response_model=Status)
async def status(_: Caller, orch: Orch) -> Status:
    """The operator's one screen, judged against the orchestrator's thresholds (any valid
    token): the orchestrator, each robot, the queue by priority, the last hour's failures
    and connection failures, the thresholds, the overall level and what breached."""
    return build_status(orch)
