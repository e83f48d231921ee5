"""A graph as a notebook and back: :func:`compile_graph` writes the parameters cell and
one cell per node (rendered from its template, wrapped where a gate is upstream);
:func:`read_graph` reads any notebook as a graph, keeping what was edited by hand.
Pure: stdlib + pydantic (notebooks are plain dicts).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from casare_nb.core.cells import ALWAYS_RUN_TAG, cell_names
from casare_nb.core.errors import CasareError, one_line
from casare_nb.core.graph.layout import ROW_DY, auto_layout
from casare_nb.core.graph.model import (
    GRAPH_KEY,
    NODE_KEY,
    PARAMETERS_CELL_ID,
    RESERVED_IDS,
    Edge,
    Graph,
    GraphError,
    GraphInput,
    Loaded,
    Node,
    topological_order,
)
from casare_nb.core.graph.templates import (
    CODE_TEMPLATE,
    NOTE_TEMPLATE,
    Catalog,
    InputType,
    is_identifier,
    literal,
    render_code,
    type_problem,
)
from casare_nb.core.parameters_cell import default_is_literal, parse_parameters

GRAPH_VERSION = 1

_ANNOTATION: dict[str, str] = {
    "string": "str",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "list": "list",
    "mapping": "dict",
}


class _Context:
    """Per graph: the variable behind each connected input, and the gates over each node."""

    def __init__(self, graph: Graph, catalog: Catalog, order: Sequence[str]) -> None:
        self.catalog = catalog
        self.nodes = {n.id: n for n in graph.nodes}
        self.inputs: dict[str, dict[str, str]] = {}
        self.gates: dict[str, list[str]] = {}
        by_target: dict[str, list[Edge]] = {}
        for e in graph.edges:
            by_target.setdefault(e.target, []).append(e)
        for nid in order:
            gates: list[str] = []
            for e in by_target.get(nid, []):
                src = self.nodes.get(e.source)
                tpl = catalog.templates.get(src.template) if src else None
                if src is None or tpl is None or e.source_port not in tpl.outputs:
                    continue
                var = tpl.var(src.id, e.source_port)
                self.inputs.setdefault(nid, {}).setdefault(e.target_port, var)
                more = self.gates.get(src.id, [])
                if tpl.outputs[e.source_port].gate:
                    more = [*more, var]
                gates.extend(g for g in more if g not in gates)
            self.gates[nid] = gates


def node_source(node: Node, ctx: _Context, *, fresh: bool = False) -> str:
    """The source of ``node``'s cell: its kept source if edited (unless ``fresh``), else
    rendered from its template, wrapped in ``if`` when a gate is upstream."""
    tpl = ctx.catalog.templates.get(node.template)
    if node.template == NOTE_TEMPLATE:
        return node.code or ""
    if tpl is None or (node.edited and not fresh):
        return node.code or ""
    outs = {p: tpl.var(node.id, p) for p in tpl.outputs}
    if node.template == CODE_TEMPLATE:
        body = node.code or ""
    else:
        code = render_code(
            tpl, node.params, node.bind, ctx.inputs.get(node.id, {}), outs, node.id
        ).strip("\n")
        body = "\n".join([*tpl.imports, code]) if tpl.imports else code
    gates = ctx.gates.get(node.id, [])
    if not gates:
        return body
    inner = "\n".join(("    " + line) if line.strip() else line for line in body.splitlines())
    skipped = [f"    {outs[p]} = None" for p in outs if node.template != CODE_TEMPLATE]
    cond = " and ".join(f"{g} is not None" for g in gates)
    return "\n".join(
        [
            f"if {cond}:",
            inner or "    pass",
            "else:",
            *skipped,
            f"    print({literal('skipped: ' + ', '.join(gates) + ' did not pass')})",
        ]
    )


def parameters_source(graph: Graph) -> str:
    """The parameters cell of the graph's inputs (or the kept hand-edited one)."""
    if graph.parameters_source is not None:
        return graph.parameters_source
    lines = ["# Workflow inputs: the graph editor writes this cell from the graph's inputs"]
    if any(i.secret for i in graph.inputs):
        lines.append("from casare_nb import Secret")
    for i in graph.inputs:
        ann = _ANNOTATION[i.type]
        if i.secret:
            ann = f"Secret[{ann}]"
        if i.default is None:
            ann = f"{ann} | None"
        line = f"{i.name}: {ann} = {literal(i.default)}"
        if i.help:
            line += f"  # {' '.join(i.help.split())}"
        lines.append(line)
    return "\n".join(lines)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _cell(cell_type: str, cell_id: str, source: str, metadata: dict[str, Any]) -> dict[str, Any]:
    cell: dict[str, Any] = {
        "cell_type": cell_type,
        "id": cell_id,
        "metadata": metadata,
        "source": source,
    }
    if cell_type == "code":
        cell["execution_count"] = None
        cell["outputs"] = []
    return cell


def compile_graph(
    graph: Graph, catalog: Catalog, *, base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The notebook (nbformat 4 as plain dicts) of ``graph``: the parameters cell, then one
    cell per node in topological order. ``base`` is the notebook being replaced: its
    metadata is kept, and so are the outputs of cells whose source did not change.
    GraphError for a cycle or a node whose template is missing and has no kept source."""
    order = topological_order(graph)
    ctx = _Context(graph, catalog, order)
    old = {c.get("id"): c for c in (base or {}).get("cells", []) if isinstance(c, Mapping)}
    cells = []
    if graph.inputs or graph.parameters_source is not None:
        cells.append(
            _cell("code", PARAMETERS_CELL_ID, parameters_source(graph), {"tags": ["parameters"]})
        )
    for nid in order:
        node = ctx.nodes[nid]
        tpl = catalog.templates.get(node.template)
        if tpl is None and node.code is None:
            raise GraphError(f"node {nid}: no template {node.template!r} and no kept source")
        source = node_source(node, ctx)
        meta: dict[str, Any] = {
            "id": node.id,
            "template": node.template,
            "x": round(node.x, 1),
            "y": round(node.y, 1),
        }
        if node.params:
            meta["params"] = dict(node.params)
        if node.bind:
            meta["bind"] = dict(node.bind)
        if node.template not in (CODE_TEMPLATE, NOTE_TEMPLATE):
            meta["sha256"] = _sha(node_source(node, ctx, fresh=True))
        metadata: dict[str, Any] = {NODE_KEY: meta}
        if tpl is not None and tpl.replay:
            metadata["tags"] = [ALWAYS_RUN_TAG]
        kind = "markdown" if node.template == NOTE_TEMPLATE else "code"
        cell = _cell(kind, nid, source, metadata)
        prev = old.get(nid)
        if kind == "code" and prev is not None and _text(prev.get("source")) == source:
            cell["outputs"] = prev.get("outputs", [])
            cell["execution_count"] = prev.get("execution_count")
        cells.append(cell)
    metadata = dict((base or {}).get("metadata") or {})
    metadata.setdefault(
        "kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"}
    )
    metadata.setdefault("language_info", {"name": "python"})
    metadata[GRAPH_KEY] = {
        "version": GRAPH_VERSION,
        "inputs": [i.model_dump() for i in graph.inputs],
        "edges": [e.model_dump() for e in graph.edges],
    }
    if graph.parameters_source is not None:
        metadata[GRAPH_KEY]["parameters"] = "kept"
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": metadata, "cells": cells}


# --------------------------------------------------------------------------- reading


def _text(source: Any) -> str:
    if isinstance(source, list):
        return "".join(str(s) for s in source)
    return source if isinstance(source, str) else ""


def _free_id(base: str, taken: set[str]) -> str:
    stem = re.sub(r"\W", "_", base).strip("_")[:50] or "cell"
    if not is_identifier(stem) or stem in RESERVED_IDS:
        stem = f"cell_{stem}"
    nid, n = stem, 1
    while nid in taken:
        n += 1
        nid = f"{stem}_{n}"
    taken.add(nid)
    return nid


def read_graph(nb: Mapping[str, Any], catalog: Catalog) -> Loaded:
    """``nb`` (nbformat 4 as plain dicts) as a graph. Never raises on its content: what
    cannot be read as nodes opens as plain code nodes, with a warning."""
    warnings: list[str] = []
    meta = (nb.get("metadata") or {}).get(GRAPH_KEY)
    inputs: list[GraphInput] = []
    edges: list[Edge] = []
    trusted = meta is not None
    if meta is not None:
        try:
            if not isinstance(meta, Mapping):
                raise TypeError("not a mapping")
            inputs = [GraphInput.model_validate(i) for i in meta.get("inputs", [])]
            edges = [Edge.model_validate(e) for e in meta.get("edges", [])]
        except (ValidationError, TypeError, AttributeError) as exc:
            warnings.append(
                f"the notebook's {GRAPH_KEY} metadata is invalid ({one_line(exc)[:120]}): "
                "opened as plain cells"
            )
            inputs, edges, trusted = [], [], False
    graph = Graph(inputs=inputs, edges=edges)
    taken: set[str] = set()
    meta_nodes: dict[str, Mapping[str, Any]] = {}
    sources: dict[str, str] = {}
    for index, cell in enumerate(nb.get("cells") or []):
        if not isinstance(cell, Mapping):
            continue
        source = _text(cell.get("source"))
        cell_meta = cell.get("metadata") or {}
        tags = cell_meta.get("tags") or []
        if cell.get("cell_type") == "code" and "parameters" in tags and not graph.parameters_source:
            if trusted and source == parameters_source(graph):
                continue
            graph.parameters_source = source
            if trusted and isinstance(meta, Mapping) and meta.get("parameters") != "kept":
                warnings.append("the parameters cell was edited by hand: it is kept as written")
            if not graph.inputs:
                graph.inputs = _inputs_of(source)
            continue
        node = _node_of(cell_meta.get(NODE_KEY), catalog, taken) if trusted else None
        if trusted and NODE_KEY in cell_meta and node is None:
            warnings.append(f"cell {index}: invalid {NODE_KEY} metadata: opened as a code node")
        if node is None:
            kind = NOTE_TEMPLATE if cell.get("cell_type") == "markdown" else CODE_TEMPLATE
            if cell.get("cell_type") not in ("code", "markdown"):
                continue
            node = Node(id=_free_id(str(cell.get("id") or f"cell_{index}"), taken), template=kind)
            node.code = source
        else:
            meta_nodes[node.id] = cell_meta[NODE_KEY]
        sources[node.id] = source
        graph.nodes.append(node)
    ids = {n.id for n in graph.nodes}
    graph.edges = [e for e in graph.edges if e.source in ids and e.target in ids]
    if not trusted:
        graph.edges = _inferred_edges(graph)
    loaded = Loaded(graph=graph, warnings=warnings)
    _mark_edits(loaded, catalog, meta_nodes, sources)
    if not any(n.x or n.y for n in graph.nodes if n.id in meta_nodes):
        loaded.graph = auto_layout(graph, catalog)  # never placed: a plain or generated one
    else:  # cells added by hand to a graph: below the rest
        bottom = max((n.y for n in graph.nodes if n.id in meta_nodes), default=0.0)
        for n in graph.nodes:
            if n.id not in meta_nodes:
                bottom += ROW_DY
                n.x, n.y = 40.0, bottom
    return loaded


def _inputs_of(source: str) -> list[GraphInput]:
    """The inputs a hand-written parameters cell declares, where their type is one of ours
    (so nodes can be bound to them)."""
    kinds: dict[str, InputType] = {
        "str": "string",
        "int": "integer",
        "float": "number",
        "bool": "boolean",
    }
    out = []
    try:
        specs = parse_parameters(source, ())
    except CasareError:
        return []
    for spec in specs.values():
        kind = kinds.get(spec.type_repr.split("[")[0].split(" |")[0])
        if spec.type_repr.startswith(("list", "dict")):
            kind = "list" if spec.type_repr.startswith("list") else "mapping"
        if kind is None:
            continue
        default = spec.default if default_is_literal(spec) else None
        if default is not None and type_problem(kind, default):
            default = None
        out.append(GraphInput(name=spec.name, type=kind, default=default, secret=spec.secret))
    return out


def _node_of(raw: Any, catalog: Catalog, taken: set[str]) -> Node | None:
    if not isinstance(raw, Mapping):
        return None
    try:
        node = Node.model_validate(raw)
    except ValidationError:
        return None
    if not is_identifier(node.id) or node.id in taken or node.id in RESERVED_IDS:
        return None
    taken.add(node.id)
    return node


def _mark_edits(
    loaded: Loaded,
    catalog: Catalog,
    meta: Mapping[str, Mapping[str, Any]],
    sources: Mapping[str, str],
) -> None:
    graph = loaded.graph
    try:
        order = topological_order(graph)
    except GraphError as exc:
        loaded.warnings.append(str(exc))
        order = [n.id for n in graph.nodes]
    ctx = _Context(graph, catalog, order)
    for node in graph.nodes:
        if node.id not in meta:
            continue
        source = sources[node.id]
        if node.template in (CODE_TEMPLATE, NOTE_TEMPLATE):
            node.code = source
            if ctx.gates.get(node.id) and node.template == CODE_TEMPLATE:
                node.code = _unwrapped(node, ctx, source)
                node.edited = node.code == source
            continue
        if node.template not in catalog.templates:
            node.code, node.edited = source, True
            loaded.warnings.append(
                f"node {node.id}: no template {node.template!r}; its cell is kept as written"
            )
            continue
        rendered = node_source(node, ctx, fresh=True)
        if rendered == source:
            continue
        node.code, node.edited = source, True  # kept as it is, never re-rendered unasked
        if meta[node.id].get("sha256") == _sha(source):
            loaded.updated.append(node.id)  # untouched: its template or inputs changed since
        else:
            loaded.edited.append(node.id)


def _unwrapped(node: Node, ctx: _Context, source: str) -> str:
    """The code of a gated code node's cell without the ``if`` the gates put around it;
    ``source`` itself when the cell is not that shape any more (edited by hand)."""
    lines = source.split("\n")
    if len(lines) < 4 or lines[-2] != "else:":
        return source
    body = lines[1:-2]
    if not all(not ln.strip() or ln.startswith("    ") for ln in body):
        return source
    code = "\n".join(ln[4:] if ln.strip() else ln for ln in body)
    code = "" if code == "pass" else code
    again = node_source(node.model_copy(update={"code": code, "edited": False}), ctx)
    return code if again == source else source


def _inferred_edges(graph: Graph) -> list[Edge]:
    """For a plain notebook: an edge from the last cell defining a name to each cell using
    it, so the graph shows how its cells depend on each other."""
    edges: list[Edge] = []
    last: dict[str, str] = {}
    for node in graph.nodes:
        if node.template != CODE_TEMPLATE:
            continue
        names = cell_names(node.code or "")
        sources = {last[n] for n in names.uses if n in last and last[n] != node.id}
        for src in sorted(sources, key=lambda s: [x.id for x in graph.nodes].index(s)):
            edges.append(Edge(source=src, source_port="out", target=node.id, target_port="after"))
        for n in names.defines:
            last[n] = node.id
    return edges
