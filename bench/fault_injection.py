"""Reliability 12: the fault-injection suite at large counts (tests/test_fault_injection.py
runs the same trials small in ``make test``). Real ``casare-nb orchestrator`` and ``casare-nb
robot`` processes, on a fresh state directory per trial:

- robot SIGKILLs at random points during runs of 4-cell jobs (the killed robot restarted,
  as a supervisor would), ``kills`` per trial;
- orchestrator SIGKILLs while jobs are being submitted, then a restart;
- poison jobs (a cell that kills its robot) next to normal ones;
- fuzzed frames on a robot's WebSocket and fuzzed bodies on the API and a webhook.

After every trial the invariant of ``tests/fault_trials.py`` is checked: every acknowledged
job ends in exactly one terminal state, each (job, attempt, cell) is recorded once, a normal
job then completes, SIGTERM exits 0. Counted: lost (acknowledged, never terminal or
unknown), duplicated (cells recorded twice), wedged (SIGTERM not exiting 0 or the queue not
moving).

    .venv/bin/python -m bench.fault_injection [--quick]
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fault_trials import (  # noqa: E402  (the trials live with the tests)
    fleet,
    http_garbage,
    orchestrator_kill_trial,
    poison_trial,
    robot_kill_trial,
    ws_garbage,
)

COMMAND = ".venv/bin/python -m bench.fault_injection"


def _fuzz(rng: random.Random, n: int) -> tuple[list[str | bytes], list[bytes]]:
    types = ["register", "heartbeat", "job_progress", "job_complete", "job_failed", "blob_put"]
    frames: list[str | bytes] = []
    for _ in range(n):
        pick = rng.random()
        if pick < 0.4:
            fields = {rng.choice("abcdefg"): rng.choice([None, 1, "x", [1], {"k": -1}, 1e308])}
            frames.append(json.dumps({"type": rng.choice(types), **fields}))
        elif pick < 0.7:
            frames.append(rng.randbytes(rng.randrange(1, 200)))
        else:
            frames.append(
                "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(1, 80)))
            )
    bodies = [
        rng.randbytes(rng.randrange(0, 300)) if rng.random() < 0.5 else frames[i % len(frames)]
        for i in range(max(1, n // 50))
    ]
    return frames, [b if isinstance(b, bytes) else b.encode() for b in bodies]


def _count(exc: AssertionError, lost: int, duplicated: int, wedged: int) -> tuple[int, int, int]:
    """The trial's broken invariant, by the prefix Fleet.check gives it."""
    text = str(exc)
    print(f"  trial broke an invariant: {text[:300]}", file=sys.stderr)
    return (
        lost + text.startswith("lost"),
        duplicated + text.startswith("duplicated"),
        wedged + (not text.startswith(("lost", "duplicated"))),
    )


def main(quick: bool = False) -> dict[str, Any]:
    robot_trials, kills = (2, 3) if quick else (20, 5)  # 100 robot kills in the full run
    orchestrator_trials = 2 if quick else 20
    poisons = 2 if quick else 10
    messages = 500 if quick else 10_000
    lost = duplicated = wedged = 0
    seen: dict[str, Any] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="casare-faults-") as tmp:
        base = Path(tmp)
        for trial in range(robot_trials):
            with fleet(base / f"robot-{trial}", seed=trial) as f:
                try:
                    robot_kill_trial(f, jobs=8, kills=kills)
                except AssertionError as exc:
                    lost, duplicated, wedged = _count(exc, lost, duplicated, wedged)
                wedged += f.stop() != 0
        for trial in range(orchestrator_trials):
            with fleet(base / f"orch-{trial}", seed=100 + trial) as f:
                try:
                    orchestrator_kill_trial(f, jobs=8)
                except AssertionError as exc:
                    lost, duplicated, wedged = _count(exc, lost, duplicated, wedged)
                wedged += f.stop() != 0
        with fleet(base / "poison", seed=200, robots=2) as f:
            poison_trial(f, poisons=poisons)
            wedged += f.stop() != 0
        with fleet(base / "fuzz", seed=300, robots=1) as f:
            frames, bodies = _fuzz(random.Random(300), messages)
            seen["ws"] = dict(ws_garbage(f, frames))
            codes = http_garbage(f, bodies)
            seen["http"] = {str(k): v for k, v in codes.items()}
            wedged += any(code >= 500 for code in codes)
            f.check()
            wedged += f.stop() != 0
    took = time.perf_counter() - t0
    counts = (
        f"{robot_trials * kills} robot kills in {robot_trials} trials, {orchestrator_trials} "
        f"orchestrator kills, {poisons} poison jobs, {messages:,} fuzzed WebSocket frames"
    )
    return {
        "name": "fault_injection",
        "title": "12. Fault injection: kills, poison jobs, fuzzed input",
        "command": COMMAND,
        "runs": counts,
        "columns": ["lost", "duplicated", "wedged", "took"],
        "rows": [[str(lost), str(duplicated), str(wedged), f"{took:.0f} s"]],
        "targets": [
            {
                "target": "0 lost, 0 duplicated, 0 wedged; each poison job dead within its bound",
                "measured": f"{lost} lost, {duplicated} duplicated, {wedged} wedged ({counts})",
                "met": lost == duplicated == wedged == 0,
            }
        ],
        "notes": [
            "Invariant after each trial (tests/fault_trials.py Fleet.check): every "
            "acknowledged job terminal exactly once, no (job, attempt, cell) recorded "
            "twice, a normal job then completes, SIGTERM exits 0.",
            f"Answers to the fuzzed frames, by kind: {seen.get('ws')}; HTTP status codes "
            f"for the fuzzed bodies: {seen.get('http')}.",
        ],
        "raw": {"lost": lost, "duplicated": duplicated, "wedged": wedged, "seen": seen},
    }


if __name__ == "__main__":
    print(json.dumps(main("--quick" in sys.argv), indent=1, default=str))
