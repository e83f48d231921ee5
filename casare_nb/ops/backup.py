"""Backup and restore of a state directory, as one tar archive that says what it holds.

A backup is taken while the orchestrator runs (inside it, through its admin API) or on a
state directory nobody holds; either way:

1. the database first: the stores' own consistent export (:meth:`Upkeep.export
   <casare_nb.store.interfaces.Upkeep.export>`, DuckDB's ``EXPORT DATABASE`` in one
   transaction), into ``db/``: runs, cells, jobs, tokens (hashed), schedules, triggers...;
2. then every run folder's files as they are at that moment (``runs/<run>/<attempt>/``: the
   notebook so far, the checkpoint manifests), so each checkpoint of a run in the export is
   there (manifests are written once, after their blobs);
3. then the blobs those manifests name (``blobs/ab/cdef...``; blobs nobody names are left
   out), each read once and hashed;
4. last ``casare-backup.json`` (:class:`~casare_nb.ops.models.BackupManifest`): the row count
   of every table, and the size and sha256 of every other member.

The runtime file, the logs and the kernels' scratch files are not part of it.

A restore verifies before it replaces anything: every member is extracted into a folder
inside the state directory and hashed, must be listed with that hash (a blob's name is its
hash too), nothing listed may be missing, every blob a manifest names must be there, and the
export must load into a new database with the row counts listed. Only then are the database
file, ``blobs/`` and ``runs/`` swapped in (renames in one file system; put back if one
fails). Whatever is refused leaves the state directory as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Final

from pydantic import ValidationError

from casare_nb import __version__
from casare_nb.core.errors import StateError, one_line
from casare_nb.notebook.state import HISTORY_FILE, StateDir, blob_refs, private_dir
from casare_nb.ops.models import (
    ARCHIVE_FORMAT,
    ARCHIVE_MANIFEST,
    ArchiveFile,
    BackupManifest,
    BackupSummary,
    RestoreSummary,
)
from casare_nb.store.interfaces import Upkeep
from casare_nb.store.schema import SCHEMA_VERSION
from casare_nb.store.upkeep import import_export

__all__ = ["BackupError", "RestoreError", "holds_history", "restore", "write_backup"]

_ID: Final = r"[A-Za-z0-9_-]{1,64}"
_FILE: Final = r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}"
_MEMBER: Final = re.compile(
    rf"^(?:db/{_FILE}"
    rf"|runs/{_ID}/[0-9]{{1,9}}/(?:checkpoints/)?{_FILE}"
    r"|blobs/[0-9a-f]{2}/[0-9a-f]{62})$"
)
_CHUNK: Final = 1 << 20
_SWAPPED: Final = (HISTORY_FILE, "blobs", "runs")


class BackupError(StateError):
    """A backup could not be taken (one line)."""


class RestoreError(StateError):
    """A restore was refused; nothing was replaced (one line)."""


def holds_history(state: StateDir) -> bool:
    """Whether the state directory holds anything a restore would replace."""
    if state.history_path.exists():
        return True
    for folder in (state.blob_dir, state.root / "runs"):
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            if any(True for _ in entries):
                return True
    return False


# -- backup --------------------------------------------------------------------------------


class _Archive:
    """A tar stream being written, with what it holds."""

    def __init__(self, out: IO[bytes]) -> None:
        # closed by close(): the archive outlives this call
        self.tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.files: list[ArchiveFile] = []
        self.now = time.time()

    def add_bytes(self, name: str, data: bytes, mtime: float | None = None) -> None:
        self._add(name, len(data), io.BytesIO(data), mtime)

    def add_file(self, name: str, path: Path, size: int) -> None:
        with open(path, "rb") as f:
            self._add(name, size, f, None)

    def _add(self, name: str, size: int, source: IO[bytes], mtime: float | None) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = size, 0o600
        info.mtime = int(self.now if mtime is None else mtime)  # restored as it was
        hashing = _Hashing(source)
        self.tar.addfile(info, hashing)
        self.files.append(ArchiveFile(path=name, size=size, sha256=hashing.hash.hexdigest()))

    def close(self) -> None:
        self.tar.close()


class _Hashing(io.RawIOBase):
    """Reads ``source``, hashing what it reads."""

    def __init__(self, source: IO[bytes]) -> None:
        self.source = source
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.hash.update(data)
        return data


def _run_files(state: StateDir) -> Iterator[tuple[str, Path]]:
    """(member name, path) of every file of every run folder: notebooks, manifests, markers
    of skipped checkpoints (temporary and pending files left out)."""
    runs = state.root / "runs"
    for path in sorted(runs.glob("*/*/*")) + sorted(runs.glob("*/*/checkpoints/*")):
        name = path.relative_to(state.root).as_posix()
        if _MEMBER.match(name) and not name.endswith(".pending") and path.is_file():
            yield name, path


def _add_runs(archive: _Archive, state: StateDir) -> tuple[set[str], int, int]:
    """Add the files of every run folder; (the blobs their manifests name, manifests,
    notebooks)."""
    named: set[str] = set()
    checkpoints = notebooks = 0
    for name, path in _run_files(state):
        try:
            mtime = path.stat().st_mtime
            data = path.read_bytes()  # once: a notebook so far may be rewritten meanwhile
        except FileNotFoundError:
            continue
        archive.add_bytes(name, data, mtime)
        if name.endswith(".json") and "/checkpoints/" in name:
            checkpoints += 1
            with contextlib.suppress(ValueError):
                found = json.loads(data)
                if isinstance(found, dict):
                    named.update(blob_refs(found))
        elif name.endswith(".ipynb"):
            notebooks += 1
    return named, checkpoints, notebooks


def _add_blobs(archive: _Archive, state: StateDir, named: set[str]) -> tuple[list[str], int]:
    """Add the blobs ``named``, each read once; (those gone or damaged on disk, bytes)."""
    missing: list[str] = []
    size = 0
    for sha in sorted(named):
        data: bytes | None = None
        mtime = 0.0
        with contextlib.suppress(FileNotFoundError):
            path = state.blob_path(sha)
            mtime = path.stat().st_mtime
            data = path.read_bytes()
        if data is None or hashlib.sha256(data).hexdigest() != sha:
            missing.append(sha)
            continue
        archive.add_bytes(f"blobs/{sha[:2]}/{sha[2:]}", data, mtime)
        size += len(data)
    return missing, size


def write_backup(state: StateDir, upkeep: Upkeep | None, out: IO[bytes]) -> BackupSummary:
    """Write a backup of ``state`` (its records through ``upkeep``, the stores' own export;
    None: a state directory without a database) to ``out``, a binary stream; what it
    holds. BackupError if it cannot be taken (``out`` is then incomplete)."""
    began = time.monotonic()
    created = datetime.now(UTC)
    try:
        private_dir(state.root)
        scratch = state.root / f".backup-{secrets.token_hex(4)}"
        scratch.mkdir(mode=0o700)
    except OSError as exc:
        raise BackupError(f"cannot use state directory {state.root}: {exc.strerror}") from None
    try:
        tables: dict[str, int] = {}
        if upkeep is not None:
            tables = upkeep.export(scratch / "db")
        archive = _Archive(out)
        if upkeep is not None:
            for path in sorted((scratch / "db").iterdir()):
                archive.add_file(f"db/{path.name}", path, path.stat().st_size)
        named, checkpoints, notebooks = _add_runs(archive, state)
        missing, blob_bytes = _add_blobs(archive, state, named)
        manifest = BackupManifest(
            format=ARCHIVE_FORMAT,
            created_at=created,
            casare_nb=__version__,
            schema_version=_schema_version(tables),
            tables=tables,
            files=archive.files,
            missing_blobs=missing,
        )
        files = list(archive.files)
        archive.add_bytes(ARCHIVE_MANIFEST, manifest.model_dump_json(indent=1).encode())
        archive.close()
    except OSError as exc:
        raise BackupError(f"backup failed: {exc.strerror or one_line(exc)}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return BackupSummary(
        created_at=created,
        seconds=round(time.monotonic() - began, 3),
        tables=tables,
        checkpoints=checkpoints,
        notebooks=notebooks,
        blobs=sum(1 for f in files if f.path.startswith("blobs/")),
        blob_bytes=blob_bytes,
        missing_blobs=len(missing),
    )


def _schema_version(tables: dict[str, int]) -> int:
    """The schema version of the export: the code's (the database was migrated when opened),
    0 without a database."""
    return SCHEMA_VERSION if tables else 0


# -- restore -------------------------------------------------------------------------------


def _extract(archive: Path, into: Path) -> tuple[BackupManifest, dict[str, ArchiveFile]]:
    """Extract every member of ``archive`` into ``into``, hashing it; the manifest and what
    was found. RestoreError for anything that is not our archive, as it was written."""
    where = str(archive)
    try:
        tar = tarfile.open(archive, mode="r:")  # noqa: SIM115 - closed by the `with` below
    except FileNotFoundError:
        raise RestoreError(f"no such file {where}") from None
    except IsADirectoryError:
        raise RestoreError(f"{where} is a directory, not a backup archive") from None
    except PermissionError:
        raise RestoreError(f"cannot read {where}: permission denied") from None
    except (tarfile.TarError, OSError):
        raise RestoreError(f"{where} is not a casare-nb backup (not a tar archive)") from None
    found: dict[str, ArchiveFile] = {}
    manifest_bytes: bytes | None = None
    with tar:
        try:
            for member in tar:
                name = member.name
                if name == ARCHIVE_MANIFEST and member.isreg():
                    source = tar.extractfile(member)
                    manifest_bytes = source.read() if source is not None else b""
                    continue
                if not member.isreg() or not _MEMBER.match(name):
                    raise RestoreError(
                        f"{where} is not a casare-nb backup (unexpected member {name!r})"
                    )
                if name in found:
                    raise RestoreError(f"{where} is damaged: {name} appears twice")
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                found[name] = _copy(source, into / name, name)
                with contextlib.suppress(OSError):  # blobs keep their age (retention reads it)
                    os.utime(into / name, (member.mtime, member.mtime))
        except (tarfile.TarError, EOFError) as exc:
            raise RestoreError(
                f"{where} is truncated or damaged ({one_line(exc)}); nothing was restored"
            ) from None
    if manifest_bytes is None:
        raise RestoreError(
            f"{where} is not a casare-nb backup, or is truncated: no {ARCHIVE_MANIFEST}"
        )
    try:
        manifest = BackupManifest.model_validate_json(manifest_bytes)
    except ValidationError as exc:
        why = one_line(str(exc).splitlines()[0] if str(exc) else exc)
        raise RestoreError(f"{where} is not a casare-nb backup (its manifest: {why})") from None
    return manifest, found


def _copy(source: IO[bytes], dest: Path, name: str) -> ArchiveFile:
    """Write ``source`` to ``dest`` (a new private file), hashing it."""
    digest = hashlib.sha256()
    size = 0
    try:
        private_dir(dest.parent)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                f.write(chunk)
    except OSError as exc:
        raise RestoreError(f"cannot write {dest}: {exc.strerror or one_line(exc)}") from None
    return ArchiveFile(path=name, size=size, sha256=digest.hexdigest())


def _verify(
    where: str, manifest: BackupManifest, found: dict[str, ArchiveFile], staging: Path
) -> None:
    """Everything listed is there with its size and sha256, nothing else is; blobs are
    named by their hash; every blob a manifest names is there."""
    if manifest.schema_version > SCHEMA_VERSION:
        raise RestoreError(
            f"{where} was written by a newer casare-nb ({manifest.casare_nb}, schema "
            f"{manifest.schema_version}; this one reads up to {SCHEMA_VERSION})"
        )
    listed = {f.path: f for f in manifest.files}
    missing = sorted(set(listed) - set(found))
    if missing:
        raise RestoreError(
            f"{where} is truncated or damaged: {len(missing)} listed files are missing "
            f"(first {missing[0]}); nothing was restored"
        )
    extra = sorted(set(found) - set(listed))
    if extra:
        raise RestoreError(f"{where} is damaged: {extra[0]} is not in its manifest")
    for name, got in found.items():
        want = listed[name]
        blob = name.startswith("blobs/") and name.replace("/", "")[5:] != got.sha256
        if got.size != want.size or got.sha256 != want.sha256 or blob:
            raise RestoreError(
                f"{where} is damaged: {name} does not match its sha256; nothing was restored"
            )
    have = {name.replace("/", "")[5:] for name in found if name.startswith("blobs/")}
    known_missing = set(manifest.missing_blobs)
    for name in found:
        if "/checkpoints/" in name and name.endswith(".json"):
            with contextlib.suppress(OSError, ValueError):
                data = json.loads((staging / name).read_bytes())
                lacking = set(blob_refs(data) if isinstance(data, dict) else []) - have
                if lacking - known_missing:
                    raise RestoreError(
                        f"{where} is damaged: checkpoint {name} names a blob it does not "
                        f"hold ({sorted(lacking)[0]})"
                    )


def _swap(state: StateDir, staging: Path) -> None:
    """Move the database, ``blobs/`` and ``runs/`` of ``staging`` into the state directory,
    the old ones aside (then deleted); put everything back if a move fails."""
    aside = state.root / f".replaced-{secrets.token_hex(4)}"
    aside.mkdir(mode=0o700)
    moved: list[str] = []
    placed: list[str] = []
    try:
        for name in (*_SWAPPED, HISTORY_FILE + ".wal"):
            if os.path.lexists(state.root / name):
                os.replace(state.root / name, aside / name)
                moved.append(name)
        for name in _SWAPPED:
            if os.path.lexists(staging / name):
                os.replace(staging / name, state.root / name)
                placed.append(name)
    except OSError as exc:
        for name in placed:
            with contextlib.suppress(OSError):
                os.replace(state.root / name, staging / name)
        for name in moved:
            with contextlib.suppress(OSError):
                os.replace(aside / name, state.root / name)
        with contextlib.suppress(OSError):
            aside.rmdir()
        raise RestoreError(
            f"cannot put the restored files in place in {state.root}: "
            f"{exc.strerror or one_line(exc)}; the state directory is as it was"
        ) from None
    shutil.rmtree(aside, ignore_errors=True)


def restore(archive: Path, state_dir: Path, *, force: bool = False) -> RestoreSummary:
    """Restore the backup ``archive`` into ``state_dir``, verified first (see the module
    docstring); a state directory that holds a history is only replaced with ``force``.
    The caller makes sure no orchestrator runs on it. RestoreError if refused: nothing was
    replaced then."""
    began = time.monotonic()
    state = StateDir(state_dir)
    replaced = holds_history(state)
    if replaced and not force:
        raise RestoreError(
            f"state directory {state.root} already holds a history; restoring replaces it: "
            "give --force"
        )
    try:
        private_dir(state.root)
        staging = state.root / f".restore-{secrets.token_hex(4)}"
        staging.mkdir(mode=0o700)
    except OSError as exc:
        raise RestoreError(f"cannot write to {state.root}: {exc.strerror or exc}") from None
    try:
        manifest, found = _extract(archive, staging)
        where = str(archive)
        _verify(where, manifest, found, staging)
        tables: dict[str, int] = {}
        if any(name.startswith("db/") for name in found):
            try:
                tables = import_export(staging / "db", staging / HISTORY_FILE)
            except StateError as exc:
                raise RestoreError(f"{where}: its database does not load: {exc}") from None
            shutil.rmtree(staging / "db")
            differ = sorted(t for t, n in manifest.tables.items() if tables.get(t) != n)
            if differ:
                raise RestoreError(
                    f"{where} is damaged: table {differ[0]} loads {tables.get(differ[0], 0)} "
                    f"rows, not {manifest.tables[differ[0]]}; nothing was restored"
                )
        for folder in ("blobs", "runs"):
            private_dir(staging / folder)
        _swap(state, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return RestoreSummary(
        state_dir=str(state.root),
        created_at=manifest.created_at,
        tables=tables,
        checkpoints=sum(1 for n in found if "/checkpoints/" in n and n.endswith(".json")),
        notebooks=sum(1 for n in found if n.endswith(".ipynb")),
        blobs=sum(1 for n in found if n.startswith("blobs/")),
        replaced=replaced,
        seconds=round(time.monotonic() - began, 3),
    )
