"""Bearer tokens of an orchestrator, in its database: only their SHA-256 is stored, with
the token's role (``NULL`` for a token created before roles: it acts as admin).

Tokens verified live are remembered (by hash, per database) until a token of that database
is created or revoked, so a request's token costs no query after the first (the orchestrator
holds its file alone: no other process changes its tokens meanwhile). On PostgreSQL, several
orchestrators share the tokens: each change is announced (``NOTIFY casare_tokens, NAME``),
and a node that hears it forgets what it remembered (:func:`forget_known`)."""

from __future__ import annotations

import contextlib
import hmac
import secrets
import threading
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from casare_nb.core.errors import QueueError
from casare_nb.core.tokens import DEFAULT_ROLE, Holder, TokenRole, token_hash
from casare_nb.store.sql import POSTGRES, Connection, SqlDatabase, from_db_time, to_db_time

__all__ = ["TOKENS_CHANNEL", "SqlTokenStore", "forget_known"]

TOKENS_CHANNEL = "casare_tokens"
"""The PostgreSQL channel every token change is announced on (the token's name)."""


class _Known:
    """The live tokens of one database verified since its tokens last changed, by hash;
    ``generation`` counts the changes (a verify that began before one keeps nothing)."""

    def __init__(self) -> None:
        self.names: dict[str, Holder] = {}
        self.generation = 0


_KNOWN: weakref.WeakKeyDictionary[SqlDatabase, _Known] = weakref.WeakKeyDictionary()
_KNOWN_LOCK = threading.Lock()


def forget_known(db: SqlDatabase) -> None:
    """Forget the tokens of ``db`` verified so far (another orchestrator changed them)."""
    with _KNOWN_LOCK:
        known = _KNOWN.get(db)
        if known is not None:
            known.names.clear()
            known.generation += 1


class SqlTokenStore:
    """Create, verify, revoke and list tokens, on the database's shared connection.

    A token name may be used again once its token is revoked, so the hash is the key."""

    def __init__(self, db: SqlDatabase) -> None:
        self.db = db
        with _KNOWN_LOCK:
            self._known = _KNOWN.setdefault(db, _Known())

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Around a change of the tokens: what was verified before it, or while it was
        written, is forgotten."""
        self._forget_known()
        try:
            yield
        finally:
            self._forget_known()

    def _forget_known(self) -> None:
        with _KNOWN_LOCK:
            self._known.names.clear()
            self._known.generation += 1

    def _announce(self, con: Connection, name: str) -> None:
        """Tell the other orchestrators of the database that ``name`` changed (on commit)."""
        if self.db.dialect is POSTGRES:
            con.execute("SELECT pg_notify(?, ?)", [TOKENS_CHANNEL, name])

    def __repr__(self) -> str:
        return f"SqlTokenStore({self.db.where!r})"

    def create_token(self, name: str, role: TokenRole = DEFAULT_ROLE) -> str:
        """A new bearer token for ``name`` with ``role``, returned once; only its SHA-256 is
        stored.

        A name with a live (not revoked) token raises QueueError.
        """
        if not name:
            raise QueueError("a token needs a name")
        try:
            role = TokenRole(role)
        except ValueError:
            roles = ", ".join(r.value for r in TokenRole)
            raise QueueError(f"unknown role {role!r}: one of {roles}") from None
        token = secrets.token_urlsafe(32)
        with self._changing(), self.db.write() as con:
            live = con.execute(
                "SELECT 1 FROM tokens WHERE name = ? AND revoked_at IS NULL", [name]
            ).fetchone()
            if live:
                raise QueueError(f"token {name} already exists")
            con.execute(
                "INSERT INTO tokens (token_hash, name, created_at, role) VALUES (?, ?, ?, ?)",
                [token_hash(token), name, to_db_time(datetime.now(UTC)), role.value],
            )
            self._announce(con, name)
        return token

    def verify_token(self, token: str) -> Holder | None:
        """Who holds a live token (its name and role), or None (unknown, revoked or empty
        token)."""
        if not token:
            return None
        known = self.known_token(token)
        if known is not None:
            return known
        digest = token_hash(token)
        with _KNOWN_LOCK:
            generation = self._known.generation
        rows = self.db.select(
            "SELECT token_hash, name, role FROM tokens WHERE token_hash = ? AND revoked_at IS NULL",
            [digest],
        )
        for stored, name, role in rows:
            if hmac.compare_digest(str(stored), digest):
                holder = Holder(str(name), None if role is None else TokenRole(role))
                with _KNOWN_LOCK:
                    if self._known.generation == generation:  # no change since the query
                        self._known.names[digest] = holder
                return holder
        return None

    def known_token(self, token: str) -> Holder | None:
        """Who holds a live token verified since the tokens last changed, from memory;
        None: not known (ask :meth:`verify_token`)."""
        if not token:
            return None
        digest = token_hash(token)
        with _KNOWN_LOCK:
            return self._known.names.get(digest)

    def revoke_token(self, name: str) -> None:
        """Revoke the live token of ``name`` (no-op if already revoked); unknown name raises."""
        with self._changing(), self.db.write() as con:
            rows = con.execute(
                "UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL"
                " RETURNING name",
                [to_db_time(datetime.now(UTC)), name],
            ).fetchall()
            if (
                not rows
                and not con.execute("SELECT 1 FROM tokens WHERE name = ?", [name]).fetchone()
            ):
                raise QueueError(f"unknown token {name}")
            self._announce(con, name)

    def list_tokens(self) -> list[dict[str, Any]]:
        """Every token ever created: name, role (None: created before roles), created_at,
        revoked_at (never the hash)."""
        rows = self.db.select(
            "SELECT name, role, created_at, revoked_at FROM tokens ORDER BY created_at, name"
        )
        return [
            {
                "name": name,
                "role": role,
                "created_at": from_db_time(created_at),
                "revoked_at": from_db_time(revoked_at),
            }
            for name, role, created_at, revoked_at in rows
        ]
