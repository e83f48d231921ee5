"""Bearer tokens: reading the ``Authorization`` header, the hash a token is stored as, and the
roles a token may hold.

Pure: the WebSocket server and the HTTP API both read the header with :func:`bearer_token`,
the token store keeps only :func:`token_hash` of a token, and both servers ask
:func:`refusal` whether a token's role may do a thing.

Roles (``casare-nb token create NAME --role ...``):

- ``robot``: connect to the WebSocket as a robot (register, heartbeat, report jobs); nothing
  else, no HTTP API.
- ``user``: submit jobs; read jobs, history, robots, schedules, triggers and workflows;
  cancel and re-run the jobs it submitted itself; subscribe to events.
- ``admin``: everything a user may, on anyone's jobs, and tokens, draining and pausing robots
  and submissions, schedules and triggers, the maintenance endpoints.

A token created before roles existed has none: it acts as admin and may still connect as a
robot, so nothing that worked stops working; the orchestrator names such tokens at start.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from casare_nb.core.errors import CasareError

__all__ = [
    "DEFAULT_ROLE",
    "BadAuthorization",
    "Holder",
    "TokenRole",
    "bearer_token",
    "legacy_notice",
    "refusal",
    "token_hash",
]


class BadAuthorization(CasareError):
    """The request carries no usable ``Authorization: Bearer <token>`` header."""


class TokenRole(StrEnum):
    """What a token may do; see the module."""

    ROBOT = "robot"
    USER = "user"
    ADMIN = "admin"


DEFAULT_ROLE: Final = TokenRole.USER
"""The role of a token created without one: the least that a person using the API needs
(a robot token that was meant is refused with a message naming ``--role robot``)."""


@dataclass(frozen=True, slots=True)
class Holder:
    """Who presents a token: its name and role (``None``: created before roles, acts as
    admin), and the address the request came from."""

    name: str
    role: TokenRole | None
    address: str = "unknown"

    @property
    def acts_as(self) -> TokenRole:
        """The role the token's requests are judged by (admin for a role-less token)."""
        return TokenRole.ADMIN if self.role is None else self.role

    @property
    def is_admin(self) -> bool:
        return self.acts_as is TokenRole.ADMIN

    @property
    def may_be_robot(self) -> bool:
        """Whether it may register as a robot: a robot token, or one from before roles."""
        return self.role is None or self.role is TokenRole.ROBOT

    @property
    def may_be_client(self) -> bool:
        """Whether it may use the HTTP API and the event stream: a user or admin token."""
        return self.acts_as in (TokenRole.USER, TokenRole.ADMIN)

    @property
    def role_label(self) -> str:
        """The role as records name it (``none`` for a token from before roles)."""
        return "none" if self.role is None else self.role.value


_RANK: Final = {TokenRole.USER: 1, TokenRole.ADMIN: 2}


def refusal(holder: Holder, needs: TokenRole, action: str) -> str | None:
    """Why ``holder`` may not do ``action``, which needs the role ``needs`` (one line), or
    None when it may. An admin may do what a user may; a robot token only robot things."""
    acts = holder.acts_as
    if needs is TokenRole.ROBOT:
        allowed = holder.may_be_robot
    else:
        allowed = acts is not TokenRole.ROBOT and _RANK[acts] >= _RANK[needs]
    if allowed:
        return None
    return f"token {holder.name!r} has role {holder.role_label}; {action} needs {needs.value}"


def legacy_notice(name: str) -> str:
    """The notice the orchestrator logs at start for a token that has no role."""
    return f"token {name} has no role; it acts as admin: recreate it with --role"


def bearer_token(values: Sequence[str]) -> str:
    """The token of the ``Authorization`` header values of a request; BadAuthorization (one
    line) when there is none, or more than one, or it is not ``Bearer <token>``."""
    if not values:
        raise BadAuthorization("missing 'Authorization: Bearer <token>' header")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if len(values) > 1 or scheme.lower() != "bearer" or not token or " " in token:
        raise BadAuthorization("malformed Authorization header: expected 'Bearer <token>'")
    return token


def token_hash(token: str) -> str:
    """What the store keeps of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()
