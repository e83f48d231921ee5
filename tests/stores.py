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

from casare_nb.core.models import CellRecord, CellStatus, Job, JobStatus, RunRecord
from casare_nb.store.embedded import open_embedded
from casare_nb.store.interfaces import Stores
from casare_nb.store.postgres import open_postgres

__all__ = [
    "BACKENDS",
    "T0",
    "Backend",
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
