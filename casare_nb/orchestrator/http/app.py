"""The ASGI app of the orchestrator's HTTP API: the routers of this package, one error shape."""

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from casare_nb import __version__
from casare_nb.core.errors import CasareError, SubmissionsClosed, one_line
from casare_nb.orchestrator.brake import AuthBrake
from casare_nb.orchestrator.http import (
    admin,
    blobs,
    history,
    jobs,
    maintenance,
    probes,
    robots,
    schedules,
    status,
    tokens,
    triggers,
    workflows,
)
from casare_nb.orchestrator.http.limits import DEFAULT_MAX_BODY_BYTES, BodyLimit
from casare_nb.orchestrator.orchestrator import Orchestrator

__all__ = ["create_app"]


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


def create_app(
    orch: Orchestrator,
    *,
    workflows_dir: str | Path = ".",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The ASGI app of the API over ``orch`` (started by the caller); workflow paths resolve
    against ``workflows_dir``; a request body over ``max_body_bytes`` answers 413."""
    app = FastAPI(
        title="casare_nb orchestrator",
        version=__version__,
        description="Queue notebook runs, watch robots, re-run from the failed cell.",
        redoc_url=None,
    )
    app.state.orchestrator = orch
    app.state.brake = AuthBrake()
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.state.workflows_dir = Path(workflows_dir).absolute()
    for router in (
        probes.router,
        status.router,
        robots.router,
        jobs.router,
        blobs.router,
        history.router,
        schedules.router,
        triggers.router,
        triggers.hooks,
        tokens.router,
        workflows.router,
        admin.router,
        maintenance.router,
    ):
        app.include_router(router)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, detail = _validation_detail(exc)
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(SubmissionsClosed)
    async def _closed(request: Request, exc: SubmissionsClosed) -> JSONResponse:
        return JSONResponse({"detail": one_line(exc)}, status_code=503)

    @app.exception_handler(CasareError)
    async def _user_error(request: Request, exc: CasareError) -> JSONResponse:
        return JSONResponse({"detail": one_line(exc)}, status_code=422)

    return app
