"""The embedded default: everything an orchestrator keeps, in its state directory.

One DuckDB file (``history.duckdb``: jobs, history, tokens, schedules and triggers, outputs)
behind one shared connection, and checkpoint files beside it (``blobs/``, ``runs/``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

from casare_nb.notebook.state import StateDir
from casare_nb.store.checkpoints import FileCheckpointStore
from casare_nb.store.database import Database
from casare_nb.store.history import HistoryStore
from casare_nb.store.interfaces import Leadership, SharedJobs, Stores, Upkeep
from casare_nb.store.jobs import COMMIT_INTERVAL_S, SqlJobStore
from casare_nb.store.outputs import SqlOutputStore
from casare_nb.store.sql import SqlDatabase
from casare_nb.store.tokens import SqlTokenStore
from casare_nb.store.triggers import SqlTriggerStore
from casare_nb.store.upkeep import DuckDBUpkeep

__all__ = ["open_embedded", "sql_stores"]


ORCHESTRATOR_LOCK_WAIT_S: Final = 2.0
"""How long an orchestrator waits for its database held by another process."""


def open_embedded(
    state_dir: str | os.PathLike[str], *, commit_interval_s: float = COMMIT_INTERVAL_S
) -> Stores:
    """The stores of ``state_dir`` (nothing is opened until first used)."""
    state = StateDir(state_dir)
    # a lock held by another process is another orchestrator or a local run: said at once
    db = Database(state.history_path, lock_timeout=ORCHESTRATOR_LOCK_WAIT_S)
    return sql_stores(
        db,
        state,
        upkeep=lambda jobs: DuckDBUpkeep(db, jobs),
        where=state.history_path,
        commit_interval_s=commit_interval_s,
    )


def sql_stores(
    db: SqlDatabase,
    state: StateDir,
    *,
    upkeep: Callable[[SqlJobStore], Upkeep],
    where: Path | str,
    commit_interval_s: float = COMMIT_INTERVAL_S,
    leadership: Leadership | None = None,
    shared: Callable[[SqlJobStore], SharedJobs] | None = None,
) -> Stores:
    """The SQL stores on ``db`` with checkpoint files in ``state`` (each backend gives its
    upkeep, where it is, and, if several orchestrators may share it, who leads and how
    they share the job rows); closing them closes ``db``."""
    jobs = SqlJobStore(db, commit_interval_s=commit_interval_s)

    def open_() -> None:
        with jobs.connection():
            pass

    rows = None if shared is None else shared(jobs)

    def close() -> None:
        if rows is not None:
            rows.close()
        jobs.close()
        db.close()

    return Stores(
        jobs=jobs,
        history=HistoryStore(db),
        tokens=SqlTokenStore(db),
        triggers=SqlTriggerStore(db),
        outputs=SqlOutputStore(db),
        checkpoints=FileCheckpointStore(state.root),
        upkeep=upkeep(jobs),
        where=where,
        opener=open_,
        closer=close,
        leadership=leadership,
        shared=rows,
    )
