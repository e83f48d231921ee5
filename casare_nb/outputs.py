"""``casare_nb.output(name, value)``: record a named JSON value from a notebook cell.

The value goes out as a display output of MIME type
:data:`~casare_nb.core.outputs.OUTPUT_MIME`, so it travels in the executed notebook: the
orchestrator stores it with the run (``TriggerStore.outputs``) and passes it to a workflow
chained after this one that declares a parameter of that name.
"""

from __future__ import annotations

from typing import TypeVar

from casare_nb.core.outputs import OUTPUT_MIME, output_payload

__all__ = ["output"]

T = TypeVar("T")


def output(name: str, value: T) -> T:
    """Record ``value`` (anything JSON holds) as the output ``name`` of this run; answer
    ``value``. Outside a kernel it records nothing.

    Raises ValueError for a name that is not a Python identifier, TypeError for a value
    that is not JSON-serialisable."""
    payload = output_payload(name, value)
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return value
    if get_ipython() is None:  # type: ignore[no-untyped-call]
        return value
    display({OUTPUT_MIME: payload}, raw=True)  # type: ignore[no-untyped-call]
    return value
