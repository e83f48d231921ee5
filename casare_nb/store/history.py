"""Run history in a DuckDB file: runs, cells, schema migrations, and a background writer.

The store package (this module and ``queue``) is the only part of casare_nb that imports
:mod:`duckdb`.

DuckDB lets one process at a time hold a database file read-write, so every access here
uses a short-lived connection (:meth:`HistoryStore.connect`) and a lock conflict is retried
with backoff for up to ``lock_timeout`` seconds. The :class:`HistoryWriter` keeps the
DuckDB work off the hot path: callers enqueue records and a daemon thread writes them in
batches, holding its connection only while work keeps arriving.

Storage conventions: timestamps are ``TIMESTAMP`` columns holding naive UTC (aware values
are converted; naive values are taken as UTC) and are returned as aware UTC datetimes;
``parameters`` and ``replayed_cells`` are JSON text; enums are stored as their values.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeAlias

import duckdb
import pydantic_core
import tenacity

from casare_nb.core.errors import one_line
from casare_nb.core.models import CellRecord, RunRecord, RunStatus

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Connection",
    "HistoryError",
    "HistoryStore",
    "HistoryWriter",
]

log = logging.getLogger(__name__)

Connection: TypeAlias = duckdb.DuckDBPyConnection

# Ordered (version, SQL script) pairs. Each missing one is applied, in order, inside one
# transaction together with its row in ``schema_migrations``. Never edit a released entry:
# append a new version instead.
#
# No secondary index on runs(status, started_at): DuckDB's ART indexes only speed up point
# lookups / highly selective equality filters, not range scans or ORDER BY, so listing by a
# low-cardinality status gains nothing, while every index costs memory and (in older DuckDB
# releases) makes upserts of indexed columns fragile. Zone maps cover started_at scans.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE runs (
            run_id VARCHAR NOT NULL,
            attempt INTEGER NOT NULL,
            workflow_path VARCHAR NOT NULL,
            notebook_sha256 VARCHAR NOT NULL,
            parameters VARCHAR NOT NULL DEFAULT '{}',
            status VARCHAR NOT NULL,
            kernel_name VARCHAR NOT NULL,
            language VARCHAR NOT NULL,
            started_at TIMESTAMP NOT NULL,
            finished_at TIMESTAMP,
            duration_s DOUBLE,
            cells_total INTEGER NOT NULL DEFAULT 0,
            error_name VARCHAR,
            error_message VARCHAR,
            failed_cell INTEGER,
            failed_cell_id VARCHAR,
            output_path VARCHAR,
            resumed_from_attempt INTEGER,
            restored_from_cell INTEGER,
            replayed_cells VARCHAR NOT NULL DEFAULT '[]',
            restore_mode VARCHAR,
            source VARCHAR NOT NULL DEFAULT 'cli',
            PRIMARY KEY (run_id, attempt)
        );
        CREATE TABLE cells (
            run_id VARCHAR NOT NULL,
            attempt INTEGER NOT NULL,
            cell_index INTEGER NOT NULL,
            cell_id VARCHAR,
            status VARCHAR NOT NULL,
            started_at TIMESTAMP NOT NULL,
            duration_s DOUBLE NOT NULL,
            error_name VARCHAR,
            error_message VARCHAR,
            replayed BOOLEAN NOT NULL DEFAULT FALSE,
            output_truncated BOOLEAN NOT NULL DEFAULT FALSE,
            PRIMARY KEY (run_id, attempt, cell_index)
        );
        """,
    ),
    (
        2,
        # The orchestrator's queue (casare_nb.store.queue). Rows are only ever UPDATEd in
        # non-key columns (older DuckDB releases may report false duplicate keys otherwise).
        # A token name may be reused after a revocation, so the hash is the key.
        """
        CREATE TABLE jobs (
            job_id VARCHAR NOT NULL PRIMARY KEY,
            workflow_path VARCHAR NOT NULL,
            parameters VARCHAR NOT NULL DEFAULT '{}',
            priority VARCHAR NOT NULL,
            environment VARCHAR,
            tags VARCHAR NOT NULL DEFAULT '[]',
            status VARCHAR NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 0,
            max_retries INTEGER NOT NULL DEFAULT 0,
            created_at TIMESTAMP NOT NULL,
            eligible_at TIMESTAMP NOT NULL,
            robot_id VARCHAR,
            assigned_at TIMESTAMP,
            accepted_at TIMESTAMP,
            finished_at TIMESTAMP,
            error_name VARCHAR,
            error_message VARCHAR,
            resume_from_failed BOOLEAN NOT NULL DEFAULT FALSE,
            source VARCHAR NOT NULL DEFAULT 'api',
            cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
        );
        CREATE TABLE tokens (
            token_hash VARCHAR NOT NULL PRIMARY KEY,
            name VARCHAR NOT NULL,
            created_at TIMESTAMP NOT NULL,
            revoked_at TIMESTAMP
        );
        """,
    ),
    (
        3,
        # Failures that count against max_retries, apart from attempts lost with a robot.
        # and the cell an attempt failed at.
        "ALTER TABLE jobs ADD COLUMN failures INTEGER DEFAULT 0;"
        "ALTER TABLE jobs ADD COLUMN failed_cell INTEGER;",
    ),
    (
        4,
        # Schedules and triggers (casare_nb.store.triggers), as data rather than pickles.
        # fires: one row per (schedule, due time) ever claimed, so no due time fires twice,
        # across restarts too. deliveries: webhook deliveries seen (de-duplication, replay
        # refusal). watched_files: files a file-watch trigger has handled. outputs: the
        # values a notebook recorded with casare_nb.output(name, value).
        """
        ALTER TABLE jobs ADD COLUMN trigger VARCHAR;
        CREATE TABLE schedules (
            schedule_id VARCHAR NOT NULL PRIMARY KEY,
            spec VARCHAR NOT NULL,
            paused BOOLEAN NOT NULL DEFAULT FALSE,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE fires (
            schedule_id VARCHAR NOT NULL,
            due_at TIMESTAMP NOT NULL,
            fired_at TIMESTAMP NOT NULL,
            job_id VARCHAR,
            outcome VARCHAR NOT NULL,
            PRIMARY KEY (schedule_id, due_at)
        );
        CREATE TABLE triggers (
            trigger_id VARCHAR NOT NULL PRIMARY KEY,
            kind VARCHAR NOT NULL,
            spec VARCHAR NOT NULL,
            enabled BOOLEAN NOT NULL DEFAULT TRUE,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE deliveries (
            trigger_id VARCHAR NOT NULL,
            delivery_id VARCHAR NOT NULL,
            signature VARCHAR NOT NULL,
            received_at TIMESTAMP NOT NULL,
            job_id VARCHAR,
            PRIMARY KEY (trigger_id, delivery_id)
        );
        CREATE TABLE watched_files (
            trigger_id VARCHAR NOT NULL,
            path VARCHAR NOT NULL,
            seen_at TIMESTAMP NOT NULL,
            job_id VARCHAR,
            PRIMARY KEY (trigger_id, path)
        );
        CREATE TABLE outputs (
            run_id VARCHAR NOT NULL,
            name VARCHAR NOT NULL,
            value VARCHAR NOT NULL,
            attempt INTEGER NOT NULL,
            cell_index INTEGER,
            recorded_at TIMESTAMP NOT NULL,
            PRIMARY KEY (run_id, name)
        );
        """,
    ),
]

SCHEMA_VERSION: Final[int] = MIGRATIONS[-1][0]
"""Schema version this code writes (the last entry of :data:`MIGRATIONS` at import)."""

# Column name -> DuckDB type, in insert/select order. Must cover every model field.
_RUN_COLUMNS: Final[dict[str, str]] = {
    "run_id": "VARCHAR",
    "attempt": "INTEGER",
    "workflow_path": "VARCHAR",
    "notebook_sha256": "VARCHAR",
    "parameters": "VARCHAR",
    "status": "VARCHAR",
    "kernel_name": "VARCHAR",
    "language": "VARCHAR",
    "started_at": "TIMESTAMP",
    "finished_at": "TIMESTAMP",
    "duration_s": "DOUBLE",
    "cells_total": "INTEGER",
    "error_name": "VARCHAR",
    "error_message": "VARCHAR",
    "failed_cell": "INTEGER",
    "failed_cell_id": "VARCHAR",
    "output_path": "VARCHAR",
    "resumed_from_attempt": "INTEGER",
    "restored_from_cell": "INTEGER",
    "replayed_cells": "VARCHAR",
    "restore_mode": "VARCHAR",
    "source": "VARCHAR",
}
_CELL_COLUMNS: Final[dict[str, str]] = {
    "run_id": "VARCHAR",
    "attempt": "INTEGER",
    "cell_index": "INTEGER",
    "cell_id": "VARCHAR",
    "status": "VARCHAR",
    "started_at": "TIMESTAMP",
    "duration_s": "DOUBLE",
    "error_name": "VARCHAR",
    "error_message": "VARCHAR",
    "replayed": "BOOLEAN",
    "output_truncated": "BOOLEAN",
}
_RUN_SELECT: Final[str] = ", ".join(_RUN_COLUMNS)
_CELL_SELECT: Final[str] = ", ".join(_CELL_COLUMNS)

# Files whose migrations this process has already checked/applied: (realpath, dev, inode).
_MIGRATED: set[tuple[str, int, int]] = set()
_MIGRATE_LOCK = threading.Lock()

_MAX_LOCK_WAIT_S: Final[float] = 0.5  # cap of one backoff sleep while the file is locked


class HistoryError(RuntimeError):
    """The history database could not be opened, migrated, read or written."""


def _is_lock_conflict(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def _to_db_time(value: datetime | None) -> datetime | None:
    """Aware -> naive UTC; naive is taken to be UTC already."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def _from_db_time(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def _to_json(value: object) -> str:
    # pydantic's encoder handles datetimes, paths, sets, enums, models...; anything else
    # becomes str(value) rather than failing a background write.
    return pydantic_core.to_json(value, serialize_unknown=True).decode()


def _run_row(run: RunRecord) -> tuple[Any, ...]:
    return (
        run.run_id,
        run.attempt,
        run.workflow_path,
        run.notebook_sha256,
        _to_json(run.parameters),
        run.status.value,
        run.kernel_name,
        run.language,
        _to_db_time(run.started_at),
        _to_db_time(run.finished_at),
        run.duration_s,
        run.cells_total,
        run.error_name,
        run.error_message,
        run.failed_cell,
        run.failed_cell_id,
        run.output_path,
        run.resumed_from_attempt,
        run.restored_from_cell,
        _to_json(run.replayed_cells),
        None if run.restore_mode is None else run.restore_mode.value,
        run.source,
    )


def _cell_row(cell: CellRecord) -> tuple[Any, ...]:
    return (
        cell.run_id,
        cell.attempt,
        cell.cell_index,
        cell.cell_id,
        cell.status.value,
        _to_db_time(cell.started_at),
        cell.duration_s,
        cell.error_name,
        cell.error_message,
        cell.replayed,
        cell.output_truncated,
    )


def _run_from_row(row: Sequence[Any]) -> RunRecord:
    data = dict(zip(_RUN_COLUMNS, row, strict=True))
    data["parameters"] = json.loads(data["parameters"])
    data["replayed_cells"] = json.loads(data["replayed_cells"])
    data["started_at"] = _from_db_time(data["started_at"])
    data["finished_at"] = _from_db_time(data["finished_at"])
    return RunRecord.model_validate(data)


def _cell_from_row(row: Sequence[Any]) -> CellRecord:
    data = dict(zip(_CELL_COLUMNS, row, strict=True))
    data["started_at"] = _from_db_time(data["started_at"])
    return CellRecord.model_validate(data)


def _bulk_upsert(
    con: Connection, table: str, columns: Mapping[str, str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Upsert ``rows`` with one statement: one list parameter per column, zipped by unnest.

    Far faster than ``executemany`` (which runs the statement once per row). The caller
    must pass at most one row per primary key.
    """
    if not rows:
        return
    selects = ", ".join(f"unnest(?::{sql_type}[])" for sql_type in columns.values())
    sql = f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) SELECT {selects}"
    con.execute(sql, [list(column) for column in zip(*rows, strict=True)])


@contextlib.contextmanager
def _transaction(con: Connection) -> Iterator[Connection]:
    con.begin()
    try:
        yield con
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            con.rollback()
        raise
    con.commit()


def _latest_runs(runs: Iterable[RunRecord]) -> list[tuple[Any, ...]]:
    latest = {(run.run_id, run.attempt): run for run in runs}  # last one per key wins
    return [_run_row(run) for run in latest.values()]


def _latest_cells(cells: Iterable[CellRecord]) -> list[tuple[Any, ...]]:
    latest = {(cell.run_id, cell.attempt, cell.cell_index): cell for cell in cells}
    return [_cell_row(cell) for cell in latest.values()]


class HistoryStore:
    """Run and cell history in one DuckDB file; every call uses a short-lived connection.

    Safe to share between threads (each call opens its own connection). Another process
    holding the file makes calls wait up to ``lock_timeout`` seconds, then fail with
    :class:`HistoryError`.
    """

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout

    def __repr__(self) -> str:
        return f"HistoryStore({str(self.path)!r})"

    # -- connections ---------------------------------------------------------------------

    def connect(self) -> contextlib.AbstractContextManager[Connection]:
        """Open a short-lived read-write connection, migrated; closed when the block ends.

        Creates the parent directory, applies missing migrations (once per process per
        file) and retries a lock held by another process for up to ``lock_timeout`` s.
        DuckDB errors raised inside the block come out as :class:`HistoryError`. The
        connection must not be shared between threads.
        """
        return self._connection()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Connection]:
        con = self._open()
        try:
            self._migrate(con)
            yield con
        except duckdb.Error as exc:
            raise HistoryError(f"history database {self.path}: {one_line(exc)}") from exc
        finally:
            with contextlib.suppress(duckdb.Error):
                con.close()

    def _open(self) -> Connection:
        where = f"cannot open history database {self.path}"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = exc.strerror or one_line(exc)
            raise HistoryError(
                f"{where}: cannot create directory {self.path.parent}: {reason}"
            ) from exc

        timeout = max(0.0, self.lock_timeout)
        deadline = time.monotonic() + timeout
        backoff = tenacity.wait_random_exponential(multiplier=0.02, max=_MAX_LOCK_WAIT_S)

        def wait(state: tenacity.RetryCallState) -> float:
            # Never sleep past the deadline: the last attempt happens right at it.
            return max(0.0, min(backoff(state), deadline - time.monotonic()))

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_is_lock_conflict),
            wait=wait,
            stop=tenacity.stop_after_delay(timeout),
            reraise=True,
        )
        try:
            return retrying(duckdb.connect, str(self.path))
        except duckdb.Error as exc:
            if _is_lock_conflict(exc):
                raise HistoryError(
                    f"history database {self.path} is locked by another process "
                    f"(gave up after {timeout:g}s): {one_line(exc)}"
                ) from exc
            message = one_line(exc)
            lowered = message.lower()
            hint = ""
            if "permission" in lowered or "read-only" in lowered or "read only" in lowered:
                hint = " (read-only directory?)"
            raise HistoryError(f"{where}: {message}{hint}") from exc

    def _migrate(self, con: Connection) -> None:
        try:
            stat = os.stat(self.path)
            key = (os.path.realpath(self.path), stat.st_dev, stat.st_ino)
        except OSError:  # unusual (e.g. file replaced under us): just check every time
            key = None
        if key is not None and key in _MIGRATED:
            return
        with _MIGRATE_LOCK:
            if key is not None and key in _MIGRATED:
                return
            self._apply_migrations(con)
            if key is not None:
                _MIGRATED.add(key)

    def _apply_migrations(self, con: Connection) -> None:
        migrations = list(MIGRATIONS)  # read at call time so tests can extend it
        versions = [version for version, _ in migrations]
        if versions != sorted(set(versions)):
            raise HistoryError("MIGRATIONS must have strictly increasing versions")
        known = versions[-1] if versions else 0
        try:
            with _transaction(con):
                con.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version INTEGER PRIMARY KEY, applied_at TIMESTAMP)"
                )
                rows = con.execute("SELECT version FROM schema_migrations").fetchall()
                applied = {int(row[0]) for row in rows}
                newest = max(applied, default=0)
                if newest > known:
                    raise HistoryError(
                        f"history database {self.path} has schema version {newest}, "
                        f"newer than this casare_nb ({known})"
                    )
                for version, script in migrations:
                    if version in applied:
                        continue
                    try:
                        con.execute(script)
                    except duckdb.Error as exc:
                        raise HistoryError(
                            f"history database {self.path}: migration to schema version "
                            f"{version} failed: {one_line(exc)}"
                        ) from exc
                    con.execute(
                        "INSERT INTO schema_migrations VALUES (?, ?)",
                        [version, _to_db_time(datetime.now(UTC))],
                    )
                    log.debug("history %s: applied schema migration %d", self.path, version)
        except duckdb.Error as exc:
            raise HistoryError(
                f"history database {self.path}: cannot apply migrations: {one_line(exc)}"
            ) from exc

    # -- writes --------------------------------------------------------------------------

    def start_run(self, run: RunRecord) -> None:
        """Insert the run, or replace the stored row with the same (run_id, attempt)."""
        self._write_batch([run], [])

    def update_run(self, run: RunRecord) -> None:
        """Replace the full row of (run_id, attempt); inserts it if missing."""
        self._write_batch([run], [])

    def record_cells(self, cells: Sequence[CellRecord]) -> None:
        """Upsert every cell on (run_id, attempt, cell_index) in one transaction.

        When ``cells`` holds the same key more than once, the last one wins.
        """
        if cells:
            self._write_batch([], cells)

    def _write_batch(self, runs: Iterable[RunRecord], cells: Iterable[CellRecord]) -> None:
        with self._connection() as con:
            self._write_with(con, runs, cells)

    def _write_with(
        self, con: Connection, runs: Iterable[RunRecord], cells: Iterable[CellRecord]
    ) -> None:
        """Upsert runs and cells in one transaction on an open connection."""
        run_rows = _latest_runs(runs)
        cell_rows = _latest_cells(cells)
        try:
            with _transaction(con):
                _bulk_upsert(con, "runs", _RUN_COLUMNS, run_rows)
                _bulk_upsert(con, "cells", _CELL_COLUMNS, cell_rows)
        except duckdb.Error as exc:
            raise HistoryError(
                f"cannot write to history database {self.path}: {one_line(exc)}"
            ) from exc

    # -- reads ---------------------------------------------------------------------------
    # Reads of a file that does not exist yet return nothing instead of creating it.

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        with self._connection() as con:
            return con.execute(sql, list(params)).fetchall()

    def get_run(self, run_id: str, attempt: int | None = None) -> RunRecord | None:
        """The given attempt of a run, or its latest attempt when ``attempt`` is None."""
        if attempt is None:
            rows = self._query(
                f"SELECT {_RUN_SELECT} FROM runs WHERE run_id = ? ORDER BY attempt DESC LIMIT 1",
                [run_id],
            )
        else:
            rows = self._query(
                f"SELECT {_RUN_SELECT} FROM runs WHERE run_id = ? AND attempt = ?",
                [run_id, attempt],
            )
        return _run_from_row(rows[0]) if rows else None

    def attempts(self, run_id: str) -> list[RunRecord]:
        """Every attempt of a run, ordered by attempt number."""
        rows = self._query(
            f"SELECT {_RUN_SELECT} FROM runs WHERE run_id = ? ORDER BY attempt", [run_id]
        )
        return [_run_from_row(row) for row in rows]

    def list_runs(
        self, *, status: Collection[RunStatus] | None = None, limit: int = 50
    ) -> list[RunRecord]:
        """The latest attempt of each run, newest ``started_at`` first.

        ``status`` filters on the status of that latest attempt (a run whose retry
        completed is not listed as failed).
        """
        if limit <= 0 or (status is not None and not status):
            return []
        params: list[object] = []
        where = "rn = 1"
        if status is not None:
            values = sorted({RunStatus(s).value for s in status})
            where += f" AND status IN ({', '.join('?' for _ in values)})"
            params.extend(values)
        params.append(limit)
        rows = self._query(
            f"SELECT {_RUN_SELECT} FROM ("
            f"  SELECT *, row_number() OVER (PARTITION BY run_id ORDER BY attempt DESC) AS rn"
            f"  FROM runs"
            f") WHERE {where} ORDER BY started_at DESC, run_id DESC LIMIT ?",
            params,
        )
        return [_run_from_row(row) for row in rows]

    def list_cells(self, run_id: str, attempt: int | None = None) -> list[CellRecord]:
        """Cells of one attempt, or of every attempt when None; ordered (attempt, cell_index)."""
        sql = f"SELECT {_CELL_SELECT} FROM cells WHERE run_id = ?"
        params: list[object] = [run_id]
        if attempt is not None:
            sql += " AND attempt = ?"
            params.append(attempt)
        rows = self._query(sql + " ORDER BY attempt, cell_index", params)
        return [_cell_from_row(row) for row in rows]

    def schema_version(self) -> int:
        """Highest migration applied to the file (creating and migrating it if needed)."""
        with self._connection() as con:
            row = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        return int(row[0]) if row else 0


# Writers still open at interpreter exit get closed (and so flushed) by an atexit hook.
_LIVE_WRITERS: weakref.WeakSet[HistoryWriter] = weakref.WeakSet()
_ATEXIT_TIMEOUT_S: Final[float] = 10.0


class HistoryWriter:
    """Background writer: one daemon thread, queue of pending writes.

    The hot path never waits for DuckDB: ``put_run``/``put_cells`` only snapshot the
    records and enqueue them under a lock that the thread never holds during I/O. The
    thread writes everything pending as one batch (one transaction), keeps its connection
    open while work keeps arriving and closes it after ``idle_close`` seconds without
    work, so other processes can take the file lock.
    A failed batch is dropped, its error kept and re-raised (once) by :meth:`flush` or
    :meth:`close`; later batches are still attempted. Writers left open are closed at
    interpreter exit.
    """

    def __init__(self, store: HistoryStore, *, idle_close: float = 0.2) -> None:
        self.store = store
        self.idle_close = idle_close
        self._cond = threading.Condition()
        self._runs: dict[tuple[str, int], RunRecord] = {}
        self._cells: dict[tuple[str, int, int], CellRecord] = {}
        self._queued = 0  # sequence number of the last put
        self._done = 0  # every put up to this sequence number has been attempted
        self._error: HistoryError | None = None
        self._closed = False  # no more puts; the thread drains the queue and stops
        self._thread: threading.Thread | None = None
        self._thread_exited = False
        self._disconnected = threading.Event()  # set while the thread holds no connection
        self._disconnected.set()

    def __repr__(self) -> str:
        return f"HistoryWriter({self.store!r})"

    def put_run(self, run: RunRecord) -> None:
        """Enqueue a run upsert; the last one put for a (run_id, attempt) wins."""
        snapshot = run.model_copy(deep=True)  # the caller may keep mutating its record
        with self._cond:
            self._check_open()
            self._runs[(snapshot.run_id, snapshot.attempt)] = snapshot
            self._enqueued()

    def put_cells(self, cells: Sequence[CellRecord]) -> None:
        """Enqueue cell upserts; the last one put for a (run_id, attempt, cell_index) wins."""
        if not cells:
            return
        snapshots = [cell.model_copy() for cell in cells]  # fields are immutable values
        with self._cond:
            self._check_open()
            for cell in snapshots:
                self._cells[(cell.run_id, cell.attempt, cell.cell_index)] = cell
            self._enqueued()

    def mark(self) -> int:
        """A mark for everything put so far (see :meth:`reached` and :meth:`wait_mark`)."""
        with self._cond:
            return self._queued

    def reached(self, mark: int) -> bool:
        """Everything put before ``mark`` was written (or the writer stopped)."""
        with self._cond:
            return self._done >= mark or self._thread_exited

    def wait_mark(self, mark: int, timeout: float | None = None) -> bool:
        """Block until :meth:`reached` (True) or ``timeout`` seconds passed (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= mark or self._thread_exited, timeout)

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything put so far is written; raise the first error hit since.

        Raises :class:`HistoryError` if the thread failed a write (the error is then
        cleared) or if the writes did not finish within ``timeout`` seconds.
        """
        with self._cond:
            target = self._queued
            finished = self._cond.wait_for(
                lambda: self._done >= target or self._thread_exited, timeout
            )
            stuck = self._done < target
        self._raise_error()
        if not finished:
            raise HistoryError(
                f"history writer for {self.store.path} did not finish within {timeout:g}s"
            )
        if stuck:
            raise HistoryError(f"history writer for {self.store.path} stopped unexpectedly")

    def close(self, timeout: float | None = None) -> None:
        """Write everything pending, stop the thread and release the file; idempotent.

        Raises like :meth:`flush`; further puts raise :class:`HistoryError`.
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        _LIVE_WRITERS.discard(self)
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                self._raise_error()
                raise HistoryError(
                    f"history writer for {self.store.path} did not stop within {timeout:g}s"
                )
        self._raise_error()

    def __enter__(self) -> HistoryWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise HistoryError(f"history writer for {self.store.path} is closed")

    def _enqueued(self) -> None:
        """Bump the sequence, start the thread if needed, wake it. Caller holds the lock."""
        self._queued += 1
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._loop, name=f"casare-history-{self.store.path.name}", daemon=True
            )
            self._thread.start()
            _LIVE_WRITERS.add(self)
        self._cond.notify_all()

    def _raise_error(self) -> None:
        with self._cond:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _has_work_or_closed(self) -> bool:
        return bool(self._runs or self._cells or self._closed)

    def _loop(self) -> None:
        connection: contextlib.ExitStack | None = None
        con: Connection | None = None

        def disconnect() -> None:
            nonlocal connection, con
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.close()
            connection, con = None, None
            self._disconnected.set()

        try:
            while True:
                with self._cond:
                    if con is None:
                        self._cond.wait_for(self._has_work_or_closed)
                    else:
                        self._cond.wait_for(self._has_work_or_closed, self.idle_close)
                    runs, self._runs = self._runs, {}
                    cells, self._cells = self._cells, {}
                    sequence = self._queued
                    closed = self._closed
                if not runs and not cells:  # idle for idle_close, or closed and drained
                    disconnect()
                    if closed:
                        return
                    continue
                try:
                    if con is None:
                        self._disconnected.clear()
                        connection = contextlib.ExitStack()
                        con = connection.enter_context(self.store.connect())
                    self.store._write_with(con, runs.values(), cells.values())
                except Exception as exc:
                    disconnect()  # the connection may be unusable; reopen for the next batch
                    self._keep_error(exc)
                finally:
                    with self._cond:
                        self._done = sequence
                        self._cond.notify_all()
        except BaseException as exc:  # a bug: don't leave flush() waiting forever
            self._keep_error(exc)
            raise
        finally:
            disconnect()
            with self._cond:
                self._thread_exited = True
                self._cond.notify_all()

    def _keep_error(self, exc: BaseException) -> None:
        error = (
            exc
            if isinstance(exc, HistoryError)
            else HistoryError(f"history writer for {self.store.path} failed: {one_line(exc)}")
        )
        if error is not exc:
            error.__cause__ = exc
        log.debug("history writer for %s: %s", self.store.path, error)
        with self._cond:
            if self._error is None:
                self._error = error


def _close_writers_at_exit() -> None:
    for writer in list(_LIVE_WRITERS):
        try:
            writer.close(timeout=_ATEXIT_TIMEOUT_S)
        except HistoryError as exc:
            log.warning("%s", exc)


atexit.register(_close_writers_at_exit)
