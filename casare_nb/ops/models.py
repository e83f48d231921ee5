"""What the operators' procedures answer, and the manifest of a backup archive: pydantic
models, as they cross the HTTP API and sit in the archive."""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "ARCHIVE_FORMAT",
    "ARCHIVE_MANIFEST",
    "SUMMARY_HEADER",
    "ArchiveFile",
    "BackupManifest",
    "BackupSummary",
    "CleanupReport",
    "CleanupRequest",
    "RestoreSummary",
]

ARCHIVE_FORMAT: Final = "casare-nb-backup"
ARCHIVE_MANIFEST: Final = "casare-backup.json"
"""The archive's last member: what it holds, with the sha256 of every other member."""
SUMMARY_HEADER: Final = "X-Casare-Backup"
"""The response header of ``POST /api/admin/backup`` holding its :class:`BackupSummary`."""


class ArchiveFile(BaseModel):
    """One member of a backup archive."""

    model_config = ConfigDict(extra="forbid")

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class BackupManifest(BaseModel):
    """``casare-backup.json``, the last member of a backup archive (a tar file): what it
    holds. ``tables``: the rows of each table of the database export (``db/``);
    ``files``: every other member; ``missing_blobs``: blobs a manifest named that the state
    directory did not hold when the backup was taken."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["casare-nb-backup"] = ARCHIVE_FORMAT
    version: Literal[1] = 1
    created_at: AwareDatetime
    casare_nb: str
    schema_version: int
    tables: dict[str, int]
    files: list[ArchiveFile]
    missing_blobs: list[str] = []


class BackupSummary(BaseModel):
    """What a backup took: its rows, files and size."""

    created_at: datetime
    seconds: float
    bytes: int = 0
    """Size of the archive (0 until it is all written)."""
    tables: dict[str, int]
    checkpoints: int
    """Checkpoint manifests."""
    notebooks: int
    """Output notebooks (each attempt's notebook so far)."""
    blobs: int
    blob_bytes: int
    missing_blobs: int


class RestoreSummary(BaseModel):
    """What a restore put in place."""

    state_dir: str
    created_at: datetime
    """When the backup was taken."""
    tables: dict[str, int]
    checkpoints: int
    notebooks: int
    blobs: int
    replaced: bool
    """Whether the state directory held a history that the backup replaced."""
    seconds: float


class CleanupRequest(BaseModel):
    """``POST /api/admin/cleanup``: remove what ended before ``before``."""

    model_config = ConfigDict(extra="forbid")

    before: AwareDatetime
    dry_run: bool = False


class CleanupReport(BaseModel):
    """What a cleanup removed (or would remove: ``dry_run``)."""

    before: datetime
    dry_run: bool
    runs: int
    """Runs and jobs (by id) removed."""
    attempts: int
    cells: int
    jobs: int
    outputs: int
    fires: int
    folders: int
    """Run folders (checkpoints, output notebooks) removed, orphans included."""
    blobs: int
    blob_bytes: int
    blobs_kept: int
    logs: int
    """Rotated log files removed."""
    seconds: float
