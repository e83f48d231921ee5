"""Tests of casare_nb.store.history against real DuckDB files in tmp_path."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from stores import make_cell, make_run

from casare_nb.core.models import CellRecord, RunRecord, RunStatus
from casare_nb.store import database, history, schema
from casare_nb.store.database import Database, HistoryError
from casare_nb.store.history import HistoryStore, HistoryWriter
from casare_nb.store.schema import SCHEMA_VERSION

HOLD_LOCK_SCRIPT = (
    "import duckdb, sys\n"
    "con = duckdb.connect(sys.argv[1])\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
    "con.close()\n"
)
OPEN_ONCE_SCRIPT = "import duckdb, sys; duckdb.connect(sys.argv[1]).close()"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "history.duckdb"


@pytest.fixture
def store(db_path: Path) -> HistoryStore:
    return HistoryStore(db_path)


def forget_migrations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this process behave like a fresh one that has not checked any file yet."""
    monkeypatch.setattr(database, "_MIGRATED", set())


def migration_rows(store: HistoryStore) -> list[tuple[Any, ...]]:
    with store.db.connect() as con:
        return con.execute(
            "SELECT version, applied_at FROM schema_migrations ORDER BY version"
        ).fetchall()


def table_names(store: HistoryStore) -> set[str]:
    with store.db.connect() as con:
        rows = con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    return {row[0] for row in rows}


@contextlib.contextmanager
def lock_held_by_other_process(path: Path) -> Iterator[Callable[[], None]]:
    """Run a process holding ``path`` read-write; yields a function that releases it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK_SCRIPT, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None

    def release() -> None:
        if proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=60)

    try:
        assert proc.stdout.readline().strip() == "locked"
        yield release
    finally:
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                release()
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def other_process_can_open(path: Path) -> bool:
    result = subprocess.run([sys.executable, "-c", OPEN_ONCE_SCRIPT, str(path)], check=False)
    return result.returncode == 0


def duckdb_module() -> Any:
    """The duckdb module as loaded by the store (tests do not import duckdb themselves)."""
    return sys.modules["duckdb"]


def count_duckdb_connects(
    monkeypatch: pytest.MonkeyPatch, on_lock_failure: threading.Event | None = None
) -> list[bool]:
    """Wrap duckdb.connect; returns a list with one entry (succeeded?) per call."""
    original = duckdb_module().connect
    calls: list[bool] = []

    def connect(*args: Any, **kwargs: Any) -> Any:
        try:
            con = original(*args, **kwargs)
        except Exception:
            calls.append(False)
            if on_lock_failure is not None:
                on_lock_failure.set()
            raise
        calls.append(True)
        return con

    monkeypatch.setattr(duckdb_module(), "connect", connect)
    return calls


# -- schema and migrations ----------------------------------------------------------------


def test_migrations_create_tables_and_record_version(store: HistoryStore, db_path: Path) -> None:
    """A fresh file gets runs, cells and schema_migrations, with every version recorded."""
    assert store.schema_version() == SCHEMA_VERSION == schema.MIGRATIONS[-1][0]
    assert db_path.is_file()
    assert {"runs", "cells", "schema_migrations"} <= table_names(store)
    rows = migration_rows(store)
    assert [row[0] for row in rows] == [version for version, _ in schema.MIGRATIONS]
    assert all(isinstance(row[1], datetime) for row in rows)


def test_migrations_checked_once_per_process(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a file was migrated in this process, later connections skip the migration step."""
    store.schema_version()
    calls: list[Database] = []
    monkeypatch.setattr(Database, "_apply_migrations", lambda self, con: calls.append(self))
    store.start_run(make_run())
    HistoryStore(store.path).get_run("run-1")
    assert calls == []


def test_reopening_does_not_rerun_migrations(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new process opening a migrated file applies nothing again and keeps the data."""
    store.start_run(make_run())
    before = migration_rows(store)
    forget_migrations(monkeypatch)
    assert HistoryStore(store.path).get_run("run-1") == make_run()
    assert migration_rows(store) == before


def test_new_migration_is_applied_to_existing_v1_file(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appending a migration upgrades an existing file in order and keeps its rows."""
    store.start_run(make_run())
    store.record_cells([make_cell()])
    extra = (
        SCHEMA_VERSION + 1,
        "ALTER TABLE runs ADD COLUMN note VARCHAR DEFAULT 'none';"
        "CREATE TABLE tags (run_id VARCHAR, tag VARCHAR);",
    )
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, extra])
    forget_migrations(monkeypatch)

    assert store.schema_version() == SCHEMA_VERSION + 1
    assert [row[0] for row in migration_rows(store)][-1] == SCHEMA_VERSION + 1
    assert "tags" in table_names(store)
    with store.db.connect() as con:
        assert con.execute("SELECT run_id, note FROM runs").fetchall() == [("run-1", "none")]
    assert store.get_run("run-1") == make_run()
    store.update_run(make_run(status=RunStatus.COMPLETED))
    assert store.list_cells("run-1") == [make_cell()]
    assert [r.status for r in store.attempts("run-1")] == [RunStatus.COMPLETED]


def test_failed_migration_rolls_back(store: HistoryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration that fails leaves neither partial changes nor its version behind."""
    store.schema_version()
    original = list(schema.MIGRATIONS)
    broken = (SCHEMA_VERSION + 1, "CREATE TABLE half (x INTEGER); INSERT INTO missing VALUES (1);")
    monkeypatch.setattr(schema, "MIGRATIONS", [*original, broken])
    forget_migrations(monkeypatch)
    with pytest.raises(HistoryError, match=f"migration to schema version {SCHEMA_VERSION + 1}"):
        store.schema_version()

    monkeypatch.setattr(schema, "MIGRATIONS", original)
    assert store.schema_version() == SCHEMA_VERSION
    assert "half" not in table_names(store)


def test_newer_schema_version_is_rejected(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file migrated by a newer casare_nb raises HistoryError naming both versions."""
    with store.db.connect() as con:
        con.execute("INSERT INTO schema_migrations VALUES (99, now()::TIMESTAMP)")
    forget_migrations(monkeypatch)
    with pytest.raises(HistoryError) as caught:
        store.get_run("run-1")
    message = str(caught.value)
    assert f"has schema version 99, newer than this casare_nb ({SCHEMA_VERSION})" in message
    assert str(store.path) in message


def test_every_model_field_has_a_column() -> None:
    """The column lists cover exactly the fields of RunRecord and CellRecord."""
    assert list(history._RUN_COLUMNS) == list(RunRecord.model_fields)
    assert list(history._CELL_COLUMNS) == list(CellRecord.model_fields)


# -- runs and cells -----------------------------------------------------------------------


def test_reads_of_missing_file_do_not_create_it(db_path: Path) -> None:
    """Reading a history that does not exist returns nothing and creates no file."""
    store = HistoryStore(db_path)
    assert store.get_run("x") is None
    assert store.attempts("x") == []
    assert store.list_runs() == []
    assert store.list_cells("x") == []
    assert not db_path.parent.exists()


def test_connect_creates_parent_directory(tmp_path: Path) -> None:
    """connect() creates missing parent directories of the database file."""
    path = tmp_path / "a" / "b" / "c" / "history.duckdb"
    with HistoryStore(path).db.connect() as con:
        assert con.execute("SELECT 42").fetchall() == [(42,)]
    assert path.is_file()


def test_duckdb_errors_in_connect_block_become_history_error(store: HistoryStore) -> None:
    """A DuckDB error raised inside a connect() block comes out as a one-line HistoryError."""
    with pytest.raises(HistoryError, match="history database") as caught, store.db.connect() as con:
        con.execute("SELECT * FROM no_such_table")
    assert "\n" not in str(caught.value)


# -- open errors --------------------------------------------------------------------------


def test_open_error_when_parent_is_a_file(tmp_path: Path) -> None:
    """A database path under an existing file raises a one-line HistoryError naming the path."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    path = blocker / "history.duckdb"
    with pytest.raises(HistoryError, match="cannot open history database") as caught:
        HistoryStore(path).start_run(make_run())
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_open_error_where_writing_is_refused() -> None:
    """A database where the OS refuses writes (even root, in /sys) gives a one-line HistoryError."""
    with pytest.raises(HistoryError, match=r"history database /sys/casare-test") as caught:
        HistoryStore("/sys/casare-test/history.duckdb").start_run(make_run())
    assert "\n" not in str(caught.value)


def test_permission_error_gets_read_only_hint(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A permission error from DuckDB becomes HistoryError with a read-only directory hint."""

    def denied(*args: Any, **kwargs: Any) -> Any:
        raise duckdb_module().IOException(
            f'IO Error: Cannot open file "{store.path}": Permission denied'
        )

    monkeypatch.setattr(duckdb_module(), "connect", denied)
    with pytest.raises(HistoryError) as caught:
        store.start_run(make_run())
    assert str(caught.value) == (
        f"cannot open history database {store.path}: IO Error: Cannot open file "
        f'"{store.path}": Permission denied (read-only directory?)'
    )


# -- lock conflicts -----------------------------------------------------------------------


def test_lock_conflict_retries_then_raises(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another process holds the file, connect() retries and then raises HistoryError."""
    store.schema_version()
    with lock_held_by_other_process(store.path):
        calls = count_duckdb_connects(monkeypatch)
        impatient = HistoryStore(store.path, lock_timeout=0.3)
        with pytest.raises(HistoryError, match="locked by another process") as caught:
            impatient.start_run(make_run())
    assert len(calls) > 1 and not any(calls)
    assert "\n" not in str(caught.value)


def test_lock_conflict_succeeds_once_other_process_exits(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write blocked by another process's lock goes through once that process exits."""
    store.schema_version()
    first_failure = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            store.start_run(make_run())
        except BaseException as exc:
            errors.append(exc)

    with lock_held_by_other_process(store.path) as release:
        calls = count_duckdb_connects(monkeypatch, on_lock_failure=first_failure)
        writer = threading.Thread(target=write)
        writer.start()
        assert first_failure.wait(timeout=30)
        release()
    writer.join(timeout=60)
    assert not writer.is_alive()
    assert errors == []
    assert calls[0] is False and calls[-1] is True
    assert store.get_run("run-1") == make_run()


# -- background writer --------------------------------------------------------------------


def test_writer_put_does_not_wait_for_locked_database(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """put_* returns while the file is locked elsewhere; the writes land once it is released."""
    store.schema_version()
    writer = HistoryWriter(store)
    first_failure = threading.Event()
    with lock_held_by_other_process(store.path) as release:
        count_duckdb_connects(monkeypatch, on_lock_failure=first_failure)
        writer.put_run(make_run())
        writer.put_cells([make_cell(cell_index=i) for i in range(10)])
        assert first_failure.wait(timeout=30)
        with pytest.raises(HistoryError, match="did not finish"):
            writer.flush(timeout=0.2)
        release()
    writer.flush(timeout=60)
    assert len(store.list_cells("run-1")) == 10
    writer.close()


def test_writer_reuses_connection_while_busy(
    store: HistoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches arriving within idle_close share one connection; close() releases the file."""
    store.schema_version()
    calls = count_duckdb_connects(monkeypatch)
    writer = HistoryWriter(store, idle_close=600)
    for i in range(3):
        writer.put_cells([make_cell(cell_index=i)])
        writer.flush()
    assert calls == [True]
    writer.close()
    assert writer._disconnected.is_set()
    assert other_process_can_open(store.path)
    assert len(store.list_cells("run-1")) == 3


def test_writer_closes_connection_when_idle(store: HistoryStore) -> None:
    """After idle_close without work the writer drops its connection, and reconnects on demand."""
    writer = HistoryWriter(store, idle_close=0.05)
    try:
        writer.put_run(make_run())
        writer.flush()
        assert writer._disconnected.wait(timeout=30)
        assert other_process_can_open(store.path)
        writer.put_run(make_run(status=RunStatus.COMPLETED))
        writer.flush()
        run = store.get_run("run-1")
        assert run is not None and run.status is RunStatus.COMPLETED
    finally:
        writer.close()


def test_writer_error_surfaces_on_flush_and_later_writes_still_attempted(tmp_path: Path) -> None:
    """A failed write is re-raised once by flush(); writes after it are still attempted."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    store = HistoryStore(blocker / "history.duckdb")
    writer = HistoryWriter(store)
    try:
        writer.put_run(make_run())
        with pytest.raises(HistoryError, match="cannot open history database"):
            writer.flush()
        writer.flush()  # the error was reported once

        blocker.unlink()
        writer.put_run(make_run(attempt=2))
        writer.flush()
        assert [r.attempt for r in store.attempts("run-1")] == [2]
    finally:
        writer.close()


def test_writer_error_surfaces_on_close(tmp_path: Path) -> None:
    """An error the thread hit and nobody flushed is raised by close()."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    writer = HistoryWriter(HistoryStore(blocker / "history.duckdb"))
    writer.put_cells([make_cell()])
    with pytest.raises(HistoryError, match="cannot open history database"):
        writer.close()
    writer.close()


def test_writer_close_is_idempotent_and_rejects_puts(store: HistoryStore) -> None:
    """close() twice is fine, flush() after close returns, and puts after close raise."""
    writer = HistoryWriter(store)
    writer.flush()
    writer.put_run(make_run())
    writer.close()
    writer.close()
    writer.flush()
    with pytest.raises(HistoryError, match="closed"):
        writer.put_run(make_run())
    with pytest.raises(HistoryError, match="closed"):
        writer.put_cells([make_cell()])
    assert store.get_run("run-1") == make_run()


def test_writer_without_puts_starts_no_thread(store: HistoryStore) -> None:
    """A writer that never got work starts no thread and creates no database file."""
    writer = HistoryWriter(store)
    writer.flush()
    writer.close()
    assert writer._thread is None
    assert not store.path.exists()


def test_writer_accepts_puts_from_many_threads(store: HistoryStore) -> None:
    """Puts from several producer threads at once all reach the database."""
    writer = HistoryWriter(store)
    start = threading.Event()

    def produce(attempt: int) -> None:
        start.wait()
        writer.put_run(make_run(attempt=attempt))
        for i in range(50):
            writer.put_cells([make_cell(attempt=attempt, cell_index=i)])

    producers = [threading.Thread(target=produce, args=(a,)) for a in range(1, 9)]
    for thread in producers:
        thread.start()
    start.set()
    for thread in producers:
        thread.join()
    writer.close()
    assert [r.attempt for r in store.attempts("run-1")] == list(range(1, 9))
    assert len(store.list_cells("run-1")) == 8 * 50
