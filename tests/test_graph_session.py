"""The graph editor's state without a browser (casare_nb.widgets.graph_session): opening,
saving and reopening workflow notebooks on disk, refusing bad input, and run lights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from casare_nb.core.errors import WorkflowError
from casare_nb.core.graph import Catalog, GraphError, NodeTemplate, template_from_data
from casare_nb.widgets.graph_session import GraphSession

ADD: NodeTemplate = template_from_data(
    {
        "id": "math.add",
        "name": "Add",
        "category": "math",
        "params": {"n": {"type": "integer", "default": 1}},
        "inputs": {"x": {"optional": True}},
        "outputs": {"total": {}},
        "code": "{{ out.total }} = ({{ in.x }} or 0) + {{ n }}",
    }
)
CAT = Catalog.of([ADD])


def graph_of(*nodes: dict[str, object], edges: list[dict[str, str]] | None = None) -> dict:
    return {"nodes": list(nodes), "edges": edges or [], "inputs": []}


def test_a_missing_notebook_is_a_new_workflow_written_on_save(tmp_path: Path) -> None:
    """Opening a path that does not exist gives an empty graph; save writes the notebook."""
    path = tmp_path / "wf" / "new.ipynb"
    session = GraphSession(path, CAT)
    assert session.graph.nodes == [] and "new workflow" in session.message
    session.update(graph_of({"id": "add_1", "template": "math.add", "params": {"n": 2}}))
    assert session.save() == "saved 1 code cells to new.ipynb"
    nb = json.loads(path.read_text())
    assert [c["source"] for c in nb["cells"]] == ["add_1 = (None or 0) + 2"]
    again = GraphSession(path, CAT)
    assert [n.id for n in again.graph.nodes] == ["add_1"]


def test_a_file_that_is_not_a_notebook_is_refused_and_left_alone(tmp_path: Path) -> None:
    """A file that is not notebook JSON raises WorkflowError in one line; it is not touched."""
    path = tmp_path / "bad.ipynb"
    path.write_text("{not json")
    with pytest.raises(WorkflowError, match=r"bad.ipynb: not a notebook"):
        GraphSession(path, CAT)
    assert path.read_text() == "{not json"
    path.write_text('{"cells": "nope"}')
    with pytest.raises(WorkflowError, match="no cells"):
        GraphSession(path, CAT)


def test_a_graph_of_the_wrong_shape_from_the_view_is_refused_and_the_last_kept(
    tmp_path: Path,
) -> None:
    """update() with an invalid graph says so and keeps the graph it had."""
    session = GraphSession(tmp_path / "w.ipynb", CAT)
    session.update(graph_of({"id": "a", "template": "math.add"}))
    session.update({"nodes": [{"template": "math.add"}], "edges": "x"})
    assert session.message.startswith("graph refused: ")
    assert [n.id for n in session.graph.nodes] == ["a"]


def test_a_cycle_is_not_saved_and_the_file_stays_as_it_was(tmp_path: Path) -> None:
    """Saving a graph with a cycle raises GraphError; the notebook on disk is unchanged."""
    path = tmp_path / "w.ipynb"
    session = GraphSession(path, CAT)
    session.update(graph_of({"id": "a", "template": "math.add"}))
    session.save()
    before = path.read_bytes()
    session.update(
        graph_of(
            {"id": "a", "template": "math.add"},
            {"id": "b", "template": "math.add"},
            edges=[
                {"source": "a", "source_port": "total", "target": "b", "target_port": "x"},
                {"source": "b", "source_port": "total", "target": "a", "target_port": "x"},
            ],
        )
    )
    assert "on a cycle: the nodes cannot be put in an order" in session.problems["a"]
    with pytest.raises(GraphError, match="cycle"):
        session.save()
    assert path.read_bytes() == before
    assert session.runnable() is not None


def test_a_save_with_problems_writes_and_says_how_many(tmp_path: Path) -> None:
    """A bad value is saved (nothing lost) and the status line counts the problems."""
    session = GraphSession(tmp_path / "w.ipynb", CAT)
    session.update(graph_of({"id": "a", "template": "math.add", "params": {"n": "two"}}))
    assert session.problems == {"a": ["n expects a whole number"]}
    assert session.save().endswith("(1 problem to fix before it runs)")
    assert session.runnable() == "fix the problems first (a: n expects a whole number)"


def test_a_hand_edited_cell_is_reported_on_open_and_kept_on_save(tmp_path: Path) -> None:
    """Reopening a notebook whose node cell was edited by hand says so; save keeps the edit;
    reset() gives the node back to its template."""
    path = tmp_path / "w.ipynb"
    session = GraphSession(path, CAT)
    session.update(graph_of({"id": "a", "template": "math.add"}))
    session.save()
    nb = json.loads(path.read_text())
    nb["cells"][0]["source"] = "a = 41 + 1  # mine"
    path.write_text(json.dumps(nb))
    again = GraphSession(path, CAT)
    assert again.edited == ["a"] and "edited by hand (kept as written): a" in again.message
    again.save()
    assert json.loads(path.read_text())["cells"][0]["source"] == "a = 41 + 1  # mine"
    again.reset("a")
    again.save()
    assert json.loads(path.read_text())["cells"][0]["source"] == "a = (None or 0) + 1"


def test_run_lights_follow_the_cells_as_they_end(tmp_path: Path) -> None:
    """Lights: all queued then the first running; a finished cell lights ok/failed and the
    next one runs; at the end nothing stays queued or running."""
    session = GraphSession(tmp_path / "w.ipynb", CAT)
    session.update(
        graph_of(
            {"id": "a", "template": "math.add"},
            {"id": "b", "template": "math.add"},
            {"id": "c", "template": "math.add"},
            {"id": "note", "template": "note.markdown", "code": "hi"},
        )
    )
    session.run_started()
    assert session.status == {"a": "running", "b": "queued", "c": "queued"}
    session.cell_finished("a", "ok")
    session.cell_finished("parameters", "ok")
    assert session.status == {"a": "ok", "b": "running", "c": "queued"}
    session.cell_finished("b", "error")
    session.run_finished(False, "run r1 failed")
    assert session.status == {"a": "ok", "b": "failed"}
    assert session.failed_node() == "b" and session.message == "run r1 failed"
