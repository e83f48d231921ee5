"""The TriggerStore and OutputStore interfaces, run against every backend: schedules and
triggers kept as data, claims that let each due time, delivery and file fire once, and the
values runs recorded."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from stores import Backend

from casare_nb.core.errors import QueueError
from casare_nb.core.models import TriggerKind
from casare_nb.core.triggers import Schedule, ScheduleKind, Trigger
from casare_nb.store.interfaces import Claim, Stores

T0 = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)


def schedule(schedule_id: str = "sched-1", **changes: object) -> Schedule:
    fields: dict[str, object] = {
        "schedule_id": schedule_id,
        "kind": ScheduleKind.CRON,
        "cron": "0 6 * * 1-5",
        "timezone": "Europe/Berlin",
        "workflow_path": "/w/report.ipynb",
        "parameters": {"region": "EU"},
        "created_at": T0,
    }
    fields.update(changes)
    return Schedule.model_validate(fields)


def trigger(trigger_id: str = "hook-1", **changes: object) -> Trigger:
    fields: dict[str, object] = {
        "trigger_id": trigger_id,
        "kind": TriggerKind.WEBHOOK,
        "secret_env": "HOOK_SECRET",
        "workflow_path": "/w/report.ipynb",
        "created_at": T0,
    }
    fields.update(changes)
    return Trigger.model_validate(fields)


def test_schedules_are_kept_as_data_paused_replaced_and_removed(backend: Backend) -> None:
    """A schedule comes back equal (after a reopen too); pause, replace and remove change it;
    an id is taken once; unknown ids raise QueueError."""
    stores = backend.open()
    store = stores.triggers
    store.add_schedule(schedule())
    store.add_schedule(schedule("sched-2", created_at=T0 + timedelta(seconds=1)))
    with pytest.raises(QueueError, match="schedule sched-1 already exists"):
        store.add_schedule(schedule())
    assert store.set_paused("sched-1", True).paused
    stores.close()
    store = backend.open().triggers
    assert [s.schedule_id for s in store.schedules()] == ["sched-1", "sched-2"]
    assert store.schedule("sched-1") == schedule(paused=True)
    store.replace_schedule(schedule("sched-2", cron="30 7 * * *"))
    kept = store.schedule("sched-2")
    assert kept is not None and kept.cron == "30 7 * * *"
    assert store.remove_schedule("sched-1") == schedule(paused=True)
    assert store.schedule("sched-1") is None
    with pytest.raises(QueueError, match="unknown schedule ghost"):
        store.set_paused("ghost", False)


def test_a_due_time_is_claimed_once_and_its_outcome_kept(stores: Stores) -> None:
    """The first claim of (schedule, due time) is new; later ones name the first job; the
    fires list newest first with their outcome, and the last due time per schedule."""
    store = stores.triggers
    first = store.claim_fire("sched-1", T0, "job-a", "submitted")
    again = store.claim_fire("sched-1", T0, "job-b", "submitted")
    assert first == Claim(True, "job-a") and again == Claim(False, "job-a")
    store.claim_fire("sched-1", T0 + timedelta(days=1), None, "skipped: max_instances")
    store.set_fire_outcome("sched-1", T0, "failed: boom")
    fires = store.fires("sched-1")
    assert [(f.due_at, f.job_id, f.outcome) for f in fires] == [
        (T0 + timedelta(days=1), None, "skipped: max_instances"),
        (T0, "job-a", "failed: boom"),
    ]
    assert fires[0].fired_at.tzinfo is not None
    assert store.last_due("sched-1") == T0 + timedelta(days=1)
    assert store.last_dues() == {"sched-1": T0 + timedelta(days=1)}
    assert store.last_due("sched-9") is None


def test_claims_from_many_threads_are_made_once(stores: Stores) -> None:
    """Eight threads claiming the same due time, delivery and file: one claim each is new."""
    store = stores.triggers
    results: list[tuple[bool, bool, bool]] = []
    lock = threading.Lock()

    def claim(i: int) -> None:
        got = (
            store.claim_fire("sched-1", T0, f"job-{i}", "submitted").new,
            store.claim_delivery("hook-1", "d-1", f"sig-{i}", f"job-{i}").new,
            store.claim_file("trig-1", "/in/a.csv", f"job-{i}").new,
        )
        with lock:
            results.append(got)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 8
    assert [sum(column) for column in zip(*results, strict=True)] == [1, 1, 1]


def test_triggers_are_kept_enabled_disabled_and_removed(stores: Stores) -> None:
    """A trigger comes back equal, filtered by kind; enable/disable and remove answer it as
    it is (was); unknown ids raise QueueError."""
    store = stores.triggers
    store.add_trigger(trigger())
    store.add_trigger(
        trigger(
            "trig-1",
            kind=TriggerKind.FILE_WATCH,
            secret_env=None,
            watch_path="/in",
            created_at=T0 + timedelta(seconds=1),
        )
    )
    assert [t.trigger_id for t in store.triggers()] == ["hook-1", "trig-1"]
    assert [t.trigger_id for t in store.triggers(TriggerKind.FILE_WATCH)] == ["trig-1"]
    assert store.trigger("hook-1") == trigger()
    assert not store.set_enabled("hook-1", False).enabled
    stored = store.trigger("hook-1")
    assert stored is not None and not stored.enabled
    assert store.remove_trigger("trig-1").watch_path == "/in"
    assert store.trigger("trig-1") is None
    with pytest.raises(QueueError, match="unknown trigger ghost"):
        store.remove_trigger("ghost")


def test_deliveries_are_claimed_once_and_replays_refused(stores: Stores) -> None:
    """A delivery id is claimed once; in a batch, a known signature under a new id is a replay
    (None); a released delivery may come again."""
    store = stores.triggers
    assert store.claim_delivery("hook-1", "d-1", "sig-1", "job-a") == Claim(True, "job-a")
    assert store.claim_delivery("hook-1", "d-1", "sig-1", "job-b") == Claim(False, "job-a")
    batch = store.claim_deliveries(
        "hook-1", [("d-2", "sig-2", "job-c"), ("d-3", "sig-1", "job-d"), ("d-2", "sig-2", "x")]
    )
    assert batch == [Claim(True, "job-c"), None, Claim(False, "job-c")]
    assert store.signature_seen("hook-1", "sig-2") and not store.signature_seen("hook-1", "z")
    assert store.deliveries("hook-1") == [("d-1", "job-a"), ("d-2", "job-c")]
    store.release_delivery("hook-1", "d-1")
    assert store.claim_delivery("hook-1", "d-1", "sig-9", "job-e") == Claim(True, "job-e")


def test_watched_files_are_claimed_once_per_trigger(stores: Stores) -> None:
    """A file is handled once per trigger; another trigger may take it; a released one again."""
    store = stores.triggers
    assert store.claim_file("trig-1", "/in/a.csv", "job-a") == Claim(True, "job-a")
    assert store.claim_file("trig-1", "/in/a.csv", "job-b") == Claim(False, "job-a")
    assert store.claim_file("trig-2", "/in/a.csv", "job-c").new
    assert store.handled_files("trig-1") == {"/in/a.csv": "job-a"}
    store.release_file("trig-1", "/in/a.csv")
    assert store.handled_files("trig-1") == {}


def test_outputs_are_kept_per_run_the_last_value_winning(stores: Stores) -> None:
    """Recorded outputs come back by name as JSON values; a later value of a name replaces it;
    a run that recorded nothing has none."""
    outputs = stores.outputs
    outputs.record_outputs("run-1", 1, {"rows": (120, 3), "region": ("EU", 2)})
    outputs.record_outputs("run-1", 2, {"rows": (121, 3), "summary": ({"ok": [1, 2]}, None)})
    outputs.record_outputs("run-1", 2, {})
    assert outputs.outputs("run-1") == {"region": "EU", "rows": 121, "summary": {"ok": [1, 2]}}
    assert outputs.outputs("run-2") == {}
