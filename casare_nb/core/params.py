"""Notebook parameters: the ``parameters``-tagged cell *is* the schema, papermill-style.

:func:`read_schema` reads the cell (:mod:`casare_nb.core.parameters_cell`) into a
:class:`ParamSchema`; supplied values are checked and coerced with a pydantic model generated
from it (:meth:`ParamSchema.validate_values`), strings of ``-p NAME VALUE`` included. Putting
values into a notebook, and keeping secrets out of everything stored, is
:mod:`casare_nb.core.injection`.

Pure: stdlib + pydantic only, no I/O.
"""

from __future__ import annotations

import json
import keyword
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, cast, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, create_model

from casare_nb.core.errors import ParameterError
from casare_nb.core.literals import NOT_LITERAL, short_repr
from casare_nb.core.parameters_cell import (
    PARAMETERS_TAG,
    ParamSpec,
    default_is_literal,
    metadata_secrets,
    notebook_cells,
    parse_parameters,
    source_text,
    spec_type,
    tagged_code_cells,
    union_args,
)

__all__ = [
    "INT_BITS",
    "ParamSchema",
    "ParamSpec",
    "ParameterError",
    "Secret",
    "ValidatedParams",
    "parse_cli_pairs",
    "read_schema",
]

_NoneType = type(None)

T = TypeVar("T")


class Secret(Generic[T]):
    """Marks a parameter as secret: ``token: Secret[str] = ""`` in the parameters cell.

    Only a marker: at run time ``Secret[str]`` is a harmless generic alias, so the cell still
    executes in a kernel. Secret values are never stored, shown or put in the notebook.
    """


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

        Numbers a notebook cannot rely on are refused whatever the annotation, at any depth of
        a container and however given (typed, JSON, YAML, ``-p`` text): NaN and infinities
        (``nan``, ``inf``, ``1e999``, ``.nan``; floats, Decimals, complex numbers) and
        integers outside the signed 64-bit range (:data:`INT_BITS`). There is no opt-in: a
        workflow wanting "no value" declares ``float | None``. An untyped (``Any``) parameter
        given ``-p x nan`` gets the text ``'nan'``.
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
                value = _from_cli(value, spec_type(spec))
            try:
                validated = model.model_validate({name: value})
            except ValidationError:
                problems.append(_type_problem(spec, raw, name in secrets))
                out[name] = value if isinstance(raw, SecretStr) else raw
                continue
            number = _number_problem(getattr(validated, fields[name]), set())
            if number is not None:
                problems.append(f"parameter {name!r}: {number}")
                out[name] = value if isinstance(raw, SecretStr) else raw
                continue
            out[name] = getattr(validated, fields[name])
        for name, spec in self.params.items():
            if spec.required and name not in values:
                problems.append(f"missing required parameter {name!r} ({spec.type_repr})")
        if problems and strict:
            raise ParameterError("; ".join(problems))
        return ValidatedParams(values=out, warnings=problems)

    def problem(self, name: str, text: str) -> str | None:
        """What is wrong with giving parameter ``name`` the text ``text`` (as typed in a form
        or after ``-p``; read as :meth:`validate_values` reads strings), or None. Empty text
        leaves an optional parameter to its default and is a problem only when required."""
        spec = self.params.get(name)
        if spec is None:
            declared = ", ".join(self.params) or "none"
            return f"unknown parameter {name!r} (declared: {declared})"
        if text == "":
            return (
                f"missing required parameter {name!r} ({spec.type_repr})" if spec.required else None
            )
        value = _from_cli(text, spec_type(spec))
        try:
            validated = self._model(for_validation=True).model_validate({name: value})
        except ValidationError:
            return _type_problem(spec, text, name in self.secret_names())
        number = _number_problem(getattr(validated, self._field_names()[name]), set())
        return None if number is None else f"parameter {name!r}: {number}"

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
            tp = spec_type(spec)
            secret = name in secrets
            description: str | None = None
            if for_validation:
                info = Field(default=None, alias=name, title=name)
            elif spec.required:
                info = Field(alias=name, title=name, json_schema_extra=_schema_extra(secret, False))
            else:
                literal = default_is_literal(spec)
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
    secret_meta = metadata_secrets(nb)
    indexes = tagged_code_cells(nb, PARAMETERS_TAG)
    if len(indexes) > 1:
        where = ", ".join(str(i) for i in indexes)
        raise ParameterError(
            f"notebook has {len(indexes)} cells tagged 'parameters' (cells {where}); keep only one"
        )
    if not indexes:
        return ParamSchema(has_cell=False, extra_secret_names=sorted(secret_meta))
    index = indexes[0]
    cells = notebook_cells(nb)
    source = source_text(cells[index])
    specs = parse_parameters(source, secret_meta)
    extra = sorted(set(secret_meta) - set(specs))
    return ParamSchema(has_cell=True, cell_index=index, params=specs, extra_secret_names=extra)


def _schema_extra(secret: bool, drop_default: bool) -> Callable[[dict[str, Any]], None] | None:
    if not secret and not drop_default:
        return None

    def extra(schema: dict[str, Any]) -> None:
        if drop_default:
            schema.pop("default", None)
        if secret:
            schema["writeOnly"] = True

    return extra


def _type_problem(spec: ParamSpec, raw: Any, secret: bool) -> str:
    if spec.choices is not None:
        expected = "one of " + ", ".join(repr(c) for c in spec.choices)
    else:
        expected = spec.type_repr
    got = f"a value of type {type(raw).__name__} (not shown: secret)" if secret else short_repr(raw)
    return f"parameter {spec.name!r}: expected {expected}, got {got}"


INT_BITS = 64
"""Integer parameters hold a signed 64-bit integer (-2**63 .. 2**63 - 1), and no more."""

_INT_MIN, _INT_MAX = -(2 ** (INT_BITS - 1)), 2 ** (INT_BITS - 1) - 1


def _number_problem(value: Any, seen: set[int]) -> str | None:
    """What makes a validated value one no parameter takes, or None: a NaN or an infinity
    (float, Decimal or complex), or an int outside the signed 64-bit range, at any depth of a
    container. The value itself is not shown (it may be secret; it may be 400 digits)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if _INT_MIN <= value <= _INT_MAX:
            return None
        return (
            f"integer out of the signed {INT_BITS}-bit range (-2**{INT_BITS - 1} .. "
            f"2**{INT_BITS - 1} - 1), got a number of {value.bit_length()} bits"
        )
    if isinstance(value, float | complex | Decimal):
        parts = (value.real, value.imag) if isinstance(value, complex) else (value,)
        if all(p.is_finite() if isinstance(p, Decimal) else math.isfinite(p) for p in parts):
            return None
        return "NaN and infinities are not accepted (give a finite number)"
    if isinstance(value, str | bytes) or id(value) in seen:
        return None
    if isinstance(value, Mapping):
        items: list[Any] = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple | set | frozenset):
        items = list(value)
    else:
        return None
    inner = seen | {id(value)}
    for item in items:
        problem = _number_problem(item, inner)
        if problem is not None:
            return problem
    return None


def _infer_cli(raw: str) -> Any:
    """papermill's CLI inference for untyped values: True/False/None, int, float, else str.

    Text Python reads as a NaN or an infinity (``nan``, ``inf``, ``1e999``) stays text."""
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
        number = float(raw)
    except ValueError:
        return raw
    return number if math.isfinite(number) else raw


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
    members = union_args(tp)
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
        parsed = NOT_LITERAL
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


def check_name(name: str) -> None:
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ParameterError(f"{name!r} is not a valid parameter name")


def parse_cli_pairs(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Collect ``-p NAME VALUE`` pairs into a dict, rejecting repeated or invalid names."""
    out: dict[str, str] = {}
    for name, raw in pairs:
        check_name(name)
        if name in out:
            raise ParameterError(f"parameter {name!r} given twice")
        out[name] = raw
    return out


# ---------------------------------------------------------------------------------------------
# redaction
# ---------------------------------------------------------------------------------------------
