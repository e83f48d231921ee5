"""`casare-nb doctor`: pre-flight checks as real subprocesses, on fresh and broken state
directories."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from helpers import EXIT_FAILED, describe, run_cli, state_dir

from casare_nb.cli.ops import check_chromium, check_clock


def free_port() -> str:
    """A port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def lines_by_what(stdout: str) -> dict[str, str]:
    """``what -> status`` of each check line (``ok    what: detail``)."""
    found = {}
    for line in stdout.splitlines():
        status, _, rest = line.partition(" ")
        what, sep, _ = rest.strip().partition(":")
        if sep and status in ("ok", "warn", "fail"):
            found[what] = status
    return found


def test_doctor_on_a_fresh_state_dir_passes_with_a_token_warning(tmp_path: Path) -> None:
    """A state directory not created yet: Python, a real kernel, ports, state dir and clock
    are ok; no tokens is a warning; exit 0."""
    proc = run_cli(tmp_path, "doctor", "--port", free_port(), "--http-port", free_port())
    assert proc.returncode == 0, describe(proc)
    got = lines_by_what(proc.stdout)
    assert got["python"] == "ok"
    assert got["kernel"] == "ok"
    assert got["ports"] == "ok"
    assert got["state dir"] == "ok"
    assert got["clock"] == "ok"
    assert got["tokens"] == "warn"
    assert "chromium" in got
    assert "does not exist yet; it can be created" in proc.stdout
    assert proc.stdout.rstrip().splitlines()[-1].endswith("0 fail")


def test_doctor_fails_on_a_port_in_use_and_warns_on_an_open_state_dir(tmp_path: Path) -> None:
    """A port taken by another socket fails (exit 1); a state dir readable by others is a
    warning; a configured token is ok; --json lists every check."""
    state = state_dir(tmp_path)
    created = run_cli(tmp_path, "token", "create", "robot-1", "--role", "robot")
    assert created.returncode == 0, describe(created)
    os.chmod(state, 0o755)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli(
            tmp_path,
            "doctor",
            "--no-kernel",
            "--json",
            "--port",
            str(port),
            "--http-port",
            free_port(),
        )
    assert proc.returncode == EXIT_FAILED, describe(proc)
    checks = {c["what"]: c for c in json.loads(proc.stdout)}
    assert checks["ports"]["status"] == "fail"
    assert f"127.0.0.1:{port} in use" in checks["ports"]["detail"]
    assert checks["state dir"]["status"] == "warn" and "0755" in checks["state dir"]["detail"]
    assert checks["tokens"]["status"] == "ok" and "robot-1" in checks["tokens"]["detail"]
    assert "kernel" not in checks


def test_doctor_checks_the_ports_the_orchestrators_settings_name(tmp_path: Path) -> None:
    """Without --port, doctor checks the ports of ./.env's CASARE_ORCH_*; bad settings fail."""
    state_dir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / ".env").write_text(
            f"CASARE_ORCH_PORT={port}\nCASARE_ORCH_HTTP_PORT={free_port()}\n"
        )
        proc = run_cli(tmp_path, "doctor", "--no-kernel", "--no-auth", "--json")
    assert proc.returncode == EXIT_FAILED, describe(proc)
    checks = {c["what"]: c for c in json.loads(proc.stdout)}
    assert f"127.0.0.1:{port} in use" in checks["ports"]["detail"]
    (tmp_path / "orchestrator.yaml").write_text("prot: 1\n")
    bad = run_cli(tmp_path, "doctor", "--no-kernel", "--no-auth", "--json")
    checks = {c["what"]: c for c in json.loads(bad.stdout)}
    assert bad.returncode == EXIT_FAILED, describe(bad)
    assert checks["ports"]["status"] == "fail" and "prot" in checks["ports"]["detail"]


def test_doctor_fails_when_the_state_dir_is_a_file(tmp_path: Path) -> None:
    """A state directory path that is a file fails the check; --no-auth skips tokens."""
    (tmp_path / "state").write_text("not a directory")
    proc = run_cli(
        tmp_path,
        "doctor",
        "--no-kernel",
        "--no-auth",
        "--port",
        free_port(),
        "--http-port",
        free_port(),
    )
    assert proc.returncode == EXIT_FAILED, describe(proc)
    got = lines_by_what(proc.stdout)
    assert got["state dir"] == "fail"
    assert "tokens" not in got


def test_chromium_absent_is_only_a_warning(tmp_path: Path) -> None:
    """No browser at the path: a warning naming browser nodes, not a failure."""
    check = check_chromium(str(tmp_path / "no-chromium"))
    assert check.status == "warn" and "browser nodes" in check.detail


def test_clock_warns_on_state_files_from_the_future(tmp_path: Path) -> None:
    """A state file dated a day ahead makes the clock check a warning naming it."""
    (tmp_path / "history.duckdb").write_text("")
    ahead = os.stat(tmp_path / "history.duckdb").st_mtime + 86_400
    os.utime(tmp_path / "history.duckdb", (ahead, ahead))
    check = check_clock(tmp_path)
    assert check.status == "warn" and "history.duckdb" in check.detail
