"""What the history shows at a glance: aggregates computed where the rows are (the store),
so a view over a large history receives a few rows, never all of them.

Every aggregate counts a run once, by its latest attempt (a run that failed then completed
on a re-run counts as completed). Days are UTC calendar days. Pure: pydantic only, no I/O.
"""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field

from casare_nb.core.models import RunStatus, TriggerRef

__all__ = [
    "FAILED_STATUSES",
    "MANUAL",
    "CellDurations",
    "DailyRuns",
    "RunGroup",
    "trigger_label",
]

FAILED_STATUSES: frozenset[RunStatus] = frozenset(
    {RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.DEAD}
)
"""The outcomes counted as failures (a cancelled run is neither a success nor a failure)."""


MANUAL = "manual"
"""The ``trigger`` filter that selects the runs a person started (no schedule or trigger)."""


def trigger_label(trigger: TriggerRef | None) -> str | None:
    """How the history names what started a run: ``"schedule:nightly"``, ``"webhook:h1"``;
    None for a run a person started."""
    return None if trigger is None else f"{trigger.kind.value}:{trigger.id}"


class DailyRuns(BaseModel):
    """Runs of one workflow started on one day, by outcome."""

    workflow_path: str
    day: date
    runs: int = Field(ge=0)
    completed: int = Field(ge=0)
    failed: int = Field(ge=0, description="Failed, timed out or dead.")

    @property
    def success_rate(self) -> float | None:
        """Completed among the finished ones that succeeded or failed; None when none did."""
        decided = self.completed + self.failed
        return None if decided == 0 else self.completed / decided


class RunGroup(BaseModel):
    """The runs of one workflow started one way (by hand, or by one schedule or trigger), so
    a schedule firing every minute is one line, not a thousand."""

    workflow_path: str
    trigger: str | None = Field(description="kind:id of the schedule or trigger; None: by hand.")
    runs: int = Field(ge=0)
    completed: int = Field(ge=0)
    failed: int = Field(ge=0)
    last_run_id: str
    last_status: RunStatus
    last_started_at: datetime


class CellDurations(BaseModel):
    """How long the cells of one workflow take: executed cells that ended ok (replayed
    ones left out), over its runs."""

    workflow_path: str
    cells: int = Field(ge=0)
    p50_s: float = Field(ge=0)
    p95_s: float = Field(ge=0)
    max_s: float = Field(ge=0)
