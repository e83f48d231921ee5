"""A job too big for one protocol frame (the job_assign carries the parameterised notebook) is
refused at submit with 413, and one that grew past the limit while queued ends failed at
dispatch with one line, instead of being requeued without end; the queue moves on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster import Cluster, notebook
from helpers import served, write_notebook

from casare_nb import Client, ClientError
from casare_nb.core.errors import JobTooLarge
from casare_nb.core.models import RunStatus
from casare_nb.protocol import MAX_FRAME_BYTES
from casare_nb.service_thread import ServiceThread

HUGE = 17 * 1024 * 1024  # characters of a string literal: the notebook is over 16 MiB


def huge_cell() -> str:
    return "blob = '" + "a" * HUGE + "'"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    root = tmp_path_factory.mktemp("frames")
    workflows = root / "workflows"
    workflows.mkdir()
    write_notebook(workflows / "huge.ipynb", [huge_cell(), "x = 1"], params="n: int = 1")
    write_notebook(workflows / "small.ipynb", ["x = 1"])
    with served(root / "state", workflows, "robot-f") as thread:
        yield thread


@pytest.fixture
def client(service: ServiceThread) -> Iterator[Client]:
    with service.client() as c:
        yield c


def test_submit_of_a_workflow_over_the_frame_limit_answers_413(client: Client) -> None:
    """A ~17 MB workflow answers 413 at submit, one line naming its size and the limit."""
    with pytest.raises(ClientError) as caught:
        client.submit("huge.ipynb", {"n": 2})
    assert caught.value.status == 413
    reason = str(caught.value)
    assert "\n" not in reason and "too large" in reason
    assert f"the limit is {MAX_FRAME_BYTES}" in reason
    size = int(reason.split("frame too large: ")[1].split(" bytes")[0])
    assert size > MAX_FRAME_BYTES
    assert not client.jobs(), "nothing was queued"
    assert client.submit("small.ipynb", wait=True, timeout=90).status is RunStatus.COMPLETED


async def test_a_workflow_grown_past_the_limit_before_dispatch_fails_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A queued job whose workflow grew past the frame limit ends failed at dispatch with
    one line (not requeued), and the next job runs."""
    grows = notebook(tmp_path, "grows.ipynb", ["x = 1"], params="n: int = 1")
    after = notebook(tmp_path, "after.ipynb", ["y = 2"])
    await cluster.robot("robot-idle")  # no tag: takes none of these jobs, till robot-late
    job = await cluster.orch.submit(grows, {"n": 3}, tags=["late"])
    write_notebook(grows, [huge_cell(), "x = 1"], params="n: int = 1")
    later = await cluster.orch.submit(after, tags=["late"])
    await cluster.robot("robot-late", tags=["late"])
    failed = await cluster.finished(job.job_id)
    assert (failed.status, failed.attempt) == (RunStatus.FAILED, 1)
    assert failed.error_name == JobTooLarge.__name__
    reason = failed.error_message or ""
    assert "\n" not in reason and f"the limit is {MAX_FRAME_BYTES}" in reason
    done = await cluster.finished(later.job_id)
    assert done.status is RunStatus.COMPLETED
    assert cluster.job(job.job_id).attempt == 1, "never requeued"
