"""casare_nb.nodes.data: CSV and Parquet files, DuckDB SQL, filter/select/join, the HTML
report; and the data templates' code. Also the template helper the other node tests use:
:func:`rendered_templates` fills a template's placeholders by hand and checks the calls
it makes against the runtime functions' signatures."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from casare_nb.nodes import data as nb_data

TEMPLATES = Path(nb_data.__file__).parent / "templates"
_PLACEHOLDER = re.compile(r"\{\{\s*(?:(in|out)\.)?([A-Za-z_]\w*)\s*\}\}")
_SAMPLES = {
    "string": "'x'",
    "text": "'select 1'",
    "integer": "1",
    "number": "1.5",
    "boolean": "True",
    "list": "['a']",
    "mapping": "{}",
    "expression": "(value is not None)",
}


def render_by_hand(tpl: dict[str, Any]) -> str:
    """The cell a template renders to, placeholders filled by hand: a sample value per param
    type, ``in_<port>`` / ``out_<port>`` per port, ``'node_1'`` for ``{{ node }}``."""

    def sub(match: re.Match[str]) -> str:
        scope, name = match.group(1), match.group(2)
        if scope == "in":
            assert name in tpl.get("inputs", {}), f"{{{{ in.{name} }}}} names no input"
            return f"in_{name}"
        if scope == "out":
            assert name in tpl.get("outputs", {}), f"{{{{ out.{name} }}}} names no output"
            return f"out_{name}"
        if name == "node" and name not in tpl.get("params", {}):
            return "'node_1'"
        spec = tpl["params"][name]
        if spec["type"] == "choice":
            return repr(spec["choices"][0])
        return _SAMPLES[spec["type"]]

    code = _PLACEHOLDER.sub(sub, tpl["code"])
    assert "{{" not in code, f"a placeholder left in {code!r}"
    return "\n".join([*tpl.get("imports", []), code])


def parse_cell(source: str) -> ast.Module:
    """``source`` parsed as a notebook cell parses it (top-level await allowed)."""
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree: ast.Module = compile(source, "<template>", "exec", flags=flags)
    return tree


def check_calls(tree: ast.Module) -> int:
    """Every ``nb_x.f(...)`` call of ``tree`` names a function of the module imported as
    ``nb_x`` and its arguments bind to that function's signature; answer how many."""
    modules: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.ImportFrom) and stmt.module:
            for alias in stmt.names:
                full = f"{stmt.module}.{alias.name}"
                modules[alias.asname or alias.name] = importlib.import_module(full)
    checked = 0
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Name) and owner.id in modules):
            continue
        func = getattr(modules[owner.id], node.func.attr, None)
        assert callable(func), f"{owner.id}.{node.func.attr} is not a function"
        kwargs: dict[str, Any] = {}
        for kw in node.keywords:
            if kw.arg is None:  # **{...}: a literal mapping of options
                kwargs.update(ast.literal_eval(kw.value))
            else:
                kwargs[kw.arg] = object()
        inspect.signature(func).bind(*[object()] * len(node.args), **kwargs)
        checked += 1
    return checked


def rendered_templates(category: str) -> list[tuple[str, dict[str, Any], str]]:
    """(file name, template, its code rendered by hand) of every template of ``category``."""
    found = []
    for path in sorted((TEMPLATES / category).glob("*.yaml")):
        tpl = yaml.safe_load(path.read_text("utf-8"))
        found.append((path.name, tpl, render_by_hand(tpl)))
    return found


def check_category(category: str, expected: set[str]) -> None:
    """The templates of ``category`` are ``expected`` (ids category.<file name>), each one's
    code parses as a cell, and its calls fit the runtime functions."""
    templates = rendered_templates(category)
    assert {tpl["id"] for _, tpl, _ in templates} == {f"{category}.{n}" for n in expected}
    for name, tpl, source in templates:
        assert tpl["id"] == f"{category}.{Path(name).stem}"
        assert tpl["category"] == category
        tree = parse_cell(source)
        if tpl.get("imports"):
            assert check_calls(tree) >= 1, f"{name} calls none of its module's functions"


def test_data_templates_parse_and_fit_the_functions() -> None:
    """Every data template renders (by hand) to a cell that parses and whose calls bind to
    nodes.data's signatures."""
    check_category(
        "data",
        {
            "read_csv",
            "write_csv",
            "read_parquet",
            "write_parquet",
            "sql",
            "filter",
            "select",
            "join",
            "write_report",
        },
    )


@pytest.fixture
def sales() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [1, 2, 3, 4],
            "region": ["EU", "US", "EU", None],
            "amount": [10.5, 3.0, 42.0, float("nan")],
            "day": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03", None]),
        }
    )


def test_csv_round_trip_creates_the_folder(tmp_path: Path, sales: pd.DataFrame) -> None:
    """write_csv creates missing folders, answers the absolute path, and read_csv reads the
    same rows back (without an index column)."""
    written = nb_data.write_csv(sales, tmp_path / "out" / "deep" / "sales.csv")
    assert written == str((tmp_path / "out" / "deep" / "sales.csv").absolute())
    back = nb_data.read_csv(written, parse_dates=["day"])
    assert list(back.columns) == ["id", "region", "amount", "day"]
    assert back["id"].tolist() == [1, 2, 3, 4]
    assert back["amount"].iloc[:3].tolist() == [10.5, 3.0, 42.0]
    assert back["region"].isna().tolist() == [False, False, False, True]


def test_read_csv_passes_options(tmp_path: Path) -> None:
    """read_csv's options go to pandas (a ; separator)."""
    (tmp_path / "semi.csv").write_text("a;b\n1;x\n2;y\n")
    frame = nb_data.read_csv(tmp_path / "semi.csv", sep=";")
    assert frame.to_dict("list") == {"a": [1, 2], "b": ["x", "y"]}


def test_reading_a_missing_file_is_one_line(tmp_path: Path) -> None:
    """A missing CSV or Parquet file raises FileNotFoundError naming it on one line."""
    with pytest.raises(FileNotFoundError, match=r"^read_csv: no file .*nope\.csv$"):
        nb_data.read_csv(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match=r"^read_parquet: no file .*nope\.parquet$"):
        nb_data.read_parquet(tmp_path / "nope.parquet")


def test_parquet_round_trip_without_pyarrow(
    tmp_path: Path, sales: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parquet is written and read through DuckDB with pyarrow unimportable: values, nulls
    and column types come back."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    path = nb_data.write_parquet(sales.set_index("id", drop=False), tmp_path / "p" / "s.parquet")
    assert path == str((tmp_path / "p" / "s.parquet").absolute())
    back = nb_data.read_parquet(path)
    assert list(back.columns) == ["id", "region", "amount", "day"]
    assert back["id"].tolist() == [1, 2, 3, 4]
    assert back["region"].iloc[:3].tolist() == ["EU", "US", "EU"]
    assert back["region"].isna().iloc[3] and back["amount"].isna().iloc[3]
    assert pd.api.types.is_datetime64_any_dtype(back["day"])
    assert back["day"].iloc[0] == pd.Timestamp("2026-01-01")


def test_read_parquet_takes_a_glob(tmp_path: Path) -> None:
    """A glob reads every matching Parquet file as one DataFrame."""
    for i in range(3):
        nb_data.write_parquet(pd.DataFrame({"part": [i], "v": [i * 10]}), tmp_path / f"{i}.parquet")
    back = nb_data.read_parquet(str(tmp_path / "*.parquet"))
    assert sorted(back["part"].tolist()) == [0, 1, 2]


def test_sql_over_named_frames(sales: pd.DataFrame) -> None:
    """sql queries the frames by their keyword names; a frame given as None is left out."""
    regions = pd.DataFrame({"region": ["EU", "US"], "name": ["Europe", "United States"]})
    result = nb_data.sql(
        "select r.name, sum(s.amount) as total from a s join b r using (region) "
        "group by r.name order by r.name",
        a=sales,
        b=regions,
        c=None,
    )
    assert result.to_dict("list") == {"name": ["Europe", "United States"], "total": [52.5, 3.0]}


def test_sql_reads_files_named_in_the_query(
    tmp_path: Path, sales: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CSV or Parquet file named in the query is read, relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    nb_data.write_csv(sales, "in/sales.csv")
    nb_data.write_parquet(sales, "in/sales.parquet")
    result = nb_data.sql(
        "select (select count(*) from 'in/sales.csv') as csv_rows, "
        "(select count(*) from 'in/sales.parquet') as parquet_rows"
    )
    assert result.to_dict("records") == [{"csv_rows": 4, "parquet_rows": 4}]


def test_sql_connection_is_private(sales: pd.DataFrame) -> None:
    """A table one query creates is gone for the next; a frame of another call is not seen."""
    nb_data.sql("create table leftover as select 1 as x")
    with pytest.raises(ValueError, match="leftover"):
        nb_data.sql("select * from leftover")
    with pytest.raises(ValueError, match=r"^sql: .*\ba\b"):
        nb_data.sql("select * from a")


def test_sql_error_is_one_line(sales: pd.DataFrame) -> None:
    """A bad query raises ValueError with DuckDB's reason on one line; a non-frame is a
    TypeError naming it."""
    with pytest.raises(ValueError) as info:
        nb_data.sql("select nope from a", a=sales)
    assert str(info.value).startswith("sql: ") and "\n" not in str(info.value)
    assert "nope" in str(info.value)
    with pytest.raises(TypeError, match="sql: a is a list, not a DataFrame"):
        nb_data.sql("select 1", a=[1, 2])


def test_filter_rows_with_a_query_and_a_caller_variable(sales: pd.DataFrame) -> None:
    """filter_rows keeps the rows the expression holds for; @name is the caller's variable."""
    minimum = 5
    kept = nb_data.filter_rows(sales, "region == 'EU' and amount > @minimum")
    assert kept["id"].tolist() == [1, 3]
    assert minimum == 5


def test_filter_rows_error_names_expression_and_columns(sales: pd.DataFrame) -> None:
    """An expression naming an unknown column fails on one line with the columns there are."""
    with pytest.raises(ValueError) as info:
        nb_data.filter_rows(sales, "price > 1")
    text = str(info.value)
    assert text.startswith("filter 'price > 1': ") and "\n" not in text
    assert "(columns: id, region, amount, day)" in text


def test_select_keeps_columns_in_order(sales: pd.DataFrame) -> None:
    """select answers the columns asked for, in that order, as a copy."""
    picked = nb_data.select(sales, ["amount", "id"])
    assert list(picked.columns) == ["amount", "id"]
    picked.loc[0, "id"] = 99
    assert sales.loc[0, "id"] == 1


def test_select_names_the_missing_columns(sales: pd.DataFrame) -> None:
    """Missing columns raise a KeyError whose one line names them and the columns there are."""
    with pytest.raises(KeyError) as info:
        nb_data.select(sales, ["id", "price", "qty"])
    assert str(info.value) == (
        "select: no columns 'price', 'qty' (columns: id, region, amount, day)"
    )


def test_join_inner_and_left(sales: pd.DataFrame) -> None:
    """join merges on the given columns; how chooses which rows stay."""
    names = pd.DataFrame({"region": ["EU"], "name": ["Europe"]})
    inner = nb_data.join(sales, names, ["region"], "inner")
    assert inner["id"].tolist() == [1, 3] and set(inner["name"]) == {"Europe"}
    left = nb_data.join(sales, names, "region", "left")
    assert left["id"].tolist() == [1, 2, 3, 4]
    assert left["name"].isna().tolist() == [False, True, False, True]


def test_join_mistakes_are_one_line(sales: pd.DataFrame) -> None:
    """A key missing on one side, or an unknown how, fails with a clear line."""
    with pytest.raises(KeyError) as info:
        nb_data.join(sales, pd.DataFrame({"code": [1]}), ["region"], "inner")
    assert str(info.value) == "join (right): no column 'region' (columns: code)"
    with pytest.raises(ValueError, match="how='sideways' is not one of inner, left"):
        nb_data.join(sales, sales, ["id"], "sideways")


def test_write_report_is_self_contained_html(tmp_path: Path) -> None:
    """write_report writes one HTML file (folder created) with the escaped title, the row
    count and every row, escaped, and nothing it loads from elsewhere."""
    frame = pd.DataFrame({"item": ["<b>bold</b>", "plain"], "qty": [1, 2]})
    path = nb_data.write_report(frame, tmp_path / "reports" / "r.html", "Stock & <flow>")
    assert path == str((tmp_path / "reports" / "r.html").absolute())
    page = Path(path).read_text("utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "<h1>Stock &amp; &lt;flow&gt;</h1>" in page
    assert "2 rows" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    assert "<td>plain</td>" in page and "<th>qty</th>" in page
    assert not re.search(r"<(script|link|img)\b", page)


def test_write_report_max_rows_says_how_many_are_shown(tmp_path: Path) -> None:
    """With max_rows, the report shows that many rows and says so."""
    frame = pd.DataFrame({"n": range(10)})
    page = Path(nb_data.write_report(frame, tmp_path / "r.html", "N", max_rows=3)).read_text()
    assert "10 rows (the first 3 shown)" in page
    assert page.count("<td>") == 3
