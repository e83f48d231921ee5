"""Dispatch: queued jobs go to the robots that can take them.

The dispatcher wakes on a submit, a robot registering, a heartbeat, a finished job, and at
least every heartbeat interval. A round plans with :func:`~casare_nb.core.dispatch.plan_dispatch`
over the first queued jobs in dispatch order and sends each chosen robot a ``job_assign``
with the notebook to run: the workflow as it is on disk now, its parameters injected (coerced
to the types the workflow declares now: a workflow changed so that the job's parameters no
longer fit fails the job here, before any robot) and, for a re-run, the earlier outputs and
the resume plan (:meth:`~.relay.CheckpointRelay.resume_spec`). ``start_at`` goes along for a
job submitted ahead of its due time, while that is still ahead: the robot prepares it and
waits.

A robot's running count is the number of jobs assigned here and not ended (authoritative: a
heartbeat sent while the robot still ran its previous job does not keep it busy). An attempt
not accepted within ``assign_timeout_s`` is requeued.

When several orchestrators share the database (:class:`Claims`), a round's jobs are claimed
in the database first, in one statement (in a thread: the loop goes on meanwhile): the
queued jobs that fit a free robot are the candidates, in dispatch order, and the database
takes as many as the round has free slots, skipping those another node claimed or is
claiming (``FOR UPDATE SKIP LOCKED``); the round is planned again over the jobs won, and
those skipped are forgotten here (another node runs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

from nbformat import NotebookNode

from casare_nb.core.dispatch import Assignment, can_run, plan_dispatch
from casare_nb.core.errors import JobTooLarge, WorkflowError, one_line
from casare_nb.core.injection import REDACTED
from casare_nb.core.models import Job, Robot, RunStatus
from casare_nb.core.params import ParameterError, ParamSchema, read_schema
from casare_nb.notebook.run import check_parameters, parameterised
from casare_nb.notebook.workflow import parse_workflow
from casare_nb.orchestrator.jobs.book import Attempt, JobBook
from casare_nb.orchestrator.jobs.relay import CheckpointRelay
from casare_nb.protocol import MAX_FRAME_BYTES, JobAssign, ProtocolError, Timeouts, encode

__all__ = ["Claims", "Dispatcher", "check_frame", "check_inside"]

logger = logging.getLogger("casare_nb.orchestrator.jobs")

_SCAN_MIN: Final = 16  # queued jobs a round looks at first (4 per free slot, at least this)
_SCAN_MAX: Final = 1000  # and at most, when the first ones fit no robot (tags, environment)
_WORKFLOWS_KEPT: Final = 256  # workflows read from disk kept (by path and stat)


@dataclass(frozen=True)
class Workflow:
    """A workflow notebook as read from disk (parsed), its parameter schema and the SHA-256
    of its bytes."""

    nb: NotebookNode
    schema: ParamSchema
    sha256: str

    @classmethod
    def read(cls, path: str, workflows_dir: Path | None = None) -> Workflow:
        """The workflow at ``path``; WorkflowError when it lies outside ``workflows_dir``
        now (checked at every read: a folder swapped for a symlink since the submit)."""
        check_inside(path, workflows_dir)
        raw = Path(path).read_bytes()
        nb = parse_workflow(raw, path)
        return cls(nb, read_schema(nb), hashlib.sha256(raw).hexdigest())

    def parameterised(self, values: Mapping[str, Any]) -> NotebookNode:
        """The notebook to run with ``values`` (the job's stored ones, secrets included):
        coerced to the types the workflow declares now and injected; :attr:`nb` itself when
        there is nothing to inject. ParameterError if they do not fit it any more."""
        checked, _ = check_parameters(self.schema, values, strict=True)
        nb, _ = parameterised(self.nb, checked, self.schema)
        return nb


class Claims(Protocol):
    """How a node of several claims a dispatch round's jobs (see the module docstring)."""

    def prepare(self, candidates: list[Job]) -> list[Job]:
        """The candidates that may be claimed now (on the loop; those whose last state here
        is not written yet are left for a later round), in their order."""
        ...

    def claim(self, candidates: list[Job], count: int, now: datetime) -> set[str]:
        """Claim up to ``count`` of the queued ``candidates`` in the database, in their
        order, skipping those no longer queued or being claimed elsewhere (blocking); the
        job ids won."""
        ...

    def lost(self, job_ids: list[str]) -> None:
        """These candidates went to another node (on the loop)."""
        ...


@dataclass
class _Round:
    """What a dispatch round chose: the queued jobs it took, which robot gets which, and
    the robots it planned with (their running counts as of the round)."""

    taken: list[Job]
    plan: list[Assignment]
    now: datetime
    robots: list[Robot]


class Dispatcher:
    """Sends queued jobs to robots; see the module docstring.

    ``claims``: the database decides which chosen jobs this node sends (several
    orchestrators on one database); None: this orchestrator decides alone."""

    def __init__(
        self,
        book: JobBook,
        relay: CheckpointRelay,
        *,
        heartbeat_interval_s: float,
        assign_timeout_s: float,
        workflows_dir: Path | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        if assign_timeout_s <= 0:
            raise ValueError(f"assign_timeout_s must be > 0, not {assign_timeout_s}")
        self.book = book
        self.relay = relay
        self.heartbeat_interval_s = heartbeat_interval_s
        self.assign_timeout_s = assign_timeout_s
        self.workflows_dir = workflows_dir
        self.max_frame_bytes = max_frame_bytes
        self.hold_until: datetime | None = None  # no dispatch before (after a crash)
        self._workflows: dict[str, tuple[tuple[int, ...], Workflow]] = {}
        self._task: asyncio.Task[None] | None = None
        self.claims: Claims | None = None

    def start(self) -> None:
        """Start dispatching (in the running event loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._forever(), name="orchestrator-dispatch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _forever(self) -> None:
        wakeup = self.book.wakeup
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat_interval_s):
                    await wakeup.wait()
            wakeup.clear()
            try:
                chosen = self._choose()
                if chosen is not None and self.claims is not None:
                    wanted = self.claims.prepare(self._candidates(chosen))
                    won: set[str] = set()
                    if wanted:
                        won = await asyncio.to_thread(
                            self.claims.claim, wanted, len(chosen.plan), chosen.now
                        )
                    chosen = self._keep(chosen, wanted, won)
                if chosen is not None:
                    self._assign(chosen)
            except Exception:
                logger.exception("dispatch failed")

    def dispatch(self) -> int:
        """Requeue attempts not accepted in time, then assign what the robots can take
        (nothing while draining, nor while held after a crash); the number of jobs sent."""
        chosen = self._choose()
        if chosen is None:
            return 0
        if self.claims is not None:
            wanted = self.claims.prepare(self._candidates(chosen))
            won = self.claims.claim(wanted, len(chosen.plan), chosen.now) if wanted else set()
            chosen = self._keep(chosen, wanted, won)
        return self._assign(chosen)

    def _candidates(self, chosen: _Round) -> list[Job]:
        """The round's queued jobs that fit one of its free robots, in dispatch order."""
        return [job for job in chosen.taken if any(can_run(job, r) for r in chosen.robots)]

    def _keep(self, chosen: _Round, wanted: list[Job], won: set[str]) -> _Round:
        """The round planned again over the jobs this node won. The candidates the database
        skipped (before the last one won, or all when fewer than asked were won) went to
        another node: they are forgotten here. A job won that no robot can take after all
        (the candidates fit robots one by one) goes back to the queue."""
        count = len(chosen.plan)
        ranks = [i for i, job in enumerate(wanted) if job.job_id in won]
        last = ranks[-1] if len(won) >= count and ranks else len(wanted)
        lost = [job.job_id for job in wanted[:last] if job.job_id not in won]
        if lost and self.claims is not None:
            self.claims.lost(lost)
        mine = [job for job in wanted if job.job_id in won]
        plan = plan_dispatch(mine, chosen.robots, now=chosen.now)
        placed = {a.job_id for a in plan}
        for job in mine:
            if job.job_id not in placed:  # claimed in the database: given back
                running = self.book.live.assign(job.job_id, "", now=chosen.now)
                self.book.requeue(running, now=chosen.now, event="not_placed", reason=None)
        return _Round(chosen.taken, plan, chosen.now, chosen.robots)

    def _choose(self) -> _Round | None:
        """Requeue attempts not accepted in time, then plan a round: None when nothing can
        be sent (draining, held after a crash, no queued job, no free robot)."""
        book = self.book
        now = book.clock()
        self._expire_unaccepted(now)
        if self.hold_until is not None:
            if now < self.hold_until:
                return None
            self.hold_until = None
        if book.draining or not book.live.queued_count:
            return None
        robots: list[Robot] = []
        free = 0
        for robot in book.link.robots():
            if not robot.status.takes_jobs:
                continue
            # jobs assigned here and not ended: a heartbeat may be older than a job_complete
            busy = len(book.assigned.get(robot.robot_id, ()))
            if busy != robot.running_jobs:
                robot = robot.model_copy(update={"running_jobs": busy})
            robots.append(robot)
            free += max(0, robot.max_concurrent_jobs - busy)
        if free <= 0:
            return None
        # the first queued jobs in dispatch order; more when those fit no free robot
        want = max(_SCAN_MIN, 4 * free)
        taken: list[Job] = []
        while True:
            more = book.live.take(now, want - len(taken))
            taken += more
            plan = plan_dispatch(taken, robots, now=now)
            if len(plan) >= free or len(taken) < want or want >= _SCAN_MAX:
                break
            want = min(_SCAN_MAX, 2 * want)
        chosen = _Round(taken, [], now, robots)
        for assignment in plan:
            if book.skip.pop(assignment.job_id, None) == assignment.robot_id:
                continue  # it just rejected this job: try again next round
            chosen.plan.append(assignment)
        return chosen

    def _assign(self, chosen: _Round) -> int:
        """Send the round's jobs to their robots; the number sent."""
        book = self.book
        now = chosen.now
        taken = chosen.taken
        sent = 0
        for assignment in chosen.plan:
            queued = book.live.get(assignment.job_id)
            if queued is None or queued.status is not RunStatus.QUEUED:
                continue  # it changed while its claim was decided (cancelled, dropped)
            if self._send(queued, assignment.robot_id, now):
                sent += 1
        book.live.put_back(taken)  # those still queued
        if sent:
            book.link.notify()
        return sent

    def _send(self, queued: Job, robot_id: str, now: datetime) -> bool:
        book = self.book
        try:
            workflow = self._workflow(queued.workflow_path)
        except (OSError, ValueError, WorkflowError) as exc:
            book.finish(
                queued,
                RunStatus.FAILED,
                now=now,
                error_name="WorkflowError",
                error_message=one_line(f"cannot read workflow {queued.workflow_path}: {exc}"),
            )
            return False
        secrets = book.secrets.get(queued.job_id, {})
        lost = sorted(k for k, v in queued.parameters.items() if v == REDACTED and k not in secrets)
        if lost:
            # secrets live in memory only: an orchestrator restart loses those of queued jobs
            book.finish(
                queued,
                RunStatus.FAILED,
                now=now,
                error_name="SecretLost",
                error_message=f"secret parameter {lost[0]} was lost when the orchestrator "
                "restarted; re-run the job giving it again",
            )
            return False
        try:
            notebook = workflow.parameterised({**queued.parameters, **secrets})
        except ParameterError as exc:
            # the workflow changed since the job was queued: its parameters no longer fit
            book.finish(
                queued,
                RunStatus.FAILED,
                now=now,
                error_name="ParameterError",
                error_message=one_line(exc),
            )
            return False
        job = book.live.assign(queued.job_id, robot_id, now=now)
        resume = None
        if job.resume_from_failed:
            notebook = copy.deepcopy(notebook) if notebook is workflow.nb else notebook
            resume = self.relay.resume_spec(job, notebook)
        start_at = book.start_at.get(job.job_id)
        if start_at is not None and start_at <= datetime.now(UTC):  # real time: robots wait in it
            del book.start_at[job.job_id]
            start_at = None
        msg = JobAssign(
            job_id=job.job_id,
            attempt=job.attempt,
            workflow_path=job.workflow_path,
            notebook=notebook,
            secret_parameters=secrets,
            priority=job.priority,
            resume=resume,
            timeouts=Timeouts(cell_s=job.timeouts.cell_s, run_s=job.timeouts.run_s),
            start_at=start_at,
        )
        try:
            check_frame(msg, self.max_frame_bytes)
        except JobTooLarge as exc:
            # it would be dropped on the way and retried without end: the job ends here
            logger.error("job %s: %s", job.job_id, exc)
            book.finish(
                job, RunStatus.FAILED, now=now, error_name="JobTooLarge", error_message=str(exc)
            )
            return False
        book.assigned.setdefault(robot_id, set()).add(job.job_id)
        book.attempts[(job.job_id, job.attempt)] = Attempt(
            robot_id,
            workflow.sha256,
            now,
            notebook=notebook,
            plan=None if resume is None else resume.plan,
        )
        if not book.link.send_to_robot(robot_id, msg):
            book.release(job.job_id, job.attempt)
            book.requeue(job, now=now, event="send_failed", reason=None)
            return False
        logger.info("sent job %s attempt %d to robot %s", job.job_id, job.attempt, robot_id)
        return True

    def _workflow(self, path: str) -> Workflow:
        """The workflow notebook as it is on disk now (shared: do not mutate); read again
        whenever the file's stat changes."""
        check_inside(path, self.workflows_dir)
        stat = os.stat(path)
        key = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        cached = self._workflows.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        workflow = Workflow.read(path, self.workflows_dir)
        if len(self._workflows) >= _WORKFLOWS_KEPT:
            self._workflows.clear()
        self._workflows[path] = (key, workflow)
        return workflow

    def _expire_unaccepted(self, now: datetime) -> None:
        book = self.book
        before = now - timedelta(seconds=self.assign_timeout_s)
        late = [
            job
            for job in book.live.unaccepted()
            if job.assigned_at is not None
            and job.assigned_at < before
            and (job.job_id, job.attempt) not in book.completing
        ]
        for job in sorted(late, key=lambda j: (j.assigned_at or before, j.job_id)):
            logger.warning(
                "robot %s did not accept job %s in %g s: requeued",
                job.robot_id,
                job.job_id,
                self.assign_timeout_s,
            )
            book.release(job.job_id, job.attempt)
            book.requeue(
                job,
                now=now,
                event="not_accepted",
                reason=f"robot {job.robot_id} did not accept the job in time",
            )


def check_inside(path: str | os.PathLike[str], workflows_dir: Path | None) -> None:
    """WorkflowError (one line) unless ``path``, its symlinks resolved now, lies inside
    ``workflows_dir`` (resolved too); None: no check."""
    if workflows_dir is None:
        return
    root = workflows_dir.resolve()
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(root):
        raise WorkflowError(
            f"workflow {path} now lies outside the workflows directory {root} "
            f"(it resolves to {resolved})"
        )


def check_frame(msg: JobAssign, max_bytes: int = MAX_FRAME_BYTES) -> None:
    """JobTooLarge (one line, naming the size and the limit) when ``msg`` cannot be sent
    in one frame of at most ``max_bytes``."""
    try:
        encode(msg, max_bytes=max_bytes, keep=True)  # sent next: encoded once
    except ProtocolError as exc:
        raise JobTooLarge(
            f"job {msg.job_id} is too large to send: {one_line(exc)} "
            "(the workflow notebook with its parameters and outputs)"
        ) from None
