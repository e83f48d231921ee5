"""What a failed run shows a person: the cell it failed at, its source and its traceback, read
from the attempt's output notebook. Pure: pydantic and the standard library, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

from casare_nb.core.models import RunRecord

__all__ = ["Failure", "failure_of", "plain"]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def plain(text: str) -> str:
    """``text`` without terminal colour codes (IPython colours its tracebacks)."""
    return _ANSI.sub("", text)


class Failure(BaseModel):
    """The failed attempt of a job and where it stopped."""

    run: RunRecord = Field(description="The failed attempt, as the history keeps it.")
    cell_index: int | None = Field(description="Index of the failed cell in the notebook run.")
    cell_id: str | None = None
    source: str = Field(default="", description="The failed cell's source.")
    traceback: list[str] = Field(
        default_factory=list, description="The error's traceback lines, without colour codes."
    )


def _cell(notebook: Mapping[str, Any], run: RunRecord) -> Mapping[str, Any] | None:
    cells = [c for c in notebook.get("cells", []) if isinstance(c, Mapping)]
    if run.failed_cell_id is not None:
        for cell in cells:
            if cell.get("id") == run.failed_cell_id:
                return cell
    if run.failed_cell is not None and 0 <= run.failed_cell < len(cells):
        return cells[run.failed_cell]
    return None


def failure_of(run: RunRecord, notebook: Mapping[str, Any] | None) -> Failure:
    """The :class:`Failure` of ``run`` (a failed attempt), its cell read from ``notebook``
    (the attempt's output notebook; None when there is none: the run record alone)."""
    cell = _cell(notebook, run) if notebook is not None else None
    if cell is None:
        return Failure(run=run, cell_index=run.failed_cell, cell_id=run.failed_cell_id)
    source = cell.get("source", "")
    lines: list[str] = []
    for output in cell.get("outputs", []):
        if isinstance(output, Mapping) and output.get("output_type") == "error":
            lines = [plain(str(line)) for line in output.get("traceback", [])]
    if not lines and run.error_name:
        lines = [f"{run.error_name}: {run.error_message or ''}".rstrip()]
    return Failure(
        run=run,
        cell_index=run.failed_cell,
        cell_id=cell.get("id") or run.failed_cell_id,
        source="".join(source) if isinstance(source, list) else str(source),
        traceback=lines,
    )
