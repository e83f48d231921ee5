"""PostgreSQL: the orchestrator's records in a database several orchestrators can share.

The one module of casare_nb that imports :mod:`psycopg` (the ``postgres`` extra). The stores
are the same classes as the embedded default's (:mod:`casare_nb.store.sql` says the SQL they
write); :class:`PgDatabase` gives them PostgreSQL connections:

- a pool (:mod:`psycopg_pool`) of autocommit connections, each lent to one thread for a block
  (``shared``, ``connect``); transactions are begun by hand (``transaction``), so a
  connection is never left idle in one;
- statements are translated once each (cached): ``?`` -> ``%s``, ``$name`` -> ``%(name)s``;
- a connection broken under a block (the server restarted, the network blipped) raises a
  one-line QueueError for that call and is dropped by the pool, which connects again: the
  orchestrator's writers retry until the server is back, nothing is lost;
- migrations are those of the embedded file (:mod:`casare_nb.store.schema`, its SQL is
  portable), applied under an advisory lock so orchestrators starting together apply each
  once.

Checkpoint files (manifests, blobs, notebooks so far) are not in PostgreSQL: they stay files
behind :class:`~casare_nb.store.checkpoints.FileCheckpointStore`, in a state directory every
orchestrator mounts (docs/scale-out.md says why).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg.errors
import psycopg.sql
import psycopg_pool

from casare_nb.core.errors import QueueError, StateError, one_line
from casare_nb.notebook.state import StateDir
from casare_nb.store import schema
from casare_nb.store.embedded import sql_stores
from casare_nb.store.interfaces import JobStore, Stores
from casare_nb.store.jobs import COMMIT_INTERVAL_S
from casare_nb.store.shared import PgSharedJobs
from casare_nb.store.sql import (
    POSTGRES,
    HistoryError,
    apply_migrations,
    transaction,
)
from casare_nb.store.upkeep import SqlUpkeep

__all__ = ["PgDatabase", "PgLeadership", "PgUpkeep", "open_postgres", "redacted"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S: Final[float] = 5.0
"""How long a start waits for the server before it says it cannot reach it."""
POOL_SIZE: Final[int] = 8
_MIGRATION_LOCK: Final[int] = 0x6361_7361_7265  # pg_advisory_xact_lock key: "casare"
_LEADER_LOCK: Final[int] = 0x6361_7361_7266  # pg_advisory_lock key of the active orchestrator
LEADER_POLL_S: Final[float] = 0.25
"""How often a standby orchestrator asks for the lock (its takeover latency)."""
OUTAGE_GRACE_S: Final[float] = 2.0
"""How long a standby leaves the lock to the active orchestrator after the server was out of
its reach (a server restart drops every connection: the active one takes its lock back)."""
_TOKEN = re.compile(r"'(?:[^']|'')*'|\?|\$([A-Za-z_][A-Za-z0-9_]*)|%")


def redacted(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host}"))


@functools.lru_cache(maxsize=1024)
def _pg_sql(sql: str) -> str:
    """The stores' SQL with psycopg's placeholders: ``?`` -> ``%s``, ``$name`` ->
    ``%(name)s``, a literal ``%`` doubled; quoted literals left as they are."""

    def swap(match: re.Match[str]) -> str:
        text = match.group(0)
        if text == "?":
            return "%s"
        if text == "%":
            return "%%"
        if match.group(1):
            return f"%({match.group(1)})s"
        return text

    return _TOKEN.sub(swap, sql)


class _Result:
    """A statement's rows; a statement without rows answers ``fetchone()`` with its row
    count, as DuckDB does."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    def fetchone(self) -> Any:
        if self._cursor.description is None:
            return (self._cursor.rowcount,)
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        if self._cursor.description is None:
            return []
        return self._cursor.fetchall()


class PgConnection:
    """A pooled connection, as the stores use it (:class:`~casare_nb.store.sql.Connection`).

    Every orchestrator of a shared database writes (its own job rows: see
    :mod:`casare_nb.store.shared`), so writes are not fenced by the leadership: what only the
    leader does is guarded by its own claims (a due time's ``fires`` row, a file's
    ``watched_files`` row, a dead node's jobs taken ``WHERE owner = DEAD``)."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: object = None) -> _Result:
        params: Any = parameters
        return _Result(self.raw.execute(_pg_sql(sql), params))  # type: ignore[call-overload]

    def begin(self) -> None:
        self.raw.execute("BEGIN")

    def commit(self) -> None:
        self.raw.execute("COMMIT")

    def rollback(self) -> None:
        self.raw.execute("ROLLBACK")


class PgListening:
    """A connection of its own (not pooled, autocommit): ``LISTEN`` and session locks."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[object] = ()) -> _Result:
        return _Result(self.raw.execute(_pg_sql(sql), list(params)))

    def notifies(
        self, *, timeout: float | None = None, stop_after: int | None = None
    ) -> Iterator[psycopg.Notify]:
        return self.raw.notifies(timeout=timeout, stop_after=stop_after)

    def close(self) -> None:
        self.raw.close()


def _reach(url: str, timeout: float) -> None:
    """Connect once, now: a one-line QueueError if the server cannot be reached."""
    try:
        with psycopg.connect(url, connect_timeout=max(1, round(timeout))):
            pass
    except psycopg.Error as exc:
        raise QueueError(f"cannot reach PostgreSQL at {redacted(url)}: {one_line(exc)}") from exc


class PgDatabase:
    """One PostgreSQL database (a :class:`~casare_nb.store.sql.SqlDatabase`); nothing is
    connected until first used."""

    dialect = POSTGRES
    error: type[Exception] = psycopg.Error
    constraint_error: type[Exception] = psycopg.errors.UniqueViolation

    def __init__(
        self, url: str, *, pool_size: int = POOL_SIZE, connect_timeout: float = CONNECT_TIMEOUT_S
    ) -> None:
        self.url = url
        self.where = redacted(url)
        self.label = "pg-" + (urlsplit(url).path.lstrip("/") or "postgres")
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._closed = False
        self._holders: dict[int, int] = {}  # thread id -> depth inside shared()

    def __repr__(self) -> str:
        return f"PgDatabase({self.where!r})"

    # -- the pool ------------------------------------------------------------------------

    def _ready_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        with self._lock:
            if self._closed:
                raise QueueError(f"queue store for {self.where} is closed")
            if self._pool is not None:
                return self._pool
            _reach(self.url, self.connect_timeout)
            pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                kwargs={"autocommit": True, "connect_timeout": round(self.connect_timeout)},
                timeout=self.connect_timeout,
                name=self.label,
                open=False,
                # a connection the server dropped (a restart) is replaced when lent, not
                # found broken by the statement: one empty round trip
                check=psycopg_pool.ConnectionPool.check_connection,
            )
            try:
                pool.open(wait=True, timeout=self.connect_timeout)
                with pool.connection() as raw:
                    self._migrate(PgConnection(raw))
            except BaseException:
                pool.close()
                raise
            self._pool = pool
            return pool

    @contextlib.contextmanager
    def _lent(self, error: type[Exception]) -> Iterator[PgConnection]:
        try:
            pool = self._ready_pool()
            with pool.connection() as raw:
                yield PgConnection(raw)
        except psycopg_pool.PoolTimeout as exc:
            raise error(f"database {self.where}: no connection within {exc}") from exc
        except psycopg.Error as exc:
            raise error(f"database {self.where}: {one_line(exc)}") from exc

    def _migrate(self, con: PgConnection) -> None:
        """The embedded file's migrations (their SQL is portable), one orchestrator at a
        time: under a transaction-level advisory lock."""
        for version in apply_migrations(
            con,
            list(schema.MIGRATIONS),
            f"database {self.where}",
            engine_error=psycopg.Error,
            run_script=lambda script: con.raw.execute(script.encode()),  # several statements
            first=f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})",
        ):
            log.info("%s: applied schema migration %d", self.where, version)

    def dedicated(self) -> PgListening:
        """A connection of its own, not pooled (the listener's); QueueError if the server
        cannot be reached."""
        self._ready_pool()  # migrated, and reachable
        try:
            raw = psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout))
            )
        except psycopg.Error as exc:
            raise QueueError(f"database {self.where}: {one_line(exc)}") from exc
        return PgListening(raw)

    # -- SqlDatabase ---------------------------------------------------------------------

    @contextlib.contextmanager
    def connect(self) -> Iterator[PgConnection]:
        """A pooled connection for the block; errors come out as HistoryError."""
        try:
            with self._lent(HistoryError) as con:
                yield con
        except QueueError as exc:
            raise HistoryError(str(exc)) from exc

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self.connect() as con:
            return list(con.execute(sql, list(params)).fetchall())

    @contextlib.contextmanager
    def shared(self) -> Iterator[PgConnection]:
        """A pooled connection for the block; errors come out as QueueError."""
        me = threading.get_ident()
        with self._lent(QueueError) as con:
            self._holders[me] = self._holders.get(me, 0) + 1
            try:
                yield con
            finally:
                depth = self._holders.pop(me) - 1
                if depth:
                    self._holders[me] = depth

    @contextlib.contextmanager
    def write(self) -> Iterator[PgConnection]:
        with self.shared() as con, transaction(con):
            yield con

    def select(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self.shared() as con:
            return list(con.execute(sql, list(params)).fetchall())

    def holds_shared(self) -> bool:
        return threading.get_ident() in self._holders

    def gone(self) -> str | None:
        return None  # the server keeps the rows; a lost connection is retried, not gone

    def schema_version(self) -> int:
        rows = self.select("SELECT coalesce(max(version), 0) FROM schema_migrations")
        return int(rows[0][0]) if rows else 0

    def load(self, tables: Iterable[tuple[str, Sequence[str], Iterable[Sequence[Any]]]]) -> int:
        """Copy rows into empty tables (``COPY ... FROM STDIN``), all in one transaction:
        ``(table, columns, rows)`` each; the rows copied. A table that already has rows
        raises QueueError and nothing is kept."""
        total = 0
        with self.write() as con:
            for table, names, rows in tables:
                if con.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():
                    raise QueueError(
                        f"database {self.where}: table {table} already has rows; export into "
                        "a new database"
                    )
                query = psycopg.sql.SQL("COPY {} ({}) FROM STDIN").format(
                    psycopg.sql.Identifier(table),
                    psycopg.sql.SQL(", ").join(map(psycopg.sql.Identifier, names)),
                )
                with con.raw.cursor().copy(query) as copy:
                    for row in rows:
                        copy.write_row(row)
                        total += 1
        return total

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()


class PgLeadership:
    """The active orchestrator of the database (a
    :class:`~casare_nb.store.interfaces.Leadership`): the holder of a session advisory lock,
    on a connection of its own (not pooled: the lock lives as long as that connection). Each
    change of hands is a row of ``leaders`` (its epoch), written under the lock."""

    def __init__(self, url: str, *, poll_s: float = LEADER_POLL_S) -> None:
        self.url = url
        self.where = redacted(url)
        self.poll_s = poll_s
        self.epoch: int | None = None
        self._con: psycopg.Connection[Any] | None = None
        self._previous_stopped = True
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PgLeadership({self.where!r}, epoch={self.epoch})"

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, autocommit=True, connect_timeout=round(CONNECT_TIMEOUT_S))

    def _try(self, con: psycopg.Connection[Any]) -> bool:
        row = con.execute("SELECT pg_try_advisory_lock(%s)", [_LEADER_LOCK]).fetchone()
        return bool(row and row[0])

    def _holder(self, con: psycopg.Connection[Any]) -> str:
        row = con.execute(
            "SELECT node_id, host, pid, started_at FROM leaders "
            "WHERE stopped_at IS NULL ORDER BY epoch DESC LIMIT 1"
        ).fetchone()
        if row is None:
            return "another orchestrator"
        node, host, pid, since = row
        return f"node {node} on {host} (pid {pid}, active since {since:%Y-%m-%d %H:%M:%S} UTC)"

    def acquire(
        self, node_id: str, stop: Callable[[], bool], waiting: Callable[[str], None]
    ) -> int:
        """See :meth:`~casare_nb.store.interfaces.Leadership.acquire`. A server that cannot be
        reached at the first try is a QueueError; later (a standby waiting through a server
        restart) it is waited for."""
        told = reached = out = False
        hold_until = 0.0
        while True:
            if stop():
                raise QueueError(f"gave up waiting to be the active orchestrator of {self.where}")
            try:
                con = self._connect()
            except psycopg.Error as exc:
                if not reached:
                    raise QueueError(
                        f"cannot reach PostgreSQL at {self.where}: {one_line(exc)}"
                    ) from exc
                if not out:
                    log.warning("%s: cannot reach it (waiting): %s", self.where, one_line(exc))
                out = True
            else:
                reached = True
                if out:  # the server is back: its active orchestrator retakes the lock first
                    hold_until, out = time.monotonic() + OUTAGE_GRACE_S, False
                try:
                    if time.monotonic() >= hold_until and self._try(con):
                        epoch = self._take(con, node_id)
                        with self._lock:
                            self._con, self.epoch = con, epoch
                        return epoch
                    if not told:
                        waiting(self._holder(con))
                        told = True
                except psycopg.Error as exc:
                    log.warning("%s: %s (waiting)", self.where, one_line(exc))
                con.close()
            deadline = time.monotonic() + self.poll_s
            while time.monotonic() < deadline and not stop():
                time.sleep(min(0.05, self.poll_s))

    def _take(self, con: psycopg.Connection[Any], node_id: str) -> int:
        """Record this process as the leader (under the lock); its epoch."""
        with con.transaction():
            last = con.execute(
                "SELECT epoch, stopped_at FROM leaders ORDER BY epoch DESC LIMIT 1"
            ).fetchone()
            self._previous_stopped = last is None or last[1] is not None
            epoch = 1 if last is None else int(last[0]) + 1
            con.execute(
                "INSERT INTO leaders (epoch, node_id, host, pid, started_at) "
                "VALUES (%s, %s, %s, %s, %s)",
                [epoch, node_id, socket.gethostname(), os.getpid(), _utc_now()],
            )
        return epoch

    def check(self) -> str | None:
        """None while this process holds the lock; ``"unreachable: ..."`` while the server
        cannot be reached (nobody can take over through it meanwhile; the lock is taken
        again once it answers); any other text: another orchestrator took over."""
        with self._lock:
            con, epoch = self._con, self.epoch
        if epoch is None:
            return "not the active orchestrator"
        if con is not None:
            try:
                con.execute("SELECT 1")
                return None
            except psycopg.Error as exc:
                log.warning("%s: lost the leader's connection (%s)", self.where, one_line(exc))
                with contextlib.suppress(psycopg.Error):
                    con.close()
                with self._lock:
                    self._con = None
        again: psycopg.Connection[Any] | None
        try:  # the lock went with the connection: take it again unless another did
            again = self._connect()
        except psycopg.Error as exc:
            return f"unreachable: {one_line(exc)}"
        try:
            assert again is not None
            if self._try(again):
                row = again.execute("SELECT max(epoch) FROM leaders").fetchone()
                newest = None if row is None else row[0]
                if newest == epoch:
                    with self._lock:
                        self._con, again = again, None
                    log.warning("%s: reconnected, still the active orchestrator", self.where)
                    return None
                return f"another orchestrator took over {self.where} (epoch {newest})"
            return f"{self._holder(again)} took over {self.where}"
        except psycopg.Error as exc:
            return f"unreachable: {one_line(exc)}"
        finally:
            if again is not None:
                again.close()

    def previous_stopped(self) -> bool:
        return self._previous_stopped

    def release(self) -> None:
        with self._lock:
            con, epoch, self._con = self._con, self.epoch, None
        if con is None:
            return
        try:
            con.execute("UPDATE leaders SET stopped_at = %s WHERE epoch = %s", [_utc_now(), epoch])
        except psycopg.Error as exc:
            log.warning("%s: cannot record the clean stop: %s", self.where, one_line(exc))
        finally:
            con.close()  # the lock goes with the connection


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class PgUpkeep(SqlUpkeep):
    """Retention as the embedded default's; the export is every table as CSV (``COPY``)
    from one snapshot (a repeatable-read transaction)."""

    db: PgDatabase

    def __init__(self, db: PgDatabase, jobs: JobStore | None = None) -> None:
        super().__init__(db, jobs)

    def export(self, folder: Path) -> dict[str, int]:
        """Every table of the schema into ``folder`` (new) as ``TABLE.csv`` with a header,
        from one snapshot; the rows of each."""
        if folder.exists() and any(os.scandir(folder)):
            raise StateError(f"cannot export into {folder}: it is not empty")
        self._settle()
        folder.mkdir(parents=True, exist_ok=True)
        counts: dict[str, int] = {}
        with self.db.shared() as con:
            con.raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                tables = con.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' "
                    "ORDER BY table_name"
                ).fetchall()
                for (name,) in tables:
                    counts[name] = _copy_out(con.raw, name, folder / f"{name}.csv")
            finally:
                con.raw.execute("ROLLBACK")
        return counts


def _copy_out(raw: psycopg.Connection[Any], table: str, path: Path) -> int:
    """``COPY table TO STDOUT`` as CSV into ``path``; the rows written."""
    quoted = psycopg.sql.Identifier(table)
    query = psycopg.sql.SQL("COPY {} TO STDOUT (FORMAT csv, HEADER)").format(quoted)
    with path.open("wb") as out, raw.cursor().copy(query) as copy:
        for data in copy:
            out.write(data)
    with path.open(newline="", encoding="utf-8") as back:
        return max(0, sum(1 for _ in csv.reader(back)) - 1)


def open_postgres(
    url: str,
    state_dir: str | os.PathLike[str],
    *,
    commit_interval_s: float = COMMIT_INTERVAL_S,
    pool_size: int = POOL_SIZE,
) -> Stores:
    """The stores of the database ``url``, checkpoint files in ``state_dir`` (the directory
    every orchestrator of the database mounts); nothing is connected until first used."""
    db = PgDatabase(url, pool_size=pool_size)
    return sql_stores(
        db,
        StateDir(state_dir),
        upkeep=lambda jobs: PgUpkeep(db, jobs),
        where=db.where,
        commit_interval_s=commit_interval_s,
        leadership=PgLeadership(url),
        shared=lambda jobs: PgSharedJobs(db, jobs, db.dedicated),
    )
