"""The orchestrator's WebSocket shell: robots register and heartbeat, monitors subscribe.

An I/O shell around pure parts: :mod:`casare_nb.protocol` turns frames into messages and
back, :class:`~casare_nb.orchestrator.registry.RobotRegistry` keeps the robots' state, the
:class:`~casare_nb.orchestrator.jobs.manager.JobManager` handles their job messages. This is
the one module that imports the websockets server.

A connection's life:

1. **Upgrade.** ``Authorization: Bearer <token>`` is checked against the orchestrator's
   tokens *before* the upgrade: missing, malformed, unknown or revoked gives HTTP 401 with a
   one-line body. The token's name stays with the connection (revoking the token closes it).
   Every failure is a record of the audit log (:mod:`casare_nb.orchestrator.audit`).
2. **Role.** The first message decides it: ``register`` makes a robot, ``subscribe`` a
   monitor; anything else gets a fatal ``error`` (``invalid_message``) and close 1008. Only
   a ``robot`` token (or one from before token roles) may register; only a ``user`` or
   ``admin`` token may subscribe: another gets a fatal ``error`` (``unauthorized``, one line:
   ``token 'x' has role user; registering as a robot needs robot``) and close 1008, audited.
3. **Messages.** Every frame is decoded for the peer's role. A frame that cannot be
   accepted gets an ``error`` reply naming it; non-fatal errors keep the connection,
   fatal ones (e.g. ``unsupported_version``) close it with 1008. Frames over
   ``max_frame_bytes`` are refused by websockets itself, which closes with 1009.

Close codes sent: 1008 refused (first message, protocol version, robot id already
connected, token revoked); 1009 frame too big; 1011 missed heartbeats (the robot was marked
offline: reconnect and register again); 1013 the peer reads too slowly; 1001 the
orchestrator stops.

A robot that disconnects or misses its heartbeats has its running jobs requeued (by the job
manager: after a grace for a clean close, at once for missed heartbeats or a connection
lost without a close frame). A ``heartbeat_ack`` is sent once the job manager's
durable mark taken at the heartbeat is reached: everything the robot's earlier messages
produced is written.

Monitors subscribed to ``robots`` get a snapshot right after subscribing (an ``event`` of
kind ``robot_status`` with ``data = {"snapshot": true, "robots": [...]}``, replying to the
subscribe), then ``robot_online`` / ``robot_offline`` / ``robot_status`` events whose
``data["robot"]`` is the robot (``robot_offline`` adds ``reason``: ``disconnected`` or
``missed_heartbeats``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import weakref
from collections import deque
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus
from ssl import SSLContext
from typing import Final

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from casare_nb.core.errors import QueueError
from casare_nb.core.models import Robot
from casare_nb.core.tokens import BadAuthorization, Holder, TokenRole, bearer_token, refusal
from casare_nb.orchestrator import audit
from casare_nb.orchestrator.brake import AuthBrake
from casare_nb.orchestrator.elsewhere import Elsewhere
from casare_nb.orchestrator.jobs.attempts import JOB_MESSAGES
from casare_nb.orchestrator.jobs.manager import JobManager
from casare_nb.orchestrator.metrics import OrchestratorMetrics
from casare_nb.orchestrator.registry import NotRegistered, RobotIdTaken, RobotRegistry
from casare_nb.protocol import (
    BlobGet,
    BlobPut,
    Deduplicator,
    Envelope,
    Error,
    ErrorCode,
    Event,
    EventData,
    EventKind,
    Heartbeat,
    HeartbeatAck,
    LogBatch,
    Message,
    ProtocolError,
    Register,
    RegisterAck,
    RobotEvent,
    RobotSnapshot,
    Role,
    Subscribe,
    Topic,
    Unsubscribe,
    decode,
    encode,
)
from casare_nb.store.interfaces import TokenStore

__all__ = ["MAX_PENDING_FRAMES", "WebSocketService"]

MAX_PENDING_FRAMES: Final = 1000  # a peer further behind than this is closed (1013)

_FIRST_MESSAGE: Final = "the first message must be register (robot) or subscribe (monitor)"

logger = logging.getLogger("casare_nb.orchestrator")


def _address_of(connection: ServerConnection) -> str:
    """The address a connection comes from (for the brake and the audit log)."""
    address = connection.remote_address
    return str(address[0]) if isinstance(address, tuple) and address else "unknown"


def _close_reason(text: str) -> str:
    """``text`` cut to what a close frame holds (123 bytes of UTF-8)."""
    data = text.encode()
    if len(data) <= 123:
        return text
    return data[:120].decode(errors="ignore") + "..."


class _Peer:
    """One authenticated connection: who it is, what it subscribed to, and its outbox.

    Sending never blocks: frames queue in the outbox and :meth:`write` sends them in order,
    then the close, if one was asked for.
    """

    _sessions = itertools.count(1)

    def __init__(
        self, connection: ServerConnection, *, holder: Holder, max_frame_bytes: int
    ) -> None:
        self.connection = connection
        self.holder = holder
        self.token_name = holder.name
        self.session = next(self._sessions)
        self.role: Role | None = None
        self.robot_id: str | None = None
        self.topics: set[Topic] = set()
        self._max_frame_bytes = max_frame_bytes
        self._outbox: deque[str] = deque()
        self._wake = asyncio.Event()
        self._closing: tuple[int, str] | None = None

    def __repr__(self) -> str:
        who = self.robot_id or (self.role.value if self.role else "peer")
        return f"<{who} #{self.session} from {self.connection.remote_address}>"

    @property
    def closing(self) -> bool:
        return self._closing is not None

    def send(self, msg: Envelope) -> None:
        """Queue ``msg`` (dropped, and logged, if it cannot be encoded)."""
        try:
            frame = encode(msg, max_bytes=self._max_frame_bytes)
        except ProtocolError as err:
            logger.error("not sending %s to %r: %s", msg.type, self, err)
            return
        self.send_frame(frame)

    def send_frame(self, frame: str) -> None:
        """Queue an encoded frame; a peer too far behind is closed instead."""
        if self._closing is not None:
            return
        if len(self._outbox) >= MAX_PENDING_FRAMES:
            self._outbox.clear()
            logger.warning("closing %r: %d frames pending", self, MAX_PENDING_FRAMES)
            self.close(CloseCode.TRY_AGAIN_LATER, f"too slow: {MAX_PENDING_FRAMES} frames pending")
            return
        self._outbox.append(frame)
        self._wake.set()

    def close(self, code: int, reason: str = "") -> None:
        """Close after the frames queued so far (the first close asked for wins)."""
        if self._closing is None:
            self._closing = (int(code), _close_reason(reason))
            self._wake.set()

    async def write(self) -> None:
        """Send queued frames until a close is asked for (then close) or the link drops."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._outbox:
                    await self.connection.send(self._outbox.popleft())
                if self._closing is not None:
                    await self.connection.close(*self._closing)
                    return
        except ConnectionClosed:
            return


class WebSocketService:
    """The listener robots and monitors connect to; see the module docstring.

    Robots that send nothing (no heartbeat) for ``heartbeat_interval_s * missed_heartbeats``
    seconds are marked offline, checked every ``heartbeat_interval_s``; ``clock`` is the time
    source of every such decision. ``changed`` is called after every change of state a
    ``wait_for`` caller may be waiting on (robots, connections, subscriptions).
    """

    def __init__(
        self,
        *,
        registry: RobotRegistry,
        jobs: JobManager,
        tokens: TokenStore,
        metrics: OrchestratorMetrics,
        clock: Callable[[], datetime],
        changed: Callable[[], None],
        host: str,
        port: int,
        heartbeat_interval_s: float,
        missed_heartbeats: int,
        max_frame_bytes: int,
        ssl_context: SSLContext | None = None,
    ) -> None:
        self.registry = registry
        self.job_manager = jobs
        self.tokens = tokens
        self.metrics = metrics
        self.brake = AuthBrake()  # failed token checks, per address
        self.host = host
        self.port = port
        self.heartbeat_interval_s = heartbeat_interval_s
        self.missed_heartbeats = missed_heartbeats
        self.max_frame_bytes = max_frame_bytes
        self.ssl_context = ssl_context
        self._clock = clock
        self._changed = changed
        self._server: Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._peers: set[_Peer] = set()
        self._robot_peers: dict[str, _Peer] = {}
        self._log_ids = Deduplicator()
        self.elsewhere: Elsewhere | None = None
        """The robots and cells of the other orchestrators of a shared database."""
        self._tasks: set[asyncio.Task[None]] = set()
        # who holds the token of each connection, from its upgrade until it is handled
        self._holders: weakref.WeakKeyDictionary[ServerConnection, Holder] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def url(self) -> str:
        """The URL robots and monitors connect to (the bound port once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self.ssl_context else 'ws'}://{host}:{self.port}"

    async def start(self) -> int:
        """Bind ``host:port`` (0: a free port) and serve; the bound port. OSError if taken."""
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._authenticate,
            max_size=self.max_frame_bytes,
            ssl=self.ssl_context,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="orchestrator-sweeper")
        return self.port

    async def stop(self) -> None:
        """Stop sweeping and close every connection (1001)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cancel_tasks(self) -> None:
        """Give up the heartbeat acks still waiting for their writes."""
        for task in list(self._tasks):
            task.cancel()

    # -- what the orchestrator asks --------------------------------------------------------

    def send_to_robot(self, robot_id: str, msg: Envelope) -> bool:
        """Queue ``msg`` on the robot's connection; False if it is not connected."""
        peer = self._robot_peers.get(robot_id)
        if peer is None or peer.closing:
            return False
        peer.send(msg)
        return True

    def publish(self, kind: EventKind, data: EventData) -> None:
        """Send an event to every monitor subscribed to its topic."""
        self._publish(kind, data)

    def connected_robots(self) -> list[str]:
        """The ids of the robots connected now."""
        return sorted(self._robot_peers)

    def monitors(self, topic: Topic | None = None) -> int:
        """How many monitors are connected (subscribed to ``topic``, if given)."""
        return sum(
            1
            for peer in self._peers
            if peer.role is Role.MONITOR and (topic is None or topic in peer.topics)
        )

    def drop_token(self, name: str) -> None:
        """Close the connections that use the token ``name`` (it was revoked)."""
        for peer in list(self._peers):
            if peer.token_name == name:
                peer.send(
                    Error(
                        code=ErrorCode.UNAUTHORIZED, message=f"token {name} was revoked", fatal=True
                    )
                )
                peer.close(CloseCode.POLICY_VIOLATION, "token revoked")

    # -- connections ---------------------------------------------------------------------

    async def _authenticate(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Refuse the upgrade (401) unless the request carries a live bearer token."""
        try:
            token = bearer_token(request.headers.get_all("Authorization"))
        except BadAuthorization as exc:
            return self._unauthorized(connection, str(exc))
        try:
            holder = self.tokens.known_token(token) or await asyncio.to_thread(
                self.tokens.verify_token, token
            )
        except QueueError as exc:
            logger.error("cannot check a token: %s", exc)
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE, "the orchestrator cannot read its tokens\n"
            )
        if holder is None:
            return self._unauthorized(connection, "invalid or revoked token")
        connection.username = holder.name
        self._holders[connection] = Holder(holder.name, holder.role, _address_of(connection))
        return None

    def _unauthorized(self, connection: ServerConnection, why: str) -> Response:
        """401, counted by the authentication brake (logged once per address and window);
        429 with Retry-After once the address failed too often lately."""
        client = _address_of(connection)
        wait = self.brake.wait_s(client)
        self.brake.failed(client, f"WebSocket: {why}", "websocket")
        self.metrics.connection_failed("refused")
        if wait is not None:
            response = connection.respond(
                HTTPStatus.TOO_MANY_REQUESTS,
                f"too many failed authentications from {client}; retry in {wait} s\n",
            )
            response.headers["Retry-After"] = str(wait)
            return response
        response = connection.respond(HTTPStatus.UNAUTHORIZED, f"{why}\n")
        response.headers["WWW-Authenticate"] = 'Bearer realm="casare_nb"'
        return response

    async def _handle(self, connection: ServerConnection) -> None:
        holder = self._holders.pop(connection, None)
        if holder is None:  # not through _authenticate (cannot happen when served)
            holder = Holder(connection.username or "", TokenRole.ROBOT, _address_of(connection))
        peer = _Peer(connection, holder=holder, max_frame_bytes=self.max_frame_bytes)
        writer = asyncio.create_task(peer.write(), name=f"orchestrator-writer-{peer.session}")
        self._peers.add(peer)
        self._changed()
        lost = False
        try:
            async for frame in connection:
                if not self._on_frame(peer, frame):
                    break
        except ConnectionClosed as exc:
            # no close frame: the robot's process died or the connection was reset
            lost = exc.rcvd is None
        finally:
            self._peers.discard(peer)
            self._forget(peer, lost=lost)
            peer.close(CloseCode.NORMAL_CLOSURE)
            await writer

    def _forget(self, peer: _Peer, *, lost: bool = False) -> None:
        """The connection ended: its robot goes offline at once. Its jobs wait
        ``reconnect_grace_s`` for it after a clean close; after a connection ``lost`` (no
        close frame: the process died, a TCP reset) they are requeued to resume at once; a
        robot that comes back late finds its attempts superseded."""
        if peer.role is Role.ROBOT and peer.robot_id is not None:
            if self._robot_peers.get(peer.robot_id) is peer:
                del self._robot_peers[peer.robot_id]
            robot = self.registry.disconnect(peer.robot_id, now=self._clock(), session=peer.session)
            if robot is not None:
                self._robot_offline(robot, "disconnected")
                self.job_manager.robot_gone(robot.robot_id, grace=not lost)
                if lost:
                    self.metrics.connection_failed("lost")
        self._changed()

    # -- messages ------------------------------------------------------------------------

    def _on_frame(self, peer: _Peer, frame: str | bytes) -> bool:
        """Handle one frame; False when the connection is to close."""
        if peer.closing:
            return False
        try:
            msg = decode(frame, max_bytes=self.max_frame_bytes, sender=peer.role)
        except ProtocolError as err:
            if peer.role is None and not err.fatal:
                err = ProtocolError(
                    err.code,
                    f"{err.message}; {_FIRST_MESSAGE}",
                    fatal=True,
                    message_id=err.message_id,
                )
            return self._refuse(peer, err)
        try:
            return self._on_message(peer, msg)
        except Exception:
            logger.exception("failed to handle %s from %r", msg.type, peer)
            peer.send(
                Error(
                    code=ErrorCode.INTERNAL,
                    message=f"the orchestrator failed to handle {msg.type}; it may be retried",
                    reply_to=msg.id,
                )
            )
            return True

    def _refuse(self, peer: _Peer, err: ProtocolError) -> bool:
        """Reply with the error; close (1008) if it is fatal. False when closing."""
        logger.info("refused a frame from %r: %s", peer, err)
        peer.send(err.to_message())
        if err.fatal:
            peer.close(CloseCode.POLICY_VIOLATION, err.message)
            return False
        return True

    def _on_message(self, peer: _Peer, msg: Message) -> bool:
        if peer.role is None:
            match msg:
                case Register():
                    if not self._may(peer, msg, TokenRole.ROBOT, "registering as a robot"):
                        return False
                    return self._on_register(peer, msg)
                case Subscribe():
                    if not self._may(peer, msg, TokenRole.USER, "subscribing to events"):
                        return False
                    return self._on_subscribe(peer, msg)
                case _:
                    return self._refuse(
                        peer,
                        ProtocolError(
                            ErrorCode.INVALID_MESSAGE,
                            f"{_FIRST_MESSAGE}, not {msg.type}",
                            fatal=True,
                            message_id=msg.id,
                        ),
                    )
        if isinstance(msg, Error):
            logger.warning("%r reported %s: %s", peer, msg.code.value, msg.message)
            return True
        if peer.role is Role.ROBOT:
            return self._on_robot_message(peer, msg)
        return self._on_monitor_message(peer, msg)

    def _may(self, peer: _Peer, msg: Message, role: TokenRole, action: str) -> bool:
        """Whether the peer's token may take the role ``msg`` asks for; if not, a fatal
        ``unauthorized`` error (close 1008), audited."""
        why = refusal(peer.holder, role, action)
        if why is None:
            return True
        audit.denied(peer.holder, action, "websocket", why)
        self._refuse(peer, ProtocolError(ErrorCode.UNAUTHORIZED, why, True, msg.id))
        return False

    def _on_robot_message(self, peer: _Peer, msg: Message) -> bool:
        match msg:
            case Heartbeat():
                return self._on_heartbeat(peer, msg)
            case LogBatch():
                self._on_log_batch(peer, msg)
                return True
            case Register():
                why = f"already registered as robot {peer.robot_id!r} on this connection"
                return self._refuse(
                    peer, ProtocolError(ErrorCode.INVALID_MESSAGE, why, False, msg.id)
                )
        if isinstance(msg, JOB_MESSAGES):
            assert peer.robot_id is not None
            error = self.job_manager.on_message(peer.robot_id, msg)
            if error is not None:
                logger.info("refused %s from %r: %s", msg.type, peer, error.message)
                peer.send(error)
            return True
        if isinstance(msg, BlobPut):
            assert peer.robot_id is not None
            error = self.job_manager.on_blob_put(peer.robot_id, msg)
            if error is not None:
                peer.send(error)
            return True
        if isinstance(msg, BlobGet):
            assert peer.robot_id is not None
            for answer in self.job_manager.on_blob_get(peer.robot_id, msg):
                peer.send(answer)
            return True
        job_id = getattr(msg, "job_id", None)
        if isinstance(job_id, str):
            why = f"unknown job {job_id!r}: this orchestrator did not assign it"
            return self._refuse(peer, ProtocolError(ErrorCode.UNKNOWN_JOB, why, False, msg.id))
        why = f"{msg.type} is not handled by this orchestrator"
        return self._refuse(peer, ProtocolError(ErrorCode.INVALID_MESSAGE, why, False, msg.id))

    def _on_monitor_message(self, peer: _Peer, msg: Message) -> bool:
        match msg:
            case Subscribe():
                return self._on_subscribe(peer, msg)
            case Unsubscribe():
                peer.topics -= msg.topics
                self._changed()
                return True
        why = f"{msg.type} is not handled by this orchestrator"
        return self._refuse(peer, ProtocolError(ErrorCode.INVALID_MESSAGE, why, False, msg.id))

    def _on_register(self, peer: _Peer, msg: Register) -> bool:
        try:
            robot = self.registry.register(msg, now=self._clock(), session=peer.session)
        except RobotIdTaken as exc:
            logger.warning("refused robot %s from %r: %s", msg.robot_id, peer, exc)
            peer.send(
                RegisterAck(
                    accepted=False,
                    reason=str(exc),
                    heartbeat_interval_s=self.heartbeat_interval_s,
                    reply_to=msg.id,
                )
            )
            peer.close(CloseCode.POLICY_VIOLATION, "robot id already connected")
            return False
        peer.role = Role.ROBOT
        peer.robot_id = robot.robot_id
        self._robot_peers[robot.robot_id] = peer
        keep = self.job_manager.robot_back(robot.robot_id, msg.holding)
        peer.send(
            RegisterAck(
                accepted=True,
                heartbeat_interval_s=self.heartbeat_interval_s,
                continue_jobs=keep,
                reply_to=msg.id,
            )
        )
        logger.info(
            "robot %s online (%s, environment %s, token %s)",
            robot.robot_id,
            robot.name,
            robot.environment,
            peer.token_name,
        )
        self._publish(EventKind.ROBOT_ONLINE, RobotEvent(robot=robot))
        self._changed()
        self.job_manager.wake()
        return True

    def _on_heartbeat(self, peer: _Peer, msg: Heartbeat) -> bool:
        if msg.robot_id != peer.robot_id:
            why = f"heartbeat for robot {msg.robot_id!r} on the connection of {peer.robot_id!r}"
            return self._refuse(peer, ProtocolError(ErrorCode.INVALID_MESSAGE, why, False, msg.id))
        before = self.registry.get(msg.robot_id)
        try:
            robot = self.registry.heartbeat(msg, now=self._clock(), session=peer.session)
        except NotRegistered as exc:
            return self._refuse(
                peer, ProtocolError(ErrorCode.INVALID_MESSAGE, str(exc), False, msg.id)
            )
        self._ack(peer, HeartbeatAck(seq=msg.seq, reply_to=msg.id))
        if before is not None and (before.status, before.running_jobs) != (
            robot.status,
            robot.running_jobs,
        ):
            self._publish(EventKind.ROBOT_STATUS, RobotEvent(robot=robot))
        if robot.free_slots:
            self.job_manager.wake()
        self._changed()
        return True

    def _ack(self, peer: _Peer, ack: HeartbeatAck) -> None:
        """Send a heartbeat_ack once every record the robot's earlier messages produced is in
        the database (the job states the queue writer commits and the history): the robot
        forgets what an ack covers, so an orchestrator SIGKILLed after the ack must not lose
        it."""
        jobs = self.job_manager
        mark = jobs.durable_mark(peer.robot_id)
        if jobs.is_durable(mark):
            peer.send(ack)
            return

        async def when_written() -> None:
            if await jobs.durable(mark, 30.0):
                peer.send(ack)
            else:
                logger.warning("database writes are slow: heartbeat_ack to %r withheld", peer)

        task = asyncio.create_task(when_written(), name=f"ack-{peer.session}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_log_batch(self, peer: _Peer, msg: LogBatch) -> None:
        # a robot resends what it is not sure arrived; keyed by the sender, so another
        # robot replaying an id hides nothing
        if self._log_ids.seen((peer.robot_id, msg.id)):
            return
        robot_log = logging.getLogger(f"casare_nb.orchestrator.robot.{peer.robot_id}")
        where = f"[job {msg.job_id} attempt {msg.attempt}] " if msg.job_id else ""
        if msg.dropped:
            robot_log.warning("%s%d log records were lost", where, msg.dropped)
        for record in msg.records:
            robot_log.log(logging.getLevelName(record.level), "%s%s", where, record.message)

    def _on_subscribe(self, peer: _Peer, msg: Subscribe) -> bool:
        peer.role = Role.MONITOR
        peer.topics |= msg.topics
        if Topic.ROBOTS in msg.topics:
            robots = self.registry.robots()
            if self.elsewhere is not None:
                robots = self.elsewhere.with_mine(robots)
            peer.send(
                Event(
                    topic=Topic.ROBOTS,
                    kind=EventKind.ROBOT_STATUS,
                    data=RobotSnapshot(robots=robots),
                    reply_to=msg.id,
                )
            )
        self._changed()
        return True

    # -- events and liveness -------------------------------------------------------------

    def _publish(self, kind: EventKind, data: EventData) -> None:
        """Count the event in the metrics, send it to every monitor subscribed to its topic,
        then share it with the other orchestrators of a shared database."""
        self.metrics.observe(kind, data)
        self.to_monitors(kind, data)
        if self.elsewhere is not None:
            self.elsewhere.share(kind, data)

    def to_monitors(self, kind: EventKind, data: EventData) -> None:
        """Send an event to every monitor subscribed to its topic (and nothing else)."""
        monitors = [p for p in self._peers if p.role is Role.MONITOR and kind.topic in p.topics]
        if not monitors:
            return  # no monitor: do not build (validate, give an id to) the event
        event = Event(topic=kind.topic, kind=kind, data=data)
        try:
            frame = encode(event, max_bytes=self.max_frame_bytes)
        except ProtocolError as err:
            logger.error("not publishing %s: %s", kind.value, err)
            return
        for peer in monitors:
            peer.send_frame(frame)

    def _robot_offline(self, robot: Robot, reason: str) -> None:
        logger.info("robot %s offline (%s)", robot.robot_id, reason)
        self._publish(EventKind.ROBOT_OFFLINE, RobotEvent(robot=robot, reason=reason))

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            try:
                self._sweep()
            except Exception:
                logger.exception("the heartbeat sweep failed")

    def _sweep(self) -> None:
        """Mark silent robots offline and close their connections (1011: reconnect)."""
        gone = self.registry.sweep(
            self._clock(), interval_s=self.heartbeat_interval_s, misses=self.missed_heartbeats
        )
        for robot in gone:
            self._robot_offline(robot, "missed_heartbeats")
            self.metrics.connection_failed("lost")
            self.job_manager.robot_gone(robot.robot_id, grace=False)
            peer = self._robot_peers.pop(robot.robot_id, None)
            if peer is not None:
                peer.close(
                    CloseCode.INTERNAL_ERROR,
                    f"missed {self.missed_heartbeats} heartbeats: reconnect and register again",
                )
        if gone:
            self._changed()
