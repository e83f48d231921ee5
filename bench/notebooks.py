"""Notebooks the benchmarks run, generated into a temporary folder, plus shared helpers.

Every generated notebook is a plain nbformat-4 notebook with stable cell ids
(``b-00``, ``b-01`` ...) and a Python 3 kernelspec, so casare-nb and papermill both run it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import nbformat

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
VENV_BIN = ROOT / ".venv" / "bin"


def write_notebook(
    path: Path, cells: Sequence[str], *, parameters: int | None = None, prefix: str = "b"
) -> Path:
    """Write ``cells`` (code sources) as a notebook; ``parameters`` is the tagged cell's index."""
    nb = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
    nb.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": "python3",
    }
    nb.metadata["language_info"] = {"name": "python"}
    for index, source in enumerate(cells):
        cell = nbformat.v4.new_code_cell(source)  # type: ignore[no-untyped-call]
        cell["id"] = f"{prefix}-{index:02d}"
        if index == parameters:
            cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)  # type: ignore[no-untyped-call]
    return path


def trivial(folder: Path, cells: int = 10) -> Path:
    """``cells`` code cells, the first the parameters cell (``n: int = 1``); tiny namespace."""
    sources = ["n: int = 1  # a parameter"]
    sources.append("import math\nvalues = [i * n for i in range(100)]")
    for i in range(2, cells):
        sources.append(f"x{i} = sum(values) + {i}\ny{i} = math.sqrt(x{i})\nprint(y{i})")
    return write_notebook(folder / f"trivial_{cells}.ipynb", sources[:cells], parameters=0)


def large_frame(folder: Path, nbytes: int, *, touch: bool, small_cells: int = 8) -> Path:
    """Cell 2 builds a float64 DataFrame of ``nbytes``; then ``small_cells`` cells.

    With ``touch`` every small cell writes into the frame (``df.iloc[0, 0] = i``), so the
    checkpoint sees it dirty; without, the small cells never name it.
    """
    columns = 8
    rows = nbytes // (8 * columns)
    sources = [
        "import numpy as np\nimport pandas as pd",
        (
            "rng = np.random.default_rng(0)\n"
            f"df = pd.DataFrame(rng.random(({rows}, {columns})), "
            f"columns=[f'c{{j}}' for j in range({columns})])\n"
            "del rng\n"
            "print(df.shape, df.memory_usage(index=True).sum())"
        ),
    ]
    for i in range(small_cells):
        if touch:
            sources.append(f"df.iloc[0, 0] = {i}\nsmall_{i} = [{i}] * 10")
        else:
            sources.append(f"small_{i} = [{i}] * 10\ntotal_{i} = sum(small_{i})")
    name = f"large_{'touch' if touch else 'untouched'}_{nbytes >> 20}mb.ipynb"
    return write_notebook(folder / name, sources)


def resume_prefix(folder: Path, prefix_seconds: float, steps: int = 5) -> Path:
    """``steps`` cells sleeping ``prefix_seconds / steps`` each and building state, then a
    cell failing while ``fail`` is true, then two cells using the state."""
    each = prefix_seconds / steps
    sources = [
        "import time",
        "fail: bool = True  # make the step after the prefix fail",
    ]
    for i in range(steps):
        sources.append(
            f"time.sleep({each!r})\npart_{i} = {{'step': {i}, 'values': list(range(1000))}}"
        )
    sources.append(
        "if fail:\n    raise RuntimeError('simulated failure after the prefix')\n"
        f"parts = [globals()[f'part_{{i}}'] for i in range({steps})]"
    )
    sources.append("score = sum(sum(p['values']) for p in parts)")
    sources.append("print(f'score {score}')")
    return write_notebook(folder / "resume_prefix.ipynb", sources, parameters=1)


SNAPSHOT_CASES = {
    "no data": ("", "s_{i} = {i}"),
    "0.5 MB array, not named": (
        "data = np.arange(65_536, dtype=np.float64)  # 0.5 MB",
        "s_{i} = {i}",
    ),
    "2 MB frame, not named": (
        "data = pd.DataFrame(np.ones((65_536, 4)), columns=list('abcd'))  # 2 MB",
        "s_{i} = {i}",
    ),
    "2 MB frame, read by each cell": (
        "data = pd.DataFrame(np.ones((65_536, 4)), columns=list('abcd'))  # 2 MB",
        "s_{i} = float(data['a'].iloc[{i}])",
    ),
    "2 MB frame, written by each cell": (
        "data = pd.DataFrame(np.ones((65_536, 4)), columns=list('abcd'))  # 2 MB",
        "data.iloc[0, 0] = {i}\ns_{i} = {i}",
    ),
}


def snapshot_case(folder: Path, kind: str, small_cells: int = 8) -> Path:
    """An import cell, a setup cell (``SNAPSHOT_CASES[kind]``), ``small_cells`` small cells."""
    setup, small = SNAPSHOT_CASES[kind]
    sources = ["import numpy as np\nimport pandas as pd", setup or "setup = None"]
    sources += [small.format(i=i) for i in range(small_cells)]
    slug = "".join(ch if ch.isalnum() else "_" for ch in kind)
    return write_notebook(folder / f"snapshot_{slug}.ipynb", sources)


# ---------------------------------------------------------------------- helpers


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder, removed afterwards (also on error)."""
    path = Path(tempfile.mkdtemp(prefix=f"casare-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def chdir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def manifests(state_dir: Path, run_id: str, attempt: int = 1) -> dict[str, dict[str, Any]]:
    """Cell id -> manifest JSON of one attempt."""
    folder = state_dir / "runs" / run_id / str(attempt) / "checkpoints"
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")):
        out[path.stem] = json.loads(path.read_text("utf-8"))
    return out


def markers(state_dir: Path, run_id: str, attempt: int, suffix: str) -> list[str]:
    """Cell ids with a ``<cell id><suffix>`` file in the attempt's checkpoint folder."""
    folder = state_dir / "runs" / run_id / str(attempt) / "checkpoints"
    return sorted(p.name.removesuffix(suffix) for p in folder.glob(f"*{suffix}"))


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
