"""The embedded default's upkeep: a consistent export of the DuckDB file (a backup), its
import into a new file (a restore), and the retention of old records.

The export is DuckDB's own ``EXPORT DATABASE`` (the schema as SQL, each table as Parquet),
run in one transaction on a connection of its own: a snapshot of every table at one moment,
taken while the orchestrator goes on writing through its other connections. The import is
``IMPORT DATABASE`` into a file that does not exist yet; migrations newer than the export
apply when the file is next opened.

Retention removes, in one transaction, every run (all its attempts, their cells and
outputs) and job that ended before a cutoff: a job only if it is finished and ended then
(its runs' records then go whatever they say: a run left ``running`` by a crash is over if
its job is); a run without a job (``casare-nb run``) only if every attempt finished then.
Staged job states are written first, so a job re-run a moment ago is seen queued; one
re-run while the pass runs is written back whole by the job store.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Final

from casare_nb.core.errors import StateError
from casare_nb.store.database import Connection, Database
from casare_nb.store.interfaces import JobStore, Pruned
from casare_nb.store.sql import SqlDatabase, to_db_time, transaction

__all__ = ["DuckDBUpkeep", "SqlUpkeep", "import_export", "table_counts"]

_UNFINISHED: Final = "('queued', 'running')"
_EXPIRED: Final = f"""
    WITH r AS (
        SELECT run_id AS id, bool_and(status NOT IN {_UNFINISHED}) AS done,
               max(coalesce(finished_at, started_at)) AS ended
        FROM runs GROUP BY run_id
    ), j AS (
        SELECT job_id AS id, status NOT IN {_UNFINISHED} AS done,
               coalesce(finished_at, created_at) AS ended
        FROM jobs
    )
    SELECT coalesce(j.id, r.id) AS id FROM r FULL OUTER JOIN j ON r.id = j.id
    WHERE CASE WHEN j.id IS NOT NULL THEN j.done AND j.ended < $cutoff
                                          AND coalesce(r.ended < $cutoff, TRUE)
               ELSE r.done AND r.ended < $cutoff END
"""
_OLD_FIRES: Final = (
    "FROM fires WHERE fired_at < $cutoff AND due_at < "
    "(SELECT max(g.due_at) FROM fires g WHERE g.schedule_id = fires.schedule_id)"
)


def _quoted(path: Path) -> str:
    """``path`` as an SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def table_counts(con: Connection) -> dict[str, int]:
    """The rows of every table of the database ``con`` is on, by name."""
    tables = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND NOT temporary ORDER BY table_name"
    ).fetchall()
    counts: dict[str, int] = {}
    for (name,) in tables:
        row = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()
        counts[str(name)] = int(row[0]) if row else 0
    return counts


def import_export(folder: Path, path: Path) -> dict[str, int]:
    """Load an export (:meth:`DuckDBUpkeep.export`) from ``folder`` into the new database file
    ``path``; the rows of each table. StateError if ``path`` exists; HistoryError if the
    export cannot be loaded."""
    if path.exists():
        raise StateError(f"cannot import into {path}: it exists")
    db = Database(path, lock_timeout=0)
    with db.unmigrated() as con:
        con.execute(f"IMPORT DATABASE {_quoted(folder)}")
        counts = table_counts(con)
        con.execute("CHECKPOINT")  # everything in the file itself, no write-ahead log
    return counts


class SqlUpkeep:
    """Retention and the record ids of the SQL stores' database; ``jobs``, its job store, is
    flushed before each pass (its states are written behind). The export is the engine's
    own (:class:`DuckDBUpkeep`, :class:`~casare_nb.store.postgres.PgUpkeep`)."""

    def __init__(self, db: SqlDatabase, jobs: JobStore | None = None) -> None:
        self.db = db
        self.jobs = jobs

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.db.where!r})"

    def _settle(self) -> None:
        if self.jobs is not None:
            self.jobs.flush()

    def prune(self, before: datetime, *, dry_run: bool = False) -> Pruned:
        """Remove the runs and jobs that ended before ``before`` (see the module docstring)
        and the schedule fires before it but each schedule's last; count only if
        ``dry_run``."""
        self._settle()
        cutoff = {"cutoff": to_db_time(before)}
        with self.db.connect() as con, transaction(con):
            con.execute("DROP TABLE IF EXISTS expired")
            con.execute(f"CREATE TEMP TABLE expired AS {_EXPIRED}", cutoff)
            rows = con.execute("SELECT id FROM expired ORDER BY id").fetchall()
            ids = [str(row[0]) for row in rows]
            within = "IN (SELECT id FROM expired)"
            counts: dict[str, int] = {}
            for table, key in (("runs", "run_id"), ("cells", "run_id"), ("outputs", "run_id")):
                row = con.execute(f"SELECT count(*) FROM {table} WHERE {key} {within}").fetchone()
                counts[table] = int(row[0]) if row else 0
            row = con.execute(f"SELECT count(*) FROM jobs WHERE job_id {within}").fetchone()
            counts["jobs"] = int(row[0]) if row else 0
            row = con.execute(f"SELECT count(*) {_OLD_FIRES}", cutoff).fetchone()
            counts["fires"] = int(row[0]) if row else 0
            if not dry_run:
                for table, key in (
                    ("cells", "run_id"),
                    ("outputs", "run_id"),
                    ("runs", "run_id"),
                    ("jobs", "job_id"),
                ):
                    con.execute(f"DELETE FROM {table} WHERE {key} {within}")
                con.execute(f"DELETE {_OLD_FIRES}", cutoff)
            con.execute("DROP TABLE expired")
        return Pruned(
            run_ids=ids,
            runs=counts["runs"],
            cells=counts["cells"],
            jobs=counts["jobs"],
            outputs=counts["outputs"],
            fires=counts["fires"],
        )

    def record_ids(self) -> set[str]:
        """Every run id and job id in the file."""
        self._settle()
        rows = self.db.query("SELECT run_id FROM runs UNION SELECT job_id FROM jobs")
        return {str(row[0]) for row in rows}


class DuckDBUpkeep(SqlUpkeep):
    """The :class:`~casare_nb.store.interfaces.Upkeep` of one DuckDB file."""

    db: Database

    def __init__(self, db: Database, jobs: JobStore | None = None) -> None:
        super().__init__(db, jobs)

    def export(self, folder: Path) -> dict[str, int]:
        """``EXPORT DATABASE`` into ``folder`` (new; zstd-compressed Parquet), with the row
        counts, in one transaction: one snapshot."""
        if folder.exists() and any(os.scandir(folder)):
            raise StateError(f"cannot export into {folder}: it is not empty")
        self._settle()
        with self.db.connect() as con, transaction(con):
            counts = table_counts(con)
            con.execute(f"EXPORT DATABASE {_quoted(folder)} (FORMAT parquet, COMPRESSION zstd)")
        return counts
