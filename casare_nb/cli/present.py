"""How the CLI (and the demo) show things: tables, one-line outcomes, live job events."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """``rows`` as text columns under upper-case headings."""
    cells = [[str(r.get(c, "") if r.get(c) is not None else "") for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line.rstrip(), *[b.rstrip() for b in body]])


RUN_COLUMNS = ["run_id", "attempt", "status", "workflow", "started", "seconds", "cells", "error"]


def run_row(r: Any) -> dict[str, Any]:
    error = f"cell {r.failed_cell}: {r.error_name}: {r.error_message}" if r.error_name else ""
    return {
        "run_id": r.run_id,
        "attempt": r.attempt,
        "status": r.status.value,
        "workflow": Path(r.workflow_path).name,
        "started": f"{r.started_at:%Y-%m-%d %H:%M:%S}",
        "seconds": f"{r.duration_s:.2f}" if r.duration_s is not None else "",
        "cells": r.cells_total,
        "error": error[:80],
    }


def cell_row(c: Any) -> dict[str, Any]:
    error = f"{c.error_name}: {c.error_message}" if c.error_name else ""
    return {
        "attempt": c.attempt,
        "cell": c.cell_index,
        "status": c.status.value,
        "seconds": f"{c.duration_s:.3f}",
        "replayed": "yes" if c.replayed else "",
        "error": error[:80],
    }


JOB_COLUMNS = ["job_id", "status", "priority", "workflow", "attempt", "robot", "created", "error"]


def job_row(job: Any) -> dict[str, Any]:
    error = f"{job.error_name}: {job.error_message}" if job.error_name else ""
    return {
        "job_id": job.job_id,
        "status": job.status.value,
        "priority": job.priority.value,
        "workflow": Path(job.workflow_path).name,
        "attempt": job.attempt,
        "robot": job.robot_id or "",
        "created": f"{job.created_at:%Y-%m-%d %H:%M:%S}",
        "error": error[:60],
    }


def jobs_table(jobs: Sequence[Any]) -> str:
    """The ``casare-nb jobs`` table of ``jobs``."""
    if not jobs:
        return "no jobs"
    return table([job_row(j) for j in jobs], JOB_COLUMNS)


def job_event_printer(echo: Callable[[str], None] = click.echo) -> Callable[[Any], None]:
    """An ``on_event`` for ``Client.wait``: one line per start, cell, requeue."""
    from casare_nb.protocol import CellEvent, EventKind, JobEvent

    def on_event(event: Any) -> None:
        data = event.data
        if isinstance(data, JobEvent) and event.kind is EventKind.JOB_QUEUED:
            job = data.job
            if not data.reason:
                echo(f"  job {job.job_id} queued ({Path(job.workflow_path).name})")
            else:
                why = job.error_message or ""
                echo(f"  queued again ({data.reason}){': ' + why if why else ''}")
        elif isinstance(data, JobEvent) and event.kind is EventKind.JOB_STARTED:
            echo(f"  started on robot {data.job.robot_id} (attempt {data.job.attempt})")
        elif isinstance(data, CellEvent):
            done, total = data.cells_done, data.cells_total
            width = 20
            filled = round(width * done / max(total, 1))
            echo(
                f"  [{'#' * filled}{'-' * (width - filled)}] {done:>3}/{total:<3} "
                f"cell {data.cell_index:>3}  {data.status.value:<11} {data.duration_s:8.3f} s"
            )

    return on_event


def job_outcome(job: Any) -> str:
    """One line saying how a finished job ended."""
    if job.status.value == "completed":
        return f"job {job.job_id} completed (attempt {job.attempt}, robot {job.robot_id})"
    why = f": {job.error_name}: {job.error_message}" if job.error_name else ""
    return f"job {job.job_id} {job.status.value} (attempt {job.attempt}){why}"


ROBOT_COLUMNS = ["robot_id", "name", "status", "env", "load", "cpu", "mem", "last_heartbeat"]


def robot_row(robot: Any) -> dict[str, Any]:
    from datetime import UTC, datetime

    beat = ""
    if robot.last_heartbeat is not None:
        ago = (datetime.now(UTC) - robot.last_heartbeat).total_seconds()
        beat = f"{robot.last_heartbeat:%H:%M:%S} ({max(ago, 0):.0f} s ago)"
    return {
        "robot_id": robot.robot_id,
        "name": robot.name,
        "status": robot.status.value,
        "env": robot.environment,
        "load": f"{robot.running_jobs}/{robot.max_concurrent_jobs}",
        "cpu": f"{robot.cpu_percent:.0f}%" if robot.cpu_percent is not None else "",
        "mem": f"{robot.memory_percent:.0f}%" if robot.memory_percent is not None else "",
        "last_heartbeat": beat,
    }
