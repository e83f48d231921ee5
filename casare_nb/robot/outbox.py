"""The robot's outbox: what the runner reports about its jobs, kept until it is known to have
arrived.

What the runner reports about its jobs (``job_accept``, ``job_progress``,
``job_complete``, ``job_failed``, ``job_cancelled``, ``checkpoint_offer``, ``blob_put``, a
``log_batch`` with a ``job_id``) is never lost to a link that is down: the ``send`` the runner
gets puts it in the agent's :class:`Outbox` and returns, and one sender task writes the outbox
in order while the link is up. A message stays in the outbox until it is known to have
arrived: written to the socket *and* followed by a heartbeat the orchestrator acknowledged
(frames are read in order, so that ack covers everything written before that heartbeat). When
the link drops, whatever was unsent, half-sent or unacknowledged goes back to the front of the
outbox and is sent again after the next registration, under the same message ids: delivery is
at-least-once and the orchestrator drops duplicates by id and by
:func:`~casare_nb.protocol.dedup_key` (job, attempt, cell). The outbox is capped in bytes
(``buffer_max_bytes``, :data:`DEFAULT_BUFFER_BYTES`); when full it drops its oldest
``job_progress``, ``log_batch`` and ``blob_put`` messages first, then ``job_accept`` and
``checkpoint_offer``, with a warning naming the counts, and never a final result
(``job_complete``, ``job_failed``, ``job_cancelled``). Other messages (heartbeats, status,
``job_reject``, errors) are never buffered: sent at once, or an error if the link is down.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass

from casare_nb.protocol import (
    BlobPut,
    CheckpointOffer,
    Envelope,
    JobAccept,
    JobCancelled,
    JobComplete,
    JobFailed,
    JobProgress,
    JobRef,
    LogBatch,
    encode,
)

__all__ = ["DEFAULT_BUFFER_BYTES", "Outbox", "is_buffered"]

log = logging.getLogger("casare_nb.robot.agent")

DEFAULT_BUFFER_BYTES = 64 * 1024 * 1024
"""Default cap of the :class:`Outbox`, in bytes of encoded frames."""
_FINAL_RESULTS = (JobComplete, JobFailed, JobCancelled)
_BUFFERED = (JobAccept, JobProgress, CheckpointOffer, BlobPut, LogBatch, *_FINAL_RESULTS)
_DROP_ORDER = ((JobProgress, LogBatch, BlobPut), (JobAccept, CheckpointOffer))
"""What a full outbox drops, oldest first, tier by tier; final results are never dropped."""
_BLOB_JOBS_KEPT = 4096  # blob hash -> job, learnt from checkpoint_offer, to scope a blob_put
_ABANDONED_KEPT = 1024  # abandoned attempts remembered, to drop what the runner still sends


def is_buffered(msg: Envelope) -> bool:
    """Whether ``msg`` is a job report the outbox keeps until delivered (see the module doc)."""
    if isinstance(msg, LogBatch):
        return msg.job_id is not None
    return isinstance(msg, _BUFFERED)


@dataclass(eq=False)
class _Entry:
    """One message in the outbox, encoded once: a resend is the same frame, the same id."""

    msg: Envelope
    frame: str
    size: int
    job_id: str | None
    attempt: int | None  # None: any attempt of job_id (a log_batch may leave it out)
    confirm_seq: int = 0  # once written: the heartbeat whose ack says it arrived

    def belongs_to(self, refs: set[tuple[str, int]], job_ids: set[str]) -> bool:
        if self.job_id is None:
            return True
        if self.attempt is None:
            return self.job_id in job_ids
        return (self.job_id, self.attempt) in refs


class Outbox:
    """The runner's job reports not yet known to have reached the orchestrator. Sans-I/O.

    Oldest first, in three parts: *unconfirmed* (written on the current connection, waiting
    for a heartbeat_ack that covers them), the one *in flight* (being written), *pending* (not
    written yet). :meth:`take` / :meth:`written` / :meth:`unwritten` move a message along,
    :meth:`confirm` forgets what a heartbeat_ack covers, :meth:`rewind` puts everything back in
    front of pending when a connection ends. ``max_bytes`` caps the encoded frames held; see
    :meth:`put` for what a full outbox drops.
    """

    def __init__(self, max_bytes: int = DEFAULT_BUFFER_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"the outbox needs max_bytes >= 1, not {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        """Size of the frames held, in bytes."""
        self.dropped: Counter[str] = Counter()
        """Messages dropped to keep under max_bytes since the outbox was made, by type."""
        self._pending: deque[_Entry] = deque()
        self._in_flight: _Entry | None = None
        self._unconfirmed: deque[_Entry] = deque()
        self._blob_jobs: OrderedDict[str, JobRef] = OrderedDict()
        self._abandoned: OrderedDict[tuple[str, int], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending) + len(self._unconfirmed) + (self._in_flight is not None)

    def jobs(self) -> list[JobRef]:
        """The (job, attempt)s with messages held, in order of their oldest message."""
        refs: dict[JobRef, None] = {}
        for entry in self._entries():
            if entry.job_id is not None and entry.attempt is not None:
                refs.setdefault(JobRef(job_id=entry.job_id, attempt=entry.attempt))
        return list(refs)

    def put(self, msg: Envelope) -> Counter[str]:
        """Queue ``msg`` (a job report: :func:`is_buffered`) behind the others.

        Returns what was dropped to make room, by type: the oldest job_progress, log_batch and
        blob_put first, then job_accept and checkpoint_offer, until the frames fit in
        ``max_bytes``; final results are never dropped, so they alone may exceed it. A message
        about an abandoned attempt is dropped at once (not counted). Raises
        :class:`~casare_nb.protocol.ProtocolError` for a frame too large to send.
        """
        frame = encode(msg)
        job_id, attempt = self._job_of(msg)
        if job_id is not None and attempt is not None and (job_id, attempt) in self._abandoned:
            log.debug("dropped %s of abandoned job %s attempt %s", msg.type, job_id, attempt)
            return Counter()
        entry = _Entry(msg, frame, len(frame.encode("utf-8")), job_id, attempt)
        if entry.size > self.max_bytes and _droppable(entry):
            self.dropped[msg.type] += 1
            return Counter({msg.type: 1})
        self._pending.append(entry)
        self.bytes += entry.size
        return self._make_room()

    def take(self) -> _Entry | None:
        """The oldest pending message, now in flight; None if nothing is pending."""
        if self._in_flight is not None:
            raise RuntimeError("the outbox has a message in flight already")
        if not self._pending:
            return None
        self._in_flight = self._pending.popleft()
        return self._in_flight

    def written(self, entry: _Entry, confirm_seq: int) -> None:
        """``entry`` is written; the ack of heartbeat ``confirm_seq`` (or later) confirms it."""
        self._settle_flight(entry)
        entry.confirm_seq = confirm_seq
        self._unconfirmed.append(entry)

    def unwritten(self, entry: _Entry) -> None:
        """Writing ``entry`` failed or was interrupted: first in line again."""
        self._settle_flight(entry)
        self._pending.appendleft(entry)

    def confirm(self, seq: int) -> None:
        """The orchestrator acknowledged heartbeat ``seq``: what was written before it arrived."""
        while self._unconfirmed and self._unconfirmed[0].confirm_seq <= seq:
            self.bytes -= self._unconfirmed.popleft().size

    def rewind(self) -> None:
        """The connection ended: what it did not confirm is pending again, in order, first."""
        if self._in_flight is not None:
            self._pending.appendleft(self._in_flight)
            self._in_flight = None
        self._pending.extendleft(reversed(self._unconfirmed))
        self._unconfirmed.clear()

    def keep_jobs(self, current: Iterable[JobRef], abandon: Iterable[JobRef]) -> int:
        """After a reconnect: drop the messages of every job but ``current`` and remember
        ``abandon``, so later messages about those are dropped too. Returns how many messages
        were dropped. Messages that name no job (a blob_put of no known checkpoint) stay."""
        for ref in abandon:
            self._abandoned[(ref.job_id, ref.attempt)] = None
            self._abandoned.move_to_end((ref.job_id, ref.attempt))
            while len(self._abandoned) > _ABANDONED_KEPT:
                self._abandoned.popitem(last=False)
        refs = {(ref.job_id, ref.attempt) for ref in current}
        job_ids = {job_id for job_id, _ in refs}
        before = len(self)
        for part in (self._unconfirmed, self._pending):
            kept = [entry for entry in part if entry.belongs_to(refs, job_ids)]
            self.bytes -= sum(entry.size for entry in part if not entry.belongs_to(refs, job_ids))
            part.clear()
            part.extend(kept)
        return before - len(self)

    def _entries(self) -> list[_Entry]:
        flight = [self._in_flight] if self._in_flight is not None else []
        return [*self._unconfirmed, *flight, *self._pending]

    def _settle_flight(self, entry: _Entry) -> None:
        if entry is not self._in_flight:
            raise RuntimeError("that message is not the one in flight")
        self._in_flight = None

    def _job_of(self, msg: Envelope) -> tuple[str | None, int | None]:
        if isinstance(msg, BlobPut):
            ref = self._blob_jobs.get(msg.sha256)
            return (ref.job_id, ref.attempt) if ref is not None else (None, None)
        if isinstance(msg, CheckpointOffer):
            for sha in msg.blobs:
                self._blob_jobs[sha] = msg.ref
                self._blob_jobs.move_to_end(sha)
            while len(self._blob_jobs) > _BLOB_JOBS_KEPT:
                self._blob_jobs.popitem(last=False)
        job_id = getattr(msg, "job_id", None)
        attempt = getattr(msg, "attempt", None)
        return (job_id if isinstance(job_id, str) else None), (
            attempt if isinstance(attempt, int) else None
        )

    def _make_room(self) -> Counter[str]:
        dropped: Counter[str] = Counter()
        for kinds in _DROP_ORDER:
            for part in (self._unconfirmed, self._pending):  # oldest first
                if self.bytes <= self.max_bytes:
                    break
                i = 0
                while self.bytes > self.max_bytes and i < len(part):
                    entry = part[i]
                    if isinstance(entry.msg, kinds):
                        del part[i]
                        self.bytes -= entry.size
                        dropped[entry.msg.type] += 1
                    else:
                        i += 1
        self.dropped.update(dropped)
        return dropped


def _droppable(entry: _Entry) -> bool:
    return not isinstance(entry.msg, _FINAL_RESULTS)
