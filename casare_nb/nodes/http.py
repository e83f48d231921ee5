"""HTTP nodes: a request with retries, and JSON to a DataFrame.

What the ``http.*`` templates call. :func:`request` retries what is worth retrying
(connection errors and time-outs, 5xx, 429) with exponential back-off, and fails at once,
with one line naming the method, the URL and the status, on the other 4xx.
:func:`json_to_frame` flattens JSON (or a :func:`request` answer) into a DataFrame (pandas
is imported then).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Final

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["HttpError", "json_to_frame", "request"]

MAX_WAIT_S: Final = 60.0
"""The longest wait between two attempts (a server's Retry-After included)."""

_BODY_CHARS: Final = 200
_RESPONSE_KEYS: Final = frozenset({"status", "headers", "json", "text"})


class HttpError(RuntimeError):
    """A request that failed for good; ``str(err)`` is one line. ``status`` is the last
    HTTP status (None when no response came)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Retryable(Exception):
    """A response worth another attempt (5xx, 429)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"{response.status_code} {response.reason_phrase}")
        self.response = response


def request(
    url: str,
    method: str = "GET",
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    json_body: Any = None,
    retries: int = 3,
    backoff_s: float = 0.5,
    timeout_s: float = 30,
) -> dict[str, Any]:
    """Send one HTTP request; answer ``{"status", "headers", "json", "text"}`` (``json``:
    the parsed body when it is JSON, else None).

    Connection errors, time-outs, 5xx and 429 are tried again up to ``retries`` more
    times, waiting ``backoff_s``, then twice that, and so on (or the server's Retry-After,
    if longer; at most a minute). Another 4xx raises :class:`HttpError` at once."""
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    verb = method.upper()
    attempts = retries + 1
    backoff = wait_exponential(multiplier=backoff_s, max=MAX_WAIT_S)

    def wait(state: RetryCallState) -> float:
        delay = float(backoff(state))
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        if isinstance(error, _Retryable):
            delay = max(delay, _retry_after(error.response))
        return min(delay, MAX_WAIT_S)

    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait,
        retry=retry_if_exception(lambda e: isinstance(e, _Retryable | httpx.TransportError)),
        reraise=True,
    )
    with httpx.Client(timeout=timeout_s, follow_redirects=True) as client:

        def once() -> httpx.Response:
            response = client.request(
                verb,
                url,
                params=dict(params) if params else None,
                headers=dict(headers) if headers else None,
                json=json_body,
            )
            if response.status_code >= 500 or response.status_code == 429:
                raise _Retryable(response)
            return response

        try:
            response = retrying(once)
        except _Retryable as exc:
            last = exc.response
            raise HttpError(
                f"{verb} {url}: {last.status_code} {last.reason_phrase} after {attempts} "
                f"attempt{'s' if attempts > 1 else ''}{_body_excerpt(last)}",
                last.status_code,
            ) from None
        except httpx.TransportError as exc:
            raise HttpError(
                f"{verb} {url}: {type(exc).__name__}: {_one_line(exc)} after {attempts} "
                f"attempt{'s' if attempts > 1 else ''}"
            ) from None
        except httpx.HTTPError as exc:  # an invalid URL and the like: not worth retrying
            raise HttpError(f"{verb} {url}: {type(exc).__name__}: {_one_line(exc)}") from None
    if response.status_code >= 400:
        raise HttpError(
            f"{verb} {url}: {response.status_code} {response.reason_phrase}"
            f"{_body_excerpt(response)}",
            response.status_code,
        )
    return {
        "status": response.status_code,
        "headers": dict(response.headers.items()),
        "json": _json_of(response),
        "text": response.text,
    }


def json_to_frame(data: Any, record_path: str | None = None) -> pd.DataFrame:
    """JSON as a DataFrame (nested objects flattened into ``a.b`` columns, as
    :func:`pandas.json_normalize` does).

    ``data``: parsed JSON, a JSON string, or a :func:`request` answer (its ``json``).
    ``record_path``: where the records are, dotted (``"data.items"``; a number indexes a
    list). A list of plain values becomes one column, ``value``."""
    import pandas as pd  # on first use: a request needs no pandas

    if isinstance(data, Mapping) and set(data) == _RESPONSE_KEYS:
        data = data["json"]
    elif isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"json_to_frame: the text is not JSON ({exc})") from None
    records = _walk(data, record_path) if record_path else data
    if records is None:
        return pd.DataFrame()
    if isinstance(records, Mapping):
        records = [records]
    if not isinstance(records, list):
        where = f" at {record_path!r}" if record_path else ""
        raise ValueError(
            f"json_to_frame: expected a list or an object{where}, got {type(records).__name__}"
        )
    if records and not all(isinstance(r, Mapping) for r in records):
        if any(isinstance(r, Mapping) for r in records):
            raise ValueError("json_to_frame: the list mixes objects and plain values")
        return pd.DataFrame({"value": records})
    return pd.json_normalize(records)


def _walk(data: Any, record_path: str) -> Any:
    """The part of ``data`` at the dotted ``record_path``."""
    here = data
    done: list[str] = []
    for key in record_path.split("."):
        where = ".".join(done) or "the top"
        if isinstance(here, Mapping):
            if key not in here:
                keys = ", ".join(map(str, here)) or "none"
                raise ValueError(f"json_to_frame: no {key!r} under {where} (keys: {keys})")
            here = here[key]
        elif isinstance(here, list) and key.lstrip("-").isdigit():
            index = int(key)
            if not -len(here) <= index < len(here):
                raise ValueError(
                    f"json_to_frame: no item {index} under {where} (a list of {len(here)})"
                )
            here = here[index]
        else:
            raise ValueError(
                f"json_to_frame: cannot take {key!r} of a {type(here).__name__} under {where}"
            )
        done.append(key)
    return here


def _json_of(response: httpx.Response) -> Any:
    kind = response.headers.get("content-type", "").lower()
    text = response.text
    if "json" not in kind and not text.lstrip().startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _retry_after(response: httpx.Response) -> float:
    """Seconds the server asks to wait (Retry-After, in seconds or as a date), else 0."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _body_excerpt(response: httpx.Response) -> str:
    text = " ".join(response.text.split())
    if not text:
        return ""
    if len(text) > _BODY_CHARS:
        text = text[:_BODY_CHARS] + "..."
    return f": {text}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
