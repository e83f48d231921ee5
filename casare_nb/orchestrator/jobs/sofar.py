"""The notebook-so-far of each running attempt: kept in memory, written behind.

A robot reports every executed cell (``job_progress.cell``); the orchestrator keeps the
attempt's notebook so far (the notebook it sent, or the one a resume started from, each
reported cell replacing the cell with its id) so that any robot can resume the attempt when
its robot is lost. It is kept in memory while the attempt runs, and written to the attempt's
``output.ipynb`` (where its final output notebook goes too) only:

- when a robot's heartbeat is acknowledged: :meth:`NotebooksSoFar.write` writes the
  notebooks of that robot's attempts changed since (in a thread of its own, in order), and
  the ``heartbeat_ack`` waits for them like for the database (the robot forgets the cells an
  ack covers, so an orchestrator killed after it still has them);
- when the attempt ends without an output notebook of its own: lost with its robot (the
  resume reads it next), failed or cancelled without one, or released before it ran
  (:meth:`~NotebooksSoFar.finish`, at once);
- when the orchestrator stops;
- when a resume starts it (the cells carried from the attempt it resumes).

An attempt that ends with its output notebook drops it unwritten (:meth:`~NotebooksSoFar.drop`):
that notebook takes its place. Memory holds the running attempts only; a cell costs a list
assignment, not a rewrite of the file.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from casare_nb.notebook.state import AttemptPaths, write_json_atomic

__all__ = ["NotebooksSoFar"]

logger = logging.getLogger("casare_nb.orchestrator.jobs")

Key = tuple[str, int]
"""(job id, attempt)."""


@dataclass(eq=False)
class _SoFar:
    """One attempt's notebook so far. ``notebook`` has its own top-level dict and cell
    list; cells are replaced, never changed, so a shallow copy is a snapshot."""

    robot_id: str | None
    paths: AttemptPaths
    notebook: dict[str, Any]
    positions: dict[Any, int]  # cell id -> its index (the first cell with that id)
    version: int = 0  # changes made (each recorded cell)
    written: int = 0  # the version on disk (guarded by lock)
    closed: bool = False  # dropped or finished: never written again (guarded by lock)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def of(cls, robot_id: str | None, paths: AttemptPaths, notebook: Any) -> _SoFar | None:
        if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
            return None
        cells = list(notebook["cells"])
        positions: dict[Any, int] = {}
        for i, cell in enumerate(cells):
            if isinstance(cell, dict):
                with contextlib.suppress(TypeError):  # an id that cannot be a key
                    positions.setdefault(cell.get("id"), i)
        return cls(robot_id, paths, {**notebook, "cells": cells}, positions)

    def snapshot(self) -> dict[str, Any]:
        return {**self.notebook, "cells": list(self.notebook["cells"])}

    def write(self, snapshot: dict[str, Any], version: int) -> None:
        """Write ``snapshot`` (taken at ``version``) unless the attempt is closed or a newer
        one is on disk (blocking); OSError if it cannot be written."""
        with self.lock:
            if self.closed or version <= self.written:
                return
            self.paths.root.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.paths.output, snapshot, compact=True)
            self.written = version


class NotebooksSoFar:
    """The running attempts' notebooks so far; see the module docstring. Everything but the
    file writes runs on the event loop's thread."""

    def __init__(self, paths: Callable[[str, int], AttemptPaths]) -> None:
        self._paths = paths
        self._kept: dict[Key, _SoFar] = {}
        self._files = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="casare-sofar")
        self._issued = 0  # writes handed to the thread
        self._futures: dict[int, concurrent.futures.Future[None]] = {}  # number -> pending
        self._lock = threading.Lock()  # guards _futures and _done
        self._done = 0  # writes the thread finished (in order)

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, key: object) -> bool:
        return key in self._kept

    # -- cells ---------------------------------------------------------------------------

    def start(self, key: Key, robot_id: str | None, notebook: dict[str, Any]) -> None:
        """Begin ``key``'s notebook so far with ``notebook`` and write it now (a resume:
        the cells it carries); OSError if it cannot be written."""
        self._close(self._kept.pop(key, None))
        entry = _SoFar.of(robot_id, self._paths(*key), notebook)
        if entry is None:
            raise ValueError(f"job {key[0]} attempt {key[1]}: not a notebook")
        entry.version = 1
        entry.write(entry.snapshot(), 1)
        self._kept[key] = entry

    def record(
        self,
        key: Key,
        cell: dict[str, Any],
        *,
        robot_id: str | None,
        base: dict[str, Any] | None,
    ) -> None:
        """An executed cell replaces the cell with the same id in ``key``'s notebook so far,
        which starts as ``base`` (the notebook sent) or, without one (an attempt this process
        did not send: it continues after a restart), as the one on disk; unknown ids are
        ignored. Nothing is written now."""
        entry = self._kept.get(key)
        if entry is None:
            entry = self._load(key, robot_id, base)
            if entry is None:
                return
            self._kept[key] = entry
        try:
            position = entry.positions.get(cell.get("id"))
        except TypeError:
            return
        if position is None:
            return
        entry.notebook["cells"][position] = cell
        entry.version += 1

    def _load(self, key: Key, robot_id: str | None, base: dict[str, Any] | None) -> _SoFar | None:
        paths = self._paths(*key)
        if base is not None:
            return _SoFar.of(robot_id, paths, base)
        try:
            stored = json.loads(paths.output.read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return _SoFar.of(robot_id, paths, stored)

    def get(self, key: Key) -> dict[str, Any] | None:
        """A copy of ``key``'s notebook so far as kept in memory (its cells shared: do not
        change them), or None when it is not kept here."""
        entry = self._kept.get(key)
        return None if entry is None else entry.snapshot()

    # -- writes --------------------------------------------------------------------------

    def write(self, robot_id: str | None = None) -> int:
        """Write the notebooks changed since their last write (of ``robot_id``'s attempts;
        None: all) in the file thread; the mark that :meth:`reached` says they are written
        (with those handed over before)."""
        for entry in self._entries(robot_id):
            if entry.version > entry.written:
                self._issue(entry)
        return self._issued

    def _entries(self, robot_id: str | None) -> Iterable[_SoFar]:
        if robot_id is None:
            return list(self._kept.values())
        return [e for e in self._kept.values() if e.robot_id == robot_id]

    def _issue(self, entry: _SoFar) -> None:
        snapshot, version = entry.snapshot(), entry.version
        self._issued += 1
        number = self._issued

        def task() -> None:
            try:
                entry.write(snapshot, version)
            except OSError as exc:
                logger.warning("cannot write the notebook so far %s: %s", entry.paths.output, exc)
            finally:
                with self._lock:
                    self._done = number
                    self._futures.pop(number, None)

        with self._lock:
            self._futures[number] = self._files.submit(task)

    def reached(self, mark: int) -> bool:
        """Whether the writes handed over up to ``mark`` are done."""
        with self._lock:
            return self._done >= mark

    async def written(self, mark: int) -> None:
        """Return once the writes handed over up to ``mark`` are done."""
        with self._lock:
            if self._done >= mark:
                return
            # the thread runs them in order: the last one up to mark is enough
            number = max(n for n in self._futures if n <= mark)
            future = self._futures[number]
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(future)

    # -- the end of an attempt -----------------------------------------------------------

    def drop(self, key: Key) -> None:
        """``key`` ended with an output notebook of its own: forget its notebook so far,
        never to write it again (a write under way ends first)."""
        self._close(self._kept.pop(key, None))

    def finish(self, key: Key) -> None:
        """``key`` ended without an output notebook of its own (lost, failed or cancelled
        without one, released): write its notebook so far now if it changed, then forget
        it (blocking: one file)."""
        entry = self._kept.pop(key, None)
        if entry is None:
            return
        try:
            entry.write(entry.snapshot(), entry.version)
        except OSError as exc:
            logger.warning("cannot write the notebook so far %s: %s", entry.paths.output, exc)
        self._close(entry)

    def _close(self, entry: _SoFar | None) -> None:
        if entry is not None:
            with entry.lock:
                entry.closed = True

    def close(self) -> None:
        """Write every notebook so far that changed, forget them and stop the file thread
        (the orchestrator stops; blocking)."""
        for key in list(self._kept):
            self.finish(key)
        self._files.shutdown(wait=True)
