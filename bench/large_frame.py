"""Benchmark 2: a large DataFrame, left alone or touched by every cell.

Cell ``b-01`` builds a float64 DataFrame of ~200 MB (``nbytes``); cells ``b-02`` .. ``b-09``
do small things. Variants, interleaved every repetition:

* ``untouched``: the small cells never name the frame, so its checkpoint is a reference to
  the manifest that holds it; ``snapshot_ms`` of a small cell should be ~ms;
* ``touched, fork``: every small cell does ``df.iloc[0, 0] = i``, so the frame is dirty and
  (>= ``fork_bytes``, 16 MB) a forked child pickles and writes it;
* ``touched, no fork``: the same with ``fork_bytes`` out of reach, the kernel pickles inline;
* each notebook also with ``checkpoint=False``, the baseline.

Parent-side cost per small cell = median small-cell duration with checkpoints minus the
same without. ``step`` = start of a cell to start of the next: it also holds what the
engine does between cells (e.g. waiting in ``flush`` for a forked writer). A cell whose
checkpoint the kernel skipped leaves ``<cell>.json.skipped`` instead of a manifest.

    .venv/bin/python -m bench.large_frame [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from bench import common
from bench import notebooks as nbs

COMMAND = ".venv/bin/python -m bench.large_frame"
CREATE = "b-01"
SMALL = [f"b-{i:02d}" for i in range(2, 10)]
NO_FORK = 1 << 62
ARRAY_CELLS = 12
ARRAY_CREATE = "a-01"
ARRAY_MUTATE = [f"a-{i:02d}" for i in range(2, 2 + ARRAY_CELLS)]
TARGET_OVERHEAD = 0.15
TARGET_GAP = 4  # "a namespace checkpoint at least every few cells": at most 3 in a row without


def array_notebook(folder: Path, nbytes: int, *, whole: bool) -> Path:
    """Cell ``a-01`` makes a float64 array of ``nbytes``; each of the 12 cells after it
    mutates it in place and sums it. ``whole``: ``arr *= 1.0001`` (every byte changes);
    else a region of 1 % of the array, a different one per cell (``np.sqrt`` of it)."""
    n = nbytes // 8
    region, stride = max(1, n // 100), n // ARRAY_CELLS
    sources = [
        "import numpy as np",
        f"arr = np.random.default_rng(0).random({n})\nprint(arr.nbytes)",
    ]
    for i in range(ARRAY_CELLS):
        if whole:
            change = "arr *= 1.0001"
        else:
            lo = i * stride
            change = f"arr[{lo}:{lo + region}] = np.sqrt(arr[{lo}:{lo + region}]) + {i}"
        sources.append(f"{change}\ntotal_{i} = float(arr.sum())")
    name = f"array_{'whole' if whole else 'region'}_{nbytes >> 20}mb.ipynb"
    return nbs.write_notebook(folder / name, sources, prefix="a")


def _longest_gap(cells: list[str], have: set[str]) -> int:
    """The most cells in a row (of ``cells``, in order) without a namespace checkpoint."""
    longest = run = 0
    for cell in cells:
        run = 0 if cell in have else run + 1
        longest = max(longest, run)
    return longest


def _array_run(run: common.Timed) -> dict[str, Any]:
    written = {c for c in [ARRAY_CREATE, *ARRAY_MUTATE] if c in run.manifests}
    snaps = [float(run.manifests[c]["snapshot_ms"]) for c in sorted(written)]
    return {
        "wall_s": run.wall_s,
        "cell_sum_s": run.cell_sum_s,
        "state_bytes": run.state_bytes,
        "create_written": ARRAY_CREATE in written,
        "mutate_written": sum(1 for c in ARRAY_MUTATE if c in written),
        "mutate_deferred": sum(1 for c in ARRAY_MUTATE if c in run.skipped),
        "longest_gap": _longest_gap([ARRAY_CREATE, *ARRAY_MUTATE], written),
        "last_written": ARRAY_MUTATE[-1] in written,
        "snapshot_ms": nbs.median(snaps),
        "written_bytes": sum(int(m.get("written_bytes", 0)) for m in run.manifests.values()),
        "pending_left": len(run.pending),
    }


def _array_runs(work: Path, nbytes: int, reps: int) -> dict[str, list[dict[str, Any]]]:
    """The array notebooks with checkpoints on and off, interleaved, after a warm-up."""
    variants = {
        "array, region mutated, checkpoint": (array_notebook(work, nbytes, whole=False), True),
        "array, region mutated, off": (array_notebook(work, nbytes, whole=False), False),
        "array, whole mutated, checkpoint": (array_notebook(work, nbytes, whole=True), True),
        "array, whole mutated, off": (array_notebook(work, nbytes, whole=True), False),
    }
    names = list(variants)
    common.timed_run(variants[names[1]][0], None, work=work, checkpoint=False)  # warm-up
    runs: dict[str, list[dict[str, Any]]] = {}
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            path, checkpoint = variants[name]
            print(f"  [large] rep {rep + 1}/{reps}: {name}", file=sys.stderr, flush=True)
            run = common.timed_run(path, None, work=work, checkpoint=checkpoint)
            runs.setdefault(name, []).append(_array_run(run))
    return runs


def _array_figures(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    def med(name: str, key: str) -> float:
        return nbs.median([float(r[key]) for r in runs[name]])

    figures: dict[str, dict[str, Any]] = {}
    for kind in ("region", "whole"):
        on, off = f"array, {kind} mutated, checkpoint", f"array, {kind} mutated, off"
        fig = {
            key: med(on, key)
            for key in (
                "wall_s",
                "cell_sum_s",
                "state_bytes",
                "mutate_written",
                "mutate_deferred",
                "snapshot_ms",
                "written_bytes",
            )
        }
        fig["wall_off_s"] = med(off, "wall_s")
        fig["cell_sum_off_s"] = med(off, "cell_sum_s")
        fig["overhead"] = fig["wall_s"] / fig["wall_off_s"] - 1
        fig["paired_overhead"] = nbs.median(
            [a["wall_s"] / b["wall_s"] - 1 for a, b in zip(runs[on], runs[off], strict=True)]
        )
        fig["longest_gap"] = max(r["longest_gap"] for r in runs[on])
        fig["create_written"] = sum(1 for r in runs[on] if r["create_written"])
        fig["last_written"] = all(r["last_written"] for r in runs[on])
        fig["pending_left"] = max(r["pending_left"] for r in runs[on])
        figures[kind] = fig
    return figures


def array_main(quick: bool = False) -> dict[str, Any]:
    """Only the array case (``--array``): its figures as JSON."""
    reps = 3 if quick else 5
    nbytes = (50 if quick else 200) << 20
    with nbs.temp_dir("array") as work:
        runs = _array_runs(work, nbytes, reps)
    return {"nbytes": nbytes, "figures": _array_figures(runs), "runs": runs}


def _variants(folder: Path, nbytes: int) -> dict[str, tuple[Path, bool, dict[str, Any]]]:
    untouched = nbs.large_frame(folder, nbytes, touch=False)
    touched = nbs.large_frame(folder, nbytes, touch=True)
    return {
        "untouched, checkpoint": (untouched, True, {}),
        "untouched, off": (untouched, False, {}),
        "touched, checkpoint (fork)": (touched, True, {}),
        "touched, checkpoint (no fork)": (touched, True, {"fork_bytes": NO_FORK}),
        "touched, off": (touched, False, {}),
    }


def _per_run(run: common.Timed) -> dict[str, Any]:
    durations = run.durations()
    steps = run.step_walls_s()
    snaps = {k: m.get("snapshot_ms") for k, m in run.manifests.items()}
    forked = {k: m.get("forked") for k, m in run.manifests.items()}
    return {
        "wall_s": run.wall_s,
        "state_bytes": run.state_bytes,
        "create_s": durations[CREATE],
        "create_step_s": steps[CREATE],
        "small_s": nbs.median([durations[c] for c in SMALL]),
        "small_step_s": nbs.median([steps[c] for c in SMALL if c in steps]),
        "create_snapshot_ms": snaps.get(CREATE),
        "small_snapshot_ms": nbs.median([float(s) for c in SMALL if (s := snaps.get(c))])
        if any(snaps.get(c) for c in SMALL)
        else None,
        "create_forked": forked.get(CREATE),
        "small_forked": sum(1 for c in SMALL if forked.get(c)),
        "small_manifests": sum(1 for c in SMALL if c in run.manifests),
        "small_skipped": sum(1 for c in SMALL if c in run.skipped),
        "pending_left": len(run.pending),
        "frame_bytes": _frame_blob_size(run.manifests),
    }


def _frame_blob_size(manifests: dict[str, dict[str, Any]]) -> int:
    entry = manifests.get(CREATE, {}).get("vars", {}).get("df", {})
    return int(entry.get("size", 0))


def _in_process_fork(nbytes: int, reps: int) -> dict[str, float]:
    """Call ``kernel_side.snapshot`` in this process on a new frame of ``nbytes`` (forks):
    how long until it returns (parent side), and how long ``flush`` then waits."""
    import numpy as np
    import pandas as pd

    from casare_nb.notebook import kernel_side as ks

    returned, waited = [], []
    ns: dict[str, Any] = {"np": np, "pd": pd}
    saved = ks._ns
    with nbs.temp_dir("fork") as folder:
        ks._ns = lambda: ns
        try:
            ks.configure(blob_dir=str(folder / "blobs"), max_interval=1)  # every call
            for i in range(reps):
                rows = nbytes // 64
                ns["df"] = pd.DataFrame(np.random.default_rng(i).random((rows, 8)))
                entry = {
                    "sha": "-",
                    "manifest": str(folder / f"c{i}.json"),
                    "index": i,
                    "id": f"c{i}",
                }
                t0 = time.perf_counter()
                ks.snapshot(entry, "df = make()")
                t1 = time.perf_counter()
                ks.flush()
                waited.append(time.perf_counter() - t1)
                returned.append(t1 - t0)
                ns.pop("df")
        finally:
            ks._ns = saved
            ks.configure(blob_dir=None)
    return {"parent_ms": nbs.median(returned) * 1000, "flush_ms": nbs.median(waited) * 1000}


def main(quick: bool = False) -> dict[str, Any]:
    reps = 3 if quick else 5
    nbytes = (50 if quick else 200) << 20
    runs: dict[str, list[dict[str, Any]]] = {}
    with nbs.temp_dir("large") as work:
        variants = _variants(work, nbytes)
        names = list(variants)
        # warm-up: imports of numpy/pandas into the page cache, kernel start
        path, _, _ = variants["untouched, off"]
        common.timed_run(path, None, work=work, checkpoint=False)
        for rep in range(reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                path, checkpoint, extra = variants[name]
                print(f"  [large] rep {rep + 1}/{reps}: {name}", file=sys.stderr, flush=True)
                run = common.timed_run(path, None, work=work, checkpoint=checkpoint, **extra)
                runs.setdefault(name, []).append(_per_run(run))

    print("  [large] in-process fork timing", file=sys.stderr, flush=True)
    in_process = _in_process_fork(nbytes, reps)

    def med(name: str, key: str) -> float:
        return nbs.median([float(r[key]) for r in runs[name] if r[key] is not None])

    def fmt_ms(value: float, digits: int = 0) -> str:
        return "-" if value != value else f"{value:.{digits}f} ms"  # NaN: none written

    rows: list[list[str]] = []
    raw: dict[str, Any] = {"nbytes": nbytes, "runs": runs, "figures": {}, "in_process": in_process}
    for name in (
        "untouched, checkpoint",
        "touched, checkpoint (fork)",
        "touched, checkpoint (no fork)",
    ):
        base = "untouched, off" if name.startswith("untouched") else "touched, off"
        fig = {
            "create_snapshot_ms": med(name, "create_snapshot_ms"),
            "small_snapshot_ms": med(name, "small_snapshot_ms"),
            "small_s": med(name, "small_s"),
            "small_off_s": med(base, "small_s"),
            "small_step_s": med(name, "small_step_s"),
            "small_step_off_s": med(base, "small_step_s"),
            "create_s": med(name, "create_s"),
            "create_off_s": med(base, "create_s"),
            "create_step_s": med(name, "create_step_s"),
            "create_step_off_s": med(base, "create_step_s"),
            "wall_s": med(name, "wall_s"),
            "wall_off_s": med(base, "wall_s"),
            "state_bytes": med(name, "state_bytes"),
            "frame_blob_bytes": med(name, "frame_bytes"),
            "small_forked": med(name, "small_forked"),
            "small_manifests": med(name, "small_manifests"),
            "small_skipped": med(name, "small_skipped"),
            "pending_left": max(r["pending_left"] for r in runs[name]),
            "create_forked": bool(runs[name][0]["create_forked"]),
        }
        fig["parent_cost_small_s"] = fig["small_s"] - fig["small_off_s"]
        fig["step_cost_small_s"] = fig["small_step_s"] - fig["small_step_off_s"]
        fig["parent_cost_create_s"] = fig["create_s"] - fig["create_off_s"]
        fig["step_cost_create_s"] = fig["create_step_s"] - fig["create_step_off_s"]
        raw["figures"][name] = fig
        rows.append(
            [
                name,
                fmt_ms(fig["create_snapshot_ms"]) + (" (forked)" if fig["create_forked"] else ""),
                fmt_ms(fig["small_snapshot_ms"], 2)
                + (f" ({fig['small_forked']:.0f} forked)" if fig["small_forked"] else ""),
                f"{fig['small_manifests']:.0f} / {fig['small_skipped']:.0f}",
                common.ratio(fig["small_snapshot_ms"] / fig["create_snapshot_ms"], 3),
                f"{fig['parent_cost_small_s'] * 1000:+.1f} ms",
                f"{fig['step_cost_small_s'] * 1000:+.1f} ms",
                f"{common.sec(fig['wall_off_s'])} / {common.sec(fig['wall_s'])} "
                f"({common.ratio(fig['wall_s'] / fig['wall_off_s'])})",
                common.mb(fig["state_bytes"]),
            ]
        )
    off_creates = [r["create_s"] for n in runs if n.endswith("off") for r in runs[n]]
    lo, hi = min(off_creates), max(off_creates)
    create_note = ", ".join(f"{name}: {med(name, 'create_s'):.2f} s" for name in runs)
    untouched = raw["figures"]["untouched, checkpoint"]
    fork = raw["figures"]["touched, checkpoint (fork)"]
    nofork = raw["figures"]["touched, checkpoint (no fork)"]
    targets = [
        common.target(
            "untouched frame: small-cell snapshot ~ms (no re-serialisation)",
            f"{untouched['small_snapshot_ms']:.2f} ms vs {untouched['create_snapshot_ms']:.0f}"
            f" ms for the creating cell",
            untouched["small_snapshot_ms"] < 10,
        ),
        common.target(
            "touched frame, fork: parent-side cost per cell ~ fork time (cell duration)",
            f"{fork['parent_cost_small_s'] * 1000:+.1f} ms per cell "
            f"(in-process: the hook returns after {in_process['parent_ms']:.1f} ms)",
            fork["parent_cost_small_s"] < 0.05,
        ),
        common.target(
            "touched frame, fork: the run does not wait for the writer (step wall clock)",
            f"{fork['step_cost_small_s'] * 1000:+.0f} ms per cell between cells; run "
            f"{common.ratio(fork['wall_s'] / fork['wall_off_s'])} the run without checkpoints",
            fork["step_cost_small_s"] < 0.05,
        ),
        common.target(
            "touched frame, fork: every touched cell gets a checkpoint",
            f"{fork['small_manifests']:.0f} of 8 written, {fork['small_skipped']:.0f} skipped "
            "(median per run)",
            fork["small_manifests"] >= 8,
        ),
    ]
    findings = []
    step = fork["step_cost_small_s"]
    cell = fork["parent_cost_small_s"]
    if step > max(2 * cell, cell + 0.05):
        findings.append(
            f"Forked snapshots hold the run up between cells: with a {nbytes >> 20} MB frame "
            f"touched by every cell, a cell grows by {cell * 1000:+.0f} ms but the time to the "
            f"next cell's start by {step * 1000:+.0f} ms (the engine waits for the writer); "
            f"run {common.sec(fork['wall_s'])} with fork vs {common.sec(nofork['wall_s'])} "
            f"inline vs {common.sec(fork['wall_off_s'])} without checkpoints (benchmark 2)."
        )
    if cell > 0.05:
        findings.append(
            f"With fork, a touched cell still grows by {cell * 1000:+.0f} ms in its own "
            f"duration ({fork['wall_s'] / fork['wall_off_s']:.1f}x the run without "
            f"checkpoints; {nofork['parent_cost_small_s'] * 1000:+.0f} ms per cell inline), "
            f"although the hook returns after {in_process['parent_ms']:.1f} ms in-process: "
            "presumably the writers competing with kernel and engine for the 2 CPUs and the "
            "disk, not isolated here (benchmark 2)."
        )
    if fork["small_skipped"] > 0:
        findings.append(
            f"With a {nbytes >> 20} MB frame touched by every cell, "
            f"{fork['small_skipped']:.0f} of 8 cells get no namespace checkpoint "
            "(`<cell>.json.skipped` markers: the kernel skips a snapshot while its forked "
            f"writers for earlier cells are busy); {fork['small_manifests']:.0f} manifest(s) "
            "written. A resume after such a cell has to fall back to an earlier checkpoint "
            "and replay the cells since (benchmark 2)."
        )
    if fork["wall_s"] > nofork["wall_s"]:
        findings.append(
            f"Forking is slower end to end than pickling inline for a touched frame: "
            f"{common.ratio(fork['wall_s'] / nofork['wall_s'])} the inline run's wall clock "
            "(benchmark 2)."
        )
    if nofork["small_snapshot_ms"] > 0:
        findings.append(
            f"Every write into the frame (one value) makes a new full blob: "
            f"{common.mb(nofork['frame_blob_bytes'])} per touched cell, "
            f"{common.mb(nofork['state_bytes'])} of state for one run of 9 cells without "
            "fork (content addressing has no delta), about "
            f"{nofork['small_snapshot_ms']:.0f} ms per snapshot on this disk (benchmark 2)."
        )
    return {
        "name": "large_frame",
        "title": f"2. Large DataFrame ({nbytes >> 20} MB), unchanged vs touched by every cell",
        "command": COMMAND,
        "runs": f"{reps} of each variant, interleaved, after 1 warm-up",
        "columns": [
            "variant (checkpoint on)",
            "snapshot_ms, creating cell",
            "snapshot_ms, small cell (median of those written)",
            "small cells: checkpoint written / skipped (of 8)",
            "ratio small/creating",
            "small cell: parent-side cost (cell duration vs off)",
            "small cell: cost in step (start to next start, vs off)",
            "run wall clock off / on",
            "state written per run",
        ],
        "rows": rows,
        "targets": targets,
        "notes": [
            f"Frame: 8 float64 columns, {nbytes >> 20} MB by `memory_usage`; pickled blob "
            f"{common.mb(untouched['frame_blob_bytes'])}.",
            "`snapshot_ms` of a forked snapshot is measured in the child, from the hook's start "
            "to the manifest write: the whole pickle + sha256 + write.",
            "Costs are medians with checkpoints minus medians of the same notebook with "
            "`checkpoint=False`.",
            f"The creating cell's own duration varies from {lo:.1f} to {hi:.1f} s between "
            "runs without checkpoints "
            "(allocating and filling the frame), so its checkpoint cost is not given as a "
            f"difference (medians: {create_note}); its `snapshot_ms` is.",
            "In-process check of the fork path (`kernel_side.snapshot` called in the bench "
            f"process on a new {nbytes >> 20} MB frame): returns after "
            f"{in_process['parent_ms']:.1f} ms (the parent side: sizes + `os.fork`); the "
            f"following `flush` waits {in_process['flush_ms']:.0f} ms for the writer.",
        ],
        "findings": findings,
        "raw": raw,
    }


if __name__ == "__main__":
    import json

    entry = array_main if "--array" in sys.argv else main
    print(json.dumps(entry("--quick" in sys.argv), indent=1, default=str))
