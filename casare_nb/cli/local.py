"""``casare-nb run``, ``resume``, ``history`` and ``params``: workflows run in this process,
recorded in the state directory's history (no orchestrator)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

import click

from casare_nb.cli.app import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    app,
    fail,
    parameter_options,
    read_params,
    refuse_if_served,
    state_option,
    with_options,
)
from casare_nb.cli.present import RUN_COLUMNS, cell_row, run_row, table

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def run_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of ``run`` and ``resume``: parameters, limits, working directory."""
    f = with_options(parameter_options)(f)
    f = click.option(
        "--lenient", is_flag=True, help="Warn about unknown or mistyped parameters, do not stop."
    )(f)
    f = click.option("--cell-timeout", type=float, help="Seconds one cell may run.")(f)
    f = click.option(
        "--timeout", "run_timeout", type=float, help="Seconds the whole run may take."
    )(f)
    f = click.option(
        "--max-output",
        type=int,
        default=1_000_000,
        show_default=True,
        help="Bytes of output kept per cell; the rest is dropped with a notice.",
    )(f)
    f = click.option(
        "--cwd",
        type=click.Path(file_okay=False, exists=True),
        help="Working directory of the kernel.",
    )(f)
    f = click.option(
        "--checkpoints/--no-checkpoints",
        default=True,
        show_default=True,
        help="Checkpoint the namespace after every cell (without: a resume replays from the "
        "start).",
    )(f)
    f = click.option("-q", "--quiet", is_flag=True, help="No per-cell progress lines.")(f)
    return f


def _run_async(make: Callable[[asyncio.Event], Coroutine[Any, Any, Any]]) -> Any:
    """Run the coroutine; first Ctrl-C (or SIGTERM) cancels the run cleanly, second exits."""

    async def runner() -> Any:
        cancel = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if cancel.is_set():
                sys.exit(EXIT_CANCELLED)
            click.echo("\ncancelling: interrupting the kernel (Ctrl-C again to quit now)", err=True)
            cancel.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        return await make(cancel)

    return asyncio.run(runner())


def _report(result: Any, started: float) -> None:
    from casare_nb.core.models import RunStatus

    took = time.perf_counter() - started
    if result.replayed_cells:
        click.echo(f"  replayed cells {result.replayed_cells} to rebuild state")
    if result.skipped_names:
        names = ", ".join(sorted(result.skipped_names))
        click.echo(f"  not restored from the checkpoint (rebuilt by replay): {names}")
    for w in result.warnings:
        click.echo(f"  warning: {w}", err=True)
    for e in result.checkpoint_errors:
        click.echo(f"  checkpoint warning: {e}", err=True)
    if result.status is RunStatus.COMPLETED:
        click.echo(f"completed in {took:.2f} s; output: {result.output_path}")
        return
    where = f" at cell {result.failed_cell}" if result.failed_cell is not None else ""
    click.echo(
        f"{result.status.value}{where}: {result.error_name}: {result.error_message}", err=True
    )
    if result.traceback:
        lines = _ANSI.sub("", result.traceback).strip().splitlines()
        click.echo("\n".join("    " + line for line in lines[-12:]), err=True)
    click.echo(f"output so far: {result.output_path}", err=True)
    if result.status is not RunStatus.CANCELLED or result.failed_cell is not None:
        click.echo(f"fix the notebook, then resume with:  {result.resume_command}", err=True)
    sys.exit(EXIT_CANCELLED if result.status is RunStatus.CANCELLED else EXIT_FAILED)


def _options(
    cell_timeout: float | None, run_timeout: float | None, max_output: int, checkpoints: bool
) -> Any:
    from casare_nb.notebook.executor import Options

    for name, value in (("--cell-timeout", cell_timeout), ("--timeout", run_timeout)):
        if value is not None and value <= 0:
            fail(f"{name} must be a positive number of seconds, got {value:g}")
    if max_output <= 0:
        fail(f"--max-output must be a positive number of bytes, got {max_output}")
    return Options(
        cell_timeout=cell_timeout,
        run_timeout=run_timeout,
        max_output_bytes=max_output,
        checkpoint=checkpoints,
    )


def _precheck(notebook: str, typed: dict[str, Any], raw: dict[str, str], *, strict: bool) -> None:
    """Refuse a bad notebook or bad parameters before the engine (nbclient, duckdb) loads."""
    from casare_nb.core.params import read_schema
    from casare_nb.notebook.workflow import load_workflow

    nb, _ = load_workflow(notebook)
    read_schema(nb).validate_values(typed, strict=strict, text_values=raw)


def _engine_kwargs(opts: dict[str, Any]) -> dict[str, Any]:
    """The options run and resume share, checked and turned into engine keyword arguments."""
    typed, raw = read_params(opts["params"], opts["params_file"])
    return {
        "parameters": typed,
        "raw_parameters": raw,
        "options": _options(
            opts["cell_timeout"], opts["run_timeout"], opts["max_output"], opts["checkpoints"]
        ),
        "state_dir": opts["state_dir"],
        "strict": not opts["lenient"],
        "cwd": opts["cwd"],
    }


def _printer(quiet: bool) -> Any:
    """The progress lines (imported here: it loads the engine, once the arguments passed)."""
    from casare_nb.cli.progress import Printer

    return Printer(quiet)


@app.command()
@click.argument("notebook", type=click.Path())
@click.argument("output", required=False, type=click.Path(dir_okay=False))
@click.option("--kernel", "kernel_name", help="Kernel to use instead of the notebook's.")
@run_options
@state_option
def run(notebook: str, output: str | None, kernel_name: str | None, **opts: Any) -> None:
    """Run NOTEBOOK with parameters, a checkpoint after every cell; write OUTPUT."""
    refuse_if_served(
        opts["state_dir"],
        f"submit it there (casare-nb submit {notebook} --wait), or run with another --state-dir",
    )
    kwargs = _engine_kwargs(opts)
    _precheck(notebook, kwargs["parameters"], kwargs["raw_parameters"], strict=kwargs["strict"])
    kwargs["hooks"] = _printer(opts["quiet"])
    from casare_nb.local import arun_notebook

    started = time.perf_counter()
    result = _run_async(
        lambda cancel: arun_notebook(
            notebook,
            output_path=output,
            kernel_name=kernel_name,
            cancel=cancel,
            source="cli",
            **kwargs,
        )
    )
    _report(result, started)


@app.command()
@click.argument("run_id")
@click.option("--from-cell", type=int, help="Re-run from this cell index instead.")
@click.option("--output", type=click.Path(dir_okay=False), help="Also write the output here.")
@run_options
@state_option
def resume(run_id: str, from_cell: int | None, output: str | None, **opts: Any) -> None:
    """Re-run RUN_ID from its failed cell, with the namespace restored from the checkpoint."""
    refuse_if_served(
        opts["state_dir"], f"re-run its jobs there (casare-nb rerun {run_id}), or stop it first"
    )
    kwargs = _engine_kwargs(opts)
    kwargs["hooks"] = _printer(opts["quiet"])
    from casare_nb.local import aresume

    started = time.perf_counter()
    result = _run_async(
        lambda cancel: aresume(
            run_id, from_cell=from_cell, output_path=output, cancel=cancel, **kwargs
        )
    )
    _report(result, started)


@app.command()
@click.argument("run_id", required=False)
@click.option("--failed", is_flag=True, help="Only runs that did not complete.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of tables.")
@state_option
def history(
    run_id: str | None, failed: bool, limit: int, as_json: bool, state_dir: str | None
) -> None:
    """Runs and their cells, from the history database."""
    refuse_if_served(state_dir, "see its jobs with casare-nb jobs (or GET /api/history/runs)")
    from casare_nb.core.errors import RunNotFound
    from casare_nb.core.models import RunStatus
    from casare_nb.notebook.state import StateDir
    from casare_nb.store.history import HistoryStore

    state = StateDir(state_dir)
    if not state.history_path.exists():
        if run_id:
            raise RunNotFound(f"unknown run id {run_id!r}: no history in {state.root}")
        click.echo(f"no runs yet (no history in {state.root})")
        return
    store = HistoryStore(state.history_path)
    if run_id:
        attempts = store.attempts(run_id)
        if not attempts:
            raise RunNotFound(f"unknown run id {run_id!r} (see `casare-nb history`)")
        cells = store.list_cells(run_id)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "attempts": [a.model_dump(mode="json") for a in attempts],
                        "cells": [c.model_dump(mode="json") for c in cells],
                    },
                    indent=1,
                )
            )
            return
        click.echo(table([run_row(a) for a in attempts], RUN_COLUMNS[1:]))
        click.echo()
        click.echo(
            table(
                [cell_row(c) for c in cells],
                ["attempt", "cell", "status", "seconds", "replayed", "error"],
            )
        )
        return
    wanted = None
    if failed:
        wanted = [s for s in RunStatus if s.finished and s is not RunStatus.COMPLETED]
    runs = store.list_runs(status=wanted, limit=limit)
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in runs], indent=1))
        return
    if not runs:
        click.echo("no runs" + (" that failed" if failed else ""))
        return
    click.echo(table([run_row(r) for r in runs], RUN_COLUMNS))


@app.command()
@click.argument("notebook", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="The JSON schema instead of a table.")
def params(notebook: str, as_json: bool) -> None:
    """The parameters NOTEBOOK declares in its 'parameters' cell."""
    from casare_nb.core.params import read_schema
    from casare_nb.notebook.workflow import load_workflow

    nb, _ = load_workflow(notebook)
    schema = read_schema(nb)
    if as_json:
        click.echo(json.dumps(schema.json_schema(), indent=1, default=str))
        return
    if not schema.has_cell:
        click.echo(f"{notebook} has no 'parameters' cell: it takes no parameters")
        return
    rows = [
        {
            "name": p.name,
            "type": p.type_repr + (" (secret)" if p.secret else ""),
            "default": "(required)"
            if p.required
            else (
                repr(p.default)
                if p.default is not None or not p.default_source
                else p.default_source
            ),
        }
        for p in schema.params.values()
    ]
    click.echo(table(rows, ["name", "type", "default"]))
