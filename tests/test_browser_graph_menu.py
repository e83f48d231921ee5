"""The lab extension's "Open with graph editor" (casare:open-graph-editor) in a real JupyterLab
driven by Debian's Chromium: from the file browser's context menu, the notebook tab's context
menu and the palette, it opens a console whose kernel runs in the notebook's folder and runs
`GraphEditor("<file name>")` there."""

from __future__ import annotations

import json
import re
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

COMMAND = "casare:open-graph-editor"
QUOTED = 'it\'s a "flow".ipynb'  # quotes and spaces: must reach Python literally
FOLDER = "flows"


@dataclass
class Lab:
    url: str
    token: str
    root: Path

    def page_url(self, path: str = "") -> str:
        where = f"tree/{path}" if path else ""
        return f"{self.url}/lab/{where}?token={self.token}&reset"


def _notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("n = 3", id="c1")]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A JupyterLab of its own (HOME and JUPYTER_* dirs temporary) with the extension the
    install put in place."""
    base = tmp_path_factory.mktemp("lab")
    root = base / "root"
    (root / FOLDER).mkdir(parents=True)
    (root / "workflows").mkdir()
    _notebook(root / FOLDER / QUOTED)
    _notebook(root / "plain.ipynb")
    _notebook(root / "tabbed.ipynb")
    _notebook(root / "workflows" / "editor.ipynb")
    args = ("--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",)
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
    expect.set_options(timeout=60_000)  # 2 shared cores: a kernel may take a while
    p = context.new_page()
    try:
        yield p
    finally:
        context.close()


def _menu_item(page: Any) -> Any:
    """The open context menu's "Open with graph editor" item."""
    item = page.locator(f'.lm-Menu .lm-Menu-item[data-command="{COMMAND}"]')
    expect(item).to_have_count(1)
    expect(item).to_contain_text("Open with graph editor")
    return item


def _open_from_file_browser(page: Any, lab: Lab, folder: str, name: str) -> Any:
    """Right-click `name` in the file browser showing `folder`, click the menu item; the
    console panel it opened."""
    page.goto(lab.page_url(folder), wait_until="domcontentloaded")
    item = page.locator('.jp-DirListing-item[data-file-type="notebook"]').filter(
        has=page.locator(".jp-DirListing-itemText", has_text=name)
    )
    expect(item).to_have_count(1, timeout=60_000)
    item.click(button="right")
    _menu_item(page).click()
    panel = page.locator(".jp-ConsolePanel.casare-graph-console")
    expect(panel).to_have_count(1)
    expect(panel).to_have_attribute("data-casare-graph", f"{folder}/{name}" if folder else name)
    return panel


def _executed(panel: Any, index: int) -> Any:
    """The console's `index`-th executed code cell (the banner is not a code cell)."""
    return panel.locator(".jp-CodeConsole-content .jp-CodeCell").nth(index)


def _run_in_console(page: Any, panel: Any, code: str) -> None:
    panel.locator(".jp-CodeConsole-promptCell .jp-InputArea-editor").click()
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")


def test_file_browser_menu_runs_graph_editor_in_notebook_folder(page: Any, lab: Lab) -> None:
    """File browser menu, quoted name: a console ran GraphEditor("<name>") as [1] in its folder."""
    panel = _open_from_file_browser(page, lab, FOLDER, QUOTED)
    tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")
    expect(tab).to_contain_text(f"Graph: {QUOTED}")

    first = _executed(panel, 0)
    source = first.locator(".jp-InputArea-editor .cm-content")
    expect(source).to_contain_text("from casare_nb.widgets import GraphEditor")
    expect(source).to_contain_text(f"GraphEditor({json.dumps(QUOTED)})")
    assert json.dumps(QUOTED) == '"it\'s a \\"flow\\".ipynb"'
    expect(first.locator(".jp-InputPrompt")).to_contain_text("[1]")
    expect(first.locator(".jp-OutputArea-child").first).to_be_attached()

    # The same kernel, asked where it runs: the notebook's folder.
    _run_in_console(page, panel, "import os; print(os.getcwd())")
    second = _executed(panel, 1)
    expect(second.locator(".jp-InputPrompt")).to_contain_text("[2]")
    expect(second.locator(".jp-OutputArea-output")).to_contain_text(str(lab.root / FOLDER))


def test_palette_opens_console_right_of_current_notebook(page: Any, lab: Lab) -> None:
    """Palette on plain.ipynb: a console "Graph: plain.ipynb" right of it ran GraphEditor as [1]."""
    page.goto(lab.page_url("plain.ipynb"), wait_until="domcontentloaded")
    notebook = page.locator(".jp-NotebookPanel[data-casare-debug]:has(.jp-Notebook .jp-Cell)")
    expect(notebook).to_have_count(1)
    open_palette(page, "graph editor")
    item = page.locator(f'.lm-CommandPalette-item[data-command="{COMMAND}"]')
    expect(item).to_contain_text("Open with graph editor")
    item.click()

    panel = page.locator(".jp-ConsolePanel.casare-graph-console")
    expect(panel).to_have_attribute("data-casare-graph", "plain.ipynb")
    tabs = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab")
    expect(tabs.filter(has_text="Graph: plain.ipynb")).to_have_count(1)
    first = _executed(panel, 0)
    expect(first.locator(".jp-InputArea-editor .cm-content")).to_contain_text(
        'GraphEditor("plain.ipynb")'
    )
    expect(first.locator(".jp-InputPrompt")).to_contain_text("[1]")
    left, right = notebook.bounding_box(), panel.bounding_box()
    assert left and right and right["x"] >= left["x"] + left["width"] - 1, (left, right)


def test_notebook_tab_menu_opens_graph_editor(page: Any, lab: Lab) -> None:
    """The notebook tab's context menu has "Open with graph editor"; it runs GraphEditor as [1]."""
    page.goto(lab.page_url("tabbed.ipynb"), wait_until="domcontentloaded")
    expect(
        page.locator(".jp-NotebookPanel[data-casare-debug]:has(.jp-Notebook .jp-Cell)")
    ).to_have_count(1)
    tab = page.locator(
        '.lm-DockPanel-tabBar .lm-TabBar-tab[data-type="document-title"]', has_text="tabbed.ipynb"
    )
    tab.click(button="right")
    _menu_item(page).click()
    panel = page.locator(".jp-ConsolePanel.casare-graph-console")
    expect(panel).to_have_attribute("data-casare-graph", "tabbed.ipynb")
    first = _executed(panel, 0)
    expect(first.locator(".jp-InputArea-editor .cm-content")).to_contain_text(
        'GraphEditor("tabbed.ipynb")'
    )
    expect(first.locator(".jp-InputPrompt")).to_contain_text("[1]")


def test_graph_menu_renders_editor(page: Any, lab: Lab) -> None:
    """Opening workflows/editor.ipynb with the graph editor renders the editor (.cnb-editor)."""
    panel = _open_from_file_browser(page, lab, "workflows", "editor.ipynb")
    expect(panel.locator(".cnb-editor")).to_be_visible(timeout=90_000)
