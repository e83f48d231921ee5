"""The fault-injection suite, small counts (bench/fault_injection.py runs large ones): real
``casare-nb orchestrator`` and ``casare-nb robot`` processes; robots and the orchestrator
SIGKILLed at random points, poison jobs, garbage on the WebSocket, the HTTP API and the
webhooks (hypothesis). After each trial: every acknowledged job ends in exactly one terminal
state, each (job, attempt, cell) is recorded once, a normal job completes, SIGTERM exits 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fault_trials import (
    fleet,
    http_garbage,
    orchestrator_kill_trial,
    poison_trial,
    robot_kill_trial,
    ws_garbage,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casare_nb.core.models import RunStatus
from casare_nb.protocol import MESSAGE_TYPES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _frame(kind: str, fields: dict[str, object]) -> str:
    return json.dumps({"type": kind, **fields})


FRAMES = st.one_of(
    st.builds(_frame, st.sampled_from(sorted(MESSAGE_TYPES)), st.dictionaries(st.text(), JSON)),
    JSON.map(json.dumps),
    st.binary(max_size=200),
    st.text(max_size=200),
)


BODIES = st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary())


@pytest.mark.parametrize("seed", [1])
def test_robots_sigkilled_at_random_points_lose_nothing(tmp_path: Path, seed: int) -> None:
    """6 jobs, a robot SIGKILLed at 2 random points and restarted: all end completed, no
    cell recorded twice, the queue moves, SIGTERM exits 0."""
    with fleet(tmp_path, seed) as f:
        statuses = robot_kill_trial(f, jobs=6, kills=2)
        assert set(statuses.values()) == {RunStatus.COMPLETED}
        assert f.stop() == 0


def test_the_orchestrator_sigkilled_under_submission_loses_no_acknowledged_job(
    tmp_path: Path,
) -> None:
    """Jobs submitted while the orchestrator is SIGKILLed: after a restart every job it
    acknowledged is known and ends completed; SIGTERM then exits 0."""
    with fleet(tmp_path, seed=2) as f:
        statuses = orchestrator_kill_trial(f, jobs=6)
        assert len(statuses) >= 3 and set(statuses.values()) == {RunStatus.COMPLETED}
        assert f.stop() == 0


def test_a_poison_job_is_dead_within_its_bound_and_the_queue_moves(tmp_path: Path) -> None:
    """A job whose cell kills its robot, with max_robot_losses=1, ends dead; the normal job
    next to it completes."""
    with fleet(tmp_path, seed=3, robots=1) as f:
        poison_trial(f, poisons=1)
        assert f.stop() == 0


def test_garbage_on_the_websocket_and_http_never_wedges_the_service(tmp_path: Path) -> None:
    """Fuzzed frames (hypothesis) on a robot's WebSocket and fuzzed bodies on the API and a
    webhook: every HTTP answer is 4xx, never 5xx; then a normal job completes and SIGTERM
    exits 0."""
    with fleet(tmp_path, seed=4, robots=1) as f:
        frames: list[str | bytes] = []
        bodies: list[bytes] = []

        @settings(
            max_examples=150,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            frame=FRAMES, body=st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary())
        )
        def collect(frame: str | bytes, body: bytes) -> None:
            frames.append(frame)
            bodies.append(body)

        collect()
        seen = ws_garbage(f, frames)
        assert sum(seen.values()) == len(frames)
        codes = http_garbage(f, bodies[:60])
        assert all(400 <= code < 500 for code in codes), codes
        f.check()
        assert f.stop() == 0
