"""``/api/schedules``: run workflows on a timetable (cron, every N, once at a date)."""

import asyncio
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request

from casare_nb.api import FireInfo, NewSchedule, ScheduleInfo, UpcomingFire
from casare_nb.core.errors import CasareError, QueueError, one_line
from casare_nb.core.triggers import Schedule
from casare_nb.orchestrator.http.deps import (
    AUTH_ERRORS,
    AdminAuth,
    Orch,
    UserAuth,
    Workflow,
    add_changes,
    error,
    with_errors,
)
from casare_nb.orchestrator.orchestrator import Orchestrator

__all__ = ["router"]

router = APIRouter(prefix="/api/schedules", tags=["schedules"])

_ONE = with_errors(404, "Unknown schedule.")


def _info(orch: Orchestrator, schedule: Schedule, last: datetime | None = None) -> ScheduleInfo:
    upcoming = [] if schedule.paused else orch.triggers.scheduler.next_fire_times(schedule, 3)
    return ScheduleInfo(schedule=schedule, next_fire_times=upcoming, last_due_at=last)


async def _known(orch: Orchestrator, schedule_id: str) -> Schedule:
    schedule = await asyncio.to_thread(orch.stores.triggers.schedule, schedule_id)
    if schedule is None:
        raise error(404, f"unknown schedule {schedule_id}")
    return schedule


@router.post(
    "",
    status_code=201,
    response_model=ScheduleInfo,
    responses=with_errors(422, "Bad timetable, parameter or workflow."),
)
async def add_schedule(
    body: NewSchedule, _: AdminAuth, orch: Orch, workflow: Workflow
) -> ScheduleInfo:
    """Run a workflow on a cron timetable, every N, or once at a date."""
    path = workflow(body.workflow)
    try:
        schedule = await orch.triggers.add_schedule(body, path)
    except (CasareError, ValueError) as exc:
        raise error(422, one_line(exc)) from None
    return _info(orch, schedule)


@router.get("", response_model=list[ScheduleInfo], responses=AUTH_ERRORS)
async def list_schedules(_: UserAuth, orch: Orch) -> list[ScheduleInfo]:
    """Every schedule with its next 3 due times and its last fired one."""
    schedules = await asyncio.to_thread(orch.stores.triggers.schedules)
    last = await asyncio.to_thread(orch.stores.triggers.last_dues)
    return [_info(orch, s, last.get(s.schedule_id)) for s in schedules]


@router.get("/upcoming", response_model=list[UpcomingFire], responses=AUTH_ERRORS)
async def upcoming(
    _: UserAuth, orch: Orch, limit: Annotated[int, Query(ge=1, le=1000)] = 10
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


@router.get("/{schedule_id}", response_model=ScheduleInfo, responses=_ONE)
async def get_schedule(schedule_id: str, _: UserAuth, orch: Orch) -> ScheduleInfo:
    """One schedule."""
    schedule = await _known(orch, schedule_id)
    last = await asyncio.to_thread(orch.stores.triggers.last_due, schedule_id)
    return _info(orch, schedule, last)


@router.get("/{schedule_id}/fires", response_model=list[FireInfo], responses=_ONE)
async def schedule_fires(
    schedule_id: str, _: UserAuth, orch: Orch, limit: Annotated[int, Query(ge=1, le=10_000)] = 100
) -> list[FireInfo]:
    """The due times that fired, newest first, and what came of each."""
    await _known(orch, schedule_id)
    fires = await asyncio.to_thread(orch.stores.triggers.fires, schedule_id, limit=limit)
    return [FireInfo.model_validate(f._asdict()) for f in fires]


async def _change(item_id: str, action: str, orch: Orchestrator, _: Request) -> ScheduleInfo:
    await _known(orch, item_id)
    scheduler = orch.triggers.scheduler
    act = {"pause": scheduler.pause, "resume": scheduler.resume, "remove": scheduler.remove}
    try:
        schedule = await act[action](item_id)
    except QueueError as exc:
        raise error(404, one_line(exc)) from None
    return _info(orch, schedule) if action != "remove" else ScheduleInfo(schedule=schedule)


add_changes(
    router,
    _change,
    (
        ("pause", "POST", "Stop firing until resumed (due times meanwhile do not fire)."),
        ("resume", "POST", "Fire again from the next due time."),
        ("remove", "DELETE", "Delete a schedule (its fires stay); it as it was."),
    ),
    noun="schedule",
    model=ScheduleInfo,
    responses=_ONE,
)
