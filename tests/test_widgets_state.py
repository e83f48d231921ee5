"""The dashboard's plain-Python parts without a browser or an orchestrator: the reducers of
casare_nb.widgets.state fed hand-made monitor events, on a clock the tests set; the form
plans of .fields, the HTML of .render, the feed's backoff; and that none of these loads a
widget library."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from casare_nb.api import Health, ServerInfo
from casare_nb.core.failure import Failure
from casare_nb.core.history import DailyRuns
from casare_nb.core.models import Job, Priority, Robot, RobotStatus, RunRecord, RunStatus
from casare_nb.core.params import ParamSchema, ParamSpec
from casare_nb.core.thresholds import Limit, Thresholds
from casare_nb.protocol import (
    CellEvent,
    Event,
    EventKind,
    JobEvent,
    RobotEvent,
    RobotSnapshot,
)
from casare_nb.widgets.feed import BACKOFF_CAP_S, default_backoff
from casare_nb.widgets.fields import FieldKind, changed_texts, form_plan, problem_parameter
from casare_nb.widgets.render import debug_link, failure_html, queue_html, status_html
from casare_nb.widgets.state import (
    EVENT_LOG_SIZE,
    RECENT_FINISHED,
    RECENT_TTL,
    DashboardState,
    Level,
)
from casare_nb.widgets.viewmodels import (
    Change,
    ConnectionState,
    daily_series,
    percent_level,
    queue_level,
    source_lines,
)

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
WORKFLOW = "/srv/workflows/reports/sales.ipynb"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> DashboardState:
    return DashboardState(clock=clock)


def robot(robot_id: str = "robot-a", **fields: Any) -> Robot:
    return Robot(robot_id=robot_id, name=robot_id, **fields)


def job(job_id: str = "job-1", status: RunStatus = RunStatus.QUEUED, **fields: Any) -> Job:
    fields.setdefault("created_at", T0)
    fields.setdefault("eligible_at", fields["created_at"])
    return Job(job_id=job_id, workflow_path=WORKFLOW, status=status, **fields)


def event(kind: EventKind, data: Any, ts: datetime = T0) -> Event:
    return Event(topic=kind.topic, kind=kind, data=data, ts=ts)


def queued(j: Job, ts: datetime = T0, reason: str | None = None) -> Event:
    return event(EventKind.JOB_QUEUED, JobEvent(job=j, reason=reason), ts)


def started(job_id: str = "job-1", attempt: int = 1, ts: datetime = T0, **fields: Any) -> Event:
    j = job(
        job_id, RunStatus.RUNNING, attempt=attempt, robot_id="robot-a", accepted_at=ts, **fields
    )
    return event(EventKind.JOB_STARTED, JobEvent(job=j), ts)


def finished(
    job_id: str = "job-1", status: RunStatus = RunStatus.COMPLETED, ts: datetime = T0, **kw: Any
) -> Event:
    j = job(job_id, status, attempt=1, robot_id="robot-a", finished_at=ts, **kw)
    return event(EventKind.JOB_FINISHED, JobEvent(job=j), ts)


def cell(job_id: str, index: int, done: int, total: int, attempt: int = 1) -> Event:
    data = CellEvent(
        job_id=job_id,
        attempt=attempt,
        cell_index=index,
        status="ok",
        duration_s=0.1,
        cells_done=done,
        cells_total=total,
    )
    return event(EventKind.CELL_FINISHED, data)


def robot_event(kind: EventKind, r: Robot, reason: str | None = None) -> Event:
    return event(kind, RobotEvent(robot=r, reason=reason))


# -- thresholds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("percent", "level"),
    [
        (None, Level.OK),
        (0.0, Level.OK),
        (79.0, Level.OK),
        (79.99, Level.OK),
        (80.0, Level.WARN),
        (94.9, Level.WARN),
        (95.0, Level.CRITICAL),
        (100.0, Level.CRITICAL),
    ],
)
def test_cpu_and_memory_levels_turn_warn_at_80_and_critical_at_95(
    percent: float | None, level: Level
) -> None:
    """A CPU or memory percentage is ok below 80, warn from 80, critical from 95."""
    assert percent_level(percent) is level


def test_a_robots_row_carries_its_cpu_and_memory_levels(state: DashboardState) -> None:
    """The robot view colours CPU 79 ok, memory 80 warn; 95 is critical and so is the row."""
    state.apply(robot_event(EventKind.ROBOT_ONLINE, robot(cpu_percent=79.0, memory_percent=80.0)))
    [view] = state.robots()
    assert (view.cpu_level, view.memory_level, view.level) == (Level.OK, Level.WARN, Level.WARN)
    state.apply(robot_event(EventKind.ROBOT_STATUS, robot(cpu_percent=95.0, memory_percent=10.0)))
    [view] = state.robots()
    assert (view.cpu_level, view.level) == (Level.CRITICAL, Level.CRITICAL)


@pytest.mark.parametrize(
    ("depth", "level"),
    [(0, Level.OK), (50, Level.OK), (51, Level.WARN), (100, Level.WARN), (101, Level.CRITICAL)],
)
def test_queue_level_is_warn_above_50_and_critical_above_100(depth: int, level: Level) -> None:
    """The queue is ok up to 50 jobs, warn from 51, critical from 101."""
    assert queue_level(depth) is level


@pytest.mark.parametrize(
    ("depth", "level"), [(50, Level.OK), (51, Level.WARN), (101, Level.CRITICAL)]
)
def test_the_queue_view_level_follows_the_queued_events(
    state: DashboardState, depth: int, level: Level
) -> None:
    """50, 51 and 101 queued jobs give the queue view ok, warn and critical."""
    for i in range(depth):
        state.apply(queued(job(f"j{i}")))
    view = state.queue()
    assert (view.depth, view.level) == (depth, level)


def test_the_views_colour_by_the_orchestrators_thresholds(state: DashboardState) -> None:
    """Once given the orchestrator's thresholds, CPU 15 % is a warning (warn 10) and three
    queued jobs critical (critical above 2), where the runbook's defaults say ok."""
    state.apply(robot_event(EventKind.ROBOT_ONLINE, robot(cpu_percent=15.0, memory_percent=1.0)))
    for i in range(3):
        state.apply(queued(job(f"j{i}")))
    assert (state.robots()[0].cpu_level, state.queue().level) == (Level.OK, Level.OK)
    state.set_thresholds(
        Thresholds(
            queue_depth=Limit(warn=1, critical=2, strict=True),
            robot_cpu_percent=Limit(warn=10, critical=20),
        )
    )
    assert (state.robots()[0].cpu_level, state.queue().level) == (Level.WARN, Level.CRITICAL)


# -- robots ----------------------------------------------------------------------------------


def test_robot_status_follows_online_busy_draining_and_offline_events(
    state: DashboardState, clock: Clock
) -> None:
    """online -> busy (load 1/1) -> draining -> offline, each in the robot's view and the
    event log; the heartbeat age runs with the clock."""
    r = robot(tags=["gpu"], environment="prod", last_heartbeat=T0)
    state.apply(robot_event(EventKind.ROBOT_ONLINE, r))
    [view] = state.robots()
    assert (view.status, view.load, view.tags, view.environment) == (
        RobotStatus.ONLINE,
        "0/1",
        ("gpu",),
        "prod",
    )
    busy = r.model_copy(update={"status": RobotStatus.BUSY, "running_jobs": 1})
    state.apply(robot_event(EventKind.ROBOT_STATUS, busy))
    assert (state.robots()[0].status, state.robots()[0].load) == (RobotStatus.BUSY, "1/1")
    state.apply(
        robot_event(EventKind.ROBOT_STATUS, r.model_copy(update={"status": RobotStatus.DRAINING}))
    )
    assert state.robots()[0].status is RobotStatus.DRAINING
    clock.advance(42)
    gone = r.model_copy(update={"status": RobotStatus.OFFLINE})
    state.apply(robot_event(EventKind.ROBOT_OFFLINE, gone, reason="missed_heartbeats"))
    [view] = state.robots()
    assert view.status is RobotStatus.OFFLINE and view.heartbeat_age_s == 42.0
    assert state.log()[-1].endswith("robot robot-a offline (missed_heartbeats)")


def test_the_robots_snapshot_replaces_the_robots_but_not_newer_events(
    state: DashboardState,
) -> None:
    """The subscription's snapshot replaces every robot; an HTTP read started before an
    event keeps that event's version of the robot."""
    state.apply(robot_event(EventKind.ROBOT_ONLINE, robot("old")))
    state.apply(event(EventKind.ROBOT_STATUS, RobotSnapshot(robots=[robot("a"), robot("b")])))
    assert [r.robot_id for r in state.robots()] == ["a", "b"]
    since = state.seq
    state.apply(robot_event(EventKind.ROBOT_STATUS, robot("a", status=RobotStatus.DRAINING)))
    state.load_robots([robot("a", cpu_percent=5.0), robot("b", cpu_percent=7.0)], since=since)
    views = {r.robot_id: r for r in state.robots()}
    assert views["a"].status is RobotStatus.DRAINING and views["a"].cpu_percent is None
    assert views["b"].cpu_percent == 7.0


# -- jobs ------------------------------------------------------------------------------------


def test_job_progress_moves_cell_by_cell(state: DashboardState, clock: Clock) -> None:
    """A started job shows cell 0/?; after cell i of n it shows cell i/n and the fraction
    i/n; the label reads 'cell i/n · first line · elapsed'."""
    state.apply(queued(job()))
    state.apply(started())
    [view] = state.running()
    assert (view.cells_done, view.cells_total, view.fraction) == (0, 0, 0)
    assert view.label == "cell 0/? · 0s"
    assert state.queue().depth == 0
    state.set_sources("job-1", 1, {1: "n = 1", 2: "df = load(n)", 4: "report(df)"})
    fractions = []
    for done, index in enumerate([1, 2, 4], start=1):
        clock.advance(30)
        state.apply(cell("job-1", index, done, 3))
        [view] = state.running()
        fractions.append(view.fraction)
        assert view.label.startswith(f"cell {done}/3 · ")
    assert fractions == [1 / 3, 2 / 3, 1.0]
    assert view.label == "cell 3/3 · 1m 30s"


def test_the_running_jobs_current_cell_first_line(state: DashboardState) -> None:
    """The label names the first non-blank line of the code cell after the last finished
    one; before any cell, the first code cell; a resume starts at its failed cell."""
    nb = {
        "cells": [
            {"cell_type": "markdown", "source": "# title"},
            {"cell_type": "code", "source": ["\n", "  import pandas as pd\n", "x = 1"]},
            {"cell_type": "code", "source": "df = pd.read_csv(path)  # " + "x" * 100},
            {"cell_type": "code", "source": "report(df)"},
        ]
    }
    lines = source_lines(nb)
    assert lines[1] == "import pandas as pd" and list(lines) == [1, 2, 3]
    assert len(lines[2]) == 80 and lines[2].endswith("…")
    state.apply(started())
    state.set_sources("job-1", 1, lines)
    assert state.running()[0].first_line == "import pandas as pd"
    state.apply(cell("job-1", 1, 1, 3))
    assert state.running()[0].first_line.startswith("df = pd.read_csv(path)")
    state.apply(cell("job-1", 2, 2, 3))
    assert state.running()[0].label.startswith("cell 2/3 · report(df) · ")
    state.apply(started("job-2", attempt=2, resume_from_failed=True, failed_cell=3))
    state.set_sources("job-2", 2, lines)
    assert {v.job_id: v.first_line for v in state.running()}["job-2"] == "report(df)"


def test_a_jobs_notebook_is_read_once_after_its_first_cell(state: DashboardState) -> None:
    """Sources are wanted after the first cell event (the notebook-so-far exists then),
    once when read, again after the next cell when the read failed, at most 3 times."""
    state.apply(started())
    assert state.sources_wanted() == []
    state.apply(cell("job-1", 1, 1, 5))
    assert state.sources_wanted() == [("job-1", 1)]
    state.set_sources("job-1", 1, None)
    assert state.sources_wanted() == []
    for index in (2, 3):
        state.apply(cell("job-1", index, index, 5))
        assert state.sources_wanted() == [("job-1", 1)]
        state.set_sources("job-1", 1, None)
    state.apply(cell("job-1", 4, 4, 5))
    assert state.sources_wanted() == []  # tried 3 times
    state.apply(started("job-2"))
    state.apply(cell("job-2", 1, 1, 5))
    state.set_sources("job-2", 1, {1: "x = 1"})
    state.apply(cell("job-2", 2, 2, 5))
    assert state.sources_wanted() == []


def test_finished_jobs_leave_the_live_view_for_the_recent_list_then_drop(
    state: DashboardState, clock: Clock
) -> None:
    """job_finished takes a job out of the running map into the recently finished list
    (newest first, with its error), which forgets it after the TTL."""
    state.apply(started("ok-job"))
    state.apply(started("bad-job"))
    state.apply(finished("ok-job", ts=clock.now))
    clock.advance(5)
    state.apply(
        finished(
            "bad-job", RunStatus.FAILED, ts=clock.now, error_name="ValueError", error_message="x"
        )
    )
    assert state.running() == []
    views = state.finished()
    assert [(v.job_id, v.status) for v in views] == [
        ("bad-job", RunStatus.FAILED),
        ("ok-job", RunStatus.COMPLETED),
    ]
    assert views[0].error == "ValueError: x" and views[1].age_s == 5.0
    assert state.finished_count == 2
    clock.advance(RECENT_TTL.total_seconds() - 4)
    assert [v.job_id for v in state.finished()] == ["bad-job"]
    clock.advance(10)
    assert state.finished() == []


def test_a_cell_event_of_an_unknown_or_finished_job_changes_nothing(
    state: DashboardState,
) -> None:
    """A late cell event (the job finished, or an older attempt) does not bring a job back."""
    state.apply(started())
    state.apply(finished())
    assert state.apply(cell("job-1", 1, 1, 2)).parts == frozenset()
    state.apply(started("job-2", attempt=2))
    assert state.apply(cell("job-2", 1, 1, 2, attempt=1)).parts == frozenset()
    assert state.running()[0].cells_done == 0


def test_the_queue_counts_priorities_and_ages_its_oldest_job(
    state: DashboardState, clock: Clock
) -> None:
    """Queued jobs are counted by priority (critical first); the oldest waiting one's age
    runs with the clock; a job requeued after its robot was lost goes back to the queue."""
    state.apply(queued(job("a", priority=Priority.LOW), ts=T0))
    state.apply(queued(job("b", priority=Priority.CRITICAL), ts=T0 + timedelta(seconds=10)))
    state.apply(queued(job("c", priority=Priority.CRITICAL), ts=T0 + timedelta(seconds=20)))
    clock.advance(60)
    view = state.queue()
    assert view.by_priority == (
        (Priority.CRITICAL, 2),
        (Priority.HIGH, 0),
        (Priority.NORMAL, 0),
        (Priority.LOW, 1),
    )
    assert (view.depth, view.oldest_job_id, view.oldest_age_s) == (3, "a", 60.0)
    state.apply(started("a"))
    assert (state.queue().oldest_job_id, state.queue().oldest_age_s) == ("b", 50.0)
    state.apply(queued(job("a", RunStatus.QUEUED, attempt=1), clock.now, reason="robot_offline"))
    assert state.running() == [] and state.queue().depth == 3


def test_the_snapshot_of_unfinished_jobs_fills_the_queue_and_the_running_map(
    state: DashboardState, clock: Clock
) -> None:
    """load_jobs puts queued jobs in the queue (oldest first, a re-run aged from its last
    end) and running ones in the running map; /health and /api/info set the flags."""
    rerun = job("r", created_at=T0 - timedelta(days=1), finished_at=T0 - timedelta(seconds=30))
    fresh = job("f", created_at=T0 - timedelta(seconds=10))
    busy = job("x", RunStatus.RUNNING, attempt=1, robot_id="robot-a", accepted_at=T0)
    state.load_jobs([fresh, busy, rerun])
    view = state.queue()
    assert (view.depth, view.oldest_job_id, view.oldest_age_s) == (2, "r", 30.0)
    assert [v.job_id for v in state.running()] == ["x"]
    assert state.sources_wanted() == [("x", 1)]  # found running: its notebook exists
    state.load_info(
        ServerInfo(
            version="1",
            ws_url="ws://x",
            draining=False,
            protocol_version=1,
            submissions_paused=True,
        )
    )
    state.load_health(Health(status="draining", robots_online=0, jobs={}, queue={"normal": 2}))
    view = state.queue()
    assert view.submissions_paused and view.draining and not view.approximate


def test_a_queue_past_its_tracking_limit_counts_and_says_the_age_is_a_lower_bound(
    clock: Clock,
) -> None:
    """Past queue_track_limit jobs are counted only: the depth stays exact, the oldest age
    is marked approximate after a snapshot that could not list them all."""
    state = DashboardState(clock=clock, queue_track_limit=5)
    for i in range(8):
        state.apply(queued(job(f"j{i}", priority=Priority.HIGH)))
    assert state.queue().depth == 8 and state.sizes()["queue_tracked"] == 5
    for i in range(8):
        state.apply(started(f"j{i}", priority=Priority.HIGH))
    assert state.queue().depth == 0
    state.load_jobs([job(f"k{i}") for i in range(5)])
    state.load_health(Health(status="ok", robots_online=1, jobs={}, queue={"normal": 12}))
    view = state.queue()
    assert (view.depth, view.approximate) == (12, True)
    assert "&gt; " in queue_html(view)


def test_buffers_stay_bounded_after_100k_events(clock: Clock) -> None:
    """100,000 events (robots coming and going, jobs queued, started, cell by cell,
    finished) leave the log, the recent list, the robots and the running map bounded."""
    state = DashboardState(clock=clock, max_robots=50)
    cells = [cell(f"j{i}", 1, 1, 2) for i in range(10)]
    count = 0

    def stream() -> Iterator[Event]:
        for i in range(20_000):
            jid = f"j{i}"
            yield queued(job(jid))
            yield started(jid)
            yield cell(jid, 1, 1, 2) if i >= 10 else cells[i]
            yield finished(jid)
            yield robot_event(EventKind.ROBOT_ONLINE, robot(f"robot-{i}"))

    for e in stream():
        state.apply(e)
        count += 1
    assert count == 100_000 and state.events == 100_000
    sizes = state.sizes()
    assert sizes == {
        "robots": 50,
        "queue_tracked": 0,
        "running": 0,
        "finished": RECENT_FINISHED,
        "log": EVENT_LOG_SIZE,
    }


def test_listeners_hear_each_change_with_the_publish_time(state: DashboardState) -> None:
    """on_change listeners get the parts an event changed and when it was published; the
    returned function removes the listener."""
    heard: list[Change] = []
    remove = state.on_change(heard.append)
    at = T0 + timedelta(seconds=3)
    state.apply(queued(job(), ts=at))
    assert heard == [Change(frozenset({"queue", "log"}), at, "job_queued")]
    remove()
    state.apply(started())
    assert len(heard) == 1


# -- connection ------------------------------------------------------------------------------


def test_connection_status_messages_are_one_clear_line(state: DashboardState) -> None:
    """No answer is 'orchestrator unreachable at URL: reason' (without repeating the URL),
    401 'token refused', another status names it; connected says where."""
    url = "http://127.0.0.1:9"
    assert state.connection().state is ConnectionState.CONNECTING
    state.set_disconnected(
        url, f"cannot reach the orchestrator at {url}: [Errno 111] refused", None, 2
    )
    view = state.connection()
    assert view.state is ConnectionState.UNREACHABLE and not view.ok
    assert view.message == f"orchestrator unreachable at {url}: [Errno 111] refused"
    assert "(retrying in 2.0 s)" in status_html(view)
    state.set_disconnected(url, f"the orchestrator at {url} did not answer in time", None)
    assert (
        state.connection().message == f"orchestrator unreachable at {url}: did not answer in time"
    )
    state.set_disconnected(url, "the orchestrator refused the event stream (HTTP 401)", 401)
    view = state.connection()
    assert view.state is ConnectionState.REFUSED
    assert view.message.startswith(f"token refused by the orchestrator at {url}")
    state.set_disconnected(url, "database is locked", 503)
    assert (
        state.connection().message == f"orchestrator at {url} failed (HTTP 503): database is locked"
    )
    state.set_connected(url)
    assert state.connection().ok and state.connection().message == f"connected to {url}"
    assert "\n" not in "".join(state.log())


def test_the_retry_delay_grows_exponentially_up_to_its_cap() -> None:
    """The default backoff doubles from 0.5 s and stops at the cap."""
    assert [default_backoff(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert default_backoff(50) == BACKOFF_CAP_S


# -- history, forms, HTML --------------------------------------------------------------------


def test_daily_series_fills_missing_days_and_computes_the_success_rate() -> None:
    """Rows per workflow per day sum per day over the span; days without runs are 0 with
    no rate; the workflow filter keeps one workflow."""
    today = date(2026, 3, 2)
    rows = [
        DailyRuns(workflow_path="/a", day=today, runs=4, completed=3, failed=1),
        DailyRuns(workflow_path="/b", day=today, runs=1, completed=1, failed=0),
        DailyRuns(workflow_path="/a", day=today - timedelta(days=2), runs=2, completed=0, failed=2),
    ]
    series = daily_series(rows, days=3, today=today)
    assert series.labels == ("02-28", "03-01", "03-02")
    assert (series.completed, series.failed) == ((0, 0, 4), (2, 0, 1))
    assert series.success_rate == (0.0, None, 80.0)
    only_b = daily_series(rows, days=3, today=today, workflow="/b")
    assert only_b.completed == (0, 0, 1) and only_b.success_rate[-1] == 100.0


def _schema() -> ParamSchema:
    specs = {
        "count": ParamSpec(name="count", type_repr="int", required=True),
        "ratio": ParamSpec(name="ratio", type_repr="float", has_default=True, default=0.5),
        "region": ParamSpec(
            name="region", type_repr="str", has_default=True, default="EU", choices=["EU", "US"]
        ),
        "dry": ParamSpec(name="dry", type_repr="bool", has_default=True, default=False),
        "token": ParamSpec(
            name="token", type_repr="Secret[str]", secret=True, has_default=True, default=""
        ),
        "items": ParamSpec(name="items", type_repr="list[int]", has_default=True, default=[1, 2]),
        "n": ParamSpec(name="n", type_repr="int", has_default=True, default=3),
    }
    return ParamSchema(has_cell=True, cell_index=0, params=specs)


def test_each_parameter_gets_a_typed_field_with_its_default() -> None:
    """Numbers and everything else -> text (judged as typed), choices -> dropdown, bool ->
    checkbox, secret -> password; literal defaults as the text they start with."""
    plans = {p.name: p for p in form_plan(_schema())}
    kinds = {name: p.kind for name, p in plans.items()}
    assert kinds == {
        "count": FieldKind.TEXT,
        "ratio": FieldKind.TEXT,
        "region": FieldKind.CHOICE,
        "dry": FieldKind.BOOL,
        "token": FieldKind.SECRET,
        "items": FieldKind.TEXT,
        "n": FieldKind.TEXT,
    }
    assert {n: p.initial for n, p in plans.items()} == {
        "count": "",
        "ratio": "0.5",
        "region": "EU",
        "dry": "False",
        "token": "",
        "items": "[1, 2]",
        "n": "3",
    }
    assert plans["region"].options == (("EU", "EU"), ("US", "US"))
    assert plans["count"].label == "count *"


def test_a_rerun_form_starts_from_the_jobs_values_and_sends_only_changes() -> None:
    """Pre-filled from the job's parameters (a redacted secret starts empty); only the
    changed, non-empty texts are sent."""
    plans = form_plan(_schema(), {"count": 7, "token": "***", "items": [3]})
    initial = {p.name: p.initial for p in plans}
    assert (initial["count"], initial["token"], initial["items"]) == ("7", "", "[3]")
    texts = {**initial, "count": "8", "region": "US", "token": ""}
    assert changed_texts(plans, texts) == {"count": "8", "region": "US"}
    assert problem_parameter("parameter 'count': expected int, got 'x'") == "count"
    assert problem_parameter("workflow nope.ipynb not found") is None


def test_the_debug_link_and_the_failure_card_html() -> None:
    """The debug link is JupyterLab's command link for casare:debug with the job; a
    failure shows its cell index, error and traceback without colour codes, escaped."""
    assert debug_link("20261127-030517-843dd2") == (
        '<a data-commandlinker-command="casare:debug" '
        """data-commandlinker-args='{"job": "20261127-030517-843dd2"}' href="#">"""
        "Open in JupyterLab</a>"
    )
    run = RunRecord(
        run_id="job-9",
        attempt=2,
        workflow_path=WORKFLOW,
        notebook_sha256="0" * 64,
        status=RunStatus.FAILED,
        started_at=T0,
        error_name="AssertionError",
        error_message="10 rows > limit 5",
        failed_cell=3,
    )
    failure = Failure(
        run=run,
        cell_index=3,
        source="assert len(data) <= limit",
        traceback=["\x1b[0;31mAssertionError\x1b[0m: 10 rows > limit <5>"],
    )
    html = failure_html(failure, ["reports/sales.ipynb"], base_url="/user/me/")
    assert "reports/sales.ipynb" in html and "failed at cell 3" in html
    assert "AssertionError: 10 rows &gt; limit &lt;5&gt;" in html and "\x1b" not in html
    assert 'href="/user/me/casare/notebook/job-9?attempt=2"' in html
    assert 'data-commandlinker-command="casare:debug"' in html


def test_importing_the_plain_parts_loads_no_widget_library() -> None:
    """casare_nb.widgets, .state, .feed, .fields and .render load neither ipywidgets nor
    bqplot (the views do, on first use of Dashboard)."""
    code = (
        "import sys, json\n"
        "import casare_nb.widgets, casare_nb.widgets.state, casare_nb.widgets.feed\n"
        "import casare_nb.widgets.fields, casare_nb.widgets.render\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('ipywidgets', 'bqplot', 'IPython'))))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(run.stdout) == []
