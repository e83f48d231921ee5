"""Code that runs INSIDE the kernel: per-cell namespace snapshots and restore.

The engine executes this file's source in the kernel (as module ``__casare__``, after
:mod:`kernel_chunks`, the chunked large objects, into the same module) once per run, so it
needs nothing from casare_nb on the kernel's side: stdlib, plus cloudpickle when the kernel
has it. It registers IPython ``pre_run_cell``/``post_run_cell`` hooks; the
engine's own control calls are ``silent`` executions, which IPython runs without them, so
the hook fires exactly once per user cell, in order, and pops the next entry of the plan the
engine sent.

Snapshot after a successful cell, per variable, content-addressed:

* small objects (< ``large_bytes``) are pickled and hashed every cell, unless immutable and
  bound to the same object as before; a blob whose hash exists is not written again;
* large objects (numpy arrays, DataFrames, bytes ...) are pickled only when dirty: new name,
  rebound, or touched by the cell (named in it, aliased by a name in it, held by a container
  named in it, or named by a function the cell names). An untouched 200 MB DataFrame costs a
  reference to the manifest that holds it, not a re-serialisation;
* a large object is stored as chunks of its protocol-5 pickle and out-of-band buffers, only
  the changed ones written (:mod:`kernel_chunks`);
* large dirty data (>= ``fork_bytes``) is written by a forked child (a copy-on-write image of
  this instant) while the kernel goes on, unless a cheap probe shows the object was rewritten
  everywhere since its last checkpoint (copy-on-write would then copy all of it in the next
  cell: writing inline, over ``threads`` threads, is cheaper) or it is the last cell;
* a per-run budget decides whether a cell gets a namespace checkpoint at all: one estimated
  under ``free_ms`` always does; a dearer one only while the snapshot work so far stays within
  ``budget`` (a fraction) of the cell time so far; but never more than ``max_interval - 1``
  cells in a row go without one, and the last cell of the plan always gets one. A cell
  without one leaves ``<manifest>.skipped``; what it touched stays dirty for the next;
* modules are recorded by name and re-imported; what cannot be pickled (files, sockets,
  locks, generators, objects holding a secret) is recorded by name with the reason.

Every file is written to a temporary name and renamed, the manifest last, so a reader never
sees half a checkpoint: a manifest exists only when all the blobs it names do.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import hashlib
import json
import marshal
import os
import pickle
import re
import threading
import time
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what kernel_chunks.py, executed first into this module, defines

    class _Parts:
        rewritten: bool
        nbytes: int

    def _pickle_large(name: str, obj: Any, skipped: dict[str, str]) -> _Parts | None: ...
    def _changed_share(parts: _Parts, basis: dict[str, Any] | None) -> float | None: ...
    def _write_large(
        manifest: dict[str, Any], large: dict[str, Any], prepared: dict[str, _Parts], threads: int
    ) -> int: ...
    def _load_chunked(entry: dict[str, Any]) -> Any: ...


_CLOUDPICKLE: list[Any] = []  # imported on first use: most snapshots never need it


def _cp() -> Any:
    """cloudpickle (by-value pickling of classes defined in the notebook), or None."""
    if not _CLOUDPICKLE:
        try:
            import cloudpickle

            _CLOUDPICKLE.append(cloudpickle)
        except Exception:  # the kernel may not have it
            _CLOUDPICKLE.append(None)
    return _CLOUDPICKLE[0]


MANIFEST_VERSION = 2
"""1: every entry is one blob (``blob``) or a ``ref``; 2: entries may also be chunked
(``stream`` + ``buffers``). A manifest is written as version 1 when it holds no chunked
entry, so readers of version 1 read it as before."""
_IMMUTABLE = (int, float, complex, bool, str, bytes, type(None), frozenset, range)
_SKIP_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}

_DEFAULTS: dict[str, Any] = {
    "blob_dir": None,
    "large_bytes": 1 << 20,
    "track_ms": 1.0,
    "track_bytes": 64 << 10,
    "fork_bytes": 16 << 20,
    "max_children": 2,
    "secret_names": [],
    # chunked large objects
    "chunk_bytes": 1 << 20,  # a chunk is one blob: well under a frame (MAX_BLOB_BYTES)
    "inband_bytes": 64 << 10,  # smaller out-of-band buffers stay in the pickle stream
    "threads": 2,  # hashing/writing threads of an inline snapshot of >= fork_bytes
    # the checkpoint policy (see the module docstring)
    "budget": 0.10,
    "max_interval": 4,
    "free_ms": 10.0,
}
_ENV = {  # operator overrides (the kernel inherits them), below explicit configure() options
    "budget": ("CASARE_CHECKPOINT_BUDGET", float),
    "max_interval": ("CASARE_CHECKPOINT_MAX_INTERVAL", int),
    "free_ms": ("CASARE_CHECKPOINT_FREE_MS", float),
}
_config: dict[str, Any] = dict(_DEFAULTS)
_plan: list[dict[str, Any]] = []
# name -> (id(obj), entry, tracked): entry is {"blob":..}, a chunked entry or {"ref": manifest
# file name}; a tracked object (large, or slow to pickle) is saved again only when dirtied
_state: dict[str, tuple[int, dict[str, Any], bool]] = {}
# name -> the chunked entry last written (or restored) for it: its chunks are compared with
# the object's bytes at the next checkpoint, so unchanged chunks are neither hashed nor written
_basis: dict[str, dict[str, Any]] = {}
_known_blobs: set[str] = set()
_known_dir: list[str | None] = [None]
# forked writers: pid -> {"manifest": path, "names": [...], "bytes": n, "est_s": s}
_children: dict[int, dict[str, Any]] = {}
_errors: list[str] = []
# names and object ids touched by cells that got no snapshot (deferred, replayed): dirty for
# the next snapshot, which compares against the last one taken
_carry_names: set[str] = set()
_carry_ids: set[int] = set()
_run: dict[str, Any] = {}
result: str = "null"  # JSON answer of the last control call, read via user_expressions


def _reset_run() -> None:
    _run.clear()
    _run.update(
        {
            "t0": None,  # start of the current cell (pre_run_cell)
            "cells_s": 0.0,  # cell time so far, as the kernel sees it
            "spent_s": 0.0,  # snapshot work so far: hook time + forked writers' time
            "gap": 0,  # cells since the last namespace checkpoint (or restore)
            "s_per_byte": 1e-9,  # learned cost of a large object's byte (hash/compare/write)
            # bytes the small objects pickled to at the last snapshot: estimates go by bytes,
            # not by time, so a slow disk never makes a small namespace skip checkpoints
            "small_bytes": 0,
        }
    )


_reset_run()


def _answer(value: Any) -> None:
    global result
    result = json.dumps(value)


def _ip() -> Any:
    from IPython import get_ipython

    return get_ipython()


def _ns() -> dict[str, Any]:
    ip = _ip()
    ns: dict[str, Any] = ip.user_ns
    return ns


# ---------------------------------------------------------------- control calls


def configure(**options: Any) -> None:
    """Set blob dir, thresholds, policy and secret names (defaults, then the environment's
    ``CASARE_CHECKPOINT_*``, then ``options``); reset per-run state."""
    _reap(block=True)  # a warm kernel: writers of the previous run finish first
    _config.clear()
    _config.update(_DEFAULTS)
    for key, (var, kind) in _ENV.items():
        raw = os.environ.get(var)
        if raw:
            try:
                _config[key] = kind(raw)
            except ValueError:
                _errors.append(f"{var}={raw!r} is not a {kind.__name__}: ignored")
    _config.update(options)
    _plan.clear()
    _state.clear()
    _basis.clear()
    _errors.clear()
    _carry_names.clear()
    _carry_ids.clear()
    _reset_run()
    if _known_dir[0] != _config["blob_dir"]:  # digests known to exist in another store
        _known_blobs.clear()
        _known_dir[0] = _config["blob_dir"]
    if _config["blob_dir"]:
        os.makedirs(_config["blob_dir"], exist_ok=True)
    _answer({"pid": os.getpid()})


def push_plan(entries: list[dict[str, Any]]) -> None:
    """Entries, in execution order, one per user cell: {sha, manifest (path|None), index, id}."""
    _plan.extend(entries)
    _answer(len(_plan))


def flush() -> None:
    """Wait for forked writers; answer the errors seen since the last flush."""
    _reap(block=True)
    errors = list(_errors)
    _errors.clear()
    _answer({"errors": errors})


def user_names() -> None:
    """Answer the names of the user's variables (modules included), sorted."""
    _answer(sorted(_user_vars(_ns())))


def restore(manifest_path: str, names: list[str] | None = None) -> None:
    """Load the namespace saved in a manifest (only ``names`` if given); answer what failed."""
    ns = _ns()
    loaded: list[str] = []
    failed: dict[str, str] = {}
    with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    version = manifest.get("version", 1)
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise ValueError(f"{manifest_path}: manifest version {version!r} is newer than this reader")
    base = os.path.dirname(manifest_path)
    wanted = set(names) if names is not None else None
    for name, module in manifest.get("modules", {}).items():
        if wanted is not None and name not in wanted:
            continue
        try:
            ns[name] = __import__("importlib").import_module(module)
            loaded.append(name)
        except Exception as exc:
            failed[name] = f"import {module}: {type(exc).__name__}: {exc}"
    for name, entry in manifest.get("vars", {}).items():
        if wanted is not None and name not in wanted:
            continue
        try:
            blob_entry = _resolve(entry, name, base)
            obj = _load_blob(blob_entry)
            ns[name] = obj
            _state[name] = (id(obj), blob_entry, True)
            if "stream" in blob_entry:
                _basis[name] = blob_entry
            _carry_names.discard(name)
            loaded.append(name)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
    if names is None:  # the namespace is a checkpoint's again
        _run["gap"] = 0
        _carry_names.clear()
        _carry_ids.clear()
    _answer(
        {
            "loaded": sorted(loaded),
            "failed": failed,
            "skipped": manifest.get("skipped", {}),
        }
    )


# ---------------------------------------------------------------- the hook


def _pre_run_cell(info: Any = None) -> None:
    _run["t0"] = time.perf_counter()


def _post_run_cell(res: Any) -> None:
    t0, _run["t0"] = _run["t0"], None
    if t0 is not None:
        _run["cells_s"] += time.perf_counter() - t0
    if not _plan:
        return
    entry = _plan.pop(0)
    if not getattr(res, "success", False):
        return
    raw = getattr(getattr(res, "info", None), "raw_cell", None) or ""
    if not entry.get("manifest"):  # replayed: no checkpoint, but what it touched is dirty
        try:
            _carry(*_touched(raw, _ns()))
        except Exception as exc:
            _errors.append(f"cell {entry.get('index')}: {type(exc).__name__}: {exc}")
        _run["gap"] += 1
        return
    if hashlib.sha256(raw.encode()).hexdigest() != entry["sha"]:
        _errors.append(f"cell {entry.get('index')}: plan out of step, no checkpoint")
        _plan.clear()
        return
    try:
        snapshot(entry, raw, last=not _plan)
    except Exception as exc:  # a checkpoint must never break the run
        _errors.append(f"cell {entry.get('index')}: checkpoint failed: {type(exc).__name__}: {exc}")


def install() -> None:
    """Register the hooks once per kernel."""
    ip = _ip()
    for event, hook in (("pre_run_cell", _pre_run_cell), ("post_run_cell", _post_run_cell)):
        for cb in list(ip.events.callbacks[event]):
            if getattr(cb, "__name__", "") == hook.__name__:
                ip.events.unregister(event, cb)
        ip.events.register(event, hook)
    _answer(True)


# ---------------------------------------------------------------- snapshot


def _cell_names(raw: str) -> set[str]:
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in raw.splitlines()]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return set(_ns())  # cannot tell: everything is touched
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def _user_vars(ns: dict[str, Any]) -> dict[str, Any]:
    secret = set(_config["secret_names"])
    out = {}
    for name, obj in list(ns.items()):
        if name.startswith("_") or name in _SKIP_NAMES or name in secret:
            continue
        if getattr(builtins, name, _SKIP_NAMES) is obj:
            continue
        out[name] = obj
    return out


def _size(obj: Any) -> int:
    """A cheap estimate of an object's data size (O(1): it runs for every variable, every
    cell); only used to tell large objects from small ones."""
    try:
        if isinstance(obj, (bytes, bytearray, str)):
            return len(obj)
        nbytes = getattr(obj, "nbytes", None)  # numpy arrays, pandas Series/Index
        if isinstance(nbytes, int):
            return nbytes
        shape = getattr(obj, "shape", None)  # a DataFrame: rows x columns x 8 bytes
        if type(obj).__name__ == "DataFrame" and isinstance(shape, tuple) and len(shape) == 2:
            return int(shape[0]) * int(shape[1]) * 8
    except Exception:
        return 0
    return 0


def _code_names(obj: Any) -> set[str]:
    code = getattr(obj, "__code__", None)
    names: set[str] = set()
    stack = [code] if code is not None else []
    while stack:
        c = stack.pop()
        names.update(c.co_names)
        stack.extend(k for k in c.co_consts if isinstance(k, types.CodeType))
    return names


def _touched(raw: str, ns: dict[str, Any]) -> tuple[set[str], set[int]]:
    names = _cell_names(raw)
    for name in list(names):
        obj = ns.get(name)
        if isinstance(obj, types.FunctionType) and obj.__module__ == "__main__":
            names |= _code_names(obj)
    ids: set[int] = set()
    for name in names:
        if name in ns:
            obj = ns[name]
            ids.add(id(obj))
            if isinstance(obj, (list, tuple, set)):
                ids.update(id(x) for x in obj)
            elif isinstance(obj, dict):
                ids.update(id(x) for x in obj.values())
    return names, ids


def _is_notebook_function(obj: Any) -> bool:
    return isinstance(obj, types.FunctionType) and obj.__globals__ is _ns()


def _dump_function(f: Any) -> bytes:
    """A notebook function as its code plus what it closes over, NOT its globals: pickled by
    value (cloudpickle) it would drag every global it names into each snapshot, and after a
    restore it would update copies of them instead of the kernel's namespace."""
    state = {
        "code": marshal.dumps(f.__code__),
        "name": f.__name__,
        "qualname": f.__qualname__,
        "defaults": f.__defaults__,
        "kwdefaults": f.__kwdefaults__,
        "closure": [c.cell_contents for c in f.__closure__] if f.__closure__ else None,
        "doc": f.__doc__,
        "dict": dict(f.__dict__),
    }
    cp = _cp()
    return _dumps(state)[1] if cp is None else cp.dumps(state, protocol=5)


def _load_function(data: bytes) -> Any:
    state = (_cp() or pickle).loads(data)
    closure = tuple(types.CellType(v) for v in state["closure"]) if state["closure"] else None
    f = types.FunctionType(
        marshal.loads(state["code"]), _ns(), state["name"], state["defaults"], closure
    )
    f.__qualname__ = state["qualname"]
    f.__kwdefaults__ = state["kwdefaults"]
    f.__doc__ = state["doc"]
    f.__dict__.update(state["dict"])
    f.__module__ = "__main__"
    return f


def _serialise(obj: Any) -> tuple[str, bytes]:
    if _is_notebook_function(obj):
        return "function", _dump_function(obj)
    return _dumps(obj)


class _OutOfBand:
    """``buffer_callback`` of pickle protocol 5: keeps large contiguous buffers (numpy and
    pandas data, bytearrays) out of the stream, as memoryviews of the object's own memory
    (no copy); small or non-contiguous ones stay in band."""

    def __init__(self) -> None:
        self.views: list[memoryview] = []

    def __call__(self, buf: pickle.PickleBuffer) -> bool:
        try:
            view = buf.raw()
        except BufferError:  # not contiguous
            return True
        if view.nbytes < _config["inband_bytes"]:
            return True
        self.views.append(view)
        return False


def _dumps(obj: Any, oob: _OutOfBand | None = None) -> tuple[str, bytes]:
    """(serializer, pickle stream); with ``oob``, protocol 5 buffers go to ``oob.views``."""
    first: Exception | None = None
    try:
        if oob is not None:
            oob.views.clear()
        data = pickle.dumps(obj, protocol=5, buffer_callback=oob)
        if b"__main__" not in data:
            return "pickle", data
    except Exception as exc:
        first = exc
    cp = _cp()
    if cp is None:
        raise first or TypeError("defined in the notebook and cloudpickle is not installed")
    try:
        if oob is not None:
            oob.views.clear()
        return "cloudpickle", cp.dumps(obj, protocol=5, buffer_callback=oob)
    except Exception:
        if first is not None:
            raise first from None
        raise


def _write_atomic(path: str, data: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # state files: owner only
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _blob_path(digest: str) -> str:
    return os.path.join(_config["blob_dir"], digest[:2], digest[2:])


def _put(digest: str, data: Any) -> int:
    """Write blob ``digest`` unless it exists; the bytes written."""
    if digest in _known_blobs:
        return 0
    path = _blob_path(digest)
    wrote = 0
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_atomic(path, data)
        wrote = len(data) if isinstance(data, bytes) else memoryview(data).nbytes
    _known_blobs.add(digest)
    return wrote


def _store_blob(serializer: str, data: bytes, type_name: str) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    _put(digest, data)
    return {"blob": digest, "serializer": serializer, "type": type_name, "size": len(data)}


def _holds_secret(data: Any) -> bool:
    """A secret parameter's value occurs in ``data`` (bytes, or any contiguous buffer)."""
    ns = _ns()
    for name in _config["secret_names"]:
        value = ns.get(name)
        if isinstance(value, str) and value and re.search(re.escape(value.encode()), data):
            return True
    return False


def _type_name(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


# ---------------------------------------------------------------- the policy


def _carry(names: set[str], ids: set[int]) -> None:
    _carry_names.update(names)
    _carry_ids.update(ids)


def _committed_s() -> float:
    """Snapshot work so far, with the running writers at their estimates."""
    return float(_run["spent_s"]) + sum(float(w["est_s"]) for w in _children.values())


def _defer(manifest_path: str, why: str, names: set[str], ids: set[int], started: float) -> None:
    """No namespace checkpoint for this cell: a marker, and its dirt carried to the next."""
    with open(f"{manifest_path}.skipped", "wb") as f:
        f.write(why.encode())
    _carry(names, ids)
    _run["gap"] += 1
    _run["spent_s"] += time.perf_counter() - started


def _learn(key: str, value: float) -> None:
    _run[key] = value if _run[key] <= 0 else (_run[key] + value) / 2


# ---------------------------------------------------------------- snapshot


def snapshot(entry: dict[str, Any], raw: str, *, last: bool = False) -> None:
    """Checkpoint the namespace after a cell into ``entry["manifest"]`` - or, if the policy
    defers it, leave ``<manifest>.skipped``. ``last``: the plan's last cell (never deferred)."""
    started = time.perf_counter()
    _reap(block=False)
    ns = _ns()
    user = _user_vars(ns)
    names, ids = _touched(raw, ns)
    names |= _carry_names
    ids |= _carry_ids
    manifest_path: str = entry["manifest"]
    manifest_name = os.path.basename(manifest_path)
    modules: dict[str, str] = {}
    skipped: dict[str, str] = {}
    entries: dict[str, dict[str, Any]] = {}
    small: list[tuple[str, Any]] = []
    large_dirty: dict[str, Any] = {}
    big = 0
    for name, obj in user.items():
        if isinstance(obj, types.ModuleType):
            modules[name] = obj.__name__
            continue
        prev = _state.get(name)
        dirty = name in names or id(obj) in ids
        if prev is not None and prev[0] == id(obj):
            tracked = prev[2] or isinstance(obj, types.FunctionType)
            if isinstance(obj, _IMMUTABLE) or (tracked and not dirty):
                entries[name] = prev[1]
                continue
        size = _size(obj)
        if size >= _config["large_bytes"]:
            large_dirty[name] = obj
            big += size
        else:
            small.append((name, obj))

    # the policy: take this checkpoint, or defer it to a later cell
    est = (big + _run["small_bytes"]) * _run["s_per_byte"]
    forced = last or _run["gap"] + 1 >= _config["max_interval"]
    if (
        not forced
        and est * 1000 > _config["free_ms"]
        and _committed_s() + est > _config["budget"] * _run["cells_s"]
    ):
        _defer(manifest_path, "deferred: over the time budget", names, ids, started)
        return
    if last and large_dirty and _children:
        # the run waits for the writers anyway: first, so that this last snapshot compares
        # with what they stored rather than hashing (and writing) it all again
        _reap(block=True)
    fork = bool(large_dirty) and big >= _config["fork_bytes"] and hasattr(os, "fork")
    prepared: dict[str, _Parts] = {}
    if fork:
        # probe what changed since the last checkpoint (cheap: a few KB per object). Where
        # most bytes changed, comparing with the stored chunks is wasted work, and a forked
        # writer would make the next cells copy (copy-on-write) every page they write again
        # while it runs: such an object is hashed and written inline, over threads
        dense = 0
        for name, obj in list(large_dirty.items()):
            basis = _basis.get(name)
            if basis and basis.get("buffers") and len(basis.get("stream", ())) <= 1:
                parts = _pickle_large(name, obj, skipped)  # out-of-band: no copy, no cost
                if parts is None:
                    del large_dirty[name]
                    _state.pop(name, None)
                    continue
                prepared[name] = parts
                share = _changed_share(parts, basis)
                if share is not None and share >= 0.5:
                    parts.rewritten = True
                    dense += parts.nbytes
        fork = dense * 2 < big
    if fork and not last and len(_children) >= _config["max_children"]:
        if not forced:
            _defer(manifest_path, "deferred: writers busy", names, ids, started)
            return
        _reap(block=True, one=True)
    _carry_names.clear()
    _carry_ids.clear()
    _run["gap"] = 0

    small_bytes = 0
    for name, obj in small:
        t0 = time.perf_counter()
        try:
            serializer, data = _serialise(obj)
        except Exception as exc:
            skipped[name] = f"{_type_name(obj)}: {type(exc).__name__}: {exc}"[:300]
            _state.pop(name, None)
            continue
        cost_ms = (time.perf_counter() - t0) * 1000
        small_bytes += len(data)
        if _holds_secret(data):
            skipped[name] = f"{_type_name(obj)}: holds a secret parameter"
            continue
        blob = _store_blob(serializer, data, _type_name(obj))
        tracked = cost_ms >= _config["track_ms"] or len(data) >= _config["track_bytes"]
        _state[name] = (id(obj), blob, tracked)
        entries[name] = blob
    _run["small_bytes"] = small_bytes
    for name in list(_state):
        if name not in user:
            del _state[name]
            _basis.pop(name, None)
    manifest: dict[str, Any] = {
        "version": 1,
        "cell_index": entry.get("index"),
        "cell_id": entry.get("id"),
        "source_sha256": entry["sha"],
        "vars": entries,
        "modules": modules,
        "skipped": skipped,
    }
    if fork and not last:
        _fork_writer(manifest, manifest_path, large_dirty, prepared, started, est)
        for name, obj in large_dirty.items():
            _state[name] = (id(obj), {"ref": manifest_name}, True)
        _run["spent_s"] += time.perf_counter() - started
        return
    t_large = time.perf_counter()
    threads = _config["threads"] if big >= _config["fork_bytes"] else 1
    written = _write_large(manifest, large_dirty, prepared, threads)
    if big:
        _learn("s_per_byte", (time.perf_counter() - t_large) / big)
    for name, obj in large_dirty.items():
        if name in manifest["vars"]:
            _state[name] = (id(obj), manifest["vars"][name], True)
        else:
            _state.pop(name, None)
    manifest["snapshot_ms"] = round((time.perf_counter() - started) * 1000, 3)
    manifest["forked"] = False
    manifest["written_bytes"] = written
    _write_atomic(manifest_path, json.dumps(manifest).encode())
    _run["spent_s"] += time.perf_counter() - started


def _fork_writer(
    manifest: dict[str, Any],
    path: str,
    large: dict[str, Any],
    prepared: dict[str, _Parts],
    started: float,
    est: float,
) -> None:
    """Fork; the child writes the blobs and the manifest, then removes ``<path>.pending``.

    The marker tells the engine the checkpoint is on its way, so it does not wait for it;
    a resume reads manifests only, so it never sees a checkpoint that is not complete.

    Writers run one after the other: a child first waits for the writer forked before it
    (end of file on a pipe that writer holds: it exited, however), then compares with the
    chunks that writer stored instead of hashing them all and writing them twice."""
    pending = f"{path}.pending"
    with open(pending, "wb"):
        pass
    before = [info["done"] for info in _children.values()]
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: write and leave without running any cleanup of the parent
        code = 0
        try:
            os.close(done_r)
            if before:
                os.read(before[-1], 1)  # b"" once the previous writer has exited
            t0 = time.perf_counter()
            base = os.path.dirname(path)
            for name in large:  # what the previous checkpoint of each object stored
                held = _state.get(name)
                if held is not None and held[1].get("ref") and name not in prepared:
                    with contextlib.suppress(OSError, ValueError, LookupError):
                        _basis[name] = _resolve(held[1], name, base)
            manifest["written_bytes"] = _write_large(manifest, large, prepared, 1)
            now = time.perf_counter()
            manifest["snapshot_ms"] = round((now - started) * 1000, 3)
            manifest["writer_ms"] = round((now - t0) * 1000, 3)
            manifest["forked"] = True
            _write_atomic(path, json.dumps(manifest).encode())
            os.unlink(pending)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(done_w)
    _children[pid] = {
        "manifest": path,
        "names": sorted(large),
        "bytes": sum(_size(o) for o in large.values()),
        "est_s": est,
        "done": done_r,
    }


def _reap(*, block: bool, one: bool = False) -> None:
    """Collect finished writers (all, waiting if ``block``; with ``one`` the oldest only):
    their time counts against the budget, and what they wrote is the next basis."""
    for pid in list(_children)[:1] if one else list(_children):
        try:
            done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0
        if not done:
            continue
        info = _children.pop(pid)
        os.close(info["done"])
        if status != 0:
            _errors.append(f"checkpoint writer {pid} exited with status {status}")
            _run["spent_s"] += info["est_s"]
            continue
        try:
            with open(info["manifest"], encoding="utf-8") as f:
                written = json.load(f)
        except (OSError, ValueError):
            _run["spent_s"] += info["est_s"]
            continue
        took = float(written.get("writer_ms", 0)) / 1000
        _run["spent_s"] += took
        if info["bytes"] and took > 0:
            _learn("s_per_byte", took / info["bytes"])
        for name in info["names"]:
            entry = written.get("vars", {}).get(name)
            held = _state.get(name)
            ref = os.path.basename(info["manifest"])
            if entry and "stream" in entry and held and held[1].get("ref") == ref:
                _basis[name] = entry  # unless a later checkpoint wrote the name again


# ---------------------------------------------------------------- restore helpers


def _resolve(entry: dict[str, Any], name: str, base: str) -> dict[str, Any]:
    if "ref" not in entry:
        return entry
    with open(os.path.join(base, entry["ref"]), encoding="utf-8") as f:
        target = json.load(f)["vars"].get(name)
    if not target or ("blob" not in target and "stream" not in target):
        raise LookupError(f"checkpoint {entry['ref']} does not hold {name}")
    return dict(target)


def _load_blob(entry: dict[str, Any]) -> Any:
    if "stream" in entry:
        return _load_chunked(entry)
    digest = entry["blob"]
    with open(_blob_path(digest), "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != digest:
        raise ValueError(f"blob {digest[:12]} is corrupt")
    _known_blobs.add(digest)
    if entry.get("serializer") == "function":
        return _load_function(data)
    if entry.get("serializer") == "cloudpickle":
        cp = _cp()
        if cp is None:
            raise TypeError("needs cloudpickle, which this kernel does not have")
        return cp.loads(data)
    return pickle.loads(data)
