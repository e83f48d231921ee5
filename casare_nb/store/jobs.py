"""The orchestrator's jobs, in its database (DuckDB or PostgreSQL): persisted, not decided, here.

The job state machine is :class:`~casare_nb.core.jobs.LiveJobs`, in memory: every state it
makes is handed to :meth:`SqlJobStore.stage`, which returns at once. A writer thread (a
:class:`~casare_nb.store.writer.WriteBehind`) commits what was staged in batches: one
transaction per batch, one ``INSERT`` and one ``UPDATE ... FROM unnest(...)`` whatever the
number of jobs, only the last state of each job (group commit). A batch starts at most once
per ``commit_interval_s`` (a DuckDB statement costs milliseconds of CPU whatever its size),
at once when someone waits for it (``wait_mark``, ``flush``, ``hurry``). Each stage gets a
sequence number, its **mark**: ``reached`` / ``wait_mark`` say when everything staged up to
it is committed, and ``written`` listeners hear of every commit. A failed batch is retried
(with backoff) until it commits; marks wait meanwhile.

Reads never show a state older than what was staged: staged jobs not yet committed are laid
over the rows read (the *overlay*); ``connection`` first waits for the staged writes. Jobs
inserted in bulk (``add_jobs``, e.g. an import) are reported to the ``added`` listeners: the
orchestrator adopts them.

Only non-key columns are ever updated. The connection is the database's shared one
(:meth:`~casare_nb.store.database.Database.shared`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Final

from casare_nb.core.errors import JobExists, QueueError
from casare_nb.core.models import Job, JobStatus, Priority
from casare_nb.store.sql import (
    Connection,
    SqlDatabase,
    columns,
    from_db_time,
    to_db_time,
    to_json,
    transaction,
)
from casare_nb.store.writer import WriteBehind

__all__ = ["COMMIT_INTERVAL_S", "NOTIFY_CHANNEL", "SqlJobStore", "notices"]

log = logging.getLogger(__name__)

# Column name -> SQL type, in insert/select order; exactly the fields of Job.
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
    "max_robot_losses": "INTEGER",
    "robot_losses": "INTEGER",
    "timeouts": "VARCHAR",
    "submitted_by": "VARCHAR",
}
_JOB_SELECT: Final[str] = ", ".join(_JOB_COLUMNS)
_JOB_TIMES: Final[tuple[str, ...]] = tuple(
    name for name, sql_type in _JOB_COLUMNS.items() if sql_type == "TIMESTAMP"
)
# A staged row: the job's columns, then cancel_requested and owner (not fields of Job).
_STAGED_COLUMNS: Final[dict[str, str]] = {
    **_JOB_COLUMNS,
    "cancel_requested": "BOOLEAN",
    "owner": "VARCHAR",
}
_STAGED_SELECT: Final[str] = f"INTO jobs ({', '.join(_STAGED_COLUMNS)}) SELECT " + ", ".join(
    f"unnest(?::{sql_type}[])" for sql_type in _STAGED_COLUMNS.values()
)
# A plain insert first (DuckDB plans it in a third of the time of one that skips taken ids);
# only a batch with a taken id is written again with the insert that skips and names those.
_STAGED_INSERT: Final[str] = f"INSERT {_STAGED_SELECT}"
_STAGED_INSERT_OR_IGNORE: Final[str] = (
    f"INSERT {_STAGED_SELECT} ON CONFLICT DO NOTHING RETURNING job_id"
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
    "robot_losses",
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
# Several orchestrators on one database: a state is written only over a row its node owns
# (a node that lost a job to another, e.g. its robot reconnected there, writes nothing more).
_OWNED_UPDATE: Final[str] = f"{_STAGED_UPDATE} AND jobs.owner = ?"
NOTIFY_CHANNEL: Final = "casare_jobs"
"""The PostgreSQL channel every commit of job states is announced on (``NODE ID,ID...``)."""
_NOTIFY_BYTES: Final = 7000  # a NOTIFY payload must stay under 8000 bytes
_RANK_SQL: Final[str] = (
    "CASE priority "
    + " ".join(f"WHEN '{p.value}' THEN {p.rank}" for p in Priority)
    + " ELSE -1 END"
)
_DISPATCH_ORDER: Final[str] = f"{_RANK_SQL} DESC, created_at ASC, job_id ASC"
_UNFINISHED: Final[tuple[str, str]] = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)

COMMIT_INTERVAL_S: Final[float] = 0.05  # default group-commit window of staged writes
_WAIT_S: Final[float] = 30.0  # longest a raw connection or a close waits for staged writes


def _job_row(job: Job) -> tuple[Any, ...]:
    return (
        job.job_id,
        job.workflow_path,
        to_json(job.parameters),
        job.priority.value,
        job.environment,
        to_json(job.tags),
        job.status.value,
        job.attempt,
        job.max_retries,
        to_db_time(job.created_at),
        to_db_time(job.eligible_at),
        job.robot_id,
        to_db_time(job.assigned_at),
        to_db_time(job.accepted_at),
        to_db_time(job.finished_at),
        job.error_name,
        job.error_message,
        job.resume_from_failed,
        job.source,
        job.failures,
        job.failed_cell,
        None if job.trigger is None else job.trigger.model_dump_json(exclude_none=True),
        job.max_robot_losses,
        job.robot_losses,
        _timeouts_json(job),
        job.submitted_by,
    )


def _timeouts_json(job: Job) -> str | None:
    limits = job.timeouts
    if limits.cell_s is None and limits.run_s is None:
        return None
    return limits.model_dump_json(exclude_none=True)


def _job_from_row(row: Sequence[Any]) -> Job:
    data = dict(zip(_JOB_COLUMNS, row, strict=True))
    data["parameters"] = json.loads(data["parameters"])
    data["tags"] = json.loads(data["tags"])
    data["trigger"] = None if data["trigger"] is None else json.loads(data["trigger"])
    data["timeouts"] = {} if data["timeouts"] is None else json.loads(data["timeouts"])
    for name in _JOB_TIMES:
        data[name] = from_db_time(data[name])
    return Job.model_validate(data)


def _newest_key(job: Job) -> tuple[datetime | None, str]:
    return (to_db_time(job.created_at), job.job_id)


def notices(owner: str, job_ids: Collection[str]) -> list[str]:
    """The NOTIFY payloads announcing that ``owner`` changed ``job_ids``: ``OWNER ID,ID...``,
    each under the server's payload limit."""
    payloads: list[str] = []
    current: list[str] = []
    size = len(owner) + 1
    for job_id in job_ids:
        if current and size + len(job_id) + 1 > _NOTIFY_BYTES:
            payloads.append(f"{owner} {','.join(current)}")
            current, size = [], len(owner) + 1
        current.append(job_id)
        size += len(job_id) + 1
    if current:
        payloads.append(f"{owner} {','.join(current)}")
    return payloads


def announce(con: Connection, owner: str, job_ids: Collection[str]) -> None:
    """Tell the other orchestrators of ``job_ids`` when ``con``'s transaction commits."""
    for payload in notices(owner, job_ids):
        con.execute("SELECT pg_notify(?, ?)", [NOTIFY_CHANNEL, payload])


class _IdTaken(Exception):
    """A plain insert met a job id already stored (its transaction is rolled back)."""


@dataclass(frozen=True, slots=True)
class _Staged:
    """The state of a job to write: the job, its cancel request, and whether it is new."""

    job: Job
    cancel_requested: bool
    new: bool


class SqlJobStore(WriteBehind[dict[str, _Staged]]):
    """The jobs of an orchestrator, in its database; see the module docstring.

    Safe to share between threads. Database failures raise
    :class:`~casare_nb.core.errors.QueueError`."""

    def __init__(self, db: SqlDatabase, *, commit_interval_s: float = COMMIT_INTERVAL_S) -> None:
        if commit_interval_s < 0:
            raise ValueError(f"commit_interval_s must be >= 0, not {commit_interval_s}")
        super().__init__(f"casare-queue-{db.label}", window_s=commit_interval_s, retry=True)
        self.db = db
        # guarded by _cond, never held during I/O
        self._pending: dict[str, _Staged] = {}  # staged, not taken by the writer yet
        self._inflight: dict[str, _Staged] = {}  # the batch being written
        self._refused: set[str] = set()  # new jobs whose insert found the id taken
        self._on_added: list[Callable[[list[Job]], None]] = []
        self._on_written: list[Callable[[int], None]] = []
        self.owner: str | None = None
        """This orchestrator's node id when several share the database (PostgreSQL): every
        row it writes is marked as its own, a state is written only over a row it owns, and
        each commit is announced on :data:`NOTIFY_CHANNEL`. None: the only orchestrator."""

    def __repr__(self) -> str:
        return f"SqlJobStore({self.db.where!r})"

    @property
    def commit_interval_s(self) -> float:
        """The group-commit window: at most one batch this often, unless someone waits."""
        return self.window_s

    @commit_interval_s.setter
    def commit_interval_s(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"commit_interval_s must be >= 0, not {seconds}")
        self.window_s = seconds

    # -- connection ----------------------------------------------------------------------

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        """The database's shared connection, held exclusively for the block, once every
        staged write is committed (so raw SQL sees them). Do not call other methods of the
        store inside the block."""
        self._settle()
        with self.db.shared() as con:
            yield con

    def close(self, timeout: float | None = _WAIT_S) -> None:
        """Commit what is staged (a few attempts, up to ``timeout`` s) and stop the writer;
        idempotent. Later stages raise."""
        if not self._stop(timeout):
            log.error("%r: the writer did not stop within %s s", self, timeout)
        with self._cond:
            lost = len(self._pending) + len(self._inflight)
        if lost:
            log.error("%r: %d staged job states could not be written", self, lost)

    def __enter__(self) -> SqlJobStore:
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

    # -- listeners -----------------------------------------------------------------------

    def subscribe(
        self,
        *,
        added: Callable[[list[Job]], None] | None = None,
        written: Callable[[int], None] | None = None,
    ) -> None:
        """Call ``added(jobs)`` after :meth:`add_jobs` committed jobs (in the caller's
        thread), and ``written(mark)`` after each commit of staged writes (in the writer's
        thread: hand the work over, do not block)."""
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

    # -- staged writes -------------------------------------------------------------------

    def stage(self, job: Job, *, cancel_requested: bool = False, new: bool = False) -> int:
        """Hand the new state of a job to the writer thread; its mark. Returns at once.

        ``new``: the job is not in the database yet (it is inserted; an existing id is left
        as it is, see :meth:`insert_refused`). Otherwise only what a state transition
        changes is written (status, attempt, times, robot, errors, failures, robot losses,
        parameters, cancel request): a job's workflow, priority, environment, tags, retries,
        robot losses allowed, creation time and source are those of its insert. The last
        state staged for a job wins; ``job`` must not be mutated afterwards.
        """
        with self._cond:
            if self._stopping:
                raise QueueError(f"queue store for {self.db.where} is closed")
            earlier = self._pending.get(job.job_id)
            new = new or (earlier is not None and earlier.new)
            self._pending[job.job_id] = _Staged(job, cancel_requested, new)
            return self._added()

    def flush(self, timeout: float | None = _WAIT_S) -> None:
        """Block until everything staged so far is committed; QueueError after ``timeout``
        seconds (naming the last write error, if any)."""
        in_time, done, error = self._wait_all(timeout)
        if in_time and done:
            return
        why = f": {error}" if error else ""
        raise QueueError(
            f"queue writes to {self.db.where} did not commit within {timeout:g} s{why}"
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
            return self.batches, self.items

    def _settle(self) -> None:
        """Wait for the staged writes (not in the writer, nor while holding the connection:
        the writer needs it)."""
        if self.db.holds_shared() or threading.current_thread() is self._thread:
            return
        with self._cond:
            if self._done >= self._marked:
                return
        self.flush()

    def _overlay(self) -> dict[str, _Staged]:
        """Staged states not committed yet, by job id (a copy)."""
        with self._cond:
            if not self._pending and not self._inflight:
                return {}
            return {**self._inflight, **self._pending}

    # -- the writer thread (WriteBehind) -------------------------------------------------

    def _has_work(self) -> bool:
        return bool(self._pending)

    def _take(self) -> dict[str, _Staged]:
        batch, self._pending = self._pending, {}
        self._inflight = batch
        return batch

    def _size(self, batch: dict[str, _Staged]) -> int:
        return len(batch)

    def _restore(self, batch: dict[str, _Staged]) -> None:
        """A failed batch goes back where newer states did not replace it."""
        for job_id, staged in batch.items():
            newer = self._pending.get(job_id)
            if newer is None:
                self._pending[job_id] = staged
            elif staged.new and not newer.new:
                self._pending[job_id] = _Staged(newer.job, newer.cancel_requested, True)
        self._inflight = {}

    def _wrote(self, batch: dict[str, _Staged], result: object) -> None:
        self._inflight = {}
        if isinstance(result, set):
            self._refused |= result

    def _written(self, mark: int) -> None:
        for listener in list(self._on_written):
            try:
                listener(mark)
            except Exception:
                log.exception("%r: a listener of written marks failed", self)

    def gone(self) -> str | None:
        """Why the database file written so far is no longer where it was (the state
        directory deleted or replaced), else None: writes would go into nothing. Cheap (a
        ``stat``); None before the database was first used."""
        return self.db.gone()

    def _write(self, batch: dict[str, _Staged]) -> object:
        """Write a batch in one transaction; the ids of new jobs that were already there.
        Refused (QueueError, retried) once the file is gone: its commits would be lost."""
        gone = self.gone()
        if gone is not None:
            raise QueueError(gone)
        owner = self.owner
        new = [(*_job_row(s.job), s.cancel_requested, owner) for s in batch.values() if s.new]
        old = [(*_job_row(s.job), s.cancel_requested, owner) for s in batch.values() if not s.new]
        try:
            return self._commit(new, old, skip_taken=False)
        except _IdTaken:  # rolled back: again, skipping (and naming) the ids taken
            return self._commit(new, old, skip_taken=True)

    def _commit(
        self, new: list[tuple[Any, ...]], old: list[tuple[Any, ...]], *, skip_taken: bool
    ) -> set[str]:
        """Insert ``new`` and update ``old`` in one transaction; the new ids already taken
        (``skip_taken``; without it a taken id raises _IdTaken, the transaction rolled
        back)."""
        refused: set[str] = set()
        with self.db.write() as con:
            if new and skip_taken:
                inserted = con.execute(_STAGED_INSERT_OR_IGNORE, columns(new)).fetchall()
                refused = {row[0] for row in new} - {row[0] for row in inserted}
            elif new:
                try:
                    con.execute(_STAGED_INSERT, columns(new))
                except self.db.constraint_error as exc:
                    raise _IdTaken from exc
            if old:
                cols = columns(old)
                params = [cols[0], *(cols[at] for at in _MUTABLE_AT)]
                if self.owner is None:
                    count = con.execute(_STAGED_UPDATE, params).fetchone()
                else:  # rows another orchestrator took are not written over
                    count = con.execute(_OWNED_UPDATE, [*params, self.owner]).fetchone()
                if count is not None and count[0] != len(old):
                    # removed as they changed again (a retention pass meeting a re-run of an
                    # old job): written back whole
                    back = con.execute(_STAGED_INSERT_OR_IGNORE, columns(old)).fetchall()
                    if back or self.owner is None:
                        log.warning(
                            "%r: %d staged jobs were missing: written back", self, len(back)
                        )
            if self.owner is not None:
                announce(con, self.owner, [row[0] for row in (*new, *old)])
        return refused

    # -- bulk insert ---------------------------------------------------------------------

    def add_jobs(self, jobs: Sequence[Job]) -> None:
        """Insert many jobs (an import, a test) in one statement and one transaction, all or
        nothing, committed on return; the ``added`` listeners hear of them. A ``job_id``
        repeated in ``jobs`` or already stored raises QueueError (JobExists for one)."""
        if not jobs:
            return
        ids = [job.job_id for job in jobs]
        if len(set(ids)) != len(ids):
            repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
            raise QueueError(f"job ids given more than once: {', '.join(repeated[:5])}")
        rows = [_job_row(job) for job in jobs]
        selects = ", ".join(f"unnest(?::{sql_type}[])" for sql_type in _JOB_COLUMNS.values())
        with self.connection() as con, transaction(con):
            existing = con.execute(
                "SELECT job_id FROM jobs WHERE job_id IN (SELECT unnest(?::VARCHAR[])) "
                "ORDER BY job_id LIMIT 5",
                [ids],
            ).fetchall()
            if existing:
                found = ", ".join(row[0] for row in existing)
                if len(jobs) == 1:
                    raise JobExists(f"job {found} already exists")
                raise QueueError(f"jobs already exist: {found}")
            con.execute(f"INSERT INTO jobs ({_JOB_SELECT}) SELECT {selects}", columns(rows))
            if self.owner is not None:
                announce(con, self.owner, ids)
        for listener in list(self._on_added):
            try:
                listener(list(jobs))
            except Exception:
                log.exception("%r: a listener of added jobs failed", self)

    # -- reads ---------------------------------------------------------------------------
    # Each read lays the staged states not committed yet over the rows (see _overlay).

    def _jobs(self, sql: str, params: Sequence[object] = ()) -> list[Job]:
        return [_job_from_row(row) for row in self.db.select(sql, params)]

    def get_job(self, job_id: str) -> Job | None:
        """The job ``job_id`` as last staged or stored; None if unknown."""
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
        overlay = self._overlay()
        sql = f"SELECT {_JOB_SELECT} FROM jobs{where} ORDER BY created_at DESC, job_id DESC"
        rows = self._jobs(f"{sql} LIMIT {int(limit) + len(overlay)}", params)
        if not overlay:
            return rows[:limit]
        jobs = [job for job in rows if job.job_id not in overlay]
        jobs += [
            s.job.model_copy(deep=True)
            for s in overlay.values()
            if wanted is None or s.job.status in wanted
        ]
        jobs.sort(key=_newest_key, reverse=True)
        return jobs[:limit]

    def unfinished(self) -> list[tuple[Job, bool]]:
        """Every queued or running job with whether its cancel was requested (what an
        orchestrator keeps in memory), in dispatch order."""
        self._settle()
        rows = self.db.select(
            f"SELECT {_JOB_SELECT}, cancel_requested FROM jobs WHERE status IN (?, ?)"
            f" ORDER BY {_DISPATCH_ORDER}",
            list(_UNFINISHED),
        )
        return [(_job_from_row(row[:-1]), bool(row[-1])) for row in rows]

    def count_by_status(self) -> dict[JobStatus, int]:
        """Number of jobs in every status (zero included)."""
        counts = dict.fromkeys(JobStatus, 0)
        overlay = self._overlay()
        if overlay:
            rows = self.db.select(
                "SELECT status, count(*) FROM jobs"
                " WHERE job_id NOT IN (SELECT unnest(?::VARCHAR[])) GROUP BY status",
                [list(overlay)],
            )
        else:
            rows = self.db.select("SELECT status, count(*) FROM jobs GROUP BY status")
        for status, count in rows:
            counts[JobStatus(status)] += int(count)
        for staged in overlay.values():
            counts[staged.job.status] += 1
        return counts

    def queue_depth_by_priority(self) -> dict[Priority, int]:
        """Number of queued jobs (eligible or not yet) per priority (zero included)."""
        depth = dict.fromkeys(Priority, 0)
        overlay = self._overlay()
        rows = self.db.select(
            "SELECT priority, count(*) FROM jobs WHERE status = ?"
            " AND job_id NOT IN (SELECT unnest(?::VARCHAR[])) GROUP BY priority",
            [JobStatus.QUEUED.value, list(overlay)],
        )
        for priority, count in rows:
            depth[Priority(priority)] += int(count)
        for staged in overlay.values():
            if staged.job.status is JobStatus.QUEUED:
                depth[staged.job.priority] += 1
        return depth
