"""Write-behind: a daemon thread writes what callers hand it, in batches, off their path.

:class:`WriteBehind` is the machinery the history writer and the job store share. Callers
add work under its lock (:meth:`WriteBehind._added` answers the new **mark**, a sequence
number, and wakes the thread); the thread takes everything pending as one batch and writes
it without the lock. :meth:`~WriteBehind.reached` says whether everything up to a mark is
done, :meth:`~WriteBehind.wait_mark` and :meth:`~WriteBehind.flush` block for it, and
:meth:`~WriteBehind.hurry` asks for a batch now. A subclass says what a batch is
(:meth:`~WriteBehind._take`) and how it is written (:meth:`~WriteBehind._write`), and picks:

- ``window_s``: at most one batch per window (group commit), unless someone waits;
- ``retry``: a failed batch goes back (:meth:`~WriteBehind._restore`) and is written again
  with backoff, its marks waiting meanwhile; without it, a failed batch counts as done and
  its error is kept for the next :meth:`~WriteBehind.flush`;
- :meth:`~WriteBehind._idle_after` / :meth:`~WriteBehind._idle`: something to do once no
  work came for a while (the history writer lets go of the database file then).

Writers still running at interpreter exit are closed, so what they hold is written.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

from casare_nb.core.errors import one_line

__all__ = ["WriteBehind"]

log = logging.getLogger(__name__)

B = TypeVar("B")

_RETRY_FIRST_S: Final[float] = 0.05  # backoff between attempts of a failed batch...
_RETRY_MAX_S: Final[float] = 2.0  # ...doubling up to this
_STOP_ATTEMPTS: Final[int] = 3  # attempts of a failing batch once stopping, before giving up
_ATEXIT_TIMEOUT_S: Final[float] = 10.0


class WriteBehind(ABC, Generic[B]):
    """The thread, the marks and the waiting; see the module docstring."""

    def __init__(
        self,
        name: str,
        *,
        window_s: float = 0.0,
        retry: bool = False,
    ) -> None:
        if window_s < 0:
            raise ValueError(f"the group-commit window must be >= 0 s, not {window_s}")
        self.name = name
        self.window_s = window_s
        self.retry = retry
        self._cond = threading.Condition()
        self._marked = 0  # the mark of the last thing added
        self._done = 0  # everything added up to this mark is done
        self._hurry = False  # someone waits: write without waiting for the window
        self._idle_wait = False  # the thread waits for work (only then does an add wake it)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._exited = False
        self._error: str | None = None  # the last failure, until a batch succeeds / is raised
        self._fault_listeners: list[Callable[[str | None], None]] = []
        self.batches = 0  # batches written
        self.items = 0  # what they held (as _size counts it)

    # -- for subclasses (with _cond held) ------------------------------------------------

    def _added(self) -> int:
        """Something was added: a new mark; start the thread, or wake it if it waits for
        work (waiting for its window, it takes this too: waking it costs a thread switch
        per add for nothing)."""
        self._marked += 1
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
            _RUNNING.add(self)
        if self._idle_wait:
            self._cond.notify_all()
        return self._marked

    @abstractmethod
    def _has_work(self) -> bool:
        """Something is pending."""

    @abstractmethod
    def _take(self) -> B:
        """Everything pending, as one batch (pending is empty afterwards)."""

    def _restore(self, batch: B) -> None:
        """A failed batch goes back (``retry`` only)."""

    def _size(self, batch: B) -> int:
        return 1

    def _wrote(self, batch: B, result: object) -> None:
        """A batch was written; ``result`` is what :meth:`_write` answered."""

    # -- for subclasses (without the lock, in the thread) --------------------------------

    @abstractmethod
    def _write(self, batch: B) -> object:
        """Write ``batch``; what it answers goes to :meth:`_wrote`."""

    def _failed(self, batch: B, exc: Exception) -> None:
        """A write raised (before a retry, or dropping the batch)."""

    def _written(self, mark: int) -> None:
        """Everything up to ``mark`` is written (e.g. tell listeners)."""

    def _idle_after(self) -> float | None:
        """Seconds without work after which to call :meth:`_idle` (None: never)."""
        return None

    def _idle(self) -> None:
        """No work came for :meth:`_idle_after` seconds, or the thread ends."""

    # -- callers -------------------------------------------------------------------------

    @property
    def fault(self) -> str | None:
        """Why writes fail now (a retrying writer whose last batch failed), else None."""
        with self._cond:
            return self._error if self.retry else None

    def on_fault(self, listener: Callable[[str | None], None]) -> None:
        """Call ``listener(reason)`` when writes begin to fail, ``listener(None)`` when they
        succeed again (retrying writers; in the writer thread: do not block)."""
        self._fault_listeners.append(listener)

    def _tell_fault(self, reason: str | None) -> None:
        for listener in list(self._fault_listeners):
            try:
                listener(reason)
            except Exception:
                log.exception("%s: a fault listener failed", self.name)

    @property
    def closing(self) -> bool:
        with self._cond:
            return self._stopping

    def mark(self) -> int:
        """The mark of everything added so far."""
        with self._cond:
            return self._marked

    def reached(self, mark: int) -> bool:
        """Whether everything added up to ``mark`` is done (or the thread ended)."""
        with self._cond:
            return self._done >= mark or (self._exited and not self.retry)

    def wait_mark(self, mark: int, timeout: float | None = None) -> bool:
        """Block until :meth:`reached` (True) or ``timeout`` seconds passed (False); what is
        pending is written without waiting for the window."""
        with self._cond:
            if self._done < mark:
                self._hurry = True
                self._cond.notify_all()
            return self._cond.wait_for(lambda: self._reached(mark), timeout)

    def hurry(self) -> None:
        """Write what is pending now, without waiting for the window."""
        with self._cond:
            if self._done < self._marked:
                self._hurry = True
                self._cond.notify_all()

    def _reached(self, mark: int) -> bool:
        return self._done >= mark or (self._exited and not self.retry)

    def _wait_all(self, timeout: float | None) -> tuple[bool, bool, str | None]:
        """Wait until everything added so far is done: (in time, all done, last error)."""
        with self._cond:
            target = self._marked
            if self._done < target:
                self._hurry = True
                self._cond.notify_all()
            in_time = self._cond.wait_for(lambda: self._reached(target), timeout)
            return in_time, self._done >= target, self._error

    def _stop(self, timeout: float | None) -> bool:
        """Stop adding, write what is pending and end the thread; False if it did not end
        within ``timeout`` s."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        _RUNNING.discard(self)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def close(self, timeout: float | None = None) -> None:
        """Write what is pending and stop the thread; idempotent."""
        self._stop(timeout)

    # -- the thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        failures = 0
        last = time.monotonic()  # when the last batch began (the first one waits too)
        try:
            while True:
                with self._cond:
                    if not self._has_work() and not self._stopping:
                        self._idle_wait = True
                        try:
                            self._cond.wait_for(
                                lambda: self._has_work() or self._stopping, self._idle_after()
                            )
                        finally:
                            self._idle_wait = False
                    if not self._has_work():
                        if self._stopping:
                            return
                        idle = True
                    else:
                        idle = False
                        window = last + self.window_s - time.monotonic()
                        if window > 0:  # group commit: one batch per window at most
                            self._cond.wait_for(lambda: self._hurry or self._stopping, window)
                        last = time.monotonic()
                        self._hurry = False
                        batch = self._take()
                        mark = self._marked
                if idle:
                    self._idle()
                    continue
                try:
                    result = self._write(batch)
                except Exception as exc:
                    self._failed(batch, exc)
                    with self._cond:
                        began = self._error is None
                        self._error = one_line(exc)
                        if not self.retry:
                            self._done = mark  # attempted: its error waits for flush
                            self._cond.notify_all()
                            continue
                        failures += 1
                        self._restore(batch)
                    if began:  # once per episode, not per retry
                        log.error(
                            "%s: writes fail (retrying until they succeed): %s", self.name, exc
                        )
                        self._tell_fault(one_line(exc))
                    else:
                        log.debug("%s: a write failed again (retrying): %s", self.name, exc)
                    with self._cond:
                        if self._stopping and failures >= _STOP_ATTEMPTS:
                            return
                        delay = min(_RETRY_MAX_S, _RETRY_FIRST_S * 2 ** (failures - 1))
                        self._cond.wait_for(lambda: self._stopping, delay)
                        self._hurry = True  # the retry waits for the backoff, not the window
                    continue
                recovered = failures > 0
                failures = 0
                with self._cond:
                    self._done = mark
                    if self.retry:
                        self._error = None
                    self.batches += 1
                    self.items += self._size(batch)
                    self._wrote(batch, result)
                    self._cond.notify_all()
                if recovered and self.retry:
                    log.warning("%s: writes succeed again", self.name)
                    self._tell_fault(None)
                self._written(mark)
        finally:
            self._idle()
            with self._cond:
                self._exited = True
                self._cond.notify_all()


# Writers with a thread at interpreter exit write what they hold (an atexit hook).
_RUNNING: weakref.WeakSet[WriteBehind[Any]] = weakref.WeakSet()


def _close_at_exit() -> None:
    for writer in list(_RUNNING):
        try:
            writer.close(timeout=_ATEXIT_TIMEOUT_S)
        except Exception as exc:  # a writer's own error at exit: say it, go on
            log.warning("%s", exc)


atexit.register(_close_at_exit)
