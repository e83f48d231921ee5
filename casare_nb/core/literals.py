"""Python literals both ways: values read from the syntax tree of a literal (never executing
it), and the source that writes a value back (for an injected parameter or a shown default).

Pure: stdlib only, no I/O.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from pathlib import Path, PurePath
from typing import Any, cast
from zoneinfo import ZoneInfo

from casare_nb.core.errors import ParameterError

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


def dotted_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted_name(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def literal_value(node: ast.expr) -> Any:
    """The value of a literal expression, or ``NOT_LITERAL``. Never executes user code."""
    try:
        return _literal(node)
    except (ValueError, TypeError, OverflowError, ArithmeticError, RecursionError):
        return NOT_LITERAL


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
        func = dotted_name(node.func)
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


class _NotLiteral:
    def __repr__(self) -> str:
        return "<not a literal>"


NOT_LITERAL: Any = _NotLiteral()


def short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_DT = "__import__('datetime')"


def render_literal(value: Any, name: str, seen: set[int]) -> str:
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
                f"{render_literal(k, name, inner)}: {render_literal(v, name, inner)}"
                for k, v in value.items()
            )
            return "{" + ", ".join(items) + "}"
        rendered = [render_literal(v, name, inner) for v in value]
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
