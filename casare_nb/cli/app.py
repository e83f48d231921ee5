"""The ``casare-nb`` command group, its entry point, and what its commands share: the
one-line errors, the state and client options, parameters from ``-p`` and ``-f``.

Exit codes: 0 the run completed; 1 the run failed or timed out; 2 bad input (one line on
stderr, nothing started); 130 cancelled with Ctrl-C. A command's module is imported when the
command is asked for (:class:`Commands`), and commands import what they run inside their
function, on first use, so ``casare-nb --help``, a refused argument and ``casare-nb submit``
skip the start-up of the engine, the stores, the servers and the other commands.
"""

from __future__ import annotations

import importlib
import keyword
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from casare_nb.core.errors import CasareError, ParameterError, QueueError

if TYPE_CHECKING:
    from casare_nb.client import Client
    from casare_nb.client.light import LightClient

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 1, 2, 130


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``casare-nb: error: MESSAGE`` on stderr and exit with ``code``."""
    click.echo(f"casare-nb: error: {message}", err=True)
    sys.exit(code)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point: every user error becomes one line on stderr and exit code 2."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv[:1] in (["run"], ["resume"]) and not {"--help", "-h"} & set(argv):
        from casare_nb.notebook import early  # the kernel boots while the command imports

        early.launch()
        # nbformat's default validator generates and compiles Python for the notebook schema
        # on first use (25-100 ms of a one-shot run); jsonschema validates the same as fast
        os.environ.setdefault("NBFORMAT_VALIDATOR", "jsonschema")
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
        fail(exc.format_message().replace("\n", " "), exc.exit_code)
    except CasareError as exc:
        fail(str(exc), exc.exit_code)
    except QueueError as exc:  # the orchestrator's database: locked, unreadable, broken
        fail(str(exc))
    except ValueError as exc:  # ParameterError and friends
        fail(str(exc))


COMMAND_MODULES = {
    "debug": "debug",
    "submit": "jobs",
    "rerun": "jobs",
    "jobs": "jobs",
    "robots": "jobs",
    "cancel": "jobs",
    "drain": "jobs",
    "pause-submissions": "jobs",
    "resume-submissions": "jobs",
    "outputs": "jobs",
    "lab": "lab",
    "run": "local",
    "resume": "local",
    "history": "local",
    "params": "local",
    "schedule": "schedules",
    "trigger": "schedules",
    "maintenance": "schedules",
    "orchestrator": "service",
    "robot": "service",
    "demo": "service",
    "token": "tokens",
    "backup": "data",
    "restore": "data",
    "cleanup": "data",
    "status": "ops",
    "doctor": "ops",
    "autoscale": "ops",
    "fires": "ops",
    "migrate": "store",
    "export": "store",
}
"""Command -> the module of ``casare_nb.cli`` that defines it (``@app.command``)."""


class Commands(click.Group):
    """The command group: a command's module is imported when the command is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMAND_MODULES})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"casare_nb.cli.{module}")
        return super().get_command(ctx, cmd_name)


LOG_LEVEL_KEY = "casare_nb.log_level"  # the group's --log-level, in the click context's meta


def _group_log_level(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    """``casare-nb --log-level LEVEL COMMAND``: log to stderr at LEVEL (any command); the
    services take it as their default level (see :mod:`casare_nb.logs`)."""
    if value:
        ctx.meta[LOG_LEVEL_KEY] = value
        from casare_nb.logs import LogSettings, setup_logging

        setup_logging(LogSettings(level=value))  # type: ignore[arg-type]  # a click.Choice


@click.group(cls=Commands)
@click.version_option(package_name="casare_nb")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    expose_value=False,
    is_eager=True,
    callback=_group_log_level,
    help="Log messages at this level and above on stderr, for any command.",
)
def app() -> None:
    """casare_nb: parameterised notebooks, run cell by cell, resumed from the failed cell."""


state_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    envvar="CASARE_HOME",
    help="State directory (history, checkpoints). Default: $CASARE_HOME or ./.casare",
)

store_option = click.option(
    "--store",
    envvar="CASARE_ORCH_STORE",
    metavar="URL",
    help="Where the records are when no orchestrator runs here: postgresql://USER@HOST:PORT/DB"
    ", or duckdb (default: $CASARE_ORCH_STORE, else the state directory's own database).",
)


def read_params(
    params: Sequence[tuple[str, str]], params_file: str | None
) -> tuple[dict[str, Any], dict[str, str]]:
    typed: dict[str, Any] = {}
    if not params and not params_file:
        return typed, {}
    if params_file:
        import yaml

        try:
            loaded = yaml.safe_load(Path(params_file).read_text("utf-8"))
        except OSError as exc:
            fail(f"cannot read parameters file {params_file}: {exc.strerror}")
        except UnicodeDecodeError:
            fail(f"parameters file {params_file} is not UTF-8 text")
        except yaml.YAMLError as exc:
            fail(f"parameters file {params_file} is not YAML/JSON: {str(exc).splitlines()[0]}")
        if loaded is not None and not isinstance(loaded, dict):
            fail(f"parameters file {params_file} must hold a mapping of name: value")
        typed = dict(loaded or {})
    return typed, _cli_pairs(params)


def _cli_pairs(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """``-p NAME VALUE`` pairs as a dict, as ``casare_nb.core.params.parse_cli_pairs`` (not
    imported: pydantic; a test keeps them equal): repeated or invalid names refused."""
    out: dict[str, str] = {}
    for name, raw in pairs:
        if not name.isidentifier() or keyword.iskeyword(name):
            raise ParameterError(f"{name!r} is not a valid parameter name")
        if name in out:
            raise ParameterError(f"parameter {name!r} given twice")
        out[name] = raw
    return out


_CA_FILE = "casare_nb.ca_file"  # where --ca-file is kept in the click context's meta


def _keep_ca_file(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[_CA_FILE] = value


ca_file_option = click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False),
    envvar="CASARE_CA_FILE",
    expose_value=False,
    callback=_keep_ca_file,
    help="PEM CA certificate an https orchestrator's certificate is verified against (a "
    "self-signed one's). Default: $CASARE_CA_FILE, else the runtime file's certificate, else "
    "the system's CAs.",
)
"""``--ca-file`` / ``CASARE_CA_FILE``: kept in the context (no parameter of the command), read
by :func:`client_for` and :func:`submit_client_for` through :func:`ca_file`."""


def ca_file() -> str | None:
    """The CA file of this command (``--ca-file``, else ``CASARE_CA_FILE``), or None."""
    ctx = click.get_current_context(silent=True)
    given = ctx.meta.get(_CA_FILE) if ctx is not None else None
    return given or os.environ.get("CASARE_CA_FILE") or None


def client_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = ca_file_option(f)
    f = state_option(f)
    f = click.option(
        "--token", envvar="CASARE_TOKEN", help="Bearer token (default: the runtime file's)."
    )(f)
    f = click.option(
        "--url",
        envvar="CASARE_URL",
        help="Orchestrator HTTP URL; several, comma-separated, for orchestrators sharing a "
        "store (the one that answers is used). Default: the runtime file of the state "
        "directory.",
    )(f)
    return f


def client_for(url: str | None, token: str | None, state_dir: str | None) -> tuple[Client, bool]:
    """A Client, and whether it talks to an orchestrator of this machine (runtime file)."""
    from casare_nb.client import Client

    ca = ca_file()
    if url:
        if not token:
            fail("--url needs a token: give --token or set CASARE_TOKEN")
        if ca is None:
            return Client(url, token or ""), False
        from casare_nb.client.tls import ca_context

        return Client(url, token or "", ssl_context=ca_context(ca)), False
    return Client.local(state_dir, token=token, ca_file=ca), True


def submit_client_for(
    url: str | None, token: str | None, state_dir: str | None
) -> tuple[Client | LightClient, bool]:
    """The client of ``submit`` and ``rerun``, and whether it talks to an orchestrator of
    this machine: the light one (standard library HTTP, events as JSON, no models: a quick
    start), unless an HTTP proxy is configured, which only the full Client honours."""
    from casare_nb.client.light import LightClient, proxy_configured

    if proxy_configured():
        return client_for(url, token, state_dir)
    ca = ca_file()
    if url:
        if not token:
            fail("--url needs a token: give --token or set CASARE_TOKEN")
        if ca is None:
            return LightClient(url, token or ""), False
        from casare_nb.client.tls import ca_context

        return LightClient(url, token or "", ssl_context=ca_context(ca)), False
    return LightClient.local(state_dir, token=token, ca_file=ca), True


def running_client(url: str | None, token: str | None, state_dir: str | None) -> Client | None:
    """A Client if an orchestrator is given (--url) or runs on the state dir, else None."""
    from casare_nb.api import pid_alive, read_runtime_file, runtime_file_path

    if url:
        return client_for(url, token, state_dir)[0]
    info = read_runtime_file(runtime_file_path(state_dir))
    if info is not None and pid_alive(info.pid):
        return client_for(None, token, state_dir)[0]
    return None


def refuse_if_served(state_dir: str | None, instead: str) -> None:
    """Say at once (one line, exit 2) when an orchestrator runs on the state directory: it
    holds the history database (one writer), so a local run could not record itself."""
    from casare_nb.api import pid_alive, read_runtime_file, runtime_file_path

    info = read_runtime_file(runtime_file_path(state_dir))
    if info is not None and pid_alive(info.pid) and info.pid != os.getpid():
        fail(
            f"an orchestrator (pid {info.pid}, {info.http_url}) holds the state directory "
            f"{info.state_dir}: {instead}"
        )


def workflow_arg(workflow: str, local: bool) -> str:
    """A local file is sent as its absolute path to a local orchestrator; anything else as
    typed, for the orchestrator to resolve against its workflows directory."""
    path = Path(workflow)
    if local and path.is_file():
        return str(path.absolute())
    return workflow


wait_options = [
    click.option(
        "--wait", is_flag=True, help="Wait for the job to finish; exit 1 unless completed."
    ),
    click.option(
        "--timeout", "wait_timeout", type=click.FloatRange(min=0), help="Seconds to wait."
    ),
    click.option("--json", "as_json", is_flag=True, help="Print the job as JSON."),
]


def with_options(options: Sequence[Callable[..., Any]]) -> Callable[..., Any]:
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            f = option(f)
        return f

    return decorate


parameter_options = [
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


_MAX_TIMEOUT_S = 7 * 86_400.0  # casare_nb.core.models.MAX_TIMEOUT_S (not imported: pydantic)

job_options = [
    click.option(
        "--priority",
        type=click.Choice(["low", "normal", "high", "critical"]),
        default="normal",
        show_default=True,
    ),
    click.option("--tags", help="Comma-separated tags the robot must have."),
    click.option("--env", "environment", help="Environment the robot must be in."),
    click.option("--max-retries", type=click.IntRange(0, 100), default=0, show_default=True),
    click.option(
        "--cell-timeout",
        type=click.FloatRange(min=0, min_open=True, max=_MAX_TIMEOUT_S),
        help="Seconds a cell may run; past it the job ends 'timeout' at that cell.",
    ),
    click.option(
        "--run-timeout",
        type=click.FloatRange(min=0, min_open=True, max=_MAX_TIMEOUT_S),
        help="Seconds the whole run may take; past it the job ends 'timeout'.",
    ),
]


def job_fields(
    params: Sequence[tuple[str, str]],
    params_file: str | None,
    priority: str,
    tags: str | None,
    environment: str | None,
    max_retries: int,
    cell_timeout: float | None = None,
    run_timeout: float | None = None,
) -> dict[str, Any]:
    """The job fields of a submit, schedule or trigger, as the API takes them: parameters read
    (typed and raw), tags split."""
    typed, raw = read_params(params, params_file)
    return {
        "parameters": typed,
        "raw_parameters": raw,
        "priority": priority,
        "tags": [t.strip() for t in (tags or "").split(",") if t.strip()],
        "environment": environment,
        "max_retries": max_retries,
        **(
            {"timeouts": {"cell_s": cell_timeout, "run_s": run_timeout}}
            if cell_timeout is not None or run_timeout is not None
            else {}
        ),
    }
