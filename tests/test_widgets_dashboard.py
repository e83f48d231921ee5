"""The dashboard's widgets without a browser, against a real orchestrator and a real robot
with real kernels (a ServiceThread, as in test_client): widgets are instantiated and
inspected (``.value``, children, CSS classes), buttons clicked with ``.click()``. Waits are
on the dashboard state's change listener (a condition), bounded; nothing sleeps."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import served, write_notebook

from casare_nb import Client
from casare_nb.core.models import RobotStatus, RunStatus
from casare_nb.orchestrator.service import OrchestratorService
from casare_nb.service_thread import ServiceThread
from casare_nb.widgets import Dashboard, Intervals
from casare_nb.widgets.state import DashboardState
from casare_nb.widgets.viewmodels import ConnectionState, RunningView

WAIT = 60.0
FAST = Intervals(render_s=0.02, tick_s=0.2)


def fast_backoff(attempt: int) -> float:
    return 0.05


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    root = tmp_path_factory.mktemp("widgets")
    workflows = root / "workflows"
    workflows.mkdir()
    write_notebook(
        workflows / "steps.ipynb",
        ["import time\ntime.sleep(0.2)\nx = n", "time.sleep(0.2)\ny = x + 1", "print('done', y)"],
        params="n: int = 1",
    )
    write_notebook(
        workflows / "typed.ipynb",
        ["print(count, ratio, region, dry)"],
        params=(
            "from typing import Literal\ncount: int\nratio: float = 0.5\n"
            'region: Literal["EU", "US"] = "EU"\ndry: bool = False'
        ),
    )
    write_notebook(
        workflows / "checked.ipynb",
        [
            "data = list(range(10))",
            "assert len(data) <= limit, f'{len(data)} rows > limit {limit}'",
            "total = sum(data)",
        ],
        params="limit: int = 5",
    )
    write_notebook(workflows / "sleepy.ipynb", ["ready = True", "import time\ntime.sleep(60)"])
    with served(root / "state", workflows, "robot-a", pool_size=2) as thread:
        yield thread


@pytest.fixture
def client(cluster: ServiceThread) -> Iterator[Client]:
    with cluster.client() as c:
        yield c


@pytest.fixture
def dashboards() -> Iterator[Callable[..., Dashboard]]:
    """Makes dashboards (fast intervals and backoff) and closes them all at the end."""
    made: list[Dashboard] = []

    def make(client: Client | None = None, **kw: Any) -> Dashboard:
        kw.setdefault("intervals", FAST)
        kw.setdefault("backoff", fast_backoff)
        dashboard = Dashboard(client, **kw)
        made.append(dashboard)
        return dashboard

    yield make
    for dashboard in made:
        dashboard.close()


class Waiter:
    """Waits for a predicate over a dashboard's state, woken by its change listener."""

    def __init__(self, state: DashboardState) -> None:
        self.state = state
        self.condition = threading.Condition()
        state.on_change(self._changed)

    def _changed(self, _: object) -> None:
        with self.condition:
            self.condition.notify_all()

    def until(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        with self.condition:
            ok = self.condition.wait_for(predicate, timeout)
        assert ok, f"{what}: not within {timeout} s (connection: {self.state.connection()})"


def connected(dashboard: Dashboard) -> Waiter:
    waiter = Waiter(dashboard.state)
    waiter.until(lambda: dashboard.state.connection().ok, "connected")
    return waiter


def classes(widget: Any) -> set[str]:
    return set(widget._dom_classes)


def texts(widget: Any) -> str:
    """Every HTML/Label value under ``widget``, joined (a rendered view as text)."""
    out = [str(getattr(widget, "value", ""))] if hasattr(widget, "value") else []
    for child in getattr(widget, "children", ()):
        out.append(texts(child))
    return "\n".join(out)


# -- submit ----------------------------------------------------------------------------------


def test_the_submit_form_refuses_an_invalid_value_on_its_field_and_submits_nothing(
    client: Client, dashboards: Callable[..., Dashboard]
) -> None:
    """A required int typed 'many' is refused on its field (casare-field-error-count) with
    ParamSchema.problem's words; a missing one too; no job is submitted."""
    dashboard = dashboards(client, start=False)
    dashboard.refresh()
    submit = dashboard.submit
    assert "typed.ipynb" in submit.paths
    submit.workflow.value = "typed.ipynb"
    form = submit.form
    assert form is not None
    fields = form.fields
    assert {n: type(f.input).__name__ for n, f in fields.items()} == {
        "count": "Text",
        "ratio": "Text",
        "region": "Dropdown",
        "dry": "Checkbox",
    }
    assert "casare-field-count" in classes(fields["count"].input)
    assert "casare-field-error-count" in classes(fields["count"].error)
    before = len(client.jobs(limit=1000))
    fields["count"].input.value = "many"
    submit.button.click()
    assert "parameter 'count': expected int, got 'many'" in fields["count"].error.value
    assert fields["ratio"].error.value == ""
    assert "not submitted" in submit.result.value
    fields["count"].input.value = ""
    assert submit.submit() is None
    assert "missing required parameter 'count'" in fields["count"].error.value
    assert len(client.jobs(limit=1000)) == before


def test_a_valid_submit_queues_a_job_with_the_typed_values(
    client: Client, dashboards: Callable[..., Dashboard]
) -> None:
    """Typed values and a priority go to the orchestrator as raw parameters: the job is
    queued with them, coerced, and the answer line names it."""
    dashboard = dashboards(client, start=False)
    dashboard.refresh()
    submit = dashboard.submit
    form = submit.choose("typed.ipynb")
    assert form is not None
    form.fields["count"].input.value = "3"
    form.fields["region"].input.value = "US"
    form.fields["dry"].input.value = True
    submit.priority.value = "high"
    job_id = submit.submit()
    assert job_id is not None and f"queued job {job_id}" in submit.result.value
    assert form.fields["count"].error.value == ""
    job = client.wait(job_id, timeout=WAIT)
    assert job.status is RunStatus.COMPLETED and job.priority.value == "high"
    assert job.parameters == {"count": 3, "region": "US", "dry": True}


def test_a_submit_the_server_refuses_shows_its_one_line_detail(
    client: Client, dashboards: Callable[..., Dashboard]
) -> None:
    """With submissions paused, Submit shows the server's one-line 503 detail."""
    dashboard = dashboards(client, start=False)
    dashboard.refresh()
    form = dashboard.submit.choose("steps.ipynb")
    assert form is not None
    client.pause_submissions(True)
    try:
        assert dashboard.submit.submit() is None
    finally:
        client.pause_submissions(False)
    result = dashboard.submit.result.value
    assert "submissions are paused" in result and "\n" not in result


# -- live ------------------------------------------------------------------------------------


def test_the_dashboard_sees_the_robot_online_and_a_jobs_progress_to_completed(
    client: Client, dashboards: Callable[..., Dashboard]
) -> None:
    """Live from the event stream: robot-a online in the robots table; a submitted job
    runs cell by cell (its bar and label follow) and ends in the recently finished list."""
    dashboard = dashboards(client)
    waiter = connected(dashboard)
    waiter.until(
        lambda: any(r.robot_id == "robot-a" for r in dashboard.state.robots()), "robot listed"
    )
    [robot] = [r for r in dashboard.state.robots() if r.robot_id == "robot-a"]
    assert robot.status in (RobotStatus.ONLINE, RobotStatus.BUSY)
    seen: list[RunningView] = []
    lock = threading.Lock()

    def record(_: object) -> None:
        with lock:
            seen.extend(dashboard.state.running())

    dashboard.state.on_change(record)
    job = client.submit("steps.ipynb", raw_parameters={"n": "4"})
    waiter.until(
        lambda: any(f.job_id == job.job_id for f in dashboard.state.finished()), "job finished"
    )
    [done] = [f for f in dashboard.state.finished() if f.job_id == job.job_id]
    assert done.status is RunStatus.COMPLETED and done.workflow == "steps.ipynb"
    with lock:
        mine = [v for v in seen if v.job_id == job.job_id]
    progress = [(v.cells_done, v.cells_total) for v in mine]
    assert progress == sorted(progress) and mine[-1].cells_done == mine[-1].cells_total > 0
    assert mine[0].label.startswith("cell ") and mine[-1].fraction == 1.0
    assert all(job.job_id not in v.job_id for v in dashboard.state.running())
    dashboard.render()
    row = dashboard.robots.rows["robot-a"]
    assert "casare-robot-robot-a" in classes(row.widget) and "robot-a" in row.html.value
    assert job.job_id in dashboard.running.finished.value
    assert "completed" in dashboard.running.finished.value
    assert dashboard.running.rows.get(job.job_id) is None  # left the live view


def test_a_running_job_shows_a_bar_its_current_cell_and_cancel_cancels_it(
    client: Client, dashboards: Callable[..., Dashboard]
) -> None:
    """A running job has a row (casare-job-<id>) with a progress bar, 'cell i/n · first
    line · elapsed', and Cancel, which ends it cancelled."""
    dashboard = dashboards(client)
    waiter = connected(dashboard)
    job = client.submit("sleepy.ipynb")
    waiter.until(
        lambda: any(
            v.job_id == job.job_id and v.first_line == "import time"
            for v in dashboard.state.running()
        ),
        "running with its current cell's first line",
    )
    dashboard.render()
    row = dashboard.running.rows[job.job_id]
    assert f"casare-job-{job.job_id}" in classes(row.widget)
    assert "casare-job-bar" in classes(row.bar) and row.bar.max >= 1
    assert "cell " in row.label.value and "import time" in row.label.value
    row.cancel.click()
    waiter.until(
        lambda: any(f.job_id == job.job_id for f in dashboard.state.finished()), "job finished"
    )
    [done] = [f for f in dashboard.state.finished() if f.job_id == job.job_id]
    assert done.status is RunStatus.CANCELLED


def test_the_drain_button_pauses_the_robot_and_undrain_resumes_it(
    client: Client, dashboards: Callable[..., Dashboard]
) -> None:
    """Drain on robot-a's row pauses it (draining, for the orchestrator too); the button
    becomes Undrain, which lets it take jobs again."""
    dashboard = dashboards(client)
    waiter = connected(dashboard)
    waiter.until(lambda: bool(dashboard.state.robots()), "robots listed")
    dashboard.render()
    row = dashboard.robots.rows["robot-a"]
    assert row.drain.description == "Drain"
    try:
        row.drain.click()
        assert {r.robot_id: r.status for r in client.robots()}["robot-a"] is RobotStatus.DRAINING
        waiter.until(lambda: dashboard.state.robots()[0].status is RobotStatus.DRAINING, "draining")
        dashboard.render()
        assert row.drain.description == "Undrain" and "draining" in row.html.value
        row.drain.click()
    finally:
        client.unpause_robot("robot-a")
    assert {r.robot_id: r.status for r in client.robots()}["robot-a"] is not RobotStatus.DRAINING
    waiter.until(
        lambda: dashboard.state.robots()[0].status is not RobotStatus.DRAINING, "undrained"
    )


def test_the_history_shows_the_chart_the_groups_and_the_last_failure(
    client: Client, dashboards: Callable[..., Dashboard]
) -> None:
    """After a failed run: the chart counts it today, the groups table lists its workflow,
    the failure card shows the failed cell, error, colourless traceback, the output
    notebook link and the 'Open in JupyterLab' command link."""
    failed = client.submit("checked.ipynb", wait=True, timeout=WAIT)
    assert failed.status is RunStatus.FAILED
    dashboard = dashboards(client, start=False)
    dashboard.refresh()
    history = dashboard.history
    assert "casare-history-chart" in classes(history.chart.widget)
    assert sum(history.chart.bars.y[1]) >= 1  # failed runs today
    assert "checked.ipynb" in history.groups.value
    card = history.card(failed.job_id)
    assert card is not None and f"casare-failure-{failed.job_id}" in classes(card.widget)
    assert "casare-failures" in classes(history.failures)
    html = card.html.value
    assert "failed at cell" in html and "AssertionError" in html and "\x1b" not in html
    assert f"""data-commandlinker-args='{{"job": "{failed.job_id}"}}'""" in html
    assert f"casare/notebook/{failed.job_id}?attempt=" in html
    path = failed.workflow_path
    history.workflow.value = path  # the filter re-reads the history of that workflow
    assert history.data is not None and history.data.workflow == path
    assert all(g.workflow_path == path for g in history.data.groups)


def test_the_rerun_button_reruns_the_failed_job_from_its_failed_cell(
    client: Client, dashboards: Callable[..., Dashboard]
) -> None:
    """Re-run from failed cell with the parameter form (pre-filled with limit=5, changed to
    20) queues a new attempt resuming from the failed cell, which completes."""
    failed = client.submit("checked.ipynb", wait=True, timeout=WAIT)
    dashboard = dashboards(client, start=False)
    dashboard.refresh()
    card = dashboard.history.card(failed.job_id)
    assert card is not None
    assert f"casare-rerun-{failed.job_id}" in classes(card.rerun)
    card.params.value = True
    assert card.form is not None
    limit = card.form.fields["limit"]
    assert limit.text == "5"
    limit.text = "20"
    card.rerun.click()
    assert "re-run queued from the failed cell" in card.result.value, card.result.value
    done = client.wait(failed.job_id, timeout=WAIT)
    assert (done.status, done.attempt, done.parameters["limit"]) == (RunStatus.COMPLETED, 2, 20)
    ran = [c.cell_id for c in client.cells(failed.job_id, attempt=2) if not c.replayed]
    assert "c0" not in ran and ran[-2:] == ["c1", "c2"]  # from the failed cell, not the start


def test_the_upcoming_section_lists_the_next_fire_times(
    client: Client, dashboards: Callable[..., Dashboard]
) -> None:
    """A schedule's next due times show in the upcoming table."""
    info = client.add_schedule("steps.ipynb", every="1h")
    try:
        dashboard = dashboards(client, start=False, upcoming=3)
        dashboard.refresh()
        assert info.schedule.schedule_id in dashboard.upcoming.widget.value
        assert "casare-upcoming" in classes(dashboard.upcoming.widget)
    finally:
        client.remove_schedule(info.schedule.schedule_id)


def test_the_key_widgets_carry_their_css_classes(
    client: Client, dashboards: Callable[..., Dashboard]
) -> None:
    """casare-dashboard, casare-status, casare-robots, casare-queue, casare-submit,
    casare-submit-button are on the widgets browser tests look for."""
    dashboard = dashboards(client, start=False)
    assert "casare-dashboard" in classes(dashboard.widget)
    assert "casare-status" in classes(dashboard.status.widget)
    assert "casare-robots" in classes(dashboard.robots.widget)
    assert "casare-queue" in classes(dashboard.queue.widget)
    assert "casare-submit" in classes(dashboard.submit.widget)
    assert "casare-submit-button" in classes(dashboard.submit.button)
    bundle = dashboard._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle


# -- connection ------------------------------------------------------------------------------


def test_an_unreachable_orchestrator_is_one_clear_line_then_the_dashboard_recovers(
    tmp_path: Path, dashboards: Callable[..., Dashboard]
) -> None:
    """With no orchestrator on its state dir, the status bar says why in one line and the
    dashboard retries; it connects once one starts, and again after a restart (new port,
    new local token)."""
    state_dir = tmp_path / "state"
    dashboard = dashboards(state_dir=state_dir)
    waiter = Waiter(dashboard.state)
    waiter.until(
        lambda: dashboard.state.connection().state is ConnectionState.UNREACHABLE, "unreachable"
    )
    message = dashboard.state.connection().message
    assert message.startswith(f"orchestrator unreachable at {state_dir / 'orchestrator.json'}")
    assert "no orchestrator running" in message and "\n" not in message
    dashboard.render()
    assert "orchestrator unreachable at" in dashboard.status.text
    for _ in range(2):  # start, stop, start again
        service = OrchestratorService(state_dir, port=0, http_port=0, workflows_dir=tmp_path)
        with ServiceThread(service):
            waiter.until(lambda: dashboard.state.connection().ok, "recovered")
            assert dashboard.state.connection().url == service.http_url
            dashboard.render()
            assert f"connected to {service.http_url}" in dashboard.status.text
        waiter.until(lambda: not dashboard.state.connection().ok, "lost again")
    assert dashboard.feed.connects == 2


def test_no_answer_at_a_url_and_a_refused_token_are_named(
    cluster: ServiceThread, dashboards: Callable[..., Dashboard]
) -> None:
    """A URL where nothing listens: 'orchestrator unreachable at URL: ...'; a wrong token:
    'token refused by the orchestrator at URL: ...'."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nowhere = dashboards(Client(f"http://127.0.0.1:{port}", "t", timeout=5))
    Waiter(nowhere.state).until(
        lambda: (
            not nowhere.state.connection().ok
            and nowhere.state.connection().state is not ConnectionState.CONNECTING
        ),
        "unreachable",
    )
    assert nowhere.state.connection().message.startswith(
        f"orchestrator unreachable at http://127.0.0.1:{port}: "
    )
    stranger = dashboards(Client(cluster.service.http_url, "wrong-token"))
    Waiter(stranger.state).until(
        lambda: stranger.state.connection().state is ConnectionState.REFUSED, "refused"
    )
    assert stranger.state.connection().message.startswith(
        f"token refused by the orchestrator at {cluster.service.http_url}"
    )


def test_close_stops_the_threads_and_the_subscription(
    client: Client, dashboards: Callable[..., Dashboard]
) -> None:
    """Dashboard.close() leaves none of its threads running, the subscription closed and
    the given client usable."""
    dashboard = dashboards(client)
    connected(dashboard)
    assert all(t.is_alive() for t in dashboard.threads)
    dashboard.close()
    assert not any(t.is_alive() for t in dashboard.threads)
    assert not [t for t in threading.enumerate() if t.name.startswith("casare-dashboard")]
    assert "dashboard closed" in dashboard.status.text
    assert client.info().version  # the caller's client is left open
