"""What the client raises: one line from the server, and the HTTP status."""

from __future__ import annotations

from typing import Any

from casare_nb.core.errors import CasareError

__all__ = ["ClientError", "WaitTimeout"]


class ClientError(CasareError):
    """A request failed: ``str(err)`` is the server's one-line reason; ``status`` the HTTP
    status (None when the orchestrator could not be reached or the stream broke)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.status))


class WaitTimeout(ClientError, TimeoutError):
    """:meth:`Client.wait` ran out of time; the job goes on."""
