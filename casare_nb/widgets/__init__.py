"""The monitoring dashboard (ipywidgets 8 + bqplot) and the graph editor (anywidget) for
JupyterLab::

    from casare_nb.widgets import Dashboard, GraphEditor
    Dashboard()            # or Dashboard(client); the orchestrator found like Client.local()
    GraphEditor("workflows/scrape_prices.ipynb")   # opens (or creates) the workflow

The graph editor: :mod:`.graph_session` (its state, plain Python), :mod:`.graph_view` (the
anywidget view and its front end), :mod:`.graph_editor` (the wiring, runs).

The parts: :mod:`.state` (the reducers and view models, plain Python), :mod:`.feed` (the
event thread), :mod:`.fields` and :mod:`.render` (form plans and HTML, plain Python),
:mod:`.forms`, :mod:`.views` and :mod:`.chart` (the widgets), :mod:`.dashboard` (the
wiring). ``Dashboard`` and ``GraphEditor`` are imported on first use, inside ``__getattr__``:
importing this package (or :mod:`.state`) loads neither ipywidgets, anywidget nor bqplot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Dashboard", "GraphEditor", "Intervals"]

_HOMES = {
    "Dashboard": "casare_nb.widgets.dashboard",
    "Intervals": "casare_nb.widgets.dashboard",
    "GraphEditor": "casare_nb.widgets.graph_editor",
}

if TYPE_CHECKING:
    from casare_nb.widgets.dashboard import Dashboard, Intervals
    from casare_nb.widgets.graph_editor import GraphEditor


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'casare_nb.widgets' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_HOMES[name]), name)
