"""Maintenance and reversible drains: ``casare-nb maintenance on|off`` holds every schedule
and trigger at once and lets them go again (each one's own pause kept); ``casare-nb drain
--cancel``, ``pause-submissions`` and ``resume-submissions`` against a real orchestrator.

In-process tests use a real orchestrator (DuckDB files, APScheduler, the webhook receiver);
the command tests run ``casare-nb orchestrator`` and the commands as subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cluster import Cluster, notebook, waiting_cell
from helpers import ERROR_PREFIX, EXIT_BAD_INPUT, EXIT_OK, cli_env, describe, run_cli

from casare_nb import Client
from casare_nb.core.dispatch import RetryPolicy
from casare_nb.core.errors import SubmissionsClosed
from casare_nb.core.models import TriggerKind
from casare_nb.core.signing import signed_headers
from casare_nb.core.triggers import Schedule, ScheduleKind, Trigger
from casare_nb.orchestrator.orchestrator import MAINTENANCE_FILE, Orchestrator
from casare_nb.orchestrator.triggers.schedules import SKIPPED_MAINTENANCE
from casare_nb.orchestrator.triggers.webhooks import HookRefused

SECRET = "maintenance-secret"
T0 = datetime(2031, 1, 6, 9, 0, 0, 500000, tzinfo=UTC)  # ahead of real time: never fires live
ORCHESTRATOR = (sys.executable, "-m", "casare_nb.cli", "orchestrator", "--log-level", "warning")


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


def schedule(path: Path, sid: str, created: datetime, every_s: float, **kw: object) -> Schedule:
    return Schedule(
        schedule_id=sid,
        workflow_path=str(path),
        kind=ScheduleKind.INTERVAL,
        every_s=every_s,
        created_at=created,
        **kw,  # type: ignore[arg-type]
    )


def jobs_of(orch: Orchestrator, trigger_id: str) -> list[str]:
    return [j.job_id for j in orch.jobs(limit=1000) if j.trigger and j.trigger.id == trigger_id]


@pytest.fixture
def flow(tmp_path: Path) -> Path:
    return notebook(tmp_path, "flow.ipynb", ["y = x * 2"], params="x = 1")


# -- schedules and triggers held ----------------------------------------------------------


async def test_a_due_time_while_held_is_skipped_and_the_next_one_after_fires(
    tmp_path: Path, flow: Path
) -> None:
    """With maintenance on, a due time submits nothing and is recorded 'skipped: maintenance'
    (not made up later); off, the next due time submits its job."""
    orch = Orchestrator(tmp_path / "state", port=0, clock=Clock(T0))
    await orch.start()
    try:
        sched = orch.triggers.scheduler
        await sched.add(schedule(flow, "s1", T0 - timedelta(hours=2), 3600))
        since = await orch.set_maintenance(True)
        assert since == T0 and orch.maintenance == T0
        assert await sched.fire_due("s1", T0 + timedelta(hours=1)) is None
        fires = await asyncio.to_thread(orch.stores.triggers.fires, "s1")
        assert [(f.job_id, f.outcome) for f in fires] == [(None, SKIPPED_MAINTENANCE)]
        assert jobs_of(orch, "s1") == []
        assert await orch.set_maintenance(False) is None and orch.maintenance is None
        assert await sched.fire_due("s1", T0 + timedelta(hours=1)) is None  # not made up
        job_id = await sched.fire_due("s1", T0 + timedelta(hours=2))
        assert job_id is not None and jobs_of(orch, "s1") == [job_id]
    finally:
        await orch.stop()


async def test_live_schedules_stop_firing_while_held_and_fire_again_after(
    cluster: Cluster, flow: Path
) -> None:
    """An interval schedule firing live submits nothing while maintenance is on (its due
    times are recorded skipped) and fires again once it is off; a schedule paused before
    maintenance is still paused after it."""
    orch = cluster.orch
    sched = orch.triggers.scheduler
    now = datetime.now(UTC)
    await sched.add(schedule(flow, "live", now, 0.2, max_instances=100))
    await sched.add(schedule(flow, "asleep", now, 0.2, max_instances=100))
    await sched.pause("asleep")
    await eventually(lambda: len(jobs_of(orch, "live")) >= 1)
    await orch.set_maintenance(True)
    held = len(jobs_of(orch, "live"))
    skipped: list[str] = []

    async def skipped_fires() -> None:
        fires = await asyncio.to_thread(orch.stores.triggers.fires, "live")
        skipped[:] = [f.outcome for f in fires if f.outcome == SKIPPED_MAINTENANCE]

    async with asyncio.timeout(15):
        while len(skipped) < 2:
            await skipped_fires()
    assert len(jobs_of(orch, "live")) <= held + 1  # at most one fire was under way
    held = len(jobs_of(orch, "live"))
    await skipped_fires()
    assert len(jobs_of(orch, "live")) == held
    await orch.set_maintenance(False)
    await eventually(lambda: len(jobs_of(orch, "live")) > held)
    await sched.pause("live")
    asleep = await asyncio.to_thread(orch.stores.triggers.schedule, "asleep")
    assert asleep is not None and asleep.paused and jobs_of(orch, "asleep") == []


async def test_maintenance_outlives_a_restart_and_skips_the_missed_due_times(
    tmp_path: Path, flow: Path
) -> None:
    """Maintenance is kept in the state directory: restarted after due times were missed,
    the orchestrator is still in maintenance and records them skipped instead of firing;
    off removes the file."""
    state = tmp_path / "state"
    clock = Clock(T0)
    orch = Orchestrator(state, port=0, clock=clock)
    await orch.start()
    await orch.triggers.scheduler.add(schedule(flow, "s1", T0, 3600))
    await orch.set_maintenance(True)
    await orch.stop()
    assert (state / MAINTENANCE_FILE).is_file()
    clock.now = T0 + timedelta(hours=3, minutes=1)
    again = Orchestrator(state, port=0, clock=clock)
    await again.start()
    try:
        assert again.maintenance == T0
        fires = await asyncio.to_thread(again.stores.triggers.fires, "s1")
        assert fires and all(f.outcome == SKIPPED_MAINTENANCE for f in fires)
        assert jobs_of(again, "s1") == []
        await again.set_maintenance(False)
        assert not (state / MAINTENANCE_FILE).exists()
    finally:
        await again.stop()


@pytest.fixture
async def hooked(tmp_path: Path, flow: Path) -> AsyncIterator[Orchestrator]:
    orch = Orchestrator(tmp_path / "state", port=0, environ={"HOOK_SECRET": SECRET})
    await orch.start()
    for tid, enabled in (("hook", True), ("off", False)):
        trigger = Trigger(
            trigger_id=tid,
            workflow_path=str(flow),
            kind=TriggerKind.WEBHOOK,
            secret_env="HOOK_SECRET",
            created_at=datetime.now(UTC),
            enabled=enabled,
        )
        await asyncio.to_thread(orch.stores.triggers.add_trigger, trigger)
    try:
        yield orch
    finally:
        await orch.stop()


async def test_webhooks_answer_503_while_held_and_submit_after(hooked: Orchestrator) -> None:
    """A signed delivery during maintenance is refused 503 with nothing submitted, and the
    same delivery is taken once maintenance is off; a trigger disabled before stays so."""
    body = b'{"x": 3}'
    headers = signed_headers(SECRET.encode(), body, delivery_id="d-1")
    await hooked.set_maintenance(True)
    with pytest.raises(HookRefused) as refused:
        await hooked.triggers.hooks.deliver("hook", headers, body)
    assert refused.value.status == 503 and "maintenance" in refused.value.detail
    assert jobs_of(hooked, "hook") == []
    await hooked.set_maintenance(False)
    accepted = await hooked.triggers.hooks.deliver("hook", headers, body)
    assert jobs_of(hooked, "hook") == [accepted.job_id]
    (off,) = [t for t in hooked.triggers.triggers() if t.trigger_id == "off"]
    assert not off.enabled


async def test_file_watch_submits_the_files_that_came_during_maintenance_after_it(
    tmp_path: Path,
) -> None:
    """A file arriving while maintenance is on submits nothing; off, it is submitted."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    wf = notebook(tmp_path, "watch.ipynb", ["n = len(path)"], params="path = ''")
    orch = Orchestrator(tmp_path / "state", port=0)
    await orch.start()
    try:
        trigger = Trigger(
            trigger_id="watch",
            workflow_path=str(wf),
            kind=TriggerKind.FILE_WATCH,
            watch_path=str(inbox),
            pattern="*.csv",
            file_parameter="path",
            created_at=datetime.now(UTC),
        )
        await asyncio.to_thread(orch.stores.triggers.add_trigger, trigger)
        await orch.triggers.watcher.add(trigger)
        await orch.set_maintenance(True)
        (inbox / "a.csv").write_text("1\n")
        assert jobs_of(orch, "watch") == []
        await orch.set_maintenance(False)
        await eventually(lambda: len(jobs_of(orch, "watch")) == 1)
        (job,) = orch.jobs(limit=10)
        assert job.parameters["path"] == str(inbox / "a.csv")
    finally:
        await orch.stop()


# -- a drain undone ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_drain_under_way_is_cancelled_and_shuts_no_robot_down(
    tmp_path: Path,
) -> None:
    """undrain while a drain waits for a running job: the drain returns cancelled with no
    robot shut down, the robot stays online, and a new submission is taken and runs."""
    orch = Orchestrator(
        tmp_path / "state",
        port=0,
        heartbeat_interval_s=0.2,
        missed_heartbeats=10,
        retry_policy=RetryPolicy(base_s=0.05, jitter=0),
    )
    await orch.start()
    cluster = Cluster(tmp_path, orch)
    try:
        await cluster.robot("r1")
        started, go = tmp_path / "started", tmp_path / "go"
        slow = notebook(tmp_path, "slow.ipynb", [waiting_cell(started, go)])
        quick = notebook(tmp_path, "quick.ipynb", ["z = 1"])
        job = await orch.submit(slow)
        await eventually(started.exists, timeout=60)
        drain = asyncio.create_task(orch.drain(60))
        await orch.wait_for(lambda: orch.draining, timeout=10)
        with pytest.raises(SubmissionsClosed):
            await orch.submit(quick)
        orch.undrain()
        report = await asyncio.wait_for(drain, 10)
        assert report.cancelled and report.robots_shut_down == []
        assert report.unfinished_jobs == [job.job_id] and not orch.draining
        assert cluster.online("r1")
        go.touch()
        again = await orch.submit(quick)
        assert (await cluster.finished(again.job_id)).status.value == "completed"
        assert (await cluster.finished(job.job_id)).status.value == "completed"
    finally:
        await cluster.close()


# -- the commands against a real orchestrator process -------------------------------------------


class Served:
    """A ``casare-nb orchestrator`` subprocess in ``base`` (state: ``base/state``)."""

    def __init__(self, base: Path) -> None:
        (base / "workflows").mkdir(exist_ok=True)
        self.base = base
        self.proc = subprocess.Popen(
            [*ORCHESTRATOR, "--port", "0", "--http-port", "0", "--workflows", "workflows"],
            cwd=base,
            env=cli_env(base),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "runtime file" in line:
                break
        else:
            _, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"the orchestrator did not start: {err}")

    def client(self) -> Client:
        return Client.local(self.base / "state")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.base, *args)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = Served(tmp_path)
    notebook(tmp_path / "workflows", "wf.ipynb", ["y = 1"])
    try:
        yield server
    finally:
        server.stop()


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != EXIT_OK and len(lines) == 1, describe(proc)
    assert lines[0].startswith(ERROR_PREFIX), describe(proc)
    return lines[0]


def test_drain_refuses_submissions_and_drain_cancel_takes_them_again(served: Served) -> None:
    """After `casare-nb drain` a submit is refused with one line; after `drain --cancel`
    the orchestrator takes it (queued) and /api/info no longer says draining."""
    drained = served.cli("drain", "--timeout", "0")
    assert drained.returncode == EXIT_OK and "takes no new jobs" in drained.stdout, describe(
        drained
    )
    assert "draining" in one_error_line(served.cli("submit", "wf.ipynb"))
    undone = served.cli("drain", "--cancel")
    assert undone.returncode == EXIT_OK, describe(undone)
    assert "submissions resumed" in undone.stdout
    submitted = served.cli("submit", "wf.ipynb")
    assert submitted.returncode == EXIT_OK, describe(submitted)
    with served.client() as client:
        info = client.info()
        assert not info.draining and not info.submissions_paused
        assert len(client.jobs()) == 1


def test_pause_and_resume_submissions(served: Served) -> None:
    """`pause-submissions` makes a submit fail with one line (paused); `resume-submissions`
    takes submissions again."""
    paused = served.cli("pause-submissions")
    assert paused.returncode == EXIT_OK and "paused" in paused.stdout, describe(paused)
    assert "paused" in one_error_line(served.cli("submit", "wf.ipynb"))
    resumed = served.cli("resume-submissions")
    assert resumed.returncode == EXIT_OK, describe(resumed)
    assert served.cli("submit", "wf.ipynb").returncode == EXIT_OK


def test_maintenance_on_status_off_and_what_status_shows(served: Served) -> None:
    """`maintenance on` holds the schedules (counted), `/api/info` and `maintenance status`
    say so, `maintenance off` ends it; a paused schedule stays paused across it."""
    with served.client() as client:
        kept = client.add_schedule("wf.ipynb", every="1h")
        paused = client.add_schedule("wf.ipynb", every="2h")
        client.pause_schedule(paused.schedule.schedule_id)
    on = served.cli("maintenance", "on")
    assert on.returncode == EXIT_OK, describe(on)
    assert "maintenance on since" in on.stdout and "1 schedules" in on.stdout
    status = served.cli("maintenance", "--json")
    assert json.loads(status.stdout)["on"] is True, describe(status)
    with served.client() as client:
        assert client.info().maintenance
    off = served.cli("maintenance", "off")
    assert off.returncode == EXIT_OK and "maintenance off" in off.stdout, describe(off)
    with served.client() as client:
        assert not client.info().maintenance
        states = {i.schedule.schedule_id: i.schedule.paused for i in client.schedules()}
    assert states == {kept.schedule.schedule_id: False, paused.schedule.schedule_id: True}


def test_only_an_admin_token_starts_maintenance_or_undoes_a_drain(served: Served) -> None:
    """A user token is refused (one line, non-zero exit) for maintenance on and drain
    --cancel; maintenance stays off."""
    with served.client() as client:
        user = client.create_token("analyst", "user")
        url = client.info().ws_url  # only to prove the client works
    assert url
    for args in (("maintenance", "on"), ("drain", "--cancel"), ("resume-submissions",)):
        refused = served.cli(*args, "--token", user)
        assert "admin" in one_error_line(refused), describe(refused)
    with served.client() as client:
        assert not client.maintenance().on


def test_bad_maintenance_input_is_one_line(tmp_path: Path) -> None:
    """An unknown action, and any of the commands without an orchestrator: exit 2, one
    line."""
    bad = run_cli(tmp_path, "maintenance", "sideways")
    assert bad.returncode == EXIT_BAD_INPUT and "sideways" in one_error_line(bad)
    for args in (("maintenance", "on"), ("drain", "--cancel"), ("resume-submissions",)):
        alone = run_cli(tmp_path, *args)
        assert alone.returncode == EXIT_BAD_INPUT, describe(alone)
        assert "orchestrator" in one_error_line(alone)
