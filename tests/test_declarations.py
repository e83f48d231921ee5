"""Schedules and triggers a workflow notebook declares in its metadata (``metadata.casare``),
loaded by a real orchestrator from its workflows directory at start, kept across restarts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from helpers import write_notebook

from casare_nb.core.models import TriggerKind
from casare_nb.core.triggers import TriggerError
from casare_nb.orchestrator.orchestrator import Orchestrator
from casare_nb.orchestrator.triggers.hub import read_declarations

DECLARED: dict[str, Any] = {
    "schedules": [
        {"cron": "0 6 * * 1-5", "timezone": "Europe/Berlin", "raw_parameters": {"region": "US"}},
        {"every": "15m", "priority": "high"},
    ],
    "triggers": [
        {"kind": "webhook", "secret_env": "INGEST_SECRET"},
        {"kind": "file_watch", "path": "inbox", "pattern": "*.csv"},
    ],
}


def workflow(root: Path, name: str, declared: dict[str, Any] | None) -> Path:
    (root / "inbox").mkdir(exist_ok=True)
    return write_notebook(
        root / name,
        ["x = 1"],
        params="region = 'EU'\nfile_path = ''",
        metadata=None if declared is None else {"casare": declared},
    )


async def started(tmp_path: Path) -> Orchestrator:
    orch = Orchestrator(tmp_path / "state", port=0, workflows_dir=tmp_path / "workflows")
    await orch.start()
    return orch


async def test_declared_schedules_and_triggers_are_loaded_at_start(tmp_path: Path) -> None:
    """A notebook declaring two schedules, a webhook and a file watch gets all four, with
    its parameters, time zone and priority, the file watch path relative to the notebook."""
    root = tmp_path / "workflows"
    root.mkdir()
    path = workflow(root, "report.ipynb", DECLARED)
    orch = await started(tmp_path)
    try:
        schedules = orch.triggers.store.schedules()
        triggers = orch.triggers.store.triggers()
    finally:
        await orch.stop()
    assert sorted((s.cron or "", s.every_s or 0) for s in schedules) == [
        ("", 900.0),
        ("0 6 * * 1-5", 0),
    ]
    cron = next(s for s in schedules if s.cron)
    assert (cron.timezone, cron.raw_parameters) == ("Europe/Berlin", {"region": "US"})
    assert {s.origin for s in schedules} == {"metadata:report.ipynb"}
    assert all(s.workflow_path == str(path.resolve()) for s in schedules)
    kinds = {t.kind: t for t in triggers}
    assert set(kinds) == {TriggerKind.WEBHOOK, TriggerKind.FILE_WATCH}
    assert kinds[TriggerKind.WEBHOOK].secret_env == "INGEST_SECRET"
    assert kinds[TriggerKind.FILE_WATCH].watch_path == str(root / "inbox")


async def test_declarations_keep_their_ids_and_pause_and_go_when_removed(tmp_path: Path) -> None:
    """A restart keeps declared schedules under the same ids (their fires and a pause stay);
    a declaration removed from the notebook is removed at the next start."""
    root = tmp_path / "workflows"
    root.mkdir()
    workflow(root, "report.ipynb", DECLARED)
    orch = await started(tmp_path)
    try:
        first = {s.schedule_id: s for s in orch.triggers.store.schedules()}
        hooks = {t.trigger_id for t in orch.triggers.store.triggers()}
        paused = next(iter(first))
        await orch.triggers.scheduler.pause(paused)
    finally:
        await orch.stop()
    orch = await started(tmp_path)
    try:
        again = {s.schedule_id: s for s in orch.triggers.store.schedules()}
        assert set(again) == set(first)
        assert again[paused].paused and again[paused].created_at == first[paused].created_at
        assert {t.trigger_id for t in orch.triggers.store.triggers()} == hooks
    finally:
        await orch.stop()
    workflow(root, "report.ipynb", {"schedules": DECLARED["schedules"][1:]})
    orch = await started(tmp_path)
    try:
        left = orch.triggers.store.schedules()
        assert [s.every_s for s in left] == [900.0]
        assert left[0].schedule_id in first
        assert orch.triggers.store.triggers() == []
    finally:
        await orch.stop()


async def test_a_bad_declaration_is_logged_and_the_other_files_still_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One notebook with an invalid cron does not stop the start: its error is logged with
    the file's name and the valid notebook's schedule is loaded."""
    root = tmp_path / "workflows"
    root.mkdir()
    workflow(root, "broken.ipynb", {"schedules": [{"cron": "99 * * * *"}]})
    workflow(root, "good.ipynb", {"schedules": [{"every": "1h"}]})
    orch = await started(tmp_path)
    try:
        schedules = orch.triggers.store.schedules()
    finally:
        await orch.stop()
    assert [s.origin for s in schedules] == ["metadata:good.ipynb"]
    assert any("broken.ipynb" in r.getMessage() for r in caplog.records)


def test_read_declarations_names_the_file_and_the_bad_field() -> None:
    """An unknown field in metadata.casare is a one-line TriggerError naming file and field."""
    nb = {"metadata": {"casare": {"schedules": [{"cron": "* * * * *", "sometimes": 1}]}}}
    with pytest.raises(TriggerError, match=r"wf\.ipynb: metadata\.casare\.schedules\.0\.sometimes"):
        read_declarations(nb, "wf.ipynb")
    assert read_declarations({"metadata": {}}, "wf.ipynb").schedules == []


async def test_a_notebook_declaring_its_secrets_keeps_its_schedules(tmp_path: Path) -> None:
    """metadata.casare.secrets (the documented list of secret names) sits next to
    declarations without making them invalid: the schedule is loaded."""
    root = tmp_path / "workflows"
    root.mkdir()
    workflow(root, "report.ipynb", {"secrets": ["api_key"], "schedules": [{"every": "1h"}]})
    orch = await started(tmp_path)
    try:
        assert [s.every_s for s in orch.triggers.store.schedules()] == [3600.0]
    finally:
        await orch.stop()


async def test_a_chain_to_a_notebook_outside_the_workflows_dir_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """on_success run: ../outside/evil.ipynb is logged as an error naming the path and
    declares nothing; a chain inside the directory still loads."""
    root = tmp_path / "workflows"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    write_notebook(tmp_path / "outside" / "evil.ipynb", ["x = 1"])
    write_notebook(root / "next.ipynb", ["y = 2"])
    workflow(
        root, "a.ipynb", {"triggers": [{"kind": "on_success", "run": "../outside/evil.ipynb"}]}
    )
    workflow(root, "b.ipynb", {"triggers": [{"kind": "on_success", "run": "next.ipynb"}]})
    with caplog.at_level(logging.ERROR, logger="casare_nb"):
        orch = await started(tmp_path)
    try:
        runs = [t.workflow_path for t in orch.triggers.store.triggers()]
    finally:
        await orch.stop()
    assert runs == [str((root / "next.ipynb").resolve())]
    assert any("outside the workflows directory" in r.getMessage() for r in caplog.records)
