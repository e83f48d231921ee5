"""File-watch triggers: each complete new file in a directory submits a job, once."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cluster import Cluster, notebook

from casare_nb.core.models import Job, RunStatus, TriggerKind, TriggerRef
from casare_nb.core.triggers import Trigger, TriggerError
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.orchestrator.triggers.watch import FileWatcher, check

NOTHING_S = 0.5  # how long "nothing was submitted" is watched for


def watching(trigger_id: str, folder: Path, workflow: Path, pattern: str = "*.csv") -> Trigger:
    return Trigger(
        trigger_id=trigger_id,
        kind=TriggerKind.FILE_WATCH,
        workflow_path=str(workflow),
        watch_path=str(folder),
        pattern=pattern,
        created_at=datetime.now(UTC),
    )


def workflow(tmp_path: Path, cells: list[str] | None = None) -> Path:
    return notebook(tmp_path, "ingest.ipynb", cells or ["x = 1"], params='file_path = ""')


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
async def watcher(cluster: Cluster) -> AsyncIterator[FileWatcher]:
    watcher = FileWatcher(cluster.orch.job_manager, cluster.orch.stores.triggers)
    await watcher.start()
    try:
        yield watcher
    finally:
        await watcher.stop()


def jobs(orch: Orchestrator) -> list[Job]:
    return orch.jobs(limit=1000)


async def nothing_submitted(orch: Orchestrator, count: int = 0) -> None:
    """Assert no job beyond ``count`` is submitted within NOTHING_S."""
    with pytest.raises(TimeoutError):
        await orch.wait_for(lambda: len(jobs(orch)) > count, timeout=NOTHING_S)


async def test_new_matching_file_submits_one_job_with_its_path(
    cluster: Cluster, watcher: FileWatcher, inbox: Path, tmp_path: Path
) -> None:
    """A new *.csv submits one job given its path, which runs; a *.txt submits nothing."""
    nb = workflow(tmp_path, ["print('got', open(file_path).read())"])
    await watcher.add(watching("inbox", inbox, nb))
    (inbox / "notes.txt").write_text("not for us")
    (inbox / "data.csv").write_text("a,b\n1,2\n")
    await cluster.until(lambda: len(jobs(cluster.orch)) == 1)
    path = str(inbox / "data.csv")
    (job,) = jobs(cluster.orch)
    assert job.parameters == {"file_path": path}
    assert job.trigger == TriggerRef(kind=TriggerKind.FILE_WATCH, id="inbox", file=path)
    assert (job.source, job.workflow_path) == ("file_watch", str(nb))
    assert watcher.store.handled_files("inbox") == {path: job.job_id}
    await cluster.robot("r1")
    assert (await cluster.finished(job.job_id)).status is RunStatus.COMPLETED
    await nothing_submitted(cluster.orch, 1)


async def test_half_written_file_is_submitted_once_closed(
    cluster: Cluster, watcher: FileWatcher, inbox: Path, tmp_path: Path
) -> None:
    """A file still being written submits nothing; once closed, it submits one job."""
    await watcher.add(watching("inbox", inbox, workflow(tmp_path)))
    with open(inbox / "big.csv", "w") as f:
        f.write("a,b\n")
        f.flush()
        await nothing_submitted(cluster.orch)
        f.write("1,2\n")
    await cluster.until(lambda: len(jobs(cluster.orch)) == 1)
    assert jobs(cluster.orch)[0].parameters == {"file_path": str(inbox / "big.csv")}
    await nothing_submitted(cluster.orch, 1)


async def test_files_moved_or_renamed_in_are_submitted(
    cluster: Cluster, watcher: FileWatcher, inbox: Path, tmp_path: Path
) -> None:
    """A file moved in from elsewhere and one renamed from a non-matching name each submit."""
    await watcher.add(watching("inbox", inbox, workflow(tmp_path)))
    outside = tmp_path / "outside.csv"
    outside.write_text("1\n")
    os.replace(outside, inbox / "moved.csv")
    (inbox / "upload.part").write_text("2\n")
    os.replace(inbox / "upload.part", inbox / "renamed.csv")
    await cluster.until(lambda: len(jobs(cluster.orch)) == 2)
    assert {j.parameters["file_path"] for j in jobs(cluster.orch)} == {
        str(inbox / "moved.csv"),
        str(inbox / "renamed.csv"),
    }


async def test_restart_skips_handled_files_and_submits_those_that_arrived_meanwhile(
    tmp_path: Path, inbox: Path
) -> None:
    """After a restart, a handled file is not submitted again; one that came while down is."""
    nb = workflow(tmp_path)
    trigger = watching("inbox", inbox, nb)
    async with Orchestrator(tmp_path / "state", port=0) as orch:
        store = orch.stores.triggers
        store.add_trigger(trigger)
        watcher = FileWatcher(orch.job_manager, store)
        await watcher.start()
        (inbox / "first.csv").write_text("1\n")
        await orch.wait_for(lambda: len(jobs(orch)) == 1, timeout=10)
        await watcher.stop()
    (inbox / "second.csv").write_text("2\n")
    async with Orchestrator(tmp_path / "state", port=0) as orch:
        store = orch.stores.triggers
        watcher = FileWatcher(orch.job_manager, store)
        await watcher.start()
        try:
            await orch.wait_for(lambda: len(jobs(orch)) == 2, timeout=10)
            await nothing_submitted(orch, 2)
        finally:
            await watcher.stop()
        files = sorted(j.parameters["file_path"] for j in jobs(orch))
        assert files == [str(inbox / "first.csv"), str(inbox / "second.csv")]
        assert set(store.handled_files("inbox")) == set(files)


async def test_remove_stops_watching_and_other_triggers_keep_theirs(
    cluster: Cluster, watcher: FileWatcher, inbox: Path, tmp_path: Path
) -> None:
    """remove() stops one trigger watching; another on the same directory still submits."""
    nb = workflow(tmp_path)
    await watcher.add(watching("csv", inbox, nb))
    await watcher.add(watching("json", inbox, nb, pattern="*.json"))
    assert watcher.watched == {"csv": str(inbox), "json": str(inbox)}
    await watcher.remove("csv")
    assert watcher.watched == {"json": str(inbox)}
    (inbox / "data.csv").write_text("1\n")
    await nothing_submitted(cluster.orch)
    (inbox / "data.json").write_text("{}\n")
    await cluster.until(lambda: len(jobs(cluster.orch)) == 1)
    (job,) = jobs(cluster.orch)
    assert job.trigger is not None and job.trigger.id == "json"
    await watcher.remove("json")
    assert watcher.watched == {}


async def test_disabled_trigger_is_not_watched(
    cluster: Cluster, watcher: FileWatcher, inbox: Path, tmp_path: Path
) -> None:
    """add() of a disabled trigger watches nothing and submits none of the files there."""
    (inbox / "waiting.csv").write_text("1\n")
    trigger = watching("inbox", inbox, workflow(tmp_path))
    trigger.enabled = False
    await watcher.add(trigger)
    assert watcher.watched == {}
    await nothing_submitted(cluster.orch)


def test_check_refuses_a_path_that_is_not_a_directory(tmp_path: Path) -> None:
    """check() raises TriggerError for a missing directory or a file given as --path."""
    nb = workflow(tmp_path)
    with pytest.raises(TriggerError, match=r"^--path .*missing is not a directory$"):
        check(watching("t", tmp_path / "missing", nb))
    with pytest.raises(TriggerError, match="is not a directory"):
        check(watching("t", nb, nb))
    check(watching("t", tmp_path, nb))


async def test_add_refuses_a_missing_directory(
    watcher: FileWatcher, tmp_path: Path, inbox: Path
) -> None:
    """add() raises TriggerError for a trigger whose directory does not exist."""
    with pytest.raises(TriggerError, match="is not a directory"):
        await watcher.add(watching("t", tmp_path / "missing", workflow(tmp_path)))
    assert watcher.watched == {}


async def test_failed_submit_is_logged_and_released(
    cluster: Cluster,
    watcher: FileWatcher,
    inbox: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A file whose job cannot be submitted (no file_path parameter) is logged and released."""
    nb = notebook(tmp_path, "plain.ipynb", ["x = 1"], params="x = 0")
    await watcher.add(watching("inbox", inbox, nb))
    with caplog.at_level(logging.ERROR, "casare_nb.orchestrator.triggers.watch"):
        (inbox / "data.csv").write_text("1\n")
        async with asyncio.timeout(10):
            while "cannot submit a job for" not in caplog.text:
                await asyncio.sleep(0.02)
        await watcher.stop()  # waits for the submission in flight
    assert jobs(cluster.orch) == []
    assert watcher.store.handled_files("inbox") == {}
