"""The orchestrator's HTTP API over real HTTP: a real orchestrator on 127.0.0.1 port 0,
real DuckDB tokens, httpx requests. No robot: these tests are about the API's answers;
jobs that run on robots are in test_client.py and test_cli_service.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers import write_notebook

from casare_nb.orchestrator.service import OrchestratorService


@dataclass
class Api:
    service: OrchestratorService
    http: httpx.AsyncClient
    root: Path

    @property
    def token(self) -> str:
        assert self.service.admin_token is not None
        return self.service.admin_token

    async def submit(self, workflow: str = "typed.ipynb", **body: object) -> httpx.Response:
        return await self.http.post("/api/jobs", json={"workflow": workflow, **body})


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    write_notebook(workflows / "typed.ipynb", ["y = n + 1"], params="n: int = 1\nlabel: str = 'x'")
    service = OrchestratorService(
        tmp_path / "state",
        port=0,
        http_port=0,
        workflows_dir=workflows,
        write_runtime_file=False,
    )
    await service.start()
    try:
        headers = {"Authorization": f"Bearer {service.admin_token}"}
        async with httpx.AsyncClient(base_url=service.http_url, headers=headers) as http:
            yield Api(service, http, tmp_path)
    finally:
        await service.stop()


def one_line(response: httpx.Response, status: int) -> str:
    """The response's one-line ``detail``, after checking its status."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail, detail
    return detail


async def test_api_refuses_missing_malformed_unknown_and_revoked_tokens(api: Api) -> None:
    """/api routes answer 401 with a one-line reason without a live bearer token."""
    url = "/api/jobs"
    missing = await api.http.get(url, headers={"Authorization": ""})
    assert "Authorization" in one_line(missing, 401)
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "malformed" in one_line(
        await api.http.get(url, headers={"Authorization": "Basic x"}), 401
    )
    wrong = await api.http.get(url, headers={"Authorization": "Bearer not-a-token"})
    assert "invalid or revoked" in one_line(wrong, 401)
    created = await api.http.post("/api/tokens", json={"name": "short-lived"})
    assert created.status_code == 201
    token = created.json()["token"]
    assert (
        await api.http.get(url, headers={"Authorization": f"Bearer {token}"})
    ).status_code == 200
    assert (await api.http.delete("/api/tokens/short-lived")).status_code == 204
    revoked = await api.http.get(url, headers={"Authorization": f"Bearer {token}"})
    assert "invalid or revoked" in one_line(revoked, 401)


async def test_health_needs_no_token_and_counts_jobs_by_status(api: Api) -> None:
    """/health answers without a token: ok, robots online, jobs by status."""
    assert (await api.submit(tags=["nowhere"])).status_code == 201
    health = await api.http.get("/health", headers={"Authorization": ""})
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["robots_online"] == 0 and body["ready"] is True
    assert body["jobs"]["queued"] == 1 and body["jobs"]["completed"] == 0
    assert body["queue"] == {"low": 0, "normal": 1, "high": 0, "critical": 0}
    assert body["robots"]["online"] == 0
    assert (await api.http.get("/health/ready")).status_code == 200


async def test_info_names_the_websocket_url_and_the_draining_state(api: Api) -> None:
    """/api/info gives the version, the ws:// URL robots use and draining: false."""
    info = (await api.http.get("/api/info")).json()
    assert info["ws_url"] == api.service.ws_url and info["ws_url"].startswith("ws://127.0.0.1:")
    assert info["draining"] is False and info["version"]


async def test_submitted_job_is_201_and_can_be_listed_and_fetched(api: Api) -> None:
    """POST /api/jobs queues a job (201); GET lists it by status and fetches it by id."""
    response = await api.submit(parameters={"n": 5}, priority="high", tags=["nowhere"])
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "queued" and job["parameters"] == {"n": 5}
    assert job["priority"] == "high"
    assert job["workflow_path"] == str((api.root / "workflows" / "typed.ipynb").resolve())
    listed = (await api.http.get("/api/jobs", params={"status": "queued"})).json()
    assert [j["job_id"] for j in listed] == [job["job_id"]]
    assert (await api.http.get("/api/jobs", params={"status": "running"})).json() == []
    fetched = (await api.http.get(f"/api/jobs/{job['job_id']}")).json()
    assert fetched == job


async def test_raw_parameters_are_coerced_like_the_command_line(api: Api) -> None:
    """raw_parameters are text coerced to the declared types, as ``-p NAME VALUE`` is."""
    response = await api.submit(raw_parameters={"n": "7", "label": "7"}, tags=["nowhere"])
    assert response.status_code == 201, response.text
    assert response.json()["parameters"] == {"n": 7, "label": "7"}


async def test_bad_parameters_are_422_with_one_line_and_queue_nothing(api: Api) -> None:
    """An ill-typed, unknown or uncoercible parameter is 422, one line; nothing is queued."""
    assert "n" in one_line(await api.submit(parameters={"n": "five"}), 422)
    assert "nope" in one_line(await api.submit(parameters={"nope": 1}), 422)
    assert "n" in one_line(await api.submit(raw_parameters={"n": "five"}), 422)
    assert (await api.http.get("/api/jobs")).json() == []


async def test_unknown_workflow_and_paths_outside_the_workflows_dir_are_422(api: Api) -> None:
    """A missing notebook, '..' out of the workflows dir, or an absolute path elsewhere: 422."""
    assert "does not exist" in one_line(await api.submit("missing.ipynb"), 422)
    outside = write_notebook(api.root / "outside.ipynb", ["x = 1"])
    assert "outside the workflows directory" in one_line(await api.submit("../outside.ipynb"), 422)
    assert "outside the workflows directory" in one_line(await api.submit(str(outside)), 422)
    (api.root / "workflows" / "link.ipynb").symlink_to(outside)
    assert "outside the workflows directory" in one_line(await api.submit("link.ipynb"), 422)
    inside = str(api.root / "workflows" / "typed.ipynb")
    assert (await api.submit(inside, tags=["nowhere"])).status_code == 201


async def test_malformed_json_is_400_and_a_body_that_does_not_fit_is_422(api: Api) -> None:
    """A body that is not JSON is 400; a wrong field or type is 422; both one line."""
    broken = await api.http.post(
        "/api/jobs", content=b'{"workflow": ', headers={"Content-Type": "application/json"}
    )
    assert "not valid JSON" in one_line(broken, 400)
    assert "priority" in one_line(await api.submit(priority="urgent"), 422)
    assert "surprise" in one_line(await api.submit(surprise=True), 422)
    assert "workflow" in one_line(await api.http.post("/api/jobs", json={}), 422)
    assert "limit" in one_line(await api.http.get("/api/jobs", params={"limit": 0}), 422)
    assert "status" in one_line(await api.http.get("/api/jobs", params={"status": "x"}), 422)


async def test_unknown_job_is_404_for_get_cancel_and_rerun(api: Api) -> None:
    """GET, cancel and rerun of a job id that does not exist answer 404."""
    assert "unknown job" in one_line(await api.http.get("/api/jobs/nope"), 404)
    assert "unknown job" in one_line(await api.http.post("/api/jobs/nope/cancel"), 404)
    assert "unknown job" in one_line(await api.http.post("/api/jobs/nope/rerun", json={}), 404)


async def test_cancelling_a_finished_job_is_409(api: Api) -> None:
    """A queued job cancels at once (200); cancelling it again is 409, one line."""
    job = (await api.submit(tags=["nowhere"])).json()
    cancelled = await api.http.post(f"/api/jobs/{job['job_id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = await api.http.post(f"/api/jobs/{job['job_id']}/cancel")
    assert "cancelled" in one_line(again, 409)


async def test_rerun_of_a_queued_job_is_409_and_of_a_cancelled_one_queues_it(api: Api) -> None:
    """Rerun refuses a job still queued (409) or bad parameters (422), and queues a finished
    job again with its new parameters."""
    job = (await api.submit(tags=["nowhere"])).json()
    rerun_url = f"/api/jobs/{job['job_id']}/rerun"
    assert "queued" in one_line(await api.http.post(rerun_url, json={}), 409)
    await api.http.post(f"/api/jobs/{job['job_id']}/cancel")
    assert "n" in one_line(await api.http.post(rerun_url, json={"parameters": {"n": "two"}}), 422)
    rerun = await api.http.post(rerun_url, json={"from_failed": False, "parameters": {"n": 2}})
    assert rerun.status_code == 200, rerun.text
    assert rerun.json()["status"] == "queued" and rerun.json()["parameters"]["n"] == 2


async def test_tokens_are_shown_once_listed_without_secrets_and_revoked(api: Api) -> None:
    """A token is returned once (201); the list has names only; names are unique; revoke 404s
    for an unknown name."""
    created = await api.http.post("/api/tokens", json={"name": "robot-1"})
    assert created.status_code == 201
    token = created.json()["token"]
    listed = await api.http.get("/api/tokens")
    assert "robot-1" in [t["name"] for t in listed.json()]
    assert token not in listed.text and "hash" not in listed.text
    assert "already exists" in one_line(
        await api.http.post("/api/tokens", json={"name": "robot-1"}), 409
    )
    assert "name" in one_line(await api.http.post("/api/tokens", json={"name": "a b"}), 422)
    assert "unknown token" in one_line(await api.http.delete("/api/tokens/nobody"), 404)
    assert (await api.http.delete("/api/tokens/robot-1")).status_code == 204
    revoked = {t["name"]: t for t in (await api.http.get("/api/tokens")).json()}["robot-1"]
    assert revoked["revoked_at"] is not None


async def test_drain_refuses_new_jobs_with_503_and_health_says_draining(api: Api) -> None:
    """After POST /api/drain, submit answers 503 (one line) and /health says draining."""
    queued = (await api.submit(tags=["nowhere"])).json()
    report = await api.http.post("/api/drain", json={"timeout_s": 0})
    assert report.status_code == 200, report.text
    assert set(report.json()) == {
        "finished_jobs",
        "unfinished_jobs",
        "robots_shut_down",
        "cancelled",
    }
    assert report.json()["cancelled"] is False
    assert "draining" in one_line(await api.submit(), 503)
    assert (await api.http.get("/health")).json()["status"] == "draining"
    not_ready = await api.http.get("/health/ready")
    assert not_ready.status_code == 503 and not_ready.json()["ready"] is False
    assert (await api.http.get("/api/info")).json()["draining"] is True
    again = await api.http.post("/api/drain")  # idempotent, empty body allowed
    assert again.status_code == 200
    assert (await api.http.get(f"/api/jobs/{queued['job_id']}")).json()["status"] == "queued"
