"""The orchestrator addresses a client is given: one, or several comma-separated (the
orchestrators sharing a store: one is active and answers, the others refuse connections)."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from casare_nb.client.errors import ClientError

__all__ = ["orchestrator_urls", "refused"]


def orchestrator_urls(url: str) -> list[str]:
    """``url`` as a list of ``http(s)://host:port`` addresses, in order; ClientError (one
    line) for one that is not such an address."""
    urls = [part.strip().rstrip("/") for part in url.split(",")]
    for one in urls:
        parts = urlsplit(one)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ClientError(f"orchestrator URL must be http(s)://host:port, not {one!r}")
    return urls


def refused(exc: BaseException) -> bool:
    """Whether a request failed before anything was sent (nothing listens there, or the
    name does not resolve): the next address may be tried with the same request."""
    return isinstance(exc, ConnectionRefusedError | socket.gaierror)
