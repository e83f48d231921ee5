"""casare-nb backup and restore, as an operator runs them: a backup of a live orchestrator's
state taken while a job runs, restored elsewhere, holds the same history, tokens, schedules,
triggers and checkpoints, and a failed job resumes from a restored checkpoint on another
robot. Bad archives, a restore over a live orchestrator or over a history without --force,
and a backup to an existing file or an impossible place are refused with one line, and
leave everything as it was. Real orchestrators and robots in threads, real `casare-nb`
subprocesses, real DuckDB files."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import ERROR_PREFIX, EXIT_BAD_INPUT, describe, run_cli, served, write_notebook

from casare_nb import Client, ClientError
from casare_nb.core.models import RunStatus
from casare_nb.notebook.state import blob_refs
from casare_nb.protocol import Event, EventKind
from casare_nb.service_thread import ServiceThread
from casare_nb.store.embedded import open_embedded

WAIT = 90.0
SECRET = {"HOOK_SECRET": "s" * 40}


def tree(state: Path) -> dict[str, str]:
    """Every file of a state directory -> its sha256: the database file, the runtime file
    and logs left out (opening a database may rewrite its pages: :func:`records` compares
    what it holds)."""
    return {
        p.relative_to(state).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(state.rglob("*"))
        if p.is_file()
        and not p.name.startswith("history.duckdb")
        and p.name != "orchestrator.json"
        and "logs" not in p.relative_to(state).parts
    }


def records(state: Path) -> dict[str, Any]:
    """What the stores of a state directory no orchestrator holds answer."""
    stores = open_embedded(state)
    try:
        runs = stores.history.list_runs(limit=1000)
        return {
            "runs": sorted(
                (a.model_dump() for r in runs for a in stores.history.attempts(r.run_id)),
                key=lambda a: (a["run_id"], a["attempt"]),
            ),
            "cells": {r.run_id: stores.history.list_cells(r.run_id) for r in runs},
            "jobs": sorted(
                (j.model_dump() for j in stores.jobs.list_jobs(limit=1000)),
                key=lambda j: j["job_id"],
            ),
            "tokens": stores.tokens.list_tokens(),
            "schedules": stores.triggers.schedules(),
            "triggers": stores.triggers.triggers(),
        }
    finally:
        stores.close()


def checkpoint_files(state: Path, job_id: str) -> dict[str, str]:
    """The manifests of a job and every blob they name -> sha256 (relative paths)."""
    found = {}
    for path in sorted((state / "runs" / job_id).rglob("checkpoints/*.json")):
        found[path.relative_to(state).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
        for sha in blob_refs(json.loads(path.read_text())):
            blob = state / "blobs" / sha[:2] / sha[2:]
            found[blob.relative_to(state).as_posix()] = hashlib.sha256(
                blob.read_bytes()
            ).hexdigest()
    return found


@dataclass
class Live:
    """A served orchestrator with a history, and what it did."""

    base: Path
    state: Path
    workflows: Path
    thread: ServiceThread
    failed_id: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A served orchestrator (state directory ``state``) that ran a job that completed and one
    that failed at its check after loading data, holding a token, a schedule and a webhook."""
    base = tmp_path_factory.mktemp("backup")
    workflows = base / "workflows"
    workflows.mkdir()
    write_notebook(workflows / "add.ipynb", ["y = n + 1", "print('y is', y)"], params="n: int = 1")
    write_notebook(
        workflows / "checked.ipynb",
        [
            "open('ran.log', 'a').write('load\\n')\ndata = list(range(10))",
            "assert len(data) <= limit, f'{len(data)} rows > limit {limit}'",
            "total = sum(data)",
        ],
        params="limit: int = 5",
    )
    write_notebook(
        workflows / "gated.ipynb",
        ["import pathlib, time\nwhile not pathlib.Path(gate).exists():\n    time.sleep(0.05)"],
        params="gate: str = ''",
    )
    state = base / "state"
    with served(state, workflows, "robot-a", pool_size=2, environ=SECRET) as thread:
        with thread.client() as client:
            assert client.submit("add.ipynb", {"n": 2}, wait=True, timeout=WAIT).status is (
                RunStatus.COMPLETED
            )
            failed = client.submit("checked.ipynb", wait=True, timeout=WAIT)
            assert failed.status is RunStatus.FAILED
            client.create_token("ops-user")
            client.add_schedule("add.ipynb", cron="0 6 1 1 *")
            client.add_trigger("webhook", "add.ipynb", secret_env="HOOK_SECRET")
        yield Live(base, state, workflows, thread, failed.job_id)


@dataclass
class Taken:
    """A backup of the live state, and the records it had when taken."""

    archive: Path
    checkpoints: dict[str, str]
    running_id: str


@pytest.fixture(scope="module")
def taken(live: Live) -> Taken:
    """`casare-nb backup --to FILE` on the live state while a job runs (held at a gate)."""
    gate = live.base / "gate"
    with live.thread.client() as client:
        with client.subscribe(("jobs",)) as events:
            running = client.submit("gated.ipynb", {"gate": str(gate)})
            while True:
                event = events.receive(timeout=WAIT)
                if event.kind is EventKind.JOB_STARTED and event.data.job.job_id == running.job_id:
                    break
        archive = live.base / "backups" / "state.tar"
        archive.parent.mkdir()
        proc = run_cli(live.base, "backup", "--to", str(archive), "--state-dir", str(live.state))
        assert proc.returncode == 0, describe(proc)
        assert f"backup written to {archive}" in proc.stdout
        assert client.get(running.job_id).status is RunStatus.RUNNING  # it ran meanwhile
        gate.touch()
        assert client.wait(running.job_id, timeout=WAIT).status is RunStatus.COMPLETED
    # the snapshot holds the records as they were: restored on its own, it is the reference
    return Taken(archive, checkpoint_files(live.state, live.failed_id), running.job_id)


def restore_into(base: Path, archive: Path, state: Path, *extra: str) -> None:
    proc = run_cli(base, "restore", str(archive), "--state-dir", str(state), *extra)
    assert proc.returncode == 0, describe(proc)
    assert f"into {state}" in proc.stdout


def test_a_backup_taken_while_a_job_runs_restores_its_history_and_checkpoints(
    live: Live, taken: Taken, tmp_path: Path
) -> None:
    """The archive restores into a new state directory with every run, cell, job, token,
    schedule and trigger of the live one (the job held at its gate as running), the failed
    job's manifests and blobs byte for byte; a backup of that copy, taken with no
    orchestrator, restores to the same records again."""
    restored = tmp_path / "restored"
    restore_into(tmp_path, taken.archive, restored)
    got = records(restored)
    ids = {j["job_id"]: j for j in got["jobs"]}
    assert ids[live.failed_id]["status"] == "failed"
    assert ids[taken.running_id]["status"] == "running"  # as it was when the backup was taken
    assert len(ids) == 3 and {r["run_id"] for r in got["runs"]} == set(ids)
    with live.thread.client() as client:
        for job_id in ids:
            if job_id == taken.running_id:
                continue
            assert [a.model_dump() for a in client.attempts(job_id)] == [
                r for r in got["runs"] if r["run_id"] == job_id
            ]
            assert client.cells(job_id) == got["cells"][job_id]
        assert {t.name for t in client.tokens()} >= {t["name"] for t in got["tokens"]}
        assert [s.schedule.schedule_id for s in client.schedules()] == [
            s.schedule_id for s in got["schedules"]
        ]
        assert [t.trigger.trigger_id for t in client.triggers()] == [
            t.trigger_id for t in got["triggers"]
        ]
    assert "ops-user" in {t["name"] for t in got["tokens"]}
    assert checkpoint_files(restored, live.failed_id) == taken.checkpoints
    assert taken.checkpoints  # the failed job left checkpoints with blobs
    assert not (restored / "orchestrator.json").exists()

    again = tmp_path / "again.tar"
    proc = run_cli(tmp_path, "backup", "--to", str(again), "--state-dir", str(restored))
    assert proc.returncode == 0, describe(proc)
    copy = tmp_path / "copy"
    restore_into(tmp_path, again, copy)
    assert records(copy) == got
    assert tree(copy) == tree(restored)


def test_a_failed_job_resumes_from_a_restored_checkpoint_on_another_robot(
    live: Live, taken: Taken, tmp_path: Path
) -> None:
    """An orchestrator started on the restored state re-runs the failed job from its failed
    cell on a robot that never ran it: the data the loading cell made comes from the restored
    checkpoint (the loading cell does not run again) and the attempt completes."""
    restored = tmp_path / "restored"
    restore_into(tmp_path, taken.archive, restored)
    with served(restored, live.workflows, "robot-b", environ=SECRET) as thread:
        seen: list[Event] = []
        with thread.client() as client:
            done = client.rerun(
                live.failed_id,
                parameters={"limit": 20},
                wait=True,
                timeout=WAIT,
                on_event=seen.append,
            )
        assert (done.status, done.attempt) == (RunStatus.COMPLETED, 2)
        ran = [e.data.cell_id for e in seen if e.kind is EventKind.CELL_FINISHED]
        assert "c0" not in ran and ran[-2:] == ["c1", "c2"]
        log = thread.robots[0].work_dir / "ran.log"
        assert not log.exists() or "load" not in log.read_text()


def test_restore_refuses_while_an_orchestrator_runs_on_the_target(live: Live, taken: Taken) -> None:
    """`casare-nb restore` into the live orchestrator's state directory: one line, exit 2,
    nothing touched."""
    before = tree(live.state)
    proc = run_cli(
        live.base, "restore", str(taken.archive), "--force", "--state-dir", str(live.state)
    )
    assert proc.returncode == EXIT_BAD_INPUT, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX)
    assert "an orchestrator" in lines[0] and "stop it before restoring" in lines[0]
    assert tree(live.state) == before


@pytest.fixture
def occupied(taken: Taken, tmp_path: Path) -> Path:
    """A state directory holding a history already (a restored one)."""
    state = tmp_path / "occupied"
    restore_into(tmp_path, taken.archive, state)
    return state


def refused(base: Path, archive: Path, state: Path, why: str) -> None:
    """Restoring ``archive`` over ``state`` fails with one line holding ``why`` and leaves
    every file of ``state`` as it was."""
    before, held = tree(state), records(state)
    proc = run_cli(base, "restore", str(archive), "--force", "--state-dir", str(state))
    assert proc.returncode == EXIT_BAD_INPUT, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), describe(proc)
    assert why in lines[0], lines[0]
    assert tree(state) == before and records(state) == held
    assert not [p for p in state.iterdir() if p.name.startswith(".")]  # no staging left


def test_restore_refuses_a_file_that_is_not_a_backup(occupied: Path, tmp_path: Path) -> None:
    """Random bytes, and a tar of something else, are refused: nothing is replaced."""
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not an archive at all\n" * 100)
    refused(tmp_path, junk, occupied, "is not a casare-nb backup (not a tar archive)")
    other = tmp_path / "other.tar"
    with tarfile.open(other, "w") as tar:
        data = b"hello"
        info = tarfile.TarInfo("notes/hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    refused(tmp_path, other, occupied, "unexpected member 'notes/hello.txt'")


def test_restore_refuses_a_truncated_backup(taken: Taken, occupied: Path, tmp_path: Path) -> None:
    """The archive cut short (its manifest and part of its files lost) is refused."""
    cut = tmp_path / "cut.tar"
    data = taken.archive.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert 0 < cut.stat().st_size < len(data)
    refused(tmp_path, cut, occupied, "truncated")  # asserts the one line and nothing changed


def test_restore_refuses_a_blob_whose_bytes_do_not_match_its_sha256(
    taken: Taken, occupied: Path, tmp_path: Path
) -> None:
    """One blob's bytes changed in the archive (its manifest unchanged): refused, naming it."""
    bad = tmp_path / "bad.tar"
    changed = ""
    with (
        tarfile.open(taken.archive) as src,
        tarfile.open(bad, "w", format=tarfile.PAX_FORMAT) as out,
    ):
        for member in src:
            source = src.extractfile(member)
            assert source is not None
            data = source.read()
            if not changed and member.name.startswith("blobs/"):
                changed = member.name
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            out.addfile(member, io.BytesIO(data))
    assert changed
    refused(tmp_path, bad, occupied, f"{changed} does not match its sha256")


def test_restore_over_a_history_needs_force(taken: Taken, occupied: Path, tmp_path: Path) -> None:
    """Without --force a state directory that holds a history is not replaced."""
    before = tree(occupied)
    proc = run_cli(tmp_path, "restore", str(taken.archive), "--state-dir", str(occupied))
    assert proc.returncode == EXIT_BAD_INPUT, describe(proc)
    assert proc.stderr.strip().splitlines() == [
        f"{ERROR_PREFIX} state directory {occupied} already holds a history; restoring "
        "replaces it: give --force"
    ]
    assert tree(occupied) == before


def test_backup_refuses_an_existing_file_without_force_and_an_impossible_place(
    live: Live, taken: Taken
) -> None:
    """--to an existing file needs --force (the file is left as it was); a folder that does
    not exist or a path under a file: one line, exit 2, nothing written."""
    kept = taken.archive.read_bytes()
    proc = run_cli(live.base, "backup", "--to", str(taken.archive), "--state-dir", str(live.state))
    assert proc.returncode == EXIT_BAD_INPUT, describe(proc)
    assert proc.stderr.strip().splitlines() == [
        f"{ERROR_PREFIX} {taken.archive} exists: give --force to replace it"
    ]
    assert taken.archive.read_bytes() == kept
    for place in (live.base / "nowhere" / "b.tar", taken.archive / "b.tar"):
        proc = run_cli(live.base, "backup", "--to", str(place), "--state-dir", str(live.state))
        assert proc.returncode == EXIT_BAD_INPUT, describe(proc)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{ERROR_PREFIX} cannot write {place}")
    assert sorted(p.name for p in taken.archive.parent.iterdir()) == ["state.tar"]


def test_a_backup_through_the_api_needs_an_admin_token(live: Live) -> None:
    """POST /api/admin/backup with a user token is refused (403, one line)."""
    with live.thread.client() as admin:
        token = admin.create_token("backup-user", role="user")
    with Client(live.thread.service.http_url, token) as user, pytest.raises(ClientError) as err:
        user._request("POST", "/api/admin/backup")
    assert err.value.status == 403 and "admin" in str(err.value)
