"""The triggers, together: what the orchestrator holds of schedules, webhooks, file watch and
chaining.

:class:`Triggers` holds the four parts (the :class:`~.schedules.Scheduler`, the
:class:`~.webhooks.WebhookReceiver`, the
:class:`~.watch.FileWatcher` and the :class:`~.chaining.Chainer`), starts and stops them
with the orchestrator, and turns what a person writes (:class:`ScheduleFields`,
:class:`TriggerFields`: the API's requests, or a workflow notebook's metadata) into stored
:class:`Schedule` and :class:`Trigger` rows, refusing bad ones with one clear line.

A workflow file can carry its own schedules and triggers in its metadata under
``"casare"`` (:class:`~casare_nb.core.triggers.Declarations`). :meth:`Triggers.sync_declarations`
reads every notebook of the workflows directory when the orchestrator starts; each
declaration gets an id derived from the file and its position, so its fires and handled
events survive restarts, and a declaration removed from its file is removed here too.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Unpack

from pydantic import ValidationError

from casare_nb.core.errors import CasareError, WorkflowError
from casare_nb.core.models import Job, SubmitOptions, TriggerKind
from casare_nb.core.params import ParameterError, read_schema
from casare_nb.core.triggers import (
    Declarations,
    Schedule,
    ScheduleFields,
    ScheduleKind,
    Trigger,
    TriggerError,
    TriggerFields,
    parse_duration,
)
from casare_nb.notebook.workflow import load_workflow
from casare_nb.orchestrator.triggers.chaining import Chainer
from casare_nb.orchestrator.triggers.desk import TriggersHeld
from casare_nb.orchestrator.triggers.schedules import Scheduler
from casare_nb.orchestrator.triggers.watch import FileWatcher, check
from casare_nb.orchestrator.triggers.webhooks import WebhookReceiver
from casare_nb.store.interfaces import OutputStore, TriggerStore

if TYPE_CHECKING:
    from casare_nb.orchestrator.triggers.desk import JobDesk

__all__ = ["METADATA_KEY", "Triggers", "read_declarations"]

logger = logging.getLogger(__name__)

METADATA_KEY: Final = "casare"
_ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_METADATA_ORIGIN: Final = "metadata:"


def _new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(5)}"


def read_declarations(nb: Mapping[str, Any], source: str) -> Declarations:
    """The schedules and triggers a notebook declares in ``metadata.casare`` (none if absent);
    a :class:`TriggerError` naming ``source`` if they do not fit the model."""
    raw = (nb.get("metadata") or {}).get(METADATA_KEY)
    if raw is None:
        return Declarations()
    try:
        return Declarations.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise TriggerError(
            f"{source}: metadata.{METADATA_KEY}.{where}: {first.get('msg', 'invalid')}"
        ) from None


class _HeldDesk:
    """The job desk the triggers see: the orchestrator's, refusing (:class:`TriggersHeld`)
    while the triggers are held for maintenance."""

    def __init__(self, jobs: JobDesk, triggers: Triggers) -> None:
        self._jobs = jobs
        self._triggers = triggers

    def now(self) -> datetime:
        return self._jobs.now()

    async def submit(
        self,
        workflow_path: str | os.PathLike[str],
        parameters: Mapping[str, Any] | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Job:
        if self._triggers.held_since is not None:
            raise TriggersHeld(
                "schedules and triggers are held for maintenance (casare-nb maintenance off)"
            )
        return await self._jobs.submit(workflow_path, parameters, **options)

    def job(self, job_id: str) -> Job | None:
        return self._jobs.job(job_id)

    def unfinished_jobs(self) -> list[Job]:
        return self._jobs.unfinished_jobs()

    @property
    def finished_listeners(self) -> list[Callable[[Job], None]]:
        return self._jobs.finished_listeners

    @property
    def finished_elsewhere_listeners(self) -> list[Callable[[Job], None]]:
        listeners: list[Callable[[Job], None]] = getattr(
            self._jobs, "finished_elsewhere_listeners", []
        )
        return listeners

    @property
    def cell_listeners(self) -> list[Callable[[Job, int, dict[str, Any]], None]]:
        return self._jobs.cell_listeners


class Triggers:
    """The orchestrator's schedules and triggers (see the module docstring).

    :meth:`hold` holds them all for maintenance: due times pass unfired (each recorded
    ``skipped: maintenance``), webhooks answer 503, file watch stops (the files that arrive
    meanwhile are submitted when the hold ends), chaining submits nothing; each schedule's
    paused and each trigger's enabled state is left as it is."""

    def __init__(
        self,
        jobs: JobDesk,
        store: TriggerStore,
        outputs: OutputStore,
        *,
        environ: Mapping[str, str] | None = None,
        workflows_dir: Path | None = None,
    ) -> None:
        self.held_since: datetime | None = None
        desk = _HeldDesk(jobs, self)
        self.jobs = desk
        self.workflows_dir = workflows_dir
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.store = store
        self.outputs = outputs
        self.scheduler = Scheduler(desk, store)
        self.hooks = WebhookReceiver(desk, store, environ=self.environ)
        self.watcher = FileWatcher(desk, store)
        self.chainer = Chainer(desk, store, outputs)
        self._started = False
        self._watching = False
        self._leading = True  # False: another orchestrator of a shared database leads
        self._known_watches: set[str] = set()  # file watches :meth:`sync` saw last time

    async def start(self, *, held_since: datetime | None = None, lead: bool = True) -> None:
        """Read the workflows' declarations, then start chaining, schedules and file watch
        (held for maintenance since ``held_since``, if given). ``lead=False`` (one of several
        orchestrators on a shared database, not the leader yet): chaining and webhooks only,
        until :meth:`lead`."""
        self.held_since = held_since
        self.scheduler.held = held_since is not None
        if self.workflows_dir is not None:
            try:
                await asyncio.to_thread(self.sync_declarations, self.workflows_dir)
            except CasareError as exc:  # one bad file must not keep the orchestrator down
                logger.error("workflow declarations: %s", exc)
        self.chainer.start()
        self._started = True
        self._leading = lead
        if lead:
            await self.lead()

    async def lead(self) -> None:
        """Start firing schedules and watching files (this orchestrator leads)."""
        self._leading = True
        await self.scheduler.start()
        if self.held_since is None and not self._watching:
            await self.watcher.start()
            self._watching = True

    async def unlead(self) -> None:
        """Stop firing schedules and watching files (another orchestrator leads now); a
        later :meth:`lead` starts them again."""
        self._leading = False
        await self.watcher.stop()
        await self.scheduler.stop()
        self._watching = False
        self._known_watches = set()
        self.scheduler = Scheduler(self.jobs, self.store)
        self.scheduler.held = self.held_since is not None
        self.watcher = FileWatcher(self.jobs, self.store)

    async def sync(self) -> None:
        """Take up the schedules and file watches another orchestrator of a shared database
        changed (the leader does, every second)."""
        await self.scheduler.sync()
        if self.held_since is not None or not self._watching:
            return
        wanted = {
            t.trigger_id: t
            for t in await asyncio.to_thread(self.store.triggers, TriggerKind.FILE_WATCH)
            if t.enabled
        }
        watched = set(self.watcher.watched)
        for trigger_id in sorted(watched - set(wanted)):
            await self.watcher.remove(trigger_id)
        known = self._known_watches
        self._known_watches = set(wanted)
        for trigger_id in sorted(set(wanted) - watched - known):  # new ones: tried once
            await self.watcher.add(wanted[trigger_id])

    async def hold(self, since: datetime | None) -> None:
        """Hold every schedule and trigger for maintenance (since ``since``) or, None, let
        them fire again: schedules from their next due time, file watch from the files that
        arrived meanwhile."""
        was = self.held_since
        self.held_since = since
        self.scheduler.held = since is not None
        if not self._started or (was is None) == (since is None):
            return
        if since is not None:
            for trigger in await asyncio.to_thread(self.store.triggers, TriggerKind.FILE_WATCH):
                await self.watcher.remove(trigger.trigger_id)
        elif not self._leading:
            return  # the leader watches the files
        elif not self._watching:
            await self.watcher.start()
            self._watching = True
        else:
            for trigger in await asyncio.to_thread(self.store.triggers, TriggerKind.FILE_WATCH):
                if trigger.enabled:
                    await self.watcher.add(trigger)

    def held_counts(self) -> tuple[int, int]:
        """(schedules not paused, triggers enabled): what a maintenance hold holds
        (blocking: reads the database)."""
        schedules = sum(1 for s in self.store.schedules() if not s.paused)
        triggers = sum(1 for t in self.store.triggers() if t.enabled)
        return schedules, triggers

    async def stop(self) -> None:
        """Stop firing (idempotent)."""
        await self.watcher.stop()
        await self.scheduler.stop()
        await self.chainer.stop()

    # -- schedules -----------------------------------------------------------------------

    def make_schedule(
        self, fields: ScheduleFields, workflow: Path, *, origin: str = "api"
    ) -> Schedule:
        """A :class:`Schedule` of ``workflow`` from what a person wrote (not stored yet);
        TriggerError/ParameterError/WorkflowError if it cannot be one."""
        given = [name for name in ("cron", "every", "at") if getattr(fields, name) is not None]
        if len(given) != 1:
            raise TriggerError(
                "a schedule needs exactly one of --cron, --every, --at"
                + (f" (got {', '.join('--' + g for g in given)})" if given else "")
            )
        grace = None if fields.misfire_grace is None else parse_duration(fields.misfire_grace)
        kind = {"cron": ScheduleKind.CRON, "every": ScheduleKind.INTERVAL, "at": ScheduleKind.DATE}
        schedule = Schedule(
            schedule_id=_new_id("sched"),
            kind=kind[given[0]],
            cron=fields.cron,
            every_s=None if fields.every is None else parse_duration(fields.every),
            at=fields.at,
            timezone=fields.timezone,
            coalesce=fields.coalesce,
            misfire_grace_s=grace,
            max_instances=fields.max_instances,
            created_at=self.jobs.now(),
            origin=origin,
            workflow_path=str(workflow),
            **fields.model_dump(include=_JOB_FIELDS),
        )
        self.scheduler.validate(schedule)
        _check_template(workflow, schedule.parameters, schedule.raw_parameters, strict=True)
        return schedule

    async def add_schedule(self, fields: ScheduleFields, workflow: Path) -> Schedule:
        """Validate, store and start a schedule of ``workflow``."""
        schedule = await asyncio.to_thread(self.make_schedule, fields, workflow)
        return await self.scheduler.add(schedule)

    # -- triggers ------------------------------------------------------------------------

    def make_trigger(
        self, fields: TriggerFields, workflow: Path, run: Path | None, *, origin: str = "api"
    ) -> Trigger:
        """A :class:`Trigger` from what a person wrote (not stored yet). For chaining,
        ``workflow`` is the one whose jobs are watched and ``run`` the one submitted."""
        kind = TriggerKind(fields.kind)
        target = workflow
        after: Path | None = None
        provided: set[str] = set()
        if kind is TriggerKind.WEBHOOK:
            if not fields.secret_env or not _ENV_NAME.match(fields.secret_env):
                raise TriggerError(
                    "a webhook needs --secret-env NAME: the orchestrator's environment "
                    "variable holding its secret"
                )
            if not self.environ.get(fields.secret_env):
                logger.warning(
                    "webhook secret variable %s is not set in the orchestrator's "
                    "environment: every delivery is refused until it is",
                    fields.secret_env,
                )
            provided = {"*"}  # the body may bring any parameter
        elif kind is TriggerKind.FILE_WATCH:
            if not fields.path:
                raise TriggerError("a file-watch trigger needs --path DIR")
            provided = {fields.file_parameter}
        else:
            if run is None:
                raise TriggerError(f"an {kind.value.replace('_', '-')} trigger needs --run WF")
            _check_workflow(run)
            target, after = run, workflow
            provided = {"*"}  # previous_run_id and outputs, if declared
        trigger = Trigger(
            trigger_id=_new_id("hook" if kind is TriggerKind.WEBHOOK else "trig"),
            kind=kind,
            secret_env=fields.secret_env if kind is TriggerKind.WEBHOOK else None,
            watch_path=str(Path(fields.path).absolute()) if fields.path else None,
            pattern=fields.pattern,
            file_parameter=fields.file_parameter,
            after_workflow=None if after is None else str(after),
            created_at=self.jobs.now(),
            origin=origin,
            workflow_path=str(target),
            **fields.model_dump(include=_JOB_FIELDS),
        )
        if kind is TriggerKind.FILE_WATCH:
            check(trigger)
            schema = read_schema(load_workflow(target)[0])
            if trigger.file_parameter not in schema.params:
                raise TriggerError(
                    f"{target.name} declares no parameter {trigger.file_parameter!r} for the "
                    "file's path (add it to the parameters cell, or pass --param NAME)"
                )
        _check_template(
            target, trigger.parameters, trigger.raw_parameters, strict="*" not in provided
        )
        return trigger

    async def add_trigger(
        self, fields: TriggerFields, workflow: Path, run: Path | None = None
    ) -> Trigger:
        """Validate, store and start a trigger."""
        trigger = await asyncio.to_thread(self.make_trigger, fields, workflow, run)
        await asyncio.to_thread(self.store.add_trigger, trigger)
        if trigger.kind is TriggerKind.FILE_WATCH and self.held_since is None and self._leading:
            await self.watcher.add(trigger)
        logger.info("trigger %s (%s) added", trigger.trigger_id, trigger.kind.value)
        return trigger

    async def set_enabled(self, trigger_id: str, enabled: bool) -> Trigger:
        """Enable or disable a trigger (QueueError if unknown); a file watch enabled during
        maintenance starts watching when the hold ends."""
        trigger = await asyncio.to_thread(self.store.set_enabled, trigger_id, enabled)
        watched = self.held_since is None or not enabled
        if trigger.kind is TriggerKind.FILE_WATCH and self._leading and watched:
            if enabled:
                await self.watcher.add(trigger)
            else:
                await self.watcher.remove(trigger_id)
        return trigger

    async def remove_trigger(self, trigger_id: str) -> Trigger:
        """Delete a trigger (QueueError if unknown)."""
        trigger = await asyncio.to_thread(self.store.remove_trigger, trigger_id)
        if trigger.kind is TriggerKind.FILE_WATCH:
            await self.watcher.remove(trigger_id)
        return trigger

    def triggers(self, kind: TriggerKind | None = None) -> list[Trigger]:
        """Every trigger (of one kind), oldest first (blocking: reads the database)."""
        return self.store.triggers(kind)

    # -- declarations in workflow metadata -----------------------------------------------

    def sync_declarations(self, workflows_dir: Path) -> tuple[int, int]:
        """Make the stored metadata schedules and triggers those the notebooks under
        ``workflows_dir`` declare now (blocking); (schedules, triggers) declared.

        A file that cannot be read or declares something invalid is logged and skipped
        (its earlier declarations are kept rather than dropped)."""
        root = workflows_dir.resolve()
        schedules: dict[str, Schedule] = {}
        triggers: dict[str, Trigger] = {}
        broken: set[str] = set()
        for path in sorted(root.rglob("*.ipynb")):
            if ".ipynb_checkpoints" in path.parts:
                continue
            origin = _METADATA_ORIGIN + path.relative_to(root).as_posix()
            try:
                found = self._declared(path, origin, root)
            except (CasareError, OSError, ValueError) as exc:
                logger.error("%s: %s", path, exc)
                broken.add(origin)
                continue
            for item in found:
                if isinstance(item, Schedule):
                    schedules[item.schedule_id] = item
                else:
                    triggers[item.trigger_id] = item
        self._apply_declared(schedules, triggers, broken)
        return len(schedules), len(triggers)

    def _declared(
        self, path: Path, origin: str, root: Path | None = None
    ) -> list[Schedule | Trigger]:
        nb, _ = load_workflow(path)
        declared = read_declarations(nb, str(path))
        out: list[Schedule | Trigger] = []
        seen: Counter[str] = Counter()  # ids follow the spec, not its position in the list
        for fields in declared.schedules:
            spec = fields.model_dump_json()
            schedule = self.make_schedule(fields, path, origin=origin)
            schedule.schedule_id = _declared_id("sched", origin, seen[spec], spec)
            seen[spec] += 1
            out.append(schedule)
        for tfields in declared.triggers:
            near = tfields.model_copy()
            if near.path is not None and not Path(near.path).is_absolute():
                near.path = str(path.parent / near.path)
            run = None if near.run is None else (path.parent / near.run).resolve()
            if run is not None and root is not None and not run.is_relative_to(root):
                raise WorkflowError(
                    f"its trigger runs {near.run}, outside the workflows directory {root}"
                )
            trigger = self.make_trigger(near, path, run, origin=origin)
            spec = tfields.model_dump_json()
            prefix = "hook" if trigger.kind is TriggerKind.WEBHOOK else "trig"
            trigger.trigger_id = _declared_id(prefix, origin, seen[spec], spec)
            seen[spec] += 1
            out.append(trigger)
        return out

    def _apply_declared(
        self, schedules: dict[str, Schedule], triggers: dict[str, Trigger], broken: set[str]
    ) -> None:
        def stale(origin: str, kept: Mapping[str, object], item_id: str) -> bool:
            return (
                origin.startswith(_METADATA_ORIGIN) and origin not in broken and item_id not in kept
            )

        for old in self.store.schedules():
            if stale(old.origin, schedules, old.schedule_id):
                self.store.remove_schedule(old.schedule_id)
                logger.info("schedule %s no longer declared by %s", old.schedule_id, old.origin)
        existing = {s.schedule_id: s for s in self.store.schedules()}
        for schedule in schedules.values():
            before = existing.get(schedule.schedule_id)
            if before is not None:  # same declaration: keep its phase and a pause
                schedule.created_at = before.created_at
                schedule.paused = before.paused
                if before == schedule:
                    continue
            self.store.replace_schedule(schedule)
        for old_trigger in self.store.triggers():
            if stale(old_trigger.origin, triggers, old_trigger.trigger_id):
                self.store.remove_trigger(old_trigger.trigger_id)
        known = {t.trigger_id for t in self.store.triggers()}
        for trigger in triggers.values():
            if trigger.trigger_id not in known:
                self.store.add_trigger(trigger)


_JOB_FIELDS: Final = {
    "parameters",
    "raw_parameters",
    "priority",
    "tags",
    "environment",
    "max_retries",
    "timeouts",
}


def _declared_id(prefix: str, origin: str, index: int, spec: str) -> str:
    digest = hashlib.sha256(f"{origin}\0{index}\0{spec}".encode()).hexdigest()
    return f"{prefix}-{digest[:10]}"


def _check_workflow(path: Path) -> None:
    try:
        read_schema(load_workflow(path)[0])
    except FileNotFoundError:
        raise WorkflowError(f"no such workflow {path}") from None


def _check_template(
    workflow: Path, parameters: Mapping[str, Any], raw: Mapping[str, str], *, strict: bool
) -> None:
    """Check stored parameters against ``workflow``'s schema: unknown names and bad values
    always; missing required ones only if ``strict`` (the event may bring them). Secret
    parameters cannot be stored in a schedule or trigger."""
    nb, _ = load_workflow(workflow)
    schema = read_schema(nb)
    secret = sorted(schema.secret_names() & (set(parameters) | set(raw)))
    if secret:
        raise ParameterError(
            f"parameter {secret[0]!r} is secret: a schedule or trigger cannot store it"
        )
    checked = schema.validate_values(parameters, strict=False, text_values=raw)
    problems = [
        p for p in checked.warnings if strict or not p.startswith("missing required parameter")
    ]
    if problems:
        raise ParameterError("; ".join(problems))
