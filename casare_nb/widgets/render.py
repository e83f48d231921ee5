"""View models to HTML text, for the views' ``HTML`` widgets. Pure functions of their
arguments (no widget library, no I/O): the views set a widget's ``value`` to what these
answer, and an unchanged string sends nothing to the browser.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape as _escape
from typing import Final

from casare_nb.api import UpcomingFire
from casare_nb.core.failure import Failure, plain
from casare_nb.core.history import RunGroup
from casare_nb.core.models import RobotStatus, RunStatus
from casare_nb.core.thresholds import Level
from casare_nb.widgets.viewmodels import (
    ConnectionState,
    ConnectionView,
    FinishedView,
    QueueView,
    RobotView,
    format_age,
    workflow_name,
)

__all__ = [
    "COLOURS",
    "ROBOT_COLUMNS",
    "debug_link",
    "failure_html",
    "finished_html",
    "groups_html",
    "log_html",
    "notebook_link",
    "queue_html",
    "robot_header_html",
    "robot_row_html",
    "status_html",
    "upcoming_html",
]

COLOURS: Final = {Level.OK: "#2e7d32", Level.WARN: "#ef6c00", Level.CRITICAL: "#c62828"}
"""Text colour per level."""

STATUS_COLOURS: Final = {
    RobotStatus.ONLINE: "#2e7d32",
    RobotStatus.BUSY: "#1565c0",
    RobotStatus.DRAINING: "#ef6c00",
    RobotStatus.OFFLINE: "#757575",
}
RUN_COLOURS: Final = {
    RunStatus.COMPLETED: "#2e7d32",
    RunStatus.FAILED: "#c62828",
    RunStatus.TIMEOUT: "#c62828",
    RunStatus.DEAD: "#c62828",
    RunStatus.CANCELLED: "#757575",
    RunStatus.RUNNING: "#1565c0",
    RunStatus.QUEUED: "#757575",
}
TRACEBACK_LINES: Final = 30
"""The last lines of a traceback shown (the full one is in the output notebook)."""

ROBOT_COLUMNS: Final = (
    ("robot", "16%"),
    ("environment", "12%"),
    ("tags", "14%"),
    ("status", "10%"),
    ("load", "8%"),
    ("CPU", "10%"),
    ("memory", "10%"),
    ("heartbeat", "10%"),
)
"""The robots table's columns and widths (each robot's row is its own widget, next to its
Drain button, so the header and every row share these widths)."""


def escape(text: str, quote: bool = False) -> str:
    """``text`` safe in HTML content (``quote``: in an attribute value too)."""
    return _escape(text, quote=quote)


_TABLE = "width:100%;table-layout:fixed;border-collapse:collapse;font-size:13px"
_CELL = "padding:2px 6px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap"


def _coloured(text: str, colour: str, bold: bool = False) -> str:
    weight = ";font-weight:bold" if bold else ""
    return f'<span style="color:{colour}{weight}">{escape(text)}</span>'


def _row(cells: Iterable[str], header: bool = False) -> str:
    tag = "th" if header else "td"
    align = "text-align:left;" if header else ""
    return "<tr>" + "".join(f'<{tag} style="{align}{_CELL}">{c}</{tag}>' for c in cells) + "</tr>"


def _colgroup(widths: Iterable[str]) -> str:
    return "<colgroup>" + "".join(f'<col style="width:{w}">' for w in widths) + "</colgroup>"


def status_html(view: ConnectionView, notice: str = "") -> str:
    """The status bar: the connection's one line (green, orange while connecting, red),
    the retry delay, and the last action's notice."""
    colour = {
        ConnectionState.CONNECTED: COLOURS[Level.OK],
        ConnectionState.CONNECTING: COLOURS[Level.WARN],
    }.get(view.state, COLOURS[Level.CRITICAL])
    text = view.message
    if view.retry_in_s is not None and not view.ok:
        text += f" (retrying in {view.retry_in_s:.1f} s)"
    line = _coloured(("● " if view.ok else "▲ ") + text, colour, bold=not view.ok)
    if notice:
        line += f' <span style="color:#444"> · {escape(notice)}</span>'
    return f'<div style="font-size:13px">{line}</div>'


def robot_header_html() -> str:
    widths = [w for _, w in ROBOT_COLUMNS]
    header = _row((escape(name) for name, _ in ROBOT_COLUMNS), header=True)
    return f'<table style="{_TABLE}">{_colgroup(widths)}{header}</table>'


def _percent(value: float | None, level: Level) -> str:
    if value is None:
        return "-"
    return _coloured(f"{value:.0f} %", COLOURS[level], bold=level is not Level.OK)


def robot_row_html(robot: RobotView) -> str:
    """One robot as a one-row table with the columns of :data:`ROBOT_COLUMNS`."""
    widths = [w for _, w in ROBOT_COLUMNS]
    status = _coloured(robot.status.value, STATUS_COLOURS[robot.status], bold=True)
    cells = [
        f'<span title="{escape(robot.name, quote=True)}">{escape(robot.robot_id)}</span>',
        escape(robot.environment),
        escape(", ".join(robot.tags) or "-"),
        status,
        escape(robot.load),
        _percent(robot.cpu_percent, robot.cpu_level),
        _percent(robot.memory_percent, robot.memory_level),
        escape(format_age(robot.heartbeat_age_s)),
    ]
    return f'<table style="{_TABLE}">{_colgroup(widths)}{_row(cells)}</table>'


def queue_html(queue: QueueView) -> str:
    """Depth by priority, the oldest waiting job's age, coloured by the level."""
    colour = COLOURS[queue.level]
    depth = _coloured(f"{queue.depth} queued", colour, bold=True)
    oldest = "-"
    if queue.oldest_age_s is not None:
        more = "> " if queue.approximate else ""
        oldest = _coloured(f"{more}{format_age(queue.oldest_age_s)}", colour)
        if queue.oldest_job_id:
            oldest += f' <span style="color:#757575">({escape(queue.oldest_job_id)})</span>'
    rows = [_row([escape(p.value), str(n)]) for p, n in queue.by_priority]
    flags = []
    if queue.submissions_paused:
        flags.append(_coloured("submissions paused", COLOURS[Level.WARN], bold=True))
    if queue.draining:
        flags.append(_coloured("orchestrator draining", COLOURS[Level.CRITICAL], bold=True))
    return (
        f'<div style="font-size:13px">{depth} · oldest waiting: {oldest}'
        + (" · " + " · ".join(flags) if flags else "")
        + '</div><table style="font-size:13px;border-collapse:collapse">'
        + _row(["priority", "queued"], header=True)
        + "".join(rows)
        + "</table>"
    )


def finished_html(finished: Sequence[FinishedView]) -> str:
    """The recently finished jobs, newest first."""
    if not finished:
        return '<div style="color:#757575;font-size:13px">no job finished lately</div>'
    rows = []
    for f in finished:
        status = _coloured(f.status.value, RUN_COLOURS.get(f.status, "#000"), bold=True)
        rows.append(
            _row(
                [
                    escape(f.job_id),
                    escape(f.workflow),
                    status,
                    escape(f.robot_id or "-"),
                    escape(format_age(f.age_s)) + " ago",
                    escape(f.error or ""),
                ]
            )
        )
    header = _row(["job", "workflow", "status", "robot", "finished", "error"], header=True)
    return f'<table style="{_TABLE}">{header}{"".join(rows)}</table>'


def groups_html(groups: Sequence[RunGroup], known: Iterable[str] = ()) -> str:
    """Runs per workflow and per schedule/trigger (a frequent schedule is one line)."""
    if not groups:
        return '<div style="color:#757575;font-size:13px">no runs yet</div>'
    known = tuple(known)
    rows = []
    for g in groups:
        status = _coloured(g.last_status.value, RUN_COLOURS.get(g.last_status, "#000"))
        failed = _coloured(str(g.failed), COLOURS[Level.CRITICAL]) if g.failed else "0"
        rows.append(
            _row(
                [
                    escape(workflow_name(g.workflow_path, known)),
                    escape(g.trigger or "by hand"),
                    str(g.runs),
                    str(g.completed),
                    failed,
                    f"{status} {escape(g.last_run_id)}",
                    escape(f"{g.last_started_at:%Y-%m-%d %H:%M}"),
                ]
            )
        )
    header = _row(
        ["workflow", "started by", "runs", "ok", "failed", "last", "last started"], header=True
    )
    return f'<table style="{_TABLE}">{header}{"".join(rows)}</table>'


def upcoming_html(fires: Sequence[UpcomingFire], now: datetime) -> str:
    """The next due times of the schedules, soonest first."""
    if not fires:
        return '<div style="color:#757575;font-size:13px">no schedule due</div>'
    rows = [
        _row(
            [
                escape(f"{f.due_at:%Y-%m-%d %H:%M:%S} UTC"),
                "in " + escape(format_age((f.due_at - now).total_seconds())),
                escape(f.schedule_id),
                escape(workflow_name(f.workflow_path)),
                escape(f.timezone),
            ]
        )
        for f in fires
    ]
    header = _row(["due", "", "schedule", "workflow", "time zone"], header=True)
    return f'<table style="{_TABLE}">{header}{"".join(rows)}</table>'


def debug_link(job_id: str) -> str:
    """The JupyterLab command link that opens the job's failed run in a debug kernel."""
    args = json.dumps({"job": job_id}).replace("&", "&amp;").replace("'", "&#39;")
    args = args.replace("<", "&lt;")
    return (
        '<a data-commandlinker-command="casare:debug" '
        f"data-commandlinker-args='{args}' href=\"#\">Open in JupyterLab</a>"
    )


def notebook_link(base_url: str, job_id: str, attempt: int) -> str:
    """A link opening the attempt's output notebook in JupyterLab, through the Jupyter
    server extension (``<base_url>casare/notebook/JOB?attempt=N`` writes it under
    ``casare-runs/`` and redirects to it)."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    href = f"{base}casare/notebook/{job_id}?attempt={attempt}"
    return f'<a href="{escape(href, quote=True)}" target="_blank">output notebook</a>'


def failure_html(failure: Failure, known: Iterable[str] = (), base_url: str = "/") -> str:
    """A failed run: workflow, job, the failed cell's index and source, the error, the end
    of the traceback (colour codes stripped), links to the output notebook and the debug
    command."""
    run = failure.run
    where = "-" if failure.cell_index is None else str(failure.cell_index)
    error = f"{run.error_name or 'error'}: {run.error_message or ''}".rstrip(": ")
    lines = [plain(line) for line in failure.traceback][-TRACEBACK_LINES:]
    started = f"{run.started_at:%Y-%m-%d %H:%M:%S}"
    head = (
        f"<b>{escape(workflow_name(run.workflow_path, known))}</b> · job "
        f"<code>{escape(run.run_id)}</code> attempt {run.attempt} · {escape(started)} · "
        f"{_coloured(run.status.value, RUN_COLOURS.get(run.status, '#000'), bold=True)}"
    )
    source = ""
    if failure.source:
        source = (
            '<pre style="margin:2px 0;padding:4px;background:#f5f5f5;font-size:12px;'
            f'max-height:8em;overflow:auto">{escape(failure.source)}</pre>'
        )
    traceback = ""
    if lines:
        traceback = (
            '<pre style="margin:2px 0;padding:4px;background:#fff5f5;font-size:12px;'
            f'max-height:14em;overflow:auto">{escape(chr(10).join(lines))}</pre>'
        )
    links = f"{notebook_link(base_url, run.run_id, run.attempt)} · {debug_link(run.run_id)}"
    return (
        f'<div style="font-size:13px">{head}<br>failed at cell {escape(where)}: '
        f"{_coloured(error, COLOURS[Level.CRITICAL])}</div>{source}{traceback}"
        f'<div style="font-size:13px">{links}</div>'
    )


def log_html(lines: Sequence[str], limit: int = 12) -> str:
    """The newest ``limit`` lines of the event log, newest last."""
    shown = lines[-limit:]
    body = escape("\n".join(shown)) if shown else "no event yet"
    return f'<pre style="margin:0;font-size:12px;max-height:14em;overflow:auto">{body}</pre>'
