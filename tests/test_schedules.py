"""Schedules (orchestrator/triggers/schedules.py): due times, fires, misfires across restarts,
bad input."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cluster import ON_EVERY_BACKEND, Cluster, notebook, waiting_cell
from pydantic import ValidationError

from casare_nb.core.errors import QueueError
from casare_nb.core.models import Job, Priority, RunStatus, TriggerKind
from casare_nb.core.triggers import Schedule, ScheduleKind, TriggerError, parse_duration
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.orchestrator.triggers.schedules import (
    SKIPPED_MAX_INSTANCES,
    Scheduler,
    crontab_weekdays,
)

BERLIN = ZoneInfo("Europe/Berlin")
T0 = datetime(2031, 1, 6, 9, 0, 0, 500000, tzinfo=UTC)  # ahead of real time: never fires live


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def make(path: Path | str, sid: str = "s1", **fields: Any) -> Schedule:
    fields.setdefault("created_at", datetime.now(UTC))
    return Schedule(schedule_id=sid, workflow_path=str(path), **fields)


class Clock:
    """An injected clock the test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def eventually(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def jobs_of(orch: Orchestrator, schedule_id: str) -> list[Job]:
    """The jobs a schedule submitted, by due time."""
    found = [j for j in orch.jobs(limit=1000) if j.trigger and j.trigger.id == schedule_id]
    return sorted(found, key=lambda j: j.trigger.due_at if j.trigger and j.trigger.due_at else 0)


@pytest.fixture
def flow(tmp_path: Path) -> Path:
    return notebook(tmp_path, "flow.ipynb", ["y = x * 2"], params="x = 1\nname = 'a'")


@pytest.fixture
async def sched(cluster: Cluster) -> AsyncIterator[Scheduler]:
    scheduler = Scheduler(cluster.orch.job_manager, cluster.orch.stores.triggers)
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.stop()


# -- due times: cron, time zones, DST, intervals ----------------------------------------------


async def test_cron_across_berlin_dst_days_follows_apscheduler(cluster: Cluster) -> None:
    """'30 2 * * *' Europe/Berlin: on 2027-03-28 (02:30 does not exist) APScheduler gives
    02:30+01:00, the wall time with the pre-transition offset, i.e. 01:30 UTC = 03:30 CEST;
    on 2027-10-31 (02:30 exists twice) it fires twice, 00:30 UTC (CEST) then 01:30 UTC (CET)."""
    sched = Scheduler(cluster.orch.job_manager, cluster.orch.stores.triggers)
    s = make("wf.ipynb", kind=ScheduleKind.CRON, cron="30 2 * * *", timezone="Europe/Berlin")
    spring = sched.next_fire_times(s, 3, now=utc(2027, 3, 27, 12))
    assert [t.astimezone(UTC) for t in spring] == [
        utc(2027, 3, 28, 1, 30),
        utc(2027, 3, 29, 0, 30),
        utc(2027, 3, 30, 0, 30),
    ]
    assert spring[0].tzinfo == BERLIN and spring[0].utcoffset() == timedelta(hours=1)
    autumn = sched.next_fire_times(s, 3, now=utc(2027, 10, 30, 12))
    assert [t.astimezone(UTC) for t in autumn] == [
        utc(2027, 10, 31, 0, 30),
        utc(2027, 10, 31, 1, 30),
        utc(2027, 11, 1, 1, 30),
    ]
    assert [(t.hour, t.minute, t.fold) for t in autumn[:2]] == [(2, 30, 0), (2, 30, 1)]


async def test_weekday_cron_runs_mon_to_fri_at_0600_berlin(cluster: Cluster) -> None:
    """'0 6 * * 1-5' Europe/Berlin is 05:00 UTC in winter, 04:00 UTC in summer, Monday to
    Friday as crontab means 1-5 (APScheduler 3's from_crontab would read Tuesday-Saturday)."""
    sched = Scheduler(cluster.orch.job_manager, cluster.orch.stores.triggers)
    s = make("wf.ipynb", kind=ScheduleKind.CRON, cron="0 6 * * 1-5", timezone="Europe/Berlin")
    winter = sched.next_fire_times(s, 6, now=utc(2027, 1, 2, 12))  # a Saturday
    assert [t.astimezone(UTC) for t in winter] == [utc(2027, 1, d, 5) for d in (4, 5, 6, 7, 8, 11)]
    assert [t.strftime("%a") for t in winter] == ["Mon", "Tue", "Wed", "Thu", "Fri", "Mon"]
    summer = sched.next_fire_times(s, 2, now=utc(2027, 7, 3, 12))
    assert [t.astimezone(UTC) for t in summer] == [utc(2027, 7, 5, 4), utc(2027, 7, 6, 4)]


def test_crontab_weekday_numbers_are_read_as_crontab_reads_them() -> None:
    """0 and 7 are Sunday, 1 is Monday; ranges, steps and lists expand to day names."""
    assert crontab_weekdays("0") == crontab_weekdays("7") == "sun"
    assert crontab_weekdays("1-5") == "mon,tue,wed,thu,fri"
    assert crontab_weekdays("*/2") == "sun,tue,thu,sat"
    assert crontab_weekdays("5-7,1") == "fri,sat,sun,mon"
    assert crontab_weekdays("mon-fri") == "mon-fri"
    with pytest.raises(ValueError, match="expected 0-7"):
        crontab_weekdays("1-8")


async def test_interval_due_times_keep_the_phase_of_creation(cluster: Cluster) -> None:
    """An every-60s schedule is due at created_at + k * 60 s, whatever "now" is."""
    sched = Scheduler(cluster.orch.job_manager, cluster.orch.stores.triggers)
    s = make("wf.ipynb", kind=ScheduleKind.INTERVAL, every_s=60, created_at=T0)
    later = T0 + timedelta(seconds=150)
    assert sched.next_fire_times(s, 3, now=later) == [
        T0 + timedelta(seconds=k * 60) for k in (3, 4, 5)
    ]
    assert sched.next_fire_times(s, 1, now=T0) == [T0 + timedelta(seconds=60)]


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"kind": ScheduleKind.CRON, "cron": "61 * * * *"},
            "invalid cron '61 * * * *': Error validating expression '61': the last value "
            "(61) is higher than the maximum value (59)",
        ),
        (
            {"kind": ScheduleKind.CRON, "cron": "* * *"},
            "invalid cron '* * *': expected 5 fields (minute hour day month weekday)",
        ),
        (
            {"kind": ScheduleKind.CRON, "cron": "0 6 * * *", "timezone": "Mars/Base"},
            "unknown time zone 'Mars/Base'",
        ),
        (
            {"kind": ScheduleKind.DATE, "at": datetime(2020, 1, 1, 9), "timezone": "Europe/Berlin"},
            "--at 2020-01-01T09:00 (Europe/Berlin) is in the past",
        ),
        ({"kind": ScheduleKind.INTERVAL}, "an interval schedule needs every_s"),
        ({"kind": ScheduleKind.CRON}, "a cron schedule needs a cron expression"),
        ({"kind": ScheduleKind.DATE}, "a date schedule needs at"),
        (
            {"kind": ScheduleKind.CRON, "cron": "0 6 * * *", "every_s": 5},
            "a cron schedule takes no every_s",
        ),
    ],
)
async def test_bad_schedules_are_refused_with_one_line_and_not_stored(
    sched: Scheduler, fields: dict[str, Any], message: str
) -> None:
    """Invalid cron, unknown time zone, a date in the past, a kind without its field or with
    another kind's: TriggerError with one clear line, nothing stored or planned."""
    with pytest.raises(TriggerError) as caught:
        await sched.add(make("wf.ipynb", **fields))
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
    assert await asyncio.to_thread(sched.store.schedules) == []
    assert sched.schedules() == [] and sched.upcoming() == []


async def test_an_interval_of_zero_is_refused_everywhere(sched: Scheduler) -> None:
    """every_s 0: the model refuses it, parse_duration('0') too, and validate() does for a
    schedule built around the model's check."""
    with pytest.raises(ValidationError):
        make("wf.ipynb", kind=ScheduleKind.INTERVAL, every_s=0)
    with pytest.raises(TriggerError, match="more than 0 seconds"):
        parse_duration("0")
    s = make("wf.ipynb", kind=ScheduleKind.INTERVAL, every_s=5).model_copy(update={"every_s": 0})
    with pytest.raises(TriggerError, match=r"^every_s must be more than 0 seconds, not 0$"):
        sched.validate(s)
    with pytest.raises(TriggerError):
        await sched.add(s)
    assert await asyncio.to_thread(sched.store.schedules) == []


# -- fires -------------------------------------------------------------------------------------


@ON_EVERY_BACKEND
async def test_a_fire_submits_like_submit_once_per_due_time(
    cluster: Cluster, sched: Scheduler, flow: Path
) -> None:
    """fire_due queues the schedule's job (parameters, priority, tags, environment,
    retries, source 'schedule', the trigger with its due time); the same due time again
    submits nothing."""
    s = make(
        flow,
        kind=ScheduleKind.INTERVAL,
        every_s=3600,
        parameters={"x": 5},
        raw_parameters={"name": "bob"},
        priority=Priority.HIGH,
        tags=["gpu"],
        environment="prod",
        max_retries=2,
    )
    await sched.add(s)
    due = s.created_at + timedelta(hours=1)
    job_id = await sched.fire_due("s1", due)
    assert job_id is not None
    job = cluster.job(job_id)
    assert job.parameters == {"x": 5, "name": "bob"}
    assert (job.priority, job.tags, job.environment, job.max_retries) == (
        Priority.HIGH,
        ["gpu"],
        "prod",
        2,
    )
    assert job.source == "schedule" and job.status is RunStatus.QUEUED
    assert job.trigger is not None
    assert (job.trigger.kind, job.trigger.id, job.trigger.due_at) == (
        TriggerKind.SCHEDULE,
        "s1",
        due,
    )
    assert await sched.fire_due("s1", due) is None
    fires = await asyncio.to_thread(sched.store.fires, "s1")
    assert [(f.due_at, f.job_id, f.outcome) for f in fires] == [(due, job_id, "submitted")]
    assert len(jobs_of(cluster.orch, "s1")) == 1


@pytest.mark.parametrize(
    ("broken", "error"),
    [("missing workflow", "WorkflowError"), ("bad parameter", "ParameterError")],
)
async def test_a_failed_submit_is_recorded_and_firing_goes_on(
    cluster: Cluster, sched: Scheduler, flow: Path, broken: str, error: str
) -> None:
    """A submit that raises is recorded as 'failed: <error>' for its due time; the next due
    time fires once the cause is gone."""
    raw = {"x": "not a number"} if broken == "bad parameter" else {}
    await sched.add(make(flow, kind=ScheduleKind.INTERVAL, every_s=3600, raw_parameters=raw))
    saved = flow.read_bytes()
    if broken == "missing workflow":
        flow.unlink()
    due = T0
    assert await sched.fire_due("s1", due) is None
    fires = await asyncio.to_thread(sched.store.fires, "s1")
    assert len(fires) == 1 and fires[0].outcome.startswith(f"failed: {error}: ")
    assert "\n" not in fires[0].outcome and jobs_of(cluster.orch, "s1") == []
    flow.write_bytes(saved)
    if broken == "bad parameter":
        await sched.remove("s1")
        await sched.add(make(flow, kind=ScheduleKind.INTERVAL, every_s=3600))
    assert await sched.fire_due("s1", due + timedelta(hours=1)) is not None


@pytest.mark.slow
async def test_max_instances_skips_fires_while_a_run_is_unfinished(
    cluster: Cluster, sched: Scheduler, tmp_path: Path
) -> None:
    """With max_instances=1, a due time that comes while the schedule's last run still
    runs is recorded 'skipped: max_instances' and submits nothing; once it finished, the
    next due time runs."""
    started, go = tmp_path / "started", tmp_path / "go"
    flow = notebook(tmp_path, "wait.ipynb", [waiting_cell(started, go)], params="x = 1")
    await cluster.robot("r1")
    s = await sched.add(make(flow, kind=ScheduleKind.INTERVAL, every_s=3600))
    dues = [s.created_at + timedelta(hours=k) for k in (1, 2, 3)]
    first = await sched.fire_due("s1", dues[0])
    assert first is not None
    await cluster.until(started.exists)
    assert await sched.fire_due("s1", dues[1]) is None
    fires = {f.due_at: f for f in await asyncio.to_thread(sched.store.fires, "s1")}
    assert fires[dues[1]].outcome == SKIPPED_MAX_INSTANCES and fires[dues[1]].job_id is None
    go.touch()
    assert (await cluster.finished(first)).status is RunStatus.COMPLETED
    third = await sched.fire_due("s1", dues[2])
    assert third is not None
    assert (await cluster.finished(third)).status is RunStatus.COMPLETED
    assert [j.job_id for j in jobs_of(cluster.orch, "s1")] == [first, third]


# -- restarts ------------------------------------------------------------------------------------


async def _run_then_stop(state: Path, flow: Path, *, cancel: bool, **fields: Any) -> str:
    """An orchestrator at T0 with an every-60s schedule that fired at its first due time
    (T0 + 60 s), then stopped; the job id of that fire."""
    clock = Clock(T0)
    orch = Orchestrator(state, port=0, clock=clock)
    await orch.start()
    sched = Scheduler(orch.job_manager, orch.stores.triggers)
    try:
        await sched.start()
        await sched.add(make(flow, kind=ScheduleKind.INTERVAL, every_s=60, created_at=T0, **fields))
        clock.now = T0 + timedelta(seconds=60.5)
        first = await sched.fire_due("s1", T0 + timedelta(seconds=60))
        assert first is not None
        if cancel:
            orch.cancel(first)
        return first
    finally:
        await sched.stop()
        await orch.stop()


async def _restart(state: Path, now: datetime) -> tuple[Orchestrator, Scheduler]:
    orch = Orchestrator(state, port=0, clock=Clock(now))
    await orch.start()
    sched = Scheduler(orch.job_manager, orch.stores.triggers)
    await sched.start()
    return orch, sched


DOWN = T0 + timedelta(seconds=60.5 + 210)  # 3.5 min after the fire: 120, 180, 240 s missed


@pytest.mark.parametrize(
    ("fields", "cancel", "fired", "outcome"),
    [
        ({}, True, [240], "submitted"),
        ({"coalesce": False, "max_instances": 3}, True, [120, 180, 240], "submitted"),
        ({"misfire_grace_s": 30}, True, [], "skipped: 30 s late (misfire_grace_s 30)"),
        ({}, False, [], SKIPPED_MAX_INSTANCES),
    ],
    ids=["coalesce", "no-coalesce", "past-grace", "still-queued"],
)
async def test_due_times_missed_while_down_fire_at_start(
    tmp_path: Path,
    flow: Path,
    fields: dict[str, Any],
    cancel: bool,
    fired: list[int],
    outcome: str,
) -> None:
    """Down across three due times then restarted: coalesce fires one run for the latest;
    without coalesce one per due time; none past misfire_grace_s; none while the run from
    before the restart is still queued (max_instances=1); the latest is recorded."""
    state = tmp_path / "state"
    first = await _run_then_stop(state, flow, cancel=cancel, **fields)
    orch, sched = await _restart(state, DOWN)
    try:
        jobs = [j for j in jobs_of(orch, "s1") if j.job_id != first]
        assert [j.trigger.due_at for j in jobs if j.trigger] == [
            T0 + timedelta(seconds=k) for k in fired
        ]
        assert all(j.status is RunStatus.QUEUED and j.source == "schedule" for j in jobs)
        fires = await asyncio.to_thread(sched.store.fires, "s1")
        assert fires[0].due_at == T0 + timedelta(seconds=240)
        assert fires[0].outcome == outcome
        assert sched.next_fire_times(sched.schedules()[0], 1) == [T0 + timedelta(seconds=300)]
    finally:
        await sched.stop()
        await orch.stop()


async def test_no_due_time_fires_twice_across_restarts(tmp_path: Path, flow: Path) -> None:
    """Restarting twice with the same clock fires the missed due time once."""
    state = tmp_path / "state"
    await _run_then_stop(state, flow, cancel=True)
    for _ in range(2):
        orch, sched = await _restart(state, DOWN)
        try:
            assert len(jobs_of(orch, "s1")) == 2
            fires = await asyncio.to_thread(sched.store.fires, "s1")
            assert [f.due_at - T0 for f in fires] == [timedelta(seconds=s) for s in (240, 60)]
        finally:
            await sched.stop()
            await orch.stop()


# -- live firing -------------------------------------------------------------------------------


async def test_an_interval_schedule_fires_live_with_its_trigger(
    cluster: Cluster, sched: Scheduler, flow: Path
) -> None:
    """Every 0.3 s: jobs come one per due time, each recording source 'schedule' and its
    exact due time (created_at + k * 0.3 s), the same as its claimed fire."""
    s = await sched.add(make(flow, kind=ScheduleKind.INTERVAL, every_s=0.3, max_instances=50))
    await eventually(lambda: len(jobs_of(cluster.orch, "s1")) >= 2)
    await sched.pause("s1")
    jobs = jobs_of(cluster.orch, "s1")[:2]
    dues = [j.trigger.due_at for j in jobs if j.trigger and j.trigger.due_at]
    assert all(j.source == "schedule" and j.trigger.kind is TriggerKind.SCHEDULE for j in jobs)  # type: ignore[union-attr]
    assert dues[1] - dues[0] == timedelta(seconds=0.3)
    phase = (dues[0] - s.created_at) / timedelta(seconds=0.3)
    assert abs(phase - round(phase)) < 1e-4 and round(phase) >= 1
    fires = {f.due_at: f.job_id for f in await asyncio.to_thread(sched.store.fires, "s1")}
    assert [fires[d] for d in dues] == [j.job_id for j in jobs]


@ON_EVERY_BACKEND
async def test_a_date_schedule_fires_once(cluster: Cluster, sched: Scheduler, flow: Path) -> None:
    """A date schedule 0.3 s ahead fires once, at its date, and has no due time left."""
    at = datetime.now(BERLIN).replace(tzinfo=None) + timedelta(seconds=0.3)
    s = await sched.add(make(flow, kind=ScheduleKind.DATE, at=at, timezone="Europe/Berlin"))
    await eventually(lambda: len(jobs_of(cluster.orch, "s1")) == 1)
    (job,) = jobs_of(cluster.orch, "s1")
    assert job.trigger is not None and job.trigger.due_at == at.replace(tzinfo=BERLIN)
    assert sched.next_fire_times(s) == [] and sched.upcoming() == []
    assert len(await asyncio.to_thread(sched.store.fires, "s1")) == 1


async def test_live_due_times_later_than_the_grace_are_recorded_skipped(
    cluster: Cluster, sched: Scheduler, flow: Path
) -> None:
    """Without coalesce, the due times that pass while the event loop is blocked fire on
    its return, except those later than misfire_grace_s: recorded 'skipped: ... late'."""
    await sched.add(
        make(
            flow,
            kind=ScheduleKind.INTERVAL,
            every_s=0.2,
            coalesce=False,
            misfire_grace_s=1,
            max_instances=100,
        )
    )
    await eventually(lambda: len(jobs_of(cluster.orch, "s1")) >= 1)
    time.sleep(1.7)  # the orchestrator's loop is busy: ~8 due times pass
    outcomes: list[str] = []

    async def outcomes_in() -> None:
        outcomes[:] = [f.outcome for f in await asyncio.to_thread(sched.store.fires, "s1")]

    async with asyncio.timeout(10):  # the fires on time are recorded after the late ones
        while (
            not any(o.startswith("skipped:") for o in outcomes) or outcomes.count("submitted") < 2
        ):
            await outcomes_in()
    await sched.pause("s1")
    skipped = [o for o in outcomes if o.startswith("skipped:")]
    assert all(o.endswith("s late (misfire_grace_s)") for o in skipped)
    assert outcomes.count("submitted") >= 2


async def test_pause_stops_fires_and_resume_restarts_them(
    cluster: Cluster, sched: Scheduler, flow: Path
) -> None:
    """A paused schedule is stored paused and unplanned (APScheduler holds no fire for it);
    resumed, it is planned again and fires."""
    await sched.add(make(flow, kind=ScheduleKind.INTERVAL, every_s=0.2, max_instances=50))
    await eventually(lambda: len(jobs_of(cluster.orch, "s1")) >= 1)
    assert sched.planned("s1") is not None
    paused = await sched.pause("s1")
    assert paused.paused and (await asyncio.to_thread(sched.store.schedule, "s1")).paused  # type: ignore[union-attr]
    assert sched.planned("s1") is None
    count = len(jobs_of(cluster.orch, "s1"))
    resumed = await sched.resume("s1")
    assert not resumed.paused
    planned = sched.planned("s1")
    assert planned is not None and planned > datetime.now(UTC) - timedelta(seconds=0.2)
    await eventually(lambda: len(jobs_of(cluster.orch, "s1")) > count)


async def test_remove_unschedules(cluster: Cluster, sched: Scheduler, flow: Path) -> None:
    """A removed schedule is gone from the store and unplanned, a due time of it fires
    nothing, and unknown ids raise."""
    s = await sched.add(make(flow, kind=ScheduleKind.INTERVAL, every_s=0.2))
    assert sched.planned("s1") is not None
    removed = await sched.remove("s1")
    assert removed.schedule_id == "s1" and sched.schedules() == []
    assert await asyncio.to_thread(sched.store.schedule, "s1") is None
    assert sched.planned("s1") is None
    assert await sched.fire_due("s1", s.created_at + timedelta(seconds=0.2)) is None
    assert jobs_of(cluster.orch, "s1") == []
    for act in (sched.pause, sched.resume, sched.remove):
        with pytest.raises(QueueError, match="unknown schedule s1"):
            await act("s1")


# -- upcoming --------------------------------------------------------------------------------------


async def test_upcoming_merges_schedules_soonest_first_without_paused(cluster: Cluster) -> None:
    """Three cadences merge into the next N due times, soonest first; a paused one is left
    out."""
    now = datetime(2031, 1, 6, 10, 5, tzinfo=UTC)
    sched = Scheduler(cluster.orch.job_manager, cluster.orch.stores.triggers, clock=Clock(now))
    await sched.add(
        make("a.ipynb", "a", kind=ScheduleKind.CRON, cron="*/20 * * * *", created_at=now)
    )
    await sched.add(make("b.ipynb", "b", kind=ScheduleKind.INTERVAL, every_s=900, created_at=now))
    at = datetime(2031, 1, 6, 11, 30)  # Berlin wall time: 10:30 UTC
    await sched.add(
        make(
            "c.ipynb", "c", kind=ScheduleKind.DATE, at=at, timezone="Europe/Berlin", created_at=now
        )
    )
    await sched.add(make("d.ipynb", "d", kind=ScheduleKind.INTERVAL, every_s=60, created_at=now))
    await sched.pause("d")
    got = [(s.schedule_id, due.astimezone(UTC).strftime("%H:%M")) for s, due in sched.upcoming(6)]
    assert got == [
        ("a", "10:20"),
        ("b", "10:20"),
        ("c", "10:30"),
        ("b", "10:35"),
        ("a", "10:40"),
        ("b", "10:50"),
    ]
    paused = next(s for s in sched.schedules() if s.schedule_id == "d")
    assert sched.next_fire_times(paused, 1) == [now + timedelta(seconds=60)]
