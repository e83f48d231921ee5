"""Which orchestrator a Jupyter server talks to, looked up again on every request (one
started after the server, or restarted with a new token, is found without a restart):
``CASARE_URL`` + ``CASARE_TOKEN`` (+ ``CASARE_WORKFLOWS_DIR``), else the runtime file of
``CASARE_HOME``, else of ``<server root>/.casare``."""

from __future__ import annotations

import functools
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from casare_nb.api import pid_alive, read_runtime_file, runtime_file_path
from casare_nb.client import Client, ClientError

__all__ = ["Orchestrator", "locate"]


@dataclass(frozen=True)
class Orchestrator:
    """Where the orchestrator's HTTP API is, its token, and its workflows directory when
    this machine can see it (None for a remote one without ``CASARE_WORKFLOWS_DIR``)."""

    url: str
    token: str
    ssl_context: ssl.SSLContext | None
    workflows_dir: Path | None

    def client(self, timeout: float = 30.0) -> Client:
        return Client(self.url, self.token, timeout=timeout, ssl_context=self.ssl_context)

    def workflow_of(self, notebook: Path) -> str:
        """``notebook`` (absolute) as a workflow path of this orchestrator; ClientError
        (one line) when it lies outside its workflows directory."""
        if self.workflows_dir is None:
            raise ClientError(
                "the orchestrator's workflows directory is not known here: "
                "set CASARE_WORKFLOWS_DIR for the Jupyter server",
                400,
            )
        root = self.workflows_dir.resolve()
        try:
            return notebook.resolve().relative_to(root).as_posix()
        except ValueError:
            raise ClientError(
                f"{notebook.name} is not under the orchestrator's workflows directory {root}", 400
            ) from None


def locate(root_dir: Path) -> Orchestrator:
    """The orchestrator to use now; ClientError (503, one line) when none is running."""
    url = os.environ.get("CASARE_URL")
    if url:
        token = os.environ.get("CASARE_TOKEN")
        if not token:
            raise ClientError(
                "CASARE_URL is set for the Jupyter server but CASARE_TOKEN is not", 503
            )
        folder = os.environ.get("CASARE_WORKFLOWS_DIR")
        return Orchestrator(url, token, None, Path(folder).absolute() if folder else None)
    home = os.environ.get("CASARE_HOME")
    path = runtime_file_path(home if home else root_dir / ".casare")
    info = read_runtime_file(path)
    if info is None or not pid_alive(info.pid):
        raise ClientError(
            f"no orchestrator running for this Jupyter server (no live runtime file {path}): "
            "start one with `casare-nb lab` or `casare-nb orchestrator`",
            503,
        )
    context = _tls_context(info.tls_cert) if info.tls_cert else None
    return Orchestrator(info.http_url, info.token, context, Path(info.workflows_dir))


@functools.lru_cache(maxsize=8)
def _tls_context(cafile: str) -> ssl.SSLContext:
    """One context per certificate: the proxy keeps one HTTP client per context."""
    return ssl.create_default_context(cafile=cafile)
