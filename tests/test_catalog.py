"""The node template catalog (casare_nb.nodes.catalog): built-ins load, a project's
templates/ and $CASARE_TEMPLATES add to them, a broken file is listed with its reason while
the rest load."""

from __future__ import annotations

from pathlib import Path

import pytest

from casare_nb.core.graph import CODE_TEMPLATE, NOTE_TEMPLATE
from casare_nb.nodes.catalog import BUILTIN, ENV, load_catalog, template_dirs

ROOT = Path(__file__).resolve().parent.parent
CATEGORIES = {"browser", "data", "http", "files", "control", "notebook", "code"}
GOOD = """\
id: text.shout
name: Shout
category: text
params:
  word: {type: string, default: hi}
outputs:
  text: {}
code: "{{ out.text }} = {{ word }}.upper()"
"""


def test_every_built_in_template_loads_and_every_category_is_there() -> None:
    """The shipped templates all load (none broken) and cover the issue's categories."""
    catalog = load_catalog(dirs=[BUILTIN])
    assert catalog.broken == []
    assert {t.category for t in catalog.templates.values()} >= CATEGORIES
    assert {CODE_TEMPLATE, NOTE_TEMPLATE} <= set(catalog.templates)
    assert catalog.templates["browser.open_page"].replay


def test_the_repository_templates_folder_is_found_beside_the_workflows() -> None:
    """A workflow in workflows/ gets the project's templates/ (text.summary) too."""
    dirs = template_dirs(ROOT / "workflows" / "any.ipynb")
    assert ROOT / "templates" in dirs
    catalog = load_catalog(ROOT / "workflows" / "any.ipynb")
    assert catalog.broken == [] and "text.summary" in catalog.templates


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("id: text.bad\nname: [unclosed", "text.bad.yaml: while parsing a flow sequence"),
        ("id: text.bad\nname: Bad\ncategory: text\ncode: x = {{ nope }}", "names no param"),
        ("- just\n- a list", "not a mapping of template fields"),
        (
            "id: text.bad\nname: Bad\ncategory: text\nparams: {n: {type: integer, default: x}}\n"
            "code: y = {{ n }}",
            "params.n: default 'x' expects a whole number",
        ),
        ("\xff\xfe", "text.bad.yaml: 'utf-8' codec can't decode"),
    ],
)
def test_a_broken_template_file_is_listed_with_its_reason_and_the_rest_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, reason: str
) -> None:
    """A bad file in $CASARE_TEMPLATES: broken, with a one-line reason naming the file; the
    good file beside it and every built-in still load; the palette shows it as broken."""
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "text.bad.yaml").write_bytes(text.encode("latin-1"))
    monkeypatch.setenv(ENV, str(tmp_path))
    catalog = load_catalog()
    assert "text.shout" in catalog.templates and "data.read_csv" in catalog.templates
    [broken] = catalog.broken
    assert reason in broken.reason and "\n" not in broken.reason
    row = next(p for p in catalog.palette() if p["broken"])
    assert row["broken"] == broken.reason


def test_a_project_template_replaces_the_built_in_of_the_same_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Later folders win: a project's data.read_csv is the one offered."""
    (tmp_path / "mine.yaml").write_text(
        GOOD.replace("text.shout", "data.read_csv").replace("Shout", "My CSV")
    )
    monkeypatch.setenv(ENV, str(tmp_path))
    assert load_catalog().templates["data.read_csv"].name == "My CSV"
