"""The orchestrator's job queue and robot tokens, in the same DuckDB file as the history.

The orchestrator is the only process writing that file (see "One writer" in the design), so
a :class:`QueueStore` keeps ONE long-lived connection, opened through
:meth:`HistoryStore.connect` (same path, migrations and lock retry) and closed by
:meth:`QueueStore.close`. A lock serialises its use between threads.

Every write runs in its own explicit transaction and is committed before the method
returns, so a job acknowledged to a client survives a SIGKILL of the orchestrator. State
transitions are compare-and-set: one ``UPDATE ... WHERE status = ... RETURNING`` whose
empty result is then explained (unknown job, wrong status, stale attempt). Only non-key
columns are ever updated.

Storage conventions are the history's: naive-UTC ``TIMESTAMP`` columns returned as aware
UTC datetimes, ``parameters`` and ``tags`` as JSON text, enums as their values. Robot
tokens are stored as their SHA-256 hex digest only.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import threading
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final

import duckdb

from casare_nb.core.models import Job, JobStatus, Priority
from casare_nb.store.history import (
    Connection,
    HistoryError,
    HistoryStore,
    _from_db_time,
    _one_line,
    _to_db_time,
    _to_json,
    _transaction,
)

__all__ = ["QueueError", "QueueStore"]

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
}
_JOB_SELECT: Final[str] = ", ".join(_JOB_COLUMNS)
_JOB_TIMES: Final[tuple[str, ...]] = tuple(
    name for name, sql_type in _JOB_COLUMNS.items() if sql_type == "TIMESTAMP"
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


class QueueError(RuntimeError):
    """A queue operation was refused (unknown job, wrong state, stale attempt...) or failed."""


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
    )


def _job_from_row(row: Sequence[Any]) -> Job:
    data = dict(zip(_JOB_COLUMNS, row, strict=True))
    data["parameters"] = json.loads(data["parameters"])
    data["tags"] = json.loads(data["tags"])
    for name in _JOB_TIMES:
        data[name] = _from_db_time(data[name])
    return Job.model_validate(data)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class QueueStore:
    """Jobs and robot tokens of an orchestrator, in its DuckDB file.

    Holds one connection, opened on first use (or on ``with``) and kept until
    :meth:`close`; safe to share between threads. Refused operations and database failures
    raise :class:`QueueError`.
    """

    def __init__(self, history: HistoryStore) -> None:
        self.history = history
        self._lock = threading.RLock()
        self._stack: contextlib.ExitStack | None = None
        self._con: Connection | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"QueueStore({str(self.history.path)!r})"

    # -- connection ----------------------------------------------------------------------

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """The store's connection, held exclusively for the block.

        Opens it on first use. DuckDB errors raised in the block come out as
        :class:`QueueError`. Do not call other methods of the store inside the block.
        """
        with self._lock:
            con = self._connect()
            try:
                yield con
            except duckdb.Error as exc:
                if isinstance(exc, duckdb.FatalException):
                    self._disconnect()  # the database is invalidated: reopen next time
                raise QueueError(f"queue database {self.history.path}: {_one_line(exc)}") from exc

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

    def close(self) -> None:
        """Close the connection (releasing the file); idempotent. Later calls raise."""
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
        """The connection inside one transaction, committed when the block ends."""
        with self.connection() as con, _transaction(con):
            yield con

    def _select(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self.connection() as con:
            return con.execute(sql, list(params)).fetchall()

    def _jobs(self, sql: str, params: Sequence[object] = ()) -> list[Job]:
        return [_job_from_row(row) for row in self._select(sql, params)]

    # -- jobs: writes --------------------------------------------------------------------

    def add_job(self, job: Job) -> None:
        """Insert a job (committed on return); an existing ``job_id`` raises QueueError."""
        with self._write() as con:
            if con.execute("SELECT 1 FROM jobs WHERE job_id = ?", [job.job_id]).fetchone():
                raise QueueError(f"job {job.job_id} already exists")
            placeholders = ", ".join("?" for _ in _JOB_COLUMNS)
            con.execute(
                f"INSERT INTO jobs ({_JOB_SELECT}) VALUES ({placeholders})", list(_job_row(job))
            )

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
        columns = [list(column) for column in zip(*rows, strict=True)]
        selects = ", ".join(f"unnest(?::{sql_type}[])" for sql_type in _JOB_COLUMNS.values())
        with self._write() as con:
            existing = con.execute(
                "SELECT job_id FROM jobs WHERE job_id IN (SELECT unnest(?::VARCHAR[])) "
                "ORDER BY job_id LIMIT 5",
                [ids],
            ).fetchall()
            if existing:
                raise QueueError(f"jobs already exist: {', '.join(row[0] for row in existing)}")
            con.execute(f"INSERT INTO jobs ({_JOB_SELECT}) SELECT {selects}", columns)

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

    def get_job(self, job_id: str) -> Job | None:
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
        if status is not None:
            values = sorted({JobStatus(s).value for s in status})
            where = f" WHERE status IN ({', '.join('?' for _ in values)})"
            params.extend(values)
        params.append(limit)
        return self._jobs(
            f"SELECT {_JOB_SELECT} FROM jobs{where} ORDER BY created_at DESC, job_id DESC LIMIT ?",
            params,
        )

    def queued(self, *, now: datetime, limit: int = 1000) -> list[Job]:
        """Queued jobs eligible at ``now``, in dispatch order (priority, then oldest, then id)."""
        if limit <= 0:
            return []
        return self._jobs(
            f"SELECT {_JOB_SELECT} FROM jobs WHERE status = ? AND eligible_at <= ?"
            f" ORDER BY {_DISPATCH_ORDER} LIMIT ?",
            [_QUEUED, _to_db_time(now), limit],
        )

    def count_by_status(self) -> dict[JobStatus, int]:
        """Number of jobs in every status (zero included)."""
        counts = dict.fromkeys(JobStatus, 0)
        for status, count in self._select("SELECT status, count(*) FROM jobs GROUP BY status"):
            counts[JobStatus(status)] = int(count)
        return counts

    def queue_depth_by_priority(self) -> dict[Priority, int]:
        """Number of queued jobs (eligible or not yet) per priority (zero included)."""
        depth = dict.fromkeys(Priority, 0)
        rows = self._select(
            "SELECT priority, count(*) FROM jobs WHERE status = ? GROUP BY priority", [_QUEUED]
        )
        for priority, count in rows:
            depth[Priority(priority)] = int(count)
        return depth

    def running_on(self, robot_id: str) -> list[Job]:
        """Running jobs assigned to ``robot_id``, oldest assignment first."""
        return self._jobs(
            f"SELECT {_JOB_SELECT} FROM jobs WHERE status = ? AND robot_id = ?"
            f" ORDER BY assigned_at, job_id",
            [_RUNNING, robot_id],
        )

    def assigned_unaccepted(self, *, before: datetime) -> list[Job]:
        """Running jobs assigned before ``before`` that no robot has accepted yet."""
        return self._jobs(
            f"SELECT {_JOB_SELECT} FROM jobs WHERE status = ? AND accepted_at IS NULL"
            f" AND assigned_at < ? ORDER BY assigned_at, job_id",
            [_RUNNING, _to_db_time(before)],
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
                [_token_hash(token), name, _to_db_time(datetime.now(UTC))],
            )
        return token

    def verify_token(self, token: str) -> str | None:
        """The name of a live token, or None (unknown, revoked or empty token)."""
        if not token:
            return None
        digest = _token_hash(token)
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
