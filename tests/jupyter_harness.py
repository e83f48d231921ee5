"""A real Jupyter server (``jupyter lab`` or ``jupyter server``) on loopback for tests: its
own temporary HOME and Jupyter dirs, a known token, stopped at the end."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["JupyterServer", "free_port", "jupyter_server"]

START_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class JupyterServer:
    url: str  # http://127.0.0.1:PORT
    token: str
    root: Path
    home: Path
    process: subprocess.Popen[bytes]

    def api(self) -> httpx.Client:
        """An HTTP client authenticated by the server's token."""
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"token {self.token}"}, timeout=60
        )

    @property
    def runtime_dir(self) -> Path:
        return self.home / "runtime"


def jupyter_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment with HOME and the Jupyter dirs in ``home`` (the sys-prefix ones,
    where the install put casare_nb's extensions, stay on the path)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASARE_", "JUPYTER_"))}
    env.update(
        HOME=str(home),
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        IPYTHONDIR=str(home / "ipython"),
    )
    env.update(extra or {})
    return env


@contextmanager
def jupyter_server(
    root: Path,
    home: Path,
    *,
    app: str = "server",
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[JupyterServer]:
    """``jupyter <app>`` serving ``root``, up once ``/api/status`` answers."""
    port, token = free_port(), secrets.token_hex(16)
    home.mkdir(parents=True, exist_ok=True)
    log = (home / f"jupyter-{app}.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab" if app == "lab" else "jupyter_server",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            "--allow-root",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.port_retries=0",
            *args,
        ],
        cwd=root,
        env=jupyter_env(home, env),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = JupyterServer(f"http://127.0.0.1:{port}", token, root, home, process)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(timeout=5) as http:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"jupyter {app} exited: {_tail(home, app)}")
                try:
                    if http.get(f"{server.url}/api/status?token={token}").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter {app} did not start: {_tail(home, app)}")
                time.sleep(0.1)  # polling a starting process: there is no event to wait on
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


def _tail(home: Path, app: str) -> str:
    text = (home / f"jupyter-{app}.log").read_text(errors="replace")
    return text[-3000:]
