"""casare_nb.nodes.flow: a sub-workflow run on a real kernel from plain Python and from
inside a kernel, its one-line failure, for_each over rows, wait; and the control and
notebook templates' code (the condition's gate run for real)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import write_notebook
from test_nodes_data import check_category, rendered_templates

from casare_nb.core.models import RunStatus
from casare_nb.core.outputs import extract_outputs
from casare_nb.local import arun_notebook
from casare_nb.nodes import flow as nb_flow

CHILD_PARAMS = 'x: int = 1\nlabel: str = "a"'
CHILD_CELLS = [
    "import os\nimport casare_nb",
    "casare_nb.output('y', x * 2)\ncasare_nb.output('tag', f'{label}-{x}')",
    "casare_nb.output('cwd', os.getcwd())",
]


@pytest.fixture
def child(tmp_path: Path) -> Path:
    """A sub-workflow: parameters x and label; records y = 2x, tag and its working folder."""
    return write_notebook(tmp_path / "child.ipynb", CHILD_CELLS, params=CHILD_PARAMS)


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    """A sub-workflow failing at its cell 3 (after the title and parameters cells and c0)."""
    return write_notebook(
        tmp_path / "bad.ipynb", ["z = 1", "raise ValueError('boom\\nmore')"], params="x: int = 1"
    )


def test_control_and_notebook_templates_parse_and_fit_the_functions() -> None:
    """Every control and notebook template renders (by hand) to a cell that parses and
    whose calls bind to nodes.flow's signatures."""
    check_category("control", {"condition", "for_each", "wait"})
    check_category("notebook", {"call"})


@pytest.mark.parametrize(
    ("value", "expression", "passes"),
    [([1, 2], "len(value) > 0", True), ([], "len(value) > 0", False), (None, "True", True)],
)
def test_condition_gate(value: Any, expression: str, passes: bool) -> None:
    """The condition cell binds the connected value as ``value`` and sets its gate output
    true when the expression holds, else None (what a gate's downstream checks)."""
    [(_, tpl, _)] = [t for t in rendered_templates("control") if t[0] == "condition.yaml"]
    assert tpl["outputs"]["true"]["gate"] is True
    assert tpl["params"]["expression"]["type"] == "expression"
    code = tpl["code"].replace("{{ in.value }}", "in_value").replace("{{ out.true }}", "gate")
    code = code.replace("{{ expression }}", f"({expression})")
    scope: dict[str, Any] = {"in_value": value}
    exec(compile(code, "<condition>", "exec"), scope)
    assert scope["gate"] is (True if passes else None)


async def test_wait_answers_the_value() -> None:
    """wait sleeps without blocking and passes its value on; a negative wait is refused."""
    assert await nb_flow.wait(0, {"a": 1}) == {"a": 1}
    assert await nb_flow.wait(0.001, 5) == 5
    with pytest.raises(ValueError, match="seconds must be a finite number >= 0"):
        await nb_flow.wait(-1)


@pytest.mark.slow
def test_call_from_plain_python(
    child: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """From a script (asyncio.run), a relative path resolves against the working folder,
    the sub-workflow runs there with the parameters given, its outputs come back, and no
    state directory is written where the caller keeps its own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CASARE_HOME", str(tmp_path / "caller-state"))
    outputs = asyncio.run(nb_flow.call_workflow("child.ipynb", {"x": 3, "label": "b"}))
    assert outputs == {"y": 6, "tag": "b-3", "cwd": str(tmp_path)}
    assert not (tmp_path / "caller-state").exists() and not (tmp_path / ".casare").exists()


@pytest.mark.slow
async def test_call_from_inside_a_kernel(child: Path, bad: Path, tmp_path: Path) -> None:
    """A workflow's cell awaits call_workflow on its kernel's loop and records what the
    sub-workflow answered; a failing sub-workflow fails the caller's cell with the one line."""
    caller = write_notebook(
        tmp_path / "caller.ipynb",
        [
            "import casare_nb\nfrom casare_nb.nodes import flow as nb_flow",
            "out = await nb_flow.call_workflow('child.ipynb', {'x': 21})\n"
            "casare_nb.output('child', out)",
            "await nb_flow.call_workflow('bad.ipynb')",
        ],
    )
    result = await arun_notebook(caller, state_dir=tmp_path / "state", cwd=tmp_path)
    assert result.status is RunStatus.FAILED
    outputs = extract_outputs((result.notebook or {})["cells"])
    assert outputs["child"][0] == {"y": 42, "tag": "a-21", "cwd": str(tmp_path)}
    assert result.failed_cell == 3
    assert result.error_name == "SubWorkflowError"
    assert result.error_message == "sub-workflow bad.ipynb failed at cell 3: ValueError: boom more"


@pytest.mark.slow
async def test_failure_is_one_line(bad: Path) -> None:
    """A failing cell gives SubWorkflowError: path, the cell's index in the sub-workflow's
    file, the error's name and message, on one line."""
    with pytest.raises(nb_flow.SubWorkflowError) as info:
        await nb_flow.call_workflow(bad, {"x": 2})
    assert str(info.value) == f"sub-workflow {bad} failed at cell 3: ValueError: boom more"
    assert (info.value.failed_cell, info.value.error_name) == (3, "ValueError")


async def test_cannot_start_is_one_line(child: Path, tmp_path: Path) -> None:
    """A missing notebook or a parameter it does not take fails before any kernel starts."""
    with pytest.raises(nb_flow.SubWorkflowError) as info:
        await nb_flow.call_workflow(tmp_path / "nope.ipynb")
    assert str(info.value).startswith(f"sub-workflow {tmp_path / 'nope.ipynb'} failed: ")
    assert "does not exist" in str(info.value)
    with pytest.raises(nb_flow.SubWorkflowError) as info:
        await nb_flow.call_workflow(child, {"y": 1})
    assert str(info.value) == (
        f"sub-workflow {child} failed: unknown parameter 'y' (declared: x, label)"
    )


@pytest.mark.slow
async def test_timeout(tmp_path: Path) -> None:
    """A sub-workflow running past timeout_s is stopped and fails with a Timeout line."""
    slow = write_notebook(tmp_path / "slow.ipynb", ["import time\ntime.sleep(60)"])
    with pytest.raises(nb_flow.SubWorkflowError) as info:
        await nb_flow.call_workflow(slow, timeout_s=1)
    assert (
        str(info.value) == f"sub-workflow {slow} failed at cell 1: Timeout: run timed out after 1 s"
    )


@pytest.mark.slow
async def test_for_each_two_rows(child: Path) -> None:
    """for_each runs the sub-workflow per row with the columns named like its parameters
    (others ignored) and answers one row of outputs per input row, on the input's index."""
    rows = pd.DataFrame({"x": [2, 5], "label": ["p", "q"], "note": ["n1", "n2"]}, index=[10, 20])
    result = await nb_flow.for_each(rows, child)
    assert result.index.tolist() == [10, 20]
    assert result[["y", "tag"]].to_dict("list") == {"y": [4, 10], "tag": ["p-2", "q-5"]}


@pytest.mark.slow
async def test_for_each_mapping_and_a_failing_row(child: Path, bad: Path) -> None:
    """A mapping names the parameter for a column; a failing row is named in the error."""
    rows = pd.DataFrame({"n": [7]})
    result = await nb_flow.for_each(rows, child, {"n": "x"}, parameters={"label": "m"})
    assert result[["y", "tag"]].to_dict("records") == [{"y": 14, "tag": "m-7"}]
    with pytest.raises(nb_flow.SubWorkflowError) as info:
        await nb_flow.for_each(pd.DataFrame({"x": [1]}, index=["first"]), bad)
    assert str(info.value) == (
        f"for_each row 'first': sub-workflow {bad} failed at cell 3: ValueError: boom more"
    )


async def test_for_each_needs_a_matching_column(child: Path) -> None:
    """No column named like a parameter (and no mapping) fails before any run; so does a
    mapping naming a column that is not there."""
    with pytest.raises(ValueError, match=r"no column of the rows is a parameter of .*"):
        await nb_flow.for_each(pd.DataFrame({"q": [1]}), child)
    with pytest.raises(ValueError, match=r"^for_each: no column 'n' in the rows \(columns: q\)$"):
        await nb_flow.for_each(pd.DataFrame({"q": [1]}), child, {"n": "x"})
    empty = await nb_flow.for_each(pd.DataFrame({"x": []}), child)
    assert empty.empty
