"""Which of several orchestrators on one database leads: become it, notice losing it.

Orchestrators that share a PostgreSQL store (``--store postgresql://...``) all serve robots
and clients and dispatch (:mod:`casare_nb.orchestrator.jobs.sharing`); one of them **leads**:
it holds the store's :class:`~casare_nb.store.interfaces.Leadership` and fires the schedules,
watches the file-watch folders and adopts the jobs of dead nodes. The others wait for the
lead in :meth:`ActiveRole.become` (in a task: they serve meanwhile); when the leader dies its
database connection goes with it, the lock is free, and another node leads within
``LEADER_POLL_S``.

Once leading, :meth:`ActiveRole.watch` checks every ``CHECK_S`` that it still does. A lost
connection is reconnected and the lock taken again if nobody took over meanwhile; if another
node did, or the database has been out of reach for ``PARTITION_S`` (another may have taken
over on its side of a network split), the orchestrator **stands down**: ``lost`` is set with
the reason; it stops firing and watching, goes on serving and dispatching, and waits to lead
again (:meth:`ActiveRole.reset`).

The embedded default has no leadership: one process holds its file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Final

from casare_nb.store.interfaces import Leadership

__all__ = ["CHECK_S", "PARTITION_S", "ActiveRole", "default_node_id"]

logger = logging.getLogger("casare_nb.orchestrator")

CHECK_S: Final = 1.0
"""How often the active orchestrator checks it still is."""
PARTITION_S: Final = 10.0
"""How long the active orchestrator stays active without reaching its database."""
RETRY_S: Final = 0.1
"""How often the active orchestrator tries to reach its database again once it lost it."""


def default_node_id() -> str:
    """``HOST-PID``: a node id that differs between orchestrators."""
    return f"{socket.gethostname()}-{os.getpid()}"


class ActiveRole:
    """This orchestrator's part in its store's leadership (see the module docstring); a
    no-op without one."""

    def __init__(
        self,
        leadership: Leadership | None,
        node_id: str,
        where: str,
        *,
        check_s: float = CHECK_S,
        partition_s: float = PARTITION_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.leadership = leadership
        self.node_id = node_id
        self.where = where
        self.check_s = check_s
        self.partition_s = partition_s
        self.epoch: int | None = None
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self._give_up = threading.Event()
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    @property
    def shared(self) -> bool:
        """Whether several orchestrators may share the store (one leads)."""
        return self.leadership is not None

    async def become(self, waiting: Callable[[str], None] | None = None) -> None:
        """Return once this orchestrator leads (at once without a leadership); QueueError if
        :meth:`give_up` came first or the database cannot be reached."""
        lead = self.leadership
        if lead is None or self.epoch is not None:
            return

        def told(who: str) -> None:
            logger.warning(
                "%s leads the orchestrators of %s; this node leads when it goes",
                who,
                self.where,
            )
            if waiting is not None:
                waiting(who)

        self.epoch = await asyncio.to_thread(lead.acquire, self.node_id, self._give_up.is_set, told)
        logger.info(
            "node %s leads the orchestrators of %s (epoch %d)",
            self.node_id,
            self.where,
            self.epoch,
        )

    def previous_stopped(self) -> bool:
        """Whether the active orchestrator before this one stopped cleanly."""
        return self.leadership is None or self.leadership.previous_stopped()

    def give_up(self) -> None:
        """Stop waiting in :meth:`become` (the orchestrator stops)."""
        self._give_up.set()

    def watch(self) -> None:
        """Start checking, in the running loop, that this orchestrator stays active."""
        if self.leadership is not None and self.epoch is not None and self._task is None:
            self._task = asyncio.create_task(self._watch(self.leadership))

    async def _watch(self, lead: Leadership) -> None:
        unreachable_since: float | None = None
        while True:  # while the server is away, ask often: its lock is retaken first
            await asyncio.sleep(self.check_s if unreachable_since is None else RETRY_S)
            reason = await asyncio.to_thread(lead.check)
            if reason is None:
                unreachable_since = None
                continue
            if reason.startswith("unreachable:"):
                now = self._clock()
                unreachable_since = unreachable_since or now
                if now - unreachable_since < self.partition_s:
                    continue
                reason = (
                    f"cannot reach {self.where} for {self.partition_s:g} s: another "
                    "orchestrator may have taken over"
                )
            self.lost_reason = reason
            logger.error("standing down: %s", reason)
            self.lost.set()
            return

    def reset(self) -> None:
        """After :meth:`release` of a lead that was lost: ready to :meth:`become` again."""
        self.epoch = None
        self.lost = asyncio.Event()
        self.lost_reason = None

    async def release(self) -> None:
        """Stop watching and let go (a clean stop, recorded); idempotent."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.leadership is not None and self.epoch is not None:
            await asyncio.to_thread(self.leadership.release)
