"""Plan a re-run from the failed cell, once, where the earlier attempt's files are.

The previous attempt's output notebook says, per cell id, whether the cell ran ``ok`` and
with which source (sha256); its checkpoints say what the namespace was after each cell. The
resume point is the first executing cell that did not run ok with its current source: the
failed cell, or an earlier cell the analyst edited, or one they inserted. The namespace is
restored from the newest complete checkpoint before that point (a manifest whose ``ref``
targets exist too); cells between that checkpoint and the resume point - those whose
checkpoint the policy deferred, or whose writer never finished - and cells that define what
could not be saved, are replayed.

:func:`prepare_resume` plans (:func:`plan_resume`), keeps the earlier outputs of the cells
before the resume point (:func:`carry_outputs`) and carries the manifests the restore needs
into the new attempt. The local runner calls it on its state directory, the orchestrator on
its checkpoint store, which has the same layout; a robot gets the
:class:`~casare_nb.core.models.ResumePlan` with the job and only carries it out.
"""

from __future__ import annotations

import contextlib

from nbformat import NotebookNode

from casare_nb.core.cells import replay_plan, source_sha256
from casare_nb.core.errors import ResumeError, WorkflowError
from casare_nb.core.models import ResumePlan
from casare_nb.notebook.executor import executes
from casare_nb.notebook.state import AttemptPaths, StateDir, manifest_refs
from casare_nb.notebook.workflow import INJECTED_ID, parse_workflow

__all__ = ["carry_outputs", "plan_resume", "prepare_resume", "read_output", "replays"]


def _ran_ok(cell: NotebookNode, prev: NotebookNode | None) -> bool:
    if prev is None:
        return False
    meta = prev.get("metadata", {}).get("casare", {})
    if meta.get("status") != "ok":
        return False
    return cell.get("id") == INJECTED_ID or meta.get("source_sha256") == source_sha256(cell.source)


def plan_resume(
    nb: NotebookNode,
    prev_output: NotebookNode | None,
    prev_paths: AttemptPaths,
    *,
    from_cell: int | None = None,
) -> ResumePlan:
    """Work out the resume of ``nb`` (the workflow as it is now, parameterised)."""
    prev_cells = {c.get("id"): c for c in prev_output.cells} if prev_output else {}
    code = [i for i, c in enumerate(nb.cells) if executes(c)]
    natural = len(nb.cells)
    for i in code:
        if nb.cells[i].id == INJECTED_ID:
            continue  # parameters are re-injected on every resume (see ``replays``)
        if not _ran_ok(nb.cells[i], prev_cells.get(nb.cells[i].id)):
            natural = i
            break
    start = natural
    if from_cell is not None:
        if not 0 <= from_cell < len(nb.cells):
            raise ResumeError(f"no cell {from_cell}: the notebook has cells 0-{len(nb.cells) - 1}")
        if from_cell > natural:
            raise ResumeError(
                f"cannot resume from cell {from_cell}: cell {natural} before it "
                "has not run ok with its current source"
            )
        start = from_cell
    before = [i for i in code if i < start]
    restore = None
    for i in reversed(before):  # cells whose checkpoint was deferred have no manifest
        cid = nb.cells[i].id
        found = prev_paths.read_manifest(cid)
        if (
            found is not None
            and (
                cid == INJECTED_ID
                or found.get("source_sha256") == source_sha256(nb.cells[i].source)
            )
            and all(prev_paths.manifest(ref).is_file() for ref in manifest_refs(found))
        ):
            restore = i
            break
    return ResumePlan(
        start=start,
        restore_cell=restore,
        restore_cell_id=None if restore is None else nb.cells[restore].id,
        rerun=[i for i in before if restore is None or i > restore],
        carried=[i for i in range(start) if nb.cells[i].id in prev_cells],
        inherit_ids=[nb.cells[i].id for i in before if restore is not None and i <= restore],
    )


def replays(nb: NotebookNode, plan: ResumePlan, *, missing: set[str], python: bool) -> list[int]:
    """Cells to replay before ``plan.start``: all of them for a non-Python kernel; else the
    re-runs after the checkpoint, the cells that rebuild ``missing`` names, the
    ``casare-always-run`` cells and the injected parameters (so ``-p`` on resume applies)."""
    before = [i for i, c in enumerate(nb.cells) if i < plan.start and executes(c)]
    if not python or plan.restore_cell is None:
        return before
    sources = [c.source if executes(c) else "" for c in nb.cells]
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    chosen = set(plan.rerun) | set(replay_plan(sources, tags, upto=plan.start, missing=missing))
    chosen |= {i for i in before if nb.cells[i].id == INJECTED_ID}
    return sorted(i for i in chosen if i in before)


def carry_outputs(nb: NotebookNode, prev_output: NotebookNode | None, plan: ResumePlan) -> None:
    """Copy the earlier attempt's outputs of the cells before the resume point into ``nb``."""
    if prev_output is None:
        return
    prev_cells = {c.get("id"): c for c in prev_output.cells}
    for i in plan.carried:
        cell, prev = nb.cells[i], prev_cells[nb.cells[i].id]
        if cell.cell_type != "code":
            continue
        cell.outputs = prev.get("outputs", [])
        cell.execution_count = prev.get("execution_count")
        if "casare" in prev.get("metadata", {}):
            cell.metadata["casare"] = dict(prev.metadata["casare"], carried=True)


def read_output(paths: AttemptPaths) -> NotebookNode | None:
    """The output notebook (or notebook so far) of an attempt; None if there is none."""
    with contextlib.suppress(OSError, WorkflowError):
        return parse_workflow(paths.output.read_bytes(), str(paths.output))
    return None


def prepare_resume(
    nb: NotebookNode,
    state: StateDir,
    run_id: str,
    *,
    from_attempt: int,
    attempt: int,
    from_cell: int | None = None,
) -> ResumePlan:
    """Plan the resume of attempt ``from_attempt`` of ``run_id`` as ``attempt``, for ``nb``
    (the workflow as it is now, parameterised): carry the earlier outputs into ``nb`` and
    the manifests the restore needs into the new attempt's folder. ResumeError if
    ``from_cell`` cannot be honoured."""
    prev_paths = state.attempt(run_id, from_attempt)
    prev_output = read_output(prev_paths)
    plan = plan_resume(nb, prev_output, prev_paths, from_cell=from_cell)
    carry_outputs(nb, prev_output, plan)
    state.attempt(run_id, attempt).inherit(prev_paths, plan.inherit_ids)
    return plan
