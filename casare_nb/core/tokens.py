"""Bearer tokens: reading the ``Authorization`` header, and the hash a token is stored as.

Pure: the WebSocket server and the HTTP API both read the header with :func:`bearer_token`,
the token store keeps only :func:`token_hash` of a token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from casare_nb.core.errors import CasareError

__all__ = ["BadAuthorization", "bearer_token", "token_hash"]


class BadAuthorization(CasareError):
    """The request carries no usable ``Authorization: Bearer <token>`` header."""


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
