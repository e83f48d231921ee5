"""The graph editor's canvas as an anywidget (the front end is ``graph_editor.js`` and
``graph_editor.css`` next to this file): the traits and messages of docs/graph-editor.md,
"The widget (anywidget)". The only module of casare_nb that imports anywidget; the logic
(templates, the notebook, runs) lives in the controller that drives it.

Traits: ``palette`` (templates as JSON, each with ``broken``), ``graph`` (``nodes``,
``edges``, ``inputs``; the front end sends it once a gesture ends), ``problems``
(``{node id: [message, ...], "": [graph-level message, ...]}``), ``status``
(``{node id: "queued" | "running" | "ok" | "failed" | "skipped"}``), ``message`` (one
status line) and ``path``. The front end sends custom messages
``{"action": "save" | "run" | "layout"}`` and ``{"action": "rerun" | "reset", "node": id}``
(reset: a node edited by hand back to its template), each after the graph updates made
before it; :meth:`GraphView.on_action` receives them. Python may send
``{"action": "fit"}`` or ``{"action": "select", "node": id}`` to the view.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import traitlets

__all__ = ["ActionHandler", "GraphView"]

HERE = Path(__file__).parent
ActionHandler = Callable[[dict[str, Any]], None]


class GraphView(anywidget.AnyWidget):  # type: ignore[misc]
    """The canvas, palette, side panel and toolbar of the graph editor."""

    _esm = HERE / "graph_editor.js"
    _css = HERE / "graph_editor.css"

    palette = traitlets.List(traitlets.Dict()).tag(sync=True)
    graph = traitlets.Dict().tag(sync=True)
    problems = traitlets.Dict().tag(sync=True)
    status = traitlets.Dict().tag(sync=True)
    message = traitlets.Unicode("").tag(sync=True)
    path = traitlets.Unicode("").tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._action_handlers: dict[ActionHandler, Callable[..., None]] = {}

    def on_action(self, callback: ActionHandler, *, remove: bool = False) -> None:
        """Call ``callback(content)`` with each ``{"action": ...}`` message the view sends
        (``remove=True`` unregisters it)."""
        if remove:
            registered = self._action_handlers.pop(callback, None)
            if registered is not None:
                self.on_msg(registered, remove=True)
            return
        if callback in self._action_handlers:
            return

        def wrapper(_widget: object, content: object, _buffers: object) -> None:
            if isinstance(content, dict) and isinstance(content.get("action"), str):
                callback(content)

        self._action_handlers[callback] = wrapper
        self.on_msg(wrapper)

    def send_action(self, action: str, **content: Any) -> None:
        """Send ``{"action": action, ...}`` to the views (``fit``; ``select`` with ``node``)."""
        self.send({"action": action, **content})
