"""``/api/workflows``: the notebooks the orchestrator serves, and what parameters one takes
(a submit form is generated from it)."""

import asyncio
from pathlib import Path

from fastapi import APIRouter

from casare_nb.api import WorkflowInfo
from casare_nb.core.errors import WorkflowError, one_line
from casare_nb.core.params import read_schema
from casare_nb.notebook.workflow import parse_workflow
from casare_nb.orchestrator.http.deps import AUTH_ERRORS, UserAuth, Workflow, error, with_errors

__all__ = ["MAX_LISTED", "router"]

router = APIRouter(prefix="/api/workflows", tags=["workflows"], responses=AUTH_ERRORS)

MAX_LISTED = 2000
"""The most workflows one listing names."""


def _listed(root: Path) -> list[WorkflowInfo]:
    found = []
    for path in sorted(root.rglob("*.ipynb")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue  # hidden folders, .ipynb_checkpoints
        if not path.resolve().is_relative_to(root):
            continue  # a link to a notebook elsewhere: not served
        found.append(WorkflowInfo(path=rel.as_posix()))
        if len(found) == MAX_LISTED:
            break
    return found


@router.get("", response_model=list[WorkflowInfo])
async def workflows(_: UserAuth, resolve: Workflow) -> list[WorkflowInfo]:
    """The notebooks under the workflows directory (hidden folders left out), by path."""
    return await asyncio.to_thread(_listed, resolve.root.resolve())


def _read(path: Path, rel: str) -> WorkflowInfo:
    return WorkflowInfo(path=rel, parameters=read_schema(parse_workflow(path.read_bytes(), rel)))


@router.get(
    "/{path:path}",
    response_model=WorkflowInfo,
    responses={**with_errors(404, "No such workflow."), 422: {"description": "Not a notebook."}},
)
async def workflow(path: str, _: UserAuth, resolve: Workflow) -> WorkflowInfo:
    """One workflow with the parameters its ``parameters`` cell declares."""
    found = resolve(path)
    if not found.is_file():
        raise error(404, f"no workflow {path}")
    rel = found.relative_to(resolve.root.resolve()).as_posix()
    try:
        return await asyncio.to_thread(_read, found, rel)
    except (WorkflowError, OSError) as exc:
        raise error(422, one_line(exc)) from None
