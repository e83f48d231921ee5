"""``/health``, ``/health/ready`` and ``/metrics``: probes, without a token."""

import asyncio
import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from casare_nb.api import Health
from casare_nb.core.errors import QueueError
from casare_nb.core.models import RobotStatus
from casare_nb.orchestrator.http.deps import Orch
from casare_nb.orchestrator.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from casare_nb.orchestrator.orchestrator import Orchestrator

__all__ = ["router"]

logger = logging.getLogger("casare_nb.orchestrator.http")

router = APIRouter(tags=["probes"])

_UNREADABLE = "the orchestrator cannot read its queue"


async def _health(orch: Orchestrator) -> Health | JSONResponse:
    fault = orch.storage_fault()  # a few stat calls: on the loop
    if fault is not None:  # what it acknowledged now could not be kept
        return JSONResponse({"detail": f"storage fault: {fault}"}, 503)
    try:
        counts = await asyncio.to_thread(orch.stores.jobs.count_by_status)
        depth = await asyncio.to_thread(orch.stores.jobs.queue_depth_by_priority)
    except QueueError as exc:
        logger.error("health: %s", exc)
        return JSONResponse({"detail": _UNREADABLE}, 503)
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


@router.get("/health", response_model=Health)
async def health(orch: Orch) -> Health | JSONResponse:
    """Liveness and load, without a token: status, readiness, robots by status, jobs by
    status, queue depth by priority (503, with the reason, when the database cannot be read
    or the state directory cannot be written: a storage fault)."""
    return await _health(orch)


@router.get("/health/ready", response_model=Health)
async def ready(orch: Orch) -> Health | JSONResponse:
    """Readiness, without a token: 200 while it takes submissions, 503 once a drain
    began, the database cannot be read, or a storage fault refuses submissions (the reason
    in ``detail``; a load balancer then stops sending work). 200 again once writes succeed."""
    answer = await _health(orch)
    if isinstance(answer, Health) and not answer.ready:
        return JSONResponse(answer.model_dump(mode="json"), 503)
    return answer


@router.get("/metrics", response_class=Response)
async def metrics(orch: Orch) -> Response:
    """Prometheus text exposition, without a token (the listener is local by default):
    queue depth by priority, jobs by status, running jobs, robots by status, job
    outcomes, cell durations, heartbeat misses, dispatch latency, each robot's CPU, memory
    and heartbeats missed, connection failures, the last hour's failure rate, and the
    process's own figures (``process_*``)."""
    try:
        depth = await asyncio.to_thread(orch.stores.jobs.queue_depth_by_priority)
        counts = await asyncio.to_thread(orch.stores.jobs.count_by_status)
    except QueueError as exc:
        logger.error("metrics: %s", exc)
        return JSONResponse({"detail": _UNREADABLE}, 503)
    body = orch.metrics.render(
        depth=depth,
        counts=counts,
        robots=orch.robots(),
        draining=orch.draining,
        heartbeat_interval_s=orch.heartbeat_interval_s,
        missed_heartbeats=orch.missed_heartbeats,
    )
    return Response(body, media_type=METRICS_CONTENT_TYPE)
