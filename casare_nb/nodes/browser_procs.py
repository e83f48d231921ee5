"""The processes and profile folders of the browser nodes' Chromium (psutil only, no
Playwright): what a session launched is remembered until it is known to be gone, closing
waits for it and kills what lingers, and the profile folders Playwright's driver leaves when
it is killed are removed (now, or by a later launch when this process was killed first).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import psutil

__all__ = [
    "REAP_TIMEOUT_S",
    "alive",
    "descendants",
    "expand",
    "is_driver",
    "kill",
    "kill_all",
    "mark",
    "profile_of",
    "reap",
    "remember",
    "sweep_orphans",
]

REAP_TIMEOUT_S: Final = 5.0
"""How long closing waits for Chromium's processes to exit before killing them."""


@dataclass
class _Owned:
    """What is left to clean of a session: its profile folder, its processes (by pid)."""

    profile: str | None
    driver: set[int]
    procs: dict[int, psutil.Process] = field(default_factory=dict)


_owned: dict[int, _Owned] = {}
"""The sessions (by key) whose processes are not known to be gone."""


def remember(
    key: int, profile: str | None, driver: Iterable[psutil.Process], procs: list[psutil.Process]
) -> list[psutil.Process]:
    """Every process of session ``key`` now (``procs`` and their children), remembered until
    it is known to be gone, with its profile folder and its driver's pids."""
    found = expand(procs)
    owned = _owned.setdefault(key, _Owned(profile, {p.pid for p in driver}))
    owned.procs.update({p.pid: p for p in found})
    return found


def kill_all() -> None:
    """Kill every remembered process (at the interpreter's exit)."""
    kill([p for owned in _owned.values() for p in owned.procs.values()])


def descendants() -> dict[int, psutil.Process]:
    try:
        return {p.pid: p for p in psutil.Process().children(recursive=True)}
    except psutil.Error:
        return {}


def alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def expand(procs: list[psutil.Process]) -> list[psutil.Process]:
    """``procs`` and the children they have now (renderers start after the launch)."""
    found = {p.pid: p for p in procs}
    for proc in procs:
        if alive(proc):
            with contextlib.suppress(psutil.Error):
                for child in proc.children(recursive=True):
                    found.setdefault(child.pid, child)
    return list(found.values())


def sweep() -> None:
    """Forget the sessions whose processes are all gone, removing their profile folders
    (Playwright's driver does not when it is killed)."""
    for key, owned in list(_owned.items()):
        living = {pid for pid, p in owned.procs.items() if alive(p)}
        if owned.profile and not living - owned.driver:
            shutil.rmtree(owned.profile, ignore_errors=True)
            unmark(owned.profile)
            owned.profile = None
        if not living:
            del _owned[key]


def reap(procs: list[psutil.Process], timeout_s: float = REAP_TIMEOUT_S) -> None:
    """Wait up to ``timeout_s`` for ``procs`` to exit, kill the ones left, and remove the
    profile folders of sessions that are wholly gone."""
    procs = [p for p in procs if alive(p)]
    if procs:
        _, left = psutil.wait_procs(procs, timeout=timeout_s)
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(left, timeout=2)
    sweep()


def kill(procs: list[psutil.Process]) -> None:
    """Kill ``procs`` now (a session that failed or whose loop is gone)."""
    procs = [p for p in procs if alive(p)]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    reap(procs, timeout_s=2)


def profile_of(procs: list[psutil.Process]) -> str | None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            for arg in proc.cmdline():
                if arg.startswith("--user-data-dir="):
                    return str(arg).split("=", 1)[1]
    return None


def markers() -> Path | None:
    """The folder recording the profile folders of the browsers this user launched; None
    when it cannot be used safely (not ours, writable by others)."""
    folder = Path(tempfile.gettempdir()) / f"casare-browser-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        return None
    return folder


def owner_tag(proc: psutil.Process) -> str:
    return f"{proc.pid}-{int(proc.create_time() * 1000)}"


def mark(profile: str) -> None:
    """Record ``profile`` as this process's, so a later launch removes it if this process
    is killed before it could (an engine kills its kernels)."""
    folder = markers()
    if folder is not None:
        with contextlib.suppress(OSError, psutil.Error):
            (folder / f"{owner_tag(psutil.Process())}-{Path(profile).name}").write_text(profile)


def unmark(profile: str) -> None:
    folder = markers()
    if folder is not None:
        for marker in folder.glob(f"*-{Path(profile).name}"):
            marker.unlink(missing_ok=True)


def sweep_orphans() -> None:
    """Remove the profile folders left by browsers whose launching process is gone and
    that no process uses any more."""
    folder = markers()
    if folder is None:
        return
    orphans: dict[Path, str] = {}
    for marker in folder.glob("*-*-playwright_*"):
        pid, started, _ = marker.name.split("-", 2)
        with contextlib.suppress(psutil.Error, ValueError):
            if owner_tag(psutil.Process(int(pid))) == f"{pid}-{started}":
                continue  # its process runs: it is that process's to remove
        with contextlib.suppress(OSError):
            profile = marker.read_text().strip()
            if Path(profile).name.startswith("playwright_") and Path(profile).is_absolute():
                orphans[marker] = profile
    if not orphans:
        return
    in_use = set()
    for proc in psutil.process_iter(["cmdline"]):
        for arg in proc.info.get("cmdline") or ():
            if arg.startswith("--user-data-dir="):
                in_use.add(arg.split("=", 1)[1])
    for marker, profile in orphans.items():
        if profile not in in_use:
            shutil.rmtree(profile, ignore_errors=True)
            marker.unlink(missing_ok=True)


def is_driver(proc: psutil.Process) -> bool:
    """Whether ``proc`` is a Playwright driver this process started."""
    try:
        return bool(proc.ppid() == os.getpid() and "run-driver" in proc.cmdline())
    except psutil.Error:
        return False
