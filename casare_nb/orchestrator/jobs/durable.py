"""What the job manager makes durable, and when: job states, history records, output
notebooks, each written behind the event loop.

- **Job states**: every state :class:`~casare_nb.core.jobs.LiveJobs` makes is staged to the
  job store (:meth:`Durability.stage`), which commits in batches; :meth:`~Durability.after_commit`
  runs a callback on the loop once a mark is committed (a submit joins the queue then).
- **History records** (runs, cells) wait here up to ``HISTORY_WINDOW_S`` and go to the
  history writer in batches.
- **Output notebooks** of finished attempts are written by a few file threads
  (:meth:`~Durability.write_output`), numbered as they come; the job's final state is applied
  on the loop once its file is written **and** the stores commit (a storage fault: the write
  is retried with backoff, the job staying in its previous state, until both hold).
- **Notebooks so far** of running attempts (:attr:`Durability.sofar`, see :mod:`.sofar`)
  stay in memory; a mark taken for a robot's heartbeat writes that robot's changed ones.

A write that fails puts the durability *at fault* (:meth:`~Durability.fault`: the job store's,
the history writer's or the output notebooks' reason, once per episode at ERROR) until writes
succeed again; listeners given to :meth:`~Durability.on_fault` hear of every change (any
thread). The job store and the history writer both retry failed batches: nothing is dropped.

:meth:`~Durability.mark` takes one :class:`DurableMark` over all three;
:meth:`~Durability.durable` waits for it. The server acknowledges a robot's heartbeat only once
the mark taken then is durable: what a robot forgets was written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

from casare_nb.core.models import CellRecord, Job, RunRecord
from casare_nb.notebook.state import write_json_atomic
from casare_nb.orchestrator.jobs.sofar import NotebooksSoFar
from casare_nb.store.interfaces import HistoryWriter, JobStore
from casare_nb.store.writer import WriteBehind

__all__ = ["DURABLE_TIMEOUT_S", "Durability", "DurableMark"]

logger = logging.getLogger("casare_nb.orchestrator.jobs")

DURABLE_TIMEOUT_S: Final = 30.0  # how long submit, rerun and cancel wait for their commit
HISTORY_WINDOW_S: Final = 0.2  # history records are handed to the history writer this often
# (each hand-over is a DuckDB transaction of a few ms whatever its size; a durable mark, a
# heartbeat's, hands them over at once)
_OUTPUT_THREADS: Final = 4  # output notebooks written at once (file creation waits on the disk)
_OUTPUT_RETRY_FIRST_S: Final = 0.05  # backoff of an output notebook that cannot be stored...
_OUTPUT_RETRY_MAX_S: Final = 2.0  # ...doubling up to this


class DurableMark(NamedTuple):
    """A point in what the orchestrator makes durable (see :meth:`Durability.mark`): the
    history writer's mark, the job store's mark, the output notebooks being written then
    (0: none; their jobs' states are staged once they are written) and the notebooks so far
    handed to their file thread."""

    history: int
    queue: int
    outputs: int = 0
    notebooks: int = 0


class Durability:
    """The write-behind of one job manager; see the module docstring."""

    def __init__(self, jobs: JobStore, writer: HistoryWriter, sofar: NotebooksSoFar) -> None:
        self.jobs = jobs
        self.writer = writer
        self.sofar = sofar
        self._loop: asyncio.AbstractEventLoop | None = None
        # history records wait here a moment, so the history writer gets them in batches
        self._history_lock = threading.Lock()
        self._runs: dict[tuple[str, int], RunRecord] = {}
        self._cells: list[CellRecord] = []
        self._history_timer: asyncio.TimerHandle | None = None
        # (job store mark, order, callback): run on the loop once the store reached it
        self._waiters: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()
        # output notebooks are written in threads of their own; numbered as they come
        self._files = concurrent.futures.ThreadPoolExecutor(
            _OUTPUT_THREADS, thread_name_prefix="casare-outputs"
        )
        self._outputs_started = 0
        self._outputs_applied = 0  # outputs 1..this are written and their states applied
        self._outputs_ahead: set[int] = set()  # applied, beyond _outputs_applied
        self._output_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        # storage faults: the output notebooks' own, and who hears of any change
        self._fault_lock = threading.Lock()
        self._output_fault: str | None = None
        self._fault_listeners: list[Callable[[], None]] = []
        self._closing = threading.Event()  # stop: output writes give up their retries
        # nothing kept is dropped on a failed write: the history is retried like the jobs
        if isinstance(writer, WriteBehind):
            writer.retry = True
        for store in (jobs, writer):
            if isinstance(store, WriteBehind):
                store.on_fault(lambda _reason: self._tell_fault())

    def start(self) -> None:
        """Bind to the running event loop and hear of the job store's commits."""
        self._loop = asyncio.get_running_loop()
        self.jobs.subscribe(written=self._on_written)

    async def stop(self) -> bool:
        """Write out the output notebooks, the job states and the history; True if the job
        states all committed. Output notebooks that still cannot be stored are given up (their
        jobs stay running in the store: a restart requeues them)."""
        if self._history_timer is not None:
            self._history_timer.cancel()
            self._history_timer = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DURABLE_TIMEOUT_S):
                await self._outputs_done(self._outputs_started)
        self._closing.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DURABLE_TIMEOUT_S):
                await self._outputs_done(self._outputs_started)
        await asyncio.to_thread(self._files.shutdown)
        self.sofar.close()  # on the loop: the robots' messages change them there
        committed = True
        gone = self._gone()
        try:
            if gone is not None:  # nothing will ever commit there: do not wait for it
                raise RuntimeError(f"job states not written: {gone}")
            await asyncio.to_thread(self.jobs.flush)
        except Exception as exc:
            logger.error("%s", exc)
            committed = False
        self._run_waiters()  # e.g. submits whose insert the flush committed
        self.jobs.unsubscribe(written=self._on_written)
        self.push_history()
        await asyncio.to_thread(self.writer.close)
        return committed

    # -- job states ----------------------------------------------------------------------

    def stage(self, job: Job, cancel_requested: bool) -> int:
        """Hand a new state of ``job`` to the job store (LiveJobs' ``stage``)."""
        return self.jobs.stage(job, cancel_requested=cancel_requested)

    def after_commit(self, mark: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop once the job store committed up to ``mark``."""
        heapq.heappush(self._waiters, (mark, next(self._order), callback))
        if self.jobs.reached(mark):  # after the push: a commit now still finds the waiter
            self._run_waiters()

    async def committed(self, mark: int) -> None:
        """Return once the job store committed up to ``mark`` (hurrying it)."""
        if self.jobs.reached(mark):
            return
        self.jobs.hurry()
        done = asyncio.get_running_loop().create_future()
        self.after_commit(mark, lambda: None if done.done() else done.set_result(None))
        await done

    def _on_written(self, mark: int) -> None:
        """The job store committed up to ``mark`` (called in its writer thread)."""
        loop = self._loop
        if loop is not None and self._waiters:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._run_waiters)

    def _run_waiters(self) -> None:
        while self._waiters and self.jobs.reached(self._waiters[0][0]):
            _, _, callback = heapq.heappop(self._waiters)
            try:
                callback()
            except Exception:
                logger.exception("a callback after a queue commit failed")

    # -- history -------------------------------------------------------------------------

    def put_history(self, run: RunRecord | None = None, cells: Sequence[CellRecord] = ()) -> None:
        """Keep history records until the next hand-over to the history writer (at most
        ``HISTORY_WINDOW_S`` later, or at the next durable mark)."""
        with self._history_lock:
            if run is not None:
                self._runs[(run.run_id, run.attempt)] = run
            self._cells.extend(cells)
        if self._loop is None:
            self.push_history()
        elif self._history_timer is None:
            self._history_timer = self._loop.call_later(HISTORY_WINDOW_S, self._history_due)

    def _history_due(self) -> None:
        self._history_timer = None
        self.push_history()

    def push_history(self) -> None:
        """Hand the kept history records to the history writer (any thread; in order)."""
        with self._history_lock:
            runs, self._runs = self._runs, {}
            cells, self._cells = self._cells, []
            for run in runs.values():
                self.writer.put_run(run)
            self.writer.put_cells(cells)

    def flush(self, timeout: float | None = 30.0) -> None:
        """Block until the history records put and the job states staged so far are
        written (blocking)."""
        self.push_history()
        self.writer.flush(timeout)
        self.jobs.flush(timeout)

    # -- storage faults ------------------------------------------------------------------

    def fault(self) -> str | None:
        """Why writes fail now (the job store's, the history's, the output notebooks'), or
        None while everything commits."""
        for store, what in ((self.jobs, "job store"), (self.writer, "history")):
            if isinstance(store, WriteBehind):
                reason = store.fault
                if reason is not None:
                    return f"{what} writes fail: {reason}"
        gone = self._gone()
        if gone is not None:
            return gone
        with self._fault_lock:
            return self._output_fault

    def _gone(self) -> str | None:
        """Why the job store's file is gone (the state directory deleted), else None."""
        gone = getattr(self.jobs, "gone", None)
        reason = gone() if callable(gone) else None
        return reason if isinstance(reason, str) else None

    def on_fault(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (any thread) whenever :meth:`fault` may have changed."""
        self._fault_listeners.append(listener)

    def _tell_fault(self) -> None:
        for listener in list(self._fault_listeners):
            try:
                listener()
            except Exception:
                logger.exception("a storage fault listener failed")

    def _store_output(self, path: Path, notebook: dict[str, Any]) -> bool:
        """Store an output notebook, then wait until the stores commit (in a file thread):
        a failed write is retried with backoff until it succeeds; False only if the
        durability stopped first."""
        delay = _OUTPUT_RETRY_FIRST_S
        written = False
        while True:
            if not written:
                try:
                    _write_output(path, notebook)
                except OSError as exc:
                    self._output_failed(path, exc)
                else:
                    written = True
                    self._output_stored()
            if written and self.fault() is None:
                return True
            if self._closing.wait(delay):
                return False
            delay = min(_OUTPUT_RETRY_MAX_S, delay * 2)

    def _output_failed(self, path: Path, exc: OSError) -> None:
        reason = f"cannot store output notebooks: {exc.strerror or exc}"
        with self._fault_lock:
            began, self._output_fault = self._output_fault is None, reason
        if began:  # once per episode, not per retry
            logger.error("cannot store the output notebook %s (retrying): %s", path, exc)
            self._tell_fault()
        else:
            logger.debug("cannot store the output notebook %s (retrying): %s", path, exc)

    def _output_stored(self) -> None:
        with self._fault_lock:
            ended, self._output_fault = self._output_fault is not None, None
        if ended:
            logger.warning("output notebooks are stored again")
            self._tell_fault()

    # -- output notebooks ----------------------------------------------------------------

    def write_output(
        self, path: Path, notebook: dict[str, Any], then: Callable[[bool], None]
    ) -> None:
        """Store an output notebook in a file thread (retried until it is stored and the
        stores commit, see :meth:`_store_output`), then call ``then(stored)`` on the loop;
        outputs count as applied, in order, once their ``then`` returned."""
        self._outputs_started += 1
        number = self._outputs_started
        written = asyncio.get_running_loop().run_in_executor(
            self._files, self._store_output, path, notebook
        )

        def applied(future: asyncio.Future[bool]) -> None:
            try:
                then(not future.cancelled() and future.exception() is None and future.result())
            finally:
                self._outputs_ahead.add(number)
                while self._outputs_applied + 1 in self._outputs_ahead:
                    self._outputs_applied += 1
                    self._outputs_ahead.discard(self._outputs_applied)
                while self._output_waiters and self._output_waiters[0][0] <= self._outputs_applied:
                    _, _, waiter = heapq.heappop(self._output_waiters)
                    if not waiter.done():
                        waiter.set_result(None)

        written.add_done_callback(applied)

    async def _outputs_done(self, count: int) -> None:
        """Wait until the first ``count`` output notebooks are written and applied."""
        if self._outputs_applied >= count:
            return
        done = asyncio.get_running_loop().create_future()
        heapq.heappush(self._output_waiters, (count, next(self._order), done))
        await done

    # -- marks ---------------------------------------------------------------------------

    def mark(self, robot_id: str | None = None) -> DurableMark:
        """A mark for every state change and history record made so far, the jobs whose
        output notebooks are being written included; the notebooks so far of ``robot_id``'s
        attempts (None: every robot's) that changed are handed to their file thread."""
        pending = self._outputs_started > self._outputs_applied
        self.push_history()
        return DurableMark(
            history=self.writer.mark(),
            queue=self.jobs.mark(),
            outputs=self._outputs_started if pending else 0,
            notebooks=self.sofar.write(robot_id),
        )

    def is_durable(self, mark: DurableMark) -> bool:
        """Whether everything made before ``mark`` is committed (False while outputs were
        being written then: :meth:`durable` waits for them)."""
        return (
            mark.outputs == 0
            and self.writer.reached(mark.history)
            and self.jobs.reached(mark.queue)
            and self.sofar.reached(mark.notebooks)
        )

    async def durable(self, mark: DurableMark, timeout: float) -> bool:
        """Wait (in the event loop) until everything made before ``mark`` is committed;
        False after ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                if mark.outputs:
                    await self._outputs_done(mark.outputs)
                    # their jobs' states were staged once written: mark again
                    self.push_history()
                    mark = DurableMark(
                        history=self.writer.mark(),
                        queue=self.jobs.mark(),
                        notebooks=mark.notebooks,
                    )
                await self.committed(mark.queue)
                await self.sofar.written(mark.notebooks)
                if not self.writer.reached(mark.history):
                    await asyncio.to_thread(self.writer.wait_mark, mark.history, timeout)
        except TimeoutError:
            return False
        return self.is_durable(mark)


def _write_output(path: Path, notebook: dict[str, Any]) -> None:
    """Store an output notebook (blocking); OSError if it cannot be written."""
    folder = path.parent  # runs/<job>/<attempt>: in general, two mkdir calls
    try:
        os.mkdir(folder.parent)
    except FileExistsError:
        pass
    except FileNotFoundError:
        folder.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder)
    # compact: json's C encoder (indented JSON takes its pure-Python one, several times the
    # CPU, holding the GIL the event loop needs); the file is read by programs
    write_json_atomic(path, notebook, compact=True)
