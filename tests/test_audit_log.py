"""The audit log against a real orchestrator (127.0.0.1 port 0, httpx, WebSocket): every
submit, cancel, re-run, drain, pause, token change, refusal and failed authentication is one
JSON record on the ``casare_nb.audit`` logger, saying who, with which role, from where."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster import fake_robot
from helpers import write_notebook
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from casare_nb.core.tokens import TokenRole
from casare_nb.orchestrator.audit import AUDIT_LOGGER
from casare_nb.orchestrator.service import OrchestratorService

TIMEOUT = 10.0
FIELDS = {"time", "actor", "role", "action", "target", "outcome", "address"}


class Records(logging.Handler):
    """The audit records, as the JSON objects their messages are."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.entries: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.entries.append(json.loads(record.getMessage()))

    def of(self, action: str) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["action"] == action]


@pytest.fixture
def audit() -> Iterator[Records]:
    """A handler on the audit logger, at INFO, as the service's log file is."""
    records = Records()
    logger = logging.getLogger(AUDIT_LOGGER)
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[OrchestratorService]:
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    write_notebook(workflows / "add.ipynb", ["y = n + 1"], params="n: int = 1")
    service = OrchestratorService(
        tmp_path / "state", port=0, http_port=0, workflows_dir=workflows, write_runtime_file=False
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def token(service: OrchestratorService, name: str, role: TokenRole) -> httpx.AsyncClient:
    value = await asyncio.to_thread(service.orchestrator.create_token, name, role)
    headers = {"Authorization": f"Bearer {value}"}
    return httpx.AsyncClient(base_url=service.http_url, headers=headers, timeout=TIMEOUT)


def only(entries: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(entries) == 1, entries
    return entries[0]


async def test_job_actions_are_audited_with_who_and_from_where(
    service: OrchestratorService, audit: Records
) -> None:
    """Submit, a refused and an allowed cancel, and a re-run are each one record with the
    token's name and role, the job, the outcome and the client's address; the time is UTC."""
    async with (
        await token(service, "alice", TokenRole.USER) as alice,
        await token(service, "bob", TokenRole.USER) as bob,
        await token(service, "ops", TokenRole.ADMIN) as ops,
    ):
        job_id = (await alice.post("/api/jobs", json={"workflow": "add.ipynb"})).json()["job_id"]
        assert (await bob.post(f"/api/jobs/{job_id}/cancel")).status_code == 403
        assert (await alice.post(f"/api/jobs/{job_id}/cancel")).status_code == 200
        assert (await ops.post(f"/api/jobs/{job_id}/rerun")).status_code == 200
    submitted = only(audit.of("submit"))
    assert set(submitted) == FIELDS | {"detail"}
    assert {k: submitted[k] for k in FIELDS - {"time"}} == {
        "actor": "alice",
        "role": "user",
        "action": "submit",
        "target": job_id,
        "outcome": "ok",
        "address": "127.0.0.1",
    }
    assert submitted["detail"] == "workflow add.ipynb"
    stamp = datetime.fromisoformat(submitted["time"])
    assert stamp.tzinfo is not None and abs(datetime.now(UTC) - stamp).total_seconds() < 60
    cancels = [(e["actor"], e["outcome"], e["target"]) for e in audit.of("cancel")]
    assert cancels == [("bob", "denied", job_id), ("alice", "ok", job_id)]
    assert "submitted by token 'alice', needs admin" in audit.of("cancel")[0]["detail"]
    rerun = only(audit.of("rerun"))
    assert (rerun["actor"], rerun["role"], rerun["outcome"]) == ("ops", "admin", "ok")


async def test_drains_pauses_and_token_changes_are_audited(
    service: OrchestratorService, audit: Records
) -> None:
    """Draining and undraining a robot, pausing and resuming submissions, creating and
    revoking a token are each one record of the admin who did it; a user's attempt is a
    ``denied`` record."""
    orch = service.orchestrator
    async with (
        fake_robot(orch, "robot-1"),
        await token(service, "ops", TokenRole.ADMIN) as ops,
        await token(service, "alice", TokenRole.USER) as alice,
    ):
        assert (await alice.post("/api/robots/robot-1/pause")).status_code == 403
        for path in (
            "/api/robots/robot-1/pause",
            "/api/robots/robot-1/unpause",
            "/api/submissions/pause",
            "/api/submissions/unpause",
        ):
            assert (await ops.post(path)).status_code == 200, path
        created = await ops.post("/api/tokens", json={"name": "robot-2", "role": "robot"})
        assert created.status_code == 201
        assert (await ops.delete("/api/tokens/robot-2")).status_code == 204
    done = [
        (e["action"], e["actor"], e["target"], e["outcome"])
        for e in audit.entries
        if e["action"] != "submit"
    ]
    assert done == [
        ("draining a robot", "alice", "/api/robots/robot-1/pause", "denied"),
        ("drain_robot", "ops", "robot-1", "ok"),
        ("undrain_robot", "ops", "robot-1", "ok"),
        ("pause_submissions", "ops", "submissions", "ok"),
        ("resume_submissions", "ops", "submissions", "ok"),
        ("create_token", "ops", "robot-2", "ok"),
        ("revoke_token", "ops", "robot-2", "ok"),
    ]
    assert only(audit.of("create_token"))["detail"] == "role robot"


async def test_every_failed_authentication_is_audited(
    service: OrchestratorService, audit: Records
) -> None:
    """A bad bearer token over HTTP, a WebSocket upgrade without one and an unsigned webhook
    delivery are each a ``failed`` authenticate record with the address and no actor."""
    bad = {"Authorization": "Bearer not-a-token"}
    async with httpx.AsyncClient(base_url=service.http_url, timeout=TIMEOUT) as http:
        assert (await http.get("/api/jobs", headers=bad)).status_code == 401
        assert (await http.post("/hooks/nowhere", json={})).status_code == 401
    with pytest.raises(InvalidStatus):
        async with connect(service.orchestrator.url, open_timeout=TIMEOUT):
            pass
    failures = audit.of("authenticate")
    assert [(e["target"], e["outcome"], e["actor"], e["role"]) for e in failures] == [
        ("GET /api/jobs", "failed", None, None),
        ("POST /hooks/nowhere", "failed", None, None),
        ("websocket", "failed", None, None),
    ]
    assert {e["address"] for e in failures} == {"127.0.0.1"}
    assert failures[0]["detail"] == "invalid or revoked token"
    assert "missing 'Authorization: Bearer <token>' header" in failures[2]["detail"]


async def test_audit_records_propagate_without_a_handler_of_their_own(
    service: OrchestratorService, caplog: pytest.LogCaptureFixture
) -> None:
    """With no handler or level of its own on the audit logger, its records reach the root's
    handlers (here pytest's) at the root's level: INFO for what was done, WARNING for
    refusals; none is lost."""
    logger = logging.getLogger(AUDIT_LOGGER)
    assert logger.propagate and logger.level == logging.NOTSET and not logger.handlers
    caplog.set_level(logging.INFO)
    async with await token(service, "alice", TokenRole.USER) as alice:
        assert (await alice.post("/api/jobs", json={"workflow": "add.ipynb"})).status_code == 201
        assert (await alice.post("/api/submissions/pause")).status_code == 403
    seen = [
        (r.levelno, json.loads(r.getMessage())["action"])
        for r in caplog.records
        if r.name == AUDIT_LOGGER
    ]
    assert seen == [(logging.INFO, "submit"), (logging.WARNING, "pausing submissions")]
