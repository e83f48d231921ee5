"""Webhook signatures (core/signing.py): GitHub's sha256 HMAC scheme and the timestamp window."""

from __future__ import annotations

import pytest

from casare_nb.core.signing import SignatureError, check_timestamp, sign, verify_signature

SECRET = b"s3cret"
BODY = b'{"region": "EU"}'


def test_a_signature_made_with_the_secret_verifies() -> None:
    """sign() and verify_signature() agree; upper-case hex is accepted too."""
    header = sign(SECRET, BODY)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    verify_signature(SECRET, BODY, header)
    verify_signature(SECRET, BODY, "sha256=" + header[7:].upper())


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (None, "missing X-Casare-Signature-256"),
        ("  ", "missing X-Casare-Signature-256"),
        ("sha1=" + "0" * 40, "sha1 is not accepted"),
        ("sha256=xyz", "malformed"),
        ("sha256=" + "0" * 63, "malformed"),
        ("sha512=" + "0" * 64, "malformed"),
        ("sha256=" + "0" * 64, "does not match"),
    ],
)
def test_missing_malformed_sha1_and_wrong_signatures_are_refused(
    header: str | None, why: str
) -> None:
    """Each bad header is refused with a one-line reason naming what is wrong."""
    with pytest.raises(SignatureError, match=why) as err:
        verify_signature(SECRET, BODY, header)
    assert "\n" not in str(err.value)


def test_a_changed_body_or_another_secret_does_not_verify() -> None:
    """The signature binds the exact body bytes and the secret."""
    header = sign(SECRET, BODY)
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(SECRET, BODY + b" ", header)
    with pytest.raises(SignatureError, match="does not match"):
        verify_signature(b"other", BODY, header)
    with pytest.raises(SignatureError, match="no secret"):
        verify_signature(b"", BODY, header)


def test_timestamps_outside_the_window_are_stale() -> None:
    """Within 5 minutes either way passes; older, newer, NaN or garbage is refused; none passes."""
    now = 1_800_000_000.0
    check_timestamp(None, now=now)
    check_timestamp(str(int(now - 299)), now=now)
    check_timestamp(str(now + 299), now=now)
    for stale in (str(now - 301), str(now + 301), "nan"):
        with pytest.raises(SignatureError, match="stale delivery"):
            check_timestamp(stale, now=now)
    with pytest.raises(SignatureError, match="malformed X-Casare-Timestamp"):
        check_timestamp("yesterday", now=now)
