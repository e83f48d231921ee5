"""A state directory's DuckDB file: connections, migrations, and the storage conventions.

The one module of casare_nb that imports :mod:`duckdb`. DuckDB lets one process at a time
hold a file read-write (see "One writer" in the design), so:

- :meth:`Database.connect` opens a short-lived connection, migrated, retrying a lock held by
  another process with backoff for up to ``lock_timeout`` seconds (the local runner's
  history, whose writer lets go of the file when idle);
- :meth:`Database.shared` is ONE long-lived connection, opened on first use and kept until
  :meth:`Database.close`, used by one thread at a time (a lock): the orchestrator's stores
  (jobs, tokens, schedules and triggers) share it.

The storage conventions and the SQL the stores write are those of :mod:`casare_nb.store.sql`
(its helpers are re-exported here).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TypeAlias

import duckdb
import tenacity

from casare_nb.core.errors import QueueError, one_line
from casare_nb.notebook.state import private_dir
from casare_nb.store import schema
from casare_nb.store.sql import (
    DUCKDB,
    HistoryError,
    apply_migrations,
    bulk_upsert,
    columns,
    from_db_time,
    to_db_time,
    to_json,
    transaction,
)

__all__ = [
    "Connection",
    "ConstraintError",
    "Database",
    "DatabaseError",
    "HistoryError",
    "bulk_upsert",
    "columns",
    "from_db_time",
    "to_db_time",
    "to_json",
    "transaction",
]

log = logging.getLogger(__name__)

Connection: TypeAlias = duckdb.DuckDBPyConnection
DatabaseError: TypeAlias = duckdb.Error
ConstraintError: TypeAlias = duckdb.ConstraintException

_MAX_LOCK_WAIT_S: Final[float] = 0.5  # cap of one backoff sleep while the file is locked

# Files whose migrations this process has already checked/applied: (realpath, dev, inode).
_MIGRATED: set[tuple[str, int, int]] = set()
_MIGRATE_LOCK = threading.Lock()


def _is_lock_conflict(exc: BaseException) -> bool:
    return isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower()


def _owner_only(path: Path) -> None:
    """The database file (and its WAL) readable by its owner only, if ours."""
    for file in (path, path.with_name(path.name + ".wal")):
        with contextlib.suppress(OSError):
            info = file.stat()
            if info.st_uid == os.getuid() and info.st_mode & 0o077:
                file.chmod(0o600)


class Database:
    """One DuckDB file; see the module docstring for its two kinds of connection. A
    :class:`~casare_nb.store.sql.SqlDatabase`."""

    dialect = DUCKDB
    error: type[Exception] = duckdb.Error
    constraint_error: type[Exception] = duckdb.ConstraintException

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self.label = self.path.name
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self.lock_timeout = lock_timeout
        self._lock = threading.RLock()
        self._owner: int | None = None  # the thread holding the shared connection
        self._shared: Connection | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"Database({str(self.path)!r})"

    # -- short-lived connections ---------------------------------------------------------

    @contextlib.contextmanager
    def connect(self) -> Iterator[Connection]:
        """A short-lived read-write connection, migrated; closed when the block ends.

        Creates the parent directory, applies missing migrations (once per process per file)
        and retries a lock held by another process for up to ``lock_timeout`` s. DuckDB
        errors raised inside the block come out as :class:`HistoryError`. Not to be shared
        between threads."""
        con = self._open()
        try:
            self._migrate(con)
            yield con
        except duckdb.Error as exc:
            raise HistoryError(f"history database {self.path}: {one_line(exc)}") from exc
        finally:
            with contextlib.suppress(duckdb.Error):
                con.close()

    @contextlib.contextmanager
    def unmigrated(self) -> Iterator[Connection]:
        """A short-lived connection to the file as it is, no migration applied (to load an
        export into a new file); DuckDB errors come out as :class:`HistoryError`."""
        con = self._open()
        try:
            yield con
        except duckdb.Error as exc:
            raise HistoryError(f"history database {self.path}: {one_line(exc)}") from exc
        finally:
            with contextlib.suppress(duckdb.Error):
                con.close()

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query on a short-lived connection; none if the file does not exist
        (a read never creates it)."""
        if not self.path.exists():
            return []
        with self.connect() as con:
            return con.execute(sql, list(params)).fetchall()

    def _open(self) -> Connection:
        where = f"cannot open history database {self.path}"
        try:
            private_dir(self.path.parent)
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
            con = retrying(duckdb.connect, str(self.path))
            _owner_only(self.path)
            return con
        except duckdb.Error as exc:
            if _is_lock_conflict(exc):
                raise HistoryError(
                    f"history database {self.path} is locked by another process (another "
                    "orchestrator, or a casare-nb run, on the same state directory; gave up "
                    f"after {timeout:g}s): {one_line(exc)}"
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
        where = f"history database {self.path}"
        for version in apply_migrations(
            con, list(schema.MIGRATIONS), where, engine_error=duckdb.Error
        ):  # read at call time so tests can extend MIGRATIONS
            log.debug("%s: applied schema migration %d", where, version)

    def schema_version(self) -> int:
        """Highest migration applied to the file (creating and migrating it if needed)."""
        with self.connect() as con:
            row = con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        return int(row[0]) if row else 0

    # -- the shared connection -----------------------------------------------------------

    @contextlib.contextmanager
    def shared(self) -> Iterator[Connection]:
        """The long-lived connection, held exclusively by this thread for the block (opened
        on first use). DuckDB errors raised in the block come out as
        :class:`~casare_nb.core.errors.QueueError`."""
        with self._lock:
            con = self._shared_connection()
            outer, self._owner = self._owner, threading.get_ident()
            try:
                yield con
            except duckdb.Error as exc:
                if isinstance(exc, duckdb.FatalException):
                    self._drop_shared()  # the database is invalidated: reopen next time
                raise QueueError(f"queue database {self.path}: {one_line(exc)}") from exc
            finally:
                self._owner = outer

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """The shared connection inside one transaction, committed when the block ends."""
        with self.shared() as con, transaction(con):
            yield con

    def select(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query on the shared connection."""
        with self.shared() as con:
            return con.execute(sql, list(params)).fetchall()

    def holds_shared(self) -> bool:
        """Whether this thread is inside :meth:`shared` now."""
        return self._owner == threading.get_ident()

    def _shared_connection(self) -> Connection:
        if self._closed:
            raise QueueError(f"queue store for {self.path} is closed")
        if self._shared is None:
            try:
                con = self._open()
                try:
                    self._migrate(con)
                except BaseException:
                    con.close()
                    raise
            except HistoryError as exc:
                raise QueueError(str(exc)) from exc
            except duckdb.Error as exc:
                raise QueueError(f"history database {self.path}: {one_line(exc)}") from exc
            self._shared = con
            if self._identity is None:
                with contextlib.suppress(OSError):
                    stat = os.stat(self.path)
                    self._identity = (stat.st_dev, stat.st_ino)
        return self._shared

    def gone(self) -> str | None:
        """Why the file the shared connection opened is no longer where it was (the state
        directory deleted or replaced), else None: writes would go into nothing. Cheap (a
        ``stat``); None before the shared connection first opened."""
        if self._identity is None:
            return None
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return f"state directory gone: {self.path} no longer exists"
        except OSError as exc:
            return f"state directory unusable: {self.path}: {exc.strerror or exc}"
        if (stat.st_dev, stat.st_ino) != self._identity:
            return f"state directory gone: {self.path} was replaced"
        return None

    def _drop_shared(self) -> None:
        con, self._shared = self._shared, None
        if con is not None:
            with contextlib.suppress(Exception):
                con.close()

    def close(self) -> None:
        """Close the shared connection (releasing the file); later uses of it raise."""
        with self._lock:
            self._closed = True
            self._drop_shared()
