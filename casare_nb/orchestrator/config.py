"""The orchestrator's settings: a YAML file + ``.env`` + ``CASARE_ORCH_*`` environment + flags.

Precedence, lowest first: field defaults < the YAML file (``--config FILE``, else
``./orchestrator.yaml`` if it exists) < a ``.env`` file in the working directory < the
environment < overrides (the ``casare-nb orchestrator`` command-line flags). Each layer is a
pydantic-settings source, merged key by key, so a flag changes one field and leaves the rest
as the file or the environment set it.

Keys are the command's options (``host``, ``port``, ``http_port``, ``state_dir``,
``workflows_dir``, ``tls_cert``, ``tls_key``, ``drain_timeout_s``, ``max_body_bytes``), the
orchestrator's timings (``heartbeat_interval_s``, ``missed_heartbeats``, ``assign_timeout_s``,
``reconnect_grace_s``), ``logging`` (:class:`~casare_nb.logs.LogSettings`) and ``thresholds``
(:class:`~casare_nb.core.thresholds.Thresholds`); see ``docs/orchestrator_config.example.yaml``.
Environment variables are ``CASARE_ORCH_<KEY>``, nested keys with ``__``
(``CASARE_ORCH_LOGGING__FORMAT=json``); the same names in ``.env``. ``CASARE_HOME`` still
names the state directory (through the command's ``--state-dir``).

Unknown keys (in the file, or ``CASARE_ORCH_*`` names in the environment or ``.env``) and bad
values are a :class:`ConfigError`: one line naming the key and where its value came from.
Relative paths in the file are relative to the file's folder; elsewhere, to the working
directory.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from casare_nb.core.errors import QueueError
from casare_nb.core.thresholds import Thresholds
from casare_nb.logs import LogSettings
from casare_nb.settings import MappingEnvSource, lenient_decode, read_yaml_mapping
from casare_nb.store.backends import check_store_url

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "DOTENV_FILE",
    "ENV_PREFIX",
    "ConfigError",
    "OrchestratorConfig",
    "load_orchestrator_config",
]

DEFAULT_CONFIG_FILE: Final = "orchestrator.yaml"
"""Looked for in the working directory when no ``--config`` is given."""
DOTENV_FILE: Final = ".env"
ENV_PREFIX: Final = "CASARE_ORCH_"
_PATH_KEYS: Final = ("state_dir", "workflows_dir", "tls_cert", "tls_key")


class ConfigError(ValueError):
    """The orchestrator's settings are invalid. The message is one line."""


@dataclass
class _LoadContext:
    file: Path | None
    env: Mapping[str, str]
    dotenv: Path | None
    overrides: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def origin(self, loc: tuple[str | int, ...]) -> str:
        """Where the value at ``loc`` came from (the highest layer holding it)."""
        key = tuple(str(p) for p in loc)
        for layer in ("flag", "env", "dotenv", "file"):
            data = self.overrides if layer == "flag" else self.layers.get(layer, {})
            if not _holds(data, key[:1]):
                continue
            if layer == "flag":
                return f" (from option --{key[0].replace('_', '-')})"
            env_name = ENV_PREFIX + "__".join(k.upper() for k in key)
            if layer == "env":
                return f" (from {env_name})"
            if layer == "dotenv":
                return f" (from {env_name} in {self.dotenv})"
            return f" (in {self.file})"
        return ""


def _holds(data: Mapping[str, Any], key: tuple[str, ...]) -> bool:
    return bool(key) and key[0] in data


_CONTEXT: ContextVar[_LoadContext | None] = ContextVar("casare_orch_config", default=None)


def _unknown(settings_cls: type[BaseSettings], names: Mapping[str, Any]) -> dict[str, Any]:
    """``CASARE_ORCH_*`` names that name no key: as extra keys, so validation names them."""
    fields = settings_cls.model_fields
    out: dict[str, Any] = {}
    for name, value in names.items():
        key = name[len(ENV_PREFIX) :].lower()
        if key.split("__")[0] not in fields:
            out[key] = value
    return out


def _env_source(settings_cls: type[BaseSettings], ctx: _LoadContext) -> MappingEnvSource:
    """``CASARE_ORCH_*`` variables of the context's environment."""
    return MappingEnvSource(
        settings_cls,
        ctx.env,
        ENV_PREFIX,
        record=lambda data: ctx.layers.__setitem__("env", data),
        extras=lambda names: _unknown(settings_cls, names),
    )


class _DotEnvSource(DotEnvSettingsSource):
    """``CASARE_ORCH_*`` lines of ``./.env`` (other lines are left to other programs)."""

    def __init__(self, settings_cls: type[BaseSettings], ctx: _LoadContext) -> None:
        self._ctx = ctx
        super().__init__(
            settings_cls,
            env_file=ctx.dotenv,
            env_file_encoding="utf-8",
            dotenv_filtering="match_prefix",
            case_sensitive=False,
            env_prefix=ENV_PREFIX,
            env_nested_delimiter="__",
            env_ignore_empty=True,
        )

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        parent = super().decode_complex_value
        return lenient_decode(lambda: parent(field_name, field, value), value)

    def __call__(self) -> dict[str, Any]:
        if self._ctx.dotenv is None:
            return {}
        data = super().__call__()
        self._ctx.layers["dotenv"] = data
        return data


class _YamlSource(YamlConfigSettingsSource):
    """The YAML settings file, with one-line errors and file-relative paths."""

    def __init__(self, settings_cls: type[BaseSettings], ctx: _LoadContext) -> None:
        self._ctx = ctx
        super().__init__(settings_cls, yaml_file=ctx.file, yaml_file_encoding="utf-8")

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        shown = self._ctx.file or file_path
        loaded = read_yaml_mapping(file_path, shown, "orchestrator config", ConfigError, "keys")
        base = Path(os.fspath(file_path)).absolute().parent
        for key in _PATH_KEYS:
            value = loaded.get(key)
            if isinstance(value, str) and value.strip():
                path = Path(value).expanduser()
                loaded[key] = str(path if path.is_absolute() else base / path)
        self._ctx.layers["file"] = loaded
        return loaded


class OrchestratorConfig(BaseSettings):
    """Everything ``casare-nb orchestrator`` takes. Build it with
    :func:`load_orchestrator_config`."""

    model_config = SettingsConfigDict(
        extra="forbid",
        hide_input_in_errors=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
    )

    host: str = "127.0.0.1"
    """Address both servers listen on."""
    port: int = Field(default=8765, ge=0, le=65535)
    """WebSocket port for robots and monitors (0: any free port)."""
    http_port: int = Field(default=8766, ge=0, le=65535)
    """HTTP API port (0: any free port)."""
    state_dir: Path | None = None
    """State directory (None: ``$CASARE_HOME`` or ``./.casare``)."""
    store: str | None = None
    """Where the records are: a ``postgresql://`` URL, or None/``duckdb`` (the state
    directory's own database)."""
    node_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    """This orchestrator among those sharing a store (None: HOST-PID); names its log file."""
    workflows_dir: Path = Path(".")
    """Where submitted workflow paths resolve; paths outside are refused."""
    tls_cert: Path | None = None
    """Serve wss/https with this certificate (and ``tls_key``)."""
    tls_key: Path | None = None
    drain_timeout_s: float = Field(default=60.0, ge=0)
    """Seconds running jobs get to finish on SIGTERM/Ctrl-C."""
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    """Largest HTTP request body; larger ones answer 413."""
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    """The robots' heartbeat interval the orchestrator expects."""
    missed_heartbeats: int = Field(default=3, ge=1)
    """Heartbeats missed before a robot counts as offline."""
    assign_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds a robot has to accept an assigned job."""
    reconnect_grace_s: float = Field(default=5.0, ge=0)
    """Seconds a lost robot's jobs wait for it to come back before they are requeued."""
    logging: LogSettings = Field(default_factory=LogSettings)
    thresholds: Thresholds = Field(default_factory=Thresholds)

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str | None) -> str | None:
        try:
            return check_store_url(value)
        except QueueError as exc:
            raise ValueError(str(exc)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest priority first: flags (init kwargs) > environment > .env > YAML file.
        ctx = _CONTEXT.get() or _LoadContext(file=None, env={}, dotenv=None)
        return (
            init_settings,
            _env_source(settings_cls, ctx),
            _DotEnvSource(settings_cls, ctx),
            _YamlSource(settings_cls, ctx),
        )

    def orchestrator_options(self) -> dict[str, Any]:
        """The keyword arguments of the orchestrator itself (timings)."""
        return self.model_dump(
            include={
                "heartbeat_interval_s",
                "missed_heartbeats",
                "assign_timeout_s",
                "reconnect_grace_s",
                "store",
                "node_id",
            }
        )


def load_orchestrator_config(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    dotenv: str | os.PathLike[str] | None = DOTENV_FILE,
    overrides: Mapping[str, Any] | None = None,
) -> OrchestratorConfig:
    """The orchestrator's settings: defaults < ``path`` (YAML) < ``dotenv`` < ``env`` <
    ``overrides``. ``path`` None takes ``./orchestrator.yaml`` if it exists; a given path
    must exist. ``dotenv`` is read if it exists (None: not at all). ``env`` defaults to
    ``os.environ``. ``overrides`` are the command-line flags (None values: not given).
    Raises :class:`ConfigError` (one line)."""
    if path is None:
        default = Path(DEFAULT_CONFIG_FILE)
        file = default if default.is_file() else None
    else:
        file = Path(path)
        if not file.exists():
            raise ConfigError(f"orchestrator config {file} does not exist")
        if not file.is_file():
            raise ConfigError(f"orchestrator config {file} is not a file")
    dot = None if dotenv is None else Path(dotenv)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(OrchestratorConfig.model_fields))
    if unknown:
        raise ConfigError(f"unknown override {unknown[0]!r}")
    ctx = _LoadContext(
        file=file,
        env=os.environ if env is None else env,
        dotenv=dot if dot is not None and dot.is_file() else None,
        overrides=given,
    )
    token = _CONTEXT.set(ctx)
    try:
        return OrchestratorConfig(**given)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, ctx)) from None
    except SettingsError as exc:
        raise ConfigError(" ".join(str(exc).split())) from None
    finally:
        _CONTEXT.reset(token)


def _describe(exc: ValidationError, ctx: _LoadContext) -> str:
    parts: list[str] = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = tuple(error["loc"])
        dotted = ".".join(str(p) for p in loc)
        if error["type"] == "extra_forbidden":
            names = list(OrchestratorConfig.model_fields) if len(loc) == 1 else []
            close = difflib.get_close_matches(str(loc[-1]), names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            line = f"{dotted}: unknown key{hint}{ctx.origin(loc)}"
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            line = f"{dotted}: {message}{ctx.origin(loc)}"
        if line not in parts:
            parts.append(line)
    return "orchestrator config: " + "; ".join(parts)
