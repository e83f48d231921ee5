"""Regenerate docs/protocol.md from the message models in casare_nb.protocol.

    python scripts/gen_protocol_doc.py          # write docs/protocol.md
    python scripts/gen_protocol_doc.py --check  # exit 1 if docs/protocol.md is out of date

Everything in the page comes from the models: docstrings, ``direction``, field types,
defaults, constraints and ``Field(description=...)``. Edit those, then run this.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import types
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, StringConstraints
from pydantic.fields import FieldInfo

from casare_nb import protocol as p
from casare_nb.core.models import (
    CellStatus,
    Job,
    JobTimeouts,
    Priority,
    Robot,
    RobotStatus,
    RunStatus,
)
from casare_nb.protocol import base

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "protocol.md"

ENUMS: tuple[type[Enum], ...] = (CellStatus, RunStatus, Priority, RobotStatus, p.Topic, p.EventKind)
FACTORIES: dict[Callable[[], Any], str] = {
    base._new_id: "random per-process prefix + counter",
    base._utcnow: "now",
    list: "`[]`",
    dict: "`{}`",
}


def _anchor(name: str) -> str:
    target = "error-codes" if name == "ErrorCode" else name.lower()
    return f"[{name}](#{target})"


def _constraints(metadata: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for item in metadata:
        if isinstance(item, at.Ge):
            out.append(f"≥ {item.ge}")
        elif isinstance(item, at.Gt):
            out.append(f"> {item.gt}")
        elif isinstance(item, at.Le):
            out.append(f"≤ {item.le}")
        elif isinstance(item, at.Lt):
            out.append(f"< {item.lt}")
        elif isinstance(item, at.MinLen):
            out.append("non-empty" if item.min_length == 1 else f"≥ {item.min_length} items")
        elif isinstance(item, at.MaxLen):
            out.append(f"≤ {item.max_length} items")
        elif isinstance(item, StringConstraints):
            if item.min_length == 1:
                out.append("non-empty")
            if item.max_length is not None:
                out.append(f"≤ {item.max_length} chars")
    return out


def type_name(annotation: Any, metadata: Sequence[Any] = ()) -> str:
    """A reader's name for a field type: ``list[sha256 hex]``, ``str | null`` ..."""
    named = [m.name for m in metadata if isinstance(m, p.TypeName)]
    if named:
        return named[0]
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        inner = type_name(args[0], args[1:])
        extra = [] if any(isinstance(m, p.TypeName) for m in args[1:]) else _constraints(args[1:])
        return f"{inner} ({', '.join(extra)})" if extra else inner
    if origin in (Union, types.UnionType):
        parts = [type_name(a) for a in args if a is not type(None)]
        if type(None) in args:
            parts.append("null")
        return " | ".join(parts)
    if origin is Literal:
        return " | ".join(json.dumps(a.value if isinstance(a, Enum) else a) for a in args)
    if origin is list:
        return f"list[{type_name(args[0])}]"
    if origin in (set, frozenset):
        return f"set[{type_name(args[0])}]"
    if origin is dict:
        return "object" if args[1] is Any else f"dict[{type_name(args[0])}, {type_name(args[1])}]"
    if annotation is Any:
        return "any"
    if annotation is datetime:
        return "datetime"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel | Enum):
        return _anchor(annotation.__name__)
    return str(getattr(annotation, "__name__", annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    factory = field.default_factory
    if factory is not None:
        if factory in FACTORIES:
            return FACTORIES[factory]
        if inspect.isclass(factory) and issubclass(factory, BaseModel):
            return "`{}`"
        return getattr(factory, "__name__", "computed")
    value = field.default
    if isinstance(value, Enum):
        value = value.value
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def fields_table(model: type[BaseModel], skip: Iterable[str] = ()) -> list[str]:
    """Markdown table of a model's fields (name, type, required/default, description)."""
    rows = [
        "| field | type | default | description |",
        "| --- | --- | --- | --- |",
    ]
    skipped = set(skip)
    for name, field in model.model_fields.items():
        if name in skipped:
            continue
        kind = type_name(field.annotation, field.metadata)
        extra = _constraints(field.metadata)
        if extra and not any(isinstance(m, p.TypeName) for m in field.metadata):
            kind = f"{kind} ({', '.join(extra)})"
        rows.append(
            f"| `{name}` | {_cell(kind)} | {_cell(_default(field))} "
            f"| {_cell(field.description or '')} |"
        )
    return rows


def _doc(obj: type) -> str:
    return inspect.cleandoc(obj.__doc__ or "")


def _example() -> str:
    msg = p.Heartbeat(
        id="5f0c1d2e3a4b4c5d8e9f0a1b2c3d4e5f",
        ts=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        robot_id="robot-1",
        status="busy",
        running_jobs=[p.JobRef(job_id="20250102-030000-ab12", attempt=2)],
        cpu_percent=37.5,
        memory_percent=41.0,
        seq=12,
    )
    return json.dumps(json.loads(p.encode(msg)), indent=2)


INTRO = """\
# Wire protocol

<!-- Generated by scripts/gen_protocol_doc.py from casare_nb/protocol/: do not edit. -->

The orchestrator talks to its **robots** (agents that run notebook jobs) and to its
**monitors** (dashboards) over WebSocket. `casare_nb.protocol` defines every message as a
pydantic model; it is sans-I/O (no sockets): the WebSocket server of the orchestrator and
the robot agent are built on it. **Status:** the messages, their validation and this page
exist; the server and the agent that speak them are being built (issue 3), so the transport
rules below are the design they follow.

## Transport

- **WebSocket text frames**, one JSON object per frame, one message per object
  (`encode(msg)` / `decode(frame)`). Binary data travels base64 inside `blob_put`.
- **Authentication happens before the upgrade**: the client sends
  `Authorization: Bearer <token>` with the HTTP upgrade request, and the orchestrator
  answers 401 without upgrading when the token is wrong (tokens are stored hashed). No
  message carries a token. The orchestrator listens on `127.0.0.1:8765` unless told
  otherwise; TLS (`wss://`) is one option away. A robot or client trusts a certificate
  signed by its own CA (a self-signed one) with `--ca-file` (robot config
  `connection.ca_file`, `CASARE_CA_FILE`); a certificate that fails verification is not
  retried: the robot stops with one line naming the cause.
- **Token roles** decide what a connection may become: only a `robot` token (or one
  created before roles existed, which acts as admin) may `register`; only a `user` or
  `admin` token may `subscribe`. Another gets a fatal `unauthorized` error naming the
  token, its role and the role needed (`token 'x' has role user; registering as a robot
  needs robot`), and the connection is closed with 1008. The HTTP API answers the same
  refusal with 403 and that one line as `detail`: a `user` submits, reads, and cancels or
  re-runs the jobs it submitted; an `admin` also manages tokens, drains robots, pauses
  submissions, changes schedules and triggers and acts on anyone's jobs; a `robot` token
  has no HTTP API.
- **Protocol version: {version}.** The robot states its version in `register`; a version the
  orchestrator does not speak is answered with an `unsupported_version` error (fatal) and
  the connection is closed.
- **Frame limit: {frame} bytes** ({frame_mib} MiB) by default; `decode` refuses a larger
  frame with `frame_too_large` *before* parsing it, and `encode` refuses to build one. A
  blob of at most {blob} bytes fits one default `blob_put`; bigger checkpoint data is split
  into several blobs by the checkpoint layer.

## Envelope

Every message is a JSON object with these fields, then its own. Unknown fields are
refused (`invalid_message`); timestamps carry a timezone and are normalised to UTC.

{envelope}

Example (`heartbeat`):

```json
{example}
```

## Conversations

- **Connect**: robot `register` -> orchestrator `register_ack` (`accepted: false` means
  disconnect). After a reconnect, `holding` lists the (job, attempt) pairs the robot
  still holds; `continue_jobs` in the ack says which are still current, and the robot
  abandons the rest.
- **Liveness**: robot `heartbeat` every `heartbeat_interval_s` -> `heartbeat_ack` with
  the same `seq`.
- **A job**: orchestrator `job_assign` -> robot `job_accept` (or `job_reject`), then a
  `job_progress` after each cell, a checkpoint exchange after each saved checkpoint, and
  finally `job_complete` or `job_failed`. `job_cancel` is answered by `job_cancelled`.
- **A checkpoint**, content-addressed: robot `checkpoint_offer` (manifest + blob hashes)
  -> orchestrator `checkpoint_want` (the blobs it lacks) -> robot `blob_put` per blob ->
  `blob_ack` -> orchestrator `checkpoint_stored` once the manifest and every blob are
  stored. A robot resuming an attempt it did not run fetches missing blobs with
  `blob_get`; the orchestrator answers with `blob_put` (or `unknown_blob`).
- **Monitors**: `subscribe` / `unsubscribe` to topics, then receive `event`s.
- **Refusals**: any peer answers a message it cannot accept with `error`, `reply_to`
  naming the refused message when its id was readable. After a `fatal` error the sender
  closes the connection.

## Delivery: at least once, effects once

A robot may send the same news twice (a reconnect, a replayed offline buffer), and a job
may run twice. Every job message is keyed by `(job_id, attempt)` and `job_progress` by
`(job_id, attempt, cell_index)` (`progress_key`); receivers drop what they have seen
(`Deduplicator`, `dedup_key`) and write idempotently. A message about an attempt a newer
one superseded is refused with `stale_attempt`.

Secret parameters travel only in `job_assign.secret_parameters`; they are masked in the
message's `repr` and in `model_dump` unless the context says `{{"reveal_secrets": true}}`
(`encode` does), and never reach logs, history or output notebooks.
"""


def render() -> str:
    """The whole of docs/protocol.md."""
    envelope = "\n".join(fields_table(p.Envelope))
    lines = [
        INTRO.format(
            version=p.PROTOCOL_VERSION,
            frame=p.MAX_FRAME_BYTES,
            frame_mib=p.MAX_FRAME_BYTES // (1024 * 1024),
            blob=p.MAX_BLOB_BYTES,
            envelope=envelope,
            example=_example(),
        ).rstrip("\n"),
        "",
        "## Messages",
        "",
        "| type | direction | class |",
        "| --- | --- | --- |",
    ]
    for _, classes in p.SECTIONS:
        for cls in classes:
            mtype = cls.model_fields["type"].default
            lines.append(f"| [`{mtype}`](#{mtype}) | {cls.direction} | `{cls.__name__}` |")
    envelope_fields = set(p.Envelope.model_fields)
    for title, classes in p.SECTIONS:
        lines += ["", f"## {title}"]
        for cls in classes:
            mtype = cls.model_fields["type"].default
            lines += [
                "",
                f"### {mtype}",
                "",
                f"`{cls.__name__}` · **{cls.direction}**",
                "",
                _doc(cls),
                "",
            ]
            own = [n for n in cls.model_fields if n not in envelope_fields]
            if own:
                lines += fields_table(cls, skip=envelope_fields)
            else:
                lines.append("No fields besides the envelope.")
    lines += ["", "## Nested objects"]
    for model in p.NESTED_MODELS:
        lines += ["", f"### {model.__name__}", "", _doc(model), "", *fields_table(model)]
        if model is p.CellEvent:
            lines += [
                "",
                "Which `data` each event kind carries:",
                "",
                "| kind | data |",
                "| --- | --- |",
                *(
                    f"| `{kind.value}` | {' or '.join(_anchor(m.__name__) for m in models)} |"
                    for kind, models in p.EVENT_DATA.items()
                ),
            ]
    lines += ["", "## Domain objects", "", "The orchestrator's own models, as events carry them."]
    for model in (Robot, Job, JobTimeouts):
        lines += ["", f"### {model.__name__}", "", _doc(model), "", *fields_table(model)]
    lines += [
        "",
        "## Error codes",
        "",
        "Carried by `error.code` and by `ProtocolError.code`.",
        "",
        "| code | fatal by default | meaning |",
        "| --- | --- | --- |",
    ]
    for code in p.ErrorCode:
        fatal = "yes" if code.fatal_by_default else "no"
        lines.append(f"| `{code.value}` | {fatal} | {_cell(code.description)} |")
    lines += ["", "## Enumerations"]
    for enum in ENUMS:
        lines += ["", f"### {enum.__name__}", "", _doc(enum), ""]
        if enum is p.EventKind:
            lines += ["| kind | topic |", "| --- | --- |"]
            lines += [f"| `{k.value}` | `{k.topic.value}` |" for k in p.EventKind]
        else:
            lines.append(", ".join(f"`{m.value}`" for m in enum))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text("utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run scripts/gen_protocol_doc.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, "utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
