"""Webhook signatures (core/signing.py): GitHub's sha256 HMAC scheme, the signed timestamp and
its window."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from casare_nb.core.signing import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    check_timestamp,
    sign,
    signed_headers,
    signed_message,
    verify_signature,
)

SECRET = b"s3cret"
BODY = b'{"region": "EU"}'


def test_a_signature_made_with_the_secret_verifies() -> None:
    """sign() and verify_signature() agree; upper-case hex is accepted too."""
    header = sign(SECRET, BODY)
    assert header.startswith("sha256=") and len(header) == 7 + 64
    assert verify_signature(SECRET, BODY, header) == header[7:]
    assert verify_signature(SECRET, BODY, "sha256=" + header[7:].upper()) == header[7:]


def test_without_a_timestamp_the_signature_is_githubs_hmac_of_the_raw_body() -> None:
    """No timestamp: the HMAC-SHA256 of the body bytes alone, as GitHub signs."""
    expected = hmac.new(SECRET, BODY, hashlib.sha256).hexdigest()
    assert signed_message(BODY) == BODY
    assert sign(SECRET, BODY) == "sha256=" + expected


def test_a_timestamp_is_covered_by_the_signature() -> None:
    """With a timestamp the HMAC is over b"<timestamp>." + body; changing either breaks it."""
    expected = hmac.new(SECRET, b"1800000000." + BODY, hashlib.sha256).hexdigest()
    assert signed_message(BODY, 1_800_000_000) == b"1800000000." + BODY
    assert signed_message(BODY, " 1800000000 ") == b"1800000000." + BODY
    header = sign(SECRET, BODY, 1_800_000_000)
    assert header == "sha256=" + expected
    assert verify_signature(SECRET, BODY, header, "1800000000") == expected
    with pytest.raises(SignatureError, match="does not match the body and X-Casare-Timestamp"):
        verify_signature(SECRET, BODY, header, "1800000001")
    with pytest.raises(SignatureError, match="does not match the body and X-Casare-Timestamp"):
        verify_signature(SECRET, BODY, sign(SECRET, BODY), "1800000000")  # body-only signature
    with pytest.raises(SignatureError, match=r"does not match the body$"):
        verify_signature(SECRET, BODY, header)  # timestamp signed but not sent


def test_signed_headers_carry_what_a_sender_sends() -> None:
    """signed_headers() gives the signature, and the timestamp and delivery id when asked."""
    assert signed_headers(SECRET, BODY) == {SIGNATURE_HEADER: sign(SECRET, BODY)}
    headers = signed_headers(SECRET, BODY, timestamp=1_800_000_000, delivery_id="d-1")
    assert headers == {
        SIGNATURE_HEADER: sign(SECRET, BODY, 1_800_000_000),
        TIMESTAMP_HEADER: "1800000000",
        DELIVERY_HEADER: "d-1",
    }
    verify_signature(SECRET, BODY, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER])


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
