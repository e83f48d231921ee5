"""Logging of the long-running processes: stderr plus rotating, private files.

``casare-nb orchestrator`` and ``casare-nb robot`` call :func:`setup_logging` once at start:
every record at ``level`` and above goes to stderr and to ``<state_dir>/logs/<file_name>``
(``orchestrator.log``, ``robot-<id>.log``), rotated by size (``orchestrator.log.1`` ... ``.N``,
the names ``casare-nb cleanup`` prunes). The orchestrator also writes the audit records (the
logger ``casare_nb.audit``, one JSON object a record; see
:mod:`casare_nb.orchestrator.audit`) to ``audit.log``, rotated the same way, whatever the level.

``format`` ``json``: one JSON object a line (``time`` in UTC ISO 8601, ``level``, ``logger``,
``message``, and the record's extra fields), by python-json-logger; ``text``: one line
``time level logger: message``. Log files are 0600 in a 0700 folder (they name jobs, robots
and tokens). Other commands take the group's ``casare-nb --log-level``: stderr only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field
from pythonjsonlogger.json import JsonFormatter

__all__ = [
    "AUDIT_FILE",
    "DEFAULT_BACKUP_COUNT",
    "DEFAULT_MAX_BYTES",
    "LOG_DIR",
    "LogSettings",
    "log_dir",
    "setup_logging",
]

LOG_DIR: Final = "logs"
"""The folder of the log files inside a state directory."""
AUDIT_FILE: Final = "audit.log"
AUDIT_LOGGER: Final = "casare_nb.audit"  # casare_nb.orchestrator.audit.AUDIT_LOGGER
DEFAULT_MAX_BYTES: Final = 10 * 1024 * 1024
DEFAULT_BACKUP_COUNT: Final = 5
LEVELS: Final = ("debug", "info", "warning", "error")

_TEXT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_MARK = "_casare_nb_handler"  # set on the handlers installed here, to replace them once


class LogSettings(BaseModel):
    """How a process logs: level, line format and the rotation of its files."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    max_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1024)
    """A log file is rotated once it would grow past this many bytes."""
    backup_count: int = Field(default=DEFAULT_BACKUP_COUNT, ge=1, le=1000)
    """Rotated files kept (``.1`` newest ... ``.N`` oldest); older ones are deleted."""
    files: bool = True
    """Write the log files (False: stderr only)."""


class PrivateRotatingFileHandler(RotatingFileHandler):
    """A size-rotated log file created 0600 (whatever the umask), in a 0700 folder."""

    def _open(self):  # type: ignore[no-untyped-def]  # typeshed: -> TextIOWrapper
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o600)  # an older file made before
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


def log_dir(state_dir: str | os.PathLike[str]) -> Path:
    """``<state_dir>/logs``."""
    return Path(state_dir) / LOG_DIR


def _formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            timestamp="time",
            json_ensure_ascii=False,
        )
    return logging.Formatter(_TEXT)


def _file(path: Path, settings: LogSettings, formatter: logging.Formatter) -> logging.Handler:
    handler = PrivateRotatingFileHandler(
        path, maxBytes=settings.max_bytes, backupCount=settings.backup_count, encoding="utf-8"
    )
    handler.setFormatter(formatter)
    return handler


def setup_logging(
    settings: LogSettings | None = None,
    *,
    folder: str | os.PathLike[str] | None = None,
    file_name: str | None = None,
    audit: bool | str = False,
) -> Path | None:
    """Log to stderr and, given ``folder`` (a state directory's :func:`log_dir`) and
    ``file_name``, to the rotating file ``<folder>/<file_name>``; ``audit``: the
    ``casare_nb.audit`` records to ``<folder>/audit.log`` too (a name: to that file, e.g. one
    per orchestrator sharing the folder). Replaces what an earlier call
    installed. The log file's path (None without one). OSError if the folder or file cannot
    be made."""
    settings = settings or LogSettings()
    level = getattr(logging, settings.level.upper())
    root = logging.getLogger()
    audit_logger = logging.getLogger(AUDIT_LOGGER)
    for owner in (root, audit_logger):
        for old in [h for h in owner.handlers if getattr(h, _MARK, False)]:
            owner.removeHandler(old)
            old.close()
    formatter = _formatter(settings.format)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers[0].setFormatter(formatter)
    path: Path | None = None
    folder = None if folder is None else Path(folder)
    if folder is not None and settings.files and (file_name or audit):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # not ours, or a file system without modes
            if folder.stat().st_mode & 0o077:
                folder.chmod(0o700)
        if file_name:
            path = folder / file_name
            handlers.append(_file(path, settings, formatter))
    for handler in handlers:
        handler.setLevel(level)
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    root.setLevel(level)
    if folder is not None and settings.files and audit:
        # the records are JSON already: the message alone, at INFO whatever the level
        name = audit if isinstance(audit, str) else AUDIT_FILE
        handler = _file(folder / name, settings, logging.Formatter("%(message)s"))
        handler.setLevel(logging.INFO)
        setattr(handler, _MARK, True)
        audit_logger.addHandler(handler)
        audit_logger.setLevel(logging.INFO)
    if settings.level != "debug":  # one line per connection is noise; casare_nb logs what matters
        logging.getLogger("websockets").setLevel(logging.WARNING)
    return path
