"""What the orchestrator keeps, as interfaces: one Protocol per store, every one here.

The orchestrator codes against these; :func:`casare_nb.store.embedded.open_embedded` gives
the embedded default (one DuckDB file and a folder of checkpoint files in the state
directory). Another backend (PostgreSQL, so that several orchestrators share one state)
implements the same Protocols, and the test suite of each interface runs against every
implementation through one parametrised fixture.

Conventions every implementation keeps:

- Datetimes go in and come out aware, in UTC.
- Refused operations (unknown id, name taken) and unavailable storage raise
  :class:`~casare_nb.core.errors.QueueError` (:class:`~casare_nb.core.errors.JobExists`
  for a job id taken), with one line saying why.
- Claims (:meth:`TriggerStore.claim_fire`, ``claim_delivery``, ``claim_file``) are atomic:
  of two claims of the same key, exactly one is new, wherever they come from.
- Methods block: the orchestrator calls them from worker threads, except where a method says
  it returns at once (:meth:`JobStore.stage`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from casare_nb.core.history import CellDurations, DailyRuns, RunGroup
from casare_nb.core.models import CellRecord, Job, JobStatus, Priority, RunRecord, RunStatus
from casare_nb.core.tokens import DEFAULT_ROLE, Holder, TokenRole
from casare_nb.core.triggers import Schedule, Trigger, TriggerKind
from casare_nb.notebook.state import AttemptPaths, StateDir

__all__ = [
    "BlobSweep",
    "CheckpointStore",
    "Claim",
    "Fire",
    "HistoryWriter",
    "JobStore",
    "Leadership",
    "OutputStore",
    "Pruned",
    "RunHistory",
    "SharedEvent",
    "SharedJobs",
    "SharedRow",
    "Stores",
    "TokenStore",
    "TriggerStore",
    "Upkeep",
]


class JobStore(Protocol):
    """Jobs, persisted behind the state machine that decides them (in memory,
    :class:`~casare_nb.core.jobs.LiveJobs`): each new state is staged and written behind,
    in batches; a **mark** says when what was staged up to it is durable. Reads show staged
    states not written yet."""

    def stage(self, job: Job, *, cancel_requested: bool = False, new: bool = False) -> int:
        """Hand a job's new state over (``new``: insert it); its mark. Returns at once."""
        ...

    def mark(self) -> int:
        """The mark of everything staged so far."""
        ...

    def reached(self, mark: int) -> bool:
        """Whether everything staged up to ``mark`` is durable."""
        ...

    def wait_mark(self, mark: int, timeout: float | None = None) -> bool:
        """Block until :meth:`reached` (True) or ``timeout`` s passed (False)."""
        ...

    def hurry(self) -> None:
        """Write what is staged now: someone waits for it."""
        ...

    def flush(self, timeout: float | None = ...) -> None:
        """Block until everything staged is durable; QueueError after ``timeout`` s."""
        ...

    def insert_refused(self, job_id: str) -> bool:
        """Whether a new job staged under ``job_id`` found the id taken (asked once)."""
        ...

    def subscribe(
        self,
        *,
        added: Callable[[list[Job]], None] | None = None,
        written: Callable[[int], None] | None = None,
    ) -> None:
        """Hear of jobs added in bulk (``added``) and of each durable mark (``written``, in
        the writer's thread)."""
        ...

    def unsubscribe(
        self,
        *,
        added: Callable[[list[Job]], None] | None = None,
        written: Callable[[int], None] | None = None,
    ) -> None:
        """Stop calling listeners given to :meth:`subscribe`."""
        ...

    def add_jobs(self, jobs: Sequence[Job]) -> None:
        """Insert jobs at once, all or nothing (an import); the ``added`` listeners hear."""
        ...

    def get_job(self, job_id: str) -> Job | None:
        """One job as last staged or stored; None if unknown."""
        ...

    def list_jobs(
        self, *, status: Collection[JobStatus] | None = None, limit: int = 100
    ) -> list[Job]:
        """Jobs, newest first, optionally only those in ``status``."""
        ...

    def unfinished(self) -> list[tuple[Job, bool]]:
        """Queued and running jobs with whether a cancel was asked, in dispatch order."""
        ...

    def count_by_status(self) -> dict[JobStatus, int]:
        """Jobs in every status (zero included)."""
        ...

    def queue_depth_by_priority(self) -> dict[Priority, int]:
        """Queued jobs per priority (zero included)."""
        ...

    def close(self, timeout: float | None = ...) -> None:
        """Write what is staged and stop; idempotent."""
        ...


class HistoryWriter(Protocol):
    """Run and cell records written behind the caller's back; marks as for jobs."""

    def put_run(self, run: RunRecord) -> None: ...

    def put_cells(self, cells: Sequence[CellRecord]) -> None: ...

    def mark(self) -> int: ...

    def reached(self, mark: int) -> bool: ...

    def wait_mark(self, mark: int, timeout: float | None = None) -> bool: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...


class RunHistory(Protocol):
    """Runs (one row per attempt) and their cells; upserts idempotent on (run, attempt[,
    cell])."""

    def write(self, runs: Iterable[RunRecord], cells: Iterable[CellRecord]) -> None:
        """Upsert runs and cells together."""
        ...

    def writer(self) -> HistoryWriter:
        """A writer that puts records in the background."""
        ...

    def get_run(self, run_id: str, attempt: int | None = None) -> RunRecord | None:
        """An attempt of a run (its latest by default)."""
        ...

    def attempts(self, run_id: str) -> list[RunRecord]:
        """Every attempt of a run, in order."""
        ...

    def list_runs(
        self,
        *,
        status: Collection[RunStatus] | None = None,
        limit: int = 50,
        workflow: str | None = None,
        trigger: str | None = None,
        before: datetime | None = None,
    ) -> list[RunRecord]:
        """The latest attempt of each run, newest first, filtered on its status, workflow,
        what started it (``kind:id``, or ``"manual"``) and a start before ``before``."""
        ...

    def daily(
        self, *, days: int = 14, workflow: str | None = None, now: datetime | None = None
    ) -> list[DailyRuns]:
        """Runs per workflow per UTC day over the last ``days`` days, by latest outcome."""
        ...

    def groups(self, *, limit: int = 50, workflow: str | None = None) -> list[RunGroup]:
        """Runs per (workflow, what started them), the most recently active first."""
        ...

    def cell_durations(self, *, workflow: str | None = None) -> list[CellDurations]:
        """Per workflow: median, p95 and longest duration of its executed ok cells."""
        ...

    def list_cells(self, run_id: str, attempt: int | None = None) -> list[CellRecord]:
        """Cells of one attempt (or all), ordered (attempt, cell index)."""
        ...


class TokenStore(Protocol):
    """Bearer tokens, kept as their hash."""

    def create_token(self, name: str, role: TokenRole = DEFAULT_ROLE) -> str:
        """A new token for ``name`` with ``role``, answered this once; a live name (or an
        unknown role) raises QueueError."""
        ...

    def verify_token(self, token: str) -> Holder | None:
        """Who holds a live token (name and role; role None: created before roles, acts as
        admin), or None."""
        ...

    def known_token(self, token: str) -> Holder | None:
        """Who holds a live token this store verified lately, from memory (never
        blocking); None: ask :meth:`verify_token`."""
        ...

    def revoke_token(self, name: str) -> None:
        """Revoke ``name``'s live token; an unknown name raises QueueError."""
        ...

    def list_tokens(self) -> list[dict[str, Any]]:
        """Every token: name, role (None: from before roles), created_at, revoked_at (never
        the hash)."""
        ...


class Claim(NamedTuple):
    """The outcome of a claim: whether this call made it, and the job id it names."""

    new: bool
    job_id: str | None


class Fire(NamedTuple):
    """One due time of a schedule and what came of it (``submitted``, ``skipped: ...``)."""

    schedule_id: str
    due_at: datetime
    fired_at: datetime
    job_id: str | None
    outcome: str


class TriggerStore(Protocol):
    """Schedules and triggers as data, and the claims that make each event fire once."""

    def add_schedule(self, schedule: Schedule) -> None: ...

    def replace_schedule(self, schedule: Schedule) -> None: ...

    def schedules(self) -> list[Schedule]: ...

    def schedule(self, schedule_id: str) -> Schedule | None: ...

    def set_paused(self, schedule_id: str, paused: bool) -> Schedule: ...

    def remove_schedule(self, schedule_id: str) -> Schedule: ...

    def claim_fire(
        self, schedule_id: str, due_at: datetime, job_id: str | None, outcome: str
    ) -> Claim:
        """Claim a due time for ``job_id`` (one claim per schedule and due time)."""
        ...

    def set_fire_outcome(self, schedule_id: str, due_at: datetime, outcome: str) -> None: ...

    def last_due(self, schedule_id: str) -> datetime | None: ...

    def last_dues(self) -> dict[str, datetime]: ...

    def fires(self, schedule_id: str | None = None, *, limit: int = 1000) -> Sequence[Fire]: ...

    def add_trigger(self, trigger: Trigger) -> None: ...

    def triggers(self, kind: TriggerKind | None = None) -> list[Trigger]: ...

    def trigger(self, trigger_id: str) -> Trigger | None: ...

    def set_enabled(self, trigger_id: str, enabled: bool) -> Trigger: ...

    def remove_trigger(self, trigger_id: str) -> Trigger: ...

    def claim_delivery(
        self, trigger_id: str, delivery_id: str, signature: str, job_id: str
    ) -> Claim:
        """Claim a webhook delivery (one per trigger and delivery id)."""
        ...

    def claim_deliveries(
        self, trigger_id: str, deliveries: list[tuple[str, str, str]]
    ) -> list[Claim | None]:
        """Claim deliveries ``(delivery id, signature, job id)`` in one go; None for a
        replay (a new delivery id whose signature is recorded)."""
        ...

    def signature_seen(self, trigger_id: str, signature: str) -> bool: ...

    def release_delivery(self, trigger_id: str, delivery_id: str) -> None: ...

    def deliveries(self, trigger_id: str) -> list[tuple[str, str | None]]: ...

    def claim_file(self, trigger_id: str, path: str, job_id: str | None) -> Claim:
        """Claim a watched file (one per trigger and path)."""
        ...

    def release_file(self, trigger_id: str, path: str) -> None: ...

    def handled_files(self, trigger_id: str) -> dict[str, str | None]: ...


class OutputStore(Protocol):
    """What runs recorded with ``casare_nb.output``."""

    def record_outputs(
        self, run_id: str, attempt: int, values: Mapping[str, tuple[Any, int | None]]
    ) -> None:
        """Store ``name -> (value, cell index)``; a later value of a name replaces it."""
        ...

    def outputs(self, run_id: str) -> dict[str, Any]:
        """A run's outputs, by name."""
        ...


class CheckpointStore(Protocol):
    """Checkpoints robots send (manifests and content-addressed blobs) and each attempt's
    notebook so far, where any robot can resume from them."""

    state: StateDir

    def has_blob(self, sha256: str) -> bool: ...

    def read_blob(self, sha256: str) -> bytes | None: ...

    def write_blob(self, data: bytes) -> str: ...

    def offer(self, job_id: str, attempt: int, cell_id: str, manifest: dict[str, Any]) -> list[str]:
        """Take a checkpoint offer; the blobs to ask for (none: the manifest is stored)."""
        ...

    def awaited(self, sha256: str) -> bool: ...

    def blob_stored(self, sha256: str) -> list[tuple[str, int, str]]:
        """A blob arrived: the offers it completed (their manifests now stored)."""
        ...

    def forget_attempt(self, job_id: str, attempt: int) -> None: ...

    def attempt(self, job_id: str, attempt: int) -> AttemptPaths: ...

    def manifests_for(self, paths: AttemptPaths, cell_ids: Iterable[str]) -> dict[str, Any]: ...

    def start_output(self, job_id: str, attempt: int, notebook: dict[str, Any]) -> None: ...

    def record_cell(
        self, job_id: str, attempt: int, cell: dict[str, Any], *, base: dict[str, Any] | None
    ) -> None: ...

    def latest_output(self, job_id: str, before: int) -> int | None: ...

    def stored_cells(self, job_id: str, attempt: int) -> list[str]: ...

    def run_folders(self) -> list[str]:
        """The ids of the runs (or jobs) that have files here."""
        ...

    def changed_at(self, run_id: str) -> float:
        """When a file of ``run_id`` last changed (epoch seconds; 0 without any)."""
        ...

    def remove_run(self, run_id: str) -> None:
        """Delete the files of every attempt of ``run_id`` (its blobs stay: see sweep)."""
        ...

    def sweep(self, *, ignoring: Collection[str] = ()) -> BlobSweep:
        """A mark-and-sweep of the blobs no manifest names (the manifests of the runs in
        ``ignoring`` left out: a dry run of their removal). It begins now: blobs written
        from now on, and blobs that manifests written or offered from now on name, are
        kept."""
        ...


class BlobSweep(Protocol):
    """One garbage collection of blobs (:meth:`CheckpointStore.sweep`): :meth:`mark`, then
    :meth:`delete` (or only count what it would delete)."""

    def mark(self) -> None:
        """Read every manifest and find the blobs none names (the candidates)."""
        ...

    def delete(self, *, dry_run: bool = False) -> tuple[int, int, int]:
        """Delete the candidates still unnamed (``dry_run``: count them only); (blobs
        deleted, their bytes, blobs kept). Ends the sweep."""
        ...


@dataclass(frozen=True)
class Pruned:
    """What a retention pass removed from the records (or would remove: a dry run)."""

    run_ids: list[str]
    """The runs and jobs removed (their files go too)."""
    runs: int
    """Attempts (rows of runs)."""
    cells: int
    jobs: int
    outputs: int
    fires: int


class Upkeep(Protocol):
    """The records as a whole, for the operator: a consistent copy of them all (a backup)
    and the retention of old ones."""

    def export(self, folder: Path) -> dict[str, int]:
        """Write a consistent snapshot of every table into the new folder ``folder``, by the
        backend's own export (what its :func:`import` counterpart reads); the rows of each
        table."""
        ...

    def prune(self, before: datetime, *, dry_run: bool = False) -> Pruned:
        """Remove every run (all its attempts, cells and outputs) and job that finished
        before ``before``: never one with an attempt or a job still queued or running, nor
        one that ended since. Schedule fires before ``before`` go too, except each
        schedule's last. ``dry_run``: count only."""
        ...

    def record_ids(self) -> set[str]:
        """Every run and job id recorded (a run folder of another id is an orphan)."""
        ...


class Leadership(Protocol):
    """Which one of the orchestrators sharing a database is active (dispatches, fires
    schedules, watches files): the holder of a lock the database keeps for as long as its
    holder's connection lives. The embedded default needs none (one process holds the
    file)."""

    def acquire(
        self, node_id: str, stop: Callable[[], bool], waiting: Callable[[str], None]
    ) -> int:
        """Block until this process is the active one (its epoch: 1 for the first, one more
        at each change of hands) or ``stop()`` says to give up (QueueError). ``waiting(who)``
        is told once, with who is active, if it has to wait."""
        ...

    def check(self) -> str | None:
        """Why this process may no longer be the active one (its lock's connection is lost
        and another took over, or it cannot tell yet), else None; blocks briefly. A lock lost
        with its connection is taken again at once if nobody took over meanwhile."""
        ...

    def previous_stopped(self) -> bool:
        """Whether the active one before this one let go cleanly (False: it died, and its
        robots may come back here holding attempts)."""
        ...

    def release(self) -> None:
        """Let go (recorded as a clean stop); idempotent."""
        ...


class SharedRow(NamedTuple):
    """A job's row as several orchestrators share it: the job, whether its cancel was
    asked, and the node that writes its states (None: nobody yet)."""

    job: Job
    cancel_requested: bool
    owner: str | None


class SharedEvent(NamedTuple):
    """An event of one node for the monitors of the others (a robot's, a cell's): its kind
    and data as the protocol has them (JSON), the robot it is of (None: not a robot's) and
    whether that robot is connected after it; ``node`` is who recorded it (set when read)."""

    kind: str
    data: str
    robot_id: str | None = None
    online: bool = True
    node: str = ""


class SharedJobs(Protocol):
    """The job rows of orchestrators that share a database and are all active: the
    transitions that change a job's owner are compare-and-sets, decided by the database
    (one node wins), and every change is announced to the other nodes, which read the rows
    back (:mod:`casare_nb.store.shared`)."""

    node: str

    def bind(self, node_id: str) -> None:
        """Act as ``node_id`` from now on: the job store marks every row it writes as this
        node's, writes only over rows it owns, and announces its commits."""
        ...

    def claim(self, candidates: Sequence[Job], count: int, now: datetime) -> set[str]:
        """Take up to ``count`` of the queued ``candidates`` for this node, in their order:
        those whose row is still queued at their attempt and not being claimed by another
        node (``FOR UPDATE SKIP LOCKED``) become running, attempt + 1, assigned at ``now``
        (the robot is written with the next state); the ids taken."""
        ...

    def take_over(
        self, job_id: str, attempt: int, robot_id: str, now: datetime
    ) -> SharedRow | None:
        """A robot that reconnected here holds ``attempt`` of a running job: this node
        owns it from now on (the row, else None when the job is no longer at that attempt)."""
        ...

    def cancel(self, job_id: str, now: datetime) -> SharedRow | None:
        """Cancel a job wherever it is: a queued one ends cancelled here, a running one gets
        its cancel asked for its owner to act on; the row after, None when it was finished
        or unknown."""
        ...

    def reopen(self, queued: Job, was: Job) -> bool:
        """Queue again a finished job ``was`` as ``queued`` (a re-run) for this node; False
        when the row no longer is ``was`` (re-run elsewhere meanwhile)."""
        ...

    def read(self, job_ids: Collection[str]) -> list[SharedRow]:
        """The rows of ``job_ids`` (unknown ids are left out)."""
        ...

    def unfinished(self) -> list[SharedRow]:
        """Every queued or running job's row."""
        ...

    def listen(
        self,
        on_rows: Callable[[list[SharedRow], bool], None],
        on_token: Callable[[str], None] | None = None,
    ) -> None:
        """Start hearing of the other nodes' changes (in a thread of its own):
        ``on_rows(rows, complete)`` gets the rows read back after each batch of
        announcements; ``complete`` rows are every unfinished job, read after (re)connecting
        (anything may have changed while not listening); ``on_token(name)`` hears of each
        token created or revoked (the token store forgot what it remembered). Holds this
        node's liveness lock for as long as it listens."""
        ...

    def dead_nodes(self) -> list[str]:
        """Nodes that own queued or running jobs or robots and no longer hold their
        liveness lock."""
        ...

    def adopt(self, node_id: str) -> list[SharedRow]:
        """The queued and running jobs of the dead node ``node_id`` become this node's; the
        robots it listed are forgotten."""
        ...

    def share(self, events: Sequence[SharedEvent]) -> None:
        """Record this node's ``events`` for the other nodes (one transaction, announced):
        each robot event also updates the list of robots connected to this node (the
        robot's last event, or none once it is not ``online``)."""
        ...

    def robots(self, node: str | None = None) -> list[SharedEvent]:
        """The last event of every robot connected to another node (by robot id), or to
        ``node`` (this one's, left by its last run, when it starts)."""
        ...

    def hear_events(
        self, on_events: Callable[[list[SharedEvent], list[SharedEvent] | None], None]
    ) -> None:
        """Before :meth:`listen`: ``on_events(events, robots)`` gets the other nodes'
        events recorded from then on, in each node's order; after (re)connecting, with
        ``robots`` (:meth:`robots`, every robot connected elsewhere now) and the events
        missed meanwhile, else ``robots`` is None."""
        ...

    def close(self) -> None:
        """Stop listening and let go of the liveness lock; idempotent."""
        ...


@dataclass
class Stores:
    """Everything an orchestrator keeps, opened together (``where`` says where, for the
    logs) and closed together."""

    jobs: JobStore
    history: RunHistory
    tokens: TokenStore
    triggers: TriggerStore
    outputs: OutputStore
    checkpoints: CheckpointStore
    upkeep: Upkeep
    where: Path | str
    opener: Callable[[], None] = field(repr=False)
    closer: Callable[[], None] = field(repr=False)
    leadership: Leadership | None = field(default=None, repr=False)
    """Who of several orchestrators sharing the records leads (None: only one can)."""
    shared: SharedJobs | None = field(default=None, repr=False)
    """The job rows as several active orchestrators share them (None: only one can)."""

    def open(self) -> None:
        """Reach the storage now (blocking): fail at once on a locked or unwritable file
        rather than at the first job. QueueError if it cannot be reached."""
        self.opener()

    def close(self) -> None:
        """Write what is pending and let go of the storage; idempotent."""
        self.closer()
