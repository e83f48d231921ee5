"""GET /status and `casare-nb status` (and `casare-nb fires`): the operator's one screen from a
real orchestrator with a real robot, judged against the orchestrator's thresholds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cluster import ON_EVERY_BACKEND, Cluster, fake_robot, notebook
from helpers import ERROR_PREFIX, EXIT_BAD_INPUT, EXIT_FAILED, describe, run_cli
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from casare_nb.cli.ops import status_screen
from casare_nb.core.models import Priority, RunStatus
from casare_nb.core.thresholds import Level, Limit, Thresholds
from casare_nb.core.tokens import TokenRole
from casare_nb.core.triggers import Schedule, ScheduleKind
from casare_nb.orchestrator.http.status import build_status
from casare_nb.orchestrator.service import OrchestratorService

TINY_QUEUE = Thresholds(
    queue_depth=Limit(warn=0, critical=1, strict=True),
    connection_failures_per_hour=Limit(warn=2, critical=3),
)


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[OrchestratorService]:
    (tmp_path / "workflows").mkdir()
    svc = OrchestratorService(
        tmp_path / "state",
        port=0,
        http_port=0,
        workflows_dir=tmp_path / "workflows",
        heartbeat_interval_s=0.3,
        missed_heartbeats=10,
        thresholds=TINY_QUEUE,
    )
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
async def cluster(service: OrchestratorService, tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, service.orchestrator)
    try:
        yield c
    finally:
        for bot in c.bots:
            await c.stop_bot(bot)
            await bot.pool.close()


async def cli(base: Path, *args: str) -> tuple[int, str, str]:
    """`casare-nb ARGS` in a subprocess (CASARE_HOME=<base>/state), off the event loop."""
    proc = await asyncio.to_thread(run_cli, base, *args)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.slow
async def test_status_cli_warns_then_exits_1_when_the_queue_is_critical(
    cluster: Cluster, tmp_path: Path
) -> None:
    """With a robot no job can go to, one queued job is a warning (exit 0, listed) and two
    are critical (exit 1); --json carries the same figures."""
    orch = cluster.orch
    await cluster.robot("robot-a")
    wf = notebook(tmp_path / "workflows", "wf.ipynb", ["x = 1"])
    await orch.submit(wf, tags=["nowhere"])
    code, out, err = await cli(tmp_path, "status")
    assert code == 0, (out, err)
    assert "status: WARN" in out
    assert "warn: queue depth 1 > 0" in out
    assert "robot-a" in out and "online" in out

    await orch.submit(wf, tags=["nowhere"], priority=Priority.HIGH)
    code, out, err = await cli(tmp_path, "status")
    assert code == EXIT_FAILED, (out, err)
    assert "status: CRITICAL" in out
    assert "critical: queue depth 2 > 1" in out

    code, out, err = await cli(tmp_path, "status", "--json")
    assert code == EXIT_FAILED, err
    got = json.loads(out)
    assert got["level"] == "critical"
    assert got["queue"]["depth"] == 2
    assert got["queue"]["by_priority"] == {"low": 0, "normal": 1, "high": 1, "critical": 0}
    assert got["queue"]["oldest_queued_age_s"] >= 0
    assert got["thresholds"]["queue_depth"] == {"warn": 0.0, "critical": 1.0, "strict": True}
    assert [r["robot_id"] for r in got["robots"]] == ["robot-a"]


async def test_status_cli_without_an_orchestrator_says_so_and_exits_2(tmp_path: Path) -> None:
    """No orchestrator on the state directory: one line on stderr, exit 2."""
    proc = await asyncio.to_thread(run_cli, tmp_path, "status")
    assert proc.returncode == EXIT_BAD_INPUT, describe(proc)
    assert proc.stderr.startswith(f"{ERROR_PREFIX} no orchestrator running")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == ""


@pytest.mark.slow
async def test_status_judges_failures_of_the_last_hour(cluster: Cluster, tmp_path: Path) -> None:
    """One completed and one failed job make a 50 % failure rate: critical by the runbook's
    25 %; the robot that ran them is listed with its figures, each ok."""
    orch = cluster.orch
    await cluster.robot("robot-a")
    ok = notebook(tmp_path / "workflows", "ok.ipynb", ["x = 1"])
    bad = notebook(tmp_path / "workflows", "bad.ipynb", ["raise ValueError('no')"])
    done = await cluster.finished((await orch.submit(ok)).job_id)
    failed = await cluster.finished((await orch.submit(bad)).job_id)
    assert (done.status, failed.status) == (RunStatus.COMPLETED, RunStatus.FAILED)
    st = build_status(orch)
    assert (st.failures.finished_last_hour, st.failures.failed_last_hour) == (2, 1)
    assert st.failures.failure_rate_percent == 50.0
    assert st.failures.level is Level.CRITICAL
    assert "critical: job failure rate (last hour) 50 % >= 25 %" in st.breaches
    assert st.level is Level.CRITICAL
    (robot,) = st.robots
    assert robot.robot_id == "robot-a"
    assert (robot.cpu_percent, robot.memory_percent) == (0.0, 0.0)
    assert robot.level is Level.OK and robot.heartbeats_missed == 0


async def test_status_counts_refused_authentications(service: OrchestratorService) -> None:
    """Bad tokens on HTTP and on the WebSocket count as connection failures of the last
    hour: three pass the (configured) critical level of 3."""
    async with httpx.AsyncClient(base_url=service.http_url) as http:
        for _ in range(2):
            answer = await http.get("/api/jobs", headers={"Authorization": "Bearer nope"})
            assert answer.status_code == 401
    with pytest.raises(InvalidStatus):
        async with connect(service.ws_url, additional_headers={"Authorization": "Bearer nope"}):
            pass
    st = build_status(service.orchestrator)
    assert (st.connections.refused_last_hour, st.connections.lost_last_hour) == (3, 0)
    assert st.connections.level is Level.CRITICAL
    assert "critical: connection failures (last hour) 3 >= 3" in st.breaches


async def test_status_needs_a_token_and_any_role_may_read_it(
    service: OrchestratorService,
) -> None:
    """GET /status is 401 without a token; a robot's token may read it."""
    orch = service.orchestrator
    robot_token = await asyncio.to_thread(orch.create_token, "r1", TokenRole.ROBOT)
    async with httpx.AsyncClient(base_url=service.http_url) as http:
        assert (await http.get("/status")).status_code == 401
        answer = await http.get("/status", headers={"Authorization": f"Bearer {robot_token}"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["level"] == "ok" and body["breaches"] == []
    assert body["orchestrator"]["draining"] is False


async def test_status_counts_heartbeats_missed_by_the_orchestrators_clock(
    tmp_path: Path,
) -> None:
    """A robot silent for 2.5 heartbeat intervals has missed 2 (warn at 1); once marked
    offline after its heartbeats it stays critical; a clean disconnect is not judged."""
    clock = Clock()
    (tmp_path / "workflows").mkdir()
    async with OrchestratorService(
        tmp_path / "state",
        port=0,
        http_port=0,
        workflows_dir=tmp_path / "workflows",
        write_runtime_file=False,
        heartbeat_interval_s=1.0,
        missed_heartbeats=4,
        clock=clock,
    ) as svc:
        orch = svc.orchestrator
        async with fake_robot(orch, "quiet"):
            clock.now += timedelta(seconds=2.5)
            st = build_status(orch)
            (robot,) = st.robots
            assert robot.heartbeats_missed == 2
            assert robot.heartbeat_level is Level.WARN
            assert st.level is Level.WARN
            clock.now += timedelta(seconds=3)
            await orch.wait_for(lambda: orch.robots()[0].status.value == "offline", 10)
            (robot,) = build_status(orch).robots
            assert robot.heartbeats_missed is not None and robot.heartbeats_missed >= 4
            assert robot.heartbeat_level is Level.CRITICAL
        async with fake_robot(orch, "polite"):
            pass
        await orch.wait_for(
            lambda: (
                all(r.status.value == "offline" for r in orch.robots()) and len(orch.robots()) == 2
            ),
            10,
        )
        polite = next(r for r in build_status(orch).robots if r.robot_id == "polite")
        assert polite.heartbeats_missed is None and polite.level is Level.OK


async def test_fires_cli_lists_each_due_time_and_refuses_an_unknown_schedule(
    service: OrchestratorService, tmp_path: Path
) -> None:
    """`casare-nb fires ID` shows what each due time came to, newest first (--json too); an
    unknown schedule is one line on stderr and exit 2."""
    orch = service.orchestrator
    wf = notebook(tmp_path / "workflows", "wf.ipynb", ["x = 1"])
    schedule = Schedule(
        schedule_id="nightly",
        workflow_path=str(wf),
        kind=ScheduleKind.CRON,
        cron="0 2 * * *",
        created_at=datetime.now(UTC),
    )
    triggers = orch.stores.triggers
    await asyncio.to_thread(triggers.add_schedule, schedule)
    first = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    await asyncio.to_thread(triggers.claim_fire, "nightly", first, "job-1", "submitted")
    second = first + timedelta(days=1)
    await asyncio.to_thread(triggers.claim_fire, "nightly", second, None, "skipped: draining")
    code, out, err = await cli(tmp_path, "fires", "nightly")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["DUE", "FIRED", "OUTCOME", "JOB_ID"]
    assert "2026-12-02 02:00:00" in lines[1] and "skipped: draining" in lines[1]
    assert "2026-12-01 02:00:00" in lines[2] and lines[2].rstrip().endswith("job-1")
    code, out, err = await cli(tmp_path, "fires", "nightly", "--json", "--limit", "1")
    assert code == 0, err
    (only,) = json.loads(out)
    assert only["outcome"] == "skipped: draining" and only["job_id"] is None
    code, out, err = await cli(tmp_path, "fires", "nosuch")
    assert code == EXIT_BAD_INPUT
    assert err.startswith(ERROR_PREFIX) and "nosuch" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_status_judges_by_the_thresholds_of_the_orchestrators_settings_file(
    tmp_path: Path,
) -> None:
    """`casare-nb orchestrator --config` with a tiny queue threshold, two jobs queued that no
    robot can take: `casare-nb status` exits 1 and shows the configured limit."""
    from test_cli_service import start_orchestrator

    settings = tmp_path / "orchestrator.yaml"
    settings.write_text(
        "thresholds:\n  queue_depth: {warn: 0, critical: 1, strict: true}\n", encoding="utf-8"
    )
    orch = start_orchestrator(tmp_path, "--config", str(settings))
    try:
        notebook(tmp_path / "workflows", "wf.ipynb", ["x = 1"])
        for _ in range(2):
            submitted = run_cli(tmp_path, "submit", "wf.ipynb", "--tags", "nowhere")
            assert submitted.returncode == 0, describe(submitted)
        proc = run_cli(tmp_path, "status")
        assert proc.returncode == EXIT_FAILED, describe(proc)
        assert "critical: queue depth 2 > 1" in proc.stdout
        assert "warn: 2 jobs queued and no robot online" in proc.stdout
    finally:
        orch.proc.kill()


@pytest.mark.slow
def test_status_wait_answers_once_an_orchestrator_started_in_the_background_is_up(
    tmp_path: Path,
) -> None:
    """status --wait, run as an orchestrator process starts, prints its screen once it answers."""
    from test_cli_service import Proc

    (tmp_path / "workflows").mkdir()
    orchestrator = Proc(
        tmp_path, "orchestrator", "--port", "0", "--http-port", "0", "--workflows", "workflows"
    )
    try:
        proc = run_cli(tmp_path, "status", "--wait", "60")
        assert proc.returncode == 0, describe(proc)
        assert proc.stdout.startswith("status: ") and "orchestrator" in proc.stdout
    finally:
        orchestrator.kill()


def test_status_wait_with_no_orchestrator_coming_says_so_and_exits_2(tmp_path: Path) -> None:
    """status --wait 0.3 with no orchestrator: after the wait, one line on stderr, exit 2."""
    proc = run_cli(tmp_path, "status", "--wait", "0.3")
    assert proc.returncode == EXIT_BAD_INPUT, describe(proc)
    assert proc.stderr.startswith(f"{ERROR_PREFIX} no orchestrator running"), describe(proc)
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("given", ["-1", "soon"])
def test_status_wait_refuses_what_is_not_a_number_of_seconds(given: str, tmp_path: Path) -> None:
    """status --wait with a negative or non-numeric value: a usage error, exit 2."""
    proc = run_cli(tmp_path, "status", "--wait", given)
    assert proc.returncode == EXIT_BAD_INPUT, describe(proc)
    assert "--wait" in proc.stderr


@ON_EVERY_BACKEND
async def test_status_names_the_store_and_the_active_node(cluster: Cluster) -> None:
    """The status names where the records are; on a store several orchestrators may share
    (PostgreSQL) also this orchestrator's node and the epoch that made it active, and the
    status screen shows both."""
    st = await asyncio.to_thread(build_status, cluster.orch)
    assert st.orchestrator.store == str(cluster.orch.stores.where)
    screen = status_screen(st)
    if cluster.orch.role.shared:
        assert st.orchestrator.store.startswith("postgresql://")
        assert (st.orchestrator.node_id, st.orchestrator.epoch) == (cluster.orch.role.node_id, 1)
        assert f"(node {cluster.orch.role.node_id}, active, epoch 1)" in screen
    else:
        assert st.orchestrator.store.endswith("history.duckdb")
        assert (st.orchestrator.node_id, st.orchestrator.epoch) == (None, None)
        assert f"store         {st.orchestrator.store}\n" in screen
