"""File nodes: list a folder, move files, zip them.

What the ``files.*`` templates call. Paths are given as a str, a list of them, or the
DataFrame :func:`list_files` answers (its ``path`` column), so the nodes chain. Moves and
archives check everything first (sources exist, nothing is overwritten unless asked) and
only then touch the disk; a zip is written beside its target and renamed into place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeAlias, TypeGuard

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["COLUMNS", "archive", "list_files", "move"]

PathLike: TypeAlias = str | os.PathLike[str]
Paths: TypeAlias = "PathLike | Iterable[PathLike] | pd.DataFrame"

COLUMNS: Final = ("path", "name", "size", "modified")
"""The columns of :func:`list_files`'s DataFrame."""


def list_files(folder: PathLike, pattern: str = "*", recursive: bool = False) -> pd.DataFrame:
    """The files in ``folder`` whose names match the glob ``pattern`` (in its sub-folders
    too if ``recursive``), sorted by path: ``path`` (absolute), ``name``, ``size`` (bytes),
    ``modified`` (UTC)."""
    import pandas as pd  # on first use: moving and zipping need no pandas

    root = Path(folder).absolute()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"list_files: {root} {what}")
    found = root.rglob(pattern) if recursive else root.glob(pattern)
    rows = []
    for p in sorted(found):
        if not p.is_file():
            continue
        stat = p.stat()
        rows.append((str(p), p.name, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC)))
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["size"] = frame["size"].astype("int64")
    frame["modified"] = pd.to_datetime(frame["modified"], utc=True)
    return frame


def move(paths: Paths, dest_dir: PathLike, overwrite: bool = False) -> list[str]:
    """Move ``paths`` (files or folders) into ``dest_dir`` (created if need be); answer their
    new absolute paths. Nothing moves if a source is missing, two have the same name, or a
    target exists (unless ``overwrite``: an existing file is then replaced, a folder never)."""
    sources = _paths(paths, "move")
    dest = Path(dest_dir).absolute()
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"move: {dest} is not a folder")
    targets = [dest / src.name for src in sources]
    _no_duplicates(sources, [t.name for t in targets], "move")
    for src, target in zip(sources, targets, strict=True):
        if src == target:
            continue
        if target.exists() or target.is_symlink():
            if not overwrite:
                raise FileExistsError(f"move: {target} exists (give overwrite=True to replace it)")
            if target.is_dir() or src.is_dir():
                raise IsADirectoryError(f"move: will not replace {target} with {src}")
    dest.mkdir(parents=True, exist_ok=True)
    moved = []
    for src, target in zip(sources, targets, strict=True):
        if src != target:
            shutil.move(src, target)  # a rename: replaces an existing file in one step
        moved.append(str(target))
    return moved


def archive(paths: Paths | None, zip_path: PathLike, *, folder: PathLike | None = None) -> str:
    """Zip ``paths`` -- or, given none, the contents of ``folder`` -- into ``zip_path`` (its
    folder created, an existing zip replaced); answer its absolute path.

    A single folder (as ``paths`` or ``folder``) is zipped with its contents at the top of
    the archive; otherwise each file goes in under its name and each folder under its name,
    with what it holds. The zip never holds itself."""
    given: Paths
    if paths is None:
        if folder is None:
            raise ValueError("archive: give the files to zip or a folder")
        given = folder
    elif folder is not None:
        raise ValueError("archive: give the files to zip or a folder, not both")
    else:
        given = paths
    target = Path(zip_path).absolute()
    single = not _is_frame(given) and isinstance(given, str | os.PathLike)
    sources = _paths(given, "archive")
    if single and sources[0].is_dir():
        entries = list(_tree(sources[0], ""))
    else:
        _no_duplicates(sources, [s.name for s in sources], "archive")
        entries = []
        for src in sources:
            entries.extend(_tree(src, src.name) if src.is_dir() else [(src, src.name)])
    entries = [(p, name) for p, name in entries if p.absolute() != target]
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for p, name in entries:
                zf.write(p, name)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return str(target)


def _paths(paths: Paths, what: str) -> list[Path]:
    """``paths`` (one, several, or a DataFrame's ``path`` column) as existing absolute paths."""
    if _is_frame(paths):
        if "path" not in paths.columns:
            columns = ", ".join(map(str, paths.columns))
            raise ValueError(f"{what}: the DataFrame has no 'path' column (columns: {columns})")
        given: list[PathLike] = [str(p) for p in paths["path"]]
    elif isinstance(paths, str | os.PathLike):
        given = [paths]
    else:
        given = list(paths)
    out = list(dict.fromkeys(Path(p).absolute() for p in given))  # each once, in order
    missing = [str(p) for p in out if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{what}: no such file: {', '.join(missing)}")
    return out


def _no_duplicates(sources: list[Path], names: list[str], what: str) -> None:
    seen: dict[str, Path] = {}
    for src, name in zip(sources, names, strict=True):
        if name in seen and seen[name] != src:
            raise ValueError(f"{what}: {seen[name]} and {src} have the same name {name!r}")
        seen[name] = src


def _tree(folder: Path, prefix: str) -> Iterator[tuple[Path, str]]:
    """(file, name in the archive) of every file under ``folder``, sorted; empty folders
    as entries of their own."""
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        name = f"{prefix}/{rel}" if prefix else rel
        if p.is_file():
            yield p, name
        elif p.is_dir() and not any(p.iterdir()):
            yield p, name + "/"


def _is_frame(value: object) -> TypeGuard[pd.DataFrame]:
    """``value`` is a pandas DataFrame (pandas not imported: it cannot be one)."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, pandas.DataFrame)
