"""A kernel holding a failed run's namespace as it was before the failed cell, for an
analyst to inspect and fix it interactively (``casare-nb debug``, JupyterLab's "Open in
JupyterLab").

The restore is a resume that stops short of running anything new: the checkpoint is loaded,
the cells it could not hold are replayed (:func:`~casare_nb.notebook.run.restore_and_replay`),
and the kernel is left at ``plan.start``, the failed cell. Its checkpoint hook stays
installed but idle (no plan), so the analyst's own cells are not snapshotted."""

from __future__ import annotations

from dataclasses import dataclass, field

from nbformat import NotebookNode

from casare_nb.core.models import ResumePlan, RunStatus
from casare_nb.notebook.executor import Executor, Options
from casare_nb.notebook.kernels import KernelSession
from casare_nb.notebook.run import RunResult, Secrets, restore_and_replay
from casare_nb.notebook.state import StateDir

__all__ = ["Restored", "restore_before_failed_cell"]


@dataclass
class Restored:
    """What a debug kernel holds: the names loaded from the checkpoint, those missing (and
    why), the cells replayed to rebuild them, and whether that replay went through."""

    loaded: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    replayed: list[int] = field(default_factory=list)
    restored_from_cell: int | None = None
    ok: bool = True
    error: str | None = None


async def restore_before_failed_cell(
    session: KernelSession,
    nb: NotebookNode,
    plan: ResumePlan,
    state: StateDir,
    *,
    run_id: str,
    attempt: int,
    secrets: Secrets | None = None,
) -> Restored:
    """Restore into ``session`` the namespace ``plan`` resumes from (the manifests and blobs
    already in ``state``, under ``run_id``/``attempt``), replaying the cells the checkpoint
    could not hold; nothing at or after ``plan.start`` runs."""
    secrets = secrets or Secrets()
    executor = Executor(
        session,
        nb,
        run_id=run_id,
        attempt=attempt,
        state=state,
        options=Options(save_each_cell=False, save_output=False),
        secret_values=secrets.values,
    )
    await executor.prepare(secret_names=secrets.names, secret_source=secrets.source)
    result = RunResult(
        run_id=run_id,
        attempt=attempt,
        status=RunStatus.RUNNING,
        workflow_path="",
        output_path="",
        restored_from_cell=plan.restore_cell,
    )
    paths = state.attempt(run_id, attempt)
    outcome = await restore_and_replay(executor, plan, paths, result, None, 0)
    restored = Restored(
        missing=dict(result.skipped_names),
        replayed=list(result.replayed_cells),
        restored_from_cell=result.restored_from_cell,
    )
    restored.loaded = await executor.user_names() if executor.checkpointing else []
    if outcome is not None and outcome.status is not RunStatus.COMPLETED:
        restored.ok = False
        restored.error = f"{outcome.error_name}: {outcome.error_message}"
    return restored
