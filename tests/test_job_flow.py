"""The path of one run: a real orchestrator, real robot agents running real kernels."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
from cluster import (
    ON_EVERY_BACKEND,
    RUN_TIMEOUT,
    Cluster,
    fake_robot,
    impatient_with_fake_robot,
    notebook,
)
from websockets.asyncio.client import connect

from casare_nb.core.models import CellStatus, Priority, RunStatus
from casare_nb.core.params import ParameterError
from casare_nb.notebook.state import StateDir
from casare_nb.protocol import (
    Error,
    ErrorCode,
    Event,
    EventKind,
    JobAccept,
    JobAssign,
    JobProgress,
    JobReject,
    Subscribe,
    Topic,
    decode,
    encode,
)


@ON_EVERY_BACKEND
async def test_submitted_job_completes_with_cells_recorded_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A submitted job runs on a robot; each cell is in the history once; output stored."""
    nb = notebook(tmp_path, "add.ipynb", ["y = n + 1", "print('y is', y)"], params="n = 1")
    await cluster.robot("robot-a")
    job = await cluster.orch.submit(nb, {"n": 5})
    assert job.status is RunStatus.QUEUED and job.parameters == {"n": 5}
    done = await cluster.finished(job.job_id)
    assert (done.status, done.attempt, done.robot_id) == (RunStatus.COMPLETED, 1, "robot-a")
    history = await cluster.history()
    cells = history.list_cells(job.job_id)
    indices = [c.cell_index for c in cells]
    assert len(indices) == len(set(indices)) >= 3
    assert {c.cell_id for c in cells} >= {"params", "c0", "c1"}
    assert all(c.status is CellStatus.OK and c.attempt == 1 for c in cells)
    run = history.get_run(job.job_id, 1)
    assert run is not None and run.status is RunStatus.COMPLETED
    out = StateDir(cluster.orch.state_dir).attempt(job.job_id, 1).output
    assert run.output_path == str(out)
    assert "y is 6" in out.read_text()


@ON_EVERY_BACKEND
async def test_jobs_run_in_priority_order(cluster: Cluster, tmp_path: Path) -> None:
    """With one single-slot robot, queued jobs run critical first, then normal, then low."""
    nb = notebook(tmp_path, "quick.ipynb", ["x = 1"])
    low = await cluster.orch.submit(nb, priority=Priority.LOW)
    normal = await cluster.orch.submit(nb, priority=Priority.NORMAL)
    critical = await cluster.orch.submit(nb, priority=Priority.CRITICAL)
    await cluster.robot("robot-a", capacity=1)
    jobs = [await cluster.finished(j.job_id) for j in (low, normal, critical)]
    assert all(j.status is RunStatus.COMPLETED for j in jobs)
    order = [j.job_id for j in sorted(jobs, key=lambda j: j.finished_at or j.created_at)]
    assert order == [critical.job_id, normal.job_id, low.job_id]


async def test_job_needing_a_tag_runs_on_the_robot_that_has_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A job that needs a tag runs on the only robot with that tag and environment."""
    nb = notebook(tmp_path, "tagged.ipynb", ["x = 1"])
    await cluster.robot("robot-a")
    await cluster.robot("robot-b", tags=["gpu"])
    job = await cluster.orch.submit(nb, tags=["gpu"], environment="default")
    done = await cluster.finished(job.job_id)
    assert (done.status, done.robot_id) == (RunStatus.COMPLETED, "robot-b")


@ON_EVERY_BACKEND
async def test_failing_job_is_retried_then_dead(cluster: Cluster, tmp_path: Path) -> None:
    """A failing notebook with max_retries=1 runs twice and ends dead; both attempts kept."""
    nb = notebook(tmp_path, "fails.ipynb", ["x = 1", "raise ValueError('boom')"])
    await cluster.robot("robot-a")
    job = await cluster.orch.submit(nb, max_retries=1)
    done = await cluster.finished(job.job_id)
    assert (done.status, done.attempt, done.error_name) == (RunStatus.DEAD, 2, "ValueError")
    history = await cluster.history()
    runs = history.attempts(job.job_id)
    assert [(r.attempt, r.status) for r in runs] == [(1, RunStatus.FAILED), (2, RunStatus.FAILED)]
    assert {c.attempt for c in history.list_cells(job.job_id)} == {1, 2}
    for attempt in (1, 2):
        assert (
            "boom"
            in StateDir(cluster.orch.state_dir).attempt(job.job_id, attempt).output.read_text()
        )


async def test_bad_parameters_are_refused_and_nothing_is_queued(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Unknown or ill-typed parameters raise ParameterError from submit; no job is queued."""
    nb = notebook(tmp_path, "typed.ipynb", ["y = n + 1"], params="n: int = 1")
    with pytest.raises(ParameterError):
        await cluster.orch.submit(nb, {"n": "not a number"})
    with pytest.raises(ParameterError):
        await cluster.orch.submit(nb, {"nope": 1})
    assert cluster.orch.jobs() == []


async def test_secret_parameters_reach_the_robot_but_not_the_queue(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A secret parameter is used by the run, stored redacted, absent from the output."""
    digest = hashlib.sha256(b"s3cr3t-value").hexdigest()
    nb = notebook(
        tmp_path,
        "secret.ipynb",
        [f"import hashlib\nassert hashlib.sha256(token.encode()).hexdigest() == {digest!r}"],
        params="from casare_nb import Secret\ntoken: Secret[str] = ''",
    )
    await cluster.robot("robot-a")
    job = await cluster.orch.submit(nb, {"token": "s3cr3t-value"})
    assert job.parameters == {"token": "***"}
    done = await cluster.finished(job.job_id)
    assert done.status is RunStatus.COMPLETED
    assert (
        "s3cr3t-value"
        not in StateDir(cluster.orch.state_dir).attempt(job.job_id, 1).output.read_text()
    )
    run = (await cluster.history()).get_run(job.job_id, 1)
    assert run is not None and "s3cr3t-value" not in json.dumps(run.parameters)


@ON_EVERY_BACKEND
async def test_cancel_a_running_job_interrupts_the_robot(cluster: Cluster, tmp_path: Path) -> None:
    """Cancelling a running job interrupts its 60 s cell on the robot; the job is cancelled."""
    cell = "import pathlib, time\npathlib.Path('started').touch()\ntime.sleep(60)"
    nb = notebook(tmp_path, "slow.ipynb", [cell])
    bot = await cluster.robot("robot-a")
    job = await cluster.orch.submit(nb)
    await cluster.until(lambda: (bot.runner.work_dir / "started").exists())
    assert cluster.orch.cancel(job.job_id).status is RunStatus.RUNNING
    done = await cluster.finished(job.job_id)
    assert done.status is RunStatus.CANCELLED
    assert bot.runner.running_jobs() == []
    (sleeper,) = [c for c in (await cluster.history()).list_cells(job.job_id) if c.cell_id == "c0"]
    assert sleeper.status is CellStatus.CANCELLED and sleeper.duration_s < 30


async def test_queued_job_is_cancelled_at_once(cluster: Cluster, tmp_path: Path) -> None:
    """A job no robot has taken yet is cancelled at once."""
    nb = notebook(tmp_path, "never.ipynb", ["x = 1"])
    job = await cluster.orch.submit(nb, tags=["nowhere"])
    assert cluster.orch.cancel(job.job_id).status is RunStatus.CANCELLED
    assert cluster.orch.jobs(RunStatus.QUEUED) == []


@pytest.mark.slow
@ON_EVERY_BACKEND
async def test_job_of_a_dead_robot_completes_on_another(cluster: Cluster, tmp_path: Path) -> None:
    """A robot that disconnects mid-job: the job is requeued and completes on the other."""
    nb = notebook(tmp_path, "long.ipynb", ["import time\ntime.sleep(2)", "x = 1"])
    robot_a = await cluster.robot("robot-a")
    await cluster.robot("robot-b")
    job = await cluster.orch.submit(nb)
    await cluster.until(
        lambda: (j := cluster.job(job.job_id)).accepted_at is not None and j.robot_id == "robot-a"
    )
    await cluster.stop_bot(robot_a)
    done = await cluster.finished(job.job_id)
    assert (done.status, done.attempt, done.robot_id) == (RunStatus.COMPLETED, 2, "robot-b")
    runs = (await cluster.history()).attempts(job.job_id)
    assert [(r.attempt, r.status) for r in runs] == [
        (1, RunStatus.FAILED),
        (2, RunStatus.COMPLETED),
    ]
    assert runs[0].error_name == "RobotLost"


@ON_EVERY_BACKEND
async def test_stale_attempt_progress_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    """job_progress for an attempt that is not the job's current one gets stale_attempt."""
    nb = notebook(tmp_path, "waiting.ipynb", ["x = 1"])
    job = await cluster.orch.submit(nb, tags=["nowhere"])
    async with fake_robot(cluster.orch, "fake-robot") as ws:
        progress = JobProgress(
            job_id=job.job_id,
            attempt=1,
            cell_index=0,
            status=CellStatus.OK,
            duration_s=0.1,
            cells_done=1,
            cells_total=1,
        )
        await ws.send(encode(progress))
        reply = decode(await ws.recv())
        assert isinstance(reply, Error) and reply.code is ErrorCode.STALE_ATTEMPT
        assert reply.reply_to == progress.id
        unknown = progress.model_copy(update={"job_id": "no-such-job", "id": "other-id"})
        await ws.send(encode(unknown))
        reply = decode(await ws.recv())
        assert isinstance(reply, Error) and reply.code is ErrorCode.UNKNOWN_JOB
    assert (await cluster.history()).list_cells(job.job_id) == []
    assert cluster.job(job.job_id).status is RunStatus.QUEUED


async def test_unaccepted_and_rejected_assignments_are_requeued(tmp_path: Path) -> None:
    """An assignment not accepted in time, then one rejected, are both sent again."""
    nb = notebook(tmp_path, "bounced.ipynb", ["x = 1"])
    async with impatient_with_fake_robot(tmp_path / "state", "fake-robot") as (orch, ws):
        job = await orch.submit(nb)
        first = decode(await ws.recv())
        assert isinstance(first, JobAssign) and first.attempt == 1  # not answered
        second = decode(await ws.recv())
        assert isinstance(second, JobAssign) and second.attempt == 2
        await ws.send(encode(JobReject(job_id=job.job_id, attempt=2, reason="busy")))
        third = decode(await ws.recv())
        assert isinstance(third, JobAssign) and third.attempt == 3
        assert "x = 1" in json.dumps(third.notebook["cells"])
        await ws.send(encode(JobAccept(job_id=job.job_id, attempt=3)))
        await orch.wait_for(lambda: (j := orch.job(job.job_id)) is not None and bool(j.accepted_at))
        current = orch.job(job.job_id)
        assert current is not None
        assert (current.status, current.attempt, current.robot_id) == (
            RunStatus.RUNNING,
            3,
            "fake-robot",
        )


@ON_EVERY_BACKEND
async def test_monitors_get_job_and_cell_events(cluster: Cluster, tmp_path: Path) -> None:
    """A monitor subscribed to jobs and cells sees queued, started, each cell, finished."""
    nb = notebook(tmp_path, "watched.ipynb", ["x = 1", "y = 2"])
    await cluster.robot("robot-a")
    token = await asyncio.to_thread(cluster.orch.create_token, "dashboard")
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(cluster.orch.url, additional_headers=headers) as ws:
        await ws.send(encode(Subscribe(topics=frozenset({Topic.JOBS, Topic.CELLS}))))
        await cluster.until(lambda: cluster.orch.monitors(Topic.CELLS) == 1)
        job = await cluster.orch.submit(nb)
        kinds: list[EventKind] = []
        cells: list[str | None] = []
        while EventKind.JOB_FINISHED not in kinds:
            event = decode(await asyncio.wait_for(ws.recv(), RUN_TIMEOUT))
            assert isinstance(event, Event)
            kinds.append(event.kind)
            if event.kind is EventKind.CELL_FINISHED:
                assert event.data.job_id == job.job_id
                cells.append(event.data.cell_id)
    assert kinds[:2] == [EventKind.JOB_QUEUED, EventKind.JOB_STARTED]
    assert kinds[-1] is EventKind.JOB_FINISHED
    assert cells[-2:] == ["c0", "c1"] and len(cells) == len(set(cells))


async def test_job_the_robot_stops_by_itself_is_requeued(cluster: Cluster, tmp_path: Path) -> None:
    """A job its robot cancels on its own (not a user) is requeued and runs again."""
    cell = (
        "import pathlib, time\np = pathlib.Path('started')\nfirst = not p.exists()\n"
        "p.touch()\nif first:\n    time.sleep(60)"
    )
    nb = notebook(tmp_path, "again.ipynb", [cell])
    bot = await cluster.robot("robot-a")
    job = await cluster.orch.submit(nb)
    await cluster.until(lambda: (bot.runner.work_dir / "started").exists())
    await bot.runner.cancel_all()
    done = await cluster.finished(job.job_id)
    assert (done.status, done.attempt) == (RunStatus.COMPLETED, 2)
    runs = (await cluster.history()).attempts(job.job_id)
    assert [(r.attempt, r.status) for r in runs] == [
        (1, RunStatus.CANCELLED),
        (2, RunStatus.COMPLETED),
    ]


async def test_job_whose_workflow_vanished_fails_clearly(cluster: Cluster, tmp_path: Path) -> None:
    """A workflow deleted after submit fails its job with a WorkflowError, not a crash."""
    nb = notebook(tmp_path, "gone.ipynb", ["x = 1"])
    job = await cluster.orch.submit(nb)
    nb.unlink()
    await cluster.robot("robot-a")
    done = await cluster.finished(job.job_id)
    assert (done.status, done.error_name) == (RunStatus.FAILED, "WorkflowError")
    assert "gone.ipynb" in (done.error_message or "")


async def test_a_robot_lost_without_a_close_frame_loses_its_job_at_once(tmp_path: Path) -> None:
    """A robot's connection that ends with no close frame (its process died, a reset) has
    its running job requeued at once; one that closes cleanly keeps its job for the
    reconnect grace (60 s here)."""
    from casare_nb.orchestrator.orchestrator import Orchestrator

    nb = notebook(tmp_path, "held.ipynb", ["x = 1"])
    async with Orchestrator(tmp_path / "state", port=0, reconnect_grace_s=60) as orch:
        jobs = {}
        for robot_id in ("clean", "lost"):
            async with fake_robot(orch, robot_id) as ws:
                job = await orch.submit(nb)
                assign = decode(await ws.recv())
                assert isinstance(assign, JobAssign)
                await ws.send(encode(JobAccept(job_id=assign.job_id, attempt=assign.attempt)))
                await orch.wait_for(lambda j=job: bool(orch.job(j.job_id).accepted_at))  # type: ignore[union-attr]
                jobs[robot_id] = job.job_id
                if robot_id == "lost":
                    ws.transport.abort()  # the socket goes, no close frame
        lost = jobs["lost"]
        await orch.wait_for(lambda: orch.job(lost).status is RunStatus.QUEUED)  # type: ignore[union-attr]
        clean = orch.job(jobs["clean"])
        assert clean is not None and clean.status is RunStatus.RUNNING
        assert clean.robot_id == "clean"
