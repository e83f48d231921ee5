"""A workflow's path is checked at every read, not only at submit: a folder swapped for a
symlink to a folder outside the workflows directory between submit and dispatch fails the
job with one line (the outside notebook never runs) and the queue moves on; re-run, debug
and submits from inside the orchestrator are checked the same way."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cluster import Cluster
from helpers import write_notebook

from casare_nb.core.dispatch import RetryPolicy
from casare_nb.core.errors import WorkflowError
from casare_nb.core.models import RunStatus
from casare_nb.orchestrator.orchestrator import Orchestrator

OUTSIDE = "now lies outside the workflows directory"


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Cluster]:
    """An orchestrator serving ``tmp_path/workflows`` (its robots are started by the test)."""
    (tmp_path / "workflows").mkdir()
    orch = Orchestrator(
        tmp_path / "state",
        port=0,
        heartbeat_interval_s=0.2,
        missed_heartbeats=10,
        retry_policy=RetryPolicy(base_s=0.05, jitter=0),
        reconnect_grace_s=0.3,
        workflows_dir=tmp_path / "workflows",
    )
    await orch.start()
    c = Cluster(tmp_path, orch)
    try:
        yield c
    finally:
        await c.close()


def swap_for_symlink(folder: Path, target: Path) -> None:
    """Replace ``folder`` by a symlink to ``target``."""
    folder.rename(folder.with_name(folder.name + ".old"))
    os.symlink(target, folder, target_is_directory=True)


async def test_folder_swapped_for_an_outside_symlink_before_dispatch_fails_the_job(
    guarded: Cluster, tmp_path: Path
) -> None:
    """A job whose workflow folder became a symlink outside the workflows directory fails
    with one WorkflowError line at dispatch; the outside notebook does not run; the next
    job does."""
    workflows = tmp_path / "workflows"
    marker = tmp_path / "marker"
    (workflows / "team").mkdir()
    write_notebook(workflows / "team" / "w.ipynb", ["x = 1"])
    write_notebook(workflows / "ok.ipynb", ["y = 2"])
    (tmp_path / "elsewhere").mkdir()
    write_notebook(tmp_path / "elsewhere" / "w.ipynb", [f"open({str(marker)!r}, 'w').write('ran')"])
    await guarded.robot("robot-idle")  # no tag: takes none of these jobs, till robot-late
    job = await guarded.orch.submit(workflows / "team" / "w.ipynb", tags=["late"])
    swap_for_symlink(workflows / "team", tmp_path / "elsewhere")
    later = await guarded.orch.submit(workflows / "ok.ipynb", tags=["late"])
    await guarded.robot("robot-late", tags=["late"])
    failed = await guarded.finished(job.job_id)
    assert (failed.status, failed.error_name) == (RunStatus.FAILED, "WorkflowError")
    reason = failed.error_message or ""
    assert OUTSIDE in reason and "\n" not in reason
    assert (await guarded.finished(later.job_id)).status is RunStatus.COMPLETED
    assert not marker.exists()
    with pytest.raises(WorkflowError, match=OUTSIDE):
        await guarded.orch.rerun(job.job_id, from_failed=False)
    assert not marker.exists()


async def test_rerun_and_debug_of_a_failed_job_whose_folder_moved_outside_are_refused(
    guarded: Cluster, tmp_path: Path
) -> None:
    """Re-run and debug bundle of a job failed in a cell refuse its workflow once its folder
    is a symlink outside the workflows directory; the outside notebook does not run."""
    workflows = tmp_path / "workflows"
    marker = tmp_path / "marker"
    (workflows / "team").mkdir()
    write_notebook(workflows / "team" / "w.ipynb", ["x = 1", "raise ValueError('bad')"])
    (tmp_path / "elsewhere").mkdir()
    write_notebook(
        tmp_path / "elsewhere" / "w.ipynb",
        ["x = 1", f"open({str(marker)!r}, 'w').write('ran')"],
    )
    await guarded.robot("robot-a")
    job = await guarded.orch.submit(workflows / "team" / "w.ipynb")
    failed = await guarded.finished(job.job_id)
    assert (failed.status, failed.error_name) == (RunStatus.FAILED, "ValueError")
    swap_for_symlink(workflows / "team", tmp_path / "elsewhere")
    with pytest.raises(WorkflowError, match=OUTSIDE):
        guarded.orch.job_manager.debug_bundle(job.job_id)
    with pytest.raises(WorkflowError, match=OUTSIDE):
        await guarded.orch.rerun(job.job_id)
    assert guarded.job(job.job_id).status is RunStatus.FAILED
    assert not marker.exists()


async def test_submit_inside_the_orchestrator_through_an_outside_symlink_is_refused(
    guarded: Cluster, tmp_path: Path
) -> None:
    """JobManager.submit (schedules, triggers, chaining) refuses a workflow whose path
    resolves outside the workflows directory, with one line."""
    workflows = tmp_path / "workflows"
    (tmp_path / "elsewhere").mkdir()
    write_notebook(tmp_path / "elsewhere" / "w.ipynb", ["x = 1"])
    os.symlink(tmp_path / "elsewhere", workflows / "link", target_is_directory=True)
    with pytest.raises(WorkflowError, match=OUTSIDE):
        await guarded.orch.job_manager.submit(workflows / "link" / "w.ipynb")
    assert guarded.orch.jobs() == []
