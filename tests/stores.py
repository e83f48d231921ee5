"""The store backends the interface suites run against, as one parametrised fixture.

Each suite of :mod:`casare_nb.store.interfaces` (test_job_store, test_token_store,
test_trigger_store, test_run_history, test_checkpoint_store) takes ``stores`` (or
``backend``, to open the same storage again) and only uses the interfaces, so a new backend
joins every suite by being added to :data:`BACKENDS`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from casare_nb.store.embedded import open_embedded
from casare_nb.store.interfaces import Stores

__all__ = ["BACKENDS", "Backend", "backend", "opened", "stores"]


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
        stores = self._opener(self.root, **options)
        stores.open()
        self._opened.append(stores)
        return stores

    def close_all(self) -> None:
        for stores in self._opened:
            stores.close()


BACKENDS: dict[str, Callable[..., Stores]] = {
    "embedded": lambda root, **options: open_embedded(root / "state", **options),
}
"""Backend name -> opener(root, **options)."""


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend in turn, in a fresh place."""
    found = Backend(request.param, tmp_path, BACKENDS[request.param])
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
