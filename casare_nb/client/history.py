"""The run history through the orchestrator's API: runs paged and filtered, and the
aggregates it computes (a large history sends a few rows)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import httpx

from casare_nb.core.history import CellDurations, DailyRuns, RunGroup
from casare_nb.core.models import RunRecord, RunStatus

__all__ = ["History"]

Request = Callable[..., httpx.Response]
"""The client's request function: ``request(method, path, params=...)``."""


class History:
    """The orchestrator's run history, read through its API: runs paged and filtered, and
    aggregates computed by the orchestrator (a large history sends a few rows)."""

    def __init__(self, request: Request) -> None:
        self._request = request

    def runs(
        self,
        *,
        workflow: str | None = None,
        trigger: str | None = None,
        status: RunStatus | str | Iterable[RunStatus | str] | None = None,
        before: datetime | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        """The latest attempt of each run, newest first: of ``workflow``, started by
        ``trigger`` (``kind:id``, or ``"manual"``), in ``status`` (one, or several),
        started ``before``."""
        params: dict[str, Any] = {"limit": limit}
        if workflow is not None:
            params["workflow"] = workflow
        if trigger is not None:
            params["trigger"] = trigger
        if status is not None:
            several = [status] if isinstance(status, str) else list(status)
            params["status"] = [RunStatus(s).value for s in several]
        if before is not None:
            params["before"] = before.isoformat()
        rows = self._request("GET", "/api/history/runs", params=params).json()
        return [RunRecord.model_validate(row) for row in rows]

    def daily(self, *, days: int = 14, workflow: str | None = None) -> list[DailyRuns]:
        """Runs per workflow per UTC day over the last ``days`` days, by outcome."""
        params: dict[str, Any] = {"days": days}
        if workflow is not None:
            params["workflow"] = workflow
        rows = self._request("GET", "/api/history/daily", params=params).json()
        return [DailyRuns.model_validate(row) for row in rows]

    def groups(self, *, limit: int = 50, workflow: str | None = None) -> list[RunGroup]:
        """Runs per (workflow, schedule or trigger that started them), most recent first."""
        params: dict[str, Any] = {"limit": limit}
        if workflow is not None:
            params["workflow"] = workflow
        rows = self._request("GET", "/api/history/groups", params=params).json()
        return [RunGroup.model_validate(row) for row in rows]

    def cell_durations(self, *, workflow: str | None = None) -> list[CellDurations]:
        """Per workflow: median, p95 and longest duration of its cells."""
        params = {} if workflow is None else {"workflow": workflow}
        rows = self._request("GET", "/api/history/cells", params=params).json()
        return [CellDurations.model_validate(row) for row in rows]
