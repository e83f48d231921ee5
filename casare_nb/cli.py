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
from typing import TYPE_CHECKING, Any

import click

from casare_nb.core.errors import CasareError

if TYPE_CHECKING:
    from casare_nb.client import Client

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
    typed: dict[str, Any] = {}
    if not params and not params_file:
        return typed, {}
    from casare_nb.core.params import parse_cli_pairs

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


# ---------------------------------------------------------------- orchestrator, robots, client

_LOG_LEVEL = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Log level of the messages on stderr.",
)


def _setup_logging(level: str) -> None:
    import logging

    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level != "debug":  # one line per connection is noise; casare_nb logs what matters
        logging.getLogger("websockets").setLevel(logging.WARNING)


@app.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="WebSocket port for robots and monitors (0: any free port).",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=8766,
    show_default=True,
    help="HTTP API port (0: any free port).",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True), help="Serve wss/https.")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), help="Key of --tls-cert.")
@_state_option
@click.option(
    "--workflows",
    "workflows_dir",
    type=click.Path(file_okay=False, exists=True),
    default=".",
    show_default=True,
    help="Workflows directory: submitted paths resolve here; paths outside are refused.",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds running jobs get to finish on SIGTERM/Ctrl-C.",
)
@_LOG_LEVEL
def orchestrator(
    host: str,
    port: int,
    http_port: int,
    tls_cert: str | None,
    tls_key: str | None,
    state_dir: str | None,
    workflows_dir: str,
    drain_timeout: float,
    log_level: str,
) -> None:
    """Run the orchestrator: robots connect over WebSocket, clients use the HTTP API.

    SIGTERM or Ctrl-C drains (no new jobs, running jobs get --drain-timeout, robots are shut
    down), then stops; a second signal stops at once.
    """
    _setup_logging(log_level)
    from casare_nb.orchestrator.service import OrchestratorService, run_orchestrator

    service = OrchestratorService(
        state_dir,
        host=host,
        port=port,
        http_port=http_port,
        workflows_dir=workflows_dir,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )

    def ready(s: Any) -> None:
        click.echo("orchestrator ready")
        click.echo(f"  robots, monitors  {s.ws_url}")
        click.echo(f"  HTTP API          {s.http_url}  (/health, /docs)")
        click.echo(f"  workflows         {s.workflows_dir}")
        click.echo(f"  state             {s.state_dir}")
        click.echo(f"  runtime file      {s.runtime_file}")
        click.echo(
            "add a robot:  casare-nb token create robot-1  then  "
            f"casare-nb robot --orchestrator {s.ws_url} --token TOKEN --robot-id robot-1"
        )

    code = asyncio.run(
        run_orchestrator(
            service,
            drain_timeout_s=drain_timeout,
            on_ready=ready,
            say=lambda line: click.echo(line),
        )
    )
    sys.exit(code)


@app.command()
@click.option(
    "--orchestrator",
    "orchestrator_url",
    metavar="URL",
    help="ws://host:8765 (default: the config, CASARE_ORCHESTRATOR_URL, ws://127.0.0.1:8765).",
)
@click.option("--token", help="Bearer token (default: the config or CASARE_TOKEN).")
@click.option("--token-file", type=click.Path(dir_okay=False), help="File holding the token.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Robot config (default: ./robot_config.yaml if it exists).",
)
@click.option("--robot-id", help="Robot id (default: the config or CASARE_ROBOT_ID).")
@click.option("--name", "robot_name", help="Display name (default: the id).")
@click.option("--tags", help="Comma-separated tags jobs can ask for.")
@click.option("--env", "environment", help="Environment (default: 'default').")
@click.option("--max-jobs", type=click.IntRange(1, 64), help="Jobs at once (default 1).")
@click.option("--pool-size", type=click.IntRange(1, 64), help="Warm kernels (default --max-jobs).")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False),
    help="Kernels' working directory (default: $CASARE_HOME/robots/ROBOT_ID).",
)
@_LOG_LEVEL
def robot(
    orchestrator_url: str | None,
    token: str | None,
    token_file: str | None,
    config_path: str | None,
    robot_id: str | None,
    robot_name: str | None,
    tags: str | None,
    environment: str | None,
    max_jobs: int | None,
    pool_size: int | None,
    work_dir: str | None,
    log_level: str,
) -> None:
    """Run a robot: warm kernels that run the jobs the orchestrator sends.

    SIGTERM or Ctrl-C: take no new jobs, let the running ones finish, exit; a second signal
    cancels them (the orchestrator requeues them) and exits at once.
    """
    from casare_nb.robot.config import ConfigError, load_config

    config = load_config(
        config_path,
        overrides={
            "orchestrator_url": orchestrator_url,
            "token": token,
            "token_file": token_file,
            "robot_id": robot_id,
            "robot_name": robot_name,
            "tags": tags,
            "environment": environment,
            "max_concurrent_jobs": max_jobs,
            "kernel_pool_size": pool_size,
            "work_dir": work_dir,
        },
    )
    if not config.token_value():
        raise ConfigError(
            "no orchestrator token: give --token or --token-file, set CASARE_TOKEN, or "
            "connection.token in the robot config (casare-nb token create NAME makes one)"
        )
    for notice in config.notices:
        click.echo(f"casare-nb: warning: {notice}", err=True)
    _setup_logging(log_level)
    from casare_nb.robot.main import LocalRobot, run_robot

    sys.exit(asyncio.run(run_robot(LocalRobot(config), say=lambda line: click.echo(line))))


def _client_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = _state_option(f)
    f = click.option(
        "--token", envvar="CASARE_TOKEN", help="Bearer token (default: the runtime file's)."
    )(f)
    f = click.option(
        "--url",
        envvar="CASARE_URL",
        help="Orchestrator HTTP URL (default: the runtime file of the state directory).",
    )(f)
    return f


def _client(url: str | None, token: str | None, state_dir: str | None) -> tuple[Client, bool]:
    """A Client, and whether it talks to an orchestrator of this machine (runtime file)."""
    from casare_nb.client import Client

    if url:
        if not token:
            _fail("--url needs a token: give --token or set CASARE_TOKEN")
        return Client(url, token or ""), False
    return Client.local(state_dir, token=token), True


def _running_client(url: str | None, token: str | None, state_dir: str | None) -> Client | None:
    """A Client if an orchestrator is given (--url) or runs on the state dir, else None."""
    from casare_nb.orchestrator.api import pid_alive, read_runtime_file, runtime_file_path

    if url:
        return _client(url, token, state_dir)[0]
    info = read_runtime_file(runtime_file_path(state_dir))
    if info is not None and pid_alive(info.pid):
        return _client(None, token, state_dir)[0]
    return None


_JOB_COLUMNS = ["job_id", "status", "priority", "workflow", "attempt", "robot", "created", "error"]


def _job_row(job: Any) -> dict[str, Any]:
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
    return _table([_job_row(j) for j in jobs], _JOB_COLUMNS)


def job_event_printer(echo: Callable[[str], None] = click.echo) -> Callable[[Any], None]:
    """An ``on_event`` for ``Client.wait``: one line per start, cell, requeue."""
    from casare_nb.protocol import EventKind

    def on_event(event: Any) -> None:
        data = event.data
        if event.kind is EventKind.JOB_QUEUED and not data.get("reason"):
            job = data["job"]
            echo(f"  job {job['job_id']} queued ({Path(job['workflow_path']).name})")
        elif event.kind is EventKind.JOB_STARTED:
            job = data["job"]
            echo(f"  started on robot {job['robot_id']} (attempt {job['attempt']})")
        elif event.kind is EventKind.JOB_QUEUED:
            why = data["job"].get("error_message") or ""
            echo(f"  queued again ({data['reason']}){': ' + why if why else ''}")
        elif event.kind is EventKind.CELL_FINISHED:
            done, total = data.get("cells_done", 0), data.get("cells_total", 0)
            width = 20
            filled = round(width * done / max(total, 1))
            echo(
                f"  [{'#' * filled}{'-' * (width - filled)}] {done:>3}/{total:<3} "
                f"cell {data['cell_index']:>3}  {data['status']:<11} {data['duration_s']:8.3f} s"
            )

    return on_event


def job_outcome(job: Any) -> str:
    """One line saying how a finished job ended."""
    if job.status.value == "completed":
        return f"job {job.job_id} completed (attempt {job.attempt}, robot {job.robot_id})"
    why = f": {job.error_name}: {job.error_message}" if job.error_name else ""
    return f"job {job.job_id} {job.status.value} (attempt {job.attempt}){why}"


def _finish_wait(job: Any, as_json: bool) -> None:
    if as_json:
        click.echo(job.model_dump_json(indent=1))
    elif job.status.value == "completed":
        click.echo(job_outcome(job))
    else:
        click.echo(job_outcome(job), err=True)
        click.echo(f"re-run from the failed cell:  casare-nb rerun {job.job_id} --wait", err=True)
    sys.exit(0 if job.status.value == "completed" else EXIT_FAILED)


def _workflow_arg(workflow: str, local: bool) -> str:
    """A local file is sent as its absolute path to a local orchestrator; anything else as
    typed, for the orchestrator to resolve against its workflows directory."""
    path = Path(workflow)
    if local and path.is_file():
        return str(path.absolute())
    return workflow


_wait_options = [
    click.option(
        "--wait", is_flag=True, help="Wait for the job to finish; exit 1 unless completed."
    ),
    click.option(
        "--timeout", "wait_timeout", type=click.FloatRange(min=0), help="Seconds to wait."
    ),
    click.option("--json", "as_json", is_flag=True, help="Print the job as JSON."),
]


def _with(options: Sequence[Callable[..., Any]]) -> Callable[..., Any]:
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


_submit_params = [
    click.option(
        "-p",
        "--parameter",
        "params",
        nargs=2,
        multiple=True,
        metavar="NAME VALUE",
        help="A parameter value (coerced to the type the notebook declares).",
    ),
    click.option(
        "-f",
        "--parameters-file",
        "params_file",
        type=click.Path(dir_okay=False),
        help="YAML or JSON file of parameters.",
    ),
]


@app.command()
@click.argument("workflow")
@_with(_submit_params)
@click.option(
    "--priority",
    type=click.Choice(["low", "normal", "high", "critical"]),
    default="normal",
    show_default=True,
)
@click.option("--tags", help="Comma-separated tags the robot must have.")
@click.option("--env", "environment", help="Environment the robot must be in.")
@click.option("--max-retries", type=click.IntRange(0, 100), default=0, show_default=True)
@_with(_wait_options)
@_client_options
def submit(
    workflow: str,
    params: Sequence[tuple[str, str]],
    params_file: str | None,
    priority: str,
    tags: str | None,
    environment: str | None,
    max_retries: int,
    wait: bool,
    wait_timeout: float | None,
    as_json: bool,
    url: str | None,
    token: str | None,
    state_dir: str | None,
) -> None:
    """Queue a run of WORKFLOW on the orchestrator (path relative to its workflows dir)."""
    typed, raw = _read_params(params, params_file)
    client, local = _client(url, token, state_dir)
    with client:
        job = client.submit(
            _workflow_arg(workflow, local),
            typed,
            raw_parameters=raw,
            priority=priority,
            tags=[t.strip() for t in (tags or "").split(",") if t.strip()],
            environment=environment,
            max_retries=max_retries,
            wait=wait,
            timeout=wait_timeout,
            on_event=None if as_json else job_event_printer(),
        )
    if wait:
        _finish_wait(job, as_json)
    elif as_json:
        click.echo(job.model_dump_json(indent=1))
    else:
        name = Path(job.workflow_path).name
        click.echo(f"job {job.job_id} queued ({name}, priority {job.priority.value})")


@app.command()
@click.argument("job_id")
@click.option(
    "--from-failed/--from-start",
    default=True,
    show_default=True,
    help="Resume from the failed cell (namespace restored), or run the whole notebook again.",
)
@_with(_submit_params)
@_with(_wait_options)
@_client_options
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
    typed, raw = _read_params(params, params_file)
    client, _ = _client(url, token, state_dir)
    with client:
        job = client.rerun(
            job_id,
            from_failed,
            typed or None,
            raw_parameters=raw or None,
            wait=wait,
            timeout=wait_timeout,
            on_event=None if as_json else job_event_printer(),
        )
    if wait:
        _finish_wait(job, as_json)
    elif as_json:
        click.echo(job.model_dump_json(indent=1))
    else:
        how = "from the failed cell" if from_failed else "from the start"
        click.echo(f"job {job.job_id} queued again, {how}")


@app.command()
@click.option(
    "--status",
    type=click.Choice(["queued", "running", "completed", "failed", "cancelled", "timeout", "dead"]),
    help="Only jobs in this status.",
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@_client_options
def jobs(
    status: str | None,
    limit: int,
    as_json: bool,
    url: str | None,
    token: str | None,
    state_dir: str | None,
) -> None:
    """The orchestrator's jobs, newest first."""
    client, _ = _client(url, token, state_dir)
    with client:
        found = client.list(status, limit)
    if as_json:
        click.echo(json.dumps([j.model_dump(mode="json") for j in found], indent=1))
        return
    click.echo(jobs_table(found))


_ROBOT_COLUMNS = ["robot_id", "name", "status", "env", "load", "cpu", "mem", "last_heartbeat"]


def _robot_row(robot: Any) -> dict[str, Any]:
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


@app.command()
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@_client_options
def robots(as_json: bool, url: str | None, token: str | None, state_dir: str | None) -> None:
    """The robots that registered with the orchestrator, and their load."""
    client, _ = _client(url, token, state_dir)
    with client:
        found = client.robots()
    if as_json:
        click.echo(json.dumps([r.model_dump(mode="json") for r in found], indent=1))
    elif not found:
        click.echo("no robots yet")
    else:
        click.echo(_table([_robot_row(r) for r in found], _ROBOT_COLUMNS))


@app.command()
@click.argument("job_id")
@_client_options
def cancel(job_id: str, url: str | None, token: str | None, state_dir: str | None) -> None:
    """Cancel JOB_ID: a queued job at once, a running one once its robot interrupted it."""
    client, _ = _client(url, token, state_dir)
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
@_client_options
def drain(timeout: float, url: str | None, token: str | None, state_dir: str | None) -> None:
    """Stop taking jobs, let running ones finish (up to --timeout), shut the robots down."""
    client, _ = _client(url, token, state_dir)
    with client:
        report = client.drain(timeout)
    click.echo("draining: the orchestrator takes no new jobs")
    click.echo(f"  finished while waiting  {', '.join(report.finished_jobs) or '-'}")
    click.echo(f"  still unfinished        {', '.join(report.unfinished_jobs) or '-'}")
    click.echo(f"  robots shut down        {', '.join(report.robots_shut_down) or '-'}")


@app.group()
def token() -> None:
    """Bearer tokens for robots, monitors and clients (stored hashed)."""


class _TokenStore:
    """The state dir's token table, opened directly when no orchestrator runs."""

    def __init__(self, state_dir: str | None) -> None:
        from casare_nb.notebook.checkpoint import StateDir

        self.state = StateDir(state_dir)
        self._store: Any = None

    def __enter__(self) -> Any:
        from casare_nb.store.history import HistoryStore
        from casare_nb.store.queue import QueueStore

        try:
            self.state.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _fail(f"cannot create state directory {self.state.root}: {exc.strerror}")
        self._store = QueueStore(HistoryStore(self.state.history_path))
        return self._store

    def __exit__(self, *exc: object) -> None:
        if self._store is not None:
            self._store.close()


def _queue_call(call: Callable[[], Any]) -> Any:
    from casare_nb.store.queue import QueueError

    try:
        return call()
    except QueueError as exc:
        _fail(str(exc))


@token.command("create")
@click.argument("name")
@_client_options
def token_create(name: str, url: str | None, token: str | None, state_dir: str | None) -> None:
    """Create the token NAME and print it (shown only this once)."""
    from casare_nb.orchestrator.api import TOKEN_NAME_PATTERN

    if not re.fullmatch(TOKEN_NAME_PATTERN, name):
        _fail(f"token name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    client = _running_client(url, token, state_dir)
    if client is not None:
        with client:
            value = client.create_token(name)
    else:
        with _TokenStore(state_dir) as store:
            value = _queue_call(lambda: store.create_token(name))
    click.echo(value)
    click.echo(f"token {name} created; it is shown only this once", err=True)


@token.command("revoke")
@click.argument("name")
@_client_options
def token_revoke(name: str, url: str | None, token: str | None, state_dir: str | None) -> None:
    """Revoke the token NAME (its connections are closed)."""
    client = _running_client(url, token, state_dir)
    if client is not None:
        with client:
            client.revoke_token(name)
    else:
        with _TokenStore(state_dir) as store:
            _queue_call(lambda: store.revoke_token(name))
    click.echo(f"token {name} revoked")


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@_client_options
def token_list(as_json: bool, url: str | None, token: str | None, state_dir: str | None) -> None:
    """Every token: name, created, revoked (never the token)."""
    client = _running_client(url, token, state_dir)
    if client is not None:
        with client:
            rows = [t.model_dump() for t in client.tokens()]
    else:
        from casare_nb.notebook.checkpoint import StateDir

        if not StateDir(state_dir).history_path.exists():
            rows = []
        else:
            with _TokenStore(state_dir) as store:
                rows = _queue_call(store.list_tokens)
    if as_json:
        click.echo(json.dumps(rows, indent=1, default=str))
        return
    if not rows:
        click.echo("no tokens")
        return
    table = [
        {
            "name": r["name"],
            "created": f"{r['created_at']:%Y-%m-%d %H:%M:%S}",
            "revoked": f"{r['revoked_at']:%Y-%m-%d %H:%M:%S}" if r["revoked_at"] else "",
        }
        for r in rows
    ]
    click.echo(_table(table, ["name", "created", "revoked"]))


@app.command()
@_state_option
@click.option(
    "--workflows",
    type=click.Path(file_okay=False, exists=True),
    default="workflows",
    show_default=True,
)
def demo(state_dir: str | None, workflows: str) -> None:
    """The example workflows through a local orchestrator and robot; two fail and are re-run.

    Starts an orchestrator (free ports) and one robot in this process, submits the examples
    with the Python Client, re-runs the failing ones from their failed cell, prints the jobs.
    """
    from casare_nb.demo import run_demo

    sys.exit(run_demo(Path(workflows), state_dir))


# -- schedules and triggers ----------------------------------------------------------------

_job_fields = [
    click.option(
        "--priority",
        type=click.Choice(["low", "normal", "high", "critical"]),
        default="normal",
        show_default=True,
    ),
    click.option("--tags", help="Comma-separated tags the robot must have."),
    click.option("--env", "environment", help="Environment the robot must be in."),
    click.option("--max-retries", type=click.IntRange(0, 100), default=0, show_default=True),
]


def _template(
    params: Sequence[tuple[str, str]],
    params_file: str | None,
    priority: str,
    tags: str | None,
    environment: str | None,
    max_retries: int,
) -> dict[str, Any]:
    """The job fields of a schedule or trigger, as the API takes them."""
    typed, raw = _read_params(params, params_file)
    return {
        "parameters": typed,
        "raw_parameters": raw,
        "priority": priority,
        "tags": [t.strip() for t in (tags or "").split(",") if t.strip()],
        "environment": environment,
        "max_retries": max_retries,
    }


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
@_with(_submit_params)
@_with(_job_fields)
@click.option("--json", "as_json", is_flag=True, help="Print the schedule as JSON.")
@_client_options
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
        _fail("give exactly one of --cron, --every, --at")
    fields = _template(**job)
    client, local = _client(url, token, state_dir)
    with client:
        info = client.add_schedule(
            _workflow_arg(workflow, local),
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
    client, _ = _client(*connection)
    with client:
        found = fetch(client)
    if as_json:
        click.echo(json.dumps([item.model_dump(mode="json") for item in found], indent=1))
    elif not found:
        click.echo(empty)
    else:
        click.echo(_table([row(item) for item in found], columns))


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@_client_options
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
@_client_options
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
    @_client_options
    def change(schedule_id: str, url: str | None, token: str | None, state_dir: str | None) -> None:
        client, _ = _client(url, token, state_dir)
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
@_with(_submit_params)
@_with(_job_fields)
@click.option("--json", "as_json", is_flag=True, help="Print the trigger as JSON.")
@_client_options
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
    fields = _template(**job)
    client, local = _client(url, token, state_dir)
    path = watch_path
    if path is not None and local:
        path = str(Path(path).absolute())
    with client:
        info = client.add_trigger(
            kind.replace("-", "_"),
            _workflow_arg(workflow, local),
            secret_env=secret_env,
            path=path,
            pattern=pattern,
            file_parameter=file_parameter,
            run=None if run is None else _workflow_arg(run, local),
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
@_client_options
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
    @_client_options
    def change(trigger_id: str, url: str | None, token: str | None, state_dir: str | None) -> None:
        client, _ = _client(url, token, state_dir)
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
@click.argument("job_id")
@_client_options
def outputs(job_id: str, url: str | None, token: str | None, state_dir: str | None) -> None:
    """The values JOB_ID's notebook recorded with casare_nb.output(name, value), as JSON."""
    client, _ = _client(url, token, state_dir)
    with client:
        found = client.outputs(job_id)
    click.echo(json.dumps(found, indent=1, default=str))


if __name__ == "__main__":  # pragma: no cover
    main()
