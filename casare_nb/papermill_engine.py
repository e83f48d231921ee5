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
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_core.utils import run_sync
from nbformat import NotebookNode

from casare_nb.core.ids import new_run_id
from casare_nb.core.injection import redact
from casare_nb.core.models import CellRecord, CellStatus, RunRecord
from casare_nb.core.parameters_cell import INJECTED_TAG
from casare_nb.core.params import read_schema
from casare_nb.local import record_run
from casare_nb.notebook.executor import Options
from casare_nb.notebook.hooks import RunHooks
from casare_nb.notebook.run import RunSpec
from casare_nb.notebook.state import StateDir
from casare_nb.notebook.workflow import INJECTED_ID

if TYPE_CHECKING:
    from papermill.engines import NotebookExecutionManager

    CasareEngine: type

logger = logging.getLogger("papermill.casare")


class _PapermillProgress(RunHooks):
    """Drives papermill's NotebookExecutionManager from the engine's cells."""

    def __init__(self, nb_man: NotebookExecutionManager) -> None:
        self.nb_man = nb_man

    def cell_started(self, index: int, position: int, total: int) -> None:
        self.nb_man.cell_start(self.nb_man.nb.cells[index], index)

    def cell_finished(
        self, record: CellRecord, cell: NotebookNode, position: int, total: int
    ) -> None:
        if record.status is not CellStatus.OK:
            self.nb_man.cell_exception(cell, record.cell_index)
        self.nb_man.cell_complete(cell, record.cell_index)


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
            stdout_file: Any = None,
            stderr_file: Any = None,
            start_timeout: int = 60,
            execution_timeout: float | None = None,
            **kwargs: Any,
        ) -> NotebookNode:
            run_sync(_execute)(nb_man, kernel_name, execution_timeout, kwargs)
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
    result = await record_run(spec, hooks=_PapermillProgress(nb_man))
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
