"""``casare-nb lab``: JupyterLab with everything wired. When no orchestrator is configured
(``CASARE_URL``, or a live runtime file in the state directory) it starts one and a local
robot in this process, with the current folder as the workflows directory; JupyterLab's
server extension finds it through ``CASARE_HOME``. The dashboard notebook opens first."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import click

from casare_nb.cli.app import app, running_client, state_option

LAB_ROBOT = "lab-robot"


@app.command(context_settings={"ignore_unknown_options": True})
@state_option
@click.option(
    "--workflows",
    type=click.Path(file_okay=False, exists=True),
    default=".",
    show_default=True,
    help="The workflows directory of the orchestrator started here (also JupyterLab's root).",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8888, show_default=True)
@click.option("--ip", default="127.0.0.1", show_default=True, help="Address JupyterLab listens on.")
@click.option("--no-browser", is_flag=True, help="Do not open a browser.")
@click.argument("jupyter_args", nargs=-1, type=click.UNPROCESSED)
def lab(
    state_dir: str | None,
    workflows: str,
    port: int,
    ip: str,
    no_browser: bool,
    jupyter_args: Sequence[str],
) -> None:
    """JupyterLab with the casare dashboard; an orchestrator and a robot when none runs.

    Arguments after the options go to JupyterLab (e.g. --IdentityProvider.token=...).
    """
    root = Path(workflows).absolute()
    with _orchestrator(state_dir, root) as env:
        notebook = _dashboard(root)
        args = [
            sys.executable,
            "-m",
            "jupyterlab",
            f"--ServerApp.root_dir={root}",
            f"--ip={ip}",
            f"--port={port}",
            *(["--no-browser"] if no_browser else []),
            *jupyter_args,
            str(notebook.relative_to(root)),
        ]
        click.echo(f"  JupyterLab    opens {notebook.relative_to(root)} (Ctrl-C stops everything)")
        process = subprocess.Popen(args, cwd=root, env=env)
        try:
            code = process.wait()
        except KeyboardInterrupt:  # the terminal sent SIGINT to JupyterLab too
            code = _stop(process)
    sys.exit(code)


@contextlib.contextmanager
def _orchestrator(state_dir: str | None, root: Path) -> Iterator[dict[str, str]]:
    """The environment JupyterLab runs in, with an orchestrator and robot started here
    while it runs if none is configured."""
    env = dict(os.environ)
    found = running_client(os.environ.get("CASARE_URL"), os.environ.get("CASARE_TOKEN"), state_dir)
    if found is not None:
        click.echo(f"casare-nb lab: the orchestrator at {found.url}")
        found.close()
        if state_dir:
            env["CASARE_HOME"] = str(Path(state_dir).absolute())
        yield env
        return
    from casare_nb.orchestrator.service import OrchestratorService
    from casare_nb.robot.main import local_robot
    from casare_nb.service_thread import ServiceThread

    service = OrchestratorService(
        state_dir, port=0, http_port=0, workflows_dir=root, heartbeat_interval_s=1.0
    )
    work_dir = service.state_dir / "robots" / LAB_ROBOT
    robot = local_robot(LAB_ROBOT, pool_size=2, work_dir=work_dir)
    with ServiceThread(service, robots=[robot]):
        click.echo("casare-nb lab: an orchestrator and one robot in this process")
        click.echo(f"  orchestrator  {service.http_url} (HTTP API), state {service.state_dir}")
        click.echo(f"  robot         {LAB_ROBOT}, 2 warm kernels; workflows in {root}")
        env["CASARE_HOME"] = str(service.state_dir)
        env.pop("CASARE_URL", None)
        yield env


def _dashboard(root: Path) -> Path:
    """notebooks/dashboard.ipynb when the folder has one, else casare-dashboard.ipynb
    (written if missing)."""
    from casare_nb.jupyter.dashboard import DASHBOARD_NOTEBOOK, dashboard_notebook

    shipped = root / "notebooks" / "dashboard.ipynb"
    if shipped.is_file():
        return shipped
    target = root / DASHBOARD_NOTEBOOK
    if not target.exists():
        target.write_text(json.dumps(dashboard_notebook(), indent=1), "utf-8")
    return target


def _stop(process: subprocess.Popen[bytes]) -> int:
    """Shut JupyterLab down after Ctrl-C (SIGTERM: no "are you sure?" prompt), its kernels
    with it; killed if it takes over 30 s."""
    process.terminate()
    try:
        process.wait(30)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        process.kill()
        process.wait()
    return 0
