"""Request bodies are bounded before they are parsed: over the limit (1 MiB by default,
``max_body_bytes``), the API and the webhooks answer 413 with one line, whether the size
is declared or the body is streamed, and the orchestrator goes on serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import write_notebook

from casare_nb.core.signing import signed_headers
from casare_nb.orchestrator.http.limits import DEFAULT_MAX_BODY_BYTES
from casare_nb.orchestrator.service import OrchestratorService
from casare_nb.service_thread import ServiceThread

SECRET = "hook-secret"
LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrchestratorService]:
    root = tmp_path_factory.mktemp("limits")
    write_notebook(root / "w.ipynb", ["y = 1"], params="text: str = ''")
    found = OrchestratorService(
        root / "state",
        port=0,
        http_port=0,
        workflows_dir=root,
        max_body_bytes=LIMIT,
        environ={"HOOK_SECRET": SECRET},
    )
    with ServiceThread(found):
        yield found


@pytest.fixture
def http(service: OrchestratorService) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=service.http_url,
        headers={"Authorization": f"Bearer {service.admin_token}"},
        timeout=60,
    ) as client:
        yield client


def test_the_default_limit_is_one_mebibyte() -> None:
    """Without a setting, bodies up to 1 MiB are taken."""
    assert DEFAULT_MAX_BODY_BYTES == 1 << 20


def test_a_submit_over_the_limit_is_413_and_nothing_is_queued(http: httpx.Client) -> None:
    """A 50-times-too-large parameter answers 413 naming the limit; no job is made; a
    normal submit then answers 201."""
    before = len(http.get("/api/jobs").json())
    big = {"workflow": "w.ipynb", "parameters": {"text": "x" * (LIMIT * 50)}}
    answer = http.post("/api/jobs", json=big)
    assert answer.status_code == 413
    detail = answer.json()["detail"]
    assert detail.startswith("request body too large: ") and f"limit is {LIMIT} bytes" in detail
    assert len(http.get("/api/jobs").json()) == before
    assert http.post("/api/jobs", json={"workflow": "w.ipynb"}).status_code == 201


def test_a_streamed_body_without_a_length_is_cut_at_the_limit(http: httpx.Client) -> None:
    """A chunked body (no Content-Length) answers 413 once it passes the limit."""

    def chunks() -> Iterator[bytes]:
        yield b'{"workflow": "w.ipynb", "parameters": {"text": "'
        for _ in range(100):
            yield b"y" * 4096
        yield b'"}}'

    answer = http.post("/api/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and "too large" in answer.json()["detail"]


def test_a_signed_webhook_over_the_limit_is_413(
    http: httpx.Client, service: OrchestratorService
) -> None:
    """A validly signed 5 MB delivery is refused with 413 before its signature is even
    checked; nothing is submitted."""
    hook = http.post(
        "/api/triggers",
        json={"kind": "webhook", "workflow": "w.ipynb", "secret_env": "HOOK_SECRET"},
    ).json()
    before = len(http.get("/api/jobs").json())
    body = json.dumps({"text": "z" * 5_000_000}).encode()
    answer = httpx.post(
        f"{service.http_url}/hooks/{hook['trigger']['trigger_id']}",
        content=body,
        headers=signed_headers(SECRET.encode(), body, delivery_id="big"),
        timeout=60,
    )
    assert answer.status_code == 413
    assert len(http.get("/api/jobs").json()) == before


def test_limits_are_refused_below_a_kilobyte(tmp_path: Path) -> None:
    """casare-nb orchestrator refuses --max-body-bytes under 1024 as bad input (exit 2)."""
    from click.testing import CliRunner

    from casare_nb.cli import app

    result = CliRunner().invoke(app, ["orchestrator", "--max-body-bytes", "10"])
    assert result.exit_code == 2 and "max-body-bytes" in result.output
