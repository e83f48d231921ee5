"""Notebook parameters: the ``parameters``-tagged cell *is* the schema, papermill-style.

The cell is parsed with :mod:`ast` (never executed). Each top-level assignment declares a
parameter; its annotation is evaluated against an allow-list (anything else means ``Any``).
Supplied values are validated with a generated pydantic model, rendered as Python literals for
the injected cell (secrets go to a separate, never-stored source), redacted for the history and
scrubbed out of stored text.

Pure: stdlib + pydantic only, no I/O.
"""

from __future__ import annotations

import ast
import copy
import json
import keyword
import math
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any, Generic, Literal, TypeVar, Union, cast, get_args, get_origin
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, create_model

from casare_nb.core.errors import CasareError

__all__ = [
    "ParamSchema",
    "ParamSpec",
    "ParameterError",
    "Secret",
    "ValidatedParams",
    "parameterize",
    "parse_cli_pairs",
    "read_schema",
    "redact",
    "render_injection",
    "scrub",
]

T = TypeVar("T")

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"
REDACTED = "***"

_NoneType = type(None)


class ParameterError(CasareError, ValueError):
    """A parameter problem the user must fix; ``str(err)`` is one line."""


class Secret(Generic[T]):
    """Marks a parameter as secret: ``token: Secret[str] = ""`` in the parameters cell.

    Only a marker: at run time ``Secret[str]`` is a harmless generic alias, so the cell still
    executes in a kernel. Secret values are never stored, shown or put in the notebook.
    """


class ParamSpec(BaseModel):
    """One parameter declared in the parameters cell."""

    model_config = ConfigDict(frozen=True)

    name: str
    annotation: str | None = None
    type_repr: str = "Any"
    required: bool = False
    has_default: bool = False
    default: Any = None
    default_source: str | None = None
    secret: bool = False
    choices: list[Any] | None = None
    line: int = 0


class ValidatedParams(BaseModel):
    """Values coerced to their declared types (only the supplied ones) and lenient warnings."""

    values: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)


class ParamSchema(BaseModel):
    """The parameters a notebook takes, in declaration order."""

    has_cell: bool
    cell_index: int | None = None
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    # Names listed in nb.metadata.casare.secrets that the parameters cell does not declare;
    # still treated as secret so a lenient run never shows them.
    extra_secret_names: list[str] = Field(default_factory=list)

    def names(self) -> list[str]:
        """Parameter names in declaration order."""
        return list(self.params)

    def secret_names(self) -> set[str]:
        """Names whose values must never be shown or stored."""
        return {n for n, s in self.params.items() if s.secret} | set(self.extra_secret_names)

    def validate_values(
        self,
        values: Mapping[str, Any],
        *,
        strict: bool = True,
        from_strings: bool = False,
        text_values: Mapping[str, str] | None = None,
    ) -> ValidatedParams:
        """Validate and coerce supplied values against the schema.

        ``text_values`` are more values given as raw CLI strings (``-p NAME VALUE``), read as
        with ``from_strings`` and winning over ``values`` of the same name; the two are checked
        together, so a required parameter may come from either.

        ``strict``: unknown, missing-required or ill-typed values raise :class:`ParameterError`;
        otherwise they become warnings and the raw value is kept. ``from_strings``: the values
        are raw CLI strings; str-like fields (str, secrets, str Literals, dates, paths...) take
        them as is, containers ``json.loads`` them (lists fall back to splitting on commas) and
        ``Any`` fields infer like papermill (int, float, True/False/None, else str). Values are
        always data, never code. Defaults are never filled in.
        """
        problems: list[str] = []
        out: dict[str, Any] = {}
        texts = dict(text_values or {})
        if from_strings:
            texts = {**dict(values), **texts}
            values = {}
        values = {**{k: v for k, v in values.items() if k not in texts}, **texts}
        if not self.has_cell:
            if not values:
                return ValidatedParams()
            msg = (
                "notebook has no 'parameters' cell, so it takes no parameters "
                f"(got: {', '.join(values)})"
            )
            if strict:
                raise ParameterError(msg)
            kept = {k: _raw_kept(v, k in texts) for k, v in values.items()}
            return ValidatedParams(values=kept, warnings=[msg])

        model = self._model(for_validation=True)
        fields = self._field_names()
        secrets = self.secret_names()
        for name, raw in values.items():
            spec = self.params.get(name)
            if spec is None:
                declared = ", ".join(self.params) or "none"
                problems.append(f"unknown parameter {name!r} (declared: {declared})")
                out[name] = _raw_kept(raw, name in texts)
                continue
            value: Any = raw.get_secret_value() if isinstance(raw, SecretStr) else raw
            if name in texts and isinstance(value, str):
                value = _from_cli(value, _spec_type(spec))
            try:
                validated = model.model_validate({name: value})
            except ValidationError:
                problems.append(_type_problem(spec, raw, name in secrets))
                out[name] = value if isinstance(raw, SecretStr) else raw
                continue
            out[name] = getattr(validated, fields[name])
        for name, spec in self.params.items():
            if spec.required and name not in values:
                problems.append(f"missing required parameter {name!r} ({spec.type_repr})")
        if problems and strict:
            raise ParameterError("; ".join(problems))
        return ValidatedParams(values=out, warnings=problems)

    def json_schema(self) -> dict[str, Any]:
        """JSON schema of the generated pydantic model; secret fields are ``writeOnly``."""
        return self._model(for_validation=False).model_json_schema()

    # -- internals ----------------------------------------------------------------------------

    def _field_names(self) -> dict[str, str]:
        # Field names are synthetic (p0, p1...) and the real name is the alias, so parameter
        # names like ``_x``, ``json`` or ``model_config`` never clash with pydantic internals.
        return {name: f"p{i}" for i, name in enumerate(self.params)}

    def _model(self, *, for_validation: bool) -> type[BaseModel]:
        field_names = self._field_names()
        secrets = self.secret_names()
        definitions: dict[str, Any] = {}
        for name, spec in self.params.items():
            tp = _spec_type(spec)
            secret = name in secrets
            description: str | None = None
            if for_validation:
                info = Field(default=None, alias=name, title=name)
            elif spec.required:
                info = Field(alias=name, title=name, json_schema_extra=_schema_extra(secret, False))
            else:
                literal = _default_is_literal(spec)
                show_default = literal and not secret
                if not literal and spec.default_source is not None:
                    description = f"default computed by the notebook: {spec.default_source}"
                info = Field(
                    default=spec.default if show_default else None,
                    alias=name,
                    title=name,
                    description=description,
                    json_schema_extra=_schema_extra(secret, not show_default),
                )
            definitions[field_names[name]] = (tp, info)
        factory = cast(Callable[..., type[BaseModel]], create_model)
        return factory(
            "NotebookParameters",
            __config__=ConfigDict(title="Parameters", arbitrary_types_allowed=True),
            **definitions,
        )


# ---------------------------------------------------------------------------------------------
# read_schema
# ---------------------------------------------------------------------------------------------


def read_schema(nb: Mapping[str, Any]) -> ParamSchema:
    """Read the parameter schema from a notebook's ``parameters``-tagged code cell.

    No such cell gives ``ParamSchema(has_cell=False)``. Raises :class:`ParameterError` for a
    cell that does not parse, a name declared twice, a reserved (``__``) name, or more than
    one tagged cell.
    """
    secret_meta = _metadata_secrets(nb)
    indexes = _tagged_code_cells(nb, PARAMETERS_TAG)
    if len(indexes) > 1:
        where = ", ".join(str(i) for i in indexes)
        raise ParameterError(
            f"notebook has {len(indexes)} cells tagged 'parameters' (cells {where}); keep only one"
        )
    if not indexes:
        return ParamSchema(has_cell=False, extra_secret_names=sorted(secret_meta))
    index = indexes[0]
    cells = _cells(nb)
    source = _source_text(cells[index])
    specs = _parse_parameters(source, secret_meta)
    extra = sorted(set(secret_meta) - set(specs))
    return ParamSchema(has_cell=True, cell_index=index, params=specs, extra_secret_names=extra)


def _cells(nb: Mapping[str, Any]) -> list[Any]:
    cells = nb.get("cells")
    return list(cells) if isinstance(cells, list) else []


def _tags(cell: Any) -> list[str]:
    if not isinstance(cell, Mapping):
        return []
    metadata = cell.get("metadata")
    tags = metadata.get("tags") if isinstance(metadata, Mapping) else None
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def _tagged_code_cells(nb: Mapping[str, Any], tag: str) -> list[int]:
    return [
        i
        for i, cell in enumerate(_cells(nb))
        if isinstance(cell, Mapping) and cell.get("cell_type") == "code" and tag in _tags(cell)
    ]


def _source_text(cell: Mapping[str, Any]) -> str:
    source = cell.get("source", "")
    if isinstance(source, list):
        return "".join(str(s) for s in source)
    return str(source)


def _metadata_secrets(nb: Mapping[str, Any]) -> list[str]:
    metadata = nb.get("metadata")
    casare = metadata.get("casare") if isinstance(metadata, Mapping) else None
    secrets = casare.get("secrets") if isinstance(casare, Mapping) else None
    if secrets is None:
        return []
    if not isinstance(secrets, list) or not all(isinstance(s, str) for s in secrets):
        raise ParameterError(
            f"notebook metadata casare.secrets must be a list of names, got {_short_repr(secrets)}"
        )
    return list(secrets)


_MAGIC_LINE = re.compile(r"^[ \t]*[%!]")


def _parse_parameters(source: str, secret_meta: Collection[str]) -> dict[str, ParamSpec]:
    # IPython magics / shell lines (``%matplotlib inline``) are blanked so line numbers stay.
    cleaned = "\n".join("" if _MAGIC_LINE.match(ln) else ln for ln in source.split("\n"))
    try:
        tree = ast.parse(cleaned)
    except SyntaxError as exc:
        raise ParameterError(
            f"parameters cell does not parse: line {exc.lineno}: {exc.msg}"
        ) from None
    except ValueError as exc:  # e.g. null bytes
        raise ParameterError(f"parameters cell does not parse: {exc}") from None

    builder = _SpecBuilder(cleaned, set(secret_meta))
    for stmt in tree.body:
        if isinstance(stmt, ast.AnnAssign):
            if isinstance(stmt.target, ast.Name):
                builder.declare_annotated(stmt.target.id, stmt.lineno, stmt.annotation, stmt.value)
        elif isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                builder.bind(target, stmt.value, _NOT_LITERAL, stmt.lineno)
    return builder.specs


class _NotLiteral:
    def __repr__(self) -> str:
        return "<not a literal>"


_NOT_LITERAL: Any = _NotLiteral()


class _SpecBuilder:
    def __init__(self, source: str, secret_meta: set[str]) -> None:
        self.source = source
        self.secret_meta = secret_meta
        self.specs: dict[str, ParamSpec] = {}

    def _segment(self, node: ast.AST) -> str:
        return ast.get_source_segment(self.source, node) or ast.unparse(node)

    def _add(self, spec: ParamSpec) -> None:
        name = spec.name
        if name.startswith("__"):
            raise ParameterError(
                f"parameter name {name!r} is not allowed (names starting with '__' are reserved)"
            )
        if name in self.specs:
            first = self.specs[name].line
            raise ParameterError(
                f"parameter {name!r} is declared twice in the parameters cell "
                f"(lines {first} and {spec.line})"
            )
        self.specs[name] = spec

    def declare_annotated(
        self, name: str, line: int, annotation: ast.expr, value: ast.expr | None
    ) -> None:
        ann = _evaluate_annotation_node(annotation)
        secret = ann.secret or name in self.secret_meta
        if value is None:
            self._add(
                ParamSpec(
                    name=name,
                    annotation=self._segment(annotation),
                    type_repr=ann.repr,
                    required=True,
                    has_default=False,
                    secret=secret,
                    choices=_choices(ann.tp),
                    line=line,
                )
            )
            return
        literal = _literal_value(value)
        self._add(
            ParamSpec(
                name=name,
                annotation=self._segment(annotation),
                type_repr=ann.repr,
                required=False,
                has_default=True,
                default=None if literal is _NOT_LITERAL else literal,
                default_source=self._segment(value),
                secret=secret,
                choices=_choices(ann.tp),
                line=line,
            )
        )

    def _declare_plain(self, name: str, line: int, literal: Any, source: str | None) -> None:
        type_repr = "Any" if literal is _NOT_LITERAL else _inferred_type_name(literal)
        self._add(
            ParamSpec(
                name=name,
                annotation=None,
                type_repr=type_repr,
                required=False,
                has_default=True,
                default=None if literal is _NOT_LITERAL else literal,
                default_source=source,
                secret=name in self.secret_meta,
                choices=None,
                line=line,
            )
        )

    def bind(self, target: ast.expr, node: ast.expr | None, literal: Any, line: int) -> None:
        """Declare the names of one assignment target; ``node`` or ``literal`` is the value."""
        if node is not None:
            literal = _literal_value(node)
        source = self._segment(node) if node is not None else _source_of_literal(literal)
        if isinstance(target, ast.Name):
            self._declare_plain(target.id, target.lineno, literal, source)
            return
        if not isinstance(target, ast.Tuple | ast.List):
            return  # attribute / subscript targets declare nothing
        elts = target.elts
        if not any(isinstance(e, ast.Starred) for e in elts):
            if (
                isinstance(node, ast.Tuple | ast.List)
                and len(node.elts) == len(elts)
                and not any(isinstance(e, ast.Starred) for e in node.elts)
            ):
                for sub_target, sub_node in zip(elts, node.elts, strict=True):
                    self.bind(sub_target, sub_node, _NOT_LITERAL, line)
                return
            if isinstance(literal, list | tuple) and len(literal) == len(elts):
                for sub_target, item in zip(elts, literal, strict=True):
                    self.bind(sub_target, None, item, line)
                return
        for sub in ast.walk(target):
            if isinstance(sub, ast.Name):
                self._declare_plain(sub.id, sub.lineno, _NOT_LITERAL, source)


def _source_of_literal(value: Any) -> str | None:
    if value is _NOT_LITERAL:
        return None
    try:
        return _render(value, "<default>", set())
    except ParameterError:
        return repr(value)


_INFERRED_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "bool"),
    (int, "int"),
    (float, "float"),
    (str, "str"),
    (bytes, "bytes"),
    (list, "list"),
    (dict, "dict"),
    (tuple, "tuple"),
    (set, "set"),
    (datetime, "datetime"),
    (date, "date"),
    (time, "time"),
    (timedelta, "timedelta"),
    (Path, "Path"),
    (Decimal, "Decimal"),
)


def _inferred_type_name(value: Any) -> str:
    """papermill-style inference of a plain assignment's type from its literal default."""
    for tp, name in _INFERRED_NAMES:
        if isinstance(value, tp):
            return name
    return "Any"


# ---------------------------------------------------------------------------------------------
# literal defaults
# ---------------------------------------------------------------------------------------------

_CONSTRUCTORS: dict[str, Callable[..., Any]] = {
    "date": date,
    "datetime.date": date,
    "dt.date": date,
    "datetime": datetime,
    "datetime.datetime": datetime,
    "dt.datetime": datetime,
    "time": time,
    "datetime.time": time,
    "dt.time": time,
    "timedelta": timedelta,
    "datetime.timedelta": timedelta,
    "dt.timedelta": timedelta,
    "Path": Path,
    "pathlib.Path": Path,
    "Decimal": Decimal,
    "decimal.Decimal": Decimal,
}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _literal_value(node: ast.expr) -> Any:
    """The value of a literal expression, or ``_NOT_LITERAL``. Never executes user code."""
    try:
        return _literal(node)
    except (ValueError, TypeError, OverflowError, ArithmeticError, RecursionError):
        return _NOT_LITERAL


def _literal(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        if node.value is Ellipsis:
            raise ValueError("ellipsis")
        return node.value
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e) for e in node.elts)
    if isinstance(node, ast.Set):
        return {_literal(e) for e in node.elts}
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError("dict unpacking")
        return {
            _literal(cast(ast.expr, k)): _literal(v)
            for k, v in zip(node.keys, node.values, strict=True)
        }
    if isinstance(node, ast.Call):
        func = _dotted(node.func)
        if func == "set" and not node.args and not node.keywords:
            return set()
        ctor = _CONSTRUCTORS.get(func or "")
        if ctor is None or any(k.arg is None for k in node.keywords):
            raise ValueError("not a literal call")
        args = [_scalar(a) for a in node.args]
        kwargs = {cast(str, k.arg): _scalar(k.value) for k in node.keywords}
        return ctor(*args, **kwargs)
    # numbers with a sign, complex literals (1+2j): ast.literal_eval knows those
    if isinstance(node, ast.UnaryOp | ast.BinOp):
        return ast.literal_eval(node)
    raise ValueError("not a literal")


def _scalar(node: ast.expr) -> Any:
    value = _literal(node)
    if not isinstance(value, int | float | str):
        raise ValueError("constructor arguments must be numbers or strings")
    return value


def _default_is_literal(spec: ParamSpec) -> bool:
    """Whether the spec's default is a known literal (a computed default is stored as None)."""
    if not spec.has_default:
        return False
    if spec.default is not None:
        return True
    if spec.default_source is None:
        return False
    try:
        node = ast.parse(spec.default_source.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        return False
    return _literal_value(node) is None


# ---------------------------------------------------------------------------------------------
# annotations (allow-listed, never evaluated by Python)
# ---------------------------------------------------------------------------------------------


class _Unsupported(Exception):
    """An annotation outside the allow-list."""


@dataclass(frozen=True)
class _Ann:
    tp: Any
    repr: str
    secret: bool = False
    members: tuple[_Ann, ...] = ()  # the flattened members of a union


_SIMPLE_TYPES: dict[str, tuple[Any, str]] = {
    "str": (str, "str"),
    "int": (int, "int"),
    "float": (float, "float"),
    "bool": (bool, "bool"),
    "bytes": (bytes, "bytes"),
    "list": (list, "list"),
    "dict": (dict, "dict"),
    "tuple": (tuple, "tuple"),
    "set": (set, "set"),
    "Any": (Any, "Any"),
    "List": (list, "list"),
    "Dict": (dict, "dict"),
    "Tuple": (tuple, "tuple"),
    "Set": (set, "set"),
    "date": (date, "date"),
    "datetime": (datetime, "datetime"),
    "time": (time, "time"),
    "timedelta": (timedelta, "timedelta"),
    "Path": (Path, "Path"),
    "pathlib.Path": (Path, "Path"),
    "Decimal": (Decimal, "Decimal"),
    "decimal.Decimal": (Decimal, "Decimal"),
}
for _mod in ("datetime", "dt"):
    for _name in ("date", "datetime", "time", "timedelta"):
        _SIMPLE_TYPES[f"{_mod}.{_name}"] = _SIMPLE_TYPES[_name]

_TYPING_NAMES = {"Any", "Literal", "Optional", "Union", "List", "Dict", "Tuple", "Set"}
_TYPING_PREFIXES = ("typing.", "t.", "typing_extensions.")
_SECRET_MARKERS = {"Secret", "SecretStr"}


def _normalise_name(dotted: str) -> str:
    for prefix in _TYPING_PREFIXES:
        if dotted.startswith(prefix) and dotted[len(prefix) :] in _TYPING_NAMES:
            return dotted[len(prefix) :]
    last = dotted.rsplit(".", 1)[-1]
    if last in _SECRET_MARKERS:  # casare_nb.core.params.Secret, pydantic.SecretStr...
        return last
    return dotted


def _evaluate_annotation_node(node: ast.expr) -> _Ann:
    try:
        return _ann(node)
    except (_Unsupported, RecursionError):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.strip()
        else:
            text = ast.unparse(node)
        return _Ann(Any, text, _mentions_secret(node))


@lru_cache(maxsize=512)
def _resolve_type(type_repr: str) -> Any:
    """The Python type a ``type_repr`` stands for (``Any`` when not on the allow-list)."""
    try:
        node = ast.parse(type_repr.strip(), mode="eval").body
        return _ann(node).tp
    except (SyntaxError, ValueError, _Unsupported, RecursionError):
        return Any


def _mentions_secret(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in _SECRET_MARKERS:
            return True
        if isinstance(sub, ast.Attribute) and sub.attr in _SECRET_MARKERS:
            return True
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            try:
                inner = ast.parse(sub.value.strip(), mode="eval")
            except (SyntaxError, ValueError):
                continue
            if _mentions_secret(inner):
                return True
    return False


def _ann(node: ast.expr) -> _Ann:
    if isinstance(node, ast.Constant):
        if node.value is None:
            return _Ann(_NoneType, "None")
        if isinstance(node.value, str):  # string annotation: "Secret[str]"
            try:
                inner = ast.parse(node.value.strip(), mode="eval").body
            except (SyntaxError, ValueError):
                raise _Unsupported from None
            return _ann(inner)
        raise _Unsupported
    if isinstance(node, ast.Name | ast.Attribute):
        dotted = _dotted(node)
        if dotted is None:
            raise _Unsupported
        name = _normalise_name(dotted)
        if name == "Secret":
            return _Ann(Any, "Secret", True)
        if name == "SecretStr":
            return _Ann(str, "SecretStr", True)
        if name in _SIMPLE_TYPES:
            tp, text = _SIMPLE_TYPES[name]
            return _Ann(tp, text)
        raise _Unsupported
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([_ann(node.left), _ann(node.right)])
    if isinstance(node, ast.Subscript):
        return _subscript(node)
    raise _Unsupported


def _subscript(node: ast.Subscript) -> _Ann:
    dotted = _dotted(node.value)
    if dotted is None:
        raise _Unsupported
    name = _normalise_name(dotted)
    args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
    if name == "Literal":
        values = [_literal_arg(a) for a in args]
        tp = cast(Any, Literal)[tuple(values)]
        return _Ann(tp, "Literal[" + ", ".join(repr(v) for v in values) + "]")
    if name == "Secret":
        if len(args) != 1:
            raise _Unsupported
        inner = _ann(args[0])
        return _Ann(inner.tp, f"Secret[{inner.repr}]", True)
    if name == "Optional":
        if len(args) != 1:
            raise _Unsupported
        return _union([_ann(args[0]), _Ann(_NoneType, "None")])
    if name == "Union":
        return _union([_ann(a) for a in args])
    base = _SIMPLE_TYPES.get(name, (None, ""))[0]
    if base in (list, set) and len(args) == 1:
        inner = _ann(args[0])
        text = "list" if base is list else "set"
        return _Ann(cast(Any, base)[inner.tp], f"{text}[{inner.repr}]", inner.secret)
    if base is dict and len(args) == 2:
        key, value = _ann(args[0]), _ann(args[1])
        return _Ann(
            cast(Any, dict)[key.tp, value.tp],
            f"dict[{key.repr}, {value.repr}]",
            key.secret or value.secret,
        )
    if base is tuple:
        if len(args) == 2 and isinstance(args[1], ast.Constant) and args[1].value is Ellipsis:
            inner = _ann(args[0])
            tp = cast(Any, tuple)[inner.tp, ...]
            return _Ann(tp, f"tuple[{inner.repr}, ...]", inner.secret)
        items = [_ann(a) for a in args]
        return _Ann(
            cast(Any, tuple)[tuple(i.tp for i in items)],
            "tuple[" + ", ".join(i.repr for i in items) + "]",
            any(i.secret for i in items),
        )
    raise _Unsupported


def _literal_arg(node: ast.expr) -> Any:
    value = _literal_value(node)
    if value is _NOT_LITERAL or not (value is None or isinstance(value, str | int | bytes)):
        raise _Unsupported
    return value


def _union(members: list[_Ann]) -> _Ann:
    flat: list[_Ann] = []
    for m in members:
        flat.extend(m.members or (m,))
    unique: list[_Ann] = []
    for m in flat:
        if all(m.repr != u.repr for u in unique):
            unique.append(m)
    if len(unique) == 1:
        return unique[0]
    tp = cast(Any, Union)[tuple(m.tp for m in unique)]
    text = " | ".join(m.repr for m in unique)
    return _Ann(tp, text, any(m.secret for m in unique), tuple(unique))


def _union_args(tp: Any) -> tuple[Any, ...]:
    if get_origin(tp) is Union:
        return get_args(tp)
    return (tp,)


def _choices(tp: Any) -> list[Any] | None:
    literals = [m for m in _union_args(tp) if get_origin(m) is Literal]
    others = [m for m in _union_args(tp) if get_origin(m) is not Literal and m is not _NoneType]
    if len(literals) == 1 and not others:
        return list(get_args(literals[0]))
    return None


def _spec_type(spec: ParamSpec) -> Any:
    """The Python type a spec validates against (``x: int = None`` also accepts None)."""
    tp = _resolve_type(spec.type_repr)
    if (
        spec.has_default
        and spec.default is None
        and spec.default_source == "None"
        and tp is not Any
        and _NoneType not in _union_args(tp)
    ):
        return cast(Any, Union)[tp, None]
    return tp


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------


def _schema_extra(secret: bool, drop_default: bool) -> Callable[[dict[str, Any]], None] | None:
    if not secret and not drop_default:
        return None

    def extra(schema: dict[str, Any]) -> None:
        if drop_default:
            schema.pop("default", None)
        if secret:
            schema["writeOnly"] = True

    return extra


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_problem(spec: ParamSpec, raw: Any, secret: bool) -> str:
    if spec.choices is not None:
        expected = "one of " + ", ".join(repr(c) for c in spec.choices)
    else:
        expected = spec.type_repr
    got = (
        f"a value of type {type(raw).__name__} (not shown: secret)" if secret else _short_repr(raw)
    )
    return f"parameter {spec.name!r}: expected {expected}, got {got}"


def _infer_cli(raw: str) -> Any:
    """papermill's CLI inference for untyped values: True/False/None, int, float, else str."""
    if raw == "True":
        return True
    if raw == "False":
        return False
    if raw == "None":
        return None
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw


def _raw_kept(value: Any, from_strings: bool) -> Any:
    return _infer_cli(value) if from_strings and isinstance(value, str) else value


_CONTAINERS = (list, dict, tuple, set, frozenset)


def _container_kind(tp: Any) -> type | None:
    origin = get_origin(tp) or tp
    return origin if origin in _CONTAINERS else None


def _is_str_like(tp: Any) -> bool:
    if get_origin(tp) is Literal:
        return all(isinstance(v, str) for v in get_args(tp))
    return tp in (str, bytes, date, datetime, time, timedelta, Path, Decimal)


def _from_cli(raw: str, tp: Any) -> Any:
    """Turn one raw CLI string into the value to validate for a field of type ``tp``."""
    members = _union_args(tp)
    non_none = [m for m in members if m is not _NoneType]
    if not non_none or Any in non_none:
        return _infer_cli(raw)
    if (
        _NoneType in members
        and raw.strip() in ("None", "null")
        and not any(_is_str_like(m) for m in non_none)
    ):
        return None
    for member in non_none:  # Literal[1, 2] / Literal[True]: match "1" / "True" to the choice
        if get_origin(member) is Literal:
            for choice in get_args(member):
                if isinstance(choice, str) and choice == raw:
                    return raw
            for choice in get_args(member):
                if not isinstance(choice, str) and raw in (repr(choice), str(choice)):
                    return choice
    kinds = {_container_kind(m) for m in non_none}
    if None in kinds:
        return raw  # scalars: pydantic's lax mode parses "10", "2026-11-01", "true"...
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = _NOT_LITERAL
    if isinstance(parsed, dict) and dict in kinds:
        return parsed
    sequences = kinds & {list, tuple, set, frozenset}
    if isinstance(parsed, list) and sequences:
        return parsed
    if sequences:
        return [] if not raw.strip() else [item.strip() for item in raw.split(",")]
    return raw


# ---------------------------------------------------------------------------------------------
# CLI pairs
# ---------------------------------------------------------------------------------------------


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ParameterError(f"{name!r} is not a valid parameter name")


def parse_cli_pairs(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Collect ``-p NAME VALUE`` pairs into a dict, rejecting repeated or invalid names."""
    out: dict[str, str] = {}
    for name, raw in pairs:
        _check_name(name)
        if name in out:
            raise ParameterError(f"parameter {name!r} given twice")
        out[name] = raw
    return out


# ---------------------------------------------------------------------------------------------
# redaction
# ---------------------------------------------------------------------------------------------


def redact(values: Mapping[str, Any], secret_names: Collection[str]) -> dict[str, Any]:
    """JSON-serialisable copy of ``values`` with every secret replaced by ``"***"``."""
    return {
        str(name): REDACTED if name in secret_names else _jsonable(value, set())
        for name, value in values.items()
    }


def _jsonable(value: Any, seen: set[int]) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, PurePath | Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, SecretStr):
        return REDACTED
    if id(value) in seen:
        return "<recursion>"
    if isinstance(value, Mapping):
        inner = seen | {id(value)}
        return {str(k): _jsonable(v, inner) for k, v in value.items()}
    if isinstance(value, list | tuple):
        inner = seen | {id(value)}
        return [_jsonable(v, inner) for v in value]
    if isinstance(value, set | frozenset):
        inner = seen | {id(value)}
        return sorted((_jsonable(v, inner) for v in value), key=repr)
    return repr(value)


def scrub(text: str, secret_values: Iterable[str]) -> str:
    """Replace every occurrence of each non-empty secret string in ``text`` by ``"***"``.

    The ``repr``-escaped form of a secret (as it shows in tracebacks) is scrubbed too.
    """
    needles: set[str] = set()
    for secret in secret_values:
        secret = str(secret)
        if secret:
            needles.add(secret)
            escaped = repr(secret)[1:-1]
            if escaped:
                needles.add(escaped)
    if not needles or not text:
        return text
    pattern = "|".join(re.escape(n) for n in sorted(needles, key=len, reverse=True))
    return re.sub(pattern, REDACTED, text)


# ---------------------------------------------------------------------------------------------
# injection
# ---------------------------------------------------------------------------------------------


def render_injection(values: Mapping[str, Any], secret_names: Collection[str]) -> tuple[str, str]:
    """Render values as Python source: ``(public_source, secret_source)``.

    ``public_source`` is papermill's injected cell (``# Parameters`` then ``name = literal``),
    with a comment line instead of each secret; ``secret_source`` assigns the secrets and is
    meant to be executed silently, never stored. Values become literals only (no imports);
    anything that is not a plain data value raises :class:`ParameterError`.
    """
    public = ["# Parameters\n"]
    secret: list[str] = []
    for name, value in values.items():
        _check_name(name)
        if name.startswith("__"):
            raise ParameterError(f"{name!r} is not a valid parameter name (reserved)")
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        literal = _render(value, name, set())
        if name in secret_names:
            public.append(f"# {name}: secret parameter, injected at run time (not shown)\n")
            secret.append(f"{name} = {literal}\n")
        else:
            public.append(f"{name} = {literal}\n")
    return "".join(public), "".join(secret)


_DT = "__import__('datetime')"


def _render(value: Any, name: str, seen: set[int]) -> str:
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, str):
        return str.__repr__(value)
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        return _render_float(value)
    if isinstance(value, complex):
        return f"complex({_render_float(value.real)}, {_render_float(value.imag)})"
    if isinstance(value, bytes):
        return bytes.__repr__(value)
    if isinstance(value, datetime):
        parts = [value.year, value.month, value.day, value.hour, value.minute, value.second]
        args = ", ".join(str(p) for p in parts)
        if value.microsecond:
            args += f", {value.microsecond}"
        return f"{_DT}.datetime({args}{_tz_args(value, name)})"
    if isinstance(value, date):
        return f"{_DT}.date({value.year}, {value.month}, {value.day})"
    if isinstance(value, time):
        args = f"{value.hour}, {value.minute}, {value.second}, {value.microsecond}"
        return f"{_DT}.time({args}{_tz_args(value, name)})"
    if isinstance(value, timedelta):
        return _render_timedelta(value)
    if isinstance(value, Decimal):
        return f"__import__('decimal').Decimal({str(value)!r})"
    if isinstance(value, PurePath):
        cls = "Path" if isinstance(value, Path) else type(value).__name__
        return f"__import__('pathlib').{cls}({str(value)!r})"
    if isinstance(value, list | tuple | set | frozenset | dict):
        if id(value) in seen:
            raise ParameterError(f"parameter {name!r}: value contains itself, cannot inject it")
        inner = seen | {id(value)}
        if isinstance(value, dict):
            items = (
                f"{_render(k, name, inner)}: {_render(v, name, inner)}" for k, v in value.items()
            )
            return "{" + ", ".join(items) + "}"
        rendered = [_render(v, name, inner) for v in value]
        if isinstance(value, list):
            return "[" + ", ".join(rendered) + "]"
        if isinstance(value, tuple):
            return "(" + ", ".join(rendered) + ("," if len(rendered) == 1 else "") + ")"
        body = "{" + ", ".join(sorted(rendered)) + "}"
        if isinstance(value, frozenset):
            return f"frozenset({body})" if rendered else "frozenset()"
        return body if rendered else "set()"
    raise ParameterError(
        f"parameter {name!r}: cannot inject a value of type {type(value).__name__}"
    )


def _render_float(value: float) -> str:
    if math.isnan(value):
        return "float('nan')"
    if math.isinf(value):
        return "float('inf')" if value > 0 else "float('-inf')"
    return float.__repr__(value)


def _render_timedelta(value: timedelta) -> str:
    return (
        f"{_DT}.timedelta(days={value.days}, seconds={value.seconds}, "
        f"microseconds={value.microseconds})"
    )


def _tz_args(value: datetime | time, name: str) -> str:
    tz = value.tzinfo
    fold = ", fold=1" if value.fold else ""
    if tz is None:
        return fold
    return f", tzinfo={_render_tz(tz, name)}{fold}"


def _render_tz(tz: tzinfo, name: str) -> str:
    if tz is UTC:
        return f"{_DT}.timezone.utc"
    if isinstance(tz, timezone):
        offset = tz.utcoffset(None)
        return f"{_DT}.timezone({_render_timedelta(offset)})"
    if isinstance(tz, ZoneInfo) and tz.key:
        return f"__import__('zoneinfo').ZoneInfo({tz.key!r})"
    raise ParameterError(
        f"parameter {name!r}: cannot inject a datetime with time zone {type(tz).__name__}"
    )


def _new_cell_id(taken: Collection[str]) -> str:
    while True:
        cell_id = uuid.uuid4().hex[:12]
        if cell_id not in taken:
            return cell_id


def parameterize(
    nb: Mapping[str, Any], values: Mapping[str, Any], schema: ParamSchema
) -> dict[str, Any]:
    """Deep copy of ``nb`` with papermill's ``injected-parameters`` cell for ``values``.

    The cell goes right after the parameters cell (at the top if there is none) or replaces an
    existing injected cell. Secrets appear only as comments; ``metadata.papermill.parameters``
    gets the redacted values.
    """
    out: Any = copy.deepcopy(nb)
    if not isinstance(out, dict):
        out = dict(out)
    secrets = schema.secret_names()
    public_source, _secret_source = render_injection(values, secrets)
    cells = out.get("cells")
    if not isinstance(cells, list):
        cells = []
        out["cells"] = cells
    taken = {c.get("id") for c in cells if isinstance(c, Mapping) and isinstance(c.get("id"), str)}
    new_cell: dict[str, Any] = {
        "cell_type": "code",
        "execution_count": None,
        "id": _new_cell_id(cast(set[str], taken)),
        "metadata": {"tags": [INJECTED_TAG]},
        "outputs": [],
        "source": public_source,
    }
    injected = _tagged_code_cells(out, INJECTED_TAG)
    params_cells = _tagged_code_cells(out, PARAMETERS_TAG)
    if injected:
        cells[injected[0]] = new_cell
    elif params_cells:
        cells.insert(params_cells[0] + 1, new_cell)
    else:
        cells.insert(0, new_cell)
    metadata = out.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
        out["metadata"] = metadata
    papermill = metadata.get("papermill")
    if not isinstance(papermill, dict):
        papermill = {}
        metadata["papermill"] = papermill
    papermill["parameters"] = redact(values, secrets)
    return cast(dict[str, Any], out)
