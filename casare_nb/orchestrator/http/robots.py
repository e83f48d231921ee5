"""``/api/robots`` (and draining one), ``/api/submissions`` (pausing them), ``/api/drain``
and ``/api/info``: the robots and the orchestrator."""

from fastapi import APIRouter

from casare_nb import __version__
from casare_nb.api import DrainRequest, DrainResult, ServerInfo
from casare_nb.core.errors import QueueError, one_line
from casare_nb.core.models import Robot
from casare_nb.orchestrator.http.deps import AUTH_ERRORS, Auth, Orch, error, with_errors
from casare_nb.protocol import PROTOCOL_VERSION

__all__ = ["router"]

router = APIRouter(prefix="/api", responses=AUTH_ERRORS)


@router.get("/info", response_model=ServerInfo, tags=["info"])
async def info(_: Auth, orch: Orch) -> ServerInfo:
    """Version, the WebSocket URL for monitors and robots, whether it drains."""
    return ServerInfo(
        version=__version__,
        ws_url=orch.url,
        draining=orch.draining,
        protocol_version=PROTOCOL_VERSION,
        submissions_paused=orch.submissions_paused,
    )


@router.get("/robots", response_model=list[Robot], tags=["robots"])
async def robots(_: Auth, orch: Orch) -> list[Robot]:
    """Every robot that registered since the orchestrator started (offline ones too)."""
    return orch.robots()


@router.post("/drain", response_model=DrainResult, tags=["orchestrator"])
async def drain(_: Auth, orch: Orch, body: DrainRequest | None = None) -> DrainResult:
    """Refuse new jobs, wait up to ``timeout_s`` for running ones, shut robots down."""
    return await orch.drain((body or DrainRequest()).timeout_s)


_ONE_ROBOT = with_errors(409, "The robot is not online.")


@router.post(
    "/robots/{robot_id}/pause", response_model=Robot, tags=["robots"], responses=_ONE_ROBOT
)
async def pause_robot(robot_id: str, _: Auth, orch: Orch) -> Robot:
    """Drain one robot: it takes no new jobs, its running jobs finish."""
    try:
        return orch.pause_robot(robot_id, True)
    except QueueError as exc:
        raise error(409, one_line(exc)) from None


@router.post(
    "/robots/{robot_id}/unpause", response_model=Robot, tags=["robots"], responses=_ONE_ROBOT
)
async def unpause_robot(robot_id: str, _: Auth, orch: Orch) -> Robot:
    """Let a paused robot take jobs again."""
    try:
        return orch.pause_robot(robot_id, False)
    except QueueError as exc:
        raise error(409, one_line(exc)) from None


@router.post("/submissions/pause", response_model=ServerInfo, tags=["orchestrator"])
async def pause_submissions(_: Auth, orch: Orch) -> ServerInfo:
    """Refuse new submissions, re-runs and trigger fires (503) until unpaused; queued and
    running jobs go on."""
    orch.pause_submissions(True)
    return await info(_, orch)


@router.post("/submissions/unpause", response_model=ServerInfo, tags=["orchestrator"])
async def unpause_submissions(_: Auth, orch: Orch) -> ServerInfo:
    """Take submissions again."""
    orch.pause_submissions(False)
    return await info(_, orch)
