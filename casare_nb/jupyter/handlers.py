"""The server extension's routes (docs/jupyter.md): the orchestrator's API under the
Jupyter server's URL and auth, the parameters of a notebook as a workflow, the dashboard
notebook, debug kernels. Every handler is an authenticated APIHandler: the server's token
or cookie, and its XSRF check for browser POSTs, apply as to every Jupyter API."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Final

import httpx
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from casare_nb.client import ClientError
from casare_nb.core.errors import CasareError, one_line
from casare_nb.core.params import read_schema
from casare_nb.jupyter.dashboard import DASHBOARD_NOTEBOOK, dashboard_notebook
from casare_nb.jupyter.debug import open_debug, resume_debug
from casare_nb.jupyter.locate import Orchestrator, locate
from casare_nb.notebook.workflow import load_workflow

__all__ = ["handlers"]

RUNS_FOLDER: Final = "casare-runs"
"""Where output notebooks opened from the dashboard go, under the Jupyter server's root."""
_PROXY_TIMEOUT: Final = 60.0
_HOP_HEADERS: Final = frozenset({"content-length", "transfer-encoding", "connection"})


class _Handler(APIHandler):  # type: ignore[misc]
    """JSON answers, one-line ``{"detail"}`` errors, the orchestrator looked up per call."""

    @property
    def root_dir(self) -> Path:
        return Path(self.settings["server_root_dir"]).expanduser().absolute()

    def orchestrator(self) -> Orchestrator:
        return locate(self.root_dir)

    def local_path(self, api_path: str) -> Path:
        """A Jupyter API path as a file under the server root; 400 if it leaves it."""
        target = (self.root_dir / api_path.lstrip("/")).resolve()
        if not target.is_relative_to(self.root_dir.resolve()):
            raise ClientError(f"{api_path} is outside the Jupyter server's root", 400)
        return target

    def answer(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def fail(self, status: int, detail: str) -> None:
        self.answer({"detail": detail}, status)

    def json_body(self) -> dict[str, Any]:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise ClientError("the request body is not JSON", 400) from None
        if not isinstance(body, dict):
            raise ClientError("the request body must be a JSON object", 400)
        return body

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ClientError):
            self.fail(exc.status or 502, str(exc))
        elif isinstance(exc, web.HTTPError):
            self.fail(exc.status_code, exc.log_message or exc.reason or "error")
        elif isinstance(exc, CasareError | ValueError | OSError):
            self.fail(400 if status_code == 500 else status_code, one_line(exc))
        else:
            super().write_error(status_code, **kwargs)


class ProxyHandler(_Handler):
    """``/casare/api/<path>`` -> the orchestrator's ``/api/<path>``."""

    async def _forward(self, path: str) -> None:
        orch = self.orchestrator()
        url = f"{orch.url}/api/{path}"
        if self.request.query:
            url += f"?{self.request.query}"
        headers = {"Authorization": f"Bearer {orch.token}"}
        content_type = self.request.headers.get("Content-Type")
        if content_type:
            headers["Content-Type"] = content_type
        try:
            response = await _http_client(orch).request(
                self.request.method or "GET", url, content=self.request.body, headers=headers
            )
        except httpx.HTTPError as exc:
            self.fail(502, f"cannot reach the orchestrator at {orch.url}: {one_line(exc)}")
            return
        self.set_status(response.status_code)
        for name, value in response.headers.items():
            if name.lower() not in _HOP_HEADERS and name.lower() in ("content-type",):
                self.set_header(name, value)
        self.finish(response.content)

    @web.authenticated
    async def get(self, path: str) -> None:
        await self._forward(path)

    @web.authenticated
    async def post(self, path: str) -> None:
        await self._forward(path)

    @web.authenticated
    async def put(self, path: str) -> None:
        await self._forward(path)

    @web.authenticated
    async def delete(self, path: str) -> None:
        await self._forward(path)


_HTTP_CLIENTS: dict[tuple[str, int], httpx.AsyncClient] = {}


def _http_client(orch: Orchestrator) -> httpx.AsyncClient:
    """One pooled client per orchestrator URL and TLS context (making one costs ~25 ms:
    its default TLS context), kept while the server runs."""
    key = (orch.url, id(orch.ssl_context))
    client = _HTTP_CLIENTS.get(key)
    if client is None:
        verify: Any = orch.ssl_context if orch.ssl_context is not None else True
        client = _HTTP_CLIENTS[key] = httpx.AsyncClient(timeout=_PROXY_TIMEOUT, verify=verify)
    return client


class ParamsHandler(_Handler):
    """``/casare/params?path=NB``: NB as a workflow of the orchestrator, its parameters."""

    @web.authenticated
    async def get(self) -> None:
        api_path = self.get_query_argument("path", "")
        if not api_path.endswith(".ipynb"):
            raise ClientError("give ?path= of a notebook (.ipynb) under the server root", 400)
        notebook = self.local_path(api_path)
        workflow = self.orchestrator().workflow_of(notebook)
        nb, _ = load_workflow(notebook)
        schema = read_schema(nb)
        self.answer(
            {"workflow": workflow, "parameters": schema.model_dump(mode="json") if schema else None}
        )


class OutputHandler(_Handler):
    """``GET /casare/notebook/JOB?attempt=N``: the attempt's output notebook (its latest by
    default), written under ``casare-runs/`` and opened in JupyterLab by a redirect."""

    @web.authenticated
    async def get(self, job_id: str) -> None:
        raw = self.get_query_argument("attempt", "")
        if raw and not raw.isdigit():
            raise ClientError(f"attempt must be a number, not {raw!r}", 400)
        attempt = int(raw) if raw else None
        orch = self.orchestrator()

        def read() -> tuple[dict[str, Any], str, int]:
            with orch.client() as client:
                job = client.get(job_id)
                nb = client.notebook(job_id, attempt)
            return nb, job.workflow_path, attempt or job.attempt

        nb, workflow, number = await asyncio.to_thread(read)
        path = f"{RUNS_FOLDER}/{Path(workflow).stem}.{job_id}.attempt-{number}.ipynb"
        target = self.local_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(nb, indent=1), "utf-8")
        self.redirect(url_path_join(self.base_url, "lab", "tree", path))


class DashboardHandler(_Handler):
    """``POST /casare/dashboard``: the dashboard notebook, written if missing."""

    @web.authenticated
    async def post(self) -> None:
        target = self.local_path(DASHBOARD_NOTEBOOK)
        if not target.exists():
            target.write_text(json.dumps(dashboard_notebook(), indent=1), "utf-8")
        self.answer({"path": DASHBOARD_NOTEBOOK})


class DebugHandler(_Handler):
    """``POST /casare/debug/JOB``: a kernel of this server restored at JOB's failed cell."""

    @web.authenticated
    async def post(self, job_id: str) -> None:
        found = await open_debug(
            self.orchestrator(),
            job_id,
            root_dir=self.root_dir,
            kernel_manager=self.kernel_manager,
            session_manager=self.session_manager,
        )
        self.answer(found, 201)


class ResumeHandler(_Handler):
    """``POST /casare/debug/JOB/resume`` ``{"path"}``: re-run JOB from its failed cell with
    the saved debug notebook's cells."""

    @web.authenticated
    async def post(self, job_id: str) -> None:
        api_path = self.json_body().get("path")
        if not isinstance(api_path, str) or not api_path:
            raise ClientError('give {"path": the debug notebook}', 400)
        job = await resume_debug(self.orchestrator(), job_id, self.local_path(api_path))
        self.answer(job, 201)


_JOB = r"(?P<job_id>[A-Za-z0-9._-]{1,128})"


def handlers(base_url: str) -> list[tuple[str, type[APIHandler]]]:
    """The routes, under the server's ``base_url``."""

    def at(path: str) -> str:
        return str(url_path_join(base_url, "casare", path))

    return [
        (at(r"api/(?P<path>.*)"), ProxyHandler),
        (at("params"), ParamsHandler),
        (at("dashboard"), DashboardHandler),
        (at(rf"notebook/{_JOB}"), OutputHandler),
        (at(rf"debug/{_JOB}/resume"), ResumeHandler),
        (at(rf"debug/{_JOB}"), DebugHandler),
    ]
