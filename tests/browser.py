"""Debian's Chromium driven by Playwright (sync API) for the browser tests, and the waits
measured on these machines (../shared/FACTS.md): a notebook's kernel is ready when the
status bar says "| Idle"; a cell runs on Shift+Enter in its editor."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from casare_nb.nodes.browser import CHROMIUM_ARGS, DEBIAN_CHROMIUM

__all__ = [
    "CHROMIUM",
    "KERNEL_IDLE",
    "chromium",
    "graph_node",
    "graph_port",
    "open_notebook",
    "open_palette",
    "run_cell",
    "screenshot",
]

CHROMIUM = DEBIAN_CHROMIUM
KERNEL_IDLE = (
    "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')]"
    ".some(e => /\\| Idle/.test(e.textContent))"
)
SCREENSHOTS_ENV = "CASARE_SCREENSHOTS"
"""A folder to save the tests' screenshots in (docs/images refreshes them); unset: none."""


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium, closed at the end."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


def open_notebook(browser: Browser, url: str, token: str, path: str) -> Page:
    """A page on JupyterLab with ``path`` open and its kernel idle."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(f"{url}/lab/tree/{path}?token={token}&reset")
    page.wait_for_selector(".jp-Notebook .jp-Cell")
    page.wait_for_function(KERNEL_IDLE)
    return page


def open_palette(page: Page, query: str, *, tries: int = 5) -> Locator:
    """Open the command palette with Ctrl+Shift+C and type ``query`` in it.

    JupyterLab may still move focus after a document opens (seen in CI): the shortcut is
    lost, or the palette shows and closes again before the query is typed. So: press the
    shortcut only while the palette is hidden (a second press would close it), type, and
    start again until the palette stays open with the query in it."""
    palette = page.locator(".lm-CommandPalette-input")
    for attempt in range(tries):
        try:
            if not palette.is_visible():
                page.keyboard.press("Control+Shift+C")
            palette.wait_for(state="visible", timeout=5_000)
            palette.fill(query, timeout=5_000)
            expect(palette).to_have_value(query, timeout=1_000)
            expect(palette).to_be_visible(timeout=1_000)
            return palette
        except (PlaywrightTimeout, AssertionError):
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable: the loop returns or raises")


def run_cell(
    page: Page, index: int, *, scope: str = ".jp-NotebookPanel:not(.lm-mod-hidden)"
) -> None:
    """Run code cell ``index`` (among all cells) of the visible notebook with Shift+Enter."""
    cell = page.locator(f"{scope} .jp-Notebook .jp-Cell").nth(index)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")


def screenshot(page: Page, name: str, *, full: bool = False) -> Path | None:
    """Save ``NAME.png`` in $CASARE_SCREENSHOTS when it is set (for the docs)."""
    folder = os.environ.get(SCREENSHOTS_ENV)
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / f"{name}.png"
    page.screenshot(path=str(path), full_page=full)
    return path


def graph_node(editor: Locator, node_id: str) -> Locator:
    """A node of a graph editor's canvas."""
    return editor.locator(f'.cnb-node[data-node="{node_id}"]')


def graph_port(editor: Locator, node_id: str, port: str, direction: str) -> Locator:
    """A port (``direction``: in or out) of a node of a graph editor's canvas."""
    return editor.locator(
        f'.cnb-port[data-node="{node_id}"][data-port="{port}"][data-dir="{direction}"]'
    )
