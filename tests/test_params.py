"""Tests for the parameters cell as schema (core.params, parameters_cell, literals) and
injection (core.injection)."""

from __future__ import annotations

import ast
import copy
import json
import math
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr

from casare_nb.core.injection import parameterize, redact, render_injection, scrub
from casare_nb.core.params import ParameterError, ParamSchema, Secret, parse_cli_pairs, read_schema

# --- helpers ---------------------------------------------------------------------------------


def code(source: str | list[str], *tags: str, cell_id: str | None = None) -> dict[str, Any]:
    cell: dict[str, Any] = {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {"tags": list(tags)} if tags else {},
        "outputs": [],
        "source": source,
    }
    if cell_id is not None:
        cell["id"] = cell_id
    return cell


def markdown(source: str, *tags: str) -> dict[str, Any]:
    return {"cell_type": "markdown", "metadata": {"tags": list(tags)}, "source": source}


def notebook(*cells: dict[str, Any], metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"cells": list(cells), "metadata": metadata or {}, "nbformat": 4, "nbformat_minor": 5}


def schema_of(source: str, metadata: dict[str, Any] | None = None) -> ParamSchema:
    return read_schema(notebook(code(source, "parameters"), metadata=metadata))


BASIC = """\
import datetime
region: str = "EU"
day: datetime.date = datetime.date(2026, 11, 1)
limit: int = 10
"""


def errmsg(exc: pytest.ExceptionInfo[ParameterError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# --- read_schema: declarations ---------------------------------------------------------------


def test_no_parameters_cell_gives_empty_schema() -> None:
    """A notebook without a parameters cell has has_cell False and no params."""
    schema = read_schema(notebook(code("x = 1"), markdown("# hi")))
    assert schema.has_cell is False
    assert schema.cell_index is None
    assert schema.params == {}
    assert schema.names() == []


def test_empty_notebook_dict_is_accepted() -> None:
    """A dict without cells or metadata reads as a notebook with no parameters cell."""
    assert read_schema({}) == ParamSchema(has_cell=False, params={})


def test_annotated_declarations_are_read() -> None:
    """Annotated assignments give name, annotation, type, default and line."""
    source = (
        "region: str = 'EU'\n"
        "day: datetime.date = datetime.date(2026, 11, 1)\n"
        "limit: int = 10\n"
        "ratio: float\n"
        "flags: list[str] = []\n"
        "mode: Literal['fast', 'full'] = 'fast'\n"
        "x: int | None = None\n"
        "y: Optional[int] = 3\n"
    )
    schema = schema_of(source)
    assert schema.has_cell and schema.cell_index == 0
    assert schema.names() == ["region", "day", "limit", "ratio", "flags", "mode", "x", "y"]
    p = schema.params
    assert p["region"].annotation == "str" and p["region"].default == "EU"
    assert p["day"].type_repr == "date" and p["day"].default == date(2026, 11, 1)
    assert p["day"].default_source == "datetime.date(2026, 11, 1)"
    assert p["limit"].default == 10 and not p["limit"].required and p["limit"].line == 3
    assert p["ratio"].required and not p["ratio"].has_default and p["ratio"].default is None
    assert p["flags"].type_repr == "list[str]" and p["flags"].default == []
    assert p["mode"].choices == ["fast", "full"]
    assert p["x"].type_repr == "int | None" and p["x"].has_default
    assert p["y"].type_repr == "int | None" and p["y"].default == 3


def test_plain_assignments_infer_type_from_literal() -> None:
    """Plain assignments get papermill's inferred type; None infers Any."""
    source = "n = 3\nf = 0.5\nb = True\ns = 'x'\nl = [1]\nd = {'a': 1}\nz = None\n"
    types = {name: spec.type_repr for name, spec in schema_of(source).params.items()}
    assert types == {
        "n": "int",
        "f": "float",
        "b": "bool",
        "s": "str",
        "l": "list",
        "d": "dict",
        "z": "Any",
    }


def test_non_literal_default_is_computed_by_notebook() -> None:
    """A call default keeps its source, default None, and is not required."""
    schema = schema_of("start = date.today()\nx: int = compute()\n")
    start, x = schema.params["start"], schema.params["x"]
    assert start.has_default and not start.required and start.default is None
    assert start.default_source == "date.today()" and start.type_repr == "Any"
    assert x.type_repr == "int" and x.default is None and x.default_source == "compute()"


def test_comments_imports_and_other_statements_are_ignored() -> None:
    """Only assignments declare parameters; comments, imports, exprs, attrs do not."""
    source = (
        "# a comment\nimport os\nfrom x import y\nprint('hi')\nobj.attr = 1\n"
        "d['k'] = 2\nif True:\n    hidden = 1\nlimit = 5  # trailing\n"
    )
    assert schema_of(source).names() == ["limit"]


def test_chained_assignment_declares_each_name() -> None:
    """`a = b = 1` declares a and b, both int with default 1."""
    params = schema_of("a = b = 1\n").params
    assert [(s.name, s.type_repr, s.default) for s in params.values()] == [
        ("a", "int", 1),
        ("b", "int", 1),
    ]


def test_tuple_unpacking_declares_each_name() -> None:
    """`a, b = 1, f()` pairs values; starred unpacking makes every name Any."""
    params = schema_of("a, b = 1, f()\nc, *d = 1, 2, 3\n(e, f) = (2.5, 'x')\n").params
    assert params["a"].type_repr == "int" and params["a"].default == 1
    assert params["b"].type_repr == "Any" and params["b"].default_source == "f()"
    assert params["c"].type_repr == "Any" and params["d"].type_repr == "Any"
    assert params["c"].default is None
    assert params["e"].default == 2.5 and params["f"].type_repr == "str"


def test_source_given_as_list_of_strings() -> None:
    """A cell source stored as a list of lines is joined before parsing."""
    nb = notebook(code(["limit: int = 10\n", "region = 'EU'\n"], "parameters"))
    assert read_schema(nb).names() == ["limit", "region"]


def test_cell_index_points_at_parameters_cell() -> None:
    """cell_index is the index of the tagged cell in nb['cells']."""
    nb = notebook(markdown("# t"), code("import x"), code("a = 1", "parameters", "other"))
    assert read_schema(nb).cell_index == 2


def test_markdown_cell_tagged_parameters_is_not_the_schema() -> None:
    """Only a code cell tagged parameters counts."""
    nb = notebook(markdown("a = 1", "parameters"))
    assert read_schema(nb).has_cell is False


def test_ipython_magics_do_not_break_parsing() -> None:
    """Magic and shell lines are skipped and line numbers stay right."""
    schema = schema_of("%matplotlib inline\n!echo hi\nlimit = 3\n")
    assert schema.names() == ["limit"] and schema.params["limit"].line == 3


@pytest.mark.parametrize(
    ("annotation", "type_repr"),
    [
        ("datetime.date", "date"),
        ("dt.date", "date"),
        ("date", "date"),
        ("datetime", "datetime"),
        ("datetime.datetime", "datetime"),
        ("dt.datetime", "datetime"),
        ("datetime.time", "time"),
        ("timedelta", "timedelta"),
        ("Path", "Path"),
        ("pathlib.Path", "Path"),
        ("Decimal", "Decimal"),
        ("typing.Optional[int]", "int | None"),
        ("t.Union[int, str]", "int | str"),
        ("typing.Any", "Any"),
        ("List[int]", "list[int]"),
        ("dict[str, list[int]]", "dict[str, list[int]]"),
        ("tuple[int, ...]", "tuple[int, ...]"),
        ("tuple[int, str]", "tuple[int, str]"),
        ("set[str]", "set[str]"),
        ("bytes", "bytes"),
        ("'int | None'", "int | None"),
        ("Optional[int | str]", "int | str | None"),
        ("Literal[-1, 'a', True, None]", "Literal[-1, 'a', True, None]"),
    ],
)
def test_allowed_annotations_are_understood(annotation: str, type_repr: str) -> None:
    """Allow-listed annotations (any spelling) normalise to a readable type_repr."""
    spec = schema_of(f"x: {annotation} = None\n").params["x"]
    assert spec.type_repr == type_repr
    assert spec.annotation == annotation


@pytest.mark.parametrize(
    "annotation",
    [
        "pd.DataFrame",
        "MyClass",
        "__import__('os').system('true')",
        "Callable[[int], int]",
        "list[np.int64]",
    ],
)
def test_unknown_annotations_become_any(annotation: str) -> None:
    """An annotation not on the allow-list is Any (no error) and keeps its source text."""
    spec = schema_of(f"x: {annotation} = 1\n").params["x"]
    assert spec.type_repr == annotation
    assert schema_of(f"x: {annotation} = 1\n").validate_values({"x": object()}).warnings == []


def test_literal_default_calls_are_evaluated() -> None:
    """date/datetime/Path/Decimal calls with literal args give real default values."""
    source = (
        "a = date(2026, 11, 1)\n"
        "b = datetime.datetime(2026, 11, 1, 12, 30)\n"
        "c = Path('/data/in')\n"
        "d = decimal.Decimal('1.50')\n"
        "e = [dt.date(2026, 1, 2)]\n"
        "f = date(2026, 13, 1)\n"
        "g = date(year)\n"
    )
    p = schema_of(source).params
    assert p["a"].default == date(2026, 11, 1) and p["a"].type_repr == "date"
    assert p["b"].default == datetime(2026, 11, 1, 12, 30) and p["b"].type_repr == "datetime"
    assert p["c"].default == Path("/data/in") and p["c"].type_repr == "Path"
    assert p["d"].default == Decimal("1.50") and p["d"].type_repr == "Decimal"
    assert p["e"].default == [date(2026, 1, 2)]
    assert p["f"].default is None and p["f"].type_repr == "Any"  # invalid date: not a literal
    assert p["g"].default is None and p["g"].default_source == "date(year)"


# --- read_schema: secrets --------------------------------------------------------------------


@pytest.mark.parametrize(
    "annotation",
    [
        "Secret[str]",
        "SecretStr",
        "pydantic.SecretStr",
        "'Secret[str]'",
        "Optional[Secret[str]]",
        "Secret",
        "Secret[np.ndarray]",
    ],
)
def test_secret_annotations_mark_secret(annotation: str) -> None:
    """Secret[...] and SecretStr, in any spelling, make the parameter secret."""
    schema = schema_of(f"token: {annotation} = ''\nother: str = ''\n")
    assert schema.params["token"].secret
    assert schema.secret_names() == {"token"}


def test_secret_names_from_notebook_metadata() -> None:
    """Names listed in metadata.casare.secrets are secret, declared or not."""
    schema = schema_of("user = 'a'\npassword = 'b'\n", {"casare": {"secrets": ["password", "x"]}})
    assert schema.params["password"].secret and not schema.params["user"].secret
    assert schema.secret_names() == {"password", "x"}


def test_metadata_secrets_apply_without_parameters_cell() -> None:
    """Metadata secrets are kept even when the notebook has no parameters cell."""
    nb = notebook(code("x = 1"), metadata={"casare": {"secrets": ["token"]}})
    assert read_schema(nb).secret_names() == {"token"}


def test_metadata_secrets_must_be_a_list_of_names() -> None:
    """A malformed casare.secrets entry is an error rather than silently ignored."""
    with pytest.raises(ParameterError) as exc:
        schema_of("x = 1", {"casare": {"secrets": "token"}})
    assert "casare.secrets must be a list of names" in errmsg(exc)


def test_secret_marker_runs_in_a_kernel() -> None:
    """`token: Secret[str] = ""` executes without error when Secret is in scope."""
    namespace: dict[str, Any] = {"Secret": Secret}
    exec("token: Secret[str] = ''\n", namespace)
    assert namespace["token"] == ""


# --- read_schema: errors ---------------------------------------------------------------------


def test_name_declared_twice_is_an_error() -> None:
    """A repeated declaration names both lines."""
    with pytest.raises(ParameterError) as exc:
        schema_of("x = 1\ny = 2\nx: int = 3\n")
    assert errmsg(exc) == "parameter 'x' is declared twice in the parameters cell (lines 1 and 3)"


def test_name_declared_twice_in_one_unpacking_is_an_error() -> None:
    """`a, a = 1, 2` is a duplicate declaration too."""
    with pytest.raises(ParameterError, match="declared twice"):
        schema_of("a, a = 1, 2\n")


def test_unparsable_cell_is_an_error() -> None:
    """A syntax error gives the line and the parser's message."""
    with pytest.raises(ParameterError) as exc:
        schema_of("x = 1\ny = = 2\n")
    assert errmsg(exc) == "parameters cell does not parse: line 2: invalid syntax"


def test_two_parameters_cells_are_an_error() -> None:
    """More than one cell tagged parameters is rejected, naming the cells."""
    nb = notebook(code("a = 1", "parameters"), code("b"), code("c = 1", "parameters"))
    with pytest.raises(ParameterError) as exc:
        read_schema(nb)
    assert errmsg(exc) == ("notebook has 2 cells tagged 'parameters' (cells 0, 2); keep only one")


def test_dunder_parameter_name_is_an_error() -> None:
    """Names starting with '__' cannot be parameters."""
    with pytest.raises(ParameterError) as exc:
        schema_of("__builtins__ = {}\n")
    assert "'__builtins__'" in errmsg(exc)


def test_parameter_error_is_a_value_error() -> None:
    """ParameterError can be caught as ValueError."""
    assert issubclass(ParameterError, ValueError)


# --- validate_values ---------------------------------------------------------------------------


def test_values_are_coerced_in_lax_mode() -> None:
    """'10' becomes 10 and '2026-11-01' a date even without from_strings."""
    result = schema_of(BASIC).validate_values({"limit": "10", "day": "2026-11-01"})
    assert result.values == {"limit": 10, "day": date(2026, 11, 1)}
    assert result.warnings == []


def test_only_supplied_values_are_returned() -> None:
    """Defaults are not injected into the validated values."""
    assert schema_of(BASIC).validate_values({"region": "US"}).values == {"region": "US"}


def test_unknown_parameter_strict_error() -> None:
    """An unknown name raises, listing the declared names."""
    with pytest.raises(ParameterError) as exc:
        schema_of(BASIC).validate_values({"x": 1})
    assert errmsg(exc) == "unknown parameter 'x' (declared: region, day, limit)"


def test_missing_required_parameter_strict_error() -> None:
    """A required parameter not supplied raises."""
    with pytest.raises(ParameterError) as exc:
        schema_of("ratio: float\nlimit = 1\n").validate_values({"limit": 2})
    assert errmsg(exc) == "missing required parameter 'ratio' (float)"


def test_wrong_type_strict_error() -> None:
    """A bad value names the parameter, the expected type and the value's repr."""
    with pytest.raises(ParameterError) as exc:
        schema_of(BASIC).validate_values({"limit": "ten"})
    assert errmsg(exc) == "parameter 'limit': expected int, got 'ten'"


def test_several_problems_are_reported_on_one_line() -> None:
    """All strict problems are joined into one line."""
    with pytest.raises(ParameterError) as exc:
        schema_of("ratio: float\nlimit = 1\n").validate_values({"limit": "x", "q": 1})
    message = errmsg(exc)
    assert "parameter 'limit'" in message and "unknown parameter 'q'" in message
    assert "missing required parameter 'ratio'" in message


def test_literal_choice_error_lists_choices() -> None:
    """A value outside a Literal lists the allowed choices."""
    schema = schema_of("mode: Literal['fast', 'full'] = 'fast'\n")
    assert schema.validate_values({"mode": "full"}).values == {"mode": "full"}
    with pytest.raises(ParameterError) as exc:
        schema.validate_values({"mode": "slow"})
    assert errmsg(exc) == "parameter 'mode': expected one of 'fast', 'full', got 'slow'"


def test_long_bad_value_is_truncated_in_message() -> None:
    """A huge bad value does not flood the error line."""
    with pytest.raises(ParameterError) as exc:
        schema_of(BASIC).validate_values({"limit": "x" * 10_000})
    assert len(errmsg(exc)) < 200


def test_no_parameters_cell_rejects_values() -> None:
    """Without a parameters cell any value is an error in strict mode."""
    schema = read_schema(notebook(code("x = 1")))
    assert schema.validate_values({}).values == {}
    with pytest.raises(ParameterError) as exc:
        schema.validate_values({"x": 1, "y": 2})
    assert errmsg(exc) == (
        "notebook has no 'parameters' cell, so it takes no parameters (got: x, y)"
    )


def test_no_parameters_cell_lenient_keeps_values() -> None:
    """Lenient mode without a parameters cell warns and keeps the values."""
    schema = read_schema(notebook(code("x = 1")))
    result = schema.validate_values({"x": "5"}, strict=False, from_strings=True)
    assert result.values == {"x": 5}
    assert result.warnings == [
        "notebook has no 'parameters' cell, so it takes no parameters (got: x)"
    ]


def test_lenient_mode_warns_and_keeps_raw_values() -> None:
    """strict=False turns problems into warnings and keeps raw and unknown values."""
    schema = schema_of("ratio: float\n" + BASIC)
    result = schema.validate_values({"limit": "ten", "extra": [1], "region": "US"}, strict=False)
    assert result.values == {"limit": "ten", "extra": [1], "region": "US"}
    assert result.warnings == [
        "parameter 'limit': expected int, got 'ten'",
        "unknown parameter 'extra' (declared: ratio, region, day, limit)",
        "missing required parameter 'ratio' (float)",
    ]


def test_from_strings_keeps_code_like_string_as_data() -> None:
    """'1; import os' stays a plain string for a str parameter."""
    schema = schema_of("region: str = 'EU'\n")
    result = schema.validate_values({"region": "1; import os"}, from_strings=True)
    assert result.values == {"region": "1; import os"}


def test_from_strings_code_like_string_is_int_type_error() -> None:
    """'1; import os' for an int parameter is a type error, not code."""
    with pytest.raises(ParameterError) as exc:
        schema_of(BASIC).validate_values({"limit": "1; import os"}, from_strings=True)
    assert errmsg(exc) == "parameter 'limit': expected int, got '1; import os'"


def test_from_strings_str_like_fields_take_string_as_is() -> None:
    """Strings that look like numbers or None stay strings for str/Path/date fields."""
    schema = schema_of(
        "s: str = ''\np: Path = Path('.')\nd: date = None\nm: Literal['1', '2'] = '1'\n"
    )
    result = schema.validate_values(
        {"s": "None", "p": "/tmp/x", "d": "2026-11-01", "m": "2"}, from_strings=True
    )
    assert result.values == {"s": "None", "p": Path("/tmp/x"), "d": date(2026, 11, 1), "m": "2"}


def test_from_strings_lists_accept_json_or_commas() -> None:
    """List fields parse JSON first, then fall back to comma splitting."""
    schema = schema_of("flags: list[str] = []\nns: list[int] = []\nt: tuple[int, ...] = ()\n")
    assert schema.validate_values({"flags": '["a", "b"]'}, from_strings=True).values == {
        "flags": ["a", "b"]
    }
    assert schema.validate_values({"flags": "a, b,c"}, from_strings=True).values == {
        "flags": ["a", "b", "c"]
    }
    assert schema.validate_values({"ns": "1,2"}, from_strings=True).values == {"ns": [1, 2]}
    assert schema.validate_values({"ns": "5"}, from_strings=True).values == {"ns": [5]}
    assert schema.validate_values({"flags": ""}, from_strings=True).values == {"flags": []}
    assert schema.validate_values({"t": "[1, 2]"}, from_strings=True).values == {"t": (1, 2)}


def test_from_strings_dict_parses_json() -> None:
    """Dict fields json.loads the raw string; non-JSON is a type error."""
    schema = schema_of("opts: dict[str, int] = {}\n")
    assert schema.validate_values({"opts": '{"a": 1}'}, from_strings=True).values == {
        "opts": {"a": 1}
    }
    with pytest.raises(ParameterError, match="parameter 'opts'"):
        schema.validate_values({"opts": "a=1"}, from_strings=True)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("5", 5),
        ("-2", -2),
        ("0.5", 0.5),
        ("True", True),
        ("False", False),
        ("None", None),
        ("hello", "hello"),
        ("1; import os", "1; import os"),
    ],
)
def test_from_strings_any_fields_infer_like_papermill(raw: str, expected: Any) -> None:
    """Any-typed fields get papermill's CLI inference: int, float, True/False/None, else str."""
    schema = schema_of("x = None\n")
    assert schema.validate_values({"x": raw}, from_strings=True).values == {"x": expected}


def test_from_strings_optional_none() -> None:
    """'None' gives None for an Optional non-string field."""
    schema = schema_of("x: int | None = 3\n")
    assert schema.validate_values({"x": "None"}, from_strings=True).values == {"x": None}
    assert schema.validate_values({"x": "4"}, from_strings=True).values == {"x": 4}


def test_from_strings_bool_and_float_and_literal_int() -> None:
    """Bools, floats and non-string Literal choices parse from CLI strings."""
    schema = schema_of("b: bool = False\nf: float = 0.0\nk: Literal[1, 2] = 1\n")
    result = schema.validate_values({"b": "True", "f": "2.5", "k": "2"}, from_strings=True)
    assert result.values == {"b": True, "f": 2.5, "k": 2}


def test_inferred_plain_types_are_enforced() -> None:
    """`n = 3` declares an int: 'x' is rejected, '4' is coerced."""
    schema = schema_of("n = 3\n")
    assert schema.validate_values({"n": "4"}, from_strings=True).values == {"n": 4}
    with pytest.raises(ParameterError, match="expected int"):
        schema.validate_values({"n": "x"}, from_strings=True)


def test_none_default_makes_annotation_optional() -> None:
    """`x: int = None` accepts None as well as ints."""
    schema = schema_of("x: int = None\n")
    assert schema.validate_values({"x": None}).values == {"x": None}
    assert schema.validate_values({"x": 3}).values == {"x": 3}


def test_secret_validates_like_str() -> None:
    """Secret[str] and SecretStr fields take plain strings (and SecretStr objects)."""
    schema = schema_of("a: Secret[str] = ''\nb: SecretStr = ''\n")
    result = schema.validate_values({"a": "s3cr3t", "b": SecretStr("hidden")})
    assert result.values == {"a": "s3cr3t", "b": "hidden"}


def test_secret_value_is_not_shown_in_errors() -> None:
    """A wrongly typed secret value is never echoed in the error."""
    schema = schema_of("pin: Secret[int] = 0\n")
    with pytest.raises(ParameterError) as exc:
        schema.validate_values({"pin": "hunter2"})
    assert "hunter2" not in errmsg(exc)
    assert "parameter 'pin'" in errmsg(exc)


def test_odd_parameter_names_validate() -> None:
    """Names that clash with pydantic internals still validate and appear in the schema."""
    schema = schema_of("_x: int = 1\njson: str = ''\nmodel_config: int = 0\nschema = 2\n")
    result = schema.validate_values({"_x": "2", "json": "j", "model_config": "3", "schema": 4})
    assert result.values == {"_x": 2, "json": "j", "model_config": 3, "schema": 4}
    assert set(schema.json_schema()["properties"]) == {"_x", "json", "model_config", "schema"}


# --- json_schema ---------------------------------------------------------------------------------


def test_json_schema_has_types_defaults_required_and_secrets() -> None:
    """The JSON schema lists fields by name, defaults, required, and secrets writeOnly."""
    schema = schema_of(
        "ratio: float\nlimit: int = 10\nday: date = date(2026, 11, 1)\n"
        "mode: Literal['a', 'b'] = 'a'\ntoken: Secret[str] = 'dev-token'\n"
    )
    js = schema.json_schema()
    props = js["properties"]
    assert js["required"] == ["ratio"]
    assert props["limit"] == {"default": 10, "title": "limit", "type": "integer"}
    assert props["day"]["default"] == "2026-11-01" and props["day"]["format"] == "date"
    assert props["mode"]["enum"] == ["a", "b"]
    assert props["token"]["writeOnly"] is True and "default" not in props["token"]
    json.dumps(js)  # JSON-serialisable


def test_json_schema_computed_default_has_no_default() -> None:
    """A default computed by the notebook is not shown as a value, only described."""
    props = schema_of("start = date.today()\n").json_schema()["properties"]
    assert "default" not in props["start"]
    assert "date.today()" in props["start"]["description"]


# --- parse_cli_pairs -------------------------------------------------------------------------


def test_parse_cli_pairs_builds_dict_in_order() -> None:
    """Pairs become a name -> raw string dict, order kept."""
    assert parse_cli_pairs([("b", "1"), ("a", "x y")]) == {"b": "1", "a": "x y"}


def test_parse_cli_pairs_rejects_repeated_name() -> None:
    """A name given twice is an error."""
    with pytest.raises(ParameterError) as exc:
        parse_cli_pairs([("x", "1"), ("x", "2")])
    assert errmsg(exc) == "parameter 'x' given twice"


@pytest.mark.parametrize("name", ["class", "1abc", "a-b", "", "x = 1; import os", "None"])
def test_parse_cli_pairs_rejects_bad_names(name: str) -> None:
    """Non-identifiers and keywords are not parameter names."""
    with pytest.raises(ParameterError) as exc:
        parse_cli_pairs([(name, "1")])
    assert errmsg(exc) == f"{name!r} is not a valid parameter name"


# --- redact ----------------------------------------------------------------------------------


def test_redact_hides_secrets_and_makes_json() -> None:
    """Secrets become '***'; dates, paths, decimals, sets become JSON values."""
    values = {
        "token": "abc",
        "day": date(2026, 11, 1),
        "at": datetime(2026, 11, 1, 8, 30),
        "path": Path("/data/x"),
        "amount": Decimal("1.5"),
        "tags": {"b", "a"},
        "pair": (1, 2),
        "nested": {"when": date(2026, 1, 1), 3: None},
        "bad": float("nan"),
        "n": 3,
    }
    out = redact(values, {"token"})
    assert out == {
        "token": "***",
        "day": "2026-11-01",
        "at": "2026-11-01T08:30:00",
        "path": "/data/x",
        "amount": "1.5",
        "tags": ["a", "b"],
        "pair": [1, 2],
        "nested": {"when": "2026-01-01", "3": None},
        "bad": "nan",
        "n": 3,
    }
    assert json.loads(json.dumps(out, allow_nan=False)) == out


def test_redact_does_not_modify_input() -> None:
    """redact returns a new dict and leaves the values alone."""
    values = {"token": "abc", "xs": [1]}
    redact(values, ["token"])
    assert values == {"token": "abc", "xs": [1]}


# --- render_injection ------------------------------------------------------------------------


def run_source(source: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    namespace.pop("__builtins__", None)
    return namespace


def test_render_injection_public_source_format() -> None:
    """The public source is papermill's '# Parameters' cell, one line per value."""
    public, secret = render_injection({"region": "EU", "limit": 10, "on": True}, set())
    assert public == "# Parameters\nregion = 'EU'\nlimit = 10\non = True\n"
    assert secret == ""


def test_render_injection_round_trips_values() -> None:
    """Exec'ing the public source in a fresh dict gives back equal values."""
    values: dict[str, Any] = {
        "hostile": "'); import os; ('",
        "semi": "1; import os",
        "quotes": "\"'\\\n\t\x00é🙂",
        "i": -12,
        "big": 10**30,
        "f": 0.1,
        "b": False,
        "none": None,
        "xs": [1, "a", [2.5, None]],
        "d": {"k": {"n": (1,)}, 2: "two"},
        "t": (),
        "t1": ("x",),
        "s": {1, 2},
        "empty_set": set(),
        "fs": frozenset({"a"}),
        "by": b"\x00bytes",
        "day": date(2026, 11, 1),
        "at": datetime(2026, 11, 1, 8, 30, 15, 123),
        "aware": datetime(2026, 11, 1, 8, tzinfo=UTC),
        "offset": datetime(2026, 11, 1, 8, tzinfo=timezone(timedelta(hours=-3))),
        "zoned": datetime(2026, 11, 1, 8, tzinfo=ZoneInfo("Europe/Paris")),
        "clock": time(23, 59, 1),
        "span": timedelta(days=-1, seconds=5, microseconds=7),
        "path": Path("/tmp/it's here"),
        "money": Decimal("12.50"),
        "cplx": 1 + 2j,
    }
    public, _ = render_injection(values, set())
    assert run_source(public) == values


def test_render_injection_special_floats() -> None:
    """nan and infinities render as float('nan') / float('inf') and round-trip."""
    public, _ = render_injection({"a": math.nan, "b": math.inf, "c": -math.inf}, set())
    assert "a = float('nan')" in public and "c = float('-inf')" in public
    ns = run_source(public)
    assert math.isnan(ns["a"]) and ns["b"] == math.inf and ns["c"] == -math.inf


def test_render_injection_uses_no_imports() -> None:
    """Rendered code has no import statements and no bare module references."""
    public, _ = render_injection(
        {"d": date(2026, 11, 1), "p": Path("x"), "m": Decimal("1"), "s": "import os"}, set()
    )
    tree = ast.parse(public)
    assert not any(isinstance(n, ast.Import | ast.ImportFrom) for n in ast.walk(tree))
    names = {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }
    assert names <= {"__import__"}
    assert "d = __import__('datetime').date(2026, 11, 1)" in public
    assert "p = __import__('pathlib').Path('x')" in public


def test_render_injection_hostile_strings_are_single_assignments() -> None:
    """A hostile string renders as exactly one assignment of a string constant."""
    public, _ = render_injection({"a": "'); import os; ('", "b": "1; import os\nx = 2"}, set())
    tree = ast.parse(public)
    assert len(tree.body) == 2
    for stmt in tree.body:
        assert isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant)


def test_render_injection_keeps_secrets_out_of_public_source() -> None:
    """Secrets appear only as a comment publicly and as an assignment in secret_source."""
    public, secret = render_injection({"user": "bob", "token": "s3cr3t"}, {"token"})
    assert "s3cr3t" not in public
    assert public == (
        "# Parameters\nuser = 'bob'\n# token: secret parameter, injected at run time (not shown)\n"
    )
    assert run_source(secret) == {"token": "s3cr3t"}
    assert run_source(public) == {"user": "bob"}


def test_render_injection_unwraps_secretstr() -> None:
    """A pydantic SecretStr value is injected as its plain secret string."""
    _, secret = render_injection({"token": SecretStr("xyz")}, {"token"})
    assert run_source(secret) == {"token": "xyz"}


def test_render_injection_rejects_arbitrary_objects() -> None:
    """Objects without a literal form raise ParameterError naming the parameter."""
    with pytest.raises(ParameterError) as exc:
        render_injection({"obj": object()}, set())
    assert errmsg(exc) == "parameter 'obj': cannot inject a value of type object"
    with pytest.raises(ParameterError, match="parameter 'xs'"):
        render_injection({"xs": [1, object()]}, set())


def test_render_injection_rejects_self_containing_values() -> None:
    """A list that contains itself is an error, not infinite recursion."""
    xs: list[Any] = [1]
    xs.append(xs)
    with pytest.raises(ParameterError, match="contains itself"):
        render_injection({"xs": xs}, set())


@pytest.mark.parametrize("name", ["x = 1; import os; y", "class", "__builtins__", "a b"])
def test_render_injection_rejects_bad_names(name: str) -> None:
    """A name that is not a plain identifier can never reach the generated code."""
    with pytest.raises(ParameterError, match="not a valid parameter name"):
        render_injection({name: 1}, set())


def test_validated_values_render_and_round_trip() -> None:
    """CLI strings -> validate -> render -> exec gives the coerced values back."""
    schema = schema_of(BASIC + "flags: list[str] = []\n")
    raw = parse_cli_pairs(
        [("region", "'); import os; ('"), ("day", "2026-12-24"), ("limit", "7"), ("flags", "a,b")]
    )
    values = schema.validate_values(raw, from_strings=True).values
    public, _ = render_injection(values, schema.secret_names())
    assert run_source(public) == {
        "region": "'); import os; ('",
        "day": date(2026, 12, 24),
        "limit": 7,
        "flags": ["a", "b"],
    }


# --- parameterize ------------------------------------------------------------------------------


def test_parameterize_inserts_cell_after_parameters_cell() -> None:
    """The injected cell follows the parameters cell with papermill's shape."""
    nb = notebook(
        code("import x", cell_id="c1"),
        code(BASIC, "parameters", cell_id="c2"),
        code("print(limit)", cell_id="c3"),
    )
    original = copy.deepcopy(nb)
    schema = read_schema(nb)
    out = parameterize(nb, {"limit": 5}, schema)
    assert nb == original  # input untouched
    assert [c.get("id") for c in out["cells"]][:2] == ["c1", "c2"]
    assert out["cells"][3]["id"] == "c3"
    cell = out["cells"][2]
    assert cell == {
        "cell_type": "code",
        "execution_count": None,
        "id": cell["id"],
        "metadata": {"tags": ["injected-parameters"]},
        "outputs": [],
        "source": "# Parameters\nlimit = 5\n",
    }
    assert isinstance(cell["id"], str) and len(cell["id"]) >= 8
    assert cell["id"] not in {"c1", "c2", "c3"}
    assert out["metadata"]["papermill"]["parameters"] == {"limit": 5}


def test_parameterize_without_parameters_cell_inserts_at_top() -> None:
    """With no parameters cell the injected cell goes first."""
    nb = notebook(code("print(1)"))
    out = parameterize(nb, {"x": 1}, read_schema(nb))
    assert out["cells"][0]["metadata"]["tags"] == ["injected-parameters"]
    assert out["cells"][1] == nb["cells"][0]


def test_parameterize_replaces_existing_injected_cell() -> None:
    """An existing injected-parameters cell is replaced, not duplicated."""
    nb = notebook(code("a = 1", "parameters"), code("b"), code("a = 2", "injected-parameters"))
    out = parameterize(nb, {"a": 3}, read_schema(nb))
    assert len(out["cells"]) == 3
    assert out["cells"][2]["source"] == "# Parameters\na = 3\n"
    assert out["cells"][1]["source"] == "b"
    tagged = [c for c in out["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(tagged) == 1


def test_parameterize_redacts_secrets_everywhere() -> None:
    """Secret values are neither in the injected cell nor in the papermill metadata."""
    nb = notebook(
        code("token: Secret[str] = ''\nday = date(2026, 1, 1)\n", "parameters"),
        metadata={"papermill": {"version": "2.6"}, "kernelspec": {"name": "python3"}},
    )
    out = parameterize(nb, {"token": "s3cr3t", "day": date(2026, 2, 3)}, read_schema(nb))
    assert "s3cr3t" not in json.dumps(out)
    assert out["metadata"]["papermill"] == {
        "version": "2.6",
        "parameters": {"token": "***", "day": "2026-02-03"},
    }
    assert out["metadata"]["kernelspec"] == {"name": "python3"}


def test_parameterize_creates_missing_metadata() -> None:
    """A notebook without metadata gets metadata.papermill.parameters."""
    nb: dict[str, Any] = {"cells": [code("a = 1", "parameters")]}
    out = parameterize(nb, {"a": 2}, read_schema(nb))
    assert out["metadata"] == {"papermill": {"parameters": {"a": 2}}}


def test_parameterize_leaves_cells_without_ids_alone() -> None:
    """Existing cells without an id do not get one."""
    nb = notebook(code("a = 1", "parameters"), code("print(a)"))
    out = parameterize(nb, {}, read_schema(nb))
    assert "id" not in out["cells"][0] and "id" not in out["cells"][2]
    assert out["cells"][1]["source"] == "# Parameters\n"


def test_parameterize_ids_are_unique_across_calls() -> None:
    """Each injection gets a fresh id."""
    nb = notebook(code("a = 1", "parameters"))
    schema = read_schema(nb)
    ids = {parameterize(nb, {"a": i}, schema)["cells"][1]["id"] for i in range(50)}
    assert len(ids) == 50


# --- scrub -------------------------------------------------------------------------------------


def test_scrub_replaces_every_occurrence() -> None:
    """Every occurrence of each secret is replaced by '***'."""
    text = "token=abc; again abc; other=xyz"
    assert scrub(text, ["abc", "xyz"]) == "token=***; again ***; other=***"


def test_scrub_ignores_empty_secrets() -> None:
    """An empty secret does not turn every gap into '***'."""
    assert scrub("hello", ["", "zzz"]) == "hello"
    assert scrub("hello", []) == "hello"


def test_scrub_prefers_longest_secret() -> None:
    """Overlapping secrets are fully hidden, with no leftover suffix."""
    assert scrub("key=abcdef", ["abc", "abcdef"]) == "key=***"


def test_scrub_hides_repr_escaped_form() -> None:
    """A secret shown through repr() (escaped quotes/newlines) is hidden too."""
    secret = "it's\nme"
    text = f"ValueError: {secret!r}"
    assert secret[:4] not in scrub(text, [secret])
    assert scrub(text, [secret]) == 'ValueError: "***"'


def test_problem_judges_one_typed_text_as_a_form_field_would() -> None:
    """problem() answers None for text that fits the declared type, a one-line reason for
    text that does not, for an unknown name, and for a required parameter left empty."""
    schema = schema_of(
        'n: int = 1\nwhen: str\nmode: Literal["a", "b"] = "a"\nday: date = date(2024, 1, 1)'
    )
    assert schema.problem("n", "3") is None and schema.problem("n", "") is None
    assert schema.problem("n", "x") == "parameter 'n': expected int, got 'x'"
    assert schema.problem("when", "") == "missing required parameter 'when' (str)"
    assert schema.problem("mode", "c") == "parameter 'mode': expected one of 'a', 'b', got 'c'"
    assert schema.problem("day", "2024-02-01") is None
    assert schema.problem("day", "2024-13-01") == "parameter 'day': expected date, got '2024-13-01'"
    assert schema.problem("zz", "1") == "unknown parameter 'zz' (declared: n, when, mode, day)"
