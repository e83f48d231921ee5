"""``casare-nb debug JOB_ID``: a kernel holding a failed job's namespace as it was before
its failed cell, for a terminal (``jupyter console --existing ...``) or any Jupyter client.
It runs in the foreground; Ctrl-C (or SIGTERM) stops the kernel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from casare_nb.cli.app import app, client_for, client_options

if TYPE_CHECKING:
    from casare_nb.api import DebugBundle
    from casare_nb.notebook.debug import Restored
    from casare_nb.notebook.state import StateDir


@app.command()
@click.argument("job_id")
@click.option(
    "--notebook",
    "notebook_path",
    type=click.Path(dir_okay=False),
    help="Where to write the debug notebook (default: ./<workflow>.debug-<job>.ipynb).",
)
@click.option(
    "--connection-file",
    type=click.Path(dir_okay=False),
    help="The kernel's connection file (default: kernel-debug-<job>.json in Jupyter's "
    "runtime directory, so `jupyter console --existing kernel-debug-<job>.json` finds it).",
)
@client_options
def debug(
    job_id: str,
    notebook_path: str | None,
    connection_file: str | None,
    url: str | None,
    token: str | None,
    state_dir: str | None,
) -> None:
    """Start a kernel restored at JOB_ID's failed cell and print how to attach to it."""
    from casare_nb.debugging import debug_filename, default_debug_state, fetch

    client, _ = client_for(url, token, state_dir)
    t0 = time.monotonic()
    with client:
        bundle = client.debug_bundle(job_id)
        state = default_debug_state()
        fetch(client, bundle, state)
    if connection_file is None:
        from jupyter_core.paths import jupyter_runtime_dir

        Path(jupyter_runtime_dir()).mkdir(parents=True, exist_ok=True)
        connection_file = str(Path(jupyter_runtime_dir()) / f"kernel-debug-{job_id}.json")
    workflow = Path(bundle.workflow_path)
    cwd = workflow.parent if workflow.parent.is_dir() else Path.cwd()
    asyncio.run(
        _serve(bundle, state, connection_file, cwd, notebook_path or debug_filename(bundle), t0)
    )


async def _serve(
    bundle: DebugBundle, state: StateDir, connection_file: str, cwd: Path, notebook: str, t0: float
) -> None:
    from jupyter_client.manager import AsyncKernelManager

    from casare_nb.debugging import debug_notebook, restore
    from casare_nb.notebook.kernels import KernelSession

    km = AsyncKernelManager(kernel_name=bundle.kernel_name, connection_file=connection_file)
    await km.start_kernel(cwd=str(cwd))
    try:
        session = await KernelSession.attach(km, cwd=cwd)
        try:
            restored = await restore(session, bundle, state)
        finally:
            session.detach()
        Path(notebook).write_text(json.dumps(debug_notebook(bundle, restored), indent=1))
        _report(bundle, restored, connection_file, notebook, time.monotonic() - t0)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        click.echo("stopping the debug kernel")
    finally:
        await km.shutdown_kernel(now=True)
        with contextlib.suppress(OSError):
            Path(connection_file).unlink()


def _report(
    bundle: DebugBundle, restored: Restored, connection_file: str, notebook: str, took: float
) -> None:
    click.echo(
        f"job {bundle.job_id} failed at cell {bundle.failed_cell_index} of "
        f"{bundle.workflow_path} (attempt {bundle.attempt})"
    )
    where = (
        f"the checkpoint after cell {restored.restored_from_cell}"
        if restored.restored_from_cell is not None
        else "a replay of the cells before it"
    )
    click.echo(f"kernel restored from {where} in {took:.2f} s: {', '.join(restored.loaded)}")
    for name, why in sorted(restored.missing.items()):
        click.echo(f"  not restored: {name} ({why})")
    if bundle.secret_names:
        click.echo(f"  secret parameters not restored: {', '.join(bundle.secret_names)}")
    if not restored.ok:
        click.echo(f"  rebuilding the namespace failed: {restored.error}", err=True)
    click.echo(f"attach:    jupyter console --existing {connection_file}")
    click.echo(f"notebook:  {notebook}")
    click.echo(
        f"after fixing the workflow:  casare-nb rerun {bundle.job_id} --wait"
        "   (Ctrl-C here stops the kernel)",
    )
