"""``GraphEditor("workflows/x.ipynb")``: a workflow notebook edited as a graph in JupyterLab.

The view (:mod:`.graph_view`, anywidget) draws and edits the graph in the browser; this
module keeps a :class:`~casare_nb.widgets.graph_session.GraphSession` in step with it and
carries out its actions: save (the notebook is rewritten), auto-layout, run (submitted to
the orchestrator when one is configured, else run here like ``casare-nb run``) with the
nodes lit cell by cell, and re-run from the failed node (a resume: the namespace restored,
the browser nodes replayed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from casare_nb.api import read_runtime_file, runtime_file_path
from casare_nb.client import Client, ClientError
from casare_nb.core.errors import GraphRunError
from casare_nb.core.graph import Catalog, GraphError
from casare_nb.local import aresume, arun_notebook
from casare_nb.nodes.catalog import load_catalog
from casare_nb.notebook.hooks import RunHooks
from casare_nb.protocol import CellEvent
from casare_nb.widgets.graph_session import GraphSession, error_line
from casare_nb.widgets.graph_view import GraphView

__all__ = ["GraphEditor"]


class GraphEditor:
    """Open (or create) ``path`` as a graph; shows itself when it ends a cell.

    ``client``: the orchestrator to run on (default: the one ``Client.local()`` or
    ``CASARE_URL``/``CASARE_TOKEN`` find; none: runs go here, in a kernel of this machine).
    ``catalog``: the templates (default: built-ins, ``templates/`` beside the workflows,
    ``$CASARE_TEMPLATES``)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        client: Client | None = None,
        *,
        catalog: Catalog | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.catalog = catalog or load_catalog(path)
        self.session = GraphSession(path, self.catalog)
        self._client = client
        self._state_dir = state_dir
        self._run: _Run | None = None
        self._lock = threading.Lock()
        self.view = GraphView(
            palette=self.catalog.palette(),
            graph=self.session.graph_data(),
            problems=self.session.problems,
            path=str(self.session.path),
            message=self.session.message,
        )
        self.view.observe(self._graph_changed, names="graph")
        self.view.on_action(self.act)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.view._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ gestures

    def _graph_changed(self, change: Mapping[str, Any]) -> None:
        if change["new"] == self.session.graph_data():
            return
        self.session.update(change["new"])
        self._show(graph=False)

    def act(self, content: Mapping[str, Any]) -> None:
        """Carry out an action of the view: ``{"action": "save" | "run" | "layout" |
        "rerun" | "reset", "node": id}``."""
        action = content.get("action")
        try:
            if action == "save":
                self.save()
            elif action == "layout":
                self.session.layout()
                self._show()
            elif action == "run":
                self.run()
            elif action == "rerun":
                self.rerun()
            elif action == "reset":
                self.session.reset(str(content.get("node")))
                self._show()
        except (GraphError, GraphRunError, ClientError, OSError) as exc:
            self.session.message = error_line(exc)
            self._show(graph=False)

    def save(self) -> str:
        """Write the notebook; the status line."""
        message = self.session.save()
        self._show(graph=False)
        return message

    def _show(self, *, graph: bool = True) -> None:
        with self.view.hold_sync():
            if graph:
                self.view.graph = self.session.graph_data()
            self.view.problems = self.session.problems
            self.view.status = dict(self.session.status)
            self.view.message = self.session.message

    # ------------------------------------------------------------------ runs

    def client(self) -> Client | None:
        """The orchestrator's client, or None to run here."""
        if self._client is not None:
            return self._client
        url, token = os.environ.get("CASARE_URL"), os.environ.get("CASARE_TOKEN")
        if url and token:
            return Client(url, token)
        with contextlib.suppress(ClientError, OSError, ValueError):
            return Client.local(self._state_dir)
        return None

    def run(self, *, wait: bool = False) -> None:
        """Save, then run the workflow (in the background; ``wait`` blocks until it ends)."""
        self._start(rerun=False, wait=wait)

    def rerun(self, *, wait: bool = False) -> None:
        """Save, then re-run the last run from its failed node (a resume)."""
        self._start(rerun=True, wait=wait)

    def _start(self, *, rerun: bool, wait: bool) -> None:
        with self._lock:
            if self._run is not None and self._run.is_alive():
                raise GraphRunError("a run of this workflow is still going")
            self.session.save()
            why = self.session.runnable()
            if why:
                raise GraphRunError(why)
            previous = self._run
            if rerun and (previous is None or previous.ref is None):
                raise GraphRunError("nothing to re-run: this editor has not run the workflow")
            self._run = _Run(self, previous.ref if rerun and previous else None)
            self.session.run_started()
            self.session.message = "re-running from the failed node" if rerun else "running"
            self._show(graph=False)
            self._run.start()
        if wait:
            self._run.join()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current run ends."""
        if self._run is not None:
            self._run.join(timeout)


class _Run(threading.Thread):
    """One run (or re-run) in the background, lighting the nodes as cells end."""

    def __init__(self, editor: GraphEditor, rerun_of: str | None) -> None:
        super().__init__(daemon=True, name="casare-graph-run")
        self.editor = editor
        self.rerun_of = rerun_of
        self.ref: str | None = None  # job id, or local run id

    def cell(self, cell_id: str | None, status: str) -> None:
        self.editor.session.cell_finished(cell_id, status)
        self.editor._show(graph=False)

    def run(self) -> None:
        session = self.editor.session
        try:
            client = self.editor.client()
            if client is not None:
                ok, detail = self._orchestrated(client)
            else:
                ok, detail = asyncio.run(self._local())
        except Exception as exc:
            ok, detail = False, error_line(exc)
        session.run_finished(ok, detail)
        self.editor._show(graph=False)

    def _orchestrated(self, client: Client) -> tuple[bool, str]:
        def on_event(event: Any) -> None:
            data = getattr(event, "data", None)
            if isinstance(data, CellEvent):
                self.cell(data.cell_id, str(data.status))

        if self.rerun_of is not None:
            job = client.rerun(self.rerun_of, from_failed=True, wait=True, on_event=on_event)
        else:
            workflow = _workflow_path(self.editor.session.path, client, self.editor._state_dir)
            job = client.submit(workflow, wait=True, on_event=on_event)
        self.ref = job.job_id
        ok = str(job.status) == "completed"
        detail = f"job {job.job_id} {job.status}"
        if job.error_name:
            detail += f": {job.error_name}: {job.error_message or ''}"
        return ok, detail.rstrip(": ")

    async def _local(self) -> tuple[bool, str]:
        path = self.editor.session.path
        kwargs: dict[str, Any] = {
            "state_dir": self.editor._state_dir,
            "cwd": path.parent,
            "hooks": _Lights(self),
        }
        if self.rerun_of is not None:
            result = await aresume(self.rerun_of, **kwargs)
        else:
            result = await arun_notebook(path, source="graph-editor", **kwargs)
        self.ref = result.run_id
        detail = f"run {result.run_id} {result.status}"
        if result.error_name:
            detail += f": {result.error_name}: {result.error_message or ''}"
        return result.ok, detail.rstrip(": ")


class _Lights(RunHooks):
    """A local run's cells, to the run's lights."""

    def __init__(self, run: _Run) -> None:
        self.run = run

    def cell_finished(self, record: Any, cell: Any, position: int, total: int) -> None:
        self.run.cell(record.cell_id, str(record.status))


def _workflow_path(
    path: Path, client: Client, state_dir: str | os.PathLike[str] | None = None
) -> str:
    """``path`` as the orchestrator names it: relative to the workflows folder its runtime
    file (in ``state_dir``) names, else the longest of its workflows that ends the path."""
    info = read_runtime_file(runtime_file_path(state_dir))
    absolute = path.resolve()
    if info is not None:
        with contextlib.suppress(ValueError):
            return absolute.relative_to(Path(info.workflows_dir).resolve()).as_posix()
    served = [w.path for w in client.workflows()]
    matches = [w for w in served if absolute.as_posix().endswith("/" + w)]
    if not matches:
        raise GraphRunError(f"{path} is not one of the orchestrator's workflows")
    return max(matches, key=len)
