"""The orchestrator's checkpoint store: what robots send after each cell, kept where any
robot can resume from it.

Same layout as a robot's (and a local run's) state directory, under the orchestrator's
``state_dir`` (see :mod:`casare_nb.notebook.state`)::

    blobs/ab/cdef...                          pickled variables, or 1 MB chunks of a large
                                              one's pickle stream and buffers, by sha256
    runs/<job>/<attempt>/checkpoints/<cell>.json
                                              a manifest, written once all its blobs are here
    runs/<job>/<attempt>/output.ipynb         the attempt's notebook so far: the cells carried
                                              from the attempt it resumed, then each executed
                                              cell as its job_progress reports it

The transfer (``checkpoint_offer`` -> ``checkpoint_want`` -> ``blob_put``... ->
``checkpoint_stored``) is content-addressed: only blobs the store lacks are asked for, so a
variable that did not change is never sent twice, whichever attempt or job made it - nor
a chunk of a large one that did not change. Manifests of a version this store does not
know are refused (:func:`~casare_nb.notebook.state.check_manifest`).

A manifest is only written once every blob it names is stored, so a resume never reads a
checkpoint that is half here. Names in manifests (cell ids, ``ref`` file names, blob
digests) become paths and are checked first: a robot cannot write outside the store.

Blocking file I/O; the job manager calls it on the event loop (small files) and moves blob
writes to a thread.

Blobs are shared by every run and job that made the same bytes, so removing a run frees none
of them: :meth:`FileCheckpointStore.sweep` collects the blobs no manifest names (mark and
sweep, run beside the live store). It keeps what a job writes meanwhile: a blob written since
the sweep began, a blob a manifest written since names (read again before deleting), and a
blob an offer pending or made during the sweep names (offers and deletions take turns on one
lock, so an offer never finds a blob present that the sweep then deletes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from casare_nb.notebook.state import (
    AttemptPaths,
    CheckpointError,
    StateDir,
    blob_refs,
    check_cell_id,
    check_manifest,
    manifest_refs,
    write_json_atomic,
    write_private,
)

__all__ = ["FileBlobSweep", "FileCheckpointStore", "blob_files", "manifest_files"]

logger = logging.getLogger(__name__)

_HEX: Final = re.compile(r"^[0-9a-f]+$")
_SWEEP_SLACK_S: Final = 2.0  # file times are coarse: "since the sweep began" starts earlier
_DELETE_BATCH: Final = 256  # blobs deleted per turn of the lock offers take too


def manifest_files(
    state: StateDir, *, ignoring: Collection[str] = ()
) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(run id, file) of every checkpoint manifest under ``runs/`` (``<run>/<attempt>/
    checkpoints/<cell>.json``), except those of the runs in ``ignoring``."""
    runs = state.root / "runs"
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for run in os.scandir(runs):
            if run.name in ignoring or not run.is_dir(follow_symlinks=False):
                continue
            for attempt in os.scandir(run.path):
                folder = os.path.join(attempt.path, "checkpoints")
                if not attempt.is_dir(follow_symlinks=False) or not os.path.isdir(folder):
                    continue
                for entry in os.scandir(folder):
                    if entry.name.endswith(".json") and not entry.name.startswith("."):
                        yield run.name, entry


def blob_files(state: StateDir) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(sha256, file) of every blob stored (temporary files of writers left out)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for prefix in os.scandir(state.blob_dir):
            if len(prefix.name) != 2 or not _HEX.match(prefix.name) or not prefix.is_dir():
                continue
            for entry in os.scandir(prefix.path):
                if len(entry.name) == 62 and _HEX.match(entry.name) and entry.is_file():
                    yield prefix.name + entry.name, entry


def read_manifest_refs(path: str) -> list[str]:
    """The blobs a manifest file names; none if it cannot be read (gone, half-written)."""
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read())
    except (OSError, ValueError):
        return []
    return blob_refs(manifest) if isinstance(manifest, dict) else []


@dataclass
class _Offer:
    job_id: str
    attempt: int
    cell_id: str
    manifest: dict[str, Any]
    missing: set[str] = field(default_factory=set)


class FileCheckpointStore:
    """Checkpoints and partial output notebooks of every job's attempts; see the module doc."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.state = StateDir(root)
        self._pending: dict[tuple[str, int, str], _Offer] = {}
        self._waiting: dict[str, set[tuple[str, int, str]]] = {}  # blob -> offers
        self._outputs: dict[tuple[str, int], dict[str, Any]] = {}
        # sweeps: offers and deletions take turns on _guard; blobs offered while one runs
        self._guard = threading.Lock()
        self._sweeps = 0
        self._offered: set[str] = set()

    # -- blobs ---------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        return self.state.blob_path(sha256)

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def read_blob(self, sha256: str) -> bytes | None:
        try:
            return self.blob_path(sha256).read_bytes()
        except OSError:
            return None

    def write_blob(self, data: bytes) -> str:
        """Store ``data`` under its digest (atomic, idempotent); the digest. Blocking."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if path.is_file():
            return digest
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            write_private(tmp, data)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        return digest

    # -- offers --------------------------------------------------------------------------

    def offer(self, job_id: str, attempt: int, cell_id: str, manifest: dict[str, Any]) -> list[str]:
        """Take a robot's checkpoint offer; the blobs to ask it for. With none missing the
        manifest is stored at once (the caller answers ``checkpoint_stored``)."""
        blobs = check_manifest(cell_id, manifest)
        key = (job_id, attempt, cell_id)
        self._drop_pending(key)
        with self._guard:  # a sweep deletes nothing this offer finds present (or pends on)
            if self._sweeps:
                self._offered.update(blobs)
            missing = {sha for sha in blobs if not self.has_blob(sha)}
            if not missing:
                self._write_manifest(job_id, attempt, cell_id, manifest)
                return []
            self._pending[key] = _Offer(job_id, attempt, cell_id, manifest, set(missing))
        asked = {sha for sha in missing if sha in self._waiting}  # another offer asked already
        for sha in missing:
            self._waiting.setdefault(sha, set()).add(key)
        return sorted(missing - asked)

    def awaited(self, sha256: str) -> bool:
        """Some pending offer waits for this blob."""
        return sha256 in self._waiting

    def blob_stored(self, sha256: str) -> list[tuple[str, int, str]]:
        """A blob arrived: the offers it completed (their manifests are now written)."""
        done: list[tuple[str, int, str]] = []
        for key in sorted(self._waiting.pop(sha256, set())):
            offer = self._pending.get(key)
            if offer is None:
                continue
            offer.missing.discard(sha256)
            if not offer.missing:
                del self._pending[key]
                self._write_manifest(offer.job_id, offer.attempt, offer.cell_id, offer.manifest)
                done.append(key)
        return done

    def forget_attempt(self, job_id: str, attempt: int) -> None:
        """Drop the offers of an attempt that ended (what arrived so far stays)."""
        for key in [k for k in self._pending if k[:2] == (job_id, attempt)]:
            self._drop_pending(key)
        self._outputs.pop((job_id, attempt), None)

    def _drop_pending(self, key: tuple[str, int, str]) -> None:
        offer = self._pending.pop(key, None)
        if offer is None:
            return
        for sha in offer.missing:
            keys = self._waiting.get(sha)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._waiting[sha]

    def _write_manifest(
        self, job_id: str, attempt: int, cell_id: str, manifest: dict[str, Any]
    ) -> None:
        paths = self.attempt(job_id, attempt).create()
        write_json_atomic(paths.manifest(cell_id), manifest)

    # -- attempts ------------------------------------------------------------------------

    def attempt(self, job_id: str, attempt: int) -> AttemptPaths:
        try:
            check_cell_id(job_id)
        except CheckpointError:
            raise CheckpointError(f"job id {job_id!r} cannot name a folder") from None
        return self.state.attempt(job_id, attempt)

    def stored_cells(self, job_id: str, attempt: int) -> list[str]:
        """Cell ids with a complete manifest in this attempt."""
        folder = self.attempt(job_id, attempt).checkpoints
        if not folder.is_dir():
            return []
        return sorted(p.name.removesuffix(".json") for p in folder.glob("*.json"))

    def manifests_for(self, paths: AttemptPaths, cell_ids: Iterable[str]) -> dict[str, Any]:
        """The manifests of ``cell_ids`` and every manifest they refer to, by cell id."""
        found: dict[str, Any] = {}
        wanted = list(cell_ids)
        while wanted:
            cid = wanted.pop()
            if cid in found:
                continue
            manifest = paths.read_manifest(cid)
            if manifest is None:
                continue
            found[cid] = manifest
            wanted.extend(manifest_refs(manifest))
        return found

    def start_output(self, job_id: str, attempt: int, notebook: dict[str, Any]) -> None:
        """Begin the attempt's notebook-so-far with ``notebook``."""
        paths = self.attempt(job_id, attempt).create()
        self._outputs[(job_id, attempt)] = notebook
        write_json_atomic(paths.output, notebook)

    def record_cell(
        self, job_id: str, attempt: int, cell: dict[str, Any], *, base: dict[str, Any] | None
    ) -> None:
        """An executed cell (as the robot's output notebook holds it) replaces the cell with
        the same id in the attempt's notebook-so-far, which starts as the stored one or else
        as ``base`` (the notebook sent); unknown ids are ignored."""
        key = (job_id, attempt)
        notebook = self._outputs.get(key)
        paths = self.attempt(job_id, attempt)
        if notebook is None:
            try:
                notebook = json.loads(paths.output.read_text("utf-8"))
            except (OSError, ValueError):
                notebook = json.loads(json.dumps(base)) if base is not None else None
            if not isinstance(notebook, dict):
                return
            paths.create()
            self._outputs[key] = notebook
        cells = notebook.get("cells")
        if not isinstance(cells, list):
            return
        for i, old in enumerate(cells):
            if isinstance(old, dict) and old.get("id") == cell.get("id"):
                cells[i] = cell
                break
        else:
            return
        write_json_atomic(paths.output, notebook, compact=True)

    def latest_output(self, job_id: str, before: int) -> int | None:
        """The newest attempt <= ``before`` that has a notebook-so-far, or None."""
        for attempt in range(before, 0, -1):
            if self.attempt(job_id, attempt).output.is_file():
                return attempt
        return None

    # -- retention -----------------------------------------------------------------------

    def run_folders(self) -> list[str]:
        """The ids of the runs (or jobs) with a folder under ``runs/``."""
        try:
            entries = list(os.scandir(self.state.root / "runs"))
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for entry in entries:
            with contextlib.suppress(CheckpointError):
                if entry.is_dir(follow_symlinks=False):
                    found.append(check_cell_id(entry.name))
        return sorted(found)

    def changed_at(self, run_id: str) -> float:
        """When a file or folder of ``run_id`` last changed (epoch s; 0 if it has none)."""
        newest = 0.0
        for folder, dirs, files in os.walk(self.state.run_dir(check_cell_id(run_id))):
            for name in (folder, *(os.path.join(folder, n) for n in (*dirs, *files))):
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(name).st_mtime)
        return newest

    def remove_run(self, run_id: str) -> None:
        """Delete the folder of every attempt of ``run_id``, a finished run (the blobs stay:
        see sweep)."""
        shutil.rmtree(self.state.run_dir(check_cell_id(run_id)), ignore_errors=True)

    def sweep(self, *, ignoring: Collection[str] = ()) -> FileBlobSweep:
        """A garbage collection of the blobs no manifest names, begun now (see the module
        docstring); ``ignoring``: runs whose manifests do not count (a dry run of their
        removal)."""
        return FileBlobSweep(self, ignoring)

    def _begin_sweep(self) -> set[str]:
        """A sweep begins: from now on offers record their blobs; the blobs pending offers
        name (present or awaited)."""
        with self._guard:
            self._sweeps += 1
            return {sha for offer in self._pending.values() for sha in blob_refs(offer.manifest)}

    def _end_sweep(self) -> None:
        with self._guard:
            self._sweeps = max(0, self._sweeps - 1)
            if not self._sweeps:
                self._offered.clear()


class FileBlobSweep:
    """One mark-and-sweep of a :class:`FileCheckpointStore`'s blobs (the
    :class:`~casare_nb.store.interfaces.BlobSweep` of the files): begun when made,
    :meth:`mark` finds the candidates, :meth:`delete` deletes those still unnamed."""

    def __init__(self, store: FileCheckpointStore, ignoring: Collection[str] = ()) -> None:
        self.store = store
        self.ignoring = frozenset(ignoring)
        self.began = time.time()
        self.named = store._begin_sweep()
        self.candidates: list[tuple[str, str, int]] | None = None  # (sha, path, bytes)
        self.blobs = 0  # blobs stored when marked
        self._ended = False

    def mark(self) -> None:
        """Read every manifest (of the runs not ignored); the blobs older than the sweep
        that none of them names are the candidates."""
        state = self.store.state
        for _, entry in manifest_files(state, ignoring=self.ignoring):
            self.named.update(read_manifest_refs(entry.path))
        young = self.began - _SWEEP_SLACK_S
        candidates: list[tuple[str, str, int]] = []
        self.blobs = 0
        for sha, entry in blob_files(state):
            self.blobs += 1
            if sha in self.named:
                continue
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if info.st_mtime < young:
                    candidates.append((sha, entry.path, info.st_size))
        self.candidates = candidates

    def delete(self, *, dry_run: bool = False) -> tuple[int, int, int]:
        """Delete the candidates no manifest written since the sweep began names, nor an
        offer made meanwhile (``dry_run``: count them); (blobs deleted, bytes, blobs
        kept). Ends the sweep."""
        try:
            if self.candidates is None:
                self.mark()
            assert self.candidates is not None
            young = self.began - _SWEEP_SLACK_S
            for _, entry in manifest_files(self.store.state, ignoring=self.ignoring):
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime >= young:
                        self.named.update(read_manifest_refs(entry.path))
            deleted = size = 0
            for start in range(0, len(self.candidates), _DELETE_BATCH):
                with self.store._guard:
                    for sha, path, length in self.candidates[start : start + _DELETE_BATCH]:
                        if sha in self.named or sha in self.store._offered:
                            continue
                        if not dry_run:
                            try:
                                os.unlink(path)
                            except FileNotFoundError:
                                continue
                        deleted += 1
                        size += length
            return deleted, size, self.blobs - deleted
        finally:
            self.end()

    def end(self) -> None:
        """Stop recording offers for this sweep (idempotent)."""
        if not self._ended:
            self._ended = True
            self.store._end_sweep()
