"""Kernels forked from a zygote instead of started cold.

A :class:`Zygote` is a process (``casare_nb.notebook.zygote_main``) that imported ipykernel
once and forks a fresh kernel per request; :class:`ZygoteProvisioner` is the jupyter_client
provisioner that asks it instead of ``Popen``. A forked kernel is a process of its own that no
job has touched, with the same command line, environment, working directory and process
group as a started one; only its imports are shared (copy-on-write).

The zygote serves kernels whose command is ``<this python> -m ipykernel_launcher ...``, the
default ``python3`` kernelspec; any other kernelspec, or a zygote that failed to start, gets
a cold start as before. One zygote serves a process (:func:`shared_zygote`), started by the
robot's kernel pool; ``CASARE_KERNEL_ZYGOTE=0`` turns it off.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.local_provisioner import LocalProvisioner

log = logging.getLogger(__name__)


class ZygoteError(RuntimeError):
    """The zygote could not start or fork a kernel."""


class ForkedKernel:
    """A kernel process forked by the zygote, with the part of ``Popen``'s interface that
    jupyter_client and our shutdown use. Its exit status comes from the zygote, its parent."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._ended = threading.Event()

    def _exited(self, status: int) -> None:
        if self.returncode is None:
            self.returncode = status
        self._ended.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class Zygote:
    """One zygote process and the kernels it forked; safe to use from any thread or loop."""

    def __init__(self, preload: Sequence[str] = (), *, python: str = sys.executable) -> None:
        self.python = python
        self.preload = [m for m in preload if m]
        self.pid: int | None = None
        self.errors: dict[str, str] = {}  # preloads that failed to import
        self.forked = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._next = 0
        self._pending: dict[int, concurrent.futures.Future[ForkedKernel]] = {}
        self._kernels: dict[int, ForkedKernel] = {}
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._closed = False

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> Zygote:
        """Start the process (returns at once; :meth:`wait_ready` waits for its imports)."""
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                [
                    self.python,
                    "-m",
                    "casare_nb.notebook.zygote_main",
                    str(theirs.fileno()),
                    *self.preload,
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            ours.close()
            error = ZygoteError(f"the kernel zygote did not start: {exc}")
            self._ready.set_exception(error)
            raise error from exc
        finally:
            theirs.close()
        self._sock = ours
        threading.Thread(target=self._read, name="casare-zygote", daemon=True).start()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the zygote imported what it preloads; raises :class:`ZygoteError`."""
        try:
            self._ready.result(timeout)
        except concurrent.futures.TimeoutError:
            raise ZygoteError(f"the kernel zygote was not ready within {timeout:g} s") from None

    @property
    def alive(self) -> bool:
        return not self._closed and self._process is not None and self._process.poll() is None

    @property
    def ready(self) -> bool:
        return self._ready.done() and self._ready.exception() is None and self.alive

    def close(self) -> None:
        """Stop the zygote; the kernels it forked are killed with it."""
        self._closed = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        if self._process is not None:
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._fail_all(ZygoteError("the kernel zygote was closed"))

    # -- forking -----------------------------------------------------------------------------

    def serves(self, argv: Sequence[str]) -> bool:
        """Whether ``argv`` is a kernel this zygote can fork: this Python's ipykernel."""
        if len(argv) < 3 or list(argv[1:3]) != ["-m", "ipykernel_launcher"]:
            return False
        exe = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0])
        return exe is not None and os.path.abspath(exe) == os.path.abspath(self.python)

    def spawn(
        self, argv: Sequence[str], env: dict[str, str] | None, cwd: str | None
    ) -> concurrent.futures.Future[ForkedKernel]:
        """Ask for a kernel with this command line, environment and working directory."""
        future: concurrent.futures.Future[ForkedKernel] = concurrent.futures.Future()
        if not self.ready:
            future.set_exception(ZygoteError("the kernel zygote is not running"))
            return future
        with self._lock:
            self._next += 1
            ident = self._next
            self._pending[ident] = future
        request = {
            "id": ident,
            "argv": list(argv),
            "env": dict(os.environ if env is None else env),
            "cwd": str(cwd) if cwd else None,
        }
        try:
            assert self._sock is not None
            self._sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            with self._lock:
                self._pending.pop(ident, None)
            future.set_exception(ZygoteError(f"the kernel zygote is gone: {exc}"))
        return future

    # -- the reader thread -------------------------------------------------------------------

    def _read(self) -> None:
        assert self._sock is not None
        with contextlib.suppress(OSError), self._sock.makefile("rb") as lines:
            for line in lines:
                self._handle(json.loads(line))
        self._closed = True
        self._fail_all(ZygoteError("the kernel zygote exited"))

    def _handle(self, message: dict[str, Any]) -> None:
        if "ready" in message:
            self.pid = int(message["ready"])
            self.errors = dict(message.get("errors") or {})
            for name, error in self.errors.items():
                log.warning("kernel preload %s failed in the zygote: %s", name, error)
            self._ready.set_result(None)
        elif "exit" in message:
            with self._lock:
                kernel = self._kernels.pop(int(message["exit"]), None)
            if kernel is not None:
                kernel._exited(int(message["status"]))
        else:
            with self._lock:
                future = self._pending.pop(int(message["id"]), None)
                kernel = ForkedKernel(int(message["pid"])) if "pid" in message else None
                if kernel is not None:
                    self._kernels[kernel.pid] = kernel
                    self.forked += 1
            if future is None or not future.set_running_or_notify_cancel():
                # nobody waits for this kernel (its start was cancelled): it must not live on
                if kernel is not None:
                    self._abandon(kernel)
            elif kernel is not None:
                future.set_result(kernel)
            else:
                future.set_exception(ZygoteError(str(message.get("error"))))

    def _abandon(self, kernel: ForkedKernel) -> None:
        """Kill a forked kernel that no one will own; the zygote reports its exit."""
        log.debug("kernel %d was forked for a start that was cancelled: killed", kernel.pid)
        try:
            os.killpg(kernel.pid, signal.SIGKILL)
        except OSError:  # it may not have called setsid() yet
            with contextlib.suppress(OSError):
                os.kill(kernel.pid, signal.SIGKILL)

    def _fail_all(self, error: ZygoteError) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            kernels, self._kernels = self._kernels, {}
        if not self._ready.done():
            self._ready.set_exception(error)
        for future in pending.values():
            if not future.done():
                future.set_exception(error)
        for kernel in kernels.values():  # orphans exit on their own within ~1 s; not later
            with contextlib.suppress(OSError):
                os.killpg(kernel.pid, signal.SIGKILL)
            kernel._exited(-signal.SIGKILL)


_shared: dict[tuple[str, ...], Zygote] = {}
_shared_lock = threading.Lock()


def enabled() -> bool:
    """``CASARE_KERNEL_ZYGOTE`` (default on): whether pools fork their kernels."""
    return os.environ.get("CASARE_KERNEL_ZYGOTE", "1").strip().lower() not in (
        "0",
        "false",
        "no",
        "off",
    )


def shared_zygote(preload: Sequence[str] = (), *, start: bool = False) -> Zygote | None:
    """This process's zygote for these preloads; started (its imports go on in the
    background) when ``start`` and none runs."""
    key = tuple(m for m in preload if m)
    with _shared_lock:
        zygote = _shared.get(key)
        if zygote is not None and (zygote.alive or not start):
            return zygote
        if not start:
            return None
        zygote = _shared[key] = Zygote(key)
        with contextlib.suppress(ZygoteError):
            zygote.start()
        return zygote


def close_shared_zygotes() -> None:
    """Stop this process's zygotes (and the kernels they forked)."""
    with _shared_lock:
        zygotes = list(_shared.values())
        _shared.clear()
    for zygote in zygotes:
        zygote.close()


class ZygoteProvisioner(LocalProvisioner):  # type: ignore[misc]
    """jupyter_client's local provisioner, forking from :attr:`zygote` when it serves the
    kernel's command and starting the process as usual otherwise."""

    zygote: Zygote | None = None
    wait_ready_s: float = 60

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        zygote = self.zygote
        if zygote is None or not zygote.serves(cmd):
            return await super().launch_kernel(cmd, **kwargs)
        import asyncio

        started = time.perf_counter()
        try:
            if not zygote.ready:  # still importing: sooner than a cold start of our own
                await asyncio.to_thread(zygote.wait_ready, self.wait_ready_s)
            cwd = kwargs.get("cwd")
            process = await asyncio.wrap_future(zygote.spawn(cmd, kwargs.get("env"), cwd))
        except ZygoteError as exc:
            log.warning("%s; starting the kernel cold", exc)
            return await super().launch_kernel(cmd, **kwargs)
        log.debug("kernel %d forked in %.1f ms", process.pid, 1e3 * (time.perf_counter() - started))
        self.process = process  # type: ignore[assignment]
        self.pid = process.pid
        self.pgid = process.pid  # the child called setsid()
        self.cwd = kwargs.get("cwd") or os.getcwd()
        return self.connection_info
