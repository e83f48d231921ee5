"""Frames and messages: the union of every message, :func:`encode` and :func:`decode` (with
:class:`ProtocolError`), and the de-duplication of messages delivered more than once.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Hashable
from typing import Annotated, Any, NoReturn

from pydantic import (
    BaseModel,
    Field,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import (
    PydanticSerializationError,
)

from casare_nb.core.errors import CasareError
from casare_nb.core.models import (
    ResumePlan,
)
from casare_nb.core.text import storable, unicode_problem
from casare_nb.protocol.base import (
    MAX_FRAME_BYTES,
    REVEAL_SECRETS,
    SENDERS,
    SUPPORTED_PROTOCOL_VERSIONS,
    Capabilities,
    Envelope,
    ErrorCode,
    JobRef,
    LogRecord,
    ResumeSpec,
    Role,
    Timeouts,
)
from casare_nb.protocol.messages import (
    BlobAck,
    BlobGet,
    BlobPut,
    CellEvent,
    CheckpointOffer,
    CheckpointStored,
    CheckpointWant,
    Error,
    Event,
    Heartbeat,
    HeartbeatAck,
    JobAccept,
    JobAssign,
    JobCancel,
    JobCancelled,
    JobComplete,
    JobEvent,
    JobFailed,
    JobProgress,
    JobReject,
    LogBatch,
    Pause,
    Register,
    RegisterAck,
    RobotEvent,
    RobotSnapshot,
    Shutdown,
    StatusRequest,
    StatusResponse,
    Subscribe,
    Unpause,
    Unsubscribe,
)

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
    return SENDERS[cls.direction]


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


_kept: tuple[Envelope, str] | None = None  # the last message encoded with keep=True, its frame


def encode(msg: Envelope, *, max_bytes: int = MAX_FRAME_BYTES, keep: bool = False) -> str:
    """The JSON text frame for ``msg`` (secrets included: the peer needs them).

    Raises :class:`ProtocolError` ``frame_too_large`` when the frame would exceed
    ``max_bytes``, so the sender learns it before the receiver drops the connection.
    ``keep``: remember the frame, so that encoding the same object again (the very object:
    a message checked for size, then sent) reuses it; only the last one is kept.
    """
    global _kept
    kept = _kept
    if kept is not None and kept[0] is msg:
        text = kept[1]
        size = _utf8_size(text, max_bytes)
        if size > max_bytes:
            _too_large(len(text.encode("utf-8", "surrogatepass")), max_bytes)
        return text
    text = _encode(msg, max_bytes)
    if keep:
        _kept = (msg, text)
    return text


def _encode(msg: Envelope, max_bytes: int) -> str:
    try:
        text = msg.model_dump_json(context={REVEAL_SECRETS: True})
    except PydanticSerializationError:
        # text that is not valid Unicode (a cell's error holding a lone surrogate): sent
        # escaped, so the report goes out instead of failing the sender
        data = msg.model_dump(mode="json", context={REVEAL_SECRETS: True})
        text = json.dumps(_storable(data), ensure_ascii=False, separators=(",", ":"))
    size = _utf8_size(text, max_bytes)
    if size > max_bytes:
        _too_large(len(text.encode("utf-8", "surrogatepass")), max_bytes)
    return text


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


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


def _may_hold_surrogates(data: str | bytes) -> bool:
    """Whether parsing ``data`` may give text that is not valid Unicode (a lone surrogate):
    a text frame holding one, or the escape of one (``\\ud800`` to ``\\udfff``; any
    ``\\ud`` counts). False lets :func:`decode` skip walking every string of the message,
    which costs more than parsing it; bytes are always walked."""
    if not isinstance(data, str):
        return True
    if "\\ud" in data or "\\uD" in data:
        return True
    try:
        data.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _decode_fast(data: str | bytes, sender: Role | None) -> Message | None:
    """The message in ``data`` parsed and validated in one pass (pydantic's own JSON
    parser), or None when :func:`decode` must take the long way: bytes, a constant that
    is not JSON (``NaN``, ``Infinity``: any mention of them), anything the one pass
    refuses (a lone surrogate's escape, bad JSON, an invalid message), a message its
    sender may not send, or a protocol version this side does not speak. The long way
    says why, in the same words as ever; what this answers, it answers the same."""
    if not isinstance(data, str) or "NaN" in data or "Infinity" in data:
        return None
    try:
        msg = MESSAGE_ADAPTER.validate_json(data)
    except (ValidationError, ValueError, RecursionError):
        return None
    if sender is not None and sender not in senders(type(msg)):
        return None
    if isinstance(msg, Register) and msg.protocol_version not in SUPPORTED_PROTOCOL_VERSIONS:
        return None
    return msg


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
    fast = _decode_fast(data, sender)
    if fast is not None:
        return fast
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
    where = unicode_problem(obj) if _may_hold_surrogates(data) else None
    if where is not None:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"invalid message: text at {where} is not valid Unicode (a lone surrogate)",
        )
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
