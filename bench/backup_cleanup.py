"""Benchmark 17: backup, restore and cleanup of a large state directory (issue 13's targets).

A state of **100,000 runs x 10 cells = 1,000,000 cell rows** (60 days of history, bulk
inserted as benchmark 10 does) and **10,000 blobs** (4 KB each) named by the checkpoint
manifests of 5,000 run folders (4 blobs each, neighbours sharing blobs, so old and recent
runs share some), 1,000 of them named by no manifest; blobs and old folders dated as old as
their runs. Then, as an operator does it:

1. **backup while running**: an orchestrator service (HTTP API) with **2 local robots**
   (warm kernels) runs a stream of small jobs (5 cells of 0.1 s); once both robots are busy,
   ``casare-nb backup --to FILE`` (a process, through the orchestrator's admin API): its
   wall time, the archive's size, the jobs that finished meanwhile;
2. **restore**: ``casare-nb restore FILE --state-dir NEW`` (a process) into a new state
   directory: wall time, and the restored rows against the archive's (the history matches);
3. **cleanup**: ``casare-nb cleanup --older-than 30d`` on the restored copy (no
   orchestrator: the CLI on the state directory), first ``--dry-run``, then for real: wall
   times, what went; afterwards every kept manifest's blobs are all present (what a resume
   needs).

    .venv/bin/python -m bench.backup_cleanup [--quick]

``--quick``: 10,000 runs, 1,000 blobs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import common
from bench import notebooks as nbs
from bench.history_aggregates import CELLS_PER_RUN, DAYS, fill
from casare_nb.core.models import RunStatus
from casare_nb.notebook.state import StateDir, blob_refs, write_json_atomic
from casare_nb.orchestrator.service import OrchestratorService
from casare_nb.protocol import EventKind
from casare_nb.robot.main import local_robot
from casare_nb.service_thread import ServiceThread
from casare_nb.store.checkpoints import FileCheckpointStore, manifest_files
from casare_nb.store.database import Database

COMMAND = ".venv/bin/python -m bench.backup_cleanup"
ROOT = Path(__file__).resolve().parent.parent
BLOB_BYTES = 4096
BLOBS_PER_MANIFEST = 4
GARBAGE_SHARE = 0.1  # blobs no manifest names
JOBS = 40  # submitted before the backup: more than the backup lasts
CELL_S = 0.1
OLDER_THAN_DAYS = 30


def _cli(*args: str, cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """``casare-nb ARGS`` as a process; (wall seconds, the finished process)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CASARE_HOME", "CASARE_URL")}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "casare_nb.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"casare-nb {' '.join(args)}: exit {proc.returncode}: {proc.stderr}")
    return wall, proc


def build(state: Path, runs: int, blobs: int) -> dict[str, Any]:
    """The history (``runs`` x 10 cells) and ``blobs`` blobs, most named by manifests of
    run folders; blobs and folders dated like the runs that name them."""
    t0 = time.perf_counter()
    fill(state, runs)
    rows = Database(state / "history.duckdb").query(
        "SELECT run_id, epoch(started_at) FROM runs ORDER BY run_id"
    )
    store = FileCheckpointStore(state)
    digests = [
        store.write_blob(i.to_bytes(8, "big") + os.urandom(BLOB_BYTES - 8)) for i in range(blobs)
    ]
    named = digests[: int(blobs * (1 - GARBAGE_SHARE))]
    folders = len(named) // 2  # each folder names 4 blobs, neighbours share 2
    step = max(1, len(rows) // folders)
    newest_use: dict[str, float] = {}
    for k in range(folders):
        run_id, started = rows[k * step]
        names = [named[(2 * k + j) % len(named)] for j in range(BLOBS_PER_MANIFEST)]
        paths = store.attempt(run_id, 1).create()
        write_json_atomic(
            paths.manifest("c1"),
            {"version": 1, "vars": {f"v{j}": {"blob": sha} for j, sha in enumerate(names)}},
        )
        for p in (paths.manifest("c1"), paths.checkpoints, paths.root):
            os.utime(p, (started, started))
        for sha in names:
            newest_use[sha] = max(newest_use.get(sha, 0.0), started)
    oldest = (datetime.now(UTC) - timedelta(days=DAYS)).timestamp()
    for sha in digests:
        when = newest_use.get(sha, oldest)
        os.utime(store.blob_path(sha), (when, when))
    return {
        "runs": runs,
        "cells": runs * CELLS_PER_RUN,
        "blobs": blobs,
        "folders": folders,
        "build_s": time.perf_counter() - t0,
    }


def _workflow(folder: Path) -> Path:
    """5 cells of CELL_S seconds each."""
    cells = [f"import time\ntime.sleep({CELL_S})\nx{i} = {i}" for i in range(5)]
    return nbs.write_notebook(folder / "small.ipynb", cells)


def backup_while_running(state: Path, work: Path, archive: Path) -> dict[str, Any]:
    """Serve ``state`` with 2 robots running jobs; `casare-nb backup` meanwhile."""
    workflows = work / "workflows"
    workflows.mkdir()
    _workflow(workflows)
    service = OrchestratorService(state, port=0, http_port=0, workflows_dir=workflows)
    robots = [
        local_robot(f"bench-{name}", work_dir=work / f"robot-{name}", heartbeat_interval_s=0.5)
        for name in ("a", "b")
    ]
    with ServiceThread(service, robots=robots) as thread, thread.client() as client:
        with client.subscribe(("jobs",)) as events:
            jobs = [client.submit("small.ipynb").job_id for _ in range(JOBS)]
            started = 0
            while started < 2:
                event = events.receive(timeout=120)
                if event.kind is EventKind.JOB_STARTED:
                    started += 1
        before = {j.job_id: j.status for j in client.jobs(limit=JOBS + 10)}
        wall, proc = _cli(
            "backup", "--to", str(archive), "--json", "--state-dir", str(state), cwd=work
        )
        after = {j.job_id: j.status for j in client.jobs(limit=JOBS + 10)}
        summary = json.loads(proc.stdout)
        finished_meanwhile = sum(
            1
            for job_id in jobs
            if not before[job_id].finished and after.get(job_id, RunStatus.QUEUED).finished
        )
        running_after = sum(1 for s in after.values() if s is RunStatus.RUNNING)
        for job_id in jobs:  # no need to run the rest
            if not client.get(job_id).status.finished:
                client.cancel(job_id)
    return {
        "wall_s": wall,
        "server_s": summary["seconds"],
        "bytes": archive.stat().st_size,
        "tables": summary["tables"],
        "blobs": summary["blobs"],
        "checkpoints": summary["checkpoints"],
        "finished_meanwhile": finished_meanwhile,
        "running_after": running_after,
    }


def restore(archive: Path, target: Path, work: Path, tables: dict[str, int]) -> dict[str, Any]:
    wall, proc = _cli("restore", str(archive), "--json", "--state-dir", str(target), cwd=work)
    summary = json.loads(proc.stdout)
    return {
        "wall_s": wall,
        "seconds": summary["seconds"],
        "tables": summary["tables"],
        "matches": summary["tables"] == tables,
    }


def _counted(report: dict[str, Any]) -> dict[str, Any]:
    """A cleanup report's counts (not its time, nor whether it was a dry run)."""
    return {k: v for k, v in report.items() if k not in ("seconds", "dry_run", "before")}


def cleanup(state: Path, work: Path) -> dict[str, Any]:
    age = f"{OLDER_THAN_DAYS}d"
    dry_wall, dry = _cli(
        "cleanup", "--older-than", age, "--dry-run", "--json", "--state-dir", str(state), cwd=work
    )
    wall, done = _cli("cleanup", "--older-than", age, "--json", "--state-dir", str(state), cwd=work)
    report = json.loads(done.stdout)
    st = StateDir(state)
    manifests = lacking = 0
    for _, entry in manifest_files(st):
        manifests += 1
        names = blob_refs(json.loads(Path(entry.path).read_text()))
        lacking += any(not st.blob_path(sha).exists() for sha in names)
    cells_left = int(Database(st.history_path).query("SELECT count(*) FROM cells")[0][0])
    return {
        "dry_wall_s": dry_wall,
        "dry_seconds": json.loads(dry.stdout)["seconds"],
        "dry": json.loads(dry.stdout),
        "wall_s": wall,
        "report": report,
        "same_as_dry": _counted(json.loads(dry.stdout)) == _counted(report),
        "kept_manifests": manifests,
        "kept_lacking_blobs": lacking,
        "cells_left": cells_left,
    }


def main(quick: bool = False) -> dict[str, Any]:
    runs = 10_000 if quick else 100_000
    blobs = 1_000 if quick else 10_000
    with nbs.temp_dir("backup") as work:
        state = work / "state"
        print(f"  [backup] building {runs:,} runs, {blobs:,} blobs", file=sys.stderr, flush=True)
        built = build(state, runs, blobs)
        archive = work / "backup.tar"
        print("  [backup] backup while 2 robots run jobs", file=sys.stderr, flush=True)
        taken = backup_while_running(state, work, archive)
        print("  [backup] restore", file=sys.stderr, flush=True)
        restored = restore(archive, work / "restored", work, taken["tables"])
        print("  [backup] cleanup", file=sys.stderr, flush=True)
        cleaned = cleanup(work / "restored", work)
    report = cleaned["report"]
    consistent = restored["matches"] and taken["tables"]["cells"] >= built["cells"]
    resumable = cleaned["kept_lacking_blobs"] == 0
    rows = [
        [
            "backup while running (`casare-nb backup`, a process)",
            f"{taken['tables']['runs']:,} runs, {taken['tables']['cells']:,} cells, "
            f"{taken['checkpoints']:,} manifests, {taken['blobs']:,} blobs; 2 robots running "
            f"jobs ({taken['finished_meanwhile']} finished during it)",
            common.sec(taken["wall_s"]),
            f"archive {common.mb(taken['bytes'])}; {common.sec(taken['server_s'])} in the "
            "orchestrator",
        ],
        [
            "restore (`casare-nb restore`, a process)",
            "verify every member's sha256, import the export, swap in",
            common.sec(restored["wall_s"]),
            "rows match the archive" if restored["matches"] else "**rows differ**",
        ],
        [
            "cleanup --dry-run (a process)",
            f"older than {OLDER_THAN_DAYS} days, over {built['cells']:,} cell rows and "
            f"{built['blobs']:,} blobs",
            common.sec(cleaned["dry_wall_s"]),
            f"said {cleaned['dry']['runs']:,} runs, {cleaned['dry']['blobs']:,} blobs"
            + ("" if cleaned["same_as_dry"] else " (the cutoff moved on meanwhile)"),
        ],
        [
            "cleanup (a process)",
            f"{report['runs']:,} runs, {report['cells']:,} cells, {report['folders']:,} "
            f"folders, {report['blobs']:,} blobs ({common.mb(report['blob_bytes'])}) removed; "
            f"{report['blobs_kept']:,} blobs kept",
            common.sec(cleaned["wall_s"]),
            f"{common.sec(report['seconds'])} in the procedure; "
            f"{cleaned['cells_left']:,} cell rows left",
        ],
        [
            "kept checkpoints after cleanup",
            "manifests left whose blobs are all present (what a resume reads)",
            f"{cleaned['kept_manifests'] - cleaned['kept_lacking_blobs']:,} / "
            f"{cleaned['kept_manifests']:,}",
            "",
        ],
    ]
    targets = [
        common.target(
            f"backup of {runs:,} runs while 2 robots run jobs restores consistently",
            f"{common.sec(taken['wall_s'])}, {common.mb(taken['bytes'])}; restored rows "
            + ("match" if consistent else "differ"),
            consistent,
        ),
        common.target(
            f"cleanup over {built['cells']:,} cell rows and {built['blobs']:,} blobs; every "
            "kept run still resumes",
            f"{common.sec(cleaned['wall_s'])}; {cleaned['kept_lacking_blobs']} kept manifests "
            "lack a blob",
            resumable,
        ),
    ]
    notes = [
        f"State: {runs:,} runs x {CELLS_PER_RUN} cells over {DAYS} days (benchmark 10's "
        f"generator), {blobs:,} blobs of {BLOB_BYTES // 1024} KB, {built['folders']:,} run "
        f"folders with one manifest of {BLOBS_PER_MANIFEST} blobs (neighbours share 2), "
        f"{GARBAGE_SHARE:.0%} of the blobs named by nothing; built in "
        f"{common.sec(built['build_s'])}.",
        f"Backup: `OrchestratorService` + 2 `local_robot`s (one warm kernel each) in this "
        f"process's `ServiceThread`; {JOBS} jobs of 5 cells x {CELL_S:g} s queued, the backup "
        "started once both robots run one. The archive is the tar the CLI writes (the "
        "orchestrator writes it to its state directory, then streams it).",
        "Times are wall clock of the `casare-nb` process (Python start-up included, ~1 s); "
        "'in the orchestrator' / 'in the procedure' is what the procedure itself reports.",
        "One run each (the state is large; the figures vary about ±20 % on this machine).",
    ]
    return {
        "name": "backup_cleanup",
        "title": "17. Backup, restore and cleanup of a large state",
        "command": COMMAND,
        "runs": "1 run",
        "columns": ["procedure", "what", "wall", "detail"],
        "rows": rows,
        "targets": targets,
        "notes": notes,
        "findings": [],
        "raw": {"built": built, "backup": taken, "restore": restored, "cleanup": cleaned},
    }


if __name__ == "__main__":
    print(json.dumps(main(quick="--quick" in sys.argv[1:]), indent=1, default=str))
