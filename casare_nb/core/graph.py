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

import ast
import hashlib
import heapq
import json
import keyword
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from casare_nb.core.cells import ALWAYS_RUN_TAG, cell_names
from casare_nb.core.errors import CasareError, one_line
from casare_nb.core.parameters_cell import default_is_literal, parse_parameters

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
    "node_source",
    "problems",
    "read_graph",
    "template_from_data",
    "topological_order",
]

GRAPH_KEY = "casare_graph"
"""Notebook metadata key: ``{"version", "inputs", "edges"}``."""
NODE_KEY = "casare_node"
"""Cell metadata key: ``{"id", "template", "params", "bind", "x", "y", "sha256"}``."""
GRAPH_VERSION = 1
CODE_TEMPLATE = "code.python"
NOTE_TEMPLATE = "note.markdown"
PARAMETERS_CELL_ID = "parameters"
RESERVED_IDS = frozenset({PARAMETERS_CELL_ID, "injected-parameters"})
MAX_ID = 64  # an nbformat cell id

ParamType = Literal[
    "string", "text", "integer", "number", "boolean", "choice", "list", "mapping", "expression"
]
InputType = Literal["string", "integer", "number", "boolean", "list", "mapping"]

_TEMPLATE_ID = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.S)
_PLACE_BODY = re.compile(r"^\s*(?:(in|out)\.)?([A-Za-z_]\w*)\s*$")
_ANNOTATION: dict[str, str] = {
    "string": "str",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "list": "list",
    "mapping": "dict",
}


class GraphError(CasareError):
    """The graph cannot become a notebook (a cycle, a node whose template is missing...)."""


class TemplateError(CasareError):
    """A node template that does not load; ``str(err)`` is the one-line reason."""


def _identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)


# --------------------------------------------------------------------------- values


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _finite(v) for k, v in value.items())
    return value is None or isinstance(value, str | int | bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and _finite(value)


def type_problem(kind: str, value: Any, choices: Sequence[Any] | None = None) -> str | None:
    """Why ``value`` is not a value of param/input type ``kind``; None when it is."""
    if kind in ("string", "text"):
        ok = isinstance(value, str) and (kind == "text" or "\n" not in value)
        return None if ok else f"expects {'one line of ' if kind == 'string' else ''}text"
    if kind == "integer":
        ok = _is_int(value) and -(2**63) <= value < 2**63
        return None if ok else "expects a whole number"
    if kind == "number":
        return None if _is_number(value) else "expects a finite number"
    if kind == "boolean":
        return None if isinstance(value, bool) else "expects true or false"
    if kind == "choice":
        return None if value in (choices or []) else f"expects one of {list(choices or [])}"
    if kind == "list":
        return None if isinstance(value, list) and _finite(value) else "expects a list"
    if kind == "mapping":
        return None if isinstance(value, dict) and _finite(value) else "expects a mapping"
    if kind == "expression":
        if not isinstance(value, str) or not value.strip():
            return "expects a Python expression"
        try:
            ast.parse(value.strip(), mode="eval")
        except SyntaxError as exc:
            return f"is not a Python expression ({exc.msg})"
        return None
    return f"has an unknown type {kind!r}"


def literal(value: Any) -> str:
    """``value`` (JSON data) as Python source."""
    return repr(value)


# --------------------------------------------------------------------------- templates


class ParamDef(BaseModel):
    """One parameter of a node template."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ParamType
    required: bool = False
    default: Any = None
    choices: list[Any] | None = None
    minimum: float | None = None
    maximum: float | None = None
    help: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> ParamDef:
        if self.type == "choice" and not self.choices:
            raise ValueError("a choice needs choices")
        if self.required and self.default is not None:
            raise ValueError("a required param has no default")
        if self.default is not None:
            problem = self.problem(self.default)
            if problem:
                raise ValueError(f"default {self.default!r} {problem}")
        return self

    def problem(self, value: Any) -> str | None:
        """Why ``value`` does not fit this param; None when it does."""
        problem = type_problem(self.type, value, self.choices)
        if problem is None and self.type in ("integer", "number"):
            if self.minimum is not None and value < self.minimum:
                problem = f"must be at least {self.minimum:g}"
            elif self.maximum is not None and value > self.maximum:
                problem = f"must be at most {self.maximum:g}"
        return problem


class PortDef(BaseModel):
    """One input or output port of a node template."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    help: str = ""
    optional: bool = False
    multiple: bool = False  # an input taking several edges (ordering only)
    gate: bool = False  # an output that is None when everything downstream is to be skipped


AFTER = PortDef(optional=True, multiple=True, help="runs after these (ordering only)")


class NodeTemplate(BaseModel):
    """A declarative node: what it takes, what it gives, and the code of its cell."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str = Field(min_length=1)
    category: str = Field(min_length=1)
    description: str = ""
    replay: bool = False
    imports: list[str] = Field(default_factory=list)
    params: dict[str, ParamDef] = Field(default_factory=dict)
    inputs: dict[str, PortDef] = Field(default_factory=dict)
    outputs: dict[str, PortDef] = Field(default_factory=dict)
    code: str = ""
    source: str = ""  # where it was read from

    @model_validator(mode="before")
    @classmethod
    def _ordering_input(cls, data: Any) -> Any:
        """Every node but a note takes ``after``: edges that only order it."""
        if isinstance(data, dict) and data.get("id") != NOTE_TEMPLATE:
            inputs = data.get("inputs") or {}
            if isinstance(inputs, dict) and "after" not in inputs:
                data = {**data, "inputs": {**inputs, "after": AFTER}}
        return data

    @model_validator(mode="after")
    def _check(self) -> NodeTemplate:
        if not _TEMPLATE_ID.match(self.id):
            raise ValueError(f"id {self.id!r} is not category.name (a-z, 0-9, _)")
        for kind, names in (("param", self.params), ("input", self.inputs)):
            for name in names:
                if not _identifier(name):
                    raise ValueError(f"{kind} name {name!r} is not a Python identifier")
        for name in self.outputs:
            if not _identifier(name):
                raise ValueError(f"output name {name!r} is not a Python identifier")
        if self.id in (CODE_TEMPLATE, NOTE_TEMPLATE):
            return self
        for body in _PLACEHOLDER.findall(self.code):
            _resolve_placeholder(self, body)
        for line in self.imports:
            try:
                tree = ast.parse(line)
            except SyntaxError as exc:
                raise ValueError(f"import {line!r} does not parse ({exc.msg})") from None
            if not all(isinstance(n, ast.Import | ast.ImportFrom) for n in tree.body):
                raise ValueError(f"import {line!r} is not an import")
        sample = _render_code(
            self,
            {n: _sample(p) for n, p in self.params.items()},
            {},
            {p: f"in_{p}" for p in self.inputs},
            {p: f"out_{p}" for p in self.outputs},
            "node_1",
        )
        problem = _parse_problem(sample)
        if problem:
            raise ValueError(f"code does not parse: {problem}")
        return self

    def var(self, node_id: str, port: str) -> str:
        """The variable output ``port`` of node ``node_id`` is."""
        return node_id if len(self.outputs) == 1 else f"{node_id}_{port}"

    def defaults(self) -> dict[str, Any]:
        """The params a new node starts with."""
        return {n: p.default for n, p in self.params.items() if p.default is not None}


def _resolve_placeholder(tpl: NodeTemplate, body: str) -> tuple[str | None, str]:
    match = _PLACE_BODY.match(body)
    if not match:
        raise ValueError(f"placeholder {{{{{body}}}}} is not NAME, in.PORT or out.PORT")
    scope, name = match.group(1), match.group(2)
    known = {"in": tpl.inputs, "out": tpl.outputs}.get(scope or "", tpl.params)
    if name not in known and not (scope is None and name == "node"):
        what = {"in": "input", "out": "output"}.get(scope or "", "param")
        raise ValueError(f"placeholder {{{{{body.strip()}}}}} names no {what}")
    return scope, name


def _sample(p: ParamDef) -> Any:
    if p.default is not None:
        return p.default
    return {
        "string": "x",
        "text": "x",
        "integer": 1,
        "number": 1.0,
        "boolean": True,
        "choice": (p.choices or [None])[0],
        "list": [],
        "mapping": {},
        "expression": "True",
    }[p.type]


def _parse_problem(source: str) -> str | None:
    try:
        compile(source, "<cell>", "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError as exc:
        return f"{exc.msg} (line {exc.lineno})"
    return None


CODE = NodeTemplate(
    id=CODE_TEMPLATE,
    name="Python code",
    category="code",
    description="A free Python cell. Assign the node's id to pass a value on.",
    outputs={"out": PortDef(help="the variable named like the node")},
)
NOTE = NodeTemplate(
    id=NOTE_TEMPLATE,
    name="Note",
    category="code",
    description="A markdown cell: text between the steps.",
)


class BrokenTemplate(BaseModel):
    """A template file that did not load, and why."""

    source: str
    id: str | None = None
    reason: str


class Catalog(BaseModel):
    """The templates a graph may use (the built-in code and note nodes always) and the
    broken ones."""

    templates: dict[str, NodeTemplate] = Field(default_factory=dict)
    broken: list[BrokenTemplate] = Field(default_factory=list)

    @model_validator(mode="after")
    def _builtins(self) -> Catalog:
        self.templates.setdefault(CODE_TEMPLATE, CODE)
        self.templates.setdefault(NOTE_TEMPLATE, NOTE)
        return self

    @classmethod
    def of(cls, templates: Iterable[NodeTemplate]) -> Catalog:
        """A catalog of ``templates`` (a later one with the same id wins)."""
        return cls(templates={t.id: t for t in templates})

    def palette(self) -> list[dict[str, Any]]:
        """Every template as JSON for the editor's palette, broken ones last."""
        rows = [{**t.model_dump(), "broken": None} for t in self.templates.values()]
        rows.sort(key=lambda r: (r["category"], r["name"]))
        for b in self.broken:
            name = b.id or b.source.rsplit("/", 1)[-1]
            category = (b.id or "broken.x").split(".")[0]
            rows.append(
                {"id": b.id or b.source, "name": name, "category": category, "broken": b.reason}
            )
        return rows


def template_from_data(data: Any, source: str = "") -> NodeTemplate:
    """A template from parsed YAML/JSON; TemplateError with the one-line reason if it is
    not one."""
    if not isinstance(data, Mapping):
        raise TemplateError(f"{source or 'template'}: not a mapping of template fields")
    try:
        return NodeTemplate.model_validate({**data, "source": source})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise TemplateError(
            one_line(f"{source or 'template'}: {where + ': ' if where else ''}{msg}")
        ) from None


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
        if not _identifier(n.id) or len(n.id) > MAX_ID:
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
            problem = _parse_problem(n.code or "")
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
        if not _identifier(i.name):
            add("", f"input {i.name!r} is not a Python identifier")
        elif i.name in names:
            add("", f"two inputs are called {i.name!r}")
        elif i.default is not None and (p := type_problem(i.type, i.default)):
            add("", f"input {i.name}: default {p}")
        names.add(i.name)
    return names


# --------------------------------------------------------------------------- rendering


def _render_code(
    tpl: NodeTemplate,
    params: Mapping[str, Any],
    bind: Mapping[str, str],
    ins: Mapping[str, str],
    outs: Mapping[str, str],
    node_id: str,
) -> str:
    def sub(match: re.Match[str]) -> str:
        scope, name = _resolve_placeholder(tpl, match.group(1))
        if scope == "in":
            return ins.get(name, "None")
        if scope == "out":
            return outs[name]
        if name == "node" and name not in tpl.params:
            return literal(node_id)
        if name in bind:
            return bind[name]
        value = params.get(name, tpl.params[name].default)
        if tpl.params[name].type == "expression" and isinstance(value, str) and value.strip():
            return f"({value.strip()})"
        return literal(value)

    return _PLACEHOLDER.sub(sub, tpl.code)


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
        code = _render_code(
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
    if not _identifier(stem) or stem in RESERVED_IDS:
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
    if not _identifier(node.id) or node.id in taken or node.id in RESERVED_IDS:
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


# --------------------------------------------------------------------------- layout

LAYER_DX = 260.0
ROW_DY = 120.0
WRAP = 5  # columns before a long graph wraps to the next band
BAND_GAP = 60.0


def auto_layout(graph: Graph, catalog: Catalog) -> Graph:
    """The graph with every node placed: a column per layer (longest path from a source),
    rows ordered by where their predecessors sit; past WRAP columns the layers go on in a
    band below (a long chain reads like lines of text). Nodes of a cycle go after the rest."""
    try:
        order = topological_order(graph)
    except GraphError:
        order = [n.id for n in graph.nodes]
    preds: dict[str, list[str]] = {nid: [] for nid in order}
    for e in graph.edges:
        if e.source in preds and e.target in preds:
            preds[e.target].append(e.source)
    layer: dict[str, int] = {}
    for nid in order:
        layer[nid] = 1 + max((layer[p] for p in preds[nid] if p in layer), default=-1)
    columns: dict[int, list[str]] = {}
    for nid in order:
        columns.setdefault(layer[nid], []).append(nid)
    row: dict[str, float] = {}
    for col in sorted(columns):
        members = columns[col]

        def key(nid: str, members: list[str] = members) -> tuple[float, int]:
            ps = [row[p] for p in preds[nid] if p in row]
            return (sum(ps) / len(ps) if ps else float(members.index(nid)), members.index(nid))

        for r, nid in enumerate(sorted(members, key=key)):
            row[nid] = float(r)
    # a long chain wraps like text: WRAP columns per band, bands one under the other
    bands: dict[int, float] = {}
    for col, members in columns.items():
        band = col // WRAP
        bands[band] = max(bands.get(band, 0.0), float(len(members)))
    top, offsets = 40.0, {}
    for band in sorted(bands):
        offsets[band] = top
        top += ROW_DY * bands[band] + BAND_GAP
    placed = {
        nid: (
            40.0 + LAYER_DX * (layer[nid] % WRAP),
            offsets[layer[nid] // WRAP] + ROW_DY * row[nid],
        )
        for nid in order
    }
    nodes = [n.model_copy(update={"x": placed[n.id][0], "y": placed[n.id][1]}) for n in graph.nodes]
    return graph.model_copy(update={"nodes": nodes})


def graph_json(graph: Graph) -> dict[str, Any]:
    """The graph as the editor's ``graph`` trait holds it."""
    data: dict[str, Any] = json.loads(graph.model_dump_json())
    return data
