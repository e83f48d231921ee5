"""A kernel started at a command's first line, while the command imports and validates.

``casare-nb run`` and ``casare-nb resume`` spend their first few hundred milliseconds
importing (click, pydantic, nbformat, nbclient, DuckDB) and checking their input; a cold
kernel takes about as long to boot. :func:`launch` starts ``python -m ipykernel_launcher``
(this Python's, over IPC) before any of that, with nothing but the standard library, so the
two overlap on two cores. :meth:`KernelSession.start
<casare_nb.notebook.kernels.KernelSession.start>` then :func:`take` s it when the run's
kernelspec is exactly that command; otherwise the early kernel is killed, unused, and the
run starts its kernel as before. A kernel nobody took is killed when the process exits (and
exits on its own within a second if the process is SIGKILLed: its parent poller).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

COMMAND = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
PORTS = {"shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4, "hb_port": 5}


@dataclass
class EarlyKernel:
    """A kernel process started by :func:`launch`, and its connection file."""

    process: subprocess.Popen[bytes]
    connection_file: Path
    ip: str  # the IPC sockets' path prefix
    cwd: Path

    def discard(self) -> None:
        """Kill the process and remove its files."""
        with contextlib.suppress(OSError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self.process.wait(5)
        shutil.rmtree(self.connection_file.parent, ignore_errors=True)


_pending: EarlyKernel | None = None


def launch(cwd: str | os.PathLike[str] | None = None) -> EarlyKernel | None:
    """Start this Python's ipykernel now, for the next kernel this process asks for; off with
    ``CASARE_EARLY_KERNEL=0``. Never raises: a kernel that cannot start early starts later."""
    global _pending
    if _pending is not None or os.environ.get("CASARE_EARLY_KERNEL", "1").strip() in (
        "0",
        "false",
        "no",
        "off",
    ):
        return _pending
    folder = Path(tempfile.mkdtemp(prefix="casare-k-"))
    ip = str(folder / "k")
    info = {
        **PORTS,
        "ip": ip,
        "transport": "ipc",
        "key": secrets.token_hex(32),
        "signature_scheme": "hmac-sha256",
        "kernel_name": "python3",
    }
    connection_file = folder / "kernel.json"
    connection_file.write_text(json.dumps(info), encoding="utf-8")
    argv = [part.replace("{connection_file}", str(connection_file)) for part in COMMAND]
    where = Path(cwd) if cwd else Path.cwd()
    try:
        process = subprocess.Popen(
            argv,
            cwd=where,
            env={**os.environ, "JPY_PARENT_PID": str(os.getpid())},
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        return None
    _pending = EarlyKernel(process, connection_file, ip, where.absolute())
    atexit.register(_discard_pending)
    return _pending


def pending() -> bool:
    """Whether an early kernel waits to be taken."""
    return _pending is not None


def take(argv: list[str], env: dict[str, str] | None) -> EarlyKernel | None:
    """The early kernel, when the kernelspec's command line (``argv``, jupyter_client's
    ``{connection_file}`` left in) and environment are what it was started with; otherwise it
    is discarded and None answered. Only the first asker gets it."""
    global _pending
    early, _pending = _pending, None
    if early is None:
        return None
    python = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info)}
    argv = [sys.executable if i == 0 and a in python else a for i, a in enumerate(argv)]
    if argv != COMMAND or env or early.process.poll() is not None:
        early.discard()
        return None
    return early


def _discard_pending() -> None:
    global _pending
    early, _pending = _pending, None
    if early is not None:
        early.discard()
