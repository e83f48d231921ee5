"""What the robot's and the orchestrator's settings files share: reading a YAML settings file
with one-line errors, and environment variables read from a given mapping (not the process's:
the loaders take ``env=`` so tests and services pass their own), non-JSON values handed to
the models' validators as text (``CASARE_ROBOT__TAGS=a,b``).

:mod:`casare_nb.robot.config` and :mod:`casare_nb.orchestrator.config` build their sources
on these; each says which keys, prefixes and files are its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource

__all__ = ["MappingEnvSource", "lenient_decode", "prefixed", "read_yaml_mapping"]


def read_yaml_mapping(
    path: str | os.PathLike[str], shown: object, what: str, error: type[Exception], shape: str
) -> dict[str, Any]:
    """The mapping a YAML settings file holds (an empty file: none). Not YAML, unreadable, or
    not a mapping: ``error`` with one line naming ``what`` (``robot config``) and ``shown``
    (the file as the user named it); ``shape`` says what the mapping holds (``keys``)."""
    try:
        with Path(path).open(encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise error(f"{what} {shown} is not valid YAML: {_yaml_problem(exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise error(f"{what} {shown} cannot be read: {reason}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise error(f"{what} {shown} must be a mapping of {shape}, not a {type(loaded).__name__}")
    return loaded


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        problem = exc.problem or exc.context or "syntax error"
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
        return problem
    return " ".join(str(exc).split())


def prefixed(items: Mapping[str, str | None], prefix: str) -> dict[str, str | None]:
    """The variables of ``items`` named ``prefix…`` (any case), lower-cased, blank ones left
    out."""
    lowered = prefix.lower()
    return {
        k.lower(): v for k, v in items.items() if k.lower().startswith(lowered) and v and v.strip()
    }


def lenient_decode(decode: Callable[[], Any], value: Any) -> Any:
    """``decode()`` (pydantic-settings' JSON decoding of a complex value), else ``value`` as
    it is, for the model's validators to read (``a,b`` for a list)."""
    try:
        return decode()
    except ValueError:
        return value


class MappingEnvSource(EnvSettingsSource):
    """``PREFIX…`` variables (``__`` nesting) of a given mapping; ``record(data)`` hears what
    they gave (to say where a bad value came from); ``extras(variables)`` adds keys of its
    own (e.g. variables that name no key, so that validation names them)."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        env: Mapping[str, str],
        prefix: str,
        record: Callable[[dict[str, Any]], None],
        extras: Callable[[Mapping[str, str | None]], dict[str, Any]] | None = None,
    ) -> None:
        self._env = env
        self._record = record
        self._extras = extras
        super().__init__(
            settings_cls,
            case_sensitive=False,
            env_prefix=prefix,
            env_nested_delimiter="__",
            env_ignore_empty=True,
        )

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return prefixed(self._env, self.env_prefix)

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        parent = super().decode_complex_value
        return lenient_decode(lambda: parent(field_name, field, value), value)

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        if self._extras is not None:
            data = {**self._extras(self.env_vars), **data}
        self._record(data)
        return data
