"""Chunked checkpoints travel: a large array reaches the orchestrator as chunks and is
restored, exactly, by another robot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, counted, notebook

from casare_nb.core.models import RunStatus
from casare_nb.notebook.state import StateDir, blob_refs


def cell_text(path: Path, cell_id: str) -> str:
    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if c.get("id") == cell_id)
    return "".join(out.get("text", "") for out in cell.get("outputs", []))


async def test_a_large_array_travels_in_chunks_and_resumes_on_another_robot(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 3.2 MB array reaches the orchestrator as 1 MiB chunks (each a blob); a rerun on a
    fresh robot fetches them and restores the array exactly, without re-running the cell
    that made it."""
    monkeypatch.setenv("CASARE_CHECKPOINT_MAX_INTERVAL", "1")  # a checkpoint every cell
    log = tmp_path / "ran.log"
    nb = notebook(
        tmp_path,
        "big.ipynb",
        [
            counted(log, "c0", "import numpy as np\narr = np.arange(400_000, dtype=np.float64)"),
            "arr[123_456] = -1.0",
            "assert limit > 1, 'limit too low'",
            "print(float(arr.sum()), arr[123_456], arr.flags.writeable)",
        ],
        params="limit = 1",
    )
    robot_a = await cluster.robot("robot-a")
    job = await cluster.orch.submit(nb)
    assert (await cluster.finished(job.job_id)).status is RunStatus.FAILED
    store = cluster.orch.stores.checkpoints
    await cluster.until(lambda: "c1" in store.stored_cells(job.job_id, 1))
    held = store.manifests_for(store.attempt(job.job_id, 1), ["c1"])
    entry: dict[str, Any] = held["c1"]["vars"]["arr"]
    if "ref" in entry:
        entry = held[entry["ref"].removesuffix(".json")]["vars"]["arr"]
    assert len(entry["buffers"][0]["chunks"]) == 4
    for sha in {d for m in held.values() for d in blob_refs(m)}:
        assert store.has_blob(sha)
    await cluster.stop_bot(robot_a)
    await cluster.robot("robot-b")
    await cluster.orch.rerun(job.job_id, parameters={"limit": 5})
    done = await cluster.finished(job.job_id)
    assert (done.status, done.attempt, done.robot_id) == (RunStatus.COMPLETED, 2, "robot-b")
    assert log.read_text().split() == ["c0"]  # the array came from the checkpoint
    out = StateDir(cluster.orch.state_dir).attempt(job.job_id, 2).output
    expected = float(sum(range(400_000)) - 123_456 - 1)
    assert cell_text(out, "c3") == f"{expected} -1.0 True\n"
