"""``casare-nb submit`` and ``rerun`` start quickly: the command group imports only the
asked command's module, and they talk to the orchestrator with the light client (stdlib
HTTP, events as JSON, no pydantic, no httpx, no protocol models) with the same output,
errors and exit codes as the full ``Client``.

A real orchestrator and robot in a thread (``served``, runtime file in ``<root>/state``);
the commands run as real subprocesses or, for the error paths, through ``main`` in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, describe, served, write_notebook

from casare_nb.api import read_runtime_file as api_read_runtime_file
from casare_nb.api import runtime_file_path as api_runtime_file_path
from casare_nb.cli import main
from casare_nb.cli.app import COMMAND_MODULES, _cli_pairs, app
from casare_nb.cli.present import job_event_printer, job_frame_printer, job_outcome
from casare_nb.client import ClientError, light
from casare_nb.client import events as client_events
from casare_nb.client.light import JobView, LightClient
from casare_nb.core.errors import ParameterError
from casare_nb.core.models import Job, RunStatus
from casare_nb.core.params import parse_cli_pairs
from casare_nb.protocol import MAX_FRAME_BYTES, Role, Subscribe, Unsubscribe, decode
from casare_nb.service_thread import ServiceThread

WAIT = 90.0
HEAVY = (
    "httpx",
    "pydantic",
    "casare_nb.api",
    "casare_nb.protocol",
    "casare_nb.core.models",
    "casare_nb.client.client",
    "asyncio",
    "yaml",
    "casare_nb.cli.local",
    "casare_nb.cli.service",
    "casare_nb.cli.debug",
)
"""Modules the submit process has no use for."""

REPORTING = (
    "import atexit, sys\n"
    "HEAVY = {heavy!r}\n"
    "atexit.register(lambda: print('LOADED', [m for m in HEAVY if m in sys.modules], "
    "file=sys.stderr))\n"
    "from casare_nb.cli import main\n"
    "main(sys.argv[1:])\n"
)
"""``casare-nb ARGS`` that says at exit which of HEAVY it loaded (last stderr line)."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    root = tmp_path_factory.mktemp("startup")
    workflows = root / "workflows"
    workflows.mkdir()
    write_notebook(workflows / "add.ipynb", ["y = n + 1", "print('y is', y)"], params="n: int = 1")
    write_notebook(
        workflows / "checked.ipynb",
        ["assert ok, 'check failed'", "print('done')"],
        params="ok: bool = False",
    )
    write_notebook(workflows / "sleepy.ipynb", ["import time\ntime.sleep(60)"])
    with served(root / "state", workflows, "robot-q") as thread:
        yield thread


def _base(cluster: ServiceThread) -> Path:
    return cluster.service.state_dir.parent


def _reporting_cli(
    cluster: ServiceThread, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``casare-nb ARGS`` as a subprocess (cwd: the workflows dir), and the HEAVY modules it
    loaded."""
    base = _base(cluster)
    environ = {k: v for k, v in os.environ.items() if k not in ("CASARE_URL", "CASARE_TOKEN")}
    environ |= {"CASARE_HOME": str(base / "state")} | (env or {})
    proc = subprocess.run(
        [sys.executable, "-c", REPORTING.format(heavy=HEAVY), *args],
        cwd=base / "workflows",
        env=environ,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    lines = proc.stderr.splitlines()
    assert lines and lines[-1].startswith("LOADED "), describe(proc)
    loaded = json.loads(lines[-1].removeprefix("LOADED ").replace("'", '"'))
    proc.stderr = "\n".join(lines[:-1]) + ("\n" if len(lines) > 1 else "")
    return proc, loaded


def _in_process(
    cluster: ServiceThread,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    *args: str,
) -> subprocess.CompletedProcess[str]:
    """``casare-nb ARGS`` through ``main`` in this process (CASARE_HOME: the cluster's)."""
    monkeypatch.setenv("CASARE_HOME", str(cluster.service.state_dir))
    monkeypatch.delenv("CASARE_URL", raising=False)
    monkeypatch.delenv("CASARE_TOKEN", raising=False)
    capsys.readouterr()
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["casare-nb", *args], code, out, err)


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == EXIT_BAD_INPUT, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("casare-nb: error: "), describe(proc)
    return lines[0]


# ------------------------------------------------------------------ the submit process


def test_submit_wait_prints_each_cell_exits_0_and_loads_no_heavy_module(
    cluster: ServiceThread,
) -> None:
    """`casare-nb submit add.ipynb -p n 4 --wait` prints the queued, started and cell lines
    and the outcome, exits 0, and never imports httpx, pydantic, the protocol models or the
    other commands' modules."""
    done, loaded = _reporting_cli(cluster, "submit", "add.ipynb", "-p", "n", "4", "--wait")
    assert done.returncode == EXIT_OK, describe(done)
    assert loaded == []
    lines = done.stdout.splitlines()
    job_id = lines[0].split()[1]
    assert lines[0] == f"  job {job_id} queued (add.ipynb)"
    assert lines[1] == "  started on robot robot-q (attempt 1)"
    cells = lines[2:-1]  # the parameters cell, the injected one, the two of the notebook
    assert [line.split("]")[1].split()[:4] for line in cells] == [
        [f"{i}/4", "cell", str(i), "ok"] for i in range(1, 5)
    ]
    assert lines[-1] == f"job {job_id} completed (attempt 1, robot robot-q)"
    with cluster.client() as client:
        job = client.get(job_id)
    assert (job.status, job.parameters) == (RunStatus.COMPLETED, {"n": 4})


def test_a_failed_job_exits_1_and_rerun_wait_with_a_new_value_exits_0(
    cluster: ServiceThread,
) -> None:
    """A failing submit --wait exits 1 naming the rerun command on stderr; rerun -p ok true
    --wait (the light client too) exits 0 with the job's attempt 2."""
    failed, loaded = _reporting_cli(cluster, "submit", "checked.ipynb", "--wait")
    assert failed.returncode == EXIT_FAILED, describe(failed)
    assert loaded == []
    assert "AssertionError: check failed" in failed.stderr
    job_id = failed.stderr.split("casare-nb rerun ")[1].split()[0]
    fixed, loaded = _reporting_cli(cluster, "rerun", job_id, "-p", "ok", "true", "--wait")
    assert fixed.returncode == EXIT_OK, describe(fixed)
    assert loaded == []
    assert fixed.stdout.splitlines()[-1] == f"job {job_id} completed (attempt 2, robot robot-q)"


def test_submit_json_prints_the_job_as_the_client_models_print_it(cluster: ServiceThread) -> None:
    """submit --wait --json prints exactly Job.model_dump_json(indent=1) of the finished job
    (the models load only for this output)."""
    done, loaded = _reporting_cli(cluster, "submit", "add.ipynb", "--wait", "--json")
    assert done.returncode == EXIT_OK, describe(done)
    assert "pydantic" in loaded and "httpx" not in loaded
    job_id = json.loads(done.stdout)["job_id"]
    with cluster.client() as client:
        assert done.stdout == client.get(job_id).model_dump_json(indent=1) + "\n"


def test_with_an_http_proxy_configured_submit_uses_the_full_client(cluster: ServiceThread) -> None:
    """With HTTP_PROXY set (NO_PROXY sparing loopback) submit --wait goes through the httpx
    Client, which honours proxies, and still completes."""
    proxy = {"HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1,localhost"}
    done, loaded = _reporting_cli(cluster, "submit", "add.ipynb", "--wait", env=proxy)
    assert done.returncode == EXIT_OK, describe(done)
    assert "httpx" in loaded and "completed" in done.stdout


def test_the_light_and_full_paths_print_the_same_lines_for_the_same_events(
    cluster: ServiceThread,
) -> None:
    """For one job, the lines printed from the JSON events (light client) equal those from
    the Event models (Client), and the outcome line of JobView equals that of Job."""
    state = cluster.service.state_dir
    with cluster.client() as client, client.subscribe(("jobs", "cells")) as events:
        light_lines: list[str] = []
        with LightClient.local(state) as quick:
            view = quick.submit(
                "add.ipynb",
                {"n": 2},
                wait=True,
                timeout=WAIT,
                on_event=job_frame_printer(light_lines.append),
            )
        model_lines: list[str] = []
        printer = job_event_printer(model_lines.append)
        while True:
            event = events.receive(timeout=WAIT)
            if client_events.job_id_of(event) == view.job_id:
                printer(event)
                if event.kind.value == "job_finished":
                    break
        job = client.get(view.job_id)
    assert len(light_lines) == 6 and light_lines == model_lines
    assert job_outcome(view) == job_outcome(job)
    assert view.model_dump_json(indent=1) == job.model_dump_json(indent=1)


# ------------------------------------------------------------------ errors, as before


def test_a_wait_that_runs_out_of_time_is_one_line_exit_2(
    cluster: ServiceThread, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """submit --wait --timeout 0.5 on a long job says it is still queued/running after 0.5 s
    (one line, exit 2); the job goes on."""
    out = _in_process(
        cluster, capsys, monkeypatch, "submit", "sleepy.ipynb", "--wait", "--timeout", "0.5"
    )
    line = _error_line(out)
    assert "is still" in line and "after 0.5 s" in line
    job_id = line.split("job ")[1].split()[0]
    with cluster.client() as client:
        assert not client.get(job_id).status.finished
        client.cancel(job_id)


def test_bad_input_to_submit_is_one_line_exit_2(
    cluster: ServiceThread, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad parameter value, an unknown workflow, a wrong token, an unreachable --url, a
    --url without token and a repeated -p are each one line on stderr and exit 2."""

    def line(*args: str) -> str:
        return _error_line(_in_process(cluster, capsys, monkeypatch, *args))

    assert "'n'" in line("submit", "add.ipynb", "-p", "n", "many", "--wait")
    assert "no-such.ipynb" in line("submit", "no-such.ipynb")
    assert "invalid or revoked" in line("submit", "add.ipynb", "--token", "wrong", "--wait")
    nowhere = line("submit", "add.ipynb", "--url", "http://127.0.0.1:9", "--token", "x")
    assert "cannot reach the orchestrator at http://127.0.0.1:9" in nowhere
    assert "needs a token" in line("submit", "add.ipynb", "--url", "http://127.0.0.1:9")
    assert "given twice" in line("submit", "add.ipynb", "-p", "n", "1", "-p", "n", "2")
    assert "not a valid parameter name" in line("submit", "add.ipynb", "-p", "class", "1")


def test_without_an_orchestrator_submit_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No runtime file, or one of a process that is gone: submit --wait says no
    orchestrator runs (one line, exit 2)."""
    monkeypatch.setenv("CASARE_HOME", str(tmp_path))
    monkeypatch.delenv("CASARE_URL", raising=False)
    monkeypatch.delenv("CASARE_TOKEN", raising=False)
    for stale in (False, True):
        if stale:
            (tmp_path / "orchestrator.json").write_text(json.dumps(_runtime(pid=2**22 + 12345)))
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(["submit", "add.ipynb", "--wait"])
        assert exited.value.code == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert err.startswith("casare-nb: error: no orchestrator running")
        assert ("stale" in err) == stale


def _runtime(**changes: object) -> dict[str, object]:
    """A runtime file's content (as the orchestrator service writes it), with ``changes``."""
    return {
        "pid": 1,
        "version": "0.1.0",
        "ws_url": "ws://127.0.0.1:1",
        "http_url": "http://127.0.0.1:2",
        "token": "t",
        "token_name": "n",
        "state_dir": "s",
        "workflows_dir": "w",
        "started_at": "2026-01-01T00:00:00Z",
        "tls_cert": None,
    } | changes


# ------------------------------------------------------------------ the command group


def test_the_group_lists_every_command_and_loads_only_the_asked_ones_module() -> None:
    """COMMAND_MODULES names the module of every command, `--help` lists them all, and
    `submit --help` imports no other command's module."""
    code = (
        "import sys\n"
        "from casare_nb.cli import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('casare_nb.cli.')))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, "submit", "--help"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    )
    loaded = run.stdout.splitlines()[-1]
    assert "casare_nb.cli.jobs" in loaded and "casare_nb.cli.local" not in loaded
    assert "casare_nb.cli.service" not in loaded and "casare_nb.cli.schedules" not in loaded
    listing = subprocess.run(
        [sys.executable, "-m", "casare_nb.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    ).stdout
    for name in COMMAND_MODULES:
        assert f"  {name} " in listing or f"  {name}\n" in listing, name
    import importlib

    for module in set(COMMAND_MODULES.values()):
        importlib.import_module(f"casare_nb.cli.{module}")
    defined = {
        name: command.callback.__module__.rsplit(".", 1)[1]
        for name, command in app.commands.items()
        if command.callback is not None
    }
    assert defined == COMMAND_MODULES


# ------------------------------------------------------------------ what the light side copies


def test_the_light_side_agrees_with_what_it_does_not_import(tmp_path: Path) -> None:
    """The copies the light path keeps (frame limit, runtime file path and reader, -p
    parsing, finished statuses, subscribe/unsubscribe frames) agree with their sources."""
    assert client_events.MAX_FRAME_BYTES == MAX_FRAME_BYTES
    assert {s.value for s in RunStatus if s.finished} == light._FINISHED
    for where in (None, tmp_path, "relative/state"):
        assert light.runtime_file_path(where) == api_runtime_file_path(where)
    path = tmp_path / "orchestrator.json"
    good = _runtime()
    for content in (good, _runtime(token=None), _runtime(pid="x"), [1], "not json"):
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        assert (light.read_runtime_file(path) is None) == (api_read_runtime_file(path) is None)
    for pairs in (
        [("n", "1"), ("m", "x")],
        [("n", "1"), ("n", "2")],
        [("class", "1")],
        [("1a", "")],
    ):
        try:
            expected: object = parse_cli_pairs(pairs)
        except ParameterError as exc:
            expected = str(exc)
        try:
            got: object = _cli_pairs(pairs)
        except ParameterError as exc:
            got = str(exc)
        assert got == expected
    frame, message_id = client_events.request_frame("subscribe", {"jobs", "robots"})
    subscribe = decode(frame, sender=Role.MONITOR)
    assert isinstance(subscribe, Subscribe) and subscribe.id == message_id
    assert {t.value for t in subscribe.topics} == {"jobs", "robots"}
    unsubscribe = decode(client_events.request_frame("unsubscribe", {"robots"})[0])
    assert isinstance(unsubscribe, Unsubscribe)


def test_a_light_client_refuses_a_bad_url_or_no_token_as_the_client_does() -> None:
    """LightClient refuses a URL that is not http(s) and an empty token with the Client's
    ClientError messages; a JobView without a job id is refused too."""
    from casare_nb.client import Client

    for url, token in (("ftp://h:1", "t"), ("http://h:1", "")):
        with pytest.raises(ClientError) as heavy:
            Client(url, token)
        with pytest.raises(ClientError) as quick:
            LightClient(url, token)
        assert str(quick.value) == str(heavy.value)
    with pytest.raises(ClientError, match="not a job"):
        JobView({"status": "queued"})
    assert Job.model_fields.keys() >= {"job_id", "workflow_path", "status", "priority"}
