"""The parameter form as plain Python: which input each declared parameter gets, the text
it starts with, and what the server is sent. No widget library here (:mod:`.forms` builds
the ipywidgets from these); the judgement of a typed value is
:meth:`ParamSchema.problem <casare_nb.core.params.ParamSchema.problem>`, the same the
orchestrator applies, so a form refuses on the field what the server would refuse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, time, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import PurePath
from typing import Any

from casare_nb.core.injection import REDACTED
from casare_nb.core.parameters_cell import ParamSpec, default_is_literal
from casare_nb.core.params import ParamSchema

__all__ = [
    "FieldKind",
    "FieldPlan",
    "changed_texts",
    "css_name",
    "field_plan",
    "form_plan",
    "problem_parameter",
    "value_text",
]

_CSS_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_PARAMETER_IN_DETAIL = re.compile(r"parameter '([A-Za-z_][A-Za-z0-9_]*)'")


def css_name(text: str) -> str:
    """``text`` usable in a CSS class name (anything but letters, digits, ``_``, ``-``
    becomes ``-``)."""
    return _CSS_UNSAFE.sub("-", text)


class FieldKind(StrEnum):
    """The input a parameter gets. Numbers get a text input, not a number one: whatever is
    typed is judged by ParamSchema.problem as the server would (``1e3``, ``None`` for an
    optional int, a value a browser's number input would silently drop)."""

    TEXT = "text"
    BOOL = "bool"
    CHOICE = "choice"
    SECRET = "secret"


def value_text(value: Any) -> str:
    """A value as typed in a form (or after ``-p``): strings as they are, ``True``/``False``,
    numbers, ``None``, containers as JSON."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, PurePath | Decimal | timedelta):
        return str(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


@dataclass(frozen=True)
class FieldPlan:
    """One field of a parameter form."""

    name: str
    kind: FieldKind
    label: str
    initial: str
    """The text the field starts with ("" leaves an optional parameter to its default)."""
    options: tuple[tuple[str, str], ...] = ()
    """For a choice: (label, text) pairs."""
    placeholder: str = ""
    required: bool = False


def field_plan(spec: ParamSpec, value: Any = None, *, given: bool = False) -> FieldPlan:
    """The field of ``spec``, starting with ``value`` if ``given`` (a job's parameter: a
    redacted secret starts empty, it must be typed again) else with the literal default."""
    if spec.secret:
        initial = ""
    elif given:
        initial = "" if value == REDACTED else value_text(value)
    elif default_is_literal(spec):
        initial = value_text(spec.default)
    else:
        initial = ""
    mark = " *" if spec.required else ""
    label = f"{spec.name}{mark}"
    placeholder = spec.type_repr
    if spec.has_default and not default_is_literal(spec) and spec.default_source:
        placeholder = f"default: {spec.default_source}"
    if spec.secret:
        kind = FieldKind.SECRET
        return FieldPlan(
            spec.name, kind, label, initial, placeholder=placeholder, required=spec.required
        )
    if spec.choices is not None or (spec.type_repr == "bool" and initial not in ("True", "False")):
        choices = spec.choices if spec.choices is not None else [True, False]
        options = [(repr(c) if not isinstance(c, str) else c, value_text(c)) for c in choices]
        if initial not in [text for _, text in options]:
            blank = "(default)" if not spec.required else "(choose)"
            options.insert(0, (blank, ""))
            initial = ""
        return FieldPlan(
            spec.name, FieldKind.CHOICE, label, initial, tuple(options), required=spec.required
        )
    if spec.type_repr == "bool":
        return FieldPlan(spec.name, FieldKind.BOOL, label, initial, required=spec.required)
    return FieldPlan(
        spec.name, FieldKind.TEXT, label, initial, placeholder=placeholder, required=spec.required
    )


def form_plan(schema: ParamSchema, values: Mapping[str, Any] | None = None) -> list[FieldPlan]:
    """The fields of a form for ``schema``, in declaration order; ``values`` (a job's
    parameters) pre-fill them."""
    given = values or {}
    return [
        field_plan(spec, given.get(name), given=name in given)
        for name, spec in schema.params.items()
    ]


def changed_texts(plans: list[FieldPlan], texts: Mapping[str, str]) -> dict[str, str]:
    """The texts to send: those not empty that differ from what the field started with
    (an untouched field leaves the notebook's default, or the job's value, as it is)."""
    initial = {p.name: p.initial for p in plans}
    return {name: text for name, text in texts.items() if text != "" and text != initial.get(name)}


def problem_parameter(detail: str) -> str | None:
    """The parameter a server's one-line refusal names (``parameter 'n': expected ...``)."""
    match = _PARAMETER_IN_DETAIL.search(detail)
    return match.group(1) if match else None
