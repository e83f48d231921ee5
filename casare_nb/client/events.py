"""The event stream of the client: one subscribed WebSocket connection (:class:`Monitor`)
and :class:`Subscription`, the events a caller iterates.

websockets and :mod:`casare_nb.protocol` are imported on first use, inside the functions
that need them: callers that only use HTTP (most CLI commands) skip their start-up.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeAlias

from casare_nb.client.errors import ClientError, WaitTimeout

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

    from casare_nb.protocol import Event, Topic

__all__ = ["Monitor", "Subscription", "TopicName", "deadline_of", "job_id_of", "wait_topics"]

TopicName: TypeAlias = "Topic | str"


def job_id_of(event: Event) -> str | None:
    """The job an event is about (None for a robot's)."""
    data = event.data
    job_id = getattr(data, "job_id", None)  # a CellEvent
    if job_id is None:
        job = getattr(data, "job", None)  # a JobEvent
        job_id = getattr(job, "job_id", None)
    return job_id if isinstance(job_id, str) else None


_RECV_SLICE_S = 0.25
"""The longest a blocking receive waits in one go, so that Ctrl-C (KeyboardInterrupt) is
seen in a loop over events that waits for ever."""


def deadline_of(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def wait_topics(on_event: Callable[[Event], None] | None) -> frozenset[Topic]:
    from casare_nb.protocol import Topic

    return frozenset({Topic.JOBS, Topic.CELLS} if on_event else {Topic.JOBS})


class Monitor:
    """One subscribed WebSocket connection: events in order, with deadlines."""

    def __init__(self, ws: ClientConnection, open_timeout: float) -> None:
        self.ws = ws
        self.open_timeout = open_timeout
        self.snapshot: Event | None = None

    def subscribe(self, topics: frozenset[Topic]) -> None:
        """Subscribe to ``topics`` (and ``robots``, whose snapshot reply confirms it)."""
        from casare_nb.protocol import Subscribe, Topic, encode

        request = Subscribe(topics=topics | {Topic.ROBOTS})
        self.ws.send(encode(request))
        deadline = time.monotonic() + self.open_timeout
        while True:
            try:
                event = self.next(deadline)
            except WaitTimeout:
                raise ClientError("the orchestrator did not confirm the subscription") from None
            if event.reply_to == request.id:
                self.snapshot = event
                return

    def next(self, deadline: float | None) -> Event:
        """The next event; :class:`WaitTimeout` once ``deadline`` (monotonic) passes."""
        from websockets.exceptions import ConnectionClosed

        from casare_nb.protocol import MAX_FRAME_BYTES, Error, Event, ProtocolError, Role, decode

        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeout("timed out waiting for events")
            try:
                frame = self.ws.recv(timeout=min(remaining or _RECV_SLICE_S, _RECV_SLICE_S))
            except TimeoutError:
                continue  # a slice passed: signals are handled, the deadline checked
            except ConnectionClosed as exc:
                why = f": {exc.rcvd.reason}" if exc.rcvd and exc.rcvd.reason else ""
                raise ClientError(f"the orchestrator closed the event stream{why}") from None
            try:
                msg = decode(frame, max_bytes=MAX_FRAME_BYTES, sender=Role.ORCHESTRATOR)
            except ProtocolError as exc:
                raise ClientError(f"the orchestrator sent an invalid event: {exc}") from None
            if isinstance(msg, Event):
                return msg
            if isinstance(msg, Error):
                raise ClientError(f"the orchestrator refused the subscription: {msg.message}")


class Subscription(Iterator["Event"]):
    """Events of the subscribed topics, in order: iterate (blocking) or :meth:`receive` with
    a timeout. Subscribed from the moment it is made; :meth:`close` (or ``with``) ends it."""

    def __init__(
        self, monitor: contextlib.AbstractContextManager[Monitor], topics: frozenset[Topic]
    ) -> None:
        self.topics = topics
        self.closed = False
        self._stack = contextlib.ExitStack()
        self._monitor = self._stack.enter_context(monitor)
        snapshot = self._monitor.snapshot
        robots = any(topic.value == "robots" for topic in topics)
        self._pending = [snapshot] if snapshot is not None and robots else []

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
