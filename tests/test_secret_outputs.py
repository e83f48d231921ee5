"""Secret parameters kept out of every kind of output: values recorded with
casare_nb.output, JSON, HTML and Markdown displays, reprs, a display updated from a later
cell; in the output notebook, a robot's copies and the outputs table."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from cluster import Cluster, notebook
from helpers import Workspace

from casare_nb.core.injection import Scrubber
from casare_nb.core.models import RunStatus
from casare_nb.core.outputs import extract_outputs

SECRET = "tok-&-<s3cr3t>"
PARAMS = 'from casare_nb import Secret\nkey: Secret[str] = ""'
CELLS = [
    "import casare_nb\n"
    "handle = display('placeholder', display_id=True)\n"
    "casare_nb.output('x', key)\n"
    "casare_nb.output('nested', {'deep': [key, 'kept'], key: 1})\n"
    "None",
    "import html\n"
    "from IPython.display import HTML, JSON, Markdown, display\n"
    "display(JSON({'k': key, 'list': [1, key]}))\n"
    "display(HTML('<b>' + html.escape(key) + '</b>'))\n"
    "display(Markdown('**' + key + '**'))",
    "class Shows:\n"
    "    def _repr_json_(self): return {'nested': [{'k': key}]}\n"
    "    def _repr_html_(self): return f'<i>{key}</i>'\n"
    "    def _repr_markdown_(self): return f'**{key}**'\n"
    "Shows()",
    "handle.update(key)  # a display of the first cell, updated from this one\n{'k': key}",
]
FORMS = [SECRET, html.escape(SECRET), html.escape(SECRET, quote=False), json.dumps(SECRET)[1:-1]]


def leaks(data: bytes) -> list[str]:
    """The forms of the secret found in ``data``."""
    return [form for form in FORMS if form.encode() in data]


async def test_secret_is_scrubbed_from_every_mimetype_and_recorded_output(ws: Workspace) -> None:
    """A secret shown through casare_nb.output, JSON, HTML, Markdown and reprs appears in no
    byte of the output notebook or the state directory, and is recorded as ***."""
    nb = ws.notebook(CELLS, params=PARAMS)
    result = await ws.run(nb, {"key": SECRET})
    assert result.status is RunStatus.COMPLETED, result.error_message
    output = Path(result.output_path).read_bytes()
    assert leaks(output) == []
    for path in ws.state.rglob("*"):
        if path.is_file():
            assert leaks(path.read_bytes()) == [], path
    assert result.notebook is not None
    recorded = {name: value for name, (value, _) in extract_outputs(result.notebook.cells).items()}
    assert recorded == {"x": "***", "nested": {"deep": ["***", "kept"], "***": 1}}
    shown = json.loads(output)["cells"]
    assert b"***" in output and len([c for c in shown if c.get("outputs")]) == len(CELLS)


async def test_robot_run_keeps_secret_out_of_outputs_table_and_notebooks(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A job run by a robot records its outputs as *** in the outputs table, and no file of
    the orchestrator or the robot holds the secret."""
    path = notebook(tmp_path, "wf.ipynb", CELLS, params=PARAMS)
    await cluster.robot("r1")
    job = await cluster.orch.submit(path, {"key": SECRET})
    assert (await cluster.finished(job.job_id)).status is RunStatus.COMPLETED
    chainer = cluster.orch.triggers.chainer
    await chainer.recorder.settled(job.job_id)
    assert chainer.outputs.outputs(job.job_id) == {
        "x": "***",
        "nested": {"deep": ["***", "kept"], "***": 1},
    }
    await cluster.history()  # the history written
    for file in tmp_path.rglob("*"):
        if file.is_file() and file != path:
            assert leaks(file.read_bytes()) == [], file


def test_scrubber_reaches_strings_keys_and_numbers_inside_json() -> None:
    """Strings (dict keys included) at any depth lose the secret; a number written as a
    secret becomes ***; other values stay."""
    scrubber = Scrubber(["hunter2", "31337"])
    value: Any = {"a": ["x hunter2 y", {"hunter2": 31337, "n": 7}], "b": None, "c": True}
    assert scrubber.json(value) == {"a": ["x *** y", {"***": "***", "n": 7}], "b": None, "c": True}
    assert value["a"][0] == "x hunter2 y"  # the input is left as it was


def test_scrubber_catches_escaped_forms() -> None:
    """The repr, JSON and HTML escaped forms of a secret are scrubbed too."""
    secret = "a&b<'\"é"
    scrubber = Scrubber([secret])
    for form in (secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], html.escape(secret)):
        assert scrubber.text(f"[{form}]") == "[***]", form


async def test_outputs_told_to_hooks_as_they_come_are_scrubbed(ws: Workspace) -> None:
    """RunHooks.cell_output (papermill's --log-output, --stdout-file, autosave) gets every
    output as it arrives with the secret already replaced by ***."""
    from casare_nb.notebook.hooks import RunHooks

    seen: list[str] = []

    class Tap(RunHooks):
        def cell_output(self, index: int, output: Any) -> None:
            seen.append(json.dumps(output))

    nb = ws.notebook([*CELLS, "print('printed', key)"], params=PARAMS)
    result = await ws.run(nb, {"key": SECRET}, hooks=Tap())
    assert result.status is RunStatus.COMPLETED, result.error_message
    assert len(seen) >= len(CELLS) + 1
    assert leaks("".join(seen).encode()) == []
    assert any("printed ***" in s for s in seen)
