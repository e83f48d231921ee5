"""The graph editor's canvas (casare_nb/widgets/graph_view.py + graph_editor.js) as a person
uses it: a real JupyterLab (its own temporary HOME) runs a notebook that shows a
``GraphView`` with a hand-written palette and graph, headless Chromium does the gestures, and
a cell run in the same kernel reads back what Python received. The tests share one page and
run in order, like a user's session."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from browser import chromium, open_notebook, run_cell, screenshot
from browser import graph_node as _node
from browser import graph_port as _port
from jupyter_harness import JupyterServer, jupyter_server
from nbformat.v4 import new_code_cell, new_notebook
from playwright.sync_api import Browser, Locator, Page, expect

pytestmark = pytest.mark.slow
SEEN_MS = 60_000  # what a person waits for at most, per assertion
KERNEL_WAIT = 60.0  # seconds to wait for the kernel to have received a gesture's graph
NOTEBOOK = "graph_view.ipynb"
STEP = "step.py"
BIG_NODES, BIG_EDGES = 200, 250
RENDER_BOUND_S = 5.0
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}

PALETTE: list[dict[str, Any]] = [
    {
        "id": "data.read_csv",
        "name": "Read CSV",
        "category": "data",
        "description": "Read a CSV file into a DataFrame.",
        "params": {
            "path": {"type": "string", "required": True, "help": "the file"},
            "sep": {"type": "string", "default": ","},
        },
        "inputs": {},
        "outputs": {"frame": {"help": "the rows"}},
        "broken": None,
    },
    {
        "id": "data.filter",
        "name": "Filter rows",
        "category": "data",
        "description": "Keep the rows where an expression holds.",
        "params": {
            "where": {"type": "expression", "default": "True"},
            "limit": {"type": "integer", "default": 10, "minimum": 0},
            "options": {"type": "mapping", "default": {}},
            "mode": {"type": "choice", "choices": ["all", "any"], "default": "all"},
        },
        "inputs": {"frame": {"help": "the rows"}},
        "outputs": {"frame": {"help": "the rows kept"}},
        "broken": None,
    },
    {
        "id": "files.archive",
        "name": "Archive",
        "category": "files",
        "description": "Zip files.",
        "params": {},
        "inputs": {"paths": {"multiple": True}},
        "outputs": {},
        "broken": "unknown placeholder {{ nope }}",
    },
]
GRAPH: dict[str, Any] = {
    "nodes": [
        {
            "id": "filter_1",
            "template": "data.filter",
            "params": {"where": "True", "limit": 10, "mode": "all"},
            "bind": {},
            "x": 320.0,
            "y": 60.0,
        }
    ],
    "edges": [],
    "inputs": [
        {"name": "site", "type": "string", "default": "http://x", "help": "", "secret": False}
    ],
}
SETUP = f"""\
import json
from IPython.display import display
from casare_nb.widgets.graph_view import GraphView

actions = []
graph_changes = []
view = GraphView(palette={PALETTE!r}, graph={GRAPH!r}, path="workflows/demo.ipynb",
                 message="loaded")
view.on_action(actions.append)
view.observe(lambda change: graph_changes.append(1), names="graph")
display(view)
"""
EXEC = f"import pathlib\nexec(compile(pathlib.Path({STEP!r}).read_text(), {STEP!r}, 'exec'))"
STATE = (
    "print('STATE=' + json.dumps({'graph': view.graph, 'actions': actions, "
    "'changes': len(graph_changes)}))"
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("graph-root")
    nb = new_notebook()
    nb.cells = [new_code_cell(SETUP, id="setup"), new_code_cell(EXEC, id="step")]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, str(root / NOTEBOOK))
    return root


@pytest.fixture(scope="module")
def lab(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    with jupyter_server(root, tmp_path_factory.mktemp("graph-home"), app="lab") as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as found:
        yield found


@pytest.fixture(scope="module")
def page(browser: Browser, lab: JupyterServer) -> Iterator[Page]:
    page = open_notebook(browser, lab.url, lab.token, NOTEBOOK)
    run_cell(page, 0)
    page.locator('.cnb-editor .cnb-node[data-node="filter_1"]').wait_for(timeout=SEEN_MS)
    yield page
    page.close()


class Kernel:
    """Runs code in the notebook's kernel through the step cell and reads what it prints."""

    def __init__(self, page: Page, root: Path) -> None:
        self.page, self.root, self.runs = page, root, 0

    def run(self, code: str) -> str:
        self.runs += 1
        marker = f"RUN={self.runs}"
        (self.root / STEP).write_text(f"{code}\nprint({marker!r})\n")
        cell = self.page.locator(".jp-Notebook .jp-Cell").nth(1)
        cell.locator(".jp-InputArea-editor").click()
        self.page.keyboard.press("Control+Enter")  # run in place: no new cell, no scrolling
        output = cell.locator(".jp-OutputArea")
        expect(output).to_contain_text(marker, timeout=SEEN_MS)
        return output.inner_text()

    def state(self) -> dict[str, Any]:
        text = self.run(STATE)
        line = next(ln for ln in text.splitlines() if ln.startswith("STATE="))
        state: dict[str, Any] = json.loads(line.removeprefix("STATE="))
        return state

    def wait(self, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The kernel's state once ``ok(state)``: a gesture's graph reaches the kernel as a
        comm message, which may arrive after the cell that reads it; read again until then."""
        deadline = time.monotonic() + KERNEL_WAIT
        while True:
            state = self.state()
            if ok(state) or time.monotonic() > deadline:
                return state


@pytest.fixture(scope="module")
def kernel(page: Page, root: Path) -> Kernel:
    return Kernel(page, root)


@pytest.fixture
def editor(page: Page) -> Locator:
    return page.locator(".jp-Notebook .jp-Cell").nth(0).locator(".cnb-editor")


def _nodes(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in state["graph"]["nodes"]}


def _edges(state: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [
        (e["source"], e["source_port"], e["target"], e["target_port"])
        for e in state["graph"]["edges"]
    ]


def _has_class(name: str) -> re.Pattern[str]:
    """A class attribute that has ``name`` among its classes."""
    return re.compile(rf"(^|\s){re.escape(name)}(\s|$)")


def _box(editor: Locator, part: Locator) -> dict[str, float]:
    """Where ``part`` of the editor is on the page, the editor scrolled into view (for the
    raw mouse gestures, which do not scroll)."""
    editor.scroll_into_view_if_needed()
    box = part.bounding_box()
    assert box is not None
    return dict(box)


def _click_node(page: Page, editor: Locator, node_id: str) -> None:
    """Click a node on its header (its ports and labels are below)."""
    box = _box(editor, _node(editor, node_id).locator(".cnb-node-box"))
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + 12)


def test_the_palette_groups_templates_and_greys_out_broken_ones(
    page: Page, editor: Locator
) -> None:
    """Templates are grouped by category; the broken one is greyed, shows why and adds nothing."""
    groups = editor.locator(".cnb-palette-group")
    expect(groups).to_have_count(2)
    expect(groups.nth(0)).to_contain_text("data")
    expect(editor.locator('.cnb-palette-item[data-template="data.read_csv"]')).to_contain_text(
        "Read CSV"
    )
    broken = editor.locator('.cnb-palette-item[data-template="files.archive"]')
    expect(broken).to_have_class(_has_class("cnb-broken"))
    expect(broken).to_contain_text("unknown placeholder")
    broken.dblclick()
    expect(editor.locator(".cnb-node")).to_have_count(1)
    head = editor.locator('.cnb-palette-group[data-category="files"] .cnb-palette-group-head')
    head.click()
    expect(broken).to_be_hidden()
    head.click()
    expect(broken).to_be_visible()
    editor.locator(".cnb-filter").fill("filter")
    expect(editor.locator('.cnb-palette-item[data-template="data.read_csv"]')).to_be_hidden()
    editor.locator(".cnb-filter").fill("")
    expect(editor.locator('.cnb-palette-item[data-template="data.read_csv"]')).to_be_visible()


def test_dragging_a_template_onto_the_canvas_adds_a_node_with_its_defaults(
    page: Page, editor: Locator, kernel: Kernel
) -> None:
    """Dropping Read CSV on the canvas adds read_csv_1, with its defaults, in Python too."""
    item = editor.locator('.cnb-palette-item[data-template="data.read_csv"]')
    canvas = editor.locator(".cnb-canvas")
    box = canvas.bounding_box()
    assert box is not None  # filter_1 is in the middle: drop to its left
    item.drag_to(canvas, target_position={"x": box["width"] * 0.18, "y": box["height"] * 0.3})
    expect(_node(editor, "read_csv_1")).to_be_visible()
    expect(_node(editor, "read_csv_1")).to_contain_text("Read CSV")
    state = kernel.wait(lambda s: "read_csv_1" in _nodes(s))
    node = _nodes(state)["read_csv_1"]
    assert node["template"] == "data.read_csv"
    assert node["params"] == {"sep": ","}
    assert isinstance(node["x"], int | float) and isinstance(node["y"], int | float)


def test_double_clicking_a_template_adds_a_node_with_a_unique_id(
    page: Page, editor: Locator, kernel: Kernel
) -> None:
    """Double-clicking Filter rows adds filter_2 (filter_1 exists) with the defaults."""
    editor.locator('.cnb-palette-item[data-template="data.filter"]').dblclick()
    expect(_node(editor, "filter_2")).to_be_visible()
    state = kernel.wait(lambda s: "filter_2" in _nodes(s))
    assert _nodes(state)["filter_2"]["params"] == {
        "where": "True",
        "limit": 10,
        "options": {},
        "mode": "all",
    }
    # the panel now edits the new node
    expect(editor.locator(".cnb-panel .cnb-panel-title")).to_have_text("filter_2")


def test_dragging_an_output_to_an_input_connects_them_once(
    page: Page, editor: Locator, kernel: Kernel
) -> None:
    """Output-to-input drag adds an edge; a 2nd edge in, a self-loop, a dangling drag add none."""
    _port(editor, "read_csv_1", "frame", "out").drag_to(_port(editor, "filter_1", "frame", "in"))
    edge = editor.locator('.cnb-edge[data-source="read_csv_1"][data-target="filter_1"]')
    expect(edge).to_have_count(1)
    # refused: the same edge again, another edge into the single input, a self-loop
    _port(editor, "read_csv_1", "frame", "out").drag_to(_port(editor, "filter_1", "frame", "in"))
    _port(editor, "filter_2", "frame", "out").drag_to(_port(editor, "filter_1", "frame", "in"))
    expect(editor.locator(".cnb-hint")).to_contain_text("takes one edge")
    _port(editor, "filter_2", "frame", "out").drag_to(_port(editor, "filter_2", "frame", "in"))
    expect(editor.locator(".cnb-hint")).to_contain_text("itself")
    # a drag that ends on the background connects nothing
    port = _box(editor, _port(editor, "filter_2", "frame", "out"))
    page.mouse.move(port["x"] + 4, port["y"] + 4)
    page.mouse.down()
    page.mouse.move(port["x"] + 150, port["y"] + 200, steps=4)
    page.mouse.up()
    expect(editor.locator(".cnb-edge")).to_have_count(1)
    state = kernel.wait(lambda s: len(_edges(s)) >= 1)
    assert _edges(state) == [("read_csv_1", "frame", "filter_1", "frame")]


def test_dragging_a_node_moves_it_and_sends_the_graph_once(
    page: Page, editor: Locator, kernel: Kernel
) -> None:
    """A node drag moves it and its edge; Python gets one graph update with the new x, y."""
    before = kernel.state()
    changes = before["changes"]
    start = _nodes(before)["filter_1"]
    line = editor.locator('.cnb-edge[data-target="filter_1"] .cnb-edge-line')
    path = line.get_attribute("d")
    box = _box(editor, _node(editor, "filter_1").locator(".cnb-node-box"))
    zoom = float(editor.locator(".cnb-canvas").get_attribute("data-zoom") or "1")
    x, y = box["x"] + box["width"] / 2, box["y"] + 12
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 80, y - 90, steps=12)  # up and right: away from filter_2 below
    page.mouse.up()
    after = _node(editor, "filter_1").locator(".cnb-node-box").bounding_box()
    assert after is not None
    assert abs(after["x"] - box["x"] - 80) < 2 and abs(after["y"] - box["y"] + 90) < 2
    assert line.get_attribute("d") != path
    moved = kernel.wait(lambda s: _nodes(s)["filter_1"]["x"] != start["x"])
    node = _nodes(moved)["filter_1"]
    assert abs(node["x"] - (start["x"] + 80 / zoom)) <= 1
    assert abs(node["y"] - (start["y"] - 90 / zoom)) <= 1
    assert moved["changes"] == changes + 1, "one graph update per drag, not one per move"


def test_editing_fields_of_the_selected_node_updates_its_params(
    page: Page, editor: Locator, kernel: Kernel
) -> None:
    """Valid field edits and a binding reach Python; an out-of-range or bad-JSON value does not."""
    _click_node(page, editor, "filter_1")
    expect(_node(editor, "filter_1")).to_have_class(_has_class("cnb-selected"))
    panel = editor.locator(".cnb-panel")
    expect(panel.locator(".cnb-panel-title")).to_have_text("filter_1")
    limit = panel.locator('.cnb-field[data-param="limit"] input')
    expect(limit).to_have_value("10")
    limit.fill("-1")
    limit.press("Tab")
    expect(panel.locator('.cnb-field[data-param="limit"] .cnb-field-error')).to_contain_text("≥ 0")
    limit.fill("7")
    limit.press("Tab")
    expect(panel.locator('.cnb-field[data-param="limit"] .cnb-field-error')).to_be_hidden()
    options = panel.locator('.cnb-field[data-param="options"] textarea')
    options.fill("{oops")
    options.press("Tab")
    expect(panel.locator('.cnb-field[data-param="options"] .cnb-field-error')).to_contain_text(
        "invalid JSON"
    )
    state = kernel.wait(lambda s: _nodes(s)["filter_1"]["params"].get("limit") == 7)
    assert "options" not in _nodes(state)["filter_1"]["params"]
    options.fill('{"a": 1}')
    options.press("Tab")
    panel.locator('.cnb-field[data-param="mode"] select.cnb-control').select_option(label="any")
    panel.locator('.cnb-field[data-param="where"] select.cnb-bind').select_option("site")
    expect(panel.locator('.cnb-field[data-param="where"] input')).to_be_disabled()
    state = kernel.wait(lambda s: _nodes(s)["filter_1"]["bind"] == {"where": "site"})
    node = _nodes(state)["filter_1"]
    assert node["params"] == {"where": "True", "limit": 7, "mode": "any", "options": {"a": 1}}
    assert node["bind"] == {"where": "site"}


def test_the_delete_key_removes_the_selected_node_and_its_edges(
    page: Page, editor: Locator, kernel: Kernel
) -> None:
    """Delete removes the selected node and its edge (also in Python); Backspace in a field not."""
    _click_node(page, editor, "read_csv_1")
    field = editor.locator('.cnb-panel .cnb-field[data-param="sep"] input')
    field.click()
    field.press("Backspace")
    expect(_node(editor, "read_csv_1")).to_have_count(1)
    _click_node(page, editor, "read_csv_1")
    page.keyboard.press("Delete")
    expect(_node(editor, "read_csv_1")).to_have_count(0)
    expect(editor.locator(".cnb-edge")).to_have_count(0)
    state = kernel.wait(lambda s: "read_csv_1" not in _nodes(s))
    assert set(_nodes(state)) == {"filter_1", "filter_2"}
    assert _edges(state) == []


def test_the_wheel_zooms_around_the_pointer(page: Page, editor: Locator) -> None:
    """The wheel zooms in and keeps the point under the pointer in place; Fit shows the nodes."""
    canvas = editor.locator(".cnb-canvas")
    before = float(canvas.get_attribute("data-zoom") or "1")
    box = _box(editor, _node(editor, "filter_1").locator(".cnb-node-box"))
    px, py = box["x"] + box["width"] + 40, box["y"] + box["height"] + 30
    page.mouse.move(px, py)
    page.mouse.wheel(0, -240)
    page.wait_for_function(
        "([el, k]) => parseFloat(el.getAttribute('data-zoom')) > k",
        arg=[canvas.element_handle(), before],
    )
    after = float(canvas.get_attribute("data-zoom") or "1")
    factor = after / before
    moved = _node(editor, "filter_1").locator(".cnb-node-box").bounding_box()
    assert moved is not None
    assert abs((moved["x"] - px) - (box["x"] - px) * factor) < 3
    assert abs((moved["y"] - py) - (box["y"] - py) * factor) < 3
    editor.locator(".cnb-fit").click()
    expect(_node(editor, "filter_1")).to_be_in_viewport()


def test_the_inputs_panel_adds_an_input_when_nothing_is_selected(
    page: Page, editor: Locator, kernel: Kernel
) -> None:
    """With nothing selected the panel edits the inputs; an added integer input reaches Python."""
    canvas = editor.locator(".cnb-canvas")
    box = _box(editor, canvas)
    page.mouse.click(box["x"] + 8, box["y"] + box["height"] - 8)
    expect(editor.locator(".cnb-selected")).to_have_count(0)
    panel = editor.locator(".cnb-panel")
    expect(panel).to_contain_text("Workflow inputs")
    panel.locator(".cnb-input-add").click()
    row = panel.locator(".cnb-input-row").nth(1)
    row.locator(".cnb-input-name").fill("max_rows")
    row.locator(".cnb-input-name").press("Tab")
    row.locator(".cnb-input-type").select_option("integer")
    row = panel.locator('.cnb-input-row[data-input="max_rows"]')
    row.locator(".cnb-input-default").fill("5")
    row.locator(".cnb-input-default").press("Tab")
    state = kernel.wait(lambda s: s["graph"]["inputs"][-1].get("default") == 5)
    assert state["graph"]["inputs"][-1] == {
        "name": "max_rows",
        "type": "integer",
        "default": 5,
        "help": "",
        "secret": False,
    }


def test_save_run_and_layout_send_their_actions_in_order(
    page: Page, editor: Locator, kernel: Kernel
) -> None:
    """Save, Run and Auto-layout send their {"action": ...} messages, in order, to on_action."""
    editor.locator(".cnb-save").click()
    editor.locator(".cnb-run").click()
    editor.locator(".cnb-layout").click()
    state = kernel.wait(lambda s: len(s["actions"]) >= 3)
    assert state["actions"] == [{"action": "save"}, {"action": "run"}, {"action": "layout"}]


def test_problems_status_and_hand_edits_show_on_the_nodes(
    page: Page, editor: Locator, kernel: Kernel
) -> None:
    """Problems/status/edited show as classes, badge, bar; Re-run and Reset send their actions."""
    kernel.run(
        "view.graph = {**view.graph, 'nodes': [dict(n, edited=(n['id'] == 'filter_2'))"
        " for n in view.graph['nodes']]}\n"
        "view.problems = {'filter_1': ['limit is too small', 'where does not parse'],"
        " '': ['the graph has no output']}\n"
        "view.status = {'filter_1': 'failed', 'filter_2': 'running'}\n"
        "view.message = 'run failed at filter_1'"
    )
    first, second = _node(editor, "filter_1"), _node(editor, "filter_2")
    expect(first).to_have_class(_has_class("cnb-problem"))
    expect(first).to_have_class(_has_class("cnb-status-failed"))
    expect(second).to_have_class(_has_class("cnb-status-running"))
    expect(second).to_have_class(_has_class("cnb-edited"))
    expect(second).to_contain_text("edited")
    expect(first.locator(".cnb-badge")).to_have_count(1)
    title = first.locator(".cnb-badge title").text_content()
    assert title == "limit is too small\nwhere does not parse"
    expect(editor.locator(".cnb-graph-problems")).to_contain_text("the graph has no output")
    expect(editor.locator(".cnb-message")).to_have_text("run failed at filter_1")
    _click_node(page, editor, "filter_1")
    panel = editor.locator(".cnb-panel")
    expect(panel).to_contain_text("where does not parse")
    screenshot(page, "graph-editor-problems")
    panel.locator(".cnb-rerun").click()
    _click_node(page, editor, "filter_2")
    expect(panel.locator(".cnb-edited-note")).to_contain_text("Edited by hand")
    panel.locator(".cnb-reset").click()
    state = kernel.wait(lambda s: len(s["actions"]) >= 5)
    assert state["actions"][-2:] == [
        {"action": "rerun", "node": "filter_1"},
        {"action": "reset", "node": "filter_2"},
    ]
    kernel.run("view.problems = {}\nview.status = {'filter_1': 'ok'}")
    expect(first).to_have_class(_has_class("cnb-status-ok"))
    expect(first.locator(".cnb-badge")).to_have_count(0)
    expect(editor.locator(".cnb-graph-problems")).to_be_hidden()
    _click_node(page, editor, "filter_1")
    expect(panel.locator(".cnb-panel-status")).to_have_text("status: ok")
    expect(panel.locator(".cnb-rerun")).to_have_count(0)


def test_code_and_note_nodes_edit_their_source(page: Page, editor: Locator, kernel: Kernel) -> None:
    """A graph set by Python keeps zoom/pan; code and note nodes' source edits reach Python."""
    viewport = editor.locator(".cnb-viewport")
    transform = viewport.get_attribute("transform")
    kernel.run(
        "view.graph = {**view.graph, 'nodes': view.graph['nodes'] + [\n"
        " {'id': 'cell_1', 'template': 'code.python', 'params': {}, 'bind': {},"
        "  'x': 0.0, 'y': 320.0, 'code': 'total = 1'},\n"
        " {'id': 'note_1', 'template': 'note.markdown', 'params': {}, 'bind': {},"
        "  'x': 260.0, 'y': 320.0, 'code': '# Notes'}]}"
    )
    expect(_node(editor, "cell_1")).to_have_count(1)
    expect(_node(editor, "note_1")).to_contain_text("Notes")
    assert viewport.get_attribute("transform") == transform
    editor.locator(".cnb-fit").click()
    _click_node(page, editor, "cell_1")
    code = editor.locator('.cnb-panel .cnb-field[data-param="code"] textarea')
    expect(code).to_have_value("total = 1")
    code.fill("total = 2\nprint(total)")
    code.press("Tab")
    _click_node(page, editor, "note_1")
    note = editor.locator('.cnb-panel .cnb-field[data-param="code"] textarea')
    expect(note).to_have_value("# Notes")
    note.fill("# Prices\nscraped daily")
    note.press("Tab")
    expect(_node(editor, "note_1")).to_contain_text("Prices")
    state = kernel.wait(lambda s: _nodes(s)["note_1"].get("code", "").startswith("# Prices"))
    assert _nodes(state)["cell_1"]["code"] == "total = 2\nprint(total)"
    assert _nodes(state)["note_1"]["code"] == "# Prices\nscraped daily"


def test_a_200_node_graph_renders_within_bounds(page: Page, kernel: Kernel) -> None:
    """A new view draws 200 nodes and 250 edges in under 5 s (times printed for the docs)."""
    code = f"""
nodes = [{{"id": f"n{{i}}", "template": "data.filter", "params": {{}}, "bind": {{}},
          "x": (i % 20) * 220.0, "y": (i // 20) * 140.0}} for i in range({BIG_NODES})]
pairs = [(i, i + 1) for i in range({BIG_NODES} - 1)]
pairs += [(i, i + 20) for i in range({BIG_EDGES} - len(pairs))]
edges = [{{"source": f"n{{s}}", "source_port": "frame", "target": f"n{{t}}",
          "target_port": "frame"}} for s, t in pairs]
print("EDGES", len(edges))
big = GraphView(palette=view.palette, graph={{"nodes": nodes, "edges": edges, "inputs": []}})
display(big)
"""
    started = time.monotonic()
    text = kernel.run(code)
    big = page.locator(".jp-Notebook .jp-Cell").nth(1).locator(".cnb-editor")
    page.wait_for_function(
        "([el, n]) => el && el.querySelectorAll('.cnb-node').length === n",
        arg=[big.element_handle(timeout=SEEN_MS), BIG_NODES],
        timeout=SEEN_MS,
    )
    seen = time.monotonic() - started
    edges = int(next(ln for ln in text.splitlines() if ln.startswith("EDGES")).split()[1])
    expect(big.locator(".cnb-edge")).to_have_count(edges)
    page.wait_for_function("el => el.dataset.paintMs !== undefined", arg=big.element_handle())
    render_ms = float(big.get_attribute("data-render-ms") or "nan")
    paint_ms = float(big.get_attribute("data-paint-ms") or "nan")
    print(
        f"\n200-node graph ({edges} edges): build {render_ms:.1f} ms, to next frame "
        f"{paint_ms:.1f} ms, cell run to all nodes drawn {seen * 1000:.0f} ms"
    )
    assert render_ms < RENDER_BOUND_S * 1000
    assert seen < RENDER_BOUND_S + 5  # includes the kernel round trip and the widget's start
    # dragging a node moves only it and its edges, and stays quick
    node = big.locator('.cnb-node[data-node="n21"] .cnb-node-box')
    node.scroll_into_view_if_needed()
    box = node.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + 5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 40, box["y"] + 45, steps=20)
    page.mouse.up()
    after = node.bounding_box()
    assert after is not None and after["x"] > box["x"]
