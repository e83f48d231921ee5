"""The node templates the graph editor offers: the built-in ones, a project's own, and the
ones that did not load (shown in the palette as broken, with the reason).

Built-ins live in ``casare_nb/nodes/templates/<category>/*.yaml``; a project adds its own in
``templates/`` beside its workflows folder, and in any folder of ``CASARE_TEMPLATES``
(separated by ``os.pathsep``). Later folders win: a project's template replaces the
built-in one of the same id. The format is docs/graph-editor.md's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml

from casare_nb.core.errors import one_line
from casare_nb.core.graph import (
    BrokenTemplate,
    Catalog,
    NodeTemplate,
    TemplateError,
    template_from_data,
)

__all__ = ["BUILTIN", "ENV", "load_catalog", "template_dirs"]

BUILTIN = Path(__file__).parent / "templates"
ENV = "CASARE_TEMPLATES"
MAX_BYTES = 256 * 1024


def template_dirs(workflow: str | os.PathLike[str] | None = None) -> list[Path]:
    """Where templates are looked for, weakest first: the built-ins, ``templates/`` beside
    (or above) the workflow's folder, then ``$CASARE_TEMPLATES``."""
    dirs = [BUILTIN]
    if workflow is not None:
        folder = Path(workflow).resolve().parent
        for candidate in (folder / "templates", folder.parent / "templates"):
            if candidate.is_dir() and candidate not in dirs:
                dirs.append(candidate)
                break
    for item in os.environ.get(ENV, "").split(os.pathsep):
        if item and Path(item).is_dir():
            dirs.append(Path(item))
    return dirs


def _files(folders: Sequence[Path]) -> Iterable[Path]:
    for folder in folders:
        yield from sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml"))


def read_template(path: Path) -> NodeTemplate:
    """One template file; TemplateError with the one-line reason if it does not load."""
    try:
        raw = path.read_bytes()
        if len(raw) > MAX_BYTES:
            raise TemplateError(f"{path.name}: larger than {MAX_BYTES} bytes")
        data = yaml.safe_load(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TemplateError(f"{path.name}: {one_line(exc)}") from None
    return template_from_data(data, str(path))


def load_catalog(
    workflow: str | os.PathLike[str] | None = None, *, dirs: Sequence[Path] | None = None
) -> Catalog:
    """Every template of :func:`template_dirs` (or ``dirs``); the broken ones listed with
    their reason, the rest loaded."""
    templates: dict[str, NodeTemplate] = {}
    broken: list[BrokenTemplate] = []
    for path in _files(dirs if dirs is not None else template_dirs(workflow)):
        try:
            tpl = read_template(path)
        except TemplateError as exc:
            guess = _guess_id(path)
            broken.append(BrokenTemplate(source=str(path), id=guess, reason=str(exc)))
            continue
        templates[tpl.id] = tpl
    broken = [b for b in broken if b.id not in templates]
    return Catalog(templates=templates, broken=broken)


def _guess_id(path: Path) -> str | None:
    """The id a broken file meant to have (its ``id:`` line), for the palette."""
    try:
        for line in path.read_text("utf-8", errors="replace").splitlines():
            if line.startswith("id:"):
                value = line[3:].split("#")[0].strip().strip("'\"")
                return value or None
    except OSError:
        return None
    return None
