"""Chaining: a workflow submitted when a job of another one finishes; and job outputs.

:class:`OutputRecorder` stores the values a job records with ``casare_nb.output`` as its
cells arrive (``job_progress``), in the orchestrator's ``OutputStore``. A cell recording
nothing costs one look at its outputs.

:class:`Chainer` listens to every job reaching a final status. For each enabled trigger of
kind ``on_success`` (the job completed) or ``on_failure`` (it failed, timed out or is dead;
a cancelled job chains nothing) whose ``after_workflow`` is the job's workflow, it submits
the trigger's workflow with the trigger's parameters, plus, where the next workflow's
parameters cell declares them (and the trigger does not set them):

- ``previous_run_id``: the finished job's id;
- each output the finished job recorded, by name.

Each (trigger, finished job) submits once: the chainer claims it as a delivery of the
trigger (``claim_delivery(trigger_id, delivery_id=<finished job id>, signature="chain")``)
before submitting, and releases the claim if the submit fails (logged). Chains of chains
work; a chain longer than ``max_depth`` links (a cycle, e.g. a workflow chained after
itself) stops there with an error in the log. Jobs that finished while no chainer ran
(the orchestrator was down) chain nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from casare_nb.core.errors import CasareError
from casare_nb.core.ids import new_run_id
from casare_nb.core.models import Job, RunStatus, TriggerKind, TriggerRef
from casare_nb.core.outputs import cell_outputs
from casare_nb.core.params import read_schema
from casare_nb.core.triggers import PREVIOUS_RUN_PARAMETER, Trigger
from casare_nb.notebook.workflow import load_workflow
from casare_nb.orchestrator.triggers.desk import JobDesk
from casare_nb.store.interfaces import OutputStore, TriggerStore

__all__ = ["CHAIN_SIGNATURE", "MAX_CHAIN_DEPTH", "Chainer", "OutputRecorder"]

logger = logging.getLogger("casare_nb.orchestrator.triggers.chaining")

MAX_CHAIN_DEPTH: Final = 20
"""A job with this many chained jobs before it chains no further (cycles end)."""
CHAIN_SIGNATURE: Final = "chain"
"""The ``signature`` of the delivery a chained submission claims."""

_FIRES_ON: Final = {
    RunStatus.COMPLETED: TriggerKind.ON_SUCCESS,
    RunStatus.FAILED: TriggerKind.ON_FAILURE,
    RunStatus.TIMEOUT: TriggerKind.ON_FAILURE,
    RunStatus.DEAD: TriggerKind.ON_FAILURE,
}
_STOP_TIMEOUT_S: Final = 30.0


class OutputRecorder:
    """Stores what jobs record with ``casare_nb.output``, cell by cell, as it arrives."""

    def __init__(self, jobs: JobDesk, store: OutputStore) -> None:
        self.jobs = jobs
        self.store = store
        self._writes: dict[str, asyncio.Task[None]] = {}  # job id -> its latest write

    def start(self) -> None:
        """Listen to the executed cells of every job (call on the event loop)."""
        listeners = self.jobs.cell_listeners
        if self._on_cell not in listeners:
            listeners.append(self._on_cell)

    async def stop(self) -> None:
        """Stop listening, once what was received is stored."""
        with contextlib.suppress(ValueError):
            self.jobs.cell_listeners.remove(self._on_cell)
        await self.settled()

    async def settled(self, job_id: str | None = None) -> None:
        """Return once the outputs received so far (of ``job_id``, or of every job) are
        stored (or failed to be: logged)."""
        if job_id is None:
            tasks = list(self._writes.values())
        else:
            task = self._writes.get(job_id)
            tasks = [] if task is None else [task]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _on_cell(self, job: Job, cell_index: int, cell: dict[str, Any]) -> None:
        values = cell_outputs(cell)
        if not values:
            return
        found = {name: (value, cell_index) for name, value in values.items()}
        earlier = self._writes.get(job.job_id)
        task = asyncio.get_running_loop().create_task(
            self._write(earlier, job.job_id, job.attempt, found)
        )
        self._writes[job.job_id] = task
        task.add_done_callback(functools.partial(self._written, job.job_id))

    async def _write(
        self,
        earlier: asyncio.Task[None] | None,
        job_id: str,
        attempt: int,
        values: Mapping[str, tuple[Any, int | None]],
    ) -> None:
        if earlier is not None:  # a job's writes in the order its cells ran
            await asyncio.gather(earlier, return_exceptions=True)
        try:
            await asyncio.to_thread(self.store.record_outputs, job_id, attempt, values)
        except Exception:
            logger.exception("cannot store the outputs of job %s", job_id)

    def _written(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._writes.get(job_id) is task:
            del self._writes[job_id]


class Chainer:
    """Submits the workflows chained after finished jobs; see the module docstring.

    Records the jobs' outputs too, with its own :class:`OutputRecorder` unless given one
    (then the caller starts and stops it)."""

    def __init__(
        self,
        jobs: JobDesk,
        store: TriggerStore,
        outputs: OutputStore,
        *,
        recorder: OutputRecorder | None = None,
        max_depth: int = MAX_CHAIN_DEPTH,
    ) -> None:
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, not {max_depth}")
        self.jobs = jobs
        self.store = store
        self.outputs = outputs
        self.max_depth = max_depth
        self.recorder = recorder or OutputRecorder(jobs, outputs)
        self._own_recorder = recorder is None
        self._finished: list[Job] = []  # finished jobs not looked at yet
        self._wake = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task[None] | None = None
        self._fires: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        """Listen to finished jobs (call on the event loop)."""
        if self._worker is not None:
            return
        self._closing = False
        if self._own_recorder:
            self.recorder.start()
        self.jobs.finished_listeners.append(self._on_finished)
        self._worker = asyncio.get_running_loop().create_task(self._work(), name="casare-chaining")

    async def stop(self) -> None:
        """Stop listening, once the jobs that finished so far have chained what they chain."""
        with contextlib.suppress(ValueError):
            self.jobs.finished_listeners.remove(self._on_finished)
        worker, self._worker = self._worker, None
        if worker is not None:
            self._closing = True
            self._wake.set()
            try:
                async with asyncio.timeout(_STOP_TIMEOUT_S):
                    await worker
                    while self._fires:
                        await asyncio.gather(*self._fires, return_exceptions=True)
            except TimeoutError:
                logger.error("chaining did not finish in %g s: stopped", _STOP_TIMEOUT_S)
                for task in [worker, *self._fires]:
                    task.cancel()
        if self._own_recorder:
            await self.recorder.stop()

    def _on_finished(self, job: Job) -> None:
        if job.status in _FIRES_ON:
            self._finished.append(job)
            self._wake.set()

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._finished = self._finished, []
            if batch:
                try:
                    matches = await asyncio.to_thread(self._match, batch)
                except Exception:
                    logger.exception("cannot read the chaining triggers")
                    matches = []
                for trigger, job in matches:
                    task = asyncio.create_task(self._fire(trigger, job))
                    self._fires.add(task)
                    task.add_done_callback(self._fires.discard)
            if self._closing and not self._finished:
                return

    def _match(self, batch: list[Job]) -> list[tuple[Trigger, Job]]:
        """(trigger, finished job) pairs to submit (blocking: reads the database)."""
        after: dict[Path, list[Trigger]] = {}
        for trigger in self.store.triggers():
            if trigger.enabled and trigger.after_workflow and trigger.kind in _KINDS:
                after.setdefault(_resolved(trigger.after_workflow), []).append(trigger)
        if not after:
            return []
        matches: list[tuple[Trigger, Job]] = []
        for job in batch:
            kind = _FIRES_ON[job.status]
            triggers = [t for t in after.get(_resolved(job.workflow_path), ()) if t.kind is kind]
            if not triggers:
                continue
            if self._depth(job) >= self.max_depth:
                logger.error(
                    "job %s ends a chain of %d jobs: triggers %s not fired (a cycle?)",
                    job.job_id,
                    self.max_depth + 1,
                    ", ".join(t.trigger_id for t in triggers),
                )
                continue
            matches.extend((trigger, job) for trigger in triggers)
        return matches

    def _depth(self, job: Job) -> int:
        """How many chained jobs came before ``job`` (up to ``max_depth``; blocking)."""
        depth = 0
        ref = job.trigger
        while ref is not None and ref.previous_job_id is not None and depth < self.max_depth:
            depth += 1
            previous = self.jobs.job(ref.previous_job_id)
            ref = previous.trigger if previous is not None else None
        return depth

    async def _fire(self, trigger: Trigger, job: Job) -> None:
        """Submit ``trigger``'s workflow after ``job``, once; errors are logged."""
        job_id = new_run_id()
        tid = trigger.trigger_id
        try:
            claim = await asyncio.to_thread(
                self.store.claim_delivery, tid, job.job_id, CHAIN_SIGNATURE, job_id
            )
        except Exception:
            logger.exception("trigger %s: cannot claim job %s", tid, job.job_id)
            return
        if not claim.new:
            logger.info("trigger %s already fired after job %s: %s", tid, job.job_id, claim.job_id)
            return
        try:
            parameters = await self._parameters(trigger, job)
            await self.jobs.submit(
                trigger.workflow_path,
                parameters,
                raw_parameters=trigger.raw_parameters,
                priority=trigger.priority,
                tags=trigger.tags,
                environment=trigger.environment,
                max_retries=trigger.max_retries,
                timeouts=trigger.timeouts,
                source="chain",
                trigger=TriggerRef(kind=trigger.kind, id=tid, previous_job_id=job.job_id),
                job_id=job_id,
            )
        except Exception as exc:
            if isinstance(exc, CasareError):
                logger.error(
                    "trigger %s: cannot submit %s after job %s: %s",
                    tid,
                    trigger.workflow_path,
                    job.job_id,
                    exc,
                )
            else:
                logger.exception(
                    "trigger %s: cannot submit %s after job %s",
                    tid,
                    trigger.workflow_path,
                    job.job_id,
                )
            try:
                await asyncio.to_thread(self.store.release_delivery, tid, job.job_id)
            except Exception:
                logger.exception("trigger %s: cannot release job %s", tid, job.job_id)
            return
        logger.info(
            "trigger %s: job %s %s, submitted job %s", tid, job.job_id, job.status.value, job_id
        )

    async def _parameters(self, trigger: Trigger, job: Job) -> dict[str, Any]:
        """The trigger's parameters, plus the previous run id and the finished job's
        outputs the next workflow declares and the trigger does not set."""
        declared = await asyncio.to_thread(_declared, trigger.workflow_path)
        wanted = declared - set(trigger.parameters) - set(trigger.raw_parameters)
        passed: dict[str, Any] = {}
        if wanted - {PREVIOUS_RUN_PARAMETER}:
            await self.recorder.settled(job.job_id)
            outputs = await asyncio.to_thread(self.outputs.outputs, job.job_id)
            passed.update((k, v) for k, v in outputs.items() if k in wanted)
        if PREVIOUS_RUN_PARAMETER in wanted:
            passed[PREVIOUS_RUN_PARAMETER] = job.job_id
        return {**trigger.parameters, **passed}


_KINDS: Final = frozenset({TriggerKind.ON_SUCCESS, TriggerKind.ON_FAILURE})


def _resolved(path: str) -> Path:
    try:
        return Path(path).resolve()
    except OSError:
        return Path(path).absolute()


def _declared(path: str) -> set[str]:
    """The parameter names a workflow declares (blocking: reads the notebook)."""
    nb, _ = load_workflow(path)
    return set(read_schema(nb).names())
