"""The wire protocol between the orchestrator, its robots and its monitors. Sans-I/O.

Every frame is one JSON object (a WebSocket *text* frame) holding one message. Messages are
frozen pydantic models sharing one envelope (``type``, ``id``, ``ts``, ``reply_to``) and form
one discriminated union, :data:`Message`. :func:`encode` turns a message into JSON text;
:func:`decode` turns a frame back into a message or raises :class:`ProtocolError`, whose
:meth:`~ProtocolError.to_message` is the :class:`Error` to send back.

No sockets, no event loop: the orchestrator's server and the robot's agent own the I/O and
call into this module. ``docs/protocol.md`` is generated from these models by
``scripts/gen_protocol_doc.py``: keep docstrings and ``Field(description=...)`` current.

Secrets: :class:`JobAssign` carries ``secret_parameters`` because the robot needs them. They
are on the wire (``encode`` reveals them) but masked in ``repr``/``str`` and in
``model_dump``/``model_dump_json`` unless the serialisation context says
``{"reveal_secrets": True}``.

Pure: stdlib, pydantic and ``casare_nb.core`` only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, NoReturn

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    field_serializer,
    model_serializer,
    model_validator,
)

from casare_nb.core.errors import CasareError
from casare_nb.core.models import (
    CellRecord,
    CellStatus,
    Job,
    Priority,
    ResumePlan,
    Robot,
    RunStatus,
)
from casare_nb.core.params import REDACTED

__all__ = [
    "EVENT_DATA",
    "MAX_BLOB_BYTES",
    "MAX_FRAME_BYTES",
    "MESSAGE_ADAPTER",
    "MESSAGE_TYPES",
    "NESTED_MODELS",
    "PROTOCOL_VERSION",
    "REVEAL_SECRETS",
    "SECTIONS",
    "SUPPORTED_PROTOCOL_VERSIONS",
    "BlobAck",
    "BlobGet",
    "BlobPut",
    "Capabilities",
    "CellEvent",
    "CheckpointOffer",
    "CheckpointStored",
    "CheckpointWant",
    "Deduplicator",
    "Envelope",
    "Error",
    "ErrorCode",
    "Event",
    "EventData",
    "EventKind",
    "Heartbeat",
    "HeartbeatAck",
    "JobAccept",
    "JobAssign",
    "JobCancel",
    "JobCancelled",
    "JobComplete",
    "JobEvent",
    "JobFailed",
    "JobProgress",
    "JobRef",
    "JobReject",
    "LogBatch",
    "LogRecord",
    "Message",
    "Pause",
    "ProtocolError",
    "Register",
    "RegisterAck",
    "ResumeSpec",
    "RobotEvent",
    "RobotSnapshot",
    "Role",
    "Shutdown",
    "StatusRequest",
    "StatusResponse",
    "Subscribe",
    "Timeouts",
    "Topic",
    "TypeName",
    "Unpause",
    "Unsubscribe",
    "decode",
    "dedup_key",
    "encode",
    "progress_key",
    "senders",
]

PROTOCOL_VERSION = 2
SUPPORTED_PROTOCOL_VERSIONS: frozenset[int] = frozenset({PROTOCOL_VERSION})
MAX_FRAME_BYTES = 16 * 1024 * 1024
# The largest blob whose blob_put fits a default frame: base64 makes 4 chars of 3 bytes, and
# 4 KiB are left for the envelope. Bigger checkpoint data is split into several blobs.
MAX_BLOB_BYTES = 12 * 1024 * 1024 - 3 * 1024
REVEAL_SECRETS = "reveal_secrets"


# --------------------------------------------------------------------------- field types


@dataclass(frozen=True)
class TypeName:
    """``Annotated`` marker naming a constrained type in the generated docs."""

    name: str


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _looks_like_notebook(value: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(value.get("cells"), list):
        raise ValueError("not a notebook: no 'cells' list")
    return value


SHA256_PATTERN = r"^[0-9a-f]{64}$"

UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc), TypeName("datetime (UTC)")]
Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN), TypeName("sha256 hex")]
Notebook = Annotated[
    dict[str, Any], AfterValidator(_looks_like_notebook), TypeName("notebook (nbformat JSON)")
]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
MessageId = Annotated[str, StringConstraints(min_length=1, max_length=128)]
RobotState = Literal["online", "busy", "draining"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class _Ids:
    """Message ids: 16 random hex digits drawn once per process (again in a forked child),
    then a counter. One ``os.urandom`` per process, not one per message (``uuid4`` cost
    0.2-0.7 ms a call on the benchmark machine)."""

    lock = threading.Lock()
    prefix: str | None = None
    counter = itertools.count(1)
    hooked = False

    @classmethod
    def new(cls) -> str:
        prefix = cls.prefix
        if prefix is None:
            with cls.lock:
                if cls.prefix is None:
                    if not cls.hooked:
                        os.register_at_fork(after_in_child=cls.forget)
                        cls.hooked = True
                    cls.counter = itertools.count(1)
                    cls.prefix = uuid.uuid4().hex[:16]
                prefix = cls.prefix
        return f"{prefix}{next(cls.counter):016x}"

    @classmethod
    def forget(cls) -> None:
        cls.lock = threading.Lock()  # a lock held by another thread at the fork stays held
        cls.prefix = None


def _new_id() -> str:
    return _Ids.new()


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- enums


class Role(StrEnum):
    """A party on the link."""

    ORCHESTRATOR = "orchestrator"
    ROBOT = "robot"
    MONITOR = "monitor"


ROBOT_TO_ORCHESTRATOR = "robot -> orchestrator"
ORCHESTRATOR_TO_ROBOT = "orchestrator -> robot"
ROBOT_ORCHESTRATOR = "robot <-> orchestrator"
MONITOR_TO_ORCHESTRATOR = "monitor -> orchestrator"
ORCHESTRATOR_TO_MONITOR = "orchestrator -> monitor"
ANY_PEER = "any -> any"

_SENDERS: dict[str, frozenset[Role]] = {
    ROBOT_TO_ORCHESTRATOR: frozenset({Role.ROBOT}),
    ORCHESTRATOR_TO_ROBOT: frozenset({Role.ORCHESTRATOR}),
    ROBOT_ORCHESTRATOR: frozenset({Role.ROBOT, Role.ORCHESTRATOR}),
    MONITOR_TO_ORCHESTRATOR: frozenset({Role.MONITOR}),
    ORCHESTRATOR_TO_MONITOR: frozenset({Role.ORCHESTRATOR}),
    ANY_PEER: frozenset(Role),
}


class ErrorCode(StrEnum):
    """Why a message was refused."""

    INVALID_MESSAGE = "invalid_message"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNAUTHORIZED = "unauthorized"
    FRAME_TOO_LARGE = "frame_too_large"
    UNKNOWN_JOB = "unknown_job"
    UNKNOWN_BLOB = "unknown_blob"
    STALE_ATTEMPT = "stale_attempt"
    DUPLICATE = "duplicate"
    INTERNAL = "internal"

    @property
    def description(self) -> str:
        return _ERROR_DESCRIPTIONS[self]

    @property
    def fatal_by_default(self) -> bool:
        """The sender should close the connection after an error with this code."""
        return self in (ErrorCode.UNSUPPORTED_VERSION, ErrorCode.UNAUTHORIZED)


_ERROR_DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.INVALID_MESSAGE: "not JSON, not an object, unknown or missing type, a field "
    "that does not validate, or a message this peer may not send",
    ErrorCode.UNSUPPORTED_VERSION: "register carried a protocol_version this side does not speak",
    ErrorCode.UNAUTHORIZED: "the token is missing, wrong or revoked, or the robot id is taken",
    ErrorCode.FRAME_TOO_LARGE: "the frame is larger than the receiver's limit "
    "(checked before parsing)",
    ErrorCode.UNKNOWN_JOB: "no such job (or the robot does not hold it)",
    ErrorCode.UNKNOWN_BLOB: "a blob asked for by blob_get is not stored",
    ErrorCode.STALE_ATTEMPT: "the message is about an attempt that a newer one superseded",
    ErrorCode.DUPLICATE: "the message was already received and handled (safe to drop)",
    ErrorCode.INTERNAL: "the receiver failed; the message may be retried",
}


class Topic(StrEnum):
    """What a monitor can subscribe to."""

    ROBOTS = "robots"
    JOBS = "jobs"
    CELLS = "cells"


class EventKind(StrEnum):
    """What happened; each kind belongs to one topic (its `topic` property)."""

    ROBOT_ONLINE = "robot_online"
    ROBOT_OFFLINE = "robot_offline"
    ROBOT_STATUS = "robot_status"
    JOB_QUEUED = "job_queued"
    JOB_STARTED = "job_started"
    JOB_FINISHED = "job_finished"
    CELL_FINISHED = "cell_finished"

    @property
    def topic(self) -> Topic:
        return _EVENT_TOPICS[self]


_EVENT_TOPICS: dict[EventKind, Topic] = {
    EventKind.ROBOT_ONLINE: Topic.ROBOTS,
    EventKind.ROBOT_OFFLINE: Topic.ROBOTS,
    EventKind.ROBOT_STATUS: Topic.ROBOTS,
    EventKind.JOB_QUEUED: Topic.JOBS,
    EventKind.JOB_STARTED: Topic.JOBS,
    EventKind.JOB_FINISHED: Topic.JOBS,
    EventKind.CELL_FINISHED: Topic.CELLS,
}


# --------------------------------------------------------------------------- base models


def _brief(value: Any) -> Any:
    """A short stand-in for a big value in a repr (a notebook, a base64 blob)."""
    if isinstance(value, dict) and isinstance(value.get("cells"), list):
        return _Abbrev(f"<notebook: {len(value['cells'])} cells>")
    if isinstance(value, str):
        return _Abbrev(f"<{len(value)} chars>")
    if isinstance(value, dict):
        return _Abbrev(f"<{len(value)} keys>")
    return value


class _Abbrev(str):
    """Prints without quotes in a repr."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


class _Model(BaseModel):
    """Frozen, strict about unknown fields, no NaN/inf; big fields abbreviated in repr."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    repr_brief: ClassVar[frozenset[str]] = frozenset()
    repr_secret: ClassVar[frozenset[str]] = frozenset()

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if name in self.repr_secret and isinstance(value, Mapping):
                yield name, {k: REDACTED for k in value}
            elif name in self.repr_brief and value is not None:
                yield name, _brief(value)
            else:
                yield name, value


class JobRef(_Model):
    """One attempt of one job: the key every job record is written under."""

    job_id: NonEmptyStr = Field(description="The job (run) id.")
    attempt: int = Field(ge=1, description="The attempt number, 1 for the first run.")


class Capabilities(_Model):
    """What a robot can run."""

    kernels: list[str] = Field(
        default_factory=list, description="Kernel names it can start, e.g. python3."
    )
    python: str | None = Field(default=None, description="Python version of the robot.")
    casare_version: str | None = Field(default=None, description="casare_nb version.")
    checkpoints: bool = Field(
        default=True, description="It can save and restore namespace checkpoints."
    )
    features: list[str] = Field(
        default_factory=list, description="Optional features, free-form names."
    )


class Timeouts(_Model):
    """Execution limits of one job."""

    cell_s: float | None = Field(default=None, gt=0, description="Per cell, in seconds.")
    run_s: float | None = Field(default=None, gt=0, description="Whole run, in seconds.")


class ResumeSpec(_Model):
    """How a new attempt resumes an earlier one, as the orchestrator planned it: the robot
    puts the manifests in the new attempt's checkpoint folder, fetches the blobs it lacks,
    restores the namespace and runs from ``plan.start``. The job's notebook already holds
    the earlier outputs of the cells before that."""

    repr_brief: ClassVar[frozenset[str]] = frozenset({"manifests"})

    from_attempt: int = Field(ge=1, description="The attempt being resumed.")
    plan: ResumePlan = Field(description="Where to start, what to restore and re-run.")
    manifests: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="The checkpoint manifests the restore reads (and those they refer to), "
        "by cell id.",
    )
    blobs: list[Sha256] = Field(
        default_factory=list,
        description="Every blob the manifests refer to; fetch missing ones with blob_get.",
    )


class LogRecord(_Model):
    """One log line."""

    ts: UtcDatetime = Field(default_factory=_utcnow, description="When it was logged.")
    level: LogLevel = Field(default="INFO", description="Python logging level name.")
    message: str = Field(description="The text, secrets already scrubbed by the sender.")
    logger: str | None = Field(default=None, description="Logger name, e.g. casare_nb.robot.")


class Envelope(_Model):
    """Fields every message carries."""

    direction: ClassVar[str] = ANY_PEER

    type: str = Field(description="The message type (the discriminator).")
    id: MessageId = Field(default_factory=_new_id, description="Unique id of this message.")
    ts: UtcDatetime = Field(default_factory=_utcnow, description="When it was sent.")
    reply_to: MessageId | None = Field(
        default=None, description="The id of the message this one answers."
    )


class _JobScoped(Envelope):
    job_id: NonEmptyStr = Field(description="The job (run) id.")
    attempt: int = Field(ge=1, description="The attempt number, 1 for the first run.")

    @property
    def ref(self) -> JobRef:
        """The (job, attempt) this message is about."""
        return JobRef(job_id=self.job_id, attempt=self.attempt)


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


class JobAssign(_JobScoped):
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


class JobAccept(_JobScoped):
    """Robot -> orchestrator, answer to job_assign: it starts the job."""

    direction: ClassVar[str] = ROBOT_TO_ORCHESTRATOR

    type: Literal["job_accept"] = "job_accept"


class JobReject(_JobScoped):
    """Robot -> orchestrator, answer to job_assign: it will not run the job (requeue it)."""

    direction: ClassVar[str] = ROBOT_TO_ORCHESTRATOR

    type: Literal["job_reject"] = "job_reject"
    reason: str = Field(description="Why, e.g. at capacity, kernel not installed.")


class JobProgress(_JobScoped):
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
        """The history row for this cell (idempotent key: job, attempt, cell_index)."""
        return CellRecord(
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
        )


class JobComplete(_JobScoped):
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


class JobFailed(_JobScoped):
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


class JobCancel(_JobScoped):
    """Orchestrator -> robot, to stop a job (answered by job_cancelled)."""

    direction: ClassVar[str] = ORCHESTRATOR_TO_ROBOT

    type: Literal["job_cancel"] = "job_cancel"
    reason: str | None = Field(default=None, description="Why, shown in the history.")


class JobCancelled(_JobScoped):
    """Robot -> orchestrator, answer to job_cancel once the job has stopped."""

    direction: ClassVar[str] = ROBOT_TO_ORCHESTRATOR

    type: Literal["job_cancelled"] = "job_cancelled"


# --------------------------------------------------------------------------- checkpoints


class CheckpointOffer(_JobScoped):
    """Robot -> orchestrator, after a cell's checkpoint is saved: its manifest and blob hashes."""

    direction: ClassVar[str] = ROBOT_TO_ORCHESTRATOR
    repr_brief: ClassVar[frozenset[str]] = frozenset({"manifest"})

    type: Literal["checkpoint_offer"] = "checkpoint_offer"
    cell_id: NonEmptyStr = Field(description="The cell after which the namespace was saved.")
    manifest: dict[str, Any] = Field(description="The checkpoint manifest (JSON).")
    blobs: list[Sha256] = Field(default_factory=list, description="Blobs it refers to.")


class CheckpointWant(_JobScoped):
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


class CheckpointStored(_JobScoped):
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
    topics: frozenset[Topic] = Field(min_length=1, description="robots, jobs, queue, cells.")

    @field_serializer("topics")
    def _topics(self, topics: frozenset[Topic]) -> list[str]:
        return _serialize_topics(topics)


class Unsubscribe(Envelope):
    """Monitor -> orchestrator: stop sending events of these topics."""

    direction: ClassVar[str] = MONITOR_TO_ORCHESTRATOR

    type: Literal["unsubscribe"] = "unsubscribe"
    topics: frozenset[Topic] = Field(min_length=1, description="robots, jobs, queue, cells.")

    @field_serializer("topics")
    def _topics(self, topics: frozenset[Topic]) -> list[str]:
        return _serialize_topics(topics)


class RobotEvent(_Model):
    """What ``robot_online``, ``robot_offline`` and ``robot_status`` carry: the robot."""

    robot: Robot = Field(description="The robot as the orchestrator sees it now.")
    reason: str | None = Field(
        default=None, description="robot_offline: disconnected or missed_heartbeats."
    )

    @model_serializer(mode="wrap")
    def _without_none(self, handler: SerializerFunctionWrapHandler) -> Any:
        return {k: v for k, v in handler(self).items() if v is not None or k != "reason"}


class RobotSnapshot(_Model):
    """What the ``robot_status`` event answering a subscribe to ``robots`` carries."""

    snapshot: Literal[True] = Field(default=True, description="Always true: every robot.")
    robots: list[Robot] = Field(description="Every robot the orchestrator knows, by id.")


class JobEvent(_Model):
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


class CellEvent(_Model):
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


# --------------------------------------------------------------------------- the union

Message = Annotated[
    Register
    | RegisterAck
    | Heartbeat
    | HeartbeatAck
    | JobAssign
    | JobAccept
    | JobReject
    | JobProgress
    | JobComplete
    | JobFailed
    | JobCancel
    | JobCancelled
    | CheckpointOffer
    | CheckpointWant
    | BlobPut
    | BlobAck
    | BlobGet
    | CheckpointStored
    | LogBatch
    | Pause
    | Unpause
    | Shutdown
    | StatusRequest
    | StatusResponse
    | Error
    | Subscribe
    | Unsubscribe
    | Event,
    Field(discriminator="type"),
]

MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)

SECTIONS: tuple[tuple[str, tuple[type[Envelope], ...]], ...] = (
    ("Robot link", (Register, RegisterAck, Heartbeat, HeartbeatAck)),
    (
        "Jobs",
        (
            JobAssign,
            JobAccept,
            JobReject,
            JobProgress,
            JobComplete,
            JobFailed,
            JobCancel,
            JobCancelled,
        ),
    ),
    (
        "Checkpoints and blobs",
        (CheckpointOffer, CheckpointWant, BlobPut, BlobAck, BlobGet, CheckpointStored),
    ),
    ("Logs", (LogBatch,)),
    ("Control", (Pause, Unpause, Shutdown, StatusRequest, StatusResponse)),
    ("Errors", (Error,)),
    ("Monitor channel", (Subscribe, Unsubscribe, Event)),
)
"""Every message class, grouped for the docs, in union order."""

NESTED_MODELS: tuple[type[BaseModel], ...] = (
    JobRef,
    Capabilities,
    Timeouts,
    ResumePlan,
    ResumeSpec,
    LogRecord,
    RobotEvent,
    RobotSnapshot,
    JobEvent,
    CellEvent,
)

MESSAGE_TYPES: dict[str, type[Envelope]] = {
    cls.model_fields["type"].default: cls for _, classes in SECTIONS for cls in classes
}
"""Message class by wire ``type``."""


def senders(cls: type[Envelope]) -> frozenset[Role]:
    """The roles that may send messages of class ``cls``."""
    return _SENDERS[cls.direction]


# --------------------------------------------------------------------------- errors


class ProtocolError(CasareError):
    """A frame that cannot be accepted; ``str(err)`` is one line, ``code`` says which kind."""

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        fatal: bool | None = None,
        message_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.fatal = self.code.fatal_by_default if fatal is None else fatal
        self.message_id = message_id  # id of the refused message, when it had a readable one

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.message, self.fatal, self.message_id))

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.value!r}, {self.message!r})"

    def to_message(self, reply_to: str | None = None) -> Error:
        """The error reply; ``reply_to`` defaults to the refused message's id."""
        return Error(
            code=self.code,
            message=self.message,
            fatal=self.fatal,
            reply_to=reply_to if reply_to is not None else self.message_id,
        )

    @classmethod
    def from_message(cls, error: Error) -> ProtocolError:
        """The exception for an error a peer sent."""
        return cls(error.code, error.message, error.fatal, error.reply_to)


# --------------------------------------------------------------------------- codec


def _utf8_size(text: str, limit: int) -> int:
    """Byte length of ``text`` in UTF-8, exact unless it is certainly over ``limit``."""
    if len(text) > limit or len(text) * 4 <= limit:
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def _too_large(size: int, max_bytes: int) -> NoReturn:
    raise ProtocolError(
        ErrorCode.FRAME_TOO_LARGE,
        f"frame too large: {size} bytes, the limit is {max_bytes}",
    )


def encode(msg: Envelope, *, max_bytes: int = MAX_FRAME_BYTES) -> str:
    """The JSON text frame for ``msg`` (secrets included: the peer needs them).

    Raises :class:`ProtocolError` ``frame_too_large`` when the frame would exceed
    ``max_bytes``, so the sender learns it before the receiver drops the connection.
    """
    text = msg.model_dump_json(context={REVEAL_SECRETS: True})
    size = _utf8_size(text, max_bytes)
    if size > max_bytes:
        _too_large(len(text.encode("utf-8", "surrogatepass")), max_bytes)
    return text


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _unsupported(version: int) -> str:
    spoken = ", ".join(map(str, sorted(SUPPORTED_PROTOCOL_VERSIONS)))
    return f"unsupported protocol version {version}: this side speaks {spoken}"


def _validation_summary(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"])
    text = f"{loc}: {first['msg']}" if loc else first["msg"]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"invalid message: {text}{more}"


def decode(
    data: str | bytes,
    *,
    max_bytes: int = MAX_FRAME_BYTES,
    sender: Role | None = None,
) -> Message:
    """The message in one frame; raises :class:`ProtocolError` if it cannot be accepted.

    The size is checked before parsing. ``sender``, if given, is the role of the peer the
    frame came from: a message that role may not send is refused as ``invalid_message``.
    """
    size = len(data) if isinstance(data, bytes) else _utf8_size(data, max_bytes)
    if size > max_bytes:
        _too_large(size, max_bytes)
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"invalid message: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
        ) from None
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "invalid message: not UTF-8") from None
    except ValueError as exc:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"invalid message: {exc}") from None
    except RecursionError:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, "invalid message: JSON nested too deeply"
        ) from None
    if not isinstance(obj, dict):
        kind = "array" if isinstance(obj, list) else type(obj).__name__
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"invalid message: expected a JSON object, got {kind}"
        )
    raw_id = obj.get("id")
    msg_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= 128 else None

    def refuse(code: ErrorCode, message: str) -> NoReturn:
        raise ProtocolError(code, message, message_id=msg_id)

    mtype = obj.get("type")
    if mtype is None:
        refuse(ErrorCode.INVALID_MESSAGE, "invalid message: missing 'type'")
    if not isinstance(mtype, str) or mtype not in MESSAGE_TYPES:
        refuse(ErrorCode.INVALID_MESSAGE, f"invalid message: unknown type {mtype!r}")
    if mtype == "register":  # before validation: a newer robot may send fields we lack
        version = obj.get("protocol_version")
        if (
            isinstance(version, int)
            and not isinstance(version, bool)
            and version not in SUPPORTED_PROTOCOL_VERSIONS
        ):
            refuse(ErrorCode.UNSUPPORTED_VERSION, _unsupported(version))
    if sender is not None and sender not in senders(MESSAGE_TYPES[mtype]):
        refuse(ErrorCode.INVALID_MESSAGE, f"invalid message: a {sender.value} may not send {mtype}")
    try:
        msg = MESSAGE_ADAPTER.validate_python(obj)
    except ValidationError as exc:
        refuse(ErrorCode.INVALID_MESSAGE, _validation_summary(exc))
    if isinstance(msg, Register) and msg.protocol_version not in SUPPORTED_PROTOCOL_VERSIONS:
        refuse(ErrorCode.UNSUPPORTED_VERSION, _unsupported(msg.protocol_version))
    return msg


# --------------------------------------------------------------------------- dedup


def progress_key(msg: JobProgress) -> tuple[str, int, int]:
    """(job, attempt, cell index): one job_progress per key is recorded."""
    return (msg.job_id, msg.attempt, msg.cell_index)


def dedup_key(msg: Envelope) -> Hashable:
    """The key two copies of the same news share, even when re-sent under a new id.

    job_progress: (type, job, attempt, cell index); checkpoint messages: (type, job, attempt,
    cell id); job accept/complete/failed/cancelled: (type, job, attempt); anything else: its id.
    """
    if isinstance(msg, JobProgress):
        return (msg.type, *progress_key(msg))
    if isinstance(msg, CheckpointOffer | CheckpointStored):
        return (msg.type, msg.job_id, msg.attempt, msg.cell_id)
    if isinstance(msg, JobAccept | JobReject | JobComplete | JobFailed | JobCancelled):
        return (msg.type, msg.job_id, msg.attempt)
    return ("id", msg.id)


class Deduplicator:
    """Remembers the last ``max_size`` keys (LRU) to drop duplicated or replayed messages.

    Pure and bounded: a key older than ``max_size`` others is forgotten, so the store's
    idempotent writes remain the last line of defence.
    """

    def __init__(self, max_size: int = 10_000) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, not {max_size}")
        self.max_size = max_size
        self._keys: OrderedDict[Hashable, None] = OrderedDict()

    def seen(self, key: Hashable) -> bool:
        """True if ``key`` was seen before (a duplicate); records it either way."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return True
        self._keys[key] = None
        if len(self._keys) > self.max_size:
            self._keys.popitem(last=False)
        return False

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def clear(self) -> None:
        self._keys.clear()
