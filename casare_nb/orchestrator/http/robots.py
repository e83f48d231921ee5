"""``/api/robots`` (and draining one), ``/api/submissions`` (pausing them), ``/api/drain``
and ``/api/info``: the robots and the orchestrator. Reading needs a user token; every change
needs an admin token and is audited."""

from typing import Annotated

from fastapi import APIRouter, Depends

from casare_nb import __version__
from casare_nb.api import DrainRequest, DrainResult, ServerInfo
from casare_nb.core.errors import QueueError, one_line
from casare_nb.core.models import Robot
from casare_nb.core.tokens import Holder, TokenRole
from casare_nb.orchestrator import audit
from casare_nb.orchestrator.http.deps import (
    AUTH_ERRORS,
    Needs,
    Orch,
    UserAuth,
    error,
    with_errors,
)
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.protocol import PROTOCOL_VERSION

__all__ = ["router"]

router = APIRouter(prefix="/api", responses=AUTH_ERRORS)


def server_info(orch: Orchestrator) -> ServerInfo:
    """``GET /api/info``'s answer."""
    return ServerInfo(
        version=__version__,
        ws_url=orch.url,
        draining=orch.draining,
        protocol_version=PROTOCOL_VERSION,
        submissions_paused=orch.submissions_paused,
        maintenance=orch.maintenance is not None,
    )


@router.get("/info", response_model=ServerInfo, tags=["info"])
async def info(_: UserAuth, orch: Orch) -> ServerInfo:
    """Version, the WebSocket URL for monitors and robots, whether it drains."""
    return server_info(orch)


@router.get("/robots", response_model=list[Robot], tags=["robots"])
async def robots(_: UserAuth, orch: Orch) -> list[Robot]:
    """Every robot that registered since the orchestrator started (offline ones too); with
    several orchestrators on one database, those connected to the others too (``node``)."""
    return orch.robots_everywhere()


@router.post("/drain", response_model=DrainResult, tags=["orchestrator"])
async def drain(
    holder: Annotated[Holder, Depends(Needs(TokenRole.ADMIN, "draining the orchestrator"))],
    orch: Orch,
    body: DrainRequest | None = None,
) -> DrainResult:
    """Refuse new jobs, wait up to ``timeout_s`` for running ones, shut robots down."""
    timeout_s = (body or DrainRequest()).timeout_s
    audit.succeeded(holder, "drain", "orchestrator", f"timeout {timeout_s:g} s")
    return await orch.drain(timeout_s)


_ONE_ROBOT = with_errors(409, "The robot is not online.")


def _pause(holder: Holder, orch: Orchestrator, robot_id: str, paused: bool) -> Robot:
    action = "drain_robot" if paused else "undrain_robot"
    try:
        robot = orch.pause_robot(robot_id, paused)
    except QueueError as exc:
        audit.denied(holder, action, robot_id, one_line(exc), outcome="error")
        raise error(409, one_line(exc)) from None
    audit.succeeded(holder, action, robot_id)
    return robot


@router.post(
    "/robots/{robot_id}/pause", response_model=Robot, tags=["robots"], responses=_ONE_ROBOT
)
async def pause_robot(
    robot_id: str,
    holder: Annotated[Holder, Depends(Needs(TokenRole.ADMIN, "draining a robot"))],
    orch: Orch,
) -> Robot:
    """Drain one robot: it takes no new jobs, its running jobs finish."""
    return _pause(holder, orch, robot_id, True)


@router.post(
    "/robots/{robot_id}/unpause", response_model=Robot, tags=["robots"], responses=_ONE_ROBOT
)
async def unpause_robot(
    robot_id: str,
    holder: Annotated[Holder, Depends(Needs(TokenRole.ADMIN, "undraining a robot"))],
    orch: Orch,
) -> Robot:
    """Let a paused robot take jobs again."""
    return _pause(holder, orch, robot_id, False)


@router.post("/submissions/pause", response_model=ServerInfo, tags=["orchestrator"])
async def pause_submissions(
    holder: Annotated[Holder, Depends(Needs(TokenRole.ADMIN, "pausing submissions"))],
    orch: Orch,
) -> ServerInfo:
    """Refuse new submissions, re-runs and trigger fires (503) until unpaused; queued and
    running jobs go on."""
    orch.pause_submissions(True)
    audit.succeeded(holder, "pause_submissions", "submissions")
    return server_info(orch)


@router.post("/submissions/unpause", response_model=ServerInfo, tags=["orchestrator"])
async def unpause_submissions(
    holder: Annotated[Holder, Depends(Needs(TokenRole.ADMIN, "resuming submissions"))],
    orch: Orch,
) -> ServerInfo:
    """Take submissions again."""
    orch.pause_submissions(False)
    audit.succeeded(holder, "resume_submissions", "submissions")
    return server_info(orch)
