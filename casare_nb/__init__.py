"""casare_nb: parameterised notebooks, run cell by cell, every cell a checkpoint.

Importing this package is cheap: what it offers (``Client``, ``run_notebook``...) is imported
on first use, inside ``__getattr__``, so that ``import casare_nb`` loads no engine. The
package's parts and the path of one job: ``docs/architecture.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Client",
    "ClientError",
    "RunResult",
    "Secret",
    "aresume",
    "arun_notebook",
    "output",
    "resume",
    "run_notebook",
]

if TYPE_CHECKING:
    from casare_nb.client import Client, ClientError
    from casare_nb.core.params import Secret
    from casare_nb.local import aresume, arun_notebook, resume, run_notebook
    from casare_nb.notebook.run import RunResult
    from casare_nb.outputs import output

_LAZY = {
    "Client": "casare_nb.client",
    "ClientError": "casare_nb.client",
    "Secret": "casare_nb.core.params",
    "RunResult": "casare_nb.notebook.run",
    "run_notebook": "casare_nb.local",
    "arun_notebook": "casare_nb.local",
    "resume": "casare_nb.local",
    "aresume": "casare_nb.local",
    "output": "casare_nb.outputs",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'casare_nb' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the prebuilt JupyterLab extension is (``jupyter labextension develop``)."""
    return [{"src": "labextension", "dest": "casare-nb"}]
