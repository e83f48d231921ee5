"""Execute a notebook cell by cell on a kernel session, checkpointing every cell.

The executor knows nothing of parameters or history tables: it takes a notebook already
parameterised, a list of steps (cells to run, some of them replays), and tells its
:class:`~casare_nb.notebook.hooks.Hooks` about each cell. After each cell it rewrites the
output notebook (checkpoint part a; unless told not to); the kernel-side hook has written the
namespace snapshot (part b) before the cell's reply arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError
from nbformat import NotebookNode

from casare_nb.core.cells import source_sha256
from casare_nb.core.injection import scrub
from casare_nb.core.models import CellRecord, CellStatus, RunStatus
from casare_nb.core.parameters_cell import PARAMETERS_TAG
from casare_nb.notebook.hooks import Hooks
from casare_nb.notebook.kernels import KernelCallError, KernelSession, casare_code
from casare_nb.notebook.state import AttemptPaths, StateDir, write_json_atomic
from casare_nb.notebook.workflow import nbformat_node

SKIP_TAG = "skip-execution"
TRUNCATED_NOTICE = "\n[casare: output truncated after {limit} bytes]\n"


@dataclass(frozen=True)
class Step:
    """One cell to execute; ``replay`` marks a cell re-run only to rebuild state."""

    index: int
    replay: bool = False


@dataclass
class Options:
    """How to execute: limits and checkpoint thresholds."""

    cell_timeout: float | None = None
    run_timeout: float | None = None
    max_output_bytes: int = 1_000_000
    checkpoint: bool = True
    # rewrite the output notebook after every cell, and write it at the end; a robot turns
    # both off: its orchestrator keeps the notebook so far from the cells job_progress
    # carries, and the result holds the final one
    save_each_cell: bool = True
    save_output: bool = True
    interrupt_grace: float = 5.0
    large_bytes: int = 1 << 20
    fork_bytes: int = 16 << 20
    # run the first cell at this instant (aware), not before: a job sent ahead of its due
    # time is prepared (kernel, checkpoint hook, plan) first, then waits (limits start then)
    start_at: datetime | None = None


@dataclass
class Outcome:
    """How the steps ended."""

    status: RunStatus
    cells: list[CellRecord] = field(default_factory=list)
    failed_cell: int | None = None
    failed_cell_id: str | None = None
    error_name: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    checkpoint_errors: list[str] = field(default_factory=list)


def code_steps(nb: NotebookNode, start: int = 0) -> list[Step]:
    """The cells from ``start`` on that execute: code, non-empty, not tagged skip-execution."""
    return [Step(i) for i in range(start, len(nb.cells)) if executes(nb.cells[i])]


def executes(cell: NotebookNode) -> bool:
    return bool(
        cell.cell_type == "code"
        and cell.source.strip()
        and SKIP_TAG not in cell.metadata.get("tags", [])
    )


class _Client(NotebookClient):  # type: ignore[misc]
    """nbclient with an output cap per cell and the execute reply kept."""

    max_output_bytes: int = 1_000_000

    def __init__(self, nb: NotebookNode, **kw: Any) -> None:
        super().__init__(nb, **kw)
        self.out_bytes: dict[int, int] = {}
        self.truncated: set[int] = set()
        self.last_reply: dict[str, Any] | None = None
        self.on_cell_executed = self._keep_reply

    def _keep_reply(self, **kw: Any) -> None:
        self.last_reply = kw.get("execute_reply")

    def output(
        self, outs: list[NotebookNode], msg: dict[str, Any], display_id: str | None, cell_index: int
    ) -> NotebookNode | None:
        size = len(str(msg.get("content", "")))
        used = self.out_bytes.get(cell_index, 0) + size
        self.out_bytes[cell_index] = used
        if used > self.max_output_bytes:
            if cell_index not in self.truncated:
                self.truncated.add(cell_index)
                note = {
                    "output_type": "stream",
                    "name": "stderr",
                    "text": TRUNCATED_NOTICE.format(limit=self.max_output_bytes),
                }
                outs.append(nbformat_node(note))
            return None
        out: NotebookNode | None = super().output(outs, msg, display_id, cell_index)
        return out


class Executor:
    """Runs steps of one attempt on one kernel session."""

    def __init__(
        self,
        session: KernelSession,
        nb: NotebookNode,
        *,
        run_id: str,
        attempt: int,
        state: StateDir,
        options: Options | None = None,
        hooks: Hooks | None = None,
        secret_values: Sequence[str] = (),
    ) -> None:
        self.session = session
        self.nb = nb
        self.run_id = run_id
        self.attempt = attempt
        self.state = state
        self.paths: AttemptPaths = state.attempt(run_id, attempt).create()
        self.options = options or Options()
        self.hooks = hooks or Hooks()
        self.secret_values = [s for s in secret_values if s]
        self.client = _Client(nb, km=session.km, timeout=None, allow_errors=False)
        self.client.kc = session.kc
        self.client.max_output_bytes = self.options.max_output_bytes
        self.checkpointing = self.options.checkpoint and session.is_python
        self.cells_done = 0
        self.kernel_gone = False
        self.secret_source = ""
        self._setup: list[str] = []  # control code prepare() leaves to the next call
        self._start_at = self.options.start_at

    # ------------------------------------------------------------------ set-up

    async def prepare(self, *, secret_names: Sequence[str], secret_source: str = "") -> None:
        """Install the checkpoint hook and inject secrets silently (never into the notebook).

        Both go to the kernel with the next control call (the plan of :meth:`run`, or a
        :meth:`restore`): one round trip before the first cell instead of three. Secrets are
        injected then (a resume starts past the parameters cell) and again right after the
        parameters cell runs, which would otherwise reset them to its defaults."""
        self.secret_source = secret_source
        if self.checkpointing:
            self._setup.append(
                self.session.checkpointing_code(
                    blob_dir=str(self.state.blob_dir),
                    large_bytes=self.options.large_bytes,
                    fork_bytes=self.options.fork_bytes,
                    secret_names=list(secret_names),
                )
            )
        if secret_source:
            self._setup.append(secret_source)

    async def restore(self, manifest: str, names: list[str] | None = None) -> dict[str, Any]:
        """Load a checkpointed namespace (or ``names`` of it) into the kernel; answer
        loaded/failed/skipped names."""
        answer: dict[str, Any] = await self._control(casare_code("restore", manifest, names))
        return answer

    async def user_names(self) -> list[str]:
        """The names of the user's variables in the kernel (after any pending set-up)."""
        names: list[str] = await self._control(casare_code("user_names"))
        return names

    async def _control(self, code: str = "None", *, timeout: float = 120) -> Any:
        """Run control code silently, after the set-up :meth:`prepare` left: one round trip."""
        setup, self._setup = self._setup, []
        answer = await self.session.call("\n".join([*setup, code]), timeout=timeout)
        if setup and self.checkpointing:
            self.session.checkpoint_ready = True
        return answer

    async def _wait_for_start(self, cancel: asyncio.Event | None) -> None:
        """Until ``options.start_at`` (on the loop's monotonic clock), or a cancel; once."""
        start_at, self._start_at = self._start_at, None
        if start_at is None:
            return
        delay = (start_at - datetime.now(UTC)).total_seconds()
        if delay <= 0:
            return
        if cancel is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cancel.wait(), delay)

    # ------------------------------------------------------------------ run

    async def run(
        self,
        steps: Sequence[Step],
        *,
        cancel: asyncio.Event | None = None,
        done: int = 0,
        total: int | None = None,
    ) -> Outcome:
        """Execute ``steps`` in order; stop at the first cell that does not end ``ok``.

        ``done`` and ``total`` place these steps in a longer run, for progress reports."""
        loop = asyncio.get_running_loop()
        if self.checkpointing:
            await self._control(casare_code("push_plan", [self._plan_entry(s) for s in steps]))
        elif self._setup:
            await self._control()
        await self._wait_for_start(cancel)
        run_deadline = loop.time() + self.options.run_timeout if self.options.run_timeout else None
        outcome = Outcome(status=RunStatus.COMPLETED)
        total = total if total is not None else done + len(steps)
        for position, step in enumerate(steps, start=done + 1):
            await self.hooks.cell_started(step.index, position, total)
            record = await self._run_step(step, run_deadline, cancel)
            outcome.cells.append(record)
            self._after_cell(step, record)
            await self.hooks.cell_finished(record, self.nb.cells[step.index], position, total)
            if record.status is not CellStatus.OK:
                self._fail(outcome, step, record)
                break
            if self.secret_source and PARAMETERS_TAG in self.nb.cells[step.index].metadata.get(
                "tags", []
            ):
                await self.session.call(self.secret_source)
            if self.checkpointing and not self.paths.has_checkpoint(self._cell_id(step.index)):
                errors = await self._flush()
                if errors:
                    outcome.checkpoint_errors = errors
                    self._fail(outcome, step, record, checkpoint=errors[0])
                    break
        if self.checkpointing and outcome.status is not RunStatus.CANCELLED:
            with contextlib.suppress(KernelCallError, TimeoutError):
                outcome.checkpoint_errors += await self._flush()
        return outcome

    def _fail(
        self, outcome: Outcome, step: Step, record: CellRecord, *, checkpoint: str | None = None
    ) -> None:
        outcome.failed_cell = step.index
        outcome.failed_cell_id = self._cell_id(step.index)
        if checkpoint:
            outcome.status = RunStatus.FAILED
            outcome.error_name = "CheckpointError"
            outcome.error_message = checkpoint
            return
        outcome.status = {
            CellStatus.TIMEOUT: RunStatus.TIMEOUT,
            CellStatus.CANCELLED: RunStatus.CANCELLED,
        }.get(record.status, RunStatus.FAILED)
        outcome.error_name = record.error_name
        outcome.error_message = record.error_message
        outcome.traceback = self._traceback(step.index)

    async def _flush(self) -> list[str]:
        answer = await self._control(casare_code("flush"), timeout=600)
        return list(answer.get("errors", [])) if answer else []

    def _cell_id(self, index: int) -> str:
        return str(self.nb.cells[index].get("id") or f"cell-{index}")

    def _plan_entry(self, step: Step) -> dict[str, Any]:
        cell = self.nb.cells[step.index]
        cid = self._cell_id(step.index)
        return {
            "sha": source_sha256(cell.source),
            "index": step.index,
            "id": cid,
            "manifest": None if step.replay else str(self.paths.manifest(cid)),
        }

    async def _run_step(
        self, step: Step, run_deadline: float | None, cancel: asyncio.Event | None
    ) -> CellRecord:
        loop = asyncio.get_running_loop()
        cell = self.nb.cells[step.index]
        started_at = datetime.now(UTC)
        if cancel is not None and cancel.is_set():
            # cancelled between cells: do not send the cell at all (nothing to interrupt)
            return CellRecord(
                run_id=self.run_id,
                attempt=self.attempt,
                cell_index=step.index,
                cell_id=self._cell_id(step.index),
                status=CellStatus.CANCELLED,
                started_at=started_at,
                duration_s=0.0,
                error_name="Cancelled",
                error_message="cancelled before the cell started",
                replayed=step.replay,
            )
        t0 = loop.time()
        deadlines = [d for d in (run_deadline,) if d is not None]
        if self.options.cell_timeout:
            deadlines.append(t0 + self.options.cell_timeout)
        self.client.last_reply = None
        self.cells_done += 1
        task = asyncio.ensure_future(
            self.client.async_execute_cell(cell, step.index, execution_count=self.cells_done)
        )
        waiters: set[asyncio.Future[Any]] = {task}
        cancel_wait = asyncio.ensure_future(cancel.wait()) if cancel else None
        if cancel_wait:
            waiters.add(cancel_wait)
        timeout = max(0.0, min(deadlines) - loop.time()) if deadlines else None
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            done = set()
            if cancel is not None:
                cancel.set()
        finally:
            if cancel_wait:
                cancel_wait.cancel()
        status, name, message = CellStatus.OK, None, None
        if task in done:
            status, name, message = self._classify(task)
        else:
            status = CellStatus.CANCELLED if cancel and cancel.is_set() else CellStatus.TIMEOUT
            name = "Cancelled" if status is CellStatus.CANCELLED else "Timeout"
            message = self._stop_reason(status, t0, run_deadline)
            await self._stop_cell(task)
        return CellRecord(
            run_id=self.run_id,
            attempt=self.attempt,
            cell_index=step.index,
            cell_id=self._cell_id(step.index),
            status=status,
            started_at=started_at,
            duration_s=round(loop.time() - t0, 6),
            error_name=name,
            error_message=scrub(message, self.secret_values) if message else None,
            replayed=step.replay,
            output_truncated=step.index in self.client.truncated,
        )

    def _stop_reason(self, status: CellStatus, t0: float, run_deadline: float | None) -> str:
        if status is CellStatus.CANCELLED:
            return "cancelled while the cell ran"
        if run_deadline is not None and asyncio.get_running_loop().time() >= run_deadline - 1e-3:
            return f"run timed out after {self.options.run_timeout:g} s"
        return f"cell timed out after {self.options.cell_timeout:g} s"

    async def _stop_cell(self, task: asyncio.Future[Any]) -> None:
        """Interrupt the kernel; if the cell does not stop within the grace time, kill it."""
        with contextlib.suppress(Exception):
            await self.session.interrupt()
        done, _ = await asyncio.wait({task}, timeout=self.options.interrupt_grace)
        if not done:
            task.cancel()
            self.kernel_gone = True
            await self.session.shutdown()
        elif not task.cancelled():
            task.exception()  # retrieved: the interrupt's KeyboardInterrupt is expected

    def _classify(self, task: asyncio.Future[Any]) -> tuple[CellStatus, str | None, str | None]:
        exc = task.exception()
        if exc is None:
            reply = self.client.last_reply or {}
            payload = reply.get("content", {}).get("payload", [])
            if any(p.get("source") == "ask_exit" for p in payload):
                return CellStatus.EXITED, "SystemExit", "the cell called exit(); the kernel stops"
            return CellStatus.OK, None, None
        if isinstance(exc, CellExecutionError):
            if exc.ename == "SystemExit":
                return CellStatus.EXITED, "SystemExit", f"the cell called sys.exit({exc.evalue})"
            return CellStatus.ERROR, exc.ename, exc.evalue
        if isinstance(exc, DeadKernelError):
            return CellStatus.KERNEL_DIED, "DeadKernelError", "the kernel died while the cell ran"
        return CellStatus.ERROR, type(exc).__name__, str(exc)

    def _after_cell(self, step: Step, record: CellRecord) -> None:
        cell = self.nb.cells[step.index]
        if self.secret_values:
            _scrub_outputs(cell, self.secret_values)
        cell.metadata["casare"] = {
            "status": record.status.value,
            "duration": record.duration_s,
            "attempt": self.attempt,
            "source_sha256": source_sha256(cell.source),
            **({"replayed": True} if step.replay else {}),
            **({"output_truncated": True} if record.output_truncated else {}),
        }
        if self.options.save_each_cell:
            self.save()

    def save(self) -> None:
        """Write the output notebook so far (atomic rename)."""
        write_json_atomic(self.paths.output, self.nb)

    def _traceback(self, index: int) -> str | None:
        for out in self.nb.cells[index].get("outputs", []):
            if out.get("output_type") == "error":
                return "\n".join(out.get("traceback", []))
        return None


def _scrub_outputs(cell: NotebookNode, secrets: Sequence[str]) -> None:
    for out in cell.get("outputs", []):
        if "text" in out:
            out["text"] = scrub(out["text"], secrets)
        if "evalue" in out:
            out["evalue"] = scrub(out["evalue"], secrets)
        if "traceback" in out:
            out["traceback"] = [scrub(t, secrets) for t in out["traceback"]]
        for key, value in out.get("data", {}).items():
            if isinstance(value, str):
                out["data"][key] = scrub(value, secrets)
