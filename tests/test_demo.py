"""``casare-nb demo`` as a real subprocess: an orchestrator and a robot in one process, the
example workflows driven through the Client, every expected outcome met."""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import EXIT_BAD_INPUT, EXIT_OK, describe, run_cli

from casare_nb.api import RuntimeInfo
from casare_nb.core.models import RunStatus
from casare_nb.store.embedded import open_embedded

WORKFLOWS = Path(__file__).resolve().parent.parent / "workflows"


@pytest.mark.slow
def test_demo_runs_the_examples_through_the_orchestrator_and_exits_0(tmp_path: Path) -> None:
    """The demo completes sales_report, re-runs flaky_ingest and long_prefix from their failed
    cells, fires a schedule and a signed webhook (a forged one refused), prints the jobs
    table, exits 0 and leaves no runtime file, schedule or trigger behind."""
    proc = run_cli(tmp_path, "demo", "--workflows", str(WORKFLOWS), timeout=180)
    assert proc.returncode == EXIT_OK, describe(proc)
    out = proc.stdout
    assert out.count("[ok]") == 7 and "FAILED" not in out, describe(proc)
    assert "the same signature on another body -> 401" in out
    assert "$ casare-nb rerun" in out and "$ casare-nb jobs" in out
    assert "AssertionError: bad rows 5.0% exceed max_bad_ratio 1.0%" in out
    state = tmp_path / "state"
    assert not (state / "orchestrator.json").exists()
    stores = open_embedded(state)
    try:
        jobs = stores.jobs.list_jobs()
        assert stores.triggers.schedules() == [] and stores.triggers.triggers() == []
    finally:
        stores.close()
    by_source = sorted((Path(j.workflow_path).name, j.source, j.status, j.attempt) for j in jobs)
    assert by_source == [
        ("flaky_ingest.ipynb", "api", RunStatus.COMPLETED, 2),
        ("long_prefix.ipynb", "api", RunStatus.COMPLETED, 2),
        ("sales_report.ipynb", "api", RunStatus.COMPLETED, 1),
        ("sales_report.ipynb", "schedule", RunStatus.COMPLETED, 1),
        ("sales_report.ipynb", "webhook", RunStatus.COMPLETED, 1),
    ]


def test_demo_refuses_a_state_dir_another_orchestrator_runs_on(tmp_path: Path) -> None:
    """With a live orchestrator's runtime file in the state dir, the demo stops at once:
    one line on stderr, exit 2."""
    state = tmp_path / "state"
    state.mkdir()
    with socket.create_server(("127.0.0.1", 0)) as listener:  # its "HTTP port"
        url = f"127.0.0.1:{listener.getsockname()[1]}"
        info = RuntimeInfo(
            pid=os.getpid(),  # alive: this test process stands in for the other orchestrator
            version="0",
            ws_url=f"ws://{url}",
            http_url=f"http://{url}",
            token="x",
            token_name="local-admin-x",
            state_dir=str(state),
            workflows_dir=str(tmp_path),
            started_at=datetime.now(UTC),
        )
        (state / "orchestrator.json").write_text(json.dumps(info.model_dump(mode="json")))
        proc = run_cli(tmp_path, "demo", "--workflows", str(WORKFLOWS))
    assert proc.returncode == EXIT_BAD_INPUT, describe(proc)
    (line,) = proc.stderr.strip().splitlines()
    assert "an orchestrator already runs on" in line
