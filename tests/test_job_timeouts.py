"""Per-job timeouts: given at submit (API, Client, CLI), stored with the job, sent in
job_assign; a cell past its limit ends the job ``timeout`` at that cell, on a real robot, even
when the cell swallows the interrupt."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cluster import Cluster, notebook
from helpers import Workspace, cell_index, served, write_notebook

from casare_nb import Client, ClientError
from casare_nb.cli import main
from casare_nb.core.models import CellStatus, Job, JobTimeouts, RunStatus
from casare_nb.core.triggers import TriggerFields
from casare_nb.notebook.executor import Options
from casare_nb.service_thread import ServiceThread
from casare_nb.store.embedded import open_embedded

WAIT = 90.0
SLEEPY = ["x = 1", "import time\ntime.sleep(60)", "print('never')"]
SWALLOWS = [
    "x = 1",
    "import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    pass\nassert False",
    "print('never')",
]
STUBBORN = [
    "x = 1",
    "import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    time.sleep(60)",
    "print('never')",
]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    root = tmp_path_factory.mktemp("timeouts")
    workflows = root / "workflows"
    workflows.mkdir()
    write_notebook(workflows / "sleepy.ipynb", SLEEPY)
    write_notebook(workflows / "swallows.ipynb", SWALLOWS)
    write_notebook(workflows / "quick.ipynb", ["x = 1"])
    with served(root / "state", workflows, "robot-t", pool_size=2) as thread:
        yield thread


@pytest.fixture
def client(service: ServiceThread) -> Iterator[Client]:
    with service.client() as c:
        yield c


def _timed_out_at(job: Job, workflow: Path, cell_id: str, limit: str) -> None:
    assert job.status is RunStatus.TIMEOUT, (job.status, job.error_name, job.error_message)
    assert job.failed_cell == cell_index(workflow, cell_id)
    assert job.error_name == "Timeout"
    assert f"cell timed out after {limit} s" in (job.error_message or "")


def test_api_cell_timeout_ends_the_job_timeout_at_that_cell(
    client: Client, service: ServiceThread
) -> None:
    """A job submitted with timeouts.cell_s ends timeout at the cell that slept past it."""
    job = client.submit("sleepy.ipynb", timeouts={"cell_s": 1.5}, wait=True, timeout=WAIT)
    workflows = service.service.workflows_dir
    _timed_out_at(job, workflows / "sleepy.ipynb", "c1", "1.5")
    assert job.timeouts == JobTimeouts(cell_s=1.5)
    assert client.get(job.job_id).timeouts == JobTimeouts(cell_s=1.5)


def test_api_run_timeout_ends_the_job_timeout(client: Client) -> None:
    """A job submitted with timeouts.run_s ends timeout when the whole run passes it."""
    job = client.submit("sleepy.ipynb", timeouts={"run_s": 1.5}, wait=True, timeout=WAIT)
    assert job.status is RunStatus.TIMEOUT
    assert "run timed out after 1.5 s" in (job.error_message or "")


def test_cell_swallowing_the_interrupt_ends_timeout_through_a_robot(
    client: Client, service: ServiceThread
) -> None:
    """A cell that catches the timeout's KeyboardInterrupt then raises still ends timeout."""
    job = client.submit("swallows.ipynb", timeouts={"cell_s": 1}, wait=True, timeout=WAIT)
    assert job.status is RunStatus.TIMEOUT, job.error_message
    workflows = service.service.workflows_dir
    _timed_out_at(job, workflows / "swallows.ipynb", "c1", "1")


@pytest.mark.parametrize(
    "timeouts",
    [{"cell_s": 0}, {"run_s": -1}, {"cell_s": 8 * 86_400}, {"cell": 5}, {"run_s": "soon"}],
)
def test_bad_timeouts_are_refused_422(client: Client, timeouts: dict[str, object]) -> None:
    """Timeouts not > 0, over 7 days, not numbers or of unknown names answer 422."""
    body = {"workflow": "quick.ipynb", "timeouts": timeouts}
    with pytest.raises(ClientError) as caught:
        client._request("POST", "/api/jobs", json=body)
    assert caught.value.status == 422


def test_cli_submit_cell_timeout_ends_the_job_timeout(
    service: ServiceThread,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """casare-nb submit --cell-timeout sends the limit: the job ends timeout, exit 1."""
    state = service.service.state_dir
    monkeypatch.setenv("CASARE_HOME", str(state))
    capsys.readouterr()
    args = ["submit", "sleepy.ipynb", "--cell-timeout", "1", "--run-timeout", "600", "--wait"]
    assert _cli(*args) == 1
    capsys.readouterr()
    assert _cli("jobs", "--json") == 0
    jobs = json.loads(capsys.readouterr().out)
    mine = [j for j in jobs if j["timeouts"] == {"cell_s": 1.0, "run_s": 600.0}]
    assert mine and mine[0]["status"] == "timeout"


def _cli(*args: str) -> int:
    """``casare-nb ARGS`` in this process; its exit code."""
    try:
        main(list(args))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def test_timeouts_are_kept_in_the_job_store(tmp_path: Path) -> None:
    """A job's timeouts survive the job store being closed and opened again."""
    now = datetime.now(UTC)
    job = Job(
        job_id="j-limits",
        workflow_path="/w.ipynb",
        created_at=now,
        eligible_at=now,
        timeouts=JobTimeouts(cell_s=2.5, run_s=60),
    )
    plain = job.model_copy(update={"job_id": "j-none", "timeouts": JobTimeouts()})
    stores = open_embedded(tmp_path)
    try:
        for j in (job, plain):
            assert stores.jobs.wait_mark(stores.jobs.stage(j, new=True), 30)
    finally:
        stores.close()
    stores = open_embedded(tmp_path)
    try:
        kept = stores.jobs.get_job("j-limits")
        none = stores.jobs.get_job("j-none")
    finally:
        stores.close()
    assert kept is not None and kept.timeouts == JobTimeouts(cell_s=2.5, run_s=60.0)
    assert none is not None and none.timeouts == JobTimeouts()


async def test_local_cell_swallowing_the_interrupt_ends_timeout(ws: Workspace) -> None:
    """run_notebook with cell_timeout: a cell catching KeyboardInterrupt then raising is a
    timeout at that cell, not its AssertionError."""
    nb = ws.notebook(SWALLOWS)
    result = await ws.run(nb, options=Options(cell_timeout=1.0))
    assert (result.status, result.failed_cell_id) == (RunStatus.TIMEOUT, "c1")
    assert result.error_name == "Timeout" and "cell timed out after 1 s" in (
        result.error_message or ""
    )
    assert [c.status for c in result.cells] == [CellStatus.OK, CellStatus.TIMEOUT]


async def test_local_cell_ignoring_the_interrupt_is_stopped_and_ends_timeout(
    ws: Workspace,
) -> None:
    """A cell that keeps running after the interrupt is killed after the grace: timeout."""
    nb = ws.notebook(STUBBORN)
    result = await ws.run(nb, options=Options(cell_timeout=1.0, interrupt_grace=1.0))
    assert (result.status, result.failed_cell_id) == (RunStatus.TIMEOUT, "c1")
    assert result.cells[-1].status is CellStatus.TIMEOUT
    assert result.cells[-1].duration_s < 30


async def test_a_chained_trigger_submits_its_job_with_its_timeouts(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A trigger's timeouts (the job fields it shares with submit) go with the job it
    submits: the chained job ends timeout at its sleeping cell."""
    first = notebook(tmp_path, "first.ipynb", ["x = 1"])
    sleepy = notebook(tmp_path, "chained.ipynb", SLEEPY)
    fields = TriggerFields(kind="on_success", run=str(sleepy), timeouts={"cell_s": 1})
    await cluster.orch.triggers.add_trigger(fields, first, sleepy)
    await cluster.robot("robot-a")
    job = await cluster.orch.submit(first)
    assert (await cluster.finished(job.job_id)).status is RunStatus.COMPLETED
    await cluster.until(
        lambda: any(j.source == "chain" and j.status.finished for j in cluster.orch.jobs())
    )
    chained = next(j for j in cluster.orch.jobs() if j.source == "chain")
    assert chained.timeouts == JobTimeouts(cell_s=1)
    _timed_out_at(chained, sleepy, "c1", "1")
