"""The robot's job runner: executes the jobs the orchestrator assigns with the engine.

:class:`EngineRunner` implements the agent's :class:`~casare_nb.robot.agent.JobRunner`:
``job_assign`` is answered with ``job_accept`` and the notebook runs in a task of its own
through :func:`casare_nb.local.arun_notebook`, on a kernel of the robot's warm
:class:`~casare_nb.notebook.pool.KernelPool`, in ``work_dir``. Each executed cell becomes a
``job_progress``; the end of the run a ``job_complete`` (with the output notebook) or a
``job_failed``. ``job_cancel`` interrupts the run and is answered with ``job_cancelled``.

Messages go through the agent's ``send``, which uses the connection of the moment; a
message that cannot be sent (the link is down) is logged and dropped: the orchestrator
requeues the jobs of a robot that went offline, so the attempt is superseded anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

from casare_nb.core.errors import CasareError
from casare_nb.core.models import CellRecord, RunRecord, RunStatus
from casare_nb.local import RunResult, arun_notebook
from casare_nb.notebook.executor import Options
from casare_nb.notebook.pool import KernelPool
from casare_nb.protocol import (
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


class _ProgressRecorder:
    """The engine's Recorder on a robot: each cell becomes a job_progress message, sent in
    order by a task of its own; the run record is only kept (the orchestrator writes the
    history)."""

    def __init__(self, job: JobAssign, send: Send) -> None:
        self._job = job
        self._send = send
        self._loop = asyncio.get_running_loop()
        self._outbox: asyncio.Queue[JobProgress | None] = asyncio.Queue()
        self._done = 0
        self._total = 0
        self.run: RunRecord | None = None
        self._sender = asyncio.create_task(self._send_all())

    def put_run(self, run: RunRecord) -> None:
        self.run = run.model_copy(deep=True)
        self._total = max(self._total, run.cells_total)

    def put_cells(self, cells: Sequence[CellRecord]) -> None:
        for cell in cells:
            self._done += 1
            self._total = max(self._total, self._done)
            msg = JobProgress(
                job_id=self._job.job_id,
                attempt=self._job.attempt,
                cell_index=cell.cell_index,
                cell_id=cell.cell_id,
                status=cell.status,
                duration_s=max(0.0, cell.duration_s),
                cells_done=self._done,
                cells_total=self._total,
                started_at=cell.started_at,
                replayed=cell.replayed,
                error_name=cell.error_name,
                error_message=cell.error_message,
            )
            self._loop.call_soon_threadsafe(self._outbox.put_nowait, msg)

    def flush(self, timeout: float | None = None) -> None:
        return None

    def close(self, timeout: float | None = None) -> None:
        return None

    async def finish(self) -> None:
        """Wait until every progress message put so far is sent."""
        self._loop.call_soon_threadsafe(self._outbox.put_nowait, None)
        await self._sender

    async def _send_all(self) -> None:
        while (msg := await self._outbox.get()) is not None:
            await _send_safely(self._send, msg)


@dataclass
class _Running:
    ref: JobRef
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_msg: JobCancel | None = None
    task: asyncio.Task[None] | None = None


class EngineRunner:
    """Runs assigned jobs on ``pool``'s kernels in ``work_dir``; see the module docstring.

    ``max_concurrent_jobs`` (default: the pool's size) caps the jobs held at once; an
    assignment beyond it is rejected.
    """

    def __init__(
        self, pool: KernelPool, work_dir: str | Path, *, max_concurrent_jobs: int | None = None
    ) -> None:
        self.pool = pool
        self.work_dir = Path(work_dir)
        self.max_concurrent_jobs = max_concurrent_jobs or pool.size
        self._jobs: dict[str, _Running] = {}

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
        else:
            log.debug("no checkpoint transfer yet; ignored %s", msg.type)

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
        recorder = _ProgressRecorder(msg, send)
        result: RunResult | None = None
        error: tuple[str, str] | None = None
        try:
            result = await self._execute(msg, running, recorder)
        except (CasareError, ValueError, OSError) as exc:  # bad parameters, broken notebook
            error = (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        except Exception as exc:
            log.exception("job %s failed to run", msg.job_id)
            error = (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        finally:
            await recorder.finish()
            self._jobs.pop(msg.job_id, None)
        duration = round(time.monotonic() - started, 6)
        await _send_safely(send, self._final(msg, running, result, error, duration))

    async def _execute(
        self, msg: JobAssign, running: _Running, recorder: _ProgressRecorder
    ) -> RunResult:
        options = None
        if msg.timeouts.cell_s is not None or msg.timeouts.run_s is not None:
            options = Options(cell_timeout=msg.timeouts.cell_s, run_timeout=msg.timeouts.run_s)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return await arun_notebook(
            msg.workflow_path,
            {**msg.parameters, **msg.secret_parameters},
            notebook=json.dumps(msg.notebook).encode("utf-8"),
            run_id=msg.job_id,
            recorder=recorder,
            kernels=self.pool,
            state_dir=self.work_dir / "state",
            cwd=self.work_dir,
            cancel=running.cancel,
            options=options,
            source="robot",
        )

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
        output = _read_notebook(Path(result.output_path))
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
            status = RunStatus.FAILED  # completed, but the output notebook is unreadable
        return JobFailed(
            **ref,
            status=status,
            failed_cell=result.failed_cell,
            failed_cell_id=result.failed_cell_id,
            error_name=result.error_name or ("OutputError" if output is None else None),
            error_message=result.error_message
            or ("cannot read the output notebook" if output is None else None),
            output_notebook=output,
            duration_s=duration,
        )


def _read_notebook(path: Path) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_bytes())
        if isinstance(data, dict) and isinstance(data.get("cells"), list):
            return data
    return None
