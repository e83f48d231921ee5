"""Kernels forked from a zygote: fresh per job, signalled, reaped, and cold when it cannot."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from casare_nb.notebook.kernels import KernelSession, _reply
from casare_nb.notebook.pool import KernelPool
from casare_nb.notebook.zygote import Zygote, ZygoteError
from casare_nb.robot.config import ConfigError, load_config


async def run(session: KernelSession, code: str) -> tuple[str, dict[str, Any]]:
    """Execute ``code``; its stdout and its execute reply's content."""
    msg_id = session.kc.execute(code)
    out: list[str] = []
    while True:
        msg = await session.kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    reply = await _reply(session.kc, msg_id, 30)
    return "".join(out), reply["content"]


async def value(session: KernelSession, expression: str) -> Any:
    text, reply = await run(session, f"import json as _j\nprint(_j.dumps({expression}))")
    assert reply["status"] == "ok", reply
    return json.loads(text)


@pytest.fixture
async def zygote() -> AsyncIterator[Zygote]:
    z = Zygote().start()
    await asyncio.to_thread(z.wait_ready, 60)
    yield z
    await asyncio.to_thread(z.close)


async def asleep(pid: int, timeout: float = 30) -> None:
    """Wait until the main thread of ``pid`` sleeps in a timed sleep (its wait channel)."""
    wchan = Path(f"/proc/{pid}/task/{pid}/wchan")
    deadline = asyncio.get_running_loop().time() + timeout
    while "nanosleep" not in wchan.read_text():
        assert asyncio.get_running_loop().time() < deadline, f"never slept: {wchan.read_text()}"
        await asyncio.sleep(0.01)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_forked_kernels_are_fresh_children_of_the_zygote(zygote: Zygote) -> None:
    """Each kernel is a new child of the zygote: no variable of another, its own random."""
    first = await KernelSession.start(zygote=zygote)
    second = await KernelSession.start(zygote=zygote)
    try:
        await run(first, "leak = 1")
        assert await value(first, "'leak' in globals()") is True
        assert await value(second, "'leak' in globals()") is False
        a = await value(first, "[__import__('os').getppid(), __import__('random').random()]")
        b = await value(second, "[__import__('os').getppid(), __import__('random').random()]")
        assert a[0] == b[0] == zygote.pid
        assert a[1] != b[1]
        assert first.pid != second.pid and zygote.forked == 2
    finally:
        await first.shutdown()
        await second.shutdown()


async def test_forked_kernel_gets_the_environment_and_folder_of_its_spawn(
    zygote: Zygote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variable set after the zygote started, the asked cwd and '' on sys.path reach it."""
    monkeypatch.setenv("CASARE_ZYGOTE_PROBE", "after-start")
    session = await KernelSession.start(cwd=tmp_path, zygote=zygote)
    try:
        got = await value(
            session,
            "[__import__('os').environ.get('CASARE_ZYGOTE_PROBE'), __import__('os').getcwd(),"
            " '' in __import__('sys').path,"
            " __import__('os').getpgid(0) == __import__('os').getpid()]",
        )
        assert got == ["after-start", str(tmp_path), True, True]
    finally:
        await session.shutdown()


async def test_file_descriptor_output_of_a_forked_kernel_is_captured(
    zygote: Zygote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Output written straight to fd 1 (as a subprocess would) arrives as the cell's stream."""
    monkeypatch.delenv("PYTEST_CURRENT_TEST")  # ipykernel captures no fd under pytest
    session = await KernelSession.start(zygote=zygote)
    try:
        text, reply = await run(
            session, "import os, sys\nos.write(1, b'from-fd\\n')\nsys.stdout.flush()"
        )
        if "from-fd" not in text:  # fd capture is forwarded by a thread: ask once more
            text += (await run(session, "import time; time.sleep(0.2)"))[0]
        assert reply["status"] == "ok" and "from-fd" in text
    finally:
        await session.shutdown()


async def test_interrupt_reaches_a_forked_kernel(zygote: Zygote) -> None:
    """An interrupt stops a long cell of a forked kernel with KeyboardInterrupt."""
    session = await KernelSession.start(zygote=zygote)
    try:
        msg_id = session.kc.execute("import time\nprint('sleeping', flush=True)\ntime.sleep(60)")
        while True:  # the cell is running once it printed
            msg = await session.kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                break
        assert session.pid is not None
        await asleep(session.pid)  # past print's flush, which waits for the IOPub thread
        await session.interrupt()
        reply = await _reply(session.kc, msg_id, 30)
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
    finally:
        await session.shutdown()


async def test_a_kernel_forked_for_a_cancelled_start_is_killed(
    zygote: Zygote, tmp_path: Path
) -> None:
    """A spawn cancelled before the zygote answered leaves no kernel and the zygote serving."""
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", str(tmp_path / "k.json")]
    future = zygote.spawn(argv, None, None)
    assert future.cancel()  # at once: a fork takes milliseconds
    assert zygote.pid is not None
    parent = psutil.Process(zygote.pid)
    deadline = asyncio.get_running_loop().time() + 30
    while zygote.forked == 0 or [c for c in parent.children() if not gone(c.pid)]:
        assert asyncio.get_running_loop().time() < deadline, "the forked kernel lives on"
        await asyncio.sleep(0.02)
    session = await KernelSession.start(zygote=zygote)  # the reader thread still serves
    try:
        assert (await value(session, "1 + 1")) == 2
    finally:
        await session.shutdown()


async def test_shutdown_kills_and_reaps_a_forked_kernel(zygote: Zygote) -> None:
    """After shutdown the kernel process is gone and its exit status came from the zygote."""
    session = await KernelSession.start(zygote=zygote)
    pid = session.pid
    process = session.km.provisioner.process  # type: ignore[union-attr]
    assert pid is not None and not gone(pid)
    await session.shutdown()
    assert process.returncode == -signal.SIGKILL
    assert gone(pid)


async def test_a_dead_zygote_takes_its_kernels_and_kernels_start_cold() -> None:
    """SIGKILL of the zygote ends its kernels; the next kernel starts cold, as our child."""
    z = Zygote().start()
    await asyncio.to_thread(z.wait_ready, 60)
    session = await KernelSession.start(zygote=z)
    process = session.km.provisioner.process  # type: ignore[union-attr]
    assert z.pid is not None
    os.kill(z.pid, signal.SIGKILL)
    assert await asyncio.to_thread(process.wait, 30) == -signal.SIGKILL
    assert not z.alive
    cold = await KernelSession.start(zygote=z)
    try:
        assert await value(cold, "__import__('os').getppid()") == os.getpid()
    finally:
        await cold.shutdown()
        await session.shutdown()
        z.close()


def test_a_gone_owner_takes_the_zygote_and_its_kernels(tmp_path: Path) -> None:
    """When the process owning the zygote dies, the zygote and its kernels exit."""
    script = (
        "import asyncio, json, os\n"
        "from casare_nb.notebook.kernels import KernelSession\n"
        "from casare_nb.notebook.zygote import Zygote\n"
        "async def main():\n"
        "    z = Zygote().start(); z.wait_ready(60)\n"
        "    s = await KernelSession.start(zygote=z)\n"
        "    print(json.dumps([z.pid, s.pid]), flush=True)\n"
        "    os._exit(0)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    pids = json.loads(done.stdout.strip().splitlines()[-1])
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive


def test_only_this_pythons_ipykernel_is_served() -> None:
    """The zygote forks `<its python> -m ipykernel_launcher` and nothing else."""
    z = Zygote()
    assert z.serves([sys.executable, "-m", "ipykernel_launcher", "-f", "c.json"])
    assert not z.serves([sys.executable, "-m", "other_kernel", "-f", "c.json"])
    assert not z.serves(["/nonexistent/python", "-m", "ipykernel_launcher", "-f", "c.json"])
    assert not z.serves(["R", "--slave", "-e", "IRkernel::main()"])


async def test_a_failed_preload_is_reported_and_the_zygote_still_forks() -> None:
    """A preload that cannot be imported is named in errors; kernels still fork."""
    z = Zygote(["casare_no_such_module"]).start()
    try:
        await asyncio.to_thread(z.wait_ready, 60)
        assert "casare_no_such_module" in z.errors
        assert "ModuleNotFoundError" in z.errors["casare_no_such_module"]
        session = await KernelSession.start(zygote=z)
        try:
            assert await value(session, "__import__('os').getppid()") == z.pid
        finally:
            await session.shutdown()
    finally:
        z.close()


async def test_preloaded_numpy_is_loaded_and_reseeded_in_each_kernel() -> None:
    """With numpy preloaded, kernels have it imported and draw different random numbers."""
    z = Zygote(["numpy"]).start()
    sessions: list[KernelSession] = []
    try:
        await asyncio.to_thread(z.wait_ready, 60)
        for _ in range(2):
            sessions.append(await KernelSession.start(zygote=z))
        probe = "['numpy' in __import__('sys').modules, __import__('numpy').random.random()]"
        a, b = [await value(s, probe) for s in sessions]
        assert a[0] is True and a[1] != b[1]
    finally:
        for s in sessions:
            await s.shutdown()
        z.close()


async def test_spawn_on_a_closed_zygote_fails_with_a_clear_error() -> None:
    """Asking a closed zygote for a kernel raises ZygoteError instead of hanging."""
    z = Zygote().start()
    await asyncio.to_thread(z.wait_ready, 60)
    z.close()
    with pytest.raises(ZygoteError, match="not running"):
        z.spawn([sys.executable, "-m", "ipykernel_launcher"], None, None).result(5)


async def test_the_pool_forks_from_the_zygote_unless_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pool's kernels are the zygote's children; CASARE_KERNEL_ZYGOTE=0 starts them cold."""
    async with KernelPool(size=1) as pool:
        assert pool.zygote is not None
        session = await pool.acquire()
        assert await value(session, "__import__('os').getppid()") == pool.zygote.pid
        pool.release(session)
    monkeypatch.setenv("CASARE_KERNEL_ZYGOTE", "0")
    async with KernelPool(size=1) as pool:
        assert pool.zygote is None
        session = await pool.acquire()
        assert await value(session, "__import__('os').getppid()") == os.getpid()
        pool.release(session)


def test_robot_config_takes_the_zygote_switch_and_preloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kernel_zygote and kernel_preload come from the environment; a bad module name is refused."""
    monkeypatch.setenv("CASARE_ROBOT_ID", "r1")
    monkeypatch.setenv("CASARE_KERNEL_ZYGOTE", "false")
    monkeypatch.setenv("CASARE_KERNEL_PRELOAD", "pandas, numpy")
    monkeypatch.chdir(tmp_path)
    config = load_config()
    assert config.robot.kernel_zygote is False
    assert config.robot.kernel_preload == ["pandas", "numpy"]
    monkeypatch.setenv("CASARE_KERNEL_PRELOAD", "pandas; rm -rf /")
    with pytest.raises(ConfigError, match="kernel_preload") as caught:
        load_config()
    assert "\n" not in str(caught.value)


async def test_a_kernelspec_with_more_options_is_forked_with_them(
    zygote: Zygote, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Options after `-f FILE` in the kernelspec reach the forked kernel's configuration."""
    spec = tmp_path / "jupyter" / "kernels" / "nohist"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    argv.append("--HistoryManager.enabled=False")
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "nohist", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    session = await KernelSession.start("nohist", zygote=zygote)
    try:
        got = await value(
            session,
            "[__import__('os').getppid(), get_ipython().history_manager.enabled]",
        )
        assert got == [zygote.pid, False]
    finally:
        await session.shutdown()
