"""The stores of a state directory no orchestrator holds, opened for one procedure (the
CLI's backup and cleanup when nothing runs there): the embedded stores if it has a
database, else its checkpoint files alone (a state directory of runs without history)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from casare_nb.notebook.state import StateDir
from casare_nb.store.checkpoints import FileCheckpointStore
from casare_nb.store.embedded import open_embedded
from casare_nb.store.interfaces import CheckpointStore, Upkeep

__all__ = ["Opened", "opened"]


@dataclass
class Opened:
    """What a procedure works on: the state directory, its checkpoint files and, if it has
    a database, its records."""

    state: StateDir
    checkpoints: CheckpointStore
    upkeep: Upkeep | None


@contextlib.contextmanager
def opened(state_dir: str | os.PathLike[str] | None) -> Iterator[Opened]:
    """The stores of ``state_dir`` for the block (its database held meanwhile: QueueError if
    another process holds it)."""
    state = StateDir(state_dir)
    if not state.history_path.exists():
        yield Opened(state, FileCheckpointStore(state.root), None)
        return
    stores = open_embedded(state.root)
    try:
        stores.open()
        yield Opened(state, stores.checkpoints, stores.upkeep)
    finally:
        stores.close()
