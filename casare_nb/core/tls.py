"""TLS trust problems in one line, for robots and clients alike.

Pure: the exception is read by its attributes (``verify_message`` of
:class:`ssl.SSLCertVerificationError`), so nothing here imports :mod:`ssl`.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CA_HINT", "unverified_certificate"]

CA_HINT: Final = "give the CA certificate that signed it with --ca-file or CASARE_CA_FILE"
"""What to do about a certificate signed by a CA this side does not trust."""


def unverified_certificate(exc: BaseException, url: str, hint: str = CA_HINT) -> str | None:
    """One line saying why the TLS certificate of the orchestrator at ``url`` was refused, if
    ``exc`` (or an exception it was raised from) is a certificate verification failure; else
    None. Such a failure is not transient: retrying cannot help."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        why = getattr(current, "verify_message", None)
        if isinstance(why, str):
            why = "certificate verify failed: " + (" ".join(why.split()).rstrip(".") or "?")
            if "hostname mismatch" in why.lower() or "ip address mismatch" in why.lower():
                todo = "connect with a host name or address the certificate names"
            else:
                todo = hint
            return f"cannot verify the TLS certificate of the orchestrator at {url}: {why}; {todo}"
        current = current.__cause__ or current.__context__
    return None
