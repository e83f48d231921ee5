"""Shared fixtures: a workspace per test, a kernel of another language; the cluster and store
backends come as plugins. Helpers to import are in helpers.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import Workspace

pytest_plugins = ["cluster", "stores"]  # an orchestrator with robots; the store backends


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
