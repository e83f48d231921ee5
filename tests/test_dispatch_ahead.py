"""Jobs sent ahead of their due time (``job_assign.start_at``): a schedule fires its lead
early, the robot prepares the job at once and runs its first cell at the due time; cancel,
drain, robot loss and a robot that never accepts still behave; the kernel set-up before the
first cell is one control call."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, impatient_with_fake_robot, notebook, waiting_cell

from casare_nb.core.models import RunStatus, TriggerKind
from casare_nb.core.triggers import Schedule, ScheduleKind
from casare_nb.local import arun_notebook
from casare_nb.notebook.kernels import KernelSession
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.orchestrator.triggers.schedules import (
    DISPATCH_LEAD_S,
    SKIPPED_MAX_INSTANCES,
    EarlyTrigger,
    make_trigger,
)
from casare_nb.protocol import JobAssign, decode

STAMP = "import time\nopen(out, 'w').write(repr(time.time()))"
LEAD = timedelta(seconds=DISPATCH_LEAD_S)


def stamp_flow(folder: Path) -> Path:
    """A workflow whose first cell writes the time it ran to the file ``out``."""
    return notebook(folder, "stamp.ipynb", [STAMP, "y = 1"], params="out = ''")


def first_cell_at(stamp: Path) -> datetime:
    return datetime.fromtimestamp(float(stamp.read_text("utf-8")), UTC)


def record_assigns(orch: Orchestrator) -> list[tuple[datetime, JobAssign]]:
    """Every job_assign the orchestrator sends from now on, with the time it went out."""
    sent: list[tuple[datetime, JobAssign]] = []
    send = orch.send_to_robot

    def recording(robot_id: str, msg: Any) -> bool:
        if isinstance(msg, JobAssign):
            sent.append((datetime.now(UTC), msg))
        return send(robot_id, msg)

    orch.send_to_robot = recording  # type: ignore[method-assign]
    return sent


def running(cluster: Cluster, job_id: str) -> bool:
    return cluster.job(job_id).status is RunStatus.RUNNING


async def test_a_job_sent_ahead_runs_its_first_cell_at_start_at(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A job submitted with start_at is sent with it, accepted at once, and its first cell
    runs at start_at, not before; a job without start_at is sent without and runs at once."""
    flow, stamp = stamp_flow(tmp_path), tmp_path / "ahead.txt"
    await cluster.robot("r1")
    sent = record_assigns(cluster.orch)
    start_at = datetime.now(UTC) + timedelta(seconds=1.5)
    job = await cluster.orch.submit(flow, {"out": str(stamp)}, start_at=start_at)
    await cluster.until(lambda: running(cluster, job.job_id))
    assert datetime.now(UTC) < start_at and not stamp.exists()
    done = await cluster.finished(job.job_id)
    assert done.status is RunStatus.COMPLETED and first_cell_at(stamp) >= start_at
    assert [msg.start_at for _, msg in sent] == [start_at]
    plain_stamp = tmp_path / "plain.txt"
    plain = await cluster.orch.submit(flow, {"out": str(plain_stamp)})
    submitted = datetime.now(UTC)
    assert (await cluster.finished(plain.job_id)).status is RunStatus.COMPLETED
    assert sent[-1][1].job_id == plain.job_id and sent[-1][1].start_at is None
    assert first_cell_at(plain_stamp) - submitted < timedelta(seconds=10)


async def test_cancel_before_start_at_ends_the_job_before_any_cell(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A job cancelled while its robot waits for start_at ends cancelled at once, no cell
    having run; the robot then takes the next job."""
    flow, stamp = stamp_flow(tmp_path), tmp_path / "never.txt"
    await cluster.robot("r1")
    start_at = datetime.now(UTC) + timedelta(seconds=20)
    job = await cluster.orch.submit(flow, {"out": str(stamp)}, start_at=start_at)
    await cluster.until(lambda: running(cluster, job.job_id))
    cluster.orch.cancel(job.job_id)
    done = await cluster.finished(job.job_id)
    assert done.status is RunStatus.CANCELLED and datetime.now(UTC) < start_at
    assert not stamp.exists()
    cells = (await cluster.history()).list_cells(job.job_id)
    assert all(c.status.value != "ok" for c in cells)
    after = await cluster.orch.submit(flow, {"out": str(tmp_path / "after.txt")})
    assert (await cluster.finished(after.job_id)).status is RunStatus.COMPLETED


async def test_drain_before_start_at_waits_for_the_job_to_run(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Draining while a robot waits for a job's start_at lets the job run at start_at and
    finish before the robots are shut down."""
    flow, stamp = stamp_flow(tmp_path), tmp_path / "drained.txt"
    await cluster.robot("r1")
    start_at = datetime.now(UTC) + timedelta(seconds=1.0)
    job = await cluster.orch.submit(flow, {"out": str(stamp)}, start_at=start_at)
    await cluster.until(lambda: running(cluster, job.job_id))
    report = await cluster.orch.drain(timeout_s=30)
    assert report.finished_jobs == [job.job_id] and report.unfinished_jobs == []
    assert cluster.job(job.job_id).status is RunStatus.COMPLETED
    assert first_cell_at(stamp) >= start_at


@pytest.mark.slow
async def test_a_robot_lost_before_start_at_leaves_the_job_to_another_that_waits_too(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The robot holding a job before its start_at goes away: the job is sent to the other
    robot, with the same start_at while it is still ahead, and its first cell runs then."""
    flow, stamp = stamp_flow(tmp_path), tmp_path / "moved.txt"
    bots = {"r1": await cluster.robot("r1"), "r2": await cluster.robot("r2")}
    sent = record_assigns(cluster.orch)
    start_at = datetime.now(UTC) + timedelta(seconds=4)
    job = await cluster.orch.submit(flow, {"out": str(stamp)}, start_at=start_at)
    await cluster.until(lambda: running(cluster, job.job_id))
    holder = cluster.job(job.job_id).robot_id
    assert holder is not None
    await cluster.stop_bot(bots[holder])
    done = await cluster.finished(job.job_id)
    assert (done.status, done.attempt) == (RunStatus.COMPLETED, 2) and done.robot_id != holder
    assert first_cell_at(stamp) >= start_at
    assert [(msg.attempt, msg.start_at) for _, msg in sent] == [(1, start_at), (2, start_at)]


async def test_a_robot_that_never_accepts_gets_the_job_again_without_a_passed_start_at(
    tmp_path: Path,
) -> None:
    """A job_assign with start_at that is never accepted is sent again after the assign
    timeout, without start_at once that has passed."""
    flow = stamp_flow(tmp_path)
    async with impatient_with_fake_robot(tmp_path / "state", "mute-robot") as (orch, ws):
        start_at = datetime.now(UTC) + timedelta(seconds=0.2)
        await orch.submit(flow, {"out": str(tmp_path / "x.txt")}, start_at=start_at)
        first = decode(await ws.recv())
        assert isinstance(first, JobAssign) and first.start_at == start_at  # not answered
        second = decode(await ws.recv())
        assert isinstance(second, JobAssign) and second.attempt == first.attempt + 1
        assert second.start_at is None and datetime.now(UTC) > start_at


# -- schedules ---------------------------------------------------------------------------------


async def test_a_schedule_sends_its_job_ahead_and_the_first_cell_runs_at_the_due_time(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The orchestrator's scheduler fires lead_s before a due time: the job is sent with
    start_at = the due time before it, records that due time as trigger.due_at and in its
    fire, and its first cell runs at the due time, not before."""
    flow, stamp = stamp_flow(tmp_path), tmp_path / "scheduled.txt"
    await cluster.robot("r1")
    sent = record_assigns(cluster.orch)
    sched = cluster.orch.triggers.scheduler
    assert sched.lead == LEAD
    due = datetime.now(UTC) + timedelta(seconds=1.5)
    await sched.add(
        Schedule(
            schedule_id="s1",
            kind=ScheduleKind.DATE,
            at=due.replace(tzinfo=None),
            timezone="UTC",
            workflow_path=str(flow),
            parameters={"out": str(stamp)},
            created_at=datetime.now(UTC),
        )
    )
    await cluster.until(lambda: len(sent) == 1)
    (sent_at, assign) = sent[0]
    assert assign.start_at == due and sent_at < due
    done = await cluster.finished(assign.job_id)
    assert done.status is RunStatus.COMPLETED and first_cell_at(stamp) >= due
    assert done.trigger is not None and done.trigger.kind is TriggerKind.SCHEDULE
    assert done.trigger.due_at == due
    fires = await asyncio.to_thread(sched.store.fires, "s1")
    assert [(f.due_at, f.job_id) for f in fires] == [(due, done.job_id)]


@pytest.mark.slow
async def test_a_due_time_less_than_the_lead_ahead_fires_at_it_and_the_next_goes_ahead(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A due time less than lead_s after a schedule is added fires at the due time (its job
    sent without start_at, not before it); the next one, far enough ahead, is sent ahead
    with start_at."""
    flow = notebook(tmp_path, "quick.ipynb", ["y = x"], params="x = 1")
    await cluster.robot("r1")
    sent = record_assigns(cluster.orch)
    sched = cluster.orch.triggers.scheduler
    created = datetime.now(UTC) - timedelta(seconds=2.7)  # first due time: 0.3 s from now
    await sched.add(
        Schedule(
            schedule_id="s1",
            kind=ScheduleKind.INTERVAL,
            every_s=3,
            max_instances=5,
            workflow_path=str(flow),
            created_at=created,
        )
    )
    await cluster.until(lambda: len(sent) >= 2)
    await sched.pause("s1")
    (first_at, first), (second_at, second) = sent[:2]
    dues = [cluster.job(msg.job_id).trigger.due_at for msg in (first, second)]  # type: ignore[union-attr]
    assert dues == [created + timedelta(seconds=3), created + timedelta(seconds=6)]
    assert first.start_at is None and first_at >= dues[0]
    assert second.start_at == dues[1] and second_at < dues[1]


@pytest.mark.slow
async def test_a_fire_ahead_of_time_checks_max_instances_at_the_due_time(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Fired ahead while max_instances runs still go, a fire waits for its due time: still
    going then, it is recorded skipped; ended meanwhile, the job is submitted."""
    started, go = tmp_path / "started", tmp_path / "go"
    flow = notebook(tmp_path, "busy.ipynb", [waiting_cell(started, go)], params="x = 1")
    await cluster.robot("r1")
    sched = cluster.orch.triggers.scheduler
    now = datetime.now(UTC)
    await sched.add(
        Schedule(
            schedule_id="s1",
            kind=ScheduleKind.INTERVAL,
            every_s=3600,
            max_instances=1,
            workflow_path=str(flow),
            created_at=now,
        )
    )
    first = await sched.fire_due("s1", now - timedelta(seconds=1))
    assert first is not None
    await cluster.until(started.exists)
    due = datetime.now(UTC) + timedelta(seconds=0.4)
    assert await sched.fire_due("s1", due, start_at=due) is None
    assert datetime.now(UTC) >= due
    outcomes = {f.due_at: f.outcome for f in await asyncio.to_thread(sched.store.fires, "s1")}
    assert outcomes[due] == SKIPPED_MAX_INSTANCES
    later = datetime.now(UTC) + timedelta(seconds=4)
    fire = asyncio.create_task(sched.fire_due("s1", later, start_at=later))
    go.touch()
    await cluster.finished(first)
    assert datetime.now(UTC) < later and not fire.done()
    second = await fire
    assert second is not None
    assert (await cluster.finished(second)).status is RunStatus.COMPLETED


async def test_a_fire_ahead_of_time_counts_misfire_grace_from_the_due_time(
    cluster: Cluster, tmp_path: Path
) -> None:
    """With the event loop blocked past two due times fired ahead, the one later than its
    misfire_grace_s after its due time is recorded skipped, the one within it is submitted
    (the lead does not count as lateness, nor extend the grace)."""
    flow = notebook(tmp_path, "quick.ipynb", ["y = x"], params="x = 1")
    sched = cluster.orch.triggers.scheduler
    t0 = datetime.now(UTC)
    for sid, after in (("late", 1.0), ("in-time", 1.75)):
        at = t0 + timedelta(seconds=after)
        await sched.add(
            Schedule(
                schedule_id=sid,
                kind=ScheduleKind.DATE,
                at=at.replace(tzinfo=None),
                timezone="UTC",
                misfire_grace_s=1,
                workflow_path=str(flow),
                created_at=t0,
            )
        )
    time.sleep((t0 + timedelta(seconds=2.25) - datetime.now(UTC)).total_seconds())  # blocked
    outcomes: dict[str, list[str]] = {}

    async def recorded() -> bool:
        for sid in ("late", "in-time"):
            fires = await asyncio.to_thread(sched.store.fires, sid)
            outcomes[sid] = [f.outcome for f in fires]
        return all(outcomes.values())

    async with asyncio.timeout(10):
        while not await recorded():
            await asyncio.sleep(0.02)
    assert outcomes["in-time"] == ["submitted"]
    (late,) = outcomes["late"]
    assert late.startswith("skipped: 1.") and late.endswith("s late (misfire_grace_s)")


def berlin(kind: ScheduleKind, **fields: Any) -> Schedule:
    return Schedule(
        schedule_id=kind.value,
        kind=kind,
        timezone="Europe/Berlin",
        workflow_path="x.ipynb",
        created_at=datetime(2031, 10, 25, 20, tzinfo=UTC),
        **fields,
    )


@pytest.mark.parametrize(
    ("schedule", "start"),
    [
        (berlin(ScheduleKind.CRON, cron="30 2 * * *"), datetime(2031, 3, 27, tzinfo=UTC)),
        (berlin(ScheduleKind.CRON, cron="30 2 * * *"), datetime(2031, 10, 20, tzinfo=UTC)),
        (berlin(ScheduleKind.INTERVAL, every_s=5400), datetime(2031, 10, 25, 20, tzinfo=UTC)),
    ],
    ids=["cron-spring", "cron-fall", "interval-fall"],
)
def test_the_early_trigger_fires_exactly_lead_before_each_due_time_across_dst(
    schedule: Schedule, start: datetime
) -> None:
    """EarlyTrigger's fire times, walked as APScheduler walks them, are the schedule's due
    times minus the lead, exactly, across Berlin's clock changes (spring and fall back)."""
    trigger = make_trigger(schedule)
    early = EarlyTrigger(trigger, LEAD)
    dues: list[datetime] = [trigger.get_next_fire_time(None, start)]
    fires: list[datetime] = [early.get_next_fire_time(None, start - LEAD)]
    while len(dues) < 40:
        dues.append(trigger.get_next_fire_time(dues[-1], dues[-1]))
        fires.append(early.get_next_fire_time(fires[-1], fires[-1]))
    assert [f.astimezone(UTC) + LEAD for f in fires] == [d.astimezone(UTC) for d in dues]
    offsets = {d.utcoffset() for d in dues}
    assert offsets == {timedelta(hours=1), timedelta(hours=2)}  # the walk crossed a change


# -- the kernel set-up ---------------------------------------------------------------------------


async def test_set_up_secrets_and_plan_reach_the_kernel_in_one_control_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the first cell, the checkpoint hook's set-up, the secret values and the plan
    go to the kernel in one control call; the run sees the secret and checkpoints."""
    calls: list[str] = []
    call = KernelSession.call

    async def counted(self: KernelSession, code: str, *, timeout: float = 120) -> Any:
        calls.append(code)
        return await call(self, code, timeout=timeout)

    monkeypatch.setattr(KernelSession, "call", counted)
    seen = tmp_path / "seen.txt"
    flow = notebook(
        tmp_path,
        "secret.ipynb",
        [f"open({str(seen)!r}, 'w').write(str(len(token)))"],
        params="from casare_nb import Secret\ntoken: Secret[str] = ''",
    )
    result = await arun_notebook(
        flow, {"token": "s3cret"}, state_dir=tmp_path / "state", cwd=tmp_path
    )
    assert result.ok and seen.read_text() == "6"
    assert all(part in calls[0] for part in (".configure(", "token = 's3cret'", ".push_plan("))
    assert not any(".configure(" in code or ".push_plan(" in code for code in calls[1:])
    checkpoints = tmp_path / "state" / "runs" / result.run_id / "1" / "checkpoints"
    assert (checkpoints / "c0.json").is_file()
