"""The graph editor as an analyst uses it in a real JupyterLab (its own temporary HOME) with
headless Chromium: add two nodes from the palette, connect them, set their parameters, save;
the notebook on disk has the expected cells and runs; Run lights the nodes; a failed node
is re-run from there; a notebook edited by hand opens with its cells as nodes. The tests
share one page and run in order."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from browser import chromium, open_notebook, run_cell, screenshot
from browser import graph_node as _node
from browser import graph_port as _port
from jupyter_harness import JupyterServer, jupyter_server
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from playwright.sync_api import Browser, Locator, Page, expect

from casare_nb.local import run_notebook

pytestmark = pytest.mark.slow
SEEN_MS = 60_000
RUN_MS = 120_000  # a run starts a kernel of its own on this 2-core machine
NOTEBOOK = "editor.ipynb"
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
OPEN = """\
from casare_nb.widgets import GraphEditor
editor = GraphEditor("workflows/prices.ipynb")
editor"""
OPEN_HAND = """\
hand = GraphEditor("workflows/hand.ipynb")
hand"""
OPEN_EXAMPLE = """\
example = GraphEditor("workflows/scrape_report.ipynb")
example"""
EXAMPLE = Path(__file__).resolve().parent.parent / "workflows" / "scrape_report.ipynb"
CSV = "product,price,stock\nTea,3.5,10\nCoffee,4.25,0\n"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("editor-root")
    (root / "workflows").mkdir()
    (root / "workflows" / "in.csv").write_text(CSV)
    nb = new_notebook(
        cells=[
            new_code_cell(OPEN, id="open"),
            new_code_cell(OPEN_HAND, id="hand"),
            new_code_cell(OPEN_EXAMPLE, id="example"),
        ]
    )
    (root / "workflows" / "scrape_report.ipynb").write_bytes(EXAMPLE.read_bytes())
    nb.metadata["kernelspec"] = KERNELSPEC
    nbformat.write(nb, str(root / NOTEBOOK))
    hand = new_notebook(
        cells=[
            new_markdown_cell("# Written by hand", id="intro"),
            new_code_cell("rows = [1, 2, 3]", id="make"),
            new_code_cell("total = sum(rows)\nprint(total)", id="add"),
        ]
    )
    hand.metadata["kernelspec"] = KERNELSPEC
    nbformat.write(hand, str(root / "workflows" / "hand.ipynb"))
    return root


@pytest.fixture(scope="module")
def lab(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    with jupyter_server(root, tmp_path_factory.mktemp("editor-home"), app="lab") as server:
        yield server


@pytest.fixture(scope="module")
def page(lab: JupyterServer) -> Iterator[Page]:
    browser: Browser
    with chromium() as browser:
        page = open_notebook(browser, lab.url, lab.token, NOTEBOOK)
        run_cell(page, 0)
        page.locator(".cnb-editor .cnb-canvas").first.wait_for(timeout=SEEN_MS)
        yield page
        page.close()


@pytest.fixture
def editor(page: Page) -> Locator:
    return page.locator(".jp-Notebook .jp-Cell").nth(0).locator(".cnb-editor")


def _has_class(name: str) -> re.Pattern[str]:
    return re.compile(rf"(^|\s){re.escape(name)}(\s|$)")


def _drop(page: Page, editor: Locator, template: str, fx: float, fy: float) -> None:
    """Drag a palette item onto the canvas at (fx, fy) of its size."""
    editor.scroll_into_view_if_needed()
    item = editor.locator(f'.cnb-palette-item[data-template="{template}"]')
    canvas = editor.locator(".cnb-canvas")
    box = canvas.bounding_box()
    assert box is not None
    item.drag_to(canvas, target_position={"x": box["width"] * fx, "y": box["height"] * fy})


def _select(page: Page, editor: Locator, node_id: str) -> None:
    editor.scroll_into_view_if_needed()
    box = _node(editor, node_id).locator(".cnb-node-box").bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + 12)
    expect(_node(editor, node_id)).to_have_class(_has_class("cnb-selected"))


def _set(editor: Locator, param: str, value: str) -> None:
    field = editor.locator(f'.cnb-panel .cnb-field[data-param="{param}"] input.cnb-control')
    field.fill(value)
    field.press("Tab")


def test_two_nodes_added_connected_and_set_save_as_a_notebook_that_runs(
    page: Page, editor: Locator, root: Path
) -> None:
    """Palette -> canvas twice, an edge, two params, Save: the notebook on disk has one cell
    per node rendered from its template, and it runs."""
    expect(editor.locator(".cnb-message")).to_contain_text("new workflow")
    _drop(page, editor, "data.read_csv", 0.2, 0.3)
    _drop(page, editor, "data.write_report", 0.6, 0.3)
    expect(editor.locator(".cnb-node")).to_have_count(2)
    report = _node(editor, "write_report_1")
    expect(report).to_have_class(_has_class("cnb-problem"))  # frame not connected, no path
    _port(editor, "read_csv_1", "frame", "out").drag_to(
        _port(editor, "write_report_1", "frame", "in")
    )
    expect(editor.locator('.cnb-edge[data-source="read_csv_1"]')).to_have_count(1)
    _select(page, editor, "read_csv_1")
    _set(editor, "path", "in.csv")
    _select(page, editor, "write_report_1")
    _set(editor, "path", "out/report.html")
    expect(report).not_to_have_class(_has_class("cnb-problem"), timeout=SEEN_MS)
    editor.locator(".cnb-save").click()
    expect(editor.locator(".cnb-message")).to_contain_text(
        "saved 2 code cells to prices.ipynb", timeout=SEEN_MS
    )
    screenshot(page, "graph-editor")
    nb = json.loads((root / "workflows" / "prices.ipynb").read_text())
    assert [c["id"] for c in nb["cells"]] == ["read_csv_1", "write_report_1"]
    assert nb["cells"][0]["source"] == (
        "from casare_nb.nodes import data as nb_data\nread_csv_1 = nb_data.read_csv('in.csv', **{})"
    )
    assert nb["cells"][1]["source"].endswith(
        "write_report_1 = nb_data.write_report(read_csv_1, 'out/report.html', 'Report')"
    )
    result = run_notebook(
        root / "workflows" / "prices.ipynb",
        state_dir=root / "check-state",
        cwd=root / "workflows",
    )
    assert result.ok, result.error_message
    assert "Coffee" in (root / "workflows" / "out" / "report.html").read_text()


def test_run_lights_every_node_as_its_cell_ends(page: Page, editor: Locator, root: Path) -> None:
    """Run (no orchestrator configured: a local run) lights each node ok, then says so."""
    editor.locator(".cnb-run").click()
    for node_id in ("read_csv_1", "write_report_1"):
        expect(_node(editor, node_id)).to_have_class(_has_class("cnb-status-ok"), timeout=RUN_MS)
    expect(editor.locator(".cnb-message")).to_contain_text("completed", timeout=SEEN_MS)


def test_a_failed_node_is_re_run_from_there_after_the_fix(page: Page, editor: Locator) -> None:
    """A bad path fails Run at read_csv_1 (lit failed, its panel offers Re-run from here);
    with the path fixed, Re-run from here completes and lights the nodes ok."""
    _select(page, editor, "read_csv_1")
    _set(editor, "path", "missing.csv")
    editor.locator(".cnb-run").click()
    failed = _node(editor, "read_csv_1")
    expect(failed).to_have_class(_has_class("cnb-status-failed"), timeout=RUN_MS)
    expect(editor.locator(".cnb-message")).to_contain_text("failed", timeout=SEEN_MS)
    _set(editor, "path", "in.csv")
    editor.locator(".cnb-panel .cnb-rerun").click()
    for node_id in ("read_csv_1", "write_report_1"):
        expect(_node(editor, node_id)).to_have_class(_has_class("cnb-status-ok"), timeout=RUN_MS)
    expect(editor.locator(".cnb-message")).to_contain_text("completed", timeout=SEEN_MS)


def test_a_notebook_written_by_hand_opens_with_its_cells_as_nodes(page: Page) -> None:
    """A plain notebook: its markdown and code cells show as nodes, linked by the names
    they define and use."""
    run_cell(page, 1)
    hand = page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".cnb-editor")
    for node_id in ("intro", "make", "add"):
        expect(_node(hand, node_id)).to_be_visible(timeout=SEEN_MS)
    expect(hand.locator('.cnb-edge[data-source="make"][data-target="add"]')).to_have_count(1)


def test_the_example_opens_as_the_graph_it_was_built_as(page: Page) -> None:
    """workflows/scrape_report.ipynb: every cell a node where it was placed, the browser
    chain linked, no problem and no node taken for edited."""
    run_cell(page, 2)
    example = page.locator(".jp-Notebook .jp-Cell").nth(2).locator(".cnb-editor")
    nb = json.loads(EXAMPLE.read_text())
    expect(example.locator(".cnb-node")).to_have_count(len(nb["cells"]) - 1, timeout=SEEN_MS)
    edge = example.locator('.cnb-edge[data-source="open_site"][data-target="form_page"]')
    expect(edge).to_have_count(1)
    expect(example.locator(".cnb-node.cnb-problem")).to_have_count(0)
    expect(example.locator(".cnb-node.cnb-edited")).to_have_count(0)
    example.locator(".cnb-fit").click()
    example.scroll_into_view_if_needed()
    screenshot(page, "graph-editor-example")
