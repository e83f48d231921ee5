"""The warm kernel pool: kernels ready before jobs ask, one job each, replaced behind."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import psutil
import pytest
from helpers import Workspace, outputs_text, replace_cell

from casare_nb.core.models import RunStatus
from casare_nb.notebook.kernels import KernelSession
from casare_nb.notebook.pool import KernelPool


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): read its state
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


async def test_acquire_hands_out_a_ready_kernel_and_starts_a_replacement() -> None:
    """A job gets an already started, prepared kernel; the pool refills behind it."""
    async with KernelPool(size=2) as pool:
        assert pool.ready == 2 and pool.stats.started == 2
        session = await pool.acquire()
        assert session.checkpoint_ready and await session.is_alive()
        assert pool.stats.warm == 1 and pool.stats.cold == 0
        await pool.wait_full()
        assert pool.ready == 2 and pool.stats.started == 3
        pool.release(session)


async def test_each_kernel_serves_one_job(ws: Workspace) -> None:
    """Two runs through the pool run in two different kernel processes; used ones stop."""
    nb = ws.notebook(["import os\nprint(os.getpid())"])
    async with KernelPool(size=1) as pool:
        first = await ws.run(nb, kernels=pool)
        await pool.wait_full()
        second = await ws.run(nb, kernels=pool)
        assert first.status is second.status is RunStatus.COMPLETED
        pids = [int(outputs_text(r.output_path, "c0")) for r in (first, second)]
        assert pids[0] != pids[1]
        await pool.close()
        assert not any(alive(pid) for pid in pids)
        assert pool.stats.warm == 2


async def test_pooled_run_checkpoints_and_resumes(ws: Workspace) -> None:
    """A run and its resume on pooled kernels checkpoint, restore and use the job's cwd."""
    nb = ws.notebook(
        ["import os\nhere = os.getcwd()\nx = 41", "assert x == 42", "print(here, x + 1)"]
    )
    async with KernelPool(size=1, cwd="/") as pool:
        first = await ws.run(nb, kernels=pool)
        assert first.status is RunStatus.FAILED
        replace_cell(nb, "c1", "x += 1")
        second = await ws.resume(first.run_id, kernels=pool)
        assert second.status is RunStatus.COMPLETED
        assert outputs_text(second.output_path, "c2") == f"{ws.root} 43\n"
        assert second.restored_from_cell is not None


async def test_dead_warm_kernel_is_not_handed_out() -> None:
    """A warm kernel that died while waiting is discarded; the job gets a live one."""
    async with KernelPool(size=2) as pool:
        victim = pool._ready._queue[0]  # type: ignore[attr-defined]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        victim.km.provisioner.process.wait()
        session = await pool.acquire()
        assert await session.is_alive() and session.pid != victim.pid
        assert pool.stats.discarded == 1
        pool.release(session)


async def test_other_kernelspec_and_empty_pool_start_cold() -> None:
    """A job for another kernelspec, or beyond the pool's stock, starts its own kernel."""
    async with KernelPool(size=1) as pool:
        warm = await pool.acquire()
        extra = await pool.acquire()  # stock is empty: the replacement is still starting
        assert pool.stats.warm == 1 and pool.stats.cold == 1
        assert await extra.is_alive() and extra.pid != warm.pid
        for session in (warm, extra):
            pool.release(session)
        with pytest.raises(Exception, match="no-such-kernel"):
            await pool.acquire("no-such-kernel")
        assert pool.stats.cold == 2


async def test_close_stops_every_kernel() -> None:
    """Closing the pool shuts its kernels down and refuses further jobs."""
    pool = await KernelPool(size=2).start()
    pids = [s.pid for s in list(pool._ready._queue)]  # type: ignore[attr-defined]
    assert all(alive(pid) for pid in pids)
    await pool.close()
    assert not any(alive(pid) for pid in pids)
    with pytest.raises(RuntimeError, match="closed"):
        await pool.acquire()


def _kernels() -> list[psutil.Process]:
    return [
        p
        for p in psutil.Process().children()
        if "ipykernel_launcher" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE
    ]


async def test_a_start_cancelled_once_the_process_runs_leaves_no_kernel() -> None:
    """Cancelling KernelSession.start after its kernel process exists kills that process."""
    before = {p.pid for p in _kernels()}
    start = asyncio.ensure_future(KernelSession.start())
    while not {p.pid for p in _kernels()} - before and not start.done():
        await asyncio.sleep(0.005)  # polling for the child: no event tells its spawn
    (new,) = [p for p in _kernels() if p.pid not in before]
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    _, alive = await asyncio.to_thread(psutil.wait_procs, [new], 10)
    assert not alive


def test_pool_size_must_be_positive() -> None:
    """A pool of no kernels is refused with a clear error."""
    with pytest.raises(ValueError, match="at least 1, got 0"):
        KernelPool(size=0)
