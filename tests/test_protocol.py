"""The wire protocol (casare_nb.protocol): models, encode/decode, errors, dedup, generated docs."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pickle
import subprocess
import sys
import typing
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest
from pydantic import ValidationError

from casare_nb import protocol as p
from casare_nb.core.models import CellRecord, CellStatus, Job, ResumePlan, RunStatus

ROOT = Path(__file__).resolve().parent.parent
NB: dict[str, Any] = {
    "cells": [{"cell_type": "code", "id": "c0", "source": "x = 1", "metadata": {}}],
    "metadata": {"kernelspec": {"name": "python3"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}
SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()
REF = p.JobRef(job_id="job-1", attempt=2)
SECRET = "hunter2-very-secret"
M = TypeVar("M", bound=p.Envelope)

SAMPLES: dict[type[p.Envelope], Callable[[], p.Envelope]] = {
    p.Register: lambda: p.Register(
        robot_id="r1",
        name="Robot one",
        environment="prod",
        tags=["gpu", "eu"],
        max_concurrent_jobs=3,
        capabilities=p.Capabilities(kernels=["python3"], python="3.11.9", features=["x"]),
        holding=[REF],
    ),
    p.RegisterAck: lambda: p.RegisterAck(
        accepted=True, heartbeat_interval_s=5, continue_jobs=[REF], reply_to="abc"
    ),
    p.Heartbeat: lambda: p.Heartbeat(
        robot_id="r1",
        status="busy",
        running_jobs=[REF],
        cpu_percent=150.5,
        memory_percent=40,
        seq=7,
    ),
    p.HeartbeatAck: lambda: p.HeartbeatAck(seq=7),
    p.JobAssign: lambda: p.JobAssign(
        job_id="job-1",
        attempt=2,
        workflow_path="workflows/etl.ipynb",
        notebook=NB,
        secret_parameters={"token": SECRET},
        resume=p.ResumeSpec(
            from_attempt=1,
            plan=ResumePlan(
                start=2, restore_cell=0, restore_cell_id="c0", rerun=[1], inherit_ids=["c0"]
            ),
            manifests={"c0": {"vars": {"x": {"blob": SHA_A}}}},
            blobs=[SHA_A],
        ),
        priority="high",
        timeouts=p.Timeouts(cell_s=30, run_s=600),
    ),
    p.JobAccept: lambda: p.JobAccept(job_id="job-1", attempt=2),
    p.JobReject: lambda: p.JobReject(job_id="job-1", attempt=2, reason="at capacity"),
    p.JobProgress: lambda: p.JobProgress(
        job_id="job-1",
        attempt=2,
        cell_index=3,
        cell_id="c3",
        status=CellStatus.ERROR,
        duration_s=1.25,
        cells_done=2,
        cells_total=5,
        started_at=datetime(2025, 1, 1, tzinfo=UTC),
        error_name="ValueError",
        error_message="boom",
    ),
    p.JobComplete: lambda: p.JobComplete(
        job_id="job-1", attempt=2, output_notebook=NB, duration_s=9.5, replayed_cells=[1]
    ),
    p.JobFailed: lambda: p.JobFailed(
        job_id="job-1",
        attempt=2,
        status=RunStatus.TIMEOUT,
        failed_cell=3,
        failed_cell_id="c3",
        error_name="TimeoutError",
        error_message="cell timed out after 30 s",
        output_notebook=NB,
        duration_s=31,
    ),
    p.JobCancel: lambda: p.JobCancel(job_id="job-1", attempt=2, reason="user asked"),
    p.JobCancelled: lambda: p.JobCancelled(job_id="job-1", attempt=2),
    p.CheckpointOffer: lambda: p.CheckpointOffer(
        job_id="job-1",
        attempt=2,
        cell_id="c0",
        manifest={"vars": {"x": {"blob": SHA_A}}},
        blobs=[SHA_A, SHA_B],
    ),
    p.CheckpointWant: lambda: p.CheckpointWant(
        job_id="job-1", attempt=2, cell_id="c0", blobs=[SHA_B]
    ),
    p.BlobPut: lambda: p.BlobPut.of(b"b"),
    p.BlobAck: lambda: p.BlobAck(sha256=[SHA_B]),
    p.BlobGet: lambda: p.BlobGet(sha256=[SHA_A, SHA_B]),
    p.CheckpointStored: lambda: p.CheckpointStored(job_id="job-1", attempt=2, cell_id="c0"),
    p.LogBatch: lambda: p.LogBatch(
        robot_id="r1",
        job_id="job-1",
        attempt=2,
        records=[p.LogRecord(level="WARNING", message="slow cell", logger="casare_nb.robot")],
        dropped=4,
    ),
    p.Pause: lambda: p.Pause(reason="maintenance"),
    p.Unpause: lambda: p.Unpause(),
    p.Shutdown: lambda: p.Shutdown(graceful=False, reason="upgrade"),
    p.StatusRequest: lambda: p.StatusRequest(),
    p.StatusResponse: lambda: p.StatusResponse(
        robot_id="r1",
        status="draining",
        paused=True,
        running_jobs=[REF],
        pool={"python3": {"warm": 2}},
    ),
    p.Error: lambda: p.Error(code=p.ErrorCode.STALE_ATTEMPT, message="attempt 1 superseded"),
    p.Subscribe: lambda: p.Subscribe(topics=frozenset({p.Topic.JOBS, p.Topic.CELLS})),
    p.Unsubscribe: lambda: p.Unsubscribe(topics=frozenset({p.Topic.CELLS})),
    p.Event: lambda: p.Event(
        topic=p.Topic.JOBS,
        kind=p.EventKind.JOB_FINISHED,
        data=p.JobEvent(
            job=Job(
                job_id="job-1",
                workflow_path="wf.ipynb",
                status=RunStatus.COMPLETED,
                created_at=datetime(2026, 12, 1, tzinfo=UTC),
                eligible_at=datetime(2026, 12, 1, tzinfo=UTC),
            )
        ),
    ),
}


def sample(cls: type[M]) -> M:
    """A fully populated instance of message class ``cls``."""
    msg = SAMPLES[cls]()
    assert isinstance(msg, cls)
    return msg


UNION_MEMBERS: tuple[type[p.Envelope], ...] = typing.get_args(typing.get_args(p.Message)[0])


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def decode_error(data: str | bytes, **kwargs: Any) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        p.decode(data, **kwargs)
    return info.value


# --------------------------------------------------------------------------- the union


def test_union_sections_and_types_agree() -> None:
    """SECTIONS, MESSAGE_TYPES and the Message union list the same classes, one type each."""
    in_sections = [cls for _, classes in p.SECTIONS for cls in classes]
    assert list(UNION_MEMBERS) == in_sections
    assert set(p.MESSAGE_TYPES.values()) == set(UNION_MEMBERS)
    assert len(p.MESSAGE_TYPES) == len(UNION_MEMBERS)
    for mtype, cls in p.MESSAGE_TYPES.items():
        assert cls.model_fields["type"].default == mtype


def test_every_union_member_has_a_sample() -> None:
    """The round-trip samples cover every message class."""
    assert set(SAMPLES) == set(UNION_MEMBERS)


@pytest.mark.parametrize("cls", UNION_MEMBERS, ids=lambda c: c.__name__)
def test_every_message_is_documented(cls: type[p.Envelope]) -> None:
    """Each message has a one-line docstring, a known direction and a description per field."""
    assert cls.__doc__ and "\n" not in cls.__doc__.strip()
    assert cls.direction in p.SENDERS
    assert p.senders(cls)
    for name, field in cls.model_fields.items():
        assert name == "type" or field.description, f"{cls.__name__}.{name} has no description"


def test_user_facing_names() -> None:
    """ "Resume" means one thing on the wire, a re-run from a checkpoint (ResumeSpec): a robot is
    unpaused, and a reconnecting robot names the jobs it is holding."""
    assert p.Unpause().type == "unpause"
    assert not [t for t in p.MESSAGE_TYPES if "resume" in t]
    assert "holding" in p.Register.model_fields
    assert not [f for f in p.Register.model_fields if "resume" in f]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("cls", UNION_MEMBERS, ids=lambda c: c.__name__)
def test_round_trip(cls: type[p.Envelope]) -> None:
    """decode(encode(msg)) gives back an equal message of the same class, for every type."""
    msg = sample(cls)
    text = p.encode(msg)
    assert isinstance(text, str)
    back = p.decode(text)
    assert type(back) is cls
    assert back == msg
    assert p.decode(text.encode("utf-8")) == msg
    assert p.MESSAGE_ADAPTER.validate_json(text) == msg
    assert json.loads(text)["type"] == msg.type


def test_envelope_defaults() -> None:
    """id defaults to a fresh uuid4 hex, ts to an aware UTC now, reply_to to None."""
    a, b = p.HeartbeatAck(seq=1), p.HeartbeatAck(seq=1)
    assert a.id != b.id and len(a.id) == 32 and int(a.id, 16) >= 0
    assert a.ts.tzinfo is not None and a.ts.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - a.ts) < timedelta(seconds=5)
    assert a.reply_to is None


def test_timestamps_are_aware_and_normalised_to_utc() -> None:
    """A naive ts is refused; an offset ts becomes the same instant in UTC."""
    plus2 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    msg = p.HeartbeatAck(seq=1, ts=plus2)
    assert msg.ts == plus2 and msg.ts.tzinfo is UTC and msg.ts.hour == 10
    err = decode_error(frame(type="heartbeat_ack", seq=1, ts="2025-01-01T00:00:00"))
    assert err.code is p.ErrorCode.INVALID_MESSAGE
    assert "heartbeat_ack.ts" in str(err)


# --------------------------------------------------------------------------- decode errors

DECODE_ERRORS: list[tuple[str, str | bytes, p.ErrorCode, str]] = [
    ("not-json", "{nope", p.ErrorCode.INVALID_MESSAGE, "invalid message: not JSON"),
    ("not-utf8", b"\xff\xfe\x00", p.ErrorCode.INVALID_MESSAGE, "invalid message"),
    ("nan", '{"type": "heartbeat_ack", "seq": NaN}', p.ErrorCode.INVALID_MESSAGE, "NaN"),
    ("array", "[1, 2]", p.ErrorCode.INVALID_MESSAGE, "expected a JSON object, got array"),
    ("string", '"hello"', p.ErrorCode.INVALID_MESSAGE, "expected a JSON object, got str"),
    ("missing-type", frame(seq=1), p.ErrorCode.INVALID_MESSAGE, "missing 'type'"),
    ("unknown-type", frame(type="teleport"), p.ErrorCode.INVALID_MESSAGE, "unknown type"),
    ("type-not-str", frame(type=3), p.ErrorCode.INVALID_MESSAGE, "unknown type 3"),
    (
        "bad-field",
        frame(
            type="job_progress",
            job_id="j",
            attempt=1,
            cell_index="third",
            status="ok",
            duration_s=1,
            cells_done=1,
            cells_total=2,
        ),
        p.ErrorCode.INVALID_MESSAGE,
        "invalid message: job_progress.cell_index: Input should be a valid integer",
    ),
    (
        "missing-field",
        frame(type="job_accept", job_id="j"),
        p.ErrorCode.INVALID_MESSAGE,
        "invalid message: job_accept.attempt: Field required",
    ),
    (
        "extra-field",
        frame(type="heartbeat_ack", seq=1, colour="blue"),
        p.ErrorCode.INVALID_MESSAGE,
        "heartbeat_ack.colour: Extra inputs are not permitted",
    ),
    (
        "bad-enum",
        frame(type="subscribe", topics=["jobs", "weather"]),
        p.ErrorCode.INVALID_MESSAGE,
        "subscribe.topics",
    ),
    (
        "failed-with-completed",
        frame(type="job_failed", job_id="j", attempt=1, status="completed"),
        p.ErrorCode.INVALID_MESSAGE,
        "status must be failed, timeout or cancelled",
    ),
    (
        "event-kind-topic",
        frame(type="event", topic="jobs", kind="robot_online", data={"robot": {}}),
        p.ErrorCode.INVALID_MESSAGE,
        "event.data.RobotEvent.robot.robot_id: Field required",
    ),
    (
        "version-not-int",
        frame(type="register", robot_id="r", name="n", protocol_version="1"),
        p.ErrorCode.INVALID_MESSAGE,
        "register.protocol_version: Input should be a valid integer",
    ),
    (
        "unsupported-version-with-unknown-fields",
        frame(type="register", robot_id="r", name="n", protocol_version=1, quic=True),
        p.ErrorCode.UNSUPPORTED_VERSION,
        "this side speaks 2",
    ),
    (
        "unsupported-version",
        frame(type="register", robot_id="r", name="n", protocol_version=99),
        p.ErrorCode.UNSUPPORTED_VERSION,
        "unsupported protocol version 99",
    ),
]


@pytest.mark.parametrize(
    ("data", "code", "text"),
    [case[1:] for case in DECODE_ERRORS],
    ids=[case[0] for case in DECODE_ERRORS],
)
def test_decode_errors(data: str | bytes, code: p.ErrorCode, text: str) -> None:
    """Each kind of bad frame raises ProtocolError with the right code and a one-line message."""
    err = decode_error(data)
    assert err.code is code
    assert text in str(err)
    assert "\n" not in str(err)
    assert str(err) == err.message


def test_unsupported_version_is_fatal_and_answers_the_register() -> None:
    """A register of another version is refused as fatal, the Error replying to its id."""
    reg = p.Register(robot_id="r", name="n", protocol_version=1)
    err = decode_error(p.encode(reg))
    assert err.code is p.ErrorCode.UNSUPPORTED_VERSION and err.fatal
    reply = err.to_message()
    assert isinstance(reply, p.Error)
    assert reply.reply_to == reg.id and reply.fatal and reply.code is err.code
    assert p.decode(p.encode(reply)) == reply


def test_validation_error_keeps_the_message_id_for_the_reply() -> None:
    """An invalid but identifiable message gets an Error whose reply_to is its id."""
    err = decode_error(frame(type="heartbeat_ack", id="m-42", seq=-1))
    assert err.message_id == "m-42"
    assert err.to_message().reply_to == "m-42"
    assert err.to_message(reply_to="other").reply_to == "other"
    assert not err.fatal


def test_several_errors_are_counted_on_one_line() -> None:
    """Many invalid fields still give one line: the first, and how many more."""
    err = decode_error(frame(type="job_accept"))
    assert "(and 1 more)" in str(err)
    assert "\n" not in str(err)


def test_sender_role_is_checked_when_given() -> None:
    """decode(sender=robot) refuses a job_assign; orchestrator-sent types pass for it."""
    text = p.encode(sample(p.JobAssign))
    err = decode_error(text, sender=p.Role.ROBOT)
    assert err.code is p.ErrorCode.INVALID_MESSAGE
    assert "a robot may not send job_assign" in str(err)
    assert isinstance(p.decode(text, sender=p.Role.ORCHESTRATOR), p.JobAssign)
    blob = p.encode(sample(p.BlobPut))
    assert p.decode(blob, sender=p.Role.ROBOT) == p.decode(blob, sender=p.Role.ORCHESTRATOR)
    assert decode_error(blob, sender=p.Role.MONITOR).code is p.ErrorCode.INVALID_MESSAGE
    error = p.encode(sample(p.Error))
    assert all(p.decode(error, sender=role).type == "error" for role in p.Role)


# --------------------------------------------------------------------------- frame size


def test_oversized_frame_rejected_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame over max_bytes raises frame_too_large without JSON parsing or validation."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("parsed an oversized frame")

    monkeypatch.setattr(json, "loads", boom)
    monkeypatch.setattr(p.MESSAGE_ADAPTER, "validate_python", boom)
    big = '{"type": "heartbeat_ack", "seq": 1, "pad": "' + "x" * 200 + '"}'
    for data in (big, big.encode()):
        err = decode_error(data, max_bytes=100)
        assert err.code is p.ErrorCode.FRAME_TOO_LARGE
        assert "frame too large" in str(err) and "100" in str(err)
    huge = " " * (p.MAX_FRAME_BYTES + 1)
    assert decode_error(huge).code is p.ErrorCode.FRAME_TOO_LARGE


def test_frame_limit_counts_utf8_bytes_not_characters() -> None:
    """A str frame is measured in UTF-8 bytes; a frame exactly at the limit is accepted."""
    text = p.encode(p.Pause(reason="é" * 40))
    n_bytes = len(text.encode("utf-8"))
    assert n_bytes > len(text)
    assert isinstance(p.decode(text, max_bytes=n_bytes), p.Pause)
    err = decode_error(text, max_bytes=n_bytes - 1)
    assert err.code is p.ErrorCode.FRAME_TOO_LARGE
    assert str(n_bytes) in str(err)


def test_encode_refuses_a_frame_over_the_limit() -> None:
    """encode raises frame_too_large instead of building a frame the peer would refuse."""
    msg = p.Pause(reason="x" * 500)
    with pytest.raises(p.ProtocolError) as info:
        p.encode(msg, max_bytes=200)
    assert info.value.code is p.ErrorCode.FRAME_TOO_LARGE
    assert len(p.encode(msg).encode()) > 200


def test_largest_blob_fits_a_default_frame() -> None:
    """A blob_put of MAX_BLOB_BYTES encodes within MAX_FRAME_BYTES and decodes intact."""
    data = bytes(range(256)) * (p.MAX_BLOB_BYTES // 256) + b"\x01" * (p.MAX_BLOB_BYTES % 256)
    assert len(data) == p.MAX_BLOB_BYTES
    msg = p.BlobPut.of(data, reply_to="f" * 128)
    text = p.encode(msg)
    assert len(text.encode()) <= p.MAX_FRAME_BYTES
    back = p.decode(text)
    assert isinstance(back, p.BlobPut) and back.payload() == data


# --------------------------------------------------------------------------- blobs


def test_blob_put_with_wrong_hash_is_rejected() -> None:
    """blob_put whose data does not hash to sha256 fails in the constructor and in decode."""
    good = p.BlobPut.of(b"payload")
    assert good.sha256 == hashlib.sha256(b"payload").hexdigest()
    assert good.payload() == b"payload"
    with pytest.raises(ValidationError, match="sha256 mismatch"):
        p.BlobPut(sha256=SHA_A, data=good.data)
    err = decode_error(frame(type="blob_put", sha256=SHA_A, data=good.data))
    assert err.code is p.ErrorCode.INVALID_MESSAGE
    assert "sha256 mismatch" in str(err)


def test_blob_put_with_bad_base64_or_hash_is_rejected() -> None:
    """Non-base64 data and a sha256 that is not 64 lowercase hex chars are refused."""
    with pytest.raises(ValidationError, match="not valid base64"):
        p.BlobPut(sha256=SHA_A, data="***not base64***")
    with pytest.raises(ValidationError, match="pattern"):
        p.BlobPut(sha256=SHA_A.upper(), data="YQ==")
    with pytest.raises(ValidationError):
        p.CheckpointWant(job_id="j", attempt=1, cell_id="c", blobs=["abc"])


# --------------------------------------------------------------------------- secrets


def test_secret_parameters_are_masked_in_repr_and_str() -> None:
    """repr() and str() of a job_assign never show secret values (the names stay)."""
    msg = sample(p.JobAssign)
    for text in (repr(msg), str(msg), f"{msg!r}"):
        assert SECRET not in text
        assert "token" in text and "***" in text
    assert "<notebook: 1 cells>" in repr(msg)  # big fields are abbreviated too


def test_secret_parameters_are_masked_in_model_dump_unless_revealed() -> None:
    """model_dump/model_dump_json mask secrets; the reveal_secrets context shows them."""
    msg = sample(p.JobAssign)
    assert msg.model_dump()["secret_parameters"] == {"token": "***"}
    assert SECRET not in msg.model_dump_json()
    revealed = msg.model_dump(context={p.REVEAL_SECRETS: True})
    assert revealed["secret_parameters"] == {"token": SECRET}
    assert msg.secret_parameters == {"token": SECRET}


def test_encode_carries_the_secrets_to_the_robot() -> None:
    """encode puts secret values on the wire and decode gives them back."""
    msg = sample(p.JobAssign)
    text = p.encode(msg)
    assert json.loads(text)["secret_parameters"] == {"token": SECRET}
    back = p.decode(text)
    assert isinstance(back, p.JobAssign)
    assert back.secret_parameters == {"token": SECRET}


def test_decode_errors_do_not_echo_secrets() -> None:
    """An invalid job_assign's error message does not contain its secret values."""
    wire = json.loads(p.encode(sample(p.JobAssign)))
    wire["attempt"] = "two"
    err = decode_error(json.dumps(wire))
    assert "job_assign.attempt" in str(err)
    assert SECRET not in str(err) and SECRET not in repr(err)


# --------------------------------------------------------------------------- model rules


def test_unknown_extra_field_is_rejected() -> None:
    """Constructors and nested models refuse fields they do not define."""
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        p.HeartbeatAck(seq=1, colour="blue")  # type: ignore[call-arg]
    wire = json.loads(p.encode(sample(p.Register)))
    wire["capabilities"]["teleport"] = True
    err = decode_error(json.dumps(wire))
    assert "register.capabilities.teleport" in str(err)


def test_messages_are_frozen() -> None:
    """Assigning to a field of a message or a nested model raises."""
    msg = sample(p.Heartbeat)
    with pytest.raises(ValidationError):
        msg.seq = 8
    with pytest.raises(ValidationError):
        REF.attempt = 3
    for cls in (*UNION_MEMBERS, *p.NESTED_MODELS):
        assert cls.model_config.get("frozen") is True
        assert cls.model_config.get("extra") == "forbid"


def test_constraints() -> None:
    """max_concurrent_jobs >= 1, attempt >= 1, cells_done <= cells_total, topics non-empty."""
    with pytest.raises(ValidationError):
        p.Register(robot_id="r", name="n", max_concurrent_jobs=0)
    with pytest.raises(ValidationError):
        p.JobAccept(job_id="j", attempt=0)
    with pytest.raises(ValidationError, match="cells_done 3 > cells_total 2"):
        p.JobProgress(
            job_id="j",
            attempt=1,
            cell_index=0,
            status=CellStatus.OK,
            duration_s=0,
            cells_done=3,
            cells_total=2,
        )
    with pytest.raises(ValidationError):
        p.Subscribe(topics=frozenset())
    with pytest.raises(ValidationError, match="not a notebook"):
        p.JobComplete(job_id="j", attempt=1, output_notebook={"cells": "no"}, duration_s=1)
    with pytest.raises(ValidationError):
        p.Heartbeat(robot_id="r", status="offline", seq=1)  # type: ignore[arg-type]


def test_job_ref_is_hashable_and_messages_expose_it() -> None:
    """JobRef works as a set/dict key, and job messages give their (job, attempt) as .ref."""
    assert {REF, p.JobRef(job_id="job-1", attempt=2)} == {REF}
    assert sample(p.JobAccept).ref == REF


def test_job_progress_becomes_a_cell_record() -> None:
    """job_progress.to_cell_record() is the history row keyed by (job, attempt, cell_index)."""
    msg = sample(p.JobProgress)
    rec = msg.to_cell_record()
    assert isinstance(rec, CellRecord)
    assert (rec.run_id, rec.attempt, rec.cell_index) == p.progress_key(msg)
    assert rec.status is CellStatus.ERROR and rec.error_name == "ValueError"


# --------------------------------------------------------------------------- dedup


def test_deduplicator_drops_duplicates() -> None:
    """seen() is False the first time a key comes, True for every repeat."""
    dedup = p.Deduplicator()
    first = sample(p.JobProgress)
    replay = first.model_copy(update={"id": "resent"})  # same news, re-sent under a new id
    assert dedup.seen(p.progress_key(first)) is False
    assert dedup.seen(p.progress_key(replay)) is True
    assert dedup.seen(p.dedup_key(first)) is False
    assert dedup.seen(p.dedup_key(replay)) is True
    next_cell = first.model_copy(update={"cell_index": 4})
    assert dedup.seen(p.dedup_key(next_cell)) is False
    a, b = p.HeartbeatAck(seq=1), p.HeartbeatAck(seq=1)
    assert p.dedup_key(a) != p.dedup_key(b)  # no natural key: the id decides
    assert dedup.seen(p.dedup_key(a)) is False and dedup.seen(p.dedup_key(a)) is True


def test_deduplicator_stays_bounded_and_forgets_oldest() -> None:
    """With max_size N only the N most recently seen keys are kept (LRU)."""
    dedup = p.Deduplicator(max_size=3)
    for i in range(1000):
        dedup.seen(("job", 1, i))
    assert len(dedup) == 3
    assert ("job", 1, 999) in dedup and ("job", 1, 0) not in dedup
    lru = p.Deduplicator(max_size=2)
    lru.seen("a")
    lru.seen("b")
    assert lru.seen("a") is True  # refreshes a
    lru.seen("c")  # evicts b, the least recently seen
    assert "a" in lru and "b" not in lru
    with pytest.raises(ValueError):
        p.Deduplicator(max_size=0)


# --------------------------------------------------------------------------- ProtocolError


def test_protocol_error_pickles() -> None:
    """ProtocolError survives pickling with code, message, fatal flag and message id."""
    err = p.ProtocolError(p.ErrorCode.UNKNOWN_JOB, "unknown job 'x'", message_id="m1")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is p.ProtocolError
    assert (back.code, back.message, back.fatal, back.message_id) == (
        err.code,
        err.message,
        err.fatal,
        err.message_id,
    )
    assert str(back) == "unknown job 'x'"
    fatal = pickle.loads(pickle.dumps(p.ProtocolError("internal", "down", True)))
    assert fatal.code is p.ErrorCode.INTERNAL and fatal.fatal is True


def test_protocol_error_and_error_message_convert() -> None:
    """to_message builds the Error reply and from_message turns a received Error back."""
    err = p.ProtocolError(p.ErrorCode.UNAUTHORIZED, "bad token")
    assert err.fatal  # unauthorized is fatal by default
    reply = err.to_message(reply_to="m9")
    assert (reply.code, reply.message, reply.fatal, reply.reply_to) == (
        p.ErrorCode.UNAUTHORIZED,
        "bad token",
        True,
        "m9",
    )
    again = p.ProtocolError.from_message(reply)
    assert (again.code, again.message, again.message_id) == (err.code, err.message, "m9")
    with pytest.raises(ValueError):
        p.ProtocolError("no_such_code", "x")


# --------------------------------------------------------------------------- purity and docs


def test_importing_protocol_loads_no_io_library() -> None:
    """`import casare_nb.protocol` leaves websockets, duckdb, nbclient, asyncio and co. unloaded."""
    code = (
        "import json, sys\n"
        "import casare_nb.protocol\n"
        "bad = ('websockets', 'duckdb', 'nbclient', 'papermill', 'jupyter_client', 'nbformat',\n"
        "       'asyncio', 'casare_nb.local', 'casare_nb.store', 'casare_nb.notebook')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(bad))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def _generator() -> ModuleType:
    path = ROOT / "scripts" / "gen_protocol_doc.py"
    spec = importlib.util.spec_from_file_location("gen_protocol_doc", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_protocol_doc_is_up_to_date() -> None:
    """docs/protocol.md is exactly what scripts/gen_protocol_doc.py generates now."""
    expected = _generator().render()
    current = (ROOT / "docs" / "protocol.md").read_text("utf-8")
    assert current == expected, "docs/protocol.md is stale: run scripts/gen_protocol_doc.py"


def test_protocol_doc_covers_every_message_and_error_code() -> None:
    """The generated page has a section per message type and a row per error code."""
    text = _generator().render()
    for mtype, cls in p.MESSAGE_TYPES.items():
        assert f"\n### {mtype}\n" in text
        assert cls.direction in text
    for code in p.ErrorCode:
        assert f"| `{code.value}` |" in text
    assert f"Protocol version: {p.PROTOCOL_VERSION}" in text
    assert str(p.MAX_FRAME_BYTES) in text
