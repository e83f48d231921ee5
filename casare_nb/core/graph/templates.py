"""Node templates: what a node takes and gives and the code of its cell, validated from
parsed YAML/JSON (:func:`template_from_data`); parameter values checked by type
(:func:`type_problem`) and rendered into code (:func:`render_code`); the built-in code and
note nodes; the :class:`Catalog` an editor offers. Pure: stdlib + pydantic.
"""

from __future__ import annotations

import ast
import keyword
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from casare_nb.core.errors import CasareError, one_line

CODE_TEMPLATE = "code.python"
NOTE_TEMPLATE = "note.markdown"

ParamType = Literal[
    "string", "text", "integer", "number", "boolean", "choice", "list", "mapping", "expression"
]
InputType = Literal["string", "integer", "number", "boolean", "list", "mapping"]

_TEMPLATE_ID = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.S)
_PLACE_BODY = re.compile(r"^\s*(?:(in|out)\.)?([A-Za-z_]\w*)\s*$")


class TemplateError(CasareError):
    """A node template that does not load; ``str(err)`` is the one-line reason."""


def is_identifier(name: str) -> bool:
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
                if not is_identifier(name):
                    raise ValueError(f"{kind} name {name!r} is not a Python identifier")
        for name in self.outputs:
            if not is_identifier(name):
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
        sample = render_code(
            self,
            {n: _sample(p) for n, p in self.params.items()},
            {},
            {p: f"in_{p}" for p in self.inputs},
            {p: f"out_{p}" for p in self.outputs},
            "node_1",
        )
        problem = parse_problem(sample)
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


def parse_problem(source: str) -> str | None:
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


def render_code(
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
