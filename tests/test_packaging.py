"""The wheel carries what `pip install` needs for JupyterLab with nothing built by hand: the
prebuilt lab extension where JupyterLab looks for it, and the config that enables the
server extension (built from a copy of the sources with pip, as a user would)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_the_lab_extension_and_enables_the_server_extension(
    tmp_path: Path,
) -> None:
    """share/jupyter/labextensions/casare-nb (package.json, remoteEntry) and
    etc/jupyter/jupyter_server_config.d/casare_nb.json are in the wheel's data, the
    extension's assets in the package too, and the graph editor's front end and templates."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("casare_nb", "jupyter-config"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("casare_nb-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = next(n.split("/", 1)[0] for n in names if ".data/" in n)
    assert f"{data}/data/share/jupyter/labextensions/casare-nb/package.json" in names
    assert any(
        n.startswith(f"{data}/data/share/jupyter/labextensions/casare-nb/static/remoteEntry.")
        for n in names
    )
    assert f"{data}/data/etc/jupyter/jupyter_server_config.d/casare_nb.json" in names
    assert "casare_nb/labextension/package.json" in names
    assert "casare_nb/jupyter/handlers.py" in names
    # the graph editor: its front end and the built-in node templates
    assert {"casare_nb/widgets/graph_editor.js", "casare_nb/widgets/graph_editor.css"} <= names
    shipped = {n for n in names if n.startswith("casare_nb/nodes/templates/")}
    expected = {
        f"casare_nb/{p.relative_to(ROOT / 'casare_nb').as_posix()}"
        for p in (ROOT / "casare_nb" / "nodes" / "templates").rglob("*.yaml")
    }
    assert shipped == expected and len(expected) >= 27
