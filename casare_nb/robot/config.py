"""Robot configuration: ``robot_config.yaml`` + ``CASARE_*`` environment + command-line flags.

Precedence, lowest first: field defaults < YAML file < environment < overrides (the robot's
command-line flags). Each layer is a pydantic-settings source, merged key by key, so a flag
changes one field and leaves the rest of the section as the file/environment set it.

The file uses the operations runbook's layout (``robot``, ``connection``, ``job_execution``,
``observability``; see ``docs/robot_config.example.yaml``). Unknown keys are errors, except
inside ``connection``, where old cloud keys (``supabase_url``, ``api_key``, ``cloud_*``...) are
common: those are dropped and reported in :attr:`RobotConfig.notices` for the caller to print.

Environment variables are flat and friendly (``CASARE_ROBOT_ID``, ``CASARE_TAGS=a,b``...; see
:data:`FLAT_ENV_VARS`); the nested pydantic-settings form (``CASARE_ROBOT__TAGS``) works too,
and the flat name wins when both are set. Empty variables count as unset.

Relative ``token_file``/``ca_file``/``work_dir`` paths in the file are relative to the file's
directory; from the environment or flags they are relative to the working directory.

``connection.ca_file`` (``CASARE_CA_FILE``, ``--ca-file``): the PEM certificate(s) a ``wss://``
orchestrator's certificate is verified against, e.g. the CA of a self-signed certificate;
without it, the system's trusted CAs. See :meth:`RobotConfig.ssl_context`.

Every problem is a :class:`ConfigError` with a one-line message naming the key and where its
value came from. The token never appears in ``repr``/``str``/JSON dumps or error messages.
"""

from __future__ import annotations

import difflib
import os
import ssl
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from casare_nb.settings import MappingEnvSource, read_yaml_mapping

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "FLAT_ENV_VARS",
    "ConfigError",
    "ConnectionSection",
    "JobExecutionSection",
    "ObservabilitySection",
    "RobotConfig",
    "RobotSection",
    "load_config",
]

DEFAULT_CONFIG_FILE = "robot_config.yaml"
"""Looked for in the working directory when :func:`load_config` gets no path."""

ENV_PREFIX = "CASARE_"

FLAT_ENV_VARS: dict[str, tuple[str, str]] = {
    "CASARE_ROBOT_ID": ("robot", "robot_id"),
    "CASARE_ROBOT_NAME": ("robot", "robot_name"),
    "CASARE_ENVIRONMENT": ("robot", "environment"),
    "CASARE_MAX_CONCURRENT_JOBS": ("robot", "max_concurrent_jobs"),
    "CASARE_TAGS": ("robot", "tags"),
    "CASARE_KERNEL_POOL_SIZE": ("robot", "kernel_pool_size"),
    "CASARE_KERNEL_ZYGOTE": ("robot", "kernel_zygote"),
    "CASARE_KERNEL_PRELOAD": ("robot", "kernel_preload"),
    "CASARE_ORCHESTRATOR_URL": ("connection", "orchestrator_url"),
    "CASARE_TOKEN": ("connection", "token"),
    "CASARE_TOKEN_FILE": ("connection", "token_file"),
    "CASARE_CA_FILE": ("connection", "ca_file"),
    "CASARE_HEARTBEAT_INTERVAL": ("connection", "heartbeat_interval_s"),
    "CASARE_RECONNECT_MAX_BACKOFF": ("connection", "reconnect_max_backoff_s"),
    "CASARE_CHECKPOINT_ENABLED": ("job_execution", "checkpoint_enabled"),
    "CASARE_WORK_DIR": ("job_execution", "work_dir"),
    "CASARE_RESOURCE_MONITORING_ENABLED": ("observability", "resource_monitoring_enabled"),
    "CASARE_LOG_LEVEL": ("observability", "log_level"),
    "CASARE_LOG_FORMAT": ("observability", "log_format"),
    "CASARE_LOG_DIR": ("observability", "log_dir"),
}
"""Flat environment variable -> (section, key)."""

_CLOUD_KEYS = frozenset(
    {"api_key", "api_secret", "api_url", "tenant_id", "workspace_id", "project_id"}
)
_CLOUD_PREFIXES = ("supabase", "cloud")


class ConfigError(ValueError):
    """The robot configuration is missing or invalid. The message is one line."""


# --------------------------------------------------------------------------- sections


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    unused: ClassVar[dict[str, str]] = {}
    """Keys of the runbook's layout that casare_nb accepts but has no use for, with why: they
    are dropped with a notice (see :attr:`RobotConfig.notices`) instead of refused."""

    _unused_given: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _drop_unused(cls, data: Any, handler: Any) -> Any:
        given: list[str] = []
        if isinstance(data, dict) and cls.unused:
            given = sorted(k for k in data if k in cls.unused)
            data = {k: v for k, v in data.items() if k not in cls.unused}
        section = handler(data)
        section._unused_given = given
        return section

    def unused_notices(self, section: str) -> list[str]:
        """One line per unused key given in this section."""
        return [
            f"{section}.{key} has no effect in casare_nb ({self.unused[key]}); ignored"
            for key in self._unused_given
        ]


class RobotSection(_Section):
    """Who the robot is and how much work it takes."""

    robot_id: str
    robot_name: str | None = None
    environment: str = "default"
    max_concurrent_jobs: int = Field(default=1, ge=1, le=64)
    tags: list[str] = Field(default_factory=list)
    kernel_pool_size: int | None = Field(default=None, ge=1, le=64)
    kernel_zygote: bool = True
    """Fork each kernel from a zygote process that imported ipykernel once (~4x less CPU a
    kernel than a cold start); off: every kernel starts as its own Python."""
    kernel_preload: list[str] = Field(default_factory=list)
    """Modules the zygote imports before forking (e.g. ``pandas``): every kernel then has them
    loaded for free. They see the robot's environment at the zygote's start."""

    @field_validator("robot_id")
    @classmethod
    def _check_robot_id(cls, value: str) -> str:
        if not (1 <= len(value) <= 64) or not all(
            c.isascii() and (c.isalnum() or c in "._-") for c in value
        ):
            raise ValueError("must be 1-64 characters: letters, digits, '.', '_' or '-'")
        return value

    @field_validator("kernel_preload")
    @classmethod
    def _check_preload(cls, value: list[str]) -> list[str]:
        for name in value:
            if not all(part.isidentifier() for part in name.split(".")):
                raise ValueError(f"{name!r} is not a module name")
        return value

    @field_validator("tags", "kernel_preload", mode="before")
    @classmethod
    def _split_tags(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> RobotSection:
        if not self.robot_name:
            self.robot_name = self.robot_id
        if self.kernel_pool_size is None:
            self.kernel_pool_size = self.max_concurrent_jobs
        return self


class ConnectionSection(BaseModel):
    """How the robot reaches the orchestrator. Unknown keys are dropped (see ``ignored_keys``)."""

    model_config = ConfigDict(extra="allow", hide_input_in_errors=True)

    orchestrator_url: str = "ws://127.0.0.1:8765"
    token: SecretStr | None = None
    token_file: Path | None = None
    ca_file: Path | None = None
    """PEM file of the CA certificate(s) that a wss:// orchestrator's certificate is verified
    against (a self-signed one's); None: the system's trusted CAs."""
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    reconnect_max_backoff_s: float = Field(default=30.0, gt=0)

    _ignored_keys: list[str] = PrivateAttr(default_factory=list)

    @field_validator("orchestrator_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        urls = [url.strip() for url in value.split(",")]
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme.lower() not in ("ws", "wss"):
                got = f"{parts.scheme}://" if parts.scheme else "no scheme"
                raise ValueError(f"must be ws:// or wss:// URLs, comma-separated (got {got})")
            if not parts.netloc:
                raise ValueError("must name a host, e.g. ws://127.0.0.1:8765")
        return ",".join(urls)

    def orchestrator_urls(self) -> list[str]:
        """The orchestrators to try, in order (several share one store: one is active)."""
        return self.orchestrator_url.split(",")

    @field_validator("token", mode="before")
    @classmethod
    def _blank_token_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _drop_unknown_keys(self) -> ConnectionSection:
        extra = self.__pydantic_extra__
        if extra:
            self._ignored_keys = sorted(str(key) for key in extra)
            self.__pydantic_extra__ = {}
        return self

    @property
    def ignored_keys(self) -> list[str]:
        """Unknown keys that were given in this section and dropped."""
        return list(self._ignored_keys)


class JobExecutionSection(_Section):
    """How jobs run on this robot."""

    unused: ClassVar[dict[str, str]] = {
        "progress_update_interval": "each cell is reported to the orchestrator as it ends",
    }

    checkpoint_enabled: bool = True
    work_dir: Path | None = None


class ObservabilitySection(_Section):
    """What the robot records about itself."""

    unused: ClassVar[dict[str, str]] = {
        "audit_enabled": "what robots do is in the orchestrator's history and logs",
    }

    resource_monitoring_enabled: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Level of stderr and the log file (``--log-level``)."""
    log_format: Literal["text", "json"] = "text"
    """Log lines as text or JSON objects, one a line (``--log-format``)."""
    log_dir: Path | None = None
    """Folder of ``robot-<robot_id>.log`` (default: ``$CASARE_HOME/logs`` or ``.casare/logs``)."""
    log_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    """The log file is rotated past this size."""
    log_backup_count: int = Field(default=5, ge=1, le=1000)
    """Rotated log files kept."""
    log_files: bool = True
    """Write the log file (false: stderr only)."""


_SECTIONS: dict[str, type[BaseModel]] = {
    "robot": RobotSection,
    "connection": ConnectionSection,
    "job_execution": JobExecutionSection,
    "observability": ObservabilitySection,
}

_FIELD_SECTION: dict[str, str] = {
    name: section for section, model in _SECTIONS.items() for name in model.model_fields
}
assert len(_FIELD_SECTION) == sum(len(m.model_fields) for m in _SECTIONS.values())


def _ignored_notice(key: str) -> str:
    lowered = key.lower()
    if lowered in _CLOUD_KEYS or lowered.startswith(_CLOUD_PREFIXES):
        return f"connection.{key} is a cloud setting; casare_nb ignores it"
    hint = _did_you_mean(key, ConnectionSection.model_fields)
    return f"connection.{key} is not a casare_nb setting; ignored{hint}"


def _did_you_mean(key: str, names: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(names), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


# --------------------------------------------------------------------------- sources


@dataclass
class _LoadContext:
    """What one :func:`load_config` call reads, and what each layer contributed."""

    file: Path | None
    env: Mapping[str, str]
    overrides: dict[str, Any] = field(default_factory=dict)
    file_data: dict[str, Any] = field(default_factory=dict)
    flat_env_data: dict[str, Any] = field(default_factory=dict)
    nested_env_data: dict[str, Any] = field(default_factory=dict)

    def origin(self, loc: tuple[str | int, ...]) -> str:
        """Where the value at ``loc`` came from (highest layer holding it), for messages."""
        key = tuple(str(p) for p in loc[:2])
        if _holds(self.overrides, key):
            return f" (from command-line option {key[-1]})"
        if _holds(self.flat_env_data, key):
            names = [n for n, target in FLAT_ENV_VARS.items() if target[: len(key)] == key]
            return f" (from {names[0]})" if len(names) == 1 else " (from environment)"
        if _holds(self.nested_env_data, key):
            return f" (from environment {ENV_PREFIX}{'__'.join(key).upper()})"
        if self.file is not None and _holds(self.file_data, key):
            return f" (in {self.file})"
        return ""


def _holds(data: Mapping[str, Any], key: tuple[str, ...]) -> bool:
    node: Any = data
    for part in key:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


_LOAD_CONTEXT: ContextVar[_LoadContext | None] = ContextVar("casare_robot_config", default=None)


def _default_context() -> _LoadContext:
    default = Path(DEFAULT_CONFIG_FILE)
    return _LoadContext(file=default if default.is_file() else None, env=os.environ)


class _FlatEnvSource(PydanticBaseSettingsSource):
    """``CASARE_ROBOT_ID``-style variables (:data:`FLAT_ENV_VARS`)."""

    def __init__(self, settings_cls: type[BaseSettings], ctx: _LoadContext) -> None:
        super().__init__(settings_cls)
        self._ctx = ctx

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ does the work

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for name, (section, key) in FLAT_ENV_VARS.items():
            value = self._ctx.env.get(name)
            if value is not None and value.strip():
                data.setdefault(section, {})[key] = value
        self._ctx.flat_env_data = data
        return data


def _nested_env_source(settings_cls: type[BaseSettings], ctx: _LoadContext) -> MappingEnvSource:
    """``CASARE_ROBOT__TAGS``-style variables, read from the context's environment."""
    return MappingEnvSource(
        settings_cls,
        ctx.env,
        ENV_PREFIX,
        record=lambda data: setattr(ctx, "nested_env_data", data),
    )


class _YamlFileSource(YamlConfigSettingsSource):
    """The robot_config.yaml file, with one-line errors and file-relative paths."""

    def __init__(self, settings_cls: type[BaseSettings], ctx: _LoadContext) -> None:
        self._ctx = ctx
        super().__init__(settings_cls, yaml_file=ctx.file, yaml_file_encoding="utf-8")

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        shown = self._ctx.file if self._ctx.file is not None else file_path
        loaded = read_yaml_mapping(
            file_path,
            shown,
            "robot config",
            ConfigError,
            "sections (robot, connection, job_execution, observability)",
        )
        data = _resolve_relative_paths(loaded, Path(os.fspath(file_path)).absolute().parent)
        self._ctx.file_data = data
        return data


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    for section, key in (
        ("connection", "token_file"),
        ("connection", "ca_file"),
        ("job_execution", "work_dir"),
        ("observability", "log_dir"),
    ):
        body = data.get(section)
        if isinstance(body, dict) and isinstance(body.get(key), str) and body[key].strip():
            path = Path(body[key]).expanduser()
            body[key] = str(path if path.is_absolute() else base / path)
    return data


# --------------------------------------------------------------------------- settings


class RobotConfig(BaseSettings):
    """A robot's whole configuration. Build it with :func:`load_config`."""

    model_config = SettingsConfigDict(
        extra="forbid",
        hide_input_in_errors=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
    )

    robot: RobotSection
    connection: ConnectionSection = Field(default_factory=ConnectionSection)
    job_execution: JobExecutionSection = Field(default_factory=JobExecutionSection)
    observability: ObservabilitySection = Field(default_factory=ObservabilitySection)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest priority first: overrides (init kwargs) > flat env > nested env > YAML file.
        ctx = _LOAD_CONTEXT.get() or _default_context()
        return (
            init_settings,
            _FlatEnvSource(settings_cls, ctx),
            _nested_env_source(settings_cls, ctx),
            _YamlFileSource(settings_cls, ctx),
        )

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # `observability:` with nothing under it parses to None: treat it as an empty section.
        if isinstance(data, dict):
            return {k: ({} if v is None and k in _SECTIONS else v) for k, v in data.items()}
        return data

    @property
    def notices(self) -> list[str]:
        """One line per ignored setting (cloud keys in ``connection``...) for the caller to show."""
        notices = [_ignored_notice(key) for key in self.connection.ignored_keys]
        for name in ("robot", "job_execution", "observability"):
            section: _Section = getattr(self, name)
            notices += section.unused_notices(name)
        return notices

    def token_value(self) -> str | None:
        """The orchestrator token: ``connection.token``, else ``token_file``'s stripped content."""
        if self.connection.token is not None:
            return self.connection.token.get_secret_value()
        path = self.connection.token_file
        if path is None:
            return None
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"token file {path} cannot be read: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"token file {path} cannot be read: not UTF-8 text") from exc
        if not token:
            raise ConfigError(f"token file {path} is empty")
        return token

    def ssl_context(self) -> ssl.SSLContext | None:
        """How a ``wss://`` orchestrator's certificate is verified: against
        ``connection.ca_file`` when given, else the system's trusted CAs (None: websockets'
        default); None for ``ws://``. ConfigError (one line) if the CA file cannot be used."""
        connection = self.connection
        if all(urlsplit(u).scheme.lower() != "wss" for u in connection.orchestrator_urls()):
            return None
        if connection.ca_file is None:
            return None
        path = connection.ca_file
        try:
            return ssl.create_default_context(cafile=os.fspath(path))
        except FileNotFoundError:
            raise ConfigError(f"CA file {path} (connection.ca_file) does not exist") from None
        except ssl.SSLError as exc:
            raise ConfigError(
                f"CA file {path} (connection.ca_file) holds no usable PEM certificate: "
                f"{exc.reason or exc}"
            ) from None
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise ConfigError(
                f"CA file {path} (connection.ca_file) cannot be read: {why}"
            ) from None


# --------------------------------------------------------------------------- loading


def load_config(
    path: Path | str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RobotConfig:
    """Load a robot's configuration: defaults < ``path`` (YAML) < ``env`` < ``overrides``.

    ``path`` None looks for ``./robot_config.yaml`` and is fine without it; an explicit path
    must exist. ``env`` defaults to ``os.environ``. ``overrides`` are the command-line flags,
    flat (``robot_id``, ``tags``, ``orchestrator_url``, ``token``...: any section key); None
    values and empty lists/tuples count as "flag not given". Raises :class:`ConfigError`.
    """
    if path is None:
        file = _default_context().file
    else:
        file = Path(path)
        if not file.exists():
            raise ConfigError(f"robot config {file} does not exist")
        if not file.is_file():
            raise ConfigError(f"robot config {file} is not a file")
    ctx = _LoadContext(
        file=file,
        env=os.environ if env is None else env,
        overrides=_nest_overrides(overrides or {}),
    )
    token = _LOAD_CONTEXT.set(ctx)
    try:
        return RobotConfig(**ctx.overrides)
    except ValidationError as exc:
        raise ConfigError(_describe_errors(exc, ctx)) from exc
    except SettingsError as exc:
        raise ConfigError(" ".join(str(exc).split())) from exc
    finally:
        _LOAD_CONTEXT.reset(token)


def _nest_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None or (isinstance(value, list | tuple) and not value):
            continue
        section = _FIELD_SECTION.get(key)
        if section is None:
            raise ConfigError(f"unknown override {key!r}{_did_you_mean(key, _FIELD_SECTION)}")
        nested.setdefault(section, {})[key] = value
    return nested


def _describe_errors(exc: ValidationError, ctx: _LoadContext) -> str:
    parts: list[str] = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = tuple(error["loc"])
        dotted = ".".join(str(p) for p in loc)
        if error["type"] == "missing" and loc in (("robot",), ("robot", "robot_id")):
            where = ctx.file if ctx.file is not None else DEFAULT_CONFIG_FILE
            line = (
                f"robot_id is required: set robot.robot_id in {where}, "
                "CASARE_ROBOT_ID, or the robot_id command-line option"
            )
        elif error["type"] == "extra_forbidden":
            names: Mapping[str, Any] = (
                _SECTIONS[str(loc[0])].model_fields
                if len(loc) == 2 and str(loc[0]) in _SECTIONS
                else RobotConfig.model_fields
            )
            hint = _did_you_mean(str(loc[-1]), names)
            line = f"{dotted}: unknown key{hint}{ctx.origin(loc)}"
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            line = f"{dotted}: {message}{ctx.origin(loc)}"
        if line not in parts:
            parts.append(line)
    return "; ".join(parts)
