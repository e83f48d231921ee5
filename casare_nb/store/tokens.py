"""Bearer tokens of an orchestrator, in its DuckDB file: only their SHA-256 is stored."""

from __future__ import annotations

import hmac
import secrets
from datetime import UTC, datetime
from typing import Any

from casare_nb.core.errors import QueueError
from casare_nb.core.tokens import token_hash
from casare_nb.store.database import Database, from_db_time, to_db_time

__all__ = ["DuckDBTokenStore"]


class DuckDBTokenStore:
    """Create, verify, revoke and list tokens, on the database's shared connection.

    A token name may be used again once its token is revoked, so the hash is the key."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def __repr__(self) -> str:
        return f"DuckDBTokenStore({str(self.db.path)!r})"

    def create_token(self, name: str) -> str:
        """A new bearer token for ``name``, returned once; only its SHA-256 is stored.

        A name with a live (not revoked) token raises QueueError.
        """
        if not name:
            raise QueueError("a token needs a name")
        token = secrets.token_urlsafe(32)
        with self.db.write() as con:
            live = con.execute(
                "SELECT 1 FROM tokens WHERE name = ? AND revoked_at IS NULL", [name]
            ).fetchone()
            if live:
                raise QueueError(f"token {name} already exists")
            con.execute(
                "INSERT INTO tokens (token_hash, name, created_at) VALUES (?, ?, ?)",
                [token_hash(token), name, to_db_time(datetime.now(UTC))],
            )
        return token

    def verify_token(self, token: str) -> str | None:
        """The name of a live token, or None (unknown, revoked or empty token)."""
        if not token:
            return None
        digest = token_hash(token)
        rows = self.db.select(
            "SELECT token_hash, name FROM tokens WHERE token_hash = ? AND revoked_at IS NULL",
            [digest],
        )
        for stored, name in rows:
            if hmac.compare_digest(str(stored), digest):
                return str(name)
        return None

    def revoke_token(self, name: str) -> None:
        """Revoke the live token of ``name`` (no-op if already revoked); unknown name raises."""
        with self.db.write() as con:
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

    def list_tokens(self) -> list[dict[str, Any]]:
        """Every token ever created: name, created_at, revoked_at (never the hash)."""
        rows = self.db.select(
            "SELECT name, created_at, revoked_at FROM tokens ORDER BY created_at, name"
        )
        return [
            {
                "name": name,
                "created_at": from_db_time(created_at),
                "revoked_at": from_db_time(revoked_at),
            }
            for name, created_at, revoked_at in rows
        ]
