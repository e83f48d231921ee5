"""Reading a notebook's ``parameters`` cell: each top-level assignment declares a parameter.

The cell is parsed with :mod:`ast`, never executed. An annotation is evaluated against an
allow-list (anything else means ``Any``); a literal default is read as a value, anything else
is kept as source. :func:`parse_parameters` answers a :class:`ParamSpec` per name, and
:func:`spec_type` the Python type a spec's values are checked against.

Pure: stdlib + pydantic only, no I/O.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Union, cast, get_args, get_origin

from pydantic import BaseModel, ConfigDict

from casare_nb.core.errors import ParameterError
from casare_nb.core.literals import (
    NOT_LITERAL,
    dotted_name,
    literal_value,
    render_literal,
    short_repr,
)

PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"

_NoneType = type(None)


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


def notebook_cells(nb: Mapping[str, Any]) -> list[Any]:
    cells = nb.get("cells")
    return list(cells) if isinstance(cells, list) else []


def _tags(cell: Any) -> list[str]:
    if not isinstance(cell, Mapping):
        return []
    metadata = cell.get("metadata")
    tags = metadata.get("tags") if isinstance(metadata, Mapping) else None
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def tagged_code_cells(nb: Mapping[str, Any], tag: str) -> list[int]:
    return [
        i
        for i, cell in enumerate(notebook_cells(nb))
        if isinstance(cell, Mapping) and cell.get("cell_type") == "code" and tag in _tags(cell)
    ]


def source_text(cell: Mapping[str, Any]) -> str:
    source = cell.get("source", "")
    if isinstance(source, list):
        return "".join(str(s) for s in source)
    return str(source)


def metadata_secrets(nb: Mapping[str, Any]) -> list[str]:
    metadata = nb.get("metadata")
    casare = metadata.get("casare") if isinstance(metadata, Mapping) else None
    secrets = casare.get("secrets") if isinstance(casare, Mapping) else None
    if secrets is None:
        return []
    if not isinstance(secrets, list) or not all(isinstance(s, str) for s in secrets):
        raise ParameterError(
            f"notebook metadata casare.secrets must be a list of names, got {short_repr(secrets)}"
        )
    return list(secrets)


_MAGIC_LINE = re.compile(r"^[ \t]*[%!]")


def parse_parameters(source: str, secret_meta: Collection[str]) -> dict[str, ParamSpec]:
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
                builder.bind(target, stmt.value, NOT_LITERAL, stmt.lineno)
    return builder.specs


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
        literal = literal_value(value)
        self._add(
            ParamSpec(
                name=name,
                annotation=self._segment(annotation),
                type_repr=ann.repr,
                required=False,
                has_default=True,
                default=None if literal is NOT_LITERAL else literal,
                default_source=self._segment(value),
                secret=secret,
                choices=_choices(ann.tp),
                line=line,
            )
        )

    def _declare_plain(self, name: str, line: int, literal: Any, source: str | None) -> None:
        type_repr = "Any" if literal is NOT_LITERAL else _inferred_type_name(literal)
        self._add(
            ParamSpec(
                name=name,
                annotation=None,
                type_repr=type_repr,
                required=False,
                has_default=True,
                default=None if literal is NOT_LITERAL else literal,
                default_source=source,
                secret=name in self.secret_meta,
                choices=None,
                line=line,
            )
        )

    def bind(self, target: ast.expr, node: ast.expr | None, literal: Any, line: int) -> None:
        """Declare the names of one assignment target; ``node`` or ``literal`` is the value."""
        if node is not None:
            literal = literal_value(node)
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
                    self.bind(sub_target, sub_node, NOT_LITERAL, line)
                return
            if isinstance(literal, list | tuple) and len(literal) == len(elts):
                for sub_target, item in zip(elts, literal, strict=True):
                    self.bind(sub_target, None, item, line)
                return
        for sub in ast.walk(target):
            if isinstance(sub, ast.Name):
                self._declare_plain(sub.id, sub.lineno, NOT_LITERAL, source)


def _source_of_literal(value: Any) -> str | None:
    if value is NOT_LITERAL:
        return None
    try:
        return render_literal(value, "<default>", set())
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


def default_is_literal(spec: ParamSpec) -> bool:
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
    return literal_value(node) is None


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
        dotted = dotted_name(node)
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
    dotted = dotted_name(node.value)
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
    value = literal_value(node)
    if value is NOT_LITERAL or not (value is None or isinstance(value, str | int | bytes)):
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


def union_args(tp: Any) -> tuple[Any, ...]:
    if get_origin(tp) is Union:
        return get_args(tp)
    return (tp,)


def _choices(tp: Any) -> list[Any] | None:
    literals = [m for m in union_args(tp) if get_origin(m) is Literal]
    others = [m for m in union_args(tp) if get_origin(m) is not Literal and m is not _NoneType]
    if len(literals) == 1 and not others:
        return list(get_args(literals[0]))
    return None


def spec_type(spec: ParamSpec) -> Any:
    """The Python type a spec validates against (``x: int = None`` also accepts None)."""
    tp = _resolve_type(spec.type_repr)
    if (
        spec.has_default
        and spec.default is None
        and spec.default_source == "None"
        and tp is not Any
        and _NoneType not in union_args(tp)
    ):
        return cast(Any, Union)[tp, None]
    return tp


# ---------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------
