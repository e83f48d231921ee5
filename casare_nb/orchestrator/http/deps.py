"""What the routes share: the orchestrator they serve, the bearer-token check, workflow paths
and one-line errors.

- Every ``/api/...`` route needs ``Authorization: Bearer <token>``, checked against the
  orchestrator's tokens (hashed): 401 otherwise. ``/health``, ``/metrics`` and ``/hooks``
  (signed instead) need none. Every error is ``{"detail": "<one line>"}``; a body that is not
  JSON is 400, a body or query that does not fit its model 422.
- Roles (:mod:`casare_nb.core.tokens`): a route takes :data:`UserAuth` (a user or admin
  token: submit, read, its own jobs), :data:`AdminAuth` (an admin token: tokens, robots,
  submissions, schedules, triggers, maintenance) or, for one message, ``Annotated[Holder,
  Depends(Needs(TokenRole.ADMIN, "draining a robot"))]``; a token whose role may not is
  answered 403 with one line (``token 'x' has role user; draining a robot needs admin``) and
  the refusal is audited. A robot token may not use the HTTP API at all (its place is the
  WebSocket), except a route that takes :data:`RobotAuth`. :data:`Auth` is any live token
  (its name), kept for routes that do not care about roles.
- Workflow paths: a relative path is resolved against the workflows directory; an absolute
  path, or one that resolves (symlinks included) outside that directory, is refused with
  422, so a token cannot make the robots run any notebook on the orchestrator's disk.
- Reads of the stores run in a worker thread; job state changes (submit, cancel, rerun) run
  on the event loop's thread, where the orchestrator makes every change of a job, in order.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from casare_nb.api import ErrorBody
from casare_nb.core.errors import QueueError, WorkflowError, one_line
from casare_nb.core.tokens import BadAuthorization, Holder, TokenRole, bearer_token, refusal
from casare_nb.orchestrator import audit
from casare_nb.orchestrator.brake import AuthBrake
from casare_nb.orchestrator.orchestrator import Orchestrator

__all__ = [
    "AUTH_ERRORS",
    "AdminAuth",
    "Auth",
    "Caller",
    "Needs",
    "Orch",
    "RobotAuth",
    "UserAuth",
    "Workflow",
    "WorkflowPath",
    "Written",
    "add_changes",
    "error",
    "resolve_workflow",
    "with_errors",
]

logger = logging.getLogger("casare_nb.orchestrator.http")

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, unknown or revoked token."},
    403: {"model": ErrorBody, "description": "The token's role may not do this."},
}


def with_errors(status: int, description: str) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route: 401, 403 and ``status``."""
    return {**AUTH_ERRORS, status: {"model": ErrorBody, "description": description}}


def error(status: int, detail: str) -> HTTPException:
    """An error answer: ``{"detail": detail}`` with ``status``."""
    headers = {"WWW-Authenticate": 'Bearer realm="casare_nb"'} if status == 401 else None
    return HTTPException(status_code=status, detail=detail, headers=headers)


async def _orchestrator(request: Request) -> Orchestrator:
    # async: FastAPI runs a plain def dependency in a worker thread (a hop per request)
    orch: Orchestrator = request.app.state.orchestrator
    return orch


Orch = Annotated[Orchestrator, Depends(_orchestrator)]
"""The orchestrator the app serves."""


async def _written(orch: Orch) -> Orchestrator:
    await asyncio.to_thread(orch.job_manager.flush_history, 10.0)
    return orch


Written = Annotated[Orchestrator, Depends(_written)]
"""The orchestrator, once what its job manager made so far is in the stores: a history read
made after a job's final event sees that job's records (the history is written behind)."""

_bearer = HTTPBearer(auto_error=False, description="A token from `casare-nb token create`.")


def client_of(request: Request) -> str:
    """The address a request came from (for the authentication brake)."""
    return request.client.host if request.client else "unknown"


def refused(request: Request, why: str) -> HTTPException:
    """The answer to a failed authentication: 401 with ``why``, counted against the client;
    429 with ``Retry-After`` once the client failed too often lately (a valid token or
    signature is never braked: only failures are). Each is a record of the audit log."""
    brake: AuthBrake = request.app.state.brake
    client = client_of(request)
    wait = brake.wait_s(client)
    brake.failed(client, why, f"{request.method} {request.url.path}")
    orch: Orchestrator = request.app.state.orchestrator
    orch.metrics.connection_failed("refused")
    if wait is not None:
        return HTTPException(
            status_code=429,
            detail=f"too many failed authentications from {client}; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )
    return error(401, why)


async def _caller(
    request: Request,
    orch: Orch,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Holder:
    """Who holds the request's live token, and from where; 401 otherwise (429 after too
    many)."""
    try:
        token = bearer_token(request.headers.getlist("authorization"))
    except BadAuthorization as exc:
        raise refused(request, str(exc)) from None
    tokens = orch.stores.tokens
    try:
        # a token verified lately is known from memory: no query, no thread
        holder = tokens.known_token(token) or await asyncio.to_thread(tokens.verify_token, token)
    except QueueError as exc:
        logger.error("cannot check a token: %s", exc)
        raise error(503, "the orchestrator cannot read its tokens") from None
    if holder is None:
        raise refused(request, "invalid or revoked token")
    return Holder(holder.name, holder.role, client_of(request))


Caller = Annotated[Holder, Depends(_caller)]
"""Who holds the request's live token, whatever its role (401 without one)."""


async def _authenticated(caller: Caller) -> str:
    return caller.name


Auth = Annotated[str, Depends(_authenticated)]
"""The name of the request's live token, whatever its role (401 without one)."""


def route_action(request: Request) -> str:
    """What a request asks for, in words a refusal can name: ``POST /api/backup``."""
    route = request.scope.get("route")
    path = getattr(route, "path", None) or request.url.path
    return f"{request.method} {path}"


class Needs:
    """A dependency: the request's :class:`Holder` if its role may do ``action`` (the route,
    ``POST /api/...``, when not given), which needs ``role``; 403 with one line otherwise,
    recorded in the audit log. Use it as ``Annotated[Holder, Depends(Needs(role,
    action))]``."""

    def __init__(self, role: TokenRole, action: str | None = None) -> None:
        self.role = role
        self.action = action

    async def __call__(self, request: Request, caller: Caller) -> Holder:
        action = self.action or route_action(request)
        why = refusal(caller, self.role, action)
        if why is not None:
            audit.denied(caller, action, request.url.path, why)
            raise error(403, why)
        return caller


RobotAuth = Annotated[Holder, Depends(Needs(TokenRole.ROBOT))]
"""A robot token (or one from before roles); 403 for a user or admin token."""
UserAuth = Annotated[Holder, Depends(Needs(TokenRole.USER))]
"""A user or admin token (one from before roles acts as admin); 403 for a robot token."""
AdminAuth = Annotated[Holder, Depends(Needs(TokenRole.ADMIN))]
"""An admin token (or one from before roles); 403 for a user or robot token."""


Change = Callable[[str, str, Orchestrator, Request], Awaitable[Any]]
"""``change(item_id, action, orchestrator, request)``: apply one action to one item."""


def add_changes(
    router: APIRouter,
    change: Change,
    actions: Sequence[tuple[str, str, str]],
    *,
    noun: str,
    model: type[Any],
    responses: dict[int | str, dict[str, Any]],
) -> None:
    """Add a route per ``(action, HTTP verb, doc)``: ``/{item_id}/<action>``, or
    ``/{item_id}`` for ``remove``; each calls ``change``, for an admin token only."""

    def route_of(action: str, doc: str) -> Callable[..., Awaitable[Any]]:
        async def route(item_id: str, request: Request, _: AdminAuth, orch: Orch) -> Any:
            return await change(item_id, action, orch, request)

        route.__doc__ = doc
        return route

    for action, verb, doc in actions:
        router.add_api_route(
            "/{item_id}" + ("" if action == "remove" else f"/{action}"),
            route_of(action, doc),
            methods=[verb],
            name=f"{action}_{noun}",
            response_model=model,
            responses=responses,
        )


def resolve_workflow(workflows_dir: Path, given: str) -> Path:
    """``given`` resolved against ``workflows_dir``; a :class:`WorkflowError` if it lies outside
    (after following symlinks). Whether it exists is the orchestrator's to check."""
    root = workflows_dir.resolve()
    candidate = Path(given)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise WorkflowError(f"workflow {given} is outside the workflows directory {root}")
    return resolved


class WorkflowPath:
    """Resolves the workflow paths of a request (422 for one outside the workflows
    directory)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, given: str) -> Path:
        try:
            return resolve_workflow(self.root, given)
        except WorkflowError as exc:
            raise error(422, one_line(exc)) from None


async def _workflow_path(request: Request) -> WorkflowPath:
    # async: FastAPI runs a class or a plain def dependency in a worker thread
    return WorkflowPath(request.app.state.workflows_dir)


Workflow = Annotated[WorkflowPath, Depends(_workflow_path)]
"""The request's :class:`WorkflowPath` (resolving against the workflows directory)."""
