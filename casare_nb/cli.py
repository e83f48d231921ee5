"""``casare-nb``: run, resume and inspect workflow notebooks.

Exit codes: 0 the run completed; 1 the run failed or timed out; 2 bad input (one line on
stderr, nothing started); 130 cancelled with Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import click

from casare_nb.core.errors import CasareError

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 1, 2, 130
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    click.echo(f"casare-nb: error: {message}", err=True)
    sys.exit(code)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point: every user error becomes one line on stderr and exit code 2."""
    try:
        app.main(args=args, prog_name="casare-nb", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(EXIT_CANCELLED)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
        sys.exit(0)
    except click.ClickException as exc:  # usage errors: bad option, missing argument ...
        _fail(exc.format_message().replace("\n", " "), exc.exit_code)
    except CasareError as exc:
        _fail(str(exc), exc.exit_code)
    except ValueError as exc:  # ParameterError and friends
        _fail(str(exc))


@click.group()
@click.version_option(package_name="casare_nb")
def app() -> None:
    """casare_nb: parameterised notebooks, run cell by cell, resumed from the failed cell."""


_state_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    envvar="CASARE_HOME",
    help="State directory (history, checkpoints). Default: $CASARE_HOME or ./.casare",
)


def _param_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "-p",
        "--parameter",
        "params",
        nargs=2,
        multiple=True,
        metavar="NAME VALUE",
        help="A parameter value (coerced to the type the notebook declares).",
    )(f)
    f = click.option(
        "-f",
        "--parameters-file",
        "params_file",
        type=click.Path(dir_okay=False),
        help="YAML or JSON file of parameters.",
    )(f)
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
    f = click.option("-q", "--quiet", is_flag=True, help="No per-cell progress lines.")(f)
    return f


def _read_params(
    params: Sequence[tuple[str, str]], params_file: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    from casare_nb.core.params import parse_cli_pairs

    typed: dict[str, Any] = {}
    if params_file:
        import yaml

        try:
            loaded = yaml.safe_load(Path(params_file).read_text("utf-8"))
        except OSError as exc:
            _fail(f"cannot read parameters file {params_file}: {exc.strerror}")
        except UnicodeDecodeError:
            _fail(f"parameters file {params_file} is not UTF-8 text")
        except yaml.YAMLError as exc:
            _fail(f"parameters file {params_file} is not YAML/JSON: {str(exc).splitlines()[0]}")
        if loaded is not None and not isinstance(loaded, dict):
            _fail(f"parameters file {params_file} must hold a mapping of name: value")
        typed = dict(loaded or {})
    return typed, parse_cli_pairs(list(params))


class _Printer:
    """One line per cell, with a bar for the run."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def cell_started(self, step: Any, position: int, total: int) -> None:
        pass

    def cell_finished(self, record: Any, position: int, total: int) -> None:
        if self.quiet:
            return
        width = 20
        filled = round(width * position / max(total, 1))
        bar = "#" * filled + "-" * (width - filled)
        tag = " (replay)" if record.replayed else ""
        note = " [output truncated]" if record.output_truncated else ""
        click.echo(
            f"  [{bar}] {position:>3}/{total:<3} cell {record.cell_index:>3}  "
            f"{record.status.value:<11} {record.duration_s:8.3f} s{tag}{note}"
        )


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


def _options(cell_timeout: float | None, run_timeout: float | None, max_output: int) -> Any:
    from casare_nb.notebook.executor import Options

    for name, value in (("--cell-timeout", cell_timeout), ("--timeout", run_timeout)):
        if value is not None and value <= 0:
            _fail(f"{name} must be a positive number of seconds, got {value:g}")
    if max_output <= 0:
        _fail(f"--max-output must be a positive number of bytes, got {max_output}")
    return Options(cell_timeout=cell_timeout, run_timeout=run_timeout, max_output_bytes=max_output)


def _precheck(notebook: str, typed: dict[str, Any], raw: dict[str, str], *, strict: bool) -> None:
    """Refuse a bad notebook or bad parameters before the engine (nbclient, duckdb) loads."""
    from casare_nb.core.params import read_schema
    from casare_nb.notebook.workflow import load_workflow

    nb, _ = load_workflow(notebook)
    read_schema(nb).validate_values(typed, strict=strict, text_values=raw)


def _announce(quiet: bool) -> Callable[[Any], None]:
    def on_start(record: Any) -> None:
        what = "resuming" if record.attempt > 1 else "run"
        click.echo(
            f"{what} {record.run_id} (attempt {record.attempt}): {record.workflow_path}, "
            f"{record.cells_total} cells to run, kernel {record.kernel_name}"
        )

    return on_start


def _engine_kwargs(opts: dict[str, Any]) -> dict[str, Any]:
    """The options run and resume share, checked and turned into engine keyword arguments."""
    typed, raw = _read_params(opts["params"], opts["params_file"])
    return {
        "parameters": typed,
        "raw_parameters": raw,
        "options": _options(opts["cell_timeout"], opts["run_timeout"], opts["max_output"]),
        "state_dir": opts["state_dir"],
        "strict": not opts["lenient"],
        "cwd": opts["cwd"],
        "progress": _Printer(opts["quiet"]),
        "on_start": _announce(opts["quiet"]),
    }


@app.command()
@click.argument("notebook", type=click.Path())
@click.argument("output", required=False, type=click.Path(dir_okay=False))
@click.option("--kernel", "kernel_name", help="Kernel to use instead of the notebook's.")
@_param_options
@_state_option
def run(notebook: str, output: str | None, kernel_name: str | None, **opts: Any) -> None:
    """Run NOTEBOOK with parameters, a checkpoint after every cell; write OUTPUT."""
    kwargs = _engine_kwargs(opts)
    _precheck(notebook, kwargs["parameters"], kwargs["raw_parameters"], strict=kwargs["strict"])
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
@_param_options
@_state_option
def resume(run_id: str, from_cell: int | None, output: str | None, **opts: Any) -> None:
    """Re-run RUN_ID from its failed cell, with the namespace restored from the checkpoint."""
    kwargs = _engine_kwargs(opts)
    from casare_nb.local import aresume

    started = time.perf_counter()
    result = _run_async(
        lambda cancel: aresume(
            run_id, from_cell=from_cell, output_path=output, cancel=cancel, **kwargs
        )
    )
    _report(result, started)


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[str(r.get(c, "") if r.get(c) is not None else "") for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join([line.rstrip(), *[b.rstrip() for b in body]])


@app.command()
@click.argument("run_id", required=False)
@click.option("--failed", is_flag=True, help="Only runs that did not complete.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of tables.")
@_state_option
def history(
    run_id: str | None, failed: bool, limit: int, as_json: bool, state_dir: str | None
) -> None:
    """Runs and their cells, from the history database."""
    from casare_nb.core.errors import RunNotFound
    from casare_nb.core.models import RunStatus
    from casare_nb.notebook.checkpoint import StateDir
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
        click.echo(_table([_run_row(a) for a in attempts], _RUN_COLUMNS[1:]))
        click.echo()
        click.echo(
            _table(
                [_cell_row(c) for c in cells],
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
    click.echo(_table([_run_row(r) for r in runs], _RUN_COLUMNS))


_RUN_COLUMNS = ["run_id", "attempt", "status", "workflow", "started", "seconds", "cells", "error"]


def _run_row(r: Any) -> dict[str, Any]:
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


def _cell_row(c: Any) -> dict[str, Any]:
    error = f"{c.error_name}: {c.error_message}" if c.error_name else ""
    return {
        "attempt": c.attempt,
        "cell": c.cell_index,
        "status": c.status.value,
        "seconds": f"{c.duration_s:.3f}",
        "replayed": "yes" if c.replayed else "",
        "error": error[:80],
    }


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
    click.echo(_table(rows, ["name", "type", "default"]))


@app.command()
@_state_option
@click.option(
    "--workflows",
    type=click.Path(file_okay=False, exists=True),
    default="workflows",
    show_default=True,
)
def demo(state_dir: str | None, workflows: str) -> None:
    """Run the example workflows: one fails on purpose and is resumed; then the history."""
    from casare_nb.demo import run_demo

    sys.exit(run_demo(Path(workflows), state_dir))


if __name__ == "__main__":  # pragma: no cover
    main()
