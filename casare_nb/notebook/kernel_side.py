"""Code that runs INSIDE the kernel: per-cell namespace snapshots and restore.

The engine executes this file's source in the kernel (as module ``__casare__``) once per
run, so it needs nothing from casare_nb on the kernel's side: stdlib, plus cloudpickle when
the kernel has it. It registers an IPython ``post_run_cell`` hook; the engine's own control
calls are ``silent`` executions, which IPython runs without that hook, so the hook fires
exactly once per user cell, in order, and pops the next entry of the plan the engine sent.

Snapshot after a successful cell, per variable, content-addressed:

* small objects (< ``large_bytes``) are pickled and hashed every cell, unless immutable and
  bound to the same object as before; a blob whose hash exists is not written again;
* large objects (numpy arrays, DataFrames, bytes ...) are pickled only when dirty: new name,
  rebound, or touched by the cell (named in it, aliased by a name in it, held by a container
  named in it, or named by a function the cell names). An untouched 200 MB DataFrame costs a
  reference to the manifest that holds it, not a re-serialisation;
* when the dirty large objects exceed ``fork_bytes``, the process forks: the child (a
  copy-on-write image of this instant) pickles and writes, the kernel goes on at once;
* modules are recorded by name and re-imported; what cannot be pickled (files, sockets,
  locks, generators, objects holding a secret) is recorded by name with the reason.

Every file is written to a temporary name and renamed, the manifest last, so a reader never
sees half a checkpoint: a manifest exists only when all the blobs it names do.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import json
import marshal
import os
import pickle
import time
import types
from typing import Any

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


MANIFEST_VERSION = 1
_IMMUTABLE = (int, float, complex, bool, str, bytes, type(None), frozenset, range)
_SKIP_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}

_config: dict[str, Any] = {
    "blob_dir": None,
    "large_bytes": 1 << 20,
    "track_ms": 1.0,
    "track_bytes": 64 << 10,
    "fork_bytes": 16 << 20,
    "max_children": 2,
    "secret_names": [],
}
_plan: list[dict[str, Any]] = []
# name -> (id(obj), entry, tracked): entry is {"blob":..} or {"ref": manifest file name};
# a tracked object (large, or slow to pickle) is saved again only when a cell dirties it
_state: dict[str, tuple[int, dict[str, Any], bool]] = {}
_known_blobs: set[str] = set()
_children: list[int] = []
_errors: list[str] = []
result: str = "null"  # JSON answer of the last control call, read via user_expressions


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
    """Set blob dir, thresholds and secret names; reset per-run state."""
    _config.update(options)
    _plan.clear()
    _state.clear()
    _errors.clear()
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
            loaded.append(name)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
    _answer(
        {
            "loaded": sorted(loaded),
            "failed": failed,
            "skipped": manifest.get("skipped", {}),
        }
    )


# ---------------------------------------------------------------- the hook


def _post_run_cell(res: Any) -> None:
    if not _plan:
        return
    entry = _plan.pop(0)
    if not getattr(res, "success", False) or not entry.get("manifest"):
        return
    raw = getattr(getattr(res, "info", None), "raw_cell", None) or ""
    if hashlib.sha256(raw.encode()).hexdigest() != entry["sha"]:
        _errors.append(f"cell {entry.get('index')}: plan out of step, no checkpoint")
        _plan.clear()
        return
    try:
        snapshot(entry, raw)
    except Exception as exc:  # a checkpoint must never break the run
        _errors.append(f"cell {entry.get('index')}: checkpoint failed: {type(exc).__name__}: {exc}")


def install() -> None:
    """Register the hook once per kernel."""
    ip = _ip()
    for cb in list(ip.events.callbacks["post_run_cell"]):
        if getattr(cb, "__name__", "") == "_post_run_cell":
            ip.events.unregister("post_run_cell", cb)
    ip.events.register("post_run_cell", _post_run_cell)
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


def _dumps(obj: Any) -> tuple[str, bytes]:
    first: Exception | None = None
    try:
        data = pickle.dumps(obj, protocol=5)
        if b"__main__" not in data:
            return "pickle", data
    except Exception as exc:
        first = exc
    cp = _cp()
    if cp is None:
        raise first or TypeError("defined in the notebook and cloudpickle is not installed")
    try:
        return "cloudpickle", cp.dumps(obj, protocol=5)
    except Exception:
        if first is not None:
            raise first from None
        raise


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # state files: owner only
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _store_blob(serializer: str, data: bytes, type_name: str) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    if digest not in _known_blobs:
        folder = os.path.join(_config["blob_dir"], digest[:2])
        path = os.path.join(folder, digest[2:])
        if not os.path.exists(path):
            os.makedirs(folder, exist_ok=True)
            _write_atomic(path, data)
        _known_blobs.add(digest)
    return {"blob": digest, "serializer": serializer, "type": type_name, "size": len(data)}


def _holds_secret(data: bytes) -> bool:
    ns = _ns()
    for name in _config["secret_names"]:
        value = ns.get(name)
        if isinstance(value, str) and value and value.encode() in data:
            return True
    return False


def _type_name(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def snapshot(entry: dict[str, Any], raw: str) -> None:
    started = time.perf_counter()
    _reap(block=False)
    ns = _ns()
    user = _user_vars(ns)
    names, ids = _touched(raw, ns)
    manifest_path: str = entry["manifest"]
    manifest_name = os.path.basename(manifest_path)
    modules: dict[str, str] = {}
    skipped: dict[str, str] = {}
    entries: dict[str, dict[str, Any]] = {}
    large_dirty: dict[str, Any] = {}
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
        if _size(obj) >= _config["large_bytes"]:
            large_dirty[name] = obj
            continue
        t0 = time.perf_counter()
        try:
            serializer, data = _serialise(obj)
        except Exception as exc:
            skipped[name] = f"{_type_name(obj)}: {type(exc).__name__}: {exc}"[:300]
            _state.pop(name, None)
            continue
        cost_ms = (time.perf_counter() - t0) * 1000
        if _holds_secret(data):
            skipped[name] = f"{_type_name(obj)}: holds a secret parameter"
            continue
        blob = _store_blob(serializer, data, _type_name(obj))
        tracked = cost_ms >= _config["track_ms"] or len(data) >= _config["track_bytes"]
        _state[name] = (id(obj), blob, tracked)
        entries[name] = blob
    for name in list(_state):
        if name not in user:
            del _state[name]
    manifest = {
        "version": MANIFEST_VERSION,
        "cell_index": entry.get("index"),
        "cell_id": entry.get("id"),
        "source_sha256": entry["sha"],
        "vars": entries,
        "modules": modules,
        "skipped": skipped,
    }
    big = sum(_size(o) for o in large_dirty.values())
    if large_dirty and big >= _config["fork_bytes"] and hasattr(os, "fork"):
        _reap(block=False)
        if len(_children) >= _config["max_children"]:
            # the writers are busy with earlier cells: never hold the kernel up for them; this
            # cell gets no namespace checkpoint (a resume restores an earlier one and replays)
            with open(f"{manifest_path}.skipped", "wb"):
                pass
            for name in large_dirty:
                _state.pop(name, None)  # dirty still: the next checkpoint must write it
            return
        _fork_writer(manifest, manifest_path, large_dirty, started)
        for name, obj in large_dirty.items():
            _state[name] = (id(obj), {"ref": manifest_name}, True)
        return
    for name, obj in large_dirty.items():
        _large_entry(manifest, name, obj)
    manifest["snapshot_ms"] = round((time.perf_counter() - started) * 1000, 3)
    manifest["forked"] = False
    _write_atomic(manifest_path, json.dumps(manifest).encode())


def _large_entry(manifest: dict[str, Any], name: str, obj: Any) -> None:
    try:
        serializer, data = _dumps(obj)
    except Exception as exc:
        manifest["skipped"][name] = f"{_type_name(obj)}: {type(exc).__name__}: {exc}"[:300]
        _state.pop(name, None)
        return
    if _holds_secret(data):
        manifest["skipped"][name] = f"{_type_name(obj)}: holds a secret parameter"
        return
    blob = _store_blob(serializer, data, _type_name(obj))
    _state[name] = (id(obj), blob, True)
    manifest["vars"][name] = blob


def _fork_writer(
    manifest: dict[str, Any], path: str, large: dict[str, Any], started: float
) -> None:
    """Fork; the child writes the blobs and the manifest, then removes ``<path>.pending``.

    The marker tells the engine the checkpoint is on its way, so it does not wait for it;
    a resume reads manifests only, so it never sees a checkpoint that is not complete."""
    pending = f"{path}.pending"
    with open(pending, "wb"):
        pass
    pid = os.fork()
    if pid == 0:  # child: write and leave without running any cleanup of the parent
        code = 0
        try:
            for name, obj in large.items():
                _large_entry(manifest, name, obj)
            manifest["snapshot_ms"] = round((time.perf_counter() - started) * 1000, 3)
            manifest["forked"] = True
            _write_atomic(path, json.dumps(manifest).encode())
            os.unlink(pending)
        except BaseException:
            code = 1
        os._exit(code)
    _children.append(pid)


def _reap(*, block: bool) -> None:
    for pid in list(_children):
        try:
            done, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0
        if done:
            _children.remove(pid)
            if status != 0:
                _errors.append(f"checkpoint writer {pid} exited with status {status}")


# ---------------------------------------------------------------- restore helpers


def _resolve(entry: dict[str, Any], name: str, base: str) -> dict[str, Any]:
    if "ref" not in entry:
        return entry
    with open(os.path.join(base, entry["ref"]), encoding="utf-8") as f:
        target = json.load(f)["vars"].get(name)
    if not target or "blob" not in target:
        raise LookupError(f"checkpoint {entry['ref']} does not hold {name}")
    return dict(target)


def _load_blob(entry: dict[str, Any]) -> Any:
    digest = entry["blob"]
    path = os.path.join(_config["blob_dir"], digest[:2], digest[2:])
    with open(path, "rb") as f:
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
