"""Schedules, triggers and what they did, in the orchestrator's database.

Rows of the tables of migration 4 (see :mod:`casare_nb.store.schema`), written on the
database's shared connection (:meth:`~casare_nb.store.database.Database.shared`), each call
one transaction. A schedule or trigger is stored as its pydantic model's JSON (``spec``): data,
never a pickle, so any version of the code can read and list it.

The claims are what make triggers fire once: :meth:`SqlTriggerStore.claim_fire` (one row per
schedule and due time), :meth:`~SqlTriggerStore.claim_delivery` (one per webhook delivery id)
and :meth:`~SqlTriggerStore.claim_file` (one per watched file) insert a row naming the job id
the caller is about to submit, or report the row that was there first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

from casare_nb.core.errors import QueueError
from casare_nb.core.triggers import Schedule, Trigger, TriggerKind
from casare_nb.store.interfaces import Claim, Fire
from casare_nb.store.sql import SqlDatabase, from_db_time, to_db_time

__all__ = ["SqlTriggerStore"]


class _Table(NamedTuple):
    name: str
    key: str
    flag: str
    noun: str


_SCHEDULES = _Table("schedules", "schedule_id", "paused", "schedule")
_TRIGGERS = _Table("triggers", "trigger_id", "enabled", "trigger")


def _now() -> datetime:
    return datetime.now(UTC)


class SqlTriggerStore:
    """CRUD of schedules and triggers, and their claims, in a
    :class:`~casare_nb.store.sql.SqlDatabase`."""

    def __init__(self, db: SqlDatabase) -> None:
        self.db = db

    # -- schedules -----------------------------------------------------------------------

    def add_schedule(self, schedule: Schedule) -> None:
        """Store a new schedule; an id already taken raises QueueError."""
        self._insert(_SCHEDULES, schedule.schedule_id, schedule, schedule.paused)

    def replace_schedule(self, schedule: Schedule) -> None:
        """Store ``schedule`` over the one with its id (a new one if there is none)."""
        self._insert(_SCHEDULES, schedule.schedule_id, schedule, schedule.paused, replace=True)

    def schedules(self) -> list[Schedule]:
        """Every schedule, oldest first."""
        return [_schedule(*row) for row in self._rows(_SCHEDULES)]

    def schedule(self, schedule_id: str) -> Schedule | None:
        """The schedule ``schedule_id``, or None."""
        rows = self._rows(_SCHEDULES, schedule_id)
        return _schedule(*rows[0]) if rows else None

    def set_paused(self, schedule_id: str, paused: bool) -> Schedule:
        """Pause or resume a schedule; the schedule as it is now. Unknown id: QueueError."""
        return _schedule(*self._change(_SCHEDULES, schedule_id, paused))

    def remove_schedule(self, schedule_id: str) -> Schedule:
        """Delete a schedule (its fires stay in the history); it as it was. Unknown: QueueError."""
        return _schedule(*self._change(_SCHEDULES, schedule_id, None))

    # -- the schedules and triggers tables (id, spec, flag, created_at) --------------------

    def _insert(
        self,
        table: _Table,
        item_id: str,
        item: Schedule | Trigger,
        flag: bool,
        *,
        replace: bool = False,
        kind: str | None = None,
    ) -> None:
        columns = [table.key, "spec", table.flag, "created_at"]
        values: list[object] = [item_id, item.model_dump_json(), flag, to_db_time(item.created_at)]
        if kind is not None:
            columns.append("kind")
            values.append(kind)
        with self.db.write() as con:
            if replace:
                con.execute(f"DELETE FROM {table.name} WHERE {table.key} = ?", [item_id])
            elif con.execute(
                f"SELECT 1 FROM {table.name} WHERE {table.key} = ?", [item_id]
            ).fetchone():
                raise QueueError(f"{table.noun} {item_id} already exists")
            con.execute(
                f"INSERT INTO {table.name} ({', '.join(columns)})"
                f" VALUES ({', '.join('?' * len(values))})",
                values,
            )

    def _rows(
        self, table: _Table, item_id: str | None = None, kind: str | None = None
    ) -> list[tuple[str, bool]]:
        where, params = "", []
        if item_id is not None:
            where, params = f"WHERE {table.key} = ?", [item_id]
        elif kind is not None:
            where, params = "WHERE kind = ?", [kind]
        rows = self.db.select(
            f"SELECT spec, {table.flag} FROM {table.name} {where} ORDER BY created_at, {table.key}",
            params,
        )
        return [(str(spec), bool(flag)) for spec, flag in rows]

    def _change(self, table: _Table, item_id: str, flag: bool | None) -> tuple[str, bool]:
        """Set the flag (None: delete the row); the row as it is (was). Unknown: QueueError."""
        with self.db.write() as con:
            if flag is None:
                sql = f"DELETE FROM {table.name} WHERE {table.key} = ?"
                params: list[object] = [item_id]
            else:
                sql = f"UPDATE {table.name} SET {table.flag} = ? WHERE {table.key} = ?"
                params = [flag, item_id]
            rows = con.execute(f"{sql} RETURNING spec, {table.flag}", params).fetchall()
        if not rows:
            raise QueueError(f"unknown {table.noun} {item_id}")
        return str(rows[0][0]), bool(rows[0][1])

    # -- fires ---------------------------------------------------------------------------

    def claim_fire(
        self, schedule_id: str, due_at: datetime, job_id: str | None, outcome: str
    ) -> Claim:
        """Record the fire of ``schedule_id`` for ``due_at``, unless one is recorded already
        (then ``new`` is False and ``job_id`` is the first fire's)."""
        with self.db.write() as con:
            rows = con.execute(
                "INSERT INTO fires (schedule_id, due_at, fired_at, job_id, outcome)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING job_id",
                [schedule_id, to_db_time(due_at), to_db_time(_now()), job_id, outcome],
            ).fetchall()
            if rows:
                return Claim(True, job_id)
            first = con.execute(
                "SELECT job_id FROM fires WHERE schedule_id = ? AND due_at = ?",
                [schedule_id, to_db_time(due_at)],
            ).fetchone()
        return Claim(False, None if first is None else first[0])

    def set_fire_outcome(self, schedule_id: str, due_at: datetime, outcome: str) -> None:
        """Change what a claimed fire came to (e.g. ``failed: <why>``)."""
        with self.db.write() as con:
            con.execute(
                "UPDATE fires SET outcome = ? WHERE schedule_id = ? AND due_at = ?",
                [outcome, schedule_id, to_db_time(due_at)],
            )

    def last_due(self, schedule_id: str) -> datetime | None:
        """The latest due time of ``schedule_id`` with a recorded fire, or None."""
        rows = self.db.select("SELECT max(due_at) FROM fires WHERE schedule_id = ?", [schedule_id])
        return from_db_time(rows[0][0]) if rows else None

    def last_dues(self) -> dict[str, datetime]:
        """The latest fired due time of every schedule that has one."""
        rows = self.db.select("SELECT schedule_id, max(due_at) FROM fires GROUP BY 1")
        return {sid: _aware(due) for sid, due in rows}

    def fires(self, schedule_id: str | None = None, *, limit: int = 1000) -> list[Fire]:
        """Recorded fires, newest due time first (of one schedule, or all)."""
        where, params = ("WHERE schedule_id = ?", [schedule_id]) if schedule_id else ("", [])
        rows = self.db.select(
            "SELECT schedule_id, due_at, fired_at, job_id, outcome FROM fires "
            f"{where} ORDER BY due_at DESC, schedule_id LIMIT ?",
            [*params, limit],
        )
        return [Fire(sid, _aware(due), _aware(at), job, out) for sid, due, at, job, out in rows]

    # -- triggers ------------------------------------------------------------------------

    def add_trigger(self, trigger: Trigger) -> None:
        """Store a new trigger; an id already taken raises QueueError."""
        self._insert(
            _TRIGGERS, trigger.trigger_id, trigger, trigger.enabled, kind=trigger.kind.value
        )

    def triggers(self, kind: TriggerKind | None = None) -> list[Trigger]:
        """Every trigger (of one kind), oldest first."""
        return [_trigger(*row) for row in self._rows(_TRIGGERS, kind=kind and kind.value)]

    def trigger(self, trigger_id: str) -> Trigger | None:
        """The trigger ``trigger_id``, or None."""
        rows = self._rows(_TRIGGERS, trigger_id)
        return _trigger(*rows[0]) if rows else None

    def set_enabled(self, trigger_id: str, enabled: bool) -> Trigger:
        """Enable or disable a trigger; the trigger as it is now. Unknown id: QueueError."""
        return _trigger(*self._change(_TRIGGERS, trigger_id, enabled))

    def remove_trigger(self, trigger_id: str) -> Trigger:
        """Delete a trigger; it as it was. Unknown id: QueueError."""
        return _trigger(*self._change(_TRIGGERS, trigger_id, None))

    # -- webhook deliveries --------------------------------------------------------------

    def claim_delivery(
        self, trigger_id: str, delivery_id: str, signature: str, job_id: str
    ) -> Claim:
        """Record a webhook delivery about to submit ``job_id``, unless ``delivery_id`` was
        seen already for this trigger (then ``new`` is False, with the first one's job)."""
        with self.db.write() as con:
            rows = con.execute(
                "INSERT INTO deliveries (trigger_id, delivery_id, signature, received_at, job_id)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING job_id",
                [trigger_id, delivery_id, signature, to_db_time(_now()), job_id],
            ).fetchall()
            if rows:
                return Claim(True, job_id)
            first = con.execute(
                "SELECT job_id FROM deliveries WHERE trigger_id = ? AND delivery_id = ?",
                [trigger_id, delivery_id],
            ).fetchone()
        return Claim(False, None if first is None else first[0])

    def claim_deliveries(
        self, trigger_id: str, deliveries: list[tuple[str, str, str]]
    ) -> list[Claim | None]:
        """Claim webhook deliveries ``(delivery id, signature, job id)`` of a trigger, in
        order and in one transaction: for each, :meth:`claim_delivery`'s answer, or None
        (nothing recorded) for a replay: a new delivery id whose signature is recorded."""
        out: list[Claim | None] = []
        rows: list[tuple[str, str, str]] = []
        with self.db.write() as con:
            claimed: dict[str, str | None] = dict(
                con.execute(
                    "SELECT delivery_id, job_id FROM deliveries WHERE trigger_id = ?"
                    " AND delivery_id IN (SELECT unnest(?::VARCHAR[]))",
                    [trigger_id, [d for d, _, _ in deliveries]],
                ).fetchall()
            )
            signed = {
                sig
                for (sig,) in con.execute(
                    "SELECT DISTINCT signature FROM deliveries WHERE trigger_id = ?"
                    " AND signature IN (SELECT unnest(?::VARCHAR[]))",
                    [trigger_id, [s for _, s, _ in deliveries]],
                ).fetchall()
            }
            for delivery_id, signature, job_id in deliveries:
                if delivery_id in claimed:
                    out.append(Claim(False, claimed[delivery_id]))
                elif signature in signed:
                    out.append(None)
                else:
                    claimed[delivery_id] = job_id
                    signed.add(signature)
                    rows.append((delivery_id, signature, job_id))
                    out.append(Claim(True, job_id))
            if rows:
                con.execute(
                    "INSERT INTO deliveries"
                    " (trigger_id, delivery_id, signature, job_id, received_at)"
                    " SELECT ?, unnest(?::VARCHAR[]), unnest(?::VARCHAR[]),"
                    " unnest(?::VARCHAR[]), ?",
                    [trigger_id, *map(list, zip(*rows, strict=True)), to_db_time(_now())],
                )
        return out

    def signature_seen(self, trigger_id: str, signature: str) -> bool:
        """Whether a delivery with this exact signature was recorded for the trigger."""
        return bool(
            self.db.select(
                "SELECT 1 FROM deliveries WHERE trigger_id = ? AND signature = ? LIMIT 1",
                [trigger_id, signature],
            )
        )

    def release_delivery(self, trigger_id: str, delivery_id: str) -> None:
        """Forget a claimed delivery whose job could not be submitted (it may come again)."""
        with self.db.write() as con:
            con.execute(
                "DELETE FROM deliveries WHERE trigger_id = ? AND delivery_id = ?",
                [trigger_id, delivery_id],
            )

    def deliveries(self, trigger_id: str) -> list[tuple[str, str | None]]:
        """(delivery id, job id) of every recorded delivery of a trigger, oldest first."""
        rows = self.db.select(
            "SELECT delivery_id, job_id FROM deliveries WHERE trigger_id = ?"
            " ORDER BY received_at, delivery_id",
            [trigger_id],
        )
        return [(str(d), j) for d, j in rows]

    # -- watched files -------------------------------------------------------------------

    def claim_file(self, trigger_id: str, path: str, job_id: str | None) -> Claim:
        """Record that a file-watch trigger handles ``path`` (as ``job_id``), unless it did."""
        with self.db.write() as con:
            rows = con.execute(
                "INSERT INTO watched_files (trigger_id, path, seen_at, job_id)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING job_id",
                [trigger_id, path, to_db_time(_now()), job_id],
            ).fetchall()
            if rows:
                return Claim(True, job_id)
            first = con.execute(
                "SELECT job_id FROM watched_files WHERE trigger_id = ? AND path = ?",
                [trigger_id, path],
            ).fetchone()
        return Claim(False, None if first is None else first[0])

    def release_file(self, trigger_id: str, path: str) -> None:
        """Forget a claimed file whose job could not be submitted."""
        with self.db.write() as con:
            con.execute(
                "DELETE FROM watched_files WHERE trigger_id = ? AND path = ?", [trigger_id, path]
            )

    def handled_files(self, trigger_id: str) -> dict[str, str | None]:
        """Path -> job id of every file a file-watch trigger has handled."""
        rows = self.db.select(
            "SELECT path, job_id FROM watched_files WHERE trigger_id = ?", [trigger_id]
        )
        return {str(path): job for path, job in rows}


def _aware(value: datetime) -> datetime:
    out = from_db_time(value)
    assert out is not None
    return out


def _schedule(spec: str, paused: bool) -> Schedule:
    schedule = Schedule.model_validate_json(spec)
    schedule.paused = bool(paused)
    return schedule


def _trigger(spec: str, enabled: bool) -> Trigger:
    trigger = Trigger.model_validate_json(spec)
    trigger.enabled = bool(enabled)
    return trigger
