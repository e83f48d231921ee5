"""The protocol's ground: version and limits, field types, roles, error codes, topics and
event kinds, the envelope every message shares, and the nested objects messages carry.
"""

from __future__ import annotations

import itertools
import os
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

from casare_nb.core.injection import REDACTED
from casare_nb.core.models import (
    ResumePlan,
)

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

SENDERS: dict[str, frozenset[Role]] = {
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


class WireModel(BaseModel):
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


class JobRef(WireModel):
    """One attempt of one job: the key every job record is written under."""

    job_id: NonEmptyStr = Field(description="The job (run) id.")
    attempt: int = Field(ge=1, description="The attempt number, 1 for the first run.")


class Capabilities(WireModel):
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


class Timeouts(WireModel):
    """Execution limits of one job."""

    cell_s: float | None = Field(default=None, gt=0, description="Per cell, in seconds.")
    run_s: float | None = Field(default=None, gt=0, description="Whole run, in seconds.")


class ResumeSpec(WireModel):
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


class LogRecord(WireModel):
    """One log line."""

    ts: UtcDatetime = Field(default_factory=_utcnow, description="When it was logged.")
    level: LogLevel = Field(default="INFO", description="Python logging level name.")
    message: str = Field(description="The text, secrets already scrubbed by the sender.")
    logger: str | None = Field(default=None, description="Logger name, e.g. casare_nb.robot.")


class Envelope(WireModel):
    """Fields every message carries."""

    direction: ClassVar[str] = ANY_PEER

    type: str = Field(description="The message type (the discriminator).")
    id: MessageId = Field(default_factory=_new_id, description="Unique id of this message.")
    ts: UtcDatetime = Field(default_factory=_utcnow, description="When it was sent.")
    reply_to: MessageId | None = Field(
        default=None, description="The id of the message this one answers."
    )


class JobScoped(Envelope):
    job_id: NonEmptyStr = Field(description="The job (run) id.")
    attempt: int = Field(ge=1, description="The attempt number, 1 for the first run.")

    @property
    def ref(self) -> JobRef:
        """The (job, attempt) this message is about."""
        return JobRef(job_id=self.job_id, attempt=self.attempt)
