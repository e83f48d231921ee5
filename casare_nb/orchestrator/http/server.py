"""Serving the API with uvicorn in the orchestrator's event loop."""

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from casare_nb.api import DEFAULT_HTTP_PORT
from casare_nb.orchestrator.http.app import create_app
from casare_nb.orchestrator.http.limits import DEFAULT_MAX_BODY_BYTES
from casare_nb.orchestrator.orchestrator import DEFAULT_HOST, Orchestrator

__all__ = ["HttpServer"]

logger = logging.getLogger("casare_nb.orchestrator.http")


class _Uvicorn(uvicorn.Server):
    """uvicorn inside someone else's process: no signal handlers of its own (the caller
    owns SIGTERM/SIGINT), and an event set once it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.listening.set()


class HttpServer:
    """Serves :func:`create_app` over ``orch`` with uvicorn in the running event loop.

    ``await start()`` binds ``host:port`` (port 0 picks a free one) and answers the port;
    ``await stop()`` closes it. ``ssl_certfile``/``ssl_keyfile`` serve https.
    """

    def __init__(
        self,
        orch: Orchestrator,
        *,
        workflows_dir: str | Path = ".",
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_HTTP_PORT,
        ssl_certfile: str | Path | None = None,
        ssl_keyfile: str | Path | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.app = create_app(orch, workflows_dir=workflows_dir, max_body_bytes=max_body_bytes)
        self.host = host
        self.port = port
        self.tls = ssl_certfile is not None
        self._config = uvicorn.Config(
            self.app,
            host=host,
            port=port,
            lifespan="off",
            ws="none",
            log_config=None,  # the process's logging applies (uvicorn's own: warnings only)
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=5,
            ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
            ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
        )
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        """The base URL (the bound port once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    async def start(self) -> int:
        """Bind and start serving; the bound port. OSError if the address is taken."""
        if self._task is not None:
            raise RuntimeError("the HTTP server is already started")
        sock = _listening_socket(self.host, self.port)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        server = _Uvicorn(self._config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="orchestrator-http")
        listening = asyncio.create_task(server.listening.wait())
        await asyncio.wait({self._task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if not listening.done():
            listening.cancel()
            self._task.result()  # raises what stopped it
            raise RuntimeError("the HTTP server stopped while starting")
        logger.info("HTTP API listening on %s", self.url)
        return self.port

    async def stop(self) -> None:
        """Stop serving (open requests get a few seconds to end); idempotent."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._task = None
        if self._socket is not None:
            self._socket.close()
        logger.info("HTTP API on %s stopped", self.url)


def _listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket made with ``proto=IPPROTO_TCP``: asyncio turns Nagle off
    (TCP_NODELAY) only on connections whose socket says so, and ``socket.create_server``
    says proto 0. With Nagle on, every keep-alive request waited ~40 ms for the client's
    delayed ACK between the response's headers and body."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
