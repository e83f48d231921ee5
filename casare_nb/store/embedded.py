"""The embedded default: everything an orchestrator keeps, in its state directory.

One DuckDB file (``history.duckdb``: jobs, history, tokens, schedules and triggers, outputs)
behind one shared connection, and checkpoint files beside it (``blobs/``, ``runs/``).
"""

from __future__ import annotations

import os
from typing import Final

from casare_nb.notebook.state import StateDir
from casare_nb.store.checkpoints import FileCheckpointStore
from casare_nb.store.database import Database
from casare_nb.store.history import HistoryStore
from casare_nb.store.interfaces import Stores
from casare_nb.store.jobs import COMMIT_INTERVAL_S, SqlJobStore
from casare_nb.store.outputs import SqlOutputStore
from casare_nb.store.tokens import SqlTokenStore
from casare_nb.store.triggers import SqlTriggerStore
from casare_nb.store.upkeep import DuckDBUpkeep

__all__ = ["open_embedded"]


ORCHESTRATOR_LOCK_WAIT_S: Final = 2.0
"""How long an orchestrator waits for its database held by another process."""


def open_embedded(
    state_dir: str | os.PathLike[str], *, commit_interval_s: float = COMMIT_INTERVAL_S
) -> Stores:
    """The stores of ``state_dir`` (nothing is opened until first used)."""
    state = StateDir(state_dir)
    # a lock held by another process is another orchestrator or a local run: said at once
    db = Database(state.history_path, lock_timeout=ORCHESTRATOR_LOCK_WAIT_S)
    jobs = SqlJobStore(db, commit_interval_s=commit_interval_s)

    def open_() -> None:
        with jobs.connection():
            pass

    def close() -> None:
        jobs.close()
        db.close()

    return Stores(
        jobs=jobs,
        history=HistoryStore(db),
        tokens=SqlTokenStore(db),
        triggers=SqlTriggerStore(db),
        outputs=SqlOutputStore(db),
        checkpoints=FileCheckpointStore(state.root),
        upkeep=DuckDBUpkeep(db, jobs),
        where=state.history_path,
        opener=open_,
        closer=close,
    )
