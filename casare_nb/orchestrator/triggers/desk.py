"""What schedules, webhooks, file watch and chaining may ask of the orchestrator's jobs.

Implemented by the :class:`~casare_nb.orchestrator.jobs.manager.JobManager`; the triggers
see nothing else of the orchestrator (no connections, no stores of jobs).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Protocol, Unpack

from casare_nb.core.errors import SubmissionsClosed
from casare_nb.core.models import Job, SubmitOptions

__all__ = ["JobDesk", "TriggersHeld"]


class TriggersHeld(SubmissionsClosed):
    """Schedules and triggers are held for maintenance: what they would submit is not."""


class JobDesk(Protocol):
    """Submit jobs, look at them, hear when they end."""

    def now(self) -> datetime:
        """The orchestrator's clock (aware UTC)."""
        ...

    async def submit(
        self,
        workflow_path: str | os.PathLike[str],
        parameters: Mapping[str, Any] | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Job:
        """Validate and queue a run; the job, once stored. ``OrchestratorDraining`` while a
        drain is under way, ``ParameterError`` / ``WorkflowError`` for bad input,
        ``JobExists`` for a ``job_id`` taken."""
        ...

    def job(self, job_id: str) -> Job | None:
        """One job, or None."""
        ...

    def unfinished_jobs(self) -> list[Job]:
        """The jobs queued or running now."""
        ...

    @property
    def finished_listeners(self) -> list[Callable[[Job], None]]:
        """Called on the event loop with every job that reaches a final status."""
        ...

    @property
    def cell_listeners(self) -> list[Callable[[Job, int, dict[str, Any]], None]]:
        """Called on the event loop with (job, cell index, executed cell) of each cell."""
        ...
