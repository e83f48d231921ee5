"""Benchmark 3: resume from the failed cell vs re-run from the start.

The notebook: 5 cells sleeping ``prefix / 5`` seconds each and building state, a cell that
fails while ``fail`` is true, then 2 cells using the state. Each repetition runs it once with
``fail=True`` (fails; not measured), then - order alternating - times

* ``run_notebook(path, {"fail": False})``: a full re-run from the start, end to end;
* ``resume(run_id, {"fail": False})``: a new attempt restoring the namespace of the last good
  cell and starting at the failed one, end to end.

Both answer a completed run (checked). Wall clock with ``time.perf_counter``.

    .venv/bin/python -m bench.resume_speedup [--quick]
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from typing import Any

from bench import common
from bench import notebooks as nbs
from casare_nb.core.models import RestoreMode
from casare_nb.local import aresume, arun_notebook, resume, run_notebook
from casare_nb.notebook.kernels import KernelSession
from casare_nb.notebook.pool import KernelPool

COMMAND = ".venv/bin/python -m bench.resume_speedup"
TARGET = 10.0
TARGET_POOLED = 15.0  # issue 14: through a warm robot


def _cli(*args: str, cwd: Any) -> float:
    """One ``casare-nb`` process, timed whole; raises when it fails."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [str(nbs.VENV_BIN / "casare-nb"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"casare-nb {args[0]} failed ({done.returncode}): {done.stderr[-1500:]}")
    return elapsed


def _processes(path: Any, work: Any, reps: int) -> tuple[list[float], list[float]]:
    """``casare-nb run`` (the re-run) against ``casare-nb resume``, each a whole process, as
    a user types them (issue 14's figure)."""
    rerun: list[float] = []
    resumed: list[float] = []
    for rep in range(reps):
        state = work / f"cli-{rep}"
        common_args = ["-q", "-p", "fail", "false", "--state-dir", str(state)]
        first = run_notebook(path, {"fail": True}, state_dir=state, cwd=work)
        order = ("rerun", "resume") if rep % 2 == 0 else ("resume", "rerun")
        for what in order:
            if what == "rerun":
                rerun.append(_cli("run", str(path), *common_args, cwd=work))
            else:
                resumed.append(_cli("resume", first.run_id, *common_args, cwd=work))
        shutil.rmtree(state, ignore_errors=True)
    return rerun, resumed


def _kernel_start_s() -> float:
    async def start_stop() -> float:
        t0 = time.perf_counter()
        session = await KernelSession.start("python3")
        elapsed = time.perf_counter() - t0
        await session.shutdown()
        return elapsed

    return asyncio.run(start_stop())


def _pooled(path: Any, work: Any, reps: int) -> tuple[list[float], list[float]]:
    """The same comparison in one long-lived process with a warm pool of one kernel, as a
    robot runs them: each call finds a kernel ready (the pool refills between calls)."""

    async def measure() -> tuple[list[float], list[float]]:
        rerun: list[float] = []
        resumed: list[float] = []
        async with KernelPool(size=1, cwd=work) as pool:
            for rep in range(reps):
                state = work / f"pooled-{rep}"
                await pool.wait_full()
                first = await arun_notebook(
                    path, {"fail": True}, state_dir=state, cwd=work, kernels=pool
                )
                order = ("rerun", "resume") if rep % 2 == 0 else ("resume", "rerun")
                for what in order:
                    await pool.wait_full()
                    t0 = time.perf_counter()
                    if what == "rerun":
                        result = await arun_notebook(
                            path, {"fail": False}, state_dir=state, cwd=work, kernels=pool
                        )
                        rerun.append(time.perf_counter() - t0)
                    else:
                        result = await aresume(
                            first.run_id, {"fail": False}, state_dir=state, cwd=work, kernels=pool
                        )
                        resumed.append(time.perf_counter() - t0)
                    if not result.ok:
                        raise RuntimeError(f"pooled {what}: {result.error_message}")
                shutil.rmtree(state, ignore_errors=True)
        return rerun, resumed

    return asyncio.run(measure())


def main(quick: bool = False) -> dict[str, Any]:
    reps = 3
    prefix = 3.0 if quick else 10.0
    rerun: list[float] = []
    resumed: list[float] = []
    failed_run: list[float] = []
    details: list[dict[str, Any]] = []
    with nbs.temp_dir("resume") as work:
        path = nbs.resume_prefix(work, prefix)
        for rep in range(reps):
            state = work / f"state-{rep}"
            print(f"  [resume] rep {rep + 1}/{reps}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            first = run_notebook(path, {"fail": True}, state_dir=state, cwd=work)
            failed_run.append(time.perf_counter() - t0)
            if first.ok or first.failed_cell_id != "b-07":
                raise RuntimeError(f"expected a failure at b-07, got {first.status.value}")
            order = ("rerun", "resume") if rep % 2 == 0 else ("resume", "rerun")
            for what in order:
                t0 = time.perf_counter()
                if what == "rerun":
                    result = run_notebook(path, {"fail": False}, state_dir=state, cwd=work)
                    rerun.append(time.perf_counter() - t0)
                else:
                    result = resume(first.run_id, {"fail": False}, state_dir=state, cwd=work)
                    resumed.append(time.perf_counter() - t0)
                    details.append(
                        {
                            "restore_mode": result.restore_mode.value
                            if result.restore_mode
                            else None,
                            "restored_from_cell": result.restored_from_cell,
                            "replayed_cells": result.replayed_cells,
                            "cells_run": len(result.cells),
                            "cell_sum_s": sum(c.duration_s for c in result.cells),
                        }
                    )
                    if result.restore_mode is not RestoreMode.NAMESPACE:
                        raise RuntimeError(f"resume did not restore the namespace: {details[-1]}")
                if not result.ok:
                    raise RuntimeError(f"{what}: {result.error_name}: {result.error_message}")
            shutil.rmtree(state, ignore_errors=True)
        print("  [resume] warm pool", file=sys.stderr, flush=True)
        pooled_rerun, pooled_resume = _pooled(path, work, reps)
        print("  [resume] casare-nb processes", file=sys.stderr, flush=True)
        cli_rerun, cli_resume = _processes(path, work, reps)
    cli_speedup = nbs.median(cli_rerun) / nbs.median(cli_resume)
    kernel_start = nbs.median([_kernel_start_s() for _ in range(reps)])
    pooled_speedup = nbs.median(pooled_rerun) / nbs.median(pooled_resume)
    med_rerun = nbs.median(rerun)
    med_resume = nbs.median(resumed)
    speedup = med_rerun / med_resume
    raw = {
        "prefix_s": prefix,
        "rerun_s": rerun,
        "resume_s": resumed,
        "failed_run_s": failed_run,
        "median_rerun_s": med_rerun,
        "median_resume_s": med_resume,
        "speedup": speedup,
        "kernel_start_s": kernel_start,
        "resume_details": details,
        "pooled_rerun_s": pooled_rerun,
        "pooled_resume_s": pooled_resume,
        "pooled_speedup": pooled_speedup,
        "cli_rerun_s": cli_rerun,
        "cli_resume_s": cli_resume,
        "cli_speedup": cli_speedup,
    }
    findings = []
    if speedup < TARGET:
        fixed = med_resume - nbs.median([d["cell_sum_s"] for d in details])
        findings.append(
            f"Resume is {common.ratio(speedup, 1)} cheaper than a re-run with a {prefix:g} s "
            f"prefix, short of 10x: its floor is a fixed ~{common.sec(fixed, 1)} per call "
            f"(kernel start {common.sec(kernel_start)} of it), so 10x needs a prefix of "
            f"about {10 * med_resume - (med_rerun - prefix):.0f} s or more (benchmark 3)."
        )
    return {
        "name": "resume_speedup",
        "title": f"3. Resume vs re-run ({prefix:g} s prefix)",
        "command": COMMAND,
        "runs": f"{reps} of each, order alternating, each after its own failed run",
        "columns": [
            "measure",
            "full re-run (median)",
            "resume (median)",
            "ratio re-run/resume",
            "resume: cells run / replayed",
        ],
        "rows": [
            [
                "wall clock, end to end",
                common.sec(med_rerun),
                common.sec(med_resume),
                common.ratio(speedup, 1),
                f"{details[0]['cells_run']} / {len(details[0]['replayed_cells'])}",
            ],
            [
                "`casare-nb run` vs `casare-nb resume`, whole processes",
                common.sec(nbs.median(cli_rerun)),
                common.sec(nbs.median(cli_resume)),
                common.ratio(cli_speedup, 1),
                f"{details[0]['cells_run']} / {len(details[0]['replayed_cells'])}",
            ],
            [
                "wall clock, warm kernel pool (one process)",
                common.sec(nbs.median(pooled_rerun)),
                common.sec(nbs.median(pooled_resume)),
                common.ratio(pooled_speedup, 1),
                f"{details[0]['cells_run']} / {len(details[0]['replayed_cells'])}",
            ],
        ],
        "targets": [
            common.target(
                "resume >= 10x cheaper than a re-run",
                f"{common.ratio(speedup, 1)} ({common.sec(med_resume)} vs {common.sec(med_rerun)})",
                speedup >= TARGET,
            ),
            common.target(
                "`casare-nb resume` >= 10x cheaper than `casare-nb run` (whole processes)",
                f"{common.ratio(cli_speedup, 1)} ({common.sec(nbs.median(cli_resume))} vs "
                f"{common.sec(nbs.median(cli_rerun))})",
                cli_speedup >= TARGET,
            ),
            common.target(
                f"resume >= {TARGET_POOLED:.0f}x cheaper than a re-run, warm kernel pool (the "
                "robot's path)",
                f"{common.ratio(pooled_speedup, 1)} ({common.sec(nbs.median(pooled_resume))} vs "
                f"{common.sec(nbs.median(pooled_rerun))})",
                pooled_speedup >= TARGET_POOLED,
            ),
        ],
        "notes": [
            f"Notebook: 5 cells of `time.sleep({prefix / 5:g})` building a dict each "
            f"({prefix:g} s prefix), the failing cell, 2 cells after it.",
            "Both are whole in-process calls: parameter validation, history, kernel start, "
            "(restore), the cells, kernel shutdown. Resume restores the namespace saved after "
            "the last good cell, so it runs the 3 remaining cells only.",
            f"Fixed cost: starting a kernel alone (`KernelSession.start`) takes "
            f"{common.sec(kernel_start)} (median), "
            f"{kernel_start / med_resume * 100:.0f} % of the resume; the resumed cells ran "
            f"{common.sec(nbs.median([d['cell_sum_s'] for d in details]), 3)}.",
            f"The failed first run took {common.sec(nbs.median(failed_run))} (median).",
        ],
        "findings": findings,
        "raw": raw,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main("--quick" in sys.argv), indent=1, default=str))
