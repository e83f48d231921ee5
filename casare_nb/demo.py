"""``casare-nb demo``: the main job on embedded defaults, for a first look.

Runs the example workflows in this process: a report that completes, an ingest that fails
at its validation cell and is resumed from there with a parameter fix, a notebook with an
expensive prefix that fails after it and is resumed without paying for the prefix again;
then prints the history.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import click

from casare_nb.core.models import RunStatus
from casare_nb.local import RunResult, aresume, arun_notebook


def _line(result: RunResult, took: float) -> str:
    where = f" at cell {result.failed_cell}" if result.failed_cell is not None else ""
    extra = f" ({result.error_name}: {result.error_message})" if result.error_name else ""
    replayed = f", replayed cells {result.replayed_cells}" if result.replayed_cells else ""
    return (
        f"  -> {result.status.value}{where} in {took:.2f} s, attempt {result.attempt}"
        f"{replayed}{extra}"
    )


async def _demo(workflows: Path, state_dir: str | None) -> list[tuple[str, bool]]:
    from casare_nb.cli import _Printer

    printer = _Printer(quiet=False)
    checks: list[tuple[str, bool]] = []

    async def run(name: str, params: dict[str, Any]) -> RunResult:
        click.echo(
            f"\n$ casare-nb run {workflows / name} "
            + " ".join(f"-p {k} {v}" for k, v in params.items())
        )
        t = time.perf_counter()
        result = await arun_notebook(
            workflows / name, params, state_dir=state_dir, progress=printer, source="demo"
        )
        click.echo(_line(result, time.perf_counter() - t))
        return result

    async def resume(result: RunResult, params: dict[str, Any]) -> tuple[RunResult, float]:
        click.echo(
            f"\n$ casare-nb resume {result.run_id} "
            + " ".join(f"-p {k} {v}" for k, v in params.items())
        )
        t = time.perf_counter()
        again = await aresume(result.run_id, params, state_dir=state_dir, progress=printer)
        took = time.perf_counter() - t
        click.echo(_line(again, took))
        return again, took

    report = await run("sales_report.ipynb", {"region": "EU"})
    checks.append(("sales_report completes", report.status is RunStatus.COMPLETED))

    ingest = await run("flaky_ingest.ipynb", {})
    checks.append(("flaky_ingest fails at its validation cell", ingest.status is RunStatus.FAILED))
    fixed, _ = await resume(ingest, {"max_bad_ratio": 0.1})
    checks.append(("flaky_ingest resumed from the failed cell completes", fixed.ok))

    t = time.perf_counter()
    slow = await run("long_prefix.ipynb", {"warmup_seconds": 3.0})
    first = time.perf_counter() - t
    checks.append(("long_prefix fails after its prefix", slow.status is RunStatus.FAILED))
    quick, took = await resume(slow, {"fail": False})
    checks.append(("long_prefix resumed without re-running the prefix", quick.ok))
    click.echo(f"  resume took {took:.2f} s against {first:.2f} s for the first attempt")
    return checks


def run_demo(workflows: Path, state_dir: str | None) -> int:
    """Run the demo; answer the exit code (0 when every step did what it should)."""
    from click.testing import CliRunner

    from casare_nb.cli import app

    checks = asyncio.run(_demo(workflows, state_dir))
    click.echo("\n$ casare-nb history")
    args = ["history"] + (["--state-dir", state_dir] if state_dir else [])
    click.echo(CliRunner().invoke(app, args).output, nl=False)
    click.echo()
    for what, ok in checks:
        click.echo(f"  [{'ok' if ok else 'FAILED'}] {what}")
    return 0 if all(ok for _, ok in checks) else 1
