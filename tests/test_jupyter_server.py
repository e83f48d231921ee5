"""The jupyter_server extension, in a real Jupyter server next to a real orchestrator and
robot: enabled by the install, every route authenticated, XSRF intact for cookie users,
the orchestrator's API proxied, a notebook's parameters, the dashboard notebook, a debug
kernel of the server restored at a failed job's cell, and "Resume from here"."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import nbformat
import pytest
from helpers import served, write_notebook
from jupyter_client.blocking import BlockingKernelClient
from jupyter_harness import JupyterServer, jupyter_env, jupyter_server

from casare_nb.core.models import RunStatus
from casare_nb.debugging import DEBUG_META
from casare_nb.service_thread import ServiceThread

pytestmark = pytest.mark.slow
WAIT = 90.0


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("jupyter-root")
    (root / "workflows").mkdir()
    write_notebook(
        root / "workflows" / "report.ipynb",
        ["made = {'rows': 7}", "assert made['rows'] < limit, 'too many rows'", "done = True"],
        params="limit: int = 5\nregion: str = 'EU'",
    )
    (root / "elsewhere.ipynb").write_text((root / "workflows" / "report.ipynb").read_text())
    return root


@pytest.fixture(scope="module")
def cluster(root: Path) -> Iterator[ServiceThread]:
    with served(
        root / ".casare", root / "workflows", "robot-j", work_dir=root / ".robot"
    ) as thread:
        yield thread


@pytest.fixture(scope="module")
def server(
    root: Path, cluster: ServiceThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JupyterServer]:
    with jupyter_server(root, tmp_path_factory.mktemp("jupyter-home")) as found:
        yield found


@pytest.fixture
def api(server: JupyterServer) -> Iterator[httpx.Client]:
    with server.api() as http:
        yield http


def test_the_install_enables_the_server_extension() -> None:
    """`jupyter server extension list` shows casare_nb.jupyter enabled and importable."""
    out = subprocess.run(
        [sys.executable, "-m", "jupyter_server", "extension", "list"],
        capture_output=True,
        text=True,
        check=True,
        env=jupyter_env(Path("/nonexistent-home")),
    )
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)
    assert "casare_nb.jupyter enabled" in text, text
    assert re.search(r"casare_nb.jupyter\s+OK", text), text


def test_every_route_needs_the_jupyter_servers_auth(server: JupyterServer) -> None:
    """Without the server's token or cookie every /casare/ route answers 403 (GET and POST),
    and nothing reaches the orchestrator."""
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        for method, path in [
            ("GET", "/casare/api/info"),
            ("GET", "/casare/params?path=workflows/report.ipynb"),
            ("POST", "/casare/dashboard"),
            ("POST", "/casare/debug/some-job"),
            ("POST", "/casare/api/jobs"),
        ]:
            assert anonymous.request(method, path).status_code == 403, (method, path)
    assert not (server.root / "casare-dashboard.ipynb").exists()


def test_a_cookie_user_needs_the_xsrf_token_to_post(server: JupyterServer) -> None:
    """A browser session (login cookie) can GET, but a POST without the _xsrf token is
    refused; with it, the POST goes through."""
    with httpx.Client(base_url=server.url, timeout=30) as browser:
        browser.get("/login?next=/tree", follow_redirects=False)
        login = browser.post(
            "/login", data={"password": server.token, "_xsrf": browser.cookies.get("_xsrf", "")}
        )
        assert login.status_code in (200, 302), login.text
        assert browser.get("/casare/api/info").status_code == 200
        assert browser.post("/casare/dashboard").status_code == 403
        xsrf = browser.cookies.get("_xsrf") or ""
        answer = browser.post("/casare/dashboard", headers={"X-XSRFToken": xsrf})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"path": "casare-dashboard.ipynb"}


def test_the_orchestrator_api_is_proxied_with_its_status_and_body(
    api: httpx.Client, cluster: ServiceThread
) -> None:
    """GET and POST under /casare/api/ answer what the orchestrator answers, errors too,
    without the browser holding the orchestrator's token."""
    robots = api.get("/casare/api/robots")
    assert robots.status_code == 200 and [r["robot_id"] for r in robots.json()] == ["robot-j"]
    job = api.post(
        "/casare/api/jobs", json={"workflow": "report.ipynb", "raw_parameters": {"limit": "100"}}
    )
    assert job.status_code == 201, job.text
    with cluster.client() as client:
        done = client.wait(job.json()["job_id"], timeout=WAIT)
    assert done.status is RunStatus.COMPLETED
    bad = api.post(
        "/casare/api/jobs", json={"workflow": "report.ipynb", "raw_parameters": {"limit": "many"}}
    )
    assert bad.status_code == 422 and "limit" in bad.json()["detail"]
    assert api.get("/casare/api/jobs/nope").status_code == 404


def test_params_maps_a_notebook_to_its_workflow_and_schema(api: httpx.Client) -> None:
    """A notebook under the workflows dir answers its workflow path and parameters; one
    outside it, or outside the server root, a one-line 400."""
    found = api.get("/casare/params", params={"path": "workflows/report.ipynb"})
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["workflow"] == "report.ipynb"
    assert set(body["parameters"]["params"]) == {"limit", "region"}
    outside = api.get("/casare/params", params={"path": "elsewhere.ipynb"})
    assert outside.status_code == 400 and "not under the orchestrator's workflows" in outside.text
    escape = api.get("/casare/params", params={"path": "../../etc/x.ipynb"})
    assert escape.status_code == 400 and "outside the Jupyter server's root" in escape.text


def test_debug_starts_a_server_kernel_holding_the_namespace_before_the_failed_cell(
    api: httpx.Client, server: JupyterServer, cluster: ServiceThread
) -> None:
    """POST /casare/debug/JOB answers a notebook path and a kernel of this server with a
    session on that path; the kernel holds what the cells before the failed one made."""
    with cluster.client() as client:
        job = client.submit("report.ipynb", wait=True, timeout=WAIT)
    assert job.status is RunStatus.FAILED
    answer = api.post(f"/casare/debug/{job.job_id}")
    assert answer.status_code == 201, answer.text
    found = answer.json()
    assert {"made", "limit", "region"} <= set(found["restored"])
    notebook = json.loads((server.root / found["path"]).read_text())
    assert notebook["metadata"][DEBUG_META]["job_id"] == job.job_id
    sessions = api.get("/api/sessions").json()
    assert any(
        s["path"] == found["path"] and s["kernel"]["id"] == found["kernel_id"] for s in sessions
    )
    kc = BlockingKernelClient(
        connection_file=str(server.runtime_dir / f"kernel-{found['kernel_id']}.json")
    )
    kc.load_connection_file()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=30)
        seen: list[str] = []
        kc.execute_interactive(
            "print(made['rows'], limit)",
            timeout=30,
            output_hook=lambda m: seen.append(m["content"].get("text", "")),
        )
        assert "".join(seen).strip() == "7 5"
    finally:
        kc.stop_channels()


def test_resume_from_here_reruns_the_job_with_the_debug_notebooks_cells(
    api: httpx.Client, server: JupyterServer, cluster: ServiceThread, root: Path
) -> None:
    """After fixing the failed cell in the saved debug notebook, POST .../resume re-runs
    the job from that cell with the fix, and the workflow file holds it."""
    with cluster.client() as client:
        job = client.submit("report.ipynb", wait=True, timeout=WAIT)
    found = api.post(f"/casare/debug/{job.job_id}").json()
    path = server.root / found["path"]
    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.get("id") == "c1":
            cell.source = "assert made['rows'] < limit * 2, 'too many rows'"
    nbformat.write(nb, str(path))
    resumed = api.post(f"/casare/debug/{job.job_id}/resume", json={"path": found["path"]})
    assert resumed.status_code == 201, resumed.text
    with cluster.client() as client:
        done = client.wait(job.job_id, timeout=WAIT)
        assert done.status is RunStatus.COMPLETED and done.attempt == 2
        ran = [c.cell_id for c in client.cells(job.job_id, attempt=2) if not c.replayed]
    assert ran[-2:] == ["c1", "c2"] and "c0" not in ran
    workflow = nbformat.read(str(root / "workflows" / "report.ipynb"), as_version=4)
    assert "limit * 2" in next(c.source for c in workflow.cells if c.get("id") == "c1")
    # put the failing cell back for the other tests
    for cell in workflow.cells:
        if cell.get("id") == "c1":
            cell.source = "assert made['rows'] < limit, 'too many rows'"
    nbformat.write(workflow, str(root / "workflows" / "report.ipynb"))


def test_the_output_notebook_link_opens_it_in_jupyterlab(
    api: httpx.Client, server: JupyterServer, cluster: ServiceThread
) -> None:
    """GET /casare/notebook/JOB writes the attempt's output notebook under casare-runs/ and
    redirects JupyterLab to it; a bad attempt is a one-line 400, an unknown job 404."""
    with cluster.client() as client:
        job = client.submit("report.ipynb", {"limit": 100}, wait=True, timeout=WAIT)
    answer = api.get(f"/casare/notebook/{job.job_id}", params={"attempt": "1"})
    path = f"casare-runs/report.{job.job_id}.attempt-1.ipynb"
    assert answer.status_code == 302 and answer.headers["location"] == f"/lab/tree/{path}"
    saved = json.loads((server.root / path).read_text())
    assert [c["id"] for c in saved["cells"] if c["cell_type"] == "code"][-1] == "c2"
    assert api.get(f"/casare/notebook/{job.job_id}", params={"attempt": "x"}).status_code == 400
    assert api.get("/casare/notebook/no-such-job").status_code == 404


def test_debug_and_resume_refuse_bad_input_with_one_line(
    api: httpx.Client, cluster: ServiceThread
) -> None:
    """Unknown job -> 404; a completed job -> 409; resume without a path or with a
    notebook that is no debug notebook -> 400; each a one-line detail, no kernel left."""
    kernels_before = len(api.get("/api/kernels").json())
    assert api.post("/casare/debug/no-such-job").status_code == 404
    with cluster.client() as client:
        ok = client.submit("report.ipynb", {"limit": 100}, wait=True, timeout=WAIT)
    completed = api.post(f"/casare/debug/{ok.job_id}")
    assert completed.status_code == 409 and "no failed cell" in completed.json()["detail"]
    assert api.post(f"/casare/debug/{ok.job_id}/resume", json={}).status_code == 400
    wrong = api.post(f"/casare/debug/{ok.job_id}/resume", json={"path": "workflows/report.ipynb"})
    assert wrong.status_code == 400 and "not a casare debug notebook" in wrong.json()["detail"]
    assert len(api.get("/api/kernels").json()) == kernels_before


def test_no_orchestrator_answers_a_clear_503(tmp_path: Path) -> None:
    """A Jupyter server with no orchestrator running answers 503 naming what to start."""
    root = tmp_path / "root"
    root.mkdir()
    with jupyter_server(root, tmp_path / "home") as lonely, lonely.api() as http:
        answer = http.get("/casare/api/info")
    assert answer.status_code == 503
    assert "no orchestrator running" in answer.json()["detail"]
