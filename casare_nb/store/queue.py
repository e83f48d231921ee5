"""The orchestrator's job queue and robot tokens, in the same DuckDB file as the history.

The orchestrator is the only process writing that file (see "One writer" in the design), so
a :class:`QueueStore` keeps ONE long-lived connection, opened through
:meth:`HistoryStore.connect` (same path, migrations and lock retry) and closed by
:meth:`QueueStore.close`. A lock serialises its use between threads.

Two ways to write:

- **Direct** (``add_job`` ... ``cancel``): each call runs in its own explicit transaction,
  committed before it returns. State transitions are compare-and-set: one
  ``UPDATE ... WHERE status = ... RETURNING`` whose empty result is then explained (unknown
  job, wrong status, stale attempt).
- **Staged** (:meth:`QueueStore.stage`): the orchestrator keeps its unfinished jobs in memory
  (it makes the compare-and-set decisions there) and hands every new state of a job to the
  store, which returns at once. A writer thread commits what was staged in batches: one
  transaction per batch, one ``INSERT`` and one ``UPDATE ... FROM unnest(...)`` whatever the
  number of jobs, only the last state of each job (group commit). A batch starts at most
  once per ``commit_interval_s`` (a DuckDB statement costs milliseconds of CPU whatever its
  size), at once when someone waits for it (:meth:`~QueueStore.wait_mark`,
  :meth:`~QueueStore.flush`, :meth:`~QueueStore.hurry`). Each stage gets a sequence number,
  its **mark**: :meth:`~QueueStore.reached` / :meth:`~QueueStore.wait_mark` say when
  everything staged up to it is committed, and ``written`` listeners hear of every commit.
  A failed batch is retried (with backoff) until it commits; marks wait meanwhile.

Reads never show a state older than what was staged: staged jobs not yet committed are laid
over the rows read (the *overlay*), and direct writes and :meth:`~QueueStore.connection`
first wait for the staged writes. Jobs added directly are reported to the ``added``
listeners (the orchestrator adopts jobs queued behind its back, e.g. in bulk).

Only non-key columns are ever updated. Storage conventions are the history's: naive-UTC
``TIMESTAMP`` columns returned as aware UTC datetimes, ``parameters`` and ``tags`` as JSON
text, enums as their values. Robot tokens are stored as their SHA-256 hex digest only.
"""

from __future__ import annotations

import atexit
import contextlib
import hmac
import json
import logging
import secrets
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final

import duckdb

from casare_nb.core.errors import JobExists, QueueError, one_line
from casare_nb.core.models import Job, JobStatus, Priority
from casare_nb.core.tokens import token_hash
from casare_nb.store.history import (
    Connection,
    HistoryError,
    HistoryStore,
    _from_db_time,
    _to_db_time,
    _to_json,
    _transaction,
)

__all__ = ["QueueStore"]

log = logging.getLogger(__name__)

# Column name -> DuckDB type, in insert/select order; exactly the fields of Job.
_JOB_COLUMNS: Final[dict[str, str]] = {
    "job_id": "VARCHAR",
    "workflow_path": "VARCHAR",
    "parameters": "VARCHAR",
    "priority": "VARCHAR",
    "environment": "VARCHAR",
    "tags": "VARCHAR",
    "status": "VARCHAR",
    "attempt": "INTEGER",
    "max_retries": "INTEGER",
    "created_at": "TIMESTAMP",
    "eligible_at": "TIMESTAMP",
    "robot_id": "VARCHAR",
    "assigned_at": "TIMESTAMP",
    "accepted_at": "TIMESTAMP",
    "finished_at": "TIMESTAMP",
    "error_name": "VARCHAR",
    "error_message": "VARCHAR",
    "resume_from_failed": "BOOLEAN",
    "source": "VARCHAR",
    "failures": "INTEGER",
    "failed_cell": "INTEGER",
    "trigger": "VARCHAR",
}
_JOB_SELECT: Final[str] = ", ".join(_JOB_COLUMNS)
_JOB_TIMES: Final[tuple[str, ...]] = tuple(
    name for name, sql_type in _JOB_COLUMNS.items() if sql_type == "TIMESTAMP"
)
# A staged row: the job's columns, then cancel_requested (not a field of Job).
_STAGED_COLUMNS: Final[dict[str, str]] = {**_JOB_COLUMNS, "cancel_requested": "BOOLEAN"}
_STAGED_INSERT: Final[str] = (
    f"INSERT OR IGNORE INTO jobs ({', '.join(_STAGED_COLUMNS)}) SELECT "
    + ", ".join(f"unnest(?::{sql_type}[])" for sql_type in _STAGED_COLUMNS.values())
    + " RETURNING job_id"
)
# What a state transition may change (the rest is written once, by the insert).
_MUTABLE: Final[tuple[str, ...]] = (
    "parameters",
    "status",
    "attempt",
    "eligible_at",
    "robot_id",
    "assigned_at",
    "accepted_at",
    "finished_at",
    "error_name",
    "error_message",
    "resume_from_failed",
    "failures",
    "failed_cell",
    "cancel_requested",
)
_MUTABLE_AT: Final[tuple[int, ...]] = tuple(list(_STAGED_COLUMNS).index(c) for c in _MUTABLE)
_STAGED_UPDATE: Final[str] = (
    "UPDATE jobs SET "
    + ", ".join(f"{name} = u.{name}" for name in _MUTABLE)
    + " FROM (SELECT unnest(?::VARCHAR[]) AS job_id, "
    + ", ".join(f"unnest(?::{_STAGED_COLUMNS[name]}[]) AS {name}" for name in _MUTABLE)
    + ") AS u WHERE jobs.job_id = u.job_id"
)
_RANK_SQL: Final[str] = (
    "CASE priority "
    + " ".join(f"WHEN '{p.value}' THEN {p.rank}" for p in Priority)
    + " ELSE -1 END"
)
_DISPATCH_ORDER: Final[str] = f"{_RANK_SQL} DESC, created_at ASC, job_id ASC"
_QUEUED: Final[str] = JobStatus.QUEUED.value
_RUNNING: Final[str] = JobStatus.RUNNING.value
_UNFINISHED: Final[tuple[str, str]] = (_QUEUED, _RUNNING)

COMMIT_INTERVAL_S: Final[float] = 0.05  # default group-commit window of staged writes
_WAIT_S: Final[float] = 30.0  # longest a direct write or raw connection waits for staged writes
_RETRY_FIRST_S: Final[float] = 0.05  # backoff between attempts of a failed batch...
_RETRY_MAX_S: Final[float] = 2.0  # ...doubling up to this
_CLOSE_ATTEMPTS: Final[int] = 3  # attempts of the last batches at close before giving up


def _job_row(job: Job) -> tuple[Any, ...]:
    return (
        job.job_id,
        job.workflow_path,
        _to_json(job.parameters),
        job.priority.value,
        job.environment,
        _to_json(job.tags),
        job.status.value,
        job.attempt,
        job.max_retries,
        _to_db_time(job.created_at),
        _to_db_time(job.eligible_at),
        job.robot_id,
        _to_db_time(job.assigned_at),
        _to_db_time(job.accepted_at),
        _to_db_time(job.finished_at),
        job.error_name,
        job.error_message,
        job.resume_from_failed,
        job.source,
        job.failures,
        job.failed_cell,
        None if job.trigger is None else job.trigger.model_dump_json(exclude_none=True),
    )


def _job_from_row(row: Sequence[Any]) -> Job:
    data = dict(zip(_JOB_COLUMNS, row, strict=True))
    data["parameters"] = json.loads(data["parameters"])
    data["tags"] = json.loads(data["tags"])
    data["trigger"] = None if data["trigger"] is None else json.loads(data["trigger"])
    for name in _JOB_TIMES:
        data[name] = _from_db_time(data[name])
    return Job.model_validate(data)


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows -> one list per column (the parameters of an ``unnest`` statement)."""
    return [list(column) for column in zip(*rows, strict=True)]


def _rank_key(job: Job) -> tuple[int, datetime | None, str]:
    """The dispatch order of :data:`_DISPATCH_ORDER`, in Python."""
    return (-job.priority.rank, _to_db_time(job.created_at), job.job_id)


def _newest_key(job: Job) -> tuple[datetime | None, str]:
    return (_to_db_time(job.created_at), job.job_id)


def _assigned_key(job: Job) -> tuple[datetime, str]:
    return (_to_db_time(job.assigned_at) or datetime.min, job.job_id)


@dataclass(frozen=True, slots=True)
class _Staged:
    """The state of a job to write: the job, its cancel request, and whether it is new."""

    job: Job
    cancel_requested: bool
    new: bool


class QueueStore:
    """Jobs and robot tokens of an orchestrator, in its DuckDB file.

    Holds one connection, opened on first use (or on ``with``) and kept until
    :meth:`close`; safe to share between threads. Refused operations and database failures
    raise :class:`QueueError`. See the module docstring for direct and staged writes.
    """

    def __init__(
        self, history: HistoryStore, *, commit_interval_s: float = COMMIT_INTERVAL_S
    ) -> None:
        if commit_interval_s < 0:
            raise ValueError(f"commit_interval_s must be >= 0, not {commit_interval_s}")
        self.history = history
        self.commit_interval_s = commit_interval_s
        self._lock = threading.RLock()
        self._owner: int | None = None  # the thread holding the connection
        self._stack: contextlib.ExitStack | None = None
        self._con: Connection | None = None
        self._closed = False
        # staged writes (guarded by _cond, never held during I/O)
        self._cond = threading.Condition()
        self._pending: dict[str, _Staged] = {}  # staged, not taken by the writer yet
        self._inflight: dict[str, _Staged] = {}  # the batch being written
        self._staged = 0  # mark of the last stage
        self._written = 0  # every stage up to this mark is committed
        self._refused: set[str] = set()  # new jobs whose insert found the id taken
        self._write_error: str | None = None  # why the last batch failed, until one commits
        self._stopping = False
        self._hurry = False  # someone waits for a mark: commit without waiting the window
        self._writer: threading.Thread | None = None
        self._batches = 0
        self._rows = 0
        self._on_added: list[Callable[[list[Job]], None]] = []
        self._on_written: list[Callable[[int], None]] = []

    def __repr__(self) -> str:
        return f"QueueStore({str(self.history.path)!r})"

    # -- connection ----------------------------------------------------------------------

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """The store's connection, held exclusively for the block, once every staged write
        is committed (so raw SQL sees them).

        Opens it on first use. DuckDB errors raised in the block come out as
        :class:`QueueError`. Do not call other methods of the store inside the block.
        """
        self._settle()
        with self._locked() as con:
            yield con

    @contextlib.contextmanager
    def _locked(self) -> Iterator[Connection]:
        """The connection, held exclusively (no wait for staged writes: the writer uses it)."""
        with self._lock:
            con = self._connect()
            outer, self._owner = self._owner, threading.get_ident()
            try:
                yield con
            except duckdb.Error as exc:
                if isinstance(exc, duckdb.FatalException):
                    self._disconnect()  # the database is invalidated: reopen next time
                raise QueueError(f"queue database {self.history.path}: {one_line(exc)}") from exc
            finally:
                self._owner = outer

    def _connect(self) -> Connection:
        if self._closed:
            raise QueueError(f"queue store for {self.history.path} is closed")
        if self._con is None:
            stack = contextlib.ExitStack()
            try:
                self._con = stack.enter_context(self.history.connect())
            except HistoryError as exc:
                raise QueueError(str(exc)) from exc
            self._stack = stack
        return self._con

    def _disconnect(self) -> None:
        stack, self._stack, self._con = self._stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                stack.close()

    def close(self, timeout: float | None = _WAIT_S) -> None:
        """Commit what is staged (a few attempts, up to ``timeout`` s), stop the writer and
        close the connection (releasing the file); idempotent. Later calls raise."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            writer = self._writer
        _LIVE_STORES.discard(self)
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout)
            if writer.is_alive():
                log.error("%r: the writer did not stop within %s s", self, timeout)
        with self._cond:
            lost = len(self._pending) + len(self._inflight)
        if lost:
            log.error("%r: %d staged job states could not be written", self, lost)
        with self._lock:
            self._closed = True
            self._disconnect()

    def __enter__(self) -> QueueStore:
        with self.connection():  # fail fast, and hold the file from now on
            pass
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        """The connection inside one transaction, committed when the block ends (after every
        staged write: a direct write never races one)."""
        with self.connection() as con, _transaction(con):
            yield con

    @contextlib.contextmanager
    def direct(self) -> Iterator[Connection]:
        """The connection inside one transaction, committed when the block ends, for tables
        other than ``jobs`` (schedules, triggers...): it does not wait for staged job writes.
        Do not call other methods of the store inside the block."""
        with self._locked() as con, _transaction(con):
            yield con

    def select(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query on a table other than ``jobs`` (no overlay of staged jobs)."""
        return self._select(sql, params)

    def _select(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._locked() as con:
            return con.execute(sql, list(params)).fetchall()

    def _jobs(self, sql: str, params: Sequence[object] = ()) -> list[Job]:
        return [_job_from_row(row) for row in self._select(sql, params)]

    # -- listeners -----------------------------------------------------------------------

    def subscribe(
        self,
        *,
        added: Callable[[list[Job]], None] | None = None,
        written: Callable[[int], None] | None = None,
    ) -> None:
        """Call ``added(jobs)`` after :meth:`add_job` / :meth:`add_jobs` committed jobs (in
        the caller's thread), and ``written(mark)`` after each commit of staged writes (in
        the writer's thread: hand the work over, do not block)."""
        if added is not None:
            self._on_added.append(added)
        if written is not None:
            self._on_written.append(written)

    def unsubscribe(
        self,
        *,
        added: Callable[[list[Job]], None] | None = None,
        written: Callable[[int], None] | None = None,
    ) -> None:
        """Stop calling listeners given to :meth:`subscribe`."""
        if added is not None and added in self._on_added:
            self._on_added.remove(added)
        if written is not None and written in self._on_written:
            self._on_written.remove(written)

    def _added(self, jobs: list[Job]) -> None:
        for listener in list(self._on_added):
            try:
                listener(jobs)
            except Exception:
                log.exception("%r: a listener of added jobs failed", self)

    # -- staged writes -------------------------------------------------------------------

    def stage(self, job: Job, *, cancel_requested: bool = False, new: bool = False) -> int:
        """Hand the new state of a job to the writer thread; its mark. Returns at once.

        ``new``: the job is not in the database yet (it is inserted; an existing id is left
        as it is, see :meth:`insert_refused`). Otherwise only what a state transition
        changes is written (status, attempt, times, robot, errors, failures, parameters,
        cancel request): a job's workflow, priority, environment, tags, retries, creation
        time and source are those of its insert. The last state staged for a job wins;
        ``job`` must not be mutated afterwards.
        """
        with self._cond:
            if self._stopping or self._closed:
                raise QueueError(f"queue store for {self.history.path} is closed")
            earlier = self._pending.get(job.job_id)
            new = new or (earlier is not None and earlier.new)
            self._pending[job.job_id] = _Staged(job, cancel_requested, new)
            return self._enqueued()

    def _enqueued(self) -> int:
        """A new mark; start or wake the writer. The caller holds ``_cond``."""
        self._staged += 1
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_loop,
                name=f"casare-queue-{self.history.path.name}",
                daemon=True,
            )
            self._writer.start()
            _LIVE_STORES.add(self)
        self._cond.notify_all()
        return self._staged

    def mark(self) -> int:
        """The mark of everything staged so far."""
        with self._cond:
            return self._staged

    def reached(self, mark: int) -> bool:
        """Whether everything staged up to ``mark`` is committed."""
        with self._cond:
            return self._written >= mark

    def wait_mark(self, mark: int, timeout: float | None = None) -> bool:
        """Block until :meth:`reached` (True) or ``timeout`` seconds passed (False); what is
        staged is committed without waiting for the group-commit window."""
        with self._cond:
            if self._written < mark:
                self._hurry = True
                self._cond.notify_all()
            return self._cond.wait_for(lambda: self._written >= mark, timeout)

    def hurry(self) -> None:
        """Commit what is staged now, without waiting for the group-commit window (someone
        waits for it)."""
        with self._cond:
            if self._written < self._staged:
                self._hurry = True
                self._cond.notify_all()

    def flush(self, timeout: float | None = _WAIT_S) -> None:
        """Block until everything staged so far is committed; QueueError after ``timeout``
        seconds (naming the last write error, if any)."""
        with self._cond:
            target = self._staged
            if self._written < target:
                self._hurry = True
                self._cond.notify_all()
            if self._cond.wait_for(lambda: self._written >= target, timeout):
                return
            why = f": {self._write_error}" if self._write_error else ""
        raise QueueError(
            f"queue writes to {self.history.path} did not commit within {timeout:g} s{why}"
        )

    def insert_refused(self, job_id: str) -> bool:
        """Whether a new job staged as ``job_id`` was not inserted, its id being taken (asked
        once, after its mark is reached)."""
        with self._cond:
            if job_id in self._refused:
                self._refused.discard(job_id)
                return True
            return False

    def write_stats(self) -> tuple[int, int]:
        """(batches, rows) the writer thread committed so far."""
        with self._cond:
            return self._batches, self._rows

    def _settle(self) -> None:
        """Wait for the staged writes (not in the writer, nor while holding the connection:
        the writer needs it)."""
        if self._owner == threading.get_ident() or threading.current_thread() is self._writer:
            return
        with self._cond:
            if self._written >= self._staged:
                return
        self.flush()

    def _overlay(self) -> dict[str, _Staged]:
        """Staged states not committed yet, by job id (a copy)."""
        with self._cond:
            if not self._pending and not self._inflight:
                return {}
            return {**self._inflight, **self._pending}

    def _has_work(self) -> bool:
        return bool(self._pending)

    def _write_loop(self) -> None:
        failures = 0
        last = time.monotonic()  # when the last batch began (the first one waits too)
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._has_work() or self._stopping)
                if not self._has_work():
                    return  # stopping, everything written
                # group commit: one batch per window at most, unless someone waits
                window = last + self.commit_interval_s - time.monotonic()
                if window > 0:
                    self._cond.wait_for(lambda: self._hurry or self._stopping, window)
                last = time.monotonic()
                self._hurry = False
                batch, self._pending = self._pending, {}
                self._inflight = batch
                mark = self._staged
            try:
                refused = self._write_staged(batch)
            except Exception as exc:  # keep the batch: memory is the truth, retry it
                failures += 1
                with self._cond:
                    self._put_back(batch)
                    self._write_error = one_line(exc)
                    if self._stopping and failures >= _CLOSE_ATTEMPTS:
                        return
                    log.warning("%r: a write failed (retrying): %s", self, exc)
                    delay = min(_RETRY_MAX_S, _RETRY_FIRST_S * 2 ** (failures - 1))
                    self._cond.wait_for(lambda: self._stopping, delay)
                    self._hurry = True  # the retry waits for the backoff, not the window
                continue
            failures = 0
            with self._cond:
                self._inflight = {}
                self._written = mark
                self._refused |= refused
                self._write_error = None
                self._batches += 1
                self._rows += len(batch)
                self._cond.notify_all()
            for listener in list(self._on_written):
                try:
                    listener(mark)
                except Exception:
                    log.exception("%r: a listener of written marks failed", self)

    def _put_back(self, batch: Mapping[str, _Staged]) -> None:
        """A failed batch goes back where newer states did not replace it (``_cond`` held)."""
        for job_id, staged in batch.items():
            newer = self._pending.get(job_id)
            if newer is None:
                self._pending[job_id] = staged
            elif staged.new and not newer.new:
                self._pending[job_id] = _Staged(newer.job, newer.cancel_requested, True)
        self._inflight = {}

    def _write_staged(self, batch: Mapping[str, _Staged]) -> set[str]:
        """Write a batch in one transaction; the ids of new jobs that were already there."""
        new = [(*_job_row(s.job), s.cancel_requested) for s in batch.values() if s.new]
        old = [(*_job_row(s.job), s.cancel_requested) for s in batch.values() if not s.new]
        refused: set[str] = set()
        with self._locked() as con, _transaction(con):
            if new:
                inserted = con.execute(_STAGED_INSERT, _columns(new)).fetchall()
                refused = {row[0] for row in new} - {row[0] for row in inserted}
            if old:
                columns = _columns(old)
                params = [columns[0], *(columns[at] for at in _MUTABLE_AT)]
                count = con.execute(_STAGED_UPDATE, params).fetchone()
                if count is not None and count[0] != len(old):
                    log.error("%r: %d staged jobs are missing", self, len(old) - count[0])
        return refused

    # -- jobs: writes --------------------------------------------------------------------

    def add_job(self, job: Job) -> None:
        """Insert a job (committed on return); an existing ``job_id`` raises QueueError."""
        with self._write() as con:
            if con.execute("SELECT 1 FROM jobs WHERE job_id = ?", [job.job_id]).fetchone():
                raise JobExists(f"job {job.job_id} already exists")
            placeholders = ", ".join("?" for _ in _JOB_COLUMNS)
            con.execute(
                f"INSERT INTO jobs ({_JOB_SELECT}) VALUES ({placeholders})", list(_job_row(job))
            )
        self._added([job])

    def add_jobs(self, jobs: Sequence[Job]) -> None:
        """Insert many jobs in one statement and one transaction; all or nothing.

        A ``job_id`` repeated in ``jobs`` or already stored raises QueueError.
        """
        if not jobs:
            return
        ids = [job.job_id for job in jobs]
        if len(set(ids)) != len(ids):
            repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
            raise QueueError(f"job ids given more than once: {', '.join(repeated[:5])}")
        rows = [_job_row(job) for job in jobs]
        selects = ", ".join(f"unnest(?::{sql_type}[])" for sql_type in _JOB_COLUMNS.values())
        with self._write() as con:
            existing = con.execute(
                "SELECT job_id FROM jobs WHERE job_id IN (SELECT unnest(?::VARCHAR[])) "
                "ORDER BY job_id LIMIT 5",
                [ids],
            ).fetchall()
            if existing:
                raise QueueError(f"jobs already exist: {', '.join(row[0] for row in existing)}")
            con.execute(f"INSERT INTO jobs ({_JOB_SELECT}) SELECT {selects}", _columns(rows))
        self._added(list(jobs))

    def assign(self, job_id: str, robot_id: str, *, now: datetime) -> Job:
        """queued -> running on ``robot_id``: sets assigned_at, attempt += 1.

        Compare-and-set: a job that is no longer queued raises QueueError.
        """
        with self._write() as con:
            rows = con.execute(
                f"UPDATE jobs SET status = ?, robot_id = ?, assigned_at = ?, accepted_at = NULL,"
                f" attempt = attempt + 1 WHERE job_id = ? AND status = ? RETURNING {_JOB_SELECT}",
                [_RUNNING, robot_id, _to_db_time(now), job_id, _QUEUED],
            ).fetchall()
            if not rows:
                status, _ = self._state(con, job_id)
                raise QueueError(f"job {job_id} is not queued (status {status})")
        return _job_from_row(rows[0])

    def accept(self, job_id: str, attempt: int, *, now: datetime) -> Job:
        """The robot took ``attempt`` of a running job: sets accepted_at (first time only).

        A stale attempt or a job that is not running raises QueueError.
        """
        with self._write() as con:
            rows = con.execute(
                f"UPDATE jobs SET accepted_at = coalesce(accepted_at, ?)"
                f" WHERE job_id = ? AND attempt = ? AND status = ? RETURNING {_JOB_SELECT}",
                [_to_db_time(now), job_id, attempt, _RUNNING],
            ).fetchall()
            if not rows:
                status, current = self._state(con, job_id)
                self._check_attempt(job_id, attempt, current)
                raise QueueError(f"job {job_id} is not running (status {status})")
        return _job_from_row(rows[0])

    def requeue(
        self,
        job_id: str,
        *,
        eligible_at: datetime,
        resume_from_failed: bool,
        reason: str | None = None,
        now: datetime | None = None,
        failed: bool = False,
    ) -> Job:
        """running -> queued (robot died, not accepted in time, retry); keeps the attempt.

        Clears robot_id, assigned_at and accepted_at; ``reason`` (if given) becomes the
        job's error_message; ``failed`` (a retry after a failure) counts one more failure.
        A job with a pending cancel is not requeued but cancelled (finished_at = ``now``,
        default the current time): check the returned status. A job that is not running
        raises QueueError.
        """
        with self._write() as con:
            rows = con.execute(
                f"UPDATE jobs SET status = ?, robot_id = NULL, assigned_at = NULL,"
                f" accepted_at = NULL, eligible_at = ?, resume_from_failed = ?,"
                f" error_message = coalesce(?, error_message), failures = failures + ?"
                f" WHERE job_id = ? AND status = ? AND NOT cancel_requested"
                f" RETURNING {_JOB_SELECT}",
                [
                    _QUEUED,
                    _to_db_time(eligible_at),
                    resume_from_failed,
                    reason,
                    int(failed),
                    job_id,
                    _RUNNING,
                ],
            ).fetchall()
            if not rows:
                rows = con.execute(
                    f"UPDATE jobs SET status = ?, finished_at = ?,"
                    f" error_message = coalesce(?, error_message)"
                    f" WHERE job_id = ? AND status = ? AND cancel_requested"
                    f" RETURNING {_JOB_SELECT}",
                    [
                        JobStatus.CANCELLED.value,
                        _to_db_time(now or datetime.now(UTC)),
                        reason,
                        job_id,
                        _RUNNING,
                    ],
                ).fetchall()
            if not rows:
                status, _ = self._state(con, job_id)
                raise QueueError(f"job {job_id} is not running (status {status})")
        return _job_from_row(rows[0])

    def finish(
        self,
        job_id: str,
        attempt: int,
        status: JobStatus,
        *,
        now: datetime,
        error_name: str | None = None,
        error_message: str | None = None,
        failed_cell: int | None = None,
    ) -> Job:
        """Queued or running -> a final ``status`` (completed, failed, cancelled, timeout, dead).

        Sets finished_at, the error fields and the failed cell's index. A stale attempt
        raises QueueError; finishing a finished job again with the same status returns it
        unchanged, with another status raises QueueError.
        """
        status = JobStatus(status)
        if not status.finished:
            raise QueueError(f"cannot finish job {job_id} as {status}: not a final status")
        with self._write() as con:
            rows = con.execute(
                f"UPDATE jobs SET status = ?, finished_at = ?, error_name = ?, error_message = ?,"
                f" failed_cell = ? WHERE job_id = ? AND attempt = ? AND status IN (?, ?)"
                f" RETURNING {_JOB_SELECT}",
                [
                    status.value,
                    _to_db_time(now),
                    error_name,
                    error_message,
                    failed_cell,
                    job_id,
                    attempt,
                    *_UNFINISHED,
                ],
            ).fetchall()
            if not rows:
                current_status, current = self._state(con, job_id)
                self._check_attempt(job_id, attempt, current)
                if current_status != status.value:
                    raise QueueError(f"job {job_id} already {current_status}")
                rows = con.execute(
                    f"SELECT {_JOB_SELECT} FROM jobs WHERE job_id = ?", [job_id]
                ).fetchall()
        return _job_from_row(rows[0])

    def reopen(
        self,
        job_id: str,
        *,
        now: datetime,
        resume_from_failed: bool,
        parameters: dict[str, Any] | None = None,
    ) -> Job:
        """A finished job (completed, failed, cancelled, timeout, dead) -> queued again, for a
        re-run: eligible now, error fields and cancel request cleared, failures reset to 0,
        ``parameters`` (if given) replacing the stored ones; the attempt counter goes on.

        A queued or running job, or an unknown one, raises QueueError.
        """
        with self._write() as con:
            rows = con.execute(
                f"UPDATE jobs SET status = ?, eligible_at = ?, robot_id = NULL,"
                f" assigned_at = NULL, accepted_at = NULL, finished_at = NULL,"
                f" error_name = NULL, error_message = NULL, failed_cell = NULL,"
                f" cancel_requested = FALSE,"
                f" failures = 0, resume_from_failed = ?, parameters = coalesce(?, parameters)"
                f" WHERE job_id = ? AND status NOT IN (?, ?) RETURNING {_JOB_SELECT}",
                [
                    _QUEUED,
                    _to_db_time(now),
                    resume_from_failed,
                    None if parameters is None else _to_json(parameters),
                    job_id,
                    *_UNFINISHED,
                ],
            ).fetchall()
            if not rows:
                status, _ = self._state(con, job_id)
                raise QueueError(f"job {job_id} is still {status}: only a finished job re-runs")
        return _job_from_row(rows[0])

    def cancel(self, job_id: str, *, now: datetime) -> Job:
        """Queued -> cancelled at once; running -> still running, with a cancel requested.

        Returns the job; a finished job raises QueueError (``job X already completed``).
        """
        with self._write() as con:
            rows = con.execute(
                f"UPDATE jobs SET status = ?, finished_at = ? WHERE job_id = ? AND status = ?"
                f" RETURNING {_JOB_SELECT}",
                [JobStatus.CANCELLED.value, _to_db_time(now), job_id, _QUEUED],
            ).fetchall()
            if not rows:
                rows = con.execute(
                    f"UPDATE jobs SET cancel_requested = TRUE WHERE job_id = ? AND status = ?"
                    f" RETURNING {_JOB_SELECT}",
                    [job_id, _RUNNING],
                ).fetchall()
            if not rows:
                status, _ = self._state(con, job_id)
                raise QueueError(f"job {job_id} already {status}")
        return _job_from_row(rows[0])

    def cancel_requested(self, job_id: str) -> bool:
        """Whether a cancel was requested while the job ran; unknown job raises QueueError."""
        staged = self._overlay().get(job_id)
        if staged is not None:
            return staged.cancel_requested
        rows = self._select("SELECT cancel_requested FROM jobs WHERE job_id = ?", [job_id])
        if not rows:
            raise QueueError(f"unknown job {job_id}")
        return bool(rows[0][0])

    @staticmethod
    def _state(con: Connection, job_id: str) -> tuple[str, int]:
        """(status, attempt) of a job; an unknown job raises QueueError."""
        row = con.execute("SELECT status, attempt FROM jobs WHERE job_id = ?", [job_id]).fetchone()
        if row is None:
            raise QueueError(f"unknown job {job_id}")
        return str(row[0]), int(row[1])

    @staticmethod
    def _check_attempt(job_id: str, attempt: int, current: int) -> None:
        if attempt != current:
            raise QueueError(
                f"job {job_id}: attempt {attempt} is stale (current attempt {current})"
            )

    # -- jobs: reads ---------------------------------------------------------------------
    # Each read lays the staged states not committed yet over the rows (see _overlay).

    def _read_jobs(
        self,
        where: str,
        params: Sequence[object],
        *,
        keep: Callable[[Job], bool],
        order: str,
        key: Callable[[Job], Any],
        reverse: bool = False,
        limit: int | None = None,
    ) -> list[Job]:
        """Jobs matching ``where`` (SQL) / ``keep`` (the same test on a staged job), sorted by
        ``order`` (SQL) / ``key``; staged states replace their rows."""
        overlay = self._overlay()
        sql = f"SELECT {_JOB_SELECT} FROM jobs{where} ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit) + len(overlay)}"
        rows = self._jobs(sql, params)
        if not overlay:
            return rows[:limit] if limit is not None else rows
        jobs = [job for job in rows if job.job_id not in overlay]
        jobs += [s.job.model_copy(deep=True) for s in overlay.values() if keep(s.job)]
        jobs.sort(key=key, reverse=reverse)
        return jobs[:limit] if limit is not None else jobs

    def get_job(self, job_id: str) -> Job | None:
        staged = self._overlay().get(job_id)
        if staged is not None:
            return staged.job.model_copy(deep=True)
        rows = self._jobs(f"SELECT {_JOB_SELECT} FROM jobs WHERE job_id = ?", [job_id])
        return rows[0] if rows else None

    def list_jobs(
        self, *, status: Collection[JobStatus] | None = None, limit: int = 100
    ) -> list[Job]:
        """Jobs, newest ``created_at`` first, optionally only those in ``status``."""
        if limit <= 0 or (status is not None and not status):
            return []
        params: list[object] = []
        where = ""
        wanted: set[JobStatus] | None = None
        if status is not None:
            wanted = {JobStatus(s) for s in status}
            values = sorted(s.value for s in wanted)
            where = f" WHERE status IN ({', '.join('?' for _ in values)})"
            params.extend(values)
        return self._read_jobs(
            where,
            params,
            keep=lambda job: wanted is None or job.status in wanted,
            order="created_at DESC, job_id DESC",
            key=_newest_key,
            reverse=True,
            limit=limit,
        )

    def unfinished(self) -> list[tuple[Job, bool]]:
        """Every queued or running job with whether its cancel was requested (what an
        orchestrator keeps in memory), in dispatch order."""
        self._settle()
        rows = self._select(
            f"SELECT {_JOB_SELECT}, cancel_requested FROM jobs WHERE status IN (?, ?)"
            f" ORDER BY {_DISPATCH_ORDER}",
            list(_UNFINISHED),
        )
        return [(_job_from_row(row[:-1]), bool(row[-1])) for row in rows]

    def queued(self, *, now: datetime, limit: int = 1000) -> list[Job]:
        """Queued jobs eligible at ``now``, in dispatch order (priority, then oldest, then id)."""
        if limit <= 0:
            return []
        return self._read_jobs(
            " WHERE status = ? AND eligible_at <= ?",
            [_QUEUED, _to_db_time(now)],
            keep=lambda job: job.status is JobStatus.QUEUED and job.eligible_at <= now,
            order=_DISPATCH_ORDER,
            key=_rank_key,
            limit=limit,
        )

    def count_by_status(self) -> dict[JobStatus, int]:
        """Number of jobs in every status (zero included)."""
        counts = dict.fromkeys(JobStatus, 0)
        overlay = self._overlay()
        if overlay:
            rows = self._select(
                "SELECT status, count(*) FROM jobs"
                " WHERE job_id NOT IN (SELECT unnest(?::VARCHAR[])) GROUP BY status",
                [list(overlay)],
            )
        else:
            rows = self._select("SELECT status, count(*) FROM jobs GROUP BY status")
        for status, count in rows:
            counts[JobStatus(status)] += int(count)
        for staged in overlay.values():
            counts[staged.job.status] += 1
        return counts

    def queue_depth_by_priority(self) -> dict[Priority, int]:
        """Number of queued jobs (eligible or not yet) per priority (zero included)."""
        depth = dict.fromkeys(Priority, 0)
        overlay = self._overlay()
        rows = self._select(
            "SELECT priority, count(*) FROM jobs WHERE status = ?"
            " AND job_id NOT IN (SELECT unnest(?::VARCHAR[])) GROUP BY priority",
            [_QUEUED, list(overlay)],
        )
        for priority, count in rows:
            depth[Priority(priority)] += int(count)
        for staged in overlay.values():
            if staged.job.status is JobStatus.QUEUED:
                depth[staged.job.priority] += 1
        return depth

    def running_on(self, robot_id: str) -> list[Job]:
        """Running jobs assigned to ``robot_id``, oldest assignment first."""
        return self._read_jobs(
            " WHERE status = ? AND robot_id = ?",
            [_RUNNING, robot_id],
            keep=lambda job: job.status is JobStatus.RUNNING and job.robot_id == robot_id,
            order="assigned_at, job_id",
            key=_assigned_key,
        )

    def assigned_unaccepted(self, *, before: datetime) -> list[Job]:
        """Running jobs assigned before ``before`` that no robot has accepted yet."""
        return self._read_jobs(
            " WHERE status = ? AND accepted_at IS NULL AND assigned_at < ?",
            [_RUNNING, _to_db_time(before)],
            keep=lambda job: (
                job.status is JobStatus.RUNNING
                and job.accepted_at is None
                and job.assigned_at is not None
                and job.assigned_at < before
            ),
            order="assigned_at, job_id",
            key=_assigned_key,
        )

    # -- robot tokens --------------------------------------------------------------------

    def create_token(self, name: str) -> str:
        """A new bearer token for ``name``, returned once; only its SHA-256 is stored.

        A name with a live (not revoked) token raises QueueError.
        """
        if not name:
            raise QueueError("a token needs a name")
        token = secrets.token_urlsafe(32)
        with self._write() as con:
            live = con.execute(
                "SELECT 1 FROM tokens WHERE name = ? AND revoked_at IS NULL", [name]
            ).fetchone()
            if live:
                raise QueueError(f"token {name} already exists")
            con.execute(
                "INSERT INTO tokens (token_hash, name, created_at) VALUES (?, ?, ?)",
                [token_hash(token), name, _to_db_time(datetime.now(UTC))],
            )
        return token

    def verify_token(self, token: str) -> str | None:
        """The name of a live token, or None (unknown, revoked or empty token)."""
        if not token:
            return None
        digest = token_hash(token)
        rows = self._select(
            "SELECT token_hash, name FROM tokens WHERE token_hash = ? AND revoked_at IS NULL",
            [digest],
        )
        for stored, name in rows:
            if hmac.compare_digest(str(stored), digest):
                return str(name)
        return None

    def revoke_token(self, name: str) -> None:
        """Revoke the live token of ``name`` (no-op if already revoked); unknown name raises."""
        with self._write() as con:
            rows = con.execute(
                "UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL"
                " RETURNING name",
                [_to_db_time(datetime.now(UTC)), name],
            ).fetchall()
            if (
                not rows
                and not con.execute("SELECT 1 FROM tokens WHERE name = ?", [name]).fetchone()
            ):
                raise QueueError(f"unknown token {name}")

    def list_tokens(self) -> list[dict[str, Any]]:
        """Every token ever created: name, created_at, revoked_at (never the hash)."""
        rows = self._select(
            "SELECT name, created_at, revoked_at FROM tokens ORDER BY created_at, name"
        )
        return [
            {
                "name": name,
                "created_at": _from_db_time(created_at),
                "revoked_at": _from_db_time(revoked_at),
            }
            for name, created_at, revoked_at in rows
        ]


# Stores with a writer thread at interpreter exit commit what they staged (an atexit hook).
_LIVE_STORES: weakref.WeakSet[QueueStore] = weakref.WeakSet()


def _close_stores_at_exit() -> None:
    for store in list(_LIVE_STORES):
        try:
            store.close(timeout=10.0)
        except QueueError as exc:
            log.warning("%s", exc)


atexit.register(_close_stores_at_exit)
