"""``/api/maintenance`` (hold every schedule and trigger at once, and let them go again) and
``/api/drain/cancel`` (undo a drain or a pause of submissions). Reading needs a user token;
every change needs an admin token and is audited."""

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends

from casare_nb.api import Maintenance, ServerInfo
from casare_nb.core.errors import QueueError, one_line
from casare_nb.core.tokens import Holder, TokenRole
from casare_nb.orchestrator import audit
from casare_nb.orchestrator.http.deps import AUTH_ERRORS, Needs, Orch, UserAuth, error, with_errors
from casare_nb.orchestrator.http.robots import server_info
from casare_nb.orchestrator.orchestrator import Orchestrator

__all__ = ["router"]

router = APIRouter(prefix="/api", responses=AUTH_ERRORS)


async def _state(orch: Orchestrator) -> Maintenance:
    schedules, triggers = await asyncio.to_thread(orch.triggers.held_counts)
    since = orch.maintenance
    return Maintenance(
        on=since is not None,
        since=since,
        schedules_held=schedules if since is not None else 0,
        triggers_held=triggers if since is not None else 0,
    )


@router.get("/maintenance", response_model=Maintenance, tags=["maintenance"])
async def maintenance(_: UserAuth, orch: Orch) -> Maintenance:
    """Whether schedules and triggers are held for maintenance, since when, how many."""
    return await _state(orch)


@router.post("/maintenance/on", response_model=Maintenance, tags=["maintenance"])
async def maintenance_on(
    holder: Annotated[Holder, Depends(Needs(TokenRole.ADMIN, "starting maintenance"))],
    orch: Orch,
) -> Maintenance:
    """Hold every schedule and trigger: due times pass unfired (recorded ``skipped:
    maintenance``), webhooks answer 503, file watch and chaining submit nothing. Each one's
    own paused/disabled state is kept. Idempotent; kept across restarts."""
    await orch.set_maintenance(True)
    audit.succeeded(holder, "maintenance_on", "triggers")
    return await _state(orch)


@router.post("/maintenance/off", response_model=Maintenance, tags=["maintenance"])
async def maintenance_off(
    holder: Annotated[Holder, Depends(Needs(TokenRole.ADMIN, "ending maintenance"))],
    orch: Orch,
) -> Maintenance:
    """Let schedules (from their next due time) and triggers fire again; the ones paused or
    disabled before maintenance stay so. Idempotent."""
    await orch.set_maintenance(False)
    audit.succeeded(holder, "maintenance_off", "triggers")
    return await _state(orch)


@router.post(
    "/drain/cancel",
    response_model=ServerInfo,
    tags=["orchestrator"],
    responses=with_errors(409, "The orchestrator is shutting down."),
)
async def cancel_drain(
    holder: Annotated[Holder, Depends(Needs(TokenRole.ADMIN, "undoing a drain"))],
    orch: Orch,
) -> ServerInfo:
    """Undo a drain (one under way stops waiting and shuts no robot down) and a pause of
    submissions: new jobs are taken and queued ones dispatched again."""
    try:
        orch.undrain()
    except QueueError as exc:
        raise error(409, one_line(exc)) from None
    audit.succeeded(holder, "undrain", "orchestrator")
    return server_info(orch)
