"""Benchmark 2: a large object in the namespace, left alone, touched, or changed by every cell.

Two notebooks with a ~200 MB DataFrame (``b-01`` builds it, ``b-02`` .. ``b-09`` do small
things) and two with a ~200 MB numpy array (``a-01`` builds it, each of the 12 cells
``a-02`` .. ``a-13`` changes it in place and sums it). Variants, interleaved every
repetition:

* ``frame untouched``: the small cells never name the frame, so its checkpoint is a
  reference to the manifest that holds it; ``snapshot_ms`` of a small cell should be ~ms;
* ``frame touched``: every small cell does ``df.iloc[0, 0] = i``, so the frame is dirty;
  with ``fork`` (>= ``fork_bytes``, 16 MB) a forked child writes it, with ``no fork`` the
  kernel does, inline;
* ``array, region mutated``: each cell rewrites a different 1 % of the array
  (``np.sqrt``): only the chunks holding it change;
* ``array, whole mutated``: each cell does ``arr *= 1.0001``: every chunk changes;
* ``array, region mutated, one checkpoint``: ``CASARE_CHECKPOINT_MAX_INTERVAL=100``, so the
  only namespace checkpoint holding the array is the last cell's: what writing it once costs;
* each notebook also with ``checkpoint=False``, the baseline.

The checkpoint policy decides which cells get a namespace checkpoint (the others leave
``<cell>.json.skipped``): defaults, a budget of 10 % of the cell time, at least every 4 cells
and at the last. Parent-side cost per later cell = median later-cell duration with
checkpoints minus the same without. ``step`` = start of a cell to start of the next: it also
holds what the engine does between cells. Wall clock = the whole run, kernel start included.

    .venv/bin/python -m bench.large_frame [--quick]
    .venv/bin/python -m bench.large_frame --array [--quick]   # only the array notebooks
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import common
from bench import notebooks as nbs

COMMAND = ".venv/bin/python -m bench.large_frame"
NO_FORK = 1 << 62
ARRAY_CELLS = 12
TARGET_OVERHEAD = 0.15
MAX_RUN = 3  # "a namespace checkpoint at least every few cells": at most 3 in a row without


@dataclass
class Case:
    """A notebook: the cell that makes the large object, the cells after it."""

    path: Path
    create: str
    later: list[str]


@dataclass
class Variant:
    case: Case
    checkpoint: bool
    baseline: str = ""  # the variant with checkpoints off to compare with
    options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


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


def frame_variants(work: Path, nbytes: int) -> dict[str, Variant]:
    later = [f"b-{i:02d}" for i in range(2, 10)]
    untouched = Case(nbs.large_frame(work, nbytes, touch=False), "b-01", later)
    touched = Case(nbs.large_frame(work, nbytes, touch=True), "b-01", later)
    return {
        "frame untouched, checkpoint": Variant(untouched, True, "frame untouched, off"),
        "frame untouched, off": Variant(untouched, False),
        "frame touched, checkpoint (fork)": Variant(touched, True, "frame touched, off"),
        "frame touched, checkpoint (no fork)": Variant(
            touched, True, "frame touched, off", {"fork_bytes": NO_FORK}
        ),
        "frame touched, off": Variant(touched, False),
    }


def array_variants(work: Path, nbytes: int) -> dict[str, Variant]:
    later = [f"a-{i:02d}" for i in range(2, 2 + ARRAY_CELLS)]
    region = Case(array_notebook(work, nbytes, whole=False), "a-01", later)
    whole = Case(array_notebook(work, nbytes, whole=True), "a-01", later)
    once = {"CASARE_CHECKPOINT_MAX_INTERVAL": "100"}
    return {
        "array, region mutated, checkpoint": Variant(region, True, "array, region mutated, off"),
        "array, region mutated, one checkpoint": Variant(
            region, True, "array, region mutated, off", env=once
        ),
        "array, region mutated, off": Variant(region, False),
        "array, whole mutated, checkpoint": Variant(whole, True, "array, whole mutated, off"),
        "array, whole mutated, off": Variant(whole, False),
    }


@contextlib.contextmanager
def environ(env: dict[str, str]) -> Iterator[None]:
    """``env`` set for the kernels started inside (they inherit this process's variables)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _longest_run(cells: list[str], have: set[str]) -> int:
    """The most cells in a row (of ``cells``, in order) without a namespace checkpoint."""
    longest = run = 0
    for cell in cells:
        run = 0 if cell in have else run + 1
        longest = max(longest, run)
    return longest


def _per_run(run: common.Timed, case: Case) -> dict[str, Any]:
    durations = run.durations()
    steps = run.step_walls_s()
    manifests = run.manifests
    written = [c for c in case.later if c in manifests]
    create = manifests.get(case.create, {})
    entry = create.get("vars", {}).get("df", {})
    return {
        "wall_s": run.wall_s,
        "state_bytes": run.state_bytes,
        "create_s": durations[case.create],
        "create_step_s": steps[case.create],
        "later_s": nbs.median([durations[c] for c in case.later]),
        "later_step_s": nbs.median([steps[c] for c in case.later if c in steps]),
        "create_snapshot_ms": create.get("snapshot_ms"),
        "later_snapshot_ms": nbs.median([float(manifests[c]["snapshot_ms"]) for c in written])
        if written
        else None,
        "create_written": case.create in manifests,
        "create_forked": bool(create.get("forked")),
        "later_forked": sum(1 for c in written if manifests[c].get("forked")),
        "later_written": len(written),
        "later_deferred": sum(1 for c in case.later if c in run.skipped),
        "longest_run": _longest_run([case.create, *case.later], set(manifests)),
        "last_written": case.later[-1] in manifests,
        "written_bytes": sum(int(m.get("written_bytes", 0)) for m in manifests.values()),
        "pending_left": len(run.pending),
        "frame_bytes": int(entry.get("size", 0)),
    }


def _measure(
    work: Path, variants: dict[str, Variant], reps: int, tag: str
) -> dict[str, list[dict[str, Any]]]:
    """Every variant ``reps`` times, interleaved (the order rotates), after one warm-up."""
    names = list(variants)
    warm = next(v for v in variants.values() if not v.checkpoint)
    common.timed_run(warm.case.path, None, work=work, checkpoint=False)
    runs: dict[str, list[dict[str, Any]]] = {}
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            v = variants[name]
            print(f"  [{tag}] rep {rep + 1}/{reps}: {name}", file=sys.stderr, flush=True)
            with environ(v.env):
                run = common.timed_run(
                    v.case.path, None, work=work, checkpoint=v.checkpoint, **v.options
                )
            runs.setdefault(name, []).append(_per_run(run, v.case))
    return runs


def _figures(
    variants: dict[str, Variant], runs: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    def med(name: str, key: str) -> float:
        return nbs.median([float(r[key]) for r in runs[name] if r[key] is not None])

    figures: dict[str, dict[str, Any]] = {}
    for name, v in variants.items():
        if not v.checkpoint:
            continue
        base = v.baseline
        fig: dict[str, Any] = {
            key: med(name, key)
            for key in (
                "create_snapshot_ms",
                "later_snapshot_ms",
                "later_s",
                "later_step_s",
                "create_s",
                "create_step_s",
                "wall_s",
                "state_bytes",
                "written_bytes",
                "frame_bytes",
                "later_forked",
                "later_written",
                "later_deferred",
            )
        }
        fig.update(
            later_off_s=med(base, "later_s"),
            later_step_off_s=med(base, "later_step_s"),
            create_off_s=med(base, "create_s"),
            wall_off_s=med(base, "wall_s"),
            later_cells=len(v.case.later),
            longest_run=max(r["longest_run"] for r in runs[name]),
            last_written=all(r["last_written"] for r in runs[name]),
            create_written=sum(1 for r in runs[name] if r["create_written"]),
            create_forked=any(r["create_forked"] for r in runs[name]),
            pending_left=max(r["pending_left"] for r in runs[name]),
            paired_overhead=nbs.median(
                [a["wall_s"] / b["wall_s"] - 1 for a, b in zip(runs[name], runs[base], strict=True)]
            ),
        )
        fig["overhead"] = fig["wall_s"] / fig["wall_off_s"] - 1
        fig["parent_cost_later_s"] = fig["later_s"] - fig["later_off_s"]
        fig["step_cost_later_s"] = fig["later_step_s"] - fig["later_step_off_s"]
        figures[name] = fig
    return figures


def _row(name: str, fig: dict[str, Any]) -> list[str]:
    def fmt_ms(value: float, digits: int = 0) -> str:
        return "-" if value != value else f"{value:.{digits}f} ms"  # NaN: none written

    create = fmt_ms(fig["create_snapshot_ms"]) if fig["create_written"] else "deferred"
    return [
        name,
        create + (" (forked)" if fig["create_forked"] else ""),
        fmt_ms(fig["later_snapshot_ms"], 1)
        + (f" ({fig['later_forked']:.0f} forked)" if fig["later_forked"] else ""),
        f"{fig['later_written']:.0f} / {fig['later_deferred']:.0f} (of {fig['later_cells']})",
        str(fig["longest_run"]),
        f"{fig['parent_cost_later_s'] * 1000:+.1f} ms",
        f"{fig['step_cost_later_s'] * 1000:+.1f} ms",
        f"{common.sec(fig['wall_off_s'])} / {common.sec(fig['wall_s'])} "
        f"({fig['overhead'] * 100:+.0f} %)",
        common.mb(fig["state_bytes"]),
    ]


def _in_process_fork(nbytes: int, reps: int) -> dict[str, float]:
    """Call ``kernel_side.snapshot`` in this process on a new frame of ``nbytes`` (forks):
    how long until it returns (parent side), and how long ``flush`` then waits."""
    import numpy as np
    import pandas as pd

    from casare_nb.notebook.kernel_code import kernel_side_module

    ks: Any = kernel_side_module()  # as a kernel has it

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


def _array_targets(figures: dict[str, dict[str, Any]], nbytes: int) -> list[dict[str, Any]]:
    targets = []
    for kind, what in (("region", "a 1 % region"), ("whole", "every byte")):
        fig = figures[f"array, {kind} mutated, checkpoint"]
        targets.append(
            common.target(
                f"{nbytes >> 20} MB array, {what} changed in each of {ARRAY_CELLS} cells: <= 15 % "
                "wall overhead with a namespace checkpoint at least every few cells",
                f"{fig['overhead'] * 100:+.0f} % wall ({common.sec(fig['wall_off_s'])} -> "
                f"{common.sec(fig['wall_s'])}; paired {fig['paired_overhead'] * 100:+.0f} %); "
                f"{fig['later_written']:.0f} of {ARRAY_CELLS} cells with a checkpoint, at most "
                f"{fig['longest_run']} in a row without, last cell "
                f"{'always' if fig['last_written'] else 'not always'}",
                fig["overhead"] <= TARGET_OVERHEAD
                and fig["longest_run"] <= MAX_RUN
                and fig["last_written"],
            )
        )
    return targets


def _array_findings(figures: dict[str, dict[str, Any]], nbytes: int) -> list[str]:
    region = figures["array, region mutated, checkpoint"]
    whole = figures["array, whole mutated, checkpoint"]
    once = figures["array, region mutated, one checkpoint"]
    findings = []
    if region["overhead"] > TARGET_OVERHEAD:
        findings.append(
            f"Writing the {nbytes >> 20} MB array once is already more than the budget: with "
            "its only namespace checkpoint at the last cell the run takes "
            f"{once['overhead'] * 100:+.0f} % ({common.sec(once['wall_off_s'])} -> "
            f"{common.sec(once['wall_s'])}), against {region['overhead'] * 100:+.0f} % with a "
            "checkpoint at least every 4 cells; the 12 mutating cells take "
            f"{region['later_off_s'] * ARRAY_CELLS:.2f} s in all, too little to hide the first "
            "write of the array behind (benchmark 2)."
        )
    findings.append(
        f"Chunks: a checkpoint of the array with a 1 % region changed writes "
        f"{common.mb(region['written_bytes'])} per run in all (the first full write included) "
        f"vs {common.mb(whole['written_bytes'])} when every byte changes; "
        f"{region['later_written']:.0f} of {ARRAY_CELLS} cells get a namespace checkpoint "
        "either way (benchmark 2)."
    )
    return findings


def array_main(quick: bool = False) -> dict[str, Any]:
    """Only the array notebooks (``--array``): their figures."""
    reps = 3 if quick else 5
    nbytes = (50 if quick else 200) << 20
    with nbs.temp_dir("array") as work:
        variants = array_variants(work, nbytes)
        runs = _measure(work, variants, reps, "array")
    figures = _figures(variants, runs)
    return {
        "nbytes": nbytes,
        "rows": [_row(name, fig) for name, fig in figures.items()],
        "targets": _array_targets(figures, nbytes),
        "findings": _array_findings(figures, nbytes),
        "figures": figures,
        "runs": runs,
    }


def main(quick: bool = False) -> dict[str, Any]:
    reps = 3 if quick else 5
    nbytes = (50 if quick else 200) << 20
    with nbs.temp_dir("large") as work:
        frames = frame_variants(work, nbytes)
        frame_runs = _measure(work, frames, reps, "large")
        arrays = array_variants(work, nbytes)
        array_runs = _measure(work, arrays, reps, "large")

    print("  [large] in-process fork timing", file=sys.stderr, flush=True)
    in_process = _in_process_fork(nbytes, reps)
    figures = {**_figures(frames, frame_runs), **_figures(arrays, array_runs)}
    runs = {**frame_runs, **array_runs}
    rows = [_row(name, fig) for name, fig in figures.items()]

    off_creates = [r["create_s"] for n in frame_runs if n.endswith("off") for r in runs[n]]
    lo, hi = min(off_creates), max(off_creates)
    untouched = figures["frame untouched, checkpoint"]
    fork = figures["frame touched, checkpoint (fork)"]
    nofork = figures["frame touched, checkpoint (no fork)"]
    targets = [
        common.target(
            "untouched frame: small-cell snapshot ~ms (no re-serialisation)",
            f"{untouched['later_snapshot_ms']:.2f} ms vs {untouched['create_snapshot_ms']:.0f}"
            f" ms for the creating cell",
            untouched["later_snapshot_ms"] < 10,
        ),
        common.target(
            "touched frame, fork: parent-side cost per cell ~ fork time (cell duration)",
            f"{fork['parent_cost_later_s'] * 1000:+.1f} ms per cell "
            f"(in-process: the hook returns after {in_process['parent_ms']:.1f} ms)",
            fork["parent_cost_later_s"] < 0.05,
        ),
        common.target(
            "touched frame, fork: the run does not wait for the writer (step wall clock)",
            f"{fork['step_cost_later_s'] * 1000:+.0f} ms per cell between cells; run "
            f"{common.ratio(fork['wall_s'] / fork['wall_off_s'])} the run without checkpoints",
            fork["step_cost_later_s"] < 0.05,
        ),
        common.target(
            "touched frame: a namespace checkpoint at least every 4 cells, and at the last",
            f"{fork['later_written']:.0f} of 8 written, {fork['later_deferred']:.0f} deferred "
            f"(median per run); at most {fork['longest_run']} in a row without",
            fork["longest_run"] <= MAX_RUN and fork["last_written"],
        ),
        *_array_targets(figures, nbytes),
    ]
    findings = []
    step, cell = fork["step_cost_later_s"], fork["parent_cost_later_s"]
    if step > max(2 * cell, cell + 0.05):
        findings.append(
            f"Forked snapshots hold the run up between cells: with a {nbytes >> 20} MB frame "
            f"touched by every cell, a cell grows by {cell * 1000:+.0f} ms but the time to the "
            f"next cell's start by {step * 1000:+.0f} ms (the engine waits for the writer); "
            f"run {common.sec(fork['wall_s'])} with fork vs {common.sec(nofork['wall_s'])} "
            f"inline vs {common.sec(fork['wall_off_s'])} without checkpoints (benchmark 2)."
        )
    if fork["wall_s"] > nofork["wall_s"]:
        findings.append(
            f"Forking is slower end to end than writing inline for a touched frame: "
            f"{common.ratio(fork['wall_s'] / nofork['wall_s'])} the inline run's wall clock "
            "(benchmark 2)."
        )
    findings += _array_findings(figures, nbytes)
    return {
        "name": "large_frame",
        "title": f"2. Large objects ({nbytes >> 20} MB): a DataFrame unchanged vs touched, "
        f"an array changed by each of {ARRAY_CELLS} cells",
        "command": COMMAND,
        "runs": f"{reps} of each variant, interleaved, after 1 warm-up",
        "columns": [
            "variant (checkpoint on)",
            "snapshot_ms, creating cell",
            "snapshot_ms, later cells (median of those written)",
            "later cells: namespace checkpoint written / deferred",
            "most cells in a row without one",
            "later cell: parent-side cost (cell duration vs off)",
            "later cell: cost in step (start to next start, vs off)",
            "run wall clock off / on (overhead)",
            "state written per run",
        ],
        "rows": rows,
        "targets": targets,
        "notes": [
            f"Frame: 8 float64 columns, {nbytes >> 20} MB by `memory_usage`; pickled "
            f"{common.mb(untouched['frame_bytes'])} (protocol 5, buffers out of band, stored in "
            "1 MiB chunks). Array: float64, `nbytes` "
            f"{nbytes >> 20} MB; each later cell changes it and sums it (~15 ms).",
            "`snapshot_ms` of a forked snapshot is measured in the child, from the hook's start "
            "to the manifest write; a forked writer first waits for the writer before it.",
            "Costs are medians with checkpoints minus medians of the same notebook with "
            "`checkpoint=False`; overhead = median wall on / median wall off - 1 (paired: the "
            "median of the per-repetition ratios).",
            f"The creating cell's own duration varies from {lo:.1f} to {hi:.1f} s between "
            "runs without checkpoints (allocating and filling the frame).",
            "In-process check of the fork path (`kernel_side.snapshot` called in the bench "
            f"process on a new {nbytes >> 20} MB frame): returns after "
            f"{in_process['parent_ms']:.1f} ms (the parent side: sizes + `os.fork`); the "
            f"following `flush` waits {in_process['flush_ms']:.0f} ms for the writer.",
        ],
        "findings": findings,
        "raw": {"nbytes": nbytes, "runs": runs, "figures": figures, "in_process": in_process},
    }


if __name__ == "__main__":
    import json

    entry = array_main if "--array" in sys.argv else main
    print(json.dumps(entry("--quick" in sys.argv), indent=1, default=str))
