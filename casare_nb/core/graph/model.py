"""The graph: nodes (one cell each), edges from an output port to an input port, the
workflow's inputs; its stable topological order, its cycles, and what is wrong with it
(:func:`problems`). Pure: stdlib + pydantic.
"""

from __future__ import annotations

import heapq
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from casare_nb.core.cells import cell_names
from casare_nb.core.errors import CasareError
from casare_nb.core.graph.templates import (
    CODE_TEMPLATE,
    NOTE_TEMPLATE,
    Catalog,
    InputType,
    is_identifier,
    parse_problem,
    type_problem,
)

GRAPH_KEY = "casare_graph"
"""Notebook metadata key: ``{"version", "inputs", "edges"}``."""
NODE_KEY = "casare_node"
"""Cell metadata key: ``{"id", "template", "params", "bind", "x", "y", "sha256"}``."""
PARAMETERS_CELL_ID = "parameters"
RESERVED_IDS = frozenset({PARAMETERS_CELL_ID, "injected-parameters"})
MAX_ID = 64  # an nbformat cell id


class GraphError(CasareError):
    """The graph cannot become a notebook (a cycle, a node whose template is missing...)."""


# --------------------------------------------------------------------------- graphs


class Node(BaseModel):
    """One node: one cell."""

    model_config = ConfigDict(extra="ignore")

    id: str
    template: str
    params: dict[str, Any] = Field(default_factory=dict)
    bind: dict[str, str] = Field(default_factory=dict)  # param -> workflow input
    x: float = 0.0
    y: float = 0.0
    code: str | None = None  # code and note nodes; an edited node's kept source
    edited: bool = False


class Edge(BaseModel):
    """An output port of one node feeding an input port of another."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    source: str
    source_port: str
    target: str
    target_port: str


class GraphInput(BaseModel):
    """One parameter of the workflow (a line of its parameters cell)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    type: InputType = "string"
    default: Any = None
    help: str = ""
    secret: bool = False


class Graph(BaseModel):
    """A workflow as nodes and edges; what the editor edits and the notebook stores."""

    nodes: list[Node] = Field(default_factory=list)
    edges: list[Edge] = Field(default_factory=list)
    inputs: list[GraphInput] = Field(default_factory=list)
    parameters_source: str | None = None  # a parameters cell edited by hand, kept

    def node(self, node_id: str) -> Node | None:
        """The node ``node_id``; None if there is none."""
        return next((n for n in self.nodes if n.id == node_id), None)

    def canonical(self) -> Graph:
        """The same graph with its nodes in the order a notebook holds them."""
        order = {nid: i for i, nid in enumerate(topological_order(self))}
        nodes = sorted(self.nodes, key=lambda n: order[n.id])
        edges = sorted(set(self.edges), key=lambda e: (e.target, e.target_port, e.source))
        return self.model_copy(update={"nodes": nodes, "edges": edges})


class Loaded(BaseModel):
    """A notebook read as a graph, with what the analyst should know about it."""

    graph: Graph
    warnings: list[str] = Field(default_factory=list)
    edited: list[str] = Field(default_factory=list)  # node ids whose cell was edited by hand
    # untouched cells whose template (or what feeds them) changed since: kept as they are
    # until reset, like edited ones
    updated: list[str] = Field(default_factory=list)


def topological_order(graph: Graph) -> list[str]:
    """Node ids so that every edge goes forward; among nodes free to go next, the one
    listed first. GraphError naming the nodes of a cycle when there is one."""
    index = {n.id: i for i, n in enumerate(graph.nodes)}
    succ: dict[str, set[str]] = {n.id: set() for n in graph.nodes}
    indeg = dict.fromkeys(index, 0)
    for e in graph.edges:
        if e.source in index and e.target in index and e.target not in succ[e.source]:
            succ[e.source].add(e.target)
            indeg[e.target] += 1
    ready = [(i, nid) for nid, i in index.items() if indeg[nid] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, nid = heapq.heappop(ready)
        order.append(nid)
        for t in succ[nid]:
            indeg[t] -= 1
            if indeg[t] == 0:
                heapq.heappush(ready, (index[t], t))
    if len(order) < len(index):
        raise GraphError(f"the graph has a cycle: {' -> '.join(_cycle(graph, set(order)))}")
    return order


def _cycle(graph: Graph, done: set[str]) -> list[str]:
    """One cycle among the nodes not in ``done``, as ids ending where it starts."""
    succ: dict[str, list[str]] = {}
    for e in graph.edges:
        if e.source not in done and e.target not in done:
            succ.setdefault(e.source, []).append(e.target)
    start = next(iter(succ))
    path, seen = [start], {start: 0}
    while True:
        nxt = succ[path[-1]][0]
        if nxt in seen:
            return [*path[seen[nxt] :], nxt]
        seen[nxt] = len(path)
        path.append(nxt)


def _on_cycles(graph: Graph) -> set[str]:
    """Every node on some cycle (strongly connected components of more than one node, or
    with a self-loop)."""
    succ: dict[str, list[str]] = {n.id: [] for n in graph.nodes}
    for e in graph.edges:
        if e.source in succ and e.target in succ:
            succ[e.source].append(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: set[str] = set()
    counter = 0
    for root in succ:
        if root in index:
            continue
        work = [(root, iter(succ[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        x = stack.pop()
                        on.discard(x)
                        comp.append(x)
                        if x == v:
                            break
                    if len(comp) > 1 or v in succ[v]:
                        out.update(comp)
            elif w not in index:
                index[w] = low[w] = counter
                counter += 1
                stack.append(w)
                on.add(w)
                work.append((w, iter(succ[w])))
            elif w in on:
                low[v] = min(low[v], index[w])
    return out


# --------------------------------------------------------------------------- problems


def problems(graph: Graph, catalog: Catalog) -> dict[str, list[str]]:
    """What is wrong, per node id (``""`` for the graph as a whole); empty when it can
    run."""
    out: dict[str, list[str]] = {}

    def add(key: str, msg: str) -> None:
        out.setdefault(key, []).append(msg)

    ids: set[str] = set()
    for n in graph.nodes:
        if not is_identifier(n.id) or len(n.id) > MAX_ID:
            add(n.id, f"id {n.id!r} is not a Python identifier of at most {MAX_ID} characters")
        elif n.id in ids:
            add("", f"two nodes are called {n.id!r}")
        elif n.id in RESERVED_IDS:
            add(n.id, f"id {n.id!r} is reserved")
        ids.add(n.id)
    names = _input_problems(graph, add)
    broken = {b.id: b.reason for b in catalog.broken if b.id}
    feeding: dict[tuple[str, str], list[Edge]] = {}
    nodes = {n.id: n for n in graph.nodes}
    for e in graph.edges:
        src, dst = nodes.get(e.source), nodes.get(e.target)
        if src is None or dst is None:
            add("", f"an edge joins a node that does not exist: {e.source} -> {e.target}")
            continue
        st, dt = catalog.templates.get(src.template), catalog.templates.get(dst.template)
        if st is not None and e.source_port not in st.outputs:
            add(dst.id, f"input from {src.id}.{e.source_port}: {src.id} has no such output")
        if dt is not None and e.target_port not in dt.inputs:
            add(dst.id, f"an edge ends at {e.target_port!r}, which is not an input")
        feeding.setdefault((e.target, e.target_port), []).append(e)
    for nid in sorted(_on_cycles(graph)):
        add(nid, "on a cycle: the nodes cannot be put in an order")
    variables: dict[str, str] = {}
    for n in graph.nodes:
        tpl = catalog.templates.get(n.template)
        if tpl is None:
            reason = broken.get(n.template)
            add(n.id, f"template {n.template!r} is {'broken: ' + reason if reason else 'missing'}")
            continue
        for port in tpl.outputs:
            var = tpl.var(n.id, port)
            if var in variables and variables[var] != n.id:
                add(n.id, f"variable {var!r} is also written by {variables[var]}")
            variables.setdefault(var, n.id)
        if n.template == NOTE_TEMPLATE:
            continue
        if n.template == CODE_TEMPLATE or n.edited:
            problem = parse_problem(n.code or "")
            if problem and n.template == CODE_TEMPLATE:
                add(n.id, f"code does not parse: {problem}")
        for port, spec in tpl.inputs.items():
            edges = feeding.get((n.id, port), [])
            if not edges and not spec.optional:
                add(n.id, f"input {port!r} is not connected")
            if len(edges) > 1 and not spec.multiple:
                add(n.id, f"input {port!r} has {len(edges)} edges; it takes one")
        for name, value in n.params.items():
            spec_p = tpl.params.get(name)
            if spec_p is None:
                add(n.id, f"param {name!r} is not a param of {tpl.id}")
            elif name not in n.bind and value is not None:
                problem = spec_p.problem(value)
                if problem:
                    add(n.id, f"{name} {problem}")
        for name, spec_p in tpl.params.items():
            if name in n.bind:
                if n.bind[name] not in names:
                    add(n.id, f"{name} is bound to {n.bind[name]!r}, which is not an input")
            elif spec_p.required and n.params.get(name) is None:
                add(n.id, f"{name} is required")
    for e in graph.edges:
        src = nodes.get(e.source)
        if src is not None and src.template == CODE_TEMPLATE and e.target_port != "after":
            dst = nodes.get(e.target)
            if (
                dst is not None
                and dst.template != CODE_TEMPLATE
                and src.id not in (cell_names(src.code or "").defines)
            ):
                add(src.id, f"feeds {e.target}.{e.target_port} but does not assign {src.id}")
    return out


def _input_problems(graph: Graph, add: Any) -> set[str]:
    names: set[str] = set()
    for i in graph.inputs:
        if not is_identifier(i.name):
            add("", f"input {i.name!r} is not a Python identifier")
        elif i.name in names:
            add("", f"two inputs are called {i.name!r}")
        elif i.default is not None and (p := type_problem(i.type, i.default)):
            add("", f"input {i.name}: default {p}")
        names.add(i.name)
    return names


def graph_json(graph: Graph) -> dict[str, Any]:
    """The graph as the editor's ``graph`` trait holds it."""
    data: dict[str, Any] = json.loads(graph.model_dump_json())
    return data
