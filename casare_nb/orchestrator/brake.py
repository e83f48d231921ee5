"""A brake on failed authentication: a client (by address) that fails more than ``limit``
times within ``window_s`` is answered 429 with ``Retry-After`` until its window ends, and
the failures are logged once per client per window with a count, not once each (2,000
bad tokens are one warning, not 2,000 lines). Bearer tokens and webhook signatures alike.

Every failure is also one record of the audit log (:mod:`casare_nb.orchestrator.audit`,
action ``authenticate``), braked or not."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from casare_nb.orchestrator import audit

__all__ = ["DEFAULT_LIMIT", "DEFAULT_WINDOW_S", "AuthBrake"]

logger = logging.getLogger("casare_nb.orchestrator.http")

DEFAULT_LIMIT: Final = 30
"""Failed authentications a client may have in one window before it is told to wait."""
DEFAULT_WINDOW_S: Final = 60.0
_MAX_CLIENTS: Final = 10_000  # tracked at once; the oldest windows are dropped first


@dataclass
class _Window:
    started: float
    failures: int = 0


class AuthBrake:
    """Failed authentications per client; see the module."""

    def __init__(
        self,
        limit: int = DEFAULT_LIMIT,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def wait_s(self, client: str) -> int | None:
        """Seconds ``client`` must wait before it may try again, or None."""
        with self._lock:
            window = self._current(client)
            if window is None or window.failures < self.limit:
                return None
            return max(1, math.ceil(window.started + self.window_s - self._clock()))

    def failed(self, client: str, why: str, target: str | None = None) -> None:
        """Count a failed authentication of ``client`` (asking for ``target``: a path, the
        WebSocket); log the first of its window, and how many more there were when the next
        window begins; record each in the audit log."""
        with self._lock:
            window = self._current(client)
            if window is None:
                if len(self._windows) >= _MAX_CLIENTS:
                    oldest = min(self._windows, key=lambda c: self._windows[c].started)
                    del self._windows[oldest]
                window = self._windows[client] = _Window(self._clock())
            window.failures += 1
            first = window.failures == 1
            throttled = window.failures > self.limit
        audit.record(
            "authenticate",
            actor=None,
            role=None,
            target=target,
            outcome="throttled" if throttled else "failed",
            address=client,
            detail=why,
        )
        if first:
            logger.warning("failed authentication from %s: %s", client, why)

    def _current(self, client: str) -> _Window | None:
        window = self._windows.get(client)
        if window is not None and self._clock() - window.started >= self.window_s:
            if window.failures > 1:
                logger.warning(
                    "%d more failed authentications from %s in %g s",
                    window.failures - 1,
                    client,
                    self.window_s,
                )
            del self._windows[client]
            return None
        return window
