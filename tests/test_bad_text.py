"""Text that is not valid Unicode (a lone surrogate, which JSON's "\\ud800" makes) can never
wedge the service: refused with a one-line 422 at every edge (API, webhooks, robot
messages), escaped when a genuine report carries it, and never a poison write. A real
orchestrator and robot (ServiceThread), real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from helpers import served, write_notebook

from casare_nb.core.models import RunRecord, RunStatus
from casare_nb.core.signing import signed_headers
from casare_nb.core.text import storable, unicode_problem
from casare_nb.protocol import JobFailed, decode, encode
from casare_nb.protocol.codec import ProtocolError
from casare_nb.service_thread import ServiceThread
from casare_nb.store.database import to_json
from casare_nb.store.history import HistoryStore

WAIT = 90.0
SECRET = "s3cret-for-hooks"
LONE = b'"bad \\ud800 text"'  # valid JSON whose string holds a lone surrogate


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    root = tmp_path_factory.mktemp("bad-text")
    workflows = root / "workflows"
    workflows.mkdir()
    write_notebook(workflows / "echo.ipynb", ["print(text)"], params="text: str = 'hi'")
    write_notebook(workflows / "raises.ipynb", ["raise ValueError('bad \\ud800 error')"])
    with served(root / "state", workflows, "robot-t", environ={"HOOK_SECRET": SECRET}) as thread:
        yield thread


@pytest.fixture
def http(cluster: ServiceThread) -> Iterator[httpx.Client]:
    token = cluster.service.admin_token or ""
    with httpx.Client(
        base_url=cluster.service.http_url, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        yield client


def _normal_job_completes(cluster: ServiceThread) -> None:
    with cluster.client() as client:
        job = client.submit("echo.ipynb", {"text": "after"}, wait=True, timeout=WAIT)
    assert job.status is RunStatus.COMPLETED


def test_a_submit_with_a_lone_surrogate_is_a_one_line_422_and_the_queue_moves(
    http: httpx.Client, cluster: ServiceThread
) -> None:
    """The parameter's path is named in one line; the next submit completes at once and
    the job list still answers."""
    body = b'{"workflow": "echo.ipynb", "parameters": {"text": ' + LONE + b"}}"
    answer = http.post("/api/jobs", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert "$.parameters.text" in detail and "lone surrogate" in detail and "\n" not in detail
    raw = b'{"workflow": "echo.ipynb", "raw_parameters": {"text": ' + LONE + b"}}"
    refused = http.post("/api/jobs", content=raw, headers={"Content-Type": "application/json"})
    assert refused.status_code == 422
    _normal_job_completes(cluster)
    assert http.get("/api/jobs").status_code == 200


def test_a_signed_webhook_with_a_lone_surrogate_is_refused(
    http: httpx.Client, cluster: ServiceThread
) -> None:
    """A correctly signed delivery whose body holds a lone surrogate answers 422 and
    submits nothing; a clean delivery then runs."""
    hook = http.post(
        "/api/triggers",
        json={"kind": "webhook", "workflow": "echo.ipynb", "secret_env": "HOOK_SECRET"},
    ).json()
    url = f"/hooks/{hook['trigger']['trigger_id']}"
    before = len(http.get("/api/jobs").json())
    bad = b'{"text": ' + LONE + b"}"
    answer = httpx.post(
        cluster.service.http_url + url,
        content=bad,
        headers=signed_headers(SECRET.encode(), bad, delivery_id="d-bad"),
    )
    assert answer.status_code == 422 and "lone surrogate" in answer.json()["detail"]
    assert len(http.get("/api/jobs").json()) == before
    good = json.dumps({"text": "fine"}).encode()
    accepted = httpx.post(
        cluster.service.http_url + url,
        content=good,
        headers=signed_headers(SECRET.encode(), good, delivery_id="d-good"),
    )
    assert accepted.status_code == 200, accepted.text
    with cluster.client() as client:
        assert client.wait(accepted.json()["job_id"], timeout=WAIT).status is RunStatus.COMPLETED


def test_a_cell_error_with_a_lone_surrogate_fails_its_job_and_nothing_else(
    http: httpx.Client, cluster: ServiceThread
) -> None:
    """A cell raising an error whose text holds a lone surrogate fails its job with a
    one-line error (the kernel itself cannot send that text); reads answer 200 and the
    queue moves."""
    with cluster.client() as client:
        job = client.submit("raises.ipynb", wait=True, timeout=WAIT)
    assert job.status is RunStatus.FAILED
    assert job.error_message is not None and "\n" not in job.error_message
    assert http.get("/api/jobs").status_code == 200
    assert http.get(f"/api/jobs/{job.job_id}/attempts").status_code == 200
    _normal_job_completes(cluster)


def test_robot_frames_with_a_lone_surrogate_are_refused_and_outgoing_ones_escaped() -> None:
    """decode refuses a frame holding one (invalid_message naming where); encode sends a
    report holding one escaped, and it decodes."""
    frame = encode(
        JobFailed(job_id="j", attempt=1, error_name="E", error_message="ok", duration_s=1.0)
    )
    forged = frame.replace('"ok"', '"bad \\ud800"')
    with pytest.raises(ProtocolError, match=r"error_message is not valid Unicode"):
        decode(forged)
    sent = encode(
        JobFailed(job_id="j", attempt=1, error_name="E", error_message="bad \ud800", duration_s=1.0)
    )
    assert decode(sent).error_message == "bad \\ud800"  # type: ignore[attr-defined]


def test_the_stores_escape_what_slips_through(tmp_path: Path) -> None:
    """to_json and the history writer store a lone surrogate escaped instead of failing
    the write (which would be retried forever)."""
    assert json.loads(to_json({"k\ud800": ["v\udfff"]})) == {"k\\ud800": ["v\\udfff"]}
    assert unicode_problem({"a": ["ok", "b\ud800"]}) == "$.a[1]"
    assert storable("fine") == "fine"
    store = HistoryStore(tmp_path / "history.duckdb")
    record = RunRecord(
        run_id="r1",
        attempt=1,
        workflow_path="w.ipynb",
        notebook_sha256="0" * 64,
        kernel_name="python3",
        started_at=datetime.now(UTC),
        status=RunStatus.FAILED,
        error_message="bad \ud800",
        parameters={"text": "x\ud800"},
    )
    store.start_run(record)
    (got,) = store.attempts("r1")
    assert got.error_message == "bad \\ud800" and got.parameters == {"text": "x\\ud800"}
