"""``casare-nb orchestrator``, ``robot`` and ``demo``: the long-running processes."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from casare_nb.cli.app import app, state_option

LOG_LEVEL = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Log level of the messages on stderr.",
)


def setup_logging(level: str) -> None:
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
@state_option
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
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1024),
    default=1 << 20,
    show_default=True,
    help="Largest HTTP request body (API and webhooks); larger ones answer 413.",
)
@LOG_LEVEL
def orchestrator(
    host: str,
    port: int,
    http_port: int,
    tls_cert: str | None,
    tls_key: str | None,
    state_dir: str | None,
    workflows_dir: str,
    drain_timeout: float,
    max_body_bytes: int,
    log_level: str,
) -> None:
    """Run the orchestrator: robots connect over WebSocket, clients use the HTTP API.

    SIGTERM or Ctrl-C drains (no new jobs, running jobs get --drain-timeout, robots are shut
    down), then stops; a second signal stops at once.
    """
    setup_logging(log_level)
    from casare_nb.orchestrator.service import OrchestratorService, run_orchestrator

    service = OrchestratorService(
        state_dir,
        host=host,
        port=port,
        http_port=http_port,
        workflows_dir=workflows_dir,
        tls_cert=tls_cert,
        tls_key=tls_key,
        max_body_bytes=max_body_bytes,
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
            f"casare-nb robot --orchestrator {s.ws_url} --token-file FILE --robot-id robot-1"
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
            "ca_file": ca_file,
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
    config.ssl_context()  # a CA file that cannot be used: one line now, nothing started
    for notice in config.notices:
        click.echo(f"casare-nb: warning: {notice}", err=True)
    setup_logging(log_level)
    from casare_nb.robot.main import LocalRobot, run_robot

    sys.exit(asyncio.run(run_robot(LocalRobot(config), say=lambda line: click.echo(line))))


@app.command()
@state_option
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
    from casare_nb.cli.demo import run_demo

    sys.exit(run_demo(Path(workflows), state_dir))
