"""casare_nb.Client against a real orchestrator and a real robot with real kernels, served in
a thread of their own (ServiceThread); the client talks HTTP and WebSocket on loopback."""

from __future__ import annotations

import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import served, write_notebook
from jupyter_harness import free_port

from casare_nb import Client, ClientError
from casare_nb.core.models import RunStatus
from casare_nb.orchestrator.service import OrchestratorService
from casare_nb.protocol import Event, EventKind
from casare_nb.service_thread import ServiceThread

WAIT = 90.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    root = tmp_path_factory.mktemp("client")
    workflows = root / "workflows"
    workflows.mkdir()
    write_notebook(workflows / "add.ipynb", ["y = n + 1", "print('y is', y)"], params="n: int = 1")
    write_notebook(
        workflows / "checked.ipynb",
        [
            "open('ran.log', 'a').write('load\\n')\ndata = list(range(10))",
            "assert len(data) <= limit, f'{len(data)} rows > limit {limit}'",
            "total = sum(data)",
        ],
        params="limit: int = 5",
    )
    write_notebook(workflows / "sleepy.ipynb", ["import time\ntime.sleep(60)"])
    with served(root / "state", workflows, "robot-a", pool_size=2) as thread:
        yield thread


@pytest.fixture
def client(cluster: ServiceThread) -> Iterator[Client]:
    with cluster.client() as c:
        yield c


def test_submit_with_wait_answers_the_completed_job(client: Client) -> None:
    """submit(wait=True) returns the job once completed, on the robot, with its parameters."""
    job = client.submit("add.ipynb", {"n": 41}, wait=True, timeout=WAIT)
    assert (job.status, job.attempt, job.robot_id) == (RunStatus.COMPLETED, 1, "robot-a")
    assert job.parameters == {"n": 41}
    assert client.get(job.job_id) == job
    assert job.job_id in [j.job_id for j in client.jobs(RunStatus.COMPLETED)]


def test_wait_reports_each_cell_of_the_job_in_order(client: Client) -> None:
    """on_event sees queued, started, every cell in order, then finished, for this job only."""
    seen: list[Event] = []
    job = client.submit("add.ipynb", raw_parameters={"n": "2"}, wait=True, on_event=seen.append)
    assert job.status is RunStatus.COMPLETED and job.parameters == {"n": 2}
    kinds = [e.kind for e in seen]
    assert kinds[:2] == [EventKind.JOB_QUEUED, EventKind.JOB_STARTED]
    assert kinds[-1] is EventKind.JOB_FINISHED
    cells = [e.data for e in seen if e.kind is EventKind.CELL_FINISHED]
    assert [c.cell_id for c in cells][-2:] == ["c0", "c1"]
    assert [c.cells_done for c in cells] == sorted(c.cells_done for c in cells)
    assert all(c.job_id == job.job_id for c in cells)


def test_failed_job_rerun_from_the_failed_cell_with_a_new_parameter_completes(
    client: Client, cluster: ServiceThread
) -> None:
    """A job failing at its check is re-run from that cell with limit=20: the loading cell is
    not run again, the new attempt completes."""
    failed = client.submit("checked.ipynb", wait=True, timeout=WAIT)
    assert (failed.status, failed.error_name) == (RunStatus.FAILED, "AssertionError")
    log = cluster.robots[0].work_dir / "ran.log"
    loads = log.read_text().split().count("load")
    seen: list[Event] = []
    done = client.rerun(
        failed.job_id, parameters={"limit": 20}, wait=True, timeout=WAIT, on_event=seen.append
    )
    assert (done.status, done.attempt) == (RunStatus.COMPLETED, 2)
    assert done.parameters["limit"] == 20
    ran = [e.data.cell_id for e in seen if e.kind is EventKind.CELL_FINISHED]
    assert "c0" not in ran and ran[-2:] == ["c1", "c2"]
    assert log.read_text().split().count("load") == loads  # the loading cell did not run


def test_rerun_from_the_start_runs_every_cell_again(client: Client) -> None:
    """rerun(from_failed=False) runs the notebook from its first cell."""
    failed = client.submit("checked.ipynb", wait=True, timeout=WAIT)
    assert failed.status is RunStatus.FAILED
    seen: list[Event] = []
    done = client.rerun(
        failed.job_id, False, {"limit": 20}, wait=True, timeout=WAIT, on_event=seen.append
    )
    assert done.status is RunStatus.COMPLETED
    ran = [e.data.cell_id for e in seen if e.kind is EventKind.CELL_FINISHED]
    assert ran[-3:] == ["c0", "c1", "c2"]


def test_subscribe_starts_with_the_robots_snapshot_then_yields_job_events(
    client: Client,
) -> None:
    """subscribe() yields the robots snapshot first, then the events of a submitted job."""
    with client.subscribe(("robots", "jobs")) as events:
        snapshot = next(events)
        assert snapshot.kind is EventKind.ROBOT_STATUS and snapshot.data.snapshot is True
        assert [r.robot_id for r in snapshot.data.robots] == ["robot-a"]
        job = client.submit("add.ipynb")
        kinds = []
        while EventKind.JOB_FINISHED not in kinds:
            event = events.receive(timeout=WAIT)
            if event.topic.value == "jobs" and event.data.job.job_id == job.job_id:
                kinds.append(event.kind)
    assert kinds == [EventKind.JOB_QUEUED, EventKind.JOB_STARTED, EventKind.JOB_FINISHED]


def test_cancelling_a_running_job_ends_it_cancelled(client: Client) -> None:
    """cancel() of a job running a 60 s cell ends it cancelled, long before the minute."""
    with client.subscribe(("jobs",)) as events:
        job = client.submit("sleepy.ipynb")
        while True:
            event = events.receive(timeout=WAIT)
            if event.kind is EventKind.JOB_STARTED and event.data.job.job_id == job.job_id:
                break
    assert client.cancel(job.job_id).status is RunStatus.RUNNING  # asked; the robot stops it
    done = client.wait(job.job_id, timeout=WAIT)
    assert done.status is RunStatus.CANCELLED


def test_client_errors_carry_the_status_and_the_one_line_reason(
    client: Client, cluster: ServiceThread
) -> None:
    """Unknown job 404, cancel of a finished job 409, bad parameter 422, bad token 401: each a
    ClientError (exit code 2) with the server's line; it survives pickling."""
    with pytest.raises(ClientError) as unknown:
        client.get("no-such-job")
    assert unknown.value.status == 404 and "unknown job" in str(unknown.value)
    done = client.submit("add.ipynb", wait=True, timeout=WAIT)
    with pytest.raises(ClientError) as finished:
        client.cancel(done.job_id)
    assert finished.value.status == 409 and "completed" in str(finished.value)
    with pytest.raises(ClientError) as bad:
        client.submit("add.ipynb", {"n": "many"})
    assert bad.value.status == 422 and "\n" not in str(bad.value)
    with Client(cluster.service.http_url, "wrong-token") as stranger:
        with pytest.raises(ClientError) as refused:
            stranger.robots()
        assert refused.value.status == 401
        with pytest.raises(ClientError) as stream:
            next(iter(stranger.subscribe(("jobs",))))
    assert "HTTP 401" in str(stream.value) or stream.value.status == 401
    copy = pickle.loads(pickle.dumps(bad.value))
    assert (str(copy), copy.status, copy.exit_code) == (str(bad.value), 422, 2)


def test_wait_gives_up_after_its_timeout_and_the_job_goes_on(client: Client) -> None:
    """wait() on a job no robot can take raises WaitTimeout (a TimeoutError); it stays queued."""
    job = client.submit("add.ipynb", tags=["nowhere"])
    with pytest.raises(TimeoutError, match="still queued"):
        client.wait(job.job_id, timeout=0.3)
    assert client.get(job.job_id).status is RunStatus.QUEUED
    client.cancel(job.job_id)


def test_robots_lists_the_robot_with_its_load(client: Client) -> None:
    """robots() lists robot-a online with its capacity and a heartbeat."""
    (robot,) = client.robots()
    assert robot.robot_id == "robot-a" and robot.max_concurrent_jobs == 1
    assert robot.status.value in ("online", "busy") and robot.last_heartbeat is not None


def test_local_reads_the_private_runtime_file_that_stop_removes(tmp_path: Path) -> None:
    """Client.local() uses <state>/orchestrator.json (mode 0600, admin token); stop removes it
    and then Client.local() says no orchestrator runs."""
    state = tmp_path / "state"
    service = OrchestratorService(state, port=0, http_port=0, workflows_dir=tmp_path)
    with ServiceThread(service):
        runtime = state / "orchestrator.json"
        assert stat.S_IMODE(runtime.stat().st_mode) == 0o600
        info = json.loads(runtime.read_text())
        assert info["pid"] == os.getpid() and info["ws_url"] == service.ws_url
        with Client.local(state) as local:
            assert local.url == service.http_url
            assert local.info().ws_url == service.ws_url
            assert local.health().status == "ok"
    assert not runtime.exists()
    with pytest.raises(ClientError, match="no orchestrator running"):
        Client.local(state)
    runtime.write_text(json.dumps({**info, "pid": 2**22 + 12345}))  # a dead process's file
    with pytest.raises(ClientError, match="stale"):
        Client.local(state)


def test_unreachable_orchestrator_is_a_client_error_without_status(tmp_path: Path) -> None:
    """A URL where nothing listens gives a ClientError naming it, with status None."""
    with (
        Client("http://127.0.0.1:9", "token") as nowhere,
        pytest.raises(ClientError, match="cannot reach the orchestrator") as err,
    ):
        nowhere.jobs()
    assert err.value.status is None


def test_of_several_addresses_the_client_uses_the_one_that_answers(
    cluster: ServiceThread, client: Client
) -> None:
    """Given a refusing address then the orchestrator's, the client's requests go to the
    one that answers (a standby refuses, the active one answers); when none answers the
    error names them all; an address that is not http(s) is refused."""
    dead = f"http://127.0.0.1:{free_port()}"
    token = client.create_token("several", "user")
    with Client(f"{dead}, {client.url}", token) as both:
        assert both.urls == [dead, client.url]
        assert both.health().ready and both.url == client.url
        assert both.jobs() is not None
    nowhere = f"http://127.0.0.1:{free_port()}"
    with (
        Client(f"{dead},{nowhere}", token) as neither,
        pytest.raises(ClientError, match=f"cannot reach the orchestrator at {dead}, {nowhere}"),
    ):
        neither.jobs()
    with pytest.raises(ClientError, match="must be http"):
        Client(f"{client.url},ws://x:1", token)


def test_importing_casare_nb_does_not_import_httpx() -> None:
    """``import casare_nb`` stays light: httpx and the client load on first use of Client."""
    code = (
        "import sys, casare_nb\n"
        "print('httpx' in sys.modules, 'casare_nb.client' in sys.modules)\n"
        "casare_nb.Client\n"
        "print('httpx' in sys.modules)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert run.stdout.split() == ["False", "False", "True"]


def test_the_client_lists_jobs_under_a_name_that_shadows_nothing() -> None:
    """Client.jobs lists jobs; the class defines no attribute named like a builtin, and the
    package ships py.typed so users' type checkers see these types."""
    import builtins
    from importlib import resources

    assert callable(Client.jobs)
    assert not [n for n in vars(Client) if not n.startswith("_") and hasattr(builtins, n)]
    assert resources.files("casare_nb").joinpath("py.typed").is_file()
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["casare_nb"]


SUBSCRIBER = """
import sys
import threading
from casare_nb import Client

with Client.local(sys.argv[1]) as client:
    for event in client.subscribe([sys.argv[2]]):
        print("event", event.kind.value, flush=True)
        if sys.argv[3] == "break":
            break
print("left the loop", flush=True)
"""


def _subscriber(cluster: ServiceThread, topic: str, then: str) -> subprocess.Popen[str]:
    """A process running the README's loop over ``client.subscribe([topic])``."""
    return subprocess.Popen(
        [sys.executable, "-c", SUBSCRIBER, str(cluster.service.state_dir), topic, then],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ctrl_c_ends_a_subscription_loop_waiting_for_events(cluster: ServiceThread) -> None:
    """SIGINT stops a `for event in client.subscribe(...)` loop that has nothing to receive:
    KeyboardInterrupt is raised in it at once, and the process ends."""
    proc = _subscriber(cluster, "robots", "wait")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "event robot_status"  # the snapshot: it waits
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err


def test_a_subscription_loop_left_with_break_lets_the_process_exit(
    cluster: ServiceThread,
) -> None:
    """After `break` out of a subscription loop (never closed), the code after it runs and the
    process exits 0."""
    proc = _subscriber(cluster, "robots", "break")
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert out.splitlines() == ["event robot_status", "left the loop"]


def test_closing_the_client_closes_its_subscriptions(cluster: ServiceThread) -> None:
    """Client.close() ends every subscription still open: a receive waiting in another
    thread raises ClientError at once, and later ones too."""
    client = cluster.client()
    events = client.subscribe(("jobs",))
    outcome: list[BaseException] = []
    started = threading.Event()

    def receive() -> None:
        started.set()
        try:
            events.receive()
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=receive)
    waiter.start()
    started.wait(WAIT)
    client.close()
    waiter.join(10)
    assert not waiter.is_alive()
    assert [type(e) for e in outcome] == [ClientError]
    assert events.closed
    with pytest.raises(ClientError, match="subscription is closed"):
        events.receive(timeout=1)


def test_a_failed_job_tells_where_it_failed_and_what_it_ran(client: Client) -> None:
    """failure() names the failed attempt, its cell, the cell's source and a colourless
    traceback; attempts(), cells() and notebook() show what the attempt ran."""
    failed = client.submit("checked.ipynb", wait=True, timeout=WAIT)
    assert failed.status is RunStatus.FAILED
    failure = client.failure(failed.job_id)
    assert (failure.run.run_id, failure.run.attempt) == (failed.job_id, 1)
    assert failure.cell_id == "c1" and "assert len(data) <= limit" in failure.source
    assert any("AssertionError: 10 rows > limit 5" in line for line in failure.traceback)
    assert not any("\x1b[" in line for line in failure.traceback)
    [attempt] = client.attempts(failed.job_id)
    assert attempt.status is RunStatus.FAILED and attempt.failed_cell_id == "c1"
    cells = client.cells(failed.job_id)
    assert [(c.cell_id, c.status.value) for c in cells][-2:] == [("c0", "ok"), ("c1", "error")]
    notebook = client.notebook(failed.job_id)
    by_id = {cell.get("id"): cell for cell in notebook["cells"]}
    assert by_id["c1"]["outputs"][-1]["ename"] == "AssertionError"
    assert by_id["c2"].get("execution_count") is None  # never ran


def test_failure_of_a_job_that_did_not_fail_is_409_and_unknown_jobs_404(client: Client) -> None:
    """failure() of a completed job and any read of an unknown job are ClientErrors with
    their status and one line."""
    done = client.submit("add.ipynb", wait=True, timeout=WAIT)
    with pytest.raises(ClientError, match="did not fail") as err:
        client.failure(done.job_id)
    assert err.value.status == 409
    for read in (client.failure, client.attempts, client.cells, client.notebook):
        with pytest.raises(ClientError, match="unknown job nope") as err:
            read("nope")
        assert err.value.status == 404
    with pytest.raises(ClientError, match="no notebook for attempt 9") as err:
        client.notebook(done.job_id, attempt=9)


def test_the_history_groups_runs_by_what_started_them_and_aggregates_them(
    client: Client,
) -> None:
    """A schedule's runs are one group labelled schedule:<id>, runs by hand another; daily()
    counts today's runs by outcome; cell_durations() covers the workflow; runs() filters."""
    by_hand = client.submit("add.ipynb", wait=True, timeout=WAIT)
    soon = datetime.now(UTC) + timedelta(seconds=1)
    info = client.add_schedule("add.ipynb", at=soon.replace(tzinfo=None).isoformat())
    label = f"schedule:{info.schedule.schedule_id}"
    try:
        with client.subscribe(("jobs",)) as events:
            while True:
                event = events.receive(timeout=WAIT)
                job = event.data.job
                if event.kind is EventKind.JOB_FINISHED and job.trigger is not None:
                    break
    finally:
        client.remove_schedule(info.schedule.schedule_id)
    groups = {(g.workflow_path, g.trigger): g for g in client.history.groups()}
    path = by_hand.workflow_path
    assert groups[(path, label)].runs == 1 and groups[(path, label)].completed == 1
    assert groups[(path, None)].runs >= 1
    assert [r.run_id for r in client.history.runs(trigger=label)] == [job.job_id]
    manual = client.history.runs(trigger="manual", workflow=path, status=["completed"])
    assert by_hand.job_id in [r.run_id for r in manual]
    today = [d for d in client.history.daily(days=1) if d.workflow_path == path]
    assert today and today[0].completed >= 2
    [durations] = client.history.cell_durations(workflow=path)
    assert durations.cells >= 4 and 0 < durations.p50_s <= durations.p95_s <= durations.max_s


def test_a_paused_robot_takes_no_job_until_unpaused(client: Client) -> None:
    """pause_robot drains the robot at once (status draining): a job submitted meanwhile is
    assigned only after unpause_robot; unknown robots are 409."""
    paused = client.pause_robot("robot-a")
    try:
        assert paused.status.value == "draining"
        assert {r.robot_id: r.status.value for r in client.robots()}["robot-a"] == "draining"
        job = client.submit("add.ipynb")
        assert client.get(job.job_id).status is RunStatus.QUEUED
    finally:
        unpaused_at = datetime.now(UTC)
        client.unpause_robot("robot-a")
    done = client.wait(job.job_id, timeout=WAIT)
    assert done.status is RunStatus.COMPLETED
    assert done.assigned_at is not None and done.assigned_at >= unpaused_at
    with pytest.raises(ClientError, match="robot nobody is not online") as err:
        client.pause_robot("nobody")
    assert err.value.status == 409


def test_paused_submissions_are_refused_until_unpaused(client: Client) -> None:
    """pause_submissions makes submit a 503 ClientError and info() say so; unpaused, a
    submission is taken again."""
    assert client.pause_submissions().submissions_paused
    try:
        with pytest.raises(ClientError, match="submissions are paused") as err:
            client.submit("add.ipynb")
        assert err.value.status == 503 and client.info().submissions_paused
    finally:
        assert not client.pause_submissions(False).submissions_paused
    assert client.submit("add.ipynb", wait=True, timeout=WAIT).status is RunStatus.COMPLETED


def test_workflows_are_listed_and_one_tells_its_parameters(
    client: Client, cluster: ServiceThread, tmp_path: Path
) -> None:
    """workflows() names the served notebooks (hidden folders left out); workflow(path)
    gives its parameter schema; a missing one is 404, a link leading outside the directory
    422."""
    root = Path(cluster.service.workflows_dir)
    hidden = root / ".ipynb_checkpoints"
    hidden.mkdir(exist_ok=True)
    write_notebook(hidden / "add-checkpoint.ipynb", ["x = 1"])
    paths = [w.path for w in client.workflows()]
    assert {"add.ipynb", "checked.ipynb", "sleepy.ipynb"} <= set(paths)
    assert not any(p.startswith(".") for p in paths)
    add = client.workflow("add.ipynb")
    assert add.parameters is not None and add.parameters.params["n"].type_repr == "int"
    assert add.parameters.problem("n", "x") == "parameter 'n': expected int, got 'x'"
    with pytest.raises(ClientError, match=r"no workflow nope\.ipynb") as err:
        client.workflow("nope.ipynb")
    assert err.value.status == 404
    elsewhere = write_notebook(tmp_path / "elsewhere.ipynb", ["x = 1"])
    (root / "link.ipynb").symlink_to(elsewhere)
    try:
        assert "link.ipynb" not in [w.path for w in client.workflows()]
        with pytest.raises(ClientError, match="outside the workflows directory") as err:
            client.workflow("link.ipynb")
        assert err.value.status == 422
    finally:
        (root / "link.ipynb").unlink()
