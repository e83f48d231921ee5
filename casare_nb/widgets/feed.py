"""Keeps a :class:`~casare_nb.widgets.state.DashboardState` in step with an orchestrator,
in a daemon thread: subscribe to its monitor events (WebSocket), read a snapshot of the
unfinished jobs over HTTP, then apply every event as it comes. No polling of the database.

When the orchestrator cannot be reached, refuses the token or drops the stream, the state's
connection says so in one line and the feed tries again after a capped exponential backoff
(injectable); once it is back, the snapshot is read again and the events flow. A feed that
made its own client (``Client.local()`` or ``CASARE_URL``/``CASARE_TOKEN``) makes a new one
on every try, so an orchestrator restarted with a new local admin token is found again.

No widget library here: a benchmark can feed a state with it alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Final

from casare_nb.api import runtime_file_path
from casare_nb.client import Client, ClientError, Subscription
from casare_nb.core.errors import one_line
from casare_nb.core.models import RunStatus
from casare_nb.widgets.state import QUEUE_TRACK_LIMIT, DashboardState

__all__ = [
    "BACKOFF_BASE_S",
    "BACKOFF_CAP_S",
    "Connector",
    "Feed",
    "default_backoff",
]

logger = logging.getLogger("casare_nb.widgets")

BACKOFF_BASE_S: Final = 0.5
"""The first retry waits this long; each next one twice as long ..."""
BACKOFF_CAP_S: Final = 30.0
"""... up to this."""
RUNNING_SNAPSHOT_LIMIT: Final = 1000
"""Running jobs read at connect (robots' slots bound them)."""
TOPICS: Final = ("robots", "jobs", "cells")

Backoff = Callable[[int], float]
"""Seconds to wait before try number ``n`` (1 after the first failure)."""


def default_backoff(attempt: int) -> float:
    """:data:`BACKOFF_BASE_S` doubled per failed try, capped at :data:`BACKOFF_CAP_S`."""
    return float(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** max(0, min(attempt - 1, 16))))


class Connector:
    """Where the client comes from: the one given (never closed here), else one made on
    every try from ``state_dir``'s runtime file, ``CASARE_URL``/``CASARE_TOKEN``, or the
    default runtime file (``$CASARE_HOME`` or ``./.casare``), like ``Client.local()``."""

    def __init__(
        self,
        client: Client | None = None,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self._given = client
        self._state_dir = state_dir
        self._timeout = timeout
        self._made: Client | None = None
        self._lock = threading.Lock()

    @property
    def owned(self) -> bool:
        """Whether the clients are made (and closed) here."""
        return self._given is None

    def where(self) -> str:
        """The orchestrator's URL, or the runtime file it would be found through."""
        with self._lock:
            current = self._given or self._made
        if current is not None:
            return current.url
        url = os.environ.get("CASARE_URL")
        if self._state_dir is None and url:
            return url
        return str(runtime_file_path(self._state_dir))

    def current(self) -> Client | None:
        """The client in use, if any (for the views' actions and reads)."""
        with self._lock:
            return self._given or self._made

    def get(self) -> Client:
        """The client to try; ClientError when none can be made (no runtime file ...)."""
        with self._lock:
            if self._given is not None:
                return self._given
            if self._made is None:
                self._made = self._make()
            return self._made

    def _make(self) -> Client:
        url, token = os.environ.get("CASARE_URL"), os.environ.get("CASARE_TOKEN")
        if self._state_dir is None and url:
            return Client(url, token or "", timeout=self._timeout)
        return Client.local(self._state_dir, timeout=self._timeout)

    def reset(self) -> None:
        """After a failure: forget a made client (the next try makes a new one)."""
        with self._lock:
            made, self._made = self._made, None
        if made is not None:
            with contextlib.suppress(Exception):
                made.close()

    def close(self) -> None:
        self.reset()


class Feed:
    """The event thread: see the module. :meth:`start` once, :meth:`close` to stop (the
    subscription is closed, the thread joined)."""

    def __init__(
        self,
        state: DashboardState,
        connector: Connector,
        *,
        backoff: Backoff = default_backoff,
        topics: Sequence[str] = TOPICS,
        on_connected: Callable[[Client], None] | None = None,
        name: str = "casare-dashboard-events",
    ) -> None:
        self.state = state
        self.connector = connector
        self.backoff = backoff
        self.topics = tuple(topics)
        self.on_connected = on_connected
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._subscription: Subscription | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.connects = 0
        """Successful connections so far (1 after the first)."""

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> Feed:
        self._thread.start()
        return self

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def close(self, timeout: float = 10.0) -> None:
        """Stop: close the subscription (a receive waiting in the thread ends at once) and
        join the thread; idempotent."""
        self._stop.set()
        self._close_subscription()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _close_subscription(self) -> None:
        with self._lock:
            subscription, self._subscription = self._subscription, None
        if subscription is not None:
            with contextlib.suppress(Exception):
                subscription.close()

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        self.state.set_connecting(self.connector.where())
        while not self._stop.is_set():
            try:
                self._follow()
                failures = 0
            except ClientError as exc:
                if self._stop.is_set():
                    break
                failures += 1
                self._failed(str(exc), exc.status, failures)
            except Exception as exc:  # a bug must not end the dashboard silently
                if self._stop.is_set():
                    break
                logger.exception("the dashboard's event stream failed")
                failures += 1
                self._failed(f"{type(exc).__name__}: {one_line(exc)}", None, failures)
            finally:
                self._close_subscription()

    def _failed(self, reason: str, status: int | None, failures: int) -> None:
        delay = self.backoff(failures)
        self.state.set_disconnected(self.connector.where(), reason, status, delay)
        self.connector.reset()
        self._stop.wait(delay)

    def _follow(self) -> None:
        """Connect, subscribe, read the snapshot, then apply events until the stream ends
        (ClientError) or the feed is closed."""
        client = self.connector.get()
        subscription = client.subscribe(self.topics)
        with self._lock:
            if self._stop.is_set():
                subscription.close()
                return
            self._subscription = subscription
        # subscribed first: an event from now on is not missed, and one older than the
        # snapshot is applied after it harmlessly (the reducers are idempotent).
        self.snapshot(client)
        self.connects += 1
        self.state.set_connected(client.url)
        if self.on_connected is not None:
            self.on_connected(client)
        for event in subscription:
            if self._stop.is_set():
                return
            self.state.apply(event)

    def snapshot(self, client: Client) -> None:
        """Read what the events do not tell: unfinished jobs, queue counts, submissions
        paused, the served workflows' names, the orchestrator's thresholds."""
        jobs = client.jobs(RunStatus.RUNNING, limit=RUNNING_SNAPSHOT_LIMIT)
        jobs += client.jobs(RunStatus.QUEUED, limit=QUEUE_TRACK_LIMIT)
        self.state.load_jobs(jobs)
        self.state.load_health(client.health())
        self.state.load_info(client.info())
        with contextlib.suppress(ClientError):  # names only: not worth a reconnect
            self.state.set_workflows(w.path for w in client.workflows())
        with contextlib.suppress(ClientError):  # colours only: the defaults meanwhile
            self.state.set_thresholds(client.status().thresholds)
