"""casare_nb.output(name, value): what a cell records, and reading it back from cells."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import write_notebook

import casare_nb
from casare_nb.core.models import RunStatus
from casare_nb.core.outputs import OUTPUT_MIME, cell_outputs, extract_outputs, output_payload
from casare_nb.local import arun_notebook
from casare_nb.outputs import output


def display(name: str, value: Any, output_type: str = "display_data") -> dict[str, Any]:
    """A display output recording ``value`` as ``name``, as nbformat keeps it."""
    out: dict[str, Any] = {
        "output_type": output_type,
        "data": {OUTPUT_MIME: {"name": name, "value": value}},
        "metadata": {},
    }
    if output_type == "execute_result":
        out["execution_count"] = 1
    return out


def test_payload_holds_name_and_value() -> None:
    """A valid name and JSON value make the {"name", "value"} payload."""
    assert output_payload("rows", [1, {"a": None}]) == {"name": "rows", "value": [1, {"a": None}]}


@pytest.mark.parametrize("name", ["1rows", "two words", "", "class", "a-b"])
def test_name_must_be_an_identifier(name: str) -> None:
    """A name that could not be a parameter name is refused with a one-line ValueError."""
    with pytest.raises(ValueError, match="is not a Python identifier"):
        output_payload(name, 1)


@pytest.mark.parametrize("value", [object(), {1, 2}, float("nan"), b"bytes"])
def test_value_must_be_json(value: Any) -> None:
    """A value JSON cannot hold is refused with a TypeError naming the output."""
    with pytest.raises(TypeError, match=r"output 'rows': .* is not JSON-serialisable"):
        output_payload("rows", value)


def test_cell_outputs_reads_display_and_execute_results() -> None:
    """Both display_data and execute_result outputs count; a later one of a name wins."""
    cell = {
        "cell_type": "code",
        "outputs": [
            display("rows", 1),
            {"output_type": "stream", "name": "stdout", "text": "hello\n"},
            display("table", "t", "execute_result"),
            display("rows", 2),
        ],
    }
    assert cell_outputs(cell) == {"rows": 2, "table": "t"}


def test_cell_outputs_ignores_other_and_malformed_outputs() -> None:
    """Other MIME types, errors, payloads without a name and markdown cells record nothing."""
    cells: list[dict[str, Any]] = [
        {"cell_type": "markdown", "source": "# title"},
        {"cell_type": "code", "outputs": []},
        {
            "cell_type": "code",
            "outputs": [
                {"output_type": "display_data", "data": {"text/plain": "42"}, "metadata": {}},
                {"output_type": "error", "ename": "E", "evalue": "", "traceback": []},
                {"output_type": "display_data", "data": {OUTPUT_MIME: {"value": 1}}},
                {"output_type": "display_data", "data": {OUTPUT_MIME: "not json"}},
                {"output_type": "stream", "data": {OUTPUT_MIME: {"name": "x", "value": 1}}},
            ],
        },
    ]
    assert [cell_outputs(c) for c in cells] == [{}, {}, {}]


def test_cell_outputs_reads_a_payload_kept_as_text() -> None:
    """A payload stored as a JSON string (as some writers do) is read too."""
    out = {"output_type": "display_data", "data": {OUTPUT_MIME: '{"name": "n", "value": 3}'}}
    assert cell_outputs({"outputs": [out]}) == {"n": 3}


def test_extract_outputs_later_cells_win_with_their_index() -> None:
    """Over a notebook, each name maps to the last value recorded and that cell's index."""
    cells: list[dict[str, Any]] = [
        {"cell_type": "code", "outputs": [display("rows", 1), display("name", "a")]},
        {"cell_type": "markdown", "source": ""},
        {"cell_type": "code", "outputs": [display("rows", 5)]},
    ]
    assert extract_outputs(cells) == {"rows": (5, 2), "name": ("a", 0)}


def test_output_outside_a_kernel_returns_the_value(capsys: pytest.CaptureFixture[str]) -> None:
    """Outside a kernel, output() checks and answers the value and displays nothing."""
    value = {"a": [1, 2]}
    assert output("rows", value) is value
    assert capsys.readouterr() == ("", "")
    with pytest.raises(TypeError):
        output("rows", object())


def test_output_is_exported_lazily() -> None:
    """casare_nb.output is casare_nb.outputs.output, listed in __all__."""
    assert casare_nb.output is output
    assert "output" in casare_nb.__all__


async def test_output_in_a_notebook_is_kept_in_the_executed_notebook(tmp_path: Path) -> None:
    """casare_nb.output in a real kernel leaves a display output that extract_outputs reads."""
    nb = write_notebook(
        tmp_path / "rec.ipynb",
        [
            "import casare_nb\nn = casare_nb.output('rows', 40 + x)",
            "casare_nb.output('rows', n + 1)\ncasare_nb.output('info', {'ok': True})",
        ],
        params="x = 1",
    )
    result = await arun_notebook(nb, {"x": 2}, state_dir=tmp_path / "state", cwd=tmp_path)
    assert result.status is RunStatus.COMPLETED, result.error_message
    executed = json.loads(Path(result.output_path).read_text())
    found = extract_outputs(executed["cells"])
    last = next(i for i, c in enumerate(executed["cells"]) if c.get("id") == "c1")
    assert found == {"rows": (43, last), "info": ({"ok": True}, last)}
