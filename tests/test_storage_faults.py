"""Storage faults with a real orchestrator and robot, through HTTP: writes to the state
directory fail (ENOSPC, EROFS, injected at the job store's and the history's DuckDB write and
at ``os.replace`` of files under the state directory) or the directory is deleted. Nothing is
acknowledged that cannot be kept: submissions are refused (503, one line), readiness says why,
a job finished meanwhile stays running until its record and notebook are stored, and
everything recovers by itself once writes succeed again."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster import waiting_cell
from helpers import served, write_notebook

from casare_nb.core.models import RunStatus
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.service_thread import ServiceThread
from casare_nb.store.history import HistoryStore
from casare_nb.store.jobs import SqlJobStore

pytestmark = pytest.mark.timeout(180)

TIMEOUT = 90.0
CELLS = 10


class StorageFault:
    """Writes to one state directory fail with ``errno`` while :attr:`on` is set."""

    def __init__(self, state: Path) -> None:
        self.state = state.resolve()
        self.on = threading.Event()
        self.errno = errno.ENOSPC
        self.output_refused = threading.Event()  # a final output notebook was refused

    def check(self) -> None:
        if self.on.is_set():
            raise OSError(self.errno, os.strerror(self.errno))

    def inside(self, path: Any) -> bool:
        return Path(os.fsdecode(path)).resolve().is_relative_to(self.state)


@pytest.fixture
def fault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StorageFault]:
    injected = StorageFault(tmp_path / "state")
    job_write = SqlJobStore._write
    history_write = HistoryStore.write_with
    replace = os.replace

    def failing_job_write(self: SqlJobStore, batch: Any) -> object:
        injected.check()
        return job_write(self, batch)

    def failing_history_write(self: HistoryStore, *args: Any, **kwargs: Any) -> None:
        injected.check()
        history_write(self, *args, **kwargs)

    def failing_replace(src: Any, dst: Any, **kwargs: Any) -> None:
        if injected.on.is_set() and injected.inside(dst):
            if threading.current_thread().name.startswith("casare-outputs"):
                injected.output_refused.set()
            injected.check()
        replace(src, dst, **kwargs)

    monkeypatch.setattr(SqlJobStore, "_write", failing_job_write)
    monkeypatch.setattr(HistoryStore, "write_with", failing_history_write)
    monkeypatch.setattr(os, "replace", failing_replace)
    yield injected
    injected.on.clear()


def _http(cluster: ServiceThread) -> httpx.Client:
    token = cluster.service.admin_token or ""
    return httpx.Client(
        base_url=cluster.service.http_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=TIMEOUT,
    )


def _orch(cluster: ServiceThread) -> Orchestrator:
    return cluster.service.orchestrator


def _wait(cluster: ServiceThread, predicate: Any) -> None:
    orch = _orch(cluster)
    cluster.call(lambda: orch.wait_for(predicate, timeout=TIMEOUT))


def _workflows(tmp_path: Path) -> Path:
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    cells = [f"print('cell {i}')" for i in range(CELLS)]
    cells[1] = waiting_cell(tmp_path / "started", tmp_path / "go") + "\nprint('cell 1')"
    write_notebook(workflows / "gated.ipynb", cells)
    write_notebook(workflows / "quick.ipynb", ["print('quick')"])
    return workflows


def _assert_refused(answer: httpx.Response, why: str) -> None:
    assert answer.status_code == 503, answer.text
    detail = answer.json()["detail"]
    assert why in detail
    assert "\n" not in detail


def test_a_storage_fault_refuses_submissions_and_holds_completion_until_stored(
    tmp_path: Path, fault: StorageFault, caplog: pytest.LogCaptureFixture
) -> None:
    """While writes fail (ENOSPC in the DuckDB write, EROFS on the state files) a submit is
    refused 503 in one line, ready is 503 with the reason, and a job whose robot finished stays
    running; once lifted, ready is 200, a new submit completes, and the job ends completed with
    every cell in its stored notebook, the fault logged at ERROR once."""
    caplog.set_level(logging.WARNING)
    workflows = _workflows(tmp_path)
    with served(tmp_path / "state", workflows, "robot-f") as cluster, _http(cluster) as http:
        orch = _orch(cluster)
        answer = http.post("/api/jobs", json={"workflow": "gated.ipynb"})
        assert answer.status_code == 201, answer.text
        job_id = answer.json()["job_id"]

        def reached_the_gate() -> bool:
            attempt = orch.job_manager.book.attempts.get((job_id, 1))
            return attempt is not None and attempt.last_cell is not None

        _wait(cluster, reached_the_gate)

        fault.on.set()
        _assert_refused(
            http.post("/api/jobs", json={"workflow": "quick.ipynb"}), "cannot store jobs"
        )
        ready = http.get("/health/ready")
        _assert_refused(ready, "No space left on device")
        _assert_refused(http.post("/api/jobs", json={"workflow": "quick.ipynb"}), "No space")
        assert http.get("/health").status_code == 503

        fault.errno = errno.EROFS
        (tmp_path / "go").touch()
        _wait(cluster, lambda: (job_id, 1) in orch.job_manager.book.completing)
        assert fault.output_refused.wait(TIMEOUT)
        assert http.get(f"/api/jobs/{job_id}").json()["status"] == RunStatus.RUNNING.value
        assert http.get("/health/ready").status_code == 503

        fault.on.clear()
        with cluster.client() as client:
            done = client.wait(job_id, timeout=TIMEOUT)
            assert done.status is RunStatus.COMPLETED
            assert http.get("/health/ready").status_code == 200
            later = client.submit("quick.ipynb", wait=True, timeout=TIMEOUT)
            assert later.status is RunStatus.COMPLETED
            stored = client.notebook(job_id)
            refused = [j for j in client.jobs(limit=100) if j.job_id not in {job_id, later.job_id}]
        code = [c for c in stored["cells"] if c["cell_type"] == "code"]
        printed = ["".join(o.get("text", "")) for c in code for o in c["outputs"]]
        assert [f"cell {i}\n" for i in range(CELLS)] == printed
        # a submission refused while it waited for its commit is withdrawn once stored
        assert all(j.status is RunStatus.CANCELLED for j in refused)
    began = [
        r.getMessage().split(":")[0]
        for r in caplog.records
        if r.levelno == logging.ERROR and "writes fail" in r.getMessage()
    ]
    assert began and len(began) == len(set(began)), began  # once per writer, not per retry
    faults = [r for r in caplog.records if "storage fault:" in r.getMessage()]
    assert len(faults) == 1, [r.getMessage() for r in faults]


def test_a_deleted_state_directory_refuses_submissions(tmp_path: Path) -> None:
    """Once the state directory is deleted under a running orchestrator, submissions are
    refused 503 'state directory gone' (not acknowledged) and ready is 503 saying so."""
    workflows = _workflows(tmp_path)
    state = tmp_path / "state"
    with served(state, workflows, "robot-d") as cluster, _http(cluster) as http:
        with cluster.client() as client:
            first = client.submit("quick.ipynb", wait=True, timeout=TIMEOUT)
        assert first.status is RunStatus.COMPLETED
        shutil.rmtree(state)
        _assert_refused(http.get("/health/ready"), "state directory gone")
        _assert_refused(
            http.post("/api/jobs", json={"workflow": "quick.ipynb"}), "state directory gone"
        )
        assert [j["job_id"] for j in http.get("/api/jobs").json()] == [first.job_id]
