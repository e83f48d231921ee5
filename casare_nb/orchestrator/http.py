"""The orchestrator's HTTP API: FastAPI over an :class:`~.server.Orchestrator`.

The one module that imports the HTTP framework (FastAPI, uvicorn). :func:`create_app` builds
the ASGI app; :class:`HttpServer` serves it with uvicorn in the running event loop, on a
socket bound before serving (so port 0 works and the bound port is known at once).

- Every ``/api/...`` route needs ``Authorization: Bearer <token>``, checked against the
  orchestrator's token store (hashed, in its DuckDB file): 401 otherwise. ``/health`` needs
  none. Every error is ``{"detail": "<one line>"}``; a body that is not JSON is 400, a body
  or query that does not fit its model 422.
- Workflow paths: a relative path is resolved against the workflows directory; an absolute
  path, or one that resolves (symlinks included) outside that directory, is refused with 422,
  so a token cannot make the robots run any notebook on the orchestrator's disk.
- Reads of the database run in a worker thread (``asyncio.to_thread``); job state changes
  (submit, cancel, rerun) run on the event loop's thread, where the orchestrator makes every
  change of a job, in one order.

Routes: see ``docs/http-api.md``.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations at
# run time, and they name objects local to create_app (the Auth dependency).

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Final

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from casare_nb import __version__
from casare_nb.core.errors import CasareError, QueueError, WorkflowError, one_line
from casare_nb.core.models import Job, Robot, RobotStatus, RunStatus, TriggerKind
from casare_nb.core.params import ParameterError
from casare_nb.core.tokens import BadAuthorization, bearer_token
from casare_nb.core.triggers import Schedule, Trigger
from casare_nb.orchestrator.api import (
    DEFAULT_HTTP_PORT,
    CreateToken,
    DrainRequest,
    DrainResult,
    ErrorBody,
    FireInfo,
    Health,
    NewSchedule,
    NewTrigger,
    RerunJob,
    ScheduleInfo,
    ServerInfo,
    SubmitJob,
    TokenCreated,
    TokenInfo,
    TriggerInfo,
    UpcomingFire,
)
from casare_nb.orchestrator.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from casare_nb.orchestrator.server import DEFAULT_HOST, Orchestrator, OrchestratorDraining
from casare_nb.orchestrator.webhooks import HookAccepted, HookRefused
from casare_nb.protocol import PROTOCOL_VERSION

__all__ = ["HttpServer", "create_app", "resolve_workflow"]

logger = logging.getLogger("casare_nb.orchestrator.http")

_DRAINING: Final = "the orchestrator is draining: it takes no new jobs"
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, unknown or revoked token."},
}


def _with_errors(status: int, description: str) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route: 401 and ``status``."""
    return {**_ERRORS, status: {"model": ErrorBody, "description": description}}


def _error(status: int, detail: str) -> HTTPException:
    headers = {"WWW-Authenticate": 'Bearer realm="casare_nb"'} if status == 401 else None
    return HTTPException(status_code=status, detail=detail, headers=headers)


def resolve_workflow(workflows_dir: Path, given: str) -> Path:
    """``given`` resolved against ``workflows_dir``; a :class:`WorkflowError` if it lies outside
    (after following symlinks). Whether it exists is the orchestrator's to check."""
    root = workflows_dir.resolve()
    candidate = Path(given)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise WorkflowError(f"workflow {given} is outside the workflows directory {root}")
    return resolved


def _validation_detail(exc: RequestValidationError) -> tuple[int, str]:
    """(status, one line) for a request that does not fit its model."""
    errors = list(exc.errors())
    for error in errors:
        if error.get("type") == "json_invalid":
            why = (error.get("ctx") or {}).get("error", "")
            return 400, f"request body is not valid JSON{': ' + str(why) if why else ''}"
    parts = []
    for error in errors[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return 422, " ".join(("; ".join(parts) + more).split())


def create_app(orch: Orchestrator, *, workflows_dir: str | Path = ".") -> FastAPI:
    """The ASGI app of the API over ``orch`` (started by the caller)."""
    root = Path(workflows_dir).absolute()
    app = FastAPI(
        title="casare_nb orchestrator",
        version=__version__,
        description="Queue notebook runs, watch robots, re-run from the failed cell.",
        redoc_url=None,
    )
    bearer = HTTPBearer(auto_error=False, description="A token from `casare-nb token create`.")

    async def authenticated(
        request: Request,
        _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> str:
        """The name of the request's live token; 401 otherwise."""
        try:
            token = bearer_token(request.headers.getlist("authorization"))
        except BadAuthorization as exc:
            raise _error(401, str(exc)) from None
        try:
            name = await asyncio.to_thread(orch.queue.verify_token, token)
        except QueueError as exc:
            logger.error("cannot check a token: %s", exc)
            raise _error(503, "the orchestrator cannot read its tokens") from None
        if name is None:
            raise _error(401, "invalid or revoked token")
        return name

    Auth = Annotated[str, Depends(authenticated)]

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, detail = _validation_detail(exc)
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(OrchestratorDraining)
    async def _draining(request: Request, exc: OrchestratorDraining) -> JSONResponse:
        return JSONResponse({"detail": one_line(exc)}, status_code=503)

    async def known_job(job_id: str) -> Job:
        job = await asyncio.to_thread(orch.job, job_id)
        if job is None:
            raise _error(404, f"unknown job {job_id}")
        return job

    # -- probes and info -----------------------------------------------------------------

    async def health_now() -> Health | JSONResponse:
        try:
            counts = await asyncio.to_thread(orch.queue.count_by_status)
            depth = await asyncio.to_thread(orch.queue.queue_depth_by_priority)
        except QueueError as exc:
            logger.error("health: %s", exc)
            return JSONResponse({"detail": "the orchestrator cannot read its queue"}, 503)
        robots = orch.robots()
        by_status = {s: sum(1 for r in robots if r.status is s) for s in RobotStatus}
        return Health(
            status="draining" if orch.draining else "ok",
            ready=not orch.draining,
            robots_online=len(robots) - by_status[RobotStatus.OFFLINE],
            robots=by_status,
            jobs=counts,
            queue=depth,
        )

    @app.get("/health", response_model=Health, tags=["probes"])
    async def health() -> Health | JSONResponse:
        """Liveness and load, without a token: status, readiness, robots by status, jobs by
        status, queue depth by priority (503 only when the database cannot be read)."""
        return await health_now()

    @app.get("/health/ready", response_model=Health, tags=["probes"])
    async def ready() -> Health | JSONResponse:
        """Readiness, without a token: 200 while it takes submissions, 503 once a drain
        began or the database cannot be read (a load balancer then stops sending work)."""
        answer = await health_now()
        if isinstance(answer, Health) and not answer.ready:
            return JSONResponse(answer.model_dump(mode="json"), 503)
        return answer

    @app.get("/metrics", tags=["probes"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus text exposition, without a token (the listener is local by default):
        queue depth by priority, jobs by status, running jobs, robots by status, job
        outcomes, cell durations, heartbeat misses, dispatch latency."""
        try:
            depth = await asyncio.to_thread(orch.queue.queue_depth_by_priority)
            counts = await asyncio.to_thread(orch.queue.count_by_status)
        except QueueError as exc:
            logger.error("metrics: %s", exc)
            return JSONResponse({"detail": "the orchestrator cannot read its queue"}, 503)
        body = orch.metrics.render(
            depth=depth, counts=counts, robots=orch.robots(), draining=orch.draining
        )
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    @app.get("/api/info", response_model=ServerInfo, responses=_ERRORS, tags=["info"])
    async def info(_: Auth) -> ServerInfo:
        """Version, the WebSocket URL for monitors and robots, whether it drains."""
        return ServerInfo(
            version=__version__,
            ws_url=orch.url,
            draining=orch.draining,
            protocol_version=PROTOCOL_VERSION,
        )

    # -- jobs ----------------------------------------------------------------------------

    job_errors: dict[int | str, dict[str, Any]] = {
        **_ERRORS,
        422: {"model": ErrorBody, "description": "Bad parameter or workflow."},
        503: {"model": ErrorBody, "description": "Draining: no new jobs."},
    }

    @app.post("/api/jobs", status_code=201, response_model=Job, responses=job_errors, tags=["jobs"])
    async def submit(body: SubmitJob, _: Auth) -> Job:
        """Validate the parameters against the workflow's schema and queue a run."""
        if orch.draining:
            raise _error(503, _DRAINING)
        try:
            path = resolve_workflow(root, body.workflow)
            return await orch.submit(
                path,
                body.parameters,
                raw_parameters=body.raw_parameters or None,
                priority=body.priority,
                tags=body.tags,
                environment=body.environment,
                max_retries=body.max_retries,
            )
        except OrchestratorDraining as exc:
            raise _error(503, one_line(exc)) from None
        except (ParameterError, WorkflowError, ValueError) as exc:
            raise _error(422, one_line(exc)) from None

    @app.get("/api/jobs", response_model=list[Job], responses=_ERRORS, tags=["jobs"])
    async def list_jobs(
        _: Auth,
        status: RunStatus | None = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    ) -> list[Job]:
        """Jobs, newest first, optionally only those in ``status``."""
        return await asyncio.to_thread(orch.jobs, status, limit=limit)

    one_job = _with_errors(404, "Unknown job.")

    @app.get("/api/jobs/{job_id}", response_model=Job, responses=one_job, tags=["jobs"])
    async def get_job(job_id: str, _: Auth) -> Job:
        """One job."""
        return await known_job(job_id)

    finished_errors: dict[int | str, dict[str, Any]] = {
        **one_job,
        409: {"model": ErrorBody, "description": "Not possible in the job's status."},
    }

    @app.post(
        "/api/jobs/{job_id}/cancel",
        response_model=Job,
        responses=finished_errors,
        tags=["jobs"],
    )
    async def cancel(job_id: str, _: Auth) -> Job:
        """Cancel a job: a queued one at once, a running one once its robot stopped it."""
        await known_job(job_id)
        try:
            return orch.cancel(job_id)
        except QueueError as exc:
            raise _error(409, one_line(exc)) from None

    @app.post(
        "/api/jobs/{job_id}/rerun",
        response_model=Job,
        responses={**finished_errors, **job_errors},
        tags=["jobs"],
    )
    async def rerun(job_id: str, _: Auth, body: RerunJob | None = None) -> Job:
        """A new attempt of a finished job, from the failed cell (default) or the start."""
        await known_job(job_id)
        spec = body or RerunJob()
        try:
            return await orch.rerun(
                job_id,
                from_failed=spec.from_failed,
                parameters=spec.parameters,
                raw_parameters=spec.raw_parameters,
            )
        except OrchestratorDraining as exc:
            raise _error(503, one_line(exc)) from None
        except QueueError as exc:
            raise _error(409, one_line(exc)) from None
        except (ParameterError, WorkflowError, ValueError) as exc:
            raise _error(422, one_line(exc)) from None

    @app.get(
        "/api/jobs/{job_id}/outputs",
        response_model=dict[str, Any],
        responses=one_job,
        tags=["jobs"],
    )
    async def job_outputs(job_id: str, _: Auth) -> dict[str, Any]:
        """The values the job's notebook recorded with ``casare_nb.output(name, value)``."""
        await known_job(job_id)
        return await asyncio.to_thread(orch.triggers.store.outputs, job_id)

    # -- schedules -----------------------------------------------------------------------

    def workflow_path(given: str) -> Path:
        try:
            return resolve_workflow(root, given)
        except WorkflowError as exc:
            raise _error(422, one_line(exc)) from None

    def schedule_info(schedule: Schedule, last: datetime | None = None) -> ScheduleInfo:
        upcoming = [] if schedule.paused else orch.triggers.scheduler.next_fire_times(schedule, 3)
        return ScheduleInfo(schedule=schedule, next_fire_times=upcoming, last_due_at=last)

    one_schedule = _with_errors(404, "Unknown schedule.")
    bad_schedule = _with_errors(422, "Bad timetable, parameter or workflow.")

    @app.post(
        "/api/schedules",
        status_code=201,
        response_model=ScheduleInfo,
        responses=bad_schedule,
        tags=["schedules"],
    )
    async def add_schedule(body: NewSchedule, _: Auth) -> ScheduleInfo:
        """Run a workflow on a cron timetable, every N, or once at a date."""
        path = workflow_path(body.workflow)
        try:
            schedule = await orch.triggers.add_schedule(body, path)
        except (CasareError, ValueError) as exc:
            raise _error(422, one_line(exc)) from None
        return schedule_info(schedule)

    @app.get(
        "/api/schedules", response_model=list[ScheduleInfo], responses=_ERRORS, tags=["schedules"]
    )
    async def list_schedules(_: Auth) -> list[ScheduleInfo]:
        """Every schedule with its next 3 due times and its last fired one."""
        schedules = await asyncio.to_thread(orch.triggers.store.schedules)
        last = await asyncio.to_thread(orch.triggers.store.last_dues)
        return [schedule_info(s, last.get(s.schedule_id)) for s in schedules]

    @app.get(
        "/api/schedules/upcoming",
        response_model=list[UpcomingFire],
        responses=_ERRORS,
        tags=["schedules"],
    )
    async def upcoming(
        _: Auth, limit: Annotated[int, Query(ge=1, le=1000)] = 10
    ) -> list[UpcomingFire]:
        """The next ``limit`` due times across every schedule that is not paused."""
        return [
            UpcomingFire(
                due_at=due,
                schedule_id=s.schedule_id,
                workflow_path=s.workflow_path,
                timezone=s.timezone,
            )
            for s, due in orch.triggers.scheduler.upcoming(limit)
        ]

    async def known_schedule(schedule_id: str) -> Schedule:
        schedule = await asyncio.to_thread(orch.triggers.store.schedule, schedule_id)
        if schedule is None:
            raise _error(404, f"unknown schedule {schedule_id}")
        return schedule

    @app.get(
        "/api/schedules/{schedule_id}",
        response_model=ScheduleInfo,
        responses=one_schedule,
        tags=["schedules"],
    )
    async def get_schedule(schedule_id: str, _: Auth) -> ScheduleInfo:
        """One schedule."""
        schedule = await known_schedule(schedule_id)
        last = await asyncio.to_thread(orch.triggers.store.last_due, schedule_id)
        return schedule_info(schedule, last)

    @app.get(
        "/api/schedules/{schedule_id}/fires",
        response_model=list[FireInfo],
        responses=one_schedule,
        tags=["schedules"],
    )
    async def schedule_fires(
        schedule_id: str, _: Auth, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
    ) -> list[FireInfo]:
        """The due times that fired, newest first, and what came of each."""
        await known_schedule(schedule_id)
        fires = await asyncio.to_thread(orch.triggers.store.fires, schedule_id, limit=limit)
        return [FireInfo.model_validate(f._asdict()) for f in fires]

    async def change_schedule(schedule_id: str, _: Request, change: str) -> ScheduleInfo:
        await known_schedule(schedule_id)
        scheduler = orch.triggers.scheduler
        act = {"pause": scheduler.pause, "resume": scheduler.resume, "remove": scheduler.remove}
        try:
            schedule = await act[change](schedule_id)
        except QueueError as exc:
            raise _error(404, one_line(exc)) from None
        return schedule_info(schedule) if change != "remove" else ScheduleInfo(schedule=schedule)

    # -- triggers and webhooks -----------------------------------------------------------

    def trigger_info(trigger: Trigger, request: Request) -> TriggerInfo:
        url = None
        if trigger.kind is TriggerKind.WEBHOOK:
            url = f"{str(request.base_url).rstrip('/')}/hooks/{trigger.trigger_id}"
        return TriggerInfo(trigger=trigger, url=url)

    one_trigger = _with_errors(404, "Unknown trigger.")

    @app.post(
        "/api/triggers",
        status_code=201,
        response_model=TriggerInfo,
        responses=_with_errors(422, "Bad trigger."),
        tags=["triggers"],
    )
    async def add_trigger(body: NewTrigger, request: Request, _: Auth) -> TriggerInfo:
        """A webhook, a file watch, or a chain (on_success / on_failure of ``workflow``)."""
        path = workflow_path(body.workflow)
        run = None if body.run is None else workflow_path(body.run)
        try:
            trigger = await orch.triggers.add_trigger(body, path, run)
        except (CasareError, ValueError) as exc:
            raise _error(422, one_line(exc)) from None
        return trigger_info(trigger, request)

    @app.get(
        "/api/triggers", response_model=list[TriggerInfo], responses=_ERRORS, tags=["triggers"]
    )
    async def list_triggers(request: Request, _: Auth) -> list[TriggerInfo]:
        """Every trigger, oldest first."""
        triggers = await asyncio.to_thread(orch.triggers.triggers)
        return [trigger_info(t, request) for t in triggers]

    @app.get(
        "/api/triggers/{trigger_id}",
        response_model=TriggerInfo,
        responses=one_trigger,
        tags=["triggers"],
    )
    async def get_trigger(trigger_id: str, request: Request, _: Auth) -> TriggerInfo:
        """One trigger."""
        trigger = await asyncio.to_thread(orch.triggers.store.trigger, trigger_id)
        if trigger is None:
            raise _error(404, f"unknown trigger {trigger_id}")
        return trigger_info(trigger, request)

    async def change_trigger(trigger_id: str, request: Request, change: str) -> TriggerInfo:
        triggers = orch.triggers
        try:
            if change == "remove":
                trigger = await triggers.remove_trigger(trigger_id)
            else:
                trigger = await triggers.set_enabled(trigger_id, change == "enable")
        except QueueError as exc:
            raise _error(404, one_line(exc)) from None
        return trigger_info(trigger, request)

    def change_route(
        change: Callable[[str, Request, str], Awaitable[Any]], action: str, doc: str
    ) -> Callable[..., Awaitable[Any]]:
        async def route(item_id: str, request: Request, _: Auth) -> Any:
            return await change(item_id, request, action)

        route.__doc__ = doc
        return route

    for noun, change, model, errors, actions in (
        (
            "schedules",
            change_schedule,
            ScheduleInfo,
            one_schedule,
            (
                ("pause", "POST", "Stop firing until resumed (due times meanwhile do not fire)."),
                ("resume", "POST", "Fire again from the next due time."),
                ("remove", "DELETE", "Delete a schedule (its fires stay); it as it was."),
            ),
        ),
        (
            "triggers",
            change_trigger,
            TriggerInfo,
            one_trigger,
            (
                ("enable", "POST", "Fire again on its events."),
                ("disable", "POST", "Ignore its events until enabled (a webhook: 404)."),
                ("remove", "DELETE", "Delete a trigger; the trigger as it was."),
            ),
        ),
    ):
        for action, verb, doc in actions:
            app.add_api_route(
                f"/api/{noun}/{{item_id}}" + ("" if action == "remove" else f"/{action}"),
                change_route(change, action, doc),
                methods=[verb],
                name=f"{action}_{noun[:-1]}",
                response_model=model,
                responses=errors,
                tags=[noun],
            )

    @app.post(
        "/hooks/{trigger_id}",
        response_model=HookAccepted,
        responses={
            401: {"model": ErrorBody, "description": "Missing, bad, stale or replayed signature."},
            404: {"model": ErrorBody, "description": "No such webhook (or disabled)."},
            422: {"model": ErrorBody, "description": "Body not JSON, or bad parameters."},
            503: {"model": ErrorBody, "description": "Draining: no new jobs."},
        },
        tags=["webhooks"],
    )
    async def hook(trigger_id: str, request: Request) -> HookAccepted | JSONResponse:
        """A webhook delivery, signed ``X-Casare-Signature-256: sha256=<HMAC>`` (no bearer
        token): its JSON body becomes the run's parameters. A delivery id seen before answers
        its first job (``duplicate``) and submits nothing."""
        body = await request.body()
        try:
            accepted = await orch.triggers.hooks.deliver(trigger_id, request.headers, body)
        except HookRefused as exc:
            headers = {"WWW-Authenticate": "HMAC-SHA256"} if exc.status == 401 else None
            return JSONResponse({"detail": exc.detail}, exc.status, headers=headers)
        return accepted

    # -- robots and the orchestrator -----------------------------------------------------

    @app.get("/api/robots", response_model=list[Robot], responses=_ERRORS, tags=["robots"])
    async def robots(_: Auth) -> list[Robot]:
        """Every robot that registered since the orchestrator started (offline ones too)."""
        return orch.robots()

    @app.post("/api/drain", response_model=DrainResult, responses=_ERRORS, tags=["orchestrator"])
    async def drain(_: Auth, body: DrainRequest | None = None) -> DrainResult:
        """Refuse new jobs, wait up to ``timeout_s`` for running ones, shut robots down."""
        report = await orch.drain((body or DrainRequest()).timeout_s)
        return report

    # -- tokens --------------------------------------------------------------------------

    @app.post(
        "/api/tokens",
        status_code=201,
        response_model=TokenCreated,
        responses={**_ERRORS, 409: {"model": ErrorBody, "description": "Name in use."}},
        tags=["tokens"],
    )
    async def create_token(body: CreateToken, _: Auth) -> TokenCreated:
        """A new token, shown this once."""
        try:
            token = await asyncio.to_thread(orch.create_token, body.name)
        except QueueError as exc:
            raise _error(409, one_line(exc)) from None
        return TokenCreated(name=body.name, token=token)

    @app.get("/api/tokens", response_model=list[TokenInfo], responses=_ERRORS, tags=["tokens"])
    async def list_tokens(_: Auth) -> list[TokenInfo]:
        """Every token ever created, revoked ones too; never a token or its hash."""
        rows = await asyncio.to_thread(orch.queue.list_tokens)
        return [TokenInfo.model_validate(row) for row in rows]

    @app.delete(
        "/api/tokens/{name}",
        status_code=204,
        responses={**_ERRORS, 404: {"model": ErrorBody, "description": "Unknown token."}},
        tags=["tokens"],
    )
    async def revoke_token(name: str, _: Auth) -> Response:
        """Revoke a token; connections that use it are closed."""
        rows = await asyncio.to_thread(orch.queue.list_tokens)
        if not any(row["name"] == name for row in rows):
            raise _error(404, f"unknown token {name}")
        try:
            await asyncio.to_thread(orch.revoke_token, name)
        except QueueError as exc:
            raise _error(404, one_line(exc)) from None
        return Response(status_code=204)

    @app.exception_handler(CasareError)
    async def _user_error(request: Request, exc: CasareError) -> JSONResponse:
        return JSONResponse({"detail": one_line(exc)}, status_code=422)

    return app


class _Uvicorn(uvicorn.Server):
    """uvicorn inside someone else's process: no signal handlers of its own (the caller
    owns SIGTERM/SIGINT), and an event set once it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.listening.set()


class HttpServer:
    """Serves :func:`create_app` over ``orch`` with uvicorn in the running event loop.

    ``await start()`` binds ``host:port`` (port 0 picks a free one) and answers the port;
    ``await stop()`` closes it. ``ssl_certfile``/``ssl_keyfile`` serve https.
    """

    def __init__(
        self,
        orch: Orchestrator,
        *,
        workflows_dir: str | Path = ".",
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_HTTP_PORT,
        ssl_certfile: str | Path | None = None,
        ssl_keyfile: str | Path | None = None,
    ) -> None:
        self.app = create_app(orch, workflows_dir=workflows_dir)
        self.host = host
        self.port = port
        self.tls = ssl_certfile is not None
        self._config = uvicorn.Config(
            self.app,
            host=host,
            port=port,
            lifespan="off",
            ws="none",
            log_config=None,  # the process's logging applies (uvicorn's own: warnings only)
            log_level="warning",
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=5,
            ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
            ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
        )
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        """The base URL (the bound port once started)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    async def start(self) -> int:
        """Bind and start serving; the bound port. OSError if the address is taken."""
        if self._task is not None:
            raise RuntimeError("the HTTP server is already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family, reuse_port=False)
        sock.setblocking(False)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        server = _Uvicorn(self._config)
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="orchestrator-http")
        listening = asyncio.create_task(server.listening.wait())
        await asyncio.wait({self._task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if not listening.done():
            listening.cancel()
            self._task.result()  # raises what stopped it
            raise RuntimeError("the HTTP server stopped while starting")
        logger.info("HTTP API listening on %s", self.url)
        return self.port

    async def stop(self) -> None:
        """Stop serving (open requests get a few seconds to end); idempotent."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self._task = None
        if self._socket is not None:
            self._socket.close()
        logger.info("HTTP API on %s stopped", self.url)
