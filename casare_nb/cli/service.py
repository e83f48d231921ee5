"""``casare-nb orchestrator``, ``robot`` and ``demo``: the long-running processes.

Both services log to stderr and to rotating files under their state directory
(``logs/orchestrator.log`` and ``logs/audit.log``; ``logs/robot-<id>.log``): see
:mod:`casare_nb.logs`. The orchestrator's options also come from its settings file, ``.env``
and ``CASARE_ORCH_*`` variables (:mod:`casare_nb.orchestrator.config`); a flag wins.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import click

from casare_nb.cli.app import LOG_LEVEL_KEY, app, fail, state_option

LEVELS = ["debug", "info", "warning", "error"]

LOG_LEVEL = click.option(
    "--log-level",
    type=click.Choice(LEVELS),
    help="Log level of stderr and the log files (default: the settings', else info).",
)
LOG_FORMAT = click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Log lines as text or JSON objects, one a line (default: the settings', else text).",
)
LOG_MAX_BYTES = click.option(
    "--log-max-bytes",
    type=click.IntRange(min=1024),
    help="Rotate a log file past this size (default: the settings', else 10 MiB).",
)
LOG_BACKUPS = click.option(
    "--log-backups",
    "log_backup_count",
    type=click.IntRange(1, 1000),
    help="Rotated log files kept (default: the settings', else 5).",
)


def setup_logging(level: str) -> None:
    """stderr only, at ``level`` (the demo's, and what runs in one process)."""
    from casare_nb.logs import LogSettings
    from casare_nb.logs import setup_logging as setup

    setup(LogSettings(level=level))  # type: ignore[arg-type]  # a click.Choice of LEVELS


@app.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="Settings file (YAML; default: ./orchestrator.yaml if it exists). Precedence: "
    "flags > CASARE_ORCH_* environment > ./.env > this file > defaults.",
)
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help="WebSocket port for robots and monitors (0: any free port; default 8765).",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    help="HTTP API port (0: any free port; default 8766).",
)
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True), help="Serve wss/https.")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True), help="Key of --tls-cert.")
@state_option
@click.option(
    "--store",
    metavar="URL",
    help="Where jobs, history, tokens, schedules and triggers are kept: postgresql://USER@HOST"
    ":PORT/DB (several orchestrators may share it), or duckdb (default: the state directory's "
    "own database). Checkpoint files stay in the state directory.",
)
@click.option(
    "--node-id",
    help="This orchestrator among several on one --store (default HOST-PID; give each its "
    "own): the owner of the jobs it runs; its log files are STATE_DIR/logs/orchestrator-NODE.log "
    "and audit-NODE.log. All serve and dispatch; one leads (schedules, file watch).",
)
@click.option(
    "--workflows",
    "workflows_dir",
    type=click.Path(file_okay=False, exists=True),
    help="Workflows directory: submitted paths resolve here; paths outside are refused "
    "(default: the working directory).",
)
@click.option(
    "--drain-timeout",
    "drain_timeout_s",
    type=click.FloatRange(min=0),
    help="Seconds running jobs get to finish on SIGTERM/Ctrl-C (default 60).",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1024),
    help="Largest HTTP request body (API and webhooks); larger ones answer 413 (default 1 MiB).",
)
@LOG_LEVEL
@LOG_FORMAT
@LOG_MAX_BYTES
@LOG_BACKUPS
def orchestrator(
    config_path: str | None,
    log_level: str | None,
    log_format: str | None,
    log_max_bytes: int | None,
    log_backup_count: int | None,
    **flags: Any,
) -> None:
    """Run the orchestrator: robots connect over WebSocket, clients use the HTTP API.

    SIGTERM or Ctrl-C drains (no new jobs, running jobs get --drain-timeout, robots are shut
    down), then stops; a second signal stops at once. Logs go to stderr and to
    STATE_DIR/logs/orchestrator.log (rotated), the audit records to STATE_DIR/logs/audit.log.
    """
    from casare_nb.logs import log_dir
    from casare_nb.logs import setup_logging as setup
    from casare_nb.orchestrator.config import load_orchestrator_config

    config = load_orchestrator_config(config_path, overrides=flags)
    given = {
        "level": log_level or click.get_current_context().meta.get(LOG_LEVEL_KEY),
        "format": log_format,
        "max_bytes": log_max_bytes,
        "backup_count": log_backup_count,
    }
    logging_settings = config.logging.model_validate(
        {**config.logging.model_dump(), **{k: v for k, v in given.items() if v is not None}}
    )
    from casare_nb.api import runtime_file_path

    state_dir = runtime_file_path(config.state_dir).parent
    try:
        node = f"-{config.node_id}" if config.node_id else ""  # nodes sharing a state dir
        setup(
            logging_settings,
            folder=log_dir(state_dir),
            file_name=f"orchestrator{node}.log",
            audit=f"audit{node}.log",
        )
    except OSError as exc:
        fail(f"cannot write the log files in {state_dir / 'logs'}: {exc.strerror or exc}")
    from casare_nb.orchestrator.service import OrchestratorService, run_orchestrator

    service = OrchestratorService(
        state_dir,
        host=config.host,
        port=config.port,
        http_port=config.http_port,
        workflows_dir=config.workflows_dir,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
        max_body_bytes=config.max_body_bytes,
        thresholds=config.thresholds,
        **config.orchestrator_options(),
    )

    def ready(s: Any) -> None:
        click.echo("orchestrator ready")
        click.echo(f"  robots, monitors  {s.ws_url}")
        click.echo(f"  HTTP API          {s.http_url}  (/health, /docs)")
        click.echo(f"  workflows         {s.workflows_dir}")
        click.echo(f"  state             {s.state_dir}")
        click.echo(f"  store             {s.orchestrator.stores.where}")
        role = s.orchestrator.role
        if s.orchestrator.stores.shared is not None:
            click.echo(f"  node              {role.node_id} (one of several, all active)")
        elif role.shared:
            click.echo(f"  node              {role.node_id} (active, epoch {role.epoch})")
        click.echo(f"  runtime file      {s.runtime_file}")
        click.echo(f"  logs              {s.state_dir / 'logs'}")
        click.echo(
            "add a robot:  casare-nb token create robot-1 --role robot  then  "
            f"casare-nb robot --orchestrator {s.ws_url} --token-file FILE --robot-id robot-1"
        )

    service.on_lead = lambda epoch: click.echo(
        f"leader (epoch {epoch}): this node fires schedules, watches files and adopts the "
        "jobs of dead nodes"
    )
    code = asyncio.run(
        run_orchestrator(
            service,
            drain_timeout_s=config.drain_timeout_s,
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
    "--ca-file",
    type=click.Path(dir_okay=False),
    help="PEM CA certificate a wss:// orchestrator's certificate is verified against (a "
    "self-signed one's); default: the config, CASARE_CA_FILE, the system's CAs.",
)
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
@LOG_LEVEL
@LOG_FORMAT
@LOG_MAX_BYTES
@LOG_BACKUPS
def robot(
    orchestrator_url: str | None,
    token: str | None,
    token_file: str | None,
    ca_file: str | None,
    config_path: str | None,
    robot_id: str | None,
    robot_name: str | None,
    tags: str | None,
    environment: str | None,
    max_jobs: int | None,
    pool_size: int | None,
    work_dir: str | None,
    log_level: str | None,
    log_format: str | None,
    log_max_bytes: int | None,
    log_backup_count: int | None,
) -> None:
    """Run a robot: warm kernels that run the jobs the orchestrator sends.

    SIGTERM or Ctrl-C: take no new jobs, let the running ones finish, exit; a second signal
    cancels them (the orchestrator requeues them) and exits at once. Logs go to stderr and to
    $CASARE_HOME/logs/robot-ROBOT_ID.log (rotated; observability.log_dir in the config).
    """
    from casare_nb.robot.config import ConfigError, load_config

    config = load_config(
        config_path,
        overrides={
            "orchestrator_url": orchestrator_url,
            "token": token,
            "token_file": token_file,
            "ca_file": ca_file,
            "robot_id": robot_id,
            "robot_name": robot_name,
            "tags": tags,
            "environment": environment,
            "max_concurrent_jobs": max_jobs,
            "kernel_pool_size": pool_size,
            "work_dir": work_dir,
            "log_level": log_level or click.get_current_context().meta.get(LOG_LEVEL_KEY),
            "log_format": log_format,
            "log_max_bytes": log_max_bytes,
            "log_backup_count": log_backup_count,
        },
    )
    if not config.token_value():
        raise ConfigError(
            "no orchestrator token: give --token or --token-file, set CASARE_TOKEN, or "
            "connection.token in the robot config (casare-nb token create NAME makes one)"
        )
    config.ssl_context()  # a CA file that cannot be used: one line now, nothing started
    for notice in config.notices:
        click.echo(f"casare-nb: warning: {notice}", err=True)
    _robot_logging(config)
    from casare_nb.robot.main import LocalRobot, run_robot

    sys.exit(asyncio.run(run_robot(LocalRobot(config), say=lambda line: click.echo(line))))


def _robot_logging(config: Any) -> None:
    """stderr and ``robot-<id>.log`` as the robot's config (and flags) say."""
    from casare_nb.logs import LogSettings, log_dir
    from casare_nb.logs import setup_logging as setup

    seen = config.observability
    settings = LogSettings(
        level=seen.log_level,
        format=seen.log_format,
        max_bytes=seen.log_max_bytes,
        backup_count=seen.log_backup_count,
        files=seen.log_files,
    )
    home = Path(os.environ.get("CASARE_HOME") or ".casare")
    folder = seen.log_dir if seen.log_dir is not None else log_dir(home)
    try:
        setup(settings, folder=folder, file_name=f"robot-{config.robot.robot_id}.log")
    except OSError as exc:
        fail(f"cannot write the log file in {folder}: {exc.strerror or exc}")


@app.command()
@state_option
@click.option(
    "--workflows",
    type=click.Path(file_okay=False, exists=True),
    default="workflows",
    show_default=True,
)
@LOG_LEVEL
def demo(state_dir: str | None, workflows: str, log_level: str | None) -> None:
    """The example workflows through a local orchestrator and robot; two fail and are re-run.

    Starts an orchestrator (free ports) and one robot in this process, submits the examples
    with the Python Client, re-runs the failing ones from their failed cell, prints the jobs.
    """
    if log_level:
        setup_logging(log_level)
    from casare_nb.cli.demo import run_demo

    sys.exit(run_demo(Path(workflows), state_dir))
