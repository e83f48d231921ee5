"""Re-running a failed run from the failed cell, with the namespace restored."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Workspace, cell_index, mark, outputs_text, replace_cell

from casare_nb.core.errors import ResumeError, RunNotFound
from casare_nb.core.models import CellStatus, RestoreMode, RunStatus
from casare_nb.core.params import ParameterError
from casare_nb.notebook.executor import Options


async def test_resume_continues_at_the_failed_cell_with_the_fix(ws: Workspace) -> None:
    """After fixing the failed cell, resume runs it and what follows; the prefix is not re-run."""
    nb = ws.notebook(
        [mark("c0") + "x = 41", mark("c1") + "y = x + 1", "assert y == 43, y", "print('y is', y)"]
    )
    first = await ws.run(nb)
    assert first.status is RunStatus.FAILED and first.failed_cell_id == "c2"
    replace_cell(nb, "c2", "assert y == 42, y")
    second = await ws.resume(first.run_id)
    assert second.status is RunStatus.COMPLETED
    assert (second.run_id, second.attempt) == (first.run_id, 2)
    assert ws.ran() == ["c0", "c1"]  # the prefix ran once, in the first attempt
    assert [c.cell_id for c in second.cells] == ["c2", "c3"]
    assert second.restored_from_cell == cell_index(nb, "c1")
    assert second.restore_mode is RestoreMode.NAMESPACE
    assert outputs_text(second.output_path, "c3") == "y is 42\n"
    saved = json.loads(Path(second.output_path).read_text())
    carried = next(c for c in saved["cells"] if c.get("id") == "c1")
    assert carried["metadata"]["casare"]["carried"] is True
    attempts = ws.history.attempts(first.run_id)
    assert [(a.attempt, a.status) for a in attempts] == [
        (1, RunStatus.FAILED),
        (2, RunStatus.COMPLETED),
    ]
    assert attempts[1].resumed_from_attempt == 1


async def test_resume_with_a_new_parameter_value(ws: Workspace) -> None:
    """-p on resume re-injects the parameters before continuing at the failed cell."""
    nb = ws.notebook(
        [mark("c0") + "base = 10", "assert base * ratio > 5, ratio", "print(base * ratio)"],
        params="ratio: float = 0.1",
    )
    first = await ws.run(nb)
    assert first.status is RunStatus.FAILED
    second = await ws.resume(first.run_id, raw_parameters={"ratio": "0.75"})
    assert second.status is RunStatus.COMPLETED
    assert outputs_text(second.output_path, "c2") == "7.5\n"
    assert ws.ran() == ["c0"]
    assert ws.history.get_run(first.run_id).parameters == {"ratio": 0.75}  # type: ignore[union-attr]


async def test_unpicklable_names_are_rebuilt_by_replay(ws: Workspace) -> None:
    """A lock cannot be saved: resume replays the cell that made it and says so."""
    nb = ws.notebook(
        [
            "import threading\nlock = threading.Lock()\ncounter = 0",
            "counter += 10",
            mark("c2") + "total = counter",
            "assert total == 11, total",
            "with lock:\n    print('total', total)",
        ]
    )
    first = await ws.run(nb)
    replace_cell(nb, "c3", "assert total == 10, total")
    second = await ws.resume(first.run_id)
    assert second.status is RunStatus.COMPLETED, second.error_message
    assert second.replayed_cells == [cell_index(nb, "c0")]
    assert "lock" in second.skipped_names
    assert [c.replayed for c in second.cells] == [True, False, False]
    # the replay set counter = 0 again; the checkpoint's counter (10) was loaded back
    assert outputs_text(second.output_path, "c4") == "total 10\n"
    assert ws.ran() == ["c2"]
    run = ws.history.get_run(first.run_id)
    assert run is not None and run.replayed_cells == [cell_index(nb, "c0")]
    cells = ws.history.list_cells(first.run_id, attempt=2)
    assert next((c.cell_id, c.replayed) for c in cells) == ("c0", True)


async def test_always_run_cells_are_replayed(ws: Workspace) -> None:
    """A cell tagged casare-always-run replays on resume even when nothing is missing."""
    nb = ws.notebook(
        [mark("c0") + "setting = 'on'", mark("c1") + "x = 1", "raise RuntimeError('boom')"],
        tags={0: ["casare-always-run"]},
    )
    first = await ws.run(nb)
    replace_cell(nb, "c2", "print(setting, x)")
    second = await ws.resume(first.run_id)
    assert second.status is RunStatus.COMPLETED
    assert second.replayed_cells == [cell_index(nb, "c0")]
    assert ws.ran() == ["c0", "c1", "c0"]


async def test_restored_function_updates_the_kernel_namespace(ws: Workspace) -> None:
    """A notebook function restored from a checkpoint works on the namespace's own globals."""
    nb = ws.notebook(
        [
            "items = []\ndef add(v):\n    items.append(v)",
            "add(1)",
            "raise RuntimeError('stop')",
        ]
    )
    first = await ws.run(nb)
    replace_cell(nb, "c2", "add(2)\nprint(items)")
    second = await ws.resume(first.run_id)
    assert second.status is RunStatus.COMPLETED
    assert outputs_text(second.output_path, "c2") == "[1, 2]\n"


async def test_edited_earlier_cell_moves_the_resume_point(ws: Workspace) -> None:
    """If the analyst edits a cell before the failure, resume starts at that cell."""
    nb = ws.notebook([mark("c0") + "a = 1", mark("c1") + "b = a * 2", "assert b == 4, b"])
    first = await ws.run(nb)
    replace_cell(nb, "c1", mark("c1") + "b = a * 4")
    second = await ws.resume(first.run_id)
    assert second.status is RunStatus.COMPLETED
    assert [c.cell_id for c in second.cells] == ["c1", "c2"]
    assert ws.ran() == ["c0", "c1", "c1"]


async def test_inserted_cell_before_the_failure_runs_on_resume(ws: Workspace) -> None:
    """A cell inserted before the failed one has never run, so resume starts there."""
    import nbformat

    nb = ws.notebook(["a = 1", "assert a == 2"])
    first = await ws.run(nb)
    doc = nbformat.read(str(nb), as_version=4)
    position = next(i for i, c in enumerate(doc.cells) if c.get("id") == "c1")
    doc.cells.insert(position, nbformat.v4.new_code_cell("a = 2", id="fix"))
    nbformat.write(doc, str(nb))
    second = await ws.resume(first.run_id)
    assert second.status is RunStatus.COMPLETED
    assert [c.cell_id for c in second.cells] == ["fix", "c1"]


async def test_resume_twice_builds_on_the_latest_attempt(ws: Workspace) -> None:
    """A second resume restores from the checkpoints of the attempt before it."""
    nb = ws.notebook(
        [mark("c0") + "a = 1", "assert a > 1", "b = a + 1", "assert b > 5", "print(b)"]
    )
    first = await ws.run(nb)
    replace_cell(nb, "c1", "a = 2")
    second = await ws.resume(first.run_id)
    assert second.status is RunStatus.FAILED and second.failed_cell_id == "c3"
    replace_cell(nb, "c3", "b = b * 3")
    third = await ws.resume(first.run_id)
    assert third.status is RunStatus.COMPLETED and third.attempt == 3
    assert [c.cell_id for c in third.cells] == ["c3", "c4"]
    assert outputs_text(third.output_path, "c4") == "9\n"
    assert ws.ran() == ["c0"]


async def test_missing_checkpoint_falls_back_to_an_earlier_one(ws: Workspace) -> None:
    """Without the last good cell's checkpoint, resume restores an earlier one and replays on."""
    nb = ws.notebook([mark("c0") + "a = 1", mark("c1") + "b = a + 1", "assert b == 3"])
    first = await ws.run(nb)
    (ws.state / "runs" / first.run_id / "1" / "checkpoints" / "c1.json").unlink()
    replace_cell(nb, "c2", "print(b)")
    second = await ws.resume(first.run_id)
    assert second.status is RunStatus.COMPLETED
    assert second.restored_from_cell == cell_index(nb, "c0")
    assert second.replayed_cells == [cell_index(nb, "c1")]
    assert ws.ran() == ["c0", "c1", "c1"]


async def test_resume_from_an_explicit_cell(ws: Workspace) -> None:
    """--from-cell re-runs from an earlier cell; past the resume point it is refused."""
    nb = ws.notebook([mark("c0") + "a = 1", mark("c1") + "b = 2", "assert a + b == 4", "c = 3"])
    first = await ws.run(nb)
    with pytest.raises(ResumeError, match="has not run ok"):
        await ws.resume(first.run_id, from_cell=cell_index(nb, "c2") + 1)
    with pytest.raises(ResumeError, match="no cell 99: the notebook has cells 0-4"):
        await ws.resume(first.run_id, from_cell=99)
    replace_cell(nb, "c2", "print(a + b)")
    second = await ws.resume(first.run_id, from_cell=cell_index(nb, "c1"))
    assert second.status is RunStatus.COMPLETED
    assert ws.ran() == ["c0", "c1", "c1"]


async def test_completed_run_is_not_resumed_without_from_cell(ws: Workspace) -> None:
    """Resuming a completed run is refused unless a cell is named."""
    nb = ws.notebook([mark("c0") + "a = 1", mark("c1") + "b = 2"])
    first = await ws.run(nb)
    with pytest.raises(ResumeError, match="completed; nothing to resume"):
        await ws.resume(first.run_id)
    again = await ws.resume(first.run_id, from_cell=cell_index(nb, "c1"))
    assert again.status is RunStatus.COMPLETED and ws.ran() == ["c0", "c1", "c1"]


async def test_unknown_run_and_deleted_notebook(ws: Workspace) -> None:
    """An unknown run id and a workflow deleted since the run are clear errors."""
    with pytest.raises(RunNotFound, match="unknown run id 'nope'"):
        await ws.resume("nope")
    nb = ws.notebook(["raise RuntimeError('x')"])
    first = await ws.run(nb)
    with pytest.raises(RunNotFound, match="unknown run id 'nope'"):
        await ws.resume("nope")
    nb.unlink()
    with pytest.raises(ResumeError, match="does not exist"):
        await ws.resume(first.run_id)
    assert len(ws.history.attempts(first.run_id)) == 1


async def test_secret_must_be_given_again_to_resume(ws: Workspace) -> None:
    """A run that used a secret resumes only when the secret is given again, and uses it."""
    nb = ws.notebook(
        ["n = len(key)", "assert n > 100", "print(len(key) == n)"],
        params="key: 'Secret[str]' = ''",
    )
    first = await ws.run(nb, {"key": "abcdef"})
    assert first.status is RunStatus.FAILED
    replace_cell(nb, "c1", "assert n == 6")
    with pytest.raises(ParameterError, match="secret parameter 'key'"):
        await ws.resume(first.run_id)
    second = await ws.resume(first.run_id, {"key": "abcdef"})
    assert second.status is RunStatus.COMPLETED
    assert outputs_text(second.output_path, "c2") == "True\n"


async def test_non_python_kernel_resume_replays_earlier_cells(
    ws: Workspace, other_language_kernel: str
) -> None:
    """A kernel that is not Python gets output checkpoints and a resume that replays."""
    kernel = {"name": other_language_kernel, "display_name": "other", "language": "casare-test"}
    nb = ws.notebook(
        [mark("c0") + "a = 1", mark("c1") + "b = 2", "assert a + b == 4"], kernel=kernel
    )
    first = await ws.run(nb)
    assert first.status is RunStatus.FAILED
    run = ws.history.get_run(first.run_id)
    assert run is not None and run.language == "casare-test"
    assert not list((ws.state / "runs" / first.run_id / "1" / "checkpoints").iterdir())
    replace_cell(nb, "c2", "print(a + b)")
    second = await ws.resume(first.run_id)
    assert second.status is RunStatus.COMPLETED
    assert second.restore_mode is RestoreMode.REPLAY
    assert second.replayed_cells == [cell_index(nb, "c0"), cell_index(nb, "c1")]
    assert ws.ran() == ["c0", "c1", "c0", "c1"]
    record = ws.history.get_run(first.run_id)
    assert record is not None and record.restore_mode is RestoreMode.REPLAY


async def test_resume_uses_current_source_on_any_state_copy(ws: Workspace, tmp_path: Path) -> None:
    """Checkpoints are plain files: a copied state directory resumes the run elsewhere."""
    nb = ws.notebook([mark("c0") + "a = [1, 2, 3]", "assert sum(a) == 7"])
    first = await ws.run(nb)
    moved = tmp_path / "elsewhere"
    shutil.copytree(ws.state, moved)
    replace_cell(nb, "c1", "print(sum(a))")
    second = await ws.resume(first.run_id, state_dir=moved)
    assert second.status is RunStatus.COMPLETED
    assert outputs_text(second.output_path, "c1") == "6\n"
    assert second.cells[0].status is CellStatus.OK and ws.ran() == ["c0"]


@pytest.fixture
def forced_only(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Kernels started afterwards take only the checkpoints the policy must take: the last
    cell, and one at least every ``n`` cells."""

    def policy(n: int) -> None:
        monkeypatch.setenv("CASARE_CHECKPOINT_BUDGET", "0")
        monkeypatch.setenv("CASARE_CHECKPOINT_FREE_MS", "0")
        monkeypatch.setenv("CASARE_CHECKPOINT_MAX_INTERVAL", str(n))

    return policy


async def test_resume_after_deferred_checkpoints_replays_the_cells_since_the_last_one(
    ws: Workspace, forced_only: Callable[[int], None]
) -> None:
    """Cells whose checkpoint the budget deferred are re-run on resume, from the newest
    checkpoint before the failure, and give the same state as an uninterrupted run."""
    forced_only(3)
    nb = ws.notebook(
        [
            mark("c0") + "import numpy as np\narr = np.zeros(300_000)",
            mark("c1") + "arr[1] = 1.0",
            mark("c2") + "y = 2",
            mark("c3") + "arr[3] = 3.0",
            mark("c4") + "arr[4] = arr[3] + 1",
            "raise RuntimeError('stop')",
        ]
    )
    first = await ws.run(nb)
    assert first.status is RunStatus.FAILED and first.failed_cell_id == "c5"
    checkpoints = ws.state / "runs" / first.run_id / "1" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("*.json")) == ["c2.json"]
    replace_cell(nb, "c5", "print(arr[:5].tolist(), y)")
    second = await ws.resume(first.run_id)
    assert second.status is RunStatus.COMPLETED
    assert second.restored_from_cell == cell_index(nb, "c2")
    assert second.replayed_cells == [cell_index(nb, "c3"), cell_index(nb, "c4")]
    assert outputs_text(second.output_path, "c5") == "[0.0, 1.0, 0.0, 3.0, 4.0] 2\n"
    assert ws.ran() == ["c0", "c1", "c2", "c3", "c4", "c3", "c4"]


async def test_a_change_made_by_a_replayed_cell_reaches_the_next_checkpoint(
    ws: Workspace, forced_only: Callable[[int], None]
) -> None:
    """A cell replayed on resume that changes a large object in place makes it dirty: the
    next checkpoint saves the change, so a second resume from there still has it."""
    forced_only(2)  # parameters, injected parameters, c0 ... : checkpoints after every other
    nb = ws.notebook(
        [
            "import numpy as np",
            "arr = np.zeros(300_000)",
            "arr[1] = 1.0",
            "if stage < 1:\n    raise RuntimeError('one')",
            "if stage < 2:\n    raise RuntimeError('two')",
            "print(arr[:3].tolist())",
        ],
        params="stage: int = 0",
    )
    first = await ws.run(nb)
    assert first.failed_cell_id == "c3"
    second = await ws.resume(first.run_id, raw_parameters={"stage": "1"})
    assert second.failed_cell_id == "c4"
    assert second.restored_from_cell == cell_index(second, "c1")
    assert cell_index(second, "c2") in second.replayed_cells  # its checkpoint was deferred
    third = await ws.resume(first.run_id, raw_parameters={"stage": "2"})
    assert third.status is RunStatus.COMPLETED
    assert third.restored_from_cell == cell_index(third, "c3")  # taken after the replay
    assert cell_index(third, "c2") not in third.replayed_cells
    assert outputs_text(third.output_path, "c5") == "[0.0, 1.0, 0.0]\n"


async def test_checkpoint_whose_reference_is_missing_is_not_restored(ws: Workspace) -> None:
    """A manifest pointing (``ref``) at a checkpoint that never got written is passed over:
    resume restores an earlier complete one, or replays from the start."""
    nb = ws.notebook(
        [
            mark("c0") + "big = bytearray(2_000_000)\nbig[0] = 9",
            mark("c1") + "x = 1",
            "raise RuntimeError('stop')",
        ]
    )
    first = await ws.run(nb, options=Options(fork_bytes=1_000_000))
    checkpoints = ws.state / "runs" / first.run_id / "1" / "checkpoints"
    assert json.loads((checkpoints / "c1.json").read_text())["vars"]["big"] == {"ref": "c0.json"}
    (checkpoints / "c0.json").unlink()  # as if its forked writer had died
    replace_cell(nb, "c2", "print(big[0], len(big), x)")
    second = await ws.resume(first.run_id)
    assert second.status is RunStatus.COMPLETED
    assert second.restored_from_cell is None
    assert outputs_text(second.output_path, "c2") == "9 2000000 1\n"
    assert ws.ran() == ["c0", "c1", "c0", "c1"]
