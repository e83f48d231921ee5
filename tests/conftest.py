"""Shared fixtures: a workspace per test, a kernel of another language; the cluster and store
backends come as plugins. Helpers to import are in helpers.py."""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import sys
import threading
from pathlib import Path

import pytest
from helpers import Workspace

pytest_plugins = ["stores", "postgres", "cluster"]  # orchestrator + robots; store backends


# how long the test process may take to exit once the run is over
EXIT_GRACE_S = float(os.environ.get("CASARE_TEST_EXIT_GRACE_S", "120"))
_exit_status = [0]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A test process still alive EXIT_GRACE_S after the run (a thread or child that will not
    end, or pytest's own unconfigure blocked: a leaked kernel's ZeroMQ context collected by
    the unraisable-exception plugin's gc once hung there) prints every thread's stack and its
    children, then exits with the run's status: CI reports the culprit instead of waiting for
    its timeout. The guard starts here, before any plugin's unconfigure."""
    from casare_nb.notebook.zygote import close_shared_zygotes

    _exit_status[0] = int(exitstatus)
    close_shared_zygotes()

    def guard() -> None:
        threading.Event().wait(EXIT_GRACE_S)
        err = sys.__stderr__ or sys.stderr
        print(f"\nthe test process did not exit within {EXIT_GRACE_S:.0f} s:", file=err)
        for thread in threading.enumerate():
            print(f"  thread {thread.name} (daemon={thread.daemon})", file=err)
        pid = os.getpid()
        with contextlib.suppress(OSError):
            for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
                print(f"  child {child}: {cmdline.decode(errors='replace')[:200]}", file=err)
        faulthandler.dump_traceback(file=err, all_threads=True)
        err.flush()
        os._exit(_exit_status[0])  # the tests' verdict; the dump above names the leak

    threading.Thread(target=guard, name="casare-exit-guard", daemon=True).start()


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


@pytest.fixture
def other_language_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec whose kernel reports a language other than Python (it runs ipykernel)."""
    home = tmp_path / "jupyter"
    spec = home / "kernels" / "casare-test"
    spec.mkdir(parents=True)
    (home / "otherlang.py").write_text(
        "from ipykernel.ipkernel import IPythonKernel\n"
        "from ipykernel.kernelapp import IPKernelApp\n"
        "class OtherKernel(IPythonKernel):\n"
        "    language_info = {**IPythonKernel.language_info, 'name': 'casare-test'}\n"
        "IPKernelApp.launch_instance(kernel_class=OtherKernel)\n"
    )
    argv = [sys.executable, str(home / "otherlang.py"), "-f", "{connection_file}"]
    kernel_json = {"argv": argv, "display_name": "other", "language": "casare-test"}
    (spec / "kernel.json").write_text(json.dumps(kernel_json))
    monkeypatch.setenv("JUPYTER_PATH", str(home))
    return "casare-test"
