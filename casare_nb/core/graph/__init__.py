"""Workflow graphs: nodes rendered from templates, and the notebook they are.

A :class:`Graph` is nodes (each an instance of a :class:`NodeTemplate` with parameter values
and a position), edges from an output port to an input port, and the workflow's inputs (its
parameters). :func:`compile_graph` writes it as a notebook (nbformat 4 JSON, plain dicts):
the parameters cell from the inputs, then one code cell per node in a stable topological
order, each rendered from its template; :func:`read_graph` reads a notebook back, any
notebook: cells without node metadata become code (or note) nodes, a node cell edited by
hand keeps its source and is flagged, invalid metadata opens as plain cells with a warning.
docs/graph-editor.md describes the format.

Pure: stdlib + pydantic, no I/O (templates arrive as parsed data).
"""

from __future__ import annotations

from casare_nb.core.graph.layout import (
    auto_layout,
)
from casare_nb.core.graph.model import (
    GRAPH_KEY,
    NODE_KEY,
    Edge,
    Graph,
    GraphError,
    GraphInput,
    Loaded,
    Node,
    graph_json,
    problems,
    topological_order,
)
from casare_nb.core.graph.notebook import (
    compile_graph,
    node_source,
    read_graph,
)
from casare_nb.core.graph.templates import (
    CODE_TEMPLATE,
    NOTE_TEMPLATE,
    BrokenTemplate,
    Catalog,
    NodeTemplate,
    ParamDef,
    PortDef,
    TemplateError,
    literal,
    template_from_data,
    type_problem,
)

__all__ = [
    "CODE_TEMPLATE",
    "GRAPH_KEY",
    "NODE_KEY",
    "NOTE_TEMPLATE",
    "BrokenTemplate",
    "Catalog",
    "Edge",
    "Graph",
    "GraphError",
    "GraphInput",
    "Loaded",
    "Node",
    "NodeTemplate",
    "ParamDef",
    "PortDef",
    "TemplateError",
    "auto_layout",
    "compile_graph",
    "graph_json",
    "literal",
    "node_source",
    "problems",
    "read_graph",
    "template_from_data",
    "topological_order",
    "type_problem",
]
