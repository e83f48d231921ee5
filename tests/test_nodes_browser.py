"""The browser nodes (casare_nb/nodes/browser.py) against the local site (casare_nb/site.py)
in Debian's Chromium, their templates, and the browser's end in a real kernel: closed by the
close node, by a cell that fails, and relaunched when a resume replays the open-page node."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import pytest_asyncio
from jupyter_client.manager import KernelManager

from casare_nb.core.graph import Edge, Graph, GraphInput, Node, compile_graph, problems
from casare_nb.core.models import RunStatus
from casare_nb.local import aresume, arun_notebook
from casare_nb.nodes import browser, browser_procs
from casare_nb.nodes.catalog import BUILTIN, load_catalog
from casare_nb.site import PRODUCTS, serve

CHROMIUM = browser.chromium_executable()
needs_chromium = pytest.mark.slow
"""Launches Debian's Chromium (``make test`` installs it; a missing one fails the test)."""
on_module_loop = pytest.mark.asyncio(loop_scope="module")
"""The browser tests share one event loop, so one browser serves them all."""

GONE_WITHIN_S = 15.0
BROWSER_TEMPLATES = {
    f"browser.{name}"
    for name in (
        "open_page",
        "goto",
        "click",
        "fill",
        "wait_for",
        "extract_table",
        "extract_text",
        "screenshot",
        "close",
    )
}


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with serve() as url:
        yield url


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def session() -> AsyncIterator[None]:
    """Closes whatever browser the module's tests left open."""
    yield
    await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(session: None) -> AsyncIterator[Any]:
    """A blank page of the module's browser, closed after the test."""
    p = await browser.open_page()
    yield p
    if not p.is_closed() and browser.browser_processes():
        await p.close()


def _running(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The processes of ``procs`` that run (a zombie does not)."""
    running = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc)
    return running


def _gone(procs: list[psutil.Process]) -> list[psutil.Process]:
    """The processes of ``procs`` still running after waiting up to GONE_WITHIN_S."""
    _, alive = psutil.wait_procs(procs, timeout=GONE_WITHIN_S)
    return _running(alive)


# --------------------------------------------------------------------------- the site


def test_site_serves_its_pages_on_loopback(site: str) -> None:
    """The site answers its pages and JSON on 127.0.0.1, 404 elsewhere, loopback only."""
    assert site.startswith("http://127.0.0.1:") and not site.endswith("/")
    for path, text in [("/", "/form"), ("/form", 'id="submit"'), ("/table", 'id="prices"')]:
        with urllib.request.urlopen(site + path) as resp:
            assert text in resp.read().decode()
    with urllib.request.urlopen(site + "/report-data.json") as resp:
        assert json.load(resp) == list(PRODUCTS)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(site + "/nothing")
    assert err.value.code == 404
    with pytest.raises(ValueError, match="loopback"), serve(host="0.0.0.0"):
        pass


# --------------------------------------------------------------------------- the nodes


@pytest.mark.slow
@needs_chromium
@on_module_loop
async def test_form_fill_click_lands_on_thanks(site: str, page: Any) -> None:
    """fill + fill + click submit the form; the thanks page greets the name typed."""
    await browser.goto(page, f"{site}/form")
    assert await browser.fill(page, "#name", "Ada Lovelace") is page
    await browser.fill(page, "#email", "ada@example.org")
    assert await browser.click(page, "#submit") is page
    assert await browser.extract_text(page, "#thanks") == "Thanks, Ada Lovelace"
    assert "/thanks?name=Ada+Lovelace" in page.url


@pytest.mark.slow
@needs_chromium
@on_module_loop
async def test_extract_table_gives_a_typed_dataframe(site: str, page: Any) -> None:
    """The prices table becomes a DataFrame: header cells as columns, numbers as numbers."""
    await browser.goto(page, f"{site}/table")
    table = await browser.extract_table(page, "#prices")
    assert list(table.columns) == ["product", "price", "stock"]
    assert table["product"].tolist() == [p["product"] for p in PRODUCTS]
    assert table["price"].dtype == "float64" and table["stock"].dtype == "int64"
    assert table["price"].tolist() == [p["price"] for p in PRODUCTS]  # "1,249.00" too
    assert table["stock"].sum() == sum(p["stock"] for p in PRODUCTS)


@pytest.mark.slow
@needs_chromium
@on_module_loop
async def test_wait_for_an_element_that_appears_late(site: str, page: Any) -> None:
    """wait_for waits for #late (added 1.5 s after load) and then reads 'ready'."""
    await browser.goto(page, f"{site}/slow?delay_ms=1500")
    assert await page.locator("#late").count() == 0
    assert await browser.wait_for(page, "#late", timeout_s=15) is page
    assert await browser.extract_text(page, "#late") == "ready"


@pytest.mark.slow
@needs_chromium
@on_module_loop
async def test_a_wait_that_runs_out_is_one_line(site: str, page: Any) -> None:
    """A selector matching nothing ends in a TimeoutError of one line naming it and the URL,
    without Playwright's call log."""
    await browser.goto(page, f"{site}/table")
    with pytest.raises(TimeoutError) as err:
        await browser.wait_for(page, "#price", timeout_s=0.5)
    assert str(err.value) == f"no element matches '#price' after 0.5 s on {site}/table"
    assert err.value.__suppress_context__ and err.value.__cause__ is None
    with pytest.raises(TimeoutError, match=r"^no element matches '#nope' after 0.3 s on "):
        await browser.click(page, "#nope", timeout_s=0.3)
    with pytest.raises(TimeoutError, match=r"^'#prices' is still visible after 0.3 s on "):
        await browser.wait_for(page, "#prices", "hidden", timeout_s=0.3)


@pytest.mark.slow
@needs_chromium
@on_module_loop
async def test_other_failures_are_one_line_browser_errors(site: str, page: Any) -> None:
    """A bad selector, a field that is no field, a refused connection: one-line BrowserErrors;
    the page still navigates after a failed navigation."""
    await browser.goto(page, f"{site}/table")
    with pytest.raises(browser.BrowserError) as err:
        await browser.click(page, "##bad")
    assert str(err.value).startswith(f"click '##bad' on {site}/table: Unexpected token")
    with pytest.raises(browser.BrowserError, match=r"^fill '#prices' on .*: Element is not an"):
        await browser.fill(page, "#prices", "x")
    with pytest.raises(browser.BrowserError, match="is not a table and holds none"):
        await browser.extract_table(page, "h1")
    with serve() as gone:
        pass  # a port nobody listens on any more
    for _ in range(2):
        with pytest.raises(browser.BrowserError) as err:
            await browser.goto(page, f"{gone}/form")
        assert (
            str(err.value) == f"cannot open {gone}/form: net::ERR_CONNECTION_REFUSED at {gone}/form"
        )
    await browser.goto(page, f"{site}/form")
    assert page.url == f"{site}/form"


@pytest.mark.slow
@needs_chromium
@on_module_loop
async def test_extract_text_first_or_all_matches(site: str, page: Any) -> None:
    """extract_text answers the first match's text, or every match's with all_matches."""
    await browser.goto(page, f"{site}/table")
    assert await browser.extract_text(page, "h1") == "Prices"
    assert await browser.extract_text(page, "#prices td:first-child") == "Espresso cup"
    names = await browser.extract_text(page, "#prices td:first-child", all_matches=True)
    assert names == [p["product"] for p in PRODUCTS]


@pytest.mark.slow
@needs_chromium
@on_module_loop
async def test_screenshot_writes_a_png_in_a_new_folder(
    site: str, page: Any, tmp_path: Path
) -> None:
    """screenshot creates the folder, writes a PNG there and answers its absolute path."""
    await browser.goto(page, f"{site}/table")
    path = await browser.screenshot(page, tmp_path / "shots" / "deep" / "table.png", True)
    assert path == str(tmp_path / "shots" / "deep" / "table.png")
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@needs_chromium
@on_module_loop
async def test_one_browser_serves_every_open_page(site: str, session: None) -> None:
    """Two open_page calls share one browser, one context and one Chromium."""
    first = await browser.open_page(f"{site}/form")
    roots = {p.pid for p in browser.browser_processes() if p.name() != "chromium"}
    second = await browser.open_page(f"{site}/table", viewport_width=640, viewport_height=480)
    assert first.context is second.context
    assert first.context.browser is second.context.browser
    assert {p.pid for p in browser.browser_processes() if p.name() != "chromium"} == roots
    assert second.viewport_size == {"width": 640, "height": 480}
    assert first.url == f"{site}/form" and second.url == f"{site}/table"


@pytest.mark.slow
@needs_chromium
@on_module_loop
async def test_close_ends_chromium_and_is_idempotent(site: str, session: None) -> None:
    """close() leaves no Chromium process behind; a second close() does nothing; the next
    open_page launches a new browser."""
    page = await browser.open_page(f"{site}/")
    procs = browser.browser_processes()
    assert any(p.name() == "chromium" for p in procs)
    await browser.close()
    assert _gone(procs) == [] and browser.browser_processes() == []
    assert page.is_closed()
    await browser.close()
    again = await browser.open_page(f"{site}/form")
    assert again.url == f"{site}/form" and browser.browser_processes()


@pytest.mark.slow
@needs_chromium
@on_module_loop
async def test_a_crashed_browser_is_replaced(site: str, session: None) -> None:
    """When Chromium dies under the session, the next open_page launches a new one."""
    page = await browser.open_page(f"{site}/")
    old = page.context.browser
    assert old is not None
    disconnected = asyncio.Event()
    old.on("disconnected", lambda _: disconnected.set())
    for proc in browser.browser_processes():
        if proc.name() == "chromium":
            proc.kill()
    await asyncio.wait_for(disconnected.wait(), GONE_WITHIN_S)
    fresh = await browser.open_page(f"{site}/table")
    assert fresh.context.browser is not old and fresh.context.browser.is_connected()
    assert await browser.extract_text(fresh, "h1") == "Prices"


def test_a_killed_process_profile_is_removed_by_the_next_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The profile folder recorded by a process that is gone is removed (a killed kernel's);
    a running process's folder, and a marker that is not a Playwright profile, are kept."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(dead.stdout)
    orphan = tmp_path / "playwright_chromiumdev_profile-orphan"
    mine = tmp_path / "playwright_chromiumdev_profile-mine"
    for folder in (orphan, mine):
        (folder / "Default").mkdir(parents=True)
    markers = tmp_path / f"casare-browser-{os.getuid()}"
    markers.mkdir(mode=0o700)
    (markers / f"{dead_pid}-1-{orphan.name}").write_text(str(orphan))
    me = psutil.Process()
    (markers / f"{me.pid}-{int(me.create_time() * 1000)}-{mine.name}").write_text(str(mine))
    (markers / f"{dead_pid}-1-playwright_x").write_text(str(tmp_path))
    browser_procs.sweep_orphans()
    assert not orphan.exists() and mine.exists() and tmp_path.exists()
    assert sorted(m.name.split("-", 2)[2] for m in markers.iterdir()) == [mine.name, "playwright_x"]


# --------------------------------------------------------------------------- templates


def test_the_templates_load_and_chain() -> None:
    """The nine browser templates load; open_page replays; each output is as documented."""
    catalog = load_catalog(dirs=[BUILTIN / "browser"])
    assert catalog.broken == []
    assert set(catalog.templates) >= BROWSER_TEMPLATES
    tpl = catalog.templates
    assert [t for t in BROWSER_TEMPLATES if tpl[t].replay] == ["browser.open_page"]
    outputs = {t: list(tpl[t].outputs) for t in BROWSER_TEMPLATES}
    assert outputs["browser.extract_table"] == ["table"]
    assert outputs["browser.extract_text"] == ["text"]
    assert outputs["browser.screenshot"] == ["path"]
    assert outputs["browser.close"] == []
    assert "page" not in tpl["browser.open_page"].inputs
    for t in BROWSER_TEMPLATES - {"browser.open_page"}:
        assert next(iter(tpl[t].inputs)) == "page"
        assert tpl[t].imports == ["from casare_nb.nodes import browser as nb_browser"]
        assert "await nb_browser." in tpl[t].code


# --------------------------------------------------------------------------- in a kernel


def _node(nid: str, template: str, params: dict[str, Any] | None = None, **kw: Any) -> Node:
    return Node(id=nid, template=template, params=params or {}, **kw)


def _edge(source: str, port: str, target: str, target_port: str = "page") -> Edge:
    return Edge(source=source, source_port=port, target=target, target_port=target_port)


def _write(graph: Graph, path: Path) -> list[str]:
    """Save ``graph`` as the notebook the graph editor writes; answer its cells' ids."""
    catalog = load_catalog()
    assert problems(graph, catalog) == {}
    nb = compile_graph(graph, catalog)
    path.write_text(json.dumps(nb))
    return [c["id"] for c in nb["cells"]]


def _output(result: Any, cell_id: str) -> str:
    cell = next(c for c in result.notebook["cells"] if c.get("id") == cell_id)
    return "".join(o.get("text", "") for o in cell["outputs"] if o.get("name") == "stdout")


def _processes(pids: list[int]) -> list[psutil.Process]:
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    return procs


REPORT = (
    "import json\n"
    "print(json.dumps({'pids': [p.pid for p in nb_browser.browser_processes()],"
    " 'profile': nb_browser._session.profile}))"
)
"""A code node's line: the browser's processes and profile folder, as JSON."""


@pytest.mark.slow
@needs_chromium
async def test_a_graph_workflow_runs_in_a_kernel(site: str, tmp_path: Path) -> None:
    """The cells the nine templates render (open, fill, fill, click, extract text, go to,
    wait for, extract table, screenshot, close) run as a workflow in a kernel and leave no
    Chromium behind."""
    graph = Graph(
        inputs=[GraphInput(name="form_url", default=f"{site}/form")],
        nodes=[
            _node("open_1", "browser.open_page", bind={"url": "form_url"}),
            _node("fill_1", "browser.fill", {"selector": "#name", "value": "Ada"}),
            _node("fill_2", "browser.fill", {"selector": "#email", "value": "ada@example.org"}),
            _node("click_1", "browser.click", {"selector": "#submit"}),
            _node("thanks", "browser.extract_text", {"selector": "#thanks"}),
            _node("goto_1", "browser.goto", {"url": f"{site}/slow?delay_ms=300"}),
            _node("late", "browser.wait_for", {"selector": "#late", "state": "attached"}),
            _node("goto_2", "browser.goto", {"url": f"{site}/table"}),
            _node("prices", "browser.extract_table", {"selector": "#prices"}),
            _node("shot", "browser.screenshot", {"path": "shots/prices.png"}),
            _node(
                "report",
                "code.python",
                code=f"{REPORT}\nprint(thanks, prices['price'].dtype, shot)",
            ),
            _node("close_1", "browser.close"),
        ],
        edges=[
            _edge("open_1", "page", "fill_1"),
            _edge("fill_1", "page", "fill_2"),
            _edge("fill_2", "page", "click_1"),
            _edge("click_1", "page", "thanks"),
            _edge("click_1", "page", "goto_1"),
            _edge("goto_1", "page", "late"),
            _edge("late", "page", "goto_2"),
            _edge("goto_2", "page", "prices"),
            _edge("goto_2", "page", "shot"),
            _edge("thanks", "text", "report", "after"),
            _edge("prices", "table", "report", "after"),
            _edge("shot", "path", "report", "after"),
            _edge("goto_2", "page", "close_1"),
            _edge("report", "out", "close_1", "after"),
        ],
    )
    ids = _write(graph, tmp_path / "form.ipynb")
    assert ids == ["parameters", *(n.id for n in graph.nodes)]
    result = await arun_notebook(
        tmp_path / "form.ipynb", state_dir=tmp_path / "state", cwd=tmp_path
    )
    assert result.status is RunStatus.COMPLETED, result.traceback
    report, line = _output(result, "report").splitlines()
    shot = tmp_path / "shots" / "prices.png"
    assert line == f"Thanks, Ada float64 {shot}" and shot.stat().st_size > 0
    browser_of_run = json.loads(report)
    assert _gone(_processes(browser_of_run["pids"])) == []
    assert not Path(browser_of_run["profile"]).exists()


@pytest.mark.slow
@needs_chromium
async def test_a_failed_cell_closes_chromium_and_resume_relaunches_it(
    site: str, tmp_path: Path
) -> None:
    """A cell that raises after the browser nodes leaves no Chromium behind; resuming the run
    replays the open-page node in the fresh kernel and the page nodes after it work."""
    graph = Graph(
        inputs=[
            GraphInput(name="table_url", default=f"{site}/table"),
            GraphInput(name="fail", type="boolean", default=False),
        ],
        nodes=[
            _node("open_1", "browser.open_page", bind={"url": "table_url"}),
            _node("prices", "browser.extract_table", {"selector": "#prices"}),
            _node("report", "code.python", code=REPORT),
            _node("check", "code.python", code="assert not fail, 'failing on purpose'"),
            _node("title", "browser.extract_text", {"selector": "h1"}),
            _node("show", "code.python", code="print(title, prices['price'].sum())"),
            _node("close_1", "browser.close"),
        ],
        edges=[
            _edge("open_1", "page", "prices"),
            _edge("prices", "table", "report", "after"),
            _edge("report", "out", "check", "after"),
            _edge("open_1", "page", "title"),
            _edge("check", "out", "title", "after"),
            _edge("title", "text", "show", "after"),
            _edge("open_1", "page", "close_1"),
            _edge("show", "out", "close_1", "after"),
        ],
    )
    ids = _write(graph, tmp_path / "prices.ipynb")
    assert ids == ["parameters", *(n.id for n in graph.nodes)]
    first = await arun_notebook(
        tmp_path / "prices.ipynb", {"fail": True}, state_dir=tmp_path / "state"
    )
    assert first.status is RunStatus.FAILED and first.failed_cell_id == "check"
    assert first.error_message == "failing on purpose"
    browser_of_run = json.loads(_output(first, "report"))
    procs = _processes(browser_of_run["pids"])
    # Chromium was killed before the failed cell answered (the engine kills the kernel next)
    assert [p.name() for p in _running(procs) if p.name() == "chromium"] == []
    assert not Path(browser_of_run["profile"]).exists()
    assert _gone(procs) == []  # Playwright's driver too

    second = await aresume(first.run_id, {"fail": False}, state_dir=tmp_path / "state")
    assert second.status is RunStatus.COMPLETED, second.traceback
    opened = next(c for c in second.notebook["cells"] if c.get("id") == "open_1")
    assert opened["metadata"]["casare"].get("replayed") is True
    total = sum(p["price"] for p in PRODUCTS)
    assert _output(second, "show") == f"Prices {total}\n"


def _pids(reply: dict[str, Any]) -> list[int]:
    value = reply["user_expressions"]["pids"]
    assert value["status"] == "ok", value
    pids: list[int] = ast.literal_eval(value["data"]["text/plain"])
    return pids


@pytest.mark.slow
@needs_chromium
def test_a_failing_cell_closes_the_browser_in_a_live_kernel(site: str) -> None:
    """In a kernel that stays up, a browser cell that times out fails with the one-line
    error and the post_run_cell callback ends Chromium; open_page then launches anew."""
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        expr = {"pids": "[p.pid for p in nb_browser.browser_processes()]"}

        def run(code: str) -> dict[str, Any]:
            msg = kc.execute_interactive(
                code, user_expressions=expr, timeout=120, output_hook=lambda m: None
            )
            content: dict[str, Any] = msg["content"]
            return content

        opened = run(
            "from casare_nb.nodes import browser as nb_browser\n"
            f"open_1 = await nb_browser.open_page({site + '/form'!r})"
        )
        assert opened["status"] == "ok", opened
        procs = _processes(_pids(opened))
        assert any(p.name() == "chromium" for p in procs)

        failed = run("await nb_browser.click(open_1, '#nope', timeout_s=0.5)")
        assert (failed["status"], failed["ename"]) == ("error", "TimeoutError")
        assert failed["evalue"] == f"no element matches '#nope' after 0.5 s on {site}/form"
        assert [p for p in _running(procs) if p.name() == "chromium"] == []
        assert _gone(procs) == []  # the driver too, stopped once the reply was out
        assert km.is_alive()

        again = run(f"open_2 = await nb_browser.open_page({site + '/table'!r})")
        assert again["status"] == "ok", again
        relaunched = _processes(_pids(again))
        assert relaunched and not {p.pid for p in relaunched} & {p.pid for p in procs}
        closed = run("await nb_browser.close()")
        assert closed["status"] == "ok" and _pids(closed) == []
        assert _gone(relaunched) == []
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
