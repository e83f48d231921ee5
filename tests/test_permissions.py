"""State is private: the state directory is 0700 and what casare_nb writes in it (the
DuckDB file, blobs of pickled variables, manifests, output notebooks) is 0600, with the
usual umask 022; an existing state directory open to others is narrowed."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_cli, served, state_dir, write_notebook

from casare_nb.core.models import RunStatus


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _open_to_others(root: Path) -> list[str]:
    """Files under ``root`` (and ``root`` itself) that group or others may read."""
    found = []
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        if path.is_file() and mode & 0o077:
            found.append(f"{path.relative_to(root)} {oct(mode)}")
        if path == root and mode & 0o077:
            found.append(f". {oct(mode)}")
    return found


def test_an_orchestrators_state_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """After a job ran through an orchestrator and robot, nothing in the state directory
    (history.duckdb, blobs, manifests, notebooks) is open to group or others."""
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    write_notebook(workflows / "w.ipynb", ["data = list(range(100))", "total = sum(data)"])
    state = tmp_path / "state"
    with served(state, workflows, "robot-p") as cluster, cluster.client() as client:
        assert client.submit("w.ipynb", wait=True, timeout=90).status is RunStatus.COMPLETED
    assert list(state.glob("blobs/*/*")), "the run stored no blob: nothing was checked"
    assert list(state.glob("runs/*/*/output.ipynb"))
    assert _open_to_others(state) == []


def test_a_local_run_and_an_existing_open_state_directory_are_made_private(
    tmp_path: Path,
) -> None:
    """casare-nb run narrows a 0755 state directory to 0700 and writes its files 0600."""
    write_notebook(tmp_path / "w.ipynb", ["x = 1"])
    state = state_dir(tmp_path)
    state.mkdir(mode=0o755)
    done = run_cli(tmp_path, "run", "w.ipynb")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert _open_to_others(state) == []
