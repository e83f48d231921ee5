"""The auto-scaling rule (casare_nb.core.autoscale, pure) and `casare-nb autoscale --once`
against a real orchestrator and robot, calling a real command."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cluster import Cluster, notebook
from helpers import ERROR_PREFIX, EXIT_BAD_INPUT, run_cli

from casare_nb.cli.ops import Scaler, loop_rounds
from casare_nb.core.autoscale import Observation, decide
from casare_nb.core.thresholds import Limit, Thresholds
from casare_nb.orchestrator.http.status import build_status
from casare_nb.orchestrator.service import OrchestratorService

QUEUE = Limit(warn=50, critical=100, strict=True)


def test_a_critical_queue_wants_two_more_robots_and_a_warning_one_more() -> None:
    """Depth above critical: +2; above warn: +1; at or below warn: no change."""
    assert decide(Observation(101, 2, 0), QUEUE).wanted == 4
    assert decide(Observation(51, 2, 0), QUEUE).wanted == 3
    assert decide(Observation(50, 2, 0), QUEUE).wanted == 2


def test_the_wanted_count_is_held_within_min_and_max() -> None:
    """The answer is clamped to [min, max] and the reason says so."""
    high = decide(Observation(500, 7, 0), QUEUE, maximum=8)
    assert high.wanted == 8 and "maximum" in high.reason
    low = decide(Observation(0, 0, 0), QUEUE, minimum=2)
    assert low.wanted == 2 and "minimum" in low.reason


def test_queued_jobs_and_no_robot_want_one() -> None:
    """A job waiting with no robot at all wants one robot (min 0)."""
    assert decide(Observation(1, 0, 0), QUEUE, minimum=0).wanted == 1


def test_idle_robots_are_shed_one_at_a_time_after_idle_rounds() -> None:
    """An empty queue with an idle robot wants one fewer only on the Nth idle round in a
    row; a busy round starts the count again."""
    seen = Observation(0, 3, 1)
    first = decide(seen, QUEUE, idle_rounds=3)
    second = decide(seen, QUEUE, idle_rounds=3, idle_before=first.idle_rounds)
    assert (first.wanted, second.wanted) == (3, 3)
    third = decide(seen, QUEUE, idle_rounds=3, idle_before=second.idle_rounds)
    assert third.wanted == 2 and third.idle_rounds == 0
    busy = decide(Observation(0, 3, 0), QUEUE, idle_rounds=3, idle_before=2)
    assert busy.wanted == 3 and busy.idle_rounds == 0


def test_bad_rule_inputs_are_refused() -> None:
    """Negative counts, more idle robots than robots, or max below min are ValueErrors."""
    with pytest.raises(ValueError, match="negative"):
        Observation(-1, 0, 0)
    with pytest.raises(ValueError, match="idle"):
        Observation(0, 1, 2)
    with pytest.raises(ValueError, match="min"):
        decide(Observation(0, 1, 0), QUEUE, minimum=3, maximum=2)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    (tmp_path / "workflows").mkdir()
    svc = OrchestratorService(
        tmp_path / "state",
        port=0,
        http_port=0,
        workflows_dir=tmp_path / "workflows",
        heartbeat_interval_s=0.3,
        missed_heartbeats=10,
        thresholds=Thresholds(queue_depth=Limit(warn=0, critical=1, strict=True)),
    )
    await svc.start()
    c = Cluster(tmp_path, svc.orchestrator)
    try:
        yield c
    finally:
        for bot in c.bots:
            await c.stop_bot(bot)
            await bot.pool.close()
        await svc.stop()


RECORD = (
    "import os, sys, pathlib; "
    "pathlib.Path(sys.argv[1]).write_text(sys.argv[2] + ' ' + os.environ['CASARE_WANTED_ROBOTS'])"
)


def record_command(target: Path) -> str:
    """A shell command that writes its {count} argument and $CASARE_WANTED_ROBOTS to
    ``target``."""
    return f'{sys.executable} -c "{RECORD}" {target} {{count}}'


@pytest.mark.slow
async def test_autoscale_once_calls_the_command_with_the_wanted_count(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Two jobs queued past the critical depth with one robot: --once runs the command with
    3 (as {count} and $CASARE_WANTED_ROBOTS) and logs it; with the queue within bounds it
    runs nothing."""
    orch = cluster.orch
    await cluster.robot("robot-a")
    target = tmp_path / "wanted.txt"
    proc = await asyncio.to_thread(
        run_cli, tmp_path, "autoscale", "--command", record_command(target), "--once"
    )
    assert proc.returncode == 0, proc.stderr
    assert not target.exists()
    assert "no change" in proc.stdout

    wf = notebook(tmp_path / "workflows", "wf.ipynb", ["x = 1"])
    for _ in range(2):
        await orch.submit(wf, tags=["nowhere"])
    proc = await asyncio.to_thread(
        run_cli, tmp_path, "autoscale", "--command", record_command(target), "--once"
    )
    assert proc.returncode == 0, proc.stderr
    assert target.read_text() == "3 3"
    assert "1 robots -> 3" in proc.stdout and "exit 0" in proc.stdout


@pytest.mark.slow
async def test_autoscale_once_exits_1_when_the_command_fails(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A scaling command that exits non-zero makes --once exit 1, the failure logged."""
    orch = cluster.orch
    wf = notebook(tmp_path / "workflows", "wf.ipynb", ["x = 1"])
    await orch.submit(wf)
    proc = await asyncio.to_thread(
        run_cli, tmp_path, "autoscale", "--command", "exit 3", "--once", "--min", "0"
    )
    assert proc.returncode == 1, proc.stdout
    assert "0 robots -> 1" in proc.stdout and "(exit 3)" in proc.stdout


async def test_autoscale_refuses_bad_options(tmp_path: Path) -> None:
    """--max below --min and an empty --command: one line on stderr, exit 2."""
    for args in (["--command", "true", "--min", "3", "--max", "2"], ["--command", " "]):
        proc = await asyncio.to_thread(run_cli, tmp_path, "autoscale", *args, "--once")
        assert proc.returncode == EXIT_BAD_INPUT, proc.stdout
        assert proc.stderr.startswith(ERROR_PREFIX)
        assert len(proc.stderr.strip().splitlines()) == 1


async def test_the_loop_asks_again_only_when_the_wanted_count_changes(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The loop (injected wait, no sleeping) runs the command once for a queue that stays
    critical with no new robot, and waits the interval between rounds."""
    orch = cluster.orch
    wf = notebook(tmp_path / "workflows", "wf.ipynb", ["x = 1"])
    for _ in range(2):
        await orch.submit(wf)
    asked: list[int] = []
    waits: list[float] = []
    lines: list[str] = []

    def run(command: str, count: int) -> int:
        asked.append(count)
        return 0

    scaler = Scaler(
        command="scale {count}",
        minimum=0,
        maximum=8,
        idle_rounds=3,
        status=lambda: build_status(orch),
        run=run,
        say=lines.append,
    )
    loop_rounds(scaler, 5.0, waits.append, rounds=3)
    assert asked == [2]
    assert waits == [5.0, 5.0]
    assert len(lines) == 3
