"""``casare-nb demo``: the platform on embedded defaults, for a first look.

Starts an orchestrator (WebSocket + HTTP API on free ports, state in ``./.casare`` or
``$CASARE_HOME``) and one robot with warm kernels, in this process, then drives them the
way a user does, through :class:`~casare_nb.Client`:

1. ``sales_report`` completes;
2. ``flaky_ingest`` fails at its validation cell and is re-run from that cell with a looser
   ``max_bad_ratio``;
3. ``long_prefix`` fails after its slow prefix and is re-run from the failed cell, without
   paying for the prefix again;

4. a schedule due in two seconds fires ``sales_report``; a signed webhook delivery runs it
   with the body's parameters, and the same signature on another body is refused;

then prints the jobs table. Exit code 0 when every step did what it should, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import httpx

from casare_nb.cli.present import job_event_printer, jobs_table
from casare_nb.client import Client
from casare_nb.core.models import Job, RunStatus
from casare_nb.protocol import CellEvent, Event

ROBOT_ID = "demo-robot"
SECRET_ENV = "CASARE_DEMO_SECRET"
DEMO_SECRET = secrets.token_hex(16).encode()


class _Watcher:
    """Prints a job's events as they come and remembers which cells ran."""

    def __init__(self, printer: Callable[[Any], None]) -> None:
        self.printer = printer
        self.cells: list[int] = []

    def __call__(self, event: Event) -> None:
        self.printer(event)
        if isinstance(event.data, CellEvent):
            self.cells.append(event.data.cell_index)


def _params(values: dict[str, Any]) -> str:
    return "".join(f" -p {name} {value}" for name, value in values.items())


def _outcome(job: Job, took: float) -> str:
    why = f": {job.error_name}: {job.error_message}" if job.error_name else ""
    return f"  -> {job.status.value} in {took:.2f} s (attempt {job.attempt}){why}"


def _scenario(client: Client, checks: list[tuple[str, bool]]) -> None:
    printer = job_event_printer()

    def submit(workflow: str, params: dict[str, Any]) -> tuple[Job, float, list[int]]:
        click.echo(f"\n$ casare-nb submit {workflow}{_params(params)} --wait")
        watcher = _Watcher(printer)
        started = time.perf_counter()
        job = client.submit(workflow, params, wait=True, timeout=120, on_event=watcher)
        took = time.perf_counter() - started
        click.echo(_outcome(job, took))
        return job, took, watcher.cells

    def rerun(job: Job, params: dict[str, Any]) -> tuple[Job, float, list[int]]:
        click.echo(
            f"\n$ casare-nb rerun {job.job_id}{_params(params)} --wait   # from the failed cell"
        )
        watcher = _Watcher(printer)
        started = time.perf_counter()
        again = client.rerun(
            job.job_id,
            from_failed=True,
            parameters=params,
            wait=True,
            timeout=120,
            on_event=watcher,
        )
        took = time.perf_counter() - started
        click.echo(_outcome(again, took))
        return again, took, watcher.cells

    report, _, _ = submit("sales_report.ipynb", {"region": "EU"})
    checks.append(("sales_report completes", report.status is RunStatus.COMPLETED))

    ingest, _, first_cells = submit("flaky_ingest.ipynb", {})
    checks.append(
        (
            "flaky_ingest fails at its validation cell",
            ingest.status is RunStatus.FAILED and ingest.error_name == "AssertionError",
        )
    )
    fixed, _, rerun_cells = rerun(ingest, {"max_bad_ratio": 0.1})
    checks.append(
        (
            "flaky_ingest re-run from the failed cell completes",
            fixed.status is RunStatus.COMPLETED and fixed.attempt == ingest.attempt + 1,
        )
    )

    slow, first_took, slow_cells = submit("long_prefix.ipynb", {"warmup_seconds": 3.0})
    checks.append(("long_prefix fails after its prefix", slow.status is RunStatus.FAILED))
    prefix_cell = slow_cells[-2] if len(slow_cells) >= 2 else -1  # the cell before the failure
    quick, took, quick_cells = rerun(slow, {"fail": False})
    click.echo(
        f"  the re-run took {took:.2f} s against {first_took:.2f} s for the first attempt; "
        f"cells run: {quick_cells}"
    )
    checks.append(
        (
            "long_prefix re-run from the failed cell completes without its slow prefix",
            quick.status is RunStatus.COMPLETED and prefix_cell not in quick_cells,
        )
    )
    del first_cells, rerun_cells
    _triggers(client, checks)

    click.echo("\n$ casare-nb jobs")
    click.echo(jobs_table(client.jobs(limit=10)))


def _triggers(client: Client, checks: list[tuple[str, bool]]) -> None:
    """A schedule due in two seconds and a signed webhook delivery each run sales_report;
    both are removed afterwards (the state directory outlives the demo)."""
    from casare_nb.core.signing import signed_headers

    at = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
    click.echo(
        f"\n$ casare-nb schedule add sales_report.ipynb --at {at:%Y-%m-%dT%H:%M:%S} --tz UTC"
        " -p region US"
    )
    info = client.add_schedule(
        "sales_report.ipynb", at=at.replace(tzinfo=None), raw_parameters={"region": "US"}
    )
    sid = info.schedule.schedule_id
    click.echo(f"  schedule {sid} added; due {info.next_fire_times[0]:%H:%M:%S} UTC")
    deadline = time.monotonic() + 60
    while not client.fires(sid) and time.monotonic() < deadline:
        time.sleep(0.05)
    fires = client.fires(sid)
    scheduled = client.wait(fires[0].job_id, timeout=120) if fires and fires[0].job_id else None
    if scheduled is not None:
        click.echo(f"  -> fired: job {scheduled.job_id} {scheduled.status.value}")
    checks.append(
        (
            "a schedule fires once at its due time and its job completes",
            scheduled is not None
            and scheduled.status is RunStatus.COMPLETED
            and scheduled.trigger is not None
            and scheduled.trigger.due_at == at,
        )
    )
    client.remove_schedule(sid)

    click.echo(f"\n$ casare-nb trigger add webhook sales_report.ipynb --secret-env {SECRET_ENV}")
    hook = client.add_trigger("webhook", "sales_report.ipynb", secret_env=SECRET_ENV)
    assert hook.url is not None
    click.echo(f"  POST {hook.url}")
    body = json.dumps({"region": "APAC"}).encode()
    headers = signed_headers(DEMO_SECRET, body, timestamp=str(int(time.time())))
    click.echo("$ curl -d '{\"region\": \"APAC\"}' -H 'X-Casare-Signature-256: sha256=…' …")
    answer = httpx.post(hook.url, content=body, headers=headers, timeout=30)
    forged = httpx.post(hook.url, content=b'{"region": "EU"}', headers=headers, timeout=30)
    hooked = client.wait(answer.json()["job_id"], timeout=120) if answer.is_success else None
    if hooked is not None:
        click.echo(f"  -> {answer.status_code}: job {hooked.job_id} {hooked.status.value}")
    click.echo(f"  the same signature on another body -> {forged.status_code}")
    checks.append(
        (
            "a signed webhook runs the workflow with the body's parameters; a forged one is 401",
            hooked is not None
            and hooked.status is RunStatus.COMPLETED
            and hooked.parameters == {"region": "APAC"}
            and forged.status_code == 401,
        )
    )
    client.remove_trigger(hook.trigger.trigger_id)


def run_demo(workflows: Path, state_dir: str | None) -> int:
    """Run the demo; answer the exit code (0 when every step did what it should)."""
    from casare_nb.orchestrator.service import OrchestratorService
    from casare_nb.robot.main import default_work_dir, local_robot
    from casare_nb.service_thread import ServiceThread

    service = OrchestratorService(
        state_dir,
        port=0,
        http_port=0,
        workflows_dir=workflows,
        heartbeat_interval_s=0.5,
        environ={**os.environ, SECRET_ENV: DEMO_SECRET.decode()},
    )
    work_dir = (
        Path(state_dir).absolute() / "robots" / ROBOT_ID
        if state_dir
        else default_work_dir(ROBOT_ID)
    )
    robot = local_robot(ROBOT_ID, pool_size=2, work_dir=work_dir, heartbeat_interval_s=0.5)
    click.echo("casare-nb demo: an orchestrator and one robot in this process")
    started = time.perf_counter()
    checks: list[tuple[str, bool]] = []
    with ServiceThread(service, robots=[robot]) as cluster:
        click.echo(f"  orchestrator  {service.ws_url} (robots)  {service.http_url} (HTTP API)")
        click.echo(f"  robot         {ROBOT_ID}, 2 warm kernels, work dir {work_dir}")
        click.echo(f"  state         {service.state_dir}")
        with cluster.client() as client:
            _scenario(client, checks)
    click.echo()
    for what, ok in checks:
        click.echo(f"  [{'ok' if ok else 'FAILED'}] {what}")
    click.echo(f"demo finished in {time.perf_counter() - started:.1f} s")
    return 0 if checks and all(ok for _, ok in checks) else 1
