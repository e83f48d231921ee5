"""Webhook signatures: GitHub's ``X-Hub-Signature-256`` scheme, under our header name.

A sender signs the raw request body with a shared secret:
``X-Casare-Signature-256: sha256=<hex HMAC-SHA256 of the body>``. Optionally it also sends
``X-Casare-Timestamp: <unix seconds>``; then the HMAC is over ``b"<timestamp>." + body``
(Stripe's and Slack's scheme), so the timestamp cannot be changed without the secret, and a
delivery whose timestamp is outside the window (5 minutes by default, either way) is
refused: a captured request cannot be replayed later. Without the timestamp header the HMAC
is over the body alone (GitHub's scheme exactly). The comparison is constant-time
(:func:`hmac.compare_digest`). ``X-Casare-Delivery`` (or GitHub's ``X-GitHub-Delivery``)
names the delivery, so a retried one runs once.

Pure: no I/O, no clock (the caller passes ``now``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final

from casare_nb.core.errors import CasareError

__all__ = [
    "DEFAULT_WINDOW_S",
    "DELIVERY_HEADER",
    "GITHUB_DELIVERY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "SignatureError",
    "check_timestamp",
    "sign",
    "signed_headers",
    "signed_message",
    "verify_signature",
]

SIGNATURE_HEADER: Final = "X-Casare-Signature-256"
TIMESTAMP_HEADER: Final = "X-Casare-Timestamp"
DELIVERY_HEADER: Final = "X-Casare-Delivery"
GITHUB_DELIVERY_HEADER: Final = "X-GitHub-Delivery"
DEFAULT_WINDOW_S: Final = 300.0

_SIGNATURE: Final = re.compile(r"^sha256=([0-9a-f]{64})$")


class SignatureError(CasareError):
    """A webhook delivery whose signature or timestamp does not check out (one line)."""


def signed_message(body: bytes, timestamp: str | int | None = None) -> bytes:
    """The bytes the HMAC covers: ``body``, or ``b"<timestamp>." + body`` with a timestamp
    (the ``X-Casare-Timestamp`` value as sent, surrounding blanks ignored)."""
    if timestamp is None:
        return body
    return str(timestamp).strip().encode() + b"." + body


def sign(secret: bytes, body: bytes, timestamp: str | int | None = None) -> str:
    """The header value a sender puts in ``X-Casare-Signature-256`` for ``body`` (sent with
    ``X-Casare-Timestamp: <timestamp>`` when ``timestamp`` is given)."""
    message = signed_message(body, timestamp)
    return "sha256=" + hmac.new(secret, message, hashlib.sha256).hexdigest()


def signed_headers(
    secret: bytes,
    body: bytes,
    *,
    timestamp: str | int | None = None,
    delivery_id: str | None = None,
) -> dict[str, str]:
    """Every header a sender adds for ``body``: the signature, and the timestamp and the
    delivery id when given."""
    headers = {SIGNATURE_HEADER: sign(secret, body, timestamp)}
    if timestamp is not None:
        headers[TIMESTAMP_HEADER] = str(timestamp).strip()
    if delivery_id is not None:
        headers[DELIVERY_HEADER] = delivery_id
    return headers


def verify_signature(
    secret: bytes, body: bytes, header: str | None, timestamp: str | None = None
) -> str:
    """The signature's hex digest (lower case) if ``header`` is ``sha256=<hex>`` and the
    HMAC of :func:`signed_message` under ``secret`` (constant-time comparison); otherwise
    raise :class:`SignatureError`. ``timestamp``: the ``X-Casare-Timestamp`` value, if sent."""
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
    given = match.group(1)
    expected = hmac.new(secret, signed_message(body, timestamp), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, given):
        if timestamp is None:
            raise SignatureError("signature does not match the body")
        raise SignatureError(
            f"signature does not match the body and {TIMESTAMP_HEADER}: sign b'<timestamp>.' + body"
        )
    return given


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
