"""Run ids: sortable by start time, short enough to type (``20261127-004512-3fa9c1``)."""

from __future__ import annotations

import secrets
import threading
from datetime import UTC, datetime

__all__ = ["new_run_id"]

_ISSUED_LOCK = threading.Lock()
_issued: tuple[str, set[str]] = ("", set())  # this second, and the ids drawn in it


def new_run_id() -> str:
    """A new run id, never the same twice in one process (an orchestrator draws hundreds a
    second: 3 random bytes alone would repeat within a second now and then)."""
    global _issued
    second = f"{datetime.now(UTC):%Y%m%d-%H%M%S}"
    with _ISSUED_LOCK:
        if _issued[0] != second:
            _issued = (second, set())
        drawn = _issued[1]
        while (run_id := f"{second}-{secrets.token_hex(3)}") in drawn:
            pass
        drawn.add(run_id)
    return run_id
