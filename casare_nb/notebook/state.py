"""The state directory: where runs, checkpoints and blobs live, and how they are named.

Layout of the state directory (``./.casare`` or ``$CASARE_HOME``)::

    history.duckdb                      runs and cells (casare_nb.store.history)
    blobs/ab/cdef...                    pickled variables, or chunks of a large one's pickle
                                        stream and buffers, named by the sha256 of their bytes
    runs/<run>/<attempt>/output.ipynb   the output notebook, rewritten after every cell
    runs/<run>/<attempt>/checkpoints/<cell id>.json
                                        the namespace after that cell: variable -> blob (or
                                        chunks), modules, names that could not be saved (and
                                        why); <cell id>.json.skipped when the cell got none

The kernel writes blobs and manifests (``kernel_side``); this module names the paths, reads
manifests and the names in them, writes notebooks atomically and carries a prefix of
manifests into a new attempt. The same layout serves a local run, a robot and the
orchestrator's checkpoint store.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Final

from casare_nb.core.errors import StateError
from casare_nb.notebook.kernel_side import MANIFEST_VERSION

HISTORY_FILE: Final = "history.duckdb"
"""The DuckDB file of a state directory (history, and an orchestrator's queue and tokens)."""

_CELL_ID: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_REF: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}\.json$")
_SHA: Final = re.compile(r"^[0-9a-f]{64}$")


class CheckpointError(ValueError):
    """A checkpoint or blob name that cannot be used (bad names, hash mismatch)."""


def default_state_dir() -> Path:
    """``$CASARE_HOME`` if set, else ``./.casare``."""
    return Path(os.environ.get("CASARE_HOME") or ".casare").absolute()


class StateDir:
    """The state directory of one orchestrator or local runner."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).absolute() if root else default_state_dir()

    @property
    def history_path(self) -> Path:
        return self.root / HISTORY_FILE

    @property
    def blob_dir(self) -> Path:
        return self.root / "blobs"

    def blob_path(self, sha256: str) -> Path:
        """Where the blob of digest ``sha256`` lives; CheckpointError for a bad digest."""
        if not _SHA.match(sha256):
            raise CheckpointError(f"{sha256!r} is not a sha256 hex digest")
        return self.blob_dir / sha256[:2] / sha256[2:]

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def attempt(self, run_id: str, attempt: int) -> AttemptPaths:
        return AttemptPaths(self.run_dir(run_id) / str(attempt))

    def ensure_writable(self) -> StateDir:
        """Create the folders (the root private: 0700) and prove a file can be written;
        one-line StateError if not."""
        try:
            private_dir(self.root)
            self.blob_dir.mkdir(parents=True, exist_ok=True)
            (self.root / "runs").mkdir(exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-"):
                pass
        except OSError as exc:
            raise StateError(
                f"state directory {self.root} is not writable: {exc.strerror or exc}"
            ) from None
        return self


class AttemptPaths:
    """Files of one attempt of one run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.output = root / "output.ipynb"
        self.checkpoints = root / "checkpoints"

    def manifest(self, cell_id: str) -> Path:
        return self.checkpoints / f"{cell_id}.json"

    def create(self) -> AttemptPaths:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        return self

    def read_manifest(self, cell_id: str) -> dict[str, Any] | None:
        """The manifest saved after ``cell_id``, or None if there is none (or it is unreadable)."""
        try:
            data: dict[str, Any] = json.loads(self.manifest(cell_id).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return data

    def has_checkpoint(self, cell_id: str) -> bool:
        """A manifest exists, a forked writer is on it, or it was skipped (writers busy)."""
        base = self.manifest(cell_id)
        return base.exists() or self.pending(cell_id).exists() or Path(f"{base}.skipped").exists()

    def pending(self, cell_id: str) -> Path:
        return self.checkpoints / f"{cell_id}.json.pending"

    def inherit(self, other: AttemptPaths, cell_ids: list[str]) -> None:
        """Copy the manifests of ``cell_ids`` (and those they refer to) from ``other``."""
        self.create()
        wanted = list(cell_ids)
        seen: set[str] = set()
        while wanted:
            cid = wanted.pop()
            if cid in seen:
                continue
            seen.add(cid)
            src = other.manifest(cid)
            if not src.exists():
                continue
            shutil.copyfile(src, self.manifest(cid))
            manifest = json.loads(src.read_text("utf-8"))
            for entry in manifest.get("vars", {}).values():
                ref = entry.get("ref")
                if ref:
                    wanted.append(ref.removesuffix(".json"))


def check_cell_id(cell_id: str) -> str:
    """``cell_id`` if it can name a file (a manifest, a run folder); else CheckpointError."""
    if not _CELL_ID.match(cell_id):
        raise CheckpointError(f"cell id {cell_id!r} is not a valid nbformat cell id")
    return cell_id


def _entry_blobs(entry: dict[str, Any]) -> list[Any]:
    """The digests an entry names: its ``blob``, or a chunked entry's ``stream`` chunks and
    every buffer's ``chunks`` (manifest version 2)."""
    found: list[Any] = []
    if "blob" in entry:
        found.append(entry["blob"])
    stream = entry.get("stream")
    if isinstance(stream, list):
        found.extend(stream)
    buffers = entry.get("buffers")
    if isinstance(buffers, list):
        for spec in buffers:
            chunks = spec.get("chunks") if isinstance(spec, dict) else None
            if isinstance(chunks, list):
                found.extend(chunks)
    return found


def blob_refs(manifest: dict[str, Any]) -> list[str]:
    """The blob digests a manifest names directly, chunks included (``ref`` entries name
    other manifests). A robot offers these; a resume elsewhere fetches them."""
    found: set[str] = set()
    for entry in (manifest.get("vars") or {}).values():
        if isinstance(entry, dict):
            found.update(d for d in _entry_blobs(entry) if isinstance(d, str))
    return sorted(found)


def manifest_refs(manifest: dict[str, Any]) -> list[str]:
    """The cell ids of the other manifests this one refers to."""
    found: list[str] = []
    for entry in (manifest.get("vars") or {}).values():
        if isinstance(entry, dict) and isinstance(entry.get("ref"), str):
            found.append(entry["ref"].removesuffix(".json"))
    return sorted(set(found))


def check_manifest(cell_id: str, manifest: dict[str, Any]) -> list[str]:
    """Validate a manifest's version and the names in it (they become paths); its blob
    digests, chunks included. Raises CheckpointError."""
    check_cell_id(cell_id)
    version = manifest.get("version", 1)
    if not isinstance(version, int) or not 1 <= version <= MANIFEST_VERSION:
        raise CheckpointError(
            f"manifest of cell {cell_id}: version {version!r} is not one of 1..{MANIFEST_VERSION}"
        )
    entries = manifest.get("vars")
    if entries is not None and not isinstance(entries, dict):
        raise CheckpointError(f"manifest of cell {cell_id}: 'vars' is not an object")
    for name, entry in (entries or {}).items():
        if not isinstance(entry, dict):
            raise CheckpointError(f"manifest of cell {cell_id}: entry {name!r} is not an object")
        ref = entry.get("ref")
        if ref is not None and (not isinstance(ref, str) or not _REF.match(ref)):
            raise CheckpointError(f"manifest of cell {cell_id}: bad ref {ref!r} for {name!r}")
        _check_chunked(cell_id, name, entry)
        for blob in _entry_blobs(entry):
            if not isinstance(blob, str) or not _SHA.match(blob):
                raise CheckpointError(f"manifest of cell {cell_id}: bad blob {blob!r} for {name!r}")
    return blob_refs(manifest)


def _check_chunked(cell_id: str, name: str, entry: dict[str, Any]) -> None:
    """A chunked entry's shape: ``stream`` a list, ``buffers`` a list of {size, chunks}, and
    as many chunks of ``chunk_bytes`` as its sizes need."""
    if "stream" not in entry and "buffers" not in entry:
        return
    where = f"manifest of cell {cell_id}: chunked entry {name!r}"
    stream, buffers, chunk = entry.get("stream"), entry.get("buffers"), entry.get("chunk_bytes")
    size = entry.get("size")
    if not isinstance(stream, list) or not isinstance(buffers, list):
        raise CheckpointError(f"{where}: 'stream' and 'buffers' must be lists")
    if not isinstance(chunk, int) or chunk <= 0 or not isinstance(size, int):
        raise CheckpointError(f"{where}: bad 'chunk_bytes' or 'size'")
    rest = size
    for spec in buffers:
        if not isinstance(spec, dict) or not isinstance(spec.get("chunks"), list):
            raise CheckpointError(f"{where}: a buffer is not {{size, chunks}}")
        length = spec.get("size")
        if not isinstance(length, int) or length < 0 or len(spec["chunks"]) != -(-length // chunk):
            raise CheckpointError(f"{where}: a buffer's chunks do not match its size")
        rest -= length
    if rest < 0 or len(stream) != -(-rest // chunk):
        raise CheckpointError(f"{where}: the stream's chunks do not match its size")


PRIVATE_DIR: Final = 0o700
PRIVATE_FILE: Final = 0o600


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner may enter (0700): created so (parents as the
    umask says), or narrowed if it exists, is ours and lets others in. A state directory
    holds pickled variables, output notebooks and token names."""
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # not ours, or a file system without modes
        info = path.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            path.chmod(PRIVATE_DIR)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as a new file only its owner may read (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_json_atomic(path: Path, data: Any, *, compact: bool = False) -> None:
    """Write JSON to a temporary name in the same folder, then rename over ``path``;
    ``compact``: no indentation (a file rewritten often, read by programs)."""
    if compact:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write_private(tmp, (text + "\n").encode("utf-8", "backslashreplace"))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
