"""A cell's output over the per-cell limit: its head and tail kept around a notice of what
was dropped, on real kernels; the budget itself on plain outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import Workspace, outputs_text

from casare_nb.core.models import RunStatus
from casare_nb.notebook.executor import Options, OutputBudget, human_bytes, output_size
from casare_nb.notebook.workflow import nbformat_node

LIMIT = 100_000


def cell_outputs(path: str, cell_id: str) -> list[dict[str, Any]]:
    nb = json.loads(Path(path).read_text())
    cell = next(c for c in nb["cells"] if c.get("id") == cell_id)
    outputs: list[dict[str, Any]] = cell["outputs"]
    return outputs


def stream(text: str, name: str = "stdout") -> Any:
    return nbformat_node({"output_type": "stream", "name": name, "text": text})


def fed(budget: OutputBudget, outputs: list[Any]) -> list[Any]:
    """``outputs`` appended one by one to a cell's list, as nbclient does, through ``budget``."""
    outs: list[Any] = []
    for out in outputs:
        outs.append(out)
        budget.add(outs)
    return outs


async def test_one_huge_write_keeps_its_head_and_tail_with_a_notice(ws: Workspace) -> None:
    """A single write far over the limit keeps its first and last bytes, says how much was
    dropped, flags the cell, and the run goes on to complete."""
    nb = ws.notebook(
        ["import sys\nsys.stdout.write('HEAD' + 'x' * 3_000_000 + 'TAIL')\nNone", "print('after')"]
    )
    result = await ws.run(nb, options=Options(max_output_bytes=LIMIT))
    assert result.status is RunStatus.COMPLETED
    assert result.cells[0].output_truncated and not result.cells[1].output_truncated
    text = outputs_text(result.output_path, "c0")
    assert text.startswith("HEAD" + "x" * 1000) and text.endswith("x" * 1000 + "TAIL")
    assert "... [casare: 2.9 MB of output dropped here; limit 100 kB] ..." in text
    assert LIMIT <= len(text) < LIMIT + 200
    assert outputs_text(result.output_path, "c1") == "after\n"


async def test_many_prints_keep_the_first_and_the_last_lines(ws: Workspace) -> None:
    """Thousands of printed lines over the limit keep the first lines and the last ones, one
    notice between them, and nothing of the middle."""
    nb = ws.notebook(["for i in range(20_000):\n    print(f'line {i:05d}', 'y' * 40)"])
    result = await ws.run(nb, options=Options(max_output_bytes=LIMIT))
    assert result.status is RunStatus.COMPLETED and result.cells[0].output_truncated
    text = outputs_text(result.output_path, "c0")
    assert text.startswith("line 00000 ") and text.rstrip().endswith("line 19999 " + "y" * 40)
    assert "line 10000 " not in text
    assert text.count("[casare: ") == 1 and "of output dropped here; limit 100 kB" in text
    assert len(text) < LIMIT + 200


async def test_large_displays_keep_text_cut_and_lose_binary_with_a_notice(ws: Workspace) -> None:
    """A display over the limit keeps its text mimetypes' head and tail and drops an image or
    JSON, saying so in its text/plain."""
    nb = ws.notebook(
        [
            "from IPython.display import HTML, JSON, display\n"
            "display(HTML('<p>' + 'h' * 300_000 + '</p>'))\n"
            "display({'image/png': 'iVBO' * 100_000, 'text/plain': '<Figure>'}, raw=True)\n"
            "display(JSON({'rows': list(range(50_000))}))"
        ]
    )
    result = await ws.run(nb, options=Options(max_output_bytes=LIMIT))
    assert result.status is RunStatus.COMPLETED and result.cells[0].output_truncated
    html, image, data = (o["data"] for o in cell_outputs(result.output_path, "c0"))
    assert html["text/html"].startswith("<p>hhh") and html["text/html"].endswith("hhh</p>")
    assert "of output dropped here; limit 100 kB" in html["text/html"]
    assert len(html["text/html"]) < LIMIT
    assert "image/png" not in image
    assert image["text/plain"] == "<Figure>\n[casare: image/png of 400 kB dropped; limit 100 kB]"
    assert "application/json" not in data
    assert "[casare: application/json of " in data["text/plain"]
    assert Path(result.output_path).stat().st_size < 3 * LIMIT


async def test_displays_updated_after_the_cut_are_still_the_ones_updated(ws: Workspace) -> None:
    """Displays shown before the cut and after it (in the kept tail, moved by the outputs
    dropped before them) are the outputs their later updates change."""
    nb = ws.notebook(
        [
            "early = display('early', display_id=True)\n"
            "print('x' * 300_000)\n"
            "display('f' * 40_000)\n"
            "late = display('late', display_id=True)\n"
            "display('g' * 40_000)\n"
            "early.update('early updated')\n"
            "late.update('late updated')"
        ]
    )
    result = await ws.run(nb, options=Options(max_output_bytes=LIMIT))
    assert result.status is RunStatus.COMPLETED and result.cells[0].output_truncated
    outputs = cell_outputs(result.output_path, "c0")
    shown = [o["data"]["text/plain"][:20] for o in outputs if o["output_type"] == "display_data"]
    assert shown == ["'early updated'", "'late updated'", "'" + "g" * 19]
    assert all("data" not in o for o in outputs if o["output_type"] == "stream")


def test_outputs_within_the_limit_are_left_as_they_are() -> None:
    """Outputs adding up to no more than the limit are kept whole, nothing flagged."""
    budget = OutputBudget(100)
    outs = fed(budget, [stream("a" * 50), stream("b" * 50, "stderr")])
    assert [o["text"] for o in outs] == ["a" * 50, "b" * 50]
    assert budget.dropped == 0


def test_streams_over_the_limit_keep_head_notice_and_tail() -> None:
    """Streams over the limit keep half the limit from the start and half from the end."""
    budget = OutputBudget(100)
    outs = fed(budget, [stream(f"{i:09d}\n") for i in range(100)])
    text = "".join(o["text"] for o in outs)
    head, notice, tail = outs[0:5], outs[5], outs[6:]
    assert "".join(o["text"] for o in head) == "".join(f"{i:09d}\n" for i in range(5))
    assert notice["name"] == "stderr"
    assert notice["text"] == "... [casare: 900 bytes of output dropped here; limit 100 bytes] ...\n"
    assert "".join(o["text"] for o in tail) == "".join(f"{i:09d}\n" for i in range(95, 100))
    assert budget.dropped == 900 and text.count("[casare:") == 1


def test_a_cleared_cell_starts_its_budget_again() -> None:
    """After clear_output the outputs shown again count from nothing: no cut below the limit."""
    budget = OutputBudget(100)
    outs = fed(budget, [stream("a" * 90)])
    outs.clear()  # what clear_output does to the cell's list
    outs.append(stream("b" * 90))
    budget.add(outs)
    assert [o["text"] for o in outs] == ["b" * 90]


def test_errors_are_kept_and_only_their_text_cut() -> None:
    """An error output is never dropped; a huge message keeps its head and tail."""
    error = nbformat_node(
        {"output_type": "error", "ename": "E", "evalue": "v" * 10_000, "traceback": ["tb"]}
    )
    budget = OutputBudget(100)
    outs = fed(budget, [stream("a" * 200), error])
    assert outs[-1]["output_type"] == "error" and outs[-1]["ename"] == "E"
    assert output_size(outs[-1]) < 300 and "of output dropped here" in outs[-1]["evalue"]


def test_sizes_read_for_people() -> None:
    """Byte counts read as bytes, kB, MB, GB (decimal, three digits at most)."""
    assert [human_bytes(n) for n in (1, 999, 1000, 200_000, 49_912_345, 3 * 10**9)] == [
        "1 byte",
        "999 bytes",
        "1 kB",
        "200 kB",
        "49.9 MB",
        "3 GB",
    ]
