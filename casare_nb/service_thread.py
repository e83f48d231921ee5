"""An orchestrator service and local robots in a thread of their own.

For code that is synchronous or has its own event loop: the demo, a notebook, and tests that
drive the service with the synchronous :class:`~casare_nb.Client`. It stands above the
orchestrator, the robot and the client, which it puts together.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

from casare_nb.client import Client
from casare_nb.orchestrator.service import OrchestratorService
from casare_nb.robot.main import Enrolment, LocalRobot

__all__ = ["ServiceThread"]

_T = TypeVar("_T")


class ServiceThread:
    """An :class:`OrchestratorService` and local robots, run in a thread of their own.

    For code that is synchronous or has its own event loop (the demo, a notebook, tests
    using :class:`~casare_nb.Client`): ``start()`` returns once the service listens and
    every robot is online; ``stop()`` stops the robots, then the service. ``robots`` are
    factories such as :func:`~casare_nb.robot.main.local_robot`: each is given the
    orchestrator (to create its token) and makes a started
    :class:`~casare_nb.robot.main.LocalRobot` in the service's loop.
    """

    def __init__(
        self,
        service: OrchestratorService,
        *,
        robots: Sequence[Callable[[Enrolment], Coroutine[Any, Any, LocalRobot]]] = (),
    ) -> None:
        self.service = service
        self._robot_factories = list(robots)
        self.robots: list[LocalRobot] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._stop = asyncio.Event()  # bound to the service's loop on first use

    def start(self, timeout: float = 120.0) -> ServiceThread:
        """Start the thread, the service and the robots; re-raises what failed."""
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._main, args=(ready,), name="casare-orchestrator", daemon=True
        )
        self._thread.start()
        try:
            ready.result(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _main(self, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        finally:
            loop.close()
            self._stopped.set()

    async def _serve(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            await self.service.start()
            for factory in self._robot_factories:
                self.robots.append(await factory(self.service.orchestrator))
        except BaseException as exc:
            await self._shutdown()
            ready.set_exception(exc)
            return
        ready.set_result(None)
        await self._stop.wait()
        await self._shutdown()

    async def _shutdown(self) -> None:
        for robot in self.robots:
            with contextlib.suppress(Exception):
                await robot.stop(graceful=False)
        await self.service.stop()

    def call(self, make: Callable[[], Coroutine[Any, Any, _T]], timeout: float = 120.0) -> _T:
        """Run a coroutine in the service's loop and answer its result (blocking)."""
        if self._loop is None:
            raise RuntimeError("the service thread is not started")
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(timeout)

    def client(self, token: str | None = None) -> Client:
        """A :class:`~casare_nb.Client` of the service (its admin token by default)."""
        return Client(self.service.http_url, token or self.service.admin_token or "")

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the robots and the service, then the thread; idempotent."""
        loop, thread = self._loop, self._thread
        if thread is None:
            return
        if loop is not None and not self._stopped.is_set():
            with contextlib.suppress(RuntimeError):  # the loop already closed
                loop.call_soon_threadsafe(self._stop.set)
        thread.join(timeout)
        if thread.is_alive():
            print("casare-nb: the orchestrator thread did not stop in time", file=sys.stderr)
        self._thread = None

    def __enter__(self) -> ServiceThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
