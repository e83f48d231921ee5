"""The store backends the interface suites run against, as one parametrised fixture.

Each suite of :mod:`casare_nb.store.interfaces` (test_job_store, test_token_store,
test_trigger_store, test_run_history, test_checkpoint_store) takes ``stores`` (or
``backend``, to open the same storage again) and only uses the interfaces, so a new backend
joins every suite by being added to :data:`BACKENDS`. :func:`make_job`, :func:`running`,
:func:`make_run` and :func:`make_cell` build the records the suites store.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from casare_nb.core.models import CellRecord, CellStatus, Job, JobStatus, RunRecord, RunStatus
from casare_nb.core.triggers import Schedule, ScheduleKind
from casare_nb.store.embedded import open_embedded
from casare_nb.store.interfaces import Stores
from casare_nb.store.postgres import open_postgres

__all__ = [
    "BACKENDS",
    "RETENTION_PLAN",
    "T0",
    "Backend",
    "add_retention_records",
    "backend",
    "make_cell",
    "make_job",
    "make_run",
    "opened",
    "running",
    "stores",
]

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def make_run(run_id: str = "run-1", attempt: int = 1, **changes: Any) -> RunRecord:
    """A run record with plain defaults; ``changes`` override any field."""
    fields: dict[str, Any] = {
        "run_id": run_id,
        "attempt": attempt,
        "workflow_path": "workflows/demo.yaml",
        "notebook_sha256": "ab" * 32,
        "started_at": T0,
    }
    fields.update(changes)
    return RunRecord(**fields)


def make_cell(
    run_id: str = "run-1", attempt: int = 1, cell_index: int = 0, **changes: Any
) -> CellRecord:
    """A cell record (ok, 0.25 s) with plain defaults; ``changes`` override any field."""
    fields: dict[str, Any] = {
        "run_id": run_id,
        "attempt": attempt,
        "cell_index": cell_index,
        "cell_id": f"cell-{cell_index}",
        "status": CellStatus.OK,
        "started_at": T0 + timedelta(seconds=cell_index),
        "duration_s": 0.25,
    }
    fields.update(changes)
    return CellRecord(**fields)


class Backend:
    """One place where stores live: :meth:`open` gives a new handle on it each time (a
    reopen, as after a restart)."""

    def __init__(self, name: str, root: Path, opener: Callable[..., Stores]) -> None:
        self.name = name
        self.root = root
        self._opener = opener
        self._opened: list[Stores] = []

    def open(self, **options: Any) -> Stores:
        """The stores, opened (``commit_interval_s`` is the job store's group-commit window)."""
        stores = self._opener(**options)
        stores.open()
        self._opened.append(stores)
        return stores

    def close_all(self) -> None:
        for stores in self._opened:
            stores.close()


def _embedded(request: pytest.FixtureRequest, root: Path) -> Callable[..., Stores]:
    return functools.partial(open_embedded, root / "state")


def _postgres(request: pytest.FixtureRequest, root: Path) -> Callable[..., Stores]:
    """A new database of the session's PostgreSQL server (tests/postgres.py), checkpoint
    files in ``root``."""
    return functools.partial(open_postgres, request.getfixturevalue("pg_url"), root / "state")


BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], Callable[..., Stores]]] = {
    "embedded": _embedded,
    "postgres": _postgres,
}
"""Backend name -> (the test's request, a fresh folder) -> opener(**options)."""


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend in turn, in a fresh place."""
    opener = BACKENDS[request.param](request, tmp_path)
    found = Backend(request.param, tmp_path, opener)
    try:
        yield found
    finally:
        found.close_all()


@pytest.fixture
def stores(backend: Backend) -> Stores:
    """The stores of ``backend``, open."""
    return backend.open()


@contextlib.contextmanager
def opened(state_dir: Path) -> Iterator[Stores]:
    """The embedded stores of a state directory an orchestrator (or a CLI process) used,
    opened for the block."""
    found = open_embedded(state_dir)
    found.open()
    try:
        yield found
    finally:
        found.close()


RETENTION_PLAN: dict[str, tuple[JobStatus, int]] = {
    "old-done": (JobStatus.COMPLETED, 100),
    "old-failed": (JobStatus.FAILED, 100),
    "old-running": (JobStatus.RUNNING, 100),  # a job still running: never removed
    "old-queued": (JobStatus.QUEUED, 100),
    "new-failed": (JobStatus.FAILED, 1),
}
"""The jobs of :func:`add_retention_records`: status and days ago."""


def add_retention_records(stores: Stores, now: datetime) -> None:
    """The records a retention pass is tried on: the jobs of :data:`RETENTION_PLAN` with a
    run each (3 cells, ids c0-c2) but the queued one, a local run 100 days old without a
    job (``local-old``), outputs of ``old-done`` and ``new-failed``, and the schedule
    ``nightly`` with fires due 100, 99, 98 and 1 days ago."""
    old = now - timedelta(days=100)
    jobs = [
        Job(
            job_id=job_id,
            workflow_path="w.ipynb",
            status=status,
            created_at=now - timedelta(days=days),
            eligible_at=now - timedelta(days=days),
            finished_at=now - timedelta(days=days) if status.finished else None,
            attempt=1,
        )
        for job_id, (status, days) in RETENTION_PLAN.items()
    ]
    stores.jobs.add_jobs(jobs)
    runs = [
        RunRecord(
            run_id=job.job_id,
            workflow_path="w.ipynb",
            notebook_sha256="0" * 64,
            status=RunStatus(job.status.value),
            started_at=job.created_at,
            finished_at=job.finished_at,
        )
        for job in jobs
        if job.status is not JobStatus.QUEUED
    ]
    runs.append(
        RunRecord(
            run_id="local-old",
            workflow_path="w.ipynb",
            notebook_sha256="0" * 64,
            status=RunStatus.COMPLETED,
            started_at=old,
            finished_at=old,
        )
    )
    cells = [
        make_cell(run.run_id, cell_index=i, started_at=run.started_at, duration_s=0.1)
        for run in runs
        for i in range(3)
    ]
    stores.history.write(runs, cells)
    stores.outputs.record_outputs("old-done", 1, {"rows": (10, 1)})
    stores.outputs.record_outputs("new-failed", 1, {"rows": (20, 1)})
    stores.triggers.add_schedule(
        Schedule(
            schedule_id="nightly",
            kind=ScheduleKind.CRON,
            cron="0 1 * * *",
            workflow_path="w.ipynb",
            created_at=old,
        )
    )
    for days in (100, 99, 98, 1):
        stores.triggers.claim_fire("nightly", now - timedelta(days=days), None, "skipped: test")


def make_job(job_id: str = "j1", **changes: Any) -> Job:
    """A queued job with parameters and a tag; ``changes`` override any field."""
    fields: dict[str, Any] = {
        "job_id": job_id,
        "workflow_path": "workflows/demo.ipynb",
        "parameters": {"n": 3, "name": "x"},
        "tags": ["gpu"],
        "created_at": T0,
        "eligible_at": T0,
    }
    fields.update(changes)
    return Job(**fields)


def running(job: Job, robot_id: str = "robot-1", attempt: int = 1) -> Job:
    """``job`` assigned to ``robot_id`` as ``attempt``."""
    return job.model_copy(
        update={
            "status": JobStatus.RUNNING,
            "robot_id": robot_id,
            "attempt": attempt,
            "assigned_at": T0,
        }
    )
