"""The monitoring dashboard for JupyterLab: ``Dashboard()`` in a notebook cell.

It wires three things together:

- a :class:`~casare_nb.widgets.state.DashboardState`, kept in step with the orchestrator by
  a :class:`~casare_nb.widgets.feed.Feed` (a daemon thread on the WebSocket monitor channel:
  robots, jobs, cells; a snapshot over HTTP at each connect; reconnects with backoff);
- the views of :mod:`.views` (ipywidgets 8, bqplot for the chart);
- a render thread that coalesces changes (at most one render per ``render_s``) and updates
  only the sections that changed, plus the ages once per ``tick_s``. It also makes the few
  HTTP reads the events do not cover: a running job's notebook once (its cells' first
  lines), robots' CPU/memory every ``robots_s`` (heartbeats change them without an event),
  the history on job-finished events (at most every ``history_min_s``) or every
  ``history_s``, the upcoming fire times every ``upcoming_s``.

Widget updates from these threads are comm messages, which ipywidgets 8 sends from any
thread. :meth:`Dashboard.close` stops both threads and closes the subscription.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import ipywidgets as widgets

from casare_nb.client import Client, ClientError
from casare_nb.widgets.feed import Backoff, Connector, Feed, default_backoff
from casare_nb.widgets.state import DashboardState
from casare_nb.widgets.viewmodels import Change, source_lines
from casare_nb.widgets.views import (
    Actions,
    HistoryPanel,
    LogPanel,
    QueuePanel,
    RobotsPanel,
    RunningPanel,
    StatusBar,
    SubmitPanel,
    UpcomingPanel,
)

__all__ = ["Dashboard", "Intervals"]

logger = logging.getLogger("casare_nb.widgets")

LIVE_PARTS = frozenset({"connection", "robots", "queue", "running", "finished", "log"})
"""The sections drawn from the state (re-rendered when they change)."""
TICK_PARTS = frozenset({"robots", "queue", "running", "finished"})
"""The sections showing ages (re-rendered every tick)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Intervals:
    """How often the render thread draws and reads (seconds)."""

    render_s: float = 0.1
    """At most one render per this (changes in between are drawn together)."""
    tick_s: float = 1.0
    """Ages and elapsed times are redrawn this often."""
    robots_s: float = 10.0
    """Robots (CPU, memory, heartbeat), queue counts and submissions flag re-read."""
    history_s: float = 60.0
    """The history re-read at least this often ..."""
    history_min_s: float = 5.0
    """... and after a job finished, at most this often."""
    upcoming_s: float = 30.0
    """The upcoming fire times re-read."""
    workflows_s: float = 60.0
    """The served workflows (submit form) re-read."""


class Dashboard:
    """Robots, queue, running jobs, history, upcoming fires and a submit form, live.

    ``client``: a :class:`~casare_nb.Client` (kept open at :meth:`close`); without one the
    orchestrator is found like ``Client.local(state_dir)``, or through ``CASARE_URL`` and
    ``CASARE_TOKEN``, and found again after it restarts. ``upcoming``: fire times shown;
    ``failures``: failed runs shown; ``history_days``: the chart's span; ``groups``: lines of
    the runs-by-trigger table. ``base_url``: the Jupyter server's (for the output notebook
    link through its ``/casare/api`` proxy; default ``$JUPYTERHUB_SERVICE_PREFIX`` or
    ``/``). ``clock``, ``backoff``, ``intervals``: for tests. ``start=False`` builds the
    widgets without the threads (:meth:`start` later).

    Display it (last expression of a cell, or ``display(dashboard)``); the widget tree is
    :attr:`widget` (CSS class ``casare-dashboard``).
    """

    def __init__(
        self,
        client: Client | None = None,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        upcoming: int = 10,
        failures: int = 5,
        history_days: int = 14,
        groups: int = 20,
        base_url: str | None = None,
        clock: Callable[[], datetime] = _utcnow,
        backoff: Backoff = default_backoff,
        intervals: Intervals | None = None,
        start: bool = True,
    ) -> None:
        self.intervals = intervals or Intervals()
        self.clock = clock
        self.state = DashboardState(clock=clock)
        self.connector = Connector(client, state_dir=state_dir)
        self.actions = Actions(self.connector.current, self.state, self._notice)
        base = base_url if base_url is not None else os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
        self.status = StatusBar()
        self.robots = RobotsPanel(self.actions)
        self.queue = QueuePanel(self.actions)
        self.running = RunningPanel(self.actions)
        self.history = HistoryPanel(
            self.actions,
            days=history_days,
            failures=failures,
            groups=groups,
            base_url=base or "/",
            clock=clock,
        )
        self.history.on_filter = self.refresh_history
        self.upcoming = UpcomingPanel(upcoming)
        self.submit = SubmitPanel(self.actions)
        self.log = LogPanel()
        self.widget: Any = widgets.VBox(
            [
                widgets.HTML("<h3 style='margin:4px 0'>casare dashboard</h3>"),
                self.status.widget,
                _section("Robots", self.robots.widget),
                _section("Queue", self.queue.widget),
                _section("Running jobs", self.running.widget),
                _section("History", self.history.widget),
                _section(f"Next {upcoming} fire times", self.upcoming.widget),
                _section("Submit a job", self.submit.widget),
                _section("Events", self.log.widget),
            ]
        )
        self.widget.add_class("casare-dashboard")
        self.feed = Feed(self.state, self.connector, backoff=backoff, on_connected=self._connected)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._render_lock = threading.RLock()
        self._dirty: set[str] = set(LIVE_PARTS)
        self._due: dict[str, float] = {}
        self._finished_seen = 0
        self._renderer = threading.Thread(
            target=self._render_loop, name="casare-dashboard-render", daemon=True
        )
        self._remove_listener = self.state.on_change(self._changed)
        self._started = False
        self.render()
        if start:
            self.start()

    # -- life ----------------------------------------------------------------------------

    def start(self) -> Dashboard:
        """Start the event thread and the render thread (once)."""
        if not self._started:
            self._started = True
            self.feed.start()
            self._renderer.start()
        return self

    def close(self) -> None:
        """Stop both threads, close the subscription (and a client made here); the widgets
        stay on screen with the status bar saying so. Idempotent."""
        self._stop.set()
        self._wake.set()
        self.feed.close()
        if self._renderer.is_alive() and self._renderer is not threading.current_thread():
            self._renderer.join(10)
        self._remove_listener()
        self.connector.close()
        with self._render_lock:
            self.status.set_notice("dashboard closed")

    @property
    def threads(self) -> list[threading.Thread]:
        """The dashboard's threads (alive or not)."""
        return [self.feed.thread, self._renderer]

    @property
    def client(self) -> Client | None:
        """The client in use (None while no orchestrator was found)."""
        return self.connector.current()

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """Shown as its widget tree (the last expression of a cell, or ``display()``)."""
        return self.widget._repr_mimebundle_(**kwargs)

    # -- changes -------------------------------------------------------------------------

    def _changed(self, change: Change) -> None:
        with self._lock:
            self._dirty |= change.parts
        self._wake.set()

    def _connected(self, client: Client) -> None:
        """After each (re)connect and snapshot: read the slow sections at once."""
        with self._lock:
            self._due.clear()
        self._wake.set()

    def _notice(self, text: str) -> None:
        with self._render_lock:
            self.status.set_notice(text)

    # -- rendering -----------------------------------------------------------------------

    def render(self, parts: frozenset[str] | set[str] | None = None) -> None:
        """Draw the sections of ``parts`` (every live section by default) from the state,
        in the calling thread."""
        wanted = LIVE_PARTS if parts is None else frozenset(parts) & LIVE_PARTS
        state = self.state
        with self._render_lock:
            if "connection" in wanted:
                self.status.update(state.connection())
            if "robots" in wanted:
                self.robots.update(state.robots())
            if "queue" in wanted:
                self.queue.update(state.queue())
            if wanted & {"running", "finished"}:
                self.running.update(state.running(), state.finished())
            if "log" in wanted:
                self.log.update(state.log())

    def _render_loop(self) -> None:
        last_render = 0.0
        last_tick = time.monotonic()
        intervals = self.intervals
        while not self._stop.is_set():
            self._wake.wait(intervals.tick_s)
            if self._stop.is_set():
                break
            pause = intervals.render_s - (time.monotonic() - last_render)
            if pause > 0 and self._stop.wait(pause):  # coalesce a burst of changes
                break
            self._wake.clear()
            with self._lock:
                parts, self._dirty = set(self._dirty), set()
            now = time.monotonic()
            if now - last_tick >= intervals.tick_s:
                parts |= TICK_PARTS
                last_tick = now
            try:
                self._reads()
                self.render(parts)
            except Exception:  # a drawing bug must not stop the dashboard
                logger.exception("the dashboard failed to render")
            last_render = time.monotonic()

    # -- reads the events do not cover ---------------------------------------------------

    def _is_due(self, name: str, every_s: float) -> bool:
        now = time.monotonic()
        with self._lock:
            due = self._due.get(name, 0.0)
            if now < due:
                return False
            self._due[name] = now + every_s
        return True

    def _reads(self) -> None:
        client = self.connector.current()
        if client is None or not self.state.connection().ok:
            return
        intervals = self.intervals
        try:
            self.read_sources(client)
            if self._is_due("robots", intervals.robots_s):
                self.refresh_robots(client)
            if self._is_due("workflows", intervals.workflows_s):
                self.refresh_workflows(client)
            finished = self.state.finished_count
            history_due = self._is_due("history", intervals.history_s)
            if not history_due and finished != self._finished_seen:
                history_due = self._is_due("history-after-finish", intervals.history_min_s)
            if history_due:
                self._finished_seen = finished
                self.refresh_history(client)
            if self._is_due("upcoming", intervals.upcoming_s):
                self.refresh_upcoming(client)
        except ClientError as exc:  # the feed sees a lost orchestrator too, and says so
            logger.debug("dashboard read failed: %s", exc)

    def read_sources(self, client: Client) -> None:
        """Read, once per running job, its notebook's code cells' first lines."""
        for job_id, attempt in self.state.sources_wanted():
            try:
                notebook = client.notebook(job_id, attempt)
            except ClientError:
                self.state.set_sources(job_id, attempt, None)
                continue
            self.state.set_sources(job_id, attempt, source_lines(notebook))

    def refresh_robots(self, client: Client | None = None) -> None:
        """Re-read robots (CPU, memory, heartbeat), queue counts and the submissions flag."""
        client = client or self._client()
        since = self.state.seq
        robots = client.robots()
        self.state.load_robots(robots, since=since)
        self.state.load_health(client.health())
        self.state.load_info(client.info())

    def refresh_workflows(self, client: Client | None = None) -> None:
        """Re-read the served workflows (the submit form's choices, jobs' short names)."""
        client = client or self._client()
        paths = [w.path for w in client.workflows()]
        self.state.set_workflows(paths)
        with self._render_lock:
            self.submit.show_workflows(paths)

    def refresh_history(self, client: Client | None = None) -> None:
        """Re-read the history of the selected workflow and draw it."""
        try:
            client = client or self._client()
            data = self.history.fetch(client)
        except ClientError as exc:
            self._notice(f"history: {exc}")
            return
        with self._render_lock:
            self.history.show(data, self.state.workflows)

    def refresh_upcoming(self, client: Client | None = None) -> None:
        """Re-read the next fire times and draw them."""
        client = client or self._client()
        fires = self.upcoming.fetch(client)
        with self._render_lock:
            self.upcoming.show(fires, self.clock())

    def refresh(self) -> None:
        """Every HTTP read now, in the calling thread, then draw (tests, a Refresh click)."""
        client = self._client()
        self.read_sources(client)
        self.refresh_robots(client)
        self.refresh_workflows(client)
        self.refresh_history(client)
        self.refresh_upcoming(client)
        self.render()

    def _client(self) -> Client:
        client = self.connector.current()
        if client is None:
            with contextlib.suppress(ClientError):
                client = self.connector.get()
        if client is None:
            raise ClientError(f"not connected: {self.state.connection().message}")
        return client


def _section(title: str, body: Any) -> Any:
    return widgets.VBox([widgets.HTML(f"<h4 style='margin:8px 0 2px 0'>{title}</h4>"), body])
