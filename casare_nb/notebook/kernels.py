"""Kernels: start one, talk to it, stop it.

``KernelSession`` wraps a jupyter_client kernel manager and client. Control calls (install
the checkpoint hook, restore a namespace, inject secrets) are ``silent`` executions: they add
nothing to the kernel's history, fire no ``post_run_cell`` hook, and answer through
``user_expressions``. The warm pool of the orchestrator hands out these sessions.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import queue
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning.local_provisioner import LocalProvisioner
from jupyter_core.paths import jupyter_path

from casare_nb.notebook import early as early_kernels
from casare_nb.notebook.kernel_code import kernel_side_files, kernel_side_sources
from casare_nb.notebook.zygote import Zygote, ZygoteProvisioner

_RESULT_EXPR = "__import__('sys').modules['__casare__'].result"


class KernelCallError(RuntimeError):
    """A control call failed inside the kernel."""


def _preload_code() -> str:
    """Code that executes the kernel-side files into ``sys.modules['__casare__']`` (unless
    it is there: a zygote-forked kernel has it) and registers its hook; ends with ``;`` so a
    call can follow. The sources are read from their files when there are some: a 500-line
    cell costs the kernel ~30 ms of hashing and transforming before it runs."""
    paths = kernel_side_files()
    if paths:
        sources = f"[open(p, encoding='utf-8').read() for p in {paths!r}]"
    else:
        sources = repr(kernel_side_sources())
    return (
        "(lambda m: hasattr(m, 'install') or [exec(compile(s, '<casare>', 'exec'), m.__dict__) "
        f"for s in {sources}])(__import__('sys').modules.setdefault("
        "'__casare__', __import__('types').ModuleType('__casare__')));"
        "__import__('sys').modules['__casare__'].install();"
    )


class KernelSession:
    """One running kernel and its client."""

    def __init__(
        self,
        km: AsyncKernelManager,
        kc: Any,
        language: str,
        info: dict[str, Any],
        cwd: Path | None = None,
    ):
        self.km = km
        self.kc = kc
        self.language = language
        self.language_info = info
        self.checkpoint_ready = False
        self.cwd = cwd or Path.cwd()  # the kernel's working directory, as far as we moved it

    @classmethod
    async def start(
        cls,
        kernel_name: str = "python3",
        *,
        cwd: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60,
        zygote: Zygote | None = None,
    ) -> KernelSession:
        """Start a kernel over IPC sockets and wait until it answers: the process's early
        kernel (:mod:`casare_nb.notebook.early`) when there is one for this kernelspec, else
        forked from ``zygote`` when it serves the kernelspec, else a new process."""
        taken = _take_early(kernel_name)
        if taken is not None:
            early, spec = taken
            km = AsyncKernelManager(
                kernel_name=kernel_name,
                transport="ipc",
                ip=early.ip,
                connection_file=str(early.connection_file),
            )
            km.load_connection_file()
            km._connection_file_written = True  # the kernel may be reading it: no rewrite
            km._kernel_spec = spec
            km.kernel_id = str(uuid.uuid4())
            adopted = AdoptedProvisioner(
                kernel_id=km.kernel_id, kernel_spec=km.kernel_spec, parent=km
            )
            adopted.adopt = early.process
            km.provisioner = adopted
            try:
                await km.start_kernel()
                await _sockets_bound(km, startup_timeout)
                session = await cls.attach(km, cwd=early.cwd, startup_timeout=startup_timeout)
                if cwd is not None:
                    await session.chdir(cwd)
                return session
            except BaseException:
                await _abandon(km)
                raise
        sockdir = tempfile.mkdtemp(prefix="casare-k-")
        km = AsyncKernelManager(kernel_name=kernel_name, transport="ipc", ip=f"{sockdir}/k")
        if zygote is not None:
            km.kernel_id = str(uuid.uuid4())
            provisioner = ZygoteProvisioner(
                kernel_id=km.kernel_id, kernel_spec=km.kernel_spec, parent=km
            )
            provisioner.zygote = zygote
            provisioner.wait_ready_s = startup_timeout
            km.provisioner = provisioner
        try:
            await km.start_kernel(cwd=str(cwd) if cwd else None)
            await _sockets_bound(km, startup_timeout)
            return await cls.attach(km, cwd=cwd, startup_timeout=startup_timeout)
        except BaseException:
            await _abandon(km)
            raise

    @classmethod
    async def attach(
        cls,
        km: AsyncKernelManager,
        *,
        client: Any = None,
        cwd: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60,
    ) -> KernelSession:
        """A session on a kernel started elsewhere (a Jupyter server's), through ``client``
        (an asyncio kernel client; default ``km.client()``), waiting until the kernel
        answers. :meth:`detach` leaves the kernel running."""
        kc = client if client is not None else km.client()
        # no heartbeat thread: the client asks its manager whether the process lives
        kc.start_channels(hb=False)
        try:
            reply = await _wait_ready(kc, startup_timeout)
        except BaseException:
            kc.stop_channels()
            raise
        info = reply["content"].get("language_info", {})
        folder = Path(cwd).absolute() if cwd else None
        return cls(km, kc, str(info.get("name", "")).lower(), info, folder)

    def detach(self) -> None:
        """Close this session's client; the kernel goes on (its owner stops it)."""
        with contextlib.suppress(Exception):
            self.kc.stop_channels()

    @property
    def kernel_name(self) -> str:
        return str(self.km.kernel_name)

    @property
    def pid(self) -> int | None:
        process = getattr(getattr(self.km, "provisioner", None), "process", None)
        return getattr(process, "pid", None)

    @property
    def is_python(self) -> bool:
        return self.language == "python"

    async def call(self, code: str, *, timeout: float = 120) -> Any:
        """Run ``code`` silently; answer what it left in ``__casare__.result`` (JSON)."""
        msg_id = self.kc.execute(
            code, silent=True, store_history=False, user_expressions={"r": _RESULT_EXPR}
        )
        reply = await _reply(self.kc, msg_id, timeout)
        content = reply["content"]
        if content["status"] != "ok":
            raise KernelCallError(f"{content.get('ename')}: {content.get('evalue')}")
        expr = content.get("user_expressions", {}).get("r", {})
        if expr.get("status") != "ok":
            return None
        return json.loads(ast.literal_eval(expr["data"]["text/plain"]))

    async def preload(self) -> None:
        """Load the kernel-side snapshot code (module ``__casare__``) and register its hook;
        a warm pool does this before any job, so a job only configures it."""
        if not self.checkpoint_ready and self.is_python:
            await self.call(_preload_code() + "None")
            self.checkpoint_ready = True

    async def install_checkpointing(self, **config: Any) -> dict[str, Any]:
        """Preload (if not done yet) and configure the snapshot code for a run, in one round
        trip."""
        answer: dict[str, Any] = await self.call(self.checkpointing_code(**config))
        self.checkpoint_ready = True
        return answer

    def checkpointing_code(self, **config: Any) -> str:
        """The code :meth:`install_checkpointing` runs, to send along with another call (then
        set :attr:`checkpoint_ready` once it ran)."""
        code = f"__import__('sys').modules['__casare__'].configure(**{config!r})"
        return code if self.checkpoint_ready else _preload_code() + code

    async def chdir(self, path: str | os.PathLike[str]) -> None:
        """Move the kernel's working directory (a warm kernel started elsewhere); no round
        trip when it is there already."""
        folder = Path(path).absolute()
        if folder == self.cwd:
            return
        await self.call(f"__import__('os').chdir({str(folder)!r})")
        self.cwd = folder

    async def casare(self, function: str, *args: Any, timeout: float = 120) -> Any:
        """Call a function of the kernel-side module with literal arguments."""
        return await self.call(casare_code(function, *args), timeout=timeout)

    async def interrupt(self) -> None:
        await self.km.interrupt_kernel()

    async def is_alive(self) -> bool:
        return bool(await self.km.is_alive())

    async def shutdown(self) -> None:
        """Stop the kernel; never raises.

        The process is killed and reaped here first: jupyter_client would poll it every
        100 ms, which is a tenth of a resume."""
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        process = getattr(getattr(self.km, "provisioner", None), "process", None)
        if process is not None:
            with contextlib.suppress(Exception):
                process.kill()
                await asyncio.to_thread(process.wait, 5)
        with contextlib.suppress(Exception):
            await self.km.shutdown_kernel(now=True)
        ip = getattr(self.km, "ip", "")
        if ip:
            folder = Path(ip).parent
            for f in folder.glob("k-*"):
                f.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()


class AdoptedProvisioner(LocalProvisioner):  # type: ignore[misc]
    """jupyter_client's local provisioner for a kernel process already started (an early
    kernel, whose connection file the manager loaded)."""

    adopt: subprocess.Popen[bytes] | None = None

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        if self.adopt is None:
            return await super().launch_kernel(cmd, **kwargs)
        self.process = self.adopt
        self.pid = self.pgid = self.adopt.pid  # started in a session of its own
        self.cwd = kwargs.get("cwd") or os.getcwd()
        return self.connection_info


def _take_early(kernel_name: str) -> tuple[early_kernels.EarlyKernel, KernelSpec] | None:
    """The process's early kernel and the kernelspec it serves, if its command is this
    kernelspec's (else it is discarded)."""
    if not early_kernels.pending():
        return None
    spec = _find_kernel_spec(kernel_name)
    if spec is None or spec.metadata.get("kernel_provisioner") or spec.interrupt_mode != "signal":
        early_kernels.take([], None)
        return None
    early = early_kernels.take(list(spec.argv), dict(spec.env) or None)
    return (early, spec) if early is not None else None


def _find_kernel_spec(kernel_name: str) -> KernelSpec | None:
    """A kernelspec found where jupyter_client's KernelSpecManager looks (the Jupyter paths,
    then IPython's), without its start-up: listing those folders imports IPython (~50 ms,
    on a one-shot run's critical path)."""
    ipython_dir = os.environ.get("IPYTHONDIR") or os.path.expanduser("~/.ipython")
    for folder in [*jupyter_path("kernels"), os.path.join(ipython_dir, "kernels")]:
        resource_dir = Path(folder) / kernel_name.lower()
        if (resource_dir / "kernel.json").is_file():
            try:
                return KernelSpec.from_resource_dir(str(resource_dir))
            except (OSError, ValueError):
                return None
    if kernel_name == "python3":  # ipykernel's own, when none is installed as files
        from ipykernel.kernelspec import RESOURCES, get_kernel_dict

        return KernelSpec(resource_dir=RESOURCES, **get_kernel_dict())
    return None


def casare_code(function: str, *args: Any) -> str:
    """The code calling a function of the kernel-side module with literal arguments."""
    arglist = ", ".join(repr(a) for a in args)
    return f"__import__('sys').modules['__casare__'].{function}({arglist})"


async def _abandon(km: AsyncKernelManager) -> None:
    """Kill a kernel whose start failed or was cancelled, even half-way through
    ``start_kernel`` (a pool closing cancels its refills there: the process may already run,
    and a kernel left behind keeps a ZeroMQ context whose collection blocks the process's
    exit)."""
    with contextlib.suppress(Exception):
        await km.shutdown_kernel(now=True)  # its connection file and sockets too


async def _sockets_bound(km: AsyncKernelManager, timeout: float) -> None:
    """Wait until a kernel started over IPC has bound its sockets (their files exist).

    A client that connects earlier is refused and retries on zmq's 100 ms reconnect timer,
    which is longer than a forked kernel's whole start."""
    ports = (km.shell_port, km.iopub_port, km.stdin_port, km.control_port, km.hb_port)
    paths = [Path(f"{km.ip}-{port}") for port in ports]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not all(path.exists() for path in paths):
        if not await km.is_alive():
            raise KernelCallError("kernel died before binding its sockets")
        if loop.time() >= deadline:  # jupyter_client's words, which papermill users know
            raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")
        await asyncio.sleep(0.004)


async def _wait_ready(kc: Any, timeout: float) -> dict[str, Any]:
    """The kernel's ``kernel_info_reply``, once its shell answers and its IOPub reaches us.

    As jupyter_client's ``wait_for_ready`` does, without its final 200 ms of listening for
    more IOPub messages: the kernel's ``idle`` status for our request is the proof that IOPub
    is connected (a subscription joins late, so the request is sent again until it is seen).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        msg_id = kc.kernel_info()
        try:
            reply = await _reply(kc, msg_id, max(0.0, min(deadline - loop.time(), 1.0)))
        except TimeoutError:
            reply = None
        if reply is not None and await _iopub_idle(kc, msg_id, min(0.05, deadline - loop.time())):
            return reply
        if not await kc.is_alive():
            raise KernelCallError("kernel died before replying to kernel_info")
        if loop.time() >= deadline:
            raise RuntimeError(f"Kernel didn't respond in {timeout:g} seconds")


async def _iopub_idle(kc: Any, msg_id: str, timeout: float) -> bool:
    """Whether the ``idle`` status of request ``msg_id`` arrives on IOPub within ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await kc.get_iopub_msg(timeout=left)
        except queue.Empty:
            return False
        if (
            msg["parent_header"].get("msg_id") == msg_id
            and msg["msg_type"] == "status"
            and msg["content"].get("execution_state") == "idle"
        ):
            return True
    return False


async def _reply(kc: Any, msg_id: str, timeout: float) -> dict[str, Any]:
    """Wait for the shell reply to ``msg_id``; other replies are dropped."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise TimeoutError(f"kernel did not answer within {timeout:g} s")
        try:
            msg: dict[str, Any] = await kc.get_shell_msg(timeout=min(left, 1.0))
        except queue.Empty:  # nothing yet: check the kernel is still there
            if not await kc.is_alive():
                raise KernelCallError("kernel died") from None
            continue
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg
