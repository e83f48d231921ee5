"""Code that runs INSIDE the kernel, with :mod:`kernel_side` (executed first, into the same
module ``__casare__``: each file's names are the other's globals): large objects as chunked
out-of-band buffers.

A large object is pickled with protocol 5, its buffers out of band (no copy); the stream and
every buffer are cut into fixed-size chunks, each a blob named by its sha256. A chunk equal
to the same chunk of the object's previous checkpoint (compared with the file, ~4x cheaper
than hashing) keeps its digest; only changed chunks are hashed and written, over threads
when asked. Reading back checks every chunk's size and hash.

Like :mod:`kernel_side`, it needs nothing from casare_nb in the kernel: stdlib only (the
imports under ``TYPE_CHECKING`` are for the type checker).
"""

import hashlib
import pickle
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from casare_nb.notebook.kernel_side import (
        MANIFEST_VERSION,
        _basis,
        _blob_path,
        _config,
        _cp,
        _dumps,
        _holds_secret,
        _known_blobs,
        _OutOfBand,
        _put,
        _type_name,
    )


class _Parts:
    """A large object pickled for chunked storage: the stream and its out-of-band buffers."""

    def __init__(self, name: str, obj: Any) -> None:
        self.name = name
        self.type = _type_name(obj)
        oob = _OutOfBand()
        self.serializer, self.stream = _dumps(obj, oob)
        self.views = list(oob.views)  # PickleBuffer.raw(): 1-D, contiguous, format "B"
        self.rewritten = False  # changed nearly everywhere: hash, do not compare first
        self.nbytes = len(self.stream) + sum(v.nbytes for v in self.views)


def _pickle_large(name: str, obj: Any, skipped: dict[str, str]) -> _Parts | None:
    """``_Parts`` of ``obj``, or None with the reason in ``skipped``."""
    try:
        parts = _Parts(name, obj)
    except Exception as exc:
        skipped[name] = f"{_type_name(obj)}: {type(exc).__name__}: {exc}"[:300]
        return None
    secrets = _config["secret_names"]
    if secrets and (_holds_secret(parts.stream) or any(_holds_secret(v) for v in parts.views)):
        skipped[name] = f"{parts.type}: holds a secret parameter"
        return None
    return parts


_local = threading.local()


def _scratch(size: int) -> bytearray:
    """A per-thread buffer of exactly ``size`` bytes (a file chunk is read into it)."""
    buf: bytearray | None = getattr(_local, "buf", None)
    if buf is None or len(buf) != size:
        buf = bytearray(size)
        if size == _config["chunk_bytes"]:
            _local.buf = buf
    return buf


def _same_as(digest: str, piece: memoryview) -> bool:
    """The stored chunk ``digest`` holds exactly the bytes of ``piece``."""
    buf = _scratch(piece.nbytes)
    try:
        with open(_blob_path(digest), "rb", buffering=0) as f:
            if f.readinto(buf) != piece.nbytes or f.read(1):
                return False
    except OSError:
        return False
    return buf == piece  # bytearray == memoryview: one memcmp


def _chunk(view: memoryview, index: int, basis: list[str] | None) -> tuple[str, int, bool]:
    """(digest, bytes written, hashed) of chunk ``index`` of ``view``."""
    size = _config["chunk_bytes"]
    piece = view[index * size : (index + 1) * size]
    if basis is not None and index < len(basis) and _same_as(basis[index], piece):
        return basis[index], 0, False
    digest = hashlib.sha256(piece).hexdigest()  # releases the GIL: threads hash in parallel
    return digest, _put(digest, piece), True


def _buffer_basis(parts: _Parts, basis: dict[str, Any] | None) -> list[list[str] | None]:
    """Per buffer, the chunk digests of the same buffer in the previous checkpoint (same
    size and chunk size), or None."""
    if not basis or basis.get("chunk_bytes") != _config["chunk_bytes"]:
        return [None] * len(parts.views)
    old = basis.get("buffers", [])
    found: list[list[str] | None] = []
    for i, view in enumerate(parts.views):
        ok = i < len(old) and old[i].get("size") == view.nbytes
        found.append(list(old[i]["chunks"]) if ok else None)
    return found


def _changed_share(parts: _Parts, basis: dict[str, Any] | None) -> float | None:
    """A cheap probe (the first 4 KB of up to 8 chunks per buffer, against the previous
    checkpoint's files): the share of ``parts``' bytes that changed, or None if unknown."""
    bases = _buffer_basis(parts, basis)
    probed = changed = 0.0
    size = _config["chunk_bytes"]
    for view, chunks in zip(parts.views, bases, strict=True):
        if not chunks:
            continue
        picks = sorted({i * (len(chunks) - 1) // 7 for i in range(8)})
        diff = sum(
            0 if _same_as_prefix(chunks[i], view[i * size : i * size + 4096]) else 1 for i in picks
        )
        probed += view.nbytes
        changed += view.nbytes * diff / len(picks)
    return None if not probed else changed / probed


def _same_as_prefix(digest: str, piece: memoryview) -> bool:
    try:
        with open(_blob_path(digest), "rb", buffering=0) as f:
            head = f.read(piece.nbytes)
    except OSError:
        return False
    return bytearray(head) == piece


def _write_parts(items: list[_Parts], threads: int) -> tuple[dict[str, dict[str, Any]], int]:
    """Store every item's stream and buffers as chunks; (name -> entry, bytes written).
    Chunks equal to the previous checkpoint's are not hashed; ``threads`` > 1 spreads the
    chunks over threads (hashing, reading and writing release the GIL)."""
    size = _config["chunk_bytes"]
    jobs: list[tuple[memoryview, int, list[str] | None]] = []
    layout: list[tuple[_Parts, list[tuple[int, int]]]] = []
    for parts in items:
        spans = []
        views = [memoryview(parts.stream), *parts.views]
        previous = None if parts.rewritten else _basis.get(parts.name)
        same = previous is not None and previous.get("chunk_bytes") == size
        stream = list(previous["stream"]) if previous is not None and same else None
        bases = [stream, *_buffer_basis(parts, previous)]
        for view, basis in zip(views, bases, strict=True):
            n = -(-view.nbytes // size)
            spans.append((len(jobs), n))
            jobs.extend((view, i, basis) for i in range(n))
        layout.append((parts, spans))
    results: list[tuple[str, int, bool] | None] = [None] * len(jobs)

    def work(start: int, step: int) -> None:
        for k in range(start, len(jobs), step):
            view, i, basis = jobs[k]
            results[k] = _chunk(view, i, basis)

    failures: list[BaseException] = []

    def guarded(start: int, step: int) -> None:
        try:
            work(start, step)
        except BaseException as exc:  # re-raised in the caller
            failures.append(exc)

    threads = max(1, min(threads, len(jobs)))
    if threads == 1:
        work(0, 1)
    else:
        pool = [threading.Thread(target=guarded, args=(t, threads)) for t in range(1, threads)]
        for t in pool:
            t.start()
        guarded(0, threads)
        for t in pool:
            t.join()
        if failures:
            raise failures[0]
    entries: dict[str, dict[str, Any]] = {}
    written = 0
    for parts, spans in layout:
        digests = []
        for first, n in spans:
            done = [r for r in results[first : first + n] if r is not None]
            digests.append([d for d, _, _ in done])
            written += sum(w for _, w, _ in done)
        entry: dict[str, Any] = {
            "stream": digests[0],
            "buffers": [
                {"size": v.nbytes, "chunks": c, **({"readonly": True} if v.readonly else {})}
                for v, c in zip(parts.views, digests[1:], strict=True)
            ],
            "chunk_bytes": size,
            "serializer": parts.serializer,
            "type": parts.type,
            "size": parts.nbytes,
        }
        entries[parts.name] = entry
        _basis[parts.name] = entry
    return entries, written


def _write_large(
    manifest: dict[str, Any], large: dict[str, Any], prepared: dict[str, _Parts], threads: int
) -> int:
    """Pickle (unless ``prepared``) and store ``large`` into ``manifest``; bytes written."""
    items = []
    for name, obj in large.items():
        parts = prepared.get(name) or _pickle_large(name, obj, manifest["skipped"])
        if parts is not None:
            items.append(parts)
    entries, written = _write_parts(items, threads)
    manifest["vars"].update(entries)
    if entries:
        manifest["version"] = MANIFEST_VERSION
    return written


# ---------------------------------------------------------------- reading back


def _read_verified(digest: str, into: memoryview) -> None:
    """Read blob ``digest`` (exactly ``into.nbytes`` long) into ``into``; check its hash."""
    with open(_blob_path(digest), "rb", buffering=0) as f:
        got = f.readinto(into)
        if got != into.nbytes or f.read(1):
            raise ValueError(f"blob {digest[:12]} has the wrong size")
    if hashlib.sha256(into).hexdigest() != digest:
        raise ValueError(f"blob {digest[:12]} is corrupt")
    _known_blobs.add(digest)


def _read_chunks(chunks: list[str], size: int, chunk_bytes: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    if len(chunks) != -(-size // chunk_bytes):
        raise ValueError(f"{len(chunks)} chunks cannot hold {size} bytes")
    for i, digest in enumerate(chunks):
        _read_verified(digest, view[i * chunk_bytes : (i + 1) * chunk_bytes])
    return buf


def _load_chunked(entry: dict[str, Any]) -> Any:
    chunk_bytes = int(entry["chunk_bytes"])
    stream_size = int(entry["size"]) - sum(int(b["size"]) for b in entry["buffers"])
    stream = _read_chunks(entry["stream"], stream_size, chunk_bytes)
    buffers: list[Any] = []
    for spec in entry["buffers"]:
        data = _read_chunks(spec["chunks"], int(spec["size"]), chunk_bytes)
        buffers.append(bytes(data) if spec.get("readonly") else data)  # writable, no copy
    if entry.get("serializer") == "cloudpickle":
        cp = _cp()
        if cp is None:
            raise TypeError("needs cloudpickle, which this kernel does not have")
        return cp.loads(stream, buffers=buffers)
    return pickle.loads(stream, buffers=buffers)
