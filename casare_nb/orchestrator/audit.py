"""The audit log: who (which token, with which role, from which address) did what.

One record per action through the standard logger ``casare_nb.audit``, its message one JSON
object with the fields ``time`` (UTC, ISO 8601), ``actor`` (the token's name; null for a
failed authentication), ``role`` (``robot``, ``user``, ``admin``, ``none`` for a token from
before roles; null when unknown), ``action``, ``target`` (a job id, a robot id, a token name,
a path), ``outcome`` (``ok``; ``denied``: the role may not; ``failed``: the authentication
failed; ``throttled``: it failed while braked; ``error``: refused for another reason), and
``address`` (the client's); ``detail`` (one line) is added where there is one.

Actions: ``submit``, ``cancel``, ``rerun``, ``drain_robot``, ``undrain_robot``, ``drain``,
``undrain`` (``drain --cancel``), ``pause_submissions``, ``resume_submissions``,
``maintenance_on``, ``maintenance_off``, ``backup``, ``cleanup``, ``create_token``,
``revoke_token``,
``authenticate`` (every failed authentication: HTTP, WebSocket and webhook signatures), and
the action a refused request asked for (outcome ``denied``).

Records of what was done are INFO, refusals and failures WARNING. They propagate like any
other record and the logger's level is left to the configuration (no handler or level is set
here): with none configured they reach the root's handlers (the service's stderr at its
``--log-level``); the service adds the file ``<state_dir>/logs/audit.log`` on this logger. The
JSON object is also the record's ``audit`` attribute, for a handler that formats fields
itself.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Final

from casare_nb.core.tokens import Holder

__all__ = ["AUDIT_LOGGER", "denied", "record", "succeeded"]

AUDIT_LOGGER: Final = "casare_nb.audit"

logger = logging.getLogger(AUDIT_LOGGER)


def record(
    action: str,
    *,
    actor: str | None,
    role: str | None,
    target: str | None,
    outcome: str,
    address: str | None,
    detail: str | None = None,
) -> None:
    """Emit one audit record (WARNING for a failure or a refusal, INFO otherwise)."""
    entry: dict[str, str | None] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "actor": actor,
        "role": role,
        "action": action,
        "target": target,
        "outcome": outcome,
        "address": address,
    }
    if detail:
        entry["detail"] = " ".join(detail.split())
    level = logging.INFO if outcome == "ok" else logging.WARNING
    if logger.isEnabledFor(level):
        logger.log(level, "%s", json.dumps(entry, ensure_ascii=False), extra={"audit": entry})


def succeeded(holder: Holder, action: str, target: str | None, detail: str | None = None) -> None:
    """``holder`` did ``action`` on ``target``."""
    record(
        action,
        actor=holder.name,
        role=holder.role_label,
        target=target,
        outcome="ok",
        address=holder.address,
        detail=detail,
    )


def denied(
    holder: Holder, action: str, target: str | None, detail: str, outcome: str = "denied"
) -> None:
    """``holder`` asked for ``action`` on ``target`` and was refused (``detail`` says why)."""
    record(
        action,
        actor=holder.name,
        role=holder.role_label,
        target=target,
        outcome=outcome,
        address=holder.address,
        detail=detail,
    )
