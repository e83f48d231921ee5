"""Tests for casare_nb.robot.config: robot_config.yaml + CASARE_* environment + flag overrides."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from casare_nb.robot.config import ConfigError, RobotConfig, load_config

RUNBOOK_LAYOUT = """\
robot:
  robot_id: robot-eu-1          # stable across restarts
  robot_name: EU worker 1
  environment: production
  max_concurrent_jobs: 2
  tags: [browser, eu]
connection:
  orchestrator_url: ws://127.0.0.1:8765
job_execution:
  checkpoint_enabled: true
  progress_update_interval: 1.0
observability:
  audit_enabled: true
  resource_monitoring_enabled: true
"""

EXAMPLE_FILE = Path(__file__).resolve().parents[1] / "docs" / "robot_config.example.yaml"


def write(tmp_path: Path, text: str, name: str = "robot_config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(
    path: Path | None,
    *,
    env: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> RobotConfig:
    """load_config with an empty environment unless the test passes one."""
    return load_config(path, env=env or {}, overrides=overrides)


def test_runbook_layout_loads_as_is(tmp_path: Path) -> None:
    """The operations runbook's layout loads as is; its two settings without effect are named
    in notices."""
    cfg = load(write(tmp_path, RUNBOOK_LAYOUT))
    assert cfg.robot.robot_id == "robot-eu-1"
    assert cfg.robot.robot_name == "EU worker 1"
    assert cfg.robot.environment == "production"
    assert cfg.robot.max_concurrent_jobs == 2
    assert cfg.robot.tags == ["browser", "eu"]
    assert cfg.connection.orchestrator_url == "ws://127.0.0.1:8765"
    assert cfg.job_execution.checkpoint_enabled is True
    assert cfg.observability.resource_monitoring_enabled is True
    assert cfg.notices == [
        "job_execution.progress_update_interval has no effect in casare_nb (each cell is "
        "reported to the orchestrator as it ends); ignored",
        "observability.audit_enabled has no effect in casare_nb (what robots do is in the "
        "orchestrator's history and logs); ignored",
    ]


def test_cloud_keys_in_connection_are_ignored_with_a_notice(tmp_path: Path) -> None:
    """Cloud keys under connection are dropped (not kept, not dumped) and each yields a notice."""
    text = RUNBOOK_LAYOUT.replace(
        "  orchestrator_url: ws://127.0.0.1:8765\n",
        "  orchestrator_url: ws://127.0.0.1:8765\n"
        "  supabase_url: https://example.supabase.co\n"
        "  supabase_key: not-for-us\n"
        "  api_key: also-not-for-us\n"
        "  cloud_region: eu-west-1\n",
    )
    cfg = load(write(tmp_path, text))
    assert cfg.connection.orchestrator_url == "ws://127.0.0.1:8765"
    assert "connection.supabase_url is a cloud setting; casare_nb ignores it" in cfg.notices
    cloud = [notice for notice in cfg.notices if notice.startswith("connection.")]
    assert len(cloud) == 4
    assert all("is a cloud setting" in notice for notice in cloud)
    dumped = cfg.model_dump_json()
    assert "supabase" not in dumped
    assert "not-for-us" not in dumped


def test_unknown_key_in_robot_section_is_an_error_naming_it(tmp_path: Path) -> None:
    """A misspelt key under robot is a one-line ConfigError naming the key and the file."""
    path = write(tmp_path, RUNBOOK_LAYOUT.replace("  environment:", "  enviroment:"))
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert "robot.enviroment" in message
    assert "unknown key" in message
    assert str(path) in message
    assert "\n" not in message


def test_precedence_file_then_env_then_overrides(tmp_path: Path) -> None:
    """For one field, env beats the file and an override beats env; env tags are a comma list."""
    path = write(tmp_path, RUNBOOK_LAYOUT)
    assert load(path).robot.max_concurrent_jobs == 2

    env = {"CASARE_MAX_CONCURRENT_JOBS": "5", "CASARE_TAGS": "gpu, us ,"}
    from_env = load(path, env=env)
    assert from_env.robot.max_concurrent_jobs == 5
    assert from_env.robot.tags == ["gpu", "us"]
    assert from_env.robot.environment == "production"  # untouched fields still come from the file

    flagged = load(path, env=env, overrides={"max_concurrent_jobs": 7, "robot_name": None})
    assert flagged.robot.max_concurrent_jobs == 7
    assert flagged.robot.robot_name == "EU worker 1"  # a flag left as None changes nothing
    assert flagged.robot.tags == ["gpu", "us"]


def test_flat_env_name_beats_nested_form(tmp_path: Path) -> None:
    """CASARE_ROBOT__TAGS works, and CASARE_TAGS wins when both are set."""
    path = write(tmp_path, RUNBOOK_LAYOUT)
    assert load(path, env={"CASARE_ROBOT__TAGS": "a,b"}).robot.tags == ["a", "b"]
    both = {"CASARE_ROBOT__TAGS": "a,b", "CASARE_TAGS": "flat"}
    assert load(path, env=both).robot.tags == ["flat"]


def test_robot_name_defaults_to_robot_id(tmp_path: Path) -> None:
    """Without robot_name the robot is named by its robot_id."""
    cfg = load(write(tmp_path, "robot:\n  robot_id: r-1\n"))
    assert cfg.robot.robot_name == "r-1"


def test_kernel_pool_size_defaults_to_max_concurrent_jobs(tmp_path: Path) -> None:
    """kernel_pool_size follows max_concurrent_jobs unless set."""
    cfg = load(write(tmp_path, RUNBOOK_LAYOUT))
    assert cfg.robot.kernel_pool_size == 2
    set_explicitly = load(write(tmp_path, RUNBOOK_LAYOUT), overrides={"kernel_pool_size": 4})
    assert set_explicitly.robot.kernel_pool_size == 4


def test_non_websocket_url_is_rejected(tmp_path: Path) -> None:
    """An http:// orchestrator_url is a ConfigError naming the field and ws:// or wss://."""
    path = write(tmp_path, RUNBOOK_LAYOUT.replace("ws://127.0.0.1", "http://127.0.0.1"))
    with pytest.raises(ConfigError, match=r"connection\.orchestrator_url: .*ws:// or wss://"):
        load(path)


def test_zero_max_concurrent_jobs_is_rejected(tmp_path: Path) -> None:
    """max_concurrent_jobs: 0 is a ConfigError naming the field and the file."""
    path = write(
        tmp_path, RUNBOOK_LAYOUT.replace("max_concurrent_jobs: 2", "max_concurrent_jobs: 0")
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith("robot.max_concurrent_jobs: ")
    assert f"(in {path})" in str(info.value)


def test_wrong_type_names_field_and_file(tmp_path: Path) -> None:
    """A non-integer max_concurrent_jobs: one line with pydantic's reason, the field, the file."""
    path = write(
        tmp_path, RUNBOOK_LAYOUT.replace("max_concurrent_jobs: 2", "max_concurrent_jobs: two")
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith("robot.max_concurrent_jobs: Input should be a valid integer")
    assert message.endswith(f"(in {path})")
    assert "\n" not in message


def test_invalid_yaml_is_a_one_line_error(tmp_path: Path) -> None:
    """Broken YAML is a one-line ConfigError naming the file and the line."""
    path = write(tmp_path, "robot:\n  robot_id: r-1\n   bad: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"robot config {path} is not valid YAML")
    assert "line " in message
    assert "\n" not in message


def test_top_level_list_is_rejected(tmp_path: Path) -> None:
    """A YAML file whose top level is a list is a ConfigError asking for a mapping."""
    path = write(tmp_path, "- robot\n- connection\n")
    with pytest.raises(ConfigError, match=r"must be a mapping of sections .*not a list"):
        load(path)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    """A config path given explicitly must exist."""
    path = tmp_path / "robot_config.yaml"
    with pytest.raises(ConfigError, match=r"^robot config .*robot_config\.yaml does not exist$"):
        load(path, env={"CASARE_ROBOT_ID": "r-1"})


def test_no_file_and_no_robot_id_says_robot_id_is_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no ./robot_config.yaml and no robot_id anywhere, the error says robot_id is required."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^robot_id is required"):
        load(None)
    assert load(None, env={"CASARE_ROBOT_ID": "r-1"}).robot.robot_id == "r-1"


def test_default_file_is_picked_up_from_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """path None reads ./robot_config.yaml when it exists."""
    write(tmp_path, RUNBOOK_LAYOUT)
    monkeypatch.chdir(tmp_path)
    assert load(None).robot.robot_id == "robot-eu-1"


def test_token_from_token_file(tmp_path: Path) -> None:
    """token_value() reads token_file (relative to the config file) and strips it."""
    (tmp_path / "robot.token").write_text("  s3cret-token\n", encoding="utf-8")
    text = RUNBOOK_LAYOUT.replace(
        "  orchestrator_url: ws://127.0.0.1:8765\n",
        "  orchestrator_url: ws://127.0.0.1:8765\n  token_file: robot.token\n",
    )
    cfg = load(write(tmp_path, text))
    assert cfg.connection.token is None
    assert cfg.token_value() == "s3cret-token"
    missing = load(write(tmp_path, text.replace("robot.token", "absent.token")))
    with pytest.raises(ConfigError, match=r"absent\.token cannot be read"):
        missing.token_value()


def test_token_never_printed(tmp_path: Path) -> None:
    """The token is returned by token_value() but never shown by repr, str or model_dump_json."""
    secret = "tok-VERY-secret-123"
    cfg = load(write(tmp_path, RUNBOOK_LAYOUT), env={"CASARE_TOKEN": secret})
    assert cfg.token_value() == secret
    assert secret not in repr(cfg)
    assert secret not in str(cfg)
    assert secret not in cfg.model_dump_json()
    assert secret not in repr(cfg.connection)


def test_token_not_in_error_messages(tmp_path: Path) -> None:
    """A validation error elsewhere does not echo the token from the environment."""
    secret = "tok-VERY-secret-123"
    env = {"CASARE_TOKEN": secret, "CASARE_MAX_CONCURRENT_JOBS": "many"}
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, RUNBOOK_LAYOUT), env=env)
    assert "(from CASARE_MAX_CONCURRENT_JOBS)" in str(info.value)
    assert secret not in str(info.value)
    assert secret not in str(info.value.__cause__)


def test_unknown_override_is_an_error() -> None:
    """An override that is no section key is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="unknown override 'robot_idd'"):
        load(None, overrides={"robot_id": "r-1", "robot_idd": "x"})


def test_docs_example_file_loads() -> None:
    """docs/robot_config.example.yaml loads as is, so the documented layout stays true."""
    cfg = load(EXAMPLE_FILE)
    assert cfg.robot.robot_id == "robot-eu-1"
    assert cfg.robot.max_concurrent_jobs == 2
    assert cfg.robot.kernel_pool_size == 2
    assert cfg.notices == []
    overridden = load(EXAMPLE_FILE, overrides={"robot_id": "robot-doc"})
    assert overridden.robot.robot_id == "robot-doc"


def test_several_orchestrator_urls_are_each_checked(tmp_path: Path) -> None:
    """A comma-separated list of ws:// URLs is kept in order, spaces dropped; one that is not
    a ws:// URL is one line naming the key."""
    cfg = load_config(
        None, env={}, overrides={"orchestrator_url": "ws://a:8765, wss://b:9765", "robot_id": "r"}
    )
    assert cfg.connection.orchestrator_urls() == ["ws://a:8765", "wss://b:9765"]
    with pytest.raises(ConfigError, match=r"orchestrator_url.*ws:// or wss:// URLs.*http://"):
        load_config(
            None, env={}, overrides={"orchestrator_url": "ws://a:1,http://b:2", "robot_id": "r"}
        )
