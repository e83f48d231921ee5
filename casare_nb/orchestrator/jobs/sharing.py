"""This node's part when several orchestrators share one database and all are active.

Each node keeps in memory (:class:`~casare_nb.core.jobs.LiveJobs`) every queued job of the
database and the running jobs it **owns** (those on its robots). What the database decides
(:class:`~casare_nb.store.interfaces.SharedJobs`, compare-and-sets) reaches the rest:

- **dispatch**: a round's chosen jobs are claimed in the database before their ``job_assign``
  (:class:`~.dispatch.Claims`); those another node won are forgotten here;
- **announcements**: the other nodes' changes are read back and applied
  (:meth:`Sharing.apply`): queued jobs join this node's queue, jobs claimed or finished
  elsewhere leave it, monitors hear of them (``job_started``, ``job_finished``) and ``--wait``
  callers wake; a running job of this node taken over by another (its robot reconnected
  there) is let go; a cancel asked elsewhere for a job running here is sent to its robot;
- **a robot back here** holding an attempt another node ran takes it over;
- **jobs submitted with secrets** stay with the node that holds the values in memory: the
  others do not queue them;
- **dead nodes**: the leader (:meth:`Sharing.sweep`) adopts the jobs of a node whose liveness
  lock it could take twice in a row; their robots have the reconnect grace to come back
  (anywhere), then the jobs are requeued to resume from their last checkpoint.

Everything but the blocking database calls runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Final

from casare_nb.core.errors import QueueError, one_line
from casare_nb.core.injection import REDACTED
from casare_nb.core.models import Job, RunStatus
from casare_nb.orchestrator.jobs.attempts import Attempts
from casare_nb.orchestrator.jobs.book import JobBook
from casare_nb.orchestrator.jobs.durable import Durability
from casare_nb.protocol import EventKind, JobCancel, JobEvent, JobRef
from casare_nb.store.interfaces import SharedJobs, SharedRow

__all__ = ["SWEEP_S", "Sharing", "pinned"]

logger = logging.getLogger("casare_nb.orchestrator.jobs")

_MARKS_KEPT: Final = 1024  # staged marks kept before the written ones are forgotten
SWEEP_S: Final = 1.0
"""How often the leader looks for dead nodes (one is adopted when seen dead twice running)."""


def pinned(job: Job) -> bool:
    """Whether ``job`` has secret parameters (their values live in one node's memory)."""
    return any(value == REDACTED for value in job.parameters.values())


class Sharing:
    """See the module docstring; one per job manager of a shared database."""

    def __init__(
        self, book: JobBook, rows: SharedJobs, attempts: Attempts, durability: Durability
    ) -> None:
        self.book = book
        self.rows = rows
        self.attempts = attempts
        self.durability = durability
        self.marks: dict[str, int] = {}  # job id -> the mark of its last state staged here
        self._prune_at = _MARKS_KEPT
        self.finished_elsewhere: list[Callable[[Job], None]] = []
        self.token_listeners: list[Callable[[str], None]] = []  # on the loop: a token changed
        self.nodes_gone: list[Callable[[str], None]] = []  # on the loop: a dead node adopted
        self._told_started: set[tuple[str, int]] = set()
        self._suspects: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.counts = {"claimed": 0, "lost": 0, "heard": 0}  # claims won and lost, rows heard
        attempts.take_over = self.take_over

    @property
    def node(self) -> str:
        return self.rows.node

    # -- start ---------------------------------------------------------------------------

    def load(self) -> None:
        """Keep every queued job of the database (but those pinned to another node) and the
        running jobs this node owns (a restart under the same node id); blocking."""
        for row in self.rows.unfinished():
            job = row.job
            if job.status is RunStatus.QUEUED and self._queues(row):
                self.book.live.add(job)
            elif job.status is RunStatus.RUNNING and row.owner == self.node:
                self.book.live.add(job, cancel_requested=row.cancel_requested)

    def start(self) -> None:
        """Hear the other nodes' changes from now on (in the running loop)."""
        self._loop = asyncio.get_running_loop()
        self.rows.listen(self._heard, self._token)

    def _heard(self, rows: list[SharedRow], complete: bool) -> None:
        """Rows read back (in the listener's thread): applied on the loop."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._apply_soon, rows, complete)

    def _token(self, name: str) -> None:
        """A token was created or revoked on another node (in the listener's thread)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._tell_token, name)

    def _tell_token(self, name: str) -> None:
        for listener in list(self.token_listeners):
            try:
                listener(name)
            except Exception:
                logger.exception("a token listener failed on %s", name)

    def _apply_soon(self, rows: list[SharedRow], complete: bool) -> None:
        try:
            self.apply(rows, complete=complete)
        except Exception:
            logger.exception("cannot apply the other orchestrators' changes")

    # -- dispatch (dispatch.Claims) ------------------------------------------------------

    def staged(self, job_id: str, mark: int) -> None:
        """A state of ``job_id`` was staged here (written behind) at ``mark``; the marks
        already written are forgotten now and then (the dictionary stays as small as what
        is being written)."""
        self.marks[job_id] = mark
        if len(self.marks) >= self._prune_at:
            reached = self.durability.jobs.reached
            self.marks = {k: m for k, m in self.marks.items() if not reached(m)}
            self._prune_at = max(_MARKS_KEPT, 2 * len(self.marks))

    def _pending(self, job_id: str) -> int | None:
        """The mark of a state of ``job_id`` staged here and not written yet, else None."""
        mark = self.marks.get(job_id)
        if mark is None:
            return None
        if self.durability.jobs.reached(mark):
            del self.marks[job_id]
            return None
        return mark

    def prepare(self, candidates: list[Job]) -> list[Job]:
        ready: list[Job] = []
        for job in candidates:
            mark = self._pending(job.job_id)
            if mark is not None:  # its row is not queued in the database yet: next round
                self.durability.after_commit(mark, self.book.wake)
                continue
            ready.append(job)
        return ready

    def claim(self, candidates: list[Job], count: int, now: datetime) -> set[str]:
        try:
            won = self.rows.claim(candidates, count, now)
        except QueueError as exc:
            logger.warning("cannot claim jobs now: %s", exc)
            return set()
        self.counts["claimed"] += len(won)
        return won

    def lost(self, job_ids: list[str]) -> None:
        """Candidates another node took: forgotten here, and read back (a row still queued
        comes back as the database has it)."""
        self.counts["lost"] += len(job_ids)
        for job_id in job_ids:
            self.book.live.drop(job_id)
        if self._loop is not None:
            self._loop.create_task(self._read_back(job_ids))
        self.book.wake()

    # -- robots back here ----------------------------------------------------------------

    def take_over(self, robot_id: str, ref: JobRef) -> Job | None:
        """A robot registered here holding ``ref``: if another node ran it, it is this
        node's from now on (blocking briefly: one statement)."""
        try:
            row = self.rows.take_over(ref.job_id, ref.attempt, robot_id, self.book.clock())
        except QueueError as exc:
            logger.warning("cannot take over job %s from its last node: %s", ref.job_id, exc)
            return None
        if row is None:
            return None
        live = self.book.live
        live.drop(ref.job_id)
        live.add(row.job, cancel_requested=row.cancel_requested)
        logger.info("job %s attempt %d moved here with robot %s", ref.job_id, ref.attempt, robot_id)
        return row.job

    # -- the others' changes -------------------------------------------------------------

    def _queues(self, row: SharedRow) -> bool:
        """Whether this node queues the queued ``row`` (not one pinned to another node)."""
        return row.owner == self.node or not pinned(row.job)

    def apply(self, rows: list[SharedRow], *, complete: bool = False) -> None:
        """Apply rows read back (see the module docstring); ``complete``: they are every
        unfinished job (after (re)connecting), so jobs held here and not among them are read
        back too."""
        book = self.book
        live = book.live
        changed = False
        seen: set[str] = set()
        self.counts["heard"] += len(rows)
        for row in rows:
            seen.add(row.job.job_id)
            changed |= self._apply(row)
        if complete:
            missing = [
                job.job_id
                for job in [*live.queued(), *live.running()]
                if job.job_id not in seen and self._pending(job.job_id) is None
            ]
            if missing and self._loop is not None:
                self._loop.create_task(self._read_back(missing))
        if changed:
            book.link.notify()
            book.wake()

    async def _read_back(self, job_ids: list[str]) -> None:
        try:
            rows = await asyncio.to_thread(self.rows.read, job_ids)
        except QueueError as exc:
            logger.warning("cannot read back jobs: %s", exc)
            return
        self.apply(rows)

    def _apply(self, row: SharedRow) -> bool:
        """One row; whether anything changed here."""
        book = self.book
        live = book.live
        job = row.job
        job_id = job.job_id
        held = live.get(job_id)
        if held is not None and job.attempt < held.attempt:
            return False  # read before this node's own newer change
        if row.owner == self.node:
            if held is None and job.status is RunStatus.QUEUED:
                if self._pending(job_id) is not None:
                    return False  # this node's newer state is on its way
                return self.book.live.add(job)  # e.g. read back after a claim it lost
            if (
                held is not None
                and held.status is RunStatus.RUNNING
                and row.cancel_requested
                and not live.cancel_requested(job_id)
            ):
                self._cancel_here(held)
                return True
            return False
        if held is not None:
            if held.status is RunStatus.RUNNING:
                if job.attempt == held.attempt and job.status is RunStatus.RUNNING:
                    logger.warning(
                        "job %s attempt %d is node %s's now (its robot went there)",
                        job_id,
                        job.attempt,
                        row.owner,
                    )
                    live.drop(job_id)
                    book.release(job_id, held.attempt)
                elif job.attempt == held.attempt:
                    live.drop(job_id)  # adopted and ended elsewhere
                    book.release(job_id, held.attempt)
                else:
                    return False
            elif self._pending(job_id) is not None:
                return False  # this node's own change is on its way
            else:
                live.drop(job_id)
        if job.status is RunStatus.QUEUED:
            if self._queues(row) and live.add(job):
                if held is None:
                    book.link.publish(EventKind.JOB_QUEUED, JobEvent(job=job))
                return True
            return held is not None
        if job.status is RunStatus.RUNNING:
            key = (job_id, job.attempt)
            if job.accepted_at is not None and key not in self._told_started:
                self._told_started.add(key)
                book.link.publish(EventKind.JOB_STARTED, JobEvent(job=job))
            return held is not None
        self._told_started = {k for k in self._told_started if k[0] != job_id}
        book.link.publish(EventKind.JOB_FINISHED, JobEvent(job=job))
        for listener in list(self.finished_elsewhere):
            try:
                listener(job)
            except Exception:
                logger.exception("a listener of jobs finished elsewhere failed on %s", job_id)
        return True

    def _cancel_here(self, job: Job) -> None:
        """A cancel asked on another node for a job running here: its robot is asked."""
        self.book.live.cancel(job.job_id, now=self.book.clock())
        if job.robot_id is not None:
            self.book.link.send_to_robot(
                job.robot_id,
                JobCancel(job_id=job.job_id, attempt=job.attempt, reason="cancelled by a user"),
            )

    # -- cancel and re-run anywhere ------------------------------------------------------

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a job this node does not run (blocking): queued anywhere, it ends cancelled
        now; running on another node, its cancel is asked there. The job after, None when
        it was finished or unknown."""
        row = self.rows.cancel(job_id, self.book.clock())
        if row is None:
            return None
        if row.job.status is RunStatus.CANCELLED:
            self.book.live.drop(job_id)
            self.book.finished(row.job)
        return row.job

    async def settled(self, job_id: str) -> None:
        """Return once the states of ``job_id`` staged here are written (the database
        decides from them)."""
        mark = self._pending(job_id)
        if mark is not None:
            await self.durability.committed(mark)

    def settled_now(self, job_id: str, timeout: float) -> None:
        """:meth:`settled`, blocking (not on the loop)."""
        mark = self._pending(job_id)
        if mark is not None:
            self.durability.jobs.wait_mark(mark, timeout)

    def reopen(self, queued: Job, was: Job) -> None:
        """Claim the re-run of the finished ``was`` as ``queued`` (blocking); QueueError if
        another node re-ran it first."""
        if not self.rows.reopen(queued, was):
            raise QueueError(f"job {was.job_id} was re-run or changed on another orchestrator")

    # -- dead nodes (the leader) ---------------------------------------------------------

    async def sweep(self) -> None:
        """One look for dead nodes: a node seen dead at two sweeps running is adopted."""
        try:
            dead = set(await asyncio.to_thread(self.rows.dead_nodes))
        except QueueError as exc:
            logger.warning("cannot look for dead orchestrators: %s", one_line(exc))
            return
        confirmed = sorted(dead & self._suspects)
        self._suspects = dead - set(confirmed)
        for node in confirmed:
            try:
                rows = await asyncio.to_thread(self.rows.adopt, node)
            except QueueError as exc:
                logger.warning("cannot adopt the jobs of node %s: %s", node, one_line(exc))
                continue
            self._adopted(node, rows)

    def _adopted(self, node: str, rows: list[SharedRow]) -> None:
        live = self.book.live
        robots: set[str] = set()
        for row in rows:
            job = row.job
            live.drop(job.job_id)
            live.add(job, cancel_requested=row.cancel_requested)
            if job.status is RunStatus.RUNNING and job.robot_id is not None:
                robots.add(job.robot_id)
        logger.warning(
            "node %s is gone: its %d unfinished jobs are this node's (%d robots may come back; "
            "jobs no robot accepted are requeued after the assignment timeout)",
            node,
            len(rows),
            len(robots),
        )
        for robot_id in sorted(robots):
            self.attempts.lose_later(robot_id, self.attempts.reconnect_grace_s)
        for listener in list(self.nodes_gone):
            try:
                listener(node)
            except Exception:
                logger.exception("a listener of dead nodes failed on %s", node)
        self.book.link.notify()
        self.book.wake()

    async def sweep_forever(self, every_s: float = SWEEP_S) -> None:
        """Look for dead nodes every ``every_s`` (the leader's task)."""
        while True:
            await self.sweep()
            await asyncio.sleep(every_s)
