"""A warm pool of kernels: no job waits for a kernel to start.

Each kernel is started and prepared (checkpoint hook loaded) before any job asks for it,
serves exactly one job, and is replaced in the background as soon as it is handed out; a
used kernel is shut down, never reused, so no job sees another job's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

from casare_nb.notebook import zygote as zygotes
from casare_nb.notebook.kernels import KernelSession


@dataclass
class PoolStats:
    """What the pool has done: kernels started, handed out warm or started cold."""

    started: int = 0
    warm: int = 0
    cold: int = 0
    discarded: int = 0  # warm kernels found dead when handed out
    failed: int = 0  # background starts that failed (the error is kept in last_error)


class KernelPool:
    """Pre-started kernels of one kernelspec, ``size`` of them ready at a time."""

    def __init__(
        self,
        kernel_name: str = "python3",
        *,
        size: int = 2,
        cwd: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60,
        zygote: bool | None = None,
        preload: list[str] | tuple[str, ...] = (),
    ) -> None:
        if size < 1:
            raise ValueError(f"a kernel pool needs a size of at least 1, got {size}")
        self.kernel_name = kernel_name
        self.size = size
        self.cwd = cwd
        self.startup_timeout = startup_timeout
        self.stats = PoolStats()
        self._ready: asyncio.Queue[KernelSession] = asyncio.Queue()
        self._starting: set[asyncio.Task[None]] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        self.last_error: BaseException | None = None
        # fork kernels from this process's zygote (default: CASARE_KERNEL_ZYGOTE, on)
        self.use_zygote = zygotes.enabled() if zygote is None else zygote
        self.preload = tuple(preload)
        self.zygote: zygotes.Zygote | None = None

    @property
    def ready(self) -> int:
        """Kernels started, prepared and waiting for a job."""
        return self._ready.qsize()

    async def start(self) -> KernelPool:
        """Fill the pool and wait until every kernel is ready."""
        if self.use_zygote and self.zygote is None:
            self.zygote = zygotes.shared_zygote(self.preload, start=True)
        for _ in range(self.size - self.ready - len(self._starting)):
            self._refill()
        await self.wait_full()
        return self

    async def wait_full(self) -> None:
        """Wait until the kernels being started are ready (for tests and start-up)."""
        while self._starting:
            await asyncio.gather(*list(self._starting), return_exceptions=True)

    async def acquire(self, kernel_name: str | None = None) -> KernelSession:
        """A ready kernel for one job; a replacement starts at once in the background.

        A job for another kernelspec gets a kernel started for it (counted as cold)."""
        if self._closed:
            raise RuntimeError("the kernel pool is closed")
        if kernel_name and kernel_name != self.kernel_name:
            self.stats.cold += 1
            return await self._new(kernel_name)
        while not self._ready.empty():
            session = self._ready.get_nowait()
            self._refill()
            if await session.is_alive():
                self.stats.warm += 1
                return session
            self.stats.discarded += 1
            self._shutdown_later(session)
        # more jobs at once than the pool holds: this one starts its own kernel
        self._refill()
        self.stats.cold += 1
        return await self._new(self.kernel_name)

    def release(self, session: KernelSession) -> None:
        """Give a kernel back after its job: it is shut down in the background."""
        self._shutdown_later(session)

    async def close(self) -> None:
        """Stop starting kernels and shut every kernel of the pool down."""
        self._closed = True
        for task in list(self._starting):
            task.cancel()
        await asyncio.gather(*list(self._starting), return_exceptions=True)
        while not self._ready.empty():
            self._shutdown_later(self._ready.get_nowait())
        await asyncio.gather(*list(self._closing), return_exceptions=True)

    async def _new(self, kernel_name: str) -> KernelSession:
        session = await KernelSession.start(
            kernel_name, cwd=self.cwd, startup_timeout=self.startup_timeout, zygote=self.zygote
        )
        self.stats.started += 1
        try:
            await session.preload()
        except BaseException:
            await session.shutdown()
            raise
        return session

    def _refill(self) -> None:
        if self._closed or self.ready + len(self._starting) >= self.size:
            return
        task = asyncio.ensure_future(self._start_one())
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _start_one(self) -> None:
        try:
            session = await self._new(self.kernel_name)
        except Exception as exc:  # a job asking then starts its own kernel and sees the error
            self.stats.failed += 1
            self.last_error = exc
            return
        if self._closed:
            await session.shutdown()
            return
        self._ready.put_nowait(session)

    def _shutdown_later(self, session: KernelSession) -> None:
        task = asyncio.ensure_future(session.shutdown())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def __aenter__(self) -> KernelPool:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.close()
