"""Data nodes: CSV and Parquet files, DuckDB SQL over DataFrames and files, filter, select,
join, and an HTML report.

What the ``data.*`` templates call. DataFrames are pandas'; Parquet goes through DuckDB
(no pyarrow needed). Every SQL runs in a private in-memory DuckDB connection, so a node
never sees (or changes) another's tables, nor the history database of the run. Mistakes an
analyst makes (a missing column, a bad expression) raise one-line errors naming them.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeAlias

import duckdb
import pandas as pd

__all__ = [
    "ColumnError",
    "filter_rows",
    "join",
    "read_csv",
    "read_parquet",
    "select",
    "sql",
    "write_csv",
    "write_parquet",
    "write_report",
]

PathLike: TypeAlias = str | os.PathLike[str]

JOIN_KINDS: Final = ("inner", "left", "right", "outer", "cross")


class ColumnError(KeyError):
    """Columns a node needs are not in its DataFrame; ``str(err)`` is one plain line
    (a KeyError's own is quoted)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def read_csv(path: PathLike, **options: Any) -> pd.DataFrame:
    """The CSV file at ``path`` as a DataFrame; ``options`` go to :func:`pandas.read_csv`
    (``sep=";"``, ``dtype=...``, ``parse_dates=[...]``)."""
    return pd.read_csv(_existing(path, "read_csv"), **options)


def write_csv(df: pd.DataFrame, path: PathLike) -> str:
    """Write ``df`` (without its index) as CSV to ``path``, creating its folder; answer the
    absolute path."""
    target = _target(path)
    df.to_csv(target, index=False)
    return str(target)


def read_parquet(path: PathLike) -> pd.DataFrame:
    """The Parquet file (or glob, e.g. ``"parts/*.parquet"``) at ``path`` as a DataFrame."""
    where = os.fspath(path)
    if not any(c in where for c in "*?[") and not Path(where).exists():
        raise FileNotFoundError(f"read_parquet: no file {where}")
    with duckdb.connect(":memory:") as con:
        return con.read_parquet(where).df()


def write_parquet(df: pd.DataFrame, path: PathLike) -> str:
    """Write ``df`` (without its index) as Parquet to ``path``, creating its folder; answer
    the absolute path."""
    target = _target(path)
    with duckdb.connect(":memory:") as con:
        con.from_df(_plain(df)).write_parquet(str(target))
    return str(target)


def sql(query: str, **frames: pd.DataFrame | None) -> pd.DataFrame:
    """Run DuckDB SQL ``query`` over the DataFrames given by name (``sql("select * from a",
    a=df)``) and over files the query names (``from 'sales/*.csv'``); answer the result.

    A frame given as None (an unconnected input) is left out. The query runs in a private
    in-memory connection: tables it creates are gone afterwards."""
    with duckdb.connect(":memory:") as con:
        for name, frame in frames.items():
            if frame is None:
                continue
            if not isinstance(frame, pd.DataFrame):
                raise TypeError(f"sql: {name} is a {type(frame).__name__}, not a DataFrame")
            con.register(name, _plain(frame))
        try:
            relation = con.sql(query)
        except duckdb.Error as exc:
            raise ValueError(f"sql: {_one_line(exc)}") from None
        if relation is None:  # a statement without a result (create table ...)
            return pd.DataFrame()
        return relation.df()


def filter_rows(df: pd.DataFrame, expression: str) -> pd.DataFrame:
    """The rows of ``df`` for which the pandas query ``expression`` holds
    (``"amount > 10 and region == 'EU'"``; ``@name`` is a variable of the caller, e.g. of
    the notebook)."""
    try:
        # level=1: ``@name`` resolves in our caller's frame (the notebook cell), not here
        result: pd.DataFrame = df.query(expression, level=1)
    except Exception as exc:
        columns = ", ".join(map(str, df.columns))
        raise ValueError(
            f"filter {expression!r}: {type(exc).__name__}: {_one_line(exc)} (columns: {columns})"
        ) from None
    return result


def select(df: pd.DataFrame, columns: Sequence[str] | str) -> pd.DataFrame:
    """The ``columns`` of ``df``, in that order."""
    wanted = [columns] if isinstance(columns, str) else list(columns)
    _require_columns(df, wanted, "select")
    return df.loc[:, wanted].copy()


def join(
    left: pd.DataFrame,
    right: pd.DataFrame,
    on: Sequence[str] | str,
    how: str = "inner",
) -> pd.DataFrame:
    """``left`` joined with ``right`` on the columns ``on`` (both have them); ``how`` is
    inner, left, right, outer or cross (a cross join takes no ``on``)."""
    if how not in JOIN_KINDS:
        raise ValueError(f"join: how={how!r} is not one of {', '.join(JOIN_KINDS)}")
    keys = [on] if isinstance(on, str) else list(on)
    if how == "cross":
        if keys:
            raise ValueError("join: a cross join takes no 'on' columns")
        return pd.merge(left, right, how="cross")
    if not keys:
        raise ValueError("join: give the columns to join on")
    _require_columns(left, keys, "join (left)")
    _require_columns(right, keys, "join (right)")
    return pd.merge(left, right, on=keys, how=how)


_REPORT_CSS: Final = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem;
       color: #1f2328; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; }
p.meta { color: #59636e; margin: 0 0 1rem; }
table { border-collapse: collapse; font-size: .875rem; }
th, td { border: 1px solid #d1d9e0; padding: .25rem .5rem; text-align: left; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fafbfc; }
"""


def write_report(
    df: pd.DataFrame, path: PathLike, title: str, *, max_rows: int | None = None
) -> str:
    """Write ``df`` as a self-contained HTML report to ``path`` (its folder created): the
    title, the row count and the table (its first ``max_rows`` rows if given). Answer the
    absolute path."""
    target = _target(path)
    rows = len(df)
    shown = df if max_rows is None or rows <= max_rows else df.head(max_rows)
    count = f"{rows:,} row{'s' if rows != 1 else ''}"
    if len(shown) < rows:
        count += f" (the first {len(shown):,} shown)"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = shown.to_html(index=False, escape=True, border=0, na_rep="")
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_REPORT_CSS}</style>\n</head>\n"
        f"<body>\n<h1>{html.escape(title)}</h1>\n"
        f'<p class="meta">{count} &middot; {len(df.columns)} columns &middot; {stamp}</p>\n'
        f"{table}\n</body>\n</html>\n"
    )
    target.write_text(page, encoding="utf-8")
    return str(target)


def _existing(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what}: no file {p}")
    return p


def _target(path: PathLike) -> Path:
    """``path`` absolute, its folder created."""
    target = Path(path).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _require_columns(df: pd.DataFrame, wanted: Sequence[str], what: str) -> None:
    have = set(map(str, df.columns))
    missing = [c for c in wanted if c not in have]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        plural = "s" if len(missing) > 1 else ""
        raise ColumnError(
            f"{what}: no column{plural} {names} (columns: {', '.join(map(str, df.columns))})"
        )


def _plain(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with string column names (what DuckDB needs), index dropped."""
    if all(isinstance(c, str) for c in df.columns) and isinstance(df.index, pd.RangeIndex):
        return df
    out = df.reset_index(drop=True)
    out.columns = [str(c) for c in out.columns]
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
