"""Shared pieces: timing one in-process run, formatting, the result shape every bench answers.

Every ``main()`` answers a dict::

    {"name", "title", "command", "runs", "columns", "rows", "targets", "notes", "raw"}

``rows`` are lists of already formatted cells; ``targets`` are
``{"target", "measured", "met"}``; ``raw`` holds the unformatted figures (also dumped as
JSON by ``run_all.py`` into ``bench/out/``).
"""

from __future__ import annotations

import itertools
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import notebooks as nbs
from casare_nb.local import run_notebook
from casare_nb.notebook.executor import Options
from casare_nb.notebook.run import RunResult


@dataclass
class Timed:
    """One in-process run: its result, wall clock, and the manifests it wrote."""

    result: RunResult
    wall_s: float
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)
    state_bytes: int = 0
    # cell ids whose checkpoint was skipped (``<cell>.json.skipped``) or still pending
    skipped: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    @property
    def cell_sum_s(self) -> float:
        return sum(c.duration_s for c in self.result.cells)

    @property
    def n_cells(self) -> int:
        return len(self.result.cells)

    def snapshot_ms(self) -> list[float]:
        return [float(m["snapshot_ms"]) for m in self.manifests.values() if "snapshot_ms" in m]

    def durations(self) -> dict[str, float]:
        return {c.cell_id or str(c.cell_index): c.duration_s for c in self.result.cells}

    def step_walls_s(self) -> dict[str, float]:
        """Cell id -> time from its start to the next cell's start: the cell plus what the
        engine does after it (rewrite the output notebook, wait for a forked checkpoint
        writer ...). The last cell has none."""
        cells = self.result.cells
        return {
            a.cell_id or str(a.cell_index): b.started_at.timestamp() - a.started_at.timestamp()
            for a, b in itertools.pairwise(cells)
        }


def timed_run(
    path: Path,
    parameters: dict[str, Any] | None,
    *,
    work: Path,
    checkpoint: bool = True,
    keep_state: bool = False,
    expect_ok: bool = True,
    **options: Any,
) -> Timed:
    """Run ``path`` in this process with a fresh state dir under ``work``; time it end to end."""
    state = work / f"state-{time.time_ns()}"
    try:
        t0 = time.perf_counter()
        result = run_notebook(
            path,
            parameters or {},
            state_dir=state,
            cwd=work,
            options=Options(checkpoint=checkpoint, **options),
        )
        wall = time.perf_counter() - t0
        if expect_ok and not result.ok:
            raise RuntimeError(
                f"{path.name}: run {result.status.value}: {result.error_name}: "
                f"{result.error_message}"
            )
        found = nbs.manifests(state, result.run_id, result.attempt) if checkpoint else {}
        return Timed(
            result,
            wall,
            found,
            nbs.dir_bytes(state),
            nbs.markers(state, result.run_id, result.attempt, ".json.skipped"),
            nbs.markers(state, result.run_id, result.attempt, ".json.pending"),
        )
    finally:
        if not keep_state:
            shutil.rmtree(state, ignore_errors=True)


def namespace_bytes(manifests: dict[str, dict[str, Any]], last: str) -> int:
    """Pickled size of the namespace in manifest ``last`` (following refs)."""
    manifest = manifests.get(last, {})
    total = 0
    for name, entry in manifest.get("vars", {}).items():
        if "ref" in entry:
            entry = (
                manifests.get(entry["ref"].removesuffix(".json"), {}).get("vars", {}).get(name, {})
            )
        total += int(entry.get("size", 0))
    return total


def ms(seconds: float, digits: int = 1) -> str:
    return f"{seconds * 1000:.{digits}f} ms"


def sec(seconds: float, digits: int = 2) -> str:
    return f"{seconds:.{digits}f} s"


def pct(fraction: float) -> str:
    return f"{fraction * 100:+.1f} %"


def ratio(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}x"


def mb(nbytes: float) -> str:
    return f"{nbytes / (1 << 20):.1f} MB" if nbytes >= 1 << 20 else f"{nbytes / 1024:.1f} KB"


def target(text: str, measured: str, met: bool) -> dict[str, Any]:
    return {"target": text, "measured": measured, "met": met}
