"""A small local website for the browser nodes' tests and the example workflows.

Stdlib only: a ``ThreadingHTTPServer`` in a daemon thread, bound to a loopback address,
no external assets. Pages:

* ``/`` - an index linking the others;
* ``/form`` - fields ``#name`` and ``#email`` and a ``#submit`` button; submitting goes
  to ``/thanks?name=..``, which shows ``<p id="thanks">Thanks, NAME</p>``;
* ``/table`` - ``<table id="prices">``: header ``product, price, stock``, six rows, the
  numbers as text;
* ``/slow?delay_ms=800`` - ``<p id="late">ready</p>`` appears after the delay (setTimeout);
* ``/report-data.json`` - the same products as a JSON list of records.

``with serve() as url:`` runs it for a block (``url`` has no trailing slash);
``python -m casare_nb.site [--port N]`` runs it by hand until Ctrl-C.
"""

from __future__ import annotations

import argparse
import html
import ipaddress
import json
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

__all__ = ["PRODUCTS", "main", "serve"]

PRODUCTS: Final[tuple[dict[str, Any], ...]] = (
    {"product": "Espresso cup", "price": 4.5, "stock": 120, "sold": 340},
    {"product": "Teapot", "price": 24.0, "stock": 18, "sold": 52},
    {"product": "Coffee grinder", "price": 89.9, "stock": 7, "sold": 21},
    {"product": "Milk jug", "price": 12.25, "stock": 45, "sold": 98},
    {"product": "Espresso machine", "price": 1249.0, "stock": 3, "sold": 5},
    {"product": "Tea towel", "price": 6.0, "stock": 0, "sold": 77},
)
"""What ``/table`` and ``/report-data.json`` show."""

MAX_DELAY_MS: Final = 60_000


def _page(title: str, body: str, script: str = "") -> bytes:
    js = f"<script>{script}</script>" if script else ""
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        "<style>body{font-family:sans-serif;margin:2em}"
        "table{border-collapse:collapse}td,th{border:1px solid #999;padding:.3em .6em}"
        "td.num{text-align:right}label{display:block;margin:.5em 0}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>\n{body}\n{js}</body></html>\n"
    ).encode()


def _index() -> bytes:
    links = [
        ("/form", "A form (name, email, submit)"),
        ("/table", "A table of prices"),
        ("/slow?delay_ms=800", "An element that appears late"),
        ("/report-data.json", "The prices as JSON"),
    ]
    items = "".join(f'<li><a href="{href}">{html.escape(text)}</a></li>' for href, text in links)
    return _page("casare-nb test site", f'<ul id="links">{items}</ul>')


def _form() -> bytes:
    body = (
        '<form id="signup" action="/thanks" method="get">'
        '<label>Name <input id="name" name="name" type="text"></label>'
        '<label>Email <input id="email" name="email" type="email"></label>'
        '<button id="submit" type="submit">Send</button>'
        "</form>"
    )
    return _page("Sign up", body)


def _thanks(query: dict[str, list[str]]) -> bytes:
    name = html.escape((query.get("name") or [""])[0])
    email = html.escape((query.get("email") or [""])[0])
    body = f'<p id="thanks">Thanks, {name}</p><p id="email">{email}</p><a href="/">Home</a>'
    return _page("Thanks", body)


def _number(value: float) -> str:
    return f"{value:,.2f}"


def _table() -> bytes:
    rows = "".join(
        f"<tr><td>{html.escape(p['product'])}</td><td class='num'>{_number(p['price'])}</td>"
        f"<td class='num'>{p['stock']}</td></tr>"
        for p in PRODUCTS
    )
    body = (
        '<table id="prices"><caption>Prices</caption>'
        "<thead><tr><th>product</th><th>price</th><th>stock</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )
    return _page("Prices", body)


def _slow(query: dict[str, list[str]]) -> bytes:
    try:
        delay = int((query.get("delay_ms") or ["800"])[0])
    except ValueError:
        delay = 800
    delay = max(0, min(delay, MAX_DELAY_MS))
    script = (
        "setTimeout(() => {"
        " const p = document.createElement('p'); p.id = 'late'; p.textContent = 'ready';"
        f" document.getElementById('box').appendChild(p); }}, {delay});"
    )
    return _page("Slow", f'<p id="waiting">waiting {delay} ms</p><div id="box"></div>', script)


def _report_data() -> bytes:
    return json.dumps(list(PRODUCTS), indent=1).encode()


class _Handler(BaseHTTPRequestHandler):
    server_version = "casare-nb-site"
    quiet = True

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        pages = {
            "/": _index,
            "/form": _form,
            "/table": _table,
            "/report-data.json": _report_data,
        }
        if parts.path in pages:
            body = pages[parts.path]()
        elif parts.path == "/thanks":
            body = _thanks(query)
        elif parts.path == "/slow":
            body = _slow(query)
        else:
            self._send(404, _page("Not found", "<p>No such page.</p>"), "text/html")
            return
        kind = "application/json" if parts.path.endswith(".json") else "text/html"
        self._send(200, body, kind)

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        if not self.quiet:
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def _loopback(host: str) -> str:
    address = "127.0.0.1" if host == "localhost" else host
    try:
        ok = ipaddress.ip_address(address).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"the test site binds a loopback address only, not {host!r}")
    return address


@contextmanager
def serve(host: str = "127.0.0.1", port: int = 0, *, quiet: bool = True) -> Iterator[str]:
    """Run the site in a daemon thread for the block; yield its base URL."""
    address = _loopback(host)
    handler = type("Handler", (_Handler,), {"quiet": quiet})
    six = ":" in address
    server = (_Server6 if six else _Server)((address, port), handler)
    thread = threading.Thread(target=server.serve_forever, name="casare-site", daemon=True)
    thread.start()
    shown = f"[{address}]" if six else address
    try:
        yield f"http://{shown}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the site by hand until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m casare_nb.site", description="The local test site of the browser nodes."
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    with serve(port=args.port, quiet=False) as url:
        print(url, flush=True)
        with suppress(KeyboardInterrupt):
            stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
