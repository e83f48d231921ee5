"""Webhook signatures: GitHub's ``X-Hub-Signature-256`` scheme, under our header name.

A sender signs the raw request body with a shared secret:
``X-Casare-Signature-256: sha256=<hex HMAC-SHA256 of the body>``. Optionally it also sends
``X-Casare-Timestamp: <unix seconds>``; a delivery whose timestamp is outside the window
(5 minutes by default, either way) is refused, so a captured request cannot be replayed
later. The comparison is constant-time (:func:`hmac.compare_digest`).

Pure: no I/O, no clock (the caller passes ``now``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final

from casare_nb.core.errors import CasareError

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "SignatureError",
    "check_timestamp",
    "sign",
    "verify_signature",
]

SIGNATURE_HEADER: Final = "X-Casare-Signature-256"
TIMESTAMP_HEADER: Final = "X-Casare-Timestamp"
DEFAULT_WINDOW_S: Final = 300.0

_SIGNATURE: Final = re.compile(r"^sha256=([0-9a-f]{64})$")


class SignatureError(CasareError):
    """A webhook delivery whose signature or timestamp does not check out (one line)."""


def sign(secret: bytes, body: bytes) -> str:
    """The header value a sender puts in ``X-Casare-Signature-256`` for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> None:
    """Raise :class:`SignatureError` unless ``header`` is ``sha256=<hex>`` and the HMAC of
    ``body`` under ``secret`` (constant-time comparison)."""
    if not secret:
        raise SignatureError("the webhook has no secret: refusing every delivery")
    if header is None or not header.strip():
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    value = header.strip()
    if value.lower().startswith("sha1="):
        raise SignatureError(f"{SIGNATURE_HEADER} must be sha256=<hex>; sha1 is not accepted")
    match = _SIGNATURE.match(value.lower())
    if match is None:
        raise SignatureError(f"malformed {SIGNATURE_HEADER}: expected sha256=<64 hex digits>")
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, match.group(1)):
        raise SignatureError("signature does not match the body")


def check_timestamp(header: str | None, *, now: float, window_s: float = DEFAULT_WINDOW_S) -> None:
    """Raise :class:`SignatureError` if ``header`` (unix seconds) is given and not within
    ``window_s`` of ``now``; no header passes (the timestamp is optional)."""
    if header is None:
        return
    try:
        sent = float(header.strip())
    except ValueError:
        raise SignatureError(f"malformed {TIMESTAMP_HEADER}: expected unix seconds") from None
    if sent != sent or abs(now - sent) > window_s:  # NaN, or outside the window
        raise SignatureError(
            f"stale delivery: {TIMESTAMP_HEADER} is more than {window_s:g} s from now"
        )
