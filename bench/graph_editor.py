"""Benchmark 12: the graph editor's model on a 200-node workflow: compile the graph to a
notebook, read the notebook back as a graph, auto-layout; against nbformat reading +
validating + writing the same notebook, and papermill parameterising it (the anchors: what
any tool pays to handle a notebook of that size).

The graph: 200 nodes of the built-in templates (browser, data, HTTP, files, control, code
and note nodes) in chains of 8 with cross edges, about 250 edges, 3 workflow inputs.

    .venv/bin/python -m bench.graph_editor [--quick]
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import nbformat
from papermill.parameterize import parameterize_notebook

from bench import common
from bench import notebooks as nbs
from casare_nb.core.graph import (
    CODE_TEMPLATE,
    NOTE_TEMPLATE,
    Catalog,
    Edge,
    Graph,
    GraphInput,
    Node,
    auto_layout,
    compile_graph,
    problems,
    read_graph,
)
from casare_nb.nodes.catalog import load_catalog

COMMAND = ".venv/bin/python -m bench.graph_editor"
NODES = 200
TARGET_COMPILE_S = 0.050
TARGET_LOAD_S = 1.0


def big_graph(catalog: Catalog, n: int = NODES, seed: int = 3) -> Graph:
    """``n`` nodes of the catalog's templates, chained, every input fed; positions unset."""
    rng = random.Random(seed)
    names = sorted(t for t in catalog.templates if t not in (CODE_TEMPLATE, NOTE_TEMPLATE))
    nodes: list[Node] = []
    edges: list[Edge] = []
    for i in range(n):
        if i % 25 == 24:
            nodes.append(Node(id=f"note_{i}", template=NOTE_TEMPLATE, code=f"## Step {i}"))
            continue
        tid = CODE_TEMPLATE if i % 10 == 9 else rng.choice(names)
        tpl = catalog.templates[tid]
        params: dict[str, Any] = {}
        for name, spec in tpl.params.items():
            if spec.default is None and spec.required:
                params[name] = {
                    "string": "x",
                    "text": "select 1",
                    "integer": 1,
                    "number": 1.0,
                    "boolean": True,
                    "list": ["a"],
                    "mapping": {"a": 1},
                    "expression": "True",
                    "choice": (spec.choices or [None])[0],
                }[spec.type]
        node = Node(
            id=f"n{i}", template=tid, params=params, code="x = 1" if tid == CODE_TEMPLATE else None
        )
        earlier = [m for m in nodes if catalog.templates[m.template].outputs]
        for port, pspec in tpl.inputs.items():
            if not earlier or (pspec.optional and rng.random() < 0.5):
                continue
            src = earlier[-1] if rng.random() < 0.7 else rng.choice(earlier)
            sport = next(iter(catalog.templates[src.template].outputs))
            edges.append(Edge(source=src.id, source_port=sport, target=node.id, target_port=port))
        nodes.append(node)
    inputs = [GraphInput(name=f"in_{i}", type="string", default="v") for i in range(3)]
    return Graph(nodes=nodes, edges=edges, inputs=inputs)


def _timed(call: Callable[[], Any], reps: int) -> list[float]:
    call()
    out = []
    for _ in range(reps):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def main(quick: bool = False) -> dict[str, Any]:
    reps = 5 if quick else 21
    catalog = load_catalog()
    graph = auto_layout(big_graph(catalog), catalog)
    nb = compile_graph(graph, catalog)
    text = json.dumps(nb)
    edges = len(graph.edges)

    def nbformat_round() -> None:
        node = nbformat.reads(text, as_version=4)  # type: ignore[no-untyped-call]
        nbformat.validate(node)
        nbformat.writes(node)  # type: ignore[no-untyped-call]

    def papermill() -> None:
        node = nbformat.reads(text, as_version=4)  # type: ignore[no-untyped-call]
        node.metadata.setdefault("papermill", {})  # what papermill's loading does first
        for cell in node.cells:
            cell.metadata.setdefault("tags", [])
        parameterize_notebook(node, {"in_0": "w"})

    def load() -> None:
        loaded = read_graph(json.loads(text), catalog)
        problems(loaded.graph, catalog)

    figures = {
        "compile graph -> notebook": _timed(lambda: compile_graph(graph, catalog), reps),
        "read notebook -> graph + problems": _timed(load, reps),
        "auto-layout": _timed(lambda: auto_layout(graph, catalog), reps),
        "load the template catalog (built-ins, YAML)": _timed(load_catalog, reps),
        "anchor: nbformat reads + validate + writes": _timed(nbformat_round, reps),
        "anchor: papermill parameterize_notebook": _timed(papermill, reps),
    }
    medians = {k: nbs.median(v) for k, v in figures.items()}
    anchor = medians["anchor: nbformat reads + validate + writes"]
    rows = [[k, common.ms(v), common.ratio(v / anchor)] for k, v in medians.items()]
    compile_s = medians["compile graph -> notebook"]
    load_s = medians["read notebook -> graph + problems"] + medians["auto-layout"]
    return {
        "name": "graph_editor",
        "title": f"12. Graph editor model: a {NODES}-node workflow",
        "command": COMMAND,
        "runs": f"{reps} after one unmeasured call each",
        "columns": ["what", "median", "vs nbformat round trip"],
        "rows": rows,
        "targets": [
            common.target(
                f"compile {NODES} nodes <= {TARGET_COMPILE_S * 1000:g} ms",
                common.ms(compile_s),
                compile_s <= TARGET_COMPILE_S,
            ),
            common.target(
                f"load + layout {NODES} nodes (Python side of the <= 1 s first render)",
                common.ms(load_s),
                load_s <= TARGET_LOAD_S,
            ),
        ],
        "notes": [
            f"{NODES} nodes, {edges} edges, {len(nb['cells'])} cells, notebook "
            f"{common.mb(len(text))}.",
            "The browser's side of the first render (the view drawing the graph) is "
            "benchmark 13 (bench/graph_render.py).",
        ],
        "raw": figures,
    }


if __name__ == "__main__":
    print(json.dumps(main("--quick" in sys.argv), indent=1, default=str))
