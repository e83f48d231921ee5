"""Tests for casare_nb.robot.agent and casare_nb.robot.backoff.

The agent talks to the fake orchestrator of ``fake_orchestrator.py`` (a real websockets
server on 127.0.0.1 port 0), here checking the bearer token. No test waits for real: the
agent's ``sleep`` is a fake that records every delay, returns at once for backoff waits and
parks heartbeat waits until the test calls ``tick()``; everything else waits on events,
bounded by ``WAIT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fake_orchestrator import HB_S, WAIT_S, FakeOrchestrator, OnRegister, accept
from websockets.frames import CloseCode

from casare_nb.protocol import (
    PROTOCOL_VERSION,
    Envelope,
    Error,
    ErrorCode,
    Heartbeat,
    JobAssign,
    JobReject,
    Pause,
    Register,
    RegisterAck,
    Shutdown,
    StatusRequest,
    StatusResponse,
    Unpause,
)
from casare_nb.robot.agent import (
    AgentError,
    RegistrationRefused,
    RobotAgent,
    Unauthorized,
    refusal_is_retryable,
)
from casare_nb.robot.backoff import Addresses, Backoff
from casare_nb.robot.config import ConfigError, RobotConfig, load_config

TOKEN = "s3cret-robot-token"
CPU, MEM = 12.5, 40.0

M = TypeVar("M", bound=Envelope)


# --------------------------------------------------------------------------- fakes


class FakeSleep:
    """The agent's sleep: records each delay; a heartbeat wait (HB_S) parks until ``tick()``,
    a backoff wait awaits ``on_backoff(n)`` (n: backoff waits so far) or returns at once.
    """

    def __init__(self, on_backoff: Callable[[int], Awaitable[None]] | None = None) -> None:
        self.delays: list[float] = []
        self.on_backoff = on_backoff
        self._beats = asyncio.Semaphore(0)

    @property
    def backoff(self) -> list[float]:
        return [d for d in self.delays if d != HB_S]

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if delay == HB_S:
            await self._beats.acquire()
        elif self.on_backoff is not None:
            await self.on_backoff(len(self.backoff))
        else:
            await asyncio.sleep(0)

    def tick(self, beats: int = 1) -> None:
        """Let the next ``beats`` heartbeat waits end."""
        for _ in range(beats):
            self._beats.release()


# --------------------------------------------------------------------------- helpers


def make_config(tmp_path: Path, url: str, **overrides: Any) -> RobotConfig:
    """A robot config with a known identity, pointed at ``url``, with the right token."""
    file = tmp_path / "robot_config.yaml"
    file.write_text("robot:\n  robot_id: robot-eu-1\n", encoding="utf-8")
    values: dict[str, Any] = {
        "robot_name": "EU worker 1",
        "environment": "production",
        "tags": ["browser", "eu"],
        "max_concurrent_jobs": 2,
        "orchestrator_url": url,
        "token": TOKEN,
        **overrides,
    }
    return load_config(file, env={}, overrides=values)


def make_agent(config: RobotConfig, sleep: FakeSleep, **kw: Any) -> RobotAgent:
    """An agent with deterministic backoff (0.5, 1, 2 ...) and fixed cpu/memory readings."""
    kw.setdefault("backoff", Backoff(rand=lambda: 0.5))
    kw.setdefault("metrics", lambda: (CPU, MEM))
    return RobotAgent(config, sleep=sleep, **kw)


@contextlib.asynccontextmanager
async def running(agent: RobotAgent) -> AsyncIterator[asyncio.Task[None]]:
    """``agent.run()`` in a task; stopped on the way out, where run()'s own error is raised."""
    task = asyncio.create_task(agent.run())
    try:
        yield task
    finally:
        agent.stop()
        await finished(task)


async def finished(task: asyncio.Task[None]) -> None:
    """Wait for ``run()`` to end (WAIT_S at most) and return or raise as it did."""
    async with asyncio.timeout(WAIT_S):
        await task


def free_port() -> int:
    """A loopback port nothing listens on (bound to port 0, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def orchestrators() -> AsyncIterator[list[FakeOrchestrator]]:
    """Fake orchestrators a test starts; every one is closed after the test."""
    started: list[FakeOrchestrator] = []
    yield started
    for orch in started:
        await orch.close()


@pytest.fixture
async def orch(orchestrators: list[FakeOrchestrator]) -> FakeOrchestrator:
    """A started fake orchestrator that accepts the robot."""
    orchestrators.append(await FakeOrchestrator(token=TOKEN).start())
    return orchestrators[-1]


def job_assign() -> JobAssign:
    return JobAssign(
        job_id="job-1",
        attempt=1,
        workflow_path="wf.ipynb",
        notebook={"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5},
    )


# --------------------------------------------------------------------------- backoff


def test_backoff_doubles_from_base_up_to_cap() -> None:
    """Without jitter effect (rand 0.5) the delays double from base_s and stay at cap_s."""
    backoff = Backoff(rand=lambda: 0.5)
    assert [backoff.next() for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.attempts == 8


def test_backoff_jitter_is_proportional_and_never_above_cap() -> None:
    """rand 0 takes jitter off each delay, rand 1 adds it, but no delay exceeds cap_s."""
    low = Backoff(base_s=1.0, cap_s=4.0, jitter=0.2, rand=lambda: 0.0)
    high = Backoff(base_s=1.0, cap_s=4.0, jitter=0.2, rand=lambda: 1.0)
    assert [low.next() for _ in range(4)] == pytest.approx([0.8, 1.6, 3.2, 3.2])
    assert [high.next() for _ in range(4)] == pytest.approx([1.2, 2.4, 4.0, 4.0])


def test_backoff_reset_starts_again_from_base() -> None:
    """reset() after a success makes the next delay base_s again."""
    backoff = Backoff(base_s=0.5, rand=lambda: 0.5)
    for _ in range(5):
        backoff.next()
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next() == 0.5


def test_backoff_many_failures_stay_at_cap() -> None:
    """Thousands of failures in a row give cap_s, not an overflow."""
    backoff = Backoff(rand=lambda: 0.5)
    delays = [backoff.next() for _ in range(5000)]
    assert delays[-1] == 30.0


@pytest.mark.parametrize(
    "kwargs",
    [{"base_s": 0}, {"factor": 0.5}, {"base_s": 2.0, "cap_s": 1.0}, {"jitter": 1.0}],
)
def test_backoff_rejects_nonsense_settings(kwargs: dict[str, Any]) -> None:
    """A zero base, a shrinking factor, a cap below base or full-size jitter is refused."""
    with pytest.raises(ValueError):
        Backoff(**kwargs)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("reason", "code", "retry"),
    [
        (
            "unsupported protocol version 1: this side speaks 2",
            ErrorCode.UNSUPPORTED_VERSION,
            False,
        ),
        ("protocol version 1 is too old", None, False),
        ("robot id robot-eu-1 is already connected", None, True),
        ("robot id robot-eu-1 is taken", ErrorCode.UNAUTHORIZED, True),
        ("token revoked", ErrorCode.UNAUTHORIZED, False),
        ("not allowed here", None, False),
        ("database busy", ErrorCode.INTERNAL, True),
    ],
)
def test_which_refusals_are_retried(reason: str, code: ErrorCode | None, retry: bool) -> None:
    """Only a taken robot id or a transient error is worth registering again; version: never."""
    assert refusal_is_retryable(reason, code) is retry


# --------------------------------------------------------------------------- agent


async def test_registers_with_configured_identity_and_bearer_token(
    tmp_path: Path, orch: FakeOrchestrator
) -> None:
    """The robot presents its token, registers with the config's identity and goes online."""
    agent = make_agent(make_config(tmp_path, orch.url), FakeSleep())
    async with running(agent):
        (register,) = await orch.wait_for(Register)
        await asyncio.wait_for(agent.connected.wait(), WAIT_S)
        assert agent.status == "online"
    assert orch.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert register.robot_id == "robot-eu-1"
    assert register.name == "EU worker 1"
    assert register.environment == "production"
    assert register.tags == ["browser", "eu"]
    assert register.max_concurrent_jobs == 2
    assert register.protocol_version == PROTOCOL_VERSION
    assert register.capabilities.kernels == ["python3"]
    assert agent.registrations == 1
    assert agent.heartbeat_interval_s == HB_S
    assert agent.status == "stopped"


async def test_heartbeats_carry_increasing_seq_and_metrics(
    tmp_path: Path, orch: FakeOrchestrator
) -> None:
    """Heartbeats go out every ack-given interval with seq 0, 1, 2 and the measured cpu/mem."""
    sleep = FakeSleep()
    agent = make_agent(make_config(tmp_path, orch.url), sleep)
    async with running(agent):
        await orch.wait_for(Heartbeat)
        sleep.tick(2)
        beats = await orch.wait_for(Heartbeat, 3)
    assert [b.seq for b in beats[:3]] == [0, 1, 2]
    assert all(b.robot_id == "robot-eu-1" and b.status == "online" for b in beats)
    assert all((b.cpu_percent, b.memory_percent) == (CPU, MEM) for b in beats)
    assert sleep.delays[:2] == [HB_S, HB_S]


async def test_no_metrics_when_resource_monitoring_is_disabled(
    tmp_path: Path, orch: FakeOrchestrator
) -> None:
    """With resource monitoring off the metrics are never read and heartbeats say 0."""

    def metrics() -> tuple[float, float]:
        raise AssertionError("metrics read although monitoring is disabled")

    config = make_config(tmp_path, orch.url, resource_monitoring_enabled=False)
    agent = make_agent(config, FakeSleep(), metrics=metrics)
    async with running(agent):
        (beat,) = await orch.wait_for(Heartbeat)
    assert (beat.cpu_percent, beat.memory_percent) == (0.0, 0.0)


async def test_wrong_token_is_fatal_after_one_attempt(
    tmp_path: Path, orch: FakeOrchestrator
) -> None:
    """HTTP 401 ends run() with an error naming the refusal; no second attempt, no backoff."""
    sleep = FakeSleep()
    agent = make_agent(make_config(tmp_path, orch.url, token="wrong"), sleep)
    with pytest.raises(Unauthorized, match=r"refused the robot's token \(HTTP 401\)") as err:
        await asyncio.wait_for(agent.run(), WAIT_S)
    assert len(orch.requests) == 1
    assert sleep.delays == []
    assert agent.status == "stopped"
    assert agent.last_error == str(err.value)
    assert "wrong" not in str(err.value)


async def test_missing_token_fails_before_connecting(
    tmp_path: Path, orch: FakeOrchestrator
) -> None:
    """Without a token run() raises a ConfigError naming the settings, and connects nowhere."""
    agent = make_agent(make_config(tmp_path, orch.url, token=None), FakeSleep())
    with pytest.raises(ConfigError, match=r"no orchestrator token.*CASARE_TOKEN"):
        await agent.run()
    assert orch.requests == []


async def test_reconnects_after_the_server_drops_the_link(
    tmp_path: Path, orch: FakeOrchestrator
) -> None:
    """A dropped link is reopened after a backoff delay; each registration resets the backoff."""
    sleep = FakeSleep()
    agent = make_agent(make_config(tmp_path, orch.url), sleep)

    def first_beats() -> int:
        return sum(b.seq == 0 for b in orch.of(Heartbeat))

    async with running(agent):
        await orch.until(lambda: first_beats() == 1)
        await orch.drop()
        await orch.until(lambda: first_beats() == 2)
        await orch.drop()
        await orch.until(lambda: first_beats() == 3)
        assert agent.registrations == 3
        assert agent.status == "online"
    assert len(orch.of(Register)) == 3
    assert sleep.backoff == [0.5, 0.5]
    assert agent.last_error is not None
    assert "closed the connection (code 1001: orchestrator restarting)" in agent.last_error


async def test_retries_with_growing_delays_until_the_server_starts(
    tmp_path: Path, orchestrators: list[FakeOrchestrator]
) -> None:
    """Connection refused is retried after 0.5, 1, 2 s; the robot registers once it listens."""
    port = free_port()

    async def start_on_third_wait(waits: int) -> None:
        if waits == 3:
            orchestrators.append(await FakeOrchestrator(token=TOKEN).start(port))

    sleep = FakeSleep(on_backoff=start_on_third_wait)
    agent = make_agent(make_config(tmp_path, f"ws://127.0.0.1:{port}"), sleep)
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), WAIT_S)
        assert agent.last_error is not None
        assert "cannot reach the orchestrator" in agent.last_error
    assert sleep.backoff == [0.5, 1.0, 2.0]
    assert agent.registrations == 1
    assert agent.backoff.attempts == 0  # reset by the registration


async def test_of_several_orchestrators_the_next_is_tried_at_once_and_backoff_once_all_failed(
    tmp_path: Path, orch: FakeOrchestrator
) -> None:
    """Given a dead address then a live one, the robot registers with the live one without a
    backoff wait; when that one drops the link it tries the dead one at once, and waits a
    backoff only once every address failed in a row."""
    dead = f"ws://127.0.0.1:{free_port()}"
    sleep = FakeSleep()
    agent = make_agent(make_config(tmp_path, f"{dead}, {orch.url}"), sleep)
    async with running(agent):
        await asyncio.wait_for(agent.connected.wait(), WAIT_S)
        assert agent.addresses.current == orch.url and sleep.backoff == []
        await orch.drop()
        await orch.until(lambda: len(orch.of(Register)) == 2)
        assert agent.addresses.current == orch.url
    assert sleep.backoff == [0.5]  # after the drop: the dead one at once, then one wait
    assert agent.config.connection.orchestrator_urls() == [dead, orch.url]


async def test_status_request_gets_status_response(tmp_path: Path, orch: FakeOrchestrator) -> None:
    """status_request is answered with the robot's state, reply_to naming the request."""
    agent = make_agent(make_config(tmp_path, orch.url), FakeSleep())
    async with running(agent):
        await orch.wait_for(Heartbeat)
        request = StatusRequest()
        await orch.send(request)
        (response,) = await orch.wait_for(StatusResponse)
    assert response.reply_to == request.id
    assert response.robot_id == "robot-eu-1"
    assert (response.status, response.paused, response.running_jobs) == ("online", False, [])


async def test_pause_is_reported_and_resume_clears_it(
    tmp_path: Path, orch: FakeOrchestrator
) -> None:
    """A paused robot says draining in its next heartbeat, rejects jobs; resume undoes it."""
    sleep = FakeSleep()
    agent = make_agent(make_config(tmp_path, orch.url), sleep)
    async with running(agent):
        await orch.wait_for(Heartbeat)
        await orch.send(Pause(reason="maintenance"))
        assign = job_assign()
        await orch.send(assign)
        await orch.send(StatusRequest())
        (paused,) = await orch.wait_for(StatusResponse)
        assert agent.status == "paused"
        sleep.tick()
        beats = await orch.wait_for(Heartbeat, 2)
        await orch.send(Unpause())
        await orch.send(StatusRequest())
        resumed = (await orch.wait_for(StatusResponse, 2))[1]
        assert agent.status == "online"
        sleep.tick()
        beats = await orch.wait_for(Heartbeat, 3)
    (reject,) = orch.of(JobReject)
    assert (reject.reply_to, reject.reason) == (assign.id, "robot is paused")
    assert (paused.status, paused.paused) == ("draining", True)
    assert (resumed.status, resumed.paused) == ("online", False)
    assert [b.status for b in beats[:3]] == ["online", "draining", "online"]


async def test_job_assign_is_rejected_until_jobs_can_run(
    tmp_path: Path, orch: FakeOrchestrator
) -> None:
    """The default job runner rejects every job_assign, so the orchestrator can requeue it."""
    agent = make_agent(make_config(tmp_path, orch.url), FakeSleep())
    async with running(agent):
        await orch.wait_for(Heartbeat)
        assign = job_assign()
        await orch.send(assign)
        (reject,) = await orch.wait_for(JobReject)
    assert (reject.job_id, reject.attempt, reject.reply_to) == ("job-1", 1, assign.id)
    assert reject.reason == "this robot does not run jobs yet"


async def test_shutdown_ends_run(tmp_path: Path, orch: FakeOrchestrator) -> None:
    """shutdown makes run() return, closing the link normally, with no reconnect."""
    agent = make_agent(make_config(tmp_path, orch.url), FakeSleep())
    async with running(agent) as task:
        await orch.wait_for(Heartbeat)
        await orch.send(Shutdown(reason="maintenance window"))
        await finished(task)
        await orch.until(lambda: len(orch.close_codes) == 1)
    assert agent.status == "stopped"
    assert agent.shutdown_reason == "maintenance window"
    assert orch.close_codes == [CloseCode.NORMAL_CLOSURE]
    assert len(orch.requests) == 1


async def test_stop_ends_run_while_online(tmp_path: Path, orch: FakeOrchestrator) -> None:
    """stop() from another task ends run() at once; the link closes with 1001 going away."""
    agent = make_agent(make_config(tmp_path, orch.url), FakeSleep())
    task = asyncio.create_task(agent.run())
    await orch.wait_for(Heartbeat)
    agent.stop()
    await finished(task)
    await orch.until(lambda: len(orch.close_codes) == 1)
    assert orch.close_codes == [CloseCode.GOING_AWAY]
    assert agent.status == "stopped"
    assert not agent.connected.is_set()


async def test_stop_ends_run_during_a_backoff_wait(tmp_path: Path) -> None:
    """stop() interrupts a backoff wait, however long it was going to be."""
    waiting = asyncio.Event()

    async def wait_forever(waits: int) -> None:
        waiting.set()
        await asyncio.Event().wait()

    sleep = FakeSleep(on_backoff=wait_forever)
    agent = make_agent(make_config(tmp_path, f"ws://127.0.0.1:{free_port()}"), sleep)
    task = asyncio.create_task(agent.run())
    await asyncio.wait_for(waiting.wait(), WAIT_S)
    assert agent.status == "connecting"
    agent.stop()
    await finished(task)
    assert sleep.backoff == [0.5]
    assert agent.status == "stopped"


def refuse_version_with_error(register: Register, attempt: int) -> list[Envelope]:
    message = "unsupported protocol version 1: this side speaks 2"
    return [Error(code=ErrorCode.UNSUPPORTED_VERSION, message=message, fatal=True)]


def refuse_version_with_ack(register: Register, attempt: int) -> list[Envelope]:
    reason = "unsupported protocol version 1"
    return [RegisterAck(accepted=False, reason=reason, reply_to=register.id)]


@pytest.mark.parametrize("refuse", [refuse_version_with_error, refuse_version_with_ack])
async def test_version_refusal_is_fatal(
    tmp_path: Path, orchestrators: list[FakeOrchestrator], refuse: OnRegister
) -> None:
    """A protocol version refusal (error or register_ack) ends run() with it; no retry."""
    orchestrators.append(orch := await FakeOrchestrator(token=TOKEN, on_register=refuse).start())
    sleep = FakeSleep()
    agent = make_agent(make_config(tmp_path, orch.url), sleep)
    with pytest.raises(RegistrationRefused, match="refused to register robot robot-eu-1: unsup"):
        await asyncio.wait_for(agent.run(), WAIT_S)
    assert len(orch.requests) == 1
    assert sleep.delays == []
    assert agent.registrations == 0
    assert agent.status == "stopped"


async def test_taken_robot_id_is_retried(
    tmp_path: Path, orchestrators: list[FakeOrchestrator]
) -> None:
    """'robot id already connected' is retried after a backoff delay, then registers."""

    def taken_once(register: Register, attempt: int) -> list[Envelope]:
        if attempt == 1:
            reason = "robot id robot-eu-1 is already connected"
            return [RegisterAck(accepted=False, reason=reason, reply_to=register.id)]
        return accept(register, attempt)

    orchestrators.append(
        orch := await FakeOrchestrator(token=TOKEN, on_register=taken_once).start()
    )
    sleep = FakeSleep()
    agent = make_agent(make_config(tmp_path, orch.url), sleep)
    async with running(agent):
        await orch.wait_for(Heartbeat)
        assert agent.registrations == 1
    assert len(orch.of(Register)) == 2
    assert sleep.backoff == [0.5]


async def test_silent_orchestrator_means_a_dead_link(
    tmp_path: Path, orchestrators: list[FakeOrchestrator]
) -> None:
    """No heartbeat_ack for 3 intervals: the robot drops the link and registers again."""
    orchestrators.append(orch := await FakeOrchestrator(token=TOKEN, ack_heartbeats=False).start())
    now = [1000.0]
    sleep = FakeSleep()
    agent = make_agent(make_config(tmp_path, orch.url), sleep, clock=lambda: now[0])
    async with running(agent):
        await orch.wait_for(Heartbeat)
        now[0] += 3 * HB_S + 1
        sleep.tick()
        await orch.until(lambda: sum(b.seq == 0 for b in orch.of(Heartbeat)) == 2)
        await orch.until(lambda: len(orch.close_codes) == 1)
        assert agent.registrations == 2
    assert agent.last_error == "no heartbeat_ack from the orchestrator for 22 s"
    assert orch.close_codes[0] == CloseCode.GOING_AWAY


async def test_invalid_message_is_answered_and_the_link_kept(
    tmp_path: Path, orch: FakeOrchestrator
) -> None:
    """A frame the robot cannot read gets an invalid_message error; the link stays up."""
    agent = make_agent(make_config(tmp_path, orch.url), FakeSleep())
    async with running(agent):
        await orch.wait_for(Heartbeat)
        await orch.send('{"type": "no_such_message"}')
        (error,) = await orch.wait_for(Error)
        await orch.send(StatusRequest())
        await orch.wait_for(StatusResponse)
        assert agent.registrations == 1
    assert error.code is ErrorCode.INVALID_MESSAGE
    assert not error.fatal


async def test_fatal_unauthorized_error_stops_the_robot(
    tmp_path: Path, orch: FakeOrchestrator
) -> None:
    """A fatal unauthorized error while online (token revoked) ends run() with it."""
    agent = make_agent(make_config(tmp_path, orch.url), FakeSleep())
    task = asyncio.create_task(agent.run())
    await orch.wait_for(Heartbeat)
    await orch.send(Error(code=ErrorCode.UNAUTHORIZED, message="token revoked", fatal=True))
    with pytest.raises(AgentError, match="reported unauthorized: token revoked"):
        await finished(task)
    assert len(orch.requests) == 1


async def test_fatal_internal_error_reconnects(tmp_path: Path, orch: FakeOrchestrator) -> None:
    """A fatal error that is not about the token or version drops the link, then reconnects."""
    sleep = FakeSleep()
    agent = make_agent(make_config(tmp_path, orch.url), sleep)
    async with running(agent):
        await orch.wait_for(Heartbeat)
        await orch.send(Error(code=ErrorCode.INTERNAL, message="store failed", fatal=True))
        await orch.until(lambda: sum(b.seq == 0 for b in orch.of(Heartbeat)) == 2)
    assert agent.registrations == 2
    assert sleep.backoff == [0.5]


def test_default_backoff_is_capped_by_the_config(tmp_path: Path) -> None:
    """Without an injected Backoff the reconnect delays stop at reconnect_max_backoff_s."""
    config = make_config(tmp_path, "ws://127.0.0.1:8765", reconnect_max_backoff_s=5)
    assert RobotAgent(config).backoff.cap_s == 5


def test_addresses_go_round_and_ask_for_a_backoff_once_all_failed_in_a_row() -> None:
    """Of three addresses, failures move to the next at once and ask for a backoff at every
    third failure in a row; a registration starts the count again; one address always waits."""
    three = Addresses(["ws://a", "ws://b", "ws://c"])
    assert [three.failed() for _ in range(4)] == [False, False, True, False]
    assert three.current == "ws://b"
    three.registered()
    assert [three.failed(), three.failed(), three.failed()] == [False, False, True]
    one = Addresses(["ws://a"])
    assert [one.failed(), one.failed()] == [True, True] and one.current == "ws://a"
