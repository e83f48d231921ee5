"""``/api/jobs``: submit, list, read, cancel and re-run jobs; read what a job recorded."""

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from casare_nb.api import ErrorBody, RerunJob, SubmitJob
from casare_nb.core.errors import OrchestratorDraining, QueueError, WorkflowError, one_line
from casare_nb.core.models import Job, RunStatus
from casare_nb.core.params import ParameterError
from casare_nb.orchestrator.http.deps import (
    AUTH_ERRORS,
    Auth,
    Orch,
    WorkflowPath,
    error,
    with_errors,
)
from casare_nb.orchestrator.orchestrator import Orchestrator

__all__ = ["router"]

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

_DRAINING = "the orchestrator is draining: it takes no new jobs"
_JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    422: {"model": ErrorBody, "description": "Bad parameter or workflow."},
    503: {"model": ErrorBody, "description": "Draining: no new jobs."},
}
_ONE_JOB = with_errors(404, "Unknown job.")
_FINISHED_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ONE_JOB,
    409: {"model": ErrorBody, "description": "Not possible in the job's status."},
}


async def _known_job(orch: Orchestrator, job_id: str) -> Job:
    job = await asyncio.to_thread(orch.job, job_id)
    if job is None:
        raise error(404, f"unknown job {job_id}")
    return job


@router.post("", status_code=201, response_model=Job, responses=_JOB_ERRORS)
async def submit(
    body: SubmitJob, _: Auth, orch: Orch, workflow: Annotated[WorkflowPath, Depends()]
) -> Job:
    """Validate the parameters against the workflow's schema and queue a run."""
    if orch.draining:
        raise error(503, _DRAINING)
    path = workflow(body.workflow)
    try:
        return await orch.submit(
            path,
            body.parameters,
            raw_parameters=body.raw_parameters or None,
            priority=body.priority,
            tags=body.tags,
            environment=body.environment,
            max_retries=body.max_retries,
        )
    except OrchestratorDraining as exc:
        raise error(503, one_line(exc)) from None
    except (ParameterError, WorkflowError, ValueError) as exc:
        raise error(422, one_line(exc)) from None


@router.get("", response_model=list[Job], responses=AUTH_ERRORS)
async def list_jobs(
    _: Auth,
    orch: Orch,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[Job]:
    """Jobs, newest first, optionally only those in ``status``."""
    return await asyncio.to_thread(orch.jobs, status, limit=limit)


@router.get("/{job_id}", response_model=Job, responses=_ONE_JOB)
async def get_job(job_id: str, _: Auth, orch: Orch) -> Job:
    """One job."""
    return await _known_job(orch, job_id)


@router.post("/{job_id}/cancel", response_model=Job, responses=_FINISHED_ERRORS)
async def cancel(job_id: str, _: Auth, orch: Orch) -> Job:
    """Cancel a job: a queued one at once, a running one once its robot stopped it."""
    await _known_job(orch, job_id)
    try:
        return orch.cancel(job_id)
    except QueueError as exc:
        raise error(409, one_line(exc)) from None


@router.post("/{job_id}/rerun", response_model=Job, responses={**_FINISHED_ERRORS, **_JOB_ERRORS})
async def rerun(job_id: str, _: Auth, orch: Orch, body: RerunJob | None = None) -> Job:
    """A new attempt of a finished job, from the failed cell (default) or the start."""
    await _known_job(orch, job_id)
    spec = body or RerunJob()
    try:
        return await orch.rerun(
            job_id,
            from_failed=spec.from_failed,
            parameters=spec.parameters,
            raw_parameters=spec.raw_parameters,
        )
    except OrchestratorDraining as exc:
        raise error(503, one_line(exc)) from None
    except QueueError as exc:
        raise error(409, one_line(exc)) from None
    except (ParameterError, WorkflowError, ValueError) as exc:
        raise error(422, one_line(exc)) from None


@router.get("/{job_id}/outputs", response_model=dict[str, Any], responses=_ONE_JOB)
async def job_outputs(job_id: str, _: Auth, orch: Orch) -> dict[str, Any]:
    """The values the job's notebook recorded with ``casare_nb.output(name, value)``."""
    await _known_job(orch, job_id)
    return await asyncio.to_thread(orch.stores.outputs.outputs, job_id)
