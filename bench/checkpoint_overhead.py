"""Benchmark 1: per-cell checkpoint overhead.

Each notebook runs with ``Options(checkpoint=True)`` and ``Options(checkpoint=False)``,
alternating (the order flips every repetition), after one unmeasured warm-up run of each.
The kernel-side snapshot runs in IPython's ``post_run_cell`` hook, before the execute reply,
so it is inside ``CellRecord.duration_s``; the figure compared is the sum of the cell
durations of a run. Every run gets a fresh state dir, so blobs are really written.

    .venv/bin/python -m bench.checkpoint_overhead [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench import common
from bench import notebooks as nbs

COMMAND = ".venv/bin/python -m bench.checkpoint_overhead"
TARGET_PCT = 0.02
TARGET_MS_PER_CELL = 5.0
SMALL_NAMESPACE = 1 << 20


def cases(folder: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    return [
        ("trivial 10 cells", nbs.trivial(folder, 10), {"n": 3}),
        ("workflows/sales_report", nbs.WORKFLOWS / "sales_report.ipynb", {}),
        ("workflows/flaky_ingest", nbs.WORKFLOWS / "flaky_ingest.ipynb", {"max_bad_ratio": 0.1}),
        (
            "workflows/long_prefix",
            nbs.WORKFLOWS / "long_prefix.ipynb",
            {"warmup_seconds": 0.2, "fail": False},
        ),
    ]


def measure(path: Path, params: dict[str, Any], work: Path, reps: int) -> dict[str, Any]:
    common.timed_run(path, params, work=work, checkpoint=True)  # warm-up, not measured
    common.timed_run(path, params, work=work, checkpoint=False)
    on: list[common.Timed] = []
    off: list[common.Timed] = []
    for rep in range(reps):
        order = (True, False) if rep % 2 == 0 else (False, True)
        for checkpoint in order:
            run = common.timed_run(path, params, work=work, checkpoint=checkpoint)
            (on if checkpoint else off).append(run)
    n_cells = on[0].n_cells
    sum_on = nbs.median([r.cell_sum_s for r in on])
    sum_off = nbs.median([r.cell_sum_s for r in off])
    paired = nbs.median([a.cell_sum_s - b.cell_sum_s for a, b in zip(on, off, strict=True)])
    snaps = [s for r in on for s in r.snapshot_ms()]
    last = on[0].result.cells[-1]
    last_cell = last.cell_id or str(last.cell_index)
    ns_bytes = common.namespace_bytes(on[0].manifests, last_cell)
    return {
        "cells": n_cells,
        "runs": reps,
        "sum_on_s": sum_on,
        "sum_off_s": sum_off,
        "paired_diff_s": paired,
        "overhead_frac": (sum_on - sum_off) / sum_off,
        "overhead_ms_per_cell": (sum_on - sum_off) * 1000 / n_cells,
        "snapshot_ms_median": nbs.median(snaps),
        "snapshot_ms_max": max(snaps) if snaps else float("nan"),
        "snapshot_ms_sum_median": nbs.median([sum(r.snapshot_ms()) for r in on]),
        "wall_on_s": nbs.median([r.wall_s for r in on]),
        "wall_off_s": nbs.median([r.wall_s for r in off]),
        "namespace_bytes": ns_bytes,
        "per_cell_snapshot_ms": {
            cid: nbs.median(
                [float(r.manifests[cid]["snapshot_ms"]) for r in on if cid in r.manifests]
            )
            for cid in on[0].manifests
        },
        "checkpoints_skipped": sum(len(r.skipped) for r in on),
        "per_cell_off_ms": {
            cid: nbs.median([r.durations()[cid] * 1000 for r in off]) for cid in off[0].durations()
        },
        "all_sum_on_s": [r.cell_sum_s for r in on],
        "all_sum_off_s": [r.cell_sum_s for r in off],
    }


def main(quick: bool = False) -> dict[str, Any]:
    reps = 3 if quick else 7
    raw: dict[str, Any] = {}
    rows: list[list[str]] = []
    targets: list[dict[str, Any]] = []
    with nbs.temp_dir("overhead") as work:
        for label, path, params in cases(work):
            print(f"  [overhead] {label} x{reps} on/off ...", file=sys.stderr, flush=True)
            fig = measure(path, params, work, reps)
            raw[label] = fig
            small = fig["namespace_bytes"] < SMALL_NAMESPACE
            rows.append(
                [
                    label,
                    str(fig["cells"]),
                    common.mb(fig["namespace_bytes"]),
                    common.ms(fig["sum_off_s"]),
                    common.ms(fig["sum_on_s"]),
                    common.ratio(fig["sum_on_s"] / fig["sum_off_s"], 3),
                    common.pct(fig["overhead_frac"]),
                    f"{fig['overhead_ms_per_cell']:+.2f} ms",
                    f"{fig['snapshot_ms_median']:.2f} ms (max {fig['snapshot_ms_max']:.1f})",
                    f"{common.sec(fig['wall_off_s'])} / {common.sec(fig['wall_on_s'])}",
                ]
            )
            # The snapshot cost itself (kernel-side clock) is the noise-free lower bound;
            # the on/off difference is the headline figure but carries the machine's noise.
            snap_frac = fig["snapshot_ms_sum_median"] / 1000 / fig["sum_off_s"]
            targets.append(
                common.target(
                    f"{label}: overhead <= 2 % of run time",
                    f"{common.pct(fig['overhead_frac'])} (on/off medians); snapshots alone "
                    f"{snap_frac * 100:.1f} %",
                    fig["overhead_frac"] <= TARGET_PCT,
                )
            )
            if small:
                targets.append(
                    common.target(
                        f"{label}: <= 5 ms per cell (namespace < 1 MB)",
                        f"{fig['overhead_ms_per_cell']:+.2f} ms/cell (on/off); snapshot "
                        f"median {fig['snapshot_ms_median']:.2f} ms",
                        fig["overhead_ms_per_cell"] <= TARGET_MS_PER_CELL,
                    )
                )
    findings = []
    for label, fig in raw.items():
        cell_ms = fig["sum_off_s"] * 1000 / fig["cells"]
        if fig["overhead_frac"] > TARGET_PCT and cell_ms < 50:
            findings.append(
                f"{label}: cells take {cell_ms:.1f} ms each without checkpoints (mostly the "
                f"kernel round trip), so a {fig['snapshot_ms_median']:.1f} ms snapshot "
                f"is {common.pct(fig['overhead_frac'])} of run time: a fixed per-cell cost of "
                "file writes (manifest, new blobs), namespace scan and AST walk that the 2 % "
                "target cannot absorb for near-empty cells (benchmark 1)."
            )
        if fig["namespace_bytes"] >= SMALL_NAMESPACE:
            worst = sorted(fig["per_cell_snapshot_ms"].items(), key=lambda kv: -kv[1])[:4]
            listed = ", ".join(f"{cid} {v:.1f} ms" for cid, v in worst)
            findings.append(
                f"{label} ({common.mb(fig['namespace_bytes'])} namespace): snapshot "
                f"{fig['snapshot_ms_median']:.1f} ms per cell (median), "
                f"{common.pct(fig['overhead_frac'])} of run time; slowest: {listed}. "
                "Where such costs come from: see 1b."
            )
    return {
        "name": "checkpoint_overhead",
        "title": "1. Per-cell checkpoint overhead",
        "command": COMMAND,
        "runs": f"{reps} with checkpoint + {reps} without, alternating, after 1 warm-up each",
        "columns": [
            "notebook",
            "cells",
            "namespace (pickled)",
            "cell time, checkpoint off (median)",
            "cell time, checkpoint on (median)",
            "ratio on/off",
            "overhead % of run time",
            "overhead per cell",
            "manifest snapshot_ms per cell (median)",
            "wall clock off / on (median)",
        ],
        "rows": rows,
        "targets": targets,
        "notes": [
            "Cell time = sum of `CellRecord.duration_s` over the run; the kernel-side snapshot "
            "runs in the `post_run_cell` hook before the execute reply, so it is included.",
            "The wall clock (whole `run_notebook` call: kernel start, hook install, history, "
            "output notebook) is given for context; it is not the overhead figure.",
            "A fresh state dir per run, so every blob is really pickled, hashed and written.",
            "`cells` counts executed cells: the trivial notebook's 10 plus the parameters cell "
            "casare-nb injects for `-p n 3`.",
            "Targets: the overhead (on/off difference of the medians) against 2 % of the cell "
            "time and, for namespaces under 1 MB, 5 ms per cell. The kernel-side "
            "`snapshot_ms` is the same cost measured without the machine's noise.",
        ],
        "findings": findings,
        "raw": raw,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main("--quick" in sys.argv), indent=1, default=str))
