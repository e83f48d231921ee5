"""The runbook's auto-scaling rule: how many robots the queue wants. Pure: no I/O, no clock.

``casare-nb autoscale`` reads the queue and the robots each interval and asks :func:`decide`;
when the answer differs from the robots there are (and from the count last asked for), it
runs the operator's command with the wanted count.

The rule, judged against the orchestrator's ``thresholds.queue_depth``:

=======================================================  ==============================
what the round sees                                      wanted robots
=======================================================  ==============================
queue depth at its critical level (> 100 by default)     current + 2
queue depth at its warning level (> 50 by default)       current + 1
jobs queued and no robot at all                          1
queue empty and an idle robot, ``idle_rounds`` rounds    current - 1
in a row (this one included)
anything else                                            current
=======================================================  ==============================

always clamped to ``[minimum, maximum]`` (so a count below the minimum is raised to it at
once). "Current" counts robots online or busy (draining and offline ones are leaving or
gone).
"""

from __future__ import annotations

from dataclasses import dataclass

from casare_nb.core.thresholds import Level, Limit

__all__ = ["DEFAULT_IDLE_ROUNDS", "Decision", "Observation", "decide"]

DEFAULT_IDLE_ROUNDS = 3
"""Idle rounds in a row before one robot fewer is wanted."""


@dataclass(frozen=True)
class Observation:
    """What one round saw: queued jobs, robots online or busy, and how many of them run
    nothing."""

    queue_depth: int
    robots: int
    idle_robots: int

    def __post_init__(self) -> None:
        if self.queue_depth < 0 or self.robots < 0 or self.idle_robots < 0:
            raise ValueError("queue depth and robot counts cannot be negative")
        if self.idle_robots > self.robots:
            raise ValueError(f"{self.idle_robots} idle robots of only {self.robots}")


@dataclass(frozen=True)
class Decision:
    """The wanted robot count, why, and the idle rounds to carry to the next round."""

    wanted: int
    reason: str
    idle_rounds: int

    def changes(self, current: int) -> bool:
        return self.wanted != current


def decide(
    seen: Observation,
    limit: Limit,
    *,
    minimum: int = 1,
    maximum: int = 8,
    idle_before: int = 0,
    idle_rounds: int = DEFAULT_IDLE_ROUNDS,
) -> Decision:
    """The wanted robot count after a round that saw ``seen`` (see the module's table).

    ``idle_before`` is the idle rounds in a row before this one (the last decision's
    ``idle_rounds``); ``limit`` the queue depth's thresholds."""
    if minimum < 0 or maximum < minimum:
        raise ValueError(f"need 0 <= min <= max, not min {minimum}, max {maximum}")
    if idle_rounds < 1:
        raise ValueError(f"idle rounds must be >= 1, not {idle_rounds}")
    current = seen.robots
    level = limit.level(seen.queue_depth)
    idle = seen.queue_depth == 0 and seen.idle_robots > 0
    idle_now = idle_before + 1 if idle else 0
    depth = f"queue depth {seen.queue_depth}"
    op = ">" if limit.strict else ">="
    if level is Level.CRITICAL:
        wanted, reason = current + 2, f"{depth} at critical ({op} {limit.critical:g}): two more"
    elif level is Level.WARN:
        wanted, reason = current + 1, f"{depth} at warning ({op} {limit.warn:g}): one more"
    elif seen.queue_depth and current == 0:
        wanted, reason = 1, f"{depth} and no robot: one"
    elif idle and idle_now >= idle_rounds:
        wanted, reason = current - 1, f"queue empty, robots idle for {idle_now} rounds: one fewer"
        idle_now = 0
    else:
        wanted, reason = current, f"{depth}, {current} robots: no change"
    clamped = min(maximum, max(minimum, wanted))
    if clamped != wanted:
        bound = "maximum" if clamped < wanted else "minimum"
        reason = f"{reason} (held at the {bound}, {clamped})"
    return Decision(wanted=clamped, reason=reason, idle_rounds=idle_now)
