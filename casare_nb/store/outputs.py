"""What runs recorded with ``casare_nb.output(name, value)``, in the orchestrator's
database (table ``outputs``): the values a chained workflow gets as parameters."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from casare_nb.store.sql import SqlDatabase, to_db_time, to_json

__all__ = ["SqlOutputStore"]


class SqlOutputStore:
    """The outputs of every run, by name; a later value of a name replaces the earlier one."""

    def __init__(self, db: SqlDatabase) -> None:
        self.db = db

    def __repr__(self) -> str:
        return f"SqlOutputStore({self.db.where!r})"

    def record_outputs(
        self,
        run_id: str,
        attempt: int,
        values: Mapping[str, tuple[Any, int | None]],
    ) -> None:
        """Store ``name -> (value, cell index)`` recorded by a run (a later value of a name
        replaces the earlier one)."""
        if not values:
            return
        now = to_db_time(datetime.now(UTC))
        with self.db.write() as con:
            for name, (value, cell) in values.items():
                con.execute(
                    "INSERT INTO outputs (run_id, name, value, attempt, cell_index, recorded_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, name) DO UPDATE SET"
                    " value = excluded.value, attempt = excluded.attempt,"
                    " cell_index = excluded.cell_index, recorded_at = excluded.recorded_at",
                    [run_id, name, to_json(value), attempt, cell, now],
                )

    def outputs(self, run_id: str) -> dict[str, Any]:
        """The values run ``run_id`` recorded with ``casare_nb.output``, by name."""
        rows = self.db.select(
            "SELECT name, value FROM outputs WHERE run_id = ? ORDER BY name", [run_id]
        )
        return {str(name): json.loads(value) for name, value in rows}
