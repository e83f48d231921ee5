"""The light client of ``casare-nb submit`` and ``rerun``: a job posted, and with ``--wait``
its events followed to its end, with the standard library's ``http.client`` and the event
stream as plain JSON (:class:`~casare_nb.client.events.JsonCodec`).

It builds no pydantic model (the orchestrator validated what it sends) and imports neither
httpx nor :mod:`casare_nb.protocol` nor :mod:`casare_nb.api`, so the command's process starts
in a fraction of the time :class:`~casare_nb.client.Client` takes to import; models are
imported on first use, only for ``--json``. It speaks to the same API with the same token
and fails with the same one-line :class:`~casare_nb.client.ClientError` messages.

httpx honours HTTP proxies from the environment and this client does not:
:func:`proxy_configured` tells the CLI to use :class:`~casare_nb.client.Client` then.
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlencode, urlsplit

from casare_nb.client.errors import ClientError, WaitTimeout
from casare_nb.client.events import JsonCodec, Monitor, deadline_of, monitor, wait_topics
from casare_nb.client.urls import orchestrator_urls, refused
from casare_nb.core.errors import one_line

if TYPE_CHECKING:
    import ssl

__all__ = [
    "JobView",
    "LightClient",
    "pid_alive",
    "proxy_configured",
    "read_runtime_file",
    "runtime_file_path",
]

RUNTIME_FILE = "orchestrator.json"
"""casare_nb.api.RUNTIME_FILE (not imported: pydantic; a test keeps the two readers equal)."""

_RUNTIME_TEXT = (
    "version",
    "ws_url",
    "http_url",
    "token",
    "token_name",
    "state_dir",
    "workflows_dir",
    "started_at",
)

_FINISHED = frozenset({"completed", "failed", "cancelled", "timeout", "dead"})
"""casare_nb.core.models.RunStatus values whose ``finished`` is true."""

FrameHandler = Callable[[dict[str, Any]], None]
"""An ``on_event`` of the light client: one event as the JSON object the orchestrator sent."""


def proxy_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment names an HTTP proxy (httpx would use it; this client not)."""
    env = os.environ if environ is None else environ
    return any(
        value and key.lower() in ("http_proxy", "https_proxy", "all_proxy")
        for key, value in env.items()
    )


def runtime_file_path(state_dir: str | os.PathLike[str] | None = None) -> Path:
    """The runtime file of ``state_dir`` (default ``$CASARE_HOME`` or ``./.casare``)."""
    root = Path(state_dir) if state_dir else Path(os.environ.get("CASARE_HOME") or ".casare")
    return root.absolute() / RUNTIME_FILE


def read_runtime_file(path: Path) -> dict[str, Any] | None:
    """The runtime file's content; None if it does not exist or lacks what it must hold."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    pid = data.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return None
    if not all(isinstance(data.get(key), str) for key in _RUNTIME_TEXT):
        return None
    if not isinstance(data.get("tls_cert"), str | None):
        return None
    return data


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (the runtime file's owner)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


class _Value:
    """An enum member's face: its ``value``."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


class JobView:
    """A job as the orchestrator answered it (its JSON): the fields the CLI shows, with the
    attribute names of :class:`~casare_nb.core.models.Job`; :meth:`model_dump_json` builds
    the model for the JSON output."""

    def __init__(self, data: object) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("job_id"), str):
            raise ClientError("the orchestrator answered something that is not a job")
        self.data: dict[str, Any] = data

    def __repr__(self) -> str:
        return f"<JobView {self.job_id} {self.status.value}>"

    @property
    def job_id(self) -> str:
        return str(self.data["job_id"])

    @property
    def workflow_path(self) -> str:
        return str(self.data.get("workflow_path", ""))

    @property
    def status(self) -> _Value:
        return _Value(str(self.data.get("status", "")))

    @property
    def priority(self) -> _Value:
        return _Value(str(self.data.get("priority", "")))

    @property
    def attempt(self) -> int:
        attempt = self.data.get("attempt", 0)
        return attempt if isinstance(attempt, int) else 0

    @property
    def robot_id(self) -> str | None:
        return self.data.get("robot_id")

    @property
    def error_name(self) -> str | None:
        return self.data.get("error_name")

    @property
    def error_message(self) -> str | None:
        return self.data.get("error_message")

    @property
    def finished(self) -> bool:
        return self.status.value in _FINISHED

    def model_dump_json(self, *, indent: int | None = None) -> str:
        """The job as :class:`~casare_nb.core.models.Job` prints it."""
        from casare_nb.core.models import Job

        return Job.model_validate(self.data).model_dump_json(indent=indent)


def job_id_of_frame(event: Mapping[str, Any]) -> str | None:
    """The job an event (JSON) is about: a cell's ``job_id`` or a job event's job."""
    data = event.get("data")
    if not isinstance(data, dict):
        return None
    job_id = data.get("job_id")
    if job_id is None:
        job = data.get("job")
        job_id = job.get("job_id") if isinstance(job, dict) else None
    return job_id if isinstance(job_id, str) else None


def _default_ssl_context() -> ssl.SSLContext:
    """What httpx verifies an https orchestrator with by default."""
    import ssl

    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


class LightClient:
    """The part of :class:`~casare_nb.client.Client` that ``submit`` and ``rerun`` use, with
    the same arguments, answering :class:`JobView` instead of ``Job`` and calling
    ``on_event`` with events as JSON objects."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        advertised_ws_url: str | None = None,
    ) -> None:
        """``advertised_ws_url``: the WebSocket URL the orchestrator advertises, when known
        (its runtime file says it); else it is asked for at ``/api/info``."""
        self.urls = orchestrator_urls(url)
        if not token:
            raise ClientError("no token: give one (--token, CASARE_TOKEN) or use Client.local()")
        self.url = self.urls[0]
        self.timeout = timeout
        self._token = token
        self._ssl = ssl_context
        self._advertised = advertised_ws_url
        self._ws_url: str | None = None

    def __repr__(self) -> str:
        return f"<LightClient {self.url}>"

    @classmethod
    def local(
        cls,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> LightClient:
        """A client of the orchestrator running on ``state_dir``, as ``Client.local``."""
        path = runtime_file_path(state_dir)
        info = read_runtime_file(path)
        if info is None:
            raise ClientError(
                f"no orchestrator running: no runtime file {path} "
                "(start one with `casare-nb orchestrator`, or give --url and --token)"
            )
        if not pid_alive(info["pid"]):
            raise ClientError(
                f"no orchestrator running: {path} is stale (process {info['pid']} is gone)"
            )
        context = None
        if ca_file is not None:
            from casare_nb.client.tls import ca_context

            context = ca_context(ca_file)
        elif info["tls_cert"]:
            import ssl

            context = ssl.create_default_context(cafile=info["tls_cert"])
        return cls(
            info["http_url"],
            token or info["token"],
            timeout=timeout,
            ssl_context=context,
            advertised_ws_url=info["ws_url"],  # what /api/info would answer
        )

    def close(self) -> None:
        """Nothing stays open between calls (one connection a request)."""

    def __enter__(self) -> LightClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP ----------------------------------------------------------------------------

    @property
    def _parts(self) -> SplitResult:
        return urlsplit(self.url)

    def _connection(self) -> http.client.HTTPConnection:
        host, port = self._parts.hostname or "", self._parts.port
        if self._parts.scheme == "https":
            context = self._ssl if self._ssl is not None else _default_ssl_context()
            return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=context)
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """The JSON answer of one request; ClientError with the server's one-line reason."""
        target = self._parts.path + path + (f"?{urlencode(params)}" if params else "")
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        body = None
        if json_body is not None:  # as httpx encodes json=
            body = json.dumps(
                json_body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode("utf-8")
            headers["Content-Type"] = "application/json"
        tried = 0
        while True:
            connection = self._connection()
            try:
                connection.request(method, target, body=body, headers=headers)
                response = connection.getresponse()
                status, data = response.status, response.read()
                break
            except TimeoutError:
                raise ClientError(
                    f"the orchestrator at {self.url} did not answer in time"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                tried += 1
                if refused(exc) and tried < len(self.urls):  # the next one may be active
                    self.url = self.urls[(self.urls.index(self.url) + 1) % len(self.urls)]
                    continue
                from casare_nb.client.tls import certificate_error

                unverified = certificate_error(exc, self.url)
                if unverified is not None:
                    raise unverified from None
                where = self.url if len(self.urls) == 1 else ", ".join(self.urls)
                raise ClientError(
                    f"cannot reach the orchestrator at {where}: {one_line(exc)}"
                ) from None
            finally:
                connection.close()
        if status >= 400:
            raise ClientError(_reason(status, data), status)
        try:
            return json.loads(data)
        except ValueError:
            raise ClientError(f"the orchestrator at {self.url} answered no JSON") from None

    def ws_url(self) -> str:
        """The orchestrator's WebSocket URL (from ``/api/info``; an unspecified bind
        address is replaced by this client's host)."""
        if self._ws_url is None:
            if self._advertised is None:
                info = self.request("GET", "/api/info")
                self._advertised = str(info.get("ws_url", "")) if isinstance(info, dict) else ""
            advertised = urlsplit(self._advertised)
            host = advertised.hostname or ""
            if host in ("0.0.0.0", "::", ""):
                host = self._parts.hostname or "127.0.0.1"
            host = f"[{host}]" if ":" in host else host
            port = f":{advertised.port}" if advertised.port else ""
            self._ws_url = f"{advertised.scheme}://{host}{port}"
        return self._ws_url

    # -- jobs ----------------------------------------------------------------------------

    def get(self, job_id: str) -> JobView:
        """The job ``job_id`` (404 if unknown)."""
        return JobView(self.request("GET", f"/api/jobs/{job_id}"))

    def submit(
        self,
        workflow: str | os.PathLike[str],
        parameters: Mapping[str, Any] | None = None,
        *,
        raw_parameters: Mapping[str, str] | None = None,
        priority: str = "normal",
        tags: Sequence[str] = (),
        environment: str | None = None,
        max_retries: int = 0,
        timeouts: Mapping[str, float | None] | None = None,
        wait: bool = False,
        timeout: float | None = None,
        on_event: FrameHandler | None = None,
    ) -> JobView:
        """``Client.submit``: the queued job, or with ``wait`` the finished one."""
        body: dict[str, Any] = {
            "workflow": os.fspath(workflow),
            "parameters": dict(parameters or {}),
            "raw_parameters": dict(raw_parameters or {}),
            "priority": str(priority),
            "tags": list(tags),
            "environment": environment,
            "max_retries": max_retries,
        }
        if timeouts is not None:
            body["timeouts"] = {k: float(v) for k, v in timeouts.items() if v is not None}
        return self._post("/api/jobs", body, wait, timeout, on_event)

    def rerun(
        self,
        job_id: str,
        from_failed: bool = True,
        parameters: Mapping[str, Any] | None = None,
        *,
        raw_parameters: Mapping[str, str] | None = None,
        wait: bool = False,
        timeout: float | None = None,
        on_event: FrameHandler | None = None,
    ) -> JobView:
        """``Client.rerun``: a new attempt of a finished job."""
        body = {
            "from_failed": from_failed,
            "parameters": dict(parameters) if parameters is not None else None,
            "raw_parameters": dict(raw_parameters) if raw_parameters is not None else None,
            "cell_sources": None,
        }
        return self._post(f"/api/jobs/{job_id}/rerun", body, wait, timeout, on_event)

    def _post(
        self,
        path: str,
        body: dict[str, Any],
        wait: bool,
        timeout: float | None,
        on_event: FrameHandler | None,
    ) -> JobView:
        if not wait:
            return JobView(self.request("POST", path, json_body=body))
        deadline = deadline_of(timeout)
        topics = wait_topics(on_event)
        url = self.ws_url()
        with monitor(url, self._token, self._ssl, self.timeout, JsonCodec(), topics) as stream:
            # subscribed before the job exists: none of its events is missed
            job = JobView(self.request("POST", path, json_body=body))
            return self._wait(stream, job, deadline, timeout, on_event)

    def _wait(
        self,
        stream: Monitor[dict[str, Any]],
        job: JobView,
        deadline: float | None,
        timeout: float | None,
        on_event: FrameHandler | None,
    ) -> JobView:
        job_id = job.job_id
        if job.finished:
            return job
        dropped = 0
        while True:
            try:
                event = stream.next(deadline)
            except WaitTimeout:
                status = self.get(job_id).status.value
                raise WaitTimeout(f"job {job_id} is still {status} after {timeout} s") from None
            if stream.dropped != dropped:  # the finish may be among the frames dropped
                dropped = stream.dropped
                job = self.get(job_id)
                if job.finished:
                    return job
            if job_id_of_frame(event) != job_id:
                continue
            if on_event is not None:
                on_event(event)
            if event.get("kind") == "job_finished":
                return JobView(event["data"].get("job"))


def _reason(status: int, data: bytes) -> str:
    """The server's one-line reason (``{"detail": ...}``), else ``HTTP <status>: <text>``."""
    try:
        detail = json.loads(data).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, str) and detail:
        return one_line(detail)
    text = one_line(data.decode("utf-8", errors="replace"))[:200]
    return f"HTTP {status}{': ' + text if text else ''}"
