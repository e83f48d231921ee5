"""The dashboard's view models (plain frozen dataclasses: what a table row, the queue, a
running job, the connection show) and the pure functions that build or format them, apart
from :class:`~casare_nb.widgets.state.DashboardState`, which keeps the state they are read
from. Colours follow the orchestrator's thresholds; the defaults here are the runbook's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any, Final

from casare_nb.core.history import DailyRuns
from casare_nb.core.models import Priority, RobotStatus, RunStatus
from casare_nb.core.thresholds import Level, Limit, Thresholds

__all__ = [
    "DEFAULT_THRESHOLDS",
    "FIRST_LINE_CHARS",
    "QUEUE_CRITICAL_DEPTH",
    "QUEUE_WARN_DEPTH",
    "RESOURCE_CRITICAL_PERCENT",
    "RESOURCE_WARN_PERCENT",
    "Change",
    "ConnectionState",
    "ConnectionView",
    "DailySeries",
    "FinishedView",
    "QueueView",
    "RobotView",
    "RunningView",
    "daily_series",
    "describe_failure",
    "first_line",
    "format_age",
    "percent_level",
    "queue_level",
    "source_lines",
    "workflow_name",
]

# -- thresholds ------------------------------------------------------------------------------
# The dashboard colours by the orchestrator's thresholds (``GET /status``, read with each
# snapshot; :meth:`DashboardState.set_thresholds`); until it has them, by the runbook's.

DEFAULT_THRESHOLDS: Final = Thresholds()
"""The runbook's thresholds, used until the orchestrator's are read."""
RESOURCE_WARN_PERCENT: Final = DEFAULT_THRESHOLDS.robot_cpu_percent.warn
"""A robot's CPU or memory use at or above this is a warning (the runbook's default)."""
RESOURCE_CRITICAL_PERCENT: Final = DEFAULT_THRESHOLDS.robot_cpu_percent.critical
"""A robot's CPU or memory use at or above this is critical (the runbook's default)."""
QUEUE_WARN_DEPTH: Final = int(DEFAULT_THRESHOLDS.queue_depth.warn)
"""More queued jobs than this is a warning (the runbook's default)."""
QUEUE_CRITICAL_DEPTH: Final = int(DEFAULT_THRESHOLDS.queue_depth.critical)
"""More queued jobs than this is critical (the runbook's default)."""

FIRST_LINE_CHARS: Final = 80
"""A cell's first line is cut to this many characters."""


def percent_level(value: float | None, limit: Limit | None = None) -> Level:
    """A CPU or memory percentage against ``limit`` (default: the runbook's, warn at 80 and
    critical at 95, both inclusive); unknown is ok."""
    return (limit or DEFAULT_THRESHOLDS.robot_cpu_percent).level(value)


def queue_level(depth: int, limit: Limit | None = None) -> Level:
    """A queue depth against ``limit`` (default: the runbook's, warn above 50, critical
    above 100)."""
    return (limit or DEFAULT_THRESHOLDS.queue_depth).level(depth)


def format_age(seconds: float | None) -> str:
    """``42s``, ``3m 05s``, ``2h 10m``, ``3d 4h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def workflow_name(path: str, known: Iterable[str] = ()) -> str:
    """How a workflow is shown: the longest of the ``known`` relative paths (the ones the
    orchestrator serves) that ``path`` ends with, else its file name."""
    best = ""
    for rel in known:
        if (path == rel or path.endswith("/" + rel)) and len(rel) > len(best):
            best = rel
    return best or PurePosixPath(path).name or path


def first_line(source: str | Sequence[str]) -> str:
    """The first line of a cell's source that is not blank, stripped and cut to
    :data:`FIRST_LINE_CHARS`."""
    text = "".join(source) if not isinstance(source, str) else source
    for line in text.splitlines():
        stripped = line.strip()
        if stripped:
            if len(stripped) > FIRST_LINE_CHARS:
                return stripped[: FIRST_LINE_CHARS - 1] + "…"
            return stripped
    return ""


def source_lines(notebook: Mapping[str, Any]) -> dict[int, str]:
    """Index in the notebook -> first line, of every code cell of ``notebook`` (nbformat)."""
    cells = notebook.get("cells")
    out: dict[int, str] = {}
    if not isinstance(cells, list):
        return out
    for index, cell in enumerate(cells):
        if isinstance(cell, Mapping) and cell.get("cell_type") == "code":
            out[index] = first_line(cell.get("source", ""))
    return out


# -- view models -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RobotView:
    """One robot as the robots table shows it."""

    robot_id: str
    name: str
    environment: str
    tags: tuple[str, ...]
    status: RobotStatus
    running: int
    capacity: int
    cpu_percent: float | None
    cpu_level: Level
    memory_percent: float | None
    memory_level: Level
    heartbeat_age_s: float | None

    @property
    def load(self) -> str:
        return f"{self.running}/{self.capacity}"

    @property
    def level(self) -> Level:
        """The worse of CPU and memory; offline robots are critical."""
        if self.status is RobotStatus.OFFLINE:
            return Level.CRITICAL
        levels = (self.cpu_level, self.memory_level)
        if Level.CRITICAL in levels:
            return Level.CRITICAL
        return Level.WARN if Level.WARN in levels else Level.OK


@dataclass(frozen=True)
class QueueView:
    """The queue: depth by priority (critical first), the oldest waiting job, the level."""

    depth: int
    by_priority: tuple[tuple[Priority, int], ...]
    oldest_age_s: float | None
    oldest_job_id: str | None
    level: Level
    submissions_paused: bool
    draining: bool
    approximate: bool = False
    """More jobs queued than tracked one by one: the oldest's age is a lower bound."""


@dataclass(frozen=True)
class RunningView:
    """A running job: cell i of n done (the progress fraction), the first line of the cell
    running now, elapsed time."""

    job_id: str
    workflow: str
    robot_id: str | None
    attempt: int
    cells_done: int
    cells_total: int
    fraction: float
    first_line: str
    elapsed_s: float

    @property
    def label(self) -> str:
        """``cell 3/10 · df = load(day) · 1m 02s``: cells done of the attempt's cells, the
        first line of the cell running now, time since the job started."""
        total = str(self.cells_total) if self.cells_total else "?"
        parts = [f"cell {self.cells_done}/{total}"]
        if self.first_line:
            parts.append(self.first_line)
        parts.append(format_age(self.elapsed_s))
        return " · ".join(parts)


@dataclass(frozen=True)
class FinishedView:
    """A job that finished lately."""

    job_id: str
    workflow: str
    status: RunStatus
    robot_id: str | None
    finished_at: datetime
    age_s: float
    error: str | None


class ConnectionState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    UNREACHABLE = "unreachable"
    REFUSED = "refused"


@dataclass(frozen=True)
class ConnectionView:
    """The link to the orchestrator, as one line for the status bar."""

    state: ConnectionState
    message: str
    url: str | None = None
    retry_in_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.state is ConnectionState.CONNECTED


@dataclass(frozen=True)
class Change:
    """What a change touched (``parts``: robots, queue, running, finished, connection,
    history, log) and, for an event, when the orchestrator published it."""

    parts: frozenset[str]
    published_at: datetime | None = None
    kind: str | None = None


@dataclass(frozen=True)
class DailySeries:
    """Runs per day for the chart: one entry per day, oldest first, days without runs 0."""

    days: tuple[date, ...]
    completed: tuple[int, ...]
    failed: tuple[int, ...]
    success_rate: tuple[float | None, ...]
    """Completed / (completed + failed) in percent; None on a day with neither."""

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(d.strftime("%m-%d") for d in self.days)


def daily_series(
    rows: Iterable[DailyRuns], *, days: int, today: date, workflow: str | None = None
) -> DailySeries:
    """``rows`` (per workflow per day) summed per day over the ``days`` days up to ``today``,
    for ``workflow`` only if given."""
    span = [today - timedelta(days=days - 1 - i) for i in range(days)]
    completed: Counter[date] = Counter()
    failed: Counter[date] = Counter()
    for row in rows:
        if workflow is not None and row.workflow_path != workflow:
            continue
        completed[row.day] += row.completed
        failed[row.day] += row.failed
    rates: list[float | None] = []
    for day in span:
        decided = completed[day] + failed[day]
        rates.append(None if decided == 0 else 100.0 * completed[day] / decided)
    return DailySeries(
        days=tuple(span),
        completed=tuple(completed[d] for d in span),
        failed=tuple(failed[d] for d in span),
        success_rate=tuple(rates),
    )


def describe_failure(
    where: str, reason: str, status: int | None, retry_in_s: float | None = None
) -> ConnectionView:
    """One line for a failed link to the orchestrator at ``where``: HTTP 401/403 is a token
    refused, no answer (``status`` None) an unreachable orchestrator, another HTTP status
    a failure it answered."""
    text = " ".join(reason.split())
    for prefix in (f"cannot reach the orchestrator at {where}: ", f"the orchestrator at {where} "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if status in (401, 403):
        message = f"token refused by the orchestrator at {where}: {text}"
        return ConnectionView(ConnectionState.REFUSED, message, where, retry_in_s)
    if status is None:
        message = f"orchestrator unreachable at {where}: {text}"
    else:
        message = f"orchestrator at {where} failed (HTTP {status}): {text}"
    return ConnectionView(ConnectionState.UNREACHABLE, message, where, retry_in_s)
