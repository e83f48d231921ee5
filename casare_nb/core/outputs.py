"""Named values a notebook records with ``casare_nb.output(name, value)``, read from its cells.

Pure: a recorded value is one display output whose data holds :data:`OUTPUT_MIME` ->
``{"name": ..., "value": ...}`` (scrapbook's *glue*, as JSON). :func:`output_payload` checks
what a cell records; :func:`cell_outputs` and :func:`extract_outputs` read nbformat cells
(plain dicts) back. The orchestrator stores what its jobs record (``TriggerStore.outputs``)
and passes it on to the workflows chained after them.
"""

from __future__ import annotations

import json
import keyword
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = ["OUTPUT_MIME", "cell_outputs", "extract_outputs", "output_payload"]

OUTPUT_MIME: Final = "application/vnd.casare.output+json"
"""The MIME type of a recorded value's display output."""

_DISPLAY_TYPES: Final = frozenset({"display_data", "execute_result"})


def output_payload(name: str, value: Any) -> dict[str, Any]:
    """The display data payload recording ``value`` as ``name``.

    Raises ValueError for a name that is not a Python identifier (it names a parameter of
    the workflows chained after), TypeError for a value JSON cannot hold."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(f"output name {name!r} is not a Python identifier")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"output {name!r}: a {type(value).__name__} value is not JSON-serialisable ({exc})"
        ) from None
    return {"name": name, "value": value}


def cell_outputs(cell: Mapping[str, Any]) -> dict[str, Any]:
    """Name -> value of what one cell recorded (a later output of a name wins)."""
    found: dict[str, Any] = {}
    outputs = cell.get("outputs")
    if not outputs:
        return found
    for out in outputs:
        if not isinstance(out, Mapping) or out.get("output_type") not in _DISPLAY_TYPES:
            continue
        data = out.get("data")
        if not isinstance(data, Mapping) or OUTPUT_MIME not in data:
            continue
        payload = data[OUTPUT_MIME]
        if isinstance(payload, str):  # some writers keep JSON data as text
            try:
                payload = json.loads(payload)
            except ValueError:
                continue
        if isinstance(payload, Mapping) and isinstance(payload.get("name"), str):
            found[payload["name"]] = payload.get("value")
    return found


def extract_outputs(cells: Iterable[Mapping[str, Any]]) -> dict[str, tuple[Any, int | None]]:
    """Name -> (value, index of the cell recording it) over a notebook's cells, in order
    (a later cell's value of a name wins)."""
    found: dict[str, tuple[Any, int | None]] = {}
    for index, cell in enumerate(cells):
        for name, value in cell_outputs(cell).items():
            found[name] = (value, index)
    return found
