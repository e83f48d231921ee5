"""Which robots the orchestrator knows and whether they are alive. Pure: no I/O, no clock.

The server feeds a :class:`RobotRegistry` the robots' ``register`` and ``heartbeat``
messages and its own observations (a connection closed, time passed) with an explicit
``now``; the registry answers with :class:`~casare_nb.core.models.Robot` snapshots.

Each registration carries a ``session`` (any hashable; the server uses one per connection).
A robot id belongs to one live session at a time: registering an id that is online, busy
or draining raises :class:`RobotIdTaken`, and a disconnect or heartbeat of an older session
of a re-registered robot does not touch the new one.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta

from casare_nb.core.errors import CasareError
from casare_nb.core.models import Robot, RobotStatus
from casare_nb.protocol import Heartbeat, Register

__all__ = ["STALE_HEARTBEATS", "NotRegistered", "RegistryError", "RobotIdTaken", "RobotRegistry"]


STALE_HEARTBEATS = 2  # heartbeats that may cross an order to drain or undrain on the wire


class RegistryError(CasareError):
    """A robot message the registry refuses; ``str(err)`` is one line."""


class RobotIdTaken(RegistryError):
    """A robot registered under an id that a live connection holds."""

    def __init__(self, robot_id: str) -> None:
        super().__init__(
            f"robot id {robot_id!r} is already connected; "
            "a second robot cannot use it until the first disconnects"
        )
        self.robot_id = robot_id


class NotRegistered(RegistryError):
    """A heartbeat from a robot that is not registered (or not on this session)."""

    def __init__(self, robot_id: str, why: str) -> None:
        super().__init__(f"robot {robot_id!r} is not registered: {why}")
        self.robot_id = robot_id


@dataclass
class _Entry:
    robot: Robot
    session: Hashable | None
    last_seq: int | None = None
    # a drain (or undrain) the orchestrator ordered, held against heartbeats the robot sent
    # before the order reached it; ``stale_left`` more disagreeing heartbeats are overruled
    ordered: bool | None = None
    stale_left: int = 0


class RobotRegistry:
    """Robots by id: registration, heartbeats, disconnects and the missed-heartbeat sweep.

    Methods return copies; offline robots stay listed until the id registers again.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._snapshot: list[Robot] | None = None  # robots() until something changes

    def snapshot(self) -> list[Robot]:
        """Every known robot, by id: the same list until a robot changes (the dispatcher
        asks on every round). Do not mutate it; copy what you keep."""
        if self._snapshot is None:
            self._snapshot = self.robots()
        return self._snapshot

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, robot_id: object) -> bool:
        return robot_id in self._entries

    def robots(self) -> list[Robot]:
        """Every known robot (online or not), by id."""
        return [self._entries[rid].robot.model_copy(deep=True) for rid in sorted(self._entries)]

    def get(self, robot_id: str) -> Robot | None:
        """The robot ``robot_id``, or None if it never registered."""
        entry = self._entries.get(robot_id)
        return None if entry is None else entry.robot.model_copy(deep=True)

    def set_status(self, robot_id: str, status: RobotStatus) -> Robot | None:
        """Show ``status`` for a robot at once (e.g. paused by the orchestrator: draining)
        until its heartbeats agree: up to :data:`STALE_HEARTBEATS` heartbeats the robot sent
        before it got the order, and that still say otherwise, do not undo it. None for an
        unknown or offline robot."""
        entry = self._entries.get(robot_id)
        if entry is None or entry.robot.status is RobotStatus.OFFLINE:
            return None
        entry.ordered = status is RobotStatus.DRAINING
        entry.stale_left = STALE_HEARTBEATS
        entry.robot = entry.robot.model_copy(update={"status": status})
        self._snapshot = None
        return entry.robot.model_copy(deep=True)

    def register(self, msg: Register, *, now: datetime, session: Hashable | None = None) -> Robot:
        """Record a robot online as of ``now``; raises :class:`RobotIdTaken` if its id is live."""
        old = self._entries.get(msg.robot_id)
        if old is not None and old.robot.status is not RobotStatus.OFFLINE:
            raise RobotIdTaken(msg.robot_id)
        robot = Robot(
            robot_id=msg.robot_id,
            name=msg.name,
            environment=msg.environment,
            tags=list(msg.tags),
            max_concurrent_jobs=msg.max_concurrent_jobs,
            status=RobotStatus.ONLINE,
            running_jobs=0,
            last_heartbeat=now,  # registering is the first sign of life
        )
        self._entries[msg.robot_id] = _Entry(robot=robot, session=session)
        self._snapshot = None
        return robot.model_copy(deep=True)

    def heartbeat(self, msg: Heartbeat, *, now: datetime, session: Hashable | None = None) -> Robot:
        """Apply a heartbeat: status, running jobs, load and ``last_heartbeat = now``.

        A heartbeat whose ``seq`` is not above the last one of the session (a replay or a
        late duplicate) changes nothing. Raises :class:`NotRegistered` for an unknown or
        offline robot, or one registered by another session.
        """
        entry = self._entries.get(msg.robot_id)
        if entry is None:
            raise NotRegistered(msg.robot_id, "send register first")
        if entry.session != session:
            raise NotRegistered(msg.robot_id, "it registered on another connection")
        if entry.robot.status is RobotStatus.OFFLINE:
            raise NotRegistered(msg.robot_id, "it is offline; register again")
        if entry.last_seq is not None and msg.seq <= entry.last_seq:
            return entry.robot.model_copy(deep=True)
        entry.last_seq = msg.seq
        self._snapshot = None
        status = RobotStatus(msg.status)
        if entry.ordered is not None:
            if (status is RobotStatus.DRAINING) == entry.ordered or entry.stale_left <= 0:
                entry.ordered = None  # the robot caught up (or insists: it knows best)
            else:  # sent before the order reached the robot
                entry.stale_left -= 1
                full = len(msg.running_jobs) >= entry.robot.max_concurrent_jobs
                status = (
                    RobotStatus.DRAINING
                    if entry.ordered
                    else (RobotStatus.BUSY if full else RobotStatus.ONLINE)
                )
        entry.robot = entry.robot.model_copy(
            update={
                "status": status,
                "running_jobs": len(msg.running_jobs),
                "cpu_percent": msg.cpu_percent,
                "memory_percent": msg.memory_percent,
                "last_heartbeat": now,
            }
        )
        return entry.robot.model_copy(deep=True)

    def disconnect(
        self, robot_id: str, *, now: datetime, session: Hashable | None = None
    ) -> Robot | None:
        """Mark the robot offline because its session ended; the robot, if it just went
        offline, else None (unknown, already offline, or a newer session holds the id)."""
        entry = self._entries.get(robot_id)
        if entry is None or entry.session != session:
            return None
        if entry.robot.status is RobotStatus.OFFLINE:
            return None
        return self._offline(entry)

    def sweep(self, now: datetime, *, interval_s: float, misses: int = 3) -> list[Robot]:
        """Mark offline every live robot silent for more than ``interval_s * misses``
        seconds before ``now``; the robots that just went offline, by id."""
        limit = timedelta(seconds=interval_s * misses)
        gone: list[Robot] = []
        for robot_id in sorted(self._entries):
            entry = self._entries[robot_id]
            if entry.robot.status is RobotStatus.OFFLINE:
                continue
            last = entry.robot.last_heartbeat
            if last is None or now - last > limit:
                gone.append(self._offline(entry))
        return gone

    def _offline(self, entry: _Entry) -> Robot:
        self._snapshot = None
        entry.robot = entry.robot.model_copy(update={"status": RobotStatus.OFFLINE})
        return entry.robot.model_copy(deep=True)
