"""Parameter values into a notebook, and secrets out of everything stored: papermill's
injected cell, the silent code setting secrets, values redacted for the history and secret
text scrubbed from outputs.

Pure: stdlib + pydantic only, no I/O.
"""

from __future__ import annotations

import copy
import html
import json
import math
import re
import uuid
from collections.abc import Collection, Iterable, Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import PurePath
from typing import Any, cast

from pydantic import SecretStr

from casare_nb.core.errors import ParameterError
from casare_nb.core.literals import render_literal
from casare_nb.core.parameters_cell import INJECTED_TAG, PARAMETERS_TAG, tagged_code_cells
from casare_nb.core.params import ParamSchema, check_name

__all__ = ["REDACTED", "Scrubber", "parameterize", "redact", "render_injection", "scrub"]

REDACTED = "***"


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

    The escaped forms of a secret (``repr``, as it shows in tracebacks; JSON; HTML) are
    scrubbed too. Many texts with the same secrets: :class:`Scrubber`.
    """
    return Scrubber(secret_values).text(text)


class Scrubber:
    """Secret values scrubbed out of texts and JSON values, each replaced by ``"***"``.

    A secret is looked for as it is and in the escaped forms it takes in outputs: ``repr``
    (tracebacks, reprs of containers), JSON strings, HTML text and attributes."""

    def __init__(self, secret_values: Iterable[str]) -> None:
        needles: set[str] = set()
        for secret in secret_values:
            secret = str(secret)
            if not secret:
                continue
            needles.add(secret)
            needles.add(repr(secret)[1:-1])
            needles.add(json.dumps(secret)[1:-1])
            needles.add(json.dumps(secret, ensure_ascii=False)[1:-1])
            needles.add(html.escape(secret))
            needles.add(html.escape(secret, quote=False))
        needles.discard("")
        self.secrets = frozenset(needles)
        self._pattern = (
            re.compile("|".join(re.escape(n) for n in sorted(needles, key=len, reverse=True)))
            if needles
            else None
        )

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        """``text`` with every secret replaced by ``"***"``."""
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(REDACTED, text)

    def json(self, value: Any) -> Any:
        """A JSON value (strings, numbers, lists, dicts, nested) with every secret scrubbed
        from its strings, dict keys included; a number written as a secret (a secret ``1234``)
        becomes ``"***"``. Anything else is left as it is."""
        if self._pattern is None:
            return value
        return self._json(value)

    def _json(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int | float):
            return REDACTED if _number_text(value) in self.secrets else value
        if isinstance(value, Mapping):
            items = {
                self._json(k) if isinstance(k, str) else k: self._json(v) for k, v in value.items()
            }
            # a dict subclass (nbformat's NotebookNode) stays of its kind
            return (
                items if type(value) is dict or not isinstance(value, dict) else type(value)(items)
            )
        if isinstance(value, list | tuple):
            return [self._json(v) for v in value]
        return value


def _number_text(value: int | float) -> str:
    try:
        return json.dumps(value)
    except ValueError:  # an int of more digits than Python turns into text
        return ""


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
        check_name(name)
        if name.startswith("__"):
            raise ParameterError(f"{name!r} is not a valid parameter name (reserved)")
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        literal = render_literal(value, name, set())
        if name in secret_names:
            public.append(f"# {name}: secret parameter, injected at run time (not shown)\n")
            secret.append(f"{name} = {literal}\n")
        else:
            public.append(f"{name} = {literal}\n")
    return "".join(public), "".join(secret)


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
    injected = tagged_code_cells(out, INJECTED_TAG)
    params_cells = tagged_code_cells(out, PARAMETERS_TAG)
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
