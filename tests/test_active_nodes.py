"""Two orchestrators on one PostgreSQL database, both active (tests/postgres.py's server, a
database each test): a job submitted on one runs on a robot of the other, each job is
dispatched once, cancels and re-runs work from either, a robot moving over takes its
running job along, and a job with secrets stays with the node that holds them.

Both orchestrators run in this process (their own stores, connections and listeners); the
robots are real agents with warm kernels. Every wait is on an orchestrator's state.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import psycopg
import pytest
from cluster import Bot, Cluster, notebook
from helpers import write_notebook
from postgres import throwaway_server
from websockets.asyncio.client import ClientConnection, connect

from casare_nb.core.dispatch import RetryPolicy
from casare_nb.core.errors import QueueError
from casare_nb.core.models import CellStatus, Robot, RobotStatus, RunStatus
from casare_nb.core.tokens import TokenRole
from casare_nb.notebook.pool import KernelPool
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.protocol import (
    CellEvent,
    Event,
    EventKind,
    RobotEvent,
    RobotSnapshot,
    Subscribe,
    Topic,
    decode,
    encode,
)
from casare_nb.robot.agent import AgentError, RobotAgent
from casare_nb.robot.config import load_config
from casare_nb.robot.runner import EngineRunner
from casare_nb.store.postgres import open_postgres


def node(root: Path, url: str, name: str) -> Orchestrator:
    return Orchestrator(
        root / "state",
        stores=open_postgres(url, root / "state"),
        node_id=name,
        port=0,
        heartbeat_interval_s=0.2,
        missed_heartbeats=10,
        retry_policy=RetryPolicy(base_s=0.05, jitter=0),
        reconnect_grace_s=2.0,
    )


@pytest.fixture
async def pair(tmp_path: Path, pg_url: str) -> AsyncIterator[tuple[Cluster, Cluster]]:
    """Nodes a and b, both serving, on one database and one state directory."""
    a = Cluster(tmp_path, node(tmp_path, pg_url, "a"))
    b = Cluster(tmp_path, node(tmp_path, pg_url, "b"))
    await a.orch.start()
    try:
        await b.orch.start()
        for c in (a, b):
            shared = c.orch.stores.shared
            assert shared is not None
            await asyncio.to_thread(shared.listening.wait, 10)  # type: ignore[attr-defined]
        yield a, b
    finally:
        try:
            await b.close()
        finally:
            await a.close()


def owners(url: str) -> dict[str, str]:
    with psycopg.connect(url) as con:
        return dict(con.execute("SELECT job_id, owner FROM jobs").fetchall())


async def test_a_job_submitted_on_one_node_runs_on_the_others_robot(
    pair: tuple[Cluster, Cluster], tmp_path: Path, pg_url: str
) -> None:
    """A job submitted on a, whose only robot is on b, runs there; a sees it finish."""
    a, b = pair
    nb = notebook(tmp_path, "one.ipynb", ["x = 1"])
    await b.robot("rb")
    job = await a.orch.submit(nb)
    done = await a.finished(job.job_id)  # a hears of b's change
    assert (done.status, done.robot_id, done.attempt) == (RunStatus.COMPLETED, "rb", 1)
    assert owners(pg_url)[job.job_id] == "b"
    assert a.orch.job_manager.book.live.get(job.job_id) is None


async def test_jobs_submitted_to_both_nodes_each_run_once(
    pair: tuple[Cluster, Cluster], tmp_path: Path, pg_url: str
) -> None:
    """40 jobs submitted alternately to a and b, a robot on each: every job completes as
    its first attempt, each cell recorded once, and both nodes dispatched some."""
    a, b = pair
    nb = notebook(tmp_path, "two.ipynb", ["x = 1", "y = x + 1"])
    await a.robot("ra", capacity=2, pool_size=2)
    await b.robot("rb", capacity=2, pool_size=2)
    jobs = [await (a if i % 2 else b).orch.submit(nb) for i in range(40)]
    done = [await (b if i % 2 else a).finished(j.job_id) for i, j in enumerate(jobs)]
    assert {(d.status, d.attempt) for d in done} == {(RunStatus.COMPLETED, 1)}
    with psycopg.connect(pg_url) as con:
        await asyncio.to_thread(a.orch.job_manager.flush_history, 30)
        await asyncio.to_thread(b.orch.job_manager.flush_history, 30)
        cells = con.execute("SELECT run_id, attempt, cell_index FROM cells").fetchall()
    counts = Counter(cells)
    assert len(counts) == 80 and set(counts.values()) == {1}
    assert set(Counter(d.robot_id for d in done)) == {"ra", "rb"}


async def test_cancel_from_either_node(pair: tuple[Cluster, Cluster], tmp_path: Path) -> None:
    """A job running on b's robot is cancelled from a (its robot stops it); a job queued on
    both nodes is cancelled from b and leaves a's queue too."""
    a, b = pair
    cell = "import pathlib, time\npathlib.Path('started').touch()\ntime.sleep(60)"
    slow = notebook(tmp_path, "slow.ipynb", [cell])
    bot = await b.robot("rb")
    running = await a.orch.submit(slow)
    await b.until(lambda: (bot.runner.work_dir / "started").exists())
    asked = await asyncio.to_thread(a.orch.cancel, running.job_id)
    assert asked.status is RunStatus.RUNNING  # asked of its owner
    assert (await a.finished(running.job_id)).status is RunStatus.CANCELLED
    queued = await a.orch.submit(slow, tags=["nowhere"])
    await b.until(lambda: b.orch.job_manager.book.live.get(queued.job_id) is not None)
    assert (await asyncio.to_thread(b.orch.cancel, queued.job_id)).status is RunStatus.CANCELLED
    await a.until(lambda: a.orch.job_manager.book.live.get(queued.job_id) is None)
    assert a.job(queued.job_id).status is RunStatus.CANCELLED


async def test_a_job_failed_on_one_node_is_rerun_from_the_other(
    pair: tuple[Cluster, Cluster], tmp_path: Path
) -> None:
    """A job that failed on a's robot is re-run from b, from its failed cell: attempt 2
    completes (on b's robot) without running the cell before again; re-run from both nodes
    at once, one is refused and the other runs."""
    a, b = pair
    flag = tmp_path / "fixed"
    log = tmp_path / "ran.log"
    nb = write_notebook(
        tmp_path / "fails.ipynb",
        [
            f"open({str(log)!r}, 'a').write('first\\n')",
            f"import os\nassert os.path.exists({str(flag)!r})",
        ],
    )
    await a.robot("ra")
    job = await a.orch.submit(nb)
    assert (await a.finished(job.job_id)).status is RunStatus.FAILED
    flag.touch()
    await b.robot("rb")
    await a.stop_bot(a.bots[0])
    again = await b.orch.rerun(job.job_id)
    assert again.status is RunStatus.QUEUED
    done = await b.finished(job.job_id)
    assert (done.status, done.attempt, done.robot_id) == (RunStatus.COMPLETED, 2, "rb")
    assert log.read_text().splitlines() == ["first"]  # resumed at the failed cell
    await asyncio.to_thread(b.orch.job_manager.flush_history, 30)  # both read it finished
    with pytest.raises(QueueError, match=r"on another orchestrator|only a finished job re-runs"):
        await _rerun_twice(a, b, job.job_id)
    assert (await a.finished(job.job_id)).attempt == 3  # the one re-run that was taken


async def _rerun_twice(a: Cluster, b: Cluster, job_id: str) -> None:
    """Re-run a finished job from both nodes at once: one of them is refused."""
    results = await asyncio.gather(
        a.orch.rerun(job_id, from_failed=False),
        b.orch.rerun(job_id, from_failed=False),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1, results
    raise errors[0]


async def moving_robot(c: Cluster, urls: str, robot_id: str, token: str | None = None) -> Bot:
    """A robot given both nodes' addresses (it connects to the first that answers)."""
    if token is None:
        token = await asyncio.to_thread(c.orch.create_token, robot_id, TokenRole.ROBOT)
    config = load_config(
        None,
        env={},
        overrides={"robot_id": robot_id, "orchestrator_url": urls, "token": token},
    )
    work = c.root / robot_id
    work.mkdir(parents=True, exist_ok=True)
    pool = await KernelPool(size=1, cwd=work).start()
    runner = EngineRunner(pool, work, max_concurrent_jobs=1)
    agent = RobotAgent(config, runner=runner, metrics=lambda: (0.0, 0.0))
    bot = Bot(agent, runner, pool, asyncio.create_task(agent.run()))
    c.bots.append(bot)
    await c.orch.wait_for(lambda: c.online(robot_id), timeout=10)
    return bot


async def test_a_robot_moving_to_the_other_node_takes_its_running_job_along(
    pair: tuple[Cluster, Cluster], tmp_path: Path, pg_url: str
) -> None:
    """A robot running a job on a moves to b when a stops: the job goes on there as the
    same attempt, completes once, and b owns it."""
    a, b = pair
    go = tmp_path / "go"
    cell = (
        "import os, time\nopen('started', 'w').close()\n"
        f"while not os.path.exists({str(go)!r}): time.sleep(0.05)"
    )
    nb = notebook(tmp_path, "moving.ipynb", [cell, "done = 1"])
    bot = await moving_robot(a, f"{a.orch.url},{b.orch.url}", "rm")
    job = await a.orch.submit(nb)
    await a.until(lambda: (bot.runner.work_dir / "started").exists())
    a.bots.remove(bot)
    b.bots.append(bot)
    await a.orch.stop()
    await b.until(lambda: b.online("rm"))
    go.touch()
    done = await b.finished(job.job_id)
    assert (done.status, done.attempt, done.robot_id) == (RunStatus.COMPLETED, 1, "rm")
    assert owners(pg_url)[job.job_id] == "b"


async def test_a_job_with_secrets_stays_with_the_node_that_holds_them(
    pair: tuple[Cluster, Cluster], tmp_path: Path
) -> None:
    """A job with a secret parameter submitted on a is not queued on b (b's robot never
    gets it); a robot on a runs it with the secret."""
    a, b = pair
    nb = notebook(
        tmp_path,
        "secret.ipynb",
        ["assert token == 's3cr3t'"],
        params="from casare_nb import Secret\ntoken: Secret[str] = ''",
    )
    plain = notebook(tmp_path, "plain.ipynb", ["x = 1"])
    await b.robot("rb")
    job = await a.orch.submit(nb, {"token": "s3cr3t"})
    marker = await a.orch.submit(plain)  # announced after the secret one
    await b.finished(marker.job_id)
    assert b.orch.job_manager.book.live.get(job.job_id) is None
    assert a.job(job.job_id).status is RunStatus.QUEUED
    await a.robot("ra")
    done = await a.finished(job.job_id)
    assert (done.status, done.robot_id) == (RunStatus.COMPLETED, "ra")


async def test_a_token_revoked_on_one_node_is_refused_by_the_other(
    pair: tuple[Cluster, Cluster],
) -> None:
    """A robot token created on a, used on b, revoked on a: b closes the robot's connection
    and no longer accepts the token."""
    a, b = pair
    token = await asyncio.to_thread(a.orch.create_token, "rv", TokenRole.ROBOT)
    bot = await moving_robot(b, b.orch.url, "rv", token)
    assert b.orch.stores.tokens.verify_token(token) is not None  # remembered by b now
    await asyncio.to_thread(a.orch.revoke_token, "rv")
    await b.until(lambda: not b.online("rv"))
    assert b.orch.stores.tokens.verify_token(token) is None
    b.bots.remove(bot)
    with pytest.raises(AgentError, match="token rv was revoked"):
        await asyncio.wait_for(bot.task, 10)
    await bot.pool.close()


async def test_a_node_forgets_the_marks_of_the_states_it_wrote(
    pair: tuple[Cluster, Cluster], tmp_path: Path
) -> None:
    """The marks a node keeps of its staged job states are pruned once written: 20 jobs
    submitted (each committed) with pruning from 8 marks leave fewer than 20."""
    a, _ = pair
    sharing = a.orch.job_manager.sharing
    assert sharing is not None
    sharing._prune_at = 8
    nb = notebook(tmp_path, "queued.ipynb", ["x = 1"])
    for _ in range(20):
        await a.orch.submit(nb, tags=["nowhere"])
    assert len(sharing.marks) < 20


async def test_announcements_missed_while_the_server_restarts_are_caught_up(
    tmp_path: Path,
) -> None:
    """PostgreSQL restarted under two nodes (every listening connection dropped): a job
    submitted on a as soon as the server is back, whose only robot is on b, runs there, and
    a sees it finish (each listener reads every unfinished row when it reconnects)."""
    with throwaway_server() as server:
        url = server.new_database()
        a = Cluster(tmp_path, node(tmp_path, url, "a"))
        b = Cluster(tmp_path, node(tmp_path, url, "b"))
        await a.orch.start()
        try:
            await b.orch.start()
            nb = notebook(tmp_path, "after.ipynb", ["x = 1"])
            await b.robot("rb")
            await asyncio.to_thread(server.restart)
            job = await a.orch.submit(nb)
            done = await a.finished(job.job_id)
            assert (done.status, done.robot_id) == (RunStatus.COMPLETED, "rb")
        finally:
            try:
                await b.close()
            finally:
                await a.close()


# -- the robots and cells of the other node, for this one's monitors ---------------------


@contextlib.asynccontextmanager
async def monitor(orch: Orchestrator, name: str) -> AsyncIterator[Watcher]:
    """A monitor connected to ``orch`` over WebSocket, subscribed to robots and cells."""
    token = await asyncio.to_thread(orch.create_token, name, TokenRole.USER)
    async with connect(orch.url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        await ws.send(encode(Subscribe(topics=frozenset({Topic.ROBOTS, Topic.CELLS}))))
        snapshot = decode(await asyncio.wait_for(ws.recv(), 30))
        assert isinstance(snapshot, Event) and isinstance(snapshot.data, RobotSnapshot)
        yield Watcher(ws, snapshot.data)


class Watcher:
    """The events a monitor received, read as they come."""

    def __init__(self, ws: ClientConnection, snapshot: RobotSnapshot) -> None:
        self.ws = ws
        self.snapshot = snapshot
        self.seen: list[Event] = []

    async def until(self, predicate: Callable[[Event], bool]) -> Event:
        """The first event (from now) that ``predicate`` accepts."""
        async with asyncio.timeout(30):
            while True:
                event = decode(await self.ws.recv())
                assert isinstance(event, Event)
                self.seen.append(event)
                if predicate(event):
                    return event


def robot_event(kind: EventKind, robot_id: str) -> Callable[[Event], bool]:
    return lambda e: (
        e.kind is kind and isinstance(e.data, RobotEvent) and e.data.robot.robot_id == robot_id
    )


def listed(orch: Orchestrator, robot_id: str) -> Robot | None:
    return next((r for r in orch.robots_everywhere() if r.robot_id == robot_id), None)


async def test_a_monitor_of_one_node_hears_the_robots_and_cells_of_the_other(
    pair: tuple[Cluster, Cluster], tmp_path: Path
) -> None:
    """A monitor of a hears b's robot come, run each cell of a job and go; a lists the
    robot (node b) while it is connected to b, and no longer once it left."""
    a, b = pair
    nb = notebook(tmp_path, "cells.ipynb", ["x = 1", "y = x + 1", "z = y + 1"])
    async with monitor(a.orch, "watch-a") as watch:
        bot = await b.robot("rb")
        came = await watch.until(robot_event(EventKind.ROBOT_ONLINE, "rb"))
        assert isinstance(came.data, RobotEvent) and came.data.robot.node == "b"
        robot = listed(a.orch, "rb")
        assert robot is not None and (robot.node, robot.status) == ("b", RobotStatus.ONLINE)
        job = await a.orch.submit(nb)
        cells: list[CellEvent] = []
        while len(cells) < 3:
            event = await watch.until(lambda e: e.kind is EventKind.CELL_FINISHED)
            assert isinstance(event.data, CellEvent) and event.data.job_id == job.job_id
            cells.append(event.data)
        assert len({c.cell_index for c in cells}) == 3
        assert {c.status for c in cells} == {CellStatus.OK}
        await b.stop_bot(bot)
        went = await watch.until(robot_event(EventKind.ROBOT_OFFLINE, "rb"))
        assert isinstance(went.data, RobotEvent) and went.data.robot.node == "b"
        assert listed(a.orch, "rb") is None
    assert a.orch.robots() == []  # a dispatches to its own robots only
    assert a.orch.metrics.cells.collect()[0].samples == []  # b's cells count on b only


async def test_a_node_started_later_lists_the_robots_connected_to_the_other(
    tmp_path: Path, pg_url: str
) -> None:
    """b's robot connected before a started: a lists it (node b) at once, a monitor of
    either node gets it in its snapshot (node b), and a robot of a left over from a's last
    run is offline."""
    stores = open_postgres(pg_url, tmp_path / "state")
    await asyncio.to_thread(stores.open)  # the schema
    await asyncio.to_thread(stores.close)
    with psycopg.connect(pg_url, autocommit=True) as con:  # what a's last run left
        con.execute(
            "INSERT INTO node_robots (robot_id, node, data, noted_at) VALUES (%s, 'a', %s, now())",
            ["stale", RobotEvent(robot=Robot(robot_id="stale", name="stale")).model_dump_json()],
        )
    b = Cluster(tmp_path, node(tmp_path, pg_url, "b"))
    await b.orch.start()
    a: Cluster | None = None
    try:
        await b.robot("rb")
        await b.until(lambda: ("rb", "b") in rows_of(pg_url))
        a = Cluster(tmp_path, node(tmp_path, pg_url, "a"))
        await a.orch.start()
        await a.until(lambda: listed(a.orch, "rb") is not None)  # type: ignore[union-attr]
        robot = listed(a.orch, "rb")
        assert robot is not None and robot.node == "b"
        for orch in (a.orch, b.orch):  # the same list from either, b's own robot too
            async with monitor(orch, f"watch-{orch.role.node_id}") as watch:
                assert [(r.robot_id, r.node) for r in watch.snapshot.robots] == [("rb", "b")]
        await b.until(lambda: rows_of(pg_url) == [("rb", "b")])
    finally:
        if a is not None:
            await a.close()
        await b.close()


def rows_of(url: str) -> list[tuple[str, str]]:
    with psycopg.connect(url) as con:
        return con.execute("SELECT robot_id, node FROM node_robots ORDER BY 1").fetchall()


async def test_the_robots_of_a_dead_node_go_offline_on_the_others(
    pair: tuple[Cluster, Cluster], pg_url: str
) -> None:
    """b stops hearing (its liveness lock goes, as when it dies) with a robot connected:
    the leader a adopts b and its monitor hears the robot go offline, orchestrator_lost."""
    a, b = pair
    await a.until(lambda: a.orch.role.epoch is not None)  # a started first: it leads
    async with monitor(a.orch, "watch-a") as watch:
        await b.robot("rb")
        await watch.until(robot_event(EventKind.ROBOT_ONLINE, "rb"))
        shared = b.orch.stores.shared
        assert shared is not None
        await asyncio.to_thread(shared.close)  # the listener and its lock, not the robot
        went = await watch.until(robot_event(EventKind.ROBOT_OFFLINE, "rb"))
        assert isinstance(went.data, RobotEvent) and went.data.reason == "orchestrator_lost"
        assert listed(a.orch, "rb") is None
        assert rows_of(pg_url) == []


async def test_a_robot_that_left_a_node_for_the_other_is_shown_where_it_is(
    pair: tuple[Cluster, Cluster],
) -> None:
    """Robot rm on a, then on b too (its reconnection there), then gone from a: a's monitor
    hears it go offline and then online on b, and a lists it on b, online."""
    a, b = pair
    token = await asyncio.to_thread(a.orch.create_token, "rm", TokenRole.ROBOT)
    async with monitor(a.orch, "watch-a") as watch:
        first = await moving_robot(a, a.orch.url, "rm", token)
        await watch.until(robot_event(EventKind.ROBOT_ONLINE, "rm"))
        await moving_robot(b, b.orch.url, "rm", token)
        a.bots.remove(first)
        await a.stop_bot(first)
        await first.pool.close()
        await watch.until(robot_event(EventKind.ROBOT_OFFLINE, "rm"))
        back = await watch.until(robot_event(EventKind.ROBOT_ONLINE, "rm"))
        assert isinstance(back.data, RobotEvent) and back.data.robot.node == "b"
    robot = listed(a.orch, "rm")
    assert robot is not None and (robot.node, robot.status) == ("b", RobotStatus.ONLINE)
