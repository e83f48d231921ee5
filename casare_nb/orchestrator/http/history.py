"""``/api/history``: the runs, paged and filtered, and the aggregates a dashboard draws,
computed by the store so that a large history sends a few rows."""

import asyncio
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from casare_nb.core.history import CellDurations, DailyRuns, RunGroup
from casare_nb.core.models import RunRecord, RunStatus
from casare_nb.orchestrator.http.deps import AUTH_ERRORS, UserAuth, Written

__all__ = ["router"]

router = APIRouter(prefix="/api/history", tags=["history"], responses=AUTH_ERRORS)

Workflow = Annotated[str | None, Query(description="Only this workflow (its path).")]


@router.get("/runs", response_model=list[RunRecord])
async def runs(
    _: UserAuth,
    orch: Written,
    workflow: Workflow = None,
    trigger: Annotated[
        str | None, Query(description="kind:id of a schedule or trigger, or 'manual'.")
    ] = None,
    status: Annotated[list[RunStatus] | None, Query()] = None,
    before: Annotated[datetime | None, Query(description="Started before (the next page).")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[RunRecord]:
    """The latest attempt of each run, newest first."""
    return await asyncio.to_thread(
        orch.stores.history.list_runs,
        status=status,
        limit=limit,
        workflow=workflow,
        trigger=trigger,
        before=before,
    )


@router.get("/daily", response_model=list[DailyRuns])
async def daily(
    _: UserAuth,
    orch: Written,
    workflow: Workflow = None,
    days: Annotated[int, Query(ge=1, le=366)] = 14,
) -> list[DailyRuns]:
    """Runs per workflow per UTC day, by outcome, over the last ``days`` days."""
    return await asyncio.to_thread(
        orch.stores.history.daily, days=days, workflow=workflow, now=orch.now()
    )


@router.get("/groups", response_model=list[RunGroup])
async def groups(
    _: UserAuth,
    orch: Written,
    workflow: Workflow = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> list[RunGroup]:
    """Runs per (workflow, schedule or trigger that started them), most recent first."""
    return await asyncio.to_thread(orch.stores.history.groups, limit=limit, workflow=workflow)


@router.get("/cells", response_model=list[CellDurations])
async def cells(_: UserAuth, orch: Written, workflow: Workflow = None) -> list[CellDurations]:
    """Per workflow: median, p95 and longest duration of its cells."""
    return await asyncio.to_thread(orch.stores.history.cell_durations, workflow=workflow)
