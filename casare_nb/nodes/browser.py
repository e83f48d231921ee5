"""Browser nodes: Playwright (async API) on one Chromium per run, shared by the nodes.

What the ``browser.*`` templates call, in a kernel with top-level ``await``. The first
:func:`open_page` of a run launches Chromium (``$CASARE_CHROMIUM``, else
``/usr/bin/chromium`` when it exists, else Playwright's own) with one browser context; every
later one opens a page in that context (a different ``headless`` relaunches). The other
functions take a page and answer it (so nodes chain), or what they extracted.

The browser goes away with the run:

* :func:`close` (the ``browser.close`` node) closes it and waits for Chromium's processes
  to be gone, killing the ones that linger;
* inside IPython, a ``post_run_cell`` callback ends it when a cell raises: Chromium is
  killed before the failed cell's reply goes out (an engine may kill the kernel right
  after), and the close of Playwright is scheduled on the kernel's loop;
* at the interpreter's exit, best effort. A kernel killed outright leaves Chromium to
  Playwright's driver, which ends it a second or two later but leaves its temporary
  profile folder: the next launch removes such folders.

The processes and profile folders are :mod:`casare_nb.nodes.browser_procs`' business.

A session that went stale (its event loop gone, the browser disconnected, a fresh kernel
after a resume) is dropped and a new one launched.

Errors are one line: ``TimeoutError: no element matches '#price' after 10 s on http://...``
for waits that ran out, :class:`BrowserError` for the rest, never Playwright's call log.
Playwright and pandas are imported on first use.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import math
import os
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar, overload
from urllib.parse import urljoin

import psutil

from casare_nb.nodes import browser_procs as procs

if TYPE_CHECKING:
    import pandas as pd
    from playwright.async_api import Browser, BrowserContext, Page, Playwright

__all__ = [
    "CHROMIUM_ARGS",
    "CHROMIUM_ENV",
    "BrowserError",
    "browser_processes",
    "chromium_executable",
    "click",
    "close",
    "extract_table",
    "extract_text",
    "fill",
    "goto",
    "open_page",
    "screenshot",
    "wait_for",
]

CHROMIUM_ENV: Final = "CASARE_CHROMIUM"
"""The environment variable naming the Chromium executable to launch."""
DEBIAN_CHROMIUM: Final = "/usr/bin/chromium"
CHROMIUM_ARGS: Final = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
CLOSE_TIMEOUT_S: Final = 10.0
"""How long closing waits for the browser and for Playwright before killing them."""
ERROR_PAGE_WAIT_S: Final = 2.0
"""How long a failed navigation waits for Chromium's error page (which would interrupt
the next navigation)."""

WaitState = Literal["attached", "detached", "visible", "hidden"]
_STATES: Final = ("attached", "detached", "visible", "hidden")
T = TypeVar("T")


class BrowserError(RuntimeError):
    """A browser step that failed for another reason than a timeout; ``str(err)`` is one
    line."""


# --------------------------------------------------------------------------- the session


_keys = itertools.count(1)


@dataclass
class _Session:
    """The run's browser: Playwright, Chromium, one context, and their processes."""

    playwright: Playwright
    browser: Browser
    context: BrowserContext
    loop: asyncio.AbstractEventLoop
    headless: bool
    driver: list[psutil.Process] = field(default_factory=list)
    chromium: list[psutil.Process] = field(default_factory=list)
    profile: str | None = None  # Chromium's temporary user data folder
    key: int = field(default_factory=lambda: next(_keys))

    @property
    def processes(self) -> list[psutil.Process]:
        return [*self.driver, *self.chromium]

    def stale(self) -> bool:
        """Whether this session cannot serve the running loop any more."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        return self.loop.is_closed() or self.loop is not running or not self.browser.is_connected()


_session: _Session | None = None
_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
_tasks: set[asyncio.Task[None]] = set()  # closes scheduled by the post_run_cell callback
_atexit_registered = False


def _session_lock() -> asyncio.Lock:
    global _lock
    loop = asyncio.get_running_loop()
    if _lock is None or _lock[0] is not loop:
        _lock = (loop, asyncio.Lock())
    return _lock[1]


def chromium_executable() -> str | None:
    """The Chromium to launch: ``$CASARE_CHROMIUM``, Debian's, or None (Playwright's)."""
    chosen = os.environ.get(CHROMIUM_ENV, "").strip()
    if chosen:
        return chosen
    return DEBIAN_CHROMIUM if Path(DEBIAN_CHROMIUM).exists() else None


def browser_processes() -> list[psutil.Process]:
    """The running processes of the current session (Playwright's driver, Chromium and its
    children); empty without a session."""
    session = _session
    if session is None:
        return []
    return [p for p in procs.expand(session.processes) if procs.alive(p)]


def _track(session: _Session) -> list[psutil.Process]:
    """Every process of ``session`` now, remembered until it is known to be gone."""
    return procs.remember(session.key, session.profile, session.driver, session.processes)


async def _launch(headless: bool, timeout_s: float) -> _Session:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        raise BrowserError("the browser nodes need Playwright: pip install playwright") from None
    before = procs.descendants()
    pw = await async_playwright().start()
    executable = chromium_executable()
    try:
        browser = await pw.chromium.launch(
            executable_path=executable,
            headless=headless,
            args=list(CHROMIUM_ARGS),
            timeout=_ms(timeout_s),
        )
    except Exception as exc:
        with contextlib.suppress(Exception):
            await pw.stop()
        what = executable or "Playwright's Chromium"
        raise BrowserError(f"cannot launch {what}: {_detail(exc)}") from None
    try:
        context = await browser.new_context()
    except Exception as exc:
        with contextlib.suppress(Exception):
            await browser.close()
        with contextlib.suppress(Exception):
            await pw.stop()
        raise BrowserError(f"cannot open a browser context: {_detail(exc)}") from None
    driver = [
        p for pid, p in procs.descendants().items() if pid not in before and procs.is_driver(p)
    ]
    chromium = [p for p in procs.expand(driver) if p not in driver]
    session = _Session(
        pw,
        browser,
        context,
        asyncio.get_running_loop(),
        headless,
        driver,
        chromium,
        procs.profile_of(chromium),
    )
    _track(session)
    if session.profile:
        procs.mark(session.profile)
    _on_launch()
    await asyncio.to_thread(procs.sweep_orphans)
    return session


async def _session_for(headless: bool, timeout_s: float) -> _Session:
    """The live session, launched (or relaunched when stale or ``headless`` differs)."""
    global _session
    async with _session_lock():
        session = _session
        if session is not None and (session.stale() or session.headless != headless):
            _session = None
            await _shutdown(session)
        if _session is None:
            _session = await _launch(headless, timeout_s)
        return _session


async def _shutdown(session: _Session) -> None:
    """Close ``session``'s browser and Playwright, then make sure its processes are gone."""
    found = _track(session)
    if session.loop is asyncio.get_running_loop() and not session.loop.is_closed():
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.browser.close(), CLOSE_TIMEOUT_S)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.playwright.stop(), CLOSE_TIMEOUT_S)
        await asyncio.to_thread(procs.reap, found)
    else:  # its objects belong to a loop that is gone: only the processes are left
        await asyncio.to_thread(procs.kill, found)


# --------------------------------------------------------------------------- ending a run


def _on_launch() -> None:
    """Register the exit handler and, inside IPython, the close-on-failure callback."""
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_at_exit)
        _atexit_registered = True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return
    callbacks = shell.events.callbacks["post_run_cell"]
    for cb in list(callbacks):  # one callback, even after the module was reloaded
        if getattr(cb, "__qualname__", "") == _close_after_failed_cell.__qualname__:
            shell.events.unregister("post_run_cell", cb)
    shell.events.register("post_run_cell", _close_after_failed_cell)


def _close_after_failed_cell(result: Any) -> None:
    """IPython ``post_run_cell`` callback: a cell raised, so the run's browser goes.

    Chromium is killed at once, before the cell's reply goes out: an engine may kill the
    kernel right after a failed cell, before an asynchronous close could finish (the
    driver would then end Chromium a second or two later, leaving its profile behind).
    The close of Playwright itself is scheduled on the loop."""
    session = _session
    if getattr(result, "error_in_exec", None) is None or session is None:
        return
    _forget()
    found = _track(session)
    procs.kill([p for p in found if p not in session.driver])
    loop = session.loop
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop.is_closed():
        procs.kill(found)
    elif loop is running:  # a kernel: Playwright stops once the cell's reply is out
        task = loop.create_task(_shutdown(session))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)
    elif loop.is_running():  # the session's loop runs in another thread
        asyncio.run_coroutine_threadsafe(_shutdown(session), loop)
    else:  # terminal IPython between cells: its loop is ours to run
        with contextlib.suppress(Exception):
            loop.run_until_complete(_shutdown(session))


def _forget() -> None:
    global _session
    _session = None


def _at_exit() -> None:
    """Best effort at interpreter exit: close the session, kill what is left."""
    session = _session
    if session is not None:
        _forget()
        _track(session)
        loop = session.loop
        if not loop.is_closed() and not loop.is_running():
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.wait_for(_close_quietly(session), CLOSE_TIMEOUT_S))
    procs.kill_all()


async def _close_quietly(session: _Session) -> None:
    with contextlib.suppress(Exception):
        await session.browser.close()
    with contextlib.suppress(Exception):
        await session.playwright.stop()


async def close(page: Page | None = None) -> None:
    """Close the run's browser and Playwright, and wait for Chromium to be gone
    (idempotent; ``page`` only orders the node after the others)."""
    session = _session
    if session is None:
        return
    _forget()
    await _shutdown(session)


# --------------------------------------------------------------------------- errors


def _ms(timeout_s: float) -> float:
    if not math.isfinite(timeout_s) or timeout_s < 0:
        raise ValueError(f"timeout_s must be a finite number >= 0, not {timeout_s!r}")
    return timeout_s * 1000


def _secs(timeout_s: float) -> str:
    return f"{timeout_s:g} s"


def _detail(exc: BaseException) -> str:
    """The first line of a Playwright error, without its ``Locator.click:`` prefix."""
    text = str(getattr(exc, "message", None) or exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    line = re.sub(r"^(?:[A-Z]\w*\.\w+:\s*)?(?:Error:\s*)?", "", line)
    return " ".join(line.split()) or type(exc).__name__


def _url(page: Page) -> str:
    try:
        return page.url
    except Exception:
        return "a closed page"


async def _count(page: Page, selector: str) -> int | None:
    try:
        return await page.locator(selector).count()
    except Exception:
        return None


async def _why(page: Page, selector: str, timeout_s: float, wanted: str) -> str:
    """The one line saying why waiting for ``selector`` to be ``wanted`` ran out."""
    where = f"after {_secs(timeout_s)} on {_url(page)}"
    n = await _count(page, selector)
    if wanted in ("hidden", "detached"):
        still = "visible" if wanted == "hidden" else "on the page"
        return f"{selector!r} is still {still} {where}"
    if n == 0:
        return f"no element matches {selector!r} {where}"
    if n is None:
        return f"{selector!r} did not become {wanted} {where}"
    return f"{selector!r} matches {n} element(s) but the first is not {wanted} {where}"


async def _step(
    action: str,
    page: Page,
    selector: str,
    timeout_s: float,
    wanted: str,
    call: Callable[[], Awaitable[T]],
) -> T:
    """Run one Playwright call; its failure becomes a one-line error."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    try:
        return await call()
    except PlaywrightTimeout:
        message = await _why(page, selector, timeout_s, wanted)
    except Exception as exc:
        if not _playwright_error(exc):
            raise
        message = f"{action} {selector!r} on {_url(page)}: {_detail(exc)}"
        raise BrowserError(message) from None
    raise TimeoutError(message) from None


def _playwright_error(exc: BaseException) -> bool:
    from playwright.async_api import Error as PlaywrightError

    return isinstance(exc, PlaywrightError)


# --------------------------------------------------------------------------- the nodes


async def open_page(
    url: str | None = None,
    *,
    headless: bool = True,
    timeout_s: float = 30,
    viewport_width: int = 1280,
    viewport_height: int = 800,
) -> Page:
    """Open a page in the run's browser (launching it first if needed), at ``url``."""
    limit = _ms(timeout_s)
    session = await _session_for(headless, timeout_s)
    try:
        page = await session.context.new_page()
        await page.set_viewport_size({"width": viewport_width, "height": viewport_height})
    except Exception as exc:
        if not _playwright_error(exc):
            raise
        raise BrowserError(f"cannot open a page: {_detail(exc)}") from None
    page.set_default_timeout(limit)
    page.set_default_navigation_timeout(limit)
    if url:
        await goto(page, url, timeout_s=timeout_s)
    return page


async def goto(page: Page, url: str, *, timeout_s: float = 30) -> Page:
    """Go to ``url`` (relative to the page's address, like a link: ``/table``) and wait
    for the page to load."""
    if page.url.startswith(("http://", "https://")):
        url = urljoin(page.url, url)
    from playwright.async_api import Frame
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    error_page = asyncio.Event()

    def committed(frame: Frame) -> None:
        if frame == page.main_frame and frame.url.startswith("chrome-error:"):
            error_page.set()

    page.on("framenavigated", committed)
    try:
        await page.goto(url, timeout=_ms(timeout_s))
    except PlaywrightTimeout:
        raise TimeoutError(f"{url} did not load within {_secs(timeout_s)}") from None
    except Exception as exc:
        if not _playwright_error(exc):
            raise
        if "net::ERR_" in str(exc):
            # Chromium commits its error page a moment later, which would interrupt the
            # next navigation (a retry): let it
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(error_page.wait(), ERROR_PAGE_WAIT_S)
        raise BrowserError(f"cannot open {url}: {_detail(exc)}") from None
    finally:
        page.remove_listener("framenavigated", committed)
    return page


async def click(page: Page, selector: str, *, timeout_s: float = 10) -> Page:
    """Click the first element matching ``selector`` once it is clickable."""
    target = page.locator(selector).first
    await _step(
        "click",
        page,
        selector,
        timeout_s,
        "clickable",
        lambda: target.click(timeout=_ms(timeout_s)),
    )
    return page


async def fill(page: Page, selector: str, value: str, *, timeout_s: float = 10) -> Page:
    """Type ``value`` into the first field matching ``selector`` (replacing its text)."""
    target = page.locator(selector).first
    await _step(
        "fill",
        page,
        selector,
        timeout_s,
        "editable",
        lambda: target.fill(str(value), timeout=_ms(timeout_s)),
    )
    return page


async def wait_for(
    page: Page, selector: str, state: WaitState = "visible", *, timeout_s: float = 10
) -> Page:
    """Wait until the first element matching ``selector`` is in ``state``."""
    if state not in _STATES:
        raise ValueError(f"state must be one of {', '.join(_STATES)}, not {state!r}")
    target = page.locator(selector).first
    await _step(
        "wait for",
        page,
        selector,
        timeout_s,
        state,
        lambda: target.wait_for(state=state, timeout=_ms(timeout_s)),
    )
    return page


@overload
async def extract_text(
    page: Page, selector: str, all_matches: Literal[False] = False, *, timeout_s: float = 10
) -> str: ...
@overload
async def extract_text(
    page: Page, selector: str, all_matches: Literal[True], *, timeout_s: float = 10
) -> list[str]: ...
@overload
async def extract_text(
    page: Page, selector: str, all_matches: bool, *, timeout_s: float = 10
) -> str | list[str]: ...
async def extract_text(
    page: Page, selector: str, all_matches: bool = False, *, timeout_s: float = 10
) -> str | list[str]:
    """The text of the first element matching ``selector`` (of all of them with
    ``all_matches``), stripped, once one is on the page."""
    await wait_for(page, selector, "attached", timeout_s=timeout_s)
    matches = page.locator(selector)
    if all_matches:
        texts = await _step("read", page, selector, timeout_s, "attached", matches.all_inner_texts)
        return [t.strip() for t in texts]
    first = matches.first
    text = await _step(
        "read",
        page,
        selector,
        timeout_s,
        "attached",
        lambda: first.inner_text(timeout=_ms(timeout_s)),
    )
    return text.strip()


_TABLE_JS: Final = """
(el) => {
  const table = el.tagName === 'TABLE' ? el : el.querySelector('table');
  if (!table) return null;
  const text = (c) => (c.innerText ?? c.textContent ?? '').trim();
  const cells = (row) => {
    const out = [];
    for (const c of row.cells) {
      out.push(text(c));
      for (let i = 1; i < (c.colSpan || 1); i++) out.push('');
    }
    return out;
  };
  let header = null;
  const head = table.tHead && table.tHead.rows.length ? table.tHead.rows : null;
  let rows = Array.from(table.rows).filter(
    (r) => r.parentElement !== table.tHead && r.parentElement !== table.tFoot);
  if (head) {
    header = cells(head[head.length - 1]);
  } else if (rows.length && Array.from(rows[0].cells).every((c) => c.tagName === 'TH')) {
    header = cells(rows[0]);
    rows = rows.slice(1);
  }
  return {header, rows: rows.map(cells)};
}
"""

_PLAIN_NUMBER: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_GROUPED_NUMBER: Final = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def _as_number(text: str) -> int | float | None:
    """``text`` as a number (``1,249.00`` too), None when it is not one."""
    text = text.strip()
    if _GROUPED_NUMBER.fullmatch(text):
        text = text.replace(",", "")
    elif not _PLAIN_NUMBER.fullmatch(text):
        return None
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    return float(text)


def _column_names(header: list[str] | None, width: int) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for i in range(width):
        base = (header[i] if header and i < len(header) else "") or f"column_{i + 1}"
        name, n = base, 1
        while name in seen:
            n += 1
            name = f"{base}_{n}"
        seen.add(name)
        names.append(name)
    return names


def _numeric(values: list[str | None]) -> list[Any] | None:
    """The column as numbers when every non-empty cell is one (and one is); else None."""
    numbers: list[int | float | None] = []
    for value in values:
        if value is None or value == "":
            numbers.append(None)
            continue
        number = _as_number(value)
        if number is None:
            return None
        numbers.append(number)
    if all(n is None for n in numbers):
        return None
    if any(n is None for n in numbers) or any(isinstance(n, float) for n in numbers):
        return [math.nan if n is None else float(n) for n in numbers]
    return numbers


async def extract_table(
    page: Page, selector: str = "table", *, timeout_s: float = 10
) -> pd.DataFrame:
    """The first table matching ``selector`` as a DataFrame: header cells become the
    columns, a column whose cells all parse as numbers becomes numeric."""
    import pandas as pd

    await wait_for(page, selector, "attached", timeout_s=timeout_s)
    first = page.locator(selector).first
    data = await _step(
        "read table",
        page,
        selector,
        timeout_s,
        "attached",
        lambda: first.evaluate(_TABLE_JS, timeout=_ms(timeout_s)),
    )
    if data is None:
        raise BrowserError(f"{selector!r} on {_url(page)} is not a table and holds none")
    header: list[str] | None = data["header"]
    rows: list[list[str]] = data["rows"]
    width = max([len(header or [])] + [len(r) for r in rows])
    names = _column_names(header, width)
    columns: dict[str, list[Any]] = {}
    for i, name in enumerate(names):
        values: list[str | None] = [r[i] if i < len(r) else None for r in rows]
        numbers = _numeric(values)
        columns[name] = numbers if numbers is not None else values
    return pd.DataFrame(columns, columns=names)


async def screenshot(
    page: Page, path: str | os.PathLike[str], full_page: bool = False, *, timeout_s: float = 30
) -> str:
    """Save a PNG of the page (``full_page``: all of it, not only the viewport) at
    ``path``, creating its folder; answer the absolute path."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    target = Path(path).expanduser().absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        await page.screenshot(path=target, full_page=full_page, timeout=_ms(timeout_s))
    except PlaywrightTimeout:
        message = f"no screenshot of {_url(page)} within {_secs(timeout_s)}"
        raise TimeoutError(message) from None
    except Exception as exc:
        if not _playwright_error(exc):
            raise
        raise BrowserError(f"screenshot of {_url(page)}: {_detail(exc)}") from None
    return str(target)
