"""casare_nb.nodes.http against a real HTTP server on 127.0.0.1: retries on 503, 429 and
refused connections, at once on 404, JSON to a DataFrame; and the http templates' code."""

from __future__ import annotations

import json
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest
from test_nodes_data import check_category

from casare_nb.nodes import http as nb_http

ITEMS = [
    {"id": 1, "name": "bolt", "price": {"amount": 0.25, "currency": "EUR"}},
    {"id": 2, "name": "nut", "price": {"amount": 0.1, "currency": "EUR"}},
]


@dataclass
class Server:
    """The test server: its base URL and how many requests each path got."""

    url: str
    hits: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hit(self, path: str) -> int:
        with self.lock:
            self.hits[path] += 1
            return self.hits[path]


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def send(self, status: int, body: Any, kind: str = "application/json", **hdr: str) -> None:
            raw = (json.dumps(body) if kind == "application/json" else str(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(raw)))
            for name, value in hdr.items():
                self.send_header(name.replace("_", "-"), value)
            self.end_headers()
            self.wfile.write(raw)

        def route(self) -> None:
            parts = urlsplit(self.path)
            n = server.hit(parts.path)
            if parts.path == "/flaky":  # 503 twice, then fine
                if n <= 2:
                    self.send(503, "busy", "text/plain")
                else:
                    self.send(200, {"ok": True, "attempt": n})
            elif parts.path == "/always-503":
                self.send(503, "down for maintenance", "text/plain")
            elif parts.path == "/limited":  # 429 once, asking for no wait
                if n == 1:
                    self.send(429, {"error": "slow down"}, Retry_After="0")
                else:
                    self.send(200, {"ok": True})
            elif parts.path == "/missing":
                self.send(404, "no such thing\nat all", "text/plain")
            elif parts.path == "/items":
                self.send(200, ITEMS)
            elif parts.path == "/nested":
                self.send(200, {"data": {"items": ITEMS, "total": 2}})
            elif parts.path == "/text":
                self.send(200, "plain words", "text/plain")
            elif parts.path == "/echo":
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                self.send(
                    200,
                    {
                        "method": self.command,
                        "query": parse_qs(parts.query),
                        "token": self.headers.get("X-Token"),
                        "body": json.loads(body) if body else None,
                    },
                )
            else:
                self.send(500, "unexpected path", "text/plain")

        do_GET = do_POST = do_PUT = do_DELETE = route

    return Handler


@pytest.fixture(scope="module")
def running_server() -> Iterator[Server]:
    """One server for the module (its shutdown waits out a poll interval)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    srv = Server(f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.RequestHandlerClass = _handler(srv)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture
def server(running_server: Server) -> Server:
    """The server, its hit counts from zero."""
    with running_server.lock:
        running_server.hits.clear()
    return running_server


def test_http_templates_parse_and_fit_the_functions() -> None:
    """Every http template renders (by hand) to a cell that parses and whose calls bind to
    nodes.http's signatures."""
    check_category("http", {"request", "json_to_frame"})


def test_get_json(server: Server) -> None:
    """A GET answers status, headers, the parsed JSON and the text."""
    response = nb_http.request(f"{server.url}/items")
    assert response["status"] == 200
    assert response["json"] == ITEMS
    assert json.loads(response["text"]) == ITEMS
    assert response["headers"]["content-type"] == "application/json"
    assert server.hits["/items"] == 1


def test_retries_503_then_succeeds(server: Server) -> None:
    """Two 503s are retried with back-off; the third attempt's answer is returned."""
    response = nb_http.request(f"{server.url}/flaky", retries=3, backoff_s=0.01)
    assert response["json"] == {"ok": True, "attempt": 3}
    assert server.hits["/flaky"] == 3


def test_gives_up_after_the_retries(server: Server) -> None:
    """A 503 that stays fails after retries + 1 attempts with one line: method, URL,
    status, attempts, the body's start."""
    url = f"{server.url}/always-503"
    with pytest.raises(nb_http.HttpError) as info:
        nb_http.request(url, retries=2, backoff_s=0.01)
    assert str(info.value) == (
        f"GET {url}: 503 Service Unavailable after 3 attempts: down for maintenance"
    )
    assert info.value.status == 503
    assert server.hits["/always-503"] == 3


def test_too_few_retries_fail_the_flaky_endpoint(server: Server) -> None:
    """retries=1 means two attempts: not enough for an endpoint failing twice."""
    with pytest.raises(nb_http.HttpError, match="503 Service Unavailable after 2 attempts"):
        nb_http.request(f"{server.url}/flaky", retries=1, backoff_s=0.01)
    assert server.hits["/flaky"] == 2


def test_429_is_retried(server: Server) -> None:
    """A 429 (Retry-After: 0) is tried again."""
    response = nb_http.request(f"{server.url}/limited", backoff_s=0.01)
    assert response["json"] == {"ok": True}
    assert server.hits["/limited"] == 2


def test_404_fails_at_once_on_one_line(server: Server) -> None:
    """A 404 is not retried: one attempt, one line with the status and the body's start."""
    url = f"{server.url}/missing"
    with pytest.raises(nb_http.HttpError) as info:
        nb_http.request(url, retries=5, backoff_s=0.01)
    assert str(info.value) == f"GET {url}: 404 Not Found: no such thing at all"
    assert info.value.status == 404
    assert server.hits["/missing"] == 1


def test_refused_connection_is_retried_then_one_line() -> None:
    """Nothing listening: each attempt is refused; the error names the transport error."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}/x"
    with pytest.raises(nb_http.HttpError) as info:
        nb_http.request(url, retries=1, backoff_s=0.01, timeout_s=5)
    text = str(info.value)
    assert text.startswith(f"GET {url}: ConnectError: ") and text.endswith(" after 2 attempts")
    assert "\n" not in text and info.value.status is None


def test_post_sends_params_headers_and_json(server: Server) -> None:
    """The method, query parameters, headers and JSON body reach the server."""
    response = nb_http.request(
        f"{server.url}/echo",
        "post",
        params={"page": 2, "q": "a b"},
        headers={"X-Token": "t0k"},
        json_body={"name": "bolt", "tags": [1, 2]},
    )
    assert response["json"] == {
        "method": "POST",
        "query": {"page": ["2"], "q": ["a b"]},
        "token": "t0k",
        "body": {"name": "bolt", "tags": [1, 2]},
    }


def test_text_body_has_no_json(server: Server) -> None:
    """A plain-text answer has json None and its text."""
    response = nb_http.request(f"{server.url}/text")
    assert response["json"] is None and response["text"] == "plain words"


def test_json_to_frame_from_a_response(server: Server) -> None:
    """A request's answer (a JSON list) becomes one row per item, nested fields as a.b."""
    frame = nb_http.json_to_frame(nb_http.request(f"{server.url}/items"))
    assert list(frame.columns) == ["id", "name", "price.amount", "price.currency"]
    assert frame["name"].tolist() == ["bolt", "nut"]
    assert frame["price.amount"].tolist() == [0.25, 0.1]


def test_json_to_frame_record_path(server: Server) -> None:
    """A dotted record_path finds the records inside nested objects."""
    response = nb_http.request(f"{server.url}/nested")
    frame = nb_http.json_to_frame(response, "data.items")
    assert frame["id"].tolist() == [1, 2]
    with pytest.raises(ValueError) as info:
        nb_http.json_to_frame(response, "data.rows")
    assert str(info.value) == "json_to_frame: no 'rows' under data (keys: items, total)"


def test_json_to_frame_other_shapes() -> None:
    """JSON text, one object, a list of plain values and list indexes in the path work."""
    assert nb_http.json_to_frame('[{"a": 1}, {"a": 2}]')["a"].tolist() == [1, 2]
    assert nb_http.json_to_frame({"a": {"b": 1}}).to_dict("list") == {"a.b": [1]}
    assert nb_http.json_to_frame([3, 4]).to_dict("list") == {"value": [3, 4]}
    pages = {"pages": [{"rows": [{"x": 1}]}, {"rows": [{"x": 2}, {"x": 3}]}]}
    assert nb_http.json_to_frame(pages, "pages.1.rows")["x"].tolist() == [2, 3]
    assert isinstance(nb_http.json_to_frame(None), pd.DataFrame)
    with pytest.raises(ValueError, match="expected a list or an object at 'a', got int"):
        nb_http.json_to_frame({"a": 5}, "a")
