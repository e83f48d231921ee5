"""Benchmark 10: the dashboard's history aggregates over a large history, through the HTTP
API, against the same SQL run in-process on the DuckDB file (the floor).

A history of 100,000 runs x 10 cells = **1,000,000 cell rows** (50 workflows, 60 days,
~8 % failed, half of the runs fired by 5 schedules) is bulk-inserted into a fresh state
dir's ``history.duckdb`` (DataFrames, ``INSERT ... SELECT``: executemany would take minutes).
An orchestrator service (HTTP API, no robots) is started on it in this process's
ServiceThread, and each aggregate the dashboard uses is asked through the HTTP API with the
synchronous Client (a fresh request each time, loopback):

- ``history.daily(workflow=W)``: success rate per day of one workflow, 14 days;
- ``history.daily()``: every workflow, per day;
- ``history.groups()``: runs grouped by workflow and schedule/trigger;
- ``history.runs(status="failed", limit=20)``: the last 20 failures;
- ``history.cell_durations(workflow=W)``: p50/p95/max cell duration of one workflow.

Each is asked once unmeasured, then ``reps`` times; p50 and p95 are nearest-rank.

    .venv/bin/python -m bench.history_aggregates [--quick]
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import common
from bench import notebooks as nbs
from casare_nb.core.models import RunStatus
from casare_nb.orchestrator.service import OrchestratorService
from casare_nb.service_thread import ServiceThread
from casare_nb.store.database import Database

COMMAND = ".venv/bin/python -m bench.history_aggregates"
TARGET_P95_S = 0.050
CELLS_PER_RUN = 10
WORKFLOWS = 50
DAYS = 60


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else float("nan")


def fill(state: Path, runs: int, seed: int = 7) -> None:
    """``runs`` runs of CELLS_PER_RUN cells each into ``state``'s history, in bulk."""
    state.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC).replace(tzinfo=None)
    # in time order, as a history is written (DuckDB's zone maps then skip old row groups)
    ages = np.sort(rng.uniform(0, DAYS * 86400, runs))[::-1]
    started = pd.to_datetime(now) - pd.to_timedelta(ages, unit="s")
    failed = rng.random(runs) < 0.08
    status = np.where(failed, "failed", "completed")
    ids = [f"run-{i:07d}" for i in range(runs)]
    workflow = [f"wf/{i % WORKFLOWS:02d}.ipynb" for i in range(runs)]
    trigger = np.where(
        rng.random(runs) < 0.5, "manual", [f"schedule:s{i % 5}" for i in range(runs)]
    )
    duration = rng.gamma(2.0, 0.5, runs)
    failed_cell = np.where(failed, rng.integers(1, CELLS_PER_RUN, runs), -1)
    run_rows = pd.DataFrame(
        {
            "run_id": ids,
            "attempt": 1,
            "workflow_path": workflow,
            "notebook_sha256": "0" * 64,
            "status": status,
            "kernel_name": "python3",
            "language": "python",
            "started_at": started,
            "finished_at": started + pd.to_timedelta(duration, unit="s"),
            "duration_s": duration,
            "cells_total": CELLS_PER_RUN,
            "error_name": [("AssertionError" if f else None) for f in failed],
            "error_message": [("bad rows" if f else None) for f in failed],
            "failed_cell": pd.array(
                [int(c) if f else None for f, c in zip(failed, failed_cell, strict=True)],
                dtype="Int32",
            ),
            "failed_cell_id": [
                f"c{c}" if f else None for f, c in zip(failed, failed_cell, strict=True)
            ],
            "source": "orchestrator",
            "trigger": trigger,
        }
    )
    n = runs * CELLS_PER_RUN
    cell_rows = pd.DataFrame(
        {
            "run_id": np.repeat(ids, CELLS_PER_RUN),
            "attempt": 1,
            "cell_index": np.tile(np.arange(CELLS_PER_RUN), runs),
            "cell_id": np.tile([f"c{i}" for i in range(CELLS_PER_RUN)], runs),
            "status": "ok",
            "started_at": np.repeat(started, CELLS_PER_RUN),
            "duration_s": rng.gamma(2.0, 0.05, n),
        }
    )
    db = Database(state / "history.duckdb")
    try:
        with db.connect() as con:  # creates and migrates the schema
            con.register("run_rows", run_rows)
            con.register("cell_rows", cell_rows)
            con.execute("INSERT INTO runs BY NAME SELECT * FROM run_rows")
            con.execute("INSERT INTO cells BY NAME SELECT * FROM cell_rows")
    finally:
        db.close()


def _timed(call: Callable[[], Any], reps: int) -> list[float]:
    call()  # unmeasured: connections, caches
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def measure(state: Path, reps: int) -> dict[str, dict[str, list[float]]]:
    """HTTP and in-process timings of each aggregate."""
    w = "wf/07.ipynb"
    service = OrchestratorService(state, port=0, http_port=0, workflows_dir=state)
    results: dict[str, dict[str, list[float]]] = {}
    with ServiceThread(service) as cluster, cluster.client() as client:
        history = client.history
        http: dict[str, Callable[[], Any]] = {
            "daily (one workflow, 14 days)": lambda: history.daily(days=14, workflow=w),
            "daily (all workflows, 14 days)": lambda: history.daily(days=14),
            "groups (workflow x trigger)": lambda: history.groups(limit=50),
            "last 20 failures": lambda: history.runs(status="failed", limit=20),
            "cell durations p50/p95 (one workflow)": lambda: history.cell_durations(workflow=w),
            "cell durations p50/p95 (every workflow)": lambda: history.cell_durations(),
        }
        # the same methods on the orchestrator's own store, in this process: the floor
        store = service.orchestrator.stores.history
        local: dict[str, Callable[[], Any]] = {
            "daily (one workflow, 14 days)": lambda: store.daily(days=14, workflow=w),
            "daily (all workflows, 14 days)": lambda: store.daily(days=14),
            "groups (workflow x trigger)": lambda: store.groups(limit=50),
            "last 20 failures": lambda: store.list_runs(status=[RunStatus.FAILED], limit=20),
            "cell durations p50/p95 (one workflow)": lambda: store.cell_durations(workflow=w),
            "cell durations p50/p95 (every workflow)": lambda: store.cell_durations(),
        }
        for name, call in http.items():
            results[name] = {"http": _timed(call, reps), "local": _timed(local[name], reps)}
    return results


def main(quick: bool = False) -> dict[str, Any]:
    runs = 20_000 if quick else 100_000
    reps = 10 if quick else 40
    with nbs.temp_dir("history") as work:
        t0 = time.perf_counter()
        fill(work / "state", runs)
        fill_s = time.perf_counter() - t0
        results = measure(work / "state", reps)
    rows, targets = [], []
    for name, found in results.items():
        h, loc = found["http"], found["local"]
        p50, p95 = percentile(h, 50), percentile(h, 95)
        rows.append(
            [
                name,
                f"{common.ms(p50)} / {common.ms(p95)}",
                f"{common.ms(percentile(loc, 50))} / {common.ms(percentile(loc, 95))}",
                f"{p50 / max(percentile(loc, 50), 1e-9):.1f}x",
            ]
        )
        targets.append(
            {
                "target": f"{name}: p95 <= {TARGET_P95_S * 1000:.0f} ms through HTTP",
                "measured": common.ms(p95),
                "met": p95 <= TARGET_P95_S,
            }
        )
    return {
        "name": "history_aggregates",
        "title": f"10. History aggregates over {runs * CELLS_PER_RUN:,} cell rows, through HTTP",
        "command": COMMAND,
        "runs": f"{reps} requests per aggregate after one unmeasured",
        "columns": [
            "aggregate",
            "HTTP p50 / p95",
            "in-process DuckDB p50 / p95",
            "HTTP / floor (p50)",
        ],
        "rows": rows,
        "targets": targets,
        "notes": [
            f"{runs:,} runs x {CELLS_PER_RUN} cells, {WORKFLOWS} workflows over {DAYS} days, "
            f"~8 % failed, half fired by 5 schedules; bulk-inserted in {fill_s:.1f} s.",
            "HTTP: the orchestrator's FastAPI app in a ServiceThread, the synchronous Client "
            "on loopback (one request per call, JSON decoded into pydantic models). "
            "In-process: the same HistoryStore methods of the running orchestrator's store, "
            "called in this process (the floor: no HTTP, no JSON).",
        ],
        "raw": results,
    }


if __name__ == "__main__":
    print(json.dumps(main("--quick" in sys.argv), indent=1, default=str))
