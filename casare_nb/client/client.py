"""The client of a running orchestrator: :class:`Client` and its HTTP API; the event stream
is :mod:`.events`, the history :mod:`.history` (the package docstring shows a session).

The WebSocket side (websockets, :mod:`casare_nb.protocol`) is imported on first use, inside
the methods that need it: callers that only use HTTP (most CLI commands) skip its start-up.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from casare_nb.api import (
    DebugBundle,
    DrainResult,
    FireInfo,
    Health,
    Maintenance,
    NewSchedule,
    NewTrigger,
    ScheduleInfo,
    ServerInfo,
    Status,
    TokenCreated,
    TokenInfo,
    TriggerInfo,
    UpcomingFire,
    WorkflowInfo,
    pid_alive,
    read_runtime_file,
    runtime_file_path,
)
from casare_nb.client.errors import ClientError, WaitTimeout
from casare_nb.client.events import (
    DEFAULT_BUFFER,
    ModelCodec,
    Monitor,
    Subscription,
    TopicName,
    deadline_of,
    job_id_of,
    stream_error,
    stream_options,
    wait_topics,
)
from casare_nb.client.history import History
from casare_nb.client.tls import ca_context, certificate_error
from casare_nb.client.urls import orchestrator_urls
from casare_nb.core.errors import one_line
from casare_nb.core.failure import Failure
from casare_nb.core.models import (
    CellRecord,
    Job,
    JobTimeouts,
    Priority,
    Robot,
    RunRecord,
    RunStatus,
)
from casare_nb.core.tokens import DEFAULT_ROLE, TokenRole

if TYPE_CHECKING:  # the event stream's modules load on first use: `casare-nb jobs` stays quick
    from casare_nb.protocol import Event

__all__ = ["Client"]


class Client:
    """A running orchestrator's API: jobs, robots, tokens, drain, and its event stream.

    ``url`` is the HTTP base URL (``http://127.0.0.1:8766``), ``token`` a bearer token
    (``casare-nb token create NAME``). ``timeout`` bounds each HTTP request and the event
    stream's opening; ``ssl_context`` verifies an https/wss orchestrator. Use it as a
    context manager, or :meth:`close` it.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.urls = orchestrator_urls(url)
        if not token:
            raise ClientError("no token: give one (--token, CASARE_TOKEN) or use Client.local()")
        self.url = self.urls[0]
        self.timeout = timeout
        self._token = token
        self._ssl = ssl_context
        self._http = self._http_client()
        self._ws_url: str | None = None
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"<Client {self.url}>"

    def _http_client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=self.timeout,
            verify=self._ssl if self._ssl is not None else True,
        )

    def _next_url(self) -> None:
        """Talk to the next address of :attr:`urls` from now on."""
        self._http.close()
        self.url = self.urls[(self.urls.index(self.url) + 1) % len(self.urls)]
        self._http = self._http_client()
        self._ws_url = None

    @classmethod
    def local(
        cls,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        ca_file: str | os.PathLike[str] | None = None,
    ) -> Client:
        """A client of the orchestrator running on ``state_dir`` (``$CASARE_HOME`` or
        ``./.casare``), from the runtime file it wrote; ``token`` instead of its admin token.
        An https orchestrator's certificate is verified against ``ca_file`` when given, else
        against the certificate the runtime file names (a self-signed one)."""
        path = runtime_file_path(state_dir)
        info = read_runtime_file(path)
        if info is None:
            raise ClientError(
                f"no orchestrator running: no runtime file {path} "
                "(start one with `casare-nb orchestrator`, or give --url and --token)"
            )
        if not pid_alive(info.pid):
            raise ClientError(
                f"no orchestrator running: {path} is stale (process {info.pid} is gone)"
            )
        context = None
        if ca_file is not None:
            context = ca_context(ca_file)
        elif info.tls_cert:
            context = ssl.create_default_context(cafile=info.tls_cert)
        return cls(info.http_url, token or info.token, timeout=timeout, ssl_context=context)

    def close(self) -> None:
        """Close the HTTP connections and every subscription still open."""
        for subscription in list(self._subscriptions):
            subscription.close()
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP ----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        tried = 0
        while True:
            try:
                response = self._http.request(
                    method,
                    path,
                    json=json,
                    params=params,
                    timeout=timeout if timeout is not None else self.timeout,
                )
                break
            except httpx.TimeoutException:
                raise ClientError(
                    f"the orchestrator at {self.url} did not answer in time"
                ) from None
            except httpx.HTTPError as exc:
                tried += 1
                if isinstance(exc, httpx.ConnectError) and tried < len(self.urls):
                    self._next_url()  # nothing was sent: the next one may be active
                    continue
                unverified = certificate_error(exc, self.url)
                if unverified is not None:
                    raise unverified from None
                where = self.url if len(self.urls) == 1 else ", ".join(self.urls)
                why = one_line(exc)
                raise ClientError(f"cannot reach the orchestrator at {where}: {why}") from None
        if response.status_code >= 400:
            raise ClientError(self._reason(response), response.status_code)
        return response

    @staticmethod
    def _reason(response: httpx.Response) -> str:
        with contextlib.suppress(ValueError, AttributeError):
            detail = response.json().get("detail")
            if isinstance(detail, str) and detail:
                return one_line(detail)
        text = one_line(response.text)[:200]
        return f"HTTP {response.status_code}{': ' + text if text else ''}"

    def info(self) -> ServerInfo:
        """Version, the WebSocket URL, whether the orchestrator drains."""
        return ServerInfo.model_validate(self._request("GET", "/api/info").json())

    def health(self) -> Health:
        """``/health``: status, robots online, jobs by status."""
        return Health.model_validate(self._request("GET", "/health").json())

    def status(self) -> Status:
        """``/status``: every figure of the runbook's table judged against the orchestrator's
        thresholds (robots, queue, failures, connection failures), and the overall level."""
        return Status.model_validate(self._request("GET", "/status").json())

    def submit(
        self,
        workflow: str | os.PathLike[str],
        parameters: Mapping[str, Any] | None = None,
        *,
        raw_parameters: Mapping[str, str] | None = None,
        priority: Priority | str = Priority.NORMAL,
        tags: Sequence[str] = (),
        environment: str | None = None,
        max_retries: int = 0,
        timeouts: JobTimeouts | Mapping[str, float | None] | None = None,
        wait: bool = False,
        timeout: float | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> Job:
        """Queue a run of ``workflow`` (relative to the orchestrator's workflows directory);
        the queued job, or with ``wait`` the finished one (see :meth:`wait`).

        ``timeouts``: the job's execution limits in seconds, ``{"cell_s": ..., "run_s":
        ...}`` (each optional): a cell (the run) running longer ends the job ``timeout``
        there. ``timeout`` is how long ``wait`` waits."""
        body = {
            "workflow": os.fspath(workflow),
            "parameters": dict(parameters or {}),
            "raw_parameters": dict(raw_parameters or {}),
            "priority": str(priority),
            "tags": list(tags),
            "environment": environment,
            "max_retries": max_retries,
        }
        if timeouts is not None:
            limits = (
                timeouts
                if isinstance(timeouts, JobTimeouts)
                else JobTimeouts.model_validate(dict(timeouts))
            )
            body["timeouts"] = limits.model_dump(exclude_none=True)
        if not wait:
            return Job.model_validate(self._request("POST", "/api/jobs", json=body).json())
        deadline = deadline_of(timeout)
        with self._monitor(wait_topics(on_event)) as monitor:  # before: no event is missed
            job = Job.model_validate(self._request("POST", "/api/jobs", json=body).json())
            return self._wait(monitor, job.job_id, deadline, timeout, on_event)

    def get(self, job_id: str) -> Job:
        """The job ``job_id`` (404 if unknown)."""
        return Job.model_validate(self._request("GET", f"/api/jobs/{job_id}").json())

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one once its robot stopped it."""
        return Job.model_validate(self._request("POST", f"/api/jobs/{job_id}/cancel").json())

    def rerun(
        self,
        job_id: str,
        from_failed: bool = True,
        parameters: Mapping[str, Any] | None = None,
        *,
        raw_parameters: Mapping[str, str] | None = None,
        cell_sources: Mapping[str, str] | None = None,
        wait: bool = False,
        timeout: float | None = None,
        on_event: Callable[[Event], None] | None = None,
    ) -> Job:
        """A new attempt of a finished job: from the failed cell with the namespace restored
        (``from_failed``), or from the start; ``parameters`` change values;
        ``cell_sources`` (by cell id) are written into the workflow first."""
        body = {
            "from_failed": from_failed,
            "parameters": dict(parameters) if parameters is not None else None,
            "raw_parameters": dict(raw_parameters) if raw_parameters is not None else None,
            "cell_sources": dict(cell_sources) if cell_sources is not None else None,
        }
        path = f"/api/jobs/{job_id}/rerun"
        if not wait:
            return Job.model_validate(self._request("POST", path, json=body).json())
        deadline = deadline_of(timeout)
        with self._monitor(wait_topics(on_event)) as monitor:
            job = Job.model_validate(self._request("POST", path, json=body).json())
            return self._wait(monitor, job.job_id, deadline, timeout, on_event)

    def robots(self) -> list[Robot]:
        """Every robot that registered since the orchestrator started."""
        return [Robot.model_validate(r) for r in self._request("GET", "/api/robots").json()]

    def drain(self, timeout_s: float = 60.0) -> DrainResult:
        """Refuse new jobs, wait up to ``timeout_s`` for running ones, shut robots down."""
        response = self._request(
            "POST", "/api/drain", json={"timeout_s": timeout_s}, timeout=timeout_s + self.timeout
        )
        return DrainResult.model_validate(response.json())

    def create_token(self, name: str, role: TokenRole | str = DEFAULT_ROLE) -> str:
        """A new bearer token ``name`` with ``role`` (``robot``, ``user``, ``admin``; see
        :mod:`casare_nb.core.tokens`), returned this once. Needs an admin token."""
        body = {"name": name, "role": TokenRole(role).value}
        response = self._request("POST", "/api/tokens", json=body)
        return TokenCreated.model_validate(response.json()).token

    def revoke_token(self, name: str) -> None:
        """Revoke the token ``name``; its connections are closed."""
        self._request("DELETE", f"/api/tokens/{name}")

    def tokens(self) -> list[TokenInfo]:
        """Every token: name, role, created, revoked (never the token)."""
        return [TokenInfo.model_validate(t) for t in self._request("GET", "/api/tokens").json()]

    def outputs(self, job_id: str) -> dict[str, Any]:
        """The values job ``job_id`` recorded with ``casare_nb.output(name, value)``."""
        result: dict[str, Any] = self._request("GET", f"/api/jobs/{job_id}/outputs").json()
        return result

    def pause_robot(self, robot_id: str) -> Robot:
        """Drain one robot: it takes no new jobs, its running jobs finish."""
        return Robot.model_validate(self._request("POST", f"/api/robots/{robot_id}/pause").json())

    def unpause_robot(self, robot_id: str) -> Robot:
        """Let a paused robot take jobs again."""
        response = self._request("POST", f"/api/robots/{robot_id}/unpause")
        return Robot.model_validate(response.json())

    def pause_submissions(self, paused: bool = True) -> ServerInfo:
        """Refuse new submissions, re-runs and trigger fires until unpaused (queued and
        running jobs go on); ``paused=False`` takes them again."""
        action = "pause" if paused else "unpause"
        return ServerInfo.model_validate(self._request("POST", f"/api/submissions/{action}").json())

    def cancel_drain(self) -> ServerInfo:
        """Undo a drain (one under way stops waiting, no robot is shut down) and a pause of
        submissions: new jobs are taken and queued ones dispatched again. Needs an admin
        token."""
        return ServerInfo.model_validate(self._request("POST", "/api/drain/cancel").json())

    def maintenance(self) -> Maintenance:
        """Whether schedules and triggers are held for maintenance."""
        return Maintenance.model_validate(self._request("GET", "/api/maintenance").json())

    def set_maintenance(self, on: bool) -> Maintenance:
        """Hold every schedule and trigger (``on``) or let them fire again; each one's own
        paused/disabled state is kept. Needs an admin token."""
        action = "on" if on else "off"
        return Maintenance.model_validate(
            self._request("POST", f"/api/maintenance/{action}").json()
        )

    def workflows(self) -> list[WorkflowInfo]:
        """The notebooks the orchestrator serves (paths relative to its workflows dir)."""
        rows = self._request("GET", "/api/workflows").json()
        return [WorkflowInfo.model_validate(row) for row in rows]

    def workflow(self, path: str) -> WorkflowInfo:
        """One workflow with the parameters it declares (``.parameters``: a ParamSchema)."""
        return WorkflowInfo.model_validate(self._request("GET", f"/api/workflows/{path}").json())

    def attempts(self, job_id: str) -> list[RunRecord]:
        """Every attempt of job ``job_id`` as the history keeps it, in order."""
        rows = self._request("GET", f"/api/jobs/{job_id}/attempts").json()
        return [RunRecord.model_validate(row) for row in rows]

    def cells(self, job_id: str, attempt: int | None = None) -> list[CellRecord]:
        """The executed cells of one attempt of job ``job_id`` (every attempt by default)."""
        params = {} if attempt is None else {"attempt": attempt}
        rows = self._request("GET", f"/api/jobs/{job_id}/cells", params=params).json()
        return [CellRecord.model_validate(row) for row in rows]

    def notebook(self, job_id: str, attempt: int | None = None) -> dict[str, Any]:
        """The notebook of an attempt of job ``job_id`` (its latest by default), as JSON:
        the output notebook once it ended, the notebook so far while it runs."""
        params = {} if attempt is None else {"attempt": attempt}
        result: dict[str, Any] = self._request(
            "GET", f"/api/jobs/{job_id}/notebook", params=params
        ).json()
        return result

    def failure(self, job_id: str) -> Failure:
        """Where job ``job_id`` failed: the attempt, the cell, its source and the traceback.
        ClientError (409) when its latest attempt did not fail."""
        return Failure.model_validate(self._request("GET", f"/api/jobs/{job_id}/failure").json())

    def debug_bundle(self, job_id: str) -> DebugBundle:
        """What a debug kernel needs to hold failed job ``job_id``'s namespace before its
        failed cell (see :mod:`casare_nb.debugging`). ClientError (409) unless it failed."""
        return DebugBundle.model_validate(self._request("GET", f"/api/jobs/{job_id}/debug").json())

    def blob(self, sha256: str) -> bytes:
        """The bytes of one checkpoint blob the orchestrator holds."""
        return self._request("GET", f"/api/blobs/{sha256}").content

    @property
    def history(self) -> History:
        """The history's runs and aggregates (``client.history.daily()`` ...)."""
        return History(self._request)

    # -- schedules and triggers ----------------------------------------------------------

    def add_schedule(
        self,
        workflow: str | os.PathLike[str],
        *,
        cron: str | None = None,
        every: str | None = None,
        at: datetime | str | None = None,
        timezone: str = "UTC",
        **fields: Any,
    ) -> ScheduleInfo:
        """Run ``workflow`` on a cron timetable, ``every`` duration (``15m``) or once ``at``
        a date (wall time in ``timezone``); more fields: see :class:`NewSchedule`."""
        body = _body(
            NewSchedule,
            {
                "workflow": os.fspath(workflow),
                "cron": cron,
                "every": every,
                "at": at,
                "timezone": timezone,
                **fields,
            },
        )
        response = self._request("POST", "/api/schedules", json=body.model_dump(mode="json"))
        return ScheduleInfo.model_validate(response.json())

    def schedules(self) -> list[ScheduleInfo]:
        """Every schedule with its next 3 due times."""
        rows = self._request("GET", "/api/schedules").json()
        return [ScheduleInfo.model_validate(row) for row in rows]

    def schedule(self, schedule_id: str) -> ScheduleInfo:
        """One schedule (404 if unknown)."""
        return ScheduleInfo.model_validate(
            self._request("GET", f"/api/schedules/{schedule_id}").json()
        )

    def upcoming(self, limit: int = 10) -> list[UpcomingFire]:
        """The next ``limit`` due times across every schedule that is not paused."""
        rows = self._request("GET", "/api/schedules/upcoming", params={"limit": limit}).json()
        return [UpcomingFire.model_validate(row) for row in rows]

    def fires(self, schedule_id: str, limit: int = 100) -> list[FireInfo]:
        """The due times of a schedule that fired, newest first, and what came of each."""
        path = f"/api/schedules/{schedule_id}/fires"
        rows = self._request("GET", path, params={"limit": limit}).json()
        return [FireInfo.model_validate(row) for row in rows]

    def pause_schedule(self, schedule_id: str) -> ScheduleInfo:
        """Stop firing until resumed."""
        response = self._request("POST", f"/api/schedules/{schedule_id}/pause")
        return ScheduleInfo.model_validate(response.json())

    def resume_schedule(self, schedule_id: str) -> ScheduleInfo:
        """Fire again from the next due time."""
        response = self._request("POST", f"/api/schedules/{schedule_id}/resume")
        return ScheduleInfo.model_validate(response.json())

    def remove_schedule(self, schedule_id: str) -> ScheduleInfo:
        """Delete a schedule; it as it was."""
        response = self._request("DELETE", f"/api/schedules/{schedule_id}")
        return ScheduleInfo.model_validate(response.json())

    def add_trigger(
        self, kind: str, workflow: str | os.PathLike[str], **fields: Any
    ) -> TriggerInfo:
        """A ``webhook`` (``secret_env=``), ``file_watch`` (``path=``, ``pattern=``), or
        ``on_success`` / ``on_failure`` chain (``run=``) of ``workflow``; see
        :class:`NewTrigger`. A webhook's answer carries its URL."""
        body = _body(NewTrigger, {"kind": kind, "workflow": os.fspath(workflow), **fields})
        response = self._request("POST", "/api/triggers", json=body.model_dump(mode="json"))
        return TriggerInfo.model_validate(response.json())

    def triggers(self) -> list[TriggerInfo]:
        """Every trigger, oldest first."""
        return [TriggerInfo.model_validate(t) for t in self._request("GET", "/api/triggers").json()]

    def set_trigger_enabled(self, trigger_id: str, enabled: bool) -> TriggerInfo:
        """Enable or disable a trigger."""
        action = "enable" if enabled else "disable"
        response = self._request("POST", f"/api/triggers/{trigger_id}/{action}")
        return TriggerInfo.model_validate(response.json())

    def remove_trigger(self, trigger_id: str) -> TriggerInfo:
        """Delete a trigger; it as it was."""
        response = self._request("DELETE", f"/api/triggers/{trigger_id}")
        return TriggerInfo.model_validate(response.json())

    # -- events --------------------------------------------------------------------------

    def ws_url(self) -> str:
        """The orchestrator's WebSocket URL (from ``/api/info``; an unspecified bind
        address is replaced by this client's host)."""
        if self._ws_url is None:
            advertised = urlsplit(self.info().ws_url)
            host = advertised.hostname or ""
            if host in ("0.0.0.0", "::", ""):
                host = urlsplit(self.url).hostname or "127.0.0.1"
            host = f"[{host}]" if ":" in host else host
            port = f":{advertised.port}" if advertised.port else ""
            self._ws_url = f"{advertised.scheme}://{host}{port}"
        return self._ws_url

    @contextlib.contextmanager
    def _monitor(
        self, topics: frozenset[str], buffer: int = DEFAULT_BUFFER
    ) -> Iterator[Monitor[Event]]:
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect as ws_connect

        url = self.ws_url()
        try:
            ws = ws_connect(url, **stream_options(self._token, url, self._ssl, self.timeout))
        except (OSError, WebSocketException, TimeoutError) as exc:
            raise stream_error(exc, url) from None
        with ws, Monitor(ws, ModelCodec(), self.timeout, buffer=buffer) as monitor:
            monitor.subscribe(topics)
            yield monitor

    def subscribe(
        self,
        topics: Iterable[TopicName] = ("robots", "jobs", "cells"),
        *,
        buffer: int = DEFAULT_BUFFER,
    ) -> Subscription:
        """The orchestrator's events of ``topics``, as they happen: a blocking iterator,
        subscribed when this returns (events from then on are not missed).

        ``robots`` starts with a snapshot (kind ``robot_status``, ``data["snapshot"]``).
        Use it in a ``with`` block, or :meth:`Subscription.close` it, to disconnect. Events
        not read yet are kept, up to ``buffer`` of them (then the oldest are dropped, counted
        in :attr:`Subscription.dropped`); the connection stays open while nothing is read.
        """
        from casare_nb.protocol import Topic

        names = list(topics)
        try:
            wanted = frozenset(Topic(t) for t in names)
        except ValueError:
            known = ", ".join(t.value for t in Topic)
            raise ClientError(f"unknown topic in {names}: use {known}") from None
        if not wanted:
            raise ClientError("subscribe to at least one topic")
        if buffer < 1:
            raise ClientError(f"the event buffer must hold at least 1 frame, not {buffer}")
        subscription = Subscription(self._monitor(wanted, buffer), wanted)
        self._subscriptions.add(subscription)
        return subscription

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        *,
        on_event: Callable[[Event], None] | None = None,
    ) -> Job:
        """Block until the job reaches a final status and answer it; :class:`WaitTimeout`
        after ``timeout`` seconds. Listens to the event stream (no polling); ``on_event``
        sees the job's events (queued, started, each cell, finished) as they come."""
        deadline = deadline_of(timeout)
        with self._monitor(wait_topics(on_event)) as monitor:
            return self._wait(monitor, job_id, deadline, timeout, on_event)

    def _wait(
        self,
        monitor: Monitor[Event],
        job_id: str,
        deadline: float | None,
        timeout: float | None,
        on_event: Callable[[Event], None] | None,
    ) -> Job:
        from casare_nb.protocol import JobEvent

        job = self.get(job_id)  # subscribed already: a finish from now on is an event
        if job.status.finished:
            return job
        dropped = 0
        while True:
            try:
                event = monitor.next(deadline)
            except WaitTimeout:
                status = self.get(job_id).status.value
                raise WaitTimeout(f"job {job_id} is still {status} after {timeout} s") from None
            if monitor.dropped != dropped:  # the finish may be among the frames dropped
                dropped = monitor.dropped
                job = self.get(job_id)
                if job.status.finished:
                    return job
            if job_id_of(event) != job_id:
                continue
            if on_event is not None:
                on_event(event)
            if event.kind.value == "job_finished" and isinstance(event.data, JobEvent):
                return event.data.job

    def jobs(self, status: RunStatus | str | None = None, limit: int = 100) -> list[Job]:
        """Up to ``limit`` jobs, newest first, optionally only those in ``status``."""
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = str(status)
        response = self._request("GET", "/api/jobs", params=params)
        return [Job.model_validate(j) for j in response.json()]


_Model = TypeVar("_Model", bound=BaseModel)


def _body(model: type[_Model], data: Mapping[str, Any]) -> _Model:
    """``data`` as a request ``model``; a one-line ClientError if it does not fit."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        raise ClientError(f"{where}: {first.get('msg', 'invalid')}") from None
