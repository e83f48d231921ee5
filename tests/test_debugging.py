"""Debugging a failed job where it failed: the orchestrator's debug bundle and blobs, a
kernel restored before the failed cell (in this process and by ``casare-nb debug``), the
debug notebook, and the re-run with the analyst's edited cells. A real orchestrator and
robot in a thread (ServiceThread), real kernels, real HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from helpers import served, write_notebook
from jupyter_client.blocking import BlockingKernelClient

from casare_nb.client import Client, ClientError
from casare_nb.core.models import RunStatus
from casare_nb.debugging import (
    DEBUG_META,
    NOTE_ID,
    DebugError,
    debug_notebook,
    default_debug_state,
    edited_sources,
    fetch,
    restore,
)
from casare_nb.notebook.debug import Restored
from casare_nb.notebook.kernels import KernelSession
from casare_nb.service_thread import ServiceThread

WAIT = 90.0
FAILING = "assert len(rows) <= limit, f'{len(rows)} rows > limit {limit}'\nchecked = True"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    root = tmp_path_factory.mktemp("debugging")
    workflows = root / "workflows"
    workflows.mkdir()
    with served(root / "state", workflows, "robot-d") as thread:
        yield thread


@pytest.fixture
def client(cluster: ServiceThread) -> Iterator[Client]:
    with cluster.client() as c:
        yield c


def _failed_job(client: Client, cluster: ServiceThread, name: str) -> tuple[str, Path]:
    workflows = Path(cluster.service.workflows_dir)
    path = write_notebook(
        workflows / f"{name}.ipynb",
        ["rows = list(range(8))\nblob = bytes(range(256)) * 8000", FAILING, "total = sum(rows)"],
        params="limit: int = 5",
    )
    job = client.submit(f"{name}.ipynb", {"limit": 3}, wait=True, timeout=WAIT)
    assert job.status is RunStatus.FAILED
    return job.job_id, path


def test_debug_bundle_points_at_the_failed_cell_with_the_checkpoint_before_it(
    client: Client, cluster: ServiceThread
) -> None:
    """The bundle of a failed job names its failed cell, the checkpoint after the cell
    before it, and blobs the orchestrator serves byte-exact."""
    job_id, _ = _failed_job(client, cluster, "bundle")
    bundle = client.debug_bundle(job_id)
    cells = bundle.notebook["cells"]
    assert bundle.failed_cell_id == "c1"
    assert cells[bundle.failed_cell_index]["id"] == "c1"
    assert bundle.plan.restore_cell_id == "c0"
    assert "c0" in bundle.manifests and bundle.blobs
    assert (bundle.kernel_name, bundle.attempt) == ("python3", 1)
    data = client.blob(bundle.blobs[0])
    assert hashlib.sha256(data).hexdigest() == bundle.blobs[0]


def test_debug_bundle_refuses_a_completed_or_unknown_job(
    client: Client, cluster: ServiceThread
) -> None:
    """A completed job answers 409 (nothing failed), an unknown one 404, a bad or unknown
    blob digest 4xx: one-line details."""
    workflows = Path(cluster.service.workflows_dir)
    write_notebook(workflows / "fine.ipynb", ["x = 1"])
    done = client.submit("fine.ipynb", wait=True, timeout=WAIT)
    with pytest.raises(ClientError, match="completed: there is no failed cell") as err:
        client.debug_bundle(done.job_id)
    assert err.value.status == 409
    with pytest.raises(ClientError) as err:
        client.debug_bundle("no-such-job")
    assert err.value.status == 404
    with pytest.raises(ClientError) as err:
        client.blob("0" * 64)
    assert err.value.status == 404 and "not stored" in str(err.value)
    with pytest.raises(ClientError) as err:
        client.blob("../../etc/passwd")
    assert err.value.status in (404, 422)


async def test_a_restored_kernel_holds_the_namespace_before_the_failed_cell(
    client: Client, cluster: ServiceThread, tmp_path: Path
) -> None:
    """fetch + restore: the kernel holds what the cells before the failed one made (the
    parameter too), and nothing of the failed cell or after it ran."""
    job_id, _ = _failed_job(client, cluster, "restore")
    bundle = client.debug_bundle(job_id)
    state = default_debug_state()
    fetch(client, bundle, state)
    session = await KernelSession.start(bundle.kernel_name, cwd=tmp_path)
    try:
        restored = await restore(session, bundle, state)
        assert restored.ok and restored.restored_from_cell is not None
        assert {"rows", "blob", "limit"} <= set(restored.loaded)
        assert "checked" not in restored.loaded and "total" not in restored.loaded
        values = await session.call(
            "__import__('sys').modules['__casare__']._answer([rows, limit, len(blob)])"
        )
        assert values == [list(range(8)), 3, 256 * 8000]
    finally:
        await session.shutdown()


def test_the_debug_notebook_notes_the_failed_cell_and_keeps_workflow_cells_for_the_resume(
    client: Client, cluster: ServiceThread
) -> None:
    """The note sits right above the failed cell and names the restored variables; the
    metadata says which job; edited_sources keeps the workflow's code cells only."""
    job_id, _ = _failed_job(client, cluster, "notebook")
    bundle = client.debug_bundle(job_id)
    nb = debug_notebook(bundle, Restored(loaded=["rows", "limit"], restored_from_cell=2))
    ids = [c["id"] for c in nb["cells"]]
    assert ids[ids.index(NOTE_ID) + 1] == "c1"
    assert "`rows`" in nb["cells"][ids.index(NOTE_ID)]["source"]
    assert nb["metadata"][DEBUG_META]["job_id"] == job_id
    nb["cells"].append({"cell_type": "code", "id": "mine", "source": "print(1)", "metadata": {}})
    sources = edited_sources(nb)
    assert set(sources) == {"params", "c0", "c1", "c2"}
    with pytest.raises(DebugError, match="not a casare debug notebook"):
        edited_sources({"cells": [], "metadata": {}})


def test_rerun_with_edited_cells_writes_the_fix_and_resumes_from_the_failed_cell(
    client: Client, cluster: ServiceThread
) -> None:
    """cell_sources are written into the workflow; the job completes from the failed cell
    without running the cells before it again."""
    job_id, path = _failed_job(client, cluster, "resumed")
    fixed = "assert len(rows) <= limit * 10\nchecked = True"
    job = client.rerun(job_id, cell_sources={"c1": fixed}, wait=True, timeout=WAIT)
    assert job.status is RunStatus.COMPLETED and job.attempt == 2
    cells = {c.id: c for c in nbformat.read(str(path), as_version=4).cells}
    assert cells["c1"].source == fixed
    ran = [c.cell_id for c in client.cells(job_id, attempt=2) if not c.replayed]
    assert "c0" not in ran and ran[-2:] == ["c1", "c2"]


def test_rerun_with_an_unknown_cell_id_changes_nothing(
    client: Client, cluster: ServiceThread
) -> None:
    """A cell id the workflow lacks answers 422 naming it; the workflow file is untouched
    and no attempt is queued."""
    job_id, path = _failed_job(client, cluster, "unknown_cell")
    before = path.read_bytes()
    with pytest.raises(ClientError, match="no code cell with id 'nope'") as err:
        client.rerun(job_id, cell_sources={"nope": "x = 1"})
    assert err.value.status == 422
    assert path.read_bytes() == before
    assert client.get(job_id).attempt == 1


def test_casare_nb_debug_serves_a_restored_kernel_until_ctrl_c(
    client: Client, cluster: ServiceThread, tmp_path: Path
) -> None:
    """The command prints how to attach; a Jupyter client attached there sees the variables
    made before the failed cell; Ctrl-C stops the kernel and removes its connection file."""
    job_id, _ = _failed_job(client, cluster, "cli")
    conn = tmp_path / "kernel-debug.json"
    env = {**os.environ, "CASARE_URL": cluster.service.http_url}
    env["CASARE_TOKEN"] = cluster.service.admin_token or ""
    proc = subprocess.Popen(
        [sys.executable, "-m", "casare_nb.cli", "debug", job_id, "--connection-file", str(conn)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("notebook:"):
                break
        text = "".join(lines)
        assert f"attach:    jupyter console --existing {conn}" in text, text
        assert "failed at cell" in text and "rows" in text
        kc = BlockingKernelClient(connection_file=str(conn))
        kc.load_connection_file()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=30)
            reply = kc.execute_interactive("print(sum(rows), limit)", timeout=30)
            assert reply["content"]["status"] == "ok"
        finally:
            kc.stop_channels()
        notebook = tmp_path / f"cli.debug-{job_id}.ipynb"
        assert json.loads(notebook.read_text())["metadata"][DEBUG_META]["job_id"] == job_id
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert not conn.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
