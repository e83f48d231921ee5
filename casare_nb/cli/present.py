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


JOB_COLUMNS = [
    "job_id",
    "status",
    "priority",
    "workflow",
    "attempt",
    "robot",
    "created",
    "by",
    "error",
]


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
        "by": _submitter(job),
        "error": error[:60],
    }


def _submitter(job: Any) -> str:
    """Who submitted a job: its token's name, else what triggered it (``schedule:ID``)."""
    by = getattr(job, "submitted_by", None)
    if by:
        return str(by)
    trigger = getattr(job, "trigger", None)
    return "" if trigger is None else f"{trigger.kind.value}:{trigger.id}"


def jobs_table(jobs: Sequence[Any]) -> str:
    """The ``casare-nb jobs`` table of ``jobs``."""
    if not jobs:
        return "no jobs"
    return table([job_row(j) for j in jobs], JOB_COLUMNS)


def _queued_line(job: Any, reason: str | None, workflow_path: str, why: str | None) -> str:
    if not reason:
        return f"  job {job} queued ({Path(workflow_path).name})"
    return f"  queued again ({reason}){': ' + why if why else ''}"


def _started_line(robot_id: str | None, attempt: int) -> str:
    return f"  started on robot {robot_id} (attempt {attempt})"


def _cell_line(done: int, total: int, cell_index: int, status: str, duration_s: float) -> str:
    width = 20
    filled = round(width * done / max(total, 1))
    return (
        f"  [{'#' * filled}{'-' * (width - filled)}] {done:>3}/{total:<3} "
        f"cell {cell_index:>3}  {status:<11} {duration_s:8.3f} s"
    )


def job_event_printer(echo: Callable[[str], None] = click.echo) -> Callable[[Any], None]:
    """An ``on_event`` for ``Client.wait``: one line per start, cell, requeue."""
    from casare_nb.protocol import CellEvent, EventKind, JobEvent

    def on_event(event: Any) -> None:
        data = event.data
        if isinstance(data, JobEvent) and event.kind is EventKind.JOB_QUEUED:
            job = data.job
            echo(_queued_line(job.job_id, data.reason, job.workflow_path, job.error_message))
        elif isinstance(data, JobEvent) and event.kind is EventKind.JOB_STARTED:
            echo(_started_line(data.job.robot_id, data.job.attempt))
        elif isinstance(data, CellEvent):
            echo(
                _cell_line(
                    data.cells_done,
                    data.cells_total,
                    data.cell_index,
                    data.status.value,
                    data.duration_s,
                )
            )

    return on_event


def job_frame_printer(
    echo: Callable[[str], None] = click.echo,
) -> Callable[[dict[str, Any]], None]:
    """The same lines as :func:`job_event_printer`, from events as the JSON objects the
    orchestrator sent (the light client of ``submit`` and ``rerun``)."""

    def on_event(event: dict[str, Any]) -> None:
        kind, data = event.get("kind"), event.get("data")
        if not isinstance(data, dict):
            return
        job = data.get("job")
        if kind == "job_queued" and isinstance(job, dict):
            echo(
                _queued_line(
                    job.get("job_id"),
                    data.get("reason"),
                    str(job.get("workflow_path", "")),
                    job.get("error_message"),
                )
            )
        elif kind == "job_started" and isinstance(job, dict):
            echo(_started_line(job.get("robot_id"), job.get("attempt", 0)))
        elif kind == "cell_finished":
            echo(
                _cell_line(
                    data["cells_done"],
                    data["cells_total"],
                    data["cell_index"],
                    data["status"],
                    data["duration_s"],
                )
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
        "node": robot.node or "",
    }


def robot_columns(robots: list[Any]) -> list[str]:
    """The robots table's columns; ``node`` too when several orchestrators share the
    robots (each robot says which it is connected to)."""
    return [*ROBOT_COLUMNS, "node"] if any(r.node for r in robots) else ROBOT_COLUMNS
