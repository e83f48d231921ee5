"""Schedules on APScheduler 3: cron, interval and date schedules that submit jobs.

The one module importing apscheduler. A schedule is data (a :class:`TriggerStore` row); an
``AsyncIOScheduler`` (in-memory job store, one job per active schedule) only decides *when*.
Each due time is claimed in the ``fires`` table before its job is submitted, so no due time
fires twice, across restarts too.

APScheduler 3 does not pass the scheduled time to the job function, so the function does
nothing: the executor runs it once per run time left after APScheduler's coalescing and
misfire check, and the ``EVENT_JOB_EXECUTED`` event that follows carries that exact
``scheduled_run_time`` to :meth:`Scheduler.fire_due` (``EVENT_JOB_MISSED``: a skipped fire).

The in-memory job store only knows the present, so :meth:`Scheduler.start` enumerates each
schedule's due times from its last recorded fire (or its creation) up to now and fires the
missed ones as ``coalesce`` and ``misfire_grace_s`` say. Due times always continue from the
previous one (``get_next_fire_time(previous, previous)``), as APScheduler does live, so both
compute the same instants.

Dispatch ahead: APScheduler fires each due time ``lead_s`` (:data:`DISPATCH_LEAD_S`) early,
through a wrapping trigger whose fire times are shifted (:class:`EarlyTrigger`); the listener
adds the lead back, claims the exact due time and submits the job with ``start_at`` = the due
time, so it is dispatched at once and its robot prepares it and runs its first cell at the
due time. The job's ``trigger.due_at`` is the due time; ``misfire_grace_s`` and
``max_instances`` keep counting from it. A due time planned less than ``lead_s`` ahead (a
schedule added, resumed or started just before it; an interval shorter than the lead) fires
at the due time, by an APScheduler job of its own (id ``<schedule id>`` + :data:`_AT_DUE`).

Crontab's day of week is read as crontab does (0 or 7 = Sunday, 1-5 = Monday to Friday;
3.x's ``from_crontab`` reads 0 as Monday). DST is APScheduler's: a wall time that does not
exist (spring forward) fires at that wall time with the earlier offset, i.e. an hour later
in the new one; a wall time that exists twice (fall back) fires twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import re
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from casare_nb.core.ids import new_run_id
from casare_nb.core.models import Job, TriggerKind, TriggerRef
from casare_nb.core.triggers import JobTemplate, Schedule, ScheduleKind, TriggerError
from casare_nb.orchestrator.triggers.desk import TriggersHeld
from casare_nb.store.interfaces import TriggerStore

if TYPE_CHECKING:
    from casare_nb.orchestrator.triggers.desk import JobDesk

__all__ = [
    "CATCH_UP_CAP",
    "DISPATCH_LEAD_S",
    "SKIPPED_MAINTENANCE",
    "SKIPPED_MAX_INSTANCES",
    "EarlyTrigger",
    "Scheduler",
    "crontab_weekdays",
]

logger = logging.getLogger(__name__)

CATCH_UP_CAP: Final = 1000
"""At most this many missed due times of one schedule are looked at, the latest ones."""
SKIPPED_MAX_INSTANCES: Final = "skipped: max_instances"
SKIPPED_MAINTENANCE: Final = "skipped: maintenance"
DISPATCH_LEAD_S: Final = 0.5
"""How long before its due time a schedule's job is submitted and sent to a robot."""
_STOP_WAIT_S: Final = 10.0
_AT_DUE: Final = "\x1fat-due"  # suffix of the APScheduler job firing at the due time itself
_APS_INSTANCES: Final = 1000  # APScheduler's own limit: its job function only hands over
_DAYS: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DOW_PART: Final = re.compile(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?")
_KIND_FIELD: Final = dict(zip(ScheduleKind, ("cron", "every_s", "at"), strict=True))
_CRON_FIELDS: Final = ("minute", "hour", "day", "month")
_TEMPLATE: Final = set(JobTemplate.model_fields)


def crontab_weekdays(field: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday, 1 = Monday; ``*/2``, ``1-5``, lists) as
    the day names APScheduler 3 reads right. Names are left as they are."""
    if field == "*":
        return field
    days: list[str] = []
    for part in field.split(","):
        match = _DOW_PART.fullmatch(part)
        if match is None:
            days.append(part)  # names (mon-fri): APScheduler reads them, or says what is wrong
            continue
        whole, first, last, step = match.groups()
        lo = 0 if whole == "*" else int(first)
        hi = 6 if whole == "*" else int(last) if last else 6 if step else lo
        by = int(step) if step else 1
        if by < 1 or lo > hi or hi > 7:
            raise ValueError(f"day of week {part!r}: expected 0-7 (0 and 7 are Sunday)")
        days.extend(_DAYS[day] for day in range(lo, hi + 1, by))
    return ",".join(dict.fromkeys(days))


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):
        raise TriggerError(f"unknown time zone {name!r}") from None


def _local(at: datetime, zone: tzinfo) -> datetime:
    return at.replace(tzinfo=zone) if at.tzinfo is None else at.astimezone(zone)


def make_trigger(schedule: Schedule) -> BaseTrigger:
    """The APScheduler trigger of ``schedule``; TriggerError (one line) if it cannot be made."""
    zone = _zone(schedule.timezone)
    kind = schedule.kind
    extra = [
        f for k, f in _KIND_FIELD.items() if k is not kind and getattr(schedule, f) is not None
    ]
    if extra:
        raise TriggerError(f"a {kind.value} schedule takes no {' or '.join(extra)}")
    if kind is ScheduleKind.CRON:
        if not schedule.cron:
            raise TriggerError("a cron schedule needs a cron expression, e.g. '0 6 * * 1-5'")
        fields = schedule.cron.split()
        try:
            if len(fields) != 5:
                raise ValueError(
                    f"expected 5 fields (minute hour day month weekday), got {len(fields)}"
                )
            weekdays = crontab_weekdays(fields[4])
            named = dict(zip(_CRON_FIELDS, fields, strict=False))
            return CronTrigger(**named, day_of_week=weekdays, timezone=zone)
        except ValueError as exc:
            raise TriggerError(f"invalid cron {schedule.cron!r}: {exc}") from None
    if kind is ScheduleKind.INTERVAL:
        every = schedule.every_s
        if every is None:
            raise TriggerError("an interval schedule needs every_s: how often it runs (e.g. 15m)")
        if not (every > 0 and math.isfinite(every)):
            raise TriggerError(f"every_s must be more than 0 seconds, not {every:g}")
        created = _local(schedule.created_at, UTC)  # the phase: due at created_at + k * every_s
        try:
            return IntervalTrigger(
                seconds=every, start_date=created + timedelta(seconds=every), timezone=zone
            )
        except OverflowError:
            raise TriggerError(f"every_s {every:g} is too long") from None
    if schedule.at is None:
        raise TriggerError("a date schedule needs at: the date and time to run once")
    return DateTrigger(run_date=_local(schedule.at, zone), timezone=zone)


def _next(trigger: BaseTrigger, due: datetime) -> datetime | None:
    """The due time after ``due``, which is one (in any zone: a UTC 00:30 of a fall-back
    day must become 02:30+02:00 in Berlin, or the cron trigger answers it again)."""
    zone = getattr(trigger, "timezone", None)
    due = due if zone is None else due.astimezone(zone)
    nxt: datetime | None = trigger.get_next_fire_time(due, due)
    return nxt


def _after(trigger: BaseTrigger, when: datetime) -> datetime | None:
    """The first due time strictly after ``when`` (any instant)."""
    when = when.astimezone(UTC)
    due: datetime | None = trigger.get_next_fire_time(None, when)
    while due is not None and due <= when:
        due = _next(trigger, due)
    return due


def missed_dues(
    trigger: BaseTrigger,
    since: datetime,
    now: datetime,
    *,
    fired: bool,
    cap: int = CATCH_UP_CAP,
) -> tuple[list[datetime], datetime | None]:
    """The due times in ``(since, now]`` (at most ``cap``, the latest) and the first one
    after ``now``. ``fired``: ``since`` is a due time that fired, so the next ones continue
    from it as APScheduler would."""
    now, lo = now.astimezone(UTC), since.astimezone(UTC)
    due = _next(trigger, since) if fired else _after(trigger, lo)
    dues: list[datetime] = []
    while due is not None and due <= now:
        if len(dues) == cap:  # too many to walk: look at the later half of what is left
            lo = max(dues[-1].astimezone(UTC), lo + (now - lo) / 2)
            dues.clear()
            due = _after(trigger, lo)
            continue
        dues.append(due)
        due = _next(trigger, due)
    return dues, due


class EarlyTrigger(BaseTrigger):  # type: ignore[misc]  # apscheduler 3 is untyped
    """``trigger``'s due times, ``lead`` earlier (computed in UTC, so a DST change between
    the two instants does not move them)."""

    def __init__(self, trigger: BaseTrigger, lead: timedelta) -> None:
        self.trigger = trigger
        self.lead = lead

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        zone = getattr(self.trigger, "timezone", UTC)
        previous = None
        if previous_fire_time is not None:
            previous = (previous_fire_time.astimezone(UTC) + self.lead).astimezone(zone)
        due: datetime | None = self.trigger.get_next_fire_time(
            previous, now.astimezone(UTC) + self.lead
        )
        return None if due is None else (due.astimezone(UTC) - self.lead).astimezone(zone)

    def __str__(self) -> str:
        return f"{self.trigger}, {self.lead.total_seconds():g} s early"


def _grace_s(schedule: Schedule) -> int | None:
    """``misfire_grace_s`` as APScheduler 3 takes it: whole seconds >= 1, or None."""
    grace = schedule.misfire_grace_s
    return None if grace is None else max(1, math.ceil(grace))


async def _nothing() -> None:
    """The APScheduler job's function: the due time arrives in its EVENT_JOB_EXECUTED."""


def _named_line(exc: BaseException) -> str:
    """``Type: first line`` of an error."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class Scheduler:
    """The orchestrator's schedules: stored in ``store``, fired into ``orch``.

    ``clock`` (aware UTC; the orchestrator's by default) is "now" in every decision made
    here: catch-up at :meth:`start`, :meth:`validate`, :meth:`upcoming`. Live fires follow
    real time (APScheduler's), ``lead_s`` ahead of each due time (0: at it, and the job is
    submitted then)."""

    def __init__(
        self,
        jobs: JobDesk,
        store: TriggerStore,
        *,
        clock: Callable[[], datetime] | None = None,
        lead_s: float = DISPATCH_LEAD_S,
    ) -> None:
        if not (lead_s >= 0 and math.isfinite(lead_s)):
            raise ValueError(f"lead_s must be >= 0 seconds, not {lead_s}")
        self.jobs = jobs
        self.store = store
        self.lead = timedelta(seconds=lead_s)
        self._clock: Callable[[], datetime] = clock or jobs.now
        self._schedules: dict[str, Schedule] = {}
        self._triggers: dict[str, BaseTrigger] = {}
        self._unfinished: dict[str, set[str]] = {}  # schedule id -> its queued/running jobs
        self._aps: AsyncIOScheduler | None = None
        self._planned: dict[str, str] = {}  # schedule id -> its APScheduler job's id
        self._stopped = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.held = False
        """Held for maintenance: every due time passes unfired, recorded
        ``skipped: maintenance`` (set by :class:`~.hub.Triggers`)."""

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load every schedule, fire the due times missed while down, start firing."""
        if self._aps is not None or self._stopped:
            raise RuntimeError("this scheduler was started already")
        schedules = await asyncio.to_thread(self.store.schedules)
        last = await asyncio.to_thread(self.store.last_dues)
        self.jobs.finished_listeners.append(self._on_finished)
        elsewhere = getattr(self.jobs, "finished_elsewhere_listeners", None)
        if elsewhere is not None:  # its jobs may run on another orchestrator
            elsewhere.append(self._on_finished)
        for job in self.jobs.unfinished_jobs():
            if job.trigger is not None and job.trigger.kind is TriggerKind.SCHEDULE:
                self._unfinished.setdefault(job.trigger.id, set()).add(job.job_id)
        self._aps = AsyncIOScheduler(timezone=UTC)
        self._aps.add_listener(self._on_event, EVENT_JOB_EXECUTED | EVENT_JOB_MISSED)
        now = self._clock()
        plans: list[tuple[Schedule, datetime | None]] = []
        for schedule in schedules:
            sid = schedule.schedule_id
            self._schedules[sid] = schedule
            try:
                trigger = self._triggers[sid] = make_trigger(schedule)
            except TriggerError as exc:
                logger.error("schedule %s cannot run: %s", sid, exc)
                continue
            if schedule.paused:
                continue
            fired = last.get(sid)
            since = fired or schedule.created_at
            dues, upcoming = missed_dues(trigger, since, now, fired=fired is not None)
            if dues:
                await self._catch_up(schedule, dues, now)
            plans.append((schedule, upcoming))
        for schedule, upcoming in plans:  # added before the start: one wake-up for all
            self._plan(schedule, upcoming)
        self._aps.start()
        logger.info("scheduler started: %d schedules", len(self._schedules))

    async def stop(self) -> None:
        """Stop firing (the fires under way end first, briefly); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for with_listener in (
            self.jobs.finished_listeners,
            getattr(self.jobs, "finished_elsewhere_listeners", []),
        ):
            if self._on_finished in with_listener:
                with_listener.remove(self._on_finished)
        if self._aps is not None and self._aps.running:
            self._aps.shutdown(wait=False)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=_STOP_WAIT_S)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)  # AsyncIOScheduler shuts down in a call_soon_threadsafe callback

    # -- schedules -----------------------------------------------------------------------

    def validate(self, schedule: Schedule) -> None:
        """Raise TriggerError (one line) unless ``schedule`` can run: its cron, time zone,
        interval, and a date that is still ahead."""
        trigger = make_trigger(schedule)
        if isinstance(trigger, DateTrigger) and schedule.at is not None:
            run_date: datetime = trigger.run_date
            if run_date <= self._clock():
                wall = run_date.replace(tzinfo=None)
                spec = "minutes" if not (wall.second or wall.microsecond) else "auto"
                raise TriggerError(
                    f"--at {wall.isoformat(timespec=spec)} ({schedule.timezone}) is in the past"
                )

    async def add(self, schedule: Schedule) -> Schedule:
        """Validate, store and plan ``schedule``; QueueError if its id is taken."""
        self.validate(schedule)
        await asyncio.to_thread(self.store.add_schedule, schedule)
        sid = schedule.schedule_id
        self._schedules[sid] = schedule
        trigger = self._triggers[sid] = make_trigger(schedule)
        self._plan(schedule, _after(trigger, self._clock()))
        logger.info("schedule %s added (%s, %s)", sid, schedule.kind.value, schedule.timezone)
        return schedule

    async def pause(self, schedule_id: str) -> Schedule:
        """Stop firing a schedule until resumed; QueueError for an unknown id."""
        schedule = await asyncio.to_thread(self.store.set_paused, schedule_id, True)
        self._schedules[schedule_id] = schedule
        self._unplan(schedule_id)
        return schedule

    async def resume(self, schedule_id: str) -> Schedule:
        """Fire a paused schedule again from its next due time (the ones passed while paused
        are not made up for); QueueError for an unknown id."""
        schedule = await asyncio.to_thread(self.store.set_paused, schedule_id, False)
        self._schedules[schedule_id] = schedule
        trigger = self._trigger(schedule)
        if trigger is not None:
            self._plan(schedule, _after(trigger, self._clock()))
        return schedule

    async def remove(self, schedule_id: str) -> Schedule:
        """Delete a schedule (its fires stay recorded); it as it was. QueueError if unknown."""
        schedule = await asyncio.to_thread(self.store.remove_schedule, schedule_id)
        self._schedules.pop(schedule_id, None)
        self._triggers.pop(schedule_id, None)
        self._unplan(schedule_id)
        return schedule

    async def sync(self) -> None:
        """Take up the schedules another orchestrator of a shared database added, paused,
        resumed or removed (the leader does, every second)."""
        stored = {s.schedule_id: s for s in await asyncio.to_thread(self.store.schedules)}
        for sid in [sid for sid in self._schedules if sid not in stored]:
            self._schedules.pop(sid, None)
            self._triggers.pop(sid, None)
            self._unplan(sid)
        for sid, schedule in stored.items():
            known = self._schedules.get(sid)
            if known is not None and known.paused == schedule.paused:
                continue
            self._schedules[sid] = schedule
            trigger = self._trigger(schedule)
            if schedule.paused or trigger is None:
                self._unplan(sid)
            else:
                self._plan(schedule, _after(trigger, self._clock()))

    def schedules(self) -> list[Schedule]:
        """Every schedule, oldest first."""
        return sorted(self._schedules.values(), key=lambda s: (s.created_at, s.schedule_id))

    def planned(self, schedule_id: str) -> datetime | None:
        """When APScheduler will next fire ``schedule_id`` (UTC; ahead of the due time by the
        lead), or None: paused, removed, finished or the scheduler is not running."""
        job_id = self._planned.get(schedule_id)
        job = None if self._aps is None or job_id is None else self._aps.get_job(job_id)
        when = None if job is None else getattr(job, "next_run_time", None)
        return None if when is None else when.astimezone(UTC)

    def next_fire_times(
        self, schedule: Schedule, n: int = 3, now: datetime | None = None
    ) -> list[datetime]:
        """The next ``n`` due times after ``now``, in the schedule's time zone (paused or
        not; [] for one that cannot run or has none left)."""
        trigger = self._trigger(schedule)
        if trigger is None:
            return []
        out: list[datetime] = []
        due = _after(trigger, now or self._clock())
        while due is not None and len(out) < n:
            out.append(due)
            due = _next(trigger, due)
        return out

    def upcoming(self, n: int = 10, now: datetime | None = None) -> list[tuple[Schedule, datetime]]:
        """The next ``n`` due times of all schedules that are not paused, soonest first."""
        start = now or self._clock()
        heap: list[tuple[datetime, int, datetime, Schedule, BaseTrigger]] = []
        for order, schedule in enumerate(self.schedules()):
            trigger = None if schedule.paused else self._trigger(schedule)
            due = None if trigger is None else _after(trigger, start)
            if due is not None and trigger is not None:
                heap.append((due.astimezone(UTC), order, due, schedule, trigger))
        heapq.heapify(heap)
        out: list[tuple[Schedule, datetime]] = []
        while heap and len(out) < n:
            _, order, due, schedule, trigger = heapq.heappop(heap)
            out.append((schedule, due))
            nxt = _next(trigger, due)
            if nxt is not None:
                heapq.heappush(heap, (nxt.astimezone(UTC), order, nxt, schedule, trigger))
        return out

    # -- fires ---------------------------------------------------------------------------

    async def fire_due(
        self, schedule_id: str, due_at: datetime, *, start_at: datetime | None = None
    ) -> str | None:
        """Submit the run of ``schedule_id`` due at ``due_at``, once: the job id, or None
        when the due time was claimed before, ``max_instances`` runs are still queued or
        running (recorded ``skipped: max_instances``), or the submit failed (recorded
        ``failed: <why>``, and logged). ``start_at``: fired ahead of time, the job's first
        cell runs then (the due time); the ``max_instances`` check waits for it if need be."""
        schedule = self._schedules.get(schedule_id)
        if schedule is None:
            logger.info("schedule %s is gone: due time %s not fired", schedule_id, due_at)
            return None
        due = due_at.astimezone(UTC)
        if self.held:
            claim = await asyncio.to_thread(
                self.store.claim_fire, schedule_id, due, None, SKIPPED_MAINTENANCE
            )
            if claim.new:
                logger.info("schedule %s due %s skipped: maintenance", schedule_id, due)
            return None
        live = self._unfinished.setdefault(schedule_id, set())
        if len(live) >= schedule.max_instances:
            self._forget_finished(live)
        if len(live) >= schedule.max_instances and start_at is not None:
            # fired ahead of time: the runs still going may end by the due time
            await asyncio.sleep(max(0.0, (start_at - datetime.now(UTC)).total_seconds()))
            start_at = None
            if self._stopped or schedule_id not in self._schedules:
                return None
            self._forget_finished(live)
        if len(live) >= schedule.max_instances:
            claim = await asyncio.to_thread(
                self.store.claim_fire, schedule_id, due, None, SKIPPED_MAX_INSTANCES
            )
            if claim.new:
                logger.info("schedule %s due %s skipped: max_instances", schedule_id, due)
            return None
        job_id, submitted = new_run_id(), False
        live.add(job_id)  # before the first await: concurrent fires see it
        try:
            claim = await asyncio.to_thread(
                self.store.claim_fire, schedule_id, due, job_id, "submitted"
            )
            if not claim.new:
                return None
            ref = TriggerRef(kind=TriggerKind.SCHEDULE, id=schedule_id, due_at=due)
            template = schedule.model_dump(include=_TEMPLATE)  # what submit takes
            try:
                await self.jobs.submit(
                    **template, source="schedule", trigger=ref, job_id=job_id, start_at=start_at
                )
            except Exception as exc:  # the scheduler goes on; the fire records why
                why = _named_line(exc)
                if isinstance(exc, TriggersHeld):  # maintenance began during the claim
                    outcome = SKIPPED_MAINTENANCE
                else:
                    logger.error("schedule %s due %s: %s", schedule_id, due, why)
                    outcome = f"failed: {why}"
                await asyncio.to_thread(self.store.set_fire_outcome, schedule_id, due, outcome)
                return None
            submitted = True
        finally:
            if not submitted:
                live.discard(job_id)
        logger.info("schedule %s due %s: job %s", schedule_id, due, job_id)
        return job_id

    async def _catch_up(self, schedule: Schedule, dues: list[datetime], now: datetime) -> None:
        """Fire the due times missed while the orchestrator was down."""
        sid, grace = schedule.schedule_id, schedule.misfire_grace_s
        within = [d for d in dues if grace is None or (now - d).total_seconds() <= grace]
        chosen = within[-1:] if schedule.coalesce else within
        logger.info(
            "schedule %s: %d due times passed while down, firing %d", sid, len(dues), len(chosen)
        )
        for due in chosen:
            try:
                await self.fire_due(sid, due)
            except Exception:
                logger.exception("schedule %s: the fire due %s failed", sid, due)
        if not chosen:  # recorded, so that the next start does not look at them again
            late = (now - dues[-1]).total_seconds()
            why = f"skipped: {late:.0f} s late (misfire_grace_s {grace:g})"
            await asyncio.to_thread(self.store.claim_fire, sid, dues[-1], None, why)

    def _on_event(self, event: JobExecutionEvent) -> None:
        """APScheduler ran a schedule's job function for a due time (``lead`` ahead of it,
        or at it), or missed one."""
        if self._stopped:
            return
        sid = event.job_id.removesuffix(_AT_DUE)
        at_due = sid != event.job_id
        due: datetime = event.scheduled_run_time.astimezone(UTC)
        due += timedelta(0) if at_due else self.lead
        now = datetime.now(UTC)
        late = (now - due).total_seconds()
        schedule = self._schedules.get(sid)
        # an early job's grace counts from its early fire time: APScheduler allows lead more
        grace = None if schedule is None or at_due else _grace_s(schedule)
        if event.code == EVENT_JOB_MISSED or (grace is not None and late > grace):
            why = f"skipped: {late:.1f} s late (misfire_grace_s)"
            self._spawn(asyncio.to_thread(self.store.claim_fire, sid, due, None, why))
        else:
            start_at = due if due > now else None
            self._spawn(self.fire_due(sid, due, start_at=start_at))
        if at_due and schedule is not None and self.lead:  # the next one may go ahead
            trigger = self._triggers.get(sid)
            upcoming = None if trigger is None else _next(trigger, due)
            if upcoming is not None and upcoming.astimezone(UTC) - self.lead > now:
                self._plan(schedule, upcoming)

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a schedule fire failed", exc_info=task.exception())

    def _on_finished(self, job: Job) -> None:
        if job.trigger is not None and job.trigger.kind is TriggerKind.SCHEDULE:
            self._unfinished.get(job.trigger.id, set()).discard(job.job_id)

    def _forget_finished(self, live: set[str]) -> None:
        """Drop the jobs that finished unseen (e.g. a re-run of a schedule's job)."""
        for job_id in list(live):
            job = self.jobs.job(job_id)
            if job is not None and job.status.finished:
                live.discard(job_id)

    # -- APScheduler jobs ----------------------------------------------------------------

    def _trigger(self, schedule: Schedule) -> BaseTrigger | None:
        """The schedule's trigger (kept for a known one); None if it cannot run."""
        sid = schedule.schedule_id
        if sid in self._triggers:
            return self._triggers[sid]
        try:
            trigger = make_trigger(schedule)
        except TriggerError:
            return None
        if sid in self._schedules:
            self._triggers[sid] = trigger
        return trigger

    def _plan(self, schedule: Schedule, due: datetime | None) -> None:
        """Have APScheduler fire ``schedule`` next at ``due`` (nothing if None or paused):
        ``lead`` ahead of it if that is still to come, else at it."""
        sid = schedule.schedule_id
        if self._aps is None or self._stopped or due is None or schedule.paused:
            self._unplan(sid)
            return
        grace, trigger = _grace_s(schedule), self._triggers[sid]
        lead = self.lead
        if lead and due.astimezone(UTC) - lead <= datetime.now(UTC):  # APScheduler's time
            lead = timedelta(0)
        job_id = sid if lead else sid + _AT_DUE
        if self._planned.get(sid, job_id) != job_id:
            self._unplan(sid)
        self._planned[sid] = job_id
        self._aps.add_job(
            _nothing,
            trigger=EarlyTrigger(trigger, lead) if lead else trigger,
            id=job_id,
            name=f"schedule {sid}",
            next_run_time=due.astimezone(UTC) - lead,
            replace_existing=True,
            coalesce=schedule.coalesce,
            misfire_grace_time=None if grace is None else math.ceil(grace + lead.total_seconds()),
            max_instances=_APS_INSTANCES,
        )

    def _unplan(self, schedule_id: str) -> None:
        job_id = self._planned.pop(schedule_id, None)
        if self._aps is not None and job_id is not None:
            with contextlib.suppress(JobLookupError):  # a date schedule's, once it fired
                self._aps.remove_job(job_id)
