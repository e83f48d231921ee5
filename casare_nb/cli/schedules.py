"""``casare-nb schedule ...`` and ``casare-nb trigger ...``: what submits jobs besides a
person, through the orchestrator's HTTP API."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from casare_nb.cli.app import (
    app,
    client_for,
    client_options,
    fail,
    job_fields,
    job_options,
    parameter_options,
    with_options,
    workflow_arg,
)
from casare_nb.cli.present import table

if TYPE_CHECKING:
    from casare_nb.client import Client


@app.group()
def schedule() -> None:
    """Run workflows on a timetable: cron, every N, or once at a date."""


@schedule.command("add")
@click.argument("workflow")
@click.option("--cron", help='Five cron fields, e.g. "0 6 * * 1-5".')
@click.option("--every", help="A duration: 90s, 15m, 1h30m, 2d.")
@click.option("--at", "at", help="Once, at a date and time: 2026-12-01T09:00.")
@click.option("--tz", "timezone", default="UTC", show_default=True, help="IANA time zone.")
@click.option(
    "--coalesce/--no-coalesce",
    default=True,
    show_default=True,
    help="Due times missed while down: one run (coalesce), or one run each.",
)
@click.option("--misfire-grace", help="Skip a run later than this (a duration); default: never.")
@click.option("--max-instances", type=click.IntRange(1, 1000), default=1, show_default=True)
@with_options(parameter_options)
@with_options(job_options)
@click.option("--json", "as_json", is_flag=True, help="Print the schedule as JSON.")
@client_options
def schedule_add(
    workflow: str,
    cron: str | None,
    every: str | None,
    at: str | None,
    timezone: str,
    coalesce: bool,
    misfire_grace: str | None,
    max_instances: int,
    as_json: bool,
    url: str | None,
    token: str | None,
    state_dir: str | None,
    **job: Any,
) -> None:
    """Run WORKFLOW on --cron, --every or --at (exactly one); prints its next due times."""
    if sum(x is not None for x in (cron, every, at)) != 1:
        fail("give exactly one of --cron, --every, --at")
    fields = job_fields(**job)
    client, local = client_for(url, token, state_dir)
    with client:
        info = client.add_schedule(
            workflow_arg(workflow, local),
            cron=cron,
            every=every,
            at=at,
            timezone=timezone,
            coalesce=coalesce,
            misfire_grace=misfire_grace,
            max_instances=max_instances,
            **fields,
        )
    if as_json:
        click.echo(info.model_dump_json(indent=1))
        return
    s = info.schedule
    click.echo(f"schedule {s.schedule_id} added ({Path(s.workflow_path).name}, {_when(s)})")
    for due in info.next_fire_times:
        click.echo(f"  next  {_local_time(due, s.timezone)}")


def _when(s: Any) -> str:
    if s.cron is not None:
        return f"cron {s.cron!r} {s.timezone}"
    if s.every_s is not None:
        return f"every {_duration(s.every_s)}"
    return f"at {s.at:%Y-%m-%d %H:%M} {s.timezone}"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _local_time(when: Any, timezone: str) -> str:
    from zoneinfo import ZoneInfo

    return f"{when.astimezone(ZoneInfo(timezone)):%Y-%m-%d %H:%M:%S %Z}"


_SCHEDULE_COLUMNS = ["schedule_id", "workflow", "when", "state", "next fire times"]


def _show(
    connection: tuple[str | None, str | None, str | None],
    fetch: Callable[[Client], Sequence[Any]],
    as_json: bool,
    empty: str,
    columns: list[str],
    row: Callable[[Any], dict[str, Any]],
) -> None:
    """What ``fetch`` answers (through a client of ``connection``: url, token, state dir) as
    JSON, or as a table of ``row(item)``, or ``empty`` if there is none."""
    client, _ = client_for(*connection)
    with client:
        found = fetch(client)
    if as_json:
        click.echo(json.dumps([item.model_dump(mode="json") for item in found], indent=1))
    elif not found:
        click.echo(empty)
    else:
        click.echo(table([row(item) for item in found], columns))


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@client_options
def schedule_list(as_json: bool, url: str | None, token: str | None, state_dir: str | None) -> None:
    """Every schedule with its next 3 fire times."""
    _show(
        (url, token, state_dir),
        lambda c: c.schedules(),
        as_json,
        "no schedules",
        _SCHEDULE_COLUMNS,
        lambda i: (
            {
                "schedule_id": i.schedule.schedule_id,
                "workflow": Path(i.schedule.workflow_path).name,
                "when": _when(i.schedule),
                "state": "paused" if i.schedule.paused else "active",
                "next fire times": ", ".join(
                    _local_time(d, i.schedule.timezone) for d in i.next_fire_times
                )
                or "-",
            }
        ),
    )


@schedule.command("upcoming")
@click.option("-n", "--limit", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@client_options
def schedule_upcoming(
    limit: int, as_json: bool, url: str | None, token: str | None, state_dir: str | None
) -> None:
    """The next fire times across every active schedule, soonest first."""
    _show(
        (url, token, state_dir),
        lambda c: c.upcoming(limit),
        as_json,
        "nothing scheduled",
        ["due", "schedule_id", "workflow"],
        lambda u: (
            {
                "due": _local_time(u.due_at, u.timezone),
                "schedule_id": u.schedule_id,
                "workflow": Path(u.workflow_path).name,
            }
        ),
    )


def _schedule_change(name: str, verb: str, doc: str) -> None:
    @schedule.command(name, help=doc)
    @click.argument("schedule_id")
    @client_options
    def change(schedule_id: str, url: str | None, token: str | None, state_dir: str | None) -> None:
        client, _ = client_for(url, token, state_dir)
        with client:
            act = {
                "pause": client.pause_schedule,
                "resume": client.resume_schedule,
                "remove": client.remove_schedule,
            }[name]
            info = act(schedule_id)
        click.echo(f"schedule {info.schedule.schedule_id} {verb}")


_schedule_change("pause", "paused", "Stop firing SCHEDULE_ID until resumed.")
_schedule_change("resume", "resumed", "Fire SCHEDULE_ID again from its next due time.")
_schedule_change("remove", "removed", "Delete SCHEDULE_ID (its fires stay in the history).")


@app.group()
def trigger() -> None:
    """Start workflows on events: webhooks, new files, other workflows finishing."""


@trigger.command("add")
@click.argument("kind", type=click.Choice(["webhook", "file-watch", "on-success", "on-failure"]))
@click.argument("workflow")
@click.option("--secret-env", help="webhook: the orchestrator's env var holding the secret.")
@click.option("--path", "watch_path", help="file-watch: the directory to watch.")
@click.option("--pattern", default="*", show_default=True, help="file-watch: file name pattern.")
@click.option(
    "--param",
    "file_parameter",
    default="file_path",
    show_default=True,
    help="file-watch: the parameter given the new file's path.",
)
@click.option("--run", "run", help="on-success/on-failure: the workflow to run next.")
@with_options(parameter_options)
@with_options(job_options)
@click.option("--json", "as_json", is_flag=True, help="Print the trigger as JSON.")
@client_options
def trigger_add(
    kind: str,
    workflow: str,
    secret_env: str | None,
    watch_path: str | None,
    pattern: str,
    file_parameter: str,
    run: str | None,
    as_json: bool,
    url: str | None,
    token: str | None,
    state_dir: str | None,
    **job: Any,
) -> None:
    """Add a KIND trigger of WORKFLOW (a webhook prints its URL)."""
    fields = job_fields(**job)
    client, local = client_for(url, token, state_dir)
    path = watch_path
    if path is not None and local:
        path = str(Path(path).absolute())
    with client:
        info = client.add_trigger(
            kind.replace("-", "_"),
            workflow_arg(workflow, local),
            secret_env=secret_env,
            path=path,
            pattern=pattern,
            file_parameter=file_parameter,
            run=None if run is None else workflow_arg(run, local),
            **fields,
        )
    if as_json:
        click.echo(info.model_dump_json(indent=1))
        return
    t = info.trigger
    click.echo(f"trigger {t.trigger_id} added: {_trigger_text(t)}")
    if info.url:
        click.echo(f"  POST {info.url}")
        click.echo(f"  signed with the secret in ${t.secret_env} (X-Casare-Signature-256)")


def _trigger_text(t: Any) -> str:
    name = Path(t.workflow_path).name
    if t.kind.value == "webhook":
        return f"webhook runs {name}"
    if t.kind.value == "file_watch":
        return f"a new {t.pattern} in {t.watch_path} runs {name}"
    outcome = "completes" if t.kind.value == "on_success" else "fails"
    return f"when {Path(t.after_workflow or '').name} {outcome}, run {name}"


@trigger.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@client_options
def trigger_list(as_json: bool, url: str | None, token: str | None, state_dir: str | None) -> None:
    """Every trigger."""
    _show(
        (url, token, state_dir),
        lambda c: c.triggers(),
        as_json,
        "no triggers",
        ["trigger_id", "kind", "state", "what"],
        lambda i: (
            {
                "trigger_id": i.trigger.trigger_id,
                "kind": i.trigger.kind.value,
                "state": "enabled" if i.trigger.enabled else "disabled",
                "what": _trigger_text(i.trigger) + (f"  ({i.url})" if i.url else ""),
            }
        ),
    )


def _trigger_change(name: str, verb: str, doc: str) -> None:
    @trigger.command(name, help=doc)
    @click.argument("trigger_id")
    @client_options
    def change(trigger_id: str, url: str | None, token: str | None, state_dir: str | None) -> None:
        client, _ = client_for(url, token, state_dir)
        with client:
            if name == "remove":
                info = client.remove_trigger(trigger_id)
            else:
                info = client.set_trigger_enabled(trigger_id, name == "enable")
        click.echo(f"trigger {info.trigger.trigger_id} {verb}")


_trigger_change("enable", "enabled", "Fire TRIGGER_ID on its events again.")
_trigger_change("disable", "disabled", "Ignore TRIGGER_ID's events until enabled.")
_trigger_change("remove", "removed", "Delete TRIGGER_ID.")


@app.command()
@click.argument("action", type=click.Choice(["on", "off", "status"]), default="status")
@click.option("--json", "as_json", is_flag=True, help="The state as JSON.")
@client_options
def maintenance(
    action: str, as_json: bool, url: str | None, token: str | None, state_dir: str | None
) -> None:
    """Hold every schedule and trigger at once (on), let them fire again (off), or show it.

    While on: due times pass unfired (each recorded 'skipped: maintenance'), webhooks answer
    503, file watch and chaining submit nothing; jobs already queued or running go on, and
    people can still submit. Off: schedules fire from their next due time, files that arrived
    meanwhile are submitted. A schedule paused or a trigger disabled before stays so. Kept
    across orchestrator restarts.
    """
    client, _ = client_for(url, token, state_dir)
    with client:
        if action == "status":
            state = client.maintenance()
        else:
            state = client.set_maintenance(action == "on")
    if as_json:
        click.echo(state.model_dump_json(indent=1))
    elif state.on:
        since = state.since.isoformat(timespec="seconds") if state.since else "?"
        click.echo(
            f"maintenance on since {since}: {state.schedules_held} schedules and "
            f"{state.triggers_held} triggers held"
        )
        click.echo("  end it with  casare-nb maintenance off")
    else:
        click.echo("maintenance off: schedules and triggers fire")
