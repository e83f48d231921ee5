"""The orchestrator's WebSocket server (real server on 127.0.0.1 port 0, real clients, real
DuckDB file) and its pure robot registry (injected times)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from stores import opened
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from casare_nb.core.models import RobotStatus
from casare_nb.core.tokens import TokenRole
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.orchestrator.registry import (
    STALE_HEARTBEATS,
    NotRegistered,
    RobotIdTaken,
    RobotRegistry,
)
from casare_nb.protocol import (
    PROTOCOL_VERSION,
    Envelope,
    Error,
    ErrorCode,
    Event,
    EventKind,
    Heartbeat,
    HeartbeatAck,
    JobRef,
    Message,
    Register,
    RegisterAck,
    Subscribe,
    Topic,
    Unsubscribe,
    decode,
    encode,
)

TIMEOUT = 5.0
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
M = TypeVar("M", bound=Envelope)

MakeOrchestrator = Callable[..., Awaitable[Orchestrator]]


# --------------------------------------------------------------------------- helpers


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def connected(orch: Orchestrator, token: str) -> AsyncIterator[ClientConnection]:
    async with connect(
        orch.url, additional_headers=bearer(token), open_timeout=TIMEOUT, close_timeout=TIMEOUT
    ) as ws:
        yield ws


async def send(ws: ClientConnection, msg: Envelope) -> None:
    await ws.send(encode(msg))


async def receive(ws: ClientConnection) -> Message:
    async with asyncio.timeout(TIMEOUT):
        return decode(await ws.recv())


async def expect(ws: ClientConnection, cls: type[M]) -> M:
    msg = await receive(ws)
    assert isinstance(msg, cls), msg
    return msg


async def closed_with(ws: ClientConnection) -> tuple[int | None, list[Message]]:
    """Read until the server closes: (close code, messages received before)."""
    messages: list[Message] = []
    async with asyncio.timeout(TIMEOUT):
        with contextlib.suppress(ConnectionClosed):
            while True:
                messages.append(decode(await ws.recv()))
    return ws.close_code, messages


def register_msg(robot_id: str = "robot-1", **fields: Any) -> Register:
    fields.setdefault("name", f"{robot_id} host")
    return Register(robot_id=robot_id, **fields)


async def register(ws: ClientConnection, robot_id: str = "robot-1", **fields: Any) -> RegisterAck:
    msg = register_msg(robot_id, **fields)
    await send(ws, msg)
    ack = await expect(ws, RegisterAck)
    assert ack.reply_to == msg.id
    return ack


def heartbeat(robot_id: str = "robot-1", seq: int = 0, **fields: Any) -> Heartbeat:
    return Heartbeat(robot_id=robot_id, status=fields.pop("status", "online"), seq=seq, **fields)


async def subscribe(ws: ClientConnection, *topics: Topic) -> Event:
    """Subscribe; the robots snapshot that answers it."""
    msg = Subscribe(topics=frozenset(topics or {Topic.ROBOTS}))
    await send(ws, msg)
    snapshot = await expect(ws, Event)
    assert snapshot.reply_to == msg.id and snapshot.data.snapshot is True
    return snapshot


def status(orch: Orchestrator, robot_id: str = "robot-1") -> RobotStatus | None:
    robot = orch.robot(robot_id)
    return None if robot is None else robot.status


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
async def make_orchestrator(tmp_path: Path) -> AsyncIterator[MakeOrchestrator]:
    started: list[Orchestrator] = []

    async def make(**options: Any) -> Orchestrator:
        orch = Orchestrator(tmp_path / f"state-{len(started)}", port=0, **options)
        started.append(orch)
        await orch.start()
        return orch

    yield make
    for orch in started:
        await orch.stop()


@pytest.fixture
async def orch(make_orchestrator: MakeOrchestrator) -> Orchestrator:
    return await make_orchestrator()


@pytest.fixture
async def token(orch: Orchestrator) -> str:
    """A robot's token."""
    return await asyncio.to_thread(orch.create_token, "robot-token", TokenRole.ROBOT)


@pytest.fixture
async def monitor_token(orch: Orchestrator) -> str:
    """A user's token (monitors subscribe with it)."""
    return await asyncio.to_thread(orch.create_token, "dashboard", TokenRole.USER)


# --------------------------------------------------------------------------- authentication


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing 'Authorization: Bearer <token>' header"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "malformed Authorization header"),
        ({"Authorization": "Bearer"}, "malformed Authorization header"),
        ({"Authorization": "Bearer not-the-token"}, "invalid or revoked token"),
    ],
    ids=["missing", "not-bearer", "empty", "wrong"],
)
async def test_connection_without_a_valid_token_gets_401_before_the_upgrade(
    orch: Orchestrator, token: str, headers: dict[str, str], reason: str
) -> None:
    """A missing, malformed or wrong token is refused with HTTP 401 and a one-line reason."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(orch.url, additional_headers=headers, open_timeout=TIMEOUT):
            pass
    response = info.value.response
    assert response.status_code == 401
    assert response.body is not None
    body = response.body.decode()
    assert body.startswith(reason) and body.count("\n") == 1
    assert orch.robots() == []


async def test_revoked_token_gets_401(orch: Orchestrator, token: str) -> None:
    """A token that was revoked no longer opens a connection."""
    await asyncio.to_thread(orch.revoke_token, "robot-token")
    with pytest.raises(InvalidStatus) as info:
        async with connected(orch, token):
            pass
    assert info.value.response.status_code == 401
    assert orch.robots() == []


async def test_revoking_a_token_closes_its_live_connections(orch: Orchestrator, token: str) -> None:
    """Revoking a token closes the robots connected with it (1008) and marks them offline."""
    monitor_token = await asyncio.to_thread(orch.create_token, "dashboard")
    async with connected(orch, token) as robot, connected(orch, monitor_token) as monitor:
        await subscribe(monitor)
        await register(robot)
        await asyncio.to_thread(orch.revoke_token, "robot-token")
        code, messages = await closed_with(robot)
        assert code == 1008
        assert [type(m) for m in messages] == [Error]
        assert isinstance(messages[0], Error) and messages[0].code is ErrorCode.UNAUTHORIZED
        await expect(monitor, Event)  # robot_online
        offline = await expect(monitor, Event)
        assert offline.kind is EventKind.ROBOT_OFFLINE
    assert status(orch) is RobotStatus.OFFLINE


# --------------------------------------------------------------------------- robots


async def test_register_is_acknowledged_and_the_robot_is_listed_online(
    orch: Orchestrator, token: str
) -> None:
    """register gets an accepting register_ack with the heartbeat interval; the robot is online."""
    async with connected(orch, token) as ws:
        ack = await register(ws, environment="prod", tags=["gpu", "sap"], max_concurrent_jobs=3)
        assert ack.accepted and ack.reason is None
        assert ack.heartbeat_interval_s == orch.heartbeat_interval_s
        assert ack.protocol_version == PROTOCOL_VERSION
        [robot] = orch.robots()
    assert robot.robot_id == "robot-1" and robot.name == "robot-1 host"
    assert robot.status is RobotStatus.ONLINE
    assert (robot.environment, robot.tags, robot.max_concurrent_jobs) == ("prod", ["gpu", "sap"], 3)
    assert robot.last_heartbeat is not None


async def test_heartbeat_is_acknowledged_and_its_load_stored(
    orch: Orchestrator, token: str
) -> None:
    """heartbeat gets heartbeat_ack with its seq; status, running jobs, cpu and memory are kept."""
    async with connected(orch, token) as ws:
        await register(ws)
        hb = heartbeat(
            seq=7,
            status="busy",
            running_jobs=[JobRef(job_id="job-1", attempt=1)],
            cpu_percent=12.5,
            memory_percent=40.0,
        )
        await send(ws, hb)
        ack = await expect(ws, HeartbeatAck)
        assert (ack.seq, ack.reply_to) == (7, hb.id)
        robot = orch.robot("robot-1")
    assert robot is not None
    assert (robot.status, robot.running_jobs) == (RobotStatus.BUSY, 1)
    assert (robot.cpu_percent, robot.memory_percent) == (12.5, 40.0)


async def test_replayed_heartbeat_is_acknowledged_and_changes_nothing(
    orch: Orchestrator, token: str
) -> None:
    """A heartbeat repeating an earlier seq is acked again but its data is ignored."""
    async with connected(orch, token) as ws:
        await register(ws)
        first = heartbeat(seq=1, cpu_percent=10.0)
        for msg in (first, first, heartbeat(seq=1, cpu_percent=99.0)):
            await send(ws, msg)
            assert (await expect(ws, HeartbeatAck)).seq == 1
        robot = orch.robot("robot-1")
        assert robot is not None and robot.cpu_percent == 10.0
        await send(ws, heartbeat(seq=2, cpu_percent=50.0))
        assert (await expect(ws, HeartbeatAck)).seq == 2
        robot = orch.robot("robot-1")
        assert robot is not None and robot.cpu_percent == 50.0


async def test_heartbeat_for_another_robot_id_is_refused(orch: Orchestrator, token: str) -> None:
    """A heartbeat naming another robot than the connection's gets invalid_message, non-fatal."""
    async with connected(orch, token) as ws:
        await register(ws)
        await send(ws, heartbeat("robot-2", seq=0))
        error = await expect(ws, Error)
        assert error.code is ErrorCode.INVALID_MESSAGE and not error.fatal
        assert "robot-2" in error.message
        await send(ws, heartbeat(seq=0))
        assert (await expect(ws, HeartbeatAck)).seq == 0
    assert orch.robot("robot-2") is None


async def test_silent_robot_goes_offline_and_its_connection_is_closed(
    make_orchestrator: MakeOrchestrator,
) -> None:
    """A robot silent too long goes offline (close 1011); one that heartbeats stays online."""
    clock = FakeClock()
    orch = await make_orchestrator(heartbeat_interval_s=0.05, missed_heartbeats=3, clock=clock)
    token = await asyncio.to_thread(orch.create_token, "robots", TokenRole.ROBOT)
    monitor_token = await asyncio.to_thread(orch.create_token, "dashboard")
    async with (
        connected(orch, monitor_token) as monitor,
        connected(orch, token) as silent,
        connected(orch, token) as alive,
    ):
        await subscribe(monitor)
        await register(silent, "silent")
        await register(alive, "alive")
        clock.advance(0.1)  # within the 0.15 s limit of both
        await send(alive, heartbeat("alive", seq=0))
        await expect(alive, HeartbeatAck)
        clock.advance(0.1)  # 'silent' is 0.2 s quiet, 'alive' 0.1 s
        code, _ = await closed_with(silent)
        assert code == 1011
        assert status(orch, "silent") is RobotStatus.OFFLINE
        assert status(orch, "alive") is RobotStatus.ONLINE
        kinds = [(await expect(monitor, Event)).kind for _ in range(3)]
        assert kinds == [EventKind.ROBOT_ONLINE, EventKind.ROBOT_ONLINE, EventKind.ROBOT_OFFLINE]


async def test_disconnect_marks_the_robot_offline_at_once(
    make_orchestrator: MakeOrchestrator,
) -> None:
    """A robot whose connection closes is offline without waiting for missed heartbeats."""
    orch = await make_orchestrator(clock=FakeClock())  # frozen time: no sweep can fire
    token = await asyncio.to_thread(orch.create_token, "robots", TokenRole.ROBOT)
    async with connected(orch, token) as ws:
        await register(ws)
        assert status(orch) is RobotStatus.ONLINE
    await orch.wait_for(lambda: status(orch) is RobotStatus.OFFLINE, TIMEOUT)


async def test_second_robot_with_the_same_id_is_refused_until_the_first_disconnects(
    orch: Orchestrator, token: str
) -> None:
    """A live robot id is refused to a second robot (1008) and accepted once the first left."""
    async with connected(orch, token) as first:
        await register(first, name="first")
        async with connected(orch, token) as second:
            msg = register_msg(name="second")
            await send(second, msg)
            code, messages = await closed_with(second)
        assert code == 1008
        [ack] = messages
        assert isinstance(ack, RegisterAck) and not ack.accepted and ack.reply_to == msg.id
        assert ack.reason is not None and "already connected" in ack.reason
        robot = orch.robot("robot-1")
        assert robot is not None and robot.name == "first" and robot.status is RobotStatus.ONLINE
        await send(first, heartbeat(seq=0))
        await expect(first, HeartbeatAck)
    await orch.wait_for(lambda: status(orch) is RobotStatus.OFFLINE, TIMEOUT)
    async with connected(orch, token) as third:
        assert (await register(third, name="third")).accepted
        robot = orch.robot("robot-1")
        assert robot is not None and robot.name == "third" and robot.status is RobotStatus.ONLINE


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "frame",
    [
        heartbeat(seq=0).model_dump_json(),
        json.dumps({"type": "subscribe_all", "id": "m1"}),
        "hello",
    ],
    ids=["heartbeat", "unknown-type", "not-json"],
)
async def test_first_message_not_register_or_subscribe_is_refused_and_closed(
    orch: Orchestrator, token: str, frame: str
) -> None:
    """A connection must open with register or subscribe: else a fatal error and close 1008."""
    async with connected(orch, token) as ws:
        await ws.send(frame)
        code, messages = await closed_with(ws)
    assert code == 1008
    [error] = messages
    assert isinstance(error, Error) and error.code is ErrorCode.INVALID_MESSAGE and error.fatal
    assert "the first message must be register (robot) or subscribe (monitor)" in error.message
    assert orch.robots() == []


@pytest.mark.parametrize(
    ("frame", "reply_to"),
    [
        ("{not json", None),
        ("[1, 2]", None),
        (json.dumps({"type": "no_such_type", "id": "m1"}), "m1"),
        (json.dumps({"type": "heartbeat", "id": "m2", "robot_id": "robot-1"}), "m2"),
        (RegisterAck(accepted=True, id="m3").model_dump_json(), "m3"),  # not a robot's to send
    ],
    ids=["not-json", "not-object", "unknown-type", "missing-fields", "wrong-sender"],
)
async def test_invalid_frame_gets_invalid_message_and_the_connection_survives(
    orch: Orchestrator, token: str, frame: str, reply_to: str | None
) -> None:
    """A bad frame gets a non-fatal invalid_message error and the robot's link goes on."""
    async with connected(orch, token) as ws:
        await register(ws)
        await ws.send(frame)
        error = await expect(ws, Error)
        assert error.code is ErrorCode.INVALID_MESSAGE and not error.fatal
        assert error.reply_to == reply_to
        await send(ws, heartbeat(seq=0))
        assert (await expect(ws, HeartbeatAck)).seq == 0
    assert orch.robot("robot-1") is not None


async def test_oversized_frame_closes_the_connection_with_1009(
    make_orchestrator: MakeOrchestrator,
) -> None:
    """A frame over max_frame_bytes closes the connection with 1009 and the robot goes offline."""
    orch = await make_orchestrator(max_frame_bytes=4096)
    token = await asyncio.to_thread(orch.create_token, "robots", TokenRole.ROBOT)
    async with connected(orch, token) as ws:
        await register(ws)
        big = heartbeat(seq=0).model_dump_json()[:-1] + ', "pad": "' + "x" * 8192 + '"}'
        await ws.send(big)
        code, messages = await closed_with(ws)
    assert code == 1009
    assert messages == []
    await orch.wait_for(lambda: status(orch) is RobotStatus.OFFLINE, TIMEOUT)


async def test_unsupported_protocol_version_is_refused_and_closed(
    orch: Orchestrator, token: str
) -> None:
    """An unknown protocol version gets a fatal unsupported_version, close 1008, no robot."""
    frame = register_msg().model_dump(mode="json") | {"protocol_version": 99, "id": "reg-1"}
    async with connected(orch, token) as ws:
        await ws.send(json.dumps(frame))
        code, messages = await closed_with(ws)
    assert code == 1008
    [error] = messages
    assert isinstance(error, Error) and error.code is ErrorCode.UNSUPPORTED_VERSION
    assert error.fatal and error.reply_to == "reg-1" and "99" in error.message
    assert orch.robots() == []


# --------------------------------------------------------------------------- monitors


async def test_monitor_gets_a_snapshot_then_robot_online_status_and_offline_events(
    orch: Orchestrator, token: str, monitor_token: str
) -> None:
    """A robots monitor gets a snapshot, then robot_online, robot_status and robot_offline."""
    async with connected(orch, token) as early:
        await register(early, "early")
        async with connected(orch, monitor_token) as monitor:
            snapshot = await subscribe(monitor, Topic.ROBOTS)
            assert snapshot.kind is EventKind.ROBOT_STATUS
            assert [r.robot_id for r in snapshot.data.robots] == ["early"]
            async with connected(orch, token) as robot:
                await register(robot, tags=["gpu"])
                online = await expect(monitor, Event)
                assert (online.topic, online.kind) == (Topic.ROBOTS, EventKind.ROBOT_ONLINE)
                assert online.data.robot.robot_id == "robot-1"
                assert online.data.robot.tags == ["gpu"]
                await send(robot, heartbeat(seq=0, status="draining"))
                await expect(robot, HeartbeatAck)
                changed = await expect(monitor, Event)
                assert changed.kind is EventKind.ROBOT_STATUS
                assert changed.data.robot.status == "draining"
            offline = await expect(monitor, Event)
            assert offline.kind is EventKind.ROBOT_OFFLINE
            assert offline.data.robot.robot_id == "robot-1"
            assert offline.data.reason == "disconnected"


async def test_unsubscribed_monitor_gets_no_more_events(
    orch: Orchestrator, token: str, monitor_token: str
) -> None:
    """After unsubscribe a monitor gets no robot events; subscribing again resumes them."""
    async with connected(orch, monitor_token) as monitor:
        await subscribe(monitor)
        await send(monitor, Unsubscribe(topics=frozenset({Topic.ROBOTS})))
        await orch.wait_for(lambda: orch.monitors(Topic.ROBOTS) == 0, TIMEOUT)
        async with connected(orch, token) as robot:
            await register(robot)
            snapshot = await subscribe(monitor)  # the next frame: no robot_online came before
            assert [r.robot_id for r in snapshot.data.robots] == ["robot-1"]
        offline = await expect(monitor, Event)
        assert offline.kind is EventKind.ROBOT_OFFLINE


async def test_monitor_may_not_send_robot_messages(orch: Orchestrator, monitor_token: str) -> None:
    """A monitor sending register gets invalid_message and stays subscribed."""
    async with connected(orch, monitor_token) as monitor:
        await subscribe(monitor)
        await send(monitor, register_msg())
        error = await expect(monitor, Error)
        assert error.code is ErrorCode.INVALID_MESSAGE and not error.fatal
        assert "monitor may not send register" in error.message
        await subscribe(monitor)
    assert orch.robots() == []


# --------------------------------------------------------------------------- lifecycle


async def test_orchestrator_binds_loopback_and_stops_cleanly(tmp_path: Path) -> None:
    """It listens on 127.0.0.1; stop closes robots (1001) and releases the port and database."""
    async with Orchestrator(tmp_path / "state", port=0) as orch:
        assert orch.url == f"ws://127.0.0.1:{orch.port}" and orch.port != 0
        token = await asyncio.to_thread(orch.create_token, "robots", TokenRole.ROBOT)
        ws = await connect(orch.url, additional_headers=bearer(token), open_timeout=TIMEOUT)
        await register(ws)
    code, _ = await closed_with(ws)
    assert code == 1001
    assert status(orch) is RobotStatus.OFFLINE
    with pytest.raises(OSError):
        await connect(orch.url, additional_headers=bearer(token), open_timeout=TIMEOUT)
    with opened(tmp_path / "state") as stores:
        holder = stores.tokens.verify_token(token)
        assert holder is not None and holder.name == "robots"


# --------------------------------------------------------------------------- registry (pure)


def test_registry_registers_a_robot_online() -> None:
    """register records the robot's identity and capacity, online, last seen now."""
    registry = RobotRegistry()
    robot = registry.register(
        register_msg(environment="prod", tags=["a"], max_concurrent_jobs=2), now=T0
    )
    assert robot.status is RobotStatus.ONLINE and robot.last_heartbeat == T0
    assert (robot.environment, robot.tags, robot.max_concurrent_jobs) == ("prod", ["a"], 2)
    assert registry.robots() == [robot]


def test_registry_refuses_a_live_id_and_accepts_it_after_disconnect() -> None:
    """A second register of a live robot id raises RobotIdTaken; after disconnect it succeeds."""
    registry = RobotRegistry()
    registry.register(register_msg(name="first"), now=T0, session=1)
    with pytest.raises(RobotIdTaken, match="already connected"):
        registry.register(register_msg(name="second"), now=T0, session=2)
    offline = registry.disconnect("robot-1", now=T0, session=1)
    assert offline is not None and offline.status is RobotStatus.OFFLINE
    assert registry.register(register_msg(name="second"), now=T0, session=2).name == "second"


def test_registry_ignores_the_disconnect_of_a_superseded_session() -> None:
    """Once a robot re-registered, the old session's disconnect or heartbeat leaves it alone."""
    registry = RobotRegistry()
    registry.register(register_msg(), now=T0, session=1)
    assert registry.sweep(T0 + timedelta(seconds=10), interval_s=1.0) != []
    registry.register(register_msg(), now=T0 + timedelta(seconds=11), session=2)
    assert registry.disconnect("robot-1", now=T0, session=1) is None
    with pytest.raises(NotRegistered, match="another connection"):
        registry.heartbeat(heartbeat(seq=5), now=T0, session=1)
    assert registry.robots()[0].status is RobotStatus.ONLINE
    assert registry.disconnect("robot-1", now=T0, session=2) is not None
    assert registry.disconnect("robot-1", now=T0, session=2) is None  # already offline


def test_registry_heartbeat_updates_state_and_ignores_replays() -> None:
    """A heartbeat sets status, running jobs, load and last_heartbeat; an old seq is ignored."""
    registry = RobotRegistry()
    registry.register(register_msg(), now=T0)
    t1, t2 = T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)
    refs = [JobRef(job_id="j1", attempt=1), JobRef(job_id="j2", attempt=1)]
    robot = registry.heartbeat(
        heartbeat(seq=3, status="busy", running_jobs=refs, cpu_percent=5.0), now=t1
    )
    assert (robot.status, robot.running_jobs, robot.cpu_percent) == (RobotStatus.BUSY, 2, 5.0)
    assert robot.last_heartbeat == t1
    for seq in (3, 2):
        replay = registry.heartbeat(heartbeat(seq=seq, cpu_percent=99.0), now=t2)
        assert replay == robot
    assert registry.heartbeat(heartbeat(seq=4), now=t2).status is RobotStatus.ONLINE


def test_registry_holds_an_ordered_drain_against_heartbeats_sent_before_it() -> None:
    """A drain the orchestrator set survives up to STALE_HEARTBEATS heartbeats still saying
    online (sent before the robot got the order); one agreeing ends the hold; an undrain is
    held the same way, and a robot insisting longer is believed."""
    registry = RobotRegistry()
    registry.register(register_msg(max_concurrent_jobs=1), now=T0)
    assert registry.set_status("robot-1", RobotStatus.DRAINING) is not None
    seq = 0
    for seq in range(STALE_HEARTBEATS):
        assert registry.heartbeat(heartbeat(seq=seq), now=T0).status is RobotStatus.DRAINING
    seq += 1
    agreed = registry.heartbeat(heartbeat(seq=seq, status="draining"), now=T0)
    assert agreed.status is RobotStatus.DRAINING
    seq += 1
    assert registry.heartbeat(heartbeat(seq=seq), now=T0).status is RobotStatus.ONLINE

    registry.set_status("robot-1", RobotStatus.ONLINE)  # undrain; the robot was busy
    busy = [JobRef(job_id="j1", attempt=1)]
    seq += 1
    stale = registry.heartbeat(heartbeat(seq=seq, status="draining", running_jobs=busy), now=T0)
    assert stale.status is RobotStatus.BUSY
    for _ in range(STALE_HEARTBEATS):
        seq += 1
        last = registry.heartbeat(heartbeat(seq=seq, status="draining"), now=T0)
    assert last.status is RobotStatus.DRAINING  # past the stale ones: the robot drains itself


def test_registry_heartbeat_from_unknown_or_offline_robot_raises() -> None:
    """Heartbeats need a registered, live robot."""
    registry = RobotRegistry()
    with pytest.raises(NotRegistered, match="register first"):
        registry.heartbeat(heartbeat(seq=0), now=T0)
    registry.register(register_msg(), now=T0)
    registry.disconnect("robot-1", now=T0)
    with pytest.raises(NotRegistered, match="offline"):
        registry.heartbeat(heartbeat(seq=0), now=T0)


def test_registry_sweep_marks_robots_offline_after_missed_heartbeats() -> None:
    """sweep marks offline, once, the robots silent for more than interval * misses."""
    registry = RobotRegistry()
    registry.register(register_msg("a"), now=T0)
    registry.register(register_msg("b"), now=T0 + timedelta(seconds=2))
    assert registry.sweep(T0 + timedelta(seconds=3), interval_s=1.0, misses=3) == []
    gone = registry.sweep(T0 + timedelta(seconds=3.5), interval_s=1.0, misses=3)
    assert [r.robot_id for r in gone] == ["a"] and gone[0].status is RobotStatus.OFFLINE
    assert registry.sweep(T0 + timedelta(seconds=3.5), interval_s=1.0, misses=3) == []
    assert [r.status for r in registry.robots()] == [RobotStatus.OFFLINE, RobotStatus.ONLINE]


def test_registry_returns_copies() -> None:
    """Changing a returned robot does not change the registry."""
    registry = RobotRegistry()
    registry.register(register_msg(), now=T0).tags.append("x")
    registry.robots()[0].status = RobotStatus.OFFLINE
    robot = registry.get("robot-1")
    assert robot is not None and robot.tags == [] and robot.status is RobotStatus.ONLINE
