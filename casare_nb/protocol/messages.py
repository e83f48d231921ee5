"""Every message, by conversation: the robot link, jobs, checkpoints and blobs, logs, control,
errors, and the monitor channel with its events.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Discriminator,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    Tag,
    field_serializer,
    model_serializer,
    model_validator,
)

from casare_nb.core.injection import REDACTED
from casare_nb.core.models import (
    CellRecord,
    CellStatus,
    Job,
    Priority,
    Robot,
    RunStatus,
)
from casare_nb.protocol.base import (
    ANY_PEER,
    MONITOR_TO_ORCHESTRATOR,
    ORCHESTRATOR_TO_MONITOR,
    ORCHESTRATOR_TO_ROBOT,
    PROTOCOL_VERSION,
    REVEAL_SECRETS,
    ROBOT_ORCHESTRATOR,
    ROBOT_TO_ORCHESTRATOR,
    Capabilities,
    Envelope,
    ErrorCode,
    EventKind,
    JobRef,
    JobScoped,
    LogRecord,
    NonEmptyStr,
    Notebook,
    ResumeSpec,
    RobotState,
    Sha256,
    Timeouts,
    Topic,
    UtcDatetime,
    WireModel,
)

# --------------------------------------------------------------------------- robot link


class Register(Envelope):
    """Robot -> orchestrator, first message after connecting: who it is and what it can run."""

    direction: ClassVar[str] = ROBOT_TO_ORCHESTRATOR

    type: Literal["register"] = "register"
    robot_id: NonEmptyStr = Field(description="Stable robot id (survives restarts).")
    name: str = Field(description="Human-readable name.")
    environment: str = Field(default="default", description="Environment jobs must match.")
    tags: list[str] = Field(default_factory=list, description="Tags jobs can require.")
    max_concurrent_jobs: int = Field(default=1, ge=1, description="Jobs it runs at once.")
    protocol_version: int = Field(
        default=PROTOCOL_VERSION, strict=True, description="The protocol version the robot speaks."
    )
    capabilities: Capabilities = Field(
        default_factory=Capabilities, description="Kernels and features."
    )
    holding: list[JobRef] = Field(
        default_factory=list,
        description="Jobs it still holds after a reconnect (running or finished, unreported).",
    )


class RegisterAck(Envelope):
    """Orchestrator -> robot, answer to register: accepted or not, and the link's settings."""

    direction: ClassVar[str] = ORCHESTRATOR_TO_ROBOT

    type: Literal["register_ack"] = "register_ack"
    accepted: bool = Field(description="False: the robot must disconnect.")
    reason: str | None = Field(default=None, description="Why it was refused.")
    heartbeat_interval_s: float = Field(
        default=10.0, gt=0, description="Send a heartbeat this often."
    )
    protocol_version: int = Field(
        default=PROTOCOL_VERSION,
        strict=True,
        description="The protocol version the orchestrator speaks.",
    )
    continue_jobs: list[JobRef] = Field(
        default_factory=list,
        description="Jobs of holding still current: keep and report them; "
        "abandon the others (superseded).",
    )


class Heartbeat(Envelope):
    """Robot -> orchestrator, every heartbeat_interval_s: liveness, load, running jobs."""

    direction: ClassVar[str] = ROBOT_TO_ORCHESTRATOR

    type: Literal["heartbeat"] = "heartbeat"
    robot_id: NonEmptyStr = Field(description="The robot.")
    status: RobotState = Field(description="online, busy (full) or draining.")
    running_jobs: list[JobRef] = Field(default_factory=list, description="Jobs it is running.")
    cpu_percent: float = Field(default=0.0, ge=0, description="CPU use of the host.")
    memory_percent: float = Field(default=0.0, ge=0, le=100, description="Memory use.")
    seq: int = Field(ge=0, description="Increases by one per heartbeat on this connection.")


class HeartbeatAck(Envelope):
    """Orchestrator -> robot, answer to heartbeat."""

    direction: ClassVar[str] = ORCHESTRATOR_TO_ROBOT

    type: Literal["heartbeat_ack"] = "heartbeat_ack"
    seq: int = Field(ge=0, description="The seq of the heartbeat acknowledged.")


# --------------------------------------------------------------------------- jobs


class JobAssign(JobScoped):
    """Orchestrator -> robot, to run one attempt of a job (answered by job_accept/reject)."""

    direction: ClassVar[str] = ORCHESTRATOR_TO_ROBOT
    repr_brief: ClassVar[frozenset[str]] = frozenset({"notebook"})
    repr_secret: ClassVar[frozenset[str]] = frozenset({"secret_parameters"})

    type: Literal["job_assign"] = "job_assign"
    workflow_path: str = Field(description="The workflow, as the orchestrator names it.")
    notebook: Notebook = Field(
        description="The notebook to run as it is: the workflow with its parameters injected "
        "(papermill's injected-parameters cell), and for a resume the earlier outputs."
    )
    secret_parameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Secret parameter values: on the wire, masked in repr and model_dump.",
    )
    resume: ResumeSpec | None = Field(
        default=None, description="Set for a re-run from a checkpoint."
    )
    priority: Priority = Field(default=Priority.NORMAL, description="low, normal, high, critical.")
    timeouts: Timeouts = Field(default_factory=Timeouts, description="Execution limits.")
    start_at: UtcDatetime | None = Field(
        default=None,
        description="Set for a job sent ahead of its due time (a schedule's): the robot "
        "accepts and prepares it at once and runs its first cell at this instant, not before.",
    )

    @field_serializer("secret_parameters")
    def _mask_secrets(self, value: dict[str, Any], info: SerializationInfo) -> dict[str, Any]:
        context = info.context
        if isinstance(context, Mapping) and context.get(REVEAL_SECRETS):
            return value
        return {k: REDACTED for k in value}


class JobAccept(JobScoped):
    """Robot -> orchestrator, answer to job_assign: it starts the job."""

    direction: ClassVar[str] = ROBOT_TO_ORCHESTRATOR

    type: Literal["job_accept"] = "job_accept"


class JobReject(JobScoped):
    """Robot -> orchestrator, answer to job_assign: it will not run the job (requeue it)."""

    direction: ClassVar[str] = ROBOT_TO_ORCHESTRATOR

    type: Literal["job_reject"] = "job_reject"
    reason: str = Field(description="Why, e.g. at capacity, kernel not installed.")


class JobProgress(JobScoped):
    """Robot -> orchestrator, after each executed cell."""

    direction: ClassVar[str] = ROBOT_TO_ORCHESTRATOR
    repr_brief: ClassVar[frozenset[str]] = frozenset({"cell"})

    type: Literal["job_progress"] = "job_progress"
    cell_index: int = Field(ge=0, description="Index of the cell in the executed notebook.")
    cell_id: str | None = Field(default=None, description="nbformat id of the cell.")
    status: CellStatus = Field(description="How the cell ended.")
    duration_s: float = Field(ge=0, description="Execution time of the cell.")
    cells_done: int = Field(ge=0, description="Cells executed so far in this attempt.")
    cells_total: int = Field(ge=0, description="Cells this attempt executes.")
    started_at: UtcDatetime | None = Field(default=None, description="When the cell started.")
    replayed: bool = Field(default=False, description="Re-run only to rebuild state.")
    error_name: str | None = Field(default=None, description="Exception class, if it raised.")
    error_message: str | None = Field(default=None, description="Exception message.")
    cell: dict[str, Any] | None = Field(
        default=None,
        description="The cell as executed (nbformat JSON: source, outputs, metadata.casare), "
        "so the orchestrator holds the notebook so far and can resume it on another robot.",
    )

    @model_validator(mode="after")
    def _done_le_total(self) -> JobProgress:
        if self.cells_done > self.cells_total:
            raise ValueError(f"cells_done {self.cells_done} > cells_total {self.cells_total}")
        return self

    def to_cell_record(self) -> CellRecord:
        """The history row for this cell (idempotent key: job, attempt, cell_index); built
        without validating again: this message's fields are."""
        return CellRecord.model_construct(
            run_id=self.job_id,
            attempt=self.attempt,
            cell_index=self.cell_index,
            cell_id=self.cell_id,
            status=self.status,
            started_at=self.started_at or self.ts,
            duration_s=self.duration_s,
            error_name=self.error_name,
            error_message=self.error_message,
            replayed=self.replayed,
            output_truncated=False,
        )

    def to_cell_event(self) -> CellEvent:
        """What ``cell_finished`` publishes about this cell (not validated again)."""
        return CellEvent.model_construct(
            job_id=self.job_id,
            attempt=self.attempt,
            cell_index=self.cell_index,
            cell_id=self.cell_id,
            status=self.status,
            duration_s=self.duration_s,
            cells_done=self.cells_done,
            cells_total=self.cells_total,
        )


class JobComplete(JobScoped):
    """Robot -> orchestrator, when every cell ran ok."""

    direction: ClassVar[str] = ROBOT_TO_ORCHESTRATOR
    repr_brief: ClassVar[frozenset[str]] = frozenset({"output_notebook"})

    type: Literal["job_complete"] = "job_complete"
    output_notebook: Notebook = Field(description="The executed notebook, secrets scrubbed.")
    duration_s: float = Field(ge=0, description="Wall time of the attempt.")
    replayed_cells: list[int] = Field(
        default_factory=list, description="Cells re-run only to rebuild state (resume)."
    )


def _finished_unsuccessfully(value: RunStatus) -> RunStatus:
    if value not in (RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.CANCELLED):
        raise ValueError(f"status must be failed, timeout or cancelled, not {value.value}")
    return value


class JobFailed(JobScoped):
    """Robot -> orchestrator, when the attempt failed, timed out or was cancelled."""

    direction: ClassVar[str] = ROBOT_TO_ORCHESTRATOR
    repr_brief: ClassVar[frozenset[str]] = frozenset({"output_notebook"})

    type: Literal["job_failed"] = "job_failed"
    status: Annotated[RunStatus, AfterValidator(_finished_unsuccessfully)] = Field(
        default=RunStatus.FAILED, description="failed, timeout or cancelled."
    )
    failed_cell: int | None = Field(default=None, ge=0, description="Index of the failed cell.")
    failed_cell_id: str | None = Field(default=None, description="Id of the failed cell.")
    error_name: str | None = Field(default=None, description="Exception class.")
    error_message: str | None = Field(default=None, description="Exception message.")
    output_notebook: Notebook | None = Field(
        default=None, description="The notebook as far as it ran, secrets scrubbed."
    )
    duration_s: float | None = Field(default=None, ge=0, description="Wall time of the attempt.")


class JobCancel(JobScoped):
    """Orchestrator -> robot, to stop a job (answered by job_cancelled)."""

    direction: ClassVar[str] = ORCHESTRATOR_TO_ROBOT

    type: Literal["job_cancel"] = "job_cancel"
    reason: str | None = Field(default=None, description="Why, shown in the history.")


class JobCancelled(JobScoped):
    """Robot -> orchestrator, answer to job_cancel once the job has stopped."""

    direction: ClassVar[str] = ROBOT_TO_ORCHESTRATOR

    type: Literal["job_cancelled"] = "job_cancelled"


# --------------------------------------------------------------------------- checkpoints


class CheckpointOffer(JobScoped):
    """Robot -> orchestrator, after a cell's checkpoint is saved: its manifest and blob hashes."""

    direction: ClassVar[str] = ROBOT_TO_ORCHESTRATOR
    repr_brief: ClassVar[frozenset[str]] = frozenset({"manifest"})

    type: Literal["checkpoint_offer"] = "checkpoint_offer"
    cell_id: NonEmptyStr = Field(description="The cell after which the namespace was saved.")
    manifest: dict[str, Any] = Field(description="The checkpoint manifest (JSON).")
    blobs: list[Sha256] = Field(default_factory=list, description="Blobs it refers to.")


class CheckpointWant(JobScoped):
    """Orchestrator -> robot, answer to checkpoint_offer: the blobs it lacks (may be none)."""

    direction: ClassVar[str] = ORCHESTRATOR_TO_ROBOT

    type: Literal["checkpoint_want"] = "checkpoint_want"
    cell_id: NonEmptyStr = Field(description="The cell of the offer.")
    blobs: list[Sha256] = Field(default_factory=list, description="Send these with blob_put.")


class BlobPut(Envelope):
    """Either way: one content-addressed blob (robot uploads; orchestrator answers blob_get)."""

    direction: ClassVar[str] = ROBOT_ORCHESTRATOR
    repr_brief: ClassVar[frozenset[str]] = frozenset({"data"})

    type: Literal["blob_put"] = "blob_put"
    sha256: Sha256 = Field(description="sha256 of the decoded bytes.")
    data: str = Field(description="The bytes, base64 (standard alphabet, padded).")

    @model_validator(mode="after")
    def _hash_matches(self) -> BlobPut:
        try:
            raw = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("data is not valid base64") from None
        actual = hashlib.sha256(raw).hexdigest()
        if actual != self.sha256:
            raise ValueError(f"sha256 mismatch: data hashes to {actual}, not {self.sha256}")
        return self

    @classmethod
    def of(cls, data: bytes, **envelope: Any) -> BlobPut:
        """The blob_put carrying ``data`` (hash and base64 computed here)."""
        return cls(
            sha256=hashlib.sha256(data).hexdigest(),
            data=base64.b64encode(data).decode("ascii"),
            **envelope,
        )

    def payload(self) -> bytes:
        """The blob's bytes."""
        return base64.b64decode(self.data)


class BlobAck(Envelope):
    """Either way, answer to blob_put: these blobs are stored."""

    direction: ClassVar[str] = ROBOT_ORCHESTRATOR

    type: Literal["blob_ack"] = "blob_ack"
    sha256: list[Sha256] = Field(min_length=1, description="The blobs stored.")


class BlobGet(Envelope):
    """Robot -> orchestrator, before a resume: send these blobs (answered by blob_put each)."""

    direction: ClassVar[str] = ROBOT_TO_ORCHESTRATOR

    type: Literal["blob_get"] = "blob_get"
    sha256: list[Sha256] = Field(min_length=1, description="The blobs it lacks.")


class CheckpointStored(JobScoped):
    """Orchestrator -> robot, once the manifest and all its blobs are stored: resumable."""

    direction: ClassVar[str] = ORCHESTRATOR_TO_ROBOT

    type: Literal["checkpoint_stored"] = "checkpoint_stored"
    cell_id: NonEmptyStr = Field(description="The cell of the checkpoint.")


# --------------------------------------------------------------------------- logs


class LogBatch(Envelope):
    """Robot -> orchestrator, now and then: log records of the robot or of one job."""

    direction: ClassVar[str] = ROBOT_TO_ORCHESTRATOR

    type: Literal["log_batch"] = "log_batch"
    robot_id: NonEmptyStr = Field(description="The robot.")
    job_id: str | None = Field(default=None, description="The job, null for robot logs.")
    attempt: int | None = Field(default=None, ge=1, description="The attempt of job_id.")
    records: list[LogRecord] = Field(min_length=1, description="Oldest first.")
    dropped: int = Field(default=0, ge=0, description="Records lost before this batch.")


# --------------------------------------------------------------------------- control


class Pause(Envelope):
    """Orchestrator -> robot: take no new jobs; running jobs go on (undone by unpause)."""

    direction: ClassVar[str] = ORCHESTRATOR_TO_ROBOT

    type: Literal["pause"] = "pause"
    reason: str | None = Field(default=None, description="Why, for the robot's log.")


class Unpause(Envelope):
    """Orchestrator -> robot: take jobs again after a pause."""

    direction: ClassVar[str] = ORCHESTRATOR_TO_ROBOT

    type: Literal["unpause"] = "unpause"


class Shutdown(Envelope):
    """Orchestrator -> robot: stop the agent, after its jobs end if graceful."""

    direction: ClassVar[str] = ORCHESTRATOR_TO_ROBOT

    type: Literal["shutdown"] = "shutdown"
    graceful: bool = Field(default=True, description="Finish running jobs first (drain).")
    reason: str | None = Field(default=None, description="Why, for the robot's log.")


class StatusRequest(Envelope):
    """Orchestrator -> robot: report your state now (answered by status_response)."""

    direction: ClassVar[str] = ORCHESTRATOR_TO_ROBOT

    type: Literal["status_request"] = "status_request"


class StatusResponse(Envelope):
    """Robot -> orchestrator, answer to status_request."""

    direction: ClassVar[str] = ROBOT_TO_ORCHESTRATOR

    type: Literal["status_response"] = "status_response"
    robot_id: NonEmptyStr = Field(description="The robot.")
    status: RobotState = Field(description="online, busy (full) or draining.")
    paused: bool = Field(default=False, description="A pause is in effect.")
    running_jobs: list[JobRef] = Field(default_factory=list, description="Jobs it is running.")
    pool: dict[str, Any] = Field(
        default_factory=dict, description="Kernel pool state, e.g. warm kernels per name."
    )


# --------------------------------------------------------------------------- errors


class Error(Envelope):
    """Any peer, when it refuses a message (reply_to names it, if it had a readable id)."""

    direction: ClassVar[str] = ANY_PEER

    type: Literal["error"] = "error"
    code: ErrorCode = Field(description="What went wrong (see the error codes).")
    message: str = Field(description="One line naming the problem.")
    fatal: bool = Field(default=False, description="The sender closes the connection next.")


# --------------------------------------------------------------------------- monitors


def _serialize_topics(topics: frozenset[Topic]) -> list[str]:
    return sorted(t.value for t in topics)


class Subscribe(Envelope):
    """Monitor -> orchestrator: send me events of these topics."""

    direction: ClassVar[str] = MONITOR_TO_ORCHESTRATOR

    type: Literal["subscribe"] = "subscribe"
    topics: frozenset[Topic] = Field(min_length=1, description="robots, jobs, cells.")

    @field_serializer("topics")
    def _topics(self, topics: frozenset[Topic]) -> list[str]:
        return _serialize_topics(topics)


class Unsubscribe(Envelope):
    """Monitor -> orchestrator: stop sending events of these topics."""

    direction: ClassVar[str] = MONITOR_TO_ORCHESTRATOR

    type: Literal["unsubscribe"] = "unsubscribe"
    topics: frozenset[Topic] = Field(min_length=1, description="robots, jobs, cells.")

    @field_serializer("topics")
    def _topics(self, topics: frozenset[Topic]) -> list[str]:
        return _serialize_topics(topics)


class RobotEvent(WireModel):
    """What ``robot_online``, ``robot_offline`` and ``robot_status`` carry: the robot."""

    robot: Robot = Field(description="The robot as the orchestrator sees it now.")
    reason: str | None = Field(
        default=None, description="robot_offline: disconnected or missed_heartbeats."
    )

    @model_serializer(mode="wrap")
    def _without_none(self, handler: SerializerFunctionWrapHandler) -> Any:
        return {k: v for k, v in handler(self).items() if v is not None or k != "reason"}


class RobotSnapshot(WireModel):
    """What the ``robot_status`` event answering a subscribe to ``robots`` carries."""

    snapshot: Literal[True] = Field(default=True, description="Always true: every robot.")
    robots: list[Robot] = Field(description="Every robot the orchestrator knows, by id.")


class JobEvent(WireModel):
    """What ``job_queued``, ``job_started`` and ``job_finished`` carry: the job."""

    job: Job = Field(description="The job as it is now.")
    reason: str | None = Field(
        default=None,
        description="job_queued again: rerun, retry, robot_offline, rejected, not_accepted, "
        "robot_stopped, send_failed; absent for a new job.",
    )

    @model_serializer(mode="wrap")
    def _without_none(self, handler: SerializerFunctionWrapHandler) -> Any:
        return {k: v for k, v in handler(self).items() if v is not None or k != "reason"}


class CellEvent(WireModel):
    """What ``cell_finished`` carries: one executed cell of an attempt."""

    job_id: NonEmptyStr = Field(description="The job.")
    attempt: int = Field(ge=1, description="Its attempt.")
    cell_index: int = Field(ge=0, description="Index of the cell in the executed notebook.")
    cell_id: str | None = Field(default=None, description="nbformat id of the cell.")
    status: CellStatus = Field(description="How the cell ended.")
    duration_s: float = Field(ge=0, description="Execution time of the cell.")
    cells_done: int = Field(ge=0, description="Cells executed so far in this attempt.")
    cells_total: int = Field(ge=0, description="Cells this attempt executes.")


def _data_tag(value: Any) -> str | None:
    """Which model event data is, by the key only it has."""
    if isinstance(value, BaseModel):
        return type(value).__name__
    if isinstance(value, Mapping):
        for key, tag in (
            ("snapshot", "RobotSnapshot"),
            ("robot", "RobotEvent"),
            ("job", "JobEvent"),
            ("job_id", "CellEvent"),
        ):
            if key in value:
                return tag
    return None


EventData = Annotated[
    Annotated[RobotEvent, Tag("RobotEvent")]
    | Annotated[RobotSnapshot, Tag("RobotSnapshot")]
    | Annotated[JobEvent, Tag("JobEvent")]
    | Annotated[CellEvent, Tag("CellEvent")],
    Discriminator(_data_tag),
]
"""What an event carries: the model of its kind."""

EVENT_DATA: dict[EventKind, tuple[type[BaseModel], ...]] = {
    EventKind.ROBOT_ONLINE: (RobotEvent,),
    EventKind.ROBOT_OFFLINE: (RobotEvent,),
    EventKind.ROBOT_STATUS: (RobotEvent, RobotSnapshot),
    EventKind.JOB_QUEUED: (JobEvent,),
    EventKind.JOB_STARTED: (JobEvent,),
    EventKind.JOB_FINISHED: (JobEvent,),
    EventKind.CELL_FINISHED: (CellEvent,),
}
"""Event kind -> the model(s) its ``data`` is."""


class Event(Envelope):
    """Orchestrator -> monitor, when something it subscribed to happens."""

    direction: ClassVar[str] = ORCHESTRATOR_TO_MONITOR

    type: Literal["event"] = "event"
    topic: Topic = Field(description="The topic; must be the kind's topic.")
    kind: EventKind = Field(description="What happened.")
    data: EventData = Field(description="Details: the model of the kind (see below).")

    @model_validator(mode="after")
    def _kind_in_topic(self) -> Event:
        if self.kind.topic is not self.topic:
            raise ValueError(
                f"event kind {self.kind.value} belongs to topic {self.kind.topic.value}, "
                f"not {self.topic.value}"
            )
        if not isinstance(self.data, EVENT_DATA[self.kind]):
            raise ValueError(
                f"event kind {self.kind.value} carries {EVENT_DATA[self.kind][0].__name__}, "
                f"not {type(self.data).__name__}"
            )
        return self
