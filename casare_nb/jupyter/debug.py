"""A debug kernel as a normal kernel and session of the Jupyter server: started by its
kernel manager, restored at the failed cell (:mod:`casare_nb.debugging`), its notebook
written under the server's root and a session made on that path, so JupyterLab opening
the notebook attaches to the restored kernel."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Final

from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_core.utils import ensure_async

from casare_nb.debugging import (
    debug_filename,
    debug_meta,
    debug_notebook,
    default_debug_state,
    edited_sources,
    fetch,
    restore,
)
from casare_nb.jupyter.locate import Orchestrator
from casare_nb.notebook.kernels import KernelSession
from casare_nb.notebook.state import write_json_atomic

__all__ = ["DEBUG_FOLDER", "open_debug", "resume_debug"]

DEBUG_FOLDER: Final = "casare-debug"
"""Where debug notebooks go, under the Jupyter server's root."""


async def open_debug(
    orch: Orchestrator,
    job_id: str,
    *,
    root_dir: Path,
    kernel_manager: Any,
    session_manager: Any,
) -> dict[str, Any]:
    """Restore ``job_id`` at its failed cell in a new kernel of this server; answer the
    debug notebook's path, the kernel and session ids, and what was restored."""
    t0 = time.monotonic()
    state = default_debug_state()

    def fetched() -> Any:
        with orch.client() as client:
            bundle = client.debug_bundle(job_id)
            fetch(client, bundle, state)
        return bundle

    bundle = await asyncio.to_thread(fetched)
    path = f"{DEBUG_FOLDER}/{debug_filename(bundle)}"
    target = root_dir / path
    target.parent.mkdir(parents=True, exist_ok=True)  # the kernel starts in it
    kernel_id = await ensure_async(
        kernel_manager.start_kernel(kernel_name=bundle.kernel_name, path=DEBUG_FOLDER)
    )
    km = kernel_manager.get_kernel(kernel_id)
    try:
        session = await KernelSession.attach(km, client=_asyncio_client(km))
        try:
            workflow_dir = Path(bundle.workflow_path).parent
            if workflow_dir.is_dir():
                await session.chdir(workflow_dir)  # relative paths as the workflow's cells see them
            restored = await restore(session, bundle, state)
        finally:
            session.detach()
        notebook = debug_notebook(bundle, restored)
        write_json_atomic(target, notebook)
        model = await ensure_async(
            session_manager.create_session(
                path=path, name=target.name, type="notebook", kernel_id=kernel_id
            )
        )
    except BaseException:
        await ensure_async(kernel_manager.shutdown_kernel(kernel_id, now=True))
        raise
    return {
        "path": path,
        "kernel_id": kernel_id,
        "session_id": model["id"],
        "failed_cell_index": bundle.failed_cell_index,
        "restored": restored.loaded,
        "missing": restored.missing,
        "ok": restored.ok,
        "error": restored.error,
        "ready_s": round(time.monotonic() - t0, 3),
    }


async def resume_debug(orch: Orchestrator, job_id: str, notebook: Path) -> dict[str, Any]:
    """Re-run ``job_id`` from its failed cell with the code cells of its saved debug
    notebook as the workflow's source; answer the queued job (JSON)."""
    nb = json.loads(notebook.read_text("utf-8"))
    meta = debug_meta(nb)
    if meta["job_id"] != job_id:
        raise ValueError(f"{notebook.name} debugs job {meta['job_id']}, not {job_id}")
    sources = edited_sources(nb)

    def rerun() -> dict[str, Any]:
        with orch.client() as client:
            job = client.rerun(job_id, cell_sources=sources)
        return job.model_dump(mode="json")

    return await asyncio.to_thread(rerun)


def _asyncio_client(km: Any) -> AsyncKernelClient:
    """An asyncio client on a server kernel's connection (the server's own client class
    is made for tornado streams)."""
    kc = AsyncKernelClient()
    kc.load_connection_info(km.get_connection_info())
    return kc
