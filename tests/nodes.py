"""Orchestrator and robot processes on a shared PostgreSQL store, and the two scenarios of
an orchestrator's death (the one the robots are on, the leader), for the tests of several
orchestrators (test_orchestrator_nodes.py) and benchmark 18 (bench/scale_out.py).

All of them run in one folder (``base``): one state directory ``base/state`` (the shared
checkpoint files and runtime file), one ``base/workflows``, and ``base/orchestrator.yaml``
setting ``reconnect_grace_s`` to 1 s (a lost robot's jobs wait 1 s for it, not 5).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from helpers import write_notebook
from jupyter_harness import free_port
from test_cli_service import Proc

from casare_nb import Client
from casare_nb.api import FireInfo
from casare_nb.core.models import Job
from casare_nb.protocol import EventKind

__all__ = [
    "Failover",
    "due_time_across_a_kill",
    "expect_all",
    "kill_the_active_one",
    "node_pair",
    "orchestrator_node",
    "robot_process",
]

WAIT_S = 60.0  # the longest any one wait here may take


def orchestrator_node(base: Path, store: str, node: str, ports: tuple[int, int]) -> Proc:
    """``casare-nb orchestrator --store STORE --node-id NODE`` on ``ports`` (WebSocket, HTTP)."""
    (base / "workflows").mkdir(exist_ok=True)
    (base / "orchestrator.yaml").write_text("reconnect_grace_s: 1.0\n")
    return Proc(
        base,
        "orchestrator",
        "--store",
        store,
        "--node-id",
        node,
        "--port",
        str(ports[0]),
        "--http-port",
        str(ports[1]),
        "--workflows",
        "workflows",
        "--log-level",
        "warning",
    )


def robot_process(base: Path, urls: str, token: str, robot_id: str, slots: int = 1) -> Proc:
    """``casare-nb robot`` given the orchestrators ``urls`` (comma-separated)."""
    return Proc(
        base,
        "robot",
        "--orchestrator",
        urls,
        "--token",
        token,
        "--robot-id",
        robot_id,
        "--max-jobs",
        str(slots),
        "--work-dir",
        str(base / robot_id),
        "--log-level",
        "warning",
    )


LEADS = "leader (epoch"
"""What a node prints when it starts leading (and writes the runtime file)."""


def expect_all(proc: Proc, *needles: str) -> None:
    """Wait until ``proc`` printed a line with each of ``needles``, in any order."""
    left = set(needles)
    while left:
        line = proc.expect("")
        left = {needle for needle in left if needle not in line}


def node_pair(base: Path, store: str) -> tuple[Proc, Proc, str]:
    """Orchestrators ``a`` (serving and leading: the runtime file names it) and ``b``
    (serving too) on ``store``, and the robots' address list of both."""
    ports = {name: (free_port(), free_port()) for name in ("a", "b")}
    a = orchestrator_node(base, store, "a", ports["a"])
    try:
        expect_all(a, LEADS, "orchestrator ready")  # in either order
        b = orchestrator_node(base, store, "b", ports["b"])
    except BaseException:
        a.kill()
        raise
    try:
        b.expect("orchestrator ready")
    except BaseException:
        a.kill()
        b.kill()
        raise
    return a, b, ",".join(f"ws://127.0.0.1:{ws}" for ws, _ in ports.values())


def _online(client: Client, robot_ids: set[str]) -> bool:
    return robot_ids <= {r.robot_id for r in client.robots() if r.status != "offline"}


@dataclass
class Failover:
    """What :func:`kill_the_active_one` saw."""

    job_ids: list[str]
    finished: list[Job]
    serving_s: float
    """SIGKILL of a -> b leads (it wrote the runtime file; it served all along)."""
    back_s: float
    """SIGKILL -> every robot registered with b."""
    robots_alive: bool
    """Every robot process still ran once the jobs were done."""


def kill_the_active_one(
    base: Path,
    store: str,
    *,
    jobs: int,
    robots: int,
    slots: int,
    running: int,
    handover: bool = False,
) -> Failover:
    """Orchestrators a (leading; the robots' first address) and b on ``store``; ``robots``
    robot processes of ``slots`` given both addresses; ``jobs`` jobs of 4 cells of 0.3 s;
    SIGKILL of a (or SIGTERM: ``handover``, a then exits 0 saying so) once ``running`` of
    them run; then b leads, the robots come back to it, every job is waited for, and b stops
    cleanly (what it staged is written). Every process is killed after."""
    (base / "workflows").mkdir(parents=True, exist_ok=True)
    write_notebook(
        base / "workflows" / "steps.ipynb",
        [f"import time; time.sleep(0.3); step = {i}" for i in range(4)],
    )
    a, b, urls = node_pair(base, store)
    procs = [a, b]
    names = {f"r{i + 1}" for i in range(robots)}
    try:
        with Client.local(base / "state") as client:
            tokens = {r: client.create_token(r, "robot") for r in sorted(names)}
            with client.subscribe(("jobs", "robots")) as events:
                procs += [robot_process(base, urls, tokens[r], r, slots) for r in sorted(names)]
                while not _online(client, names):
                    events.receive(timeout=WAIT_S)
                ids = [client.submit("steps.ipynb").job_id for _ in range(jobs)]
                started: set[str] = set()
                while len(started) < running:
                    event = events.receive(timeout=WAIT_S)
                    job = getattr(event.data, "job", None)
                    if event.kind is EventKind.JOB_STARTED and job is not None:
                        started.add(job.job_id)
        if handover:
            a.popen.terminate()
        else:
            a.kill()
        killed = time.monotonic()
        b.expect(LEADS, timeout=WAIT_S)
        serving_s = time.monotonic() - killed
        if handover and (a.wait(WAIT_S) != 0 or not any("handing over" in x for x in a.out)):
            raise AssertionError(a.describe())
        with Client.local(base / "state") as client:
            with client.subscribe(("robots",)) as events:
                while not _online(client, names):
                    events.receive(timeout=WAIT_S)
            back_s = time.monotonic() - killed
            finished = [client.wait(job_id, timeout=5 * WAIT_S) for job_id in ids]
        alive = all(p.popen.poll() is None for p in procs[2:])
        b.popen.terminate()
        if b.wait(2 * WAIT_S) != 0:
            raise AssertionError(b.describe())
    finally:
        for proc in reversed(procs):
            proc.kill()
    return Failover(ids, finished, serving_s, back_s, alive)


def due_time_across_a_kill(base: Path, store: str) -> tuple[FireInfo, Job, datetime]:
    """A schedule due 3 s after it is made on orchestrator a (the leader), a SIGKILLed at
    once; b leads; its fire, the fire's job once finished, and the due time."""
    (base / "workflows").mkdir(parents=True, exist_ok=True)
    write_notebook(base / "workflows" / "tick.ipynb", ["x = 1"])
    a, b, urls = node_pair(base, store)
    procs = [a, b]
    try:
        with Client.local(base / "state") as client:
            token = client.create_token("r1", "robot")
            due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
            schedule = client.add_schedule("tick.ipynb", at=due.replace(tzinfo=None)).schedule
        procs.append(robot_process(base, urls, token, "r1"))
        a.kill()
        b.expect(LEADS, timeout=WAIT_S)
        with Client.local(base / "state") as client, client.subscribe(("jobs",)) as events:
            while not (fires := client.fires(schedule.schedule_id)) or fires[0].job_id is None:
                events.receive(timeout=WAIT_S)
            if len(fires) != 1 or fires[0].job_id is None:
                raise AssertionError(f"fires of one due time: {fires}")
            done = client.wait(fires[0].job_id, timeout=2 * WAIT_S)
        b.popen.terminate()
        if b.wait(2 * WAIT_S) != 0:
            raise AssertionError(b.describe())
    finally:
        for proc in reversed(procs):
            proc.kill()
    return fires[0], done, due
