"""Trusting an https/wss orchestrator: the SSL context of a CA file (``--ca-file``,
``CASARE_CA_FILE``), and a certificate that fails verification said in one line."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from casare_nb.client.errors import ClientError
from casare_nb.core.tls import unverified_certificate

if TYPE_CHECKING:
    import ssl

__all__ = ["ca_context", "certificate_error"]


def ca_context(ca_file: str | os.PathLike[str]) -> ssl.SSLContext:
    """A client SSL context that trusts the CA certificate(s) of the PEM file ``ca_file``
    (and nothing else); ClientError (one line) if the file cannot be used."""
    import ssl

    try:
        return ssl.create_default_context(cafile=os.fspath(ca_file))
    except FileNotFoundError:
        raise ClientError(f"CA file {ca_file} does not exist") from None
    except ssl.SSLError as exc:
        why = exc.reason or str(exc)
        raise ClientError(f"CA file {ca_file} holds no usable PEM certificate: {why}") from None
    except OSError as exc:
        raise ClientError(f"CA file {ca_file} cannot be read: {exc.strerror or exc}") from None


def certificate_error(exc: BaseException, url: str) -> ClientError | None:
    """The one-line ClientError of a TLS certificate that failed verification, if ``exc``
    is (or was raised from) one; else None."""
    why = unverified_certificate(exc, url)
    return None if why is None else ClientError(why)
