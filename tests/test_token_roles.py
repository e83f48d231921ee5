"""Token roles against a real orchestrator (127.0.0.1 port 0, real DuckDB tokens, httpx and
WebSocket connections, ``casare-nb`` subprocesses): a robot token only registers robots, a
user submits, reads and cancels its own jobs, an admin does the rest; refusals are 403 with
one line; tokens from before roles act as admin, named once at start."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cluster import fake_robot
from helpers import ERROR_PREFIX, EXIT_BAD_INPUT, EXIT_OK, describe, run_cli, write_notebook
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from casare_nb.core.tokens import TokenRole
from casare_nb.orchestrator.service import OrchestratorService
from casare_nb.protocol import (
    Error,
    ErrorCode,
    Register,
    RegisterAck,
    Subscribe,
    Topic,
    decode,
    encode,
)
from casare_nb.robot.agent import RegistrationRefused, RobotAgent
from casare_nb.robot.config import load_config
from casare_nb.store import database, schema
from casare_nb.store.database import Database

TIMEOUT = 10.0


@dataclass
class Stack:
    """An orchestrator service in this event loop and a token per role."""

    service: OrchestratorService
    tokens: dict[str, str]

    async def make(self, name: str, role: TokenRole) -> str:
        orch = self.service.orchestrator
        token = await asyncio.to_thread(orch.create_token, name, role)
        self.tokens[name] = token
        return token

    def http(self, name: str) -> httpx.AsyncClient:
        """An HTTP client that presents the token ``name``."""
        headers = {"Authorization": f"Bearer {self.tokens[name]}"}
        return httpx.AsyncClient(base_url=self.service.http_url, headers=headers, timeout=TIMEOUT)


async def started(state: Path, workflows: Path) -> OrchestratorService:
    service = OrchestratorService(
        state, port=0, http_port=0, workflows_dir=workflows, write_runtime_file=False
    )
    await service.start()
    return service


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    write_notebook(workflows / "add.ipynb", ["y = n + 1"], params="n: int = 1")
    service = await started(tmp_path / "state", workflows)
    try:
        stack = Stack(service, {})
        await stack.make("robot-1", TokenRole.ROBOT)
        await stack.make("alice", TokenRole.USER)
        await stack.make("bob", TokenRole.USER)
        await stack.make("ops", TokenRole.ADMIN)
        yield stack
    finally:
        await service.stop()


def refusal(response: httpx.Response) -> str:
    """The one-line detail of a 403."""
    assert response.status_code == 403, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail, detail
    return str(detail)


async def submit(http: httpx.AsyncClient) -> httpx.Response:
    return await http.post("/api/jobs", json={"workflow": "add.ipynb"})


# ------------------------------------------------------------------------------ HTTP


async def test_a_robot_token_cannot_submit_or_read(stack: Stack) -> None:
    """A robot token is refused the HTTP API (403, one line naming its role): no submit,
    no job list; nothing is queued."""
    async with stack.http("robot-1") as robot:
        assert refusal(await submit(robot)) == (
            "token 'robot-1' has role robot; POST /api/jobs needs user"
        )
        assert "has role robot" in refusal(await robot.get("/api/jobs"))
    assert stack.service.orchestrator.jobs() == []


async def test_a_user_submits_reads_and_cancels_its_own_jobs_only(stack: Stack) -> None:
    """A user's job records who submitted it; the user may read every job and cancel its
    own, not another user's (403); an admin may cancel anyone's."""
    async with stack.http("alice") as alice, stack.http("bob") as bob, stack.http("ops") as ops:
        first = await submit(alice)
        assert first.status_code == 201, first.text
        job_id = first.json()["job_id"]
        assert first.json()["submitted_by"] == "alice"
        second = (await submit(alice)).json()["job_id"]
        listed = await bob.get("/api/jobs")
        assert {j["job_id"]: j["submitted_by"] for j in listed.json()} == {
            job_id: "alice",
            second: "alice",
        }
        assert refusal(await bob.post(f"/api/jobs/{job_id}/cancel")) == (
            f"token 'bob' has role user; cancelling job {job_id}, submitted by token 'alice',"
            " needs admin"
        )
        assert "re-running job" in refusal(await bob.post(f"/api/jobs/{job_id}/rerun"))
        assert (await alice.get(f"/api/jobs/{job_id}")).json()["status"] == "queued"
        own = await alice.post(f"/api/jobs/{job_id}/cancel")
        assert own.status_code == 200 and own.json()["status"] == "cancelled", own.text
        anyones = await ops.post(f"/api/jobs/{second}/cancel")
        assert anyones.status_code == 200 and anyones.json()["status"] == "cancelled"


async def test_a_user_token_cannot_manage_tokens_drain_or_pause(stack: Stack) -> None:
    """A user token gets 403 (one line) for tokens, draining a robot, pausing submissions
    and draining the orchestrator; an admin token may drain and undrain the robot, and
    create and revoke tokens."""
    orch = stack.service.orchestrator
    async with (
        fake_robot(orch, "robot-9"),
        stack.http("alice") as alice,
        stack.http("ops") as ops,
    ):
        assert refusal(await alice.delete("/api/tokens/bob")) == (
            "token 'alice' has role user; revoking a token needs admin"
        )
        assert "creating a token needs admin" in refusal(
            await alice.post("/api/tokens", json={"name": "mine"})
        )
        assert "listing tokens needs admin" in refusal(await alice.get("/api/tokens"))
        assert refusal(await alice.post("/api/robots/robot-9/pause")) == (
            "token 'alice' has role user; draining a robot needs admin"
        )
        assert "pausing submissions needs admin" in refusal(
            await alice.post("/api/submissions/pause")
        )
        assert "draining the orchestrator needs admin" in refusal(
            await alice.post("/api/drain", json={"timeout_s": 0})
        )
        assert orch.robot("robot-9") is not None and not orch.draining
        assert not orch.submissions_paused
        drained = await ops.post("/api/robots/robot-9/pause")
        assert drained.status_code == 200 and drained.json()["status"] == "draining"
        undrained = await ops.post("/api/robots/robot-9/unpause")
        assert undrained.status_code == 200 and undrained.json()["status"] == "online"
        made = await ops.post("/api/tokens", json={"name": "carol", "role": "admin"})
        assert made.status_code == 201 and made.json()["role"] == "admin"
        roles = {t["name"]: t["role"] for t in (await ops.get("/api/tokens")).json()}
        assert roles["carol"] == "admin" and roles["robot-1"] == "robot"
        assert (await ops.delete("/api/tokens/bob")).status_code == 204


async def test_schedule_changes_need_admin_and_reading_them_needs_user(stack: Stack) -> None:
    """Adding a schedule is refused to a user (403) and allowed to an admin; a user may
    list them; a robot may not."""
    body = {"workflow": "add.ipynb", "every": "1h"}
    async with stack.http("alice") as alice, stack.http("ops") as ops:
        assert "POST /api/schedules needs admin" in refusal(
            await alice.post("/api/schedules", json=body)
        )
        added = await ops.post("/api/schedules", json=body)
        assert added.status_code == 201, added.text
        schedule_id = added.json()["schedule"]["schedule_id"]
        assert "needs admin" in refusal(await alice.post(f"/api/schedules/{schedule_id}/pause"))
        listed = await alice.get("/api/schedules")
        assert [s["schedule"]["schedule_id"] for s in listed.json()] == [schedule_id]
    async with stack.http("robot-1") as robot:
        assert "has role robot" in refusal(await robot.get("/api/schedules"))


# ------------------------------------------------------------------------------ WebSocket


async def first_answer(url: str, token: str, first: Register | Subscribe) -> tuple[Error, int]:
    """Send ``first`` on a new connection; the error it got and the close code."""
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(url, additional_headers=headers, open_timeout=TIMEOUT) as ws:
        await ws.send(encode(first))
        answer = decode(await asyncio.wait_for(ws.recv(), TIMEOUT))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code is not None
        assert isinstance(answer, Error), answer
        return answer, ws.close_code


async def test_only_robot_tokens_register_and_only_user_tokens_subscribe(stack: Stack) -> None:
    """A user or admin token that registers as a robot, and a robot token that subscribes,
    get a fatal unauthorized error (one line) and close 1008; no robot is listed."""
    orch = stack.service.orchestrator
    for name in ("alice", "ops"):
        error, code = await first_answer(
            orch.url, stack.tokens[name], Register(robot_id="r", name="r")
        )
        assert (error.code, error.fatal, code) == (ErrorCode.UNAUTHORIZED, True, 1008)
        role = "user" if name == "alice" else "admin"
        assert error.message == (
            f"token '{name}' has role {role}; registering as a robot needs robot"
        )
    error, code = await first_answer(
        orch.url, stack.tokens["robot-1"], Subscribe(topics=frozenset({Topic.JOBS}))
    )
    assert (error.code, code) == (ErrorCode.UNAUTHORIZED, 1008)
    assert error.message == "token 'robot-1' has role robot; subscribing to events needs user"
    assert orch.robots() == [] and orch.monitors() == 0
    headers = {"Authorization": f"Bearer {stack.tokens['robot-1']}"}
    async with connect(orch.url, additional_headers=headers, open_timeout=TIMEOUT) as ws:
        await ws.send(encode(Register(robot_id="robot-1", name="robot-1")))
        ack = decode(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert isinstance(ack, RegisterAck) and ack.accepted
    monitor = {"Authorization": f"Bearer {stack.tokens['alice']}"}
    async with connect(orch.url, additional_headers=monitor, open_timeout=TIMEOUT) as ws:
        await ws.send(encode(Subscribe(topics=frozenset({Topic.ROBOTS}))))
        assert decode(await asyncio.wait_for(ws.recv(), TIMEOUT)).type == "event"


async def test_a_robot_agent_with_a_user_token_stops_with_the_reason(stack: Stack) -> None:
    """A robot given a user token is refused for good (not retried), saying why."""
    config = load_config(
        None,
        env={},
        overrides={
            "robot_id": "robot-u",
            "orchestrator_url": stack.service.orchestrator.url,
            "token": stack.tokens["alice"],
        },
    )
    agent = RobotAgent(config, metrics=lambda: (1.0, 1.0))
    with pytest.raises(RegistrationRefused) as refused:
        await asyncio.wait_for(agent.run(), TIMEOUT)
    assert "token 'alice' has role user; registering as a robot needs robot" in str(refused.value)
    assert agent.registrations == 0


# ------------------------------------------------------------------------------ old tokens


async def test_a_token_from_before_roles_acts_as_admin_with_a_notice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A token stored before roles existed keeps working: the orchestrator names it once at
    start, it may revoke tokens and drain (as admin) and still register a robot."""
    state = tmp_path / "state"
    state.mkdir()
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    old = "an-old-token-from-before-roles-0123456789abcdef"
    with monkeypatch.context() as patch:  # the file as the version before roles left it
        patch.setattr(schema, "MIGRATIONS", [m for m in schema.MIGRATIONS if m[0] < 8])
        patch.setattr(database, "_MIGRATED", set())
        with Database(state / "history.duckdb").connect() as con:
            con.execute(
                "INSERT INTO tokens (token_hash, name, created_at) VALUES (?, ?, ?)",
                [hashlib.sha256(old.encode()).hexdigest(), "old-ops", datetime.now(UTC)],
            )
    monkeypatch.setattr(database, "_MIGRATED", set())
    caplog.set_level(logging.WARNING, logger="casare_nb.orchestrator")
    service = await started(state, workflows)
    try:
        notices = [r.getMessage() for r in caplog.records if "has no role" in r.getMessage()]
        assert notices == ["token old-ops has no role; it acts as admin: recreate it with --role"]
        orch = service.orchestrator
        await asyncio.to_thread(orch.create_token, "someone", TokenRole.USER)
        headers = {"Authorization": f"Bearer {old}"}
        async with httpx.AsyncClient(base_url=service.http_url, headers=headers) as http:
            listed = (await http.get("/api/tokens")).json()
            assert {t["name"]: t["role"] for t in listed}["old-ops"] is None
            assert (await http.post("/api/submissions/pause")).status_code == 200
            assert (await http.delete("/api/tokens/someone")).status_code == 204
        async with connect(orch.url, additional_headers=headers, open_timeout=TIMEOUT) as ws:
            await ws.send(encode(Register(robot_id="old-robot", name="old-robot")))
            ack = decode(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert isinstance(ack, RegisterAck) and ack.accepted
    finally:
        await service.stop()


# ------------------------------------------------------------------------------ the CLI


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused command (exit 2)."""
    assert proc.returncode == EXIT_BAD_INPUT, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), describe(proc)
    return lines[0]


def test_token_create_takes_a_role_and_list_shows_it(tmp_path: Path) -> None:
    """token create --role robot|admin stores the role (user without one), token list shows
    it; --role bogus is one line, exit 2, and creates nothing."""
    for name, args in (("r1", ["--role", "robot"]), ("u1", []), ("a1", ["--role", "admin"])):
        made = run_cli(tmp_path, "token", "create", name, *args)
        assert made.returncode == EXIT_OK, describe(made)
    bogus = error_line(run_cli(tmp_path, "token", "create", "b1", "--role", "bogus"))
    assert "'bogus' is not one of 'robot', 'user', 'admin'" in bogus
    listed = run_cli(tmp_path, "token", "list", "--json")
    assert listed.returncode == EXIT_OK, describe(listed)
    assert {t["name"]: t["role"] for t in json.loads(listed.stdout)} == {
        "r1": "robot",
        "u1": "user",
        "a1": "admin",
    }
    table = run_cli(tmp_path, "token", "list").stdout.splitlines()
    assert table[0].split() == ["NAME", "ROLE", "CREATED", "REVOKED"]
    rows = [line.split()[:2] for line in table[1:]]
    assert rows == [["r1", "robot"], ["u1", "user"], ["a1", "admin"]]


async def test_the_cli_prints_a_refusal_in_one_line_and_jobs_shows_the_submitter(
    stack: Stack,
) -> None:
    """casare-nb with a user token: drain and token revoke print the 403's one line and exit
    2; submit works and casare-nb jobs shows who submitted."""
    url, base = stack.service.http_url, stack.service.state_dir.parent
    user = ["--url", url, "--token", stack.tokens["alice"]]
    drained = await asyncio.to_thread(run_cli, base, "drain", "--timeout", "0", *user)
    assert error_line(drained) == (
        f"{ERROR_PREFIX} token 'alice' has role user; draining the orchestrator needs admin"
    )
    revoked = await asyncio.to_thread(run_cli, base, "token", "revoke", "bob", *user)
    assert error_line(revoked).endswith("token 'alice' has role user; revoking a token needs admin")
    submitted = await asyncio.to_thread(run_cli, base, "submit", "add.ipynb", *user)
    assert submitted.returncode == EXIT_OK, describe(submitted)
    shown = await asyncio.to_thread(run_cli, base, "jobs", *user)
    assert shown.returncode == EXIT_OK, describe(shown)
    header, row = shown.stdout.splitlines()[:2]
    assert "BY" in header.split() and "alice" in row.split()
    assert not stack.service.orchestrator.draining
