"""The service as real processes: ``casare-nb orchestrator`` and ``casare-nb robot``
subprocesses, the client commands against them, tokens, and SIGTERM (drain) for both.

Every wait is on an event: a line the process prints, a FIFO a notebook cell opens, an
orchestrator event; no sleeps. Every process started is killed in teardown.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import (
    ERROR_PREFIX,
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    cli_env,
    describe,
    run_cli,
    write_notebook,
)
from stores import opened

from casare_nb import Client, ClientError
from casare_nb.cli import main
from casare_nb.core.models import RunStatus
from casare_nb.protocol import EventKind

START_TIMEOUT = 60.0
JOB_TIMEOUT = 90.0


class Proc:
    """A ``casare-nb`` subprocess whose stdout lines can be awaited; stderr is kept."""

    def __init__(self, base: Path, *args: str) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "casare_nb.cli", *args],
            cwd=base,
            env=cli_env(base),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        threading.Thread(target=self._read_out, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    def _read_out(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.out.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def _read_err(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.err.append(line)

    def describe(self) -> str:
        return (
            f"casare-nb {' '.join(self.args)}: exit {self.popen.poll()}\n--- stdout\n"
            f"{''.join(self.out)}--- stderr\n{''.join(self.err[-40:])}"
        )

    def expect(self, needle: str, timeout: float = START_TIMEOUT) -> str:
        """The first stdout line (from now) containing ``needle``."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {needle!r} in {timeout} s\n{self.describe()}") from None
            if line is None:
                raise AssertionError(f"exited before printing {needle!r}\n{self.describe()}")
            if needle in line:
                return line

    def wait(self, timeout: float = JOB_TIMEOUT) -> int:
        return self.popen.wait(timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(30)


@dataclass
class Orchestrator:
    """A ``casare-nb orchestrator`` process and what its runtime file says."""

    proc: Proc
    base: Path
    ws_url: str
    http_url: str

    @property
    def state(self) -> Path:
        return self.base / "state"

    def client(self) -> Client:
        return Client.local(self.state)


def start_orchestrator(base: Path, *extra: str) -> Orchestrator:
    (base / "workflows").mkdir(exist_ok=True)
    proc = Proc(
        base,
        "orchestrator",
        "--port",
        "0",
        "--http-port",
        "0",
        "--workflows",
        "workflows",
        "--log-level",
        "warning",
        *extra,
    )
    try:
        proc.expect("runtime file")
        info = json.loads((base / "state" / "orchestrator.json").read_text())
    except BaseException:
        proc.kill()
        raise
    return Orchestrator(proc, base, info["ws_url"], info["http_url"])


def start_robot(orch: Orchestrator, robot_id: str, *extra: str) -> Proc:
    """A ``casare-nb robot`` process, returned once the orchestrator has it online."""
    with orch.client() as client:
        token = client.create_token(robot_id, "robot")
        with client.subscribe(("robots",)) as events:
            proc = Proc(
                orch.base,
                "robot",
                "--orchestrator",
                orch.ws_url,
                "--token",
                token,
                "--robot-id",
                robot_id,
                "--pool-size",
                "1",
                "--work-dir",
                str(orch.base / robot_id),
                "--log-level",
                "warning",
                *extra,
            )
            try:
                while True:
                    event = events.receive(timeout=START_TIMEOUT)
                    robot = getattr(event.data, "robot", None)
                    if (
                        event.kind is EventKind.ROBOT_ONLINE
                        and robot
                        and robot.robot_id == robot_id
                    ):
                        return proc
            except BaseException:
                proc.kill()
                raise


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a bad-input exit (code 2)."""
    assert proc.returncode == EXIT_BAD_INPUT, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), describe(proc)
    return lines[0]


class Gate:
    """A notebook cell that blocks until released: it opens ``started`` (a FIFO the test
    reads) and then reads ``release`` (a FIFO the test writes)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.started = folder / f"{name}.started"
        self.release = folder / f"{name}.release"
        os.mkfifo(self.started)
        os.mkfifo(self.release)

    @property
    def cell(self) -> str:
        return (
            f"open({str(self.started)!r}, 'w').write('go')\n"
            f"gate = open({str(self.release)!r}).read()"
        )

    def _in_thread(self, action: str) -> None:
        done: list[bool] = []

        def run() -> None:
            if action == "read":
                assert self.started.read_text() == "go"
            else:
                self.release.write_text("go")
            done.append(True)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(JOB_TIMEOUT)
        assert done, f"the gated cell never {'started' if action == 'read' else 'read on'}"

    def wait_started(self) -> None:
        self._in_thread("read")

    def open(self) -> None:
        self._in_thread("write")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cli(base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``casare-nb ARGS`` as a real subprocess in ``base`` (CASARE_HOME=<base>/state)."""
    return run_cli(base, *args)


Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def incli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """``casare-nb ARGS`` run by ``casare_nb.cli.main`` in this process (cwd ``base``,
    CASARE_HOME=<base>/state): the same code and HTTP calls, without a Python start-up."""

    def run(base: Path, *args: str) -> subprocess.CompletedProcess[str]:
        monkeypatch.chdir(base)
        monkeypatch.setenv("CASARE_HOME", str(base / "state"))
        capsys.readouterr()
        code: int = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["casare-nb", *args], code, out, err)

    return run


# ------------------------------------------------------------------ without an orchestrator


def test_client_commands_without_an_orchestrator_are_one_line_exit_2(
    tmp_path: Path, incli: Cli
) -> None:
    """With no orchestrator on the state dir, a client command says so in one line, exit 2."""
    assert "no orchestrator running" in error_line(cli(tmp_path, "jobs"))
    for args in (["submit", "wf.ipynb", "--wait"], ["drain"], ["robots", "--json"]):
        assert "no orchestrator running" in error_line(incli(tmp_path, *args))


def test_unreachable_url_and_url_without_token_are_one_line_exit_2(
    tmp_path: Path, incli: Cli
) -> None:
    """--url where nothing listens, or without a token, is one line and exit 2."""
    nowhere = incli(tmp_path, "jobs", "--url", "http://127.0.0.1:9", "--token", "x")
    assert "cannot reach the orchestrator" in error_line(nowhere)
    assert "needs a token" in error_line(incli(tmp_path, "jobs", "--url", "http://127.0.0.1:9"))


def test_token_commands_use_the_database_when_no_orchestrator_runs(
    tmp_path: Path, incli: Cli
) -> None:
    """token create prints the token once (stored hashed), list shows names, revoke works;
    a repeated or unknown name is one line, exit 2."""
    created = cli(tmp_path, "token", "create", "robot-1")
    assert created.returncode == EXIT_OK, describe(created)
    token = created.stdout.strip()
    assert len(token) > 20 and "shown only this once" in created.stderr
    assert "already exists" in error_line(incli(tmp_path, "token", "create", "robot-1"))
    listed = incli(tmp_path, "token", "list")
    assert "robot-1" in listed.stdout and token not in listed.stdout
    assert incli(tmp_path, "token", "revoke", "robot-1").returncode == EXIT_OK
    assert "unknown token" in error_line(incli(tmp_path, "token", "revoke", "nobody"))
    with opened(tmp_path / "state") as stores:
        assert stores.tokens.verify_token(token) is None
        assert [t["name"] for t in stores.tokens.list_tokens()] == ["robot-1"]


# ------------------------------------------------------------------ a running orchestrator


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orchestrator]:
    """An orchestrator process and one robot process (robot-1), for the client commands."""
    base = tmp_path_factory.mktemp("live")
    orch = start_orchestrator(base)
    workflows = base / "workflows"
    write_notebook(workflows / "add.ipynb", ["y = n + 1", "print('y is', y)"], params="n: int = 1")
    write_notebook(
        workflows / "checked.ipynb",
        ["rows = 10", "assert ok, f'check failed on {rows} rows'", "print('done')"],
        params="ok: bool = False",
    )
    write_notebook(base / "outside.ipynb", ["x = 1"])
    robot = None
    try:
        robot = start_robot(orch, "robot-1")
        yield orch
    finally:
        if robot is not None:
            robot.kill()
        orch.proc.kill()


def test_submit_wait_exits_0_and_jobs_and_robots_show_the_run(
    live: Orchestrator, incli: Cli
) -> None:
    """submit --wait prints each cell and exits 0; jobs and robots list the job and robot."""
    done = cli(live.base, "submit", "workflows/add.ipynb", "-p", "n", "4", "--wait")
    assert done.returncode == EXIT_OK, describe(done)
    assert "completed" in done.stdout and "cell" in done.stdout
    job_id = done.stdout.split()[1]
    table = incli(live.base, "jobs")
    assert table.returncode == EXIT_OK, describe(table)
    (row,) = [line for line in table.stdout.splitlines() if line.startswith(job_id)]
    assert "completed" in row and "add.ipynb" in row and "robot-1" in row
    robots = json.loads(incli(live.base, "robots", "--json").stdout)
    assert [r["robot_id"] for r in robots] == ["robot-1"]
    listed = incli(live.base, "robots")
    assert "robot-1" in listed.stdout and "0/1" in listed.stdout


def test_failed_job_exits_1_then_rerun_with_a_parameter_exits_0(
    live: Orchestrator, incli: Cli
) -> None:
    """A failing submit --wait exits 1 naming the rerun; jobs -q lists its id; rerun exits 0."""
    failed = incli(live.base, "submit", "checked.ipynb", "--wait")
    assert failed.returncode == EXIT_FAILED, describe(failed)
    assert "AssertionError" in failed.stderr and "casare-nb rerun" in failed.stderr
    job_id = failed.stderr.split("casare-nb rerun ")[1].split()[0]
    quiet = incli(live.base, "jobs", "--status", "failed", "-q")
    assert quiet.stdout.splitlines() == [job_id], describe(quiet)  # ids only, for scripts
    fixed = incli(live.base, "rerun", job_id, "-p", "ok", "true", "--wait")
    assert fixed.returncode == EXIT_OK, describe(fixed)
    with live.client() as client:
        job = client.get(job_id)
    assert (job.status, job.attempt, job.parameters["ok"]) == (RunStatus.COMPLETED, 2, True)


def test_bad_inputs_to_a_running_orchestrator_are_one_line_exit_2(
    live: Orchestrator, incli: Cli
) -> None:
    """Unknown job, cancel of a finished job, bad parameter, wrong token, a workflow outside
    the workflows dir: one line on stderr, exit 2."""
    base = live.base
    assert "unknown job" in error_line(cli(base, "cancel", "no-such-job"))
    assert "unknown job" in error_line(incli(base, "rerun", "no-such-job"))
    queued = incli(base, "submit", "add.ipynb", "--tags", "nowhere", "--json")
    job_id = json.loads(queued.stdout)["job_id"]
    assert incli(base, "cancel", job_id).returncode == EXIT_OK
    assert "already cancelled" in error_line(incli(base, "cancel", job_id))
    assert "'n'" in error_line(incli(base, "submit", "add.ipynb", "-p", "n", "many"))
    assert "outside the workflows" in error_line(incli(base, "submit", "outside.ipynb"))
    assert "invalid or revoked" in error_line(incli(base, "jobs", "--token", "wrong"))


def test_submit_with_several_urls_reaches_the_one_that_answers(
    live: Orchestrator, tmp_path: Path
) -> None:
    """`submit --url DEAD,LIVE --wait` (the light client) reaches the orchestrator that
    answers and exits 0; `jobs` (the full client) too."""
    with live.client() as client:
        token = client.create_token("two-urls", "user")
    urls = f"http://127.0.0.1:{_free_port()},{live.http_url}"
    given = ("--url", urls, "--token", token)
    done = cli(live.base, "submit", "add.ipynb", *given, "--wait")
    assert done.returncode == EXIT_OK, describe(done)
    listed = cli(live.base, "jobs", *given)
    assert listed.returncode == EXIT_OK and done.stdout.split()[1] in listed.stdout


def test_token_commands_go_through_the_running_orchestrator(live: Orchestrator, incli: Cli) -> None:
    """With an orchestrator running, token create/list/revoke use its API (it owns the
    database); the new token works at once and not after revoke."""
    created = incli(live.base, "token", "create", "monitor-1")
    assert created.returncode == EXIT_OK, describe(created)
    token = created.stdout.strip()
    with Client(live.http_url, token) as client:
        assert client.info().ws_url == live.ws_url
        assert "monitor-1" in incli(live.base, "token", "list").stdout
        assert incli(live.base, "token", "revoke", "monitor-1").returncode == EXIT_OK
        with pytest.raises(ClientError) as refused:
            client.info()
    assert refused.value.status == 401


def test_robot_sigterm_finishes_its_running_job_then_exits_0(live: Orchestrator) -> None:
    """SIGTERM to a robot running a job: it takes no new jobs, the job completes, exit 0."""
    gate = Gate(live.base, "robot-sigterm")
    write_notebook(live.base / "workflows" / "gated.ipynb", [gate.cell, "print('after', gate)"])
    robot = start_robot(live, "robot-sig", "--tags", "sig")
    try:
        with live.client() as client:
            job = client.submit("gated.ipynb", tags=["sig"])
            gate.wait_started()
            robot.popen.send_signal(signal.SIGTERM)
            robot.expect("SIGTERM: finishing 1 running job")
            gate.open()
            assert robot.wait() == EXIT_OK, robot.describe()
            done = client.wait(job.job_id, timeout=JOB_TIMEOUT)
        assert (done.status, done.robot_id, done.attempt) == (RunStatus.COMPLETED, "robot-sig", 1)
        assert "robot robot-sig stopped" in "".join(robot.out)
    finally:
        robot.kill()


@pytest.mark.slow
def test_orchestrator_sigterm_drains_then_exits_0_and_removes_its_runtime_file(
    tmp_path: Path, incli: Cli
) -> None:
    """SIGTERM to the orchestrator: submissions get 503, the running job completes, the robot
    is shut down (exit 0), the orchestrator exits 0 and removes its runtime file."""
    orch = start_orchestrator(tmp_path, "--drain-timeout", "60")
    robot = None
    try:
        gate = Gate(tmp_path, "drain")
        write_notebook(tmp_path / "workflows" / "gated.ipynb", [gate.cell])
        robot = start_robot(orch, "robot-d")
        with orch.client() as client:
            job = client.submit("gated.ipynb")
            gate.wait_started()
            orch.proc.popen.send_signal(signal.SIGTERM)
            orch.proc.expect("SIGTERM: draining")
            with pytest.raises(ClientError) as refused:
                client.submit("gated.ipynb")
            assert refused.value.status == 503 and "draining" in str(refused.value)
            refused_cli = incli(tmp_path, "submit", "gated.ipynb")
            assert "draining" in error_line(refused_cli)
            gate.open()
            assert orch.proc.wait() == EXIT_OK, orch.proc.describe()
        assert robot.wait() == EXIT_OK, robot.describe()
        out = "".join(orch.proc.out)
        assert "drained: 1 jobs finished, 0 unfinished, 1 robots shut down" in out
        assert not (tmp_path / "state" / "orchestrator.json").exists()
        with opened(tmp_path / "state") as stores:
            stored = stores.jobs.get_job(job.job_id)
        assert stored is not None and stored.status is RunStatus.COMPLETED
        assert "no orchestrator running" in error_line(incli(tmp_path, "jobs"))
    finally:
        if robot is not None:
            robot.kill()
        orch.proc.kill()


def test_local_commands_next_to_a_running_orchestrator_say_so_at_once(
    live: Orchestrator,
) -> None:
    """run, resume and history on the orchestrator's state directory answer one line (exit
    2) at once naming the orchestrator and what to do instead; nothing runs."""
    write_notebook(live.base / "local.ipynb", ["open('ran.txt', 'w').write('ran')"])
    for args, hint in [
        (("run", "local.ipynb"), "casare-nb submit local.ipynb"),
        (("resume", "some-run"), "casare-nb rerun some-run"),
        (("history",), "casare-nb jobs"),
    ]:
        started = time.monotonic()
        line = error_line(cli(live.base, *args))
        assert time.monotonic() - started < 15, args  # not the 30-60 s lock wait
        assert "an orchestrator (pid" in line and "holds the state directory" in line
        assert hint in line, line
    assert not (live.base / "ran.txt").exists()


def test_a_second_orchestrator_on_a_held_database_is_one_line_at_once(live: Orchestrator) -> None:
    """With the runtime file gone, a second orchestrator on the same state directory says
    the database is locked by another process in one line (exit 2) within seconds."""
    runtime = live.state / "orchestrator.json"
    kept = runtime.read_bytes()
    runtime.unlink()
    try:
        started = time.monotonic()
        second = cli(
            live.base,
            "orchestrator",
            "--port",
            "0",
            "--http-port",
            "0",
            "--workflows",
            "workflows",
            "--log-level",
            "error",
        )
        assert time.monotonic() - started < 20
        line = error_line(second)
        assert "locked by another process" in line, line
    finally:
        runtime.write_bytes(kept)
