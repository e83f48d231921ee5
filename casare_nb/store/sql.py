"""What the SQL stores need of a database, whichever it is: DuckDB (the embedded default,
:mod:`casare_nb.store.database`) or PostgreSQL (several orchestrators,
:mod:`casare_nb.store.postgres`).

The stores (jobs, history, tokens, triggers, outputs, retention) are written once, against
:class:`SqlDatabase`, in the SQL both engines speak: ``?`` placeholders (``$name`` for named
ones), ``INSERT ... ON CONFLICT``, ``unnest(?::TYPE[])`` for many rows in one statement,
``percentile_cont(ARRAY[...]) WITHIN GROUP``, ``FILTER``, window functions. Where the two
differ (an aggregate PostgreSQL lacks), :class:`Dialect` says how each spells it. A
statement's result answers ``fetchone``/``fetchall``; a statement that returns no rows
answers ``fetchone()`` with its row count, as DuckDB does.

Storage conventions: timestamps are ``TIMESTAMP`` columns holding naive UTC (aware values are
converted; naive values are taken as UTC) and come back as aware UTC datetimes
(:func:`to_db_time`, :func:`from_db_time`); lists, dicts and models are JSON text
(:func:`to_json`); enums are stored as their values. Many rows go in one statement, one list
parameter per column zipped by ``unnest`` (:func:`columns`): far faster than ``executemany``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, overload

import pydantic_core

from casare_nb.core.errors import StateError, one_line
from casare_nb.core.text import storable, unicode_problem

__all__ = [
    "DUCKDB",
    "POSTGRES",
    "Connection",
    "Dialect",
    "HistoryError",
    "Result",
    "SqlDatabase",
    "apply_migrations",
    "bulk_upsert",
    "columns",
    "from_db_time",
    "to_db_time",
    "to_json",
    "transaction",
]


class HistoryError(StateError, RuntimeError):
    """The database could not be opened, migrated, read or written (a one-line user error
    of the state directory or of the database server, e.g. held by another process)."""


@dataclass(frozen=True)
class Dialect:
    """How one engine spells what the other spells differently."""

    name: str
    arg_max: str
    """A format of the aggregate "``{value}`` of the row with the largest ``{key}``"."""

    def argmax(self, value: str, key: str) -> str:
        return self.arg_max.format(value=value, key=key)


DUCKDB = Dialect("duckdb", arg_max="arg_max({value}, {key})")
POSTGRES = Dialect("postgresql", arg_max="(array_agg({value} ORDER BY {key} DESC))[1]")


class Result(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """One connection, held by one thread: statements, and transactions by hand."""

    def execute(self, sql: str, parameters: object = None) -> Result: ...

    def begin(self) -> object: ...

    def commit(self) -> object: ...

    def rollback(self) -> object: ...


class SqlDatabase(Protocol):
    """A database the SQL stores keep their rows in; errors come out as one-line
    :class:`~casare_nb.core.errors.QueueError` (``shared``/``write``/``select``) or
    :class:`HistoryError` (``connect``/``query``)."""

    dialect: Dialect
    where: str
    """Where the rows are, for messages (a file, or a URL without its password)."""
    label: str
    """A short name of it (threads are named after it)."""
    error: type[Exception]
    """What the engine's statements raise (the base class)."""
    constraint_error: type[Exception]
    """What a statement raises on a taken primary key."""

    def connect(self) -> contextlib.AbstractContextManager[Connection]:
        """A connection for a block (short-lived, migrated)."""
        ...

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query (none if nothing was ever stored here)."""
        ...

    def shared(self) -> contextlib.AbstractContextManager[Connection]:
        """The connection the orchestrator's stores share, held by this thread for the block."""
        ...

    def write(self) -> contextlib.AbstractContextManager[Connection]:
        """:meth:`shared` inside one transaction, committed when the block ends."""
        ...

    def select(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query on :meth:`shared`."""
        ...

    def holds_shared(self) -> bool:
        """Whether this thread is inside :meth:`shared` now."""
        ...

    def gone(self) -> str | None:
        """Why what was written so far is no longer where it was (a state directory deleted
        or replaced), else None; cheap."""
        ...

    def schema_version(self) -> int: ...

    def close(self) -> None: ...


def to_db_time(value: datetime | None) -> datetime | None:
    """Aware -> naive UTC; naive is taken to be UTC already."""
    if value is None or value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


@overload
def from_db_time(value: datetime) -> datetime: ...
@overload
def from_db_time(value: None) -> None: ...
def from_db_time(value: datetime | None) -> datetime | None:
    """A stored (naive UTC) timestamp as an aware UTC datetime."""
    return None if value is None else value.replace(tzinfo=UTC)


def to_json(value: object) -> str:
    """JSON text of ``value``: pydantic's encoder handles datetimes, paths, sets, enums,
    models...; anything else becomes ``str(value)`` rather than failing a background write;
    a lone surrogate in a string becomes its escape (:func:`~casare_nb.core.text.storable`)."""
    try:
        return pydantic_core.to_json(value, serialize_unknown=True).decode()
    except pydantic_core.PydanticSerializationError:
        if unicode_problem(value) is None:
            raise
        return pydantic_core.to_json(_storable(value), serialize_unknown=True).decode()


def _storable(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


def columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows -> one list per column (the parameters of an ``unnest`` statement); text that
    is not valid Unicode is stored escaped, so one row can never poison a batch."""
    return [
        [storable(v) if isinstance(v, str) else v for v in column]
        for column in zip(*rows, strict=True)
    ]


def bulk_upsert(
    con: Connection,
    table: str,
    types: Mapping[str, str],
    key: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """Upsert ``rows`` (one per primary key ``key`` at most) into ``table`` with one
    statement; ``types`` maps each column, in row order, to its SQL type."""
    if not rows:
        return
    selects = ", ".join(f"unnest(?::{sql_type}[])" for sql_type in types.values())
    changed = ", ".join(f"{name} = excluded.{name}" for name in types if name not in key)
    sql = (
        f"INSERT INTO {table} ({', '.join(types)}) SELECT {selects} "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {changed}"
    )
    con.execute(sql, columns(rows))


def apply_migrations(
    con: Connection,
    migrations: Sequence[tuple[int, str]],
    where: str,
    *,
    engine_error: type[Exception],
    run_script: Callable[[str], object] | None = None,
    first: str | None = None,
) -> list[int]:
    """Apply the ``migrations`` (ordered ``(version, script)``) that ``schema_migrations``
    does not list, each with its row, all in one transaction (``first``: a statement run at
    its start, e.g. a lock); the versions applied. ``run_script`` runs a script of several
    statements (default: ``con.execute``). A database of a newer version, a script that
    fails or any ``engine_error``: HistoryError naming ``where`` (e.g. ``history database
    PATH``)."""
    versions = [version for version, _ in migrations]
    if versions != sorted(set(versions)):
        raise HistoryError("MIGRATIONS must have strictly increasing versions")
    known = versions[-1] if versions else 0
    run = run_script or con.execute
    done: list[int] = []
    try:
        with transaction(con):
            if first is not None:
                con.execute(first)
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TIMESTAMP)"
            )
            rows = con.execute("SELECT version FROM schema_migrations").fetchall()
            applied = {int(row[0]) for row in rows}
            newest = max(applied, default=0)
            if newest > known:
                raise HistoryError(
                    f"{where} has schema version {newest}, newer than this casare_nb ({known})"
                )
            for version, script in migrations:
                if version in applied:
                    continue
                try:
                    run(script)
                except engine_error as exc:
                    raise HistoryError(
                        f"{where}: migration to schema version {version} failed: {one_line(exc)}"
                    ) from exc
                con.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?)",
                    [version, to_db_time(datetime.now(UTC))],
                )
                done.append(version)
    except engine_error as exc:
        raise HistoryError(f"{where}: cannot apply migrations: {one_line(exc)}") from exc
    return done


@contextlib.contextmanager
def transaction(con: Connection) -> Iterator[Connection]:
    """``con`` inside one transaction: committed when the block ends, rolled back if it raises."""
    con.begin()
    try:
        yield con
    except BaseException:
        with contextlib.suppress(Exception):
            con.rollback()
        raise
    con.commit()
