"""File-watch triggers: a workflow submitted for each new file in a directory.

The one module importing watchdog. Each enabled ``file_watch`` trigger watches its
``watch_path`` (not its subdirectories) for files whose name matches its fnmatch
``pattern``; each such file submits the trigger's workflow with the file's absolute path as
the parameter ``file_parameter`` (``file_path`` by default, given as a raw string).

A file counts once it is complete: on Linux (inotify) when a writer closes it after writing
(``IN_CLOSE_WRITE``) or when it is moved or renamed into the directory, so a file still
being written is not submitted half-way. Elsewhere (no close events) a file counts once it
appears. Each file is claimed (``TriggerStore.claim_file``) before its job is submitted:
a file is submitted once, across restarts too. At start, and when a trigger is added, the
files already in the directory that match and were never handled are submitted (they
arrived while nothing watched); a file still being written then may be taken early.

watchdog calls back on its own threads; events are handed to the event loop
(``call_soon_threadsafe``) and every decision is taken there.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch

from casare_nb.core.errors import CasareError
from casare_nb.core.ids import new_run_id
from casare_nb.core.models import TriggerKind, TriggerRef
from casare_nb.core.triggers import Trigger, TriggerError
from casare_nb.orchestrator.triggers.desk import JobDesk
from casare_nb.store.interfaces import TriggerStore

__all__ = ["FileWatcher", "check"]

logger = logging.getLogger("casare_nb.orchestrator.triggers.watch")

_JOIN_TIMEOUT_S: Final = 10.0
_STOP_TIMEOUT_S: Final = 30.0


def check(trigger: Trigger) -> None:
    """Raise :class:`TriggerError` if ``trigger`` cannot be watched: no ``watch_path``, or
    one that is not a directory."""
    if not trigger.watch_path:
        raise TriggerError("a file-watch trigger needs --path: the directory to watch")
    if not os.path.isdir(trigger.watch_path):
        raise TriggerError(f"--path {trigger.watch_path} is not a directory")


class _Handler(FileSystemEventHandler):
    """Hands the path of each complete file to ``arrived`` on the event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        arrived: Callable[[str], None],
        *,
        close_events: bool,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._arrived = arrived
        self._close_events = close_events

    def dispatch(self, event: FileSystemEvent) -> None:  # watchdog's thread
        if event.is_directory:
            return
        if isinstance(event, FileMovedEvent):
            path = event.dest_path  # empty: moved out of the directory
        elif isinstance(event, FileClosedEvent) or (
            not self._close_events and isinstance(event, FileCreatedEvent)
        ):
            path = event.src_path
        else:
            return
        if path:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._arrived, os.fsdecode(path))


@dataclass
class _Directory:
    watch: ObservedWatch
    trigger_ids: set[str] = field(default_factory=set)


def _new_observer() -> tuple[BaseObserver, bool]:
    """A started-to-be observer, and whether it reports close-after-write events."""
    if sys.platform.startswith("linux"):
        try:
            from watchdog.observers.inotify import InotifyObserver

            # full events: a file moved in from elsewhere is a move, not a creation
            return InotifyObserver(generate_full_events=True), True
        except OSError as exc:  # e.g. no inotify instance left
            logger.warning("cannot use inotify (%s): files count once they appear", exc)
    return Observer(), False


class FileWatcher:
    """Watches the directories of the enabled file-watch triggers; see the module docstring.

    :meth:`start` watches those stored; the caller then tells it of changes with
    :meth:`add` (a new, changed or enabled trigger) and :meth:`remove`."""

    def __init__(self, jobs: JobDesk, store: TriggerStore) -> None:
        self.jobs = jobs
        self.store = store
        self._observer: BaseObserver | None = None
        self._close_events = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._triggers: dict[str, Trigger] = {}  # trigger id -> trigger
        self._directories: dict[str, _Directory] = {}  # absolute path -> its watch
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def watched(self) -> dict[str, str]:
        """Trigger id -> the directory it watches."""
        return {tid: path for path, entry in self._directories.items() for tid in entry.trigger_ids}

    async def start(self) -> None:
        """Watch every enabled file-watch trigger stored (one that cannot be watched is
        logged and skipped) and submit the files that arrived while nothing watched."""
        if self._observer is not None:
            return
        self._loop = asyncio.get_running_loop()
        observer, self._close_events = _new_observer()
        await asyncio.to_thread(observer.start)
        self._observer = observer
        triggers = await asyncio.to_thread(self.store.triggers, TriggerKind.FILE_WATCH)
        for trigger in triggers:
            if not trigger.enabled:
                continue
            try:
                await self.add(trigger)
            except (TriggerError, OSError) as exc:
                logger.error("file-watch trigger %s is not watched: %s", trigger.trigger_id, exc)

    async def stop(self) -> None:
        """Stop watching, once the files already seen are submitted; idempotent."""
        observer, self._observer = self._observer, None
        async with self._lock:
            self._triggers.clear()
            self._directories.clear()
        if observer is not None:
            await asyncio.to_thread(_stop_observer, observer)
        if self._tasks:
            try:
                async with asyncio.timeout(_STOP_TIMEOUT_S):
                    await asyncio.gather(*self._tasks, return_exceptions=True)
            except TimeoutError:
                logger.error("file submissions did not finish in %g s", _STOP_TIMEOUT_S)
                for task in self._tasks:
                    task.cancel()

    async def add(self, trigger: Trigger) -> None:
        """Watch ``trigger``'s directory (in place of its earlier version, if watched; a
        disabled trigger is only unwatched) and submit the matching files already there.
        Raises :class:`TriggerError` if it cannot be watched (see :func:`check`)."""
        if trigger.kind is not TriggerKind.FILE_WATCH:
            raise TriggerError(f"trigger {trigger.trigger_id} is not a file-watch trigger")
        await self.remove(trigger.trigger_id)
        if not trigger.enabled:
            return
        check(trigger)
        assert trigger.watch_path is not None
        directory = os.path.abspath(trigger.watch_path)
        async with self._lock:
            observer, loop = self._observer, self._loop
            if observer is None or loop is None:
                raise RuntimeError("the file watcher is not started: start() it first")
            entry = self._directories.get(directory)
            if entry is None:
                handler = _Handler(loop, self._arrived, close_events=self._close_events)
                events: list[type[FileSystemEvent]] = [FileMovedEvent]
                events.append(FileClosedEvent if self._close_events else FileCreatedEvent)
                try:
                    watch = await asyncio.to_thread(
                        observer.schedule, handler, directory, recursive=False, event_filter=events
                    )
                except OSError as exc:
                    raise TriggerError(f"cannot watch {trigger.watch_path}: {exc}") from None
                entry = self._directories[directory] = _Directory(watch)
            entry.trigger_ids.add(trigger.trigger_id)
            self._triggers[trigger.trigger_id] = trigger
        logger.info("trigger %s watches %s for %s", trigger.trigger_id, directory, trigger.pattern)
        # after the watch: a file arriving now is seen by one or the other (claims dedupe)
        try:
            waiting = await asyncio.to_thread(self._unhandled, trigger, directory)
        except OSError as exc:
            logger.error("trigger %s: cannot list %s: %s", trigger.trigger_id, directory, exc)
            return
        for path in waiting:
            self._submit_later(trigger, path)

    async def remove(self, trigger_id: str) -> None:
        """Stop watching for ``trigger_id`` (nothing if it is not watched)."""
        async with self._lock:
            if self._triggers.pop(trigger_id, None) is None:
                return
            for directory, entry in list(self._directories.items()):
                entry.trigger_ids.discard(trigger_id)
                if entry.trigger_ids:
                    continue
                del self._directories[directory]
                if self._observer is not None:
                    try:
                        await asyncio.to_thread(self._observer.unschedule, entry.watch)
                    except (KeyError, OSError) as exc:  # e.g. the directory was deleted
                        logger.debug("unwatching %s: %r", directory, exc)

    def _arrived(self, path: str) -> None:
        """A complete file appeared in a watched directory (on the loop)."""
        directory, name = os.path.split(path)
        entry = self._directories.get(directory)
        if entry is None:
            return
        for trigger_id in sorted(entry.trigger_ids):
            trigger = self._triggers.get(trigger_id)
            if trigger is not None and fnmatch.fnmatch(name, trigger.pattern):
                self._submit_later(trigger, path)

    def _submit_later(self, trigger: Trigger, path: str) -> None:
        task = asyncio.get_running_loop().create_task(self._submit(trigger, path))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _unhandled(self, trigger: Trigger, directory: str) -> list[str]:
        """Matching files in ``directory`` the trigger never handled, oldest first
        (blocking)."""
        handled = self.store.handled_files(trigger.trigger_id)
        found: list[tuple[int, str]] = []
        with os.scandir(directory) as entries:
            for entry in entries:
                if not fnmatch.fnmatch(entry.name, trigger.pattern):
                    continue
                path = os.path.join(directory, entry.name)
                with contextlib.suppress(OSError):
                    if path not in handled and entry.is_file():
                        found.append((entry.stat().st_mtime_ns, path))
        return [path for _, path in sorted(found)]

    async def _submit(self, trigger: Trigger, path: str) -> None:
        """Claim ``path`` for ``trigger`` and submit its workflow for it; errors are logged
        (and the claim released)."""
        tid = trigger.trigger_id
        if not await asyncio.to_thread(os.path.isfile, path):
            return  # gone already
        job_id = new_run_id()
        try:
            claim = await asyncio.to_thread(self.store.claim_file, tid, path, job_id)
        except Exception:
            logger.exception("trigger %s: cannot claim %s", tid, path)
            return
        if not claim.new:
            return  # handled already (as claim.job_id)
        name = trigger.file_parameter
        try:
            await self.jobs.submit(
                trigger.workflow_path,
                {k: v for k, v in trigger.parameters.items() if k != name},
                raw_parameters={**trigger.raw_parameters, name: path},
                priority=trigger.priority,
                tags=trigger.tags,
                environment=trigger.environment,
                max_retries=trigger.max_retries,
                timeouts=trigger.timeouts,
                source="file_watch",
                trigger=TriggerRef(kind=TriggerKind.FILE_WATCH, id=tid, file=path),
                job_id=job_id,
            )
        except Exception as exc:
            if isinstance(exc, CasareError):
                logger.error("trigger %s: cannot submit a job for %s: %s", tid, path, exc)
            else:
                logger.exception("trigger %s: cannot submit a job for %s", tid, path)
            try:
                await asyncio.to_thread(self.store.release_file, tid, path)
            except Exception:
                logger.exception("trigger %s: cannot release %s", tid, path)
            return
        logger.info("trigger %s: %s arrived, submitted job %s", tid, path, job_id)


def _stop_observer(observer: BaseObserver) -> None:
    observer.stop()
    if observer.is_alive():
        observer.join(_JOIN_TIMEOUT_S)
