"""The event stream of the client: one subscribed WebSocket connection (:class:`Monitor`)
and :class:`Subscription`, the events a caller iterates.

A reader thread per connection reads every frame as it comes into a bounded buffer (when
it is full the oldest frame is dropped and counted in ``dropped``), so websockets keeps
answering the orchestrator's keepalive pings while the caller reads nothing: an idle or
unread subscription stays open. Frames are decoded when the caller takes them, by a codec:
:class:`ModelCodec` (protocol models, for :class:`~casare_nb.client.Client`) or
:class:`JsonCodec` (plain JSON, for ``casare-nb submit --wait``, :mod:`.light`).

websockets and :mod:`casare_nb.protocol` are imported on first use, inside the functions
that need them: callers that only use HTTP (most CLI commands) skip their start-up.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeAlias, TypeVar

from casare_nb.client.errors import ClientError, WaitTimeout
from casare_nb.core.errors import one_line

if TYPE_CHECKING:
    import ssl

    from websockets.sync.client import ClientConnection

    from casare_nb.protocol import Event, Topic

__all__ = [
    "DEFAULT_BUFFER",
    "JsonCodec",
    "ModelCodec",
    "Monitor",
    "Subscription",
    "TopicName",
    "deadline_of",
    "job_id_of",
    "monitor",
    "open_stream",
    "request_frame",
    "stream_error",
    "stream_options",
    "wait_topics",
]

TopicName: TypeAlias = "Topic | str"

MAX_FRAME_BYTES = 16 * 1024 * 1024
"""casare_nb.protocol.MAX_FRAME_BYTES (not imported: pydantic; a test keeps them equal)."""

DEFAULT_BUFFER = 4096
"""Frames a connection keeps that its caller has not read yet; past it the oldest go."""

PING_INTERVAL_S: float | None = 20.0
PING_TIMEOUT_S: float | None = 20.0
"""This side's keepalive pings (websockets' defaults; tests shorten them)."""

_RECV_SLICE_S = 0.25
"""The longest a blocking receive waits in one go, so that Ctrl-C (KeyboardInterrupt) is
seen in a loop over events that waits for ever."""

_E = TypeVar("_E")


def job_id_of(event: Event) -> str | None:
    """The job an event is about (None for a robot's)."""
    data = event.data
    job_id = getattr(data, "job_id", None)  # a CellEvent
    if job_id is None:
        job = getattr(data, "job", None)  # a JobEvent
        job_id = getattr(job, "job_id", None)
    return job_id if isinstance(job_id, str) else None


def deadline_of(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def wait_topics(on_event: Callable[..., None] | None) -> frozenset[str]:
    """What waiting for a job listens to: its job events, and its cells for ``on_event``."""
    return frozenset({"jobs", "cells"} if on_event else {"jobs"})


# ------------------------------------------------------------------------------ frames

_ids = itertools.count(1)
_id_prefix = os.urandom(8).hex()


def request_frame(kind: str, topics: Iterable[str]) -> tuple[str, str]:
    """A monitor's ``subscribe`` or ``unsubscribe`` frame for ``topics``, and its id: the
    protocol's envelope (``type``, ``id``, ``ts``, ``reply_to``) and sorted topic names."""
    message_id = f"{_id_prefix}{next(_ids):016x}"
    ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    frame = {
        "type": kind,
        "id": message_id,
        "ts": ts,
        "reply_to": None,
        "topics": sorted(str(t) for t in topics),
    }
    return json.dumps(frame, separators=(",", ":")), message_id


class Codec(Protocol[_E]):
    """How a monitor turns frames into events."""

    def decode(self, frame: str | bytes) -> _E | None:
        """The event in ``frame``; None for a frame that is no event; ClientError for an
        invalid frame or an ``error`` the orchestrator sent."""

    def reply_to(self, event: _E) -> str | None:
        """The id of the request the event answers."""


class ModelCodec:
    """Frames as :class:`~casare_nb.protocol.Event` models, validated by the protocol."""

    def decode(self, frame: str | bytes) -> Event | None:
        from casare_nb.protocol import Error, Event, ProtocolError, Role, decode

        try:
            msg = decode(frame, max_bytes=MAX_FRAME_BYTES, sender=Role.ORCHESTRATOR)
        except ProtocolError as exc:
            raise ClientError(f"the orchestrator sent an invalid event: {exc}") from None
        if isinstance(msg, Event):
            return msg
        if isinstance(msg, Error):
            raise ClientError(f"the orchestrator refused the subscription: {msg.message}")
        return None

    def reply_to(self, event: Event) -> str | None:
        return event.reply_to


class JsonCodec:
    """Frames as the JSON objects the orchestrator sent (it validated them): no models."""

    def decode(self, frame: str | bytes) -> dict[str, Any] | None:
        try:
            msg = json.loads(frame)
        except ValueError as exc:
            raise ClientError(f"the orchestrator sent an invalid event: not JSON: {exc}") from None
        if not isinstance(msg, dict):
            raise ClientError("the orchestrator sent an invalid event: not a JSON object")
        if msg.get("type") == "event":
            return msg
        if msg.get("type") == "error":
            why = one_line(str(msg.get("message", "")))
            raise ClientError(f"the orchestrator refused the subscription: {why}")
        return None

    def reply_to(self, event: dict[str, Any]) -> str | None:
        reply = event.get("reply_to")
        return reply if isinstance(reply, str) else None


# ------------------------------------------------------------------------------ connection


def stream_options(
    token: str, url: str, ssl_context: ssl.SSLContext | None, timeout: float
) -> dict[str, Any]:
    """The websockets ``connect`` arguments of an event stream."""
    return {
        "additional_headers": {"Authorization": f"Bearer {token}"},
        "ssl": ssl_context if url.startswith("wss:") else None,
        "max_size": MAX_FRAME_BYTES,
        "open_timeout": timeout,
        "close_timeout": 2,
        "ping_interval": PING_INTERVAL_S,
        "ping_timeout": PING_TIMEOUT_S,
    }


def stream_error(exc: Exception, url: str) -> ClientError:
    """The one-line ClientError of a failed ``connect`` to ``url``."""
    from websockets.exceptions import InvalidStatus

    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        body = one_line(exc.response.body.decode(errors="replace")) if exc.response.body else ""
        if status == 401 and body:  # the token: said as every HTTP answer says it
            return ClientError(body, status)
        why = f"the orchestrator refused the event stream (HTTP {status})"
        return ClientError(f"{why}: {body}" if body else why, status)
    from casare_nb.client.tls import certificate_error

    unverified = certificate_error(exc, url)
    if unverified is not None:
        return unverified
    return ClientError(f"cannot open the event stream at {url}: {one_line(exc)}")


def open_stream(
    url: str, token: str, ssl_context: ssl.SSLContext | None, timeout: float
) -> ClientConnection:
    """A WebSocket connection to the orchestrator at ``url``; ClientError if it fails."""
    from websockets.exceptions import WebSocketException
    from websockets.sync.client import connect

    try:
        ws: ClientConnection = connect(url, **stream_options(token, url, ssl_context, timeout))
    except (OSError, WebSocketException, TimeoutError) as exc:
        raise stream_error(exc, url) from None
    return ws


class Monitor(Generic[_E]):
    """One subscribed WebSocket connection: events in order, with deadlines.

    A reader thread takes every frame off the connection as it comes, into a buffer of
    ``buffer`` frames (the oldest dropped first, counted in :attr:`dropped`): websockets
    answers pings and reads pongs whether or not the caller reads events. :meth:`close`
    (or leaving the ``with`` block) closes the connection and ends the thread."""

    def __init__(
        self,
        ws: ClientConnection,
        codec: Codec[_E],
        open_timeout: float,
        *,
        buffer: int = DEFAULT_BUFFER,
    ) -> None:
        if buffer < 1:
            raise ClientError(f"the event buffer must hold at least 1 frame, not {buffer}")
        self.ws = ws
        self.codec = codec
        self.open_timeout = open_timeout
        self.buffer = buffer
        self.snapshot: _E | None = None
        self.dropped = 0
        self._frames: deque[str | bytes] = deque()
        self._ready = threading.Condition()
        self._ended: str | None = None  # why the stream ended, once it did
        self._reader = threading.Thread(target=self._read, name="casare-events", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        why = "the orchestrator closed the event stream"
        try:
            while True:
                frame = self.ws.recv()
                with self._ready:
                    if len(self._frames) >= self.buffer:
                        self._frames.popleft()
                        self.dropped += 1
                    self._frames.append(frame)
                    self._ready.notify()
        except ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.reason:
                why = f"{why}: {exc.rcvd.reason}"
        except Exception as exc:  # the connection broke in another way
            why = f"{why}: {one_line(exc)}"
        finally:
            with self._ready:
                self._ended = why
                self._ready.notify_all()

    def subscribe(self, topics: frozenset[str]) -> None:
        """Subscribe to ``topics``, and to ``robots``, whose snapshot reply confirms it (it
        is unsubscribed again at once unless asked for)."""
        frame, request_id = request_frame("subscribe", topics | {"robots"})
        self.ws.send(frame)
        deadline = time.monotonic() + self.open_timeout
        while True:
            try:
                event = self.next(deadline)
            except WaitTimeout:
                raise ClientError("the orchestrator did not confirm the subscription") from None
            if self.codec.reply_to(event) == request_id:
                self.snapshot = event
                break
        if "robots" not in topics:  # a heartbeat of every robot is no business of ours
            self.ws.send(request_frame("unsubscribe", {"robots"})[0])

    def next(self, deadline: float | None) -> _E:
        """The next event; :class:`WaitTimeout` once ``deadline`` (monotonic) passes;
        ClientError once the stream ended and every frame before its end was taken."""
        while True:
            event = self.codec.decode(self._take(deadline))
            if event is not None:
                return event

    def _take(self, deadline: float | None) -> str | bytes:
        with self._ready:
            while not self._frames:
                if self._ended is not None:
                    raise ClientError(self._ended)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WaitTimeout("timed out waiting for events")
                # in slices: signals are handled, the deadline checked
                self._ready.wait(min(remaining or _RECV_SLICE_S, _RECV_SLICE_S))
            return self._frames.popleft()

    def close(self) -> None:
        """Close the connection and let the reader thread end; idempotent, and safe from
        another thread (a :meth:`next` waiting there raises ClientError)."""
        self.ws.close()
        if self._reader is not threading.current_thread():
            self._reader.join(timeout=5)

    def __enter__(self) -> Monitor[_E]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def monitor(
    url: str,
    token: str,
    ssl_context: ssl.SSLContext | None,
    timeout: float,
    codec: Codec[_E],
    topics: frozenset[str],
    *,
    buffer: int = DEFAULT_BUFFER,
) -> Iterator[Monitor[_E]]:
    """A :class:`Monitor` of ``topics`` at ``url``, subscribed; closed at the end."""
    ws = open_stream(url, token, ssl_context, timeout)
    with ws, Monitor(ws, codec, timeout, buffer=buffer) as stream:
        stream.subscribe(topics)
        yield stream


class Subscription(Iterator["Event"]):
    """Events of the subscribed topics, in order: iterate (blocking) or :meth:`receive` with
    a timeout. Subscribed from the moment it is made; :meth:`close` (or ``with``) ends it.

    Events the caller has not read yet are kept (up to the monitor's buffer; past it the
    oldest are dropped and counted in :attr:`dropped`), and the connection stays open
    however long nothing is read."""

    def __init__(
        self,
        monitor: contextlib.AbstractContextManager[Monitor[Event]],
        topics: frozenset[Topic],
    ) -> None:
        self.topics = topics
        self.closed = False
        self._stack = contextlib.ExitStack()
        self._monitor = self._stack.enter_context(monitor)
        snapshot = self._monitor.snapshot
        robots = any(topic.value == "robots" for topic in topics)
        self._pending = [snapshot] if snapshot is not None and robots else []

    @property
    def dropped(self) -> int:
        """Frames dropped unread because the buffer was full (the oldest go first)."""
        return self._monitor.dropped

    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> Event:
        return self.receive()

    def receive(self, timeout: float | None = None) -> Event:
        """The next event; :class:`WaitTimeout` after ``timeout`` seconds without one."""
        if self._pending:
            return self._pending.pop(0)
        if self.closed:
            raise ClientError("the subscription is closed")
        deadline = deadline_of(timeout)
        while True:
            try:
                event = self._monitor.next(deadline)
            except ClientError:
                if self.closed:  # closed meanwhile, from another thread
                    raise ClientError("the subscription is closed") from None
                raise
            if event.topic in self.topics:
                return event

    def close(self) -> None:
        """Disconnect; idempotent, and safe from another thread (a receive waiting there
        raises :class:`ClientError`)."""
        self.closed = True
        self._stack.close()

    def __del__(self) -> None:  # a loop left with break, never closed
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
