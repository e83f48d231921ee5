"""Reconnect delays: capped exponential backoff with proportional jitter. Pure: no I/O, no clock.

The n-th delay (n from 0) is ``min(cap_s, base_s * factor**n)``, then jittered by up to
``±jitter`` of itself (*proportional* jitter, not "full jitter"): with the defaults the delays
are about 0.5, 1, 2, 4 ... 30 s, each within ±20 %, and never above ``cap_s``. Proportional
jitter keeps the growth a user can read in the log ("retrying in 4.1 s") while still spreading
robots that lost the same orchestrator at the same moment; full jitter (uniform in
``[0, d]``) spreads them more but can retry almost at once after many failures.

:meth:`Backoff.reset` after a success starts again from ``base_s``. :class:`Addresses`
says which orchestrator to try next when a robot has several.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Addresses", "Backoff"]


class Backoff:
    """Capped exponential delays with proportional jitter; ``rand`` returns a float in [0, 1]."""

    def __init__(
        self,
        base_s: float = 0.5,
        factor: float = 2.0,
        cap_s: float = 30.0,
        jitter: float = 0.2,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if base_s <= 0:
            raise ValueError(f"base_s must be > 0, not {base_s}")
        if factor < 1:
            raise ValueError(f"factor must be >= 1, not {factor}")
        if cap_s < base_s:
            raise ValueError(f"cap_s ({cap_s}) must be >= base_s ({base_s})")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), not {jitter}")
        self.base_s = base_s
        self.factor = factor
        self.cap_s = cap_s
        self.jitter = jitter
        self._rand = rand
        self._next_s = base_s  # un-jittered; stops growing at cap_s (no float overflow)
        self.attempts = 0
        """Delays handed out since the last reset."""

    def next(self) -> float:
        """The delay before the next attempt, in seconds (0 < delay <= cap_s)."""
        raw = self._next_s
        self._next_s = min(self.cap_s, raw * self.factor)
        self.attempts += 1
        spread = self.jitter * (2.0 * self._rand() - 1.0)  # in [-jitter, +jitter]
        return min(self.cap_s, raw * (1.0 + spread))

    def reset(self) -> None:
        """Start again from ``base_s`` (after a success)."""
        self._next_s = self.base_s
        self.attempts = 0

    def __repr__(self) -> str:
        return (
            f"Backoff(base_s={self.base_s}, factor={self.factor}, cap_s={self.cap_s}, "
            f"jitter={self.jitter}, attempts={self.attempts})"
        )


class Addresses:
    """The orchestrators a robot may reach, in order (several: orchestrators sharing a store,
    one active): :attr:`current` is tried; after a failure the next one is tried at once,
    and a backoff delay is due only once every address failed in a row."""

    def __init__(self, urls: list[str]) -> None:
        if not urls:
            raise ValueError("no orchestrator address")
        self.urls = urls
        self._at = 0
        self._failed = 0  # failures in a row since the last registration

    @property
    def current(self) -> str:
        return self.urls[self._at]

    def failed(self) -> bool:
        """The current address failed: move to the next; whether to wait a backoff first
        (every address failed since the last registration)."""
        self._at = (self._at + 1) % len(self.urls)
        self._failed += 1
        return self._failed % len(self.urls) == 0

    def registered(self) -> None:
        """The current address took the robot: start counting failures again."""
        self._failed = 0
