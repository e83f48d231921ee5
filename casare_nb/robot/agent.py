"""The robot agent: connect to the orchestrator, register, heartbeat, obey control messages,
reconnect. The wire format is :mod:`casare_nb.protocol`; this module owns the socket.

:meth:`RobotAgent.run` holds the link until the orchestrator sends ``shutdown`` (it returns),
:meth:`RobotAgent.stop` is called (it returns), or a refusal makes retrying pointless (it
raises an :class:`AgentError`, one line). The link:

- **Connect** to ``connection.orchestrator_url`` (several: see
  :class:`~casare_nb.robot.backoff.Addresses`) with ``Authorization: Bearer <token>``. HTTP
  401/403 is fatal (:class:`Unauthorized`): a wrong token does not get right by retrying.
- **Register** and wait for ``register_ack``. A protocol version refusal is fatal
  (:class:`RegistrationRefused`); a refusal saying the robot id is already connected/taken is
  retried with backoff, because the orchestrator may not yet have noticed that this robot's
  previous connection died; any other ``accepted: false`` is fatal. See
  :func:`refusal_is_retryable`.
- **Serve**: a heartbeat every ``heartbeat_interval_s`` (the ack's value; the config's if the
  ack leaves it out), seq 0, 1, 2 ... on each connection, the first one at once; and a receive
  loop for the orchestrator's messages. No ``heartbeat_ack`` for :data:`MISSED_ACKS` intervals
  means a dead link: reconnect.
- **Reconnect** after a drop or a failed attempt (refused, DNS, timeout, HTTP 5xx, a fatal
  ``error`` that is not about the token or version), after :meth:`Backoff.next`; the backoff
  resets once a registration is accepted.

Pause (``pause`` / ``unpause``): the robot takes no new jobs (``job_assign`` is rejected)
and says ``draining`` in its heartbeats, the wire status meaning "takes no new jobs";
``status_response`` says ``paused: true`` as well. The pause outlives a reconnect: it is the
operator's instruction, and every heartbeat repeats it.

Jobs are not run here. A :class:`JobRunner` receives the job messages; the default
:class:`RejectingRunner` answers every ``job_assign`` with ``job_reject`` so the orchestrator
requeues the job at once instead of waiting for a timeout.

**Offline buffer.** What the runner reports about its jobs goes through the agent's
:class:`~casare_nb.robot.outbox.Outbox`: never lost to a link that is down, delivered at
least once, in order (see :mod:`casare_nb.robot.outbox`).

**Reconnecting.** ``register`` carries ``holding``: the jobs the runner still holds plus the jobs
with messages in the outbox (e.g. one that finished while offline). ``register_ack``'s
``continue_jobs`` names those the orchestrator still considers this robot's: their buffered
messages are sent first, before anything new. Every other job of ``holding`` was given to
someone else: its buffered messages are dropped, later ones about it too, and
:meth:`JobRunner.abandon` stops it. An ack without ``continue_jobs`` abandons them all.
"""

from __future__ import annotations

import asyncio
import logging
import math
import platform
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol, TypeVar

import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException
from websockets.frames import CloseCode

from casare_nb import __version__
from casare_nb.core.errors import CasareError, one_line
from casare_nb.core.tls import unverified_certificate
from casare_nb.protocol import (
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    BlobAck,
    BlobPut,
    Capabilities,
    CheckpointStored,
    CheckpointWant,
    Envelope,
    Error,
    ErrorCode,
    Heartbeat,
    HeartbeatAck,
    JobAssign,
    JobCancel,
    JobRef,
    JobReject,
    Message,
    Pause,
    ProtocolError,
    Register,
    RegisterAck,
    RobotState,
    Role,
    Shutdown,
    StatusRequest,
    StatusResponse,
    Unpause,
    decode,
    encode,
)
from casare_nb.robot.backoff import Addresses, Backoff
from casare_nb.robot.config import ConfigError, RobotConfig
from casare_nb.robot.outbox import DEFAULT_BUFFER_BYTES, Outbox, is_buffered

__all__ = [
    "KERNELS",
    "MISSED_ACKS",
    "AgentError",
    "AgentStatus",
    "JobRunner",
    "RegistrationRefused",
    "RejectingRunner",
    "RobotAgent",
    "Unauthorized",
    "host_metrics",
    "refusal_is_retryable",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

AgentStatus = Literal["connecting", "online", "paused", "draining", "stopped"]
"""What the agent is doing: ``draining`` is a graceful shutdown waiting for its jobs."""
Send = Callable[[Envelope], Awaitable[None]]
"""Sends one message to the orchestrator on the current connection."""
Metrics = Callable[[], tuple[float, float]]
"""Returns (cpu percent, memory percent) of the host."""
Sleep = Callable[[float], Awaitable[None]]

KERNELS: tuple[str, ...] = ("python3",)
"""Kernel names a robot announces in its capabilities."""
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0  # stop() and reconnects wait at most this long for a hung peer's close
REGISTER_TIMEOUT_S = 10.0
MISSED_ACKS = 3
"""Heartbeat intervals without a heartbeat_ack after which the link counts as dead."""
DROP_WARNING_EVERY_S = 60.0
"""At most one warning this often about messages the full outbox dropped (counts are summed)."""

_JOB_MESSAGES = (JobAssign, JobCancel, CheckpointWant, CheckpointStored, BlobPut, BlobAck)
_FATAL_CODES = frozenset({ErrorCode.UNSUPPORTED_VERSION, ErrorCode.UNAUTHORIZED})
_VERSION_REFUSAL = re.compile(r"\bversion\b", re.IGNORECASE)
_ID_TAKEN = re.compile(
    r"duplicate|already (connected|registered|online)|\btaken\b|\bin use\b", re.IGNORECASE
)


# --------------------------------------------------------------------------- errors


class AgentError(CasareError):
    """The agent stopped for good: retrying would not help. ``str(err)`` is one line."""


class Unauthorized(AgentError):
    """The orchestrator refused the robot's token (HTTP 401 or 403)."""


class CertificateUnverified(AgentError):
    """The orchestrator's TLS certificate failed verification (unknown CA, wrong host name):
    not transient, so the robot stops instead of retrying."""


_CA_HINT = (
    "give the CA certificate that signed it with --ca-file, connection.ca_file or CASARE_CA_FILE"
)


class RegistrationRefused(AgentError):
    """The orchestrator refused to register the robot (e.g. a protocol version it lacks)."""


class _Retry(Exception):
    """This connection failed or ended: try again after a backoff delay."""


class _Stopped(Exception):
    """stop() was called."""


def refusal_is_retryable(reason: str, code: ErrorCode | None = None) -> bool:
    """Whether registering again later can succeed after the orchestrator refused this robot.

    ``code`` is the :class:`~casare_nb.protocol.Error` code, None for a ``register_ack`` with
    ``accepted: false``. A protocol version refusal: no. The robot id held by another
    connection (a reason saying duplicate, already connected/registered/online, taken, in
    use): yes, that connection is likely this robot's own, dead but not yet timed out. Any
    other ``accepted: false`` or ``unauthorized``: no. Other error codes (``internal``...):
    yes, a glitch of this connection.
    """
    if code is ErrorCode.UNSUPPORTED_VERSION or _VERSION_REFUSAL.search(reason):
        return False
    if code is ErrorCode.DUPLICATE or _ID_TAKEN.search(reason):
        return True
    return code is not None and code not in _FATAL_CODES


# --------------------------------------------------------------------------- jobs


class JobRunner(Protocol):
    """Runs the jobs the orchestrator assigns. The agent owns the link; the runner the jobs."""

    def running_jobs(self) -> list[JobRef]:
        """The jobs it holds now (heartbeats, status_response, register's holding)."""
        ...

    async def handle(self, msg: Envelope, send: Send) -> None:
        """One job message (job_assign, job_cancel, checkpoint_want, checkpoint_stored,
        blob_put, blob_ack). Must return promptly: run the job in a task of its own.
        ``job_assign`` arrives only when the robot is online, not paused and has a free slot.

        ``send`` stays usable after the link drops. Job reports (job_accept, job_progress,
        job_complete, job_failed, job_cancelled, checkpoint_offer, blob_put, log_batch with a
        job_id) are queued in the agent's outbox and delivered in order, after a reconnect if
        need be: ``send`` returns at once and does not fail for a link that is down. Anything
        else (job_reject, error) is sent now and raises ``ConnectionError`` or
        ``ConnectionClosed`` if the link is down. A frame too large raises ``ProtocolError``.
        """
        ...

    async def abandon(self, ref: JobRef) -> None:
        """Stop this attempt now without reporting: the orchestrator gave it to someone else.

        Called after a reconnect for each job of ``register.holding`` that the
        ``register_ack``'s ``continue_jobs`` leaves out; for a job it no longer holds
        (finished while offline) there is nothing to do. The agent calls it in a task of its
        own and serves meanwhile, so it may wait for the job to stop. Whatever the runner
        still sends about ``ref`` is dropped by the agent.
        """
        ...

    async def drain(self) -> None:
        """Return once every running job has ended (graceful shutdown)."""
        ...

    async def cancel_all(self) -> None:
        """Stop every running job now (shutdown that is not graceful)."""
        ...


class RejectingRunner:
    """A runner that holds no jobs: rejects every job_assign, so the orchestrator requeues it."""

    reason = "this robot does not run jobs yet"

    def running_jobs(self) -> list[JobRef]:
        return []

    async def handle(self, msg: Envelope, send: Send) -> None:
        if isinstance(msg, JobAssign):
            await send(
                JobReject(
                    job_id=msg.job_id, attempt=msg.attempt, reason=self.reason, reply_to=msg.id
                )
            )
        elif isinstance(msg, JobCancel):
            text = f"robot does not hold job {msg.job_id} attempt {msg.attempt}"
            await send(Error(code=ErrorCode.UNKNOWN_JOB, message=text, reply_to=msg.id))
        else:
            log.debug("no job to take %s; ignored", msg.type)

    async def abandon(self, ref: JobRef) -> None:
        return None

    async def drain(self) -> None:
        return None

    async def cancel_all(self) -> None:
        return None


# --------------------------------------------------------------------------- metrics


def host_metrics() -> tuple[float, float]:
    """CPU use since the previous call and memory use of the host, in percent (psutil)."""
    return psutil.cpu_percent(interval=None), psutil.virtual_memory().percent


def _percent(value: float, upper: float | None) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        return 0.0
    return value if upper is None else min(value, upper)


# --------------------------------------------------------------------------- the agent


class RobotAgent:
    """A robot's link to its orchestrator. ``await run()`` until shutdown; ``stop()`` ends it.

    ``clock`` (monotonic seconds) and ``sleep`` pace heartbeats, backoff and the dead-link
    check; tests inject both. ``metrics`` replaces psutil; with
    ``observability.resource_monitoring_enabled`` false nothing is measured and heartbeats
    carry 0. ``backoff`` defaults to :class:`Backoff` capped at
    ``connection.reconnect_max_backoff_s``. ``buffer_max_bytes`` caps the :class:`Outbox`
    holding job reports until they are delivered (see the module docstring).
    """

    def __init__(
        self,
        config: RobotConfig,
        *,
        runner: JobRunner | None = None,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        metrics: Metrics | None = None,
        buffer_max_bytes: int = DEFAULT_BUFFER_BYTES,
    ) -> None:
        self.config = config
        self.robot_id = config.robot.robot_id
        self.runner: JobRunner = runner if runner is not None else RejectingRunner()
        cap = config.connection.reconnect_max_backoff_s
        self.backoff = backoff if backoff is not None else Backoff(base_s=min(0.5, cap), cap_s=cap)
        self._clock = clock
        self._sleep = sleep
        self._metrics: Metrics | None = None
        if config.observability.resource_monitoring_enabled:
            self._metrics = metrics if metrics is not None else host_metrics
        self.connected = asyncio.Event()
        """Set while registered with the orchestrator."""
        self.registrations = 0
        self.addresses = Addresses(config.connection.orchestrator_urls())
        """Accepted registrations since the agent was made (1 + reconnects)."""
        self.last_error: str | None = None
        """The last reason the link failed or the agent stopped, one line."""
        self.paused = False
        self.shutdown_reason: str | None = None
        self.heartbeat_interval_s = config.connection.heartbeat_interval_s
        """The interval in use: the last register_ack's, else the config's."""
        self._running = False
        self._draining = False
        self._stop = asyncio.Event()
        self._ws: ClientConnection | None = None
        self._ssl_options: dict[str, Any] = {}  # connect's ssl= (connection.ca_file)
        self._last_ack_at = 0.0
        self.outbox = Outbox(buffer_max_bytes)
        """Job reports on their way to the orchestrator (kept while the link is down)."""
        self._outbox_ready = asyncio.Event()  # set: something is pending
        self._outbox_idle = asyncio.Event()  # set: nothing pending or in flight
        self._outbox_idle.set()
        self._beat_seq = 0  # the seq of the next heartbeat on this connection
        self._drops: Counter[str] = Counter()  # dropped, not yet warned about
        self._drops_warned_at: float | None = None
        self._abandoning: set[asyncio.Task[None]] = set()

    # -- observable state ------------------------------------------------------------------

    @property
    def status(self) -> AgentStatus:
        """connecting, online, paused, draining (graceful shutdown) or stopped."""
        if not self._running:
            return "stopped"
        if not self.connected.is_set():
            return "connecting"
        if self._draining:
            return "draining"
        return "paused" if self.paused else "online"

    @property
    def wire_status(self) -> RobotState:
        """The status heartbeats report: draining (paused or shutting down), busy or online."""
        if self.paused or self._draining:
            return "draining"
        if len(self.runner.running_jobs()) >= self.config.robot.max_concurrent_jobs:
            return "busy"
        return "online"

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Hold the link until ``shutdown`` or :meth:`stop`; reconnect after any drop.

        Raises :class:`~casare_nb.robot.config.ConfigError` without a token (nothing is
        connected), :class:`Unauthorized` on HTTP 401/403, :class:`RegistrationRefused` or
        :class:`AgentError` when the orchestrator refuses the robot for good.
        """
        if self._running:
            raise RuntimeError(f"robot agent {self.robot_id} is already running")
        token = self._token()
        self._ssl_options = (
            {} if (context := self.config.ssl_context()) is None else {"ssl": context}
        )
        self._running = True
        self._draining = False
        self.shutdown_reason = None
        if self._metrics is host_metrics:
            psutil.cpu_percent(interval=None)  # the first reading only starts the measurement
        try:
            while not self._stop.is_set():
                try:
                    await self._until_stopped(self._session(token))
                    return
                except _Retry as exc:
                    self.last_error = str(exc)
                    if not self.addresses.failed():  # the next orchestrator of the list, now
                        log.warning("%s; trying %s", exc, self.addresses.current)
                        continue
                    delay = self.backoff.next()
                    log.warning("%s; reconnecting in %.1f s", exc, delay)
                    await self._until_stopped(self._sleep(delay))
        except _Stopped:
            log.info("robot %s stopped", self.robot_id)
        except AgentError as exc:
            self.last_error = str(exc)
            log.error("%s", exc)
            raise
        finally:
            self._running = False
            self._stop.clear()
            self.connected.clear()

    def stop(self) -> None:
        """End :meth:`run` promptly; callable from another task. The link closes with 1001.

        Called while ``run()`` is not running, the next ``run()`` returns at once.
        """
        self._stop.set()

    async def _until_stopped(self, step: Awaitable[_T]) -> _T:
        """Await ``step``; if :meth:`stop` comes first, cancel it, let it clean up, raise."""
        task = asyncio.ensure_future(step)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})  # the session closes its connection
        if self._stop.is_set() and (task.cancelled() or task.exception() is not None):
            raise _Stopped
        return task.result()

    def _token(self) -> str:
        token = self.config.token_value()
        if not token:
            raise ConfigError(
                "no orchestrator token: set connection.token or connection.token_file "
                "in the robot config, or CASARE_TOKEN"
            )
        return token

    # -- one connection ------------------------------------------------------------------

    async def _session(self, token: str) -> None:
        """Connect, register, serve. Returns after a shutdown; raises _Retry on a drop."""
        ws = await self._connect(token)
        close: tuple[int, str] = (CloseCode.GOING_AWAY, "robot reconnecting")
        try:
            await self._register(ws)
            await self._serve(ws)
            close = (CloseCode.NORMAL_CLOSURE, "robot shut down")
        except asyncio.CancelledError:
            close = (CloseCode.GOING_AWAY, "robot stopping")
            raise
        except AgentError:
            close = (CloseCode.NORMAL_CLOSURE, "robot stopping")
            raise
        except ConnectionClosed as exc:
            raise _Retry(_closed_message(exc)) from None
        except ProtocolError as exc:  # encode refused a frame
            raise _Retry(f"cannot send to the orchestrator: {exc}") from None
        finally:
            self._ws = None
            self.connected.clear()
            self.outbox.rewind()
            await ws.close(*close)

    async def _connect(self, token: str) -> ClientConnection:
        url = self.addresses.current
        try:
            return await connect(
                url,
                additional_headers={"Authorization": f"Bearer {token}"},
                max_size=MAX_FRAME_BYTES,
                open_timeout=OPEN_TIMEOUT_S,
                close_timeout=CLOSE_TIMEOUT_S,
                user_agent_header=f"casare-nb-robot/{__version__}",
                **self._ssl_options,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise Unauthorized(
                    f"the orchestrator at {url} refused the robot's token (HTTP {status}): "
                    "check connection.token, connection.token_file or CASARE_TOKEN"
                ) from None
            raise _Retry(f"the orchestrator at {url} answered HTTP {status}") from None
        except InvalidURI as exc:
            raise AgentError(f"connection.orchestrator_url is not usable: {exc}") from None
        except (OSError, WebSocketException) as exc:  # refused, DNS, timeout, bad handshake
            unverified = unverified_certificate(exc, url, _CA_HINT)
            if unverified is not None:  # not transient: stop, do not retry forever
                raise CertificateUnverified(unverified) from None
            raise _Retry(f"cannot reach the orchestrator at {url}: {one_line(exc)}") from None

    def _register_message(self) -> Register:
        robot = self.config.robot
        return Register(
            robot_id=robot.robot_id,
            name=robot.robot_name or robot.robot_id,
            environment=robot.environment,
            tags=list(robot.tags),
            max_concurrent_jobs=robot.max_concurrent_jobs,
            protocol_version=PROTOCOL_VERSION,
            capabilities=Capabilities(
                kernels=list(KERNELS),
                python=platform.python_version(),
                casare_version=__version__,
                checkpoints=self.config.job_execution.checkpoint_enabled,
            ),
            holding=self._holding(),
        )

    def _holding(self) -> list[JobRef]:
        """The jobs the runner holds, then those with reports in the outbox."""
        refs = dict.fromkeys(self.runner.running_jobs())
        refs.update(dict.fromkeys(self.outbox.jobs()))
        return list(refs)

    async def _register(self, ws: ClientConnection) -> None:
        register = self._register_message()
        await ws.send(encode(register))
        try:
            async with asyncio.timeout(REGISTER_TIMEOUT_S):
                while True:
                    msg = _decode(await ws.recv())
                    if isinstance(msg, RegisterAck):
                        break
                    if isinstance(msg, Error):
                        raise self._refused(msg.message, msg.code)
                    log.debug("ignoring %s before register_ack", msg.type)
        except TimeoutError:
            raise _Retry(f"no register_ack within {REGISTER_TIMEOUT_S:.0f} s") from None
        except ProtocolError as exc:
            raise _Retry(f"the orchestrator sent an invalid register_ack: {exc}") from None
        if not msg.accepted:
            raise self._refused(msg.reason or "no reason given", None)
        self.registrations += 1
        self.addresses.registered()
        self.backoff.reset()
        if "heartbeat_interval_s" in msg.model_fields_set:
            self.heartbeat_interval_s = msg.heartbeat_interval_s
        else:
            self.heartbeat_interval_s = self.config.connection.heartbeat_interval_s
        self._last_ack_at = self._clock()
        log.info(
            "robot %s registered with %s (heartbeat every %.1f s)",
            self.robot_id,
            self.addresses.current,
            self.heartbeat_interval_s,
        )
        await self._take_back(register.holding, msg.continue_jobs)
        self._ws = ws
        self.connected.set()

    async def _take_back(self, held: list[JobRef], current: list[JobRef]) -> None:
        """Keep the reports of the jobs the orchestrator continues; abandon the others."""
        self._warn_drops(force=True)
        keep = [ref for ref in held if ref in current]
        abandon = [ref for ref in held if ref not in current]
        dropped = self.outbox.keep_jobs(keep, abandon)
        if keep:
            log.info("continuing %s; %d messages to deliver", _refs(keep), len(self.outbox))
        if abandon:
            log.warning(
                "the orchestrator gave %s to others: abandoned, %d buffered messages dropped",
                _refs(abandon),
                dropped,
            )
            # in a task of its own: stopping a kernel must not hold up the heartbeats
            task = asyncio.create_task(self._abandon(abandon), name="robot-abandon-jobs")
            self._abandoning.add(task)
            task.add_done_callback(self._abandoning.discard)

    async def _abandon(self, refs: list[JobRef]) -> None:
        async def one(ref: JobRef) -> None:
            try:
                await self.runner.abandon(ref)
            except Exception:
                log.exception("the runner failed to abandon job %s", ref.job_id)

        await asyncio.gather(*(one(ref) for ref in refs))

    def _refused(self, reason: str, code: ErrorCode | None) -> Exception:
        text = f"the orchestrator refused to register robot {self.robot_id}: {reason}"
        if refusal_is_retryable(reason, code):
            return _Retry(text)
        return RegistrationRefused(text)

    async def _serve(self, ws: ClientConnection) -> None:
        self._beat_seq = 0
        receiving = asyncio.create_task(self._receive_loop(ws))
        beating = asyncio.create_task(self._heartbeat_loop())
        sending = asyncio.create_task(self._outbox_loop(ws))
        tasks = {receiving, beating, sending}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
        if receiving in done:
            receiving.result()  # None after a shutdown, else raises
            return
        (sending if sending in done else beating).result()  # raises: they never end otherwise

    async def _heartbeat_loop(self) -> None:
        interval = self.heartbeat_interval_s
        while True:
            silent = self._clock() - self._last_ack_at
            if silent > MISSED_ACKS * interval:
                raise _Retry(f"no heartbeat_ack from the orchestrator for {silent:.0f} s")
            seq = self._beat_seq
            self._beat_seq += 1
            await self._send(self._heartbeat(seq))
            await self._sleep(interval)

    async def _outbox_loop(self, ws: ClientConnection) -> None:
        """Write the outbox in order, one message at a time, the only writer of job reports;
        raises ConnectionClosed when the link fails (the message stays first in line)."""
        while True:
            entry = self.outbox.take()
            if entry is None:
                self._outbox_ready.clear()
                self._outbox_idle.set()
                await self._outbox_ready.wait()
                continue
            written = False
            try:
                await ws.send(entry.frame)
                written = True
            finally:
                if written:  # a heartbeat started from now on is read after it
                    self.outbox.written(entry, self._beat_seq)
                else:  # failed or cancelled: it may or may not have left; resent either way
                    self.outbox.unwritten(entry)

    async def _send_for_runner(self, msg: Envelope) -> None:
        """The runner's ``send``: job reports go to the outbox, the rest is sent now."""
        if not is_buffered(msg):
            await self._send(msg)
            return
        dropped = self.outbox.put(msg)
        if dropped:
            self._drops.update(dropped)
            self._warn_drops()
        if len(self.outbox):
            self._outbox_idle.clear()
            self._outbox_ready.set()

    def _warn_drops(self, *, force: bool = False) -> None:
        """Warn about the messages the full outbox dropped: at once, then at most once every
        DROP_WARNING_EVERY_S with the counts summed (and at the next registration)."""
        if not self._drops:
            return
        now = self._clock()
        last = self._drops_warned_at
        if not force and last is not None and now - last < DROP_WARNING_EVERY_S:
            return
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(self._drops.items()))
        log.warning(
            "offline buffer full (%d bytes): dropped the oldest %s; final results are kept",
            self.outbox.max_bytes,
            counts,
        )
        self._drops.clear()
        self._drops_warned_at = now

    def _heartbeat(self, seq: int) -> Heartbeat:
        load = self._read_metrics()
        return Heartbeat(
            robot_id=self.robot_id,
            status=self.wire_status,
            running_jobs=self.runner.running_jobs(),
            seq=seq,
            cpu_percent=_percent(load[0], None) if load else 0.0,
            memory_percent=_percent(load[1], 100.0) if load else 0.0,
        )

    def _read_metrics(self) -> tuple[float, float] | None:
        if self._metrics is None:
            return None
        try:
            return self._metrics()
        except Exception as exc:
            log.warning("cannot measure cpu/memory: %s", one_line(exc))
            return None

    async def _receive_loop(self, ws: ClientConnection) -> None:
        """Handle the orchestrator's messages; returns after a shutdown, raises on a drop."""
        while True:
            frame = await ws.recv()  # raises ConnectionClosed
            try:
                msg = _decode(frame)
            except ProtocolError as exc:
                log.warning("refused a message from the orchestrator: %s", exc)
                await self._send(exc.to_message())
                continue
            if await self._handle(msg):
                return

    async def _handle(self, msg: Message) -> bool:
        """Act on one message; True ends the session (shutdown)."""
        if isinstance(msg, HeartbeatAck):
            self._last_ack_at = self._clock()
            if msg.seq < self._beat_seq:
                self.outbox.confirm(msg.seq)
        elif isinstance(msg, StatusRequest):
            await self._send(self._status_response(reply_to=msg.id))
        elif isinstance(msg, Pause):
            log.info("paused by the orchestrator%s", f": {msg.reason}" if msg.reason else "")
            self.paused = True
        elif isinstance(msg, Unpause):
            log.info("unpaused by the orchestrator")
            self.paused = False
        elif isinstance(msg, Shutdown):
            await self._shut_down(msg)
            return True
        elif isinstance(msg, Error):
            self._on_error(msg)
        elif isinstance(msg, JobAssign) and (refusal := self._job_refusal()):
            await self._send(
                JobReject(job_id=msg.job_id, attempt=msg.attempt, reason=refusal, reply_to=msg.id)
            )
        elif isinstance(msg, _JOB_MESSAGES):
            await self.runner.handle(msg, self._send_for_runner)
        else:
            log.debug("ignoring %s from the orchestrator", msg.type)
        return False

    def _job_refusal(self) -> str | None:
        if self._draining:
            return "robot is shutting down"
        if self.paused:
            return "robot is paused"
        if len(self.runner.running_jobs()) >= self.config.robot.max_concurrent_jobs:
            return "robot is at capacity"
        return None

    def _status_response(self, reply_to: str) -> StatusResponse:
        return StatusResponse(
            robot_id=self.robot_id,
            status=self.wire_status,
            paused=self.paused,
            running_jobs=self.runner.running_jobs(),
            reply_to=reply_to,
        )

    async def _shut_down(self, msg: Shutdown) -> None:
        self._draining = True
        self.shutdown_reason = msg.reason
        how = "after its jobs end" if msg.graceful else "now"
        log.info("orchestrator asked the robot to shut down %s%s", how, _colon(msg.reason))
        if msg.graceful:
            await self.runner.drain()
        else:
            await self.runner.cancel_all()
        await self._outbox_idle.wait()  # the jobs' last reports go out before the link closes

    def _on_error(self, msg: Error) -> None:
        text = f"the orchestrator reported {msg.code.value}: {msg.message}"
        if not msg.fatal:
            log.warning("%s", text)
            return
        if msg.code in _FATAL_CODES and not refusal_is_retryable(msg.message, msg.code):
            raise AgentError(text)
        raise _Retry(text)

    async def _send(self, msg: Envelope) -> None:
        ws = self._ws
        if ws is None:
            raise ConnectionError("not connected to the orchestrator")
        await ws.send(encode(msg))


# --------------------------------------------------------------------------- helpers


def _decode(frame: str | bytes) -> Message:
    return decode(frame, max_bytes=MAX_FRAME_BYTES, sender=Role.ORCHESTRATOR)


def _closed_message(exc: ConnectionClosed) -> str:
    if exc.rcvd is None:
        return "the connection to the orchestrator was lost"
    code, reason = exc.rcvd.code, exc.rcvd.reason
    return f"the orchestrator closed the connection (code {code}{_colon(reason)})"


def _refs(refs: list[JobRef]) -> str:
    return ", ".join(f"{ref.job_id} attempt {ref.attempt}" for ref in refs)


def _colon(text: str | None) -> str:
    return f": {text}" if text else ""
