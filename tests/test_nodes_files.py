"""casare_nb.nodes.files: listing a folder, moving files (all or nothing), zipping them; and
the files templates' code."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from test_nodes_data import check_category

from casare_nb.nodes import files as nb_files


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """in/ with b.csv (5 bytes), a.csv, notes.txt and sub/c.csv, and an empty folder."""
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "b.csv").write_text("b,1\n\n")
    (root / "a.csv").write_text("a\n")
    (root / "notes.txt").write_text("hello")
    (root / "sub" / "c.csv").write_text("c\n")
    os.utime(root / "a.csv", (1_700_000_000, 1_700_000_000))
    return root


def names_in(zip_path: str | Path) -> list[str]:
    with zipfile.ZipFile(zip_path) as zf:
        return sorted(zf.namelist())


def test_files_templates_parse_and_fit_the_functions() -> None:
    """Every files template renders (by hand) to a cell that parses and whose calls bind to
    nodes.files' signatures."""
    check_category("files", {"list", "move", "archive"})


def test_list_files_sorted_with_columns(tree: Path) -> None:
    """list_files answers the matching files (no folders), sorted by path, with absolute
    path, name, size and a UTC modified time."""
    listed = nb_files.list_files(tree, "*.csv")
    assert list(listed.columns) == ["path", "name", "size", "modified"]
    assert listed["name"].tolist() == ["a.csv", "b.csv"]
    assert listed["path"].tolist() == [str(tree / "a.csv"), str(tree / "b.csv")]
    assert listed["size"].tolist() == [2, 5]
    assert listed["modified"].iloc[0] == pd.Timestamp(1_700_000_000, unit="s", tz="UTC")
    assert nb_files.list_files(tree)["name"].tolist() == ["a.csv", "b.csv", "notes.txt"]


def test_list_files_recursive(tree: Path) -> None:
    """recursive=True looks in sub-folders too."""
    listed = nb_files.list_files(tree, "*.csv", recursive=True)
    assert listed["path"].tolist() == [str(tree / n) for n in ("a.csv", "b.csv", "sub/c.csv")]


def test_list_files_empty_and_missing(tree: Path) -> None:
    """An empty result still has the columns; a missing folder is a one-line error."""
    empty = nb_files.list_files(tree, "*.parquet")
    assert empty.empty and list(empty.columns) == ["path", "name", "size", "modified"]
    with pytest.raises(FileNotFoundError, match=r"^list_files: .*nowhere does not exist$"):
        nb_files.list_files(tree / "nowhere")


def test_move_a_file_list(tree: Path, tmp_path: Path) -> None:
    """move takes list_files' DataFrame, creates the destination and answers the new paths."""
    dest = tmp_path / "done" / "today"
    moved = nb_files.move(nb_files.list_files(tree, "*.csv"), dest)
    assert moved == [str(dest / "a.csv"), str(dest / "b.csv")]
    assert (dest / "b.csv").read_text() == "b,1\n\n"
    assert not (tree / "a.csv").exists() and (tree / "notes.txt").exists()


def test_move_one_path_and_a_folder(tree: Path, tmp_path: Path) -> None:
    """One path as a str moves; a folder moves with what it holds."""
    dest = tmp_path / "out"
    assert nb_files.move(str(tree / "notes.txt"), dest) == [str(dest / "notes.txt")]
    assert nb_files.move([tree / "sub"], dest) == [str(dest / "sub")]
    assert (dest / "sub" / "c.csv").read_text() == "c\n"


def test_move_moves_nothing_on_a_conflict(tree: Path, tmp_path: Path) -> None:
    """A target that exists stops the whole move before any file moves; overwrite=True
    replaces it."""
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "b.csv").write_text("old")
    with pytest.raises(FileExistsError, match=r"^move: .*b\.csv exists \(give overwrite=True"):
        nb_files.move([tree / "a.csv", tree / "b.csv"], dest)
    assert (tree / "a.csv").exists() and not (dest / "a.csv").exists()
    nb_files.move([tree / "a.csv", tree / "b.csv"], dest, overwrite=True)
    assert (dest / "b.csv").read_text() == "b,1\n\n" and not (tree / "b.csv").exists()


def test_move_refuses_missing_and_same_named_sources(tree: Path, tmp_path: Path) -> None:
    """A missing source, or two sources of one name, move nothing."""
    dest = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=r"^move: no such file: .*ghost\.csv$"):
        nb_files.move([tree / "a.csv", tree / "ghost.csv"], dest)
    (tree / "sub" / "a.csv").write_text("other a")
    with pytest.raises(ValueError, match=r"have the same name 'a\.csv'"):
        nb_files.move([tree / "a.csv", tree / "sub" / "a.csv"], dest)
    assert (tree / "a.csv").exists() and not dest.exists()


def test_archive_a_folder(tree: Path, tmp_path: Path) -> None:
    """A folder is zipped with its contents at the top, empty folders kept, in a new folder."""
    zip_path = nb_files.archive(tree, tmp_path / "zips" / "in.zip")
    assert zip_path == str(tmp_path / "zips" / "in.zip")
    assert names_in(zip_path) == ["a.csv", "b.csv", "empty/", "notes.txt", "sub/c.csv"]
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.read("sub/c.csv") == b"c\n"


def test_archive_files_and_the_folder_keyword(tree: Path, tmp_path: Path) -> None:
    """Files go in under their names, a folder under its name; folder= zips a folder when
    no files are given; an existing zip is replaced."""
    target = tmp_path / "x.zip"
    nb_files.archive(nb_files.list_files(tree, "*.csv"), target)
    assert names_in(target) == ["a.csv", "b.csv"]
    nb_files.archive([tree / "notes.txt", tree / "sub"], target)
    assert names_in(target) == ["notes.txt", "sub/c.csv"]
    nb_files.archive(None, target, folder=tree / "sub")
    assert names_in(target) == ["c.csv"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".x.zip")] == []


def test_archive_inside_the_folder_leaves_itself_out(tree: Path) -> None:
    """A zip written into the folder it zips does not hold itself (zipping twice)."""
    nb_files.archive(tree, tree / "all.zip")
    nb_files.archive(tree, tree / "all.zip")
    assert "all.zip" not in names_in(tree / "all.zip")


def test_archive_mistakes(tree: Path, tmp_path: Path) -> None:
    """Neither files nor folder, or both, or a missing file: one-line errors, no zip."""
    with pytest.raises(ValueError, match=r"give the files to zip or a folder$"):
        nb_files.archive(None, tmp_path / "x.zip")
    with pytest.raises(ValueError, match="not both"):
        nb_files.archive([tree / "a.csv"], tmp_path / "x.zip", folder=tree)
    with pytest.raises(FileNotFoundError, match=r"archive: no such file: .*ghost"):
        nb_files.archive([tree / "ghost"], tmp_path / "x.zip")
    assert not (tmp_path / "x.zip").exists()
