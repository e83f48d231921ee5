"""The RunHistory interface, run against every backend: runs and cells upserted
idempotently, read back by run, attempt and status; the background writer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from stores import T0, make_cell, make_run

from casare_nb.core.history import MANUAL
from casare_nb.core.models import CellStatus, RestoreMode, RunStatus
from casare_nb.store.interfaces import RunHistory, Stores


def test_run_upsert_is_idempotent(stores: Stores) -> None:
    """Writing the same (run_id, attempt) again keeps one row holding the latest values."""
    store = stores.history
    store.write([make_run()], [])
    store.write([make_run()], [])
    finished = make_run(
        status=RunStatus.FAILED,
        finished_at=T0 + timedelta(minutes=2),
        duration_s=120.0,
        cells_total=7,
        error_name="ValueError",
        error_message="bad\nvalue",
        failed_cell=3,
        failed_cell_id="cell-3",
        output_path="out/demo.ipynb",
    )
    store.write([finished], [])
    store.write([finished], [])
    assert store.attempts("run-1") == [finished]


def test_cell_upsert_is_idempotent(stores: Stores) -> None:
    """Writing the same cell twice, across calls or in one batch, leaves one row, latest wins."""
    store = stores.history
    store.write([], [make_cell(cell_index=0), make_cell(cell_index=1)])
    retried = make_cell(
        cell_index=1, status=CellStatus.ERROR, error_name="KeyError", error_message="'x'"
    )
    store.write([], [retried])
    store.write([], [make_cell(cell_index=2, duration_s=1.0), make_cell(cell_index=2)])
    assert store.list_cells("run-1") == [make_cell(cell_index=0), retried, make_cell(cell_index=2)]


def test_record_cells_bulk(stores: Stores) -> None:
    """A large batch of cells is stored completely, every field intact."""
    store = stores.history
    cells = [
        make_cell(
            cell_index=i,
            cell_id=None if i % 5 == 0 else f"id-{i}",
            replayed=i % 2 == 0,
            output_truncated=i % 3 == 0,
            status=CellStatus.TIMEOUT if i % 7 == 0 else CellStatus.OK,
        )
        for i in range(1000)
    ]
    store.write([], cells)
    store.write([], [])
    assert store.list_cells("run-1") == cells


def test_get_run_returns_latest_attempt_by_default(stores: Stores) -> None:
    """get_run without attempt returns the highest attempt; with one, exactly that attempt."""
    store = stores.history
    first = make_run(status=RunStatus.FAILED)
    second = make_run(attempt=2, resumed_from_attempt=1, started_at=T0 + timedelta(hours=1))
    store.write([second], [])
    store.write([first], [])
    assert store.get_run("run-1") == second
    assert store.get_run("run-1", attempt=1) == first
    assert store.get_run("run-1", attempt=3) is None
    assert store.get_run("other") is None


def test_attempts_are_ordered(stores: Stores) -> None:
    """attempts() returns every attempt of one run ordered by attempt number."""
    store = stores.history
    for attempt in (3, 1, 2):
        store.write([make_run(attempt=attempt)], [])
    store.write([make_run("run-2")], [])
    assert [run.attempt for run in store.attempts("run-1")] == [1, 2, 3]
    assert store.attempts("missing") == []


def test_list_runs_latest_attempt_and_status_filter(stores: Stores) -> None:
    """list_runs shows each run once (its latest attempt), newest first, filtered on that status."""
    store = stores.history
    store.write([make_run("a", 1, status=RunStatus.FAILED, started_at=T0)], [])
    store.write(
        [make_run("a", 2, status=RunStatus.COMPLETED, started_at=T0 + timedelta(hours=3))], []
    )
    store.write([make_run("b", 1, status=RunStatus.FAILED, started_at=T0 + timedelta(hours=1))], [])
    store.write(
        [make_run("c", 1, status=RunStatus.RUNNING, started_at=T0 + timedelta(hours=2))], []
    )

    listed = store.list_runs()
    assert [(r.run_id, r.attempt) for r in listed] == [("a", 2), ("c", 1), ("b", 1)]
    assert [r.run_id for r in store.list_runs(status={RunStatus.FAILED})] == ["b"]
    both = store.list_runs(status=[RunStatus.FAILED, RunStatus.COMPLETED])
    assert [r.run_id for r in both] == ["a", "b"]
    assert [r.run_id for r in store.list_runs(limit=2)] == ["a", "c"]
    assert store.list_runs(status=set()) == []
    assert store.list_runs(limit=0) == []


def test_list_cells_by_attempt(stores: Stores) -> None:
    """list_cells returns one attempt's cells, or all attempts ordered by (attempt, cell_index)."""
    store = stores.history
    cells = [make_cell(attempt=a, cell_index=i) for a in (2, 1) for i in (1, 0)]
    store.write([], [*cells, make_cell("run-2")])
    ordered = [make_cell(attempt=a, cell_index=i) for a in (1, 2) for i in (0, 1)]
    assert store.list_cells("run-1") == ordered
    assert store.list_cells("run-1", attempt=2) == ordered[2:]
    assert store.list_cells("run-1", attempt=5) == []


def test_parameters_and_lists_round_trip_as_json(stores: Stores) -> None:
    """parameters, replayed_cells and restore fields come back equal to what was written."""
    store = stores.history
    run = make_run(
        parameters={
            "alpha": 0.5,
            "n": 3,
            "name": "naïve ☃ 'quoted' \"double\"",
            "flags": [True, False, None],
            "nested": {"dates": ["2024-01-01"], "empty": {}},
        },
        replayed_cells=[0, 2, 5],
        restore_mode=RestoreMode.NAMESPACE,
        restored_from_cell=5,
        resumed_from_attempt=1,
        attempt=2,
        source="api",
        kernel_name="ir",
        language="R",
    )
    store.write([run], [])
    assert store.get_run("run-1") == run


def test_non_json_parameters_are_stored_as_text(stores: Stores) -> None:
    """Parameter values JSON cannot encode are stored as JSON-friendly text, not an error."""
    store = stores.history
    run = make_run(parameters={"path": Path("/data/in.csv"), "when": T0, "ids": (1, 2)})
    store.write([run], [])
    stored = store.get_run("run-1")
    assert stored is not None
    assert stored.parameters == {
        "path": "/data/in.csv",
        "when": "2024-05-01T12:00:00Z",
        "ids": [1, 2],
    }


def test_aware_datetimes_round_trip_as_utc(stores: Stores) -> None:
    """Aware datetimes in any zone come back as the same instant in UTC; naive ones as UTC."""
    store = stores.history
    plus_two = timezone(timedelta(hours=2))
    started = datetime(2024, 5, 1, 14, 30, 15, 123456, tzinfo=plus_two)
    run = make_run(started_at=started, finished_at=started + timedelta(seconds=90))
    store.write([run], [])
    store.write([], [make_cell(started_at=started), make_cell(cell_index=1, started_at=T0)])
    store.write([make_run("naive", started_at=datetime(2024, 5, 1, 9, 0))], [])

    stored = store.get_run("run-1")
    assert stored is not None
    assert stored.started_at == started and stored.started_at.tzinfo is UTC
    assert stored.started_at.hour == 12
    assert stored.finished_at == started + timedelta(seconds=90)
    cells = store.list_cells("run-1")
    assert [c.started_at for c in cells] == [started, T0]
    assert all(c.started_at.tzinfo is UTC for c in cells)
    naive = store.get_run("naive")
    assert naive is not None and naive.started_at == datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def test_writer_many_put_cells_then_flush_writes_all(stores: Stores) -> None:
    """Many put_cells/put_run calls followed by flush() leave every row in the database."""
    store = stores.history
    writer = stores.history.writer()
    try:
        writer.put_run(make_run())
        for i in range(300):
            writer.put_cells([make_cell(cell_index=i)])
        writer.put_cells([make_cell(attempt=2, cell_index=i) for i in range(200)])
        writer.flush()
        assert len(store.list_cells("run-1")) == 500
        assert store.list_cells("run-1", attempt=1) == [make_cell(cell_index=i) for i in range(300)]
        assert store.get_run("run-1") == make_run()
    finally:
        writer.close()


def test_writer_last_put_wins_and_snapshots_records(stores: Stores) -> None:
    """The last put for a key wins; mutating a record after put does not change what is written."""
    store = stores.history
    writer = stores.history.writer()
    run = make_run()
    writer.put_run(run)
    run.status = RunStatus.COMPLETED
    run.parameters["late"] = True
    writer.put_run(make_run(status=RunStatus.FAILED, error_name="E"))
    writer.put_cells([make_cell(duration_s=1.0)])
    writer.put_cells([make_cell(duration_s=2.0)])
    writer.close()
    assert store.attempts("run-1") == [make_run(status=RunStatus.FAILED, error_name="E")]
    assert store.list_cells("run-1") == [make_cell(duration_s=2.0)]


def _history_of_two_workflows(store: RunHistory) -> None:
    """report.ipynb: a nightly schedule's runs (one failed then completed on a re-run) and
    one by hand; etl.ipynb: a webhook's failed run. Over two days."""
    day1, day2 = T0, T0 + timedelta(days=1)
    nightly, hook = "schedule:nightly", "webhook:h1"
    store.write(
        [
            make_run(
                "r1",
                workflow_path="report.ipynb",
                status=RunStatus.COMPLETED,
                started_at=day1,
                trigger=nightly,
            ),
            make_run(
                "r2",
                workflow_path="report.ipynb",
                status=RunStatus.FAILED,
                started_at=day2,
                trigger=nightly,
            ),
            make_run(
                "r2",
                2,
                workflow_path="report.ipynb",
                status=RunStatus.COMPLETED,
                started_at=day2 + timedelta(hours=5),
                trigger=nightly,
            ),
            make_run(
                "r3",
                workflow_path="report.ipynb",
                status=RunStatus.CANCELLED,
                started_at=day2 + timedelta(hours=1),
            ),
            make_run(
                "e1",
                workflow_path="etl.ipynb",
                status=RunStatus.FAILED,
                started_at=day2 + timedelta(hours=2),
                trigger=hook,
            ),
        ],
        [],
    )


def test_list_runs_filters_on_workflow_trigger_and_pages_with_before(stores: Stores) -> None:
    """list_runs narrows to a workflow, to what started the runs ('manual': by hand) and to
    those started before a time (the next page)."""
    store = stores.history
    _history_of_two_workflows(store)
    ids = lambda runs: [r.run_id for r in runs]  # noqa: E731
    assert ids(store.list_runs(workflow="report.ipynb")) == ["r2", "r3", "r1"]
    assert ids(store.list_runs(trigger="schedule:nightly")) == ["r2", "r1"]
    assert ids(store.list_runs(trigger=MANUAL)) == ["r3"]
    first = store.list_runs(limit=2)
    assert ids(first) == ["r2", "e1"]
    assert ids(store.list_runs(limit=2, before=first[-1].started_at)) == ["r3", "r1"]
    assert store.list_runs(workflow="nothing.ipynb") == []
    assert store.get_run("r2", 1).trigger == "schedule:nightly"  # type: ignore[union-attr]


def test_daily_counts_each_run_once_on_its_first_day_by_latest_outcome(stores: Stores) -> None:
    """daily() gives runs / completed / failed per workflow per day: a run failed then
    completed counts once, completed, on the day it first started; old days drop out."""
    store = stores.history
    _history_of_two_workflows(store)
    days = store.daily(days=2, now=T0 + timedelta(days=1, hours=11))  # May 2, 23:00
    assert [(d.workflow_path, d.day.isoformat(), d.runs, d.completed, d.failed) for d in days] == [
        ("report.ipynb", "2024-05-01", 1, 1, 0),
        ("etl.ipynb", "2024-05-02", 1, 0, 1),
        ("report.ipynb", "2024-05-02", 2, 1, 0),
    ]
    assert days[2].success_rate == 1.0 and days[1].success_rate == 0.0
    only_today = store.daily(days=1, workflow="report.ipynb", now=T0 + timedelta(days=1))
    assert [(d.day.isoformat(), d.runs) for d in only_today] == [("2024-05-02", 2)]
    assert store.daily(days=0) == []


def test_groups_keep_a_schedules_runs_on_one_line(stores: Stores) -> None:
    """groups() has one line per (workflow, what started it) with counts and the latest run,
    the most recently active first."""
    store = stores.history
    _history_of_two_workflows(store)
    for i in range(30):  # a busy schedule stays one line
        store.write(
            [
                make_run(
                    f"m{i}",
                    workflow_path="report.ipynb",
                    trigger="schedule:nightly",
                    status=RunStatus.COMPLETED,
                    started_at=T0 - timedelta(minutes=i + 1),
                )
            ],
            [],
        )
    groups = store.groups()
    assert [(g.workflow_path, g.trigger, g.runs, g.completed, g.failed) for g in groups] == [
        ("report.ipynb", "schedule:nightly", 32, 32, 0),
        ("etl.ipynb", "webhook:h1", 1, 0, 1),
        ("report.ipynb", None, 1, 0, 0),
    ]
    assert groups[0].last_run_id == "r2" and groups[0].last_status is RunStatus.COMPLETED
    assert groups[0].last_started_at == T0 + timedelta(days=1, hours=5)
    assert [g.trigger for g in store.groups(limit=1, workflow="etl.ipynb")] == ["webhook:h1"]


def test_cell_durations_are_per_workflow_over_ok_executed_cells(stores: Stores) -> None:
    """cell_durations() gives count, median, p95 and max of the ok, not replayed cells of each
    workflow's attempts."""
    store = stores.history
    _history_of_two_workflows(store)
    report = [make_cell("r1", cell_index=i, duration_s=float(i + 1)) for i in range(20)]
    noise = [
        make_cell("r1", cell_index=20, duration_s=99.0, replayed=True),
        make_cell("r1", cell_index=21, duration_s=99.0, status=CellStatus.ERROR),
    ]
    etl = [make_cell("e1", cell_index=0, duration_s=0.5)]
    store.write([], [*report, *noise, *etl])
    stats = {s.workflow_path: s for s in store.cell_durations()}
    assert stats["report.ipynb"].cells == 20
    assert stats["report.ipynb"].p50_s == pytest.approx(10.5)
    assert stats["report.ipynb"].p95_s == pytest.approx(19.05)
    assert stats["report.ipynb"].max_s == 20.0
    assert (stats["etl.ipynb"].cells, stats["etl.ipynb"].max_s) == (1, 0.5)
    assert [s.workflow_path for s in store.cell_durations(workflow="etl.ipynb")] == ["etl.ipynb"]
