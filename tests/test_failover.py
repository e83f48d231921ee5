"""Checkpoints travel to the orchestrator, and a job resumes from them on another robot."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from cluster import ON_EVERY_BACKEND, Cluster, counted, notebook, waiting_cell

from casare_nb.core.errors import OrchestratorDraining, QueueError
from casare_nb.core.models import RunStatus
from casare_nb.core.params import ParameterError
from casare_nb.notebook.state import StateDir
from casare_nb.orchestrator.orchestrator import Orchestrator


def blob_count(root: Path) -> int:
    return sum(1 for p in (root / "blobs").rglob("*") if p.is_file())


def cell_outputs(path: Path, cell_id: str) -> str:
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if c.get("id") == cell_id)
    return json.dumps(cell.get("outputs", []))


@ON_EVERY_BACKEND
async def test_checkpoints_reach_the_orchestrator_once_per_blob(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Every cell's manifest is stored on the orchestrator; a rerun of equal values adds no blob."""
    nb = notebook(tmp_path, "state.ipynb", ["big = list(range(50_000))", "small = {'a': 1}"])
    await cluster.robot("robot-a")
    first = await cluster.orch.submit(nb)
    assert (await cluster.finished(first.job_id)).status is RunStatus.COMPLETED
    store = cluster.orch.stores.checkpoints
    await cluster.until(lambda: set(store.stored_cells(first.job_id, 1)) >= {"c0", "c1"})
    manifest = store.attempt(first.job_id, 1).read_manifest("c1")
    assert manifest is not None and set(manifest["vars"]) >= {"big", "small"}
    blobs = blob_count(cluster.orch.state_dir)
    assert blobs >= 2
    second = await cluster.orch.submit(nb)
    assert (await cluster.finished(second.job_id)).status is RunStatus.COMPLETED
    await cluster.until(lambda: set(store.stored_cells(second.job_id, 1)) >= {"c0", "c1"})
    assert blob_count(cluster.orch.state_dir) == blobs


@ON_EVERY_BACKEND
async def test_rerun_from_failed_cell_resumes_on_another_robot(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A failed job re-run with a fixed parameter restores its state on a fresh robot and
    runs only from the failed cell; earlier outputs are kept."""
    log = tmp_path / "ran.log"
    nb = notebook(
        tmp_path,
        "flaky.ipynb",
        [
            counted(log, "c0", "data = [1, 2, 3]\nprint('loaded', len(data))"),
            "assert len(data) <= limit, f'{len(data)} rows > limit {limit}'",
            "print('total', sum(data))",
        ],
        params="limit = 1",
    )
    robot_a = await cluster.robot("robot-a")
    job = await cluster.orch.submit(nb)
    failed = await cluster.finished(job.job_id)
    assert (failed.status, failed.robot_id) == (RunStatus.FAILED, "robot-a")
    assert (failed.failed_cell, failed.error_name) == (3, "AssertionError")  # c1, after params
    await cluster.stop_bot(robot_a)
    await cluster.robot("robot-b")
    with pytest.raises(ParameterError, match="limit"):
        await cluster.orch.rerun(job.job_id, parameters={"limit": "many"})
    again = await cluster.orch.rerun(job.job_id, parameters={"limit": 5})
    assert again.status is RunStatus.QUEUED and again.parameters == {"limit": 5}
    done = await cluster.finished(job.job_id)
    assert (done.status, done.attempt, done.robot_id) == (RunStatus.COMPLETED, 2, "robot-b")
    assert log.read_text().split() == ["c0"]  # the state came from the checkpoint
    out = StateDir(cluster.orch.state_dir).attempt(job.job_id, 2).output
    assert "loaded 3" in cell_outputs(out, "c0") and "total 6" in cell_outputs(out, "c2")
    cells = (await cluster.history()).list_cells(job.job_id)
    assert not [c for c in cells if c.attempt == 2 and c.cell_id == "c0"]


@ON_EVERY_BACKEND
async def test_job_of_a_lost_robot_resumes_from_its_last_checkpoint(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A robot lost mid-cell: after the grace time the job resumes on the other robot from the
    checkpoint after the last finished cell, without re-running the cells before it."""
    log = tmp_path / "ran.log"
    started = tmp_path / "started"
    go = tmp_path / "go"
    wait = waiting_cell(started, go)
    nb = notebook(
        tmp_path,
        "long.ipynb",
        [
            counted(log, "c0", "rows = [n * n for n in range(10)]"),
            counted(log, "c1", wait),
            "print('sum', sum(rows))",
        ],
    )
    robot_a = await cluster.robot("robot-a")
    job = await cluster.orch.submit(nb)
    store = cluster.orch.stores.checkpoints
    await cluster.until(lambda: started.exists() and "c0" in store.stored_cells(job.job_id, 1))
    await cluster.robot("robot-b")
    await cluster.stop_bot(robot_a)  # the link drops while c1 runs
    go.touch()
    done = await cluster.finished(job.job_id)
    assert (done.status, done.attempt, done.robot_id) == (RunStatus.COMPLETED, 2, "robot-b")
    assert log.read_text().split() == ["c0", "c1", "c1"]  # c0 ran once: restored, not re-run
    out = StateDir(cluster.orch.state_dir).attempt(job.job_id, 2).output
    assert "sum 285" in cell_outputs(out, "c2")
    runs = (await cluster.history()).attempts(job.job_id)
    assert runs[-1].restored_from_cell is not None or runs[-1].status is RunStatus.COMPLETED


async def test_rerun_refuses_unknown_and_unfinished_jobs(cluster: Cluster, tmp_path: Path) -> None:
    """Re-running an unknown job or one still queued raises a one-line QueueError."""
    nb = notebook(tmp_path, "q.ipynb", ["x = 1"])
    queued = await cluster.orch.submit(nb, tags=["nowhere"])
    with pytest.raises(QueueError, match="unknown job nope"):
        await cluster.orch.rerun("nope")
    with pytest.raises(QueueError, match="still queued"):
        await cluster.orch.rerun(queued.job_id)


async def test_rerun_of_a_secret_job_needs_the_secret_again(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A job that used a secret parameter re-runs only when the secret is given again."""
    nb = notebook(
        tmp_path,
        "secret.ipynb",
        ["assert ok, 'not ok'", "print(len(api_key))"],
        params="from casare_nb import Secret\napi_key: Secret[str] = ''\nok = False",
    )
    await cluster.robot("robot-a")
    job = await cluster.orch.submit(nb, {"api_key": "s3cr3t"})
    assert (await cluster.finished(job.job_id)).status is RunStatus.FAILED
    with pytest.raises(ParameterError, match="api_key"):
        await cluster.orch.rerun(job.job_id, parameters={"ok": True})
    await cluster.orch.rerun(job.job_id, parameters={"ok": True, "api_key": "s3cr3t"})
    done = await cluster.finished(job.job_id)
    assert done.status is RunStatus.COMPLETED and done.parameters["api_key"] == "***"


@ON_EVERY_BACKEND
async def test_drain_waits_for_running_jobs_then_shuts_robots_down(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Drain refuses submissions, lets the running job finish, keeps queued ones queued, and
    shuts the robots down."""
    go = tmp_path / "go"
    started = tmp_path / "started"
    wait = waiting_cell(started, go)
    nb = notebook(tmp_path, "wait.ipynb", [wait])
    quick = notebook(tmp_path, "quick.ipynb", ["x = 1"])
    bot = await cluster.robot("robot-a", capacity=1)
    running = await cluster.orch.submit(nb)
    await cluster.until(lambda: started.exists())
    queued = await cluster.orch.submit(quick)
    drain = asyncio.create_task(cluster.orch.drain(timeout_s=30))
    await cluster.until(lambda: cluster.orch.draining)
    with pytest.raises(OrchestratorDraining, match="draining"):
        await cluster.orch.submit(quick)
    go.touch()
    report = await drain
    assert report.finished_jobs == [running.job_id]
    assert report.unfinished_jobs == [] and report.robots_shut_down == ["robot-a"]
    assert cluster.job(running.job_id).status is RunStatus.COMPLETED
    assert cluster.job(queued.job_id).status is RunStatus.QUEUED
    await asyncio.wait_for(bot.task, 10)  # the agent returned: it was shut down
    assert await cluster.orch.drain() == report


async def test_queue_survives_a_restart_but_secrets_must_be_given_again(tmp_path: Path) -> None:
    """After an orchestrator restart queued jobs run; one whose secret was lost fails with
    SecretLost (nothing runs without it) and re-runs once the secret is given again."""
    nb = notebook(
        tmp_path,
        "secret.ipynb",
        ["print(len(api_key))"],
        params="from casare_nb import Secret\napi_key: Secret[str] = ''",
    )
    plain = notebook(tmp_path, "plain.ipynb", ["x = 1"])
    first = Orchestrator(tmp_path / "state", port=0)
    await first.start()
    secret_job = await first.submit(nb, {"api_key": "s3cr3t"})
    plain_job = await first.submit(plain)
    await first.stop()
    second = Orchestrator(tmp_path / "state", port=0, heartbeat_interval_s=0.2)
    await second.start()
    cluster = Cluster(tmp_path, second)
    try:
        await cluster.robot("robot-a")
        assert (await cluster.finished(plain_job.job_id)).status is RunStatus.COMPLETED
        lost = await cluster.finished(secret_job.job_id)
        assert (lost.status, lost.error_name) == (RunStatus.FAILED, "SecretLost")
        assert lost.attempt == 0 and "api_key" in (lost.error_message or "")
        await second.rerun(secret_job.job_id, parameters={"api_key": "s3cr3t"}, from_failed=False)
        assert (await cluster.finished(secret_job.job_id)).status is RunStatus.COMPLETED
    finally:
        await cluster.close()


def test_a_robot_with_checkpoints_disabled_takes_and_ships_none(tmp_path: Path) -> None:
    """job_execution.checkpoint_enabled false (CASARE_CHECKPOINT_ENABLED=false): the job
    completes, the robot writes no manifest and the orchestrator stores none."""
    from helpers import served, write_notebook

    workflows = tmp_path / "wf"
    workflows.mkdir()
    write_notebook(workflows / "two.ipynb", ["a = 1", "b = a + 1"])
    with (
        served(tmp_path / "state", workflows, "r1", checkpoints=False) as cluster,
        cluster.client() as client,
    ):
        job = client.submit("two.ipynb", wait=True, timeout=120)
        assert job.status is RunStatus.COMPLETED, job
        assert [c.status for c in client.cells(job.job_id)] == ["ok", "ok"]
    robot_manifests = list((tmp_path / "r1").rglob("checkpoints/*.json"))
    stored = list((tmp_path / "state").rglob("checkpoints/*.json"))
    assert robot_manifests == [] and stored == []
