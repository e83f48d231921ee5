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

Pure: stdlib, pydantic and ``casare_nb.core`` only. The package's modules: :mod:`.base`
(version, limits, field types, enums, the envelope, nested objects), :mod:`.messages` (every
message, events included), :mod:`.codec` (the union, encode/decode, de-duplication); this
module is their one face.
"""

from casare_nb.protocol.base import (
    MAX_BLOB_BYTES,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    REVEAL_SECRETS,
    SENDERS,
    SUPPORTED_PROTOCOL_VERSIONS,
    Capabilities,
    Envelope,
    ErrorCode,
    EventKind,
    JobRef,
    JobScoped,
    LogRecord,
    ResumeSpec,
    RobotState,
    Role,
    Timeouts,
    Topic,
    TypeName,
    WireModel,
)
from casare_nb.protocol.codec import (
    MESSAGE_ADAPTER,
    MESSAGE_TYPES,
    NESTED_MODELS,
    SECTIONS,
    Deduplicator,
    Message,
    ProtocolError,
    decode,
    dedup_key,
    encode,
    progress_key,
    senders,
)
from casare_nb.protocol.messages import (
    EVENT_DATA,
    BlobAck,
    BlobGet,
    BlobPut,
    CellEvent,
    CheckpointOffer,
    CheckpointStored,
    CheckpointWant,
    Error,
    Event,
    EventData,
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
    "SENDERS",
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
    "JobScoped",
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
    "RobotState",
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
    "WireModel",
    "decode",
    "dedup_key",
    "encode",
    "progress_key",
    "senders",
]
