"""``casare-nb demo``: the platform on embedded defaults, for a first look.

Starts an orchestrator (WebSocket + HTTP API on free ports, state in ``./.casare`` or
``$CASARE_HOME``) and one robot with warm kernels, in this process, then drives them the
way a user does, through :class:`~casare_nb.Client`:

1. ``sales_report`` completes;
2. ``flaky_ingest`` fails at its validation cell and is re-run from that cell with a looser
   ``max_bad_ratio``;
3. ``long_prefix`` fails after its slow prefix and is re-run from the failed cell, without
   paying for the prefix again;

then prints the jobs table. Exit code 0 when every step did what it should, 1 otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from casare_nb.client import Client
from casare_nb.core.models import Job, RunStatus
from casare_nb.protocol import Event, EventKind

ROBOT_ID = "demo-robot"


class _Watcher:
    """Prints a job's events as they come and remembers which cells ran."""

    def __init__(self, printer: Callable[[Any], None]) -> None:
        self.printer = printer
        self.cells: list[int] = []

    def __call__(self, event: Event) -> None:
        self.printer(event)
        if event.kind is EventKind.CELL_FINISHED:
            self.cells.append(int(event.data["cell_index"]))


def _params(values: dict[str, Any]) -> str:
    return "".join(f" -p {name} {value}" for name, value in values.items())


def _outcome(job: Job, took: float) -> str:
    why = f": {job.error_name}: {job.error_message}" if job.error_name else ""
    return f"  -> {job.status.value} in {took:.2f} s (attempt {job.attempt}){why}"


def _scenario(client: Client, checks: list[tuple[str, bool]]) -> None:
    from casare_nb.cli import job_event_printer, jobs_table

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

    click.echo("\n$ casare-nb jobs")
    click.echo(jobs_table(client.list(limit=10)))


def run_demo(workflows: Path, state_dir: str | None) -> int:
    """Run the demo; answer the exit code (0 when every step did what it should)."""
    from casare_nb.orchestrator.service import OrchestratorService, ServiceThread
    from casare_nb.robot.main import default_work_dir, local_robot

    service = OrchestratorService(
        state_dir,
        port=0,
        http_port=0,
        workflows_dir=workflows,
        heartbeat_interval_s=0.5,
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
