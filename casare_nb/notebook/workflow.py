"""Reading workflow notebooks, with one-line errors for everything that is not one."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import nbformat
from nbformat import NotebookNode

from casare_nb.core.errors import WorkflowError
from casare_nb.notebook.state import write_json_atomic

INJECTED_ID = "injected-parameters"


def load_workflow(path: str | os.PathLike[str]) -> tuple[NotebookNode, str]:
    """Read a notebook; answer it (every cell with an id) and the sha256 of its bytes."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise WorkflowError(f"workflow {p} does not exist") from None
    except IsADirectoryError:
        raise WorkflowError(f"workflow {p} is a directory, not a notebook") from None
    except OSError as exc:
        raise WorkflowError(f"cannot read workflow {p}: {exc.strerror}") from None
    return parse_workflow(raw, str(p)), hashlib.sha256(raw).hexdigest()


def parse_workflow(raw: bytes, name: str = "<notebook>") -> NotebookNode:
    """Parse notebook bytes; one-line WorkflowError when they are not a valid notebook."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise WorkflowError(f"{name} is not a notebook: invalid JSON ({exc})") from None
    if not isinstance(data, dict) or "cells" not in data or "nbformat" not in data:
        raise WorkflowError(f"{name} is not a notebook: no 'cells' or 'nbformat' field")
    if data.get("nbformat") != 4:
        raise WorkflowError(f"{name}: nbformat {data.get('nbformat')} is not supported (need 4)")
    try:
        nb: NotebookNode = nbformat.from_dict(data)  # type: ignore[no-untyped-call]
        nbformat.validate(nb, relax_add_props=True)
    except nbformat.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise WorkflowError(f"{name} is not a valid notebook: {first}") from None
    return _normalised(nb)


def as_notebook(data: dict[str, Any]) -> NotebookNode:
    """Notebook JSON already checked (what an orchestrator sends a robot) as nbformat nodes,
    normalised like :func:`parse_workflow`'s (sources as text, every cell with an id)."""
    return _normalised(nbformat_node(data))


def _normalised(nb: NotebookNode) -> NotebookNode:
    for index, cell in enumerate(nb.cells):
        if isinstance(cell.get("source"), list):
            cell["source"] = "".join(cell["source"])
        if not cell.get("id"):
            cell["id"] = f"cell-{index}"  # stable across reads, so resume can match cells
    nb.nbformat_minor = max(nb.nbformat_minor, 5)
    return nb


def nbformat_node(data: dict[str, Any]) -> NotebookNode:
    """``data`` (notebook or cell JSON) as nbformat nodes (attribute access)."""
    node: NotebookNode = nbformat.from_dict(data)  # type: ignore[no-untyped-call]
    return node


def kernel_name_of(nb: NotebookNode, override: str | None = None) -> str:
    if override:
        return override
    spec = nb.metadata.get("kernelspec", {})
    return str(spec.get("name") or "python3")


def write_cell_sources(path: str | os.PathLike[str], sources: dict[str, str]) -> list[str]:
    """Give code cells of the workflow at ``path`` new sources, by cell id, and write it
    back atomically; answer the ids whose source changed. WorkflowError (nothing written)
    for an id that is not a code cell of the workflow."""
    nb, _ = load_workflow(path)
    cells = {cell.id: cell for cell in nb.cells}
    for cell_id in sources:
        cell = cells.get(cell_id)
        if cell is None or cell.cell_type != "code":
            raise WorkflowError(f"workflow {Path(path).name} has no code cell with id {cell_id!r}")
    changed = [cid for cid, text in sources.items() if cells[cid].source != text]
    if changed:
        for cid in changed:
            cells[cid]["source"] = sources[cid]
        write_json_atomic(Path(path), nb)
    return changed
