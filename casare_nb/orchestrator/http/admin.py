"""``/api/admin``: an operator's procedures on the orchestrator's own state, done by the
orchestrator (it holds the database: one writer), for an admin token.

- ``POST /api/admin/backup``: a consistent backup archive of the state directory
  (:mod:`casare_nb.ops.backup`), taken while jobs run, streamed back as ``application/x-tar``;
  what it holds is in the ``X-Casare-Backup`` header (a
  :class:`~casare_nb.ops.models.BackupSummary`).
- ``POST /api/admin/cleanup``: retention of what ended before ``before`` and the garbage
  collection of blobs (:mod:`casare_nb.ops.retention`); ``dry_run`` counts only.

One of them at a time (409 while another runs); each is written to the audit log.
"""

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from casare_nb.core.errors import QueueError, StateError, one_line
from casare_nb.notebook.state import StateDir
from casare_nb.ops import backup as ops_backup
from casare_nb.ops import retention
from casare_nb.ops.models import SUMMARY_HEADER, CleanupReport, CleanupRequest
from casare_nb.orchestrator import audit
from casare_nb.orchestrator.http.deps import AUTH_ERRORS, AdminAuth, Written, error, with_errors

__all__ = ["router"]

router = APIRouter(prefix="/api/admin", tags=["admin"], responses=AUTH_ERRORS)

_BUSY = "a backup or cleanup is running on this orchestrator already; try again when it ends"


@contextlib.asynccontextmanager
async def _alone(request: Request) -> AsyncIterator[None]:
    """The block, while no other procedure of this module runs; 409 otherwise."""
    lock: asyncio.Lock | None = getattr(request.app.state, "admin_lock", None)
    if lock is None:
        lock = request.app.state.admin_lock = asyncio.Lock()
    if lock.locked():
        raise error(409, _BUSY)
    async with lock:
        yield


@router.post(
    "/backup",
    response_class=Response,
    responses={
        **with_errors(409, "Another backup or cleanup runs."),
        200: {"content": {"application/x-tar": {}}, "description": "The backup archive."},
    },
)
async def backup(request: Request, holder: AdminAuth, orch: Written) -> Response:
    """A consistent backup of the state directory (records, checkpoints, the blobs they
    name), taken now; streamed as a tar archive."""
    stores = orch.stores
    state = StateDir(orch.state_dir)
    path = state.root / f".backup-{secrets.token_hex(4)}.tar"
    async with _alone(request):

        def write() -> str:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with open(fd, "wb") as out:
                    summary = ops_backup.write_backup(state, stores.upkeep, out)
                summary.bytes = path.stat().st_size
                return summary.model_dump_json()
            except BaseException:
                path.unlink(missing_ok=True)
                raise

        try:
            summary = await asyncio.to_thread(write)
        except (StateError, QueueError, OSError) as exc:
            audit.denied(holder, "backup", str(state.root), one_line(exc), outcome="error")
            raise error(500, f"backup failed: {one_line(exc)}") from None
    audit.succeeded(holder, "backup", str(state.root))
    return FileResponse(
        path,
        media_type="application/x-tar",
        filename="casare-backup.tar",
        headers={SUMMARY_HEADER: summary},
        background=BackgroundTask(Path.unlink, path, missing_ok=True),
    )


@router.post(
    "/cleanup",
    response_model=CleanupReport,
    responses=with_errors(409, "Another backup or cleanup runs."),
)
async def cleanup(
    body: CleanupRequest, request: Request, holder: AdminAuth, orch: Written
) -> CleanupReport:
    """Remove the runs and jobs that ended before ``before`` (never a queued or running
    one), their files, and the blobs no kept checkpoint names; ``dry_run``: count only."""
    stores = orch.stores
    async with _alone(request):
        try:
            report = await asyncio.to_thread(
                retention.cleanup,
                stores.checkpoints,
                stores.upkeep,
                body.before,
                dry_run=body.dry_run,
                logs=Path(orch.state_dir) / "logs",
            )
        except (StateError, QueueError, OSError) as exc:
            target = f"before {body.before.isoformat()}"
            audit.denied(holder, "cleanup", target, one_line(exc), outcome="error")
            raise error(500, f"cleanup failed: {one_line(exc)}") from None
    detail = f"{report.runs} runs, {report.blobs} blobs" + (" (dry run)" if body.dry_run else "")
    audit.succeeded(holder, "cleanup", f"before {body.before.isoformat()}", detail)
    return report
