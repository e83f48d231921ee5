"""Every cell is a checkpoint: what is saved after each cell, and what is not."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from helpers import Workspace, outputs_text, replace_cell

from casare_nb.core.models import RunStatus
from casare_nb.notebook.executor import Options

# A large object whose pickling leaves a trace: each serialisation appends to pickled.log.
BIGOBJ = '''
class Big:
    """1 MB+ by its nbytes, so the snapshot treats it as large."""
    nbytes = 4 << 20
    def __init__(self, tag=0):
        self.tag = tag
    def __reduce__(self):
        with open("pickled.log", "a") as f:
            f.write(f"{self.tag}\\n")
        return (Big, (self.tag,))
'''


def blobs(ws: Workspace) -> list[Path]:
    return [p for p in (ws.state / "blobs").rglob("*") if p.is_file()]


@pytest.fixture(autouse=True)
def every_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels of these tests checkpoint every cell: what they test is what a checkpoint
    holds, not which cells the (timing-based) policy gives one; ``forced_only`` overrides."""
    monkeypatch.setenv("CASARE_CHECKPOINT_MAX_INTERVAL", "1")


@pytest.fixture
def forced_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels take only the checkpoints the policy must take: every third cell, the last."""
    monkeypatch.setenv("CASARE_CHECKPOINT_BUDGET", "0")
    monkeypatch.setenv("CASARE_CHECKPOINT_FREE_MS", "0")
    monkeypatch.setenv("CASARE_CHECKPOINT_MAX_INTERVAL", "3")


def resolved(ws: Workspace, result: Any, cell_id: str, name: str) -> dict[str, Any]:
    """The entry of ``name`` in a cell's manifest, following a ``ref`` to the manifest that
    holds the data."""
    entry: dict[str, Any] = ws.manifest(result, cell_id)["vars"][name]
    if "ref" in entry:
        return resolved(ws, result, entry["ref"].removesuffix(".json"), name)
    return entry


def checkpoint_files(ws: Workspace, result: Any) -> set[str]:
    folder = ws.state / "runs" / result.run_id / str(result.attempt) / "checkpoints"
    return {p.name for p in folder.iterdir()}


async def test_manifest_after_every_ok_cell_and_none_after_failure(ws: Workspace) -> None:
    """Each cell that ran ok has a manifest naming its variables; the failed cell has none."""
    nb = ws.notebook(["a = 1", "b = [a, 2]", "raise RuntimeError('x')"])
    result = await ws.run(nb)
    assert result.status is RunStatus.FAILED
    first, second = ws.manifest(result, "c0"), ws.manifest(result, "c1")
    assert set(first["vars"]) == {"a"} and set(second["vars"]) == {"a", "b"}
    assert second["cell_id"] == "c1" and second["source_sha256"]
    checkpoints = ws.state / "runs" / result.run_id / "1" / "checkpoints"
    assert not (checkpoints / "c2.json").exists()


async def test_unchanged_variable_is_stored_once(ws: Workspace) -> None:
    """A variable that does not change between cells keeps one blob (content addressed)."""
    nb = ws.notebook(["data = list(range(1000))", "n = 1", "n = 2", "n = 3"])
    result = await ws.run(nb)
    hashes = {ws.manifest(result, f"c{i}")["vars"]["data"]["blob"] for i in range(4)}
    assert len(hashes) == 1
    # data once, and n = 1, 2, 3: four blobs in all
    assert len(blobs(ws)) == 4


async def test_large_untouched_object_is_not_reserialised(ws: Workspace) -> None:
    """A large object is pickled when made and when a cell touches it, not in between."""
    (ws.root / "bigobj.py").write_text(BIGOBJ)
    nb = ws.notebook(
        ["from bigobj import Big\nbig = Big(1)", "x = 1", "y = x + 1", "big.tag = 2", "z = 3"]
    )
    result = await ws.run(nb)
    assert result.status is RunStatus.COMPLETED
    assert (ws.root / "pickled.log").read_text().split() == ["1", "2"]
    # cells that did not touch it refer to the blob of the cell that last wrote it
    assert ws.manifest(result, "c2")["vars"]["big"] == ws.manifest(result, "c0")["vars"]["big"]
    assert ws.manifest(result, "c4")["vars"]["big"] == ws.manifest(result, "c3")["vars"]["big"]
    assert ws.manifest(result, "c3")["vars"]["big"] != ws.manifest(result, "c0")["vars"]["big"]


async def test_object_changed_through_a_function_is_saved_again(ws: Workspace) -> None:
    """A large global is re-saved when a cell names it or calls a notebook function that does."""
    (ws.root / "bigobj.py").write_text(BIGOBJ)
    nb = ws.notebook(
        [
            "from bigobj import Big\nbig = Big(1)",
            "def bump():\n    big.tag += 10",
            "bump()",
        ]
    )
    result = await ws.run(nb)
    assert (ws.root / "pickled.log").read_text().split() == ["1", "1", "11"]
    assert ws.manifest(result, "c2")["vars"]["big"] != ws.manifest(result, "c1")["vars"]["big"]


async def test_large_dirty_data_is_written_by_a_forked_child(ws: Workspace) -> None:
    """Past the fork threshold the snapshot is written by a forked child, completely, in
    1 MiB chunks of which only the changed one is written again."""
    nb = ws.notebook(["payload = bytearray(3_000_000)", "payload[0] = 7", "done = True"])
    result = await ws.run(nb, options=Options(fork_bytes=1_000_000))
    assert result.status is RunStatus.COMPLETED
    assert result.checkpoint_errors == []
    made, changed = ws.manifest(result, "c0"), ws.manifest(result, "c1")
    assert made["forked"] and changed["forked"]
    assert made["version"] == changed["version"] == 2
    # a bytearray pickles in band: its stream is what is chunked
    old, new = made["vars"]["payload"]["stream"], changed["vars"]["payload"]["stream"]
    assert [a == b for a, b in zip(old, new, strict=True)] == [False, True, True]
    assert changed["written_bytes"] == 1 << 20
    assert changed["vars"]["payload"]["size"] > 3_000_000
    # the last manifest refers to the forked one instead of holding the data itself
    last = ws.manifest(result, "c2")
    assert not last["forked"]
    assert last["vars"]["payload"] in ({"ref": "c1.json"}, changed["vars"]["payload"])


async def test_unpicklable_variables_are_recorded_by_name(ws: Workspace) -> None:
    """Locks, generators and open files are listed with a reason and never break the run."""
    nb = ws.notebook(
        [
            "import threading\nlock = threading.Lock()",
            "gen = (i for i in range(3))",
            "fh = open('scratch.txt', 'w')",
            "ok = 1",
        ]
    )
    result = await ws.run(nb)
    assert result.status is RunStatus.COMPLETED
    skipped = ws.manifest(result, "c3")["skipped"]
    assert set(skipped) == {"lock", "gen", "fh"}
    assert "lock" in skipped["lock"] and "generator" in skipped["gen"]
    assert set(ws.manifest(result, "c3")["vars"]) == {"ok"}


async def test_modules_and_functions_are_saved_for_restore(ws: Workspace) -> None:
    """Modules are recorded by name, notebook functions as code, notebook classes by value."""
    nb = ws.notebook(
        [
            "import json as j\nimport os.path",
            "def double(x):\n    return 2 * x",
            "class Point:\n    pass\npt = Point()",
        ]
    )
    result = await ws.run(nb)
    manifest = ws.manifest(result, "c2")
    assert manifest["modules"] == {"j": "json", "os": "os"}
    assert manifest["vars"]["double"]["serializer"] == "function"
    assert manifest["vars"]["pt"]["serializer"] == "cloudpickle"


async def test_secret_parameter_never_stored(ws: Workspace) -> None:
    """A secret is usable in the kernel but absent from output, history, logs and checkpoints."""
    secret = "s3cr3t-VALUE-42"
    nb = ws.notebook(
        [
            "print(len(token), token)",
            "headers = {'auth': token}",
            "raise RuntimeError('denied for ' + token)",
        ],
        params='from casare_nb import Secret\ntoken: Secret[str] = ""\nuser: str = "ann"',
    )
    result = await ws.run(nb, {"token": secret, "user": "bob"})
    assert result.status is RunStatus.FAILED
    assert outputs_text(result.output_path, "c0") == f"{len(secret)} ***\n"
    stored = [Path(result.output_path), *blobs(ws)]
    stored += list((ws.state / "runs").rglob("*.json"))
    for path in stored:
        assert secret.encode() not in path.read_bytes(), path
    run = ws.history.get_run(result.run_id)
    assert run is not None and run.parameters == {"token": "***", "user": "bob"}
    assert result.error_message == "denied for ***"
    cells = ws.history.list_cells(result.run_id)
    assert all(secret not in (c.error_message or "") for c in cells)
    manifest = ws.manifest(result, "c1")
    assert "token" not in manifest["vars"] and "headers" in manifest["skipped"]


async def test_disk_full_while_checkpointing_fails_the_run_cleanly(ws: Workspace) -> None:
    """A checkpoint that cannot be written fails the run with CheckpointError; history agrees."""
    limit = (
        "import resource, signal\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))"
    )
    nb = ws.notebook([limit, "blob = bytes(range(256)) * 400", "print('never')"])
    result = await ws.run(nb)
    assert result.status is RunStatus.FAILED
    assert result.error_name == "CheckpointError"
    assert "File too large" in (result.error_message or "")
    assert result.failed_cell_id == "c1"
    run = ws.history.get_run(result.run_id)
    assert run is not None and run.status is RunStatus.FAILED
    assert run.error_name == "CheckpointError"
    assert outputs_text(result.output_path, "c2") == ""


@pytest.mark.slow
async def test_forked_snapshot_does_not_hold_up_the_cell(ws: Workspace) -> None:
    """A cell changing 200 MB returns long before its forked checkpoint is written."""
    nb = ws.notebook(["payload = bytearray(200_000_000)", "payload[0] = 1", "done = 1"])
    result = await ws.run(nb)
    assert result.status is RunStatus.COMPLETED and result.checkpoint_errors == []
    manifest = ws.manifest(result, "c1")
    assert manifest["forked"]
    cell = next(c for c in result.cells if c.cell_id == "c1")
    assert cell.duration_s * 1000 < manifest["snapshot_ms"]
    pending = list((ws.state / "runs").rglob("*.pending"))
    assert pending == []


SLOWOBJ = '''
import time
class Slow:
    """Small, but slow to pickle (a pandas frame of a few thousand rows is like this)."""
    def __init__(self, tag=0):
        self.tag = tag
    def __reduce__(self):
        time.sleep(0.005)
        with open("pickled.log", "a") as f:
            f.write(f"{self.tag}\\n")
        return (Slow, (self.tag,))
'''


async def test_slow_to_pickle_object_is_saved_only_when_dirty(ws: Workspace) -> None:
    """An object that takes > 1 ms to pickle is saved again only when a cell touches it."""
    (ws.root / "slowobj.py").write_text(SLOWOBJ)
    nb = ws.notebook(["from slowobj import Slow\nslow = Slow(1)", "a = 1", "b = 2", "slow.tag = 2"])
    result = await ws.run(nb)
    assert result.status is RunStatus.COMPLETED
    assert (ws.root / "pickled.log").read_text().split() == ["1", "2"]
    assert ws.manifest(result, "c2")["vars"]["slow"] == ws.manifest(result, "c0")["vars"]["slow"]


async def test_small_change_to_a_large_array_writes_only_its_chunk(ws: Workspace) -> None:
    """One value changed in a 24 MB array: its checkpoint writes the one 1 MiB chunk that
    holds it; every other chunk keeps its digest, and the array restores exactly."""
    nb = ws.notebook(
        [
            "import numpy as np\narr = np.arange(3_000_000, dtype=np.float64)",
            "arr[2_000_000] = -1.0",
            "raise RuntimeError('stop')",
        ]
    )
    result = await ws.run(nb)
    assert result.status is RunStatus.FAILED and result.checkpoint_errors == []
    made, changed = resolved(ws, result, "c0", "arr"), resolved(ws, result, "c1", "arr")
    old, new = made["buffers"][0]["chunks"], changed["buffers"][0]["chunks"]
    assert len(old) == len(new) == 23
    assert [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b] == [
        2_000_000 * 8 >> 20
    ]
    assert ws.manifest(result, "c1")["written_bytes"] == 1 << 20
    for digest in new:  # every chunk is a blob named by the sha256 of its bytes
        data = (ws.state / "blobs" / digest[:2] / digest[2:]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
    replace_cell(nb, "c2", "print(arr.sum(), arr[2_000_000], arr.flags.writeable)")
    second = await ws.resume(result.run_id)
    assert second.status is RunStatus.COMPLETED and second.replayed_cells == []
    expected = sum(range(3_000_000)) - 2_000_000 - 1
    assert outputs_text(second.output_path, "c2") == f"{float(expected)} -1.0 True\n"


async def test_budget_defers_checkpoints_but_never_three_cells_in_a_row(
    ws: Workspace, forced_only: None
) -> None:
    """Over the time budget, cells get no checkpoint (a marker instead) but at most
    max_interval - 1 in a row, and the last cell always gets one; a deferred cell's change
    is in the next checkpoint even when that cell does not name the object."""
    nb = ws.notebook(
        [
            "import numpy as np\narr = np.zeros(300_000)",
            "arr[1] = 1.0",
            "y = 2",
            "z = 3",
            "arr[4] = 4.0",
            "w = 5",
            "v = 6",
        ]
    )
    result = await ws.run(nb)
    assert result.status is RunStatus.COMPLETED and result.checkpoint_errors == []
    files = checkpoint_files(ws, result)
    assert {f for f in files if f.endswith(".json")} == {"c2.json", "c5.json", "c6.json"}
    assert {f for f in files if f.endswith(".skipped")} == {
        f"c{i}.json.skipped" for i in (0, 1, 3, 4)
    }
    marker = ws.state / "runs" / result.run_id / "1" / "checkpoints" / "c0.json.skipped"
    assert marker.read_text().startswith("deferred")
    # c2 and c5 do not name arr: what c1 and c4 did to it is saved all the same
    first, second = resolved(ws, result, "c2", "arr"), resolved(ws, result, "c5", "arr")
    assert first["buffers"][0]["chunks"] != second["buffers"][0]["chunks"]
    assert ws.manifest(result, "c6")["vars"]["arr"] in ({"ref": "c5.json"}, second)
    assert set(ws.manifest(result, "c5")["vars"]) == {"arr", "y", "z", "w"}
