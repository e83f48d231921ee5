"""Debug a failed job where it failed, away from the robot that ran it.

The orchestrator plans it (``GET /api/jobs/{id}/debug``: the notebook, the resume plan, the
checkpoint manifests and the blobs they name); :func:`fetch` puts those in a local state
folder, :func:`restore` brings a kernel -- a Jupyter server's (``casare_nb.jupyter``) or
one of ``casare-nb debug`` -- to the namespace before the failed cell, and
:func:`debug_notebook` is the notebook an analyst opens on it: the run's outputs so far, a
note above the failed cell, and ``casare_debug`` metadata. Once the failed cell works,
:func:`edited_sources` are the code cells to write back for the re-run ("Resume from here").
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from casare_nb.api import DebugBundle
from casare_nb.client import Client
from casare_nb.core.errors import CasareError
from casare_nb.notebook.debug import Restored, restore_before_failed_cell
from casare_nb.notebook.kernels import KernelSession
from casare_nb.notebook.state import StateDir, write_json_atomic
from casare_nb.notebook.workflow import INJECTED_ID, as_notebook

__all__ = [
    "DEBUG_META",
    "NOTE_ID",
    "DebugError",
    "debug_filename",
    "debug_meta",
    "debug_notebook",
    "default_debug_state",
    "edited_sources",
    "fetch",
    "restore",
]

DEBUG_META: Final = "casare_debug"
"""The notebook metadata key of a debug notebook (the lab extension looks for it)."""
NOTE_ID: Final = "casare-debug-note"
"""The id of the markdown note put above the failed cell (not a workflow cell)."""
_FETCHERS: Final = 4


class DebugError(CasareError):
    """A debug notebook that cannot be used (no metadata, not a notebook)."""


def default_debug_state() -> StateDir:
    """Where debug kernels' checkpoints and blobs go: one folder per user in the temporary
    directory, shared by every debug session (blobs are content-addressed)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return StateDir(Path(tempfile.gettempdir()) / f"casare-debug-{uid}").ensure_writable()


def fetch(client: Client, bundle: DebugBundle, state: StateDir) -> None:
    """Write the bundle's manifests into ``state`` and fetch the blobs it lacks (each
    checked against its digest; a few at a time)."""
    paths = state.attempt(bundle.job_id, bundle.attempt).create()
    for cell_id, manifest in bundle.manifests.items():
        write_json_atomic(paths.manifest(cell_id), manifest)
    missing = [sha for sha in bundle.blobs if not state.blob_path(sha).is_file()]

    def one(sha: str) -> None:
        data = client.blob(sha)
        if hashlib.sha256(data).hexdigest() != sha:
            raise DebugError(f"blob {sha} arrived damaged (its digest differs)")
        path = state.blob_path(sha)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    with ThreadPoolExecutor(max_workers=_FETCHERS) as pool:
        list(pool.map(one, missing))


async def restore(session: KernelSession, bundle: DebugBundle, state: StateDir) -> Restored:
    """Bring ``session``'s kernel to the namespace before the bundle's failed cell (the
    bundle fetched into ``state`` first)."""
    nb = as_notebook(copy.deepcopy(bundle.notebook))
    return await restore_before_failed_cell(
        session, nb, bundle.plan, state, run_id=bundle.job_id, attempt=bundle.attempt
    )


def debug_filename(bundle: DebugBundle) -> str:
    """``<workflow stem>.debug-<job>.ipynb``."""
    return f"{Path(bundle.workflow_path).stem}.debug-{bundle.job_id}.ipynb"


def debug_notebook(bundle: DebugBundle, restored: Restored) -> dict[str, Any]:
    """The notebook to open on the restored kernel: the run's cells and outputs, a note
    above the failed cell saying what the kernel holds, ``casare_debug`` metadata."""
    nb = copy.deepcopy(bundle.notebook)
    cells: list[dict[str, Any]] = nb["cells"]
    at = min(bundle.failed_cell_index, len(cells))
    missing = ", ".join(f"`{k}` ({v})" for k, v in sorted(restored.missing.items()))
    where = (
        f"the checkpoint after cell {restored.restored_from_cell}"
        if restored.restored_from_cell is not None
        else "the cells before it, replayed"
    )
    lines = [
        f"**casare: job `{bundle.job_id}` failed at the next cell** (attempt {bundle.attempt}).",
        f"This kernel holds its namespace as it was just before, from {where}: "
        + (", ".join(f"`{n}`" for n in restored.loaded) or "no variables")
        + ".",
    ]
    if missing:
        lines.append(f"Not restored: {missing}.")
    if bundle.secret_names:
        lines.append(f"Secret parameters are not restored: {', '.join(bundle.secret_names)}.")
    if not restored.ok:
        lines.append(f"Rebuilding the namespace failed: {restored.error}.")
    lines.append(
        "Edit and run the failed cell until it works, save, then **Resume from here** "
        "(toolbar): the job re-runs from this cell with your edited cells."
    )
    note = {
        "cell_type": "markdown",
        "id": NOTE_ID,
        "metadata": {"tags": ["casare-debug"]},
        "source": "\n\n".join(lines),
    }
    cells.insert(at, note)
    nb.setdefault("metadata", {})[DEBUG_META] = {
        "job_id": bundle.job_id,
        "attempt": bundle.attempt,
        "workflow": bundle.workflow_path,
        "failed_cell_id": bundle.failed_cell_id,
        "failed_cell_index": bundle.failed_cell_index,
        "cell_ids": [
            c["id"]
            for c in bundle.notebook["cells"]
            if c.get("cell_type") == "code" and c.get("id") != INJECTED_ID
        ],
    }
    return nb


def debug_meta(nb: dict[str, Any]) -> dict[str, Any]:
    """The ``casare_debug`` metadata of a debug notebook; DebugError if it has none."""
    meta = nb.get("metadata", {}).get(DEBUG_META) if isinstance(nb, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("job_id"), str):
        raise DebugError("not a casare debug notebook: no casare_debug metadata")
    return meta


def edited_sources(nb: dict[str, Any]) -> dict[str, str]:
    """The workflow's code cells in a (saved) debug notebook, by id: the new source to write
    back. Cells the analyst added there, the injected parameters and the note are left out.
    DebugError if ``nb`` is not a debug notebook."""
    workflow_ids = set(debug_meta(nb).get("cell_ids", []))
    out: dict[str, str] = {}
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code" or cell.get("id") not in workflow_ids:
            continue
        source = cell.get("source", "")
        out[str(cell["id"])] = "".join(source) if isinstance(source, list) else str(source)
    return out
