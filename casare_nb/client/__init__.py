"""The Python API of a running orchestrator, for analysts, notebooks and the CLI.

:class:`Client` is synchronous: HTTP calls with httpx, events over the orchestrator's
WebSocket (the ``subscribe`` message of :mod:`casare_nb.protocol`) with the same bearer
token. ``Client.local()`` reads the runtime file a local orchestrator writes in its state
directory (``./.casare/orchestrator.json`` or ``$CASARE_HOME``)::

    from casare_nb import Client

    client = Client.local()                       # or Client("http://host:8766", token)
    job = client.submit("flaky_ingest.ipynb", wait=True)
    if job.status != "completed":
        job = client.rerun(job.job_id, parameters={"max_bad_ratio": 0.1}, wait=True)

Every failure is a :class:`ClientError` with the server's one-line reason and the HTTP
``status``; :class:`WaitTimeout` when :meth:`Client.wait` runs out of time. The parts:
:mod:`.client` (the HTTP API), :mod:`.events` (the event stream; websockets is imported on
first use, so HTTP-only callers skip its start-up), :mod:`.history` (``client.history``),
:mod:`.light` (the light client of ``casare-nb submit``: no httpx, no models).

The names below are imported on first use (``__getattr__``): importing
:mod:`casare_nb.client.light` does not load httpx and pydantic through this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from casare_nb.client.errors import ClientError, WaitTimeout

if TYPE_CHECKING:
    from casare_nb.client.client import Client
    from casare_nb.client.events import Subscription
    from casare_nb.client.history import History

__all__ = ["Client", "ClientError", "History", "Subscription", "WaitTimeout"]

_LAZY = {
    "Client": "casare_nb.client.client",
    "Subscription": "casare_nb.client.events",
    "History": "casare_nb.client.history",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'casare_nb.client' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
