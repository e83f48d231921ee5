"""The orchestrator as a service: WebSocket + HTTP API in one event loop, a runtime file,
graceful shutdown on SIGTERM.

- :class:`OrchestratorService` starts an :class:`~casare_nb.orchestrator.orchestrator.Orchestrator`
  and its :class:`~casare_nb.orchestrator.http.server.HttpServer`, creates a local admin token and
  writes ``<state_dir>/orchestrator.json`` (URLs, pid, that token; mode 0600), like Jupyter's
  ``jpserver-*.json``. Stopping revokes the token and removes the file.
- :func:`run_orchestrator` is ``casare-nb orchestrator``: it runs a service until SIGTERM or
  SIGINT, then drains (no new jobs, running ones get ``drain_timeout_s``, robots are shut
  down) and stops; a second signal stops at once. Exit code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import signal
import socket
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

from casare_nb import __version__
from casare_nb.api import (
    DEFAULT_HTTP_PORT,
    RUNTIME_FILE,
    DrainResult,
    RuntimeInfo,
    pid_alive,
    read_runtime_file,
    runtime_file_path,
)
from casare_nb.core.errors import CasareError, QueueError
from casare_nb.core.thresholds import Thresholds
from casare_nb.core.tokens import TokenRole
from casare_nb.notebook.state import private_dir
from casare_nb.orchestrator.http.limits import DEFAULT_MAX_BODY_BYTES
from casare_nb.orchestrator.http.server import HttpServer
from casare_nb.orchestrator.orchestrator import DEFAULT_HOST, DEFAULT_PORT, Orchestrator

__all__ = ["OrchestratorService", "ServiceError", "run_orchestrator"]

logger = logging.getLogger("casare_nb.orchestrator.service")

ADMIN_TOKEN_PREFIX: Final = "local-admin-"
"""Name prefix of the token a service creates for local tools (revoked when it stops)."""


class ServiceError(CasareError):
    """The service cannot start: address in use, another orchestrator on the state dir ..."""


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by the owner only (0600)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _answers(running: RuntimeInfo) -> bool:
    """Whether the orchestrator of a runtime file is alive: its process exists and its HTTP
    port accepts connections (a reused pid alone does not count)."""
    if not pid_alive(running.pid):
        return False
    parts = urlsplit(running.http_url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 2):
            return True
    except OSError:
        return False


def _bind_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE or "address already in use" in str(exc).lower():
        why = "address already in use (another orchestrator? pick --port/--http-port)"
    else:
        why = exc.strerror or " ".join(str(exc).split())
    return f"cannot listen on {host}:{port}: {why}"


class OrchestratorService:
    """An orchestrator with its HTTP API, one admin token and a runtime file.

    ``await start()`` / ``await stop()``, or ``async with``. ``port``/``http_port`` 0 pick
    free ports. ``workflows_dir`` (default: the working directory) is where relative
    workflow paths of the API resolve, and the only place workflows are taken from.
    ``tls_cert``/``tls_key`` serve ``wss://`` and ``https://``. ``thresholds`` (default: the
    runbook's table) are the health limits of ``GET /status``. Other keyword arguments go to
    :class:`~casare_nb.orchestrator.orchestrator.Orchestrator` (heartbeat interval ...).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        http_port: int = DEFAULT_HTTP_PORT,
        workflows_dir: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        write_runtime_file: bool = True,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        thresholds: Thresholds | None = None,
        **orchestrator_options: Any,
    ) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ServiceError("TLS needs both a certificate (--tls-cert) and a key (--tls-key)")
        self.state_dir = runtime_file_path(state_dir).parent
        self.workflows_dir = Path(workflows_dir or ".").absolute()
        self.host = host
        self.port = port
        self.http_port = http_port
        self.tls_cert = Path(tls_cert) if tls_cert else None
        self.tls_key = Path(tls_key) if tls_key else None
        self.write_runtime_file = write_runtime_file
        self.max_body_bytes = max_body_bytes
        self.runtime_file = self.state_dir / RUNTIME_FILE
        self.thresholds = thresholds or Thresholds()
        self._options = orchestrator_options
        self._orchestrator: Orchestrator | None = None
        self._http: HttpServer | None = None
        self.on_lead: Callable[[int], None] | None = None
        """Told its epoch when this node of a shared database starts leading."""
        self.admin_token: str | None = None
        self.admin_token_name: str | None = None

    def __repr__(self) -> str:
        return f"<OrchestratorService {self.state_dir}>"

    @property
    def orchestrator(self) -> Orchestrator:
        if self._orchestrator is None:
            raise RuntimeError("the service is not started")
        return self._orchestrator

    @property
    def ws_url(self) -> str:
        return self.orchestrator.url

    @property
    def http_url(self) -> str:
        if self._http is None:
            raise RuntimeError("the service is not started")
        return self._http.url

    async def start(self) -> OrchestratorService:
        """Check the state dir is free, start both servers, create the admin token, write
        the runtime file. A :class:`ServiceError` (one line) if any of it fails."""
        if self._orchestrator is not None:
            raise RuntimeError("the service is already started")
        if not self.workflows_dir.is_dir():
            raise ServiceError(f"workflows directory {self.workflows_dir} does not exist")
        orch = Orchestrator(
            self.state_dir,
            host=self.host,
            port=self.port,
            ssl_context=self._ssl_context(),
            workflows_dir=self.workflows_dir,
            thresholds=self.thresholds,
            **self._options,
        )
        self._orchestrator = orch
        orch.on_lead = self._leads
        running = read_runtime_file(self.runtime_file)
        if (
            orch.stores.shared is None  # nodes of a shared database may share a state dir
            and running is not None
            and running.pid != os.getpid()
            and _answers(running)
        ):
            self._orchestrator = None
            await orch.stop()
            raise ServiceError(
                f"an orchestrator already runs on {self.state_dir} (pid {running.pid}, "
                f"{running.http_url}); stop it or use another --state-dir"
            )
        try:
            private_dir(self.state_dir)
        except OSError as exc:
            self._orchestrator = None
            await orch.stop()
            raise ServiceError(f"cannot create state directory {self.state_dir}: {exc}") from None
        try:
            try:
                await orch.start()
            except OSError as exc:
                raise ServiceError(_bind_error(self.host, self.port, exc)) from None
            http = HttpServer(
                orch,
                workflows_dir=self.workflows_dir,
                host=self.host,
                port=self.http_port,
                ssl_certfile=self.tls_cert,
                ssl_keyfile=self.tls_key,
                max_body_bytes=self.max_body_bytes,
            )
            try:
                await http.start()
            except OSError as exc:
                raise ServiceError(_bind_error(self.host, self.http_port, exc)) from None
            self._http = http
            await asyncio.to_thread(self._create_admin_token)
            if self.write_runtime_file and (
                orch.stores.shared is None or running is None or not _answers(running)
            ):
                self._write_runtime_file()
        except BaseException:
            await self.stop()
            raise
        logger.info("orchestrator service up: %s, %s", orch.url, self.http_url)
        return self

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.tls_cert is None or self.tls_key is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ServiceError(f"cannot load TLS certificate {self.tls_cert}: {exc}") from None
        return context

    def _leads(self, epoch: int) -> None:
        """This node of a shared database leads now: the runtime file names it (the one a
        local client finds), and the leader says so."""
        if self.write_runtime_file and self.admin_token is not None:
            self._write_runtime_file()
        if self.on_lead is not None:
            self.on_lead(epoch)

    def _create_admin_token(self) -> None:
        orch = self.orchestrator
        # several nodes of a shared database: each its own (node id in the name)
        mine = ADMIN_TOKEN_PREFIX
        if orch.stores.shared is not None:
            mine = f"{ADMIN_TOKEN_PREFIX}{orch.role.node_id}-"
        for row in orch.stores.tokens.list_tokens():  # left behind by a service that was killed
            if row["name"].startswith(mine) and row["revoked_at"] is None:
                orch.revoke_token(row["name"])
        name = f"{mine}{os.getpid()}-{secrets.token_hex(3)}"
        self.admin_token = orch.create_token(name, TokenRole.ADMIN)
        self.admin_token_name = name

    def _write_runtime_file(self) -> None:
        assert self.admin_token is not None and self.admin_token_name is not None
        info = RuntimeInfo(
            pid=os.getpid(),
            version=__version__,
            ws_url=self.ws_url,
            http_url=self.http_url,
            token=self.admin_token,
            token_name=self.admin_token_name,
            state_dir=str(self.state_dir),
            workflows_dir=str(self.workflows_dir),
            started_at=datetime.now(UTC),
            tls_cert=str(self.tls_cert.absolute()) if self.tls_cert else None,
        )
        _write_private(self.runtime_file, info.model_dump_json(indent=1) + "\n")

    def _remove_runtime_file(self) -> None:
        current = read_runtime_file(self.runtime_file)
        if current is not None and current.token_name == self.admin_token_name:
            with contextlib.suppress(OSError):
                self.runtime_file.unlink()

    def give_up(self) -> None:
        """Stop waiting to lead (a shared store; any thread)."""
        if self._orchestrator is not None:
            self._orchestrator.role.give_up()

    async def drain(self, timeout_s: float = 60.0) -> DrainResult:
        """No new jobs; wait up to ``timeout_s`` for running ones; shut the robots down."""
        report = await self.orchestrator.drain(timeout_s, final=True)
        return report

    async def stop(self) -> None:
        """Remove the runtime file, revoke the admin token, stop both servers; idempotent."""
        orch, http = self._orchestrator, self._http
        if orch is None:
            return
        self._remove_runtime_file()
        if http is not None:
            await http.stop()
        if self.admin_token_name is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(orch.revoke_token, self.admin_token_name)
        await orch.stop()

    async def __aenter__(self) -> OrchestratorService:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def run_orchestrator(
    service: OrchestratorService,
    *,
    drain_timeout_s: float = 60.0,
    on_ready: Callable[[OrchestratorService], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> int:
    """Run ``service`` until SIGTERM/SIGINT; then drain (up to ``drain_timeout_s``) and stop.

    A second signal while draining stops at once. ``on_ready`` is called once both servers
    listen and the runtime file is written; ``say`` gets one line per shutdown step. On a
    store several orchestrators share, a signal hands over instead of draining: the service
    stops, its robots reconnect to the next orchestrator of their list with their jobs
    running (``casare-nb drain`` is how that fleet is stopped); a signal while starting stops
    the start. Answers the exit code (0).
    """
    tell = say or (lambda line: logger.info("%s", line))
    loop = asyncio.get_running_loop()
    signals = asyncio.Queue[int]()
    handled = (signal.SIGTERM, signal.SIGINT)
    for sig in handled:
        loop.add_signal_handler(sig, signals.put_nowait, int(sig))
    code = 0
    try:
        starting = asyncio.create_task(service.start())
        signalled = asyncio.create_task(signals.get())
        await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # a signal while starting
            tell("signal while starting: stopping")
            service.give_up()
            with contextlib.suppress(CasareError, QueueError):
                await starting
            tell("orchestrator stopped")
            return 0
        signalled.cancel()
        starting.result()
        if on_ready is not None:
            on_ready(service)
        first = await signals.get()
        if service.orchestrator.role.shared:
            tell(
                f"{signal.Signals(first).name}: handing over: the robots reconnect to another "
                "orchestrator and their jobs go on (casare-nb drain stops them)"
            )
        else:
            await _drain(service, first, drain_timeout_s, signals, tell)
    finally:
        await service.stop()
        for sig in handled:
            loop.remove_signal_handler(sig)
    tell("orchestrator stopped")
    return code


async def _drain(
    service: OrchestratorService,
    first: int,
    timeout_s: float,
    signals: asyncio.Queue[int],
    tell: Callable[[str], None],
) -> None:
    """Drain for up to ``timeout_s`` after the signal ``first``; a second signal cuts it."""
    tell(
        f"{signal.Signals(first).name}: draining for up to {timeout_s:g} s (again to stop at once)"
    )
    drain = asyncio.create_task(service.drain(timeout_s))
    second = asyncio.create_task(signals.get())
    await asyncio.wait({drain, second}, return_when=asyncio.FIRST_COMPLETED)
    second.cancel()
    if drain.done():
        report = drain.result()
        tell(
            f"drained: {len(report.finished_jobs)} jobs finished, "
            f"{len(report.unfinished_jobs)} unfinished, "
            f"{len(report.robots_shut_down)} robots shut down"
        )
    else:
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
        tell("second signal: stopping now")
