"""Benchmark 4: a plain run, casare-nb vs papermill, on the trivial 10-cell notebook.

(a) whole processes, wall clock::

        papermill in.ipynb out.ipynb -p n 3
        casare-nb run in.ipynb -p n 3

(b) in this process: ``papermill.execute_notebook(in, out, parameters={"n": 3})`` vs
    ``casare_nb.run_notebook(in, {"n": 3})`` (checkpoints on, the default; also shown off).

Alternating (order flips every repetition), after one unmeasured warm-up of each; every
tool runs with cwd in a temporary folder (casare-nb's state dir: ``./.casare`` there for the
CLI, a temporary ``state_dir`` in-process).

    .venv/bin/python -m bench.vs_papermill [--quick]
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import papermill

from bench import common
from bench import notebooks as nbs
from casare_nb.local import run_notebook
from casare_nb.notebook.executor import Options

COMMAND = ".venv/bin/python -m bench.vs_papermill"
TARGET = 1.10


def _subprocess(argv: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr[-2000:]!r}")
    return elapsed


def _papermill_cells_s(out: Path) -> float:
    nb = nbformat.read(out, as_version=4)  # type: ignore[no-untyped-call]
    return sum(float(c.metadata.get("papermill", {}).get("duration") or 0) for c in nb.cells)


def _alternate(
    fns: dict[str, Callable[[], float]], reps: int, label: str
) -> dict[str, list[float]]:
    for fn in fns.values():  # warm-up
        fn()
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        print(f"  [papermill] {label} rep {rep + 1}/{reps}", file=sys.stderr, flush=True)
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            out[name].append(fns[name]())
    return out


def main(quick: bool = False) -> dict[str, Any]:
    reps = 3 if quick else 7
    with nbs.temp_dir("papermill") as work:
        notebook = nbs.trivial(work, 10)
        out = work / "out.ipynb"
        pm_bin = str(nbs.VENV_BIN / "papermill")
        cn_bin = str(nbs.VENV_BIN / "casare-nb")
        cli = _alternate(
            {
                "papermill": lambda: _subprocess(
                    [pm_bin, str(notebook), str(out), "-p", "n", "3"], work
                ),
                "casare-nb": lambda: _subprocess(
                    [cn_bin, "run", str(notebook), "-p", "n", "3"], work
                ),
            },
            reps,
            "CLI",
        )
        cells: dict[str, list[float]] = {"papermill": [], "casare": [], "casare_off": []}

        def pm_api() -> float:
            t0 = time.perf_counter()
            papermill.execute_notebook(
                str(notebook), str(out), parameters={"n": 3}, progress_bar=False, cwd=str(work)
            )
            elapsed = time.perf_counter() - t0
            cells["papermill"].append(_papermill_cells_s(out))
            return elapsed

        def casare_api(checkpoint: bool) -> Callable[[], float]:
            def run() -> float:
                t0 = time.perf_counter()
                result = run_notebook(
                    notebook,
                    {"n": 3},
                    state_dir=work / "state",
                    cwd=work,
                    options=Options(checkpoint=checkpoint),
                )
                elapsed = time.perf_counter() - t0
                if not result.ok:
                    raise RuntimeError(f"casare run {result.status.value}")
                key = "casare" if checkpoint else "casare_off"
                cells[key].append(sum(c.duration_s for c in result.cells))
                return elapsed

            return run

        api = _alternate(
            {
                "papermill": pm_api,
                "casare": casare_api(True),
                "casare_off": casare_api(False),
            },
            reps,
            "API",
        )
    # drop the warm-up's cell sums (first of each)
    cells = {k: v[1:] for k, v in cells.items()}
    fig = {
        "cli_papermill_s": nbs.median(cli["papermill"]),
        "cli_casare_s": nbs.median(cli["casare-nb"]),
        "api_papermill_s": nbs.median(api["papermill"]),
        "api_casare_s": nbs.median(api["casare"]),
        "api_casare_off_s": nbs.median(api["casare_off"]),
        "cells_papermill_s": nbs.median(cells["papermill"]),
        "cells_casare_s": nbs.median(cells["casare"]),
        "cells_casare_off_s": nbs.median(cells["casare_off"]),
    }
    cli_ratio = fig["cli_casare_s"] / fig["cli_papermill_s"]
    api_ratio = fig["api_casare_s"] / fig["api_papermill_s"]
    rows = [
        [
            "(a) CLI, whole process",
            "`papermill in.ipynb out.ipynb -p n 3`",
            common.sec(fig["cli_papermill_s"]),
            "`casare-nb run in.ipynb -p n 3`",
            common.sec(fig["cli_casare_s"]),
            common.ratio(cli_ratio),
        ],
        [
            "(b) in-process API",
            "`papermill.execute_notebook(...)`",
            common.sec(fig["api_papermill_s"]),
            "`run_notebook(...)` (checkpoints on)",
            common.sec(fig["api_casare_s"]),
            common.ratio(api_ratio),
        ],
        [
            "(b') in-process API",
            "`papermill.execute_notebook(...)`",
            common.sec(fig["api_papermill_s"]),
            "`run_notebook(..., options=Options(checkpoint=False))`",
            common.sec(fig["api_casare_off_s"]),
            common.ratio(fig["api_casare_off_s"] / fig["api_papermill_s"]),
        ],
        [
            "(b) sum of cell durations, for context",
            "`metadata.papermill.duration`",
            common.ms(fig["cells_papermill_s"]),
            "`CellRecord.duration_s`, checkpoints on "
            f"(off: {common.ms(fig['cells_casare_off_s'])})",
            common.ms(fig["cells_casare_s"]),
            common.ratio(fig["cells_casare_s"] / fig["cells_papermill_s"]),
        ],
    ]
    targets = [
        common.target(
            "CLI: casare-nb not more than 10 % slower than papermill",
            common.ratio(cli_ratio),
            cli_ratio <= TARGET,
        ),
        common.target(
            "API: run_notebook not more than 10 % slower than execute_notebook",
            common.ratio(api_ratio),
            api_ratio <= TARGET,
        ),
    ]
    findings = [
        f"{label}: casare-nb takes {common.ratio(r)} papermill's time, more than the 10 % "
        "allowed (benchmark 4)."
        for label, r in (("CLI", cli_ratio), ("API", api_ratio))
        if r > TARGET
    ]
    return {
        "name": "vs_papermill",
        "title": "4. Plain run vs papermill (trivial 10-cell notebook, `-p n 3`)",
        "command": COMMAND,
        "runs": f"{reps} of each, alternating, after 1 warm-up each",
        "columns": [
            "measure",
            "papermill",
            "papermill (median)",
            "casare-nb",
            "casare-nb (median)",
            "ratio casare/papermill",
        ],
        "rows": rows,
        "targets": targets,
        "notes": [
            "Both execute the same notebook with the same kernel (python3 of the venv); "
            "both inject a parameters cell, so 11 cells run.",
            "papermill's cell durations are its `metadata.papermill.duration` (start/end "
            "timestamps around each cell), casare-nb's the engine's `CellRecord.duration_s`; "
            "measured differently, so for context only.",
        ],
        "findings": findings,
        "raw": {"cli": cli, "api": api, "cells": cells, "figures": fig},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main("--quick" in sys.argv), indent=1, default=str))
