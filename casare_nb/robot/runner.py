"""The robot's job runner: executes the jobs the orchestrator assigns with the engine.

:class:`EngineRunner` implements the agent's :class:`~casare_nb.robot.agent.JobRunner`:
``job_assign`` is answered with ``job_accept`` and the notebook runs in a task of its own
with the engine (:func:`casare_nb.notebook.run.execute`), on a kernel of the robot's warm
:class:`~casare_nb.notebook.pool.KernelPool`, in ``work_dir``. The notebook comes ready to
run (its parameters injected by the orchestrator, which validated them): the robot neither
reads the parameter schema nor validates again. Each executed cell becomes a
``job_progress``; the end of the run a ``job_complete`` (with the output notebook, from
memory: the robot writes none) or a ``job_failed``. ``job_cancel`` interrupts the run and is
answered with ``job_cancelled``.

Checkpoints travel: each ``job_progress`` carries the executed cell (so the orchestrator
holds the notebook so far), and after each cell every new manifest in the attempt's
checkpoint folder is offered (``checkpoint_offer``); the blobs the orchestrator lacks
(``checkpoint_want``) are sent as ``blob_put``. Blobs over
:data:`~casare_nb.protocol.MAX_BLOB_BYTES` do not fit a frame: a manifest naming one is not
offered (a resume elsewhere restores an earlier checkpoint and replays).

A ``job_assign`` with ``resume`` re-runs an earlier attempt from its failed cell as the
orchestrator planned it: the manifests it sends are written into the new attempt's
checkpoint folder, the blobs this robot lacks are fetched with ``blob_get``, then the engine
restores the namespace and runs from the plan's first cell.

Messages go through the agent's ``send``, which buffers job messages while the link is down
and delivers them after the robot registers again. ``abandon`` stops an attempt the
orchestrator gave to another robot, reporting nothing.

A ``job_assign`` with ``start_at`` (a scheduled job sent ahead of its due time) is accepted
and prepared at once (kernel, checkpoint hook, plan) and its first cell runs at ``start_at``;
a ``job_cancel`` meanwhile ends it before any cell ran.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nbformat import NotebookNode
from websockets.exceptions import ConnectionClosed

from casare_nb.core.errors import CasareError
from casare_nb.core.models import CellRecord, RunRecord, RunStatus
from casare_nb.notebook.executor import Options
from casare_nb.notebook.hooks import RunHooks
from casare_nb.notebook.pool import KernelPool
from casare_nb.notebook.run import RunResult, RunSpec, Secrets, execute
from casare_nb.notebook.state import AttemptPaths, StateDir, blob_refs, write_json_atomic
from casare_nb.notebook.workflow import as_notebook, kernel_name_of
from casare_nb.protocol import (
    MAX_BLOB_BYTES,
    BlobGet,
    BlobPut,
    CheckpointOffer,
    CheckpointStored,
    CheckpointWant,
    Envelope,
    Error,
    ErrorCode,
    JobAccept,
    JobAssign,
    JobCancel,
    JobCancelled,
    JobComplete,
    JobFailed,
    JobProgress,
    JobRef,
    JobReject,
    ProtocolError,
)
from casare_nb.robot.agent import Send

__all__ = ["EngineRunner"]

log = logging.getLogger(__name__)


async def _send_safely(send: Send, msg: Envelope) -> None:
    try:
        await send(msg)
    except (ConnectionError, ConnectionClosed, ProtocolError) as exc:
        log.warning("could not send %s for job %s: %s", msg.type, getattr(msg, "job_id", "?"), exc)


_SCAN = "scan"  # outbox marker: offer the checkpoints written since the last scan


class _ProgressSender(RunHooks):
    """The engine's hooks on a robot: each executed cell becomes a job_progress message
    (with the cell), followed by offers of the new checkpoints, sent in order by a task of
    its own (the orchestrator writes the history)."""

    def __init__(self, job: JobAssign, send: Send, paths: AttemptPaths, state: StateDir) -> None:
        self._job = job
        self._send = send
        self._paths = paths
        self._state = state
        self._outbox: asyncio.Queue[JobProgress | str | None] = asyncio.Queue()
        self._done = 0
        self._total = 0
        self._offered: set[str] = set()
        self._sender = asyncio.create_task(self._send_all())

    def run_started(self, run: RunRecord) -> None:
        self._total = max(self._total, run.cells_total)

    def cell_started(self, index: int, position: int, total: int) -> None:
        """This cell is ``position`` of ``total`` (replays included)."""
        self._total = max(total, position)

    def cell_finished(
        self, record: CellRecord, cell: NotebookNode, position: int, total: int
    ) -> None:
        self._done += 1
        self._total = max(self._total, self._done)
        msg = JobProgress(
            job_id=self._job.job_id,
            attempt=self._job.attempt,
            cell_index=record.cell_index,
            cell_id=record.cell_id,
            status=record.status,
            duration_s=max(0.0, record.duration_s),
            cells_done=self._done,
            cells_total=self._total,
            started_at=record.started_at,
            replayed=record.replayed,
            error_name=record.error_name,
            error_message=record.error_message,
            cell=json.loads(json.dumps(cell)),
        )
        self._outbox.put_nowait(msg)
        self._outbox.put_nowait(_SCAN)

    async def finish(self) -> None:
        """Offer the last checkpoints, then wait until everything put so far is sent."""
        self._outbox.put_nowait(_SCAN)
        self._outbox.put_nowait(None)
        await self._sender

    async def _send_all(self) -> None:
        while (item := await self._outbox.get()) is not None:
            if isinstance(item, str):
                for offer in self._new_offers():
                    await _send_safely(self._send, offer)
            else:
                await _send_safely(self._send, item)

    def _new_offers(self) -> list[CheckpointOffer]:
        """Offers of the manifests written since the last scan (complete ones only)."""
        folder = self._paths.checkpoints
        if not folder.is_dir():
            return []
        offers = []
        for path in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime_ns):
            cell_id = path.name.removesuffix(".json")
            if cell_id in self._offered:
                continue
            self._offered.add(cell_id)
            manifest = self._paths.read_manifest(cell_id)
            if manifest is None:
                continue
            blobs = blob_refs(manifest)
            too_big = [sha for sha in blobs if _blob_size(self._state, sha) > MAX_BLOB_BYTES]
            if too_big:
                log.info(
                    "job %s: checkpoint of cell %s not offered: blob %s is over %d bytes",
                    self._job.job_id,
                    cell_id,
                    too_big[0],
                    MAX_BLOB_BYTES,
                )
                continue
            offers.append(
                CheckpointOffer(
                    job_id=self._job.job_id,
                    attempt=self._job.attempt,
                    cell_id=cell_id,
                    manifest=manifest,
                    blobs=blobs,
                )
            )
        return offers


def _blob_size(state: StateDir, sha256: str) -> int:
    try:
        return state.blob_path(sha256).stat().st_size
    except (OSError, ValueError):
        return 0


@dataclass
class _Running:
    ref: JobRef
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_msg: JobCancel | None = None
    task: asyncio.Task[None] | None = None
    abandoned: bool = False


class EngineRunner:
    """Runs assigned jobs on ``pool``'s kernels in ``work_dir``; see the module docstring.

    ``max_concurrent_jobs`` (default: the pool's size) caps the jobs held at once; an
    assignment beyond it is rejected.
    """

    def __init__(
        self,
        pool: KernelPool,
        work_dir: str | Path,
        *,
        max_concurrent_jobs: int | None = None,
        checkpoints: bool = True,
    ) -> None:
        self.pool = pool
        self.checkpoints = checkpoints
        """False (``job_execution.checkpoint_enabled``): no namespace checkpoints are taken,
        so none is shipped; a re-run then starts from the beginning."""
        self.work_dir = Path(work_dir)
        self.state = StateDir(self.work_dir / "state")
        self.max_concurrent_jobs = max_concurrent_jobs or pool.size
        self.blob_timeout_s = 60.0
        self._jobs: dict[str, _Running] = {}
        self._blob_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.stored: set[tuple[str, int, str]] = set()
        """(job, attempt, cell id) of the checkpoints the orchestrator confirmed stored."""

    def running_jobs(self) -> list[JobRef]:
        return [job.ref for job in self._jobs.values()]

    async def handle(self, msg: Envelope, send: Send) -> None:
        if isinstance(msg, JobAssign):
            await self._assign(msg, send)
        elif isinstance(msg, JobCancel):
            running = self._jobs.get(msg.job_id)
            if running is None or running.ref.attempt != msg.attempt:
                text = f"robot does not hold job {msg.job_id} attempt {msg.attempt}"
                await _send_safely(
                    send, Error(code=ErrorCode.UNKNOWN_JOB, message=text, reply_to=msg.id)
                )
                return
            log.info("cancelling job %s%s", msg.job_id, f": {msg.reason}" if msg.reason else "")
            running.cancel_msg = msg
            running.cancel.set()
        elif isinstance(msg, CheckpointWant):
            if msg.blobs:
                task = asyncio.create_task(self._send_blobs(msg, send), name=f"blobs-{msg.job_id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        elif isinstance(msg, BlobPut):
            await asyncio.to_thread(self._store_blob, msg)
            for waiter in self._blob_waiters.pop(msg.sha256, []):
                if not waiter.done():
                    waiter.set_result(None)
        elif isinstance(msg, CheckpointStored):
            self.stored.add((msg.job_id, msg.attempt, msg.cell_id))
        else:
            log.debug("ignored %s", msg.type)

    async def abandon(self, ref: JobRef) -> None:
        """Stop ``ref`` now without reporting it: the orchestrator gave it to another robot."""
        running = self._jobs.get(ref.job_id)
        if running is None or running.ref.attempt != ref.attempt:
            return
        log.info("abandoning job %s attempt %d: superseded", ref.job_id, ref.attempt)
        running.abandoned = True
        running.cancel.set()
        if running.task is not None:
            await asyncio.wait({running.task})

    async def _send_blobs(self, msg: CheckpointWant, send: Send) -> None:
        for sha in msg.blobs:
            try:
                data = await asyncio.to_thread(self.state.blob_path(sha).read_bytes)
            except OSError as exc:
                log.warning("job %s: cannot read blob %s: %s", msg.job_id, sha, exc)
                continue
            if len(data) > MAX_BLOB_BYTES:
                log.warning("job %s: blob %s is too big to send", msg.job_id, sha)
                continue
            await _send_safely(send, BlobPut.of(data, reply_to=msg.id))

    def _store_blob(self, msg: BlobPut) -> None:
        path = self.state.blob_path(msg.sha256)
        if path.is_file():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(msg.payload())
        tmp.replace(path)

    async def drain(self) -> None:
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        if tasks:
            await asyncio.wait(tasks)

    async def cancel_all(self) -> None:
        for job in self._jobs.values():
            job.cancel.set()
        await self.drain()

    async def _assign(self, msg: JobAssign, send: Send) -> None:
        refusal = None
        if msg.job_id in self._jobs:
            refusal = f"job {msg.job_id} is already running here"
        elif len(self._jobs) >= self.max_concurrent_jobs:
            refusal = "robot is at capacity"
        if refusal is not None:
            reject = JobReject(
                job_id=msg.job_id, attempt=msg.attempt, reason=refusal, reply_to=msg.id
            )
            await _send_safely(send, reject)
            return
        running = _Running(JobRef(job_id=msg.job_id, attempt=msg.attempt))
        self._jobs[msg.job_id] = running
        await _send_safely(send, JobAccept(job_id=msg.job_id, attempt=msg.attempt, reply_to=msg.id))
        running.task = asyncio.create_task(
            self._run(msg, running, send), name=f"job-{msg.job_id}-{msg.attempt}"
        )

    async def _run(self, msg: JobAssign, running: _Running, send: Send) -> None:
        started = time.monotonic()
        if msg.start_at is not None:  # sent ahead of its due time: its duration starts then
            started += max(0.0, (msg.start_at - datetime.now(UTC)).total_seconds())
        paths = self.state.attempt(msg.job_id, msg.attempt)
        progress = _ProgressSender(msg, send, paths, self.state)
        result: RunResult | None = None
        error: tuple[str, str] | None = None
        try:
            result = await self._execute(msg, running, progress, send)
        except (CasareError, ValueError, OSError) as exc:  # bad parameters, broken notebook
            error = (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        except Exception as exc:
            log.exception("job %s failed to run", msg.job_id)
            error = (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        finally:
            if not running.abandoned:
                await progress.finish()
            self._jobs.pop(msg.job_id, None)
        if running.abandoned:
            return
        duration = round(max(0.0, time.monotonic() - started), 6)
        await _send_safely(send, self._final(msg, running, result, error, duration))

    async def _execute(
        self, msg: JobAssign, running: _Running, progress: _ProgressSender, send: Send
    ) -> RunResult:
        # no output notebook written, not even at the end: the orchestrator keeps the
        # notebook so far from the cells each job_progress carries, and gets the final one
        # in job_complete / job_failed from the result
        options = Options(
            cell_timeout=msg.timeouts.cell_s,
            run_timeout=msg.timeouts.run_s,
            save_each_cell=False,
            save_output=False,
            start_at=msg.start_at,
            checkpoint=self.checkpoints,
        )
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.state.ensure_writable()
        nb = as_notebook(msg.notebook)
        record = RunRecord(
            run_id=msg.job_id,
            attempt=msg.attempt,
            workflow_path=msg.workflow_path,
            notebook_sha256="",
            kernel_name=kernel_name_of(nb),
            started_at=datetime.now(UTC),
            resumed_from_attempt=msg.resume.from_attempt if msg.resume else None,
            source="robot",
        )
        secrets = Secrets.of(msg.secret_parameters, msg.secret_parameters.keys())
        spec = RunSpec(
            nb,
            record,
            self.state,
            secrets=secrets,
            resume=msg.resume.plan if msg.resume else None,
            options=options,
            cwd=self.work_dir,
        )
        if msg.resume is not None:
            await self._materialise(msg, send)
        return await execute(spec, hooks=progress, kernels=self.pool, cancel=running.cancel)

    async def _materialise(self, msg: JobAssign, send: Send) -> None:
        """Put the manifests the resume restores into the new attempt's checkpoint folder and
        fetch the blobs this robot lacks (waiting up to ``blob_timeout_s``: a blob that does
        not come makes its variable fail to restore, and the resume replays the cells
        defining it)."""
        spec = msg.resume
        assert spec is not None
        paths = self.state.attempt(msg.job_id, msg.attempt).create()
        for cell_id, manifest in spec.manifests.items():
            write_json_atomic(paths.manifest(cell_id), manifest)
        missing = [sha for sha in spec.blobs if not self.state.blob_path(sha).is_file()]
        if not missing:
            return
        loop = asyncio.get_running_loop()
        waiters = []
        for sha in missing:
            waiter: asyncio.Future[None] = loop.create_future()
            self._blob_waiters.setdefault(sha, []).append(waiter)
            waiters.append(waiter)
        await _send_safely(send, BlobGet(sha256=missing))
        _, pending = await asyncio.wait(waiters, timeout=self.blob_timeout_s)
        if pending:
            log.warning(
                "job %s: %d of %d blobs did not arrive; resuming without them",
                msg.job_id,
                len(pending),
                len(missing),
            )
        for sha in missing:
            left = [w for w in self._blob_waiters.get(sha, []) if not w.done()]
            for waiter in left:
                waiter.cancel()
            self._blob_waiters.pop(sha, None)

    @staticmethod
    def _final(
        msg: JobAssign,
        running: _Running,
        result: RunResult | None,
        error: tuple[str, str] | None,
        duration: float,
    ) -> Envelope:
        ref: dict[str, Any] = {"job_id": msg.job_id, "attempt": msg.attempt}
        if result is None:
            name, text = error or ("Error", "the run did not start")
            return JobFailed(**ref, error_name=name, error_message=text, duration_s=duration)
        output = result.notebook
        if result.status is RunStatus.COMPLETED and output is not None:
            return JobComplete(
                **ref,
                output_notebook=output,
                duration_s=duration,
                replayed_cells=result.replayed_cells,
            )
        if result.status is RunStatus.CANCELLED and running.cancel_msg is not None:
            return JobCancelled(**ref, reply_to=running.cancel_msg.id)
        status = result.status
        if status not in (RunStatus.FAILED, RunStatus.TIMEOUT, RunStatus.CANCELLED):
            status = RunStatus.FAILED  # completed without an output notebook
        return JobFailed(
            **ref,
            status=status,
            failed_cell=result.failed_cell,
            failed_cell_id=result.failed_cell_id,
            error_name=result.error_name or ("OutputError" if output is None else None),
            error_message=result.error_message
            or ("the run left no output notebook" if output is None else None),
            output_notebook=output,
            duration_s=duration,
        )
