"""Randomised fault trials with real processes (``casare-nb orchestrator`` and ``casare-nb
robot``), shared by tests/test_fault_injection.py (small counts, in ``make test``) and
bench/fault_injection.py (large counts): robots and the orchestrator SIGKILLed at random
points, poison jobs, garbage on the WebSocket, the HTTP API and the webhooks.

After each trial :meth:`Fleet.check` holds the invariant: every acknowledged job ends in
exactly one terminal state, each (job, attempt, cell) is recorded once, no process is
wedged (a normal job completes, SIGTERM exits 0), the queue moves."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nbformat
from helpers import KILL_ROBOT_CODE
from nbformat.v4 import new_code_cell, new_notebook

from casare_nb import Client
from casare_nb.core.models import RunStatus

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
START_S = 60.0
TERMINAL = {s for s in RunStatus if s.finished}


def workflow(path: Path, cells: list[str], params: str | None = None) -> Path:
    nb = new_notebook()
    if params is not None:
        nb.cells.append(new_code_cell(params, id="params", metadata={"tags": ["parameters"]}))
    for i, source in enumerate(cells):
        nb.cells.append(new_code_cell(source, id=f"c{i}"))
    nb.metadata["kernelspec"] = KERNELSPEC
    nbformat.write(nb, str(path))
    return path


STEPS = workflow  # alias for readers of the bench


@dataclass
class Process:
    """A ``casare-nb`` subprocess, its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(30)

    def term(self, timeout: float = 90.0) -> int:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@dataclass
class Fleet:
    """An orchestrator process on ``base/state`` serving ``base/workflows``, and robots."""

    base: Path
    seed: int = 0
    orchestrator: Process | None = None
    robots: dict[str, Process] = field(default_factory=dict)
    acknowledged: list[str] = field(default_factory=list)
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        (self.base / "workflows").mkdir(parents=True, exist_ok=True)
        workflow(
            self.base / "workflows" / "steps.ipynb",
            [
                "import time\ntime.sleep(pause)",
                "data = list(range(1000))\ntime.sleep(pause)",
                "total = sum(data)\ntime.sleep(pause)",
                "assert total == 499500",
            ],
            params="pause: float = 0.05",
        )
        workflow(self.base / "workflows" / "ok.ipynb", ["x = 1"])
        workflow(
            self.base / "workflows" / "poison.ipynb",
            [KILL_ROBOT_CODE],
        )

    # -- processes ---------------------------------------------------------------------

    def _spawn(self, name: str, *args: str) -> Process:
        log = self.base / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASARE_")}
        env["CASARE_HOME"] = str(self.base / "state")
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "casare_nb.cli", *args],
                cwd=self.base,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return Process(name, popen, log)

    def start_orchestrator(self) -> None:
        runtime = self.base / "state" / "orchestrator.json"
        runtime.unlink(missing_ok=True)
        self.orchestrator = self._spawn(
            "orchestrator",
            "orchestrator",
            "--port",
            "0",
            "--http-port",
            "0",
            "--workflows",
            "workflows",
            "--drain-timeout",
            "5",
            "--log-level",
            "warning",
        )
        deadline = time.monotonic() + START_S
        while not runtime.exists():
            assert self.orchestrator.alive(), self.orchestrator.tail()
            assert time.monotonic() < deadline, self.orchestrator.tail()
            time.sleep(0.05)  # a process starting: no event to wait on

    @property
    def info(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.base / "state" / "orchestrator.json").read_text())
        return data

    def client(self) -> Client:
        return Client.local(self.base / "state")

    def start_robot(self, robot_id: str) -> None:
        token = self.base / f"{robot_id}.token"
        if not token.exists():
            with self.client() as client:
                token.write_text(
                    client.create_token(f"{robot_id}-{self.rng.randrange(1 << 30)}", "robot")
                )
            token.chmod(0o600)
        self.robots[robot_id] = self._spawn(
            robot_id,
            "robot",
            "--orchestrator",
            self.info["ws_url"],
            "--token-file",
            str(token),
            "--robot-id",
            robot_id,
            "--pool-size",
            "1",
            "--log-level",
            "warning",
        )

    def wait_online(self, robot_ids: list[str], timeout: float = START_S) -> None:
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                online = {r.robot_id for r in client.robots() if r.status.value != "offline"}
                if set(robot_ids) <= online:
                    return
                assert time.monotonic() < deadline, f"robots {robot_ids} not online"
                time.sleep(0.1)  # polling another process: no event shared

    # -- faults ----------------------------------------------------------------------------

    def kill_robot(self, robot_id: str) -> None:
        self.robots[robot_id].kill()

    def kill_orchestrator(self) -> None:
        assert self.orchestrator is not None
        self.orchestrator.kill()

    # -- work ------------------------------------------------------------------------------

    def submit(self, workflow_name: str = "steps.ipynb", **body: Any) -> str | None:
        """POST /api/jobs (``body``: more fields); the job id once acknowledged (201), else
        None (not acknowledged: refused, or the orchestrator gone)."""
        try:
            info = self.info
            answer = httpx.post(
                f"{info['http_url']}/api/jobs",
                json={"workflow": workflow_name, **body},
                headers={"Authorization": f"Bearer {info['token']}"},
                timeout=30,
            )
        except (httpx.HTTPError, OSError, ValueError):
            return None
        if answer.status_code != 201:
            return None
        job_id: str = answer.json()["job_id"]
        self.acknowledged.append(job_id)
        return job_id

    def wait_terminal(self, timeout: float) -> dict[str, RunStatus]:
        """Every acknowledged job's terminal status (AssertionError naming the stuck ones)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.client() as client:
                statuses = {j: client.get(j).status for j in self.acknowledged}
            stuck = [j for j, s in statuses.items() if s not in TERMINAL]
            if not stuck:
                return statuses
            assert time.monotonic() < deadline, f"lost: not terminal: {stuck} {statuses}"
            time.sleep(0.2)  # polling another process: no event shared

    def duplicates(self) -> list[str]:
        """(job, attempt, cell) recorded more than once, if any."""
        found = []
        with self.client() as client:
            for job_id in self.acknowledged:
                seen = Counter((c.attempt, c.cell_index) for c in client.cells(job_id))
                found += [f"{job_id}:{a}:{i}" for (a, i), n in seen.items() if n > 1]
        return found

    def check(self, timeout: float = 180.0) -> dict[str, RunStatus]:
        """The invariant after a trial (see the module); answers the jobs' end states."""
        statuses = self.wait_terminal(timeout)
        twice = self.duplicates()
        assert twice == [], f"duplicated: recorded twice: {twice}"
        with self.client() as client:
            final = client.submit("ok.ipynb", wait=True, timeout=120)
        assert final.status is RunStatus.COMPLETED, "wedged: the queue does not move"
        return statuses

    def stop(self) -> int:
        """SIGTERM everything; the orchestrator's exit code (0: not wedged)."""
        code = 0
        for robot in self.robots.values():
            if robot.alive():
                robot.term(30)
        if self.orchestrator is not None and self.orchestrator.alive():
            code = self.orchestrator.term(60)
        return code


@contextmanager
def fleet(base: Path, seed: int, robots: int = 2) -> Iterator[Fleet]:
    """A started fleet, killed at the end whatever happened."""
    found = Fleet(base, seed)
    try:
        found.start_orchestrator()
        for i in range(robots):
            found.start_robot(f"r{i}")
        found.wait_online([f"r{i}" for i in range(robots)])
        yield found
    finally:
        for process in [*found.robots.values(), found.orchestrator]:
            if process is not None and process.alive():
                process.kill()


def robot_kill_trial(f: Fleet, jobs: int, kills: int) -> dict[str, RunStatus]:
    """Submit ``jobs``; SIGKILL a random robot at ``kills`` random points, restarting it."""
    for _ in range(jobs):
        pause = round(f.rng.uniform(0.05, 0.3), 3)
        assert f.submit(parameters={"pause": pause}) is not None
    for _ in range(kills):
        time.sleep(f.rng.uniform(0.2, 1.5))  # a random point in the run: the fault's timing
        victim = f.rng.choice(sorted(f.robots))
        f.kill_robot(victim)
        f.start_robot(victim)
    return f.check()


def orchestrator_kill_trial(f: Fleet, jobs: int) -> dict[str, RunStatus]:
    """Submit ``jobs`` while SIGKILLing the orchestrator at a random point, then restart it
    (and the robots, which reconnect): every acknowledged job is known and ends."""
    for i in range(jobs):
        f.submit(parameters={"pause": 0.05})
        if i == jobs // 2:
            time.sleep(f.rng.uniform(0.0, 0.5))  # the fault's timing
            f.kill_orchestrator()
    f.start_orchestrator()
    for robot_id in list(f.robots):
        f.kill_robot(robot_id)
        f.start_robot(robot_id)
    f.wait_online(sorted(f.robots))
    return f.check()


def poison_trial(f: Fleet, poisons: int) -> dict[str, RunStatus]:
    """Poison jobs (their cell kills the robot) next to normal ones: each poison job is dead
    within its bound, the normal ones complete. Robots are restarted as a supervisor would."""
    poisoned = [f.submit("poison.ipynb", max_robot_losses=1) for _ in range(poisons)]
    normal = [f.submit(parameters={"pause": 0.05}) for _ in range(poisons)]
    deadline = time.monotonic() + 60.0 * poisons
    with f.client() as client:
        while any(client.get(j).status not in TERMINAL for j in [*poisoned, *normal] if j):
            for robot_id, robot in f.robots.items():
                if not robot.alive():
                    f.start_robot(robot_id)
            assert time.monotonic() < deadline, "poison jobs not bounded"
            time.sleep(0.2)  # supervising other processes
    statuses = f.check()
    assert {statuses[j] for j in poisoned if j} <= {RunStatus.DEAD}
    assert {statuses[j] for j in normal if j} == {RunStatus.COMPLETED}
    return statuses


def ws_garbage(f: Fleet, frames: list[str | bytes]) -> Counter[str]:
    """Send each frame on a robot-authenticated WebSocket (reconnecting when the server
    closes it); what came back, by kind (an error frame, a close)."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    info = f.info
    with f.client() as client:
        token = client.create_token(f"fuzz-{f.rng.randrange(1 << 30)}", "robot")
    seen: Counter[str] = Counter()
    headers = {"Authorization": f"Bearer {token}"}
    pending = list(frames)
    while pending:
        with connect(info["ws_url"], additional_headers=headers, open_timeout=30) as ws:
            while pending:
                frame = pending.pop(0)
                try:
                    ws.send(frame)
                    try:
                        answer = json.loads(ws.recv(timeout=2))
                        seen[str(answer.get("type"))] += 1
                    except TimeoutError:
                        seen["no answer"] += 1
                except ConnectionClosed:
                    seen["closed"] += 1
                    break  # connect again for the next frames
    return seen


def http_garbage(f: Fleet, bodies: list[bytes]) -> Counter[int]:
    """POST each body to the API's write routes and a webhook; the status codes (never 5xx
    is the invariant)."""
    info = f.info
    headers = {"Authorization": f"Bearer {info['token']}", "Content-Type": "application/json"}
    codes: Counter[int] = Counter()
    with httpx.Client(base_url=info["http_url"], timeout=30) as http:
        for body in bodies:
            for route in ("/api/jobs", "/api/schedules", "/api/triggers", "/hooks/hook-x"):
                codes[http.post(route, content=body, headers=headers).status_code] += 1
    return codes
