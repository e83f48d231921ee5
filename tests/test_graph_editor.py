"""GraphEditor's actions with real kernels, without a browser: Run lights the nodes cell by
cell, locally (no orchestrator) and through an orchestrator with a robot; a failed node is
re-run from there after the analyst's fix, without running the nodes before it again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import served

from casare_nb.core.errors import GraphRunError
from casare_nb.core.graph import Catalog, template_from_data
from casare_nb.widgets import GraphEditor

pytestmark = pytest.mark.slow

APPEND = template_from_data(
    {
        "id": "test.append",
        "name": "Append",
        "category": "test",
        "params": {"line": {"type": "string", "default": "x"}},
        "outputs": {"done": {}},
        "code": "import pathlib\nlog = pathlib.Path('log.txt')\n"
        "log.write_text((log.read_text() if log.exists() else '') + {{ line }} + '\\n')\n"
        "{{ out.done }} = {{ line }}",
    }
)
CAT = Catalog.of([APPEND])
FAILING = "assert limit > 1, 'limit too low'\nresult = first + str(limit)"


def graph(code: str = FAILING) -> dict[str, object]:
    return {
        "nodes": [
            {"id": "first", "template": "test.append", "params": {"line": "one"}},
            {"id": "check", "template": "code.python", "code": code},
        ],
        "edges": [
            {"source": "first", "source_port": "done", "target": "check", "target_port": "after"}
        ],
        "inputs": [{"name": "limit", "type": "integer", "default": 1}],
    }


def open_editor(tmp_path: Path, **kwargs: object) -> GraphEditor:
    editor = GraphEditor(tmp_path / "wf" / "flow.ipynb", catalog=CAT, **kwargs)  # type: ignore[arg-type]
    editor.view.graph = graph()  # as the view sends a gesture's graph
    return editor


def test_a_local_run_lights_nodes_and_a_rerun_from_the_failed_node_skips_the_rest(
    tmp_path: Path,
) -> None:
    """No orchestrator: Run fails at the check node (lit failed, first ok); after the fix,
    Re-run from here resumes there: first's side effect happens once, all nodes end ok."""
    editor = open_editor(tmp_path, state_dir=tmp_path / "state")
    assert editor.client() is None
    editor.act({"action": "run"})
    editor.wait(120)
    assert editor.view.status == {"first": "ok", "check": "failed"}
    assert "failed" in editor.view.message and "limit too low" in editor.view.message
    fixed = graph(FAILING.replace("limit > 1", "limit > 0"))
    editor.view.graph = fixed
    editor.act({"action": "rerun", "node": "check"})
    editor.wait(120)
    assert (tmp_path / "wf" / "log.txt").read_text() == "one\n"
    assert editor.view.status == {"check": "ok"}, editor.view.message
    assert "completed" in editor.view.message
    saved = json.loads((tmp_path / "wf" / "flow.ipynb").read_text())
    assert "limit > 0" in saved["cells"][2]["source"]


def test_run_is_refused_while_the_graph_has_problems(tmp_path: Path) -> None:
    """A graph with a problem is saved but not run; the status line says what to fix."""
    editor = open_editor(tmp_path, state_dir=tmp_path / "state")
    bad = {"id": "first", "template": "test.append", "params": {"line": 5}}
    editor.view.graph = {**graph(), "edges": [], "nodes": [bad]}
    editor.act({"action": "run"})
    assert editor.view.message == "fix the problems first (first: line expects one line of text)"
    assert json.loads((tmp_path / "wf" / "flow.ipynb").read_text())["cells"][1]["id"] == "first"
    with pytest.raises(GraphRunError, match="nothing to re-run"):
        editor.view.graph = graph()
        editor.rerun()


def test_an_orchestrated_run_lights_nodes_from_the_live_cell_events(tmp_path: Path) -> None:
    """With an orchestrator, Run submits the workflow; cell events light the nodes; a
    re-run from the failed node goes through the orchestrator too."""
    workflows = tmp_path / "wf"
    workflows.mkdir()
    with served(tmp_path / "state", workflows, "r1") as cluster, cluster.client() as client:
        editor = open_editor(tmp_path, client=client)
        editor.act({"action": "run"})
        editor.wait(120)
        assert editor.view.status == {"first": "ok", "check": "failed"}, editor.view.message
        assert editor.view.message.startswith("job ")
        editor.view.graph = graph(FAILING.replace("limit > 1", "limit > 0"))
        editor.rerun(wait=True)
        assert editor.view.status == {"check": "ok"}, editor.view.message
        assert "completed" in editor.view.message
