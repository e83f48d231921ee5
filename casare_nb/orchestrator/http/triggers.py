"""``/api/triggers`` (webhooks, file watch, chaining) and ``/hooks/{id}``, where signed
webhook deliveries arrive."""

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from casare_nb.api import ErrorBody, NewTrigger, TriggerInfo
from casare_nb.core.errors import CasareError, QueueError, one_line
from casare_nb.core.models import TriggerKind
from casare_nb.core.triggers import Trigger
from casare_nb.orchestrator.http.deps import (
    AUTH_ERRORS,
    AdminAuth,
    Orch,
    UserAuth,
    Workflow,
    add_changes,
    error,
    refused,
    with_errors,
)
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.orchestrator.triggers.webhooks import HookAccepted, HookRefused

__all__ = ["hooks", "router"]

router = APIRouter(prefix="/api/triggers", tags=["triggers"])
hooks = APIRouter(prefix="/hooks", tags=["webhooks"])

_ONE = with_errors(404, "Unknown trigger.")


def _info(trigger: Trigger, request: Request) -> TriggerInfo:
    url = None
    if trigger.kind is TriggerKind.WEBHOOK:
        url = f"{str(request.base_url).rstrip('/')}/hooks/{trigger.trigger_id}"
    return TriggerInfo(trigger=trigger, url=url)


@router.post(
    "", status_code=201, response_model=TriggerInfo, responses=with_errors(422, "Bad trigger.")
)
async def add_trigger(
    body: NewTrigger,
    request: Request,
    _: AdminAuth,
    orch: Orch,
    workflow: Workflow,
) -> TriggerInfo:
    """A webhook, a file watch, or a chain (on_success / on_failure of ``workflow``)."""
    path = workflow(body.workflow)
    run = None if body.run is None else workflow(body.run)
    try:
        trigger = await orch.triggers.add_trigger(body, path, run)
    except (CasareError, ValueError) as exc:
        raise error(422, one_line(exc)) from None
    return _info(trigger, request)


@router.get("", response_model=list[TriggerInfo], responses=AUTH_ERRORS)
async def list_triggers(request: Request, _: UserAuth, orch: Orch) -> list[TriggerInfo]:
    """Every trigger, oldest first."""
    triggers = await asyncio.to_thread(orch.triggers.triggers)
    return [_info(t, request) for t in triggers]


@router.get("/{trigger_id}", response_model=TriggerInfo, responses=_ONE)
async def get_trigger(trigger_id: str, request: Request, _: UserAuth, orch: Orch) -> TriggerInfo:
    """One trigger."""
    trigger = await asyncio.to_thread(orch.stores.triggers.trigger, trigger_id)
    if trigger is None:
        raise error(404, f"unknown trigger {trigger_id}")
    return _info(trigger, request)


async def _change(item_id: str, action: str, orch: Orchestrator, request: Request) -> TriggerInfo:
    try:
        if action == "remove":
            trigger = await orch.triggers.remove_trigger(item_id)
        else:
            trigger = await orch.triggers.set_enabled(item_id, action == "enable")
    except QueueError as exc:
        raise error(404, one_line(exc)) from None
    return _info(trigger, request)


add_changes(
    router,
    _change,
    (
        ("enable", "POST", "Fire again on its events."),
        ("disable", "POST", "Ignore its events until enabled (a webhook: 401, as if unknown)."),
        ("remove", "DELETE", "Delete a trigger; the trigger as it was."),
    ),
    noun="trigger",
    model=TriggerInfo,
    responses=_ONE,
)


@hooks.post(
    "/{trigger_id}",
    response_model=HookAccepted,
    responses={
        401: {
            "model": ErrorBody,
            "description": "Missing, bad, stale or replayed signature; or no such enabled "
            "webhook (answered the same).",
        },
        422: {"model": ErrorBody, "description": "Body not JSON, or bad parameters."},
        503: {"model": ErrorBody, "description": "Draining: no new jobs."},
    },
)
async def hook(trigger_id: str, request: Request, orch: Orch) -> HookAccepted | JSONResponse:
    """A webhook delivery, signed ``X-Casare-Signature-256: sha256=<HMAC>`` (no bearer
    token): its JSON body becomes the run's parameters. A delivery id seen before answers
    its first job (``duplicate``) and submits nothing."""
    body = await request.body()
    try:
        accepted = await orch.triggers.hooks.deliver(trigger_id, request.headers, body)
    except HookRefused as exc:
        if exc.status == 401:
            answer = refused(request, exc.detail)
            headers = answer.headers or {}
            if answer.status_code == 401:
                headers = {"WWW-Authenticate": "HMAC-SHA256"}
            return JSONResponse({"detail": answer.detail}, answer.status_code, headers=headers)
        return JSONResponse({"detail": exc.detail}, exc.status)
    return accepted
