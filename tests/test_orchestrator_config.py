"""The orchestrator's settings (casare_nb/orchestrator/config.py): the shipped example loads,
flag > environment > .env > file > default, unknown keys and bad values are one line naming
the key and where it came from, and ``casare-nb orchestrator`` runs on what they say."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ERROR_PREFIX, EXIT_BAD_INPUT, cli_env, describe, run_cli

from casare_nb.core.thresholds import Limit, Thresholds
from casare_nb.orchestrator.config import (
    ConfigError,
    OrchestratorConfig,
    load_orchestrator_config,
)

EXAMPLE = Path(__file__).parent.parent / "docs" / "orchestrator_config.example.yaml"


def load(
    path: Path | None = None,
    env: dict[str, str] | None = None,
    dotenv: Path | None = None,
    **flags: object,
) -> OrchestratorConfig:
    return load_orchestrator_config(path, env=env or {}, dotenv=dotenv, overrides=flags)


def test_the_shipped_example_loads_and_says_the_defaults() -> None:
    """docs/orchestrator_config.example.yaml loads, and its values are the defaults (it
    documents them), thresholds included."""
    config = load(EXAMPLE)
    defaults = load()
    assert config.model_dump(exclude={"workflows_dir"}) == defaults.model_dump(
        exclude={"workflows_dir"}
    )
    assert config.workflows_dir == EXAMPLE.parent  # relative to the file
    assert config.thresholds == Thresholds()
    assert (config.port, config.http_port, config.logging.max_bytes) == (8765, 8766, 10 << 20)


def test_flag_beats_environment_beats_dotenv_beats_file_beats_default(tmp_path: Path) -> None:
    """Each key takes its value from the highest layer that sets it, key by key inside
    logging and thresholds too; relative paths in the file are relative to it."""
    file = tmp_path / "conf" / "orchestrator.yaml"
    file.parent.mkdir()
    file.write_text(
        "host: 0.0.0.0\nport: 1001\nhttp_port: 1002\ndrain_timeout_s: 5\nstate_dir: st\n"
        "logging: {level: warning, format: json, backup_count: 9}\n"
        "thresholds: {queue_depth: {warn: 3, critical: 4}}\n"
    )
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "CASARE_ORCH_PORT=2001\nCASARE_ORCH_HTTP_PORT=2002\nCASARE_ORCH_LOGGING__LEVEL=error\n"
        "CASARE_TOKEN=for-the-robot\nUNRELATED=1\n"
    )
    env = {"CASARE_ORCH_PORT": "3001", "CASARE_ORCH_LOGGING__FORMAT": "text", "OTHER": "x"}
    config = load(file, env, dotenv, port=4001, missed_heartbeats=None)
    assert config.port == 4001  # flag
    assert config.logging.format == "text"  # environment
    assert config.http_port == 2002 and config.logging.level == "error"  # .env
    assert config.host == "0.0.0.0" and config.drain_timeout_s == 5  # file
    assert config.logging.backup_count == 9  # file, beside the other logging keys
    assert config.state_dir == file.parent / "st"
    assert config.thresholds.queue_depth == Limit(warn=3, critical=4)
    assert config.thresholds.robot_cpu_percent == Thresholds().robot_cpu_percent
    assert config.missed_heartbeats == 3 and config.max_body_bytes == 1 << 20  # defaults


@pytest.mark.parametrize(
    ("where", "text", "expected"),
    [
        ("file", "prot: 1\n", "prot: unknown key (did you mean port?) (in "),
        ("file", "logging: {colour: red}\n", "logging.colour: unknown key (in "),
        ("file", "port: 70000\n", "port: Input should be less than or equal to 65535 (in "),
        ("file", "logging: {level: loud}\n", "logging.level: Input should be"),
        (
            "file",
            "thresholds: {queue_depth: {warn: 9, critical: 1}}\n",
            "thresholds.queue_depth: critical (1) is below warn (9)",
        ),
        ("file", "port: [1\n", "is not valid YAML"),
        ("file", "- a list\n", "must be a mapping of keys"),
        (
            "env",
            "CASARE_ORCH_PORTT=1",
            "portt: unknown key (did you mean port?) (from CASARE_ORCH_PORTT)",
        ),
        ("env", "CASARE_ORCH_HTTP_PORT=x", "http_port: Input should be a valid integer"),
        ("dotenv", "CASARE_ORCH_NOPE=2", "nope: unknown key (from CASARE_ORCH_NOPE in "),
        ("dotenv", "CASARE_ORCH_DRAIN_TIMEOUT_S=-1", "drain_timeout_s: Input should be greater"),
    ],
)
def test_unknown_keys_and_bad_values_are_one_line_naming_the_key(
    tmp_path: Path, where: str, text: str, expected: str
) -> None:
    """A bad key or value in the file, the environment or .env: one ConfigError line that
    names the key and where its value came from."""
    file = tmp_path / "orchestrator.yaml"
    dotenv = tmp_path / ".env"
    env: dict[str, str] = {}
    if where == "file":
        file.write_text(text)
    elif where == "dotenv":
        dotenv.write_text(text + "\n")
    else:
        name, value = text.split("=")
        env[name] = value
    with pytest.raises(ConfigError) as err:
        load(file if file.exists() else None, env, dotenv)
    message = str(err.value)
    assert "\n" not in message and expected in message, message


def test_a_bad_flag_value_and_a_missing_file_name_the_cause() -> None:
    """A flag out of range names the option; a --config that does not exist says so."""
    with pytest.raises(ConfigError, match=r"port: .* \(from option --port\)"):
        load(port=70000)
    with pytest.raises(ConfigError, match="does not exist"):
        load(Path("no/such/orchestrator.yaml"))


def test_the_command_refuses_a_bad_settings_file_with_one_line(tmp_path: Path) -> None:
    """`casare-nb orchestrator --config FILE` with an unknown key: exit 2, one line naming
    the key, nothing started (no state directory)."""
    (tmp_path / "bad.yaml").write_text("hots: 0.0.0.0\n")
    proc = run_cli(tmp_path, "orchestrator", "--config", "bad.yaml")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == EXIT_BAD_INPUT and len(lines) == 1, describe(proc)
    assert lines[0].startswith(ERROR_PREFIX) and "hots: unknown key" in lines[0]
    assert not (tmp_path / "state").exists()


def test_the_orchestrator_runs_on_its_settings_file_and_dotenv(tmp_path: Path) -> None:
    """./orchestrator.yaml (ports, workflows, state dir, log size) and ./.env (JSON log
    lines) are what the orchestrator runs with: its runtime file is in the configured state
    directory and its log lines are JSON."""
    (tmp_path / "flows").mkdir()
    (tmp_path / "orchestrator.yaml").write_text(
        "port: 0\nhttp_port: 0\nworkflows_dir: flows\nstate_dir: configured\n"
        "logging: {level: info, max_bytes: 4096}\n"
    )
    (tmp_path / ".env").write_text("CASARE_ORCH_LOGGING__FORMAT=json\n")
    env = cli_env(tmp_path)
    env.pop("CASARE_HOME")  # the state directory comes from the file
    proc = subprocess.Popen(
        [sys.executable, "-m", "casare_nb.cli", "orchestrator"],
        cwd=tmp_path,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "runtime file" in line:
                break
        state = tmp_path / "configured"
        info = json.loads((state / "orchestrator.json").read_text())
        assert info["workflows_dir"] == str(tmp_path / "flows")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        lines = (state / "logs" / "orchestrator.log").read_text().splitlines()
        assert lines and all(json.loads(line)["level"] for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
