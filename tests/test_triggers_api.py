"""Schedules, triggers and webhooks through the real HTTP API: the Client, raw HTTP calls and
the ``casare-nb schedule`` / ``trigger`` commands against an orchestrator and a robot served
in a thread of their own (ServiceThread), on loopback."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
from helpers import ERROR_PREFIX, EXIT_BAD_INPUT, EXIT_OK, describe, run_cli, write_notebook

from casare_nb import Client, ClientError
from casare_nb.core.models import RunStatus, TriggerKind
from casare_nb.orchestrator.service import OrchestratorService
from casare_nb.robot.main import local_robot
from casare_nb.service_thread import ServiceThread

WAIT = 90.0
SECRET = "hook-secret-for-tests"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceThread]:
    root = tmp_path_factory.mktemp("triggers")
    workflows = root / "workflows"
    workflows.mkdir()
    write_notebook(
        workflows / "report.ipynb",
        ["label = f'{region}-{count}'"],
        params="region = 'EU'\ncount = 1",
    )
    write_notebook(
        workflows / "producer.ipynb",
        ["import casare_nb\ncasare_nb.output('rows', 42)\ncasare_nb.output('name', 'sales')"],
    )
    write_notebook(
        workflows / "consumer.ipynb",
        ["assert rows == 42 and previous_run_id"],
        params="rows = 0\nprevious_run_id = ''",
    )
    write_notebook(workflows / "secretive.ipynb", ["x = 1"], params="api_key: Secret = ''")
    write_notebook(
        workflows / "load.ipynb",
        ["rows = open(file_path).read().count('\\n')"],
        params="file_path = ''",
    )
    service = OrchestratorService(
        root / "state",
        port=0,
        http_port=0,
        workflows_dir=workflows,
        heartbeat_interval_s=0.5,
        environ={"HOOK_SECRET": SECRET},
    )
    robot = local_robot("robot-a", pool_size=1, work_dir=root / "robot-a", heartbeat_interval_s=0.5)
    with ServiceThread(service, robots=[robot]) as thread:
        yield thread


@pytest.fixture
def client(served: ServiceThread) -> Iterator[Client]:
    with served.client() as c:
        yield c
        for info in c.schedules():
            c.remove_schedule(info.schedule.schedule_id)
        for t in c.triggers():
            c.remove_trigger(t.trigger.trigger_id)


def signed(body: bytes, delivery: str | None = None, secret: str = SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-Casare-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}
    if delivery is not None:
        headers["X-Casare-Delivery"] = delivery
    return headers


# -- schedules -----------------------------------------------------------------------------


def test_cron_schedule_in_a_time_zone_lists_its_next_three_fire_times(client: Client) -> None:
    """A weekday 06:00 Europe/Berlin schedule answers three next fire times, each a weekday
    at 06:00 Berlin wall time, and is listed with its parameters and priority."""
    info = client.add_schedule(
        "report.ipynb",
        cron="0 6 * * 1-5",
        timezone="Europe/Berlin",
        raw_parameters={"region": "US"},
        priority="high",
    )
    berlin = [d.astimezone(ZoneInfo("Europe/Berlin")) for d in info.next_fire_times]
    assert len(berlin) == 3 and berlin == sorted(berlin)
    assert all((d.hour, d.minute) == (6, 0) and d.weekday() < 5 for d in berlin)
    assert berlin[0] > datetime.now(UTC)
    listed = {i.schedule.schedule_id: i for i in client.schedules()}
    mine = listed[info.schedule.schedule_id]
    assert mine.schedule.raw_parameters == {"region": "US"}
    assert mine.schedule.priority.value == "high" and mine.next_fire_times == info.next_fire_times


def test_upcoming_merges_schedules_and_leaves_out_paused_ones(client: Client) -> None:
    """upcoming() is the soonest-first merge of the active schedules' due times; a paused
    schedule drops out and comes back on resume; a removed one is gone (404)."""
    hourly = client.add_schedule("report.ipynb", every="1h").schedule
    slower = client.add_schedule("report.ipynb", every="90m").schedule
    coming = client.upcoming(6)
    assert [u.due_at for u in coming] == sorted(u.due_at for u in coming)
    assert {u.schedule_id for u in coming} == {hourly.schedule_id, slower.schedule_id}
    client.pause_schedule(hourly.schedule_id)
    assert {u.schedule_id for u in client.upcoming(6)} == {slower.schedule_id}
    assert client.schedule(hourly.schedule_id).next_fire_times == []
    client.resume_schedule(hourly.schedule_id)
    assert hourly.schedule_id in {u.schedule_id for u in client.upcoming(6)}
    client.remove_schedule(slower.schedule_id)
    with pytest.raises(ClientError) as err:
        client.schedule(slower.schedule_id)
    assert err.value.status == 404


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "0 6 * * 1-5", "timezone": "Mars/Olympus"}, "time zone"),
        ({"every": "0"}, "more than 0"),
        ({"every": "soon"}, "invalid duration"),
        ({"at": "2020-01-01T09:00"}, "past"),
        ({}, "exactly one"),
        ({"cron": "0 6 * * *", "every": "1h"}, "exactly one"),
        ({"every": "1h", "raw_parameters": {"nope": "1"}}, "nope"),
        ({"every": "1h", "raw_parameters": {"count": "many"}}, "count"),
    ],
)
def test_a_bad_schedule_is_refused_with_one_line_and_nothing_stored(
    client: Client, fields: dict[str, object], reason: str
) -> None:
    """Invalid cron, unknown time zone, every 0, a past date, not exactly one timetable or a
    bad parameter: 422 with a one-line reason naming the problem, and no schedule stored."""
    with pytest.raises(ClientError) as err:
        client.add_schedule("report.ipynb", **fields)  # type: ignore[arg-type]
    assert err.value.status == 422, err.value
    assert reason in str(err.value) and "\n" not in str(err.value)
    assert client.schedules() == []


def test_a_schedule_of_a_missing_workflow_or_with_a_secret_is_refused(client: Client) -> None:
    """A workflow that does not exist, or a secret parameter value, cannot make a schedule."""
    with pytest.raises(ClientError, match="no-such") as missing:
        client.add_schedule("no-such.ipynb", every="1h")
    with pytest.raises(ClientError, match="secret") as secret:
        client.add_schedule("secretive.ipynb", every="1h", raw_parameters={"api_key": "k"})
    assert missing.value.status == secret.value.status == 422
    assert client.schedules() == []


def test_a_due_schedule_submits_a_job_that_records_its_schedule_and_due_time(
    client: Client,
) -> None:
    """A schedule due in a moment submits one job like submit would: validated parameters,
    source "schedule", the schedule id and due time on the job and in its fires."""
    at = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0, tzinfo=None)
    info = client.add_schedule(
        "report.ipynb", at=at.isoformat(), raw_parameters={"count": "3"}, timezone="UTC"
    )
    sid = info.schedule.schedule_id
    deadline = time.monotonic() + WAIT
    while not client.fires(sid):
        assert time.monotonic() < deadline, "the schedule did not fire"
        time.sleep(0.05)
    fire = client.fires(sid)[0]
    assert fire.outcome == "submitted" and fire.due_at == at.replace(tzinfo=UTC)
    assert fire.job_id is not None
    job = client.wait(fire.job_id, timeout=WAIT)
    assert job.status is RunStatus.COMPLETED and job.parameters == {"count": 3}
    assert job.source == "schedule" and job.trigger is not None
    assert (job.trigger.kind, job.trigger.id) == (TriggerKind.SCHEDULE, sid)
    assert job.trigger.due_at == at.replace(tzinfo=UTC)


# -- webhooks --------------------------------------------------------------------------------


def test_webhook_trigger_prints_its_url_and_a_signed_delivery_runs_the_workflow(
    client: Client,
) -> None:
    """A webhook trigger answers its /hooks URL; a delivery signed with the secret submits
    the workflow with the JSON body as parameters and the delivery recorded on the job."""
    info = client.add_trigger("webhook", "report.ipynb", secret_env="HOOK_SECRET")
    assert info.url == f"{client.url}/hooks/{info.trigger.trigger_id}"
    body = json.dumps({"region": "APAC", "count": 7}).encode()
    answer = httpx.post(info.url, content=body, headers=signed(body, "d-1"), timeout=WAIT)
    assert answer.status_code == 200, answer.text
    job = client.wait(answer.json()["job_id"], timeout=WAIT)
    assert job.status is RunStatus.COMPLETED and job.parameters == {"region": "APAC", "count": 7}
    assert job.source == "webhook" and job.trigger is not None
    assert (job.trigger.id, job.trigger.delivery_id) == (info.trigger.trigger_id, "d-1")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-Casare-Signature-256": "sha256=xyz"}, 401),
        ({"X-Casare-Signature-256": "sha1=" + "0" * 40}, 401),
        ({"X-Casare-Signature-256": "sha256=" + "0" * 64}, 401),
    ],
)
def test_webhook_without_a_valid_signature_is_401_and_submits_nothing(
    client: Client, headers: dict[str, str], status: int
) -> None:
    """Missing, malformed, sha1= and wrong signatures answer 401 over HTTP; no job appears."""
    info = client.add_trigger("webhook", "report.ipynb", secret_env="HOOK_SECRET")
    before = len(client.jobs(limit=10_000))
    assert info.url is not None
    answer = httpx.post(info.url, content=b"{}", headers=headers, timeout=WAIT)
    assert answer.status_code == status and "detail" in answer.json()
    assert len(client.jobs(limit=10_000)) == before


def test_webhook_body_not_json_or_not_valid_is_422(client: Client) -> None:
    """A signed body that is not JSON, or whose values fail the schema, answers 422 with the
    reason; nothing is submitted."""
    info = client.add_trigger("webhook", "report.ipynb", secret_env="HOOK_SECRET")
    assert info.url is not None
    before = len(client.jobs(limit=10_000))
    for body, needle in ((b"region=EU", "JSON"), (b'{"count": "many"}', "count")):
        answer = httpx.post(info.url, content=body, headers=signed(body), timeout=WAIT)
        assert answer.status_code == 422 and needle in answer.json()["detail"], answer.text
    assert len(client.jobs(limit=10_000)) == before


def test_unknown_webhook_answers_like_a_bad_signature(client: Client) -> None:
    """A delivery to a trigger id that does not exist answers 401, as a forged signature
    to a live one would: ids cannot be probed."""
    answer = httpx.post(
        f"{client.url}/hooks/hook-nope", content=b"{}", headers=signed(b"{}"), timeout=WAIT
    )
    assert answer.status_code == 401
    assert answer.json()["detail"] == "signature does not match the body"


# -- chaining, outputs, file watch ----------------------------------------------------------


def test_on_success_chain_passes_the_run_id_and_recorded_outputs(client: Client) -> None:
    """producer → consumer on success: the consumer gets previous_run_id and the output
    ``rows`` the producer recorded with casare_nb.output, which the API also answers."""
    client.add_trigger("on_success", "producer.ipynb", run="consumer.ipynb")
    first = client.submit("producer.ipynb", wait=True, timeout=WAIT)
    assert first.status is RunStatus.COMPLETED
    assert client.outputs(first.job_id) == {"rows": 42, "name": "sales"}
    deadline = time.monotonic() + WAIT
    while True:
        chained = [
            j
            for j in client.jobs(limit=200)
            if j.trigger is not None and j.trigger.previous_job_id == first.job_id
        ]
        if chained:
            break
        assert time.monotonic() < deadline, "the chained job was not submitted"
        time.sleep(0.05)
    job = client.wait(chained[0].job_id, timeout=WAIT)
    assert job.status is RunStatus.COMPLETED, job.error_message
    assert job.parameters == {"rows": 42, "previous_run_id": first.job_id}
    assert job.source == "chain"


def test_file_watch_trigger_submits_a_new_csv_with_its_path(client: Client, tmp_path: Path) -> None:
    """A file-watch trigger added over HTTP submits load.ipynb once for a new matching file,
    with the file's path as file_path, and nothing for a file that does not match."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    info = client.add_trigger("file_watch", "load.ipynb", path=str(inbox), pattern="*.csv")
    assert info.trigger.watch_path == str(inbox) and info.url is None
    (inbox / "notes.txt").write_text("ignored\n")
    (inbox / "sales.csv").write_text("a,b\n1,2\n")
    deadline = time.monotonic() + WAIT
    while not (mine := [j for j in client.jobs(limit=200) if j.source == "file_watch"]):
        assert time.monotonic() < deadline, "the new file was not submitted"
        time.sleep(0.05)
    job = client.wait(mine[0].job_id, timeout=WAIT)
    assert job.status is RunStatus.COMPLETED, job.error_message
    assert job.parameters == {"file_path": str(inbox / "sales.csv")}
    assert job.trigger is not None and job.trigger.file == str(inbox / "sales.csv")
    assert [j.job_id for j in client.jobs(limit=200) if j.source == "file_watch"] == [job.job_id]


def test_bad_triggers_are_refused_with_one_line(client: Client, tmp_path: Path) -> None:
    """A webhook without --secret-env, a chain without --run, a file watch of a missing
    directory or of a workflow without the file parameter: 422 each, nothing stored."""
    cases = [
        ({"kind": "webhook"}, "secret-env"),
        ({"kind": "on_success"}, "--run"),
        ({"kind": "file_watch", "path": str(tmp_path / "missing")}, "not a directory"),
        ({"kind": "file_watch", "path": str(tmp_path)}, "file_path"),
    ]
    for fields, needle in cases:
        kind = str(fields.pop("kind"))
        with pytest.raises(ClientError) as err:
            client.add_trigger(kind, "report.ipynb", **fields)
        assert err.value.status == 422 and needle in str(err.value), err.value
    assert client.triggers() == []


# -- the command line -----------------------------------------------------------------------


@pytest.mark.slow
def test_schedule_and_trigger_commands_against_the_running_orchestrator(
    served: ServiceThread, client: Client, tmp_path: Path
) -> None:
    """`schedule add` prints the next fire times, `list` and `upcoming` show them (not while
    paused), a bad cron or --every 0 is one error line with exit 2, `trigger add webhook`
    prints the URL, `trigger list` shows it, `trigger disable` answers."""
    state = ["--state-dir", str(served.service.state_dir)]
    added = run_cli(
        tmp_path,
        "schedule",
        "add",
        "report.ipynb",
        "--cron",
        "0 6 * * 1-5",
        "--tz",
        "Europe/Berlin",
        "-p",
        "region",
        "EU",
        "--priority",
        "high",
        *state,
    )
    assert added.returncode == EXIT_OK, describe(added)
    assert added.stdout.count("next  ") == 3 and "CE" in added.stdout
    sid = added.stdout.split()[1]
    listed = run_cli(tmp_path, "schedule", "list", *state)
    assert sid in listed.stdout and "active" in listed.stdout, describe(listed)
    paused = run_cli(tmp_path, "schedule", "pause", sid, *state)
    assert paused.stdout.strip() == f"schedule {sid} paused", describe(paused)
    assert run_cli(tmp_path, "schedule", "upcoming", *state).stdout.strip() == "nothing scheduled"
    run_cli(tmp_path, "schedule", "resume", sid, *state)
    coming = run_cli(tmp_path, "schedule", "upcoming", "-n", "2", *state)
    assert coming.stdout.count(sid) == 2 and "06:00:00 CE" in coming.stdout, describe(coming)
    bad = run_cli(tmp_path, "schedule", "add", "report.ipynb", "--cron", "0 25 * * *", *state)
    assert bad.returncode == EXIT_BAD_INPUT and bad.stderr.startswith(ERROR_PREFIX)
    assert len(bad.stderr.strip().splitlines()) == 1, describe(bad)
    zero = run_cli(tmp_path, "schedule", "add", "report.ipynb", "--every", "0", *state)
    assert zero.returncode == EXIT_BAD_INPUT and "more than 0" in zero.stderr, describe(zero)
    hook = run_cli(
        tmp_path, "trigger", "add", "webhook", "report.ipynb", "--secret-env", "HOOK_SECRET", *state
    )
    assert hook.returncode == EXIT_OK and "/hooks/hook-" in hook.stdout, describe(hook)
    hook_id = hook.stdout.split()[1]
    listed_hooks = run_cli(tmp_path, "trigger", "list", *state)
    assert hook_id in listed_hooks.stdout and "/hooks/" in listed_hooks.stdout
    disabled = run_cli(tmp_path, "trigger", "disable", hook_id, *state)
    assert disabled.stdout.strip() == f"trigger {hook_id} disabled", describe(disabled)
    removed = run_cli(tmp_path, "schedule", "remove", sid, *state)
    assert removed.returncode == EXIT_OK, describe(removed)
    assert sid not in run_cli(tmp_path, "schedule", "list", *state).stdout


@pytest.mark.slow
def test_a_flood_of_1000_webhook_calls_is_all_accounted_for(client: Client) -> None:
    """1,000 signed deliveries over HTTP from 32 connections at once (plus 100 of them
    re-sent) give exactly 1,000 queued jobs, one per delivery id, and every re-sent one
    answers its first job. (Last in the module: its jobs stay queued.)"""
    info = client.add_trigger(
        "webhook", "report.ipynb", secret_env="HOOK_SECRET", tags=["nobody-has-this-tag"]
    )
    assert info.url is not None
    url = urlsplit(info.url)
    connections = threading.local()

    def send(i: int) -> tuple[int, dict[str, Any]]:
        con = getattr(connections, "con", None)
        if con is None:
            con = connections.con = http.client.HTTPConnection(url.hostname, url.port, timeout=WAIT)
        body = json.dumps({"count": i}).encode()
        con.request("POST", url.path, body=body, headers=signed(body, f"flood-{i}"))
        answer = con.getresponse()
        return answer.status, json.loads(answer.read())

    with ThreadPoolExecutor(32) as pool:
        first = list(pool.map(send, range(1000)))
        again = list(pool.map(send, range(100)))
    assert [status for status, _ in first] == [200] * 1000
    ids = [body["job_id"] for _, body in first]
    assert len(set(ids)) == 1000
    assert again == [(200, {**body, "duplicate": True}) for _, body in first[:100]]
    jobs = {j.job_id: j for j in client.jobs(RunStatus.QUEUED, limit=10_000)}
    mine = [jobs[i] for i in ids]
    assert sorted(j.parameters["count"] for j in mine) == list(range(1000))
    assert {j.trigger.delivery_id for j in mine if j.trigger} == {f"flood-{i}" for i in range(1000)}
