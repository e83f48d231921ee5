"""Job rows that several active orchestrators share (PostgreSQL): see :class:`SharedJobs`.

Every orchestrator of the database (a *node*, named by ``--node-id``) serves robots and
clients and dispatches. A job's states are written by one node at a time, its **owner**
(``jobs.owner``): the node that submitted it, claimed it from the queue, re-ran it, or to
whose robot it moved. The job store writes a node's states behind, in batches, and only over
rows that node owns (:attr:`~casare_nb.store.jobs.SqlJobStore.owner`); the transitions that
change a job's owner are the compare-and-sets here, decided by the database so that exactly
one node wins:

- :meth:`PgSharedJobs.claim`: queued at attempt n-1 -> running attempt n on a robot of this
  node (before its ``job_assign`` is sent);
- :meth:`~PgSharedJobs.take_over`: a running attempt whose robot reconnected here;
- :meth:`~PgSharedJobs.cancel`: a queued job ends cancelled, a running one gets its cancel
  asked for its owner;
- :meth:`~PgSharedJobs.reopen`: a finished job queued again (a re-run);
- :meth:`~PgSharedJobs.adopt`: the jobs of a node that died.

Every commit is announced with ``NOTIFY casare_jobs, 'NODE ID,ID...'``; the other nodes read
the rows back (the payload names rows, it is not trusted for their content) and a node that
(re)connects its listening connection reads every unfinished row (what it missed). The
listening connection also holds the node's **liveness lock** (a session advisory lock): a
node whose lock can be taken is dead, and the leader adopts its jobs.

The robot and cell events of each node reach the monitors of the others the same way:
:meth:`PgSharedJobs.share` records them (``node_events``, kept :data:`EVENTS_KEPT_S`; the
robots connected to each node in ``node_robots``) and announces them on ``casare_events``;
the listener reads back what is new.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any, Final, Protocol

from casare_nb.core.errors import QueueError, one_line
from casare_nb.core.models import Job, JobStatus
from casare_nb.store.interfaces import SharedEvent, SharedRow
from casare_nb.store.jobs import (
    _JOB_SELECT,
    _MUTABLE,
    _STAGED_COLUMNS,
    NOTIFY_CHANNEL,
    SqlJobStore,
    _job_from_row,
    _job_row,
    announce,
)
from casare_nb.store.sql import Connection, SqlDatabase, columns, to_db_time
from casare_nb.store.tokens import TOKENS_CHANNEL, forget_known

__all__ = ["EVENTS_CHANNEL", "EVENTS_KEPT_S", "LISTEN_WAIT_S", "PgSharedJobs"]

logger = logging.getLogger("casare_nb.store")

LISTEN_WAIT_S: Final = 0.2
"""How long the listener waits for an announcement before checking it should stop."""
BURST_S: Final = 0.002
"""After an announcement, how long more are gathered before their rows are read back."""
_RETRY_FIRST_S: Final = 0.1  # a lost listening connection is opened again after this...
_RETRY_MAX_S: Final = 2.0  # ...doubling up to this
_ROW: Final = f"{_JOB_SELECT}, cancel_requested, owner"
_RETURNING: Final = ", ".join(f"jobs.{name}" for name in _ROW.split(", "))
_UNFINISHED: Final = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
EVENTS_CHANNEL: Final = "casare_events"
"""``NOTIFY casare_events, 'NODE'``: ``NODE`` recorded events (:meth:`PgSharedJobs.share`)."""
EVENTS_KEPT_S: Final = 600
"""How long a node's events are kept for the others (a node out of reach longer misses
what is older: monitors' events, not state)."""
_LATE_S: Final = 2.0
# Events are read past the last sequence number read, and those recorded in the last _LATE_S
# (the server's clock), whose numbers may be lower: numbers are taken before the commit, so
# one node's transaction may commit after another's with a higher number was read.
_UTC_NOW: Final = "(now() AT TIME ZONE 'UTC')"
_EVENT_ROW: Final = "seq, node, kind, data, robot_id, online"
# Up to LIMIT of the candidates (id, attempt, rank) still queued at their attempt, in rank
# order, skipping rows another transaction holds: running on this node, attempt + 1.
_CLAIM: Final = (
    "WITH pick AS (SELECT jobs.job_id FROM jobs JOIN (SELECT unnest(?::VARCHAR[]) AS job_id, "
    "unnest(?::INTEGER[]) AS attempt, unnest(?::INTEGER[]) AS rank) AS c "
    "ON jobs.job_id = c.job_id WHERE jobs.status = ? AND jobs.attempt = c.attempt "
    "ORDER BY c.rank LIMIT ? FOR UPDATE OF jobs SKIP LOCKED) "
    "UPDATE jobs SET status = ?, attempt = jobs.attempt + 1, robot_id = NULL, assigned_at = ?, "
    "accepted_at = NULL, cancel_requested = FALSE, owner = ? "
    "FROM pick WHERE jobs.job_id = pick.job_id RETURNING jobs.job_id"
)


class Listening(Protocol):
    """The dedicated connection the listener holds (``?`` placeholders, autocommit)."""

    def execute(self, query: str, params: Sequence[object] = ()) -> Any: ...

    def notifies(self, *, timeout: float | None = None, stop_after: int | None = None) -> Any: ...

    def close(self) -> None: ...


def _liveness_key(node_id: str) -> str:
    return f"casare-node:{node_id}"


def _row(raw: Sequence[Any]) -> SharedRow:
    return SharedRow(_job_from_row(raw[:-2]), bool(raw[-2]), raw[-1])


class PgSharedJobs:
    """The shared job rows of one PostgreSQL database (a
    :class:`~casare_nb.store.interfaces.SharedJobs`); see the module docstring.
    ``dedicated`` opens a connection of its own (not pooled, autocommit) for listening."""

    def __init__(
        self, db: SqlDatabase, jobs: SqlJobStore, dedicated: Callable[[], Listening]
    ) -> None:
        self.db = db
        self.jobs = jobs
        self.node = ""
        self._dedicated = dedicated
        self._stop = threading.Event()
        self.listening = threading.Event()
        """Set while the listener hears the announcements (a test waits on it)."""
        self._thread: threading.Thread | None = None
        self._on_events: Callable[[list[SharedEvent], list[SharedEvent] | None], None] | None = None
        self._last_seq = -1  # the last event number read (-1: none read yet)
        self._recent: set[int] = set()  # the events read that a later read may see again
        self._shared = 0  # events recorded since this node's old ones were last deleted

    def __repr__(self) -> str:
        return f"PgSharedJobs({self.db.where!r}, node={self.node!r})"

    def bind(self, node_id: str) -> None:
        self.node = node_id
        self.jobs.owner = node_id

    # -- compare-and-sets ----------------------------------------------------------------

    def _returning(self, sql: str, params: Sequence[object]) -> list[SharedRow]:
        """Run one changing statement (``RETURNING`` the rows) and announce what it changed,
        in one transaction."""
        with self.db.write() as con:
            rows = [_row(raw) for raw in con.execute(sql, list(params)).fetchall()]
            if rows:
                announce(con, self.node, [row.job.job_id for row in rows])
        return rows

    def claim(self, candidates: Sequence[Job], count: int, now: datetime) -> set[str]:
        if not candidates or count <= 0:
            return set()
        params = [
            [job.job_id for job in candidates],
            [job.attempt for job in candidates],
            list(range(len(candidates))),
            JobStatus.QUEUED.value,
            count,
            JobStatus.RUNNING.value,
            to_db_time(now),
            self.node,
        ]
        with self.db.write() as con:  # the ids only: the node has the rows
            won = {str(raw[0]) for raw in con.execute(_CLAIM, params).fetchall()}
            if won:
                announce(con, self.node, sorted(won))
        return won

    def take_over(
        self, job_id: str, attempt: int, robot_id: str, now: datetime
    ) -> SharedRow | None:
        rows = self._returning(
            "UPDATE jobs SET owner = ?, robot_id = ?, accepted_at = coalesce(accepted_at, ?) "
            f"WHERE job_id = ? AND attempt = ? AND status = ? RETURNING {_RETURNING}",
            [self.node, robot_id, to_db_time(now), job_id, attempt, JobStatus.RUNNING.value],
        )
        return rows[0] if rows else None

    def cancel(self, job_id: str, now: datetime) -> SharedRow | None:
        with self.db.write() as con:
            raw = con.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, owner = ? "
                f"WHERE job_id = ? AND status = ? RETURNING {_RETURNING}",
                [JobStatus.CANCELLED.value, to_db_time(now), self.node, job_id, "queued"],
            ).fetchall()
            if not raw:
                raw = con.execute(
                    "UPDATE jobs SET cancel_requested = TRUE "
                    f"WHERE job_id = ? AND status = ? RETURNING {_RETURNING}",
                    [job_id, JobStatus.RUNNING.value],
                ).fetchall()
            if raw:
                announce(con, self.node, [job_id])
        return _row(raw[0]) if raw else None

    def reopen(self, queued: Job, was: Job) -> bool:
        values = dict(zip(_STAGED_COLUMNS, (*_job_row(queued), False, self.node), strict=True))
        names = [*_MUTABLE, "owner"]
        sets = ", ".join(f"{name} = ?" for name in names)
        rows = self._returning(
            f"UPDATE jobs SET {sets} WHERE job_id = ? AND status = ? AND attempt = ? "
            f"RETURNING {_RETURNING}",
            [*(values[name] for name in names), was.job_id, was.status.value, was.attempt],
        )
        return bool(rows)

    def adopt(self, node_id: str) -> list[SharedRow]:
        with self.db.write() as con:
            rows = [
                _row(raw)
                for raw in con.execute(
                    "UPDATE jobs SET owner = ? WHERE owner = ? AND status IN (?, ?) "
                    f"RETURNING {_RETURNING}",
                    [self.node, node_id, *_UNFINISHED],
                ).fetchall()
            ]
            con.execute("DELETE FROM node_robots WHERE node = ?", [node_id])
            if rows:
                announce(con, self.node, [row.job.job_id for row in rows])
        return rows

    # -- events for the other nodes' monitors --------------------------------------------

    def share(self, events: Sequence[SharedEvent]) -> None:
        if not events:
            return
        last: dict[str, SharedEvent] = {}  # each robot's last event of the batch
        for event in events:
            if event.robot_id is not None:
                last[event.robot_id] = event
        with self.db.write() as con:
            con.execute(
                "INSERT INTO node_events (node, kind, data, robot_id, online, noted_at) "
                f"SELECT ?, k, d, r, o, {_UTC_NOW} FROM unnest(?::VARCHAR[], ?::VARCHAR[], "
                "?::VARCHAR[], ?::BOOLEAN[]) AS t(k, d, r, o)",
                [self.node, *columns([(e.kind, e.data, e.robot_id, e.online) for e in events])],
            )
            gone = [robot_id for robot_id, e in last.items() if not e.online]
            if gone:
                con.execute(
                    "DELETE FROM node_robots WHERE node = ? "
                    "AND robot_id IN (SELECT unnest(?::VARCHAR[]))",
                    [self.node, gone],
                )
            up = [(robot_id, e.data) for robot_id, e in last.items() if e.online]
            if up:
                con.execute(
                    f"INSERT INTO node_robots (robot_id, node, data, noted_at) SELECT r, ?, d, "
                    f"{_UTC_NOW} FROM unnest(?::VARCHAR[], ?::VARCHAR[]) AS t(r, d) "
                    "ON CONFLICT (robot_id) DO UPDATE SET node = excluded.node, "
                    "data = excluded.data, noted_at = excluded.noted_at",
                    [self.node, *columns(up)],
                )
            self._shared += len(events)
            if self._shared >= 1000:  # now and then: this node's events nobody needs now
                self._shared = 0
                con.execute(
                    f"DELETE FROM node_events WHERE node = ? AND noted_at < {_UTC_NOW} - "
                    "make_interval(secs => ?)",
                    [self.node, EVENTS_KEPT_S],
                )
            con.execute("SELECT pg_notify(?, ?)", [EVENTS_CHANNEL, self.node])

    def robots(self, node: str | None = None) -> list[SharedEvent]:
        where = "node <> ?" if node is None else "node = ?"
        raw = self.db.select(
            f"SELECT robot_id, node, data FROM node_robots WHERE {where} ORDER BY robot_id",
            [self.node if node is None else node],
        )
        return [
            SharedEvent("robot_status", str(data), str(robot_id), True, str(node))
            for robot_id, node, data in raw
        ]

    def hear_events(
        self, on_events: Callable[[list[SharedEvent], list[SharedEvent] | None], None]
    ) -> None:
        self._on_events = on_events

    def _new_events(self) -> list[SharedEvent]:
        """The other nodes' events recorded since the last read (each once)."""
        raw = self.db.select(
            f"SELECT {_EVENT_ROW}, noted_at >= {_UTC_NOW} - make_interval(secs => ?) "
            f"FROM node_events WHERE (seq > ? OR noted_at >= {_UTC_NOW} - "
            "make_interval(secs => ?)) AND node <> ? ORDER BY seq",
            [_LATE_S, self._last_seq, _LATE_S, self.node],
        )
        recent: set[int] = set()
        events: list[SharedEvent] = []
        for seq, node, kind, data, robot_id, online, late in raw:
            if late:
                recent.add(seq)
            if seq in self._recent or (seq <= self._last_seq and not late):
                continue
            events.append(SharedEvent(str(kind), str(data), robot_id, bool(online), str(node)))
        if raw:
            self._last_seq = max(self._last_seq, max(int(r[0]) for r in raw))
        self._recent = recent  # what the next read may see again
        return events

    def _events_from_now(self) -> None:
        """Start after what is recorded now (the first connection: no replay)."""
        self._last_seq = int(self.db.select("SELECT coalesce(max(seq), 0) FROM node_events")[0][0])
        self._recent = set()
        self._new_events()  # those of the last moments, whose numbers may be lower: read

    # -- reads ---------------------------------------------------------------------------

    def read(self, job_ids: Collection[str]) -> list[SharedRow]:
        if not job_ids:
            return []
        raw = self.db.select(
            f"SELECT {_ROW} FROM jobs WHERE job_id IN (SELECT unnest(?::VARCHAR[]))",
            [sorted(job_ids)],
        )
        return [_row(r) for r in raw]

    def unfinished(self) -> list[SharedRow]:
        raw = self.db.select(f"SELECT {_ROW} FROM jobs WHERE status IN (?, ?)", list(_UNFINISHED))
        return [_row(r) for r in raw]

    def dead_nodes(self) -> list[str]:
        owners = self.db.select(
            "SELECT owner FROM jobs WHERE status IN (?, ?) AND owner IS NOT NULL "
            "AND owner <> ? UNION SELECT node FROM node_robots WHERE node <> ? ORDER BY 1",
            [*_UNFINISHED, self.node, self.node],
        )
        dead: list[str] = []
        for (owner,) in owners:
            with self.db.shared() as con:
                if _try_lock(con, owner):
                    con.execute("SELECT pg_advisory_unlock(hashtext(?))", [_liveness_key(owner)])
                    dead.append(owner)
        return dead

    # -- listening -----------------------------------------------------------------------

    def listen(
        self,
        on_rows: Callable[[list[SharedRow], bool], None],
        on_token: Callable[[str], None] | None = None,
    ) -> None:
        if self._thread is not None:
            return
        if not self.node:
            raise QueueError("bind a node id before listening")
        self._thread = threading.Thread(
            target=self._listen,
            args=(on_rows, on_token or (lambda _name: None)),
            name=f"casare-listen-{self.node}",
            daemon=True,
        )
        self._thread.start()

    def _listen(
        self, on_rows: Callable[[list[SharedRow], bool], None], on_token: Callable[[str], None]
    ) -> None:
        delay = _RETRY_FIRST_S
        while not self._stop.is_set():
            con: Listening | None = None
            try:
                con = self._dedicated()
                con.execute(f"LISTEN {NOTIFY_CHANNEL}")
                con.execute(f"LISTEN {TOKENS_CHANNEL}")
                on_events = self._on_events
                if on_events is not None:
                    con.execute(f"LISTEN {EVENTS_CHANNEL}")
                    if self._last_seq < 0:
                        self._events_from_now()
                    on_events(self._new_events(), self.robots())
                forget_known(self.db)  # token changes may have been missed too
                locked = _try_lock(con, self.node)
                if not locked:
                    logger.warning(
                        "node %s: its liveness lock is held by another process (an "
                        "orchestrator with the same --node-id, or this one's last connection "
                        "the server has not dropped yet)",
                        self.node,
                    )
                on_rows(self.unfinished(), True)  # what changed while not listening
                self.listening.set()
                delay = _RETRY_FIRST_S
                while not self._stop.is_set():
                    ids: set[str] = set()
                    heard_events = False
                    notes = list(con.notifies(timeout=LISTEN_WAIT_S, stop_after=1))
                    if notes:  # and the burst it came in
                        notes += con.notifies(timeout=BURST_S)
                    for note in notes:
                        if note.channel == TOKENS_CHANNEL:
                            forget_known(self.db)
                            on_token(str(note.payload))
                            continue
                        if note.channel == EVENTS_CHANNEL:
                            heard_events |= str(note.payload) != self.node
                            continue
                        owner, _, listed = str(note.payload).partition(" ")
                        if owner != self.node:
                            ids.update(i for i in listed.split(",") if i)
                    if ids:
                        on_rows(self.read(ids), False)
                    if heard_events and on_events is not None:
                        events = self._new_events()
                        if events:
                            on_events(events, None)
                    if not locked:
                        locked = _try_lock(con, self.node)
            except Exception as exc:
                self.listening.clear()
                if self._stop.is_set():
                    break
                logger.warning(
                    "node %s does not hear the other orchestrators now: %s (again in %g s)",
                    self.node,
                    one_line(exc),
                    delay,
                )
                self._stop.wait(delay)
                delay = min(_RETRY_MAX_S, delay * 2)
            finally:
                if con is not None:
                    try:
                        con.close()
                    except Exception:
                        logger.debug("closing the listening connection failed", exc_info=True)
        self.listening.clear()

    def close(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5.0)


def _try_lock(con: Connection | Listening, node_id: str) -> bool:
    """Take ``node_id``'s liveness lock on ``con`` if it is free."""
    row = con.execute(
        "SELECT pg_try_advisory_lock(hashtext(?))", [_liveness_key(node_id)]
    ).fetchone()
    return bool(row and row[0])
