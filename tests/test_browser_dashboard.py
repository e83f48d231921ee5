"""The dashboard as a person sees it: a real orchestrator and robot, a real JupyterLab (its
own temporary HOME) with casare_nb's extensions, the dashboard notebook run in headless
Chromium. The tests share one page and run in order, like a user's session."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import chromium, open_notebook, run_cell, screenshot
from helpers import served, write_notebook
from jupyter_harness import JupyterServer, jupyter_server
from playwright.sync_api import Browser, Page, expect

from casare_nb.core.models import RunStatus
from casare_nb.jupyter.dashboard import DASHBOARD_NOTEBOOK, dashboard_notebook
from casare_nb.service_thread import ServiceThread

pytestmark = pytest.mark.slow
WAIT = 90.0
SEEN_MS = 60_000  # what a person waits for at most, per assertion
ROBOT = "robot-b"
GATED = [
    "import os, time\nwhile not os.path.exists(gate + '.1'):\n    time.sleep(0.02)",
    "while not os.path.exists(gate + '.2'):\n    time.sleep(0.02)",
    "while not os.path.exists(gate + '.3'):\n    time.sleep(0.02)",
]
FAILING = "assert len(made) > limit, 'not enough rows'"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lab-root")
    workflows = root / "workflows"
    workflows.mkdir()
    write_notebook(workflows / "gated.ipynb", GATED, params="gate: str = ''")
    write_notebook(
        workflows / "flaky.ipynb",
        ["made = [1, 2, 3]\nfactor = 7", FAILING, "done = True"],
        params="limit: int = 5",
    )
    import json

    (root / DASHBOARD_NOTEBOOK).write_text(json.dumps(dashboard_notebook()))
    return root


@pytest.fixture(scope="module")
def cluster(root: Path) -> Iterator[ServiceThread]:
    workflows, work = root / "workflows", root / ".robot"
    with served(root / ".casare", workflows, ROBOT, pool_size=2, work_dir=work) as thread:
        yield thread


@pytest.fixture(scope="module")
def lab(
    root: Path, cluster: ServiceThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JupyterServer]:
    with jupyter_server(root, tmp_path_factory.mktemp("lab-home"), app="lab") as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as found:
        yield found


@pytest.fixture(scope="module")
def dashboard(browser: Browser, lab: JupyterServer) -> Iterator[Page]:
    page = open_notebook(browser, lab.url, lab.token, DASHBOARD_NOTEBOOK)
    run_cell(page, 1)
    page.locator(".casare-dashboard").wait_for(timeout=SEEN_MS)
    yield page
    page.close()


def _css(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)


def test_the_robot_appears_online(dashboard: Page) -> None:
    """The robots table shows the robot with status online."""
    row = dashboard.locator(f".casare-robot-{ROBOT}")
    expect(row).to_contain_text("online", timeout=SEEN_MS)
    screenshot(dashboard, "dashboard-robots", full=True)


def test_a_jobs_bar_advances_cell_by_cell_and_ends_completed(
    dashboard: Page, cluster: ServiceThread, root: Path
) -> None:
    """A running job's bar shows cell 1, 2, 3 of its cells in turn, its width grows, and the
    job then shows completed among the finished ones."""
    gate = root / "gate"
    with cluster.client() as client:
        job = client.submit("gated.ipynb", {"gate": str(gate)})
        card = dashboard.locator(f".casare-job-{_css(job.job_id)}")
        widths, numbers = [], []
        label = card.locator(".casare-job-label")
        for step, first_line in enumerate(["import os, time", "gate + '.2'", "gate + '.3'"], 1):
            expect(label).to_contain_text(first_line, timeout=SEEN_MS)
            found = re.search(r"cell (\d+)/5", label.inner_text())  # params, injected, c0-c2
            assert found, label.inner_text()
            numbers.append(int(found.group(1)))
            widths.append(_bar_width(card))
            if step == 1:
                screenshot(dashboard, "dashboard", full=True)
            Path(f"{gate}.{step}").touch()
        assert numbers == [numbers[0], numbers[0] + 1, numbers[0] + 2], numbers
        assert widths == sorted(widths) and widths[0] < widths[-1], widths
        assert client.wait(job.job_id, timeout=WAIT).status is RunStatus.COMPLETED
    expect(card).to_have_count(0, timeout=SEEN_MS)
    finished = dashboard.locator(".casare-finished")
    expect(finished).to_contain_text(re.compile(rf"{job.job_id}.*completed"), timeout=SEEN_MS)


def _bar_width(card: object) -> float:
    bar = card.locator(".casare-job-bar .progress-bar")  # type: ignore[attr-defined]
    style = bar.get_attribute("style") or ""
    found = re.search(r"width:\s*([\d.]+)%", style)
    return float(found.group(1)) if found else 0.0


def _failed_job(cluster: ServiceThread) -> str:
    with cluster.client() as client:
        job = client.submit("flaky.ipynb", wait=True, timeout=WAIT)
    assert job.status is RunStatus.FAILED
    return job.job_id


def test_a_failing_job_shows_its_failed_cell_and_traceback(
    dashboard: Page, cluster: ServiceThread
) -> None:
    """The failures list shows the failed run: its failed cell, the error and the
    traceback, with the re-run button and the Open in JupyterLab link."""
    job_id = _failed_job(cluster)
    card = dashboard.locator(f".casare-failure-{_css(job_id)}")
    expect(card).to_contain_text("failed at cell 3", timeout=SEEN_MS)
    expect(card).to_contain_text("AssertionError: not enough rows")
    expect(card.locator("pre").last).to_contain_text("Traceback")
    expect(card.locator(f".casare-rerun-{_css(job_id)}")).to_be_visible()
    expect(card.get_by_text("Open in JupyterLab")).to_be_visible()
    card.scroll_into_view_if_needed()
    screenshot(dashboard, "dashboard-failure", full=True)


def test_rerun_from_failed_cell_after_the_fix_turns_green(
    dashboard: Page, cluster: ServiceThread, root: Path
) -> None:
    """Fix the workflow, click "Re-run from failed cell": the job completes from that cell
    and shows completed."""
    job_id = _failed_job(cluster)
    card = dashboard.locator(f".casare-failure-{_css(job_id)}")
    expect(card).to_be_visible(timeout=SEEN_MS)
    workflow = root / "workflows" / "flaky.ipynb"
    original = workflow.read_text()
    workflow.write_text(original.replace("len(made) > limit", "len(made) < limit"))
    try:
        card.locator(
            f".casare-rerun-{_css(job_id)} button, button.casare-rerun-{_css(job_id)}"
        ).first.click()
        with cluster.client() as client:
            done = client.wait(job_id, timeout=WAIT)
            assert done.status is RunStatus.COMPLETED and done.attempt == 2
            ran = [c.cell_id for c in client.cells(job_id, attempt=2) if not c.replayed]
        assert "c0" not in ran and ran[-1] == "c2"
        finished = dashboard.locator(".casare-finished")
        expect(finished).to_contain_text(re.compile(rf"{job_id}.*completed"), timeout=SEEN_MS)
    finally:
        workflow.write_text(original)


def test_the_history_chart_shows_the_runs(dashboard: Page) -> None:
    """The history chart draws bars for today's runs (bqplot's SVG)."""
    chart = dashboard.locator(".casare-history-chart")
    chart.scroll_into_view_if_needed()
    drawn = (
        "() => [...document.querySelectorAll('.casare-history-chart svg .bargroup .bar')]"
        ".filter(b => parseFloat(b.getAttribute('height') || '0') > 0).length"
    )
    dashboard.wait_for_function(f"({drawn})() > 0", timeout=SEEN_MS)
    assert dashboard.evaluate(drawn) >= 1


def test_the_submit_form_refuses_an_invalid_value_on_its_field(
    dashboard: Page, cluster: ServiceThread
) -> None:
    """Typing text into an int parameter and submitting shows the error on that field and
    submits nothing; a valid value then submits a job."""
    with cluster.client() as client:
        before = len(client.jobs(limit=1000))
        form = dashboard.locator(".casare-submit")
        form.scroll_into_view_if_needed()
        form.locator(".casare-submit-workflow select").select_option(label="flaky.ipynb")
        field = form.locator(".casare-field-limit input")
        expect(field).to_be_visible(timeout=SEEN_MS)
        field.fill("many")
        form.locator(".casare-submit-button").click()
        error = form.locator(".casare-field-error-limit")
        expect(error).to_contain_text("limit", timeout=SEEN_MS)
        screenshot(dashboard, "dashboard-submit-error", full=True)
        assert len(client.jobs(limit=1000)) == before
        field.fill("1")
        form.locator(".casare-submit-button").click()
        expect(form.locator(".casare-submit-result")).to_contain_text("queued", timeout=SEEN_MS)
        assert len(client.jobs(limit=1000)) == before + 1


def test_open_in_jupyterlab_gives_a_kernel_restored_before_the_failed_cell(
    dashboard: Page, cluster: ServiceThread
) -> None:
    """ "Open in JupyterLab" on a failed run opens its debug notebook in a new tab whose
    kernel already holds a variable made before the failed cell."""
    job_id = _failed_job(cluster)
    card = dashboard.locator(f".casare-failure-{_css(job_id)}")
    expect(card).to_be_visible(timeout=SEEN_MS)
    card.get_by_text("Open in JupyterLab").click()
    tab = dashboard.locator(".lm-TabBar-tab", has_text=f"debug-{job_id}")
    expect(tab).to_be_visible(timeout=SEEN_MS)
    panel = ".jp-NotebookPanel:not(.lm-mod-hidden)"
    dashboard.locator(f"{panel} .jp-Cell").first.wait_for(timeout=SEEN_MS)
    dashboard.wait_for_function(
        "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]"
        ".some(e => /\\| Idle/.test(e.textContent))"
    )
    cells = dashboard.locator(f"{panel} .jp-Cell")
    cells.last.click()
    dashboard.keyboard.press("Escape")
    dashboard.keyboard.press("b")
    dashboard.keyboard.press("Enter")
    dashboard.keyboard.type("print(sum(made) * factor)")
    dashboard.keyboard.press("Shift+Enter")
    ours = dashboard.locator(f"{panel} .jp-CodeCell", has_text="print(sum(made) * factor)")
    output = ours.locator(".jp-OutputArea-output")
    expect(output).to_contain_text("42", timeout=SEEN_MS)
    screenshot(dashboard, "debug-tab", full=True)
