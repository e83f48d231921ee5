"""The robots and cells of the other orchestrators of a shared database, for this one's
monitors.

Every robot event (``robot_online``, ``robot_status``, ``robot_offline``) and
``cell_finished`` this node publishes is also recorded for the others
(:meth:`~casare_nb.store.interfaces.SharedJobs.share`, in batches, in order); what the others
record is read back by the listener and sent to this node's monitors as it is, but not
counted in this node's metrics. The robots connected elsewhere are kept here (by id, with
their ``node``): they are in the ``robots`` snapshot a monitor gets when it subscribes and in
``GET /api/robots``. A robot connected to this node is described by this node alone.

The job events need none of this: every node hears of every job's changes
(:mod:`.jobs.sharing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from pydantic import ValidationError

from casare_nb.core.errors import QueueError, one_line
from casare_nb.core.models import Robot, RobotStatus
from casare_nb.protocol import CellEvent, EventData, EventKind, RobotEvent
from casare_nb.store.interfaces import SharedEvent, SharedJobs

__all__ = ["SHARED_KINDS", "Elsewhere"]

logger = logging.getLogger("casare_nb.orchestrator")

SHARED_KINDS: Final = frozenset(
    {
        EventKind.ROBOT_ONLINE,
        EventKind.ROBOT_STATUS,
        EventKind.ROBOT_OFFLINE,
        EventKind.CELL_FINISHED,
    }
)
"""The events of one node the monitors of the others hear of."""
NODE_LOST: Final = "orchestrator_lost"
"""The reason of the ``robot_offline`` of a robot whose orchestrator died."""


class Elsewhere:
    """See the module docstring. ``to_monitors`` sends an event to this node's monitors;
    ``here(robot_id)`` says whether the robot is connected to this node; ``changed`` is
    called when the robots connected elsewhere changed."""

    def __init__(
        self,
        rows: SharedJobs,
        to_monitors: Callable[[EventKind, EventData], None],
        here: Callable[[str], bool],
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.rows = rows
        self._to_monitors = to_monitors
        self._here = here
        self._changed = changed
        self._robots: dict[str, Robot] = {}
        self._pending: list[SharedEvent] = []
        self._flushing: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False

    async def start(self) -> None:
        """Hear the other nodes' events from when the listener starts; the robots the last
        run of this node listed (its robots come back, or not) are offline for the others."""
        self._loop = asyncio.get_running_loop()
        self.rows.hear_events(self._heard)
        try:
            left = await asyncio.to_thread(self.rows.robots, self.rows.node)
        except QueueError as exc:
            logger.warning("cannot read the robots this node listed before: %s", one_line(exc))
            return
        for event in left:
            with contextlib.suppress(ValueError, ValidationError):
                robot = RobotEvent.model_validate_json(event.data).robot
                gone = robot.model_copy(update={"status": RobotStatus.OFFLINE})
                self.share(EventKind.ROBOT_OFFLINE, RobotEvent(robot=gone, reason=NODE_LOST))

    def robots(self) -> list[Robot]:
        """The robots connected to the other nodes now (``node`` says which), by id."""
        return [
            robot for robot_id, robot in sorted(self._robots.items()) if not self._here(robot_id)
        ]

    def with_mine(self, mine: list[Robot]) -> list[Robot]:
        """``mine`` (this node's robots, offline ones too, given this ``node``) and those
        connected elsewhere, by id; a robot that left this node for another is shown where
        it is now."""
        there = self.robots()
        ids = {robot.robot_id for robot in there}
        node = self.rows.node
        here = [r.model_copy(update={"node": node}) for r in mine if r.robot_id not in ids]
        return sorted([*here, *there], key=lambda robot: robot.robot_id)

    # -- this node's events --------------------------------------------------------------

    def share(self, kind: EventKind, data: EventData) -> None:
        """Record one of this node's events for the others (on the loop; written soon)."""
        if kind not in SHARED_KINDS or self._stopped:
            return
        if isinstance(data, RobotEvent):
            online = kind is not EventKind.ROBOT_OFFLINE
            event = SharedEvent(kind.value, data.model_dump_json(), data.robot.robot_id, online)
            if kind is EventKind.ROBOT_ONLINE:  # here now: what another node said is past
                self._robots.pop(data.robot.robot_id, None)
            there = self._robots.get(data.robot.robot_id)
            if not online and there is not None:  # it left this node for another one
                self._to_monitors(EventKind.ROBOT_ONLINE, RobotEvent(robot=there))
        elif isinstance(data, CellEvent):
            event = SharedEvent(kind.value, data.model_dump_json())
        else:
            return
        self._pending.append(event)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Write what is pending, a batch at a time (in order); a robot's status events of
        one batch but its last are left out (the others see its state as of now)."""
        await asyncio.sleep(0)  # what this loop turn publishes joins the batch
        while self._pending:
            batch, self._pending = _latest_status(self._pending), []
            try:
                await asyncio.to_thread(self.rows.share, batch)
            except Exception as exc:  # a database error, or a store closed meanwhile
                logger.warning(
                    "the other orchestrators miss %d events of this one: %s",
                    len(batch),
                    one_line(exc),
                )

    async def stop(self) -> None:
        """Write what was shared so far (the robots' going, at a stop) and share no more."""
        while self._flushing is not None and not self._flushing.done():
            await asyncio.shield(self._flushing)
        self._stopped = True

    # -- the others' events --------------------------------------------------------------

    def _heard(self, events: list[SharedEvent], robots: list[SharedEvent] | None) -> None:
        """From the listener's thread: applied on the loop."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(self._apply, events, robots)

    def _apply(self, events: list[SharedEvent], robots: list[SharedEvent] | None) -> None:
        if robots is not None:
            self._replace(robots)
        for event in events:
            try:
                self._apply_one(event)
            except (ValueError, ValidationError) as exc:
                logger.warning(
                    "an event of node %s is not one this orchestrator reads: %s",
                    event.node,
                    one_line(exc),
                )
        if robots is not None or any(e.robot_id is not None for e in events):
            self._changed()

    def _replace(self, listed: list[SharedEvent]) -> None:
        """Every robot connected elsewhere, as the database lists them after (re)connecting:
        the monitors hear of those that came and went meanwhile."""
        fresh: dict[str, Robot] = {}
        for event in listed:
            with contextlib.suppress(ValueError, ValidationError):
                robot = RobotEvent.model_validate_json(event.data).robot
                fresh[robot.robot_id] = robot.model_copy(update={"node": event.node})
        before, self._robots = self._robots, fresh
        for robot_id, robot in before.items():
            if robot_id not in fresh and not self._here(robot_id):
                self._offline(robot, "disconnected")
        for robot_id, robot in fresh.items():
            if robot_id not in before and not self._here(robot_id):
                self._to_monitors(EventKind.ROBOT_ONLINE, RobotEvent(robot=robot))

    def _apply_one(self, event: SharedEvent) -> None:
        kind = EventKind(event.kind)
        if kind is EventKind.CELL_FINISHED:
            self._to_monitors(kind, CellEvent.model_validate_json(event.data))
            return
        if kind not in SHARED_KINDS:
            raise ValueError(f"unknown event kind {event.kind!r}")
        told = RobotEvent.model_validate_json(event.data)
        node = told.robot.node or event.node  # a node tells of a dead one's robots by name
        robot = told.robot.model_copy(update={"node": node})
        if kind is EventKind.ROBOT_OFFLINE:
            held = self._robots.get(robot.robot_id)
            if held is None or held.node != node:
                return  # it went elsewhere meanwhile
            del self._robots[robot.robot_id]
        else:
            self._robots[robot.robot_id] = robot
        if not self._here(robot.robot_id):  # connected here (still): this node's events say
            self._to_monitors(kind, RobotEvent(robot=robot, reason=told.reason))

    def node_gone(self, node: str) -> None:
        """The leader found ``node`` dead (its jobs adopted): its robots are offline, here
        and, through this node's events, on the others."""
        for robot_id, robot in sorted(self._robots.items()):
            if robot.node != node:
                continue
            del self._robots[robot_id]
            self._offline(robot, NODE_LOST)
            gone = robot.model_copy(update={"status": RobotStatus.OFFLINE})
            self.share(EventKind.ROBOT_OFFLINE, RobotEvent(robot=gone, reason=NODE_LOST))
        self._changed()

    def _offline(self, robot: Robot, reason: str) -> None:
        gone = robot.model_copy(update={"status": RobotStatus.OFFLINE})
        self._to_monitors(EventKind.ROBOT_OFFLINE, RobotEvent(robot=gone, reason=reason))


def _latest_status(events: list[SharedEvent]) -> list[SharedEvent]:
    """``events`` without the ``robot_status`` events followed by another of the same robot."""
    later: set[str] = set()
    kept: list[SharedEvent] = []
    for event in reversed(events):
        if event.robot_id is not None:
            if event.kind == EventKind.ROBOT_STATUS.value and event.robot_id in later:
                continue
            later.add(event.robot_id)
        kept.append(event)
    kept.reverse()
    return kept
