"""The zygote process: ipykernel imported once, a fresh kernel forked per request.

A Python kernel's start is mostly imports (IPython, ipykernel, zmq, tornado, debugpy): about
0.5 s of CPU. This process pays them once, then forks a child per kernel that only builds the
kernel app and binds its sockets (tens of ms). Every kernel is still a new process that no job
has touched: the zygote itself never runs user code, and it holds no thread, zmq context or
event loop at a fork.

Run by :class:`casare_nb.notebook.zygote.Zygote` as
``python -m casare_nb.notebook.zygote_main FD [MODULE ...]``: ``FD`` is the control socket,
``MODULE`` extra modules to import before any fork (e.g. ``pandas``). Over the socket, one
JSON object a line:

- zygote -> owner, once: ``{"ready": pid, "modules": n, "errors": {module: message}}``
- owner -> zygote: ``{"id": n, "argv": [...], "env": {...}, "cwd": "..."}`` (a kernel's
  command line as jupyter_client formats it: ``python -m ipykernel_launcher -f FILE ...``)
- zygote -> owner: ``{"id": n, "pid": pid}`` or ``{"id": n, "error": "..."}``
- zygote -> owner, when a kernel ends: ``{"exit": pid, "status": returncode}`` (negative for a
  signal, like ``Popen.returncode``)

When the owner goes (the socket closes) the zygote kills its kernels and exits; a kernel whose
zygote dies exits too (ipykernel's parent poller watches the zygote's pid).

This module imports nothing heavy at its top: the preloads happen in :func:`main`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import socket
import sys
import traceback
from typing import Any

from casare_nb.notebook.kernel_code import kernel_side_module

# What a kernel's start imports (found by diffing sys.modules around IPKernelApp.initialize).
PRELOAD = (
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.debugger",
    "ipykernel.comm",
    "ipykernel.eventloops",
    "jupyter_client.session",
    "IPython.core.completer",
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.core.oinspect",
    "IPython.extensions.storemagic",
    "IPython.utils.wildcard",
    "sqlite3",
    "pdb",
    "faulthandler",
    "tornado.platform.asyncio",
    # what the checkpoint code loaded into every kernel imports
    "ast",
    "hashlib",
    "marshal",
    "pickle",
)


def _send(ctl: socket.socket, message: dict[str, Any]) -> None:
    ctl.sendall(json.dumps(message).encode() + b"\n")


def _preload(modules: list[str]) -> dict[str, str]:
    errors: dict[str, str] = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a configured preload that fails is reported, not fatal
            errors[name] = f"{type(exc).__name__}: {exc}"
    return errors


def _load_kernel_side() -> None:
    """Execute the checkpoint code every kernel loads (``__casare__``, see
    :func:`casare_nb.notebook.kernels._preload_code`) once, here: a kernel then only
    registers its hooks."""
    sys.modules["__casare__"] = kernel_side_module()


def _child(request: dict[str, Any], close_fds: list[int]) -> None:
    """Become the kernel the request describes; never returns."""
    code = 1
    try:
        os.setsid()  # its own process group: an interrupt reaches the kernel's children
        # signals blocked where the zygote was started must not stay blocked in a kernel
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for fd in close_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        if request.get("cwd"):
            os.chdir(request["cwd"])
        env = {str(k): str(v) for k, v in (request.get("env") or {}).items()}
        env["JPY_PARENT_PID"] = str(os.getppid())
        os.environ.clear()
        os.environ.update(env)
        numpy = sys.modules.get("numpy")
        if numpy is not None:  # the stdlib's random reseeds itself after a fork; numpy does not
            numpy.random.seed()
        from ipykernel import kernelapp

        given = [str(a) for a in request["argv"][3:]]
        args = [*given, f"--IPKernelApp.parent_handle={os.getppid()}"]
        sys.argv = [str(kernelapp.__file__), *args]
        app = kernelapp.IPKernelApp.instance()
        if len(given) == 2 and given[0] == "-f":
            # the default kernelspec's command line: set what it says instead of building
            # traitlets' argparse parser of every option (~30 ms)
            app.connection_file = given[1]
            app.parent_handle = os.getppid()
            setattr(app, "parse_command_line", lambda argv=None: None)  # noqa: B010
            app.initialize([])  # type: ignore[no-untyped-call]
        else:
            app.initialize(args)  # type: ignore[no-untyped-call]
        app.start()  # type: ignore[no-untyped-call]
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            import atexit

            atexit._run_exitfuncs()
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main(argv: list[str]) -> int:
    ctl = socket.socket(fileno=int(argv[0]))
    # as ipykernel_launcher does: the kernel's InteractiveShellApp puts '' back on sys.path
    if sys.path and (sys.path[0] == "" or os.path.abspath(sys.path[0]) == os.getcwd()):
        del sys.path[0]
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner decides when the zygote ends
    errors = _preload([*PRELOAD, *argv[1:]])
    _load_kernel_side()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: set[int] = set()
    _send(ctl, {"ready": os.getpid(), "modules": len(sys.modules), "errors": errors})

    def reap() -> None:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            _send(ctl, {"exit": pid, "status": os.waitstatus_to_exitcode(status)})

    buffer = b""
    try:
        while True:
            readable, _, _ = select.select([ctl.fileno(), wake_r], [], [])
            if wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
            reap()
            if ctl.fileno() not in readable:
                continue
            data = ctl.recv(1 << 16)
            if not data:
                break
            buffer += data
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                request = json.loads(line)
                try:
                    pid = os.fork()
                except OSError as exc:
                    _send(ctl, {"id": request.get("id"), "error": f"fork failed: {exc}"})
                    continue
                if pid == 0:
                    _child(request, [ctl.fileno(), wake_r, wake_w])
                children.add(pid)
                _send(ctl, {"id": request.get("id"), "pid": pid})
    except (BrokenPipeError, ConnectionResetError):
        pass
    for pid in children:  # the owner is gone: so are its kernels
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
