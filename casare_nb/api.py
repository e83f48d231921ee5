"""The orchestrator's HTTP API models and its runtime file: what crosses the HTTP boundary.

Pure pydantic, no I/O framework: the server (:mod:`casare_nb.orchestrator.http`, FastAPI)
and the client (:mod:`casare_nb.client`, httpx) both import this module, so neither pulls in
the other's library. Models are named by what they ask or answer (``SubmitJob``,
``RerunJob``, ``DrainRequest`` ...); jobs and robots travel as the domain's
:class:`~casare_nb.core.models.Job` and :class:`~casare_nb.core.models.Robot`.

Every error response is ``{"detail": "<one line>"}`` with its HTTP status (:class:`ErrorBody`).
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from casare_nb.core.models import Priority, ResumePlan, RobotStatus, RunStatus
from casare_nb.core.params import ParamSchema
from casare_nb.core.text import unicode_problem
from casare_nb.core.thresholds import Level, Thresholds
from casare_nb.core.tokens import DEFAULT_ROLE, TokenRole
from casare_nb.core.triggers import JobFields, Schedule, ScheduleFields, Trigger, TriggerFields

__all__ = [
    "DEFAULT_HTTP_PORT",
    "RUNTIME_FILE",
    "TOKEN_NAME_PATTERN",
    "ConnectionStatus",
    "CreateToken",
    "DrainRequest",
    "DrainResult",
    "ErrorBody",
    "FailureStatus",
    "FireInfo",
    "Health",
    "Maintenance",
    "NewSchedule",
    "NewTrigger",
    "OrchestratorStatus",
    "QueueStatus",
    "RerunJob",
    "RobotStatusLine",
    "RuntimeInfo",
    "ScheduleInfo",
    "ServerInfo",
    "Status",
    "SubmitJob",
    "TokenCreated",
    "TokenInfo",
    "TriggerInfo",
    "UpcomingFire",
    "WorkflowInfo",
    "pid_alive",
    "read_runtime_file",
    "runtime_file_path",
]

DEFAULT_HTTP_PORT: Final = 8766
RUNTIME_FILE: Final = "orchestrator.json"
"""Written in the state directory by a running orchestrator (mode 0600), removed on stop."""
TOKEN_NAME_PATTERN: Final = r"^[A-Za-z0-9._-]{1,64}$"


class _ValidText(BaseModel):
    """Refuses a request holding text that is not valid Unicode (a lone surrogate, which
    ``json.loads`` makes from ``"\\ud800"``): nothing could store it."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        where = unicode_problem(data)
        if where is not None:
            raise ValueError(f"text at {where} is not valid Unicode (a lone surrogate)")
        return data


class _Request(_ValidText):
    model_config = ConfigDict(extra="forbid")


class SubmitJob(JobFields, _ValidText):
    """``POST /api/jobs``: queue a run of a workflow.

    ``workflow`` is relative to the orchestrator's workflows directory (an absolute path must
    lie inside it). ``parameters`` are typed JSON values; ``raw_parameters`` are strings
    coerced to the declared types, as ``-p NAME VALUE`` does on the command line.
    """

    workflow: str = Field(min_length=1, description="Notebook path, relative to the workflows dir.")
    max_robot_losses: int = Field(
        default=3, ge=0, le=100, description="Attempts lost with their robot before it is dead."
    )


class NewSchedule(ScheduleFields, _ValidText):
    """``POST /api/schedules``: run a workflow on a timetable (fields: see the base)."""

    workflow: str = Field(min_length=1, description="Notebook path, relative to the workflows dir.")


class ScheduleInfo(BaseModel):
    """A schedule with its next due times (none while paused)."""

    schedule: Schedule
    next_fire_times: list[datetime] = Field(default_factory=list)
    last_due_at: datetime | None = None


class UpcomingFire(BaseModel):
    """One coming due time of a schedule (``GET /api/schedules/upcoming``)."""

    due_at: datetime
    schedule_id: str
    workflow_path: str
    timezone: str


class FireInfo(BaseModel):
    """A due time that fired, and what came of it (``submitted``, ``skipped: ...``)."""

    schedule_id: str
    due_at: datetime
    fired_at: datetime
    job_id: str | None
    outcome: str


class NewTrigger(TriggerFields, _ValidText):
    """``POST /api/triggers``: an event that submits ``workflow`` (fields: see the base)."""

    workflow: str = Field(min_length=1, description="Notebook path, relative to the workflows dir.")


class TriggerInfo(BaseModel):
    """A trigger, with its URL if it is a webhook."""

    trigger: Trigger
    url: str | None = None


class RerunJob(_Request):
    """``POST /api/jobs/{id}/rerun``: a new attempt of a finished job.

    ``from_failed`` resumes from the last checkpoint before the failed cell; false starts
    over. ``parameters`` / ``raw_parameters`` change values for the new attempt.
    """

    from_failed: bool = True
    parameters: dict[str, Any] | None = None
    raw_parameters: dict[str, str] | None = None
    cell_sources: dict[str, str] | None = Field(
        default=None,
        description="New source for code cells of the workflow, by cell id: written into the "
        "workflow notebook before the re-run (the analyst's fix, e.g. from a debug notebook).",
    )


class DebugBundle(BaseModel):
    """``GET /api/jobs/{id}/debug``: what a debug kernel needs to hold a failed job's
    namespace as it was before its failed cell (``plan.start``): the notebook (the
    workflow as it is now, parameterised, with the failed attempt's outputs carried), the
    plan, the checkpoint manifests it restores and the blobs they name (``GET
    /api/blobs/{sha256}``). Secret parameters are not sent: ``secret_names`` are missing."""

    job_id: str
    attempt: int = Field(ge=1, description="The failed attempt whose checkpoints are used.")
    workflow_path: str
    kernel_name: str
    notebook: dict[str, Any]
    plan: ResumePlan
    manifests: dict[str, dict[str, Any]] = Field(default_factory=dict)
    blobs: list[str] = Field(default_factory=list)
    failed_cell_index: int = Field(ge=0, description="The cell the job failed at (plan.start).")
    failed_cell_id: str | None = None
    secret_names: list[str] = Field(default_factory=list)


class DrainRequest(_Request):
    """``POST /api/drain``: stop taking jobs, wait up to ``timeout_s`` for the running ones,
    then shut every robot down."""

    timeout_s: float = Field(default=60.0, ge=0, le=86_400)


class DrainResult(BaseModel):
    """What a drain came to: jobs that finished while waiting, jobs still unfinished when the
    timeout hit, robots told to shut down."""

    finished_jobs: list[str] = Field(default_factory=list)
    unfinished_jobs: list[str] = Field(default_factory=list)
    robots_shut_down: list[str] = Field(default_factory=list)
    cancelled: bool = Field(
        default=False, description="Undone while it waited (casare-nb drain --cancel)."
    )


class CreateToken(_Request):
    """``POST /api/tokens``: a new bearer token (for a robot, a monitor or a user)."""

    name: str = Field(pattern=TOKEN_NAME_PATTERN, description="Letters, digits, '.', '_', '-'.")
    role: TokenRole = Field(
        default=DEFAULT_ROLE,
        description="robot: connect as a robot only; user: submit, read, its own jobs; "
        "admin: everything.",
    )


class TokenCreated(BaseModel):
    """The new token, shown this once (only its hash is stored)."""

    name: str
    token: str
    role: TokenRole = DEFAULT_ROLE


class TokenInfo(BaseModel):
    """A token as ``GET /api/tokens`` lists it: never the token nor its hash."""

    name: str
    role: TokenRole | None = Field(
        default=None, description="None: created before roles; it acts as admin."
    )
    created_at: datetime
    revoked_at: datetime | None = None


class WorkflowInfo(BaseModel):
    """A workflow the orchestrator serves; ``GET /api/workflows/{path}`` adds its parameters."""

    path: str = Field(description="Relative to the workflows directory, with / separators.")
    parameters: ParamSchema | None = Field(
        default=None, description="What its parameters cell declares (one workflow only)."
    )


class ServerInfo(BaseModel):
    """``GET /api/info``."""

    version: str
    ws_url: str = Field(description="Where robots and monitors connect (same bearer tokens).")
    draining: bool
    protocol_version: int
    submissions_paused: bool = Field(
        default=False, description="An operator paused submissions (503 until unpaused)."
    )
    maintenance: bool = Field(
        default=False, description="Schedules and triggers are held for maintenance."
    )


class Maintenance(BaseModel):
    """``GET /api/maintenance``: whether schedules and triggers are held for maintenance."""

    on: bool
    since: datetime | None = Field(default=None, description="When maintenance began.")
    schedules_held: int = Field(default=0, description="Schedules not paused of their own.")
    triggers_held: int = Field(default=0, description="Triggers enabled of their own.")


class Health(BaseModel):
    """``GET /health`` (no token needed): for load balancers and probes. ``ready`` is what
    ``GET /health/ready`` answers 200 or 503 on: the database answers and no drain began."""

    status: Literal["ok", "draining"]
    ready: bool = Field(default=True, description="Takes submissions and dispatches jobs.")
    robots_online: int
    robots: dict[RobotStatus, int] = Field(
        default_factory=dict, description="Robots in every status (offline ones it knew)."
    )
    jobs: dict[RunStatus, int] = Field(description="Number of jobs in every status.")
    queue: dict[Priority, int] = Field(default_factory=dict, description="Queued jobs by priority.")


class OrchestratorStatus(BaseModel):
    """The orchestrator itself, in ``GET /status``."""

    version: str
    uptime_s: float = Field(description="Seconds since it started.")
    draining: bool
    submissions_paused: bool
    maintenance: bool = Field(description="Schedules and triggers held for maintenance.")
    storage_fault: str | None = Field(
        default=None, description="Why it cannot store what it acknowledges now (critical)."
    )
    heartbeat_interval_s: float
    store: str = Field(
        default="", description="Where the records are: a DuckDB file, or a PostgreSQL URL."
    )
    node_id: str | None = Field(
        default=None, description="This orchestrator among those sharing its store."
    )
    epoch: int | None = Field(
        default=None,
        description="Which change of hands made it the active one of its store (None: it "
        "shares its store with nobody).",
    )
    level: Level


class RobotStatusLine(BaseModel):
    """One robot in ``GET /status``: its load and figures, each with its level."""

    robot_id: str
    name: str
    status: RobotStatus
    running_jobs: int
    max_concurrent_jobs: int
    cpu_percent: float | None
    cpu_level: Level
    memory_percent: float | None
    memory_level: Level
    heartbeat_age_s: float | None = Field(description="Seconds since its last heartbeat.")
    heartbeats_missed: int | None = Field(
        description="Heartbeat intervals it has been silent for (None: left, not lost)."
    )
    heartbeat_level: Level
    level: Level


class QueueStatus(BaseModel):
    """Queued jobs, in ``GET /status``."""

    depth: int
    by_priority: dict[Priority, int]
    oldest_queued_age_s: float | None = Field(description="Seconds the oldest has waited.")
    level: Level


class FailureStatus(BaseModel):
    """Jobs that ended in the last hour (since the start, if later), in ``GET /status``."""

    finished_last_hour: int = Field(description="Ended, cancelled ones not counted.")
    failed_last_hour: int = Field(description="Failed, timed out or dead.")
    failure_rate_percent: float | None = Field(description="None when none ended.")
    level: Level


class ConnectionStatus(BaseModel):
    """Connection failures in the last hour (since the start, if later), in ``GET /status``."""

    refused_last_hour: int = Field(description="Failed authentications, HTTP and WebSocket.")
    lost_last_hour: int = Field(description="Robot connections dropped or gone silent.")
    failures_last_hour: int
    level: Level


class Status(BaseModel):
    """``GET /status`` (any valid token): the operator's one screen. ``level`` is the worst
    figure's; ``breaches`` says, one line each, which figures passed their thresholds."""

    at: datetime
    level: Level
    orchestrator: OrchestratorStatus
    robots: list[RobotStatusLine]
    queue: QueueStatus
    failures: FailureStatus
    connections: ConnectionStatus
    thresholds: Thresholds
    breaches: list[str] = Field(default_factory=list)


class ErrorBody(BaseModel):
    """Every error response: one line saying what was wrong."""

    detail: str


class RuntimeInfo(BaseModel):
    """``<state_dir>/orchestrator.json``: how local tools reach the running orchestrator.

    Holds a bearer token (created at start, revoked at stop), hence mode 0600."""

    pid: int
    version: str
    ws_url: str
    http_url: str
    token: str
    token_name: str
    state_dir: str
    workflows_dir: str
    started_at: datetime
    tls_cert: str | None = Field(default=None, description="Trust it to reach https/wss.")


def runtime_file_path(state_dir: str | os.PathLike[str] | None = None) -> Path:
    """The runtime file of ``state_dir`` (default ``$CASARE_HOME`` or ``./.casare``)."""
    root = Path(state_dir) if state_dir else Path(os.environ.get("CASARE_HOME") or ".casare")
    return root.absolute() / RUNTIME_FILE


def read_runtime_file(path: Path) -> RuntimeInfo | None:
    """The runtime file's content; None if it does not exist or cannot be parsed."""
    try:
        data = json.loads(path.read_text("utf-8"))
        return RuntimeInfo.model_validate(data)
    except (OSError, ValueError, ValidationError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (the runtime file's owner)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True
