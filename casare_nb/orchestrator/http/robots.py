"""``/api/robots``, ``/api/drain`` and ``/api/info``: the robots and the orchestrator."""

from fastapi import APIRouter

from casare_nb import __version__
from casare_nb.api import DrainRequest, DrainResult, ServerInfo
from casare_nb.core.models import Robot
from casare_nb.orchestrator.http.deps import AUTH_ERRORS, Auth, Orch
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
    )


@router.get("/robots", response_model=list[Robot], tags=["robots"])
async def robots(_: Auth, orch: Orch) -> list[Robot]:
    """Every robot that registered since the orchestrator started (offline ones too)."""
    return orch.robots()


@router.post("/drain", response_model=DrainResult, tags=["orchestrator"])
async def drain(_: Auth, orch: Orch, body: DrainRequest | None = None) -> DrainResult:
    """Refuse new jobs, wait up to ``timeout_s`` for running ones, shut robots down."""
    return await orch.drain((body or DrainRequest()).timeout_s)
