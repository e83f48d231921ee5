"""The ``casare-nb`` CLI as a real subprocess: bad input, exit codes, resume and history."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from helpers import (
    ERROR_PREFIX,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    cell_text,
    describe,
    injected_source,
    notebook_text,
    resume_run_id,
    run_cli,
    state_dir,
    write_notebook,
)

from casare_nb.store.history import HistoryStore

RUN_ID_RE = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
STARTED_RE = re.compile(r"^run (\S+) \(attempt 1\)", re.MULTILINE)

LIMIT_PARAMS = 'limit: int = 1\nname: str = "x"'
FAILING_CELLS = ("x = n * 2", "raise ValueError(f'boom {x}')", "print('after', x)")


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a bad-input exit, checked for code and prefix."""
    assert proc.returncode == EXIT_BAD_INPUT, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, describe(proc)
    assert lines[0].startswith(ERROR_PREFIX), describe(proc)
    return lines[0]


def assert_nothing_recorded(base: Path) -> None:
    """No run was started: no history database and no runs folder in the state directory."""
    state = state_dir(base)
    assert not (state / "history.duckdb").exists()
    assert not (state / "runs").exists()


def history(base: Path) -> HistoryStore:
    """The DuckDB history the subprocesses in ``base`` write to."""
    return HistoryStore(state_dir(base) / "history.duckdb")


def history_json(base: Path, *args: str) -> object:
    """``casare-nb history --json ARGS`` parsed; it must exit 0."""
    proc = run_cli(base, "history", "--json", *args)
    assert proc.returncode == EXIT_OK, describe(proc)
    return json.loads(proc.stdout)


# -------------------------------------------------------------------------------------------
# bad notebooks
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        pytest.param("just some words\nnot a notebook\n", "invalid JSON", id="plain-text"),
        pytest.param('{"cells": [', "invalid JSON", id="invalid-json"),
        pytest.param('{"a": 1}', "no 'cells' or 'nbformat'", id="json-not-notebook"),
        pytest.param("[1, 2, 3]", "no 'cells' or 'nbformat'", id="json-list"),
        pytest.param(b"\xff\xfe\x00garbage", "invalid JSON", id="binary"),
    ],
)
def test_run_rejects_a_file_that_is_not_a_notebook(
    tmp_path: Path, content: str | bytes, needle: str
) -> None:
    """A file that is not a notebook is a one-line error, exit 2, nothing recorded or changed."""
    path = tmp_path / "wf.ipynb"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, "utf-8")
    before = path.read_bytes()
    line = error_line(run_cli(tmp_path, "run", "wf.ipynb"))
    assert "is not a notebook" in line
    assert needle in line
    assert path.read_bytes() == before
    assert_nothing_recorded(tmp_path)


def test_run_rejects_a_missing_notebook(tmp_path: Path) -> None:
    """A notebook path that does not exist is a one-line 'does not exist' error, exit 2."""
    line = error_line(run_cli(tmp_path, "run", "nowhere.ipynb", "-p", "x", "1"))
    assert "nowhere.ipynb does not exist" in line
    assert_nothing_recorded(tmp_path)


# -------------------------------------------------------------------------------------------
# bad parameters
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "args", "needle"),
    [
        pytest.param(None, ["-p", "x", "1"], "has no 'parameters' cell", id="no-parameters-cell"),
        pytest.param(
            LIMIT_PARAMS, ["-p", "nope", "1"], "unknown parameter 'nope'", id="unknown-param"
        ),
        pytest.param(
            "ratio: float",
            [],
            "missing required parameter 'ratio' (float)",
            id="missing-required",
        ),
        pytest.param(
            LIMIT_PARAMS,
            ["-p", "limit", "ten"],
            "parameter 'limit': expected int, got 'ten'",
            id="wrong-type",
        ),
        pytest.param(
            "a: int = 0", ["-p", "a", "1", "-p", "a", "2"], "'a' given twice", id="given-twice"
        ),
        pytest.param(
            LIMIT_PARAMS,
            ["-p", "class", "1"],
            "'class' is not a valid parameter name",
            id="keyword-name",
        ),
        pytest.param(
            LIMIT_PARAMS,
            ["-p", "limit", "1; import os"],
            "parameter 'limit': expected int",
            id="code-for-int",
        ),
        pytest.param(
            "a = 1\nb = 2\na = 3",
            [],
            "'a' is declared twice in the parameters cell (lines 1 and 3)",
            id="duplicate-declaration",
        ),
        pytest.param(
            "a = = 1", [], "parameters cell does not parse: line 1", id="params-syntax-error"
        ),
    ],
)
def test_run_rejects_bad_parameters(
    tmp_path: Path, params: str | None, args: list[str], needle: str
) -> None:
    """A parameter problem is a one-line error naming it, exit 2, before any run starts."""
    write_notebook(tmp_path / "wf.ipynb", ["print('ran')"], params=params)
    line = error_line(run_cli(tmp_path, "run", "wf.ipynb", *args))
    assert needle in line
    assert_nothing_recorded(tmp_path)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        pytest.param("limit: [1, 2\n", "is not YAML/JSON", id="not-yaml"),
        pytest.param("- 1\n- 2\n", "must hold a mapping", id="list-not-mapping"),
        pytest.param("just a sentence\n", "must hold a mapping", id="scalar-not-mapping"),
        pytest.param(None, "cannot read parameters file", id="missing"),
        pytest.param(b"\xff\xfe limit: 1", "is not UTF-8 text", id="not-utf8"),
    ],
)
def test_run_rejects_a_bad_parameters_file(
    tmp_path: Path, content: str | bytes | None, needle: str
) -> None:
    """A -f file that is unreadable, not YAML or not a mapping is a one-line error, exit 2."""
    write_notebook(tmp_path / "wf.ipynb", ["print(limit)"], params=LIMIT_PARAMS)
    if isinstance(content, bytes):
        (tmp_path / "params.yaml").write_bytes(content)
    elif content is not None:
        (tmp_path / "params.yaml").write_text(content, "utf-8")
    line = error_line(run_cli(tmp_path, "run", "wf.ipynb", "-f", "params.yaml"))
    assert needle in line
    assert "params.yaml" in line
    assert_nothing_recorded(tmp_path)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        pytest.param(["--cell-timeout", "0"], "--cell-timeout must be a positive", id="cell-0"),
        pytest.param(["--timeout", "-1"], "--timeout must be a positive", id="run-minus-1"),
        pytest.param(["--max-output", "0"], "--max-output must be a positive", id="output-0"),
    ],
)
def test_run_rejects_non_positive_limits(tmp_path: Path, args: list[str], needle: str) -> None:
    """A zero or negative timeout / output limit is a one-line error, exit 2, nothing run."""
    write_notebook(tmp_path / "wf.ipynb", ["print(limit)"], params=LIMIT_PARAMS)
    line = error_line(run_cli(tmp_path, "run", "wf.ipynb", *args))
    assert needle in line
    assert_nothing_recorded(tmp_path)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        pytest.param(
            ["run", "wf.ipynb", "--cell-timeout", "abc"],
            "'abc' is not a valid float",
            id="not-a-number",
        ),
        pytest.param(["run", "wf.ipynb", "-p", "limit"], "requires 2 arguments", id="p-one-arg"),
        pytest.param(["history", "--limit", "0"], "'--limit'", id="limit-range"),
        pytest.param(["--bogus"], "No such option '--bogus'", id="unknown-option"),
        pytest.param(["frobnicate"], "No such command 'frobnicate'", id="unknown-command"),
    ],
)
def test_usage_errors_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    """Click's usage errors come out as one 'casare-nb: error:' line with exit 2 too."""
    write_notebook(tmp_path / "wf.ipynb", ["print(limit)"], params=LIMIT_PARAMS)
    line = error_line(run_cli(tmp_path, *args))
    assert needle in line
    assert_nothing_recorded(tmp_path)


# -------------------------------------------------------------------------------------------
# parameters that run
# -------------------------------------------------------------------------------------------


def test_code_given_to_a_str_parameter_is_data_not_code(tmp_path: Path) -> None:
    """A str value that looks like code is injected as a string literal and never executed."""
    write_notebook(
        tmp_path / "wf.ipynb",
        ["print(repr(a))", "print(repr(b))", "print('os' in globals())"],
        params='a: str = "x"\nb: str = "y"',
    )
    a_value = "1; import os"
    b_value = "'); open('pwned', 'w').close(); ('"
    proc = run_cli(tmp_path, "run", "wf.ipynb", "out.ipynb", "-p", "a", a_value, "-p", "b", b_value)
    assert proc.returncode == EXIT_OK, describe(proc)
    out = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4)
    source = injected_source(out)
    assert f"a = {a_value!r}" in source
    assert f"b = {b_value!r}" in source
    by_id = {cell.get("id"): cell for cell in out.cells}
    assert cell_text(by_id["c0"]).strip() == repr(a_value)
    assert cell_text(by_id["c1"]).strip() == repr(b_value)
    assert cell_text(by_id["c2"]).strip() == "False"
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "os").exists()


def test_lenient_run_warns_about_an_unknown_parameter_and_runs(tmp_path: Path) -> None:
    """--lenient turns an unknown parameter into a warning on stderr and the run completes."""
    write_notebook(tmp_path / "wf.ipynb", ["print('limit is', limit)"], params=LIMIT_PARAMS)
    proc = run_cli(
        tmp_path, "run", "wf.ipynb", "out.ipynb", "--lenient", "-p", "nope", "5", "-p", "limit", "4"
    )
    assert proc.returncode == EXIT_OK, describe(proc)
    assert "completed" in proc.stdout
    assert "warning: unknown parameter 'nope'" in proc.stderr
    out = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4)
    assert "limit is 4" in notebook_text(out)


# -------------------------------------------------------------------------------------------
# params / history without runs
# -------------------------------------------------------------------------------------------


def test_params_prints_the_table_of_parameters(tmp_path: Path) -> None:
    """`params` prints one row per parameter with its type and default or '(required)'."""
    write_notebook(
        tmp_path / "wf.ipynb", ["pass"], params='limit: int = 1\nratio: float\nname: str = "x"'
    )
    proc = run_cli(tmp_path, "params", "wf.ipynb")
    assert proc.returncode == EXIT_OK, describe(proc)
    rows = [line.split() for line in proc.stdout.strip().splitlines()]
    assert rows[0] == ["NAME", "TYPE", "DEFAULT"]
    assert rows[1:] == [
        ["limit", "int", "1"],
        ["ratio", "float", "(required)"],
        ["name", "str", "'x'"],
    ]


def test_params_json_prints_a_json_schema(tmp_path: Path) -> None:
    """`params --json` prints a JSON schema with the types, defaults and required names."""
    write_notebook(
        tmp_path / "wf.ipynb", ["pass"], params='limit: int = 1\nratio: float\nname: str = "x"'
    )
    proc = run_cli(tmp_path, "params", "--json", "wf.ipynb")
    assert proc.returncode == EXIT_OK, describe(proc)
    schema = json.loads(proc.stdout)
    assert schema["type"] == "object"
    assert list(schema["properties"]) == ["limit", "ratio", "name"]
    assert schema["properties"]["limit"]["type"] == "integer"
    assert schema["properties"]["limit"]["default"] == 1
    assert schema["properties"]["ratio"]["type"] == "number"
    assert schema["properties"]["name"]["default"] == "x"
    assert schema["required"] == ["ratio"]


def test_params_on_a_cell_with_a_syntax_error_is_bad_input(tmp_path: Path) -> None:
    """`params` on a parameters cell that does not parse is a one-line error, exit 2."""
    write_notebook(tmp_path / "wf.ipynb", ["pass"], params="a = (1,\n")
    line = error_line(run_cli(tmp_path, "params", "wf.ipynb"))
    assert "parameters cell does not parse" in line


def test_history_without_runs_says_no_runs_yet(tmp_path: Path) -> None:
    """`history` before any run prints 'no runs yet', exits 0 and creates no state."""
    proc = run_cli(tmp_path, "history")
    assert proc.returncode == EXIT_OK, describe(proc)
    assert "no runs yet" in proc.stdout
    assert not state_dir(tmp_path).exists()


def test_history_of_an_unknown_run_without_history_is_bad_input(tmp_path: Path) -> None:
    """`history UNKNOWN` with no history at all is a one-line 'unknown run id' error, exit 2."""
    line = error_line(run_cli(tmp_path, "history", "20990101-000000-abcdef"))
    assert "unknown run id '20990101-000000-abcdef'" in line
    assert not state_dir(tmp_path).exists()


def test_resume_of_an_unknown_run_without_history_is_bad_input(tmp_path: Path) -> None:
    """`resume UNKNOWN` with no history at all is a one-line 'unknown run id' error, exit 2."""
    line = error_line(run_cli(tmp_path, "resume", "20990101-000000-abcdef"))
    assert "unknown run id '20990101-000000-abcdef'" in line
    assert not state_dir(tmp_path).exists()


# -------------------------------------------------------------------------------------------
# one good and one failing run, shared by the tests below
# -------------------------------------------------------------------------------------------


@dataclass
class TwoRuns:
    base: Path
    good: subprocess.CompletedProcess[str]
    bad: subprocess.CompletedProcess[str]
    good_id: str
    bad_id: str


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> TwoRuns:
    """A state directory holding one completed and one failed run (both with -p n 3)."""
    base = tmp_path_factory.mktemp("two_runs")
    write_notebook(base / "good.ipynb", ["print('value', n * 2)"], params="n: int = 1")
    write_notebook(base / "bad.ipynb", FAILING_CELLS, params="n: int = 1")
    good = run_cli(base, "run", "good.ipynb", "good_out.ipynb", "-p", "n", "3")
    bad = run_cli(base, "run", "bad.ipynb", "-p", "n", "3")
    started = STARTED_RE.search(good.stdout)
    assert started, describe(good)
    return TwoRuns(base, good, bad, started.group(1), resume_run_id(bad.stderr))


def test_completed_run_exits_0_and_says_completed(two_runs: TwoRuns) -> None:
    """A run whose cells all succeed exits 0, prints 'completed' and writes the output."""
    proc = two_runs.good
    assert proc.returncode == EXIT_OK, describe(proc)
    assert re.search(r"^completed in [\d.]+ s; output: ", proc.stdout, re.MULTILINE)
    out = nbformat.read(str(two_runs.base / "good_out.ipynb"), as_version=4)
    assert "value 6" in notebook_text(out)


def test_failing_run_exits_1_with_cell_error_and_resume_command(two_runs: TwoRuns) -> None:
    """A failing run exits 1 and prints the failed cell, the error and the resume command."""
    proc = two_runs.bad
    assert proc.returncode == EXIT_FAILED, describe(proc)
    assert "failed at cell 4: ValueError: boom 6" in proc.stderr  # title, params, injected, c0
    assert f"casare-nb resume {two_runs.bad_id}" in proc.stderr
    assert RUN_ID_RE.match(two_runs.bad_id)
    assert "after" not in proc.stdout


def test_history_knows_the_run_id_printed_by_a_failing_run(two_runs: TwoRuns) -> None:
    """`history RUN_ID` for the id in the resume hint shows that run, failed at its cell."""
    proc = run_cli(two_runs.base, "history", two_runs.bad_id)
    assert proc.returncode == EXIT_OK, describe(proc)
    assert "cell 4: ValueError: boom 6" in proc.stdout
    data = history_json(two_runs.base, two_runs.bad_id)
    assert isinstance(data, dict)
    [attempt] = data["attempts"]
    assert attempt["run_id"] == two_runs.bad_id
    assert attempt["status"] == "failed"
    assert attempt["failed_cell"] == 4
    assert attempt["parameters"] == {"n": 3}
    assert [(c["cell_index"], c["status"]) for c in data["cells"]] == [
        (1, "ok"),  # cell 0 is the markdown title
        (2, "ok"),
        (3, "ok"),
        (4, "error"),
    ]


def test_history_failed_lists_only_the_failed_run(two_runs: TwoRuns) -> None:
    """`history --failed` lists the failed run and not the completed one."""
    everything = history(two_runs.base).list_runs()
    assert {r.run_id for r in everything} == {two_runs.good_id, two_runs.bad_id}
    failed = history_json(two_runs.base, "--failed")
    assert isinstance(failed, list)
    assert [r["run_id"] for r in failed] == [two_runs.bad_id]
    table = run_cli(two_runs.base, "history", "--failed")
    assert table.returncode == EXIT_OK, describe(table)
    assert two_runs.bad_id in table.stdout
    assert two_runs.good_id not in table.stdout


def test_resume_of_a_completed_run_is_bad_input(two_runs: TwoRuns) -> None:
    """`resume` of a completed run is a one-line error saying it completed; no new attempt."""
    line = error_line(run_cli(two_runs.base, "resume", two_runs.good_id))
    assert f"run {two_runs.good_id} completed" in line
    assert [a.attempt for a in history(two_runs.base).attempts(two_runs.good_id)] == [1]
    assert not (state_dir(two_runs.base) / "runs" / two_runs.good_id / "2").exists()


def test_resume_of_an_unknown_run_with_history_is_bad_input(two_runs: TwoRuns) -> None:
    """`resume UNKNOWN` with a history is a one-line 'unknown run id' error; nothing added."""
    line = error_line(run_cli(two_runs.base, "resume", "20990101-000000-abcdef"))
    assert "unknown run id '20990101-000000-abcdef'" in line
    assert len(history(two_runs.base).list_runs()) == 2


def test_history_of_an_unknown_run_with_history_is_bad_input(two_runs: TwoRuns) -> None:
    """`history UNKNOWN` with a history is a one-line 'unknown run id' error, exit 2."""
    line = error_line(run_cli(two_runs.base, "history", "20990101-000000-abcdef"))
    assert "unknown run id '20990101-000000-abcdef'" in line


# -------------------------------------------------------------------------------------------
# resume after the workflow is gone
# -------------------------------------------------------------------------------------------


def test_resume_after_the_workflow_was_deleted_is_bad_input(tmp_path: Path) -> None:
    """`resume` when the workflow notebook was deleted is a one-line error, no new attempt."""
    write_notebook(tmp_path / "wf.ipynb", FAILING_CELLS, params="n: int = 1")
    first = run_cli(tmp_path, "run", "wf.ipynb")
    assert first.returncode == EXIT_FAILED, describe(first)
    run_id = resume_run_id(first.stderr)
    (tmp_path / "wf.ipynb").unlink()
    line = error_line(run_cli(tmp_path, "resume", run_id))
    assert f"cannot resume {run_id}" in line
    assert "does not exist" in line
    assert [a.attempt for a in history(tmp_path).attempts(run_id)] == [1]
    assert not (state_dir(tmp_path) / "runs" / run_id / "2").exists()


@pytest.mark.slow
def test_run_without_checkpoints_writes_none_and_a_resume_replays_from_the_start(
    tmp_path: Path,
) -> None:
    """`casare-nb run --no-checkpoints`: no manifest is written; its resume restores nothing
    and replays every cell before the failed one."""
    cells = ["a = 1", "b = a + 1", "assert b > limit"]
    write_notebook(tmp_path / "wf.ipynb", cells, params="limit = 5")
    failed = run_cli(tmp_path, "run", "wf.ipynb", "--no-checkpoints")
    assert failed.returncode == 1, describe(failed)
    assert list(tmp_path.rglob("checkpoints/*.json")) == []
    run_id = resume_run_id(failed.stderr)
    again = run_cli(tmp_path, "resume", run_id, "-p", "limit", "1")
    assert again.returncode == 0, describe(again)
    assert "replayed cells [1, 2, 3, 4] to rebuild state" in again.stdout + again.stderr
