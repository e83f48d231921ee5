"""casare_nb's jupyter_server extension (auto-enabled on install by
``etc/jupyter/jupyter_server_config.d/casare_nb.json``). The prebuilt JupyterLab
extension is ``casare_nb/labextension`` (see ``casare_nb._jupyter_labextension_paths``).
See docs/jupyter.md. The handlers are imported when the server loads the extension, not
when ``jupyter server extension list`` imports this package to validate it."""

from __future__ import annotations

from typing import Any

__all__ = []  # entry points only: Jupyter finds them by name


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "casare_nb.jupyter"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from casare_nb.jupyter.handlers import handlers

    web_app = serverapp.web_app
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    serverapp.log.info("casare_nb: /casare/ routes to the orchestrator are on")
