"""The Upkeep interface, run against every backend: retention removes exactly the runs and
jobs that ended before the cutoff (never an unfinished one), old schedule fires but each
schedule's last; the export is one snapshot of every table with its row counts."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

from stores import RETENTION_PLAN, Backend, add_retention_records

from casare_nb.store.schema import SCHEMA_VERSION

NOW = datetime.now(UTC).replace(microsecond=0)


def test_retention_removes_what_ended_before_the_cutoff_and_nothing_unfinished(
    backend: Backend,
) -> None:
    """A dry run counts and keeps; the pass removes the old finished jobs and runs (a local
    run too) with their cells and outputs; a running or queued job and recent runs stay;
    fires claimed before a later cutoff go but the schedule's last."""
    stores = backend.open()
    add_retention_records(stores, NOW)
    cutoff = NOW - timedelta(days=30)
    dry = stores.upkeep.prune(cutoff, dry_run=True)
    assert (sorted(dry.run_ids), dry.runs, dry.cells, dry.jobs, dry.outputs) == (
        ["local-old", "old-done", "old-failed"],
        3,
        9,
        2,
        1,
    )
    assert stores.upkeep.record_ids() == set(RETENTION_PLAN) | {"local-old"}
    done = stores.upkeep.prune(cutoff)
    assert (done.run_ids, done.runs, done.cells, done.jobs, done.outputs) == (
        dry.run_ids,
        dry.runs,
        dry.cells,
        dry.jobs,
        dry.outputs,
    )
    assert stores.upkeep.record_ids() == {"old-running", "old-queued", "new-failed"}
    assert stores.outputs.outputs("old-done") == {}
    assert stores.outputs.outputs("new-failed") == {"rows": 20}
    assert [c.cell_index for c in stores.history.list_cells("old-running")] == [0, 1, 2]
    later = stores.upkeep.prune(NOW + timedelta(days=1))  # every fire was claimed before
    assert (later.run_ids, later.fires) == (["new-failed"], 3)
    assert [f.due_at for f in stores.triggers.fires("nightly")] == [NOW - timedelta(days=1)]


def test_the_export_holds_every_table_with_its_rows(backend: Backend, tmp_path: Path) -> None:
    """The export names every table of the records with its row count, and writes it into
    the new folder (a CSV per table from PostgreSQL, DuckDB's own export else)."""
    stores = backend.open()
    add_retention_records(stores, NOW)
    folder = tmp_path / "export"
    counts = stores.upkeep.export(folder)
    assert {
        name: counts[name] for name in ("jobs", "runs", "cells", "outputs", "fires", "schedules")
    } == {"jobs": 5, "runs": 5, "cells": 15, "outputs": 2, "fires": 4, "schedules": 1}
    assert counts["schema_migrations"] == SCHEMA_VERSION
    if backend.name == "postgres":
        with (folder / "cells.csv").open(newline="") as f:
            assert len(list(csv.reader(f))) == 1 + 15
    else:
        assert (folder / "schema.sql").is_file()
