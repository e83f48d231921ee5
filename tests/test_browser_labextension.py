"""The casare lab extension (extensions/labextension, built into casare_nb/labextension) in a
real JupyterLab driven by Debian's Chromium: its commands in the palette, its notebook toolbar
buttons, and the submit dialog (the /casare routes answered by Playwright, so this needs no
orchestrator and no server extension)."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
from browser import chromium, open_palette
from jupyter_harness import jupyter_server
from playwright.sync_api import expect

pytestmark = pytest.mark.slow

DEBUG_META = {
    "job_id": "job-debug-1",
    "attempt": 1,
    "workflow": "wf.ipynb",
    "failed_cell_id": "c2",
    "failed_cell_index": 1,
}


@dataclass
class Lab:
    url: str
    token: str
    root: Path

    def page_url(self, path: str = "") -> str:
        where = f"tree/{path}" if path else ""
        return f"{self.url}/lab/{where}?token={self.token}&reset"


def _notebook(path: Path, metadata: dict[str, Any] | None = None) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("n = 3", id="c1"),
        nbformat.v4.new_code_cell("n", id="c2"),
    ]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata.update(metadata or {})
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A JupyterLab of its own (HOME and JUPYTER_* dirs temporary) with the extension the
    install put in place."""
    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    root.mkdir()
    _notebook(root / "plain.ipynb")
    _notebook(root / "debug.ipynb", {"casare_debug": DEBUG_META})
    _notebook(root / "later.ipynb")
    args = (
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: to edit a model's metadata
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    )
    with jupyter_server(root, base / "home", app="lab", args=args) as server:
        html = httpx.get(f"{server.url}/lab?token={server.token}", timeout=30).text
        assert re.search(r'"name": ?"casare-nb"', html), "casare-nb not in the page config"
        yield Lab(url=server.url, token=server.token, root=root)


@pytest.fixture(scope="module")
def browser(lab: Lab) -> Iterator[Any]:
    with chromium() as found:
        yield found


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(60_000)
    expect.set_options(timeout=30_000)  # 2 shared cores: JupyterLab may take a while
    p = context.new_page()
    try:
        yield p
    finally:
        context.close()


def open_notebook(page: Any, lab: Lab, name: str) -> Any:
    """Open `name` and wait until the extension judged it (its panel's data-casare-debug)."""
    page.goto(lab.page_url(name), wait_until="domcontentloaded")
    panel = page.locator(".jp-NotebookPanel[data-casare-debug]:has(.jp-Notebook .jp-Cell)")
    expect(panel).to_have_count(1, timeout=60_000)
    return panel


def test_palette_lists_casare_commands(page: Any, lab: Lab) -> None:
    """Ctrl+Shift+C's palette lists "Submit this notebook" and "Open casare dashboard"."""
    page.goto(lab.page_url(), wait_until="domcontentloaded")
    expect(page.locator(".jp-Launcher")).to_be_visible(timeout=60_000)
    open_palette(page, "casare")
    labels = page.locator(".lm-CommandPalette-item .lm-CommandPalette-itemLabel")
    expect(labels.filter(has_text="Submit this notebook")).to_have_count(1)
    expect(labels.filter(has_text="Open casare dashboard")).to_have_count(1)
    for command in ("casare:submit-notebook", "casare:open-dashboard"):
        expect(page.locator(f'.lm-CommandPalette-item[data-command="{command}"]')).to_have_count(1)


def test_notebook_has_submit_and_no_resume(page: Any, lab: Lab) -> None:
    """A notebook without casare_debug metadata shows the Submit button and no Resume button."""
    panel = open_notebook(page, lab, "plain.ipynb")
    expect(panel).to_have_attribute("data-casare-debug", "false")
    submit = panel.locator(".jp-Toolbar .casare-submit-toolbar")
    expect(submit).to_be_visible()
    expect(submit).to_contain_text("Submit")
    expect(panel.locator(".casare-resume-toolbar")).to_have_count(0)


def test_debug_notebook_has_resume(page: Any, lab: Lab) -> None:
    """A notebook whose metadata has casare_debug shows the Resume button (with its job id)."""
    panel = open_notebook(page, lab, "debug.ipynb")
    expect(panel).to_have_attribute("data-casare-debug", "true")
    resume = panel.locator(".jp-Toolbar .casare-resume-toolbar")
    expect(resume).to_be_visible()
    expect(resume).to_contain_text("Resume from here")
    expect(resume).to_have_attribute("data-casare-job", DEBUG_META["job_id"])
    expect(panel.locator(".jp-Toolbar .casare-submit-toolbar")).to_be_visible()


def test_resume_follows_metadata_changes(page: Any, lab: Lab) -> None:
    """Setting casare_debug on an open notebook adds the Resume button; deleting it removes it."""
    panel = open_notebook(page, lab, "later.ipynb")
    expect(panel.locator(".casare-resume-toolbar")).to_have_count(0)
    page.evaluate(
        "m => window.jupyterapp.shell.currentWidget.context.model.setMetadata('casare_debug', m)",
        DEBUG_META,
    )
    expect(panel.locator(".jp-Toolbar .casare-resume-toolbar")).to_be_visible()
    page.evaluate(
        "() => window.jupyterapp.shell.currentWidget.context.model.deleteMetadata('casare_debug')"
    )
    expect(panel.locator(".casare-resume-toolbar")).to_have_count(0)
    expect(panel).to_have_attribute("data-casare-debug", "false")


PARAMS = {
    "workflow": "plain.ipynb",
    "parameters": {
        "has_cell": True,
        "cell_index": 0,
        "params": {
            "n": {
                "name": "n",
                "annotation": "int",
                "type_repr": "int",
                "required": False,
                "has_default": True,
                "default": 3,
                "default_source": "3",
                "secret": False,
                "choices": None,
                "line": 1,
            },
            "flag": {
                "name": "flag",
                "annotation": "bool",
                "type_repr": "bool",
                "required": False,
                "has_default": True,
                "default": True,
                "default_source": "True",
                "secret": False,
                "choices": None,
                "line": 2,
            },
            "mode": {
                "name": "mode",
                "annotation": "Literal['a', 'b']",
                "type_repr": "Literal['a', 'b']",
                "required": False,
                "has_default": True,
                "default": "a",
                "default_source": "'a'",
                "secret": False,
                "choices": ["a", "b"],
                "line": 3,
            },
            "token": {
                "name": "token",
                "annotation": "Secret[str]",
                "type_repr": "Secret[str]",
                "required": False,
                "has_default": True,
                "default": "",
                "default_source": '""',
                "secret": True,
                "choices": None,
                "line": 4,
            },
            "name": {
                "name": "name",
                "annotation": "str",
                "type_repr": "str",
                "required": True,
                "has_default": False,
                "default": None,
                "default_source": None,
                "secret": False,
                "choices": None,
                "line": 5,
            },
        },
        "extra_secret_names": [],
    },
}


def test_submit_dialog_shows_error_under_field_then_queues(page: Any, lab: Lab) -> None:
    """Submit: typed fields; a 422 about `name` shows under it; fixed, the job queues, says so."""
    asked: list[str] = []
    posted: list[dict[str, Any]] = []

    def params(route: Any) -> None:
        asked.append(route.request.url)
        route.fulfill(status=200, content_type="application/json", body=json.dumps(PARAMS))

    def jobs(route: Any) -> None:
        body = json.loads(route.request.post_data or "{}")
        posted.append(body)
        if "name" not in body["raw_parameters"]:
            detail = "missing required parameter 'name' (str)"
            route.fulfill(
                status=422, content_type="application/json", body=json.dumps({"detail": detail})
            )
        else:
            job = {"job_id": "job-42", "status": "queued", "workflow_path": "plain.ipynb"}
            route.fulfill(status=201, content_type="application/json", body=json.dumps(job))

    # ServerConnection adds a cache-busting query to every request.
    page.route(re.compile(r"/casare/params\?"), params)
    page.route(re.compile(r"/casare/api/jobs(\?|$)"), jobs)
    panel = open_notebook(page, lab, "plain.ipynb")
    panel.locator(".casare-submit-toolbar").click()

    form = page.locator(".jp-Dialog .casare-submit-form")
    expect(form).to_be_visible()
    where = urllib.parse.urlsplit(asked[0])
    assert (where.path, urllib.parse.parse_qs(where.query)) == (
        "/casare/params",
        {"path": ["plain.ipynb"]},
    )
    expect(form.locator('input[name="casare-param-n"]')).to_have_attribute("type", "number")
    expect(form.locator('input[name="casare-param-n"]')).to_have_value("3")
    expect(form.locator('input[name="casare-param-flag"]')).to_be_checked()
    expect(form.locator('select[name="casare-param-mode"]')).to_have_value("a")
    expect(form.locator('input[name="casare-param-token"]')).to_have_attribute("type", "password")
    expect(form.locator('input[name="casare-param-name"]')).to_have_attribute("type", "text")
    expect(form.locator('select[name="casare-priority"]')).to_have_value("normal")

    form.locator('input[name="casare-param-n"]').fill("7")
    form.locator('select[name="casare-priority"]').select_option("high")
    page.locator(".jp-Dialog .jp-mod-accept").click()

    error = page.locator(".jp-Dialog .casare-param-error-name")
    expect(error).to_have_text("missing required parameter 'name' (str)")
    assert posted[0] == {
        "workflow": "plain.ipynb",
        "raw_parameters": {"n": "7"},
        "priority": "high",
    }
    form = page.locator(".jp-Dialog .casare-submit-form")
    expect(form.locator('input[name="casare-param-n"]')).to_have_value("7")  # kept
    expect(form.locator('select[name="casare-priority"]')).to_have_value("high")
    expect(form.locator(".casare-submit-error")).to_be_hidden()

    form.locator('input[name="casare-param-name"]').fill("alice")
    page.locator(".jp-Dialog .jp-mod-accept").click()
    expect(page.locator(".Toastify").get_by_text("casare: job job-42 queued")).to_be_visible()
    expect(page.locator(".jp-Dialog")).to_have_count(0)
    assert posted[1] == {
        "workflow": "plain.ipynb",
        "raw_parameters": {"n": "7", "name": "alice"},
        "priority": "high",
    }


def test_submit_outside_workflows_notifies_error(page: Any, lab: Lab) -> None:
    """A 400 from /casare/params shows its detail in an error notification and opens no dialog."""
    detail = "plain.ipynb is not inside the workflows dir /srv/workflows"
    page.route(
        re.compile(r"/casare/params\?"),
        lambda route: route.fulfill(
            status=400, content_type="application/json", body=json.dumps({"detail": detail})
        ),
    )
    panel = open_notebook(page, lab, "plain.ipynb")
    panel.locator(".casare-submit-toolbar").click()
    expect(page.locator(".Toastify").get_by_text(f"casare: {detail}")).to_be_visible()
    expect(page.locator(".jp-Dialog")).to_have_count(0)


def test_open_dashboard_from_palette_opens_returned_path(page: Any, lab: Lab) -> None:
    """The palette's "Open casare dashboard" POSTs /casare/dashboard, opens the path answered."""
    posted: list[str] = []

    def dashboard(route: Any) -> None:
        posted.append(route.request.method)
        route.fulfill(status=200, content_type="application/json", body='{"path": "later.ipynb"}')

    page.route(re.compile(r"/casare/dashboard(\?|$)"), dashboard)
    page.goto(lab.page_url(), wait_until="domcontentloaded")
    expect(page.locator(".jp-Launcher")).to_be_visible(timeout=60_000)
    open_palette(page, "casare dashboard")
    page.locator('.lm-CommandPalette-item[data-command="casare:open-dashboard"]').click()
    expect(page.locator('.jp-NotebookPanel[data-casare-debug="false"]')).to_have_count(1)
    expect(page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")).to_contain_text(
        "later.ipynb"
    )
    assert posted == ["POST"]


def test_debug_link_opens_notebook_and_resume_posts(page: Any, lab: Lab) -> None:
    """A casare:debug command link restores (notified) and opens the answered notebook;
    its Resume button saves it, POSTs {"path"} to /casare/debug/JOB/resume and tells the status."""
    calls: list[tuple[str, str, Any]] = []

    def debug(route: Any) -> None:
        request = route.request
        body = json.loads(request.post_data) if request.post_data else None
        calls.append((request.method, urllib.parse.urlsplit(request.url).path, body))
        if request.url.split("?")[0].endswith("/resume"):
            job = {"job_id": DEBUG_META["job_id"], "status": "queued", "attempt": 2}
            job["failed_cell"] = 1
        else:
            job = {"path": "debug.ipynb", "restored": ["n"], "missing": {"conn": "unpicklable"}}
        route.fulfill(status=200, content_type="application/json", body=json.dumps(job))

    page.route(re.compile(r"/casare/debug/"), debug)
    page.goto(lab.page_url(), wait_until="domcontentloaded")
    expect(page.locator(".jp-Launcher")).to_be_visible(timeout=60_000)
    # What the dashboard's "Open in JupyterLab" link is: JupyterLab's command linker runs it.
    page.evaluate(
        """job => {
            const a = document.createElement('button');
            a.id = 'casare-test-link';
            a.textContent = 'Open in JupyterLab';
            a.style.cssText = 'position: fixed; left: 400px; bottom: 60px; z-index: 10000';
            a.dataset.commandlinkerCommand = 'casare:debug';
            a.dataset.commandlinkerArgs = JSON.stringify({job});
            document.body.appendChild(a);
            // As inside a trusted notebook (JupyterLab >= 4.6 asks "Run Command?" elsewhere).
            window.jupyterapp.commandLinker.markTrusted(a);
        }""",
        DEBUG_META["job_id"],
    )
    page.locator("#casare-test-link").click()
    toasts = page.locator(".Toastify")
    restored = f"casare: job {DEBUG_META['job_id']} restored (1 variable; not restored: conn)"
    expect(toasts.get_by_text(restored)).to_be_visible()
    panel = page.locator('.jp-NotebookPanel[data-casare-debug="true"]')
    expect(panel).to_have_count(1, timeout=60_000)
    assert calls == [("POST", f"/casare/debug/{DEBUG_META['job_id']}", None)]

    panel.locator(".casare-resume-toolbar").click()
    resumed = f"casare: job {DEBUG_META['job_id']} resumed from cell 1: queued, attempt 2"
    expect(toasts.get_by_text(resumed)).to_be_visible()
    assert calls[1] == (
        "POST",
        f"/casare/debug/{DEBUG_META['job_id']}/resume",
        {"path": "debug.ipynb"},
    )
