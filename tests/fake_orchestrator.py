"""A fake orchestrator for the robot agent's tests: a real websockets server on 127.0.0.1
port 0 that (optionally) checks the bearer token, answers ``register`` as the test chooses,
acks heartbeats, records each message with the number of the connection it came on (1, 2
...), and sends or drops the connection when a test says so. Waits are bounded by
:data:`WAIT_S`; nothing sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from casare_nb.protocol import (
    Envelope,
    Error,
    Heartbeat,
    HeartbeatAck,
    Message,
    Register,
    RegisterAck,
    Role,
    decode,
    encode,
)
from casare_nb.robot.outbox import is_buffered

__all__ = ["HB_S", "WAIT_S", "FakeOrchestrator", "OnRegister", "accept"]

HB_S = 7.0  # the heartbeat interval the fake's register_ack sets; no backoff delay equals it
WAIT_S = 5.0  # upper bound of every wait (each test takes milliseconds)

M = TypeVar("M", bound=Envelope)
OnRegister = Callable[[Register, int], Envelope | Sequence[Envelope]]
"""What answers a ``register``: called with it and the number of its connection (1 first)."""


def accept(register: Register, connection: int) -> RegisterAck:
    """register_ack accepting the robot, heartbeat every HB_S."""
    return RegisterAck(accepted=True, heartbeat_interval_s=HB_S, reply_to=register.id)


class FakeOrchestrator:
    """See the module. ``token``: the bearer token a connection must bring (HTTP 401
    otherwise); None accepts any. After a refusal (a ``register_ack`` not accepted, or a
    fatal ``error``) the fake closes the connection with 1008."""

    def __init__(
        self,
        on_register: OnRegister = accept,
        *,
        token: str | None = None,
        ack_heartbeats: bool = True,
    ) -> None:
        self.on_register = on_register
        self.token = token
        self.ack_heartbeats = ack_heartbeats
        self.requests: list[Request] = []
        self.received: list[tuple[int, Message]] = []
        self.close_codes: list[int | None] = []  # the code of the robot's close frame, per link
        self.closed: list[int] = []  # connections ended, by number
        self.connections = 0
        self.conn: ServerConnection | None = None
        self.server: Server | None = None
        self._changed = asyncio.Condition()

    async def start(self, port: int = 0) -> FakeOrchestrator:
        self.server = await serve(
            self._handler, "127.0.0.1", port, process_request=self._check_token
        )
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def _check_token(self, conn: ServerConnection, request: Request) -> Response | None:
        self.requests.append(request)
        if self.token is not None and request.headers.get("Authorization") != (
            f"Bearer {self.token}"
        ):
            return conn.respond(HTTPStatus.UNAUTHORIZED, "bad token\n")
        return None

    async def _handler(self, conn: ServerConnection) -> None:
        self.connections += 1
        number = self.connections
        self.conn = conn
        code: int | None = None
        try:
            while True:
                msg = decode(await conn.recv(), sender=Role.ROBOT)
                await self._note(self.received, (number, msg))
                if isinstance(msg, Register):
                    answer = self.on_register(msg, number)
                    replies = [answer] if isinstance(answer, Envelope) else list(answer)
                    for reply in replies:
                        await conn.send(encode(reply))
                    if any(_refusal(r) for r in replies):
                        await conn.close(CloseCode.POLICY_VIOLATION, "refused")
                elif isinstance(msg, Heartbeat) and self.ack_heartbeats:
                    await conn.send(encode(HeartbeatAck(seq=msg.seq, reply_to=msg.id)))
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
        await self._note(self.close_codes, code)
        await self._note(self.closed, number)

    async def _note(self, into: list[Any], item: Any) -> None:
        async with self._changed:
            into.append(item)
            self._changed.notify_all()

    def of(self, kind: type[M]) -> list[M]:
        """The messages of this type received on any connection, in order."""
        return [m for _, m in self.received if isinstance(m, kind)]

    def on(self, connection: int, kind: type[M]) -> list[M]:
        """The messages of this type received on connection ``connection``, in order."""
        return [m for n, m in self.received if n == connection and isinstance(m, kind)]

    def jobs_on(self, connection: int) -> list[Envelope]:
        """The job reports received on connection ``connection``, in order."""
        return [m for m in self.on(connection, Envelope) if is_buffered(m)]

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds (WAIT_S at most)."""
        async with asyncio.timeout(WAIT_S), self._changed:
            await self._changed.wait_for(predicate)

    async def wait_for(self, kind: type[M], count: int = 1) -> list[M]:
        """Wait for ``count`` messages of this type; all received so far."""
        await self.until(lambda: len(self.of(kind)) >= count)
        return self.of(kind)

    async def send(self, msg: Envelope | str) -> None:
        assert self.conn is not None
        await self.conn.send(msg if isinstance(msg, str) else encode(msg))

    async def drop(self) -> None:
        """Close the current connection as a restarting orchestrator would."""
        assert self.conn is not None
        await self.conn.close(CloseCode.GOING_AWAY, "orchestrator restarting")


def _refusal(msg: Envelope) -> bool:
    return (isinstance(msg, RegisterAck) and not msg.accepted) or (
        isinstance(msg, Error) and msg.fatal
    )
