"""``casare-nb submit``, ``rerun``, ``jobs``, ``robots``, ``cancel``, ``drain``, ``outputs``:
the orchestrator's jobs and robots, through its HTTP API."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from casare_nb.cli.app import (
    EXIT_FAILED,
    app,
    client_for,
    client_options,
    fail,
    job_fields,
    job_options,
    parameter_options,
    read_params,
    submit_client_for,
    wait_options,
    with_options,
    workflow_arg,
)
from casare_nb.cli.present import (
    job_event_printer,
    job_frame_printer,
    job_outcome,
    jobs_table,
    robot_columns,
    robot_row,
    table,
)

if TYPE_CHECKING:
    from casare_nb.client import Client
    from casare_nb.client.light import JobView, LightClient
    from casare_nb.core.models import Job


def finish_wait(job: Job | JobView, as_json: bool) -> None:
    if as_json:
        click.echo(job.model_dump_json(indent=1))
    elif job.status.value == "completed":
        click.echo(job_outcome(job))
    else:
        click.echo(job_outcome(job), err=True)
        click.echo(f"re-run from the failed cell:  casare-nb rerun {job.job_id} --wait", err=True)
    sys.exit(0 if job.status.value == "completed" else EXIT_FAILED)


@app.command()
@click.argument("workflow")
@with_options(parameter_options)
@with_options(job_options)
@with_options(wait_options)
@client_options
def submit(
    workflow: str,
    wait: bool,
    wait_timeout: float | None,
    as_json: bool,
    url: str | None,
    token: str | None,
    state_dir: str | None,
    **options: Any,
) -> None:
    """Queue a run of WORKFLOW on the orchestrator (path relative to its workflows dir)."""
    fields = job_fields(**options)
    client, local = submit_client_for(url, token, state_dir)
    with client:
        job = client.submit(
            workflow_arg(workflow, local),
            **fields,
            **_waiting(client, wait, wait_timeout, as_json),
        )
    name = Path(job.workflow_path).name
    _show(job, wait, as_json, f"job {job.job_id} queued ({name}, priority {job.priority.value})")


@app.command()
@click.argument("job_id")
@click.option(
    "--from-failed/--from-start",
    default=True,
    show_default=True,
    help="Resume from the failed cell (namespace restored), or run the whole notebook again.",
)
@with_options(parameter_options)
@with_options(wait_options)
@client_options
def rerun(
    job_id: str,
    from_failed: bool,
    params: Sequence[tuple[str, str]],
    params_file: str | None,
    wait: bool,
    wait_timeout: float | None,
    as_json: bool,
    url: str | None,
    token: str | None,
    state_dir: str | None,
) -> None:
    """A new attempt of the finished job JOB_ID, from its failed cell by default."""
    typed, raw = read_params(params, params_file)
    client, _ = submit_client_for(url, token, state_dir)
    with client:
        job = client.rerun(
            job_id,
            from_failed,
            typed or None,
            raw_parameters=raw or None,
            **_waiting(client, wait, wait_timeout, as_json),
        )
    how = "from the failed cell" if from_failed else "from the start"
    _show(job, wait, as_json, f"job {job.job_id} queued again, {how}")


def _waiting(
    client: Client | LightClient, wait: bool, timeout: float | None, as_json: bool
) -> dict[str, Any]:
    """The client's wait arguments: live job events printed unless the output is JSON (the
    light client's events are JSON objects, the Client's models)."""
    from casare_nb.client.light import LightClient

    if as_json:
        printer = None
    elif isinstance(client, LightClient):
        printer = job_frame_printer()
    else:
        printer = job_event_printer()
    return {"wait": wait, "timeout": timeout, "on_event": printer}


def _show(job: Job | JobView, wait: bool, as_json: bool, queued: str) -> None:
    """After a submit or rerun: the finished job (waited for), its JSON, or the line
    ``queued``."""
    if wait:
        finish_wait(job, as_json)
    elif as_json:
        click.echo(job.model_dump_json(indent=1))
    else:
        click.echo(queued)


@app.command()
@click.option(
    "--status",
    type=click.Choice(["queued", "running", "completed", "failed", "cancelled", "timeout", "dead"]),
    help="Only jobs in this status.",
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.option("-q", "--quiet", is_flag=True, help="Only the job ids, one a line (for scripts).")
@client_options
def jobs(
    status: str | None,
    limit: int,
    as_json: bool,
    quiet: bool,
    url: str | None,
    token: str | None,
    state_dir: str | None,
) -> None:
    """The orchestrator's jobs, newest first."""
    client, _ = client_for(url, token, state_dir)
    with client:
        found = client.jobs(status, limit)
    if quiet:
        for job in found:
            click.echo(job.job_id)
        return
    if as_json:
        click.echo(json.dumps([j.model_dump(mode="json") for j in found], indent=1))
        return
    click.echo(jobs_table(found))


@app.command()
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@client_options
def robots(as_json: bool, url: str | None, token: str | None, state_dir: str | None) -> None:
    """The robots that registered with the orchestrator, and their load."""
    client, _ = client_for(url, token, state_dir)
    with client:
        found = client.robots()
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in found], indent=1))
    elif not found:
        click.echo("no robots yet")
    else:
        click.echo(table([robot_row(r) for r in found], robot_columns(found)))


@app.command()
@click.argument("job_id")
@client_options
def cancel(job_id: str, url: str | None, token: str | None, state_dir: str | None) -> None:
    """Cancel JOB_ID: a queued job at once, a running one once its robot interrupted it."""
    client, _ = client_for(url, token, state_dir)
    with client:
        job = client.cancel(job_id)
    if job.status.value == "cancelled":
        click.echo(f"job {job.job_id} cancelled")
    else:
        click.echo(f"job {job.job_id}: cancel sent to robot {job.robot_id}; it stops shortly")


@app.command()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds the running jobs get to finish.",
)
@click.option(
    "--cancel",
    is_flag=True,
    help="Undo a drain (or a pause of submissions): take and dispatch jobs again.",
)
@client_options
def drain(
    timeout: float, cancel: bool, url: str | None, token: str | None, state_dir: str | None
) -> None:
    """Stop taking jobs, let running ones finish (up to --timeout), shut the robots down.

    --cancel undoes it: a drain under way stops waiting and shuts no robot down; after a
    finished one, start the robots again (casare-nb robot ...) and they get the queue.
    """
    client, _ = client_for(url, token, state_dir)
    if cancel:
        with client:
            info = client.cancel_drain()
        _taking(info.draining, info.submissions_paused)
        return
    with client:
        report = client.drain(timeout)
    if report.cancelled:
        click.echo("drain cancelled while waiting: the orchestrator takes jobs again")
    else:
        click.echo("draining: the orchestrator takes no new jobs")
    click.echo(f"  finished while waiting  {', '.join(report.finished_jobs) or '-'}")
    click.echo(f"  still unfinished        {', '.join(report.unfinished_jobs) or '-'}")
    click.echo(f"  robots shut down        {', '.join(report.robots_shut_down) or '-'}")


def _taking(draining: bool, paused: bool) -> None:
    if draining or paused:  # an orchestrator that did not undo it
        fail("the orchestrator still refuses submissions", EXIT_FAILED)
    click.echo("submissions resumed: the orchestrator takes and dispatches jobs")


@app.command("pause-submissions")
@client_options
def pause_submissions(url: str | None, token: str | None, state_dir: str | None) -> None:
    """Refuse new submissions, re-runs and trigger fires (503) until resume-submissions;
    queued and running jobs go on, robots stay."""
    client, _ = client_for(url, token, state_dir)
    with client:
        client.pause_submissions(True)
    click.echo("submissions paused: queued and running jobs go on")
    click.echo("  undo with  casare-nb resume-submissions")


@app.command("resume-submissions")
@client_options
def resume_submissions(url: str | None, token: str | None, state_dir: str | None) -> None:
    """Take submissions again after pause-submissions or a drain (same as drain --cancel)."""
    client, _ = client_for(url, token, state_dir)
    with client:
        info = client.cancel_drain()
    _taking(info.draining, info.submissions_paused)


@app.command()
@click.argument("job_id")
@client_options
def outputs(job_id: str, url: str | None, token: str | None, state_dir: str | None) -> None:
    """The values JOB_ID's notebook recorded with casare_nb.output(name, value), as JSON."""
    client, _ = client_for(url, token, state_dir)
    with client:
        found = client.outputs(job_id)
    click.echo(json.dumps(found, indent=1, default=str))
