"""docs/alerts.rules.yml: Prometheus alert rules that match the runbook's thresholds and name
metrics a real orchestrator exports (promtool checks them too where it is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import yaml
from cluster import Cluster
from prometheus_client.parser import text_string_to_metric_families

from casare_nb.core.thresholds import Limit, Thresholds
from casare_nb.orchestrator.metrics import alert_rules
from casare_nb.orchestrator.service import OrchestratorService

RULES = Path(__file__).resolve().parent.parent / "docs" / "alerts.rules.yml"
BOUND = re.compile(r"(>=|>)\s*([0-9.]+)\s*$")
METRIC = re.compile(r"\b(casare_[a-z_]+)\b")


def rules() -> list[dict[str, object]]:
    loaded = yaml.safe_load(RULES.read_text("utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def test_the_rules_file_is_what_the_default_thresholds_make() -> None:
    """The shipped file parses and equals alert_rules(Thresholds()) (regenerate it when the
    thresholds change)."""
    assert yaml.safe_load(RULES.read_text("utf-8")) == alert_rules(Thresholds())


def test_every_rule_compares_with_its_thresholds_limit() -> None:
    """Each figure of Thresholds has a warning and a critical rule whose bound and operator
    are that limit's."""
    defaults = Thresholds()
    seen: set[tuple[str, str]] = set()
    for rule in rules():
        labels = rule["labels"]
        assert isinstance(labels, dict)
        figure, severity = labels["figure"], labels["severity"]
        limit = getattr(defaults, figure)
        assert isinstance(limit, Limit)
        match = BOUND.search(str(rule["expr"]))
        assert match is not None, rule
        assert match.group(1) == (">" if limit.strict else ">="), rule
        expected = limit.warn if severity == "warning" else limit.critical
        assert float(match.group(2)) == expected, rule
        seen.add((figure, severity))
    figures = set(Thresholds.model_fields)
    assert seen == {(f, s) for f in figures for s in ("warning", "critical")}


def test_promtool_accepts_the_rules_where_it_is_installed() -> None:
    """`promtool check rules` passes when promtool is on PATH; the parse above is the check
    otherwise (promtool is not installed on every machine)."""
    promtool = shutil.which("promtool")
    if promtool is not None:
        done = subprocess.run(
            [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert rules()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[OrchestratorService, Cluster]]:
    (tmp_path / "workflows").mkdir()
    svc = OrchestratorService(
        tmp_path / "state",
        port=0,
        http_port=0,
        workflows_dir=tmp_path / "workflows",
        write_runtime_file=False,
        heartbeat_interval_s=0.3,
        missed_heartbeats=10,
    )
    await svc.start()
    c = Cluster(tmp_path, svc.orchestrator)
    try:
        yield svc, c
    finally:
        for bot in c.bots:
            await c.stop_bot(bot)
            await bot.pool.close()
        await svc.stop()


@pytest.mark.slow
async def test_every_rules_metric_is_in_a_real_scrape(
    cluster: tuple[OrchestratorService, Cluster],
) -> None:
    """With a robot connected and a refused token, /metrics has every metric the rules
    name, per-robot CPU, memory and heartbeat gauges, and the process collector's figures."""
    service, c = cluster
    await c.robot("robot-a")
    async with httpx.AsyncClient(base_url=service.http_url) as http:
        refused = await http.get("/api/jobs", headers={"Authorization": "Bearer wrong"})
        assert refused.status_code == 401
        text = (await http.get("/metrics")).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    names = {name for name, _ in samples}
    for rule in rules():
        for metric in METRIC.findall(str(rule["expr"])):
            assert metric in names, f"{rule['alert']}: {metric} is not exported"
    robot = (("robot", "robot-a"),)
    assert samples[("casare_robot_cpu_percent", robot)] == 0.0
    assert samples[("casare_robot_memory_percent", robot)] == 0.0
    assert samples[("casare_robot_heartbeats_missed", robot)] == 0.0
    assert samples[("casare_connection_failures_total", (("kind", "refused"),))] == 1.0
    assert samples[("casare_job_failure_rate_percent", ())] == 0.0
    assert "process_cpu_seconds_total" in names
    assert "process_resident_memory_bytes" in names
