"""The example workflow built with the graph editor (workflows/scrape_report.ipynb): it is
what scripts/build_scrape_report.py builds, and it scrapes the local test site in Debian's
Chromium and writes its report under ``casare-nb run``, through an orchestrator and a
robot, and on a resume that replays the browser nodes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import describe, resume_run_id, run_cli, served

from casare_nb.core.models import RunStatus
from casare_nb.site import serve

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
EXAMPLE = WORKFLOWS / "scrape_report.ipynb"
IN_STOCK = 5  # products of casare_nb.site with stock > 0


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    with serve() as url:
        yield url


def test_the_committed_example_is_what_the_editor_model_builds() -> None:
    """scripts/build_scrape_report.py --check: the notebook in workflows/ is up to date."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_scrape_report.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    nb = json.loads(EXAMPLE.read_text())
    tags = {c["id"]: c["metadata"].get("tags", []) for c in nb["cells"]}
    assert tags["open_site"] == ["casare-always-run"]


def test_it_runs_under_casare_nb_run_and_writes_the_report(tmp_path: Path, site: str) -> None:
    """`casare-nb run` with the site's address: completes, the report lists the products in
    stock, the greeting comes from the form's thanks page."""
    report = tmp_path / "prices.html"
    out = tmp_path / "out.ipynb"
    proc = run_cli(
        tmp_path,
        "run",
        str(EXAMPLE),
        str(out),
        "-p",
        "site_url",
        site,
        "-p",
        "report_path",
        str(report),
    )
    assert proc.returncode == 0, describe(proc)
    html = report.read_text()
    assert "Prices in stock" in html and html.count("</tr>") == IN_STOCK + 1
    assert "Thanks, Ada Lovelace - 5 products in stock" in json.dumps(json.loads(out.read_text()))


def test_a_failed_run_resumes_with_the_browser_nodes_replayed(tmp_path: Path, site: str) -> None:
    """Too short a wait fails the run at the slow element; `casare-nb resume -p wait_s 10`
    replays the open-page node (and the pages after it) and completes."""
    report = tmp_path / "prices.html"
    args = ["-p", "site_url", site, "-p", "report_path", str(report), "-p", "wait_s", "0.2"]
    first = run_cli(tmp_path, "run", str(EXAMPLE), *args)
    assert first.returncode != 0, describe(first)
    assert "no element matches '#late' after 0.2 s" in first.stdout + first.stderr
    run_id = resume_run_id(first.stdout + first.stderr)
    again = run_cli(tmp_path, "resume", run_id, "-p", "wait_s", "10")
    assert again.returncode == 0, describe(again)
    replayed = re.search(r"replayed cells \[([\d, ]+)\]", again.stdout)
    assert replayed, again.stdout
    nb = json.loads(EXAMPLE.read_text())
    index = {c["id"]: i + 1 for i, c in enumerate(nb["cells"])}  # after the injected cell
    pages = ["open_site", "form_page", "fill_name", "fill_email", "submit", "table_page"]
    cells = {int(i) for i in replayed.group(1).split(",")} - {1}
    assert cells == {index[n] for n in [*pages, "slow_page"]}  # not the table nor the text
    assert report.exists()


def test_it_runs_through_an_orchestrator_and_a_robot(tmp_path: Path, site: str) -> None:
    """Submitted to an orchestrator serving workflows/: a robot runs it to completion and
    the outputs it records reach the orchestrator."""
    report = tmp_path / "prices.html"
    with served(tmp_path / "state", WORKFLOWS, "r1") as cluster, cluster.client() as client:
        job = client.submit(
            "scrape_report.ipynb",
            {"site_url": site, "report_path": str(report)},
            wait=True,
            timeout=240,
        )
        assert job.status is RunStatus.COMPLETED, job
        outputs = client.outputs(job.job_id)
    assert outputs["products_in_stock"] == IN_STOCK
    assert outputs["greeting"] == "Thanks, Ada Lovelace"
    assert report.exists()
