"""Numbers no parameter takes: NaN and infinities, integers beyond 64 bits, refused however
they are given (Python values, JSON, YAML, ``-p`` text), with a one-line error naming the
parameter. No kernel."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import pytest
import yaml

from casare_nb.core.params import INT_BITS, ParameterError, ParamSchema, read_schema

DECLARED = """\
from decimal import Decimal
from casare_nb import Secret
f: float = 0.0
n: int = 0
maybe: float | None = None
amount: Decimal = Decimal("0")
floats: list[float] = []
counts: dict[str, int] = {}
anything = None
pin: Secret[int] = 0
"""

NON_FINITE = "NaN and infinities are not accepted"
OUT_OF_RANGE = "integer out of the signed 64-bit range"
BIG = int("1" + "0" * 399)  # 400 digits


def schema() -> ParamSchema:
    cell = {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": DECLARED}
    return read_schema({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})


def refused(values: dict[str, Any] | None = None, texts: dict[str, str] | None = None) -> str:
    """The one-line error for ``values`` and ``-p`` ``texts``."""
    with pytest.raises(ParameterError) as exc:
        schema().validate_values(values or {}, text_values=texts)
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_python_float_nan_and_infinities_are_refused(value: float) -> None:
    """A float parameter given NaN or an infinity as a Python float is refused by name."""
    assert refused({"f": value}).startswith(f"parameter 'f': {NON_FINITE}")


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", "-infinity", "1e999"])
def test_text_nan_and_infinities_are_refused(text: str) -> None:
    """``-p f TEXT`` reading as NaN or an infinity is refused, on the command line and in a
    form field alike."""
    assert refused(texts={"f": text}).startswith(f"parameter 'f': {NON_FINITE}")
    assert (schema().problem("f", text) or "").startswith(f"parameter 'f': {NON_FINITE}")


@pytest.mark.parametrize("document", ['{"f": NaN}', '{"f": Infinity}', '{"f": -1e400}'])
def test_json_nan_and_infinities_are_refused(document: str) -> None:
    """JSON values Python reads as NaN or an infinity are refused."""
    assert refused(json.loads(document)).startswith(f"parameter 'f': {NON_FINITE}")


@pytest.mark.parametrize("document", ["f: .nan", "f: .inf", "f: -.Inf", "maybe: .NaN"])
def test_yaml_nan_and_infinities_are_refused(document: str) -> None:
    """YAML's .nan and .inf (a parameters file) are refused, optional floats included."""
    values = yaml.safe_load(document)
    assert refused(values).startswith(f"parameter '{next(iter(values))}': {NON_FINITE}")


def test_decimal_nan_and_infinity_are_refused() -> None:
    """A Decimal parameter refuses Decimal NaN and Infinity, given or as text."""
    for values, texts in (({"amount": Decimal("NaN")}, None), (None, {"amount": "Infinity"})):
        assert refused(values, texts).startswith("parameter 'amount': ")


def test_nan_inside_containers_and_untyped_values_is_refused() -> None:
    """NaN in a list, an integer too large in a dict, and NaN for an untyped parameter are
    refused."""
    assert refused({"floats": [1.0, math.nan]}).startswith(f"parameter 'floats': {NON_FINITE}")
    assert refused({"counts": {"a": BIG}}).startswith(f"parameter 'counts': {OUT_OF_RANGE}")
    assert refused({"anything": math.inf}).startswith(f"parameter 'anything': {NON_FINITE}")


@pytest.mark.parametrize(
    "values",
    [{"n": BIG}, {"n": -BIG}, json.loads(f'{{"n": {BIG}}}'), yaml.safe_load(f"n: {BIG}")],
    ids=["python", "negative", "json", "yaml"],
)
def test_400_digit_int_is_refused(values: dict[str, Any]) -> None:
    """An int parameter given a 400-digit integer (Python, JSON, YAML) is refused by name."""
    message = refused(values)
    assert message.startswith(f"parameter 'n': {OUT_OF_RANGE}")
    assert str(BIG) not in message and len(message) < 200


def test_400_digit_text_is_refused() -> None:
    """``-p n <400 digits>`` and the same text in a form field are refused."""
    assert refused(texts={"n": str(BIG)}).startswith(f"parameter 'n': {OUT_OF_RANGE}")
    assert (schema().problem("n", str(BIG)) or "").startswith(f"parameter 'n': {OUT_OF_RANGE}")


def test_the_64_bit_range_is_accepted_to_its_ends() -> None:
    """-2**63 and 2**63 - 1 are taken; one past either end is refused."""
    low, high = -(2 ** (INT_BITS - 1)), 2 ** (INT_BITS - 1) - 1
    assert schema().validate_values({"n": low}).values == {"n": low}
    assert schema().validate_values({}, text_values={"n": str(high)}).values == {"n": high}
    assert OUT_OF_RANGE in refused({"n": high + 1})
    assert OUT_OF_RANGE in refused({"n": low - 1})


def test_finite_numbers_are_still_accepted() -> None:
    """Large finite floats, exponents and ordinary values pass as before."""
    result = schema().validate_values(
        {"f": 1e308, "floats": [0.5, -2.0], "amount": Decimal("1.5")},
        text_values={"maybe": "1e-300", "counts": '{"a": 3}'},
    )
    assert result.values == {
        "f": 1e308,
        "floats": [0.5, -2.0],
        "amount": Decimal("1.5"),
        "maybe": 1e-300,
        "counts": {"a": 3},
    }


def test_untyped_parameter_keeps_nan_text_as_text() -> None:
    """``-p anything nan`` for an untyped parameter is the text 'nan', not a float."""
    result = schema().validate_values({}, text_values={"anything": "nan"})
    assert result.values == {"anything": "nan"}


def test_secret_number_out_of_range_is_not_shown() -> None:
    """A secret integer out of range is refused without its digits in the message."""
    message = refused({"pin": BIG})
    assert message.startswith(f"parameter 'pin': {OUT_OF_RANGE}") and "1000" not in message


def test_lenient_mode_warns_instead() -> None:
    """Lenient validation turns the refusal into a warning naming the parameter."""
    result = schema().validate_values({"f": math.nan}, strict=False)
    assert result.warnings == [f"parameter 'f': {NON_FINITE} (give a finite number)"]
