"""casare-nb cleanup: retention of old runs, jobs, cells, outputs, fires and logs, and the
garbage collection of blobs. What ended before the cutoff goes (never a queued or running
job), with its folder; a blob goes only once no kept manifest names it, and never one a job
writes, offers or names while the sweep runs. A dry run says the same and changes nothing;
kept runs still resume afterwards. Real DuckDB files, real `casare-nb` subprocesses, a real
orchestrator and robot for the resume."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import ERROR_PREFIX, EXIT_BAD_INPUT, describe, run_cli, served, write_notebook
from stores import add_retention_records

from casare_nb.core.models import RunStatus
from casare_nb.notebook.state import StateDir, blob_refs
from casare_nb.protocol import Event, EventKind
from casare_nb.store.checkpoints import FileCheckpointStore
from casare_nb.store.database import Database
from casare_nb.store.embedded import open_embedded

WAIT = 90.0
NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=100)
RECENT = NOW - timedelta(days=1)


def age(*paths: Path, when: datetime = OLD) -> None:
    """Set the modification time of files (and what folders hold) to ``when``."""
    stamp = when.timestamp()
    for path in paths:
        for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
            os.utime(p, (stamp, stamp))


def tree(state: Path) -> dict[str, str]:
    """Every file of a state directory -> its sha256; the database file left out (opening it
    may rewrite its pages: :func:`counts` compares its rows)."""
    return {
        p.relative_to(state).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(state.rglob("*"))
        if p.is_file() and not p.name.startswith("history.duckdb")
    }


def counts(state: Path) -> dict[str, int]:
    """Rows of the tables retention touches."""
    db = Database(state / "history.duckdb")
    return {
        table: int(db.query(f"SELECT count(*) FROM {table}")[0][0])
        for table in ("runs", "cells", "jobs", "outputs", "fires")
    }


def manifest(*blobs: str) -> dict[str, Any]:
    return {"version": 1, "vars": {f"v{i}": {"blob": sha} for i, sha in enumerate(blobs)}}


def put_manifest(store: FileCheckpointStore, run_id: str, cell_id: str, *blobs: str) -> Path:
    paths = store.attempt(run_id, 1).create()
    paths.manifest(cell_id).write_text(json.dumps(manifest(*blobs)))
    return paths.manifest(cell_id)


def test_a_sweep_keeps_blobs_named_offered_or_written_while_it_runs(tmp_path: Path) -> None:
    """Of old blobs no manifest names, the sweep deletes only those nobody touched while it
    ran: one a pending offer waits with, one offered during the sweep, one a manifest
    written to disk during it names (a local run), and one written after it began stay."""
    store = FileCheckpointStore(tmp_path / "state")
    named, garbage, pending, offered, late = (
        store.write_blob(f"blob {name}".encode())
        for name in ("named", "garbage", "pending", "offered", "late")
    )
    put_manifest(store, "kept", "c1", named)
    age(store.state.blob_dir, store.state.root / "runs")
    # an offer that waits for a blob the robot has not sent yet, naming one stored
    missing = hashlib.sha256(b"not sent yet").hexdigest()
    assert store.offer("job-p", 1, "c1", manifest(pending, missing)) == [missing]

    sweep = store.sweep()
    sweep.mark()
    assert store.offer("job-o", 1, "c1", manifest(offered)) == []  # present: stored at once
    put_manifest(store, "local", "c1", late)  # a kernel of `casare-nb run` writing meanwhile
    fresh = store.write_blob(b"written during the sweep")
    deleted, size, kept = sweep.delete()

    assert (deleted, size) == (1, len(b"blob garbage"))
    assert not store.has_blob(garbage)
    assert all(store.has_blob(sha) for sha in (named, pending, offered, late, fresh))
    assert kept == 4  # of the 5 stored when marked (fresh came after)


def build_state(state: Path) -> dict[str, Any]:
    """A state directory with old and recent runs, jobs, cells, outputs, fires, folders,
    blobs (some shared) and logs, written through the stores."""
    stores = open_embedded(state)
    store = stores.checkpoints
    assert isinstance(store, FileCheckpointStore)

    add_retention_records(stores, NOW)
    stores.close()
    with Database(state / "history.duckdb").connect() as con:  # fired_at is the claim's time
        con.execute("UPDATE fires SET fired_at = due_at")

    shared = store.write_blob(b"shared by an old and a new run")
    only_old = store.write_blob(b"only the old runs name it")
    garbage = store.write_blob(b"named by nothing")
    running_blob = store.write_blob(b"the running job's")
    put_manifest(store, "old-done", "c1", shared, only_old)
    put_manifest(store, "old-failed", "c1", only_old)
    put_manifest(store, "local-old", "c1", only_old)
    put_manifest(store, "old-running", "c1", running_blob)
    put_manifest(store, "new-failed", "c1", shared)
    store.attempt("orphan", 1).create()  # a folder nothing records, untouched for long
    store.attempt("fresh-orphan", 1).create()  # one being written now
    logs = state / "logs"
    logs.mkdir()
    for name in ("orchestrator.log", "orchestrator.log.1", "audit.log.2"):
        (logs / name).write_text("x\n")
    old_runs = ("old-done", "old-failed", "old-running", "local-old", "orphan")
    age(store.state.blob_dir, *(store.state.run_dir(r) for r in old_runs))
    age(logs / "orchestrator.log", logs / "orchestrator.log.1", logs / "audit.log.2")
    return {"shared": shared, "only_old": only_old, "garbage": garbage, "running": running_blob}


def test_cleanup_dry_run_changes_nothing_and_the_cleanup_removes_what_it_said(
    tmp_path: Path,
) -> None:
    """`cleanup --older-than 30d --dry-run` reports what would go and leaves every file and
    row; `cleanup --older-than 30d` then removes exactly that: the old finished jobs and runs
    (a local run's too) with their cells, outputs and folders, old fires but the schedule's
    last, the old orphan folder, the blobs only they named, rotated logs; a running or queued
    job, recent runs, a blob a kept run shares, the live log stay."""
    state = tmp_path / "state"
    blobs = build_state(state)
    before, rows = tree(state), counts(state)

    dry = run_cli(
        tmp_path, "cleanup", "--older-than", "30d", "--dry-run", "--json", "--state-dir", str(state)
    )
    assert dry.returncode == 0, describe(dry)
    said = json.loads(dry.stdout)
    assert tree(state) == before and counts(state) == rows
    expected = {
        "dry_run": True,
        "runs": 3,  # old-done, old-failed, local-old
        "attempts": 3,
        "cells": 9,
        "jobs": 2,
        "outputs": 1,
        "fires": 3,  # 100, 99 and 98 days ago (the schedule's last, 1 day ago, stays)
        "folders": 4,  # the three runs' and the old orphan's
        "blobs": 2,  # only_old, garbage
        "logs": 2,
    }
    assert {k: said[k] for k in expected} == expected

    text = run_cli(
        tmp_path, "cleanup", "--older-than", "30d", "--dry-run", "--state-dir", str(state)
    )
    assert text.returncode == 0, describe(text)
    assert "would delete: 3 runs (3 attempts, 9 cells), 2 jobs" in text.stdout
    assert "nothing was deleted" in text.stdout
    assert tree(state) == before

    done = run_cli(tmp_path, "cleanup", "--older-than", "30d", "--json", "--state-dir", str(state))
    assert done.returncode == 0, describe(done)
    report = json.loads(done.stdout)
    assert {k: report[k] for k in expected} == {**expected, "dry_run": False}
    after = counts(state)
    assert after == {
        "runs": rows["runs"] - 3,
        "cells": rows["cells"] - 9,
        "jobs": rows["jobs"] - 2,
        "outputs": rows["outputs"] - 1,
        "fires": rows["fires"] - 3,
    }
    stores = open_embedded(state)
    try:
        assert sorted(j.job_id for j in stores.jobs.list_jobs()) == [
            "new-failed",
            "old-queued",
            "old-running",
        ]
        assert stores.history.get_run("old-done") is None
        assert stores.history.get_run("local-old") is None
        assert stores.history.get_run("old-running") is not None
        assert stores.outputs.outputs("new-failed") == {"rows": 20}
        assert [f.due_at.date() for f in stores.triggers.fires("nightly")] == [
            (NOW - timedelta(days=1)).date()
        ]
        store = stores.checkpoints
        assert sorted(store.run_folders()) == ["fresh-orphan", "new-failed", "old-running"]
        assert not store.has_blob(blobs["only_old"]) and not store.has_blob(blobs["garbage"])
        assert store.has_blob(blobs["shared"]) and store.has_blob(blobs["running"])
    finally:
        stores.close()
    assert sorted(p.name for p in (state / "logs").iterdir()) == ["orchestrator.log"]


@pytest.mark.parametrize("given", ["90x", "ninety days", "-3d", "3.5d", ""])
def test_older_than_that_is_not_an_age_is_refused(given: str, tmp_path: Path) -> None:
    """--older-than garbage: one line naming it, exit 2, nothing changed."""
    state = tmp_path / "state"
    build_state(state)
    before = tree(state)
    proc = run_cli(tmp_path, "cleanup", "--older-than", given, "--state-dir", str(state))
    assert proc.returncode == EXIT_BAD_INPUT, describe(proc)
    assert proc.stderr.strip().splitlines() == [
        f"{ERROR_PREFIX} --older-than {given!r}: give a number and a unit, s, m, h, d or w "
        "(e.g. 90d)"
    ]
    assert tree(state) == before


def test_kept_runs_resume_after_a_cleanup_through_the_live_orchestrator(tmp_path: Path) -> None:
    """With an orchestrator running, `casare-nb cleanup` goes through it: an old failed job
    and its folder go, the blob only it named goes, the blob it shared with a recent failed
    job stays, and that job then resumes from its failed cell without running its loading
    cell again."""
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    write_notebook(
        workflows / "checked.ipynb",
        [
            "open('ran.log', 'a').write('load\\n')\ndata = list(range(10))",
            "assert len(data) <= limit and size > 0, f'{len(data)} rows > limit {limit}'",
            "total = sum(data)",
        ],
        params="limit: int = 5\nsize: int = 1",
    )
    state = tmp_path / "state"
    with served(state, workflows, "robot-a") as thread, thread.client() as client:
        old = client.submit("checked.ipynb", {"size": 11}, wait=True, timeout=WAIT)
        kept = client.submit("checked.ipynb", {"size": 10}, wait=True, timeout=WAIT)
        assert old.status is kept.status is RunStatus.FAILED
        client.history.runs()  # the history flushes what is written behind
        paths = StateDir(state)

        def named(job_id: str) -> set[str]:
            found: set[str] = set()
            for path in paths.run_dir(job_id).rglob("checkpoints/*.json"):
                found.update(blob_refs(json.loads(path.read_text())))
            return found

        only_old, theirs = named(old.job_id) - named(kept.job_id), named(kept.job_id)
        assert only_old and theirs & named(old.job_id)  # `data` is the same in both
        with Database(paths.history_path).connect() as con:  # the old job ended long ago
            con.execute(
                "UPDATE jobs SET created_at = created_at - INTERVAL 100 DAY, "
                "finished_at = finished_at - INTERVAL 100 DAY WHERE job_id = ?",
                [old.job_id],
            )
            con.execute(
                "UPDATE runs SET started_at = started_at - INTERVAL 100 DAY, "
                "finished_at = finished_at - INTERVAL 100 DAY WHERE run_id = ?",
                [old.job_id],
            )
        age(paths.blob_dir)

        proc = run_cli(tmp_path, "cleanup", "--older-than", "30d", "--state-dir", str(state))
        assert proc.returncode == 0, describe(proc)
        assert "deleted: 1 runs (1 attempts" in proc.stdout and ", 1 jobs," in proc.stdout

        assert [j.job_id for j in client.jobs()] == [kept.job_id]
        assert not paths.run_dir(old.job_id).exists()
        assert not any(paths.blob_path(sha).exists() for sha in only_old)
        assert all(paths.blob_path(sha).exists() for sha in theirs)

        seen: list[Event] = []
        done = client.rerun(
            kept.job_id, parameters={"limit": 20}, wait=True, timeout=WAIT, on_event=seen.append
        )
        assert (done.status, done.attempt) == (RunStatus.COMPLETED, 2)
        ran = [e.data.cell_id for e in seen if e.kind is EventKind.CELL_FINISHED]
        assert "c0" not in ran and ran[-2:] == ["c1", "c2"]
        log = thread.robots[0].work_dir / "ran.log"
        assert log.read_text().split().count("load") == 2  # the two first attempts only
