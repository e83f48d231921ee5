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
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, DeadKernelError
from nbformat import NotebookNode

from casare_nb.core.cells import source_sha256
from casare_nb.core.injection import Scrubber
from casare_nb.core.models import CellRecord, CellStatus, RunStatus
from casare_nb.core.parameters_cell import PARAMETERS_TAG
from casare_nb.notebook.hooks import Hooks
from casare_nb.notebook.kernels import KernelCallError, KernelSession, casare_code
from casare_nb.notebook.state import AttemptPaths, StateDir, write_json_atomic
from casare_nb.notebook.workflow import nbformat_node

SKIP_TAG = "skip-execution"
TRUNCATED_NOTICE = "... [casare: {dropped} of output dropped here; limit {limit}] ...\n"
DROPPED_MIME_NOTICE = "[casare: {mime} of {size} dropped; limit {limit}]"


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
    """nbclient with an output cap per cell (:class:`OutputBudget`), the execute reply kept,
    and each output shown to ``on_output`` as it arrives."""

    max_output_bytes: int = 1_000_000
    scrubber: Scrubber = Scrubber(())

    def __init__(self, nb: NotebookNode, **kw: Any) -> None:
        super().__init__(nb, **kw)
        self.budgets: dict[int, OutputBudget] = {}
        self.truncated: set[int] = set()
        self.last_reply: dict[str, Any] | None = None
        self.on_cell_executed = self._keep_reply
        self.on_output: Callable[[int, NotebookNode], None] | None = None

    def _keep_reply(self, **kw: Any) -> None:
        self.last_reply = kw.get("execute_reply")

    def begin(self, cell_index: int) -> None:
        """A cell is about to run: its outputs start from nothing."""
        self.budgets.pop(cell_index, None)
        self.truncated.discard(cell_index)

    def output(
        self, outs: list[NotebookNode], msg: dict[str, Any], display_id: str | None, cell_index: int
    ) -> NotebookNode | None:
        out: NotebookNode | None = super().output(outs, msg, display_id, cell_index)
        if out is None or not outs or outs[-1] is not out:
            return out  # nothing appended (an output widget took it)
        if self.on_output is not None:
            self.on_output(cell_index, out)
        budget = self.budgets.get(cell_index)
        if budget is None:
            budget = self.budgets[cell_index] = OutputBudget(self.max_output_bytes)
        before = list(outs) if self._display_id_map else None
        moved = budget.add(outs)
        if moved and before is not None:
            self._reindex(cell_index, before, outs)
        if budget.dropped:
            self.truncated.add(cell_index)
        return out

    def _update_display_id(self, display_id: str, msg: dict[str, Any]) -> None:
        """An update of a display is scrubbed of secrets (it may change an output of a cell
        already scrubbed and reported) and cut to the limit as a new display would be."""
        content = msg.get("content")
        data = content.get("data") if isinstance(content, dict) else None
        if isinstance(content, dict) and isinstance(data, dict) and data:
            if self.scrubber:
                data = content["data"] = {k: self.scrubber.json(v) for k, v in data.items()}
                if isinstance(content.get("metadata"), dict):
                    content["metadata"] = self.scrubber.json(content["metadata"])
            limit = self.max_output_bytes
            probe: dict[str, Any] = {"output_type": "display_data", "data": dict(data)}
            if shrink_output(probe, limit - limit // 2, limit):
                content["data"] = probe["data"]
                self.truncated.update(self._display_id_map.get(display_id, {}))
        super()._update_display_id(display_id, msg)

    def _reindex(
        self, cell_index: int, before: list[NotebookNode], outs: list[NotebookNode]
    ) -> None:
        """Point the display ids of this cell at their outputs again after the budget moved
        (or dropped) some: ``before`` is the list the indices were taken in."""
        position = {id(o): i for i, o in enumerate(outs)}
        for cells in self._display_id_map.values():
            indices = cells.get(cell_index)
            if indices:
                nodes = [before[i] for i in indices if i < len(before)]
                cells[cell_index] = [position[id(n)] for n in nodes if id(n) in position]


# ---------------------------------------------------------------------------------------------
# the output budget of a cell
# ---------------------------------------------------------------------------------------------


class OutputBudget:
    """The outputs of one cell kept within ``limit`` bytes, as they arrive: the first half
    (the head) and the last half (the tail), and between them one notice (a stderr stream)
    saying how much was dropped. Streams are cut inside their text; a display or result
    larger than half the limit keeps its text mimetypes cut (head and tail) and loses the
    others (an image, JSON) with a notice in its ``text/plain``; errors are always kept
    (their text cut likewise). ``dropped`` counts the bytes that were left out."""

    def __init__(self, limit: int) -> None:
        self.limit = max(0, limit)
        self.head_limit = self.limit // 2
        self.tail_limit = self.limit - self.head_limit
        self.dropped = 0
        self.moved = False
        self._start()

    def _start(self, outs: Sequence[NotebookNode] = ()) -> None:
        """Count from ``outs`` (what a cleared cell shows again), nothing cut yet."""
        self.used = sum(output_size(o) for o in outs if o.get("output_type") != "error")
        self.tail_used = 0  # bytes kept after the notice, once there is one
        self.notice: NotebookNode | None = None
        self.notice_at = 0
        self.seen = len(outs)  # len(outs) after the last output

    def add(self, outs: list[NotebookNode]) -> bool:
        """Account for the output just appended to ``outs`` (its last), cutting if need be;
        whether outputs before it moved or went (a notice put in, old ones dropped)."""
        self.moved = False
        if len(outs) != self.seen + 1:  # cleared (clear_output) since the last one
            self._start(outs[:-1])
        out = outs[-1]
        kind = out.get("output_type")
        if kind == "error":
            self.dropped += shrink_output(out, self.tail_limit, self.limit)
        elif self.notice is None:
            size = output_size(out)
            if self.used + size > self.limit and kind != "stream":
                self.dropped += shrink_output(out, self.tail_limit, self.limit)
                size = output_size(out)
            if self.used + size <= self.limit:
                self.used += size
            else:
                self._cut(outs)
        else:
            if kind != "stream":
                self.dropped += shrink_output(out, self.tail_limit, self.limit)
            self.tail_used += output_size(out)
            before = outs[-2] if len(outs) - 2 > self.notice_at else None
            if (
                kind == "stream"
                and before is not None
                and before.get("output_type") == "stream"
                and before.get("name") == out.get("name")
            ):
                before["text"] = _text(before.get("text", "")) + _text(out.get("text", ""))
                outs.pop()
            self._trim(outs)
        self.seen = len(outs)
        return self.moved

    def _cut(self, outs: list[NotebookNode]) -> None:
        """Over the limit for the first time: keep the head, put the notice after it."""
        used, i = 0, 0
        while i < len(outs):
            node = outs[i]
            if node.get("output_type") != "error":
                size = output_size(node)
                if used + size > self.head_limit:
                    break
                used += size
            i += 1
        room = self.head_limit - used
        if i < len(outs) and outs[i].get("output_type") == "stream" and room > 0:
            node = outs[i]
            head, rest = _split_text(_text(node.get("text", "")), room)
            node["text"] = head
            outs.insert(i + 1, nbformat_node({**node, "text": rest}))
            i += 1
        self.notice = nbformat_node({"output_type": "stream", "name": "stderr", "text": ""})
        self.notice_at = i
        outs.insert(i, self.notice)
        self.moved = True
        self.tail_used = sum(
            output_size(o) for o in outs[i + 1 :] if o.get("output_type") != "error"
        )
        self._trim(outs)

    def _trim(self, outs: list[NotebookNode]) -> None:
        """Drop the oldest of the tail until it fits in its half; tell the notice."""
        j = self.notice_at + 1
        while self.tail_used > self.tail_limit and j < len(outs):
            node = outs[j]
            if node.get("output_type") == "error":
                j += 1
                continue
            size = output_size(node)
            excess = self.tail_used - self.tail_limit
            if node.get("output_type") == "stream" and size > excess:
                text = _drop_head(_text(node.get("text", "")), excess)
                lost = size - _text_size(text)
                node["text"] = text
                self.tail_used -= lost
                self.dropped += lost
                break
            del outs[j]
            self.moved = True
            self.tail_used -= size
            self.dropped += size
        if self.notice is not None:
            self.notice["text"] = TRUNCATED_NOTICE.format(
                dropped=human_bytes(self.dropped), limit=human_bytes(self.limit)
            )


def human_bytes(n: int) -> str:
    """``n`` bytes for people: 950 bytes, 200 kB, 49.9 MB (decimal units)."""
    if n < 1000:
        return f"{n} byte" if n == 1 else f"{n} bytes"
    unit, scale = "TB", 10**12
    for name, size in (("kB", 10**3), ("MB", 10**6), ("GB", 10**9)):
        if n < size * 1000:
            unit, scale = name, size
            break
    text = f"{n / scale:.3g}"
    return f"{n / scale:.0f} {unit}" if "e" in text else f"{text} {unit}"


def output_size(out: dict[str, Any]) -> int:
    """The bytes an output holds: a stream's text, every mimetype of a display or result,
    an error's message and traceback (UTF-8; JSON data as JSON text)."""
    kind = out.get("output_type")
    if kind == "stream":
        return _value_size(out.get("text", ""))
    if kind == "error":
        return _value_size(out.get("evalue", "")) + _value_size(out.get("traceback", []))
    data = out.get("data")
    return sum(_value_size(v) for v in data.values()) if isinstance(data, dict) else 0


def shrink_output(out: dict[str, Any], keep: int, limit: int) -> int:
    """Cut one display, result or error output to about ``keep`` bytes, in place; the
    bytes dropped. Text mimetypes (``text/*``) and an error's text keep their head and tail
    around a notice; other mimetypes that do not fit are dropped, said in ``text/plain``."""
    if out.get("output_type") == "error":
        evalue = _text(out.get("evalue", ""))
        traceback = "\n".join(_text(t) for t in out.get("traceback", []))
        if _text_size(evalue) + _text_size(traceback) <= keep:
            return 0
        out["evalue"], lost = cut_text(evalue, keep // 4, limit)
        tb, lost_tb = cut_text(traceback, keep - keep // 4, limit)
        out["traceback"] = tb.split("\n")
        return lost + lost_tb
    data = out.get("data")
    if not isinstance(data, dict) or not data:
        return 0
    sizes = {mime: _value_size(value) for mime, value in data.items()}
    if sum(sizes.values()) <= keep:
        return 0
    share = max(0, keep - _NOTICE_ROOM * len(sizes)) // len(sizes)
    dropped = 0
    notes: list[str] = []
    for mime, size in sizes.items():
        if size <= share:
            continue
        value = data[mime]
        if mime.startswith("text/") and isinstance(value, str | list):
            data[mime], lost = cut_text(_text(value), share, limit)
            dropped += lost
        else:
            del data[mime]
            if isinstance(out.get("metadata"), dict):
                out["metadata"].pop(mime, None)
            dropped += size
            notes.append(
                DROPPED_MIME_NOTICE.format(
                    mime=mime, size=human_bytes(size), limit=human_bytes(limit)
                )
            )
    if notes:
        plain = _text(data.get("text/plain", ""))
        data["text/plain"] = "\n".join([plain, *notes] if plain else notes)
    return dropped


def cut_text(text: str, keep: int, limit: int) -> tuple[str, int]:
    """``text`` kept to its first and last bytes (``keep`` in all) around a line saying how
    much was dropped; and the bytes dropped (0: ``text`` as it was)."""
    size = _text_size(text)
    if size <= keep:
        return text, 0
    keep = max(0, keep - _NOTICE_ROOM)
    head, rest = _split_text(text, keep // 2)
    tail = _drop_head(rest, _text_size(rest) - (keep - keep // 2))
    dropped = size - _text_size(head) - _text_size(tail)
    notice = TRUNCATED_NOTICE.format(dropped=human_bytes(dropped), limit=human_bytes(limit))
    newline = "\n" if head and not head.endswith("\n") else ""
    return f"{head}{newline}{notice}{tail}", dropped


_NOTICE_ROOM = 100  # bytes kept for a notice in a cut text or a display's text/plain


def _text(value: Any) -> str:
    """nbformat text: a string, or a list of strings (lines) as files keep it."""
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else str(value)


def _text_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _value_size(value: Any) -> int:
    if isinstance(value, str):
        return _text_size(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return sum(_text_size(v) for v in value)
    return _text_size(json.dumps(value, default=str))


def _split_text(text: str, at: int) -> tuple[str, str]:
    """``text`` split after its first ``at`` bytes (not inside a character)."""
    if text.isascii():
        return text[:at], text[at:]
    head = text.encode("utf-8")[:at].decode("utf-8", "ignore")
    return head, text[len(head) :]


def _drop_head(text: str, n: int) -> str:
    """``text`` without its first ``n`` bytes (and the rest of a character cut in two)."""
    if n <= 0:
        return text
    if text.isascii():
        return text[n:]
    return text.encode("utf-8")[n:].decode("utf-8", "ignore")


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
        self.scrubber = Scrubber(self.secret_values)
        self.client = _Client(nb, km=session.km, timeout=None, allow_errors=False)
        self.client.kc = session.kc
        self.client.max_output_bytes = self.options.max_output_bytes
        self.client.scrubber = self.scrubber
        self.client.on_output = self._output
        self.checkpointing = self.options.checkpoint and session.is_python
        self.cells_done = 0
        self.kernel_gone = False
        self.secret_source = ""
        self._setup: list[str] = []  # control code prepare() leaves to the next call
        self._start_at = self.options.start_at

    def _output(self, index: int, output: NotebookNode) -> None:
        """Tell the hooks of an output as it arrives (a scrubbed copy if there are secrets;
        the cell's own outputs are scrubbed when it ends)."""
        if self.scrubber:
            holder = nbformat_node({"outputs": [output]})  # from_dict copies
            scrub_outputs(holder, self.scrubber)
            output = holder.outputs[0]
        self.hooks.cell_output(index, output)

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
        if (
            self.checkpointing
            and outcome.status is not RunStatus.CANCELLED
            and not self.kernel_gone  # killed past a timeout's grace: nothing to flush
        ):
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
        self.client.begin(step.index)
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
        late = bool(deadlines) and loop.time() >= min(deadlines)
        if task not in done or (late and status is not CellStatus.OK):
            # past its deadline the cell is a timeout, whatever the kernel said or says
            # after the interrupt (a cell catching KeyboardInterrupt, then raising)
            status = CellStatus.CANCELLED if cancel and cancel.is_set() else CellStatus.TIMEOUT
            name = "Cancelled" if status is CellStatus.CANCELLED else "Timeout"
            message = self._stop_reason(status, t0, run_deadline)
            if task not in done:
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
            error_message=self.scrubber.text(message) if message else None,
            replayed=step.replay,
            output_truncated=step.index in self.client.truncated,
        )

    def _stop_reason(self, status: CellStatus, t0: float, run_deadline: float | None) -> str:
        if status is CellStatus.CANCELLED:
            return "cancelled while the cell ran"
        if run_deadline is not None and asyncio.get_running_loop().time() >= run_deadline - 1e-3:
            return f"run timed out after {self.options.run_timeout:g} s"
        if self.options.cell_timeout is None:  # the awaiting task itself was cancelled
            return "cancelled while the cell ran"
        return f"cell timed out after {self.options.cell_timeout:g} s"

    async def _stop_cell(self, task: asyncio.Future[Any]) -> None:
        """Interrupt the kernel; if the cell does not stop within the grace time, kill it.
        What the cell ends with after the interrupt (its KeyboardInterrupt, whatever a cell
        that caught it raised, the dead kernel) is retrieved and ignored: it timed out."""
        task.add_done_callback(_ignore_outcome)
        with contextlib.suppress(Exception):
            await self.session.interrupt()
        done, _ = await asyncio.wait({task}, timeout=self.options.interrupt_grace)
        if not done:
            task.cancel()
            self.kernel_gone = True
            await self.session.shutdown()

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
        if self.scrubber:
            scrub_outputs(cell, self.scrubber)
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


def _ignore_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def scrub_outputs(cell: NotebookNode, scrubber: Scrubber) -> None:
    """Scrub the secrets out of every output of ``cell``, in place: stream text, errors, and
    every mimetype of a display or result (strings inside JSON data too) and its metadata."""
    for out in cell.get("outputs", []):
        if "text" in out:
            out["text"] = scrubber.json(out["text"])
        if "evalue" in out:
            out["evalue"] = scrubber.text(out["evalue"])
        if "traceback" in out:
            out["traceback"] = scrubber.json(out["traceback"])
        for part in ("data", "metadata"):
            held = out.get(part)
            if isinstance(held, dict):
                for key, value in held.items():
                    held[key] = scrubber.json(value)
