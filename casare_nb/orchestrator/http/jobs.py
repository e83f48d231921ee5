"""``/api/jobs``: submit, list, read, cancel and re-run jobs; read what a job recorded: its
attempts, cells, notebook, where it failed, its outputs.

A user token may read every job, and cancel or re-run the jobs it submitted itself (the job's
``submitted_by``); an admin token anyone's. Submissions, cancellations and re-runs are
audited."""

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from casare_nb.api import DebugBundle, ErrorBody, RerunJob, SubmitJob
from casare_nb.core.errors import (
    JobTooLarge,
    QueueError,
    SubmissionsClosed,
    WorkflowError,
    one_line,
)
from casare_nb.core.failure import Failure, failure_of
from casare_nb.core.history import FAILED_STATUSES
from casare_nb.core.models import CellRecord, Job, RunRecord, RunStatus
from casare_nb.core.params import ParameterError
from casare_nb.core.tokens import Holder
from casare_nb.orchestrator import audit
from casare_nb.orchestrator.http.deps import (
    AUTH_ERRORS,
    Orch,
    UserAuth,
    Workflow,
    Written,
    error,
    with_errors,
)
from casare_nb.orchestrator.orchestrator import Orchestrator

__all__ = ["router"]

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

_DRAINING = "the orchestrator is draining: it takes no new jobs"
_JOB_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    413: {"model": ErrorBody, "description": "The job would not fit one protocol frame."},
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
async def submit(body: SubmitJob, holder: UserAuth, orch: Orch, workflow: Workflow) -> Job:
    """Validate the parameters against the workflow's schema and queue a run."""
    try:
        job = await _submit(body, holder, orch, workflow)
    except HTTPException as exc:
        audit.denied(holder, "submit", body.workflow, str(exc.detail), outcome="error")
        raise
    audit.succeeded(holder, "submit", job.job_id, f"workflow {body.workflow}")
    return job


async def _submit(body: SubmitJob, holder: Holder, orch: Orchestrator, workflow: Workflow) -> Job:
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
            max_robot_losses=body.max_robot_losses,
            timeouts=body.timeouts,
            submitted_by=holder.name,
        )
    except SubmissionsClosed as exc:
        raise error(503, one_line(exc)) from None
    except JobTooLarge as exc:
        raise error(413, one_line(exc)) from None
    except (ParameterError, WorkflowError, ValueError) as exc:
        raise error(422, one_line(exc)) from None


@router.get("", response_model=list[Job], responses=AUTH_ERRORS)
async def list_jobs(
    _: UserAuth,
    orch: Orch,
    status: RunStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[Job]:
    """Jobs, newest first, optionally only those in ``status``."""
    return await asyncio.to_thread(orch.jobs, status, limit=limit)


@router.get("/{job_id}", response_model=Job, responses=_ONE_JOB)
async def get_job(job_id: str, _: UserAuth, orch: Orch) -> Job:
    """One job."""
    return await _known_job(orch, job_id)


def _own(holder: Holder, job: Job, action: str, doing: str) -> None:
    """403 (audited) unless ``holder`` may ``action`` the job: an admin, or its submitter."""
    if holder.is_admin or (job.submitted_by is not None and job.submitted_by == holder.name):
        return
    whose = f"token {job.submitted_by!r}" if job.submitted_by else "no token (a trigger)"
    why = (
        f"token {holder.name!r} has role {holder.role_label}; {doing} job {job.job_id},"
        f" submitted by {whose}, needs admin"
    )
    audit.denied(holder, action, job.job_id, why)
    raise error(403, why)


@router.post("/{job_id}/cancel", response_model=Job, responses=_FINISHED_ERRORS)
async def cancel(job_id: str, holder: UserAuth, orch: Orch) -> Job:
    """Cancel a job: a queued one at once, a running one once its robot stopped it. A user
    token may cancel the jobs it submitted."""
    _own(holder, await _known_job(orch, job_id), "cancel", "cancelling")
    try:
        job = orch.cancel(job_id)
    except QueueError as exc:
        audit.denied(holder, "cancel", job_id, one_line(exc), outcome="error")
        raise error(409, one_line(exc)) from None
    audit.succeeded(holder, "cancel", job_id)
    return job


@router.post("/{job_id}/rerun", response_model=Job, responses={**_FINISHED_ERRORS, **_JOB_ERRORS})
async def rerun(job_id: str, holder: UserAuth, orch: Orch, body: RerunJob | None = None) -> Job:
    """A new attempt of a finished job, from the failed cell (default) or the start. A user
    token may re-run the jobs it submitted."""
    _own(holder, await _known_job(orch, job_id), "rerun", "re-running")
    spec = body or RerunJob()
    try:
        job = await _rerun(job_id, orch, spec)
    except HTTPException as exc:
        audit.denied(holder, "rerun", job_id, str(exc.detail), outcome="error")
        raise
    audit.succeeded(holder, "rerun", job_id, "from the failed cell" if spec.from_failed else None)
    return job


async def _rerun(job_id: str, orch: Orchestrator, spec: RerunJob) -> Job:
    try:
        return await orch.rerun(
            job_id,
            from_failed=spec.from_failed,
            parameters=spec.parameters,
            raw_parameters=spec.raw_parameters,
            cell_sources=spec.cell_sources,
        )
    except SubmissionsClosed as exc:
        raise error(503, one_line(exc)) from None
    except QueueError as exc:
        raise error(409, one_line(exc)) from None
    except (ParameterError, WorkflowError, ValueError) as exc:
        raise error(422, one_line(exc)) from None


@router.get("/{job_id}/debug", response_model=DebugBundle, responses=_FINISHED_ERRORS)
async def debug_bundle(job_id: str, _: UserAuth, orch: Orch) -> DebugBundle:
    """What a debug kernel needs to hold the failed job's namespace before its failed cell."""
    await _known_job(orch, job_id)
    try:
        return await asyncio.to_thread(orch.debug_bundle, job_id)
    except QueueError as exc:
        raise error(409, one_line(exc)) from None
    except (ParameterError, WorkflowError, ValueError) as exc:
        raise error(422, one_line(exc)) from None


@router.get("/{job_id}/outputs", response_model=dict[str, Any], responses=_ONE_JOB)
async def job_outputs(job_id: str, _: UserAuth, orch: Orch) -> dict[str, Any]:
    """The values the job's notebook recorded with ``casare_nb.output(name, value)``."""
    await _known_job(orch, job_id)
    return await asyncio.to_thread(orch.stores.outputs.outputs, job_id)


_NO_NOTEBOOK = with_errors(404, "Unknown job, or no notebook for that attempt yet.")


@router.get("/{job_id}/attempts", response_model=list[RunRecord], responses=_ONE_JOB)
async def job_attempts(job_id: str, _: UserAuth, orch: Written) -> list[RunRecord]:
    """Every attempt of the job as the history keeps it, in order."""
    await _known_job(orch, job_id)
    return await asyncio.to_thread(orch.stores.history.attempts, job_id)


@router.get("/{job_id}/cells", response_model=list[CellRecord], responses=_ONE_JOB)
async def job_cells(
    job_id: str, _: UserAuth, orch: Written, attempt: Annotated[int | None, Query(ge=1)] = None
) -> list[CellRecord]:
    """The executed cells of one attempt (every attempt by default), in order."""
    await _known_job(orch, job_id)
    return await asyncio.to_thread(orch.stores.history.list_cells, job_id, attempt)


def _read_notebook(path: Path) -> dict[str, Any] | None:
    try:
        notebook = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return notebook if isinstance(notebook, dict) else None


async def _notebook(orch: Orchestrator, job: Job, attempt: int | None) -> dict[str, Any] | None:
    number = attempt or max(1, job.attempt)
    running = orch.job_manager.notebook_so_far(job.job_id, number)  # kept in memory
    if running is not None:
        return running
    path = orch.stores.checkpoints.attempt(job.job_id, number).output
    return await asyncio.to_thread(_read_notebook, path)


@router.get("/{job_id}/notebook", response_model=dict[str, Any], responses=_NO_NOTEBOOK)
async def job_notebook(
    job_id: str, _: UserAuth, orch: Written, attempt: Annotated[int | None, Query(ge=1)] = None
) -> dict[str, Any]:
    """The notebook of an attempt (the latest by default): the output notebook once it
    ended, the notebook so far while it runs."""
    job = await _known_job(orch, job_id)
    notebook = await _notebook(orch, job, attempt)
    if notebook is None:
        raise error(404, f"job {job_id} has no notebook for attempt {attempt or job.attempt}")
    return notebook


@router.get(
    "/{job_id}/failure",
    response_model=Failure,
    responses={**_ONE_JOB, 409: {"model": ErrorBody, "description": "It did not fail."}},
)
async def job_failure(job_id: str, _: UserAuth, orch: Written) -> Failure:
    """Where the job's latest attempt failed: the cell, its source and the traceback."""
    job = await _known_job(orch, job_id)
    run = await asyncio.to_thread(orch.stores.history.get_run, job_id)
    if run is None or run.status not in FAILED_STATUSES:
        status = run.status.value if run is not None else job.status.value
        raise error(409, f"job {job_id} did not fail (it is {status})")
    return failure_of(run, await _notebook(orch, job, run.attempt))
