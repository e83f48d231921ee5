"""The monitoring dashboard for JupyterLab (ipywidgets 8 + bqplot)::

    from casare_nb.widgets import Dashboard
    Dashboard()            # or Dashboard(client); the orchestrator found like Client.local()

The parts: :mod:`.state` (the reducers and view models, plain Python), :mod:`.feed` (the
event thread), :mod:`.fields` and :mod:`.render` (form plans and HTML, plain Python),
:mod:`.forms`, :mod:`.views` and :mod:`.chart` (the widgets), :mod:`.dashboard` (the
wiring). ``Dashboard`` is imported on first use, inside ``__getattr__``: importing this
package (or :mod:`.state`) loads neither ipywidgets nor bqplot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Dashboard", "Intervals"]

if TYPE_CHECKING:
    from casare_nb.widgets.dashboard import Dashboard, Intervals


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'casare_nb.widgets' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module("casare_nb.widgets.dashboard"), name)
