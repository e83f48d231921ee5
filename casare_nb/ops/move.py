"""``casare-nb export``: the records of a state directory's embedded database moved into a
PostgreSQL database, where several orchestrators can share them.

Every table (jobs, history runs and cells, outputs, tokens, schedules and their fires,
triggers, webhook deliveries, watched files) is copied as it is, in one transaction on the
PostgreSQL side (``COPY``), into a database that has none of these rows yet: an export
either lands whole or not at all, and never mixes with rows already there. The checkpoint
files (manifests, blobs, notebooks so far) are not records: they stay in the state
directory, which the orchestrators on the database then use (``--state-dir``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any, Final

from casare_nb.core.errors import StateError
from casare_nb.notebook.state import StateDir
from casare_nb.store.database import Database
from casare_nb.store.postgres import PgDatabase

__all__ = ["TABLES", "export_state"]

TABLES: Final = (
    "tokens",
    "jobs",
    "runs",
    "cells",
    "outputs",
    "schedules",
    "fires",
    "triggers",
    "deliveries",
    "watched_files",
)
"""The tables an export copies (every table of the schema but its migrations)."""

_BATCH: Final = 5000
_LOCK_WAIT_S: Final = 2.0


def export_state(state_dir: str | os.PathLike[str] | None, url: str) -> dict[str, int]:
    """Copy the records of ``state_dir`` into the PostgreSQL database ``url`` (migrated
    first); the rows of each table. StateError if the state directory has no database;
    QueueError if the target cannot be reached or already has rows; HistoryError if the file
    is held by a running orchestrator."""
    state = StateDir(state_dir)
    if not state.history_path.exists():
        raise StateError(f"{state.history_path} does not exist: nothing to export")
    source = Database(state.history_path, lock_timeout=_LOCK_WAIT_S)
    target = PgDatabase(url)
    counts = dict.fromkeys(TABLES, 0)
    try:
        target.schema_version()  # reach and migrate it before reading anything
        with source.connect() as con:

            def rows(table: str, names: Sequence[str]) -> Iterator[Sequence[Any]]:
                found = con.execute(f"SELECT {', '.join(names)} FROM {table}")
                while batch := found.fetchmany(_BATCH):
                    counts[table] += len(batch)
                    yield from batch

            columns = {
                table: [
                    str(name)
                    for (name,) in con.execute(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_name = ? ORDER BY ordinal_position",
                        [table],
                    ).fetchall()
                ]
                for table in TABLES
            }
            target.load((table, columns[table], rows(table, columns[table])) for table in TABLES)
    finally:
        target.close()
    return counts
