"""Schedules and triggers as data: what starts a job besides a person, and how it is recorded.

Pure pydantic v2 models and parsing; no I/O, no scheduler library. The orchestrator keeps
these rows in DuckDB (``store/triggers.py``), turns schedules into APScheduler jobs
(``orchestrator/triggers/schedules.py``, the one module importing apscheduler) and records on every
job it submits for them a :class:`TriggerRef`: which schedule or trigger, and which due
time, delivery, file or previous job.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from casare_nb.core.errors import CasareError
from casare_nb.core.models import JobTimeouts, Priority, TriggerKind, TriggerRef

__all__ = [
    "FILE_PARAMETER",
    "PREVIOUS_RUN_PARAMETER",
    "Declarations",
    "JobTemplate",
    "Schedule",
    "ScheduleFields",
    "ScheduleKind",
    "Trigger",
    "TriggerError",
    "TriggerFields",
    "TriggerKind",
    "TriggerRef",
    "parse_duration",
]

FILE_PARAMETER: Final = "file_path"
"""The parameter a file-watch trigger fills with the new file's path (by default)."""
PREVIOUS_RUN_PARAMETER: Final = "previous_run_id"
"""The parameter a chained workflow receives the previous run's id in, if it declares it."""


class TriggerError(CasareError):
    """A schedule or trigger that cannot be made as given (one line: what and why)."""


class ScheduleKind(StrEnum):
    """How a schedule's due times are computed (APScheduler's cron, interval, date)."""

    CRON = "cron"
    INTERVAL = "interval"
    DATE = "date"  # once


class JobFields(BaseModel):
    """The job fields every way of submitting shares (``submit``, schedules, triggers)."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = Field(default_factory=dict, description="Typed values.")
    raw_parameters: dict[str, str] = Field(
        default_factory=dict, description="Text values, coerced to the declared types."
    )
    priority: Priority = Priority.NORMAL
    tags: list[str] = Field(default_factory=list, description="The robot must have all of them.")
    environment: str | None = Field(default=None, description="None: any environment.")
    max_retries: int = Field(default=0, ge=0, le=100)
    timeouts: JobTimeouts = Field(
        default_factory=JobTimeouts,
        description="Execution limits in seconds: cell_s (each cell), run_s (the whole run); "
        "each > 0 and at most 7 days, None for none.",
    )


class JobTemplate(JobFields):
    """What a schedule or trigger submits: the same fields as ``submit``.

    ``parameters`` are typed values (JSON), ``raw_parameters`` strings as given on the
    command line (parsed against the workflow's schema, like ``submit -p``)."""

    workflow_path: str


class Schedule(JobTemplate):
    """A workflow run on a timetable: cron, every N seconds, or once at a date.

    Misfires (due times passed while the orchestrator was down or busy): with ``coalesce``
    (the default) every missed due time makes one run; without, each one makes its own run.
    A due time later than ``misfire_grace_s`` is skipped (None: however late). A fire while
    ``max_instances`` runs of this schedule are still queued or running is skipped."""

    model_config = ConfigDict(frozen=False)

    schedule_id: str
    kind: ScheduleKind
    cron: str | None = None
    every_s: float | None = Field(default=None, gt=0)
    at: datetime | None = None  # naive: wall time in ``timezone``
    timezone: str = "UTC"
    coalesce: bool = True
    misfire_grace_s: float | None = Field(default=None, ge=0)
    max_instances: int = Field(default=1, ge=1)
    paused: bool = False
    created_at: datetime
    origin: str = "api"  # api, cli, or metadata:<workflow file>

    @field_validator("cron")
    @classmethod
    def _one_line_cron(cls, value: str | None) -> str | None:
        return None if value is None else " ".join(value.split())


class Trigger(JobTemplate):
    """An event that submits a workflow: a webhook delivery, a new file, a finished job."""

    model_config = ConfigDict(frozen=False)

    trigger_id: str
    kind: TriggerKind
    secret_env: str | None = None  # webhook: the orchestrator's env var holding the secret
    watch_path: str | None = None  # file watch: the directory watched
    pattern: str = "*"  # file watch: fnmatch pattern of the file names
    file_parameter: str = FILE_PARAMETER  # file watch: the parameter given the file path
    after_workflow: str | None = None  # chaining: the workflow whose jobs are watched
    enabled: bool = True
    created_at: datetime
    origin: str = "api"


class ScheduleFields(JobFields):
    """A schedule as a person writes it (API request, notebook metadata); exactly one of
    ``cron``, ``every`` and ``at``.

    ``cron``: five fields (``0 6 * * 1-5``). ``every``: ``90s``, ``15m``, ``1h30m``... ``at``:
    a date and time (``2026-12-01T09:00``), wall time in ``timezone`` unless it has an
    offset. Misfires: with ``coalesce`` (default) due times missed while the orchestrator
    was down make one run; runs later than ``misfire_grace`` are skipped (None: however
    late). A fire while ``max_instances`` runs of it are unfinished is skipped."""

    cron: str | None = None
    every: str | None = Field(default=None, description="A duration: 90s, 15m, 1h30m, 2d.")
    at: datetime | None = None
    timezone: str = Field(default="UTC", description="An IANA name: Europe/Berlin.")
    coalesce: bool = True
    misfire_grace: str | None = Field(default=None, description="A duration, or None.")
    max_instances: int = Field(default=1, ge=1, le=1000)


TriggerKindName = Literal["webhook", "file_watch", "on_success", "on_failure"]


class TriggerFields(JobFields):
    """A trigger as a person writes it (API request, notebook metadata).

    - ``webhook``: ``POST /hooks/{id}`` signed with the secret held in the orchestrator's
      environment variable ``secret_env``; the JSON body adds parameters.
    - ``file_watch``: a new file in ``path`` matching ``pattern`` submits the workflow with
      the file's path in parameter ``file_parameter``.
    - ``on_success`` / ``on_failure``: a job of the workflow that completes (fails) submits
      ``run``, passing ``previous_run_id`` and the recorded outputs it declares."""

    kind: TriggerKindName
    secret_env: str | None = None
    path: str | None = None
    pattern: str = "*"
    file_parameter: str = FILE_PARAMETER
    run: str | None = Field(default=None, description="Chaining: the workflow to run next.")


class Declarations(BaseModel):
    """What a workflow notebook declares in its metadata under ``"casare"``: its own
    schedules and triggers (relative paths are relative to the notebook's directory)."""

    model_config = ConfigDict(extra="forbid")

    schedules: list[ScheduleFields] = Field(default_factory=list)
    triggers: list[TriggerFields] = Field(default_factory=list)
    secrets: list[str] = Field(
        default_factory=list,
        description="Secret parameter names (read with the parameters cell; see params.py).",
    )


_DURATION: Final = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_UNIT_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """Seconds in ``15m``, ``1h30m``, ``90s``, ``2d``, ``500ms`` or a bare number of seconds.

    Raises :class:`TriggerError` for anything else, and for a duration that is not > 0."""
    given = text.strip()
    try:
        seconds = float(given)
    except ValueError:
        compact = re.sub(r"\s+", "", given)
        parts = list(_DURATION.finditer(compact))
        if not parts or "".join(m.group(0) for m in parts).lower() != compact.lower():
            raise TriggerError(
                f"invalid duration {text!r}: expected e.g. 90s, 15m, 1h30m, 2d"
            ) from None
        seconds = sum(float(m.group(1)) * _UNIT_S[m.group(2).lower()] for m in parts)
    if not seconds > 0 or seconds == float("inf"):
        raise TriggerError(f"invalid duration {text!r}: it must be more than 0 seconds")
    return seconds
