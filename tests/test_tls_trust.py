"""TLS trust: an orchestrator serving https/wss with a certificate from a CA made in the test
(trustme) on 127.0.0.1 port 0, and real ``casare-nb robot`` and client subprocesses that trust
that CA through ``--ca-file`` / ``CASARE_CA_FILE`` / ``connection.ca_file``. Without it a
robot stops after its first attempt with one line naming the cause (no endless retry)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from helpers import (
    ERROR_PREFIX,
    EXIT_BAD_INPUT,
    EXIT_OK,
    PROCESS_TIMEOUT,
    cli_env,
    describe,
    write_notebook,
)

from casare_nb import Client
from casare_nb.client.tls import ca_context
from casare_nb.orchestrator.service import OrchestratorService
from casare_nb.protocol import EventKind
from casare_nb.robot.config import ConfigError, load_config
from casare_nb.service_thread import ServiceThread

START_TIMEOUT = 60.0
UNVERIFIED = "cannot verify the TLS certificate of the orchestrator at"


@dataclass
class TlsStack:
    """An orchestrator serving TLS in a thread, and the files a client needs to trust it."""

    base: Path
    service: OrchestratorService
    ca_file: Path

    @property
    def admin(self) -> str:
        assert self.service.admin_token is not None
        return self.service.admin_token

    def client(self) -> Client:
        return Client(self.service.http_url, self.admin, ssl_context=ca_context(self.ca_file))

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``casare-nb ARGS`` as a subprocess (CASARE_HOME=<base>/state, no CASARE_CA_FILE
        unless ``env`` gives one)."""
        environ = cli_env(self.base, env)
        if not env or "CASARE_CA_FILE" not in env:
            environ.pop("CASARE_CA_FILE", None)
        return subprocess.run(
            [sys.executable, "-m", "casare_nb.cli", *args],
            cwd=self.base,
            env=environ,
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT,
            check=False,
        )

    def robot(self, robot_id: str, *extra: str) -> subprocess.Popen[str]:
        """A ``casare-nb robot`` process with its own robot token."""
        with self.client() as client:
            token = client.create_token(robot_id, "robot")
        environ = cli_env(self.base)
        environ.pop("CASARE_CA_FILE", None)
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "casare_nb.cli",
                "robot",
                "--orchestrator",
                self.service.ws_url,
                "--token",
                token,
                "--robot-id",
                robot_id,
                "--pool-size",
                "1",
                "--work-dir",
                str(self.base / robot_id),
                "--log-level",
                "warning",
                *extra,
            ],
            cwd=self.base,
            env=environ,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    base = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert, key = base / "ca.pem", base / "server.pem", base / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    workflows = base / "workflows"
    workflows.mkdir()
    write_notebook(workflows / "add.ipynb", ["y = n + 1", "print('y is', y)"], params="n: int = 1")
    service = OrchestratorService(
        base / "state", port=0, http_port=0, workflows_dir=workflows, tls_cert=cert, tls_key=key
    )
    with ServiceThread(service):
        assert service.ws_url.startswith("wss://127.0.0.1:")
        assert service.http_url.startswith("https://127.0.0.1:")
        yield TlsStack(base, service, ca_file)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused command (exit 2)."""
    assert proc.returncode == EXIT_BAD_INPUT, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), describe(proc)
    return lines[0]


def test_a_robot_with_ca_file_registers_and_runs_a_job(tls: TlsStack) -> None:
    """casare-nb robot --ca-file trusts the orchestrator's CA: it registers over wss and a
    job submitted over https completes on it."""
    with tls.client() as client, client.subscribe(("robots",)) as events:
        robot = tls.robot("tls-robot", "--ca-file", str(tls.ca_file))
        try:
            while True:
                event = events.receive(timeout=START_TIMEOUT)
                found = getattr(event.data, "robot", None)
                if event.kind is EventKind.ROBOT_ONLINE and found.robot_id == "tls-robot":
                    break
            job = client.submit("add.ipynb", {"n": 41}, wait=True, timeout=START_TIMEOUT)
            assert job.status.value == "completed" and job.robot_id == "tls-robot"
        finally:
            robot.terminate()
            out, err = robot.communicate(timeout=START_TIMEOUT)
    assert robot.returncode == 0, f"{out}\n{err}"


def test_a_robot_without_the_ca_stops_after_one_attempt_naming_the_cause(tls: TlsStack) -> None:
    """Without --ca-file the certificate fails verification: the robot exits 2 after its first
    attempt (no reconnecting) and its last line says why and what to give."""
    robot = tls.robot("untrusting")
    out, err = robot.communicate(timeout=START_TIMEOUT)
    assert robot.returncode == EXIT_BAD_INPUT, f"{out}\n{err}"
    last = err.strip().splitlines()[-1]
    assert last == (
        f"{ERROR_PREFIX} {UNVERIFIED} {tls.service.ws_url}: certificate verify failed: "
        "unable to get local issuer certificate; give the CA certificate that signed it with "
        "--ca-file, connection.ca_file or CASARE_CA_FILE"
    ), err
    assert "reconnecting" not in err and "Traceback" not in err
    assert tls.service.orchestrator.robot("untrusting") is None


def test_client_commands_trust_the_ca_from_ca_file_or_the_environment(tls: TlsStack) -> None:
    """casare-nb jobs --url https://... --ca-file works; without the CA it is one line naming
    the verification failure (exit 2); through the runtime file CASARE_CA_FILE is the CA; a
    CA file that does not exist is one line, exit 2."""
    with tls.client() as client:
        job = client.submit("add.ipynb", {"n": 1})
    url = ["--url", tls.service.http_url, "--token", tls.admin]
    listed = tls.cli("jobs", *url, "--ca-file", str(tls.ca_file))
    assert listed.returncode == EXIT_OK, describe(listed)
    assert job.job_id in listed.stdout
    untrusted = error_line(tls.cli("jobs", *url))
    assert untrusted.startswith(f"{ERROR_PREFIX} {UNVERIFIED} {tls.service.http_url}: ")
    assert "certificate verify failed" in untrusted and "--ca-file" in untrusted
    local = tls.cli("jobs", "--json", env={"CASARE_CA_FILE": str(tls.ca_file)})
    assert local.returncode == EXIT_OK, describe(local)
    assert job.job_id in local.stdout
    missing = error_line(tls.cli("jobs", *url, "--ca-file", "nowhere.pem"))
    assert "--ca-file" in missing and "does not exist" in missing


def test_submit_waits_over_https_and_wss_with_the_ca(tls: TlsStack) -> None:
    """casare-nb submit (the light client) posts over https and follows the job's events over
    wss, trusting --ca-file; without it, one line naming the cause."""
    url = ["--url", tls.service.http_url, "--token", tls.admin]
    with tls.client() as client, client.subscribe(("robots",)) as events:
        robot = tls.robot("tls-submit", "--ca-file", str(tls.ca_file))
        try:
            while True:
                event = events.receive(timeout=START_TIMEOUT)
                found = getattr(event.data, "robot", None)
                if event.kind is EventKind.ROBOT_ONLINE and found.robot_id == "tls-submit":
                    break
            done = tls.cli("submit", "add.ipynb", "--wait", *url, "--ca-file", str(tls.ca_file))
            assert done.returncode == EXIT_OK, describe(done)
            assert "completed" in done.stdout
        finally:
            robot.terminate()
            robot.communicate(timeout=START_TIMEOUT)
    refused = error_line(tls.cli("submit", "add.ipynb", *url))
    assert UNVERIFIED in refused and "certificate verify failed" in refused


def test_the_robot_config_takes_ca_file_relative_to_the_file(tmp_path: Path) -> None:
    """connection.ca_file in robot_config.yaml is relative to the file, CASARE_CA_FILE sets it
    too; a file that is not a PEM certificate is one ConfigError line."""
    (tmp_path / "conf").mkdir()
    config_file = tmp_path / "conf" / "robot_config.yaml"
    config_file.write_text(
        "robot:\n  robot_id: r1\n"
        "connection:\n  orchestrator_url: wss://127.0.0.1:8765\n  ca_file: ca.pem\n"
    )
    config = load_config(config_file, env={})
    assert config.connection.ca_file == tmp_path / "conf" / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "conf" / "ca.pem"))
    assert config.ssl_context() is not None
    from_env = load_config(config_file, env={"CASARE_CA_FILE": str(tmp_path / "other.pem")})
    assert from_env.connection.ca_file == tmp_path / "other.pem"
    (tmp_path / "other.pem").write_text("not a certificate\n")
    with pytest.raises(ConfigError) as bad:
        from_env.ssl_context()
    message = str(bad.value)
    assert "\n" not in message
    assert message.startswith(f"CA file {tmp_path / 'other.pem'} (connection.ca_file)")
