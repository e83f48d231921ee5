"""GET /metrics: Prometheus text from a real orchestrator whose robot runs real jobs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cluster import Cluster, notebook
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from casare_nb.core.models import Priority, RunStatus
from casare_nb.core.tokens import TokenRole
from casare_nb.orchestrator.service import OrchestratorService
from casare_nb.protocol import Register, RegisterAck, decode, encode


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[OrchestratorService]:
    (tmp_path / "workflows").mkdir()
    svc = OrchestratorService(
        tmp_path / "state",
        port=0,
        http_port=0,
        workflows_dir=tmp_path / "workflows",
        write_runtime_file=False,
        heartbeat_interval_s=0.3,
        missed_heartbeats=4,
    )
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.mark.slow
async def test_metrics_count_jobs_cells_robots_queue_and_heartbeat_misses(
    service: OrchestratorService, tmp_path: Path
) -> None:
    """After one completed and one failed job, a queued high-priority job and a robot that
    stopped beating, /metrics (no token) reports each of them."""
    orch = service.orchestrator
    cluster = Cluster(tmp_path, orch)
    ok = notebook(tmp_path / "workflows", "ok.ipynb", ["x = 1", "y = 2"])
    bad = notebook(tmp_path / "workflows", "bad.ipynb", ["raise ValueError('no')"])
    try:
        await cluster.robot("robot-a")
        done = await cluster.finished((await orch.submit(ok)).job_id)
        failed = await cluster.finished((await orch.submit(bad)).job_id)
        assert (done.status, failed.status) == (RunStatus.COMPLETED, RunStatus.FAILED)
        await orch.submit(ok, priority=Priority.HIGH, tags=["nowhere"])
        token = await asyncio.to_thread(orch.create_token, "silent", TokenRole.ROBOT)
        async with connect(orch.url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            await ws.send(encode(Register(robot_id="silent", name="silent")))
            assert isinstance(decode(await ws.recv()), RegisterAck)
            await cluster.until(
                lambda: (
                    (orch.metrics.registry.get_sample_value("casare_heartbeat_misses_total") or 0)
                    >= 1
                )
            )
        async with httpx.AsyncClient(base_url=service.http_url) as http:
            response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        got = samples(response.text)
        assert got[("casare_job_outcomes_total", (("status", "completed"),))] == 1
        assert got[("casare_job_outcomes_total", (("status", "failed"),))] == 1
        cells = sum(
            v for (name, _), v in got.items() if name == "casare_cell_duration_seconds_count"
        )
        assert cells == 3  # two ok cells, one that raised
        assert got[("casare_queue_depth", (("priority", "high"),))] == 1
        assert got[("casare_queue_depth", (("priority", "low"),))] == 0
        assert got[("casare_robots", (("status", "online"),))] == 1
        assert got[("casare_robots", (("status", "offline"),))] == 1
        assert got[("casare_heartbeat_misses_total", ())] == 1
        assert got[("casare_dispatch_latency_seconds_count", ())] == 2
        assert got[("casare_jobs_running", ())] == 0 and got[("casare_draining", ())] == 0
    finally:
        for bot in cluster.bots:
            await cluster.stop_bot(bot)
            await bot.pool.close()
