"""Domain models shared by every layer: runs, cells, their states.

Pure pydantic v2; no I/O. States are ``StrEnum`` so they read and store as plain text.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RunStatus(StrEnum):
    """Where a run (one attempt of it) stands."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    DEAD = "dead"

    @property
    def finished(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


class CellStatus(StrEnum):
    """How the execution of one cell ended."""

    OK = "ok"
    ERROR = "error"  # the cell raised
    TIMEOUT = "timeout"  # per-cell or whole-run timeout hit while this cell ran
    EXITED = "exited"  # the cell called sys.exit()
    KERNEL_DIED = "kernel_died"  # the kernel process went away during the cell
    CANCELLED = "cancelled"  # Ctrl-C / cancel while this cell ran


class RestoreMode(StrEnum):
    """How a resumed attempt rebuilt the state before its first cell."""

    NAMESPACE = "namespace"  # variables loaded from a checkpoint (+ some cells replayed)
    REPLAY = "replay"  # non-Python kernel: every earlier cell replayed


class RunRecord(BaseModel):
    """One attempt of a run, as the history keeps it. ``parameters`` has secrets redacted."""

    model_config = ConfigDict(frozen=False)

    run_id: str
    attempt: int = 1
    workflow_path: str
    notebook_sha256: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    status: RunStatus = RunStatus.RUNNING
    kernel_name: str = "python3"
    language: str = "python"
    started_at: datetime
    finished_at: datetime | None = None
    duration_s: float | None = None
    cells_total: int = 0
    error_name: str | None = None
    error_message: str | None = None
    failed_cell: int | None = None  # index in the executed notebook
    failed_cell_id: str | None = None
    output_path: str | None = None
    resumed_from_attempt: int | None = None
    restored_from_cell: int | None = None  # namespace restored as it was after this cell
    replayed_cells: list[int] = Field(default_factory=list)
    restore_mode: RestoreMode | None = None
    source: str = "cli"  # who started it: cli, api, papermill, ...


class CellRecord(BaseModel):
    """One executed cell of one attempt; unique on (run_id, attempt, cell_index)."""

    run_id: str
    attempt: int
    cell_index: int
    cell_id: str | None = None
    status: CellStatus
    started_at: datetime
    duration_s: float
    error_name: str | None = None
    error_message: str | None = None
    replayed: bool = False
    output_truncated: bool = False
