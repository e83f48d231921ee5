"""The progress lines of ``casare-nb run`` and ``resume``: the engine's hooks for a terminal.

Imported once the parameters were checked: it loads the engine's modules.
"""

from __future__ import annotations

import click
from nbformat import NotebookNode

from casare_nb.core.models import CellRecord, RunRecord
from casare_nb.notebook.hooks import RunHooks

__all__ = ["Printer"]


class Printer(RunHooks):
    """A line naming the run when it starts; one line per cell, with a bar for the run
    (unless ``quiet``)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def run_started(self, run: RunRecord) -> None:
        what = "resuming" if run.attempt > 1 else "run"
        click.echo(
            f"{what} {run.run_id} (attempt {run.attempt}): {run.workflow_path}, "
            f"{run.cells_total} cells to run, kernel {run.kernel_name}"
        )

    def cell_finished(
        self, record: CellRecord, cell: NotebookNode, position: int, total: int
    ) -> None:
        if self.quiet:
            return
        width = 20
        filled = round(width * position / max(total, 1))
        bar = "#" * filled + "-" * (width - filled)
        tag = " (replay)" if record.replayed else ""
        note = " [output truncated]" if record.output_truncated else ""
        click.echo(
            f"  [{bar}] {position:>3}/{total:<3} cell {record.cell_index:>3}  "
            f"{record.status.value:<11} {record.duration_s:8.3f} s{tag}{note}"
        )
