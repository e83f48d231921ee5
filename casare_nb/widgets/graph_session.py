"""The graph editor's state, in plain Python: the workflow notebook read as a graph, what
is wrong with it, saving it back, and the lights of a run (which node runs, which ended
how). The widget (:mod:`.graph_editor`) only shows it and forwards gestures; tests and
benchmarks drive it without a browser.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from casare_nb.core.errors import CasareError, WorkflowError, one_line
from casare_nb.core.graph import (
    NOTE_TEMPLATE,
    Catalog,
    Graph,
    GraphError,
    auto_layout,
    compile_graph,
    graph_json,
    problems,
    read_graph,
)

__all__ = ["CELL_LIGHTS", "GraphSession"]

CELL_LIGHTS: Final = {
    "ok": "ok",
    "error": "failed",
    "timeout": "failed",
    "exited": "failed",
    "kernel_died": "failed",
    "cancelled": "failed",
}
"""A cell's status (CellStatus) -> the light its node shows."""


class GraphSession:
    """One workflow notebook open as a graph."""

    def __init__(self, path: str | os.PathLike[str], catalog: Catalog) -> None:
        self.path = Path(path)
        self.catalog = catalog
        self.graph = Graph()
        self.base: dict[str, Any] | None = None
        self.warnings: list[str] = []
        self.edited: list[str] = []
        self.problems: dict[str, list[str]] = {}
        self.status: dict[str, str] = {}
        self.message = ""
        self.load()

    # ------------------------------------------------------------------ file

    def load(self) -> None:
        """Read the notebook (a missing one is a new, empty workflow). WorkflowError when
        the file is not a notebook at all: nothing is overwritten then."""
        if not self.path.exists():
            self.base, self.graph = None, Graph()
            self.warnings, self.edited = [], []
            self.message = f"new workflow: {self.path.name} is written on save"
        else:
            try:
                data = json.loads(self.path.read_text("utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                raise WorkflowError(f"{self.path}: not a notebook ({one_line(exc)})") from None
            if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
                raise WorkflowError(f"{self.path}: not a notebook (no cells)")
            loaded = read_graph(data, self.catalog)
            self.base, self.graph = data, loaded.graph
            self.warnings, self.edited = loaded.warnings, loaded.edited
            notes = [*loaded.warnings]
            if loaded.edited:
                notes.append(f"edited by hand (kept as written): {', '.join(loaded.edited)}")
            if loaded.updated:
                notes.append(
                    "templates changed since (kept as saved, reset to re-render): "
                    + ", ".join(loaded.updated)
                )
            self.message = "; ".join(notes) or f"opened {self.path.name}"
        self.check()

    def check(self) -> dict[str, list[str]]:
        """Work out what is wrong with the graph now."""
        self.problems = problems(self.graph, self.catalog)
        return self.problems

    def notebook(self) -> dict[str, Any]:
        """The notebook the graph is (GraphError for a cycle)."""
        return compile_graph(self.graph, self.catalog, base=self.base)

    def save(self) -> str:
        """Write the notebook (atomically); answer the status line. GraphError (nothing
        written) when the graph cannot be put in an order."""
        nb = self.notebook()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.base = nb
        count = sum(1 for c in nb["cells"] if c["cell_type"] == "code")
        wrong = sum(len(v) for v in self.check().values())
        self.message = f"saved {count} code cells to {self.path.name}" + (
            f" ({wrong} problem{'s' * (wrong != 1)} to fix before it runs)" if wrong else ""
        )
        return self.message

    # ------------------------------------------------------------------ edits

    def update(self, data: Mapping[str, Any]) -> None:
        """Take the graph the view sends; an invalid one is refused with a message and the
        last good graph kept."""
        try:
            graph = Graph.model_validate(data)
        except ValidationError as exc:
            self.message = f"graph refused: {one_line(exc)[:200]}"
            return
        if graph.parameters_source is not None and graph.inputs != self.graph.inputs:
            graph.parameters_source = None  # inputs edited here: the cell is ours again
        self.graph = graph
        self.check()

    def layout(self) -> None:
        """Place every node anew."""
        self.graph = auto_layout(self.graph, self.catalog)

    def reset(self, node_id: str) -> None:
        """Give an edited node back to its template (its hand-written source goes)."""
        node = self.graph.node(node_id)
        if node is None or not node.edited:
            return
        node.edited, node.code = False, None
        self.message = f"{node_id}: reset to its template on the next save"
        self.check()

    def graph_data(self) -> dict[str, Any]:
        """The ``graph`` trait's value."""
        return graph_json(self.graph)

    # ------------------------------------------------------------------ run lights

    def runnable(self) -> str | None:
        """Why the graph cannot run now; None when it can."""
        if self.problems:
            first = next(iter(self.problems.items()))
            return f"fix the problems first ({first[0] or 'graph'}: {first[1][0]})"
        return None

    def cell_ids(self) -> list[str]:
        """The node ids of the code cells, in the order they run."""
        try:
            nb = self.notebook()
        except GraphError:
            return []
        notes = {n.id for n in self.graph.nodes if n.template == NOTE_TEMPLATE}
        return [c["id"] for c in nb["cells"] if c["id"] in self.ids() and c["id"] not in notes]

    def ids(self) -> set[str]:
        """Every node id."""
        return {n.id for n in self.graph.nodes}

    def run_started(self) -> None:
        """A run begins: every node queued."""
        self.status = dict.fromkeys(self.cell_ids(), "queued")
        self._next_running()

    def cell_finished(self, cell_id: str | None, status: str) -> None:
        """A cell ended with ``status`` (CellStatus value)."""
        if cell_id in self.status:
            self.status[cell_id] = CELL_LIGHTS.get(status, "failed")
            self._next_running()

    def run_finished(self, ok: bool, detail: str = "") -> None:
        """The run ended: what never ran is no longer queued."""
        self.status = {k: v for k, v in self.status.items() if v not in ("queued", "running")}
        self.message = detail or ("run finished" if ok else "run failed")

    def failed_node(self) -> str | None:
        """The node the last run failed at."""
        return next((k for k, v in self.status.items() if v == "failed"), None)

    def _next_running(self) -> None:
        for k, v in self.status.items():
            if v == "running":
                return
            if v == "queued":
                self.status[k] = "running"
                return


def error_line(exc: BaseException) -> str:
    """An error for the status line."""
    return one_line(exc) if isinstance(exc, CasareError) else f"{type(exc).__name__}: {exc}"
