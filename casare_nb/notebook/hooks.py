"""What a run tells the outside: one hooks object, run by one helper.

A run calls its :class:`RunHooks` at five points, in this order:

1. :meth:`~RunHooks.run_started` -- the attempt is on its way (record made, folders
   created), before the kernel is taken;
2. :meth:`~RunHooks.cells_starting` -- the kernel is ready (and, for a resume, the namespace
   restored): the first cell is sent next;
3. :meth:`~RunHooks.cell_started` / 4. :meth:`~RunHooks.cell_finished` -- around each cell
   (replayed ones too), with its place in the run;
5. :meth:`~RunHooks.run_finished` -- the attempt ended and its output notebook is written.

Each method does nothing unless overridden, and may be a coroutine. :class:`Hooks` runs a
sequence of them in order (nbclient's ``run_hook``): the local history, the CLI's progress
lines, papermill's progress bar and a robot's ``job_progress`` messages are each one
:class:`RunHooks`. An exception in a hook stops the run like any other error.

While a cell runs (between 3 and 4), :meth:`~RunHooks.cell_output` is told of each of its
outputs as it arrives (papermill's ``--log-output``, ``--stdout-file``, mid-cell autosave).
nbclient handles kernel messages without awaiting, so that one is called synchronously and
must not be a coroutine.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Sequence

from nbformat import NotebookNode

from casare_nb.core.models import CellRecord, RunRecord

__all__ = ["Hooks", "RunHooks", "hooks_of"]


class RunHooks:
    """Override the moments you care about; see the module docstring."""

    def run_started(self, run: RunRecord) -> Awaitable[None] | None:
        """The attempt ``run`` is on its way (output path and cell count known)."""
        return None

    def cells_starting(self, run: RunRecord) -> Awaitable[None] | None:
        """The kernel is ready; cells run next (``run`` says what a resume restored)."""
        return None

    def cell_started(self, index: int, position: int, total: int) -> Awaitable[None] | None:
        """Cell ``index`` starts: the ``position``-th of ``total`` in this attempt."""
        return None

    def cell_finished(
        self, record: CellRecord, cell: NotebookNode, position: int, total: int
    ) -> Awaitable[None] | None:
        """A cell ended: its record and the cell as the output notebook holds it (outputs,
        ``metadata.casare``, secrets scrubbed)."""
        return None

    def cell_output(self, index: int, output: NotebookNode) -> None:
        """Cell ``index`` put out ``output`` (a stream, display, result or error; secrets
        scrubbed), as it came, before the output limit cuts it. Synchronous: do not block."""
        return None

    def run_finished(self, run: RunRecord) -> Awaitable[None] | None:
        """The attempt ended (``run.status``, its error) and its output notebook is written."""
        return None


async def _run(result: Awaitable[None] | None) -> None:
    if inspect.isawaitable(result):
        await result


class Hooks:
    """Several :class:`RunHooks`, called in order; each call awaited if it is a coroutine."""

    def __init__(self, hooks: Sequence[RunHooks] = ()) -> None:
        self.hooks = list(hooks)

    async def run_started(self, run: RunRecord) -> None:
        for hook in self.hooks:
            await _run(hook.run_started(run))

    async def cells_starting(self, run: RunRecord) -> None:
        for hook in self.hooks:
            await _run(hook.cells_starting(run))

    async def cell_started(self, index: int, position: int, total: int) -> None:
        for hook in self.hooks:
            await _run(hook.cell_started(index, position, total))

    async def cell_finished(
        self, record: CellRecord, cell: NotebookNode, position: int, total: int
    ) -> None:
        for hook in self.hooks:
            await _run(hook.cell_finished(record, cell, position, total))

    def cell_output(self, index: int, output: NotebookNode) -> None:
        for hook in self.hooks:
            hook.cell_output(index, output)

    async def run_finished(self, run: RunRecord) -> None:
        for hook in self.hooks:
            await _run(hook.run_finished(run))

    def __repr__(self) -> str:
        return f"Hooks({self.hooks!r})"


def hooks_of(hooks: Sequence[RunHooks] | RunHooks | None) -> Hooks:
    """One :class:`Hooks` of what a caller passed (one hook, several, or none)."""
    if hooks is None:
        return Hooks()
    if isinstance(hooks, RunHooks):
        return Hooks([hooks])
    return Hooks(hooks)
