"""Domain models shared by every layer: runs, cells, their states.

Pure pydantic v2; no I/O. States are ``StrEnum`` so they read and store as plain text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any, TypedDict

from pydantic import BaseModel, ConfigDict, Field


class RunStatus(StrEnum):
    """Where a run (one attempt of it) stands."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    DEAD = "dead"

    @property
    def finished(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


class CellStatus(StrEnum):
    """How the execution of one cell ended."""

    OK = "ok"
    ERROR = "error"  # the cell raised
    TIMEOUT = "timeout"  # per-cell or whole-run timeout hit while this cell ran
    EXITED = "exited"  # the cell called sys.exit()
    KERNEL_DIED = "kernel_died"  # the kernel process went away during the cell
    CANCELLED = "cancelled"  # Ctrl-C / cancel while this cell ran


class RestoreMode(StrEnum):
    """How a resumed attempt rebuilt the state before its first cell."""

    NAMESPACE = "namespace"  # variables loaded from a checkpoint (+ some cells replayed)
    REPLAY = "replay"  # non-Python kernel: every earlier cell replayed


class RunRecord(BaseModel):
    """One attempt of a run, as the history keeps it. ``parameters`` has secrets redacted."""

    model_config = ConfigDict(frozen=False)

    run_id: str
    attempt: int = 1
    workflow_path: str
    notebook_sha256: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    status: RunStatus = RunStatus.RUNNING
    kernel_name: str = "python3"
    language: str = "python"
    started_at: datetime
    finished_at: datetime | None = None
    duration_s: float | None = None
    cells_total: int = 0
    error_name: str | None = None
    error_message: str | None = None
    failed_cell: int | None = None  # index in the executed notebook
    failed_cell_id: str | None = None
    output_path: str | None = None
    resumed_from_attempt: int | None = None
    restored_from_cell: int | None = None  # namespace restored as it was after this cell
    replayed_cells: list[int] = Field(default_factory=list)
    restore_mode: RestoreMode | None = None
    source: str = "cli"  # who started it: cli, api, papermill, ...
    trigger: str | None = None  # the schedule or trigger that did, as kind:id


class CellRecord(BaseModel):
    """One executed cell of one attempt; unique on (run_id, attempt, cell_index)."""

    run_id: str
    attempt: int
    cell_index: int
    cell_id: str | None = None
    status: CellStatus
    started_at: datetime
    duration_s: float
    error_name: str | None = None
    error_message: str | None = None
    replayed: bool = False
    output_truncated: bool = False


# ---------------------------------------------------------------- orchestrator: jobs, robots


class ResumePlan(BaseModel):
    """How a new attempt resumes an earlier one, planned once (by the local runner or the
    orchestrator) and carried out by whoever runs the attempt.

    The namespace is restored as it was after ``restore_cell`` (from the manifest of
    ``restore_cell_id``, carried into the new attempt with the others of ``inherit_ids``);
    the cells in ``rerun`` are executed again to rebuild what lies between that checkpoint
    and ``start``, the first cell of new work. ``carried`` cells keep their earlier outputs.
    Indices are those of the parameterised notebook."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: int = Field(ge=0, description="First cell executed as new work.")
    restore_cell: int | None = Field(
        default=None, ge=0, description="Namespace restored as it was after this cell."
    )
    restore_cell_id: str | None = Field(default=None, description="Id of that cell.")
    rerun: list[int] = Field(
        default_factory=list, description="Cells after the checkpoint, before start."
    )
    carried: list[int] = Field(default_factory=list, description="Cells keeping their outputs.")
    inherit_ids: list[str] = Field(
        default_factory=list, description="Manifests carried into the new attempt."
    )


JobStatus = RunStatus  # a job's state is its current run attempt's: queued → running → ...


class Priority(StrEnum):
    """Dispatch order: higher first, then oldest first."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2, Priority.CRITICAL: 3}


class RobotStatus(StrEnum):
    """A robot as the orchestrator sees it."""

    ONLINE = "online"
    BUSY = "busy"  # connected, every slot taken
    DRAINING = "draining"  # finishing its jobs, taking no new ones
    OFFLINE = "offline"

    @property
    def takes_jobs(self) -> bool:
        """Whether a robot in this state may be sent a job (if it has a free slot)."""
        return self in (RobotStatus.ONLINE, RobotStatus.BUSY)


class TriggerKind(StrEnum):
    """What started a job (besides a person or a program submitting it)."""

    SCHEDULE = "schedule"
    WEBHOOK = "webhook"
    FILE_WATCH = "file_watch"
    ON_SUCCESS = "on_success"
    ON_FAILURE = "on_failure"


class TriggerRef(BaseModel):
    """What a job was started by, kept on the job: the schedule or trigger and the event."""

    kind: TriggerKind
    id: str
    due_at: datetime | None = None  # schedule: the due time this job is the fire of
    delivery_id: str | None = None  # webhook: the sender's delivery id
    file: str | None = None  # file watch: the file that arrived
    previous_job_id: str | None = None  # chaining: the job that finished


MAX_TIMEOUT_S = 7 * 86_400.0
"""The longest per-job timeout a submit takes (a cell's or the whole run's): 7 days."""


class JobTimeouts(BaseModel):
    """A job's execution limits, in seconds (None: none): per cell and for the whole run.
    Sent to the robot in ``job_assign`` (the protocol's ``Timeouts``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cell_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S, description="Per cell.")
    run_s: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_S, description="Whole run.")


class Job(BaseModel):
    """One submitted workflow run, queued until a robot takes it; ``job_id`` is its run id.

    ``parameters`` are validated and hold no secrets (those live only in memory)."""

    job_id: str
    workflow_path: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    environment: str | None = None  # None: any robot's environment will do
    tags: list[str] = Field(default_factory=list)  # the robot must have all of them
    status: RunStatus = RunStatus.QUEUED
    attempt: int = 0  # attempts dispatched so far (lost and rejected ones too)
    max_retries: int = 0  # extra attempts after a failure before the job is dead
    created_at: datetime
    eligible_at: datetime  # not dispatched before (retry backoff)
    robot_id: str | None = None
    assigned_at: datetime | None = None
    accepted_at: datetime | None = None
    finished_at: datetime | None = None
    error_name: str | None = None
    error_message: str | None = None
    resume_from_failed: bool = False  # the next attempt resumes from the last checkpoint
    source: str = "api"
    failures: int = 0  # attempts that ran and failed or timed out (what max_retries counts)
    failed_cell: int | None = None  # the cell index the last failed attempt stopped at
    trigger: TriggerRef | None = None  # the schedule or trigger that submitted it, if any
    # attempts lost with their robot the job survives; one more makes it dead (a poison job)
    max_robot_losses: int = 3
    robot_losses: int = 0  # attempts lost with their robot (not counted in failures)
    timeouts: JobTimeouts = Field(default_factory=JobTimeouts)  # execution limits
    # the name of the token that submitted it (None: a trigger, or submitted before tokens
    # had roles): a user token may cancel and re-run the jobs it submitted
    submitted_by: str | None = None


class SubmitOptions(TypedDict, total=False):
    """How a job is submitted, besides its workflow and parameters: the keywords of
    :meth:`JobManager.submit <casare_nb.orchestrator.jobs.manager.JobManager.submit>`, which
    holds their defaults and meaning; the front door and the triggers' desk pass them on."""

    raw_parameters: Mapping[str, str] | None
    priority: Priority
    tags: Sequence[str]
    environment: str | None
    max_retries: int
    max_robot_losses: int
    timeouts: JobTimeouts | None
    source: str
    trigger: TriggerRef | None
    job_id: str | None
    start_at: datetime | None
    submitted_by: str | None


class Robot(BaseModel):
    """A robot's registration and live state."""

    robot_id: str
    name: str
    environment: str = "default"
    tags: list[str] = Field(default_factory=list)
    max_concurrent_jobs: int = Field(default=1, ge=1)
    status: RobotStatus = RobotStatus.ONLINE
    running_jobs: int = 0
    last_heartbeat: datetime | None = None
    cpu_percent: float | None = None
    memory_percent: float | None = None
    node: str | None = Field(
        default=None,
        description="The orchestrator it is connected to, when several share a database.",
    )

    @property
    def free_slots(self) -> int:
        return max(0, self.max_concurrent_jobs - self.running_jobs)
