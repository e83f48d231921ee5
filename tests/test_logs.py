"""Log files (casare_nb/logs.py): ``casare-nb orchestrator`` and ``casare-nb robot`` as real
subprocesses write rotating, private log files under the state directory, JSON lines on
request, the audit records in ``audit.log``; bad logging options are one-line errors."""

from __future__ import annotations

import json
import logging
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ERROR_PREFIX, EXIT_BAD_INPUT, cli_env, describe, run_cli

from casare_nb import Client, ClientError
from casare_nb.logs import AUDIT_FILE, LogSettings, setup_logging
from casare_nb.protocol import EventKind

START_TIMEOUT = 60.0


class Service:
    """A ``casare-nb ... orchestrator`` subprocess in ``base`` (state: ``base/state``)."""

    def __init__(self, base: Path, *args: str) -> None:
        (base / "workflows").mkdir(exist_ok=True)
        self.base = base
        self.logs = base / "state" / "logs"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "casare_nb.cli", *args],
            cwd=base,
            env=cli_env(base),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def started(self, needle: str = "runtime file") -> Service:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if needle in line:
                return self
        _, err = self.proc.communicate(timeout=30)
        raise AssertionError(f"no {needle!r}: exit {self.proc.returncode}\n{err}")

    def client(self, token: str | None = None) -> Client:
        return Client.local(self.base / "state", token=token)

    def terminate(self) -> str:
        """SIGTERM (a graceful stop); its stderr."""
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        return err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    try:
        yield started
    finally:
        for service in reversed(started):
            service.kill()


def orchestrator(
    base: Path, services: list[Service], *args: str, group: tuple[str, ...] = ()
) -> Service:
    service = Service(
        base,
        *group,
        "orchestrator",
        "--port",
        "0",
        "--http-port",
        "0",
        "--workflows",
        "workflows",
        *args,
    )
    services.append(service)
    return service.started()


def private(path: Path, mode: int) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == mode


def test_the_orchestrator_writes_its_log_file_and_rotates_it_at_a_small_size(
    tmp_path: Path, services: list[Service]
) -> None:
    """At debug (the group's --log-level) with --log-max-bytes 1024 --log-backups 2:
    orchestrator.log is rotated into .1 and .2 (no .3), each rotated file stays near the
    size, the last line is the stop; the folder is 0700 and the files 0600."""
    service = orchestrator(
        tmp_path,
        services,
        "--log-max-bytes",
        "1024",
        "--log-backups",
        "2",
        group=("--log-level", "debug"),
    )
    with service.client() as client:
        for _ in range(5):
            client.jobs()
    service.terminate()
    logs = service.logs
    names = sorted(p.name for p in logs.iterdir())
    assert {"orchestrator.log", "orchestrator.log.1", "orchestrator.log.2"} <= set(names)
    assert "orchestrator.log.3" not in names
    for name in ("orchestrator.log.1", "orchestrator.log.2"):
        assert (logs / name).stat().st_size <= 1024 + 600  # one record may go past the size
    assert "stopped" in (logs / "orchestrator.log").read_text().splitlines()[-1]
    assert (
        "DEBUG"
        in (logs / "orchestrator.log.2").read_text() + (logs / "orchestrator.log.1").read_text()
    )
    assert private(logs, 0o700)
    assert all(private(p, 0o600) for p in logs.iterdir())


def test_json_log_lines_parse_and_audit_records_land_in_audit_log(
    tmp_path: Path, services: list[Service]
) -> None:
    """--log-format json: every line of orchestrator.log is one JSON object with time,
    level, logger and message; a token created through the API is an audit record in
    audit.log (one JSON object a line) and carries its fields as extra in orchestrator.log."""
    service = orchestrator(tmp_path, services, "--log-format", "json", "--log-level", "info")
    with service.client() as client:
        client.create_token("robot-9", "robot")
    service.terminate()
    lines = [
        json.loads(line) for line in (service.logs / "orchestrator.log").read_text().splitlines()
    ]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert all(line["time"].endswith("+00:00") for line in lines)
    audited = [line for line in lines if line["logger"] == "casare_nb.audit"]
    assert any(line.get("audit", {}).get("action") == "create_token" for line in audited), audited
    records = [json.loads(line) for line in (service.logs / AUDIT_FILE).read_text().splitlines()]
    created = [r for r in records if r["action"] == "create_token"]
    assert created and created[0]["target"] == "robot-9" and created[0]["outcome"] == "ok"


def test_audit_records_are_written_whatever_the_log_level(
    tmp_path: Path, services: list[Service]
) -> None:
    """At --log-level error, the INFO audit record of a created token and the WARNING one of
    a refused token still land in audit.log, while orchestrator.log holds neither."""
    service = orchestrator(tmp_path, services, "--log-level", "error")
    with service.client() as client:
        client.create_token("someone", "user")
    with service.client(token="not-a-token") as stranger, pytest.raises(ClientError):
        stranger.jobs()
    service.terminate()
    records = [json.loads(line) for line in (service.logs / AUDIT_FILE).read_text().splitlines()]
    actions = {(r["action"], r["outcome"]) for r in records}
    assert ("create_token", "ok") in actions and ("authenticate", "failed") in actions
    assert "casare_nb.audit" not in (service.logs / "orchestrator.log").read_text()


@pytest.mark.slow
def test_a_robot_writes_robot_id_log_under_the_state_directory(
    tmp_path: Path, services: list[Service]
) -> None:
    """`casare-nb robot --log-level info` writes state/logs/robot-<id>.log (0600) with its
    connection to the orchestrator, besides stderr."""
    service = orchestrator(tmp_path, services, "--log-level", "warning")
    with service.client() as client:
        token = client.create_token("r-7", "robot")
        info = client.info()
        with client.subscribe(("robots",)) as events:
            robot = Service(
                tmp_path,
                "robot",
                "--orchestrator",
                info.ws_url,
                "--token",
                token,
                "--robot-id",
                "r-7",
                "--pool-size",
                "1",
                "--work-dir",
                str(tmp_path / "r-7"),
                "--log-level",
                "info",
            )
            services.append(robot)
            while True:
                event = events.receive(timeout=START_TIMEOUT)
                seen = getattr(event.data, "robot", None)
                if event.kind is EventKind.ROBOT_ONLINE and seen and seen.robot_id == "r-7":
                    break
    robot.terminate()
    log = service.logs / "robot-r-7.log"
    assert log.is_file() and private(log, 0o600)
    text = log.read_text()
    assert "INFO" in text and "casare_nb.robot" in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--log-format", "xml"), "xml"),
        (("--log-max-bytes", "10"), "10"),
        (("--log-backups", "0"), "0"),
        (("--log-level", "loud"), "loud"),
    ],
)
def test_bad_logging_options_are_one_line_errors(
    tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    """A bad --log-format, --log-max-bytes, --log-backups or --log-level: exit 2, one line
    naming the value, nothing started (no log folder)."""
    for command in ("orchestrator", "robot"):
        proc = run_cli(tmp_path, command, *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == EXIT_BAD_INPUT and len(lines) == 1, describe(proc)
        assert lines[0].startswith(ERROR_PREFIX) and needle in lines[0]
    assert not (tmp_path / "state" / "logs").exists()


def test_a_log_folder_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    """state/logs being a file: the orchestrator exits 2 with one line naming the folder."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "logs").write_text("not a folder")
    (tmp_path / "workflows").mkdir()
    proc = run_cli(
        tmp_path, "orchestrator", "--port", "0", "--http-port", "0", "--workflows", "workflows"
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == EXIT_BAD_INPUT and len(lines) == 1, describe(proc)
    assert "cannot write the log files" in lines[0] and "logs" in lines[0]


def test_setup_logging_again_replaces_its_handlers_and_json_keeps_extra_fields(
    tmp_path: Path,
) -> None:
    """A second setup_logging call replaces the first's handlers (one line a record, in the
    new file only), and JSON lines carry a record's extra fields."""
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        first = setup_logging(LogSettings(), folder=tmp_path / "one", file_name="x.log")
        second = setup_logging(
            LogSettings(format="json"), folder=tmp_path / "two", file_name="x.log"
        )
        logging.getLogger("casare_nb.test").info("hello %s", "there", extra={"job_id": "j-1"})
        assert first is not None and second is not None
        assert "hello" not in first.read_text()
        (line,) = second.read_text().splitlines()
        record = json.loads(line)
        assert record["message"] == "hello there" and record["job_id"] == "j-1"
        assert record["logger"] == "casare_nb.test" and record["level"] == "INFO"
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)
