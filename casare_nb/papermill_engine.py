"""papermill engine ``casare``: ``papermill --engine casare in.ipynb out.ipynb -p x 1``.

papermill reads, parameterises and saves the notebook as it always does; this engine
executes it cell by cell with casare_nb's engine, so the run gets a checkpoint after every
cell and a record in the local history, and ``casare-nb resume RUN_ID`` works on it. This
is the only module that imports papermill.

papermill loads every ``papermill.engine`` entry point while ``papermill.engines`` is being
imported, so a module that imports papermill at its top and defines the engine class after
would be loaded, half done, by its own import. Here nothing of papermill is imported until
:data:`CasareEngine` is first asked for (PEP 562): by then either papermill is importing
its engines (and ``Engine`` is already defined there) or it is not imported yet.

papermill's own options work as with its default engine (nbclient): ``--log-output``,
``--stdout-file``/``--stderr-file`` (each output as it arrives), ``--start-timeout``, the
progress bar (every cell of the notebook counted, those that do not execute too), mid-cell
autosave (``--autosave-cell-every`` with ``--request-save-on-cell-execute``) and
``--execution-timeout`` (a cell past it raises nbclient's ``CellTimeoutError``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from jupyter_core.utils import run_sync
from nbclient.exceptions import CellTimeoutError
from nbformat import NotebookNode

from casare_nb.core.ids import new_run_id
from casare_nb.core.injection import redact
from casare_nb.core.models import CellRecord, CellStatus, RunRecord, RunStatus
from casare_nb.core.parameters_cell import INJECTED_TAG
from casare_nb.core.params import read_schema
from casare_nb.local import record_run
from casare_nb.notebook.executor import Options
from casare_nb.notebook.hooks import RunHooks
from casare_nb.notebook.kernels import KernelSession
from casare_nb.notebook.pool import KernelPool
from casare_nb.notebook.run import RunSpec
from casare_nb.notebook.state import StateDir
from casare_nb.notebook.workflow import INJECTED_ID

if TYPE_CHECKING:
    from papermill.engines import NotebookExecutionManager

    CasareEngine: type

logger = logging.getLogger("papermill.casare")
papermill_logger = logging.getLogger("papermill")  # papermill.log.logger: where outputs go


class _PapermillHooks(RunHooks):
    """Drives papermill's NotebookExecutionManager from the engine's cells as papermill's
    own client does: every cell of the notebook started and completed in order (the ones
    that do not execute -- markdown, empty, skip-execution -- as nbclient passes them over),
    each output logged and written to the stdout/stderr files, and the notebook autosaved
    while a cell puts out (``PapermillNotebookClient.process_message``)."""

    def __init__(
        self,
        nb_man: NotebookExecutionManager,
        *,
        log_output: bool = False,
        stdout_file: TextIO | None = None,
        stderr_file: TextIO | None = None,
    ) -> None:
        self.nb_man = nb_man
        self.log_output = log_output
        self.stdout_file = stdout_file
        self.stderr_file = stderr_file
        self.next_cell = 0  # the first cell papermill has not been told of

    def _pass_over(self, stop: int) -> None:
        """The cells before ``stop`` not told of yet do not execute: started and completed."""
        cells = self.nb_man.nb.cells
        for index in range(self.next_cell, stop):
            self.nb_man.cell_start(cells[index], index)
            self.nb_man.cell_complete(cells[index], index)
        self.next_cell = max(self.next_cell, stop)

    def cell_started(self, index: int, position: int, total: int) -> None:
        self._pass_over(index)
        self.nb_man.cell_start(self.nb_man.nb.cells[index], index)
        self.next_cell = index + 1

    def cell_output(self, index: int, output: NotebookNode) -> None:
        self.nb_man.autosave_cell()
        if self.log_output or self.stdout_file or self.stderr_file:
            self._log_output_message(output)

    def _log_output_message(self, output: NotebookNode) -> None:
        """``PapermillNotebookClient.log_output_message``: stdout to the log (info) and the
        stdout file, stderr to the log (warning) and the stderr file, a result's or a
        display's text to the log."""
        if output.output_type == "stream":
            content = "".join(output.text)
            if output.name == "stdout":
                if self.log_output:
                    papermill_logger.info(content)
                if self.stdout_file:
                    self.stdout_file.write(content)
                    self.stdout_file.flush()
            elif output.name == "stderr":
                if self.log_output:
                    papermill_logger.warning(content)
                if self.stderr_file:
                    self.stderr_file.write(content)
                    self.stderr_file.flush()
        elif self.log_output and "data" in output and "text/plain" in output.data:
            papermill_logger.info("".join(output.data["text/plain"]))

    def cell_finished(
        self, record: CellRecord, cell: NotebookNode, position: int, total: int
    ) -> None:
        if record.status is not CellStatus.OK:
            self.nb_man.cell_exception(cell, record.cell_index)
        self.nb_man.cell_complete(cell, record.cell_index)

    def run_finished(self, run: RunRecord) -> None:
        if run.status is RunStatus.COMPLETED:
            self._pass_over(len(self.nb_man.nb.cells))


class _KernelFor(KernelPool):
    """The kernel of one run, started when the run asks for it and within papermill's
    ``start_timeout`` (none is kept warm); the run's release shuts it down, :meth:`close`
    waits for that."""

    async def acquire(self, kernel_name: str | None = None) -> KernelSession:
        return await KernelSession.start(
            kernel_name or self.kernel_name, startup_timeout=self.startup_timeout
        )


@cache
def _engine_class() -> type:
    from papermill.engines import Engine  # see the module docstring

    class CasareEngine(Engine):  # type: ignore[misc]
        """Executes with per-cell checkpoints and records the run in casare_nb's history."""

        @classmethod
        def execute_managed_notebook(
            cls,
            nb_man: NotebookExecutionManager,
            kernel_name: str,
            log_output: bool = False,
            stdout_file: TextIO | None = None,
            stderr_file: TextIO | None = None,
            start_timeout: float = 60,
            execution_timeout: float | None = None,
            **kwargs: Any,
        ) -> NotebookNode:
            hooks = _PapermillHooks(
                nb_man, log_output=log_output, stdout_file=stdout_file, stderr_file=stderr_file
            )
            timeout = execution_timeout or kwargs.get("timeout")
            run_sync(_execute)(nb_man, kernel_name, hooks, start_timeout, timeout, kwargs)
            nb: NotebookNode = nb_man.nb
            return nb

    CasareEngine.__module__ = __name__
    CasareEngine.__qualname__ = "CasareEngine"
    return CasareEngine


def __getattr__(name: str) -> Any:
    if name == "CasareEngine":
        return _engine_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def _execute(
    nb_man: NotebookExecutionManager,
    kernel_name: str,
    hooks: _PapermillHooks,
    start_timeout: float,
    execution_timeout: float | None,
    kwargs: dict[str, Any],
) -> None:
    nb = nb_man.nb
    for index, cell in enumerate(nb.cells):
        if INJECTED_TAG in cell.metadata.get("tags", []):
            cell["id"] = INJECTED_ID  # the same id casare-nb gives it, so resume matches it
        elif not cell.get("id"):
            cell["id"] = f"cell-{index}"
    meta = nb.metadata.get("papermill", {})
    schema = read_schema(nb)
    input_path = kwargs.get("input_path") or meta.get("input_path") or "<papermill>"
    record = RunRecord(
        run_id=new_run_id(),
        workflow_path=str(Path(input_path).absolute())
        if input_path != "<papermill>"
        else input_path,
        notebook_sha256="",
        parameters=redact(meta.get("parameters", {}), schema.secret_names()),
        kernel_name=kernel_name,
        started_at=datetime.now(UTC),
        source="papermill",
    )
    state = StateDir(kwargs.get("state_dir")).ensure_writable()
    logger.info("casare run %s: checkpoints in %s", record.run_id, state.root)
    spec = RunSpec(nb, record, state, options=Options(cell_timeout=execution_timeout))
    kernels = _KernelFor(kernel_name, size=1, startup_timeout=start_timeout)
    try:
        result = await record_run(spec, hooks=hooks, kernels=kernels)
    finally:
        await kernels.close()
    if result.ok:
        logger.info("casare run %s: completed", record.run_id)
        return
    if result.failed_cell is None:
        raise RuntimeError(
            f"casare run {record.run_id}: {result.error_name}: {result.error_message}"
        )
    logger.warning(
        "casare run %s: %s; resume with: %s",
        record.run_id,
        result.status.value,
        result.resume_command,
    )
    if result.status is RunStatus.TIMEOUT and execution_timeout:
        # what papermill's default engine raises: nbclient's error, not the cell's
        # KeyboardInterrupt (the kernel was interrupted to stop the cell)
        raise CellTimeoutError.error_from_timeout_and_cell(
            "Cell execution timed out",
            cast(int, execution_timeout),  # only formatted: papermill's int, or a float as given
            nb.cells[result.failed_cell],
        )
